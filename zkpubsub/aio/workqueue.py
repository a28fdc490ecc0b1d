"""The work queue for asyncio code: the threaded queue's transactions, awaited.

Every guarantee of :mod:`zkpubsub.workqueue` holds (same code underneath):
an item is held by one live session at a time, a zombie cannot ack, dead
workers' items come back, dead letters, exactly-once puts. The blocking
steps run on threads of the client; handlers of :meth:`AsyncWorkQueue.consume`
run on the loop.

Cancellation: a cancelled ``put``, ``ack`` or ``release`` still completes
(its outcome is the threaded call's; each starts when called, so a task
cancelled before it first ran does not stop it); a cancelled ``reserve`` releases an
item reserved for it after all; a cancelled ``Ticket.wait`` keeps a result
that arrives for it for the next ``wait``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

from .._deadlines import check_timeout
from .._payloads import payload_list
from ..config import DEFAULT_MAX_LEASE
from ..errors import OperationTimeout, QueueFull, ZkPubSubError
from ..workqueue import Consumer, ConsumerStats, DeadItem, Item, Ticket, WorkQueue, WorkQueueStats
from ..workqueue.items import TICKET_READ_AT_LEAST
from ..workqueue.putting import room_polls
from ..workqueue.worker import check_limit
from ._bridge import (
    Bridge,
    LoopStopped,
    OnLoop,
    _read_outcome,
    awaited,
    begun,
    calling_task,
    off_loop,
)

__all__ = ["AsyncConsumer", "AsyncItem", "AsyncTicket", "AsyncWorkQueue"]

logger = logging.getLogger("zkpubsub.aio")

# A reserve or a ticket's wait runs on a thread in slices this long, so a
# cancelled one lets its thread go soon.
SLICE: Final = 0.5
# After a consumer's stop cancelled its handler, how long it waits for the
# items in hand to be released (each a request) before closing the workers.
RELEASE_WAIT: Final = 5.0
# Reserves on one handle take turns on its worker, a slice at a time; one
# whose time passed while it waited for its turn still waits this long for
# a last try (the turn of one whose time passed is that try, a moment).
LAST_TURN: Final = SLICE


class AsyncItem:
    """A reserved work item (see :class:`~zkpubsub.Item`). ``async with
    item:`` acks on a clean exit and releases (with the error) otherwise."""

    def __init__(self, item: Item, bridge: Bridge) -> None:
        self._item = item
        self._bridge = bridge

    @property
    def sync(self) -> Item:
        return self._item

    @property
    def id(self) -> str:
        return self._item.id

    @property
    def payload(self) -> Any:
        return self._item.payload

    @property
    def headers(self) -> dict[str, str]:
        return self._item.headers

    @property
    def priority(self) -> int:
        return self._item.priority

    @property
    def attempts(self) -> int:
        return self._item.attempts

    @property
    def put_at(self) -> float:
        return self._item.put_at

    @property
    def producer_id(self) -> str:
        return self._item.producer_id

    @property
    def wants_result(self) -> bool:
        return self._item.wants_result

    @property
    def queue(self) -> str:
        return self._item.queue

    @property
    def finished(self) -> bool:
        return self._item.finished

    def ack(self, result: Any = None) -> Coroutine[Any, Any, None]:
        """:meth:`Item.ack` on a thread, started when called (``ReservationLost``
        if no longer held): cancelling the wait does not withdraw it."""
        return awaited(self._bridge.start(self._item.ack, result))

    def release(self, error: str | BaseException | None = None) -> Coroutine[Any, Any, None]:
        """:meth:`Item.release` on a thread, started when called (as :meth:`ack`)."""
        return awaited(self._bridge.start(self._item.release, error))

    @property
    def lease(self) -> float | None:
        """The length of the lease in seconds (``None``: as long as the
        worker's session)."""
        return self._item.lease

    def lease_left(self) -> float | None:
        """Seconds until the lease ends (``None`` without a lease)."""
        return self._item.lease_left()

    async def extend(self, seconds: float | None = None) -> None:
        """:meth:`Item.extend` on a thread (``ReservationLost`` if no longer held)."""
        await self._bridge.run(self._item.extend, seconds)

    async def __aenter__(self) -> AsyncItem:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._item.finished:
            return
        if exc is None:
            await self.ack()
        else:
            await self.release(exc)

    def __repr__(self) -> str:
        return f"<AsyncItem {self.id} of {self.queue!r} attempts={self.attempts}>"


class AsyncTicket:
    """Waits for the result of an item put with ``want_result=True``."""

    def __init__(self, ticket: Ticket, bridge: Bridge) -> None:
        self._ticket = ticket
        self._bridge = bridge
        self._job: concurrent.futures.Future[tuple[bool, Any]] | None = None

    @property
    def id(self) -> str:
        return self._ticket.id

    async def done(self) -> bool:
        return await self._bridge.run(self._ticket.done)

    def _slice(self, seconds: float) -> tuple[bool, Any]:
        try:
            return True, self._ticket.wait(seconds)
        except OperationTimeout:
            return False, None

    async def wait(self, timeout: float | None = None) -> Any:
        """The result given to ``ack`` (removed once read). Raises
        :class:`~zkpubsub.ItemFailed` if the item became a dead letter,
        :class:`~zkpubsub.NotFound` if another ticket took the result as
        this one was taking it,
        ``OperationTimeout`` if ``timeout`` passes first."""
        loop = asyncio.get_running_loop()
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if self._job is None:
                self._job = self._bridge.submit(
                    self._slice, SLICE if left is None else min(left, SLICE)
                )
            job = self._job
            # a slice that found the result is reading it (and removing it):
            # it gets its reads' time past the wait, or the result read would
            # be lost with a handle dropped after this time-out
            grace = None if left is None else left + 2 * TICKET_READ_AT_LEAST + 0.5
            waiter = self._bridge.wrap(job)
            try:
                done, _ = await asyncio.wait([waiter], timeout=grace)
            finally:
                waiter.cancel()  # not waited for any more: what it gets is dropped, unread
            if not done:
                raise OperationTimeout(f"no result for item {self.id} within {timeout}s")
            self._job = None
            found, result = waiter.result()
            if found:
                return result
            if deadline is not None and loop.time() >= deadline:
                raise OperationTimeout(f"no result for item {self.id} within {timeout}s")

    def __repr__(self) -> str:
        return f"<AsyncTicket {self.id}>"


class AsyncConsumer:
    """Worker threads of a queue whose handler runs on the loop (see
    :class:`~zkpubsub.Consumer`)."""

    def __init__(self, consumer: Consumer, bridge: Bridge, handler: OnLoop) -> None:
        self._consumer = consumer
        self._bridge = bridge
        self._handler = handler
        self._stopping: asyncio.Future[None] | None = None

    def stats(self) -> ConsumerStats:
        return self._consumer.stats()

    @property
    def running(self) -> bool:
        return self._consumer.running

    def stop(self, timeout: float | None = 30.0) -> Coroutine[Any, Any, None]:
        """Stop taking items and wait (up to ``timeout``) for the ones in
        hand, taken ahead with ``prefetch`` included; a handler still running
        then is cancelled, and it and the items not begun are released (each
        counts as an attempt). Idempotent (a later call waits for the first
        one's end); works after the client closed; completes even if the
        waiting task is cancelled. Called by one of its own handlers
        (awaited, or through ``wait_for``), it returns at once: the stop goes
        on, and waits for that handler too."""
        return self._stop_called(timeout, calling_task())

    async def _stop_called(self, timeout: float | None, caller: asyncio.Task[Any] | None) -> None:
        timeout = check_timeout(timeout)
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(timeout))
            self._stopping.add_done_callback(_read_outcome)  # awaited or not
        if self._handler.runs(caller):
            return  # waiting here, the handler would wait for itself
        await asyncio.shield(self._stopping)

    async def _stop(self, timeout: float | None) -> None:
        consumer, bridge = self._consumer, self._bridge
        consumer.halt()
        try:
            await bridge.run_to_close(consumer.join, timeout)
        finally:
            self._handler.stop()  # later calls fail at once: their items go back
        # the releases of what was in hand, then the workers' ends
        await bridge.run_to_close(consumer.join, RELEASE_WAIT)
        await bridge.run_to_close(consumer.stop, 0)

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class AsyncWorkQueue:
    """One named work queue, for asyncio code. Made by
    :meth:`AsyncClient.queue <zkpubsub.aio.AsyncClient.queue>`."""

    def __init__(self, queue: WorkQueue, bridge: Bridge) -> None:
        self._queue = queue
        self._bridge = bridge
        # One reserve at a time on the handle's worker: reserves take turns
        # on the loop (no thread waits for a turn); the lock guards the
        # worker still when a cancelled reserve's slice runs on.
        self._turns = asyncio.Lock()
        self._reserving = threading.Lock()

    @property
    def name(self) -> str:
        return self._queue.name

    @property
    def sync(self) -> WorkQueue:
        return self._queue

    def put(
        self,
        payload: Any,
        *,
        priority: int = 100,
        headers: dict[str, str] | None = None,
        want_result: bool = False,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """:meth:`WorkQueue.put`, begun when called (cancelling the wait
        does not withdraw it): the item's id, or an :class:`AsyncTicket` with
        ``want_result=True``. Waiting for room in a full queue is done on
        the loop, holding no thread of the client."""
        queue, bridge = self._queue, self._bridge

        async def put() -> Any:
            (item_id,) = await self._put([payload], priority, headers, want_result, timeout)
            return AsyncTicket(queue.ticket(item_id), bridge) if want_result else item_id

        return begun(put())

    def put_many(
        self,
        payloads: Sequence[Any],
        *,
        priority: int = 100,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, list[str]]:
        """:meth:`WorkQueue.put_many`, begun when called (as :meth:`put`)."""
        try:
            items = payload_list(payloads, "put_many")
        except (TypeError, ValueError) as exc:
            return awaited(self._bridge.failed(exc))
        return begun(self._put(items, priority, headers, False, timeout))

    async def _put(
        self,
        payloads: list[Any],
        priority: int,
        headers: dict[str, str] | None,
        want_result: bool,
        timeout: float | None,
    ) -> list[str]:
        """Put ``payloads``, waiting for room on the loop up to ``timeout``:
        each try on a thread raises :class:`QueueFull` at once, having put
        the transactions that fitted; the rest are tried again."""
        queue = self._queue
        until = time.monotonic() + queue._put_timeout(check_timeout(timeout))
        done: list[str] = []
        left = payloads
        delays = room_polls()
        while True:
            try:
                ids = await self._bridge.run(
                    queue._put_unless_full,
                    left,
                    priority,
                    headers,
                    want_result,
                    max(0.0, until - time.monotonic()),
                )
                return done + ids
            except QueueFull as full:
                done += full.put_ids
                left = left[len(full.put_ids) :]
                wait = until - time.monotonic()
                if wait <= 0:
                    if not done:
                        raise
                    raise QueueFull(
                        queue.name, full.items, full.limit, put_ids=tuple(done), asked=len(payloads)
                    ) from None
            await asyncio.sleep(min(next(delays), wait))

    def _reserve_slice(
        self, limit: int, until: float | None, abandoned: threading.Event
    ) -> list[Item]:
        """Up to :data:`SLICE` seconds of a reserve that ends by ``until`` (a
        ``time.monotonic()`` instant; ``None``: no end). Waiting for the
        handle's worker counts: a reserve whose time passed meanwhile gets
        one try, or nothing if its turn has not come :data:`LAST_TURN` later."""
        if not self._reserving.acquire(timeout=_turn_time(until)):
            return []
        try:
            left = None if until is None else max(0.0, until - time.monotonic())
            seconds = SLICE if left is None else min(left, SLICE)
            return self._queue._reserve_unless(limit, seconds, abandoned)
        finally:
            self._reserving.release()

    async def reserve(self, timeout: float | None = None) -> AsyncItem | None:
        """The next item, waiting up to ``timeout`` seconds (``None``: as long
        as it takes); ``None`` if none came in time."""
        items = await self.reserve_many(1, timeout)
        return items[0] if items else None

    async def reserve_many(self, limit: int, timeout: float | None = None) -> list[AsyncItem]:
        """Up to ``limit`` items in one transaction (see :meth:`WorkQueue.reserve_many`)."""
        check_limit(limit)
        timeout = check_timeout(timeout)
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            if not await _take_turn(self._turns, until):
                return []
            try:
                abandoned = threading.Event()
                job = self._bridge.submit(self._reserve_slice, limit, until, abandoned)
                try:
                    items = await self._bridge.wrap(job)
                except asyncio.CancelledError:
                    # a slice that has not sent its transaction reserves nothing;
                    # one that did gives its items back (one attempt each)
                    abandoned.set()
                    job.add_done_callback(off_loop(_release_unwanted))
                    raise
            finally:
                self._turns.release()
            if items:
                return [AsyncItem(item, self._bridge) for item in items]
            if until is not None and time.monotonic() >= until:
                return []

    async def ack_many(
        self, items: Sequence[AsyncItem], results: Sequence[Any] | None = None
    ) -> None:
        await self._bridge.run(self._queue.ack_many, [i.sync for i in items], results)

    def consume(
        self,
        handler: Callable[[AsyncItem], Any],
        *,
        workers: int = 1,
        prefetch: int = 1,
        on_error: Callable[[BaseException, AsyncItem], Any] | None = None,
        max_lease: float = DEFAULT_MAX_LEASE,
    ) -> AsyncConsumer:
        """:meth:`WorkQueue.consume` with ``handler(item)`` (``async def`` or
        plain) run on the loop: its return acks the item (the value is the
        result), an exception — or a cancellation — releases it. ``on_error``
        runs on the loop too; ``max_lease`` as there."""
        bridge = self._bridge
        bridge.check_loop()
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable, not {type(on_error).__name__}")
        on_loop = bridge.on_loop(lambda item: handler(AsyncItem(item, bridge)))
        started: list[Consumer] = []

        def handle(item: Item) -> Any:
            try:
                return on_loop(item)
            except LoopStopped:
                # no loop to run handlers on: take nothing more (each item
                # taken would fail an attempt, and end in the dead letters)
                for consumer in started:
                    consumer.halt()
                raise

        report = None
        if on_error is not None:
            user_on_error = on_error

            def report(error: BaseException, item: Item) -> None:
                bridge.schedule(user_on_error, error, AsyncItem(item, bridge))

        consumer = self._queue.consume(
            handle, workers=workers, prefetch=prefetch, on_error=report, max_lease=max_lease
        )
        started.append(consumer)
        return AsyncConsumer(consumer, bridge, on_loop)

    async def stats(self, timeout: float | None = None) -> WorkQueueStats:
        """:meth:`WorkQueue.stats` (``OperationTimeout`` after ``timeout``)."""
        return await self._bridge.run(self._queue.stats, check_timeout(timeout))

    async def dead(
        self, *, limit: int | None = None, max_bytes: int | None = None
    ) -> list[DeadItem]:
        """:meth:`WorkQueue.dead`."""
        return await self._bridge.run(self._queue.dead, limit=limit, max_bytes=max_bytes)

    async def replay(
        self, ids: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> int:
        """:meth:`WorkQueue.replay`."""
        return await self._bridge.run(self._queue.replay, ids, timeout=timeout)

    def ticket(self, item_id: str) -> AsyncTicket:
        """A ticket for an item id (for waiting on a result put elsewhere)."""
        return AsyncTicket(self._queue.ticket(item_id), self._bridge)

    async def close(self) -> None:
        """Close the workers this handle made. Idempotent; works after the
        client closed."""
        await self._bridge.run_to_close(self._queue.close)

    async def __aenter__(self) -> AsyncWorkQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncWorkQueue {self.name!r}>"


def _turn_time(until: float | None) -> float:
    """How long a reserve ending by ``until`` waits for its turn (-1: no end)."""
    return -1.0 if until is None else max(0.0, until - time.monotonic()) + LAST_TURN


async def _take_turn(turns: asyncio.Lock, until: float | None) -> bool:
    """Acquire ``turns`` for a reserve ending by ``until``: False (not
    acquired) if the turn did not come in :func:`_turn_time`. A turn that
    came as the wait ended, or as the waiting task was cancelled, is given
    back."""
    if until is None:
        await turns.acquire()
        return True
    acquiring = asyncio.ensure_future(turns.acquire())
    try:
        done, _ = await asyncio.wait({acquiring}, timeout=_turn_time(until))
    except BaseException:
        _give_back(acquiring, turns)
        raise
    if not done:
        _give_back(acquiring, turns)
        return False
    return True


def _give_back(acquiring: asyncio.Future[Any], turns: asyncio.Lock) -> None:
    def release_if_acquired(done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            turns.release()

    acquiring.cancel()  # a task that acquired meanwhile is done: this does nothing
    acquiring.add_done_callback(release_if_acquired)


def _release_unwanted(job: concurrent.futures.Future[list[Item]]) -> None:
    """Items reserved for a reserve that was cancelled meanwhile go back."""
    if job.cancelled() or job.exception() is not None:
        return
    for item in job.result():
        try:
            item.release("the reserve was cancelled")
        except ZkPubSubError as exc:
            logger.warning("releasing %r after a cancelled reserve: %s", item, exc)
