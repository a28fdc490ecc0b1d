"""Where a work queue's items live: segments, and rolling to the next one.

A queue's items are children of segments, ``items/s<N>``. The queue's own
node holds the number of the segment puts go to; every put transaction
checks that node's version, and rolling to segment N + 1 is one
transaction that sets the node's data to N + 1 (at the version read) and
creates ``items/s<N+1>``. So:

* every item of segment N was created before every item of segment N + 1
  (a put that read N commits before the roll or fails its check), and
  order across segments is kept: priority first, then segment, then the
  sequence number within the segment;
* of two producers rolling at once, one wins; the other's roll fails its
  version check, it reads the node again and puts into the new segment;
* a producer with a stale idea of the current segment fails its check and
  reads it again: nothing is ever put into an old segment.

A producer rolls when an item it created got a sequence number of
``SEGMENT_ITEMS - 1`` or more: a segment takes about ``SEGMENT_ITEMS``
creates (a few more when several producers put at that moment), so its
counter never nears 2**31 - 1 and listing it stays far below 1 MiB.
Workers delete the segments older than the current one once empty.

Items of the unsegmented layout (directly under ``items/``, from earlier
versions) count as segment 0: they are read first, and new items go to
segments.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from .._context import Context
from ..connection import Connection, first_error
from ..errors import ConnectionLost
from ..layout import (
    SEGMENT_ITEMS,
    NodeKind,
    WorkQueuePaths,
    parse_item_node,
    parse_segment_node,
    parse_segment_number,
)
from .records import WorkQueueStats

__all__ = [
    "Listing",
    "Segments",
    "count_items",
    "ensure_queue",
    "list_queue",
    "read_queue_stats",
    "sequence_of",
]

logger = logging.getLogger(__name__)

# A producer counting items lists items/ again after this many seconds even
# if its watch did not fire.
LISTING_TTL: Final = 2.0


@dataclass(frozen=True, slots=True)
class Listing:
    """The children of ``items/``: segment numbers (ascending), items of the
    unsegmented layout, and foreign names."""

    segments: tuple[int, ...]
    legacy: tuple[str, ...]
    foreign: tuple[str, ...]


def classify(names: list[str]) -> Listing:
    segments: list[int] = []
    legacy: list[str] = []
    foreign: list[str] = []
    for name in names:
        number = parse_segment_node(name)
        if number:  # item segments are numbered from 1
            segments.append(number)
            continue
        parsed = parse_item_node(name)
        if parsed is not None and parsed.segment == 0:
            legacy.append(name)
        else:
            foreign.append(name)
    return Listing(tuple(sorted(segments)), tuple(legacy), tuple(foreign))


def list_queue(
    conn: Connection, paths: WorkQueuePaths, deadline: float | None, watch: Any = None
) -> Listing | None:
    """The children of ``items/`` (``None`` if it does not exist)."""
    names = conn.children(paths.items, deadline, watch=watch)
    return None if names is None else classify(names)


def count_items(
    conn: Connection,
    paths: WorkQueuePaths,
    deadline: float | None,
    listing: Listing | None = None,
) -> int:
    """Items in the queue, ready or reserved: one round of reads (two
    without the ``listing`` of ``items/``)."""
    if listing is None:
        listing = list_queue(conn, paths, deadline)
    if listing is None:
        return 0
    kazoo = conn.kazoo
    stats = conn.read_all(
        lambda: [kazoo.exists_async(paths.segment(n)) for n in listing.segments],
        deadline,
        "count items",
    )
    held: int = sum(s.numChildren for s in stats if s is not None and not isinstance(s, Exception))
    return len(listing.legacy) + held


def read_queue_stats(
    conn: Connection, paths: WorkQueuePaths, name: str, deadline: float | None
) -> WorkQueueStats:
    """The counts of one work queue (zero for folders that do not exist)."""
    kazoo = conn.kazoo
    stats = conn.read_all(
        lambda: [kazoo.exists_async(p) for p in (paths.reserved, paths.dead, paths.workers)],
        deadline,
        "queue stats",
    )
    reserved, dead, workers = [0 if stat is None else stat.numChildren for stat in stats]
    items = count_items(conn, paths, deadline)
    return WorkQueueStats(name, max(0, items - reserved), reserved, dead, workers)


def ensure_queue(ctx: Context, name: str, deadline: float | None) -> None:
    """Make the queue's folders exist."""
    for path in ctx.layout.work_queue(name).all():
        ctx.conn.ensure_path(path, deadline)


