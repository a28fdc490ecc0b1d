"""The items a worker tries next: knowing the queue, ranking, expired leases.

A worker keeps a list of candidate items, ranked so that workers do not
all race for the head: a worker of rank r among W tries first the items
whose sequence number is r modulo W (:func:`rank_candidates`), its own.
With the watch below, a worker leaves an item just put that is not its own
to that item's worker for ``LEAVE_TO_OWNER`` seconds first. A put,
release or change of workers marks the list stale, and the worker ranks
the queue's items again before its next reserve, no more often than the
intervals below.

Where the server has persistent watches (ZooKeeper 3.6+) and the client's
``watch_mode`` allows, the worker knows the queue from a
:class:`~.mirror.Mirror` kept by one persistent recursive watch: ranking
again needs no request to the server, and the queue is listed only to fill
the mirror (at the start, after a reconnect). Otherwise every ranking
lists the queue, which leaves one-shot watches on ``items/``, its
segments, ``reserved/`` and ``workers/``.

With leases, a listing also finds the reservations whose lease ran out
(at most once a second: it reads the reservations it already saw at its
previous look and judges their leases by the server's clock); those items
are candidates again, to be taken over. Nodes under ``items/`` that are not
work items are moved to the dead letters; segments older than the current
one are deleted once empty.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final, NamedTuple

from kazoo.exceptions import NoNodeError

from .._context import Context
from ..layout import (
    WorkQueuePaths,
    join,
    order_items,
    parse_item_node,
    parse_segment_number,
    segment_name,
)
from .finishing import bury
from .leases import ANCHOR_MAX_AGE, LEASE_SCAN_INTERVAL
from .mirror import Mirror, segment_of
from .records import lease_of
from .registration import Registration
from .segments import classify, ensure_queue

__all__ = [
    "LEAVE_TO_OWNER",
    "MIN_RELIST_INTERVAL",
    "RELIST_WHILE_BUSY",
    "WATCH_UNTIL_BACKLOG",
    "Lapsed",
    "Lineup",
    "rank_by_owner",
    "rank_candidates",
]

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
# A worker that finds at least this many candidates stops watching its queue
# and lists it as above until the candidates run out, then watches again. A
# persistent watch tells every worker of every put, reservation and ack (four
# notifications per item to each worker); a worker with a backlog in hand has
# no use for them, and with several workers draining they cost the server
# more time than the listings they spare (measured: draining 2,000 items with
# four workers one at a time went at 0.6x of listing).
WATCH_UNTIL_BACKLOG: Final = 64
# With the watch, every idle worker hears of a put at once. Were each to try
# the new item, all would read it and send a reservation, and only one would
# win (measured: about nine requests an item with four workers, against three
# with one). So a worker leaves an item that is not its own by rank (see
# rank_candidates) to its own worker for this long after first hearing of it:
# the own worker's reservation is heard of sooner, and then the item is no
# longer a candidate. If the own worker is busy or gone, the others try it
# after this delay. Items found by a listing (at the start, after a
# reconnect) have been waiting already, and are not left.
LEAVE_TO_OWNER: Final = 0.02


def rank_candidates(
    names: Sequence[str], reserved: Sequence[str], workers: Sequence[str], worker_id: str
) -> tuple[list[str], list[str]]:
    """The items a worker should try, in order, and the foreign names.

    Items held by someone are left out; the rest go by priority, then
    creation order, those whose sequence number falls on the worker's rank
    (among the sorted worker ids) first within each priority: unlike
    positions in a listing, that choice agrees between workers whose
    listings are of different ages."""
    return rank_by_owner(names, reserved, owner_test(workers, worker_id))


def rank_by_owner(
    names: Sequence[str], reserved: Sequence[str], own: Callable[[str], bool]
) -> tuple[list[str], list[str]]:
    """:func:`rank_candidates` with the worker's :func:`owner_test` at hand."""
    held = set(reserved)
    ordered, foreign = order_items([n for n in names if n not in held])

    def rank(name: str) -> tuple[int, bool]:
        parsed = parse_item_node(name)
        assert parsed is not None  # foreign names are set apart
        return parsed.priority, not own(name)

    # the worker's own first within each priority, never before a more
    # urgent item (a stable sort keeps creation order within each)
    return sorted(ordered, key=rank), foreign


