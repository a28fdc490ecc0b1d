"""The client's session: connecting, registering, and staying registered.

Guarantees:

* The client is registered (``clients/<id>``, every open subscription) on
  its current ZooKeeper session whenever it reports ``CONNECTED``.
* After a session expiry it registers again by itself, on the new session:
  the client node, every open subscription (a durable one is still there),
  and watches; then it tells gap listeners which topics may have missed
  messages, and since when.
* A registration node deleted under a live connection is written again
  (the server may have ended the session without closing the connection:
  the refusal then makes the client reconnect on a new session).
* Registrations are guarded: a subscription node or a queue node deleted
  or changed by anyone else (exists watches, armed again after every
  reconnect) is written again, and gap listeners hear which topic may have
  missed messages (publishes skip a missing registration and drop a
  missing queue). The client node is guarded the same way.
* State changes and gap notices reach listeners on a thread of ours, in
  order, never on the ZooKeeper client's thread.

One supervisor thread handles every state change kazoo reports, in order.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, KazooState, WatchedEvent

from ._context import Context
from ._deadlines import deadline_after
from ._registration import (
    check_purge,
    end_subscription,
    register_client,
    register_subscription,
    restore_client_data,
    restore_subscription,
)
from ._registry import Registered, SubscriptionRegistry
from .backlog import EVICTED, QueueRecord
from .connection import Connection, translated
from .errors import (
    ClientClosed,
    ConnectionLost,
    OperationTimeout,
    ZkPubSubError,
    ZooKeeperError,
)
from .layout import NodeKind
from .state import ClientState, Gap, Notifier

__all__ = ["GapListener", "Session", "StateListener"]


logger = logging.getLogger(__name__)

StateListener = Callable[[ClientState], Any]
GapListener = Callable[[Gap], Any]

# Events of ours on the supervisor's queue, beside kazoo's states.
_REGISTRATION_GONE: Final = "registration gone"
_SUBSCRIPTION_DISTURBED: Final = "subscription disturbed"
_CLIENT_CHANGED: Final = "client node changed"
# While subscription ends are deferred (a close with no answer from the
# server) and the connection is up, they are tried again this often: a
# request that timed out on a slow server leaves no reconnect to wait for.
RETRY_UNFINISHED: Final = 5.0
_ENDS_DEFERRED: Final = "subscription ends deferred"
PROBE_TIMEOUT: Final = 2.0  # the wait for the read that shows the server answers


class Session:
    """Registration and supervision of one client (internal)."""

    def __init__(
        self, ctx: Context, subscriptions: SubscriptionRegistry, on_gap: GapListener | None
    ) -> None:
        self._ctx = ctx
        self._subs = subscriptions
        self._state = ClientState.CONNECTING
        self._listeners_lock = threading.Lock()
        self._state_listeners: list[StateListener] = []
        self._gap_listeners: list[GapListener] = [on_gap] if on_gap is not None else []
        self._registered_session: int | None = None
        self._disconnected_at: float | None = None  # connection down since (wall clock)
        self._lost_at: float | None = None  # start of the gap after a session expiry
        # registering again on a new session has failed since (monotonic), and why
        self._failing: tuple[float, str] | None = None
        # topics a purge marker read while registering again named, until told
        self._purged: set[str] = set()
        # queues found marked full, emptied and made afresh while registering
        # again (topic: since when), kept until told as _purged is
        self._emptied: dict[str, float] = {}
        # state changes with the wall-clock time kazoo reported them
        self._events: queue.SimpleQueue[tuple[KazooState | str, float] | None] = queue.SimpleQueue()
        self._notifier = Notifier(f"zkpubsub-listeners-{ctx.client_id[:12]}")
        self._supervisor: threading.Thread | None = None
        # topics whose registration or queue someone else deleted or changed
        self._guard_lock = threading.Lock()
        self._disturbed: dict[str, tuple[str, float]] = {}
        self._guards: dict[tuple[str, str], Callable[[WatchedEvent], None]] = {}
        # the creation zxid of each guarded queue: a queue made again (the
        # pump makes a missing queue again at once) has another
        self._queue_czxid: dict[str, int] = {}
        subscriptions.on_registered = self._on_subscription_registered
        subscriptions.on_deferred = lambda: self._events.put((_ENDS_DEFERRED, time.time()))
        ctx.conn.add_state_listener(lambda state: self._events.put((state, time.time())))

    @property
    def state(self) -> ClientState:
        return self._state

    # -- starting ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, register and start supervising (``ConnectTimeout``,
        ``ClientIdInUse``…); on failure everything started is stopped."""
        ctx = self._ctx
        config = ctx.config
        try:
            self._ensure_chroot()
            ctx.conn.start(config.connect_timeout)
            if config.watch_mode == "persistent" and not ctx.conn.has_persistent_watches():
                raise ZooKeeperError(
                    "watch_mode='persistent' needs persistent watches (ZooKeeper 3.6+), "
                    "which this server does not have: use 'auto' or 'listing'"
                )
            deadline = deadline_after(max(config.connect_timeout, config.owner_wait + 5))
            with translated("register client"):
                for path in ctx.layout.base_paths():
                    ctx.conn.ensure_path(path, deadline)
                self._warn_if_open_root(deadline)
                register_client(ctx, deadline, owner_wait=config.owner_wait)
                purged = check_purge(ctx, deadline, ())
        except BaseException:
            self._notifier.close()
            ctx.conn.stop()
            raise
        self._registered_session = ctx.conn.session_id
        self._state = ClientState.CONNECTED
        self._watch_registration()
        if purged:
            # found at the start: when this client id went away, and how old
            # its unread backlog was, nobody here knows (0: any time before)
            self.emit_gap(Gap(frozenset(purged), 0.0, time.time(), "backlog purged"))
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"zkpubsub-session-{ctx.client_id[:12]}", daemon=True
        )
        self._supervisor.start()

    def _warn_if_open_root(self, deadline: float | None) -> None:
        """A secured client on a root anyone may write (made before the bus
        was secured, or by someone else first) protects nothing: say so."""
        ctx = self._ctx
        if ctx.acl.open:
            return
        kazoo, root = ctx.conn.kazoo, ctx.layout.root_path
        try:
            acl, _ = ctx.conn.call(lambda: kazoo.get_acls_async(root), deadline, f"ACL of {root}")
        except ZkPubSubError:
            return  # no right to read it: not an open node
        if any(entry.id.scheme == "world" and entry.perms & ~1 for entry in acl):
            logger.warning(
                "the root %s is writable by anyone (it was made without this ACL policy): "
                "the bus is not protected until an admin sets its ACLs (docs/security.md)",
                root,
            )

    def _ensure_chroot(self) -> None:
        """Create the chroot named in ``hosts`` if it is missing."""
        config = self._ctx.config
        hosts = config.hosts
        slash = hosts.find("/")
        if slash < 0 or hosts[slash:] in ("", "/"):
            return
        above_root = self._ctx.acl.acl(NodeKind.ABOVE_ROOT)
        boot = Connection(
            hosts[:slash],
            session_timeout=config.session_timeout,
            auth=config.auth,
            tls=config.tls,
            acl_for=lambda _path: above_root,
        )
        try:
            boot.start(config.connect_timeout)
            with translated("create chroot"):
                boot.ensure_path(hosts[slash:], deadline_after(config.request_timeout))
        finally:
            boot.stop()

    def stop(self) -> None:
        """End supervision (the caller closes the connection); tell state
        listeners the client is closed."""
        self._events.put(None)
        supervisor = self._supervisor
        if supervisor is not None and threading.current_thread() is not supervisor:
            supervisor.join(5)
        with self._listeners_lock:
            self._state = ClientState.CLOSED
            listeners = list(self._state_listeners)
        self._notifier.emit(listeners, ClientState.CLOSED)
        self._notifier.close()

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        with self._listeners_lock:
            self._state_listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        with self._listeners_lock:
            if listener in self._state_listeners:
                self._state_listeners.remove(listener)

    def add_gap_listener(self, listener: GapListener) -> None:
        with self._listeners_lock:
            self._gap_listeners.append(listener)

    def remove_gap_listener(self, listener: GapListener) -> None:
        with self._listeners_lock:
            if listener in self._gap_listeners:
                self._gap_listeners.remove(listener)

    def _set_state(self, state: ClientState) -> None:
        with self._listeners_lock:
            if self._state == state or self._state == ClientState.CLOSED:
                return
            self._state = state
            listeners = list(self._state_listeners)
        logger.info("client %s is %s", self._ctx.client_id, state.value)
        self._notifier.emit(listeners, state)

    def emit_gap(self, gap: Gap) -> None:
        """Tell the gap listeners (on their thread)."""
        logger.warning(
            "client %s may have missed messages on %s (%s)",
            self._ctx.client_id,
            sorted(gap.topics),
            gap.reason,
        )
        with self._listeners_lock:
            listeners = list(self._gap_listeners)
        self._notifier.emit(listeners, gap)

    # -- the supervisor thread: state changes and re-registration ----------------------

    def _supervise(self) -> None:
        while True:
            try:
                waiting = self._subs.has_unfinished()
                event = self._events.get(timeout=RETRY_UNFINISHED if waiting else None)
            except queue.Empty:
                if self._answering():
                    self.finish_unfinished(self._ctx.deadline())
                continue
            if event is None or self._ctx.is_closed():
                return
            try:
                self._handle(*event)
            except Exception:  # the supervisor never dies: the next event is handled
                logger.exception("client %s: handling a state change failed", self._ctx.client_id)
                if event[0] == KazooState.CONNECTED and self._ctx.conn.connected.is_set():
                    self._note_failing(sys.exc_info()[1])
                    time.sleep(0.5)  # registering again failed: tried again, as for a refusal
                    self._events.put((KazooState.CONNECTED, time.time()))

    def _handle(self, state: object, at: float) -> None:
        """One event of the connection or of the registration's watches."""
        if state in (KazooState.SUSPENDED, KazooState.LOST):
            self._failing = None  # an outage: failing to register counts again once connected
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
                starts = [self._ctx.conn.session_lost_since, self._disconnected_at, at]
                first = min(t for t in starts if t is not None)
                self._lost_at = first - self._ctx.config.session_timeout
            self._set_state(ClientState.LOST)
        elif state == KazooState.CONNECTED:
            self._on_connected()
        elif state == _REGISTRATION_GONE:
            self._on_registration_gone()
        elif state == _CLIENT_CHANGED:
            self._on_client_changed()
        elif state == _SUBSCRIPTION_DISTURBED:
            self._on_subscription_disturbed()
        # _ENDS_DEFERRED: only wakes the loop, which then waits RETRY_UNFINISHED

    def _watch_registration(self) -> None:
        """Watch this client's registration node (watches do not outlive a
        connection, so again after each reconnect)."""
        path = self._ctx.layout.client(self._ctx.client_id)

        def checked(result: Any) -> None:  # kazoo's thread
            try:
                missing = result.get_nowait() is None
            except Exception:
                return  # connection trouble: the next CONNECTED looks again
            if missing and not self._ctx.is_closed():
                self._events.put((_REGISTRATION_GONE, time.time()))

        try:
            request = self._ctx.conn.kazoo.exists_async(path, watch=self._on_registration_event)
            request.rawlink(checked)
        except Exception as exc:  # not connected: the next CONNECTED sets it
            logger.debug("watching %s: %s", path, exc)
        for topic in self._subs.topics():
            self._guard_subscription(topic)

    def _on_registration_event(self, event: WatchedEvent) -> None:  # kazoo's thread
        if self._ctx.is_closed():
            return
        if event.type == EventType.DELETED:
            self._events.put((_REGISTRATION_GONE, time.time()))
        elif event.type == EventType.CHANGED:
            self._events.put((_CLIENT_CHANGED, time.time()))

    # -- the registration guard of subscriptions -----------------------------------

    def _guard_subscription(self, topic: str) -> None:
        """Watch the subscription node and the queue node of ``topic``: one
        exists watch each (kazoo keeps one per callable, so a guard set
        twice fires once)."""
        ctx = self._ctx
        layout = ctx.layout
        nodes = (
            ("registration", layout.subscriber(topic, ctx.client_id)),
            ("queue", layout.queue(ctx.client_id, topic)),
        )
        for what, path in nodes:
            watcher = self._guard_watcher(topic, what)

            def checked(result: Any, what: str = what) -> None:  # kazoo's thread
                try:
                    answer = result.get_nowait()
                except NoNodeError:
                    answer = None
                except Exception:
                    return  # connection trouble: the next CONNECTED looks again
                if answer is None:
                    self._disturb(topic, f"{what} node missing")
                elif what == "queue":
                    data, stat = answer
                    with self._guard_lock:
                        known = self._queue_czxid.setdefault(topic, stat.czxid)
                    record = QueueRecord.decode(data)
                    if known != stat.czxid:  # made again while we were not looking
                        self._disturb(topic, "queue node replaced")
                    elif record is not None and record.evicting:  # marked while cut off
                        self._disturb(topic, EVICTED)

            kazoo = ctx.conn.kazoo
            try:  # the queue's record is read: a mark made while cut off is no event
                request = (
                    kazoo.get_async(path, watch=watcher)
                    if what == "queue"
                    else kazoo.exists_async(path, watch=watcher)
                )
                request.rawlink(checked)
            except Exception as exc:  # not connected: the next CONNECTED sets it
                logger.debug("guarding %s: %s", path, exc)

    def _on_subscription_registered(self, sub: Registered) -> None:
        with self._guard_lock:
            self._queue_czxid.pop(sub.topic, None)  # a new subscription: learn its queue
        self._guard_subscription(sub.topic)

    def _guard_watcher(self, topic: str, what: str) -> Callable[[WatchedEvent], None]:
        with self._guard_lock:
            watcher = self._guards.get((topic, what))
            if watcher is None:

                def watcher(event: WatchedEvent) -> None:  # kazoo's thread
                    if event.type == EventType.DELETED:
                        self._disturb(topic, f"{what} node deleted")
                    elif event.type == EventType.CHANGED and what == "queue":
                        # Publishers move a queue on by writing its record:
                        # only an unreadable record is someone else's doing.
                        self._check_queue_record(topic)
                    elif event.type == EventType.CHANGED:
                        self._disturb(topic, f"{what} node changed")

                self._guards[(topic, what)] = watcher
            return watcher

    def _check_queue_record(self, topic: str) -> None:  # kazoo's thread: no waiting here
        """Guard the queue again, and see whether its record still reads."""
        ctx = self._ctx
        path = ctx.layout.queue(ctx.client_id, topic)

        def read(result: Any) -> None:  # kazoo's thread
            try:
                data, _ = result.get_nowait()
            except Exception:
                return  # gone (the deletion guard hears of it) or no connection
            record = QueueRecord.decode(data)
            if record is None:
                self._disturb(topic, "queue node changed")
            elif record.evicting:  # a publisher found it full: end the subscription
                self._disturb(topic, EVICTED)

        watcher = self._guard_watcher(topic, "queue")
        try:
            ctx.conn.kazoo.get_async(path, watch=watcher).rawlink(read)
        except Exception as exc:  # not connected: the next CONNECTED sets it
            logger.debug("guarding %s: %s", path, exc)

    def _disturb(self, topic: str, reason: str) -> None:  # kazoo's thread: no waiting here
        if self._ctx.is_closed():
            return
        now = time.time()
        with self._guard_lock:
            self._disturbed.setdefault(topic, (reason, now))
        self._events.put((_SUBSCRIPTION_DISTURBED, now))

    def _on_subscription_disturbed(self) -> None:
        """Someone else deleted or changed a subscription node or a queue
        node of ours (our own unsubscribe and close leave the registry
        first). Register again, put the expected data back, and report a gap
        for the topics: publishes meanwhile skipped the registration or
        found the queue gone."""
        ctx = self._ctx
        if not ctx.conn.connected.is_set() or ctx.conn.session_id != self._registered_session:
            return  # the next CONNECTED registers again and arms the guard anew
        with self._guard_lock:
            disturbed, self._disturbed = self._disturbed, {}
        if not disturbed:
            return
        affected: dict[str, tuple[str, float]] = {}
        try:
            with self._subs.lock:
                subs = [s for t in disturbed if (s := self._subs.get(t)) is not None]
                with translated("read queue records"):
                    evicting = self._evictions(subs, ctx.deadline())
                for topic, (reason, at) in disturbed.items():
                    sub = self._subs.get(topic)
                    if sub is None or ctx.is_closed():
                        continue
                    if topic in evicting:
                        self._evict(sub, evicting[topic])
                        continue
                    with translated(f"register {topic!r} again"):
                        if self._intact(topic, sub.durable):
                            continue  # our own doing (a subscription replaced its node)
                        restore_subscription(
                            ctx, topic, ctx.deadline(), durable=sub.durable, backlog=sub.bound
                        )
                    with self._guard_lock:
                        self._queue_czxid.pop(topic, None)  # the re-armed guard learns it
                    sub.restored()
                    affected[topic] = (reason, at)
        except ClientClosed:
            return
        except ZkPubSubError as exc:
            # no server answering is no news (the state says so, and the
            # reconnect tries again): a warning only for other failures
            outage = isinstance(exc, (ConnectionLost, OperationTimeout))
            logger.log(
                logging.INFO if outage else logging.WARNING,
                "client %s: guarding subscriptions: %s",
                ctx.client_id,
                exc,
            )
            with self._guard_lock:  # try again on the next event or reconnect
                for topic, value in disturbed.items():
                    self._disturbed.setdefault(topic, value)
            return
        finally:
            if ctx.conn.connected.is_set():
                for topic in disturbed:
                    if self._subs.get(topic) is not None:
                        self._guard_subscription(topic)
        if affected:
            logger.warning(
                "client %s: registrations disturbed by another client: %s",
                ctx.client_id,
                ", ".join(f"{t} ({r})" for t, (r, _) in sorted(affected.items())),
            )
            since = min(at for _, at in affected.values())
            reasons = sorted({r for r, _ in affected.values()})
            self.emit_gap(
                Gap(
                    frozenset(affected),
                    since,
                    time.time(),
                    "; ".join(reasons) + " by another client",
                )
            )

    def _evictions(self, subs: list[Registered], deadline: float | None) -> dict[str, float]:
        """The topics of ``subs`` (those with ``when_full="evict"``) whose
        queue's record is marked full, with when it was (server clock)."""
        ctx = self._ctx
        conn, kazoo, layout = ctx.conn, ctx.conn.kazoo, ctx.layout
        candidates = [s for s in subs if s.bound.when_full == "evict"]
        if not candidates:
            return {}
        answers = conn.read_all(
            lambda: [kazoo.get_async(layout.queue(ctx.client_id, s.topic)) for s in candidates],
            deadline,
            "read queue records",
        )
        found: dict[str, float] = {}
        for sub, answer in zip(candidates, answers, strict=True):
            if isinstance(answer, Exception):
                continue  # gone: the guard restores it, or it is being deleted
            record = QueueRecord.decode(answer[0])
            if record is not None and record.evicting:
                found[sub.topic] = answer[1].mtime / 1000
        return found

    def _evict(self, sub: Registered, since: float) -> None:
        """End ``sub`` (its queue filled up under ``evict``) and tell the gap."""
        try:
            sub.evict()
        except ZkPubSubError as exc:  # the cleaner deregisters it if we could not
            logger.warning("client %s: evicting %r: %s", self._ctx.client_id, sub.topic, exc)
        self.emit_gap(Gap(frozenset({sub.topic}), since, time.time(), EVICTED))

    def _intact(self, topic: str, durable: bool) -> bool:
        """Whether the subscription node and the queue node of ``topic`` are
        as this client made them: there, of the right kind, with their data,
        and the queue the one the guard first saw."""
        ctx = self._ctx
        conn, kazoo, layout = ctx.conn, ctx.conn.kazoo, ctx.layout
        sub_path = layout.subscriber(topic, ctx.client_id)
        queue_path = layout.queue(ctx.client_id, topic)
        registration, queue = conn.read_all(
            lambda: [kazoo.get_async(sub_path), kazoo.get_async(queue_path)],
            ctx.deadline(),
            f"check the registration of {topic!r}",
        )
        if isinstance(registration, Exception) or isinstance(queue, Exception):
            return False
        data, stat = registration
        owner = 0 if durable else conn.session_id
        if stat.ephemeralOwner != owner or data != (b"durable" if durable else b""):
            return False
        with self._guard_lock:
            known = self._queue_czxid.get(topic)
        readable = QueueRecord.decode(queue[0]) is not None
        return readable and (known is None or queue[1].czxid == known)

    def _on_client_changed(self) -> None:
        """Someone else wrote the client node's data: write ours back."""
        ctx = self._ctx
        try:
            with translated("restore the client node"):
                restore_client_data(ctx, ctx.deadline())
        except ZkPubSubError as exc:
            logger.info("client %s: restoring the client node: %s", ctx.client_id, exc)
        if ctx.conn.connected.is_set():
            self._watch_registration()

    def _on_registration_gone(self) -> None:
        """The registration node vanished while the connection stayed up: the
        server may have ended the session without closing this connection
        (kazoo would not notice). Writing the node again settles it: on a
        live session it is back; on an ended one the refusal makes the
        connection drop, kazoo finds the session expired, and the client
        registers again on a new one (with a gap notice)."""
        ctx = self._ctx
        logger.warning("client %s: registration node deleted; checking the session", ctx.client_id)
        try:
            with self._subs.lock:
                if ctx.is_closed():
                    return
                deadline = ctx.deadline()
                with translated("register again"):
                    register_client(ctx, deadline, owner_wait=ctx.config.request_timeout)
        except ZkPubSubError as exc:
            logger.info("client %s: writing the registration again: %s", ctx.client_id, exc)
        if ctx.conn.connected.is_set():
            self._watch_registration()

    @property
    def registered_session(self) -> int | None:
        """The id of the session the client last registered on."""
        return self._registered_session

    def _note_failing(self, error: BaseException | None) -> None:
        """Registering on a new session failed (connected): since when it
        has failed on this connection, and the last error."""
        since = time.monotonic() if self._failing is None else self._failing[0]
        self._failing = (since, f"{type(error).__name__}: {error}")

    def registration_failing(self) -> tuple[float, str] | None:
        """While connected on a new session that it has failed to register
        on: for how many seconds it has failed since it was last connected
        (an outage starts the count again), and the last error."""
        failing = self._failing
        if failing is None or self._state is not ClientState.LOST:
            return None
        if not self._ctx.conn.connected.is_set():
            return None  # an outage, not a failing registration
        return time.monotonic() - failing[0], failing[1]

    def _on_connected(self) -> None:
        ctx = self._ctx
        conn = ctx.conn
        session = conn.session_id
        if session is None or session == self._registered_session:
            self._disconnected_at = None  # the session outlived the outage
            conn.session_lost_since = None
            self._watch_registration()
            self._set_state(ClientState.CONNECTED)
            with self._guard_lock:
                pending = bool(self._disturbed)
            if pending:  # heard of while the connection was down
                self._events.put((_SUBSCRIPTION_DISTURBED, time.time()))
            self.finish_unfinished(self._ctx.deadline())
            return
        # A new session: everything ephemeral is gone. Register again (what
        # the guard saw go is registered again with it, and reported as the
        # expiry's gap).
        self._set_state(ClientState.LOST)
        with self._guard_lock:
            self._disturbed.clear()
        try:
            with self._subs.lock:
                if ctx.is_closed():
                    return
                deadline = ctx.deadline()
                with translated("register again"):
                    register_client(ctx, deadline, owner_wait=ctx.config.request_timeout)
                    subs = self._subs.all()
                    # the marker is deleted once read: what it said is kept
                    # until told, should this registration fail and be retried
                    self._purged.update(check_purge(ctx, deadline, (sub.topic for sub in subs)))
                    purged = sorted(self._purged)
                    with self._guard_lock:  # purged queues are made again: learn them anew
                        for topic in purged:
                            self._queue_czxid.pop(topic, None)
                    evicting = self._evictions(subs, deadline)
                    for sub in subs:
                        if sub.topic in evicting:
                            self._evict(sub, evicting[sub.topic])
                    subs = [sub for sub in subs if sub.topic not in evicting]
                    topics = [sub.topic for sub in subs if not sub.durable]
                    for sub in subs:
                        when = register_subscription(
                            ctx, sub.topic, deadline, durable=sub.durable, backlog=sub.bound
                        )
                        if when is not None:
                            self._emptied[sub.topic] = when  # marked after the read above
        except ClientClosed:
            return
        except ZkPubSubError as exc:
            logger.warning("client %s: registering again failed (%s); retrying", ctx.client_id, exc)
            self._note_failing(exc)
            time.sleep(0.5)
            if conn.connected.is_set():
                self._events.put((KazooState.CONNECTED, time.time()))
            return
        self._registered_session = session
        self._failing = None
        self._watch_registration()
        since = self._lost_at or self._disconnected_at or time.time()
        self._lost_at = None
        self._disconnected_at = None
        conn.session_lost_since = None
        for sub in subs:
            sub.restored()
        now = time.time()
        if topics:
            self.emit_gap(Gap(frozenset(topics), since, now, "session expired"))
        if purged:
            self._purged.clear()
            self.emit_gap(Gap(frozenset(purged), since, now, "backlog purged"))
        emptied, self._emptied = self._emptied, {}
        for topic, when in sorted(emptied.items()):  # its queue was made afresh
            self.emit_gap(Gap(frozenset({topic}), when, now, EVICTED))
        self._set_state(ClientState.CONNECTED)
        self.finish_unfinished(ctx.deadline())

    def _answering(self) -> bool:
        """Whether the server answers a read now (a short one, outside the
        registry's lock: the deferred ends then hold it only when they can
        be done, not while a frozen server keeps a close or subscribe waiting)."""
        ctx = self._ctx
        if ctx.is_closed() or not ctx.conn.connected.is_set():
            return False
        kazoo, root = ctx.conn.kazoo, ctx.layout.root_path
        try:
            probe = ctx.deadline(min(PROBE_TIMEOUT, ctx.config.request_timeout))
            ctx.conn.call(lambda: kazoo.exists_async(root), probe, "probe")
        except ZkPubSubError:
            return False
        return True

    def finish_unfinished(self, deadline: float | None, *, closing: bool = False) -> list[str]:
        """Deregister (and delete the queues of) the subscriptions closed
        while no server answered (see ``Subscription._deregister``); what
        fails again waits for the next connection. Returns the topics whose
        queue is left (a registration left goes with the session).
        ``closing``: the client's last try; a failure is not worth a warning
        of its own (there is no later; the client warns of queues left)."""
        ctx = self._ctx
        with self._subs.lock:
            for topic, drop_queue in self._subs.pending_ends().items():
                try:
                    end_subscription(
                        ctx, topic, deadline, unregister=True, drop_queue=drop_queue, once=True
                    )
                except ZkPubSubError as exc:
                    if closing:
                        logger.debug("ending the subscription to %r: %s", topic, exc)
                    else:
                        logger.warning("ending the subscription to %r: %s; again later", topic, exc)
                else:
                    self._subs.ended(topic, drop_queue)
                    logger.info("the subscription to %r is ended now", topic)
            return self._subs.unfinished_topics(queues_only=True)
