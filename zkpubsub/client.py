"""The client: one ZooKeeper session, its registration, publish and subscribe."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Final

from kazoo.exceptions import NodeExistsError, NotEmptyError
from kazoo.protocol.states import EventType, KazooState, WatchedEvent

from . import __version__, envelope
from .batcher import Batcher
from .config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LINGER,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_TRANSACTION_BYTES,
    DEFAULT_PREFETCH,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT,
    ClientConfig,
)
from .connection import Connection, deadline_after, expired, translated
from .errors import (
    AlreadySubscribed,
    ClientClosed,
    ClientIdInUse,
    ConnectionLost,
    OperationTimeout,
    PublishTimeout,
    ZkPubSubError,
)
from .layout import DEFAULT_ROOT, Layout, validate_name
from .message import PublishReceipt
from .publisher import Publisher
from .serializers import BUILTIN_SERIALIZERS, Serializer, resolve
from .state import ClientState, Gap, Notifier
from .subscription import ErrorHandler, Handler, Subscription

if TYPE_CHECKING:
    from .cleaner import Cleaner
    from .stats import BusStats
    from .workqueue import WorkQueue

logger = logging.getLogger(__name__)

StateListener = Callable[[ClientState], Any]
GapListener = Callable[[Gap], Any]

# An event of ours on the supervisor's queue, beside kazoo's states.
_REGISTRATION_GONE: Final = "registration gone"


class Client:
    """A connection to ZooKeeper that publishes and subscribes.

    ``hosts`` is ZooKeeper's connection string (``"zk1:2181,zk2:2181"``,
    optionally ending in a chroot such as ``"/apps/billing"``). Everything
    lives under ``root``. ``client_id`` names this client's queues: leave it
    ``None`` for a random id, or give a stable name (``"billing-cache"``) for
    a durable subscriber that keeps its backlog across restarts within the
    cleaner's grace period. Two live clients must not share an id: the
    constructor waits ``registration_wait`` seconds (default: twice the
    session timeout) for a previous session of the same id to expire, then
    raises :class:`~zkpubsub.ClientIdInUse`. ``on_gap`` is added as a gap
    listener before registering, so it also hears that the cleaner had
    started deleting this id's queues before the client came back.

    The constructor connects and registers (``ConnectTimeout`` if no session
    within ``connect_timeout``). After a session expiry the client registers
    again by itself, re-subscribes every open subscription and tells gap
    listeners that messages may have been missed.
    """

    def __init__(
        self,
        hosts: str,
        *,
        root: str = DEFAULT_ROOT,
        client_id: str | None = None,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        serializer: Serializer | str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_transaction_bytes: int = DEFAULT_MAX_TRANSACTION_BYTES,
        prefetch: int = DEFAULT_PREFETCH,
        linger: float = DEFAULT_LINGER,
        registration_wait: float | None = None,
        on_gap: GapListener | None = None,
    ) -> None:
        self._config = ClientConfig(
            hosts=hosts,
            client_id=client_id if client_id is not None else uuid.uuid4().hex,
            root=root,
            session_timeout=session_timeout,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            max_message_bytes=max_message_bytes,
            max_transaction_bytes=max_transaction_bytes,
            prefetch=prefetch,
            linger=linger,
            serializer=resolve(serializer),
        )
        self.client_id: str = self._config.client_id
        self._explicit_id = client_id is not None
        self._layout = Layout(self._config.root)
        self._serializers: dict[str, Serializer] = {s.content_type: s for s in BUILTIN_SERIALIZERS}
        self._serializers[self._config.serializer.content_type] = self._config.serializer
        self._state = ClientState.CONNECTING
        self._state_listeners: list[StateListener] = []
        self._gap_listeners: list[GapListener] = [on_gap] if on_gap is not None else []
        self._subscriptions: dict[str, Subscription] = {}
        self._lock = threading.RLock()  # guards registration and the subscriptions
        self._closed = False
        self._cleaner: Cleaner | None = None
        self._registered_session: int | None = None
        self._disconnected_at: float | None = None  # connection down since (wall clock)
        self._lost_at: float | None = None  # start of the gap after a session expiry
        # state changes with the wall-clock time kazoo reported them
        self._events: queue.SimpleQueue[tuple[KazooState | str, float] | None] = queue.SimpleQueue()
        self._notifier = Notifier(f"zkpubsub-listeners-{self.client_id[:12]}")
        self._conn = Connection(hosts, session_timeout=self._config.session_timeout)
        self._publisher = Publisher(self._conn, self._layout, self._config, self.client_id)
        self._batcher: Batcher | None = None  # made on the first batched publish
        self._conn.add_state_listener(lambda state: self._events.put((state, time.time())))
        wait = registration_wait if registration_wait is not None else 2 * session_timeout
        try:
            self._ensure_chroot()
            self._conn.start(self._config.connect_timeout)
            deadline = deadline_after(max(self._config.connect_timeout, wait + 5))
            with translated("register client"):
                self._ensure_base(deadline)
                self._register_client(deadline, owner_wait=wait)
                purged = self._check_purge(deadline)
        except BaseException:
            self._notifier.close()
            self._conn.stop()
            raise
        self._registered_session = self._conn.session_id
        self._state = ClientState.CONNECTED
        self._watch_registration()
        if purged:
            now = time.time()
            self._emit_gap(Gap(frozenset(purged), now, now, "backlog purged"))
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"zkpubsub-session-{self.client_id[:12]}", daemon=True
        )
        self._supervisor.start()
        logger.info("client %s connected (root %s)", self.client_id, self._layout.root_path)

    # -- state ------------------------------------------------------------------

    @property
    def status(self) -> ClientState:
        """The current :class:`ClientState`."""
        return self._state

    @property
    def config(self) -> ClientConfig:
        return self._config

    @property
    def root(self) -> str:
        return self._layout.root_path

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(state)`` on every state change (on a thread of ours)."""
        with self._lock:
            self._state_listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        with self._lock:
            if listener in self._state_listeners:
                self._state_listeners.remove(listener)

    def add_gap_listener(self, listener: GapListener) -> None:
        """Call ``listener(gap)`` when messages may have been missed: after the
        session expired and the client registered again, or when the cleaner
        had started to delete this client's queues."""
        with self._lock:
            self._gap_listeners.append(listener)

    def remove_gap_listener(self, listener: GapListener) -> None:
        with self._lock:
            if listener in self._gap_listeners:
                self._gap_listeners.remove(listener)

    def _set_state(self, state: ClientState) -> None:
        with self._lock:
            if self._state == state or self._state == ClientState.CLOSED:
                return
            self._state = state
            listeners = list(self._state_listeners)
        logger.info("client %s is %s", self.client_id, state.value)
        self._notifier.emit(listeners, state)

    def _emit_gap(self, gap: Gap) -> None:
        logger.warning(
            "client %s may have missed messages on %s (%s)",
            self.client_id,
            sorted(gap.topics),
            gap.reason,
        )
        with self._lock:
            listeners = list(self._gap_listeners)
        self._notifier.emit(listeners, gap)

    # -- publish ------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: Any,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        require_subscribers: bool = False,
    ) -> PublishReceipt:
        """Write ``payload`` into the queue of every subscriber of ``topic``.

        Blocks until ZooKeeper confirms. Every subscriber gets the message or
        none does (one transaction), all see messages in the same order, and
        every subscriber whose ``subscribe()`` returned before this call is
        included. Returns a receipt with the message id and the number of
        subscribers reached (0 if none, unless ``require_subscribers``, which
        raises :class:`NoSubscribers`). Raises :class:`PayloadTooLarge`,
        :class:`SerializationError` or ``ValueError`` (bad topic) before
        anything is sent, and :class:`PublishTimeout` if not confirmed within
        ``timeout`` (default ``request_timeout``).
        """
        return self.publish_many(
            topic,
            [payload],
            headers=headers,
            timeout=timeout,
            require_subscribers=require_subscribers,
        )

    def publish_many(
        self,
        topic: str,
        payloads: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        require_subscribers: bool = False,
    ) -> PublishReceipt:
        """Publish several messages, packed into as few nodes per subscriber as
        ``max_message_bytes`` allows and written in one transaction when they
        fit. Subscribers receive them in the given order. Same guarantees and
        errors as :meth:`publish`."""
        items = list(payloads)
        if not items:
            raise ValueError("publish_many needs at least one payload")
        timeout = self._config.request_timeout if timeout is None else timeout
        if self._config.linger <= 0:
            self._check_open()
            with translated(f"publish to {topic!r}"):
                return self._publisher.publish(
                    topic, items, headers, timeout=timeout, require_subscribers=require_subscribers
                )
        future = self._submit(topic, items, headers, timeout, require_subscribers)
        return self._wait(future, timeout)

    def publish_async(
        self,
        topic: str,
        payload: Any,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        require_subscribers: bool = False,
    ) -> Future[PublishReceipt]:
        """Publish without waiting: the returned future resolves to the
        :class:`PublishReceipt` once ZooKeeper has confirmed the write (a
        publisher confirm), or to the error :meth:`publish` would raise.
        Bad input raises here, before anything is queued. Publishes from one
        thread keep their order; concurrent ones share transactions."""
        timeout = self._config.request_timeout if timeout is None else timeout
        return self._submit(topic, [payload], headers, timeout, require_subscribers)

    def _submit(
        self,
        topic: str,
        payloads: list[Any],
        headers: dict[str, str] | None,
        timeout: float,
        require_subscribers: bool,
    ) -> Future[PublishReceipt]:
        self._check_open()
        entries = self._publisher.entries(topic, payloads, headers)
        for entry in entries:
            envelope.check_size(entry, self._config.max_message_bytes)
        with self._lock:
            if self._batcher is None:
                self._batcher = Batcher(self._publisher, linger=self._config.linger)
            batcher = self._batcher
        return batcher.submit(
            topic,
            entries,
            deadline=deadline_after(timeout),
            require_subscribers=require_subscribers,
        )

    @staticmethod
    def _wait(future: Future[PublishReceipt], timeout: float) -> PublishReceipt:
        try:
            # The batcher answers by the deadline; the margin only guards it.
            return future.result(timeout=timeout + 5.0)
        except FutureTimeout:
            raise PublishTimeout(
                "publish not confirmed in time; the outcome is unknown",
                message_ids=(),
                reached=0,
            ) from None

    # -- subscribe ------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        handler: Handler | None = None,
        *,
        on_error: ErrorHandler | None = None,
        max_attempts: int = 3,
        prefetch: int | None = None,
        durable: bool = False,
    ) -> Subscription:
        """Receive every message published to ``topic`` from now on (and any
        backlog left in this client id's queue).

        With a ``handler``, it is called with each :class:`Message` on a
        thread of this subscription, in order. A raising handler is reported
        to ``on_error(exc, message)`` (default: log) and tried again up to
        ``max_attempts`` times; then the message is dropped and the
        subscription goes on. Without a handler, use ``sub.get(timeout)`` or
        ``for msg in sub``. When this returns, every later publish reaches
        this subscription.

        ``durable=True`` (with an explicit ``client_id``) keeps the
        subscription registered while the client is away: publishers go on
        filling its queue until it comes back, or until it has been gone for
        the cleaner's grace period. ``close()`` keeps a durable subscription;
        ``unsubscribe()`` ends it.
        """
        validate_name(topic, "topic")
        if handler is not None and not callable(handler):
            raise TypeError("handler must be callable")
        if on_error is not None and not callable(on_error):
            raise TypeError("on_error must be callable")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        prefetch = self._config.prefetch if prefetch is None else prefetch
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, not {prefetch!r}")
        if durable and not self._explicit_id:
            raise ValueError("a durable subscription needs an explicit client_id to come back as")
        self._check_open()
        with self._lock:
            if topic in self._subscriptions:
                raise AlreadySubscribed(topic)
            sub = Subscription(
                self,
                topic,
                handler,
                on_error=on_error,
                max_attempts=max_attempts,
                prefetch=prefetch,
                durable=durable,
            )
            self._subscriptions[topic] = sub
            try:
                with translated(f"subscribe to {topic!r}"):
                    self._register_subscription(
                        topic, deadline_after(self._config.request_timeout), durable=durable
                    )
                    sub._registered = True
            except BaseException:
                del self._subscriptions[topic]
                raise
        sub._start()
        return sub

    def subscriptions(self) -> list[Subscription]:
        """The open subscriptions."""
        with self._lock:
            return list(self._subscriptions.values())

    def _subscription_closed(self, sub: Subscription, *, delete_queue: bool) -> None:
        with self._lock:
            if self._subscriptions.get(sub.topic) is sub:
                del self._subscriptions[sub.topic]
            unregister = sub._registered and (delete_queue or not sub.durable)
            if unregister and self._closed and not sub.durable:
                unregister = False  # ending the session removes it anyway
            deadline = deadline_after(self._config.request_timeout)
            with translated(f"unsubscribe from {sub.topic!r}"):
                if unregister:
                    self._unregister_subscription(sub.topic, deadline)
                    sub._registered = False
                if delete_queue:
                    self._delete_queue(sub.topic, deadline)

    def unsubscribe(self, topic: str) -> None:
        """Remove this client id's subscription to ``topic`` (durable or not)
        and delete its queue, whether or not it is open in this process."""
        validate_name(topic, "topic")
        self._check_open()
        with self._lock:
            sub = self._subscriptions.get(topic)
        if sub is not None:
            sub.unsubscribe()
            return
        with self._lock, translated(f"unsubscribe from {topic!r}"):
            deadline = deadline_after(self._config.request_timeout)
            self._unregister_subscription(topic, deadline)
            self._delete_queue(topic, deadline)

    # -- work queues -----------------------------------------------------------------------

    def queue(self, name: str, *, max_attempts: int = 5) -> WorkQueue:
        """A handle on the work queue ``name`` (created on first use). Items
        reserved ``max_attempts`` times without an ack become dead letters."""
        from .workqueue import WorkQueue

        self._check_open()
        return WorkQueue(self, name, max_attempts=max_attempts)

    # -- cleaner and stats -------------------------------------------------------------------

    def start_cleaner(
        self,
        *,
        grace: float | None = None,
        interval: float = 30.0,
        result_ttl: float = 3600.0,
    ) -> Cleaner:
        """Host the cleaner on this client: it joins the election and, while it
        leads, deletes the queues of clients gone for longer than ``grace``
        seconds (default: the larger of 60 s and twice the session timeout),
        topics left without subscribers as long, and work-queue results
        unread after ``result_ttl``.
        Idempotent: returns the running cleaner."""
        from .cleaner import Cleaner

        self._check_open()
        with self._lock:
            if self._cleaner is None or self._cleaner.stopped:
                self._cleaner = Cleaner(
                    self,
                    grace=grace,
                    interval=interval,
                    result_ttl=result_ttl,
                )
                self._cleaner.start()
            return self._cleaner

    def stats(self) -> BusStats:
        """Topics, subscribers, clients and the backlog of every queue."""
        from .stats import collect

        self._check_open()
        with translated("stats"):
            return collect(self._conn, self._layout, deadline_after(self._config.request_timeout))

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close subscriptions (queues kept), stop the cleaner and end the
        session. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subs = list(self._subscriptions.values())
            cleaner = self._cleaner
        for sub in subs:
            try:
                sub.close()
            except ZkPubSubError as exc:
                logger.debug("closing %r: %s", sub, exc)
        if cleaner is not None:
            cleaner.stop()
        if self._batcher is not None:
            self._batcher.close(self._config.request_timeout)
        if self._conn.connected.is_set():
            try:
                with translated("delete receipts"):
                    self._publisher.janitor.close(
                        deadline_after(min(5.0, self._config.request_timeout))
                    )
            except ZkPubSubError as exc:  # the cleaner removes them after the grace
                logger.debug("client %s: receipts left: %s", self.client_id, exc)
        self._events.put(None)
        self._conn.stop()
        if threading.current_thread() is not self._supervisor:
            self._supervisor.join(5)
        with self._lock:
            self._state = ClientState.CLOSED
            listeners = list(self._state_listeners)
        self._notifier.emit(listeners, ClientState.CLOSED)
        self._notifier.close()
        logger.info("client %s closed", self.client_id)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.client_id} {self._state.value} root={self.root!r}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")

    # -- registration (the only code that writes ephemeral nodes) ---------------------

    def _ensure_chroot(self) -> None:
        """Create the chroot named in ``hosts`` if it is missing."""
        hosts = self._config.hosts
        slash = hosts.find("/")
        if slash < 0 or hosts[slash:] in ("", "/"):
            return
        boot = Connection(hosts[:slash], session_timeout=self._config.session_timeout)
        try:
            boot.start(self._config.connect_timeout)
            with translated("create chroot"):
                boot.ensure_path(hosts[slash:], deadline_after(self._config.request_timeout))
        finally:
            boot.stop()

    def _ensure_base(self, deadline: float | None) -> None:
        for path in self._layout.base_paths():
            self._conn.ensure_path(path, deadline)

    def _ensure_queue(self, topic: str) -> None:
        path = self._layout.queue(self.client_id, topic)
        self._conn.ensure_path(path, deadline_after(self._config.request_timeout))

    def _create_ephemeral(
        self, path: str, data: bytes, deadline: float | None, owner_wait: float
    ) -> None:
        """Create an ephemeral node of this session, waiting up to
        ``owner_wait`` for another session's node at the same path to go."""
        kazoo = self._conn.kazoo
        owner_deadline = deadline_after(owner_wait)
        gone = threading.Event()
        while True:
            self._conn.wait_connected(deadline, f"create {path}")
            try:
                self._conn.result(kazoo.create_async(path, data, ephemeral=True), deadline, path)
                return
            except ConnectionLost:
                continue  # if it landed, the next try finds it with our owner
            except NodeExistsError:
                pass
            gone.clear()
            stat = self._conn.call(
                lambda: kazoo.exists_async(path, watch=lambda _e: gone.set()), deadline, path
            )
            if stat is None:
                continue
            if stat.ephemeralOwner == self._conn.session_id:
                return
            if expired(owner_deadline):
                raise ClientIdInUse(self.client_id)
            logger.info("%s is held by another session; waiting for it to expire", path)
            gone.wait(0.5)

    def _register_client(self, deadline: float | None, *, owner_wait: float) -> None:
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "version": __version__,
        }
        self._create_ephemeral(
            self._layout.client(self.client_id),
            json.dumps(info).encode(),
            deadline,
            owner_wait,
        )
        # Once registered, nothing of ours is purged: the folder stays.
        self._conn.ensure_path(self._layout.client_receipts(self.client_id), deadline)

    def _register_subscription(
        self, topic: str, deadline: float | None, *, durable: bool = False
    ) -> None:
        """Queue first, then the subscriber node with a bump of the topic's
        version in the same transaction. A durable registration is a
        persistent node; a plain one is ephemeral. An existing node of the
        other kind (ours) is replaced in the same transaction."""
        conn, layout, kazoo = self._conn, self._layout, self._conn.kazoo
        queue_path = layout.queue(self.client_id, topic)
        topic_path = layout.topic(topic)
        sub_path = layout.subscriber(topic, self.client_id)
        data = b"durable" if durable else b""
        conn.ensure_path(queue_path, deadline)
        while True:
            conn.ensure_path(topic_path, deadline)
            stat = conn.call(lambda: kazoo.exists_async(sub_path), deadline, sub_path)
            session = conn.session_id
            txn = kazoo.transaction()
            if stat is not None:
                owner = stat.ephemeralOwner
                if (durable and owner == 0) or (not durable and owner == session):
                    return  # already registered as asked (perhaps by a lost answer)
                if owner not in (0, session):
                    # A dying session's node: it goes when that session expires.
                    if expired(deadline):
                        raise OperationTimeout(f"subscribe to {topic!r}: {sub_path} stays taken")
                    time.sleep(0.2)
                    continue
                txn.delete(sub_path, stat.version)
            txn.create(sub_path, data, ephemeral=not durable)
            txn.set_data(topic_path, b"", -1)
            try:
                results = conn.result(txn.commit_async(), deadline, f"subscribe to {topic!r}")
            except ConnectionLost:
                continue  # the exists() above tells whether it landed
            if not any(isinstance(r, Exception) for r in results):
                return
            # NodeExists / BadVersion: it changed under us; NoNode: the empty
            # topic node was removed in between. Look again.

    def _unregister_subscription(self, topic: str, deadline: float | None) -> None:
        """Remove the subscriber node (either kind) and bump the version."""
        conn, layout, kazoo = self._conn, self._layout, self._conn.kazoo
        sub_path = layout.subscriber(topic, self.client_id)
        while True:
            txn = kazoo.transaction()
            txn.delete(sub_path)
            txn.set_data(layout.topic(topic), b"", -1)
            try:
                conn.wait_connected(deadline)
                conn.result(txn.commit_async(), deadline, f"unsubscribe from {topic!r}")
                return  # a NoNode result means there was nothing to remove
            except ConnectionLost:
                continue

    def _delete_queue(self, topic: str, deadline: float | None) -> None:
        from .cleaner import delete_tree

        delete_tree(self._conn, self._layout.queue(self.client_id, topic), deadline)
        with contextlib.suppress(NotEmptyError):  # other topics' queues remain
            self._conn.delete(self._layout.client_messages(self.client_id), deadline)

    # -- the supervisor thread: state changes and re-registration ----------------------

    def _supervise(self) -> None:
        while True:
            event = self._events.get()
            if event is None or self._closed:
                return
            state, at = event
            if state == KazooState.SUSPENDED:
                if self._disconnected_at is None:
                    self._disconnected_at = at
                self._set_state(ClientState.SUSPENDED)
            elif state == KazooState.LOST:
                # The server may have ended the session (and dropped its
                # subscriber nodes) any time after the connection went down,
                # or after it was last known alive if a reply said it ended;
                # and other servers may apply the end before ours tells us.
                if self._lost_at is None:
                    starts = [self._conn.session_lost_since, self._disconnected_at, at]
                    first = min(t for t in starts if t is not None)
                    self._lost_at = first - self._config.session_timeout
                self._set_state(ClientState.LOST)
            elif state == KazooState.CONNECTED:
                self._on_connected()
            elif state == _REGISTRATION_GONE:
                self._on_registration_gone()

    def _watch_registration(self) -> None:
        """Watch this client's registration node (watches do not outlive a
        connection, so again after each reconnect)."""
        path = self._layout.client(self.client_id)

        def checked(result: Any) -> None:  # kazoo's thread
            try:
                missing = result.get_nowait() is None
            except Exception:
                return  # connection trouble: the next CONNECTED looks again
            if missing and not self._closed:
                self._events.put((_REGISTRATION_GONE, time.time()))

        try:
            request = self._conn.kazoo.exists_async(path, watch=self._on_registration_event)
            request.rawlink(checked)
        except Exception as exc:  # not connected: the next CONNECTED sets it
            logger.debug("watching %s: %s", path, exc)

    def _on_registration_event(self, event: WatchedEvent) -> None:  # kazoo's thread
        if event.type == EventType.DELETED and not self._closed:
            self._events.put((_REGISTRATION_GONE, time.time()))

    def _on_registration_gone(self) -> None:
        """The registration node vanished while the connection stayed up: the
        server may have ended the session without closing this connection
        (kazoo would not notice). Writing the node again settles it: on a
        live session it is back; on an ended one the refusal makes the
        connection drop, kazoo finds the session expired, and the client
        registers again on a new one (with a gap notice)."""
        logger.warning("client %s: registration node deleted; checking the session", self.client_id)
        try:
            with self._lock:
                if self._closed:
                    return
                deadline = deadline_after(self._config.request_timeout)
                with translated("register again"):
                    self._register_client(deadline, owner_wait=self._config.request_timeout)
        except ZkPubSubError as exc:
            logger.info("client %s: writing the registration again: %s", self.client_id, exc)
        if self._conn.connected.is_set():
            self._watch_registration()

    def _on_connected(self) -> None:
        session = self._conn.session_id
        if session is None or session == self._registered_session:
            self._disconnected_at = None  # the session outlived the outage
            self._conn.session_lost_since = None
            self._watch_registration()
            self._set_state(ClientState.CONNECTED)
            return
        # A new session: everything ephemeral is gone. Register again.
        self._set_state(ClientState.LOST)
        try:
            with self._lock:
                if self._closed:
                    return
                deadline = deadline_after(self._config.request_timeout)
                with translated("register again"):
                    self._register_client(deadline, owner_wait=self._config.request_timeout)
                    purged = self._check_purge(deadline)
                    subs = list(self._subscriptions.values())
                    topics = [sub.topic for sub in subs if not sub.durable]
                    for sub in subs:
                        self._register_subscription(sub.topic, deadline, durable=sub.durable)
        except ClientClosed:
            return
        except ZkPubSubError as exc:
            logger.warning(
                "client %s: registering again failed (%s); retrying", self.client_id, exc
            )
            time.sleep(0.5)
            if self._conn.connected.is_set():
                self._events.put((KazooState.CONNECTED, time.time()))
            return
        self._registered_session = session
        self._watch_registration()
        since = self._lost_at or self._disconnected_at or time.time()
        self._lost_at = None
        self._disconnected_at = None
        self._conn.session_lost_since = None
        for sub in subs:
            sub._restored()
        now = time.time()
        if topics:
            self._emit_gap(Gap(frozenset(topics), since, now, "session expired"))
        if purged:
            self._emit_gap(Gap(frozenset(purged), since, now, "backlog purged"))
        self._set_state(ClientState.CONNECTED)

    def _check_purge(self, deadline: float | None) -> list[str]:
        """After registering: if the cleaner had begun deleting our queues, the
        rest of its work is now refused (it proves our absence in every
        step). Clear its marker and report the topics affected."""
        conn, layout, kazoo = self._conn, self._layout, self._conn.kazoo
        marker = layout.purge_marker(self.client_id)
        stat = conn.call(lambda: kazoo.exists_async(marker), deadline, marker)
        if stat is None:
            return []
        topics = conn.children(layout.client_messages(self.client_id), deadline) or []
        conn.delete(marker, deadline)
        return sorted(set(topics) | set(self._subscriptions))

    # -- for tests ---------------------------------------------------------------------

    def _session_credentials(self) -> tuple[int, bytes] | None:
        return self._conn.credentials