def owner_test(workers: Sequence[str], worker_id: str) -> Callable[[str], bool]:
    """Whether an item node's name is the worker's own: its sequence number
    is the worker's rank (among the sorted worker ids) modulo their count."""
    ranked = sorted(workers)
    count = max(1, len(ranked))
    rank = ranked.index(worker_id) if worker_id in ranked else 0

    def own(name: str) -> bool:
        parsed = parse_item_node(name)
        return parsed is not None and parsed.sequence % count == rank

    return own


class Lapsed(NamedTuple):
    """A reservation whose lease ran out, as read: its node's ``version``
    (a takeover deletes it at that version) and ``czxid`` (which node it
    was: a reservation made since, by anyone, is a node of its own, whose
    version starts at 0 again)."""

    version: int
    czxid: int


class Lineup:
    """One worker's ranked candidates for the queue ``queue``."""

    def __init__(
        self,
        ctx: Context,
        queue: str,
        paths: WorkQueuePaths,
        worker_id: str,
        registration: Registration,
    ) -> None:
        self._ctx = ctx
        self._queue = queue
        self._paths = paths
        self._worker_id = worker_id
        self._registration = registration
        self._lock = threading.Lock()
        self._names: deque[str] = deque()
        self._changed = threading.Event()
        self._stale = False
        self._listed_at = 0.0
        self._outdated = False  # the list in hand is known to be out of date
        self._ready = False  # the queue's folders exist
        # item name -> the expired reservation: its node's version and czxid
        self._expired: dict[str, Lapsed] = {}
        self._seen_reserved: set[str] = set()
        self._scanned_at = 0.0
        self._given_up: set[str] = set()  # foreign nodes that could not be moved
        self._mirror: Mirror | None = None
        # no mirror ever: the mode says so, or the server has no persistent watches
        self._never_watch = ctx.config.watch_mode == "listing"
        self._backlog_in_hand = False  # no mirror until the candidates run out
        # With the mirror: each item's first hearing (0: found by a listing),
        # which items are this worker's own, and when the next item left to
        # its own worker (LEAVE_TO_OWNER) may be tried here (0: none left).
        self._heard: dict[str, float] = {}
        self._own: Callable[[str], bool] = lambda name: True
        self._next_due = 0.0
        self._mirror_lock = threading.Lock()
        self._shut = False

    @property
    def mirrored(self) -> bool:
        """Whether the queue is known from a persistent watch (no listings)."""
        return self._mirror is not None

    def close(self, deadline: float | None) -> None:
        """Stop watching the queue. Idempotent."""
        with self._mirror_lock:
            mirror, self._mirror = self._mirror, None
        if mirror is not None:
            mirror.stop(deadline)

    def shut(self, deadline: float | None) -> None:
        """Stop watching for good (the worker closes): a refresh under way
        beside it starts no watch after it."""
        with self._mirror_lock:
            self._shut = True
        self.close(deadline)

    def names(self) -> list[str]:
        """The candidates in hand, in the order they will be tried."""
        with self._lock:
            return list(self._names)

    def stale(self) -> None:
        """Something became available: list anew before the next reserve."""
        self._stale, self._listed_at = True, 0.0

    def outdated(self) -> None:
        """A reservation was lost to another worker: the list in hand is old."""
        self._outdated = True

    def missed(self, name: str) -> None:
        """The server says the item ``name`` is not to be had (gone, or
        reserved by another). A mirror that still offers it missed an event
        (or has not yet applied all of a transaction's: an ack's delete of
        the item can be heard a few milliseconds after that answer), and is
        filled again by a listing before the next ranking: at worst one
        listing too many, where a mirror that stayed wrong would have the
        worker try the item again and again until the safety listing."""
        mirror = self._mirror
        if mirror is not None and mirror.available(name):
            mirror.invalidate()

    def take(self, limit: int, deadline: float | None) -> list[str]:
        """Up to ``limit`` candidates to try now, ranked again first if the
        list is stale and the interval for that has passed."""
        if self._stale:
            since = time.monotonic() - self._listed_at
            busy = self._names and not self._outdated
            if since >= (RELIST_WHILE_BUSY if busy else MIN_RELIST_INTERVAL):
                self.refresh(deadline)
        mirror = self._mirror
        with self._lock:
            if mirror is None:
                return [self._names.popleft() for _ in range(min(limit, len(self._names)))]
            batch: list[str] = []
            left: list[str] = []
            now = time.monotonic()
            while self._names and len(batch) < limit:
                name = self._names.popleft()
                if not mirror.available(name, self._expired):
                    continue  # acked or taken since
                (left if self._due_at(name) > now else batch).append(name)
            self._names.extendleft(reversed(left))
            return batch

    def put_back(self, names: Sequence[str], lapsed: Mapping[str, Lapsed] | None = None) -> None:
        """Return untried candidates to the front, in their order; ``lapsed``:
        the lapsed reservations :meth:`expired_of` gave for them, still to take over."""
        with self._lock:
            self._names.extendleft(reversed(names))
            if lapsed:
                self._expired.update((n, lapsed[n]) for n in names if n in lapsed)

    def expired_of(self, names: Sequence[str]) -> dict[str, Lapsed]:
        """Of ``names``, those whose reservation's lease ran out (name ->
        the reservation's node as read then), forgotten here: they are
        being tried."""
        return {n: self._expired.pop(n) for n in names if n in self._expired}

    def refill(self, deadline: float | None) -> bool:
        """Rank the queue's items now (after the list in hand ran out). True
        if it found candidates; otherwise :meth:`wait` returns on the next change."""
        self._changed.clear()
        self._backlog_in_hand = False
        return self.refresh(deadline)

    def wait(self, seconds: float) -> None:
        """Wait for a change to the queue, up to ``seconds``, or until an item
        left to its own worker may be tried here."""
        if self._next_due:
            seconds = max(0.0, min(seconds, self._next_due - time.monotonic()))
        self._changed.wait(seconds)

    def _due_at(self, name: str) -> float:
        """When this worker may try the item ``name`` (see ``LEAVE_TO_OWNER``)."""
        if self._own(name):
            return 0.0
        return self._heard.get(name, 0.0) + LEAVE_TO_OWNER

    def _any_due(self, now: float) -> bool:
        """Whether a candidate in hand may be tried now; notes when the first
        of those left to their own workers may be. Under the lock."""
        due = [self._due_at(name) for name in self._names]
        later = [at for at in due if at > now]
        self._next_due = min(later, default=0.0)
        return len(later) < len(due)

    def _on_change(self, event: object) -> None:  # kazoo's thread
        self._stale = True
        self._changed.set()

    def _on_workers_change(self, event: object) -> None:  # kazoo's thread
        self._stale = self._outdated = True
        self._changed.set()

    def _on_mirror_change(self, outdated: bool) -> None:  # kazoo's thread
        self._stale = True
        if outdated:
            self._outdated = True
        self._changed.set()

    def _watch(self, deadline: float | None) -> Mirror | None:
        """The mirror, started where the mode allows, the worker is not
        busy with a backlog and the server has persistent watches."""
        if self._mirror is None and not (self._never_watch or self._backlog_in_hand):
            if self._shut:
                return None
            mirror = Mirror(self._ctx.conn, self._paths, self._on_mirror_change)
            if mirror.start(deadline):
                with self._mirror_lock:
                    shut = self._shut
                    if not shut:
                        self._mirror = mirror
                if shut:  # the worker closed while it started
                    mirror.stop(deadline)
                    return None
            else:
                self._never_watch = True
        return self._mirror

    def _unwatch_for_backlog(self, deadline: float | None) -> None:
        """Stop watching while the candidates in hand last (refill watches
        again): see ``WATCH_UNTIL_BACKLOG``."""
        if self._mirror is not None and len(self._names) >= WATCH_UNTIL_BACKLOG:
            self._backlog_in_hand = True
            self.close(deadline)
            self._stale = True  # list again soon, leaving one-shot watches

    def refresh(self, deadline: float | None) -> bool:
        """Rank what is available for this worker. True if any. Without a
        mirror (or to fill it) the queue is listed, leaving watches: a
        later put or release marks it stale. Segments older than the
        current one are deleted once empty."""
        if not self._ready:
            ensure_queue(self._ctx, self._queue, deadline)
            self._ready = True
        self._registration.ensure(deadline)
        mirror = self._watch(deadline)
        self._stale = self._outdated = False
        self._listed_at = time.monotonic()
        try:
            if mirror is not None and mirror.current():
                found = self._rank_mirrored(mirror, deadline)
            else:
                found = self._list(mirror, deadline)
        except BaseException:
            self._stale = True
            raise
        self._unwatch_for_backlog(deadline)
        return found

    def _rank_mirrored(self, mirror: Mirror, deadline: float | None) -> bool:
        """Rank the mirror's items: no listing."""
        known = mirror.snapshot()
        now = time.monotonic()
        self._heard = known.heard  # an item is left to its own worker from when it was heard of
        self._own = owner_test(known.workers, self._worker_id)
        expired = self._find_expired(known.reserved, deadline)
        held = [name for name in known.reserved if name not in expired]
        names = known.items  # a copy: take it once
        ranked, _ = rank_by_owner(names, held, self._own)
        newest = max(known.segments, default=0)
        occupied = {segment_of(name) for name in names}
        for number in known.segments:
            if number < newest and number not in occupied:
                mirror.forget_segment(number)
                self._ctx.conn.kazoo.delete_async(self._paths.segment(number))  # nobody puts there
        with self._lock:
            self._names = deque(ranked)
            return self._any_due(now)

    def _list(self, mirror: Mirror | None, deadline: float | None) -> bool:
        """List the queue (and fill the mirror, if there is one)."""
        conn, paths = self._ctx.conn, self._paths
        kazoo = conn.kazoo
        # the mirror's watch tells of changes; without it, one-shot watches
        on_change = None if mirror is not None else self._on_change
        on_workers = None if mirror is not None else self._on_workers_change
        token = mirror.listing() if mirror is not None else 0
        try:
            answers = conn.read_all(
                lambda: [
                    kazoo.get_async(paths.base),
                    kazoo.get_children_async(paths.items, watch=on_change),
                    kazoo.get_children_async(paths.reserved, watch=on_change),
                    kazoo.get_children_async(paths.workers, watch=on_workers),
                ],
                deadline,
                "list queue",
            )
            if any(isinstance(answer, NoNodeError) for answer in answers):
                self._ready = False
                if mirror is not None:
                    mirror.abandon()
                return False
            (data, _), children, reserved, workers = answers
            listing = classify(children)
            listed = conn.read_all(
                lambda: [
                    kazoo.get_children_async(paths.segment(n), watch=on_change)
                    for n in listing.segments
                ],
                deadline,
                "list segments",
            )
        except BaseException:
            if mirror is not None:
                mirror.abandon()
            raise
        current = parse_segment_number(data) or 0
        names = list(listing.legacy)
        foreign = [(join(paths.items, name), name) for name in listing.foreign]
        segments = []
        for number, in_segment in zip(listing.segments, listed, strict=True):
            if isinstance(in_segment, NoNodeError):
                continue
            if not in_segment and number < current:
                kazoo.delete_async(paths.segment(number))  # nobody puts there any more
                continue
            segments.append(number)
            for name in in_segment:
                parsed = parse_item_node(name)
                if parsed is not None and parsed.segment == number:
                    names.append(name)
                else:
                    key = f"{segment_name(number)}.{name}"
                    foreign.append((join(paths.segment(number), name), key))
        if mirror is not None:
            mirror.fill(token, names, reserved, workers, segments)
            self._heard = dict.fromkeys(names, 0.0)  # waiting already: none is left
        expired = self._find_expired(reserved, deadline)
        held = [name for name in reserved if name not in expired]
        ranked, _ = rank_candidates(names, held, workers, self._worker_id)
        for path, key in foreign:
            if key not in self._given_up:
                self._bury_foreign(path, key, deadline)
        with self._lock:
            self._names = deque(ranked)
            self._next_due = 0.0
            return bool(self._names)

    def _find_expired(self, reserved: list[str], deadline: float | None) -> dict[str, Lapsed]:
        """The reservations whose lease ran out (name -> the reservation
        node's version and czxid). Read at most every ``LEASE_SCAN_INTERVAL``, and only those
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
        clock = self._registration.clock
        age = clock.age()
        if age is None or age > ANCHOR_MAX_AGE:
            self._registration.read_clock(deadline)
        for name, lease, stat in leased:
            if clock.expired(stat.mtime, lease):
                self._expired[name] = Lapsed(stat.version, stat.czxid)
        return self._expired

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
            self._ctx, self._queue, key, data, stat.version, reason, None, deadline, path=path
        ):
            self._given_up.add(key)
