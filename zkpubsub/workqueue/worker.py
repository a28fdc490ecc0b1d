"""A worker of a work queue, and the life of its reservations.

A worker has its own identity (``<client id>.<n>``), registers as an
ephemeral ``workers/<worker id>`` when it first reserves
(:mod:`.registration`), and tries the items its :class:`~.lineup.Lineup`
ranks for it. Reserving, extending a lease, acking, releasing and moving
an item to the dead letters are each one transaction whose checks the
server enforces (see :mod:`zkpubsub.workqueue`; the ends of a reservation
are in :mod:`.finishing`).

With a ``visibility_timeout`` a worker's reservations carry a lease (see
:mod:`.leases`); a reservation whose lease ran out, whoever holds it, is
taken over by the worker whose lineup found it, in the transaction that
reserves it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from kazoo.exceptions import NodeExistsError, NoNodeError

from .. import envelope
from .._context import Context
from .._deadlines import deadline_after, remaining
from .._numbers import is_int
from ..connection import first_error, translated
from ..errors import (
    ClientClosed,
    ConnectionLost,
    DecodeError,
    OperationTimeout,
    ReservationLost,
    ZkPubSubError,
)
from ..layout import NodeKind, parse_item_node
from .finishing import ack_all, bury, commit, encoded_result, held_version, release
from .items import Item
from .leases import check_lease
from .lineup import Lapsed, Lineup
from .records import decode_item, reservation_record
from .registration import Registration

__all__ = ["TXN_OP_OVERHEAD", "Worker", "check_limit"]

logger = logging.getLogger(__name__)

_numbers = itertools.count(1)

# Bytes of a transaction's operation besides its path and data (headers,
# version, ACL, flags): an upper estimate, for sizing reserving transactions.
TXN_OP_OVERHEAD: Final = 512

_Ready = tuple[str, bytes, int, envelope.Entry, Any]  # name, data, version, entry, payload


def check_limit(limit: object) -> None:
    """``ValueError`` unless ``limit`` is a count of items to reserve."""
    if not is_int(limit) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, not {limit!r}")


def _still(marks: Mapping[str, Lapsed], valid: Mapping[str, int]) -> dict[str, Lapsed]:
    """The lapsed-reservation marks found still to hold, to keep with the
    candidates put back."""
    return {name: marks[name] for name in valid}


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
        self.takeovers = 0  # items taken over from a holder whose lease ran out
        self.conflicts = 0  # reservations lost to another worker at the last moment
        self._paths = paths = ctx.layout.work_queue(queue)
        self.worker_id = worker_id = f"{ctx.client_id}.{next(_numbers)}"
        self._registration = Registration(ctx, paths, worker_id)
        self.clock = self._registration.clock
        self._lineup = Lineup(ctx, queue, paths, worker_id, self._registration)
        # Reservations sent whose answer was lost, and whose lookup failed
        # too (with when each was sent): ours or not, they are looked up
        # again before the next reserve and at close. Left alone, one made
        # would be held by nobody (without a lease, until the session ends).
        self._in_doubt: list[tuple[_Ready, float]] = []
        self._doubt_lock = threading.Lock()  # a close may settle them beside a reserve
        self._closed = False

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} of {self.queue!r}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- plumbing ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"worker {self.worker_id} of {self.queue!r} is closed")
        self._ctx.check_open()

    def stale(self) -> None:
        """Something became available: read the list anew before the next reserve."""
        self._lineup.stale()

    # -- reserving ---------------------------------------------------------------------

    def reserve(self, timeout: float | None = None) -> Item | None:
        """Reserve the next item, waiting up to ``timeout`` seconds (``None``:
        as long as it takes). Returns ``None`` if none came in time."""
        items = self.reserve_many(1, timeout)
        return items[0] if items else None

    def reserve_many(
        self, limit: int, timeout: float | None = None, *, abandoned: threading.Event | None = None
    ) -> list[Item]:
        """Reserve up to ``limit`` items in one transaction (at least one,
        unless ``timeout`` passes first). Once ``abandoned`` is set (the
        asyncio reserve waiting for this one was cancelled), nothing more
        is reserved: an item reserved and given back unseen would still
        count as one of its attempts."""
        check_limit(limit)
        deadline = deadline_after(timeout)
        lineup = self._lineup
        with translated(f"reserve from queue {self.queue!r}"):
            while True:
                self._check_open()
                if abandoned is not None and abandoned.is_set():
                    return []
                request_deadline = self._ctx.deadline()
                if self._in_doubt:
                    held = self._held_in_doubt(limit, request_deadline)
                    if held:
                        return held
                batch = lineup.take(limit, request_deadline)
                if batch:
                    items = self._reserve_names(batch, request_deadline, abandoned)
                    if items:
                        return items
                    continue
                if lineup.refill(request_deadline):
                    continue
                left = remaining(deadline)
                if left is not None and left <= 0:
                    return []
                # Watches on items/ and reserved/ wake us; poll now and then too.
                lineup.wait(1.0 if left is None else min(left, 1.0))

    def _fitting(self, ready: list[_Ready], record: int, expired: Mapping[str, int]) -> int:
        """How many of ``ready``, from the first, one reserving transaction
        carries within ``max_transaction_bytes`` (one at least; ``expired``:
        the lapsed reservations it takes over)."""
        paths, budget, total = self._paths, self._ctx.config.max_transaction_bytes, 0
        acl = self._ctx.acl.size(NodeKind.RESERVATION)
        for count, (name, data, *_) in enumerate(ready):
            # the item's data and path, the reservation's path, record and
            # ACL, each operation's header, and a lapsed holder's delete
            reservation = len(paths.reservation(name).encode())  # bytes, as sent
            total += len(data) + len(paths.item(name).encode()) + reservation + record + acl
            total += 2 * TXN_OP_OVERHEAD
            if name in expired:
                total += reservation + TXN_OP_OVERHEAD
            if total > budget and count > 0:
                return count
        return len(ready)

    def _reserve_names(
        self, names: list[str], deadline: float | None, abandoned: threading.Event | None = None
    ) -> list[Item]:
        ctx, paths = self._ctx, self._paths
        kazoo = ctx.conn.kazoo
        lapsed_marks = self._lineup.expired_of(names)
        marked = list(lapsed_marks)
        # The items, then the reservations judged lapsed, in one pipeline:
        # a reservation made since that judgment (released and reserved
        # again) is another node, whose version starts at 0 again, and a
        # takeover at the version judged would delete it. Its czxid tells.
        # One made after these reads changed the item's version, which the
        # reserve's setData checks.
        answers = ctx.conn.read_all(
            lambda: (
                [kazoo.get_async(paths.item(n)) for n in names]
                + [kazoo.get_async(paths.reservation(n)) for n in marked]
            ),
            deadline,
            "read items",
        )
        answers, now_reserved = answers[: len(names)], answers[len(names) :]
        expired: dict[str, int] = {}
        for name, answer in zip(marked, now_reserved, strict=True):
            if not isinstance(answer, Exception) and answer[1].czxid == lapsed_marks[name].czxid:
                expired[name] = lapsed_marks[name].version  # the node judged lapsed is there
        ready: list[_Ready] = []
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, NoNodeError):
                self._lineup.missed(name)  # acked meanwhile
                continue
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
        # The transaction writes every item's data again (its setData): it
        # takes as many as fit in max_transaction_bytes (one at least; the
        # server drops a connection whose request is too large, and the
        # reserve would try again for ever). The others stay first in line.
        fit = self._fitting(ready, len(info), expired)
        if fit < len(ready):
            self._lineup.put_back([name for name, *_ in ready[fit:]], _still(lapsed_marks, expired))
            del ready[fit:]
        while ready:
            if abandoned is not None and abandoned.is_set():
                self._lineup.put_back([name for name, *_ in ready], _still(lapsed_marks, expired))
                return []
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
            except (ConnectionLost, OperationTimeout):
                # it may have been applied: what is ours is kept (looked up
                # with time of its own: the answer may have come too late)
                try:
                    ours = self.reserved_after_loss(ready, self._ctx.deadline(), sent)
                except ZkPubSubError:
                    with self._doubt_lock:
                        self._in_doubt += [(r, sent) for r in ready]
                    names = [name for name, *_ in ready]
                    self._lineup.put_back(names, _still(lapsed_marks, expired))
                    raise
                taken = {item.name for item in ours}
                # the others are still first in line
                self._lineup.put_back(
                    [name for name, *_ in ready if name not in taken], _still(lapsed_marks, expired)
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
            self._lineup.outdated()
            if isinstance(error, (NoNodeError, NodeExistsError)):  # gone, or held
                self._lineup.missed(ready[owners[index]][0])
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
        for ready in tried:
            item = self._ours(ready, sent, deadline)
            if item is not None:
                ours.append(item)
        return ours

    def _ours(self, ready: _Ready, sent: float, deadline: float | None) -> Item | None:
        """The item of one reserve whose answer was lost, if the reservation
        it made is held by this worker (``sent``: when it was sent)."""
        name, _, version, entry, payload = ready
        held = held_version(self._ctx, self._paths, name, version + 1, self.worker_id, deadline)
        if held is None:
            return None
        return self._item(name, version + 1, entry, payload, sent=sent, held=held)

    def _held_in_doubt(self, limit: int, deadline: float | None) -> list[Item]:
        """The reservations in doubt found ours, up to ``limit`` (the rest
        stay in doubt, looked up again next time); those not ours are
        forgotten. A lookup failing stays in doubt: what was found before
        it is returned, or, nothing found, its error raised."""
        held: list[Item] = []
        while len(held) < limit:
            with self._doubt_lock:
                if not self._in_doubt:
                    break
                doubt = self._in_doubt.pop(0)
            try:
                found = self._ours(*doubt, deadline)
            except ZkPubSubError:
                with self._doubt_lock:
                    self._in_doubt.insert(0, doubt)
                if held:
                    return held
                raise
            if found is not None:
                held.append(found)
        return held

    def _give_back_in_doubt(self) -> None:
        """At close: the reservations in doubt found ours are given back."""
        while self._in_doubt:
            for item in self._held_in_doubt(1, self._ctx.closing_deadline()):
                # ReservationLost: its lease ran out, and another took it
                with contextlib.suppress(ReservationLost):
                    self.release(item, None)

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
        if seconds is None and self.visibility_timeout is None:
            raise ValueError(
                "extend() needs seconds: the queue has no visibility_timeout to default to"
            )
        lease = check_lease(
            self.visibility_timeout if seconds is None else seconds, "the lease extension"
        )
        ctx, paths = self._ctx, self._paths
        conn = ctx.conn
        record = reservation_record(self.worker_id, lease)
        deadline = ctx.deadline()
        lookups: float | None = None  # one more request's time, for the lookups after losses

        def held_now() -> int | None:
            """The reservation's version if this worker still holds the item."""
            nonlocal lookups
            if lookups is None:
                lookups = ctx.deadline()
            return held_version(ctx, paths, item.name, item.token, self.worker_id, lookups)

        with translated(f"extend the lease of item {item.id}"):
            while True:
                txn = conn.kazoo.transaction()
                txn.check(paths.item(item.name), item.token)
                txn.set_data(paths.reservation(item.name), record, item.reservation_version)
                sent = time.monotonic()
                try:
                    results = commit(ctx, txn, deadline, "extend a lease")
                except (ConnectionLost, OperationTimeout) as exc:
                    # it may have landed: the version it left is read (with
                    # time of its own), or the next extension, from the old
                    # one, would be refused as if the item had been lost
                    held = held_now()
                    if held is None:
                        raise ReservationLost(self.queue, item.id) from None
                    item.renewed(held, item.lease, item.lease_until)
                    if isinstance(exc, OperationTimeout):
                        raise  # not known extended: tried again later, from the version read
                    continue  # extend again from the version read: no harm if it had landed
                if first_error(results)[1] is not None:
                    # refused: taken, or at another version (an extension
                    # whose answer was lost landed): which, the server says
                    held = held_now()
                    if held is None or held == item.reservation_version:
                        raise ReservationLost(self.queue, item.id)
                    item.renewed(held, item.lease, item.lease_until)
                    continue
                stat = results[1]
                self.clock.saw(stat.mtime)
                item.renewed(stat.version, lease, sent + lease)
                return

    # -- finishing items -------------------------------------------------------------------

    def ack_many(self, items: Sequence[Item], results: Sequence[Any] | None = None) -> None:
        """Ack several items in one transaction (one result each, or none;
        as many as ``max_transaction_bytes`` needs). Each is checked as
        :meth:`Item.ack` checks it; if some reservations were lost, the
        others are still acked and :class:`ReservationLost` names every lost
        one (``item_ids``). Failing after some transactions were applied, it
        raises with theirs marked finished: ack the others again."""
        if results is not None and len(results) != len(items):
            raise ValueError("give one result per item")
        pairs = list(zip(items, results or [None] * len(items), strict=True))
        if len({id(item) for item in items}) != len(items):
            raise ValueError("an item is listed twice: ack each once")
        for item, result in pairs:
            item.check_unfinished()
            if item.queue != self.queue:
                raise ValueError(f"item {item.id} belongs to queue {item.queue!r}")
            item.check_result(result)
        if not pairs:
            return
        lost = self.ack_all(pairs)
        for item, _ in pairs:
            item.mark_finished("lost" if item in lost else "acked")
        if lost:
            raise ReservationLost(self.queue, lost[0].id, item_ids=tuple(i.id for i in lost))

    def check_result(self, result: Any) -> None:
        """What an ack of ``result`` would raise before sending anything
        (``SerializationError``, ``PayloadTooLarge``)."""
        encoded_result(self._ctx, result)

    def ack_all(self, pairs: list[tuple[Item, Any]]) -> list[Item]:
        """Ack in as few transactions as fit; returns the items whose
        reservation was lost (the rest are acked)."""
        return ack_all(self._ctx, self.queue, pairs)

    def release(self, item: Item, error: str | BaseException | None) -> None:
        """Give ``item`` back (or bury it after ``max_attempts``), in one
        transaction that proves this worker still holds it."""
        released = release(self._ctx, item, error, max_attempts=self.max_attempts)
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

    def close(self) -> None:
        """Leave the worker registry, after giving back what a reserve
        whose answer was lost left reserved for this worker (looked up).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._give_back_in_doubt()
        except ZkPubSubError as exc:  # the session's end frees them
            logger.warning(
                "worker %s: reservations whose answer was lost may be left to the "
                "session's end: %s",
                self.worker_id,
                exc,
            )
        try:
            self._lineup.shut(self._ctx.closing_deadline())
        finally:
            self._registration.leave()
