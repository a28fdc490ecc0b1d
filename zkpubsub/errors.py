"""Errors raised by zkpubsub.

Every error derives from :class:`ZkPubSubError`; ZooKeeper client errors are
translated at the boundary and never reach user code. The tree::

    ZkPubSubError
    ├── ClientClosed              the client (or subscription) was closed
    ├── ClientIdInUse             another live session holds this client id
    ├── ConnectionLost            the operation failed because the connection dropped
    ├── OperationTimeout          (also TimeoutError) a bounded wait ran out
    │   ├── ConnectTimeout        no session within connect_timeout
    │   └── PublishTimeout        a publish was not confirmed in time; outcome unknown
    ├── PartlyPublished           a split fan-out reached some queues, then a part failed
    ├── PayloadTooLarge           (also ValueError) encoded message over the limit
    ├── SerializationError        (also TypeError) the payload cannot be serialized
    ├── DecodeError               a queue node could not be decoded (path, data, error)
    ├── NoSubscribers             publish(..., require_subscribers=True) found none
    ├── AlreadySubscribed         this client already subscribes to the topic
    ├── ReservationLost           a queue item is no longer held by this worker
    ├── QueueFull                 a work queue stayed at max_items for a put's whole timeout
    ├── ItemFailed                a task whose result was awaited went to dead letters
    ├── NotFound                  (also LookupError) no bus at that root, no such queue
    ├── SecurityError             credentials, rights or TLS did not let the call through
    │   ├── AuthenticationFailed  the server refused the credentials, or demands some
    │   ├── NotAuthorized         (also PermissionError) a node's ACL refused the request
    │   └── TlsError              (also ConnectionError) no TLS session: CA, certificate, port
    └── ZooKeeperError            any other error the server returned

Bad arguments (an invalid topic name, a negative timeout) raise the builtin
``ValueError`` or ``TypeError`` with the reason in the message.
"""

from __future__ import annotations

__all__ = [
    "AlreadySubscribed",
    "AuthenticationFailed",
    "ClientClosed",
    "ClientIdInUse",
    "ConnectTimeout",
    "ConnectionLost",
    "DecodeError",
    "ItemFailed",
    "NoSubscribers",
    "NotAuthorized",
    "NotFound",
    "OperationTimeout",
    "PartlyPublished",
    "PayloadTooLarge",
    "PublishTimeout",
    "QueueFull",
    "ReservationLost",
    "SecurityError",
    "SerializationError",
    "TlsError",
    "ZkPubSubError",
    "ZooKeeperError",
]


class ZkPubSubError(Exception):
    """Root of every error zkpubsub raises."""


class ClientClosed(ZkPubSubError):
    """The client or subscription has been closed."""


class ClientIdInUse(ZkPubSubError):
    """Another live session has registered the same client id. ``holder``
    names its process (``host h, pid p``), as its registration says."""

    def __init__(self, client_id: str, *, holder: str = "an unknown process") -> None:
        super().__init__(
            f"client id {client_id!r} is registered by another live session ({holder}); "
            "two clients must not share an id"
        )
        self.client_id = client_id
        self.holder = holder


class ConnectionLost(ZkPubSubError):
    """The connection to ZooKeeper dropped and the operation could not complete."""


class OperationTimeout(ZkPubSubError, TimeoutError):
    """A bounded wait ran out."""


class ConnectTimeout(OperationTimeout):
    """No ZooKeeper session could be established within the connect timeout."""


