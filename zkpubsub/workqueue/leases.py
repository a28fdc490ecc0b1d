"""Leases on reservations: how long a reserved item stays with its worker.

A queue made with ``visibility_timeout=T`` reserves items with a lease: the
reservation's record says ``"lease": T`` and the lease runs from the
reservation node's ``mtime``, the server's clock when the reservation (or
its last extension) was written. Once ``mtime + T`` has passed on the
server's clock, another worker may take the item over, in one transaction
that deletes the old reservation at the version it read (an extension
meanwhile makes it fail), creates its own and bumps the item's version
(which counts attempts): the old holder's ack then fails its version check
with :class:`~zkpubsub.ReservationLost`. The reservation is still an
ephemeral node, so a dead worker's items also come back when its session
ends, whichever comes first. Without a lease, a reservation lasts as long
as the worker's session.

Client clocks never matter. A worker knows the server's time only from
the stats its own writes return (the ``mtime`` of what it just wrote) and
its monotonic clock since the answer came: :class:`ServerClock`. That
estimate is never ahead of the server, so a lease is judged expired late
rather than early; a holder counts its lease from the moment it *sent*
the reservation, so it thinks it ends early rather than late. (Both are
the ZooKeeper leader's clock: a step of that clock, or a new leader whose
clock differs, moves expiries by as much. A lease taken over early means
the work is done twice, never acked twice.)

:class:`LeaseKeeper` is the consumer's thread that extends the leases of
the items in hand, each when half of it is left, for at most
``max_lease`` seconds in all.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Final

from .._deadlines import MAX_TIMEOUT
from .._numbers import is_real
from ..errors import ClientClosed, ReservationLost, ZkPubSubError

if TYPE_CHECKING:
    from .items import Item

__all__ = ["ANCHOR_MAX_AGE", "LEASE_SCAN_INTERVAL", "LeaseKeeper", "ServerClock", "check_lease"]

logger = logging.getLogger(__name__)

# A worker looks for expired leases among the reservations it lists at
# most this often, and only at reservations it saw at its previous look.
LEASE_SCAN_INTERVAL: Final = 1.0
# A server time anchor older than this is refreshed before judging a lease.
ANCHOR_MAX_AGE: Final = 60.0
# After a failed extension (no connection), the keeper tries again this soon.
RETRY_EXTEND: Final = 0.5


def check_lease(value: object, what: str = "visibility_timeout") -> float:
    if not is_real(value) or not 0 < value <= MAX_TIMEOUT:  # NaN fails too
        raise ValueError(
            f"{what} must be a positive number of seconds, at most {MAX_TIMEOUT:.0f} "
            f"(a year), not {value!r}"
        )
    return float(value)


class ServerClock:
    """The server's clock as one worker last saw it: the ``mtime`` of a
    node its own write set, and the monotonic time the answer arrived."""

    def __init__(self) -> None:
        self._anchor: tuple[int, float] | None = None

    def saw(self, mtime_ms: int, received: float | None = None) -> None:
        self._anchor = (int(mtime_ms), time.monotonic() if received is None else received)

    def age(self) -> float | None:
        """Seconds since the anchor (``None``: no anchor yet)."""
        anchor = self._anchor
        return None if anchor is None else time.monotonic() - anchor[1]

    def now_ms(self) -> float | None:
        """The server's time now, in milliseconds, never ahead of it
        (``None``: no anchor yet)."""
        anchor = self._anchor
        if anchor is None:
            return None
        mtime, received = anchor
        return mtime + (time.monotonic() - received) * 1000.0

    def expired(self, mtime_ms: int, lease: float) -> bool:
        """Whether a lease of ``lease`` seconds written at ``mtime_ms`` has
        surely run out on the server's clock."""
        now = self.now_ms()
        return now is not None and now > mtime_ms + lease * 1000.0


class LeaseKeeper:
    """Extends the leases of items in hand while their handler works.

    One thread, started with the first leased item; it sleeps until the
    next item is due (half its lease left) and stops with ``close()``. An
    item held for ``max_lease`` seconds in all is no longer extended: a
    handler stuck that long loses it to another worker when its lease runs
    out.
    """

    def __init__(self, name: str, max_lease: float) -> None:
        self._name = name
        self._max_lease = max_lease
        self._cond = threading.Condition()
        self._items: dict[int, tuple[Item, float]] = {}  # id(item) -> (item, held since)
        self._closed = False
        self._thread: threading.Thread | None = None
        self.extended = 0
        self.abandoned = 0  # items held past max_lease

    def add(self, items: list[Item]) -> None:
        leased = [item for item in items if item.lease is not None]
        if not leased:
            return
        now = time.monotonic()
        with self._cond:
            if self._closed:
                return
            for item in leased:
                self._items[id(item)] = (item, now)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, item: Item) -> None:
        with self._cond:
            self._items.pop(id(item), None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)

    def _due(self) -> tuple[list[tuple[Item, float]], float | None]:
        """The items due for an extension now, and the wait until the next."""
        now = time.monotonic()
        due: list[tuple[Item, float]] = []
        wait: float | None = None
        for item, since in list(self._items.values()):
            if item.finished:
                del self._items[id(item)]
                continue
            lease = item.lease
            left = item.lease_left()
            if lease is None or left is None:
                continue
            at = left - lease / 2
            if at <= 0:
                due.append((item, since))
            else:
                wait = at if wait is None else min(wait, at)
        del now
        return due, wait

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    due, wait = self._due()
                    if due:
                        break
                    self._cond.wait(wait)
            for item, since in due:
                self._extend(item, since)

    def _extend(self, item: Item, since: float) -> None:
        if time.monotonic() - since >= self._max_lease:
            logger.warning(
                "%r has been in hand for %.0f s (max_lease): its lease is no longer extended",
                item,
                time.monotonic() - since,
            )
            self.abandoned += 1
            self.discard(item)
            return
        try:
            item.extend()
            self.extended += 1
        except (ReservationLost, ValueError):
            self.discard(item)  # finished meanwhile, or taken over
        except ClientClosed:
            self.discard(item)
        except ZkPubSubError as exc:
            logger.debug("extending the lease of %r: %s", item, exc)
            with self._cond:
                if not self._closed:
                    self._cond.wait(RETRY_EXTEND)
