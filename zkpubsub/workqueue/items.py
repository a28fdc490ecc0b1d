"""What a worker holds (an :class:`Item`) and what a producer waits on (a
:class:`Ticket`)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from kazoo.exceptions import NoNodeError

from .. import envelope
from .._context import Context
from .._deadlines import deadline_after, expired, remaining
from ..connection import translated
from ..errors import (
    DecodeError,
    ItemFailed,
    NotFound,
    OperationTimeout,
    ReservationLost,
    ZkPubSubError,
)
from ..layout import WorkQueuePaths
from .records import read_result

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["TICKET_READ_AT_LEAST", "Item", "Ticket"]

logger = logging.getLogger(__name__)

# Seconds a ticket's wait gives the reads of a result that is there, however
# short its timeout (at most the request timeout).
TICKET_READ_AT_LEAST: Final = 2.0


class Item:
    """A reserved work item. Ack it when done, release it to give it back.

    As a context manager it acks on a clean exit and releases (recording the
    exception) when the block raises.

    From a queue with a ``visibility_timeout`` the item comes with a lease:
    ``lease_left()`` says how long it still has (by this process's clock,
    counted from when the reservation was sent, so never more than the
    server gives), and ``extend()`` renews it. Once it runs out another
    worker may take the item, and this one's ack raises
    :class:`ReservationLost`.
    """

    def __init__(
        self,
        worker: Worker,
        name: str,
        entry: envelope.Entry,
        payload: Any,
        *,
        token: int,
        priority: int,
        wants_result: bool,
        lease: float | None = None,
        lease_until: float | None = None,
        reservation_version: int = 0,
    ) -> None:
        self._worker = worker
        self._lease_lock = threading.RLock()
        self._lease = lease
        self._lease_until = lease_until  # time.monotonic() at which the lease surely ends
        self._reservation_version = reservation_version
        self._name = name
        self._entry = entry
        self._token = token  # the item's data version after our reservation
        self.payload = payload
        self.priority = priority
        self.wants_result = wants_result
        self._finished = False
        self._ending: str | None = None  # "acked" or "released", once finished

    @property
    def id(self) -> str:
        return self._entry.id

    @property
    def name(self) -> str:
        """The item's node name in the queue."""
        return self._name

    @property
    def token(self) -> int:
        """The item's data version this reservation produced."""
        return self._token

    @property
    def lease(self) -> float | None:
        """The length of the lease in seconds (``None``: the reservation
        lasts as long as the worker's session)."""
        return self._lease

    @property
    def lease_until(self) -> float | None:
        """When the lease ends, as a ``time.monotonic()`` value (``None``
        without a lease)."""
        return self._lease_until

    def lease_left(self) -> float | None:
        """Seconds until the lease ends, 0 once it has (``None`` without a
        lease)."""
        until = self._lease_until
        return None if until is None else max(0.0, until - time.monotonic())

    @property
    def reservation_version(self) -> int:
        """The data version of the reservation node (bumped by each extension)."""
        return self._reservation_version

    def renewed(self, version: int, lease: float | None, until: float | None) -> None:
        """The reservation node is at ``version`` and leased until ``until``."""
        with self._lease_lock:
            self._reservation_version = version
            self._lease = lease
            if until is not None:
                self._lease_until = until

    def extend(self, seconds: float | None = None) -> None:
        """Renew the lease for ``seconds`` from now (default: the queue's
        ``visibility_timeout``; an item reserved without a lease gets one).
        One transaction that proves this worker still holds the item;
        :class:`ReservationLost` if it does not."""
        with self._lease_lock:
            self._worker.extend(self, seconds)

    @property
    def entry(self) -> envelope.Entry:
        return self._entry

    @property
    def queue(self) -> str:
        """The name of the queue the item belongs to."""
        return self._worker.queue

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._entry.headers)

    @property
    def attempts(self) -> int:
        """How many times the item has been reserved, this time included."""
        return self._token

    @property
    def put_at(self) -> float:
        return self._entry.published_at

    @property
    def producer_id(self) -> str:
        return self._entry.publisher_id

    @property
    def finished(self) -> bool:
        """Acked or released."""
        return self._finished

    def check_unfinished(self) -> None:
        if self._finished:
            raise ValueError(f"item {self.id} was already acked, released or lost")

    def check_result(self, result: Any) -> None:
        if result is not None and not self.wants_result:
            raise ValueError(f"item {self.id} was put without want_result; there is no ticket")

    @property
    def ending(self) -> str | None:
        """How it was finished: ``"acked"``, ``"released"`` (given back
        or buried), or ``"lost"`` (an ack of several found its reservation
        gone); ``None`` while it is not."""
        return self._ending

    def mark_finished(self, ending: str = "acked") -> None:
        self._finished = True
        self._ending = ending

    def ack(self, result: Any = None) -> None:
        """Done: delete the item (and write ``result`` for its ticket), in one
        transaction that proves this worker still holds it. Raises
        :class:`ReservationLost` if it does not (nothing is changed then)."""
        self.check_unfinished()
        self.check_result(result)
        if self._worker.ack_all([(self, result)]):
            raise ReservationLost(self.queue, self.id)
        self.mark_finished("acked")

    def release(self, error: str | BaseException | None = None) -> None:
        """Give the item back for another attempt (``error`` says why). After
        ``max_attempts`` it goes to the dead letters instead. Raises
        :class:`ReservationLost` if this worker no longer holds it."""
        if error is not None and not isinstance(error, (str, BaseException)):
            raise TypeError(f"error must be a str or an exception, not {type(error).__name__}")
        self.check_unfinished()
        self._worker.release(self, error)
        self.mark_finished("released")

    def __enter__(self) -> Item:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._finished:
            return
        if exc is None:
            self.ack()
        else:
            self.release(exc)

    def __repr__(self) -> str:
        return f"<Item {self.id} of {self.queue!r} attempts={self.attempts}>"


