"""A worker of a work queue, and the life of its reservations.

A worker has its own identity (``<client id>.<n>``), registers as an
ephemeral ``workers/<worker id>`` when it first reserves, and keeps a list
of candidate items, ranked so that workers do not all race for the head:
a worker of rank r among W tries first the items whose sequence number is
r modulo W. Reserving, acking, releasing and moving an item to the dead
letters are each one transaction whose checks the server enforces (see
:mod:`zkpubsub.workqueue`).

With a ``visibility_timeout`` a worker's reservations carry a lease (see
:mod:`.leases`); every worker also takes over items whose lease ran out,
whoever reserved them: when it lists the queue (at most once a second for
this), it reads the reservations it already saw at its previous look and
judges their leases by the server's clock.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError

from .. import envelope
from .._context import Context
from .._deadlines import deadline_after, remaining
from ..connection import first_error, translated
from ..errors import ClientClosed, ConnectionLost, DecodeError, OperationTimeout, ReservationLost
from ..layout import (
    NodeKind,
    join,
    order_items,
    parse_item_node,
    parse_segment_number,
    segment_name,
)
from .finishing import ack_all, bury, commit, held_version, holds, release
from .items import Item
from .leases import ANCHOR_MAX_AGE, LEASE_SCAN_INTERVAL, ServerClock, check_lease
from .records import decode_item, lease_of, reservation_record
from .segments import classify

__all__ = ["MIN_RELIST_INTERVAL", "RELIST_WHILE_BUSY", "Worker", "ensure_queue", "rank_candidates"]

logger = logging.getLogger(__name__)

# After a change is seen (a put, a release), a worker reads its list of
# candidates again before its next reserve, but not more often than this; and
# while it still has candidates in hand, not more often than RELIST_WHILE_BUSY:
# listing a long backlog costs the server and the worker more than the items
# put meanwhile are worth (they come after those in hand, unless their
# priority is higher: such an item waits a second at most). A reservation
# lost to another worker, or a worker joining or leaving (which changes
# every worker's share), shows the list in hand is out of date: then the
# shorter interval applies again.
MIN_RELIST_INTERVAL: Final = 0.05
RELIST_WHILE_BUSY: Final = 1.0

_numbers = itertools.count(1)

_Ready = tuple[str, bytes, int, envelope.Entry, Any]  # name, data, version, entry, payload


def ensure_queue(ctx: Context, name: str, deadline: float | None) -> None:
    """Make the queue's folders exist."""
    for path in ctx.layout.work_queue(name).all():
        ctx.conn.ensure_path(path, deadline)


def rank_candidates(
    names: Sequence[str], reserved: Sequence[str], workers: Sequence[str], worker_id: str
) -> tuple[list[str], list[str]]:
    """The items a worker should try, in order, and the foreign names.

    Items held by someone are left out; the rest go by priority, then
    creation order, those whose sequence number falls on the worker's rank
    (among the sorted worker ids) first: unlike positions in a listing, that
    choice agrees between workers whose listings are of different ages."""
    held = set(reserved)
    ordered, foreign = order_items([n for n in names if n not in held])
    ranked = sorted(workers)
    count = max(1, len(ranked))
    rank = ranked.index(worker_id) if worker_id in ranked else 0
    mine: list[str] = []
    others: list[str] = []
    for name in ordered:
        parsed = parse_item_node(name)
        (mine if parsed is not None and parsed.sequence % count == rank else others).append(name)
    return mine + others, foreign