def sequence_of(path: Any) -> int | None:
    """The sequence number a created item's path ends with."""
    if not isinstance(path, str):
        return None
    parsed = parse_item_node(path.rsplit("/", 1)[-1])
    return None if parsed is None else parsed.sequence


class Segments:
    """A producer's idea of the current segment: ``(number, version)`` of
    the queue node, read once and again whenever a put's check fails."""

    def __init__(self, ctx: Context, paths: WorkQueuePaths) -> None:
        self._ctx = ctx
        self._paths = paths
        self._lock = threading.Lock()
        self._current: tuple[int, int] | None = None
        self._listing: Listing | None = None  # of items/, watched
        self._listed_at = 0.0
        self.rolls = 0  # rolls this producer made

    def count(self, deadline: float | None) -> int:
        """Items in the queue, ready or reserved. The listing of ``items/``
        is kept between counts (watched, and for ``LISTING_TTL`` seconds at
        most: watches do not outlive a session): one round of reads."""
        conn = self._ctx.conn
        listing = self._listing
        if listing is None or time.monotonic() - self._listed_at > LISTING_TTL:
            self._listed_at = time.monotonic()
            listing = list_queue(conn, self._paths, deadline, watch=self._listing_changed)
            self._listing = listing
        return count_items(conn, self._paths, deadline, listing or Listing((), (), ()))

    def _listing_changed(self, _event: object) -> None:  # kazoo's thread
        self._listing = None

    def forget(self) -> None:
        with self._lock:
            self._current = None
            self._listing = None

    def current(self, deadline: float | None) -> tuple[int, int]:
        """``(segment, version of the queue node)``, reading (and, for a
        queue without segments yet, rolling to segment 1) when needed."""
        while True:
            with self._lock:
                if self._current is not None:
                    return self._current
            conn = self._ctx.conn
            data, stat = conn.call(
                functools.partial(conn.kazoo.get_async, self._paths.base),
                deadline,
                "read the queue's segment",
            )
            number = parse_segment_number(data)
            if number is None:
                logger.warning(
                    "queue node %s holds %r, not a segment number; rolling on",
                    self._paths.base,
                    data[:40],
                )
                number = 0
            if number == 0:
                self.roll((0, stat.version), deadline)
                continue
            with self._lock:
                self._current = (number, stat.version)

    def full(self, created: tuple[Any, ...]) -> bool:
        """Whether the paths a put created show the segment has had its share."""
        seqs = [s for s in (sequence_of(p) for p in created) if s is not None]
        return bool(seqs) and max(seqs) >= SEGMENT_ITEMS - 1

    def roll(self, seen: tuple[int, int], deadline: float | None) -> None:
        """Move puts on from segment ``seen`` (as read at that version) to
        the next. Losing to another producer's roll is fine: either way the
        queue node is read again."""
        number, version = seen
        conn = self._ctx.conn
        txn = conn.kazoo.transaction()
        txn.set_data(self._paths.base, str(number + 1).encode(), version)
        txn.create(
            self._paths.segment(number + 1), b"", acl=self._ctx.acl.acl(NodeKind.ITEM_SEGMENT)
        )
        try:
            conn.wait_connected(deadline, "roll to a new segment")
            results = conn.result(txn.commit_async(), deadline, "roll to a new segment")
        except ConnectionLost:
            self.forget()  # applied or not, reading the node tells
            return
        _, error = first_error(results)
        if error is None:
            self.rolls += 1
            logger.debug("queue %s: puts go to segment %d", self._paths.base, number + 1)
            with self._lock:
                self._current = (number + 1, version + 1)
            return
        self.forget()
        if isinstance(error, NodeExistsError):
            # The queue node names an older segment than exists (its data
            # was written by someone else): go on from the newest one.
            self._repair(version, deadline)
        elif isinstance(error, NoNodeError):
            for path in self._paths.all():
                conn.ensure_path(path, deadline)
        elif not isinstance(error, BadVersionError):
            logger.warning("queue %s: rolling failed: %r", self._paths.base, error)

    def _repair(self, version: int, deadline: float | None) -> None:
        conn = self._ctx.conn
        listing = list_queue(conn, self._paths, deadline)
        if listing is None or not listing.segments:
            return
        newest = listing.segments[-1]
        kazoo = conn.kazoo
        with contextlib.suppress(BadVersionError, NoNodeError):
            conn.call(
                lambda: kazoo.set_async(self._paths.base, str(newest).encode(), version),
                deadline,
                "repair the queue's segment",
            )
