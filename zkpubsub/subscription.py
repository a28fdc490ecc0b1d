"""Receiving: one subscription reads its queue ``messages/<id>/<topic>``.

Guarantees:

* Messages arrive in queue sequence order (packed batches in their order).
* Handlers run on a dispatcher thread of this subscription, never on the
  ZooKeeper client's thread.
* A node is deleted only after every message in it has been handled: its
  handler returned, or raised ``max_attempts`` times (each failure goes to
  ``on_error``). A subscriber that dies first gets the node again when it
  comes back under the same client id (at-least-once).
* An undecodable or foreign node goes to ``on_error`` as a
  :class:`~zkpubsub.DecodeError` and is then deleted: it never blocks the
  queue.
* Without a handler, ``get()`` and iteration hand messages out in order; a
  message is acknowledged when the next one is asked for (or the
  subscription is closed), so a consumer that dies while holding one gets
  it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from kazoo.exceptions import KazooException, NoNodeError

from . import envelope
from .connection import deadline_after, first_error, remaining
from .errors import (
    ClientClosed,
    ConnectionLost,
    DecodeError,
    OperationTimeout,
    ZkPubSubError,
)
from .layout import join, order_names
from .message import Message

if TYPE_CHECKING:
    from kazoo.protocol.states import WatchedEvent

    from .client import Client

logger = logging.getLogger(__name__)

Handler = Callable[[Message], Any]
ErrorHandler = Callable[[BaseException, "Message | None"], Any]

SAFETY_RELIST_INTERVAL: Final = 30.0
DELETE_RETRY: Final = 0.5
RELIST_WHILE_BUSY: Final = 1.0
DELETE_BATCH: Final = 500


def log_error(error: BaseException, message: Message | None) -> None:
    """The default ``on_error``: log it."""
    where = f" (message {message.id} on {message.topic!r})" if message else ""
    logger.error("subscription error%s: %s", where, error, exc_info=error)


@dataclass(slots=True)
class _Node:
    """A fetched queue node: how many of its messages are still unhandled."""

    name: str
    remaining: int


@dataclass(slots=True)
class _Delivery:
    node: _Node
    message: Message | None = None
    error: DecodeError | None = None


@dataclass(slots=True)
class _Counters:
    delivered: int = 0
    errors: int = 0
    dropped: int = 0
    redelivered: int = 0
    nodes_deleted: int = 0


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """Counters of one subscription.

    ``delivered``: messages handled (handler returned, or handed out by
    ``get``). ``pending``: read from the queue or listed but not handled yet.
    ``errors``: handler failures and undecodable nodes. ``dropped``: messages
    given up after ``max_attempts`` failures.
    """

    topic: str
    delivered: int
    pending: int
    errors: int
    dropped: int
    nodes_deleted: int
    extra: dict[str, int] = field(default_factory=dict)


class Subscription:
    """Messages of one topic for one client. Made by ``Client.subscribe``."""

    def __init__(
        self,
        client: Client,
        topic: str,
        handler: Handler | None,
        *,
        on_error: ErrorHandler | None,
        max_attempts: int,
        prefetch: int,
        durable: bool = False,
    ) -> None:
        self.topic = topic
        self.durable = durable
        self._registered = False
        self._client = client
        self._conn = client._conn
        self._path = client._layout.queue(client.client_id, topic)
        self._handler = handler
        self._on_error: ErrorHandler = on_error or log_error
        self._max_attempts = max_attempts
        self._prefetch = prefetch
        self._cond = threading.Condition()
        self._buffer: deque[_Delivery] = deque()
        self._active: dict[str, _Node] = {}  # fetched, not yet known deleted
        self._deleted: set[str] = set()  # deleted, may still show in a listing
        self._unfetched: list[str] = []
        self._to_delete: list[str] = []
        self._deleting = 0
        self._holding: _Delivery | None = None  # get(): handed out, not acked
        self._relist = True
        self._wake = threading.Event()
        self._closed = False
        self._pump_stop = False
        self._retry_deletes = False
        self._counters = _Counters()
        self._pump = threading.Thread(
            target=self._pump_loop, name=f"zkpubsub-pump-{topic}", daemon=True
        )
        self._dispatcher: threading.Thread | None = None
        if handler is not None:
            self._dispatcher = threading.Thread(
                target=self._dispatch_loop, name=f"zkpubsub-dispatch-{topic}", daemon=True
            )

    def _start(self) -> None:
        self._wake.set()
        self._pump.start()
        if self._dispatcher is not None:
            self._dispatcher.start()

    # -- public -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def delivered(self) -> int:
        return self._counters.delivered

    @property
    def errors(self) -> int:
        return self._counters.errors

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._buffer) + len(self._unfetched)

    def stats(self) -> SubscriptionStats:
        with self._cond:
            c = self._counters
            return SubscriptionStats(
                self.topic,
                c.delivered,
                len(self._buffer) + len(self._unfetched),
                c.errors,
                c.dropped,
                c.nodes_deleted,
                {"redelivered": c.redelivered},
            )

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, or ``None`` if ``timeout`` passes or the
        subscription closes first. Asking for the next message acknowledges
        the previous one (its node is deleted once all its messages are).
        Undecodable nodes are reported to ``on_error`` and skipped."""
        if self._handler is not None:
            raise TypeError("get() is for subscriptions made without a handler")
        deadline = deadline_after(timeout)
        self._ack_held()
        while True:
            delivery = self._next(deadline)
            if delivery is None:
                return None
            if delivery.error is not None:
                self._report(delivery.error, None)
                self._done(delivery.node)
                continue
            assert delivery.message is not None
            with self._cond:
                self._holding = delivery
                self._counters.delivered += 1
            return delivery.message

    def __iter__(self) -> Iterator[Message]:
        """Messages until the subscription is closed."""
        while True:
            msg = self.get()
            if msg is None:
                return
            yield msg

    def close(self) -> None:
        """Stop receiving. A plain subscription is deregistered; a durable one
        stays registered (publishers keep filling its queue). The queue and
        its backlog are kept for a later ``subscribe`` by the same client id.
        Idempotent."""
        self._shutdown(delete_queue=False)

    def unsubscribe(self) -> None:
        """Stop receiving, remove the registration and delete the queue with
        its backlog. Idempotent."""
        self._shutdown(delete_queue=True)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Subscription {self.topic!r} {state} delivered={self.delivered}>"

    # -- hand-off between threads ---------------------------------------------

    def _next(self, deadline: float | None) -> _Delivery | None:
        with self._cond:
            while not self._buffer or self._closed:
                if self._closed:
                    return None  # what is still buffered stays in the queue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            delivery = self._buffer.popleft()
            if len(self._buffer) < self._prefetch // 2 and self._unfetched:
                self._wake.set()
            return delivery

    def _ack_held(self) -> None:
        with self._cond:
            held, self._holding = self._holding, None
        if held is not None:
            self._done(held.node)

    def _done(self, node: _Node) -> None:
        with self._cond:
            node.remaining -= 1
            if node.remaining > 0:
                return
            self._to_delete.append(node.name)
        self._wake.set()

    def _report(self, error: BaseException, message: Message | None) -> None:
        with self._cond:
            self._counters.errors += 1
        try:
            self._on_error(error, message)
        except Exception:
            logger.exception("on_error raised while reporting %r", error)

    # -- dispatcher thread ---------------------------------------------------------

    def _dispatch_loop(self) -> None:
        assert self._handler is not None
        handler = self._handler
        while True:
            delivery = self._next(None)
            if delivery is None:
                return
            if delivery.error is not None:
                self._report(delivery.error, None)
                self._done(delivery.node)
                continue
            message = delivery.message
            assert message is not None
            for attempt in range(1, self._max_attempts + 1):
                if attempt > 1:
                    message = _with_attempt(message, attempt)
                try:
                    handler(message)
                except Exception as exc:
                    self._report(exc, message)
                    if attempt == self._max_attempts:
                        with self._cond:
                            self._counters.dropped += 1
                    else:
                        with self._cond:
                            self._counters.redelivered += 1
                    continue
                with self._cond:
                    self._counters.delivered += 1
                break
            self._done(delivery.node)

    # -- pump thread: list, fetch, delete -----------------------------------------------

    def _on_watch(self, event: WatchedEvent) -> None:  # kazoo's thread
        self._relist = True
        self._wake.set()

    def _restored(self) -> None:
        """The client re-registered on a new session: read the queue again."""
        self._relist = True
        self._wake.set()

    def _pump_loop(self) -> None:
        backoff = 0.05
        last_list = 0.0
        while True:
            # Deletes that found no connection are tried again soon.
            self._wake.wait(DELETE_RETRY if self._retry_deletes else SAFETY_RELIST_INTERVAL)
            self._wake.clear()
            self._retry_deletes = False
            if self._pump_stop:
                break
            try:
                self._flush_deletes()
                since = time.monotonic() - last_list
                # Names not seen yet are newer than every name listed, so
                # while listed ones wait to be fetched, listing again (the
                # whole backlog) can wait too, for a while.
                if (self._relist and (not self._unfetched or since > RELIST_WHILE_BUSY)) or (
                    since > SAFETY_RELIST_INTERVAL
                ):
                    self._relist = False
                    self._list()
                    last_list = time.monotonic()
                self._fetch()
                backoff = 0.05
            except ClientClosed:
                break
            except (ConnectionLost, OperationTimeout) as exc:
                logger.debug("subscription %r: %s; will retry", self.topic, exc)
                self._relist = True
                self._wake.set()
                self._sleep_until_connected(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                logger.exception("subscription %r: unexpected error; will retry", self.topic)
                self._relist = True
                self._wake.set()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        # Final flush so handled messages are not delivered again.
        try:
            self._flush_deletes(wait=True)
        except ZkPubSubError as exc:
            logger.debug("subscription %r: final delete failed: %s", self.topic, exc)

    def _sleep_until_connected(self, pause: float) -> None:
        time.sleep(pause)
        while not self._closed and not self._conn.connected.is_set():
            self._conn.connected.wait(0.2)

    def _deadline(self) -> float | None:
        return deadline_after(self._client._config.request_timeout)

    def _list(self) -> None:
        kazoo = self._conn.kazoo
        try:
            names: list[str] = self._conn.result(
                kazoo.get_children_async(self._path, watch=self._on_watch),
                self._deadline(),
                f"list queue {self._path}",
            )
        except NoNodeError:
            # Deleted under us (the cleaner took it while we were away).
            self._client._ensure_queue(self.topic)
            self._relist = True
            self._wake.set()
            return
        ordered, foreign = order_names(names)
        with self._cond:
            listed = set(names)
            self._deleted &= listed
            known = self._active.keys() | self._deleted
            self._unfetched = [n for n in ordered if n not in known]
            fresh_foreign = [n for n in foreign if n not in known]
        for name in fresh_foreign:
            self._fetch_foreign(name)

    def _fetch_foreign(self, name: str) -> None:
        path = join(self._path, name)
        try:
            data, _ = self._conn.result(
                self._conn.kazoo.get_async(path), self._deadline(), f"read {path}"
            )
        except NoNodeError:
            return
        node = _Node(name, 1)
        error = DecodeError("node name is not a zkpubsub message node", path=path, data=data)
        with self._cond:
            self._active[name] = node
            self._buffer.append(_Delivery(node, error=error))
            self._cond.notify_all()

    def _fetch(self) -> None:
        with self._cond:
            room = self._prefetch - len(self._buffer)
            if room <= 0 or not self._unfetched:
                return
            batch = self._unfetched[:room]
        kazoo = self._conn.kazoo
        requests = [(name, kazoo.get_async(join(self._path, name))) for name in batch]
        deadline = self._deadline()
        deliveries: list[_Delivery] = []
        fetched: list[str] = []
        try:
            for name, request in requests:
                try:
                    data, _ = self._conn.result(request, deadline, f"read {self._path}/{name}")
                except NoNodeError:
                    fetched.append(name)  # gone already: nothing to deliver
                    continue
                deliveries.extend(self._decode(name, data))
                fetched.append(name)
        finally:
            with self._cond:
                done = set(fetched)
                self._unfetched = [n for n in self._unfetched if n not in done]
                for d in deliveries:
                    self._active[d.node.name] = d.node
                self._buffer.extend(deliveries)
                self._cond.notify_all()
                if self._unfetched and len(self._buffer) < self._prefetch:
                    self._wake.set()

    def _decode(self, name: str, data: bytes) -> list[_Delivery]:
        path = join(self._path, name)
        try:
            entries = envelope.decode(data)
        except ValueError as exc:
            return [
                _Delivery(
                    _Node(name, 1), error=DecodeError(str(exc), path=path, data=data, error=exc)
                )
            ]
        if not entries:
            node = _Node(name, 0)
            with self._cond:
                self._active[name] = node
                self._to_delete.append(name)
            return []
        node = _Node(name, len(entries))
        out: list[_Delivery] = []
        serializers = self._client._serializers
        for entry in entries:
            serializer = serializers.get(entry.content_type)
            if serializer is None:
                err = DecodeError(
                    f"no serializer for content type {entry.content_type!r}", path=path, data=data
                )
                out.append(_Delivery(node, error=err))
                continue
            try:
                payload = serializer.loads(entry.body)
            except Exception as exc:
                err = DecodeError(
                    f"payload is not valid {entry.content_type}: {exc}",
                    path=path,
                    data=data,
                    error=exc,
                )
                out.append(_Delivery(node, error=err))
                continue
            out.append(
                _Delivery(
                    node,
                    Message(
                        id=entry.id,
                        topic=entry.topic,
                        payload=payload,
                        headers=entry.headers,
                        published_at=entry.published_at,
                        publisher_id=entry.publisher_id,
                        content_type=entry.content_type,
                    ),
                )
            )
        return out

    def _flush_deletes(self, wait: bool = False) -> None:
        """Send the deletes of handled nodes, in transactions, without waiting
        for them (unless ``wait``): their answers only do bookkeeping, so the
        pump goes on listing and fetching meanwhile."""
        with self._cond:
            names, self._to_delete = self._to_delete, []
        if not names:
            return
        kazoo = self._conn.kazoo
        answered = []
        for i in range(0, len(names), DELETE_BATCH):
            batch = names[i : i + DELETE_BATCH]
            done = threading.Event()
            try:
                txn = kazoo.transaction()
                for name in batch:
                    txn.delete(join(self._path, name))
                txn.commit_async().rawlink(
                    lambda r, b=batch, d=done: self._deletes_answered(b, r, d)
                )
            except KazooException:  # the client is closing: they stay queued
                self._requeue_deletes(batch)
                continue
            answered.append(done)
        if wait:
            deadline = self._deadline()
            for done in answered:
                done.wait(remaining(deadline))

    def _deletes_answered(self, batch: list[str], result: Any, done: threading.Event) -> None:
        """A delete transaction's answer (kazoo's thread: bookkeeping only)."""
        try:
            try:
                results = result.get()
            except Exception:  # no answer (kazoo's or its loop's error): again once connected
                self._requeue_deletes(batch)
                return
            if first_error(results)[1] is None:
                self._mark_deleted(batch)
                return
            # One node was gone already (the cleaner, a retried delete): the
            # rest go one by one, each answer doing its own bookkeeping.
            for name in batch:
                self._conn.kazoo.delete_async(join(self._path, name)).rawlink(
                    lambda r, n=name: self._delete_answered(n, r)
                )
        finally:
            done.set()

    def _delete_answered(self, name: str, result: Any) -> None:  # kazoo's thread
        try:
            result.get()
        except NoNodeError:
            pass
        except Exception:  # no answer: again once connected
            self._requeue_deletes([name])
            return
        self._mark_deleted([name])

    def _mark_deleted(self, names: list[str]) -> None:
        with self._cond:
            for name in names:
                self._active.pop(name, None)
                self._deleted.add(name)
            self._counters.nodes_deleted += len(names)

    def _requeue_deletes(self, names: list[str]) -> None:
        with self._cond:
            self._to_delete.extend(names)
            self._retry_deletes = True

    # -- shutdown -------------------------------------------------------------------------

    def _shutdown(self, *, delete_queue: bool) -> None:
        with self._cond:
            already = self._closed
            self._closed = True
            self._cond.notify_all()
        if not already:
            me = threading.current_thread()
            if self._dispatcher is not None and self._dispatcher is not me:
                self._dispatcher.join(self._client._config.request_timeout)
            self._ack_held()
            self._pump_stop = True
            self._wake.set()
            if self._pump is not me and self._pump.is_alive():
                self._pump.join(self._client._config.request_timeout)
        self._client._subscription_closed(self, delete_queue=delete_queue)


def _with_attempt(message: Message, attempt: int) -> Message:
    return Message(
        id=message.id,
        topic=message.topic,
        payload=message.payload,
        headers=message.headers,
        published_at=message.published_at,
        publisher_id=message.publisher_id,
        content_type=message.content_type,
        attempt=attempt,
    )