class Worker:
    """One worker of the queue ``queue``: reserves items and finishes them.

    Made by :meth:`WorkQueue.worker` (or, for the queue handle's own
    ``reserve``, by the handle). Use one per thread. ``close()`` leaves the
    queue's worker registry.
    """

    def __init__(
        self,
        ctx: Context,
        queue: str,
        *,
        max_attempts: int,
        visibility_timeout: float | None = None,
    ) -> None:
        self._ctx = ctx
        self.queue = queue
        self.max_attempts = max_attempts
        self.visibility_timeout = (
            None if visibility_timeout is None else check_lease(visibility_timeout)
        )
        self.clock = ServerClock()
        self._expired: dict[str, int] = {}  # item name -> version of its expired reservation
        self._seen_reserved: set[str] = set()
        self._scanned_at = 0.0
        self.takeovers = 0  # items taken over from a holder whose lease ran out
        self._paths = ctx.layout.work_queue(queue)
        self.worker_id = f"{ctx.client_id}.{next(_numbers)}"
        self._lock = threading.Lock()
        self._candidates: deque[str] = deque()
        self._changed = threading.Event()
        self._stale = False
        self._listed_at = 0.0
        self._outdated = False  # the list in hand is known to be out of date
        self._ready = False
        self._worker_session: int | None = None
        self._closed = False
        self._given_up: set[str] = set()  # foreign nodes that could not be moved
        self.conflicts = 0  # reservations lost to another worker at the last moment

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} of {self.queue!r}>"

    # -- plumbing ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"worker {self.worker_id} of {self.queue!r} is closed")
        self._ctx.check_open()

    def _ensure_worker(self, deadline: float | None) -> None:
        conn = self._ctx.conn
        session = conn.session_id
        if session == self._worker_session:
            return
        kazoo = conn.kazoo
        path = self._paths.worker(self.worker_id)
        while True:
            stat = conn.call(lambda: kazoo.exists_async(path), deadline, path)
            if stat is not None and stat.ephemeralOwner == session:
                break
            if stat is not None:
                # An earlier session of this client id (a process that died,
                # whose registration was taken over) left it: worker ids
                # are ours alone.
                with contextlib.suppress(NoNodeError, BadVersionError):
                    conn.call(
                        functools.partial(kazoo.delete_async, path, stat.version), deadline, path
                    )
                continue

            def register() -> Any:
                # create and touch in one transaction: the touch's stat gives
                # the server's time (a create returning its stat needs 3.5+)
                txn = kazoo.transaction()
                txn.create(path, b"", acl=conn.acl_for(path), ephemeral=True)
                txn.set_data(path, b"", -1)
                return txn.commit_async()

            results = conn.call(register, deadline, path)
            _, error = first_error(results)
            if isinstance(error, NodeExistsError):
                continue  # ours after a lost answer, or the old one again: look
            if error is not None:
                raise error
            self.clock.saw(results[1].mtime)
            break
        self._worker_session = session

    def _read_clock(self, deadline: float | None) -> None:
        """Learn the server's time: write our registration node, read its mtime."""
        conn = self._ctx.conn
        path = self._paths.worker(self.worker_id)
        try:
            stat = conn.call(functools.partial(conn.kazoo.set_async, path, b""), deadline, path)
        except NoNodeError:
            self._worker_session = None
            self._ensure_worker(deadline)
            return
        self.clock.saw(stat.mtime)

    def stale(self) -> None:
        """Something became available: read the list anew before the next reserve."""
        self._stale, self._listed_at = True, 0.0

    # -- reserving ---------------------------------------------------------------------

    def reserve(self, timeout: float | None = None) -> Item | None:
        """Reserve the next item, waiting up to ``timeout`` seconds (``None``:
        as long as it takes). Returns ``None`` if none came in time."""
        items = self.reserve_many(1, timeout)
        return items[0] if items else None

    def reserve_many(self, limit: int, timeout: float | None = None) -> list[Item]:
        """Reserve up to ``limit`` items in one transaction (at least one,
        unless ``timeout`` passes first)."""
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, not {limit!r}")
        deadline = deadline_after(timeout)
        with translated(f"reserve from queue {self.queue!r}"):
            while True:
                self._check_open()
                request_deadline = self._ctx.deadline()
                if self._stale:  # something was put or released
                    since = time.monotonic() - self._listed_at
                    busy = self._candidates and not self._outdated
                    if since >= (RELIST_WHILE_BUSY if busy else MIN_RELIST_INTERVAL):
                        self._refresh(request_deadline)
                with self._lock:
                    batch = [
                        self._candidates.popleft() for _ in range(min(limit, len(self._candidates)))
                    ]
                if batch:
                    items = self._reserve_names(batch, request_deadline)
                    if items:
                        return items
                    continue
                self._changed.clear()
                if self._refresh(request_deadline):
                    continue
                left = remaining(deadline)
                if left is not None and left <= 0:
                    return []
                # Watches on items/ and reserved/ wake us; poll now and then too.
                self._changed.wait(1.0 if left is None else min(left, 1.0))

    def _on_change(self, event: object) -> None:  # kazoo's thread
        self._stale = True
        self._changed.set()

    def _on_workers_change(self, event: object) -> None:  # kazoo's thread
        self._stale = self._outdated = True
        self._changed.set()

    def _refresh(self, deadline: float | None) -> bool:
        """List what is available and order it for this worker. True if any.
        The listing leaves watches: a later put or release marks it stale.
        Segments older than the current one are deleted once empty."""
        if not self._ready:
            ensure_queue(self._ctx, self.queue, deadline)
            self._ready = True
        self._ensure_worker(deadline)
        conn, paths = self._ctx.conn, self._paths
        kazoo = conn.kazoo
        self._stale = self._outdated = False
        self._listed_at = time.monotonic()
        try:
            answers = conn.read_all(
                lambda: [
                    kazoo.get_async(paths.base),
                    kazoo.get_children_async(paths.items, watch=self._on_change),
                    kazoo.get_children_async(paths.reserved, watch=self._on_change),
                    kazoo.get_children_async(paths.workers, watch=self._on_workers_change),
                ],
                deadline,
                "list queue",
            )
            if any(isinstance(answer, NoNodeError) for answer in answers):
                self._ready = False
                return False
            (data, _), children, reserved, workers = answers
            listing = classify(children)
            listed = conn.read_all(
                lambda: [
                    kazoo.get_children_async(paths.segment(n), watch=self._on_change)
                    for n in listing.segments
                ],
                deadline,
                "list segments",
            )
        except BaseException:
            self._stale = True
            raise
        current = parse_segment_number(data) or 0
        names = list(listing.legacy)
        foreign = [(join(paths.items, name), name) for name in listing.foreign]
        for number, in_segment in zip(listing.segments, listed, strict=True):
            if isinstance(in_segment, NoNodeError):
                continue
            if not in_segment and number < current:
                kazoo.delete_async(paths.segment(number))  # nobody puts there any more
            for name in in_segment:
                parsed = parse_item_node(name)
                if parsed is not None and parsed.segment == number:
                    names.append(name)
                else:
                    key = f"{segment_name(number)}.{name}"
                    foreign.append((join(paths.segment(number), name), key))
        expired = self._find_expired(reserved, deadline)
        held = [name for name in reserved if name not in expired]
        ranked, _ = rank_candidates(names, held, workers, self.worker_id)
        for path, key in foreign:
            if key not in self._given_up:
                self._bury_foreign(path, key, deadline)
        with self._lock:
            self._candidates = deque(ranked)
            return bool(self._candidates)

    def _find_expired(self, reserved: list[str], deadline: float | None) -> dict[str, int]:
        """The reservations whose lease ran out (name -> reservation node
        version). Read at most every ``LEASE_SCAN_INTERVAL``, and only those
        already there at the previous look: most reservations end sooner."""
        now = time.monotonic()
        if now - self._scanned_at < LEASE_SCAN_INTERVAL:
            still = set(reserved)
            self._expired = {n: v for n, v in self._expired.items() if n in still}
            return self._expired
        previous, self._seen_reserved = self._seen_reserved, set(reserved)
        self._scanned_at = now
        old = [name for name in reserved if name in previous]
        self._expired = {}
        if not old:
            return self._expired
        conn, paths = self._ctx.conn, self._paths
        kazoo = conn.kazoo
        answers = conn.read_all(
            lambda: [kazoo.get_async(paths.reservation(n)) for n in old], deadline, "leases"
        )
        leased = []
        for name, answer in zip(old, answers, strict=True):
            if isinstance(answer, NoNodeError):
                continue
            data, stat = answer
            lease = lease_of(data)
            if lease is not None:
                leased.append((name, lease, stat))
        if not leased:
            return self._expired
        age = self.clock.age()
        if age is None or age > ANCHOR_MAX_AGE:
            self._read_clock(deadline)
        for name, lease, stat in leased:
            if self.clock.expired(stat.mtime, lease):
                self._expired[name] = stat.version
        return self._expired

    def _reserve_names(self, names: list[str], deadline: float | None) -> list[Item]:
        ctx, paths = self._ctx, self._paths
        kazoo = ctx.conn.kazoo
        answers = ctx.conn.read_all(
            lambda: [kazoo.get_async(paths.item(n)) for n in names], deadline, "read items"
        )
        ready: list[_Ready] = []
        expired = {n: self._expired.pop(n) for n in names if n in self._expired}
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, NoNodeError):
                continue  # acked meanwhile
            data, stat = answer
            lapsed = expired.get(name)
            try:
                entry, payload = decode_item(ctx.serializers, paths.item(name), data)
            except DecodeError as exc:
                self._bury(name, data, stat.version, f"undecodable: {exc}", None, deadline, lapsed)
                continue
            if stat.version >= self.max_attempts:
                reason = f"reserved {stat.version} times without an ack (max_attempts)"
                self._bury(name, data, stat.version, reason, entry, deadline, lapsed)
                continue
            ready.append((name, data, stat.version, entry, payload))
        lease = self.visibility_timeout
        info = reservation_record(self.worker_id, lease)
        reservation_acl = self._ctx.acl.acl(NodeKind.RESERVATION)
        while ready:
            txn = kazoo.transaction()
            owners: list[int] = []  # the index in ready of each operation
            for i, (name, data, version, _, _) in enumerate(ready):
                if name in expired:  # its holder's lease ran out: take it over
                    txn.delete(paths.reservation(name), expired[name])
                    owners.append(i)
                txn.create(paths.reservation(name), info, acl=reservation_acl, ephemeral=True)
                txn.set_data(paths.item(name), data, version)
                owners += [i, i]
            sent = time.monotonic()
            try:
                results = commit(self._ctx, txn, deadline, "reserve")
            except ConnectionLost:
                ours = self.reserved_after_loss(ready, deadline, sent)
                taken = {item.name for item in ours}
                with self._lock:  # the others are still first in line
                    self._candidates.extendleft(
                        reversed([name for name, *_ in ready if name not in taken])
                    )
                return ours
            index, error = first_error(results)
            if error is None:
                received = time.monotonic()
                stat = results[-1]
                self.clock.saw(stat.mtime, received)
                self.takeovers += sum(1 for name, *_ in ready if name in expired)
                return [
                    self._item(name, version + 1, entry, payload, sent=sent)
                    for name, _, version, entry, payload in ready
                ]
            # Taken by another worker (NodeExists), reserved and released
            # meanwhile (BadVersion), extended by its holder (BadVersion) or
            # acked (NoNode): try the others.
            self.conflicts += 1
            self._outdated = True
            del ready[owners[index]]
        return []

    def reserved_after_loss(
        self, tried: list[_Ready], deadline: float | None, sent: float | None = None
    ) -> list[Item]:
        """After a lost answer: the items whose reservation is ours. Another
        worker of the same client shares our session, so a reservation is
        ours only if it also names this worker. ``sent``: when the
        reservation was sent (its lease counts from then)."""
        sent = time.monotonic() if sent is None else sent
        ours = []
        for name, _, version, entry, payload in tried:
            held = held_version(self._ctx, self._paths, name, version + 1, self.worker_id, deadline)
            if held is not None:
                ours.append(self._item(name, version + 1, entry, payload, sent=sent, held=held))
        return ours

    def _holds(self, name: str, token: int, deadline: float | None) -> bool:
        return holds(self._ctx, self._paths, name, token, self.worker_id, deadline)

    def _item(
        self,
        name: str,
        token: int,
        entry: envelope.Entry,
        payload: Any,
        *,
        sent: float,
        held: int = 0,
    ) -> Item:
        parsed = parse_item_node(name)
        assert parsed is not None
        lease = self.visibility_timeout
        return Item(
            self,
            name,
            entry,
            payload,
            token=token,
            priority=parsed.priority,
            wants_result=parsed.wants_result,
            lease=lease,
            lease_until=None if lease is None else sent + lease,
            reservation_version=held,
        )

    def extend(self, item: Item, seconds: float | None) -> None:
        """Renew ``item``'s lease for ``seconds`` from now (default: the
        queue's ``visibility_timeout``), in one transaction that proves this
        worker still holds it."""
        item.check_unfinished()
        lease = check_lease(
            self.visibility_timeout if seconds is None else seconds, "the lease extension"
        )
        ctx, paths = self._ctx, self._paths
        conn = ctx.conn
        record = reservation_record(self.worker_id, lease)
        deadline = ctx.deadline()
        with translated(f"extend the lease of item {item.id}"):
            while True:
                txn = conn.kazoo.transaction()
                txn.check(paths.item(item.name), item.token)
                txn.set_data(paths.reservation(item.name), record, item.reservation_version)
                sent = time.monotonic()
                try:
                    results = commit(ctx, txn, deadline, "extend a lease")
                except ConnectionLost:
                    held = held_version(ctx, paths, item.name, item.token, self.worker_id, deadline)
                    if held is None:
                        raise ReservationLost(self.queue, item.id) from None
                    item.renewed(held, item.lease, item.lease_until)
                    continue  # extend again from the version read: no harm if it had landed
                if first_error(results)[1] is not None:
                    raise ReservationLost(self.queue, item.id)
                stat = results[1]
                self.clock.saw(stat.mtime)
                item.renewed(stat.version, lease, sent + lease)
                return

    # -- finishing items -------------------------------------------------------------------

    def ack_many(self, items: Sequence[Item], results: Sequence[Any] | None = None) -> None:
        """Ack several items in one transaction (one result each, or none).
        Each is checked as :meth:`Item.ack` checks it; if some reservations
        were lost, the others are still acked and :class:`ReservationLost`
        names every lost one (``item_ids``)."""
        if results is not None and len(results) != len(items):
            raise ValueError("give one result per item")
        pairs = list(zip(items, results or [None] * len(items), strict=True))
        for item, result in pairs:
            item.check_unfinished()
            if item.queue != self.queue:
                raise ValueError(f"item {item.id} belongs to queue {item.queue!r}")
            item.check_result(result)
        if not pairs:
            return
        lost = self.ack_all(pairs)
        for item, _ in pairs:
            item.mark_finished()
        if lost:
            raise ReservationLost(self.queue, lost[0].id, item_ids=tuple(i.id for i in lost))

    def ack_all(self, pairs: list[tuple[Item, Any]]) -> list[Item]:
        """Ack in as few transactions as fit; returns the items whose
        reservation was lost (the rest are acked)."""
        return ack_all(self._ctx, self.queue, pairs)

    def release(self, item: Item, error: str | BaseException | None) -> None:
        """Give ``item`` back (or bury it after ``max_attempts``), in one
        transaction that proves this worker still holds it."""
        released = release(
            self._ctx, item, error, max_attempts=self.max_attempts, worker_id=self.worker_id
        )
        if released:
            self.stale()

    def _bury(
        self,
        name: str,
        data: bytes,
        version: int,
        reason: str,
        entry: envelope.Entry | None,
        deadline: float | None,
        lapsed: int | None = None,
    ) -> None:
        bury(self._ctx, self.queue, name, data, version, reason, entry, deadline, lapsed=lapsed)

    def _bury_foreign(self, path: str, key: str, deadline: float | None) -> None:
        """Move a node that is not a work item to the dead letters, as
        ``key``; a node that cannot be moved (it has children) is left, and
        not tried again by this worker."""
        conn = self._ctx.conn
        try:
            data, stat = conn.call(functools.partial(conn.kazoo.get_async, path), deadline, path)
        except NoNodeError:
            return
        reason = "not a zkpubsub work item"
        if stat.numChildren or not bury(
            self._ctx, self.queue, key, data, stat.version, reason, None, deadline, path=path
        ):
            self._given_up.add(key)

    def close(self) -> None:
        """Leave the worker registry. Idempotent."""
        if self._closed:
            return
        self._closed = True
        conn = self._ctx.conn
        if self._worker_session is not None and self._worker_session == conn.session_id:
            with contextlib.suppress(ClientClosed, ConnectionLost, OperationTimeout, NotEmptyError):
                conn.delete(self._paths.worker(self.worker_id), self._ctx.deadline())