class Ticket:
    """Waits for the result of an item put with ``want_result=True``. The
    result is handed out once: of several tickets for one item (in other
    processes, or made by :meth:`WorkQueue.ticket` again) taking it at once,
    one has it and the others raise :class:`NotFound`; the threads waiting
    on one ticket all get what it took. A ticket that asks after the result
    was taken waits to its timeout, as for a result not come yet."""

    def __init__(self, ctx: Context, queue: str, item_id: str) -> None:
        self._ctx = ctx
        self._queue = queue
        self._paths: WorkQueuePaths = ctx.layout.work_queue(queue)
        self.id = item_id
        self._taking = threading.Lock()
        # what this ticket took: (the result, None) or (None, its error)
        self._taken: tuple[Any, BaseException | None] | None = None
        self._waiting: set[threading.Event] = set()  # woken once it is taken

    def done(self) -> bool:
        """Whether the result (or the news of failure) is there, or was
        taken by this ticket."""
        if self._taken is not None:
            return True
        with translated("ticket"):
            return self._ctx.conn.exists(self._paths.result(self.id), self._ctx.deadline())

    def wait(self, timeout: float | None = None) -> Any:
        """The result passed to ``ack``, once it is there; it is removed once
        read. Raises :class:`ItemFailed` if the item went to the dead letters,
        :class:`NotFound` if another ticket took the result while this one
        was taking it (or a replay removed it), and ``OperationTimeout`` if
        ``timeout`` passes first."""
        ctx = self._ctx
        conn, kazoo = ctx.conn, ctx.conn.kazoo
        path = self._paths.result(self.id)
        deadline = deadline_after(timeout)
        arrived = threading.Event()

        def wake(_event: object) -> None:  # one watcher however often it is set
            arrived.set()

        # ``timeout`` bounds the wait for the result; reading one that is
        # there gets up to TICKET_READ_AT_LEAST whatever it is
        self._waiting.add(arrived)
        try:
            with translated("ticket"):
                while self._taken is None:
                    arrived.clear()
                    stat = conn.call(
                        lambda: kazoo.exists_async(path, watch=wake),
                        ctx.at_least(deadline, TICKET_READ_AT_LEAST),
                        f"wait for {path}",
                    )
                    if stat is not None:
                        self._take_once(path, deadline)
                        break
                    if self._taken is not None:  # taken by another thread meanwhile
                        break
                    left = remaining(deadline)
                    woken = arrived.wait(left if left is not None else 1.0)
                    if not woken and expired(deadline) and self._taken is None:
                        raise OperationTimeout(f"no result for item {self.id} within {timeout}s")
        finally:
            self._waiting.discard(arrived)
        taken = self._taken
        assert taken is not None  # the loop ends once it is
        result, error = taken
        if error is not None:
            raise error.with_traceback(None)
        return result

    def _take_once(self, path: str, deadline: float | None) -> None:
        with self._taking:
            if self._taken is None:
                taken = self._take(path, deadline)
                if isinstance(taken[1], NotFound):
                    # not kept: a replayed item's next result may still come
                    raise taken[1]
                self._taken = taken
        for waiting in list(self._waiting):  # those that found no result yet
            waiting.set()

    def _take(self, path: str, deadline: float | None) -> tuple[Any, BaseException | None]:
        """Read the result and delete it, the delete with a receipt: the
        ticket whose delete applies has it. A delete that fails otherwise
        (no answer in time) still hands the result out: it must not be lost."""
        ctx = self._ctx
        conn, kazoo = ctx.conn, ctx.conn.kazoo
        reads = ctx.at_least(deadline, TICKET_READ_AT_LEAST)  # read and removal
        gone = NotFound(
            f"the result of item {self.id} is gone: another ticket took it first, "
            "or a replay removed it"
        )
        try:
            data, stat = conn.call(lambda: kazoo.get_async(path), reads, path)
        except NoNodeError:
            return None, gone

        def delete(txn: Any, _guid: str) -> None:
            txn.delete(path, version=stat.version)

        try:
            if not ctx.writer.commit(delete, reads, f"take the result of item {self.id}").applied:
                return None, gone
        except ZkPubSubError as exc:
            logger.warning("item %s: result read, not deleted: %s", self.id, exc)
        try:
            return read_result(ctx.serializers, self.id, path, data), None
        except (ItemFailed, DecodeError) as exc:
            return None, exc

    def __repr__(self) -> str:
        return f"<Ticket {self.id} of {self._queue!r}>"
