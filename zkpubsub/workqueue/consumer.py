"""Worker threads that drain a work queue: ``WorkQueue.consume``."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._callables import check_callable, refuse_awaitable
from .._deadlines import deadline_after, remaining
from .._numbers import is_int
from ..config import DEFAULT_MAX_LEASE
from ..errors import (
    ClientClosed,
    ConnectionLost,
    OperationTimeout,
    ReservationLost,
    ZkPubSubError,
)
from .items import Item
from .leases import LeaseKeeper, check_lease

if TYPE_CHECKING:
    from .queue import WorkQueue
    from .worker import Worker

__all__ = ["Consumer", "ConsumerStats", "ItemHandler"]

logger = logging.getLogger(__name__)

ItemHandler = Callable[[Item], Any]
POLL_INTERVAL: Final = 0.5


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """``acked``: handled and acknowledged (by the consumer, or by the
    handler itself). ``released``: given back (or buried as a dead letter):
    the handler raised, or released it itself. ``lost``: the
    reservation was gone when the worker came to ack or release (its session
    expired meanwhile; another worker has the item)."""

    acked: int
    released: int
    lost: int


class Consumer:
    """Worker threads calling a handler for each item of one queue.

    Each thread is its own worker in the queue's registry. Whatever the
    handler raises (``SystemExit`` included) releases the item (or buries
    it, after its last attempt), then goes to ``on_error``, which finds the
    item given back already; the worker goes on. An ``async def`` handler
    is refused. ``stop()`` lets every worker finish (ack or release) the
    items in hand (at most ``prefetch``), then returns. Items reserved with
    a lease are extended by one thread of the consumer while in hand, for up
    to ``max_lease`` seconds each.
    """

    def __init__(
        self,
        queue: WorkQueue,
        handler: ItemHandler,
        workers: int,
        on_error: Callable[[BaseException, Item], Any] | None,
        prefetch: int = 1,
        *,
        max_lease: float = DEFAULT_MAX_LEASE,
    ) -> None:
        check_callable(handler, "handler")
        check_lease(max_lease, "max_lease")
        if on_error is not None:
            check_callable(on_error, "on_error")
        if not is_int(workers) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, not {workers!r}")
        if not is_int(prefetch) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, not {prefetch!r}")
        self._prefetch = prefetch
        self._handler = handler
        self._on_error = on_error
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counts = {"acked": 0, "released": 0, "lost": 0}
        self._workers: list[Worker] = [queue.worker() for _ in range(workers)]
        self._keeper = LeaseKeeper(f"zkpubsub-leases-{queue.name[:12]}", float(max_lease))
        self._working = workers  # worker threads not ended yet
        self._threads = [
            threading.Thread(
                target=self._work, args=(w,), name=f"zkpubsub-worker-{w.worker_id}", daemon=True
            )
            for w in self._workers
        ]
        for thread in self._threads:
            thread.start()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def stats(self) -> ConsumerStats:
        with self._lock:
            return ConsumerStats(**self._counts)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _work(self, worker: Worker) -> None:
        try:
            self._work_on(worker)
        finally:
            # the last to end ends the lease keeper's thread too (its client
            # closed, say, without stop())
            with self._lock:
                self._working -= 1
                last = self._working == 0
            if last:
                self._keeper.close()

    def _work_on(self, worker: Worker) -> None:
        while not self._stop.is_set():
            try:
                items = worker.reserve_many(self._prefetch, timeout=POLL_INTERVAL)
            except ClientClosed:
                return
            except ZkPubSubError as exc:
                logger.warning("worker %s: reserve failed: %s", worker.worker_id, exc)
                self._stop.wait(POLL_INTERVAL)
                continue
            # Every item in hand is finished, even after stop(): giving back
            # an untouched one would still count as one of its attempts.
            self._keeper.add(items)
            done: list[tuple[Item, Any]] = []
            for item in items:
                try:
                    result = self._handler(item)
                    refuse_awaitable(result, "the handler")
                    if item.wants_result and not item.finished:
                        worker.check_result(result)  # one that cannot be written fails its item
                except BaseException as exc:  # whatever a handler raises is a failure
                    # given back first: a slow on_error must not hold the item
                    self._release(item, exc)
                    self._report(exc, item)
                    continue
                if item.finished:  # the handler acked or released it itself
                    self._keeper.discard(item)
                    self._count(item.ending or "acked")
                else:
                    done.append((item, result if item.wants_result else None))
            self._ack(worker, done)

    def _ack(self, worker: Worker, done: list[tuple[Item, Any]]) -> None:
        """Ack a worker's finished items in one transaction. While ZooKeeper
        does not answer, the ack is tried again (the items stay in hand, their
        leases extended) until it is taken or the consumer stops."""
        if not done:
            return
        while True:
            try:
                # what an earlier try acked in part (its first transactions
                # applied) is left out
                lost = worker.ack_all([(item, r) for item, r in done if not item.finished])
                break
            except ClientClosed:
                return  # the session ends: the items come back
            except (ConnectionLost, OperationTimeout) as exc:
                if not self._stop.is_set():
                    logger.warning("could not ack %d item(s): %s; trying again", len(done), exc)
                    self._stop.wait(POLL_INTERVAL)
                    continue
                why = f"{exc}; the consumer stopped"
            except ZkPubSubError as exc:
                why = str(exc)
            # not acked: their leases lapse (or the session ends) and they come back
            acked = sum(1 for item, _ in done if item.finished)
            logger.warning("could not ack %d item(s): %s", len(done) - acked, why)
            for item, _ in done:
                self._keeper.discard(item)
            self._count("acked", acked)
            return
        for item, _ in done:
            item.mark_finished("lost" if item in lost else "acked")
            self._keeper.discard(item)
        for item in lost:
            logger.warning("%s", ReservationLost(worker.queue, item.id))
        self._count("acked", len(done) - len(lost))
        self._count("lost", len(lost))

    def _report(self, exc: BaseException, item: Item) -> None:
        if self._on_error is None:
            logger.error("handler failed on %r", item, exc_info=exc)
            return
        try:
            self._on_error(exc, item)
        except BaseException:  # on_error must not end the worker
            logger.exception("on_error raised")

    def _release(self, item: Item, error: BaseException) -> None:
        """Release an item the handler failed on (unless the handler
        finished it itself: ``with item:`` releases it on the way out)."""
        self._keeper.discard(item)
        if item.finished:  # by the handler (``with item:`` releases it on the way out)
            self._count(item.ending or "released")
            return
        try:
            item.release(error)
            self._count("released")
        except ReservationLost as exc:
            logger.warning("%s", exc)
            self._count("lost")
        except ZkPubSubError as exc:
            logger.warning("could not release %r: %s", item, exc)

    def halt(self) -> None:
        """Stop taking items, at once; the workers finish the ones in hand
        (see :meth:`join`). :meth:`stop` does this first."""
        self._stop.set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop taking items; wait up to ``timeout`` (one wait for all the
        workers) for the ones in hand. Idempotent."""
        deadline = deadline_after(timeout)
        self.halt()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(remaining(deadline))
        self._keeper.close()
        for worker in self._workers:
            with contextlib.suppress(ZkPubSubError):
                worker.close()

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` (one wait for all the workers) for the
        workers to end."""
        deadline = deadline_after(timeout)
        for thread in self._threads:
            thread.join(remaining(deadline))

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