class PublishTimeout(OperationTimeout):
    """A publish was not confirmed within its timeout.

    ``message_ids`` names the messages of the publish and the text says
    why. If ``sent`` is false the publish never left the client and nothing
    was written. Otherwise the outcome is unknown: the message may have
    reached every subscriber, or none (a fan-out that had to be split may
    have reached some); ``reached`` counts the subscriber queues its
    fan-out's transactions had confirmed written before (publishes sent
    together in one fan-out share that count, though a queue counted may
    have got only the others' nodes).
    """

    def __init__(
        self,
        message: str,
        *,
        message_ids: tuple[str, ...],
        reached: int = 0,
        sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.message_ids = message_ids
        self.reached = reached
        self.sent = sent


class PartlyPublished(ZkPubSubError):
    """A fan-out split over several transactions was confirmed written to
    ``reached`` subscriber queues, then a later part failed with ``cause``
    (``NotAuthorized``, ``PayloadTooLarge``, ``ConnectionLost``...): the
    message is in those queues and in no other. ``message_ids`` names the
    messages of the publish; publishing them again duplicates them for the
    queues reached (publishes sent together share one fan-out and its
    count)."""

    def __init__(
        self, message: str, *, message_ids: tuple[str, ...], reached: int, cause: ZkPubSubError
    ) -> None:
        super().__init__(message)
        self.message_ids = message_ids
        self.reached = reached
        self.cause = cause
        self.__cause__ = cause


class PayloadTooLarge(ZkPubSubError, ValueError):
    """An encoded message is larger than the configured limit (raised before
    anything is sent), or a transaction was larger than the server accepts
    (it dropped the connection on receiving it and applied nothing).
    ``size`` and ``limit`` are in bytes."""

    def __init__(self, size: int, limit: int, *, why: str | None = None) -> None:
        super().__init__(
            why
            or f"encoded message is {size} bytes, over the limit of {limit} bytes "
            "(max_message_bytes; it must stay below the server's jute.maxbuffer)"
        )
        self.size = size
        self.limit = limit


class SerializationError(ZkPubSubError, TypeError):
    """The payload or headers could not be serialized; nothing was sent."""


class DecodeError(ZkPubSubError):
    """A queue node could not be decoded into messages.

    ``path`` is the node, ``data`` its raw bytes, ``error`` the cause. The
    node is removed after the error has been reported, so it never blocks
    the queue.
    """

    def __init__(
        self, message: str, *, path: str, data: bytes, error: BaseException | None = None
    ) -> None:
        super().__init__(f"{message} (node {path})")
        self.path = path
        self.data = data
        self.error = error


class NoSubscribers(ZkPubSubError):
    """The topic had no subscribers and the caller asked for at least one."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} has no subscribers")
        self.topic = topic


class AlreadySubscribed(ZkPubSubError):
    """The client already has an open subscription to this topic."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"this client already subscribes to {topic!r}; close that first")
        self.topic = topic


class ReservationLost(ZkPubSubError):
    """A reserved queue item is no longer held by this worker.

    Its session expired (or the item was released) and the item may already
    be in another worker's hands; acking or releasing it is refused.
    """

    def __init__(self, queue: str, item_id: str, *, item_ids: tuple[str, ...] = ()) -> None:
        ids = item_ids or (item_id,)
        what = f"item {item_id}" if len(ids) == 1 else f"items {', '.join(ids)}"
        super().__init__(
            f"reservation of {what} in queue {queue!r} was lost; "
            "it may have been handed to another worker"
        )
        self.queue = queue
        self.item_id = item_id
        #: every item whose reservation was lost (``ack_many`` may lose several)
        self.item_ids = ids


class QueueFull(ZkPubSubError):
    """A work queue held ``limit`` items (ready or reserved) for the whole
    of a put's timeout. ``items`` is how many it held when the put gave up.
    Nothing of a ``put`` was put; a ``put_many`` in several transactions
    may have put those before: ``put_ids`` are their ids, in order (the
    first ``len(put_ids)`` payloads), empty when nothing was put."""

    def __init__(
        self,
        queue: str,
        items: int,
        limit: int,
        *,
        put_ids: tuple[str, ...] = (),
        asked: int | None = None,
    ) -> None:
        done = (
            f"{len(put_ids)} of {asked} items were put (put_ids), the rest not"
            if put_ids
            else "nothing was put"
        )
        super().__init__(
            f"work queue {queue!r} is full: {items} items, the limit is {limit} (max_items); "
            + done
        )
        self.queue = queue
        self.items = items
        self.limit = limit
        self.put_ids = put_ids


class ItemFailed(ZkPubSubError):
    """The item behind a :class:`~zkpubsub.Ticket` was moved to the dead
    letters instead of being acknowledged; ``reason`` says why."""

    def __init__(self, item_id: str, reason: str) -> None:
        super().__init__(f"item {item_id} failed: {reason}")
        self.item_id = item_id
        self.reason = reason


class NotFound(ZkPubSubError, LookupError):
    """What a read-only view was asked about does not exist (a root with no
    bus, a work queue nobody made). Nothing was created."""


class SecurityError(ZkPubSubError):
    """Credentials, rights or TLS settings kept a call from going through.
    Retrying does not help: the configuration must change."""


class AuthenticationFailed(SecurityError):
    """The server refused the client's credentials (a SASL login with a
    wrong name or password), or requires authentication the client did not
    give (``enforce.auth.enabled``)."""


class NotAuthorized(SecurityError, PermissionError):
    """A node's ACL refused the request (ZooKeeper's ``NoAuth``): the
    client's identity has no role allowing it (a wrong digest password gives
    another identity). ``path`` is the node, when known."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class TlsError(SecurityError, ConnectionError):
    """No TLS session could be set up with any server: the server's
    certificate is not signed by a trusted CA, the client certificate was
    refused, or the port does not speak TLS. ``errors`` maps each server
    tried to what went wrong."""

    def __init__(self, message: str, *, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors = dict(errors or {})


class ZooKeeperError(ZkPubSubError):
    """ZooKeeper returned an error zkpubsub does not handle itself."""
