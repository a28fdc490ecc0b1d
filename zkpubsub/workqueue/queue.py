"""The handle on one work queue: put, look, replay, and consume.

A handle is cheap and has no identity in the queue. Reserving takes a
:class:`~zkpubsub.workqueue.Worker`: ``queue.worker()`` makes one (one per
thread); the handle's own ``reserve`` / ``reserve_many`` use a worker it
makes on first use.

Puts go through :mod:`.putting`, dead letters and their replay through
:mod:`.dead_letters`; the counts come from :mod:`.segments`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from .._context import Context
from .._deadlines import deadline_after
from .._numbers import is_int
from .._payloads import payload_list
from ..config import DEFAULT_MAX_LEASE, DEFAULT_QUEUE_ATTEMPTS, DEFAULT_QUEUE_MAX_ITEMS
from ..connection import translated
from ..errors import ClientClosed
from ..layout import validate_name
from .dead_letters import read_dead, replay
from .items import Item, Ticket
from .leases import check_lease
from .putting import Producer
from .records import DEFAULT_PRIORITY, DeadItem, WorkQueueStats
from .segments import Segments, read_queue_stats
from .worker import Worker

if TYPE_CHECKING:
    from .consumer import Consumer, ItemHandler

__all__ = ["WorkQueue"]


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
        if not is_int(max_attempts) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        if max_items is not None and (not is_int(max_items) or max_items < 1):
            raise ValueError(f"max_items must be an int >= 1 or None, not {max_items!r}")
        self.name = name
        self.max_attempts = max_attempts
        self.max_items = max_items
        self.visibility_timeout = visibility_timeout
        self._ctx = ctx
        self._paths = ctx.layout.work_queue(name)
        self._segments = Segments(ctx, self._paths)
        self._producer = Producer(ctx, name, self._segments, max_items, self._check_open)
        self._closed = False
        self._own: Worker | None = None
        self._lock = threading.Lock()
        self._workers: list[Worker] = []  # the open ones it made, closed by close()

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
        with self._lock:  # a closed worker is let go: a handle lives as long as its service
            if not self._closed:
                self._workers = [w for w in self._workers if not w.closed]
                self._workers.append(worker)
                return worker
        worker.close()  # the handle closed meanwhile (it never registered)
        raise self._closed_error()

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
            raise self._closed_error()
        self._ctx.check_open()

    def _closed_error(self) -> ClientClosed:
        return ClientClosed(f"work queue {self.name!r} is closed")

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
        (item_id,) = self._producer.put([payload], priority, headers, want_result, timeout)
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
        items = payload_list(payloads, "put_many")
        return self._producer.put(items, priority, headers, False, timeout)

    def _put_timeout(self, timeout: float | None) -> float:
        """How long a put waits for room (``timeout``, default the request timeout)."""
        return self._ctx.config.request_timeout if timeout is None else timeout

    def _put_unless_full(
        self,
        payloads: list[Any],
        priority: int,
        headers: dict[str, str] | None,
        want_result: bool,
        timeout: float,
    ) -> list[str]:
        """For the asyncio queue, which waits for room on its loop: a put
        that raises :class:`QueueFull` at once (after the transactions that
        fitted, named by ``put_ids``) instead of waiting; ``timeout`` bounds
        its requests."""
        return self._producer.put(
            payloads, priority, headers, want_result, timeout, wait_for_room=False
        )

    # -- consuming ---------------------------------------------------------------------

    def reserve(self, timeout: float | None = None) -> Item | None:
        """Reserve the next item, waiting up to ``timeout`` seconds (``None``:
        as long as it takes). Returns ``None`` if none came in time."""
        self._check_open()
        return self._worker().reserve(timeout)

    def reserve_many(self, limit: int, timeout: float | None = None) -> list[Item]:
        """Reserve up to ``limit`` items in one transaction (at least one,
        unless ``timeout`` passes first): as many as fit in
        ``max_transaction_bytes``, which rewrites each item's data."""
        self._check_open()
        return self._worker().reserve_many(limit, timeout)

    def _reserve_unless(
        self, limit: int, timeout: float | None, abandoned: threading.Event
    ) -> list[Item]:
        """:meth:`reserve_many` for the asyncio API: reserves nothing once
        ``abandoned`` is set (see :meth:`Worker.reserve_many`)."""
        self._check_open()
        return self._worker().reserve_many(limit, timeout, abandoned=abandoned)

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
        one is wanted), an exception releases it, then goes to ``on_error``
        (which finds the item given back already).
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

    def stats(self, timeout: float | None = None) -> WorkQueueStats:
        """The queue's counts; ``OperationTimeout`` after ``timeout`` seconds
        (default: the client's ``request_timeout``)."""
        with translated(f"stats of queue {self.name!r}"):
            return read_queue_stats(
                self._ctx.conn, self._paths, self.name, self._ctx.deadline(timeout)
            )

    def dead(self, *, limit: int | None = None, max_bytes: int | None = None) -> list[DeadItem]:
        """The dead letters, oldest first: all of them, or the ``limit``
        oldest (only those are read); with ``max_bytes``, no more once
        their encoded items reach that many bytes (the oldest is always
        given)."""
        ctx = self._ctx
        with translated(f"dead letters of {self.name!r}"):
            return read_dead(
                ctx.conn,
                ctx.serializers,
                self._paths,
                ctx.deadline(),
                limit=limit,
                max_bytes=max_bytes,
            )

    def replay(self, ids: Sequence[str] | None = None, *, timeout: float | None = None) -> int:
        """Put dead letters back (all, or those with these ids) as new items
        with their original payload and priority and no attempts. Returns how
        many were replayed. Within ``max_items`` as a put is: each waits for
        room up to ``timeout`` (default the request timeout) in all, then
        :class:`QueueFull` names those replayed (``put_ids``); the others stay
        dead letters."""
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be a sequence of item ids, not one string")
        wanted = None if ids is None else set(ids)
        ctx = self._ctx
        room_by = deadline_after(ctx.config.request_timeout if timeout is None else timeout)
        with translated(f"replay dead letters of {self.name!r}"):
            producer = self._producer
            return replay(
                ctx,
                self._paths,
                self._segments,
                producer.ensure_paths,
                wanted,
                producer.wait_for_room,
                room_by,
            )

    def ticket(self, item_id: str) -> Ticket:
        """A ticket for an item id (for waiting on it from another process);
        ``ValueError`` for an id that is not a node name."""
        return Ticket(self._ctx, self.name, validate_name(item_id, "item id"))

    def close(self) -> None:
        """Close the workers this handle made. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WorkQueue {self.name!r}>"
