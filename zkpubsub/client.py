"""The client: one ZooKeeper session, and everything a service does on it.

``Client`` is a facade. It builds the shared context once
(:mod:`zkpubsub._context`) and hands it to the parts that do the work: the
session and its registration (:mod:`zkpubsub.session`), the publish engine
(:mod:`zkpubsub._engine`), subscriptions, work queues and the cleaner.
``docs/architecture.md`` maps them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._callables import check_callable
from ._context import CLOSING_REQUEST_TIMEOUT, Context
from ._deadlines import MAX_TIMEOUT, expired
from ._engine import PublishEngine, PublishRequest, Resolved
from ._numbers import is_int, is_real
from ._payloads import payload_list
from ._pump import ReceivePump, WatchMode
from ._registration import end_subscription
from ._registry import SubscriptionRegistry
from .backlog import Backlog, WhenFull
from .config import (
    DEFAULT_HANDLER_ATTEMPTS,
    DEFAULT_MAX_RETRY_DELAY,
    DEFAULT_QUEUE_ATTEMPTS,
    DEFAULT_QUEUE_MAX_ITEMS,
    DEFAULT_RETRY_DELAY,
    ClientConfig,
    parse_hosts,
)
from .connection import Connection, translated
from .errors import ZkPubSubError
from .layout import validate_name
from .message import PublishReceipt
from .publisher import Publisher
from .security import AuthEntry, Roles, Tls, normalize_auth
from .serializers import Serializer, resolve
from .session import GapListener, Session, StateListener
from .state import ClientState
from .subscription import ErrorHandler, Handler, Subscription

if TYPE_CHECKING:
    from .cleaner import Cleaner
    from .stats import BusStats
    from .workqueue import WorkQueue

__all__ = ["Client"]

logger = logging.getLogger(__name__)


class Client:
    """A connection to ZooKeeper that publishes and subscribes.

    ``hosts`` is ZooKeeper's connection string (``"zk1:2181,zk2:2181"``,
    optionally ending in a chroot such as ``"/apps/billing"``). The options
    are the fields of :class:`~zkpubsub.ClientConfig`: pass one as
    ``config=``, and any of its fields as keywords (a keyword overrides the
    same field of ``config``).

    Everything lives under ``root``. ``client_id`` names this client's
    queues: leave it ``None`` for a random id, or give a stable name
    (``"billing-cache"``) for a durable subscriber that keeps its backlog
    across restarts within the cleaner's grace period. Two live clients must
    not share an id: the constructor waits ``registration_wait`` seconds
    (default: twice the session timeout) for a previous session of the same
    id to expire, then raises :class:`~zkpubsub.ClientIdInUse` naming its
    holder; a previous holder that provably died (same machine and pid
    namespace, pid gone) is taken over at once. ``on_gap``
    is added as a gap listener before registering, so it also hears that
    the cleaner had started deleting this id's queues before the client
    came back.

    ``auth``, ``acl`` and ``tls`` secure the bus (``docs/security.md``):
    credentials as ``(scheme, credential)`` pairs or :class:`Sasl`, the ACL
    policy of every node this client creates (``"open"``, ``"secured"`` —
    the default with credentials — or :class:`Roles`), and TLS settings.

    The constructor connects and registers (``ConnectTimeout`` if no session
    within ``connect_timeout``; :class:`TlsError`, :class:`AuthenticationFailed`
    or :class:`NotAuthorized` for credentials or settings that cannot work).
    After a session expiry the client registers again by itself,
    re-subscribes every open subscription and tells gap listeners that
    messages may have been missed.
    """

    def __init__(
        self,
        hosts: str,
        *,
        config: ClientConfig | None = None,
        on_gap: GapListener | None = None,
        root: str | None = None,
        client_id: str | None = None,
        session_timeout: float | None = None,
        connect_timeout: float | None = None,
        request_timeout: float | None = None,
        serializer: Serializer | str | None = None,
        max_message_bytes: int | None = None,
        max_transaction_bytes: int | None = None,
        prefetch: int | None = None,
        linger: float | None = None,
        max_pending: int | None = None,
        registration_wait: float | None = None,
        close_timeout: float | None = None,
        backlog: Backlog | None = None,
        watch_mode: WatchMode | None = None,
        auth: Sequence[AuthEntry] | None = None,
        acl: str | Roles | None = None,
        tls: Tls | None = None,
        cleaner: bool | None = None,
        cleaner_grace: float | None = None,
        cleaner_interval: float | None = None,
    ) -> None:
        if on_gap is not None:
            check_callable(on_gap, "on_gap")
        given: dict[str, Any] = {
            "auth": None if auth is None else normalize_auth(auth),
            "acl": acl,
            "tls": tls,
            "root": root,
            "client_id": client_id,
            "session_timeout": session_timeout,
            "connect_timeout": connect_timeout,
            "request_timeout": request_timeout,
            "serializer": None if serializer is None else resolve(serializer),
            "max_message_bytes": max_message_bytes,
            "max_transaction_bytes": max_transaction_bytes,
            "prefetch": prefetch,
            "linger": linger,
            "max_pending": max_pending,
            "registration_wait": registration_wait,
            "close_timeout": close_timeout,
            "backlog": backlog,
            "watch_mode": watch_mode,
            "cleaner": cleaner,
            "cleaner_grace": cleaner_grace,
            "cleaner_interval": cleaner_interval,
        }
        base = config if config is not None else ClientConfig()
        if not isinstance(base, ClientConfig):
            raise TypeError(f"config must be a ClientConfig, not {type(base).__name__}")
        parse_hosts(hosts)
        overrides = {k: v for k, v in given.items() if v is not None}
        chosen = overrides.pop("client_id", base.client_id)
        resolved = dataclasses.replace(
            base,
            **overrides,
            hosts=hosts,
            client_id=chosen if chosen is not None else uuid.uuid4().hex,
        )
        self.client_id: str = resolved.client_id  # type: ignore[assignment]
        self._closed = False
        self._close_lock = threading.Lock()
        conn = Connection(
            hosts,
            session_timeout=resolved.session_timeout,
            auth=resolved.auth,
            tls=resolved.tls,
        )
        self._ctx = Context.build(
            conn,
            resolved,
            self.client_id,
            explicit_id=chosen is not None,
            is_closed=lambda: self._closed,
        )
        self._subs = SubscriptionRegistry()
        self._cleaner: Cleaner | None = None
        self._session = Session(self._ctx, self._subs, on_gap)
        self._pump = ReceivePump(self._ctx, resolved.watch_mode)
        self._publisher = Publisher(self._ctx)
        self._engine = PublishEngine(self._ctx, self._publisher)
        self._session.start()
        if resolved.cleaner:
            self._start_cleaner({})
        logger.info("client %s connected (root %s)", self.client_id, self.root)

    # -- state ------------------------------------------------------------------

    @property
    def status(self) -> ClientState:
        """The current :class:`ClientState`."""
        return ClientState.CLOSED if self._closed else self._session.state

    @property
    def config(self) -> ClientConfig:
        """The configuration in force (``hosts`` and ``client_id`` filled in)."""
        return self._ctx.config

    @property
    def root(self) -> str:
        return self._ctx.layout.root_path

    @property
    def pending_publishes(self) -> int:
        """Publishes accepted and not confirmed (or failed) yet; at
        ``max_pending`` a further publish waits for room."""
        return self._engine.pending

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(state)`` on every state change (on a thread of ours)."""
        self._ctx.check_open()
        check_callable(listener, "listener")
        self._session.add_listener(listener)

    def remove_listener(self, listener: StateListener) -> None:
        self._session.remove_listener(listener)

    def add_gap_listener(self, listener: GapListener) -> None:
        """Call ``listener(gap)`` when messages may have been missed: after the
        session expired and the client registered again, or when the cleaner
        had started to delete this client's queues."""
        self._ctx.check_open()
        check_callable(listener, "listener")
        self._session.add_gap_listener(listener)

    def remove_gap_listener(self, listener: GapListener) -> None:
        self._session.remove_gap_listener(listener)

    def add_observer(self, observer: object) -> None:
        """Instrumentation (:mod:`zkpubsub.metrics` uses it): call
        ``observer.published(topic, messages, seconds, outcome)`` when a
        publish settles (``outcome`` is ``"ok"`` or the error's class name),
        ``observer.handled(topic, published_at, handled_at)`` when a message
        of a subscription was handled, and ``observer.reservation_lost(queue,
        items)`` when an ack or release found its reservation gone — each
        method only if the observer has it. They run on the client's threads
        as the events happen: they must be quick and must not block.
        ``ClientClosed`` once the client is closed."""
        self._ctx.check_open()
        self._ctx.hooks.add(observer)

    def remove_observer(self, observer: object) -> None:
        self._ctx.hooks.remove(observer)

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
        ``timeout`` (default ``request_timeout``), with the message ids and
        the reason.
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
        items = payload_list(payloads, "publish_many")
        request = self._submit(topic, items, headers, timeout, require_subscribers, False)
        return self._engine.wait(request)

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
        publisher confirm), or to the error :meth:`publish` would raise, by
        ``timeout`` at the latest. Bad input raises here, before anything is
        queued; so does :class:`PublishTimeout` when ``max_pending``
        publishes are unfinished for all of ``timeout``. Publishes from one
        thread keep their order; concurrent ones share transactions. Futures
        are resolved (and their callbacks run) on one thread of the client,
        in the order the publishes finished."""
        request = self._submit(topic, [payload], headers, timeout, require_subscribers, True)
        assert request.future is not None
        return request.future

    def publish_many_async(
        self,
        topic: str,
        payloads: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        require_subscribers: bool = False,
    ) -> Future[PublishReceipt]:
        """:meth:`publish_many` without waiting: a future, as :meth:`publish_async`."""
        items = payload_list(payloads, "publish_many")
        request = self._submit(topic, items, headers, timeout, require_subscribers, True)
        assert request.future is not None
        return request.future

    def _publish_to(
        self,
        topic: str,
        payloads: list[Any],
        headers: dict[str, str] | None,
        timeout: float | None,
        require_subscribers: bool,
        on_done: Resolved,
        *,
        wait_for_room: bool = True,
    ) -> bool:
        """Internal, for the asyncio client: publish as :meth:`publish_many_async`,
        with the outcome handed to ``on_done(receipt, error)`` on the thread
        that settles it instead of a future. ``on_done`` must never block.
        Without ``wait_for_room``, ``False`` (nothing done) when
        ``max_pending`` publishes are unfinished."""
        if wait_for_room:
            self._submit(topic, payloads, headers, timeout, require_subscribers, False, on_done)
            return True
        self._ctx.check_open()
        return self._engine.try_submit(
            topic,
            self._publisher.entries(topic, payloads, headers),
            timeout=self._ctx.config.request_timeout if timeout is None else timeout,
            require_subscribers=require_subscribers,
            on_done=on_done,
        )

    def _check_messages(
        self, topic: str, payloads: Sequence[Any], headers: dict[str, str] | None = None
    ) -> None:
        """Internal, for the cache and the gateway: raise what publishing
        ``payloads`` on ``topic`` would raise for the messages themselves
        (``SerializationError``, ``PayloadTooLarge``, ``ValueError``),
        sending nothing."""
        self._publisher.entries(topic, payloads, headers)

    def _submit(
        self,
        topic: str,
        payloads: list[Any],
        headers: dict[str, str] | None,
        timeout: float | None,
        require_subscribers: bool,
        want_future: bool,
        on_done: Resolved | None = None,
    ) -> PublishRequest:
        self._ctx.check_open()
        entries = self._publisher.entries(topic, payloads, headers)
        return self._engine.submit(
            topic,
            entries,
            timeout=self._ctx.config.request_timeout if timeout is None else timeout,
            require_subscribers=require_subscribers,
            want_future=want_future,
            on_done=on_done,
        )

    # -- subscribe ------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        handler: Handler | None = None,
        *,
        on_error: ErrorHandler | None = None,
        max_attempts: int = DEFAULT_HANDLER_ATTEMPTS,
        prefetch: int | None = None,
        durable: bool = False,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
        max_backlog: int | None = None,
        max_backlog_bytes: int | None = None,
        when_full: WhenFull | None = None,
    ) -> Subscription:
        """Receive every message published to ``topic`` from now on (and any
        backlog left in this client id's queue).

        With a ``handler``, it is called with each :class:`Message` on a
        thread of this subscription, in order. A raising handler is reported
        to ``on_error(exc, message)`` (default: log) and tried again up to
        ``max_attempts`` times, after ``retry_delay`` seconds and then twice
        as long each time (at most ``max_retry_delay``); then the message is
        dropped and the subscription goes on. Later messages of the topic
        wait meanwhile; other topics do not. An ``async def`` handler is
        refused (``TypeError``). Without a handler, use ``sub.get(timeout)``
        or ``for msg in sub``. When this returns, every later publish reaches
        this subscription.

        The queue holds at most ``max_backlog`` nodes and
        ``max_backlog_bytes`` bytes (defaults: the client's ``backlog``);
        when it is full, publishers skip it: ``when_full="drop"`` leaves a
        marker that becomes a gap notice (``reason="backlog full"``, with the
        count missed) when the subscription reaches it; with ``"evict"`` the
        subscription is ended and its queue removed (by this client, or by
        the cleaner if this client cannot act), with a gap notice
        (``reason="backlog full: evicted"``); ``sub.evicted`` then says so.

        ``durable=True`` (with an explicit ``client_id``) keeps the
        subscription registered while the client is away: publishers go on
        filling its queue until it comes back, or until it has been gone for
        the cleaner's grace period. ``close()`` keeps a durable subscription;
        ``unsubscribe()`` ends it.
        """
        validate_name(topic, "topic")
        if handler is not None:
            check_callable(handler, "handler")
        if on_error is not None:
            check_callable(on_error, "on_error")
        if not is_int(max_attempts) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        for name, delay in (("retry_delay", retry_delay), ("max_retry_delay", max_retry_delay)):
            if not is_real(delay) or not 0 <= delay <= MAX_TIMEOUT:  # NaN fails too
                raise ValueError(
                    f"{name} must be a number of seconds from 0 to {MAX_TIMEOUT:.0f} (a year), "
                    f"not {delay!r}"
                )
        prefetch = self._ctx.config.prefetch if prefetch is None else prefetch
        if not is_int(prefetch) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, not {prefetch!r}")
        default = self._ctx.config.backlog
        backlog = Backlog(
            default.max_nodes if max_backlog is None else max_backlog,
            default.max_bytes if max_backlog_bytes is None else max_backlog_bytes,
            default.when_full if when_full is None else when_full,
        )
        if durable and not self._ctx.explicit_id:
            raise ValueError("a durable subscription needs an explicit client_id to come back as")
        self._ctx.check_open()
        sub = Subscription(
            self._ctx,
            self._subs,
            topic,
            handler,
            on_error=on_error,
            max_attempts=max_attempts,
            prefetch=prefetch,
            durable=durable,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
            backlog=backlog,
            report_gap=self._session.emit_gap,
            pump=self._pump,
        )
        sub.open()
        return sub

    def subscriptions(self) -> list[Subscription]:
        """The open subscriptions."""
        return [sub for sub in self._subs.all() if isinstance(sub, Subscription)]

    @property
    def unfinished(self) -> list[str]:
        """The topics whose end waits for a server: unsubscribed (or, not
        durable, closed) while none answered. The client deregisters them
        and deletes their queues once one does; a client closed first
        leaves that to the cleaner."""
        return self._subs.unfinished_topics()

    def unsubscribe(self, topic: str) -> None:
        """Remove this client id's subscription to ``topic`` (durable or not)
        and delete its queue, whether or not it is open in this process."""
        validate_name(topic, "topic")
        self._ctx.check_open()
        sub = self._subs.get(topic)
        if isinstance(sub, Subscription):
            sub.unsubscribe()
            return
        with self._subs.lock:
            end_subscription(
                self._ctx,
                topic,
                self._ctx.deadline(),
                unregister=True,
                drop_queue=True,
                once=False,
            )

    # -- work queues -----------------------------------------------------------------------

    def queue(
        self,
        name: str,
        *,
        max_attempts: int = DEFAULT_QUEUE_ATTEMPTS,
        max_items: int | None = DEFAULT_QUEUE_MAX_ITEMS,
        visibility_timeout: float | None = None,
    ) -> WorkQueue:
        """A handle on the work queue ``name`` (created on first use). Items
        reserved ``max_attempts`` times without an ack become dead letters.
        A put waits for room while the queue holds ``max_items`` items
        (ready or reserved; ``None``: no bound), then raises
        :class:`QueueFull` at its timeout. With ``visibility_timeout``
        (seconds), items are reserved with a lease: one held longer without
        ``item.extend()`` may be taken over by another worker (the holder's
        ack then raises :class:`ReservationLost`); ``None`` ties a
        reservation to its worker's session."""
        from .workqueue import WorkQueue

        self._ctx.check_open()
        return WorkQueue(
            self._ctx,
            name,
            max_attempts=max_attempts,
            max_items=max_items,
            visibility_timeout=visibility_timeout,
        )

    # -- cleaner and stats -------------------------------------------------------------------

    @property
    def cleaner(self) -> Cleaner | None:
        """The cleaner candidate this client hosts (``None`` if it hosts none)."""
        cleaner = self._cleaner
        return None if cleaner is None or cleaner.stopped else cleaner

    def start_cleaner(
        self,
        *,
        grace: float | None = None,
        interval: float | None = None,
        result_ttl: float | None = None,
        notice_ttl: float | None = None,
    ) -> Cleaner:
        """The cleaner this client hosts, with these options (``None`` keeps
        one). Every client hosts one from the start unless made with
        ``cleaner=False``; this starts it if not, or changes its options in
        place (it keeps its place in the election). While it leads, it
        deletes the queues of clients gone for longer than ``grace`` seconds
        (default: ``cleaner_grace``, else the larger of 60 s and twice the
        session timeout; never less than the session timeout, ``ValueError``
        otherwise), topics left without subscribers as long, and work-queue
        results unread after ``result_ttl`` (default an hour). A client with
        durable subscriptions it purged is left a notice of it (naming the
        topics, told to its gap listeners when it comes back), kept for
        ``notice_ttl`` (default a week). It sweeps
        every ``interval`` seconds (default ``cleaner_interval``, 30) and
        whenever the set of clients changes. The leader's grace applies to
        all, as do its TTLs: a candidate whose grace or TTLs differ logs a
        warning."""
        self._ctx.check_open()
        options: dict[str, Any] = {}
        if grace is not None:
            options["grace"] = grace
        if interval is not None:
            options["interval"] = interval
        if result_ttl is not None:
            options["result_ttl"] = result_ttl
        if notice_ttl is not None:
            options["notice_ttl"] = notice_ttl
        return self._start_cleaner(options)

    def _start_cleaner(self, options: dict[str, Any]) -> Cleaner:
        from .cleaner import Cleaner

        with self._close_lock:
            running = self._cleaner
            if running is not None and not running.stopped:
                running.configure(**options)
                return running
            self._cleaner = Cleaner(self._ctx, **options)
            self._cleaner.start()
            return self._cleaner

    def stats(self) -> BusStats:
        """Topics, subscribers, clients and the backlog of every queue."""
        from .stats import collect

        self._ctx.check_open()
        with translated("stats"):
            return collect(self._ctx.conn, self._ctx.layout, self._ctx.deadline())

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close subscriptions (queues kept), stop the cleaner, send or fail
        the publishes still pending, and end the session. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            cleaner = self._cleaner
        ctx = self._ctx
        # Every subscription stops at once, and their handlers share one
        # wait. Each one's ending requests get a closing request's time,
        # until one runs out of it (the server is gone, or not answering):
        # the others then do not wait.
        subs = [sub for sub in self._subs.all() if isinstance(sub, Subscription)]
        halted = {id(sub) for sub in subs if sub._halt()}
        handlers = ctx.deadline(ctx.config.close_timeout)
        for sub in subs:
            if id(sub) in halted:
                sub._wait_for_handler(handlers)
        answering = True
        for sub in subs:
            requests = ctx.closing_deadline() if answering else ctx.deadline(0)
            try:
                sub._end(halted=id(sub) in halted, drop_queue=False, deadline=requests)
            except ZkPubSubError as exc:
                logger.debug("closing %r: %s", sub, exc)
            answering = answering and not expired(requests)
        # what subscriptions closed earlier, while no server answered, left
        # (a registration goes with the session; an unsubscribed queue not)
        if answering and ctx.conn.connected.is_set():
            left = self._session.finish_unfinished(ctx.closing_deadline(), closing=True)
        else:
            left = self._subs.unfinished_topics(queues_only=True)
        if left:
            logger.warning(
                "client %s: unsubscribed while no server answered, the queues of %s stay "
                "(with a durable registration) until this client id unsubscribes again, "
                "or the cleaner removes them once it is gone for its grace",
                self.client_id,
                left,
            )
        # Threads waiting for the connection are not waited for: they end
        # when it is stopped below (what the pump has not deleted yet is
        # delivered again).
        connected = answering and ctx.conn.connected.is_set()
        if cleaner is not None:
            # Its election node goes with the session, closed below.
            cleaner.stop(min(5.0, ctx.config.close_timeout) if connected else 0.0, resign=False)
        self._pump.close(CLOSING_REQUEST_TIMEOUT if connected else 0.0)
        # Publishes still queued are sent while their confirmations come:
        # the engine gives up once none came for a closing request's time.
        sent = self._engine.close(ctx.config.request_timeout, idle=CLOSING_REQUEST_TIMEOUT)
        if ctx.conn.connected.is_set() and answering and sent:
            try:
                with translated("delete receipts"):
                    ctx.janitor.close(ctx.closing_deadline())
            except ZkPubSubError as exc:  # the cleaner removes them after the grace
                logger.debug("client %s: receipts left: %s", self.client_id, exc)
        ctx.janitor.stop()
        ctx.conn.stop()
        self._session.stop()
        logger.info("client %s closed", self.client_id)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.client_id} {self.status.value} root={self.root!r}>"

    # -- for tests ---------------------------------------------------------------------

    def _session_credentials(self) -> tuple[int, bytes] | None:
        return self._ctx.conn.credentials
