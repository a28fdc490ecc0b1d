"""The cleaner: deletes the queues of clients that have gone away.

Every client stands for the election by default (``Client(...,
cleaner=True)``; ``client.start_cleaner()`` sets its options), and it can
run on its own (``zkpubsub cleaner``). Candidates join an election under
``cleaner/candidates`` with ephemeral sequential nodes; the lowest leads,
each other watches the one just before it (no polling, no herd: a standby
costs one watch). Only the leader sweeps, and it checks at every sweep that
it is still the lowest.

Each candidate writes its grace into its election node; the leader's grace
is the one in force, and a standby whose own differs says so once. A
grace shorter than the session timeout is refused
(:func:`~zkpubsub.config.check_grace`).

The election's sequence numbers count joins under ``cleaner/candidates``
(one per client start, session expiry or restart of a cleaner): 2**31 of
them take 68 years at one a second. Should a root ever get there, ZooKeeper
3.8 saturates the counter and candidates share the number 2147483647; they
are then ordered by name, all alike, but a newcomer may sort before the
leader. The leader's check at every sweep makes it step down then, so two
cleaners never lead for longer than one sweep (and each deleting
transaction is guarded on its own anyway). Candidates warn in the log when
their number passes ``ELECTION_WARN_AT``.

Safety, enforced by the server in every deleting transaction:

* **Fencing**: each transaction checks the leader's own candidate node, so a
  cleaner whose session expired (and who may not know it yet) deletes nothing.
* **Absence proof**: each transaction creates and deletes
  ``clients/<id>`` in the same step, which fails if that client has
  registered again in the meantime; once the purge marker is written, each
  also checks it is still there (the client deletes it when it registers),
  so a purge under way stops for a client that came back even if it has
  gone again since. A returning client therefore never loses a queue to a
  cleaner that decided too early.
* **Grace**: a client's queues are deleted only after ``clients/<id>`` has been
  absent for ``grace`` seconds, continuously, as seen by the current leader
  (a new leader starts counting from its election, and a leader that lost
  its connection for a while starts again when it is back if the children
  of ``clients/`` changed meanwhile: the client may have come and gone
  unseen).
* Large queues are deleted in bounded transactions. The first one writes
  ``purging/<id>``, naming the client's topics; a client that comes back
  while that marker exists is told through its gap listeners that part of
  its backlog is gone, for each of them. When the client had durable
  subscriptions, the last one leaves the marker, marked finished, instead
  of deleting it: a notice that tells the client the same when it comes
  back later, kept for ``notice_ttl`` (by the server's clock).

Everything a gone client leaves goes together: its queues, its durable
registrations and its receipts. The cleaner also removes
``subscribers/<topic>`` nodes left empty for the grace period, and
work-queue results nobody read within ``result_ttl`` (by the server's
clock).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import KazooState

from ._candidates import SETTINGS, candidate_record, candidate_settings, read_candidate
from ._context import Context
from ._deadlines import check_timeout, deadline_after, remaining
from ._evictions import delete_queue, sweep_evictions
from ._purges import purge_durable, purge_finished, purge_record, read_purge_record
from ._tree import (
    DELETE_BATCH,
    Refused,
    delete_batch,
    delete_tree,
    guarded_commit,
    leader_fence,
    still_leads,
)
from .config import DEFAULT_NOTICE_TTL, DEFAULT_RESULT_TTL, check_grace, check_interval
from .errors import ClientClosed, ConnectionLost, NotAuthorized, OperationTimeout, ZkPubSubError
from .layout import (
    NodeKind,
    join,
    new_guid,
    order_candidates,
    parse_candidate_node,
)

__all__ = ["ELECTION_WARN_AT", "Cleaner", "CleanerStats"]

logger = logging.getLogger(__name__)

MIN_SWEEP_GAP: Final = 0.5
# How often a wait for the lead looks whether the cleaner stopped meanwhile.
_STOP_POLL: Final = 0.1
# A candidate whose sequence number passes this warns: the election's counter
# nears ZooKeeper's 2**31 - 1.
ELECTION_WARN_AT: Final = 2**31 - 2**24


@dataclass(frozen=True, slots=True)
class CleanerStats:
    """What a cleaner has done since it started."""

    is_leader: bool
    sweeps: int
    queues_removed: int
    nodes_removed: int
    clients_removed: int
    topics_removed: int
    registrations_removed: int
    results_removed: int
    elections_won: int
    subscriptions_evicted: int = 0


class Cleaner:
    """One candidate in the cleaner election. Made by ``Client.start_cleaner``."""

    def __init__(
        self,
        ctx: Context,
        *,
        grace: float | None = None,
        interval: float | None = None,
        result_ttl: float = DEFAULT_RESULT_TTL,
        notice_ttl: float = DEFAULT_NOTICE_TTL,
    ) -> None:
        config = ctx.config
        self.grace = check_grace(config.grace if grace is None else grace, config.session_timeout)
        interval = config.cleaner_interval if interval is None else interval
        self.interval = check_interval(interval, "interval")
        check_interval(result_ttl, "result_ttl")
        self.result_ttl = float(result_ttl)
        check_interval(notice_ttl, "notice_ttl")
        self.notice_ttl = float(notice_ttl)
        self._ctx = ctx
        self._conn = ctx.conn
        self._layout = ctx.layout
        # why this candidate stopped by itself (its identity may not stand), if it did
        self.refused: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._leading = threading.Event()
        self._candidate: str | None = None
        self._candidate_session: int | None = None
        # while joining: (session, the candidate's guid, whether a create was sent)
        self._joining: tuple[int | None, str, bool] | None = None
        self._leader_grace: float | None = None  # the leader's, as last read by a standby
        self._warned: set[tuple[str, str, float]] = set()  # (leader, option, value)
        # gone clients (and refusals) whose nodes this identity may not remove: said once
        self._unreadable: set[str] = set()
        # gone clients whose purge was refused (leader's thread): when it is due again
        self._refused_until: dict[str, float] = {}
        self._resign_on_stop = True
        self._blind = 0  # connection losses seen (kazoo's thread counts them)
        self._lock = threading.Lock()
        self._counts = dict(
            sweeps=0,
            queues_removed=0,
            nodes_removed=0,
            clients_removed=0,
            topics_removed=0,
            registrations_removed=0,
            results_removed=0,
            elections_won=0,
            subscriptions_evicted=0,
        )
        self._thread = threading.Thread(
            target=self._run, name=f"zkpubsub-cleaner-{ctx.client_id[:12]}", daemon=True
        )
        self._conn.add_state_listener(self._on_state)

    def configure(
        self,
        *,
        grace: float | None = None,
        interval: float | None = None,
        result_ttl: float | None = None,
        notice_ttl: float | None = None,
    ) -> None:
        """Change the options of a running cleaner (``None`` keeps one). New
        ones are written into its election node."""
        if grace is not None:
            grace = check_grace(grace, self._ctx.config.session_timeout)
        if interval is not None:
            check_interval(interval, "interval")
        if result_ttl is not None:
            check_interval(result_ttl, "result_ttl")
        if notice_ttl is not None:
            check_interval(notice_ttl, "notice_ttl")
        before = self._record()
        if grace is not None:
            self.grace = grace
        if interval is not None:
            self.interval = float(interval)
        if result_ttl is not None:
            self.result_ttl = float(result_ttl)
        if notice_ttl is not None:
            self.notice_ttl = float(notice_ttl)
        data = self._record()
        path = self._candidate
        if data != before and path is not None and self._conn.connected.is_set():
            kazoo = self._conn.kazoo
            with contextlib.suppress(ZkPubSubError, NoNodeError):
                self._conn.call(
                    lambda: kazoo.set_async(path, data), self._deadline(), "cleaner options"
                )
        self._wake.set()

    def _record(self) -> bytes:
        """What this candidate's election node holds."""
        return candidate_record(
            self._ctx.client_id,
            self.grace,
            result_ttl=self.result_ttl,
            notice_ttl=self.notice_ttl,
        )

    @property
    def effective_grace(self) -> float:
        """The grace in force: this cleaner's own while it leads, otherwise
        the leader's (as last read; this one's until then)."""
        if self.is_leader or self._leader_grace is None:
            return self.grace
        return self._leader_grace

    def _on_state(self, state: KazooState) -> None:  # kazoo's thread: flags only
        if state != KazooState.CONNECTED:
            # Not reachable, perhaps no longer the leader: say so at once. The
            # fence in every transaction is what keeps deletes safe meanwhile.
            self._leading.clear()
            self._blind += 1  # clients may come and go unseen (see _lead)
        self._wake.set()

    # -- public -----------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The id of the client hosting this cleaner."""
        return self._ctx.client_id

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait_leader(self, timeout: float | None = None) -> bool:
        """Wait until this cleaner leads; ``False`` if ``timeout`` passed or
        the cleaner stopped (see :attr:`refused`)."""
        deadline = deadline_after(timeout)
        while not self._leading.is_set():
            left = remaining(deadline)
            if self._stop.is_set() or (left is not None and left <= 0):
                return False
            self._leading.wait(_STOP_POLL if left is None else min(left, _STOP_POLL))
        return True

    def stats(self) -> CleanerStats:
        with self._lock:
            return CleanerStats(is_leader=self.is_leader, **self._counts)

    def sweep_now(self) -> None:
        """Ask the leader to sweep at once (it also sweeps every ``interval``
        and whenever the set of clients changes)."""
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0, *, resign: bool = True) -> None:
        """Leave the election (a standby takes over). Idempotent. Without
        ``resign`` the election node is left to go with the session (the
        client is closing it)."""
        check_timeout(timeout)
        self._resign_on_stop = resign
        self._stop.set()
        self._wake.set()
        self._conn.remove_state_listener(self._on_state)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the election -------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _deadline(self) -> float | None:
        return deadline_after(self._ctx.config.request_timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._campaign()
            except ClientClosed:
                break
            except NotAuthorized as exc:
                # Under roles only admins stand; this client does not.
                logger.info("cleaner: not standing (this identity may not join): %s", exc)
                self.refused = str(exc)
                self._stop.set()
                break
            except (ConnectionLost, OperationTimeout) as exc:
                logger.debug("cleaner: %s", exc)
                self._stop.wait(0.2)
            except Exception:
                logger.exception("cleaner: unexpected error; retrying")
                self._stop.wait(1.0)
        self._leading.clear()
        try:
            self._resign()
        finally:
            self._conn.remove_state_listener(self._on_state)  # stopped by itself, too

    def _resign(self) -> None:
        path, self._candidate = self._candidate, None
        if path is None or self._conn.closing.is_set() or not self._resign_on_stop:
            return
        with contextlib.suppress(ZkPubSubError):
            self._conn.delete(path, self._deadline())

    def _ensure_candidate(self) -> str:
        session = self._conn.session_id
        if self._candidate is not None and self._candidate_session == session:
            return self._candidate
        kazoo = self._conn.kazoo
        if self._joining is None or self._joining[0] != session:
            # one name for every try of this session: a try whose answer was
            # lost (or came too late) is found, not made a second time
            self._joining = (session, new_guid(), False)
        _, guid, tried = self._joining
        prefix = self._layout.candidate_prefix(guid)
        data = self._record()
        while True:
            deadline = self._deadline()
            self._conn.wait_connected(deadline, "join cleaner election", stop=self._stop)
            if tried:
                names = self._conn.call(
                    lambda: kazoo.get_children_async(self._layout.candidates), deadline, "election"
                )
                mine = [n for n in names if n.startswith(f"c{guid}-")]
                if mine:
                    path = join(self._layout.candidates, mine[0])
                    break
            self._joining = (session, guid, True)
            tried = True
            try:
                path = self._conn.result(
                    kazoo.create_async(
                        prefix,
                        data,
                        acl=self._ctx.acl.acl(NodeKind.CANDIDATE),
                        ephemeral=True,
                        sequence=True,
                    ),
                    deadline,
                    "join cleaner election",
                )
                break
            except (ConnectionLost, OperationTimeout):
                continue  # it may have been applied: look first
        self._joining = None
        self._candidate = path
        self._candidate_session = self._conn.session_id
        record = self._record()
        if record != data:  # configured while the node was being made
            with contextlib.suppress(ZkPubSubError, NoNodeError):
                self._conn.call(
                    lambda: kazoo.set_async(path, record), self._deadline(), "cleaner options"
                )
        parsed = parse_candidate_node(path.rsplit("/", 1)[1])
        if parsed is not None and not 0 <= parsed[1] < ELECTION_WARN_AT:
            logger.warning(
                "cleaner election under %s: sequence number %d; ZooKeeper's counter ends at "
                "2147483647 (the election then orders candidates by name)",
                self._layout.candidates,
                parsed[1],
            )
        return path

    def _campaign(self) -> None:
        me = self._ensure_candidate()
        kazoo = self._conn.kazoo
        names: list[str] = self._conn.call(
            lambda: kazoo.get_children_async(self._layout.candidates), self._deadline(), "election"
        )
        ordered = order_candidates(names)
        my_name = me.rsplit("/", 1)[1]
        if my_name not in ordered:
            self._candidate = None  # our node is gone (session expired): join again
            return
        index = ordered.index(my_name)
        if index == 0:
            self._lead(me)
            return
        self._note_leader(ordered[0])
        predecessor = join(self._layout.candidates, ordered[index - 1])
        changed = threading.Event()

        def on_change(_event: object) -> None:
            changed.set()
            self._wake.set()

        stat = self._conn.call(
            lambda: kazoo.exists_async(predecessor, watch=on_change), self._deadline(), "election"
        )
        if stat is not None:
            # Wait for the predecessor to go, the session to change or a stop.
            while not (changed.is_set() or self._stop.is_set()):
                self._wake.wait(self.interval)
                self._wake.clear()
                if self._conn.session_id != self._candidate_session:
                    return

    def _note_leader(self, name: str) -> None:
        """Read the leader's options; say once for each that is not ours."""
        kazoo = self._conn.kazoo
        path = join(self._layout.candidates, name)
        try:
            data, _ = self._conn.call(lambda: kazoo.get_async(path), self._deadline(), "election")
        except NoNodeError:
            return
        leader = read_candidate(data)[0]
        theirs = candidate_settings(data)
        self._leader_grace = theirs.get("grace")
        for key, value in theirs.items():
            mine = float(getattr(self, key))
            if value == mine or (leader, key, value) in self._warned:
                continue
            self._warned.add((leader, key, value))
            logger.warning(
                "cleaner %s: its %s of %gs differs from the leader's (%s): %gs applies",
                self._ctx.client_id,
                SETTINGS[key],
                mine,
                leader,
                value,
            )

    # -- leading ------------------------------------------------------------------------

    def _lead(self, me: str) -> None:
        logger.info("cleaner %s leads", self._ctx.client_id)
        self._count("elections_won")
        self._leading.set()
        absent_since: dict[str, float] = {}
        self._refused_until.clear()
        empty_since: dict[str, tuple[int, float]] = {}
        evict_seen: dict[tuple[str, str, int], float] = {}
        last = 0.0
        blind = self._blind
        seen = -1  # the pzxid of clients/ when the last sweep began
        try:
            while True:
                pause = MIN_SWEEP_GAP - (time.monotonic() - last)
                if pause > 0:
                    self._stop.wait(pause)
                # stop() sets _stop before _wake: checking after clear() misses nothing
                self._wake.clear()
                if self._stop.is_set() or self._conn.session_id != self._candidate_session:
                    return
                if not self._conn.connected.is_set():
                    self._conn.wait_connected(self._deadline(), "cleaner", stop=self._stop)
                    continue
                now_seen = self._clients_pzxid()
                if self._blind != blind and now_seen != seen:
                    # Clients came or went while we could not see: one that
                    # came back and left again has not been absent as long
                    # as we counted. (A loss with no such change costs nothing.)
                    logger.info(
                        "cleaner: clients came and went while it was cut off: graces start again"
                    )
                    absent_since.clear()
                    self._refused_until.clear()
                    empty_since.clear()
                blind, seen = self._blind, now_seen
                self._leading.set()
                last = time.monotonic()
                try:
                    self._sweep(me, absent_since, empty_since, evict_seen, blind)
                except NotAuthorized as exc:  # a node of another identity: not a reason to stop
                    self._refused_once(exc)
                except (ConnectionLost, OperationTimeout) as exc:
                    # cut short (a long purge's deadline, a lost connection):
                    # the next sweep goes on from there, with the absences
                    # counted so far (the loop's checks judge a cut-off)
                    logger.info("cleaner: a sweep was cut short (%s); the next goes on", exc)
                    continue
                else:
                    self._count("sweeps")
                refused = self._refused_until
                starts = [s for cid, s in absent_since.items() if cid not in refused]
                starts += [t for _, t in empty_since.values()]
                self._wake.wait(self._next_wait(starts, list(refused.values())))
        except Refused as exc:
            if exc.reason != "fence":
                raise
            logger.info("cleaner %s lost the lead", self._ctx.client_id)
        finally:
            self._leading.clear()

    def _clients_pzxid(self) -> int:
        """The zxid of the last change of ``clients/``'s children."""
        path = self._layout.clients
        stat = self._conn.call(
            lambda: self._conn.kazoo.exists_async(path), self._deadline(), "clients"
        )
        return -1 if stat is None else int(stat.pzxid)

    def _next_wait(self, starts: list[float], retries: list[float]) -> float:
        """Sleep until the next interval, until the first grace runs out, or
        until the first refused purge is due again (``retries``)."""
        now = time.monotonic()
        ends = [since + self.grace for since in starts] + retries
        return min([self.interval, *(max(0.05, end - now + 0.01) for end in ends)])

    def _sweep(
        self,
        me: str,
        absent_since: dict[str, float],
        empty_since: dict[str, tuple[int, float]],
        evict_seen: dict[tuple[str, str, int], float],
        blind: int,
    ) -> None:
        """One sweep; it stops before a purge once the connection was lost
        since ``blind`` (the next one judges the absences again)."""
        conn, layout, kazoo = self._conn, self._layout, self._conn.kazoo
        deadline = self._deadline()
        # Fenced at once if we no longer hold the lead, or no longer are the
        # lowest candidate (possible only once the counter saturated).
        ordered = order_candidates(conn.children(layout.candidates, deadline) or [])
        if not ordered or ordered[0] != me.rsplit("/", 1)[1]:
            raise Refused("fence")
        live = set(conn.children(layout.clients, deadline, watch=self._wake_on_event) or [])
        with_queues = set(conn.children(layout.messages, deadline) or [])
        markers = set(conn.children(layout.purging, deadline) or [])
        notices = self._notices(markers, deadline)
        topics = conn.children(layout.subscribers, deadline) or []
        # Registrations of absent clients: durable ones outlive their session.
        requests = [(t, kazoo.get_children_async(layout.topic(t))) for t in topics]
        registered: dict[str, list[str]] = {}
        for topic, request in requests:
            try:
                ids = conn.result(request, deadline, "list subscribers")
            except NoNodeError:
                continue
            for cid in ids:
                if cid not in live:
                    registered.setdefault(cid, []).append(topic)
        with_receipts = set(conn.children(layout.receipts, deadline) or [])
        # a finished purge's notice waits for its client: nothing to purge
        gone = (with_queues | (markers - notices.keys()) | with_receipts | registered.keys()) - live
        now = time.monotonic()
        refused = self._refused_until
        for cid in list(absent_since):
            if cid not in gone:
                del absent_since[cid]
        for cid in list(refused):
            if cid not in gone:
                del refused[cid]
        for cid in gone:
            since = absent_since.setdefault(cid, now)
            until = refused.get(cid)
            if until is not None:
                if now < until:
                    continue  # refused lately: tried again an interval after
                del refused[cid]  # due: judged by its grace again
            if now - since >= self.grace and not self._stop.is_set():
                if self._blind != blind:
                    return  # what this sweep saw may be out of date
                try:
                    self._purge(me, cid, registered.get(cid, []), blind)
                except NotAuthorized as exc:  # the others go on
                    if cid not in self._unreadable:
                        self._unreadable.add(cid)
                        logger.warning(
                            "cleaner: may not remove the nodes of gone client %s (%s); "
                            "their ACL leaves them to another identity",
                            cid,
                            exc,
                        )
                    # tried again an interval from now, not at every sweep
                    # (its grace over, the leader would sweep every MIN_SWEEP_GAP)
                    refused[cid] = time.monotonic() + self.interval
                    continue
                self._unreadable.discard(cid)
                refused.pop(cid, None)
                absent_since.pop(cid, None)
        stages: list[Callable[[], object]] = [
            lambda: sweep_evictions(
                self._ctx, me, live & with_queues, evict_seen, self._stop.is_set, self._count
            ),
            lambda: self._sweep_topics(me, topics, empty_since),
            lambda: self._sweep_results(me),
            lambda: self._sweep_notices(
                me, {cid: v for cid, v in notices.items() if cid not in live}
            ),
        ]
        for stage in stages:  # one that meets a node it may not touch leaves the others
            try:
                stage()
            except NotAuthorized as exc:
                self._refused_once(exc)

    def _refused_once(self, exc: NotAuthorized) -> None:
        if str(exc) not in self._unreadable:  # said once
            self._unreadable.add(str(exc))
            logger.warning("cleaner: a sweep met a node it may not touch: %s", exc)

    def _notices(self, markers: set[str], deadline: float | None) -> dict[str, tuple[int, int]]:
        """Of the purge markers, the notices finished purges left: client id
        to (the time it was finished, by the server's clock, in ms; its data
        version)."""
        conn, layout, kazoo = self._conn, self._layout, self._conn.kazoo
        reads = [(cid, kazoo.get_async(layout.purge_marker(cid))) for cid in sorted(markers)]
        notices: dict[str, tuple[int, int]] = {}
        for cid, request in reads:
            try:
                data, stat = conn.result(request, deadline, "read purge marker")
            except NoNodeError:
                continue
            if purge_finished(data):
                notices[cid] = (stat.mtime, stat.version)
        return notices

    def _sweep_notices(self, me: str, notices: dict[str, tuple[int, int]]) -> None:
        """Delete the notices of finished purges older than ``notice_ttl``
        (each at the version read: not one written since)."""
        if not notices:
            return
        conn, layout = self._conn, self._layout
        deadline = self._deadline()
        now_ms = self._server_time_ms(deadline)
        fence = leader_fence(me)
        for cid, (finished_ms, version) in sorted(notices.items()):
            if now_ms - finished_ms <= self.notice_ttl * 1000:
                continue

            def drop(txn: Any, cid: str = cid, version: int = version) -> None:
                txn.delete(layout.purge_marker(cid), version)

            if guarded_commit(conn, fence, drop, deadline, "remove purge notice") is None:
                logger.info("cleaner: client %s did not come back; its purge notice expired", cid)

    def _wake_on_event(self, event: object) -> None:  # kazoo's thread
        self._wake.set()

    def _purge(
        self, me: str, cid: str, registrations: list[str] | None = None, blind: int | None = None
    ) -> None:
        """Remove everything of client ``cid``: its durable registrations
        first (so publishers stop writing), then its queues. The marker is
        left as a notice (marked finished) if the client had durable
        registrations (as this purge found, or as the marker of an earlier
        one says)."""
        conn, layout = self._conn, self._layout
        client_path = layout.client(cid)
        client_acl = self._ctx.acl.acl(NodeKind.CLIENT)

        fence = leader_fence(me)

        def guard(txn: Any) -> int:
            fenced = fence(txn)
            txn.create(client_path, b"", acl=client_acl)  # fails if the client is back …
            txn.delete(client_path)  # … and leaves nothing behind
            return fenced + 2

        deadline = deadline_after(max(60.0, self._ctx.config.request_timeout))
        marker = layout.purge_marker(cid)
        base = layout.client_messages(cid)

        def marked(txn: Any) -> int:
            # and the marker is still there: a client back meanwhile deleted
            # it, and nothing more goes (also once it has gone again)
            guarded = guard(txn)
            txn.check(marker, -1)
            return guarded + 1

        # the marker names every topic of the client: one back while its
        # queues go hears of those deleted in full too; an earlier purge's
        # marker (another leader's, or its notice) adds its own
        topic_names = [*(conn.children(base, deadline) or []), *(registrations or [])]
        earlier: bytes | None = None
        with contextlib.suppress(NoNodeError):
            earlier, _ = conn.call(lambda: conn.kazoo.get_async(marker), deadline, marker)
        durable = bool(registrations)
        if earlier is not None:
            topic_names += read_purge_record(earlier)
            durable = durable or purge_durable(earlier)
        named = purge_record(topic_names, durable=durable)

        def mark(txn: Any) -> None:
            if earlier is None:
                txn.create(marker, named, acl=self._ctx.acl.acl(NodeKind.PURGE_MARKER))
            else:  # under way again, naming every topic
                txn.set_data(marker, named, -1)

        nodes = queues = 0  # removed by this purge
        try:
            if isinstance(guarded_commit(conn, guard, mark, deadline, "purge"), NoNodeError):
                raise Refused("marker")  # the client was back in between
            if blind is not None and self._blind != blind:
                # cut off before the marker was surely written: the client may
                # have been back meanwhile (and deleted none); judge again
                raise Refused("blind")
            for topic in registrations or []:

                def unregister(txn: Any, topic: str = topic) -> None:
                    txn.delete(layout.subscriber(topic, cid))
                    txn.set_data(layout.topic(topic), b"", -1)

                if guarded_commit(conn, marked, unregister, deadline, "unregister") is None:
                    self._count("registrations_removed")
            topics = conn.children(base, deadline) or []
            for topic in topics:
                removed = delete_queue(conn, join(base, topic), deadline, marked)
                # counted as they go: a purge cut short goes on in the next sweep
                nodes += removed
                queues += 1
                self._count("nodes_removed", removed)
                self._count("queues_removed")
            delete_tree(conn, base, deadline, guard=marked)
            delete_tree(conn, layout.client_receipts(cid), deadline, guard=marked)
            if durable:
                # left for the client's return: it hears of the topics then
                finished = purge_record(topic_names, finished=True)

                def leave(txn: Any) -> None:
                    txn.set_data(marker, finished, -1)

                guarded_commit(conn, marked, leave, deadline, "purge notice")
            else:  # (a retry after a lost answer finds it gone: done)
                delete_batch(conn, [marker], deadline, guard, recurse=False)
        except Refused as exc:
            # a check that failed: of our election node (fenced out), or of
            # the marker (the client was back, and deleted it)
            if exc.reason == "fence" and not still_leads(conn, me, deadline):
                raise
            if exc.reason == "blind":
                logger.info("cleaner: cut off while it began to purge %s: it waits", cid)
            elif queues:  # it hears of them from the marker
                logger.info(
                    "cleaner: client %s came back during its purge: %d queue(s) removed "
                    "before, the rest stay",
                    cid,
                    queues,
                )
            else:
                logger.info("cleaner: client %s came back; its queues stay", cid)
            return
        self._count("clients_removed")
        logger.info(
            "cleaner: removed %d queue(s), %d message node(s) of gone client %s",
            queues,
            nodes,
            cid,
        )

    def _sweep_topics(
        self, me: str, topics: list[str], empty_since: dict[str, tuple[int, float]]
    ) -> None:
        """Remove ``subscribers/<topic>`` nodes that stayed empty and unchanged
        for the grace period (the version check refuses if anyone subscribed)."""
        conn, layout, kazoo = self._conn, self._layout, self._conn.kazoo
        deadline = self._deadline()
        fence = leader_fence(me)
        requests = [(t, kazoo.exists_async(layout.topic(t))) for t in topics]
        now = time.monotonic()
        empty: set[str] = set()
        for topic, request in requests:
            stat = conn.result(request, deadline, "topic stat")
            if stat is None or stat.numChildren > 0:
                continue
            empty.add(topic)
            version, since = empty_since.get(topic, (stat.version, now))
            if version != stat.version:  # someone (un)subscribed: start again
                version, since = stat.version, now
            empty_since[topic] = (version, since)
            if now - since < self.grace:
                continue

            def drop(txn: Any, topic: str = topic, version: int = version) -> None:
                txn.delete(layout.topic(topic), version)

            if guarded_commit(conn, fence, drop, deadline, "remove topic") is None:
                self._count("topics_removed")
            del empty_since[topic]
        for topic in list(empty_since):
            if topic not in empty:
                del empty_since[topic]

    def _server_time_ms(self, deadline: float | None) -> int:
        """The server's clock, read from the mtime of a node we just wrote."""
        conn, clock = self._conn, self._layout.clock
        kazoo = conn.kazoo
        try:
            stat = conn.call(lambda: kazoo.set_async(clock, b""), deadline, "read server clock")
        except NoNodeError:
            conn.ensure_path(clock, deadline)
            stat = conn.call(lambda: kazoo.set_async(clock, b""), deadline, "read server clock")
        return int(stat.mtime)

    def _sweep_results(self, me: str) -> None:
        """Delete work-queue results nobody read within ``result_ttl``."""
        conn, layout = self._conn, self._layout
        deadline = self._deadline()
        now_ms: list[int] = []  # read once, and only if there is something to age
        for name in conn.children(layout.work, deadline) or []:
            results = layout.work_queue(name).results
            removed = self._expire_children(me, results, self.result_ttl, now_ms, deadline)
            self._count("results_removed", removed)

    def _expire_children(
        self, me: str, parent: str, ttl: float, now_ms: list[int], deadline: float | None
    ) -> int:
        """Delete the children of ``parent`` created more than ``ttl`` seconds
        ago by the server's clock. Returns how many."""
        conn, kazoo = self._conn, self._conn.kazoo
        names = conn.children(parent, deadline)
        if not names:
            return 0
        if not now_ms:
            now_ms.append(self._server_time_ms(deadline))
        requests = [(n, kazoo.exists_async(join(parent, n))) for n in names]
        old = []
        for name, request in requests:
            stat = conn.result(request, deadline, "stat")
            if stat is not None and now_ms[0] - stat.ctime > ttl * 1000:
                old.append(join(parent, name))
        fence = leader_fence(me)
        removed = 0
        for i in range(0, len(old), DELETE_BATCH):
            batch = old[i : i + DELETE_BATCH]
            # results, not the nodes under them (another program's, if any)
            removed += min(len(batch), delete_batch(conn, batch, deadline, fence, recurse=True))
        return removed
