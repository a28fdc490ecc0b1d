"""The handle on one work queue: put, look, replay, and consume.

A handle is cheap and has no identity in the queue. Reserving takes a
:class:`~zkpubsub.workqueue.Worker`: ``queue.worker()`` makes one (one per
thread); the handle's own ``reserve`` / ``reserve_many`` use a worker it
makes on first use.

A put goes into the queue's current segment (:mod:`.segments`) with a
check of the queue node's version. With ``max_items`` it first counts the
items (ready or reserved) and waits for room, up to its timeout.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from kazoo.exceptions import BadVersionError, NoNodeError

from .. import envelope
from .._context import Context
from .._deadlines import deadline_after, expired, remaining
from ..config import (
    CREATE_OP_OVERHEAD,
    DEFAULT_MAX_LEASE,
    DEFAULT_QUEUE_ATTEMPTS,
    DEFAULT_QUEUE_MAX_ITEMS,
)
from ..connection import Connection, translated
from ..errors import ClientClosed, PayloadTooLarge, QueueFull, ZkPubSubError, ZooKeeperError
from ..layout import (
    MAX_ITEMS_PER_PUT,
    NodeKind,
    WorkQueuePaths,
    order_items,
    parse_item_node,
    validate_name,
)
from ..serializers import SerializerRegistry
from .items import Item, Ticket
from .leases import check_lease
from .records import (
    DEFAULT_PRIORITY,
    DeadItem,
    WorkQueueStats,
    check_priority,
    dead_item,
    dead_item_data,
)
from .segments import Segments, count_items
from .worker import Worker, ensure_queue

if TYPE_CHECKING:
    from .consumer import Consumer, ItemHandler

__all__ = ["WorkQueue", "read_dead", "read_queue_stats"]

logger = logging.getLogger(__name__)

# A put waiting for room counts the queue again after this long, doubling
# up to ROOM_POLL_MAX.
ROOM_POLL_MIN = 0.05
ROOM_POLL_MAX = 0.5


class WorkQueue:
    """One named work queue. Made by ``Client.queue(name)``.

    ``max_items`` bounds the items in the queue (ready or reserved; ``None``
    for no bound): a put waits for room up to its timeout, then raises
    :class:`~zkpubsub.QueueFull`. With ``visibility_timeout`` (seconds) the
    workers of this handle reserve items with a lease: an item held longer
    than that without an extension may be taken over by another worker
    (``None``: a reservation lasts as long as its worker's session).
    ``close()`` closes the workers this handle made (they leave the queue's
    worker registry).
    """

    def __init__(
        self,
        ctx: Context,
        name: str,
        *,
        max_attempts: int = DEFAULT_QUEUE_ATTEMPTS,
        max_items: int | None = DEFAULT_QUEUE_MAX_ITEMS,
        visibility_timeout: float | None = None,
    ) -> None:
        validate_name(name, "queue name")
        if visibility_timeout is not None:
            visibility_timeout = check_lease(visibility_timeout)
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        if max_items is not None and (
            not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1
        ):
            raise ValueError(f"max_items must be an int >= 1 or None, not {max_items!r}")
        self.name = name
        self.max_attempts = max_attempts
        self.max_items = max_items
        self.visibility_timeout = visibility_timeout
        self._ctx = ctx
        self._paths = ctx.layout.work_queue(name)
        self._segments = Segments(ctx, self._paths)
        self._ready = False
        self._closed = False
        self._own: Worker | None = None
        self._workers: list[Worker] = []

    # -- workers -----------------------------------------------------------------------

    def worker(self) -> Worker:
        """A new worker of this queue, with its own identity (use one per
        thread); it registers when it first reserves."""
        self._check_open()
        worker = Worker(
            self._ctx,
            self.name,
            max_attempts=self.max_attempts,
            visibility_timeout=self.visibility_timeout,
        )
        self._workers.append(worker)
        return worker

    def _worker(self) -> Worker:
        if self._own is None:
            self._own = self.worker()
        return self._own

    @property
    def worker_id(self) -> str:
        """The id of the worker behind this handle's ``reserve``."""
        return self._worker().worker_id

    @property
    def conflicts(self) -> int:
        """Reservations this handle's worker lost to another at the last moment."""
        return 0 if self._own is None else self._own.conflicts

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"work queue {self.name!r} is closed")
        self._ctx.check_open()

    def _ensure_paths(self, deadline: float | None) -> None:
        if not self._ready:
            ensure_queue(self._ctx, self.name, deadline)
            self._ready = True

    # -- producing ---------------------------------------------------------------------

    @overload
    def put(
        self,
        payload: Any,
        *,
        priority: int = ...,
        headers: dict[str, str] | None = ...,
        want_result: Literal[False] = ...,
        timeout: float | None = ...,
    ) -> str: ...

    @overload
    def put(
        self,
        payload: Any,
        *,
        priority: int = ...,
        headers: dict[str, str] | None = ...,
        want_result: Literal[True],
        timeout: float | None = ...,
    ) -> Ticket: ...

    def put(
        self,
        payload: Any,
        *,
        priority: int = DEFAULT_PRIORITY,
        headers: dict[str, str] | None = None,
        want_result: bool = False,
        timeout: float | None = None,
    ) -> str | Ticket:
        """Enqueue one item, exactly once. Returns its id, or a :class:`Ticket`
        with ``want_result=True``. Raises ``ValueError`` / ``TypeError`` for a
        bad priority, :class:`SerializationError` or :class:`PayloadTooLarge`
        before anything is sent. A full queue (``max_items``) makes it wait
        for room up to ``timeout`` (default ``request_timeout``), then raise
        :class:`QueueFull`."""
        (item_id,) = self._put([payload], priority, headers, want_result, timeout)
        return Ticket(self._ctx, self.name, item_id) if want_result else item_id

    def put_many(
        self,
        payloads: Iterable[Any],
        *,
        priority: int = DEFAULT_PRIORITY,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Enqueue several items, in order, in as few transactions as fit
        (usually one, so all or none; a transaction holds at most 1,000
        items, and at most ``max_items``). Returns their ids. Waits for room as :meth:`put`
        does; :class:`QueueFull` means the items of the transactions before
        were put, the others not."""
        items = list(payloads)
        if not items:
            raise ValueError("put_many needs at least one payload")
        return self._put(items, priority, headers, False, timeout)

    def _put(
        self,
        payloads: list[Any],
        priority: int,
        headers: dict[str, str] | None,
        want_result: bool,
        timeout: float | None,
    ) -> list[str]:
        check_priority(priority)
        self._check_open()
        hdrs = envelope.check_headers(headers)
        ctx = self._ctx
        config = ctx.config
        entries = [
            envelope.make_entry(
                config.serializer,
                topic=self.name,
                payload=p,
                headers=hdrs,
                publisher_id=ctx.client_id,
            )
            for p in payloads
        ]
        datas = [envelope.encode([e]) for e in entries]
        for data in datas:
            if len(data) > config.max_message_bytes:
                raise PayloadTooLarge(len(data), config.max_message_bytes)
        deadline = deadline_after(config.request_timeout if timeout is None else timeout)
        with translated(f"put to queue {self.name!r}"):
            self._ensure_paths(deadline)
            acl_size = self._ctx.acl.size(NodeKind.ITEM)
            budget = (
                config.max_transaction_bytes
                - 512
                - len(self._paths.base)
                - self._ctx.acl.size(NodeKind.RECEIPT)
            )
            most = min(MAX_ITEMS_PER_PUT, self.max_items or MAX_ITEMS_PER_PUT)
            start = 0
            while start < len(datas):
                used, end = 0, start
                while end < len(datas) and end - start < most:
                    size = (
                        len(datas[end])
                        + len(self._paths.items)
                        + 80
                        + CREATE_OP_OVERHEAD
                        + acl_size
                    )
                    if end > start and used + size > budget:
                        break
                    used += size
                    end += 1
                self._wait_for_room(end - start, deadline)
                self._put_once(datas[start:end], priority, want_result, deadline)
                start = end
        return [e.id for e in entries]

    def _wait_for_room(self, count: int, deadline: float | None) -> None:
        """Return once ``count`` more items fit under ``max_items``; raise
        :class:`QueueFull` if they do not before ``deadline``. Several
        producers counting at once may together go over by what they put
        at that moment."""
        limit = self.max_items
        if limit is None:
            return
        delay = ROOM_POLL_MIN
        while True:
            read_by = deadline if not expired(deadline) else self._ctx.deadline()
            held = self._segments.count(read_by)
            if held + count <= limit:
                return
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise QueueFull(self.name, held, limit)
            self._check_open()
            time.sleep(delay if left is None else min(delay, left))
            delay = min(2 * delay, ROOM_POLL_MAX)

    def _put_once(
        self, datas: list[bytes], priority: int, want_result: bool, deadline: float | None
    ) -> None:
        paths, segments = self._paths, self._segments
        acl = self._ctx.acl.acl(NodeKind.ITEM)
        while True:
            seen = segments.current(deadline)
            number, version = seen

            def ops(txn: Any, guid: str, number: int = number, version: int = version) -> None:
                txn.check(paths.base, version)
                prefix = paths.item_prefix(priority, guid, wants_result=want_result, segment=number)
                for data in datas:
                    txn.create(prefix, data, acl=acl, sequence=True)

            outcome = self._ctx.writer.commit(ops, deadline, f"put to queue {self.name!r}")
            if outcome.applied:
                if segments.full(outcome.results or ()):
                    self._roll_after_put(seen, deadline)
                return
            error = outcome.error
            if isinstance(error, BadVersionError):
                segments.forget()  # another producer rolled on: read where to put now
            elif isinstance(error, NoNodeError) and outcome.index == 0:
                self._ready = False  # the queue's nodes were removed: make them again
                self._ensure_paths(deadline)
                segments.forget()
            elif isinstance(error, NoNodeError):
                segments.roll(seen, deadline)  # the segment was removed
            else:
                raise ZooKeeperError(f"put to queue {self.name!r}: {type(error).__name__}")

    def _roll_after_put(self, seen: tuple[int, int], deadline: float | None) -> None:
        """Roll on after a put that filled the segment. The put is done
        whatever happens here: a failed roll is made by the next put."""
        try:
            self._segments.roll(seen, deadline)
        except ZkPubSubError as exc:
            logger.debug("queue %r: rolling to a new segment: %s", self.name, exc)
            self._segments.forget()

    # -- consuming ---------------------------------------------------------------------

    def reserve(self, timeout: float | None = None) -> Item | None:
        """Reserve the next item, waiting up to ``timeout`` seconds (``None``:
        as long as it takes). Returns ``None`` if none came in time."""
        self._check_open()
        return self._worker().reserve(timeout)

    def reserve_many(self, limit: int, timeout: float | None = None) -> list[Item]:
        """Reserve up to ``limit`` items in one transaction (at least one,
        unless ``timeout`` passes first)."""
        self._check_open()
        return self._worker().reserve_many(limit, timeout)

    def ack_many(self, items: Sequence[Item], results: Sequence[Any] | None = None) -> None:
        """Ack several items of this queue in one transaction (one result
        each, or none). Each is checked as :meth:`Item.ack` checks it; if
        some reservations were lost, the others are still acked and
        :class:`ReservationLost` names every lost one (``item_ids``)."""
        self._worker().ack_many(items, results)

    def consume(
        self,
        handler: ItemHandler,
        *,
        workers: int = 1,
        prefetch: int = 1,
        on_error: Callable[[BaseException, Item], Any] | None = None,
        max_lease: float = DEFAULT_MAX_LEASE,
    ) -> Consumer:
        """Run ``workers`` worker threads calling ``handler(item)`` for each
        item: a return acks it (with the return value as the result, when
        one is wanted), an exception releases it (and goes to ``on_error``).
        Each worker reserves up to ``prefetch`` items in one transaction and
        acks the ones it finished in one transaction; a larger prefetch is
        faster, but holds items a little longer and redoes more of them if
        the worker dies. With a ``visibility_timeout``, a thread of the
        consumer extends the leases of the items in hand (each when half of
        it is left) for up to ``max_lease`` seconds in all: a handler stuck
        longer loses its item to another worker. Returns the
        :class:`Consumer`; ``stop()`` finishes the items in hand and stops."""
        from .consumer import Consumer

        self._check_open()
        return Consumer(self, handler, workers, on_error, prefetch, max_lease=max_lease)

    # -- looking at the queue ----------------------------------------------------------------

    def __bool__(self) -> bool:
        """A queue handle is always true: ``if queue:`` asks nothing of the
        server (``len(queue)`` does)."""
        return True

    def __len__(self) -> int:
        """Items not yet acked (ready or reserved)."""
        stats = self.stats()
        return stats.ready + stats.reserved

    def stats(self) -> WorkQueueStats:
        with translated(f"stats of queue {self.name!r}"):
            return read_queue_stats(self._ctx.conn, self._paths, self.name, self._ctx.deadline())

    def dead(self) -> list[DeadItem]:
        """The dead letters, oldest first."""
        ctx = self._ctx
        with translated(f"dead letters of {self.name!r}"):
            return read_dead(ctx.conn, ctx.serializers, self._paths, ctx.deadline())

    def replay(self, ids: Sequence[str] | None = None) -> int:
        """Put dead letters back (all, or those with these ids) as new items
        with their original payload and priority and no attempts. Returns how
        many were replayed."""
        wanted = None if ids is None else set(ids)
        ctx, paths = self._ctx, self._paths
        conn, kazoo = ctx.conn, ctx.conn.kazoo
        count = 0
        deadline = ctx.deadline()
        item_acl = ctx.acl.acl(NodeKind.ITEM)
        with translated(f"replay dead letters of {self.name!r}"):
            self._ensure_paths(deadline)
            for dead in self.dead():
                if wanted is not None and dead.id not in wanted and dead.name not in wanted:
                    continue
                path = paths.dead_letter(dead.name)
                # A ticket's "dead" result not read yet is removed with the
                # replay: the item is live again, and its ack or next burial
                # writes the result anew.
                requests = functools.partial(_letter_and_result, kazoo, paths, dead)
                letter, result = conn.read_all(requests, deadline, f"read {path}")
                if isinstance(letter, NoNodeError):
                    continue
                data, stat = letter
                stale = None if result is None else result.version
                while True:
                    seen = self._segments.current(deadline)
                    ops = _ReplayOps(paths, dead, data, stat.version, stale, seen, item_acl)
                    outcome = ctx.writer.commit(ops, deadline, "replay")
                    if outcome.index == ops.check_index and isinstance(
                        outcome.error, BadVersionError
                    ):
                        self._segments.forget()  # rolled on meanwhile
                        continue
                    if outcome.index == ops.check_index + 1 and isinstance(
                        outcome.error, NoNodeError
                    ):
                        self._segments.roll(seen, deadline)  # the segment was removed
                        continue
                    break
                # another error: someone else replayed or removed it
                count += outcome.applied
        return count

    def ticket(self, item_id: str) -> Ticket:
        """A ticket for an item id (for waiting on it from another process)."""
        return Ticket(self._ctx, self.name, item_id)

    def close(self) -> None:
        """Close the workers this handle made. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WorkQueue {self.name!r}>"


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


def read_dead(
    conn: Connection,
    serializers: SerializerRegistry,
    paths: WorkQueuePaths,
    deadline: float | None,
    *,
    limit: int | None = None,
) -> list[DeadItem]:
    """The dead letters of a queue, oldest first (the ``limit`` oldest, if
    given: only those are read)."""
    kazoo = conn.kazoo
    ordered, foreign = order_items(conn.children(paths.dead, deadline) or [])
    names = (ordered + foreign)[:limit]
    answers = conn.read_all(
        lambda: [kazoo.get_async(paths.dead_letter(n)) for n in names],
        deadline,
        "read dead letters",
    )
    return [
        dead_item(serializers, paths.dead_letter(name), name, answer[0])
        for name, answer in zip(names, answers, strict=True)
        if not isinstance(answer, NoNodeError)
    ]


def _letter_and_result(kazoo: Any, paths: WorkQueuePaths, dead: DeadItem) -> list[Any]:
    return [
        kazoo.get_async(paths.dead_letter(dead.name)),
        kazoo.exists_async(paths.result(dead.id)),
    ]


class _ReplayOps:
    """Delete the dead letter (at the version read) and its unread result (if
    ``result`` gives its version), and put its item back into the current
    segment (checking the queue node's version). ``check_index`` is the
    index of that check among the operations."""

    def __init__(
        self,
        paths: WorkQueuePaths,
        dead: DeadItem,
        data: bytes,
        version: int,
        result: int | None,
        seen: tuple[int, int],
        acl: Any,
    ) -> None:
        parsed = parse_item_node(dead.name)
        self.wants_result = bool(parsed and parsed.wants_result)
        self.drop_result = result is not None and self.wants_result
        self.check_index = 2 if self.drop_result else 1
        self._args = (paths, dead, dead_item_data(data), version, result, seen)
        self._acl = acl

    def __call__(self, txn: Any, guid: str) -> None:
        paths, dead, item_data, version, result, (segment, queue_version) = self._args
        txn.delete(paths.dead_letter(dead.name), version)
        if self.drop_result:
            txn.delete(paths.result(dead.id), result)
        txn.check(paths.base, queue_version)
        txn.create(
            paths.item_prefix(dead.priority, guid, wants_result=self.wants_result, segment=segment),
            item_data,
            acl=self._acl,
            sequence=True,
        )
