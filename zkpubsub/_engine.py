"""The publish engine: every publish of a client goes through it.

Publishes wait in their topic's *lane*. A lane is served by one thread of
the engine at a time, which sends everything that has gathered (as much as
fits in one transaction with every subscriber) as one fan-out transaction,
packing the messages for each subscriber queue into as few nodes as fit.
One transaction per topic is in flight at a time, so the messages of one
publisher keep their order, and while it is in flight the next batch
gathers: under load batches grow by themselves. A publish reaching an idle
lane waits up to ``linger`` for company only while publishes are coming
close together (:func:`company_likely`); a lone one is sent at once
(``linger`` 0: no waiting and no coalescing, each publish its own
transaction).

Lanes never wait on each other: reading a topic's subscribers, confirming
that it has none, looking a lost answer up, or splitting a fan-out too
large for one transaction happen on that lane's thread only. Up to
``LANE_THREADS`` topics are served at once; beyond that a topic waits for
a thread to come free. A lane thread with nothing to do ends after
``LANE_IDLE`` seconds.

Every publish has its own deadline. At that deadline the caller (or, for
``publish_async``, the engine's watchdog) gives up: a publish still waiting
in its lane is taken out and fails with ``PublishTimeout(sent=False)``
(nothing was written); one already sent fails with the outcome unknown.
At most ``max_pending`` publishes are accepted and unfinished at once; a
publish beyond that waits for room up to its own deadline.

``publish_async`` futures are resolved on the engine's completion thread,
in the order their publishes finished: a callback may publish again, but a
callback that blocks delays the other futures' callbacks (never the
publishes themselves).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Final

from . import envelope
from ._context import Context
from ._deadlines import deadline_after, earliest, remaining
from .errors import (
    ClientClosed,
    ConnectionLost,
    NoSubscribers,
    OperationTimeout,
    PartlyPublished,
    PublishTimeout,
    ZkPubSubError,
)
from .message import PublishReceipt
from .publisher import FanOutResult, Publisher, Targets, TopicView

__all__ = [
    "LANE_IDLE",
    "LANE_THREADS",
    "PublishEngine",
    "PublishRequest",
    "Resolved",
    "company_likely",
    "take_batch",
]

logger = logging.getLogger(__name__)

LANE_THREADS: Final = 64
LANE_IDLE: Final = 2.0


# ``on_done(receipt, error)``: exactly one of them is None. Called on the
# thread that settles the publish (a lane thread or the watchdog): it must
# return at once and never block (the asyncio bridge hands it to its loop).
Resolved = Callable[[PublishReceipt | None, BaseException | None], None]


@dataclass(eq=False, slots=True)
class PublishRequest:
    """One ``publish()`` / ``publish_many()`` / ``publish_async()`` call."""

    topic: str
    entries: list[envelope.Entry]
    size: int  # encoded bytes of its entries
    timeout: float | None
    deadline: float | None
    require_subscribers: bool
    future: Future[PublishReceipt] | None = None
    sent: bool = False  # taken out of its lane into a transaction
    finished: bool = False
    receipt: PublishReceipt | None = None
    error: BaseException | None = None
    done: threading.Event | None = None  # for a caller that waits (neither future nor on_done)
    on_done: Resolved | None = None  # called with the outcome, on the thread that settles it
    submitted: float = field(default_factory=time.monotonic)
    messages: int = 0  # how many entries it carried (they are dropped once settled)

    @property
    def message_ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.entries)


@dataclass(eq=False, slots=True)
class _Lane:
    topic: str
    wake: threading.Condition
    pending: deque[PublishRequest] = field(default_factory=deque)
    first_at: float = 0.0  # when the oldest pending request arrived
    last_at: float = float("-inf")  # when the newest request arrived
    last_batch: int = 0  # requests in the lane's last transaction
    gather: bool = False  # the oldest pending request waits for company
    busy: bool = False  # served by a thread, or waiting for one
    idle: bool = False  # its thread waits for work (wake it on a submit)
    flight: list[PublishRequest] = field(default_factory=list)
    # the queues the transaction(s) of ``flight`` were confirmed written to so far
    written: FanOutResult = field(default_factory=FanOutResult)
    activity: str = "idle"  # what its thread is doing, for timeout messages
    targets: Targets = field(default_factory=Targets)


def _confirmed(reached: int) -> str:
    """What a timed-out fan-out had confirmed, for its error's text."""
    return f" ({reached} subscriber queue(s) confirmed written)" if reached else ""


def take_batch(
    sizes: Iterable[int], *, budget: int, per_node: int, node_limit: int, coalesce: bool
) -> int:
    """How many of the waiting publishes (of encoded ``sizes``, oldest first)
    go into the next transaction: as many as fit in ``budget`` (one
    subscriber's share of a transaction), at least one, exactly one when not
    coalescing. Packing may add a node per ``node_limit`` bytes of payload."""
    used = 0
    count = 0
    for size in sizes:
        cost = size + per_node * (1 + size // node_limit)
        if count and (used + cost > budget or not coalesce):
            break
        used += cost
        count += 1
    return count


def company_likely(since_last: float, last_batch: int, linger: float) -> bool:
    """Whether a publish reaching an empty lane waits up to ``linger`` for
    others to share its transaction: only when publishes are coming close
    together (the one before came less than ``linger`` earlier, or the
    lane's last transaction carried more than one). A lone publish (one
    thread publishing and waiting, a trickle of invalidations) is sent at
    once: nothing would come to share it."""
    return linger > 0 and (since_last < linger or last_batch > 1)


class PublishEngine:
    """Lanes per topic, the pending bound, the deadlines and the futures."""

    def __init__(self, ctx: Context, publisher: Publisher) -> None:
        self._ctx = ctx
        self._publisher = publisher
        self._linger = ctx.config.linger
        self._max_pending = ctx.config.max_pending
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # max_pending room, and threads ending
        self._lanes: dict[str, _Lane] = {}
        self._ready: deque[_Lane] = deque()  # lanes with work and no thread yet
        self._threads = 0
        self._pending = 0  # accepted, not finished
        self._closing = False
        self._completions: _Completions | None = None
        self._watchdog: _Watchdog | None = None
        self._name = ctx.client_id[:12]

    @property
    def pending(self) -> int:
        """Publishes accepted and not finished yet."""
        return self._pending

    @property
    def lookups(self) -> int:
        """Transactions whose answer was lost and were looked up."""
        return self._ctx.writer.lookups

    # -- callers' side -------------------------------------------------------------------

    def submit(
        self,
        topic: str,
        entries: list[envelope.Entry],
        *,
        timeout: float | None,
        require_subscribers: bool,
        want_future: bool = False,
        on_done: Resolved | None = None,
    ) -> PublishRequest:
        """Queue a publish (waiting for room up to its deadline). Its outcome
        goes to a future (``want_future``), to ``on_done``, or else to a
        caller of :meth:`wait`."""
        request = self._submit(
            topic, entries, timeout, require_subscribers, want_future, on_done, wait=True
        )
        assert request is not None  # it waited for room
        return request

    def try_submit(
        self,
        topic: str,
        entries: list[envelope.Entry],
        *,
        timeout: float | None,
        require_subscribers: bool,
        on_done: Resolved,
    ) -> bool:
        """:meth:`submit`, unless there is no room for it now: ``False`` then
        (nothing was done), where :meth:`submit` would wait."""
        request = self._submit(
            topic, entries, timeout, require_subscribers, False, on_done, wait=False
        )
        return request is not None

    def _submit(
        self,
        topic: str,
        entries: list[envelope.Entry],
        timeout: float | None,
        require_subscribers: bool,
        want_future: bool,
        on_done: Resolved | None,
        *,
        wait: bool,
    ) -> PublishRequest | None:
        deadline = deadline_after(timeout)
        size = sum(envelope.encoded_size(e) for e in entries)
        request = PublishRequest(topic, entries, size, timeout, deadline, require_subscribers)
        request.messages = len(entries)
        if want_future:
            request.future = Future()
        elif on_done is not None:
            request.on_done = on_done
        else:
            request.done = threading.Event()
        with self._lock:
            refused: ZkPubSubError | None = None
            if not wait and self._pending >= self._max_pending and not self._closing:
                return None
            while self._pending >= self._max_pending and not self._closing:
                left = remaining(deadline)
                if left is not None and left <= 0:
                    refused = PublishTimeout(
                        f"publish to {topic!r} not sent: {self._pending} publishes were "
                        f"already waiting for ZooKeeper (max_pending={self._max_pending}) "
                        f"and none finished within {_seconds(timeout)}; nothing was written",
                        message_ids=request.message_ids,
                        sent=False,
                    )
                    break
                self._room.wait(left)
            if refused is None and self._closing:
                refused = ClientClosed("the client is closing")
            if refused is None:
                self._enqueue(request)
        if refused is not None:  # counted as every settled publish is, then raised
            request.error = refused
            self._tell_observers([request])
            raise refused
        if request.done is None and deadline is not None:
            self._watch(request)
        return request

    def _enqueue(self, request: PublishRequest) -> None:
        """Hand ``request`` to its topic's lane (lock held)."""
        topic = request.topic
        self._pending += 1
        lane = self._lanes.get(topic)
        if lane is None:
            lane = self._lanes[topic] = _Lane(topic, threading.Condition(self._lock))
        now = time.monotonic()
        if not lane.pending:
            lane.first_at = now
            lane.gather = company_likely(now - lane.last_at, lane.last_batch, self._linger)
        lane.last_at = now
        lane.pending.append(request)
        if lane.idle:
            lane.wake.notify()
        elif not lane.busy:
            lane.busy = True
            if self._threads < LANE_THREADS:
                self._start_thread(lane)
            else:
                self._ready.append(lane)

    def wait(self, request: PublishRequest) -> PublishReceipt:
        """The receipt of ``request``, by its deadline; raises its error."""
        assert request.done is not None, "a request with a future or on_done is not waited for"
        if not request.done.wait(remaining(request.deadline)):
            self.abandon(request)
            request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.receipt is not None
        return request.receipt

    def abandon(self, request: PublishRequest) -> None:
        """The deadline of ``request`` passed: fail it (if it is not finished)."""
        with self._lock:
            if request.finished:
                return
            lane = self._lanes[request.topic]
            what = f"not confirmed within {_seconds(request.timeout)}"
            reached = 0
            if request.sent:
                reached = len(lane.written.reached) if request in lane.flight else 0
                why = f"{what} ({lane.activity}); the outcome is unknown" + _confirmed(reached)
            else:
                if request in lane.pending:  # else a lane is failing it (lock not held)
                    lane.pending.remove(request)
                doing = lane.activity if lane.flight or lane.busy else "waiting"
                why = f"not sent within {_seconds(request.timeout)} ({doing}); nothing was written"
            error = PublishTimeout(
                f"publish to {request.topic!r} {why}",
                message_ids=request.message_ids,
                reached=reached,
                sent=request.sent,
            )
            self._settle(request, None, error)
        self._announce([request])

    def close(self, timeout: float, *, idle: float | None = None) -> bool:
        """Send what is queued and wait for what is in flight: up to
        ``timeout``, and no longer than ``idle`` seconds without a publish
        finishing (``None``: no such limit); fail what is left with
        :class:`ClientClosed`, then stop. ``False`` if something was left."""
        deadline = deadline_after(timeout)
        with self._lock:
            self._closing = True
            for lane in self._lanes.values():
                lane.wake.notify_all()
            self._room.notify_all()
            quiet = deadline_after(idle)
            while self._threads > 0:
                left = remaining(earliest(deadline, quiet))
                if left is not None and left <= 0:
                    break
                pending = self._pending
                self._room.wait(left)
                if self._pending < pending:  # one finished: wait on
                    quiet = deadline_after(idle)
            leftovers = [  # not those already failed (by the watchdog) while in flight
                r
                for lane in self._lanes.values()
                for r in (*lane.pending, *lane.flight)
                if not r.finished
            ]
            closed = ClientClosed(
                "the client closed before this publish was sent; nothing was written"
            )
            for request in leftovers:
                if request.sent:  # its transaction went out: it may have been applied
                    lane = self._lanes[request.topic]
                    reached = len(lane.written.reached) if request in lane.flight else 0
                    error: ZkPubSubError = PublishTimeout(
                        f"publish to {request.topic!r} not confirmed before the client "
                        "closed; the outcome is unknown" + _confirmed(reached),
                        message_ids=request.message_ids,
                        reached=reached,
                    )
                else:
                    error = closed
                self._settle(request, None, error)
            for lane in self._lanes.values():
                lane.pending.clear()
        self._announce(leftovers)
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._completions is not None:
            self._completions.stop(timeout=5.0)
        return not leftovers

    # -- finishing requests ---------------------------------------------------------------

    def _settle(
        self, request: PublishRequest, receipt: PublishReceipt | None, error: BaseException | None
    ) -> bool:
        """Record the outcome (lock held); ``False`` if it already had one."""
        if request.finished:
            return False
        request.finished = True
        request.receipt = receipt
        request.error = error
        request.entries = []  # the payloads are no longer needed
        self._pending -= 1
        self._room.notify_all()
        return True

    def _finish(self, requests: list[PublishRequest], result: FanOutResult) -> None:
        settled = []
        reached, skipped = len(result.reached), len(result.skipped)
        with self._lock:
            for request in requests:
                ids = request.message_ids
                if reached == 0 and skipped == 0 and request.require_subscribers:
                    done = self._settle(request, None, NoSubscribers(request.topic))
                else:
                    receipt = PublishReceipt(
                        ids, reached, request.topic, result.transactions, skipped
                    )
                    done = self._settle(request, receipt, None)
                if done:
                    settled.append(request)
        self._announce(settled)

    def _fail(self, requests: Iterable[PublishRequest], error: BaseException) -> None:
        self._fail_each(requests, lambda _request: error)

    def _fail_each(
        self,
        requests: Iterable[PublishRequest],
        error_of: Callable[[PublishRequest], BaseException],
    ) -> None:
        """Fail each of ``requests`` with an error of its own (its message ids)."""
        settled = []
        with self._lock:
            for request in requests:
                if self._settle(request, None, error_of(request)):
                    settled.append(request)
        self._announce(settled)

    def _announce(self, requests: list[PublishRequest]) -> None:
        """Wake the callers; hand futures to the completion thread; tell
        the observers (metrics)."""
        futures: list[_Resolved] = []
        for request in requests:
            if request.done is not None:
                request.done.set()
            elif request.future is not None:
                futures.append((request.future, request.receipt, request.error))
            elif request.on_done is not None:
                try:
                    request.on_done(request.receipt, request.error)
                except Exception:  # ours (the bridge): never let it stop a lane
                    logger.exception("resolving a publish of %r", request.topic)
        if futures:
            self._completion_thread().put(futures)
        self._tell_observers(requests)

    def _tell_observers(self, requests: list[PublishRequest]) -> None:
        hooks = self._ctx.hooks
        now = time.monotonic()
        for request in requests:
            error = request.error
            outcome = "ok" if error is None else type(error).__name__
            hooks.published(request.topic, request.messages, now - request.submitted, outcome)

    def _completion_thread(self) -> _Completions:
        with self._lock:
            if self._completions is None:
                self._completions = _Completions(f"zkpubsub-futures-{self._name}")
            return self._completions

    def _watch(self, request: PublishRequest) -> None:
        with self._lock:
            if self._closing:  # close() settles it, and stops no watchdog made after
                return
            if self._watchdog is None:
                self._watchdog = _Watchdog(self, f"zkpubsub-deadlines-{self._name}")
            watchdog = self._watchdog
        watchdog.watch(request)

    # -- lane threads ---------------------------------------------------------------------

    def _start_thread(self, lane: _Lane) -> None:
        """Serve ``lane`` on a new thread (lock held)."""
        self._threads += 1
        thread = threading.Thread(
            target=self._serve_lanes, args=(lane,), name=f"zkpubsub-publish-{self._name}"
        )
        thread.daemon = True
        thread.start()

    def _serve_lanes(self, lane: _Lane | None) -> None:
        try:
            while lane is not None:
                self._serve(lane)
                with self._lock:  # _serve left lane.busy cleared: take the next lane
                    lane = self._ready.popleft() if self._ready else None
        except BaseException:  # never leave requests waiting on a dead thread
            logger.exception("publish engine: a lane thread failed")
            raise
        finally:
            with self._lock:
                self._threads -= 1
                self._room.notify_all()

    def _serve(self, lane: _Lane) -> None:
        """Send the lane's batches until it has been idle for ``LANE_IDLE``."""
        while True:
            with self._lock:
                while not lane.pending:
                    if self._closing:
                        lane.busy = False
                        return
                    lane.idle = True
                    lane.activity = "idle"
                    woke = lane.wake.wait(LANE_IDLE)
                    lane.idle = False
                    if not woke and not lane.pending:
                        lane.busy = False
                        return
                due = lane.first_at + self._linger
                while lane.gather and not self._closing:
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    lane.activity = "gathering a batch"
                    lane.wake.wait(left)
            try:
                self._send(lane)
            except Exception as exc:  # a lane never dies with requests in it
                logger.exception("publish engine: unexpected error on %r", lane.topic)
                with self._lock:
                    requests = list(lane.pending) + lane.flight
                    lane.pending.clear()
                    lane.flight = []
                self._fail(requests, exc)

    def _batch_deadline(self, requests: Iterable[PublishRequest]) -> float | None:
        """The latest deadline of ``requests`` (``None`` if any has none)."""
        latest = 0.0
        for request in requests:
            if request.deadline is None:
                return None
            latest = max(latest, request.deadline)
        return latest or None

    def _send(self, lane: _Lane) -> None:
        publisher, topic = self._publisher, lane.topic
        with self._lock:
            if not lane.pending:  # every request given up meanwhile: no read without a deadline
                return
            deadline = self._batch_deadline(lane.pending)
        try:
            lane.activity = f"reading the subscribers of {topic!r}"
            view = publisher.view(topic, deadline)
            if not lane.targets.of(view):
                # An empty list may be stale: confirm it before saying zero.
                lane.activity = f"confirming that {topic!r} has no subscribers"
                view = publisher.view(topic, deadline, fresh=True)
        except ClientClosed as exc:
            with self._lock:
                requests = list(lane.pending)
                lane.pending.clear()
            self._fail(requests, exc)
            return
        except (ConnectionLost, OperationTimeout) as exc:
            # No connection within the batch's deadline: every request of it
            # has timed out (or is about to); callers fail them at their own.
            lane.activity = f"waiting for a connection to ZooKeeper ({exc})"
            self._ctx.conn.connected.wait(0.1)
            return
        requests, entries = self._take(lane, view)
        if not requests:
            return
        result = lane.written  # _take made it afresh: filled as transactions are confirmed
        try:
            nodes, counts = envelope.pack_counted(entries, self._ctx.config.max_message_bytes)
            publisher.fan_out(
                topic,
                nodes,
                self._batch_deadline(requests),
                lane.targets,
                counts=counts,
                progress=lambda what: setattr(lane, "activity", what),
                result=result,
            )
        except OperationTimeout as exc:
            reached = len(result.reached)  # by the transactions confirmed before
            why = f"not confirmed in time ({exc}); the outcome is unknown" + _confirmed(reached)
            self._fail_each(
                requests,
                lambda request: PublishTimeout(
                    f"publish to {topic!r} {why}", message_ids=request.message_ids, reached=reached
                ),
            )
        except ZkPubSubError as exc:
            reached = len(result.reached)  # by the transactions confirmed before
            if reached:
                cause: ZkPubSubError = exc
                why = f"reached {reached} subscriber queue(s), then failed: {exc}"
                self._fail_each(
                    requests,
                    lambda request: PartlyPublished(
                        f"publish to {topic!r} {why}",
                        message_ids=request.message_ids,
                        reached=reached,
                        cause=cause,
                    ),
                )
            else:
                self._fail(requests, exc)
        except Exception as exc:  # failed here, while the batch is known to be in flight
            logger.exception("publish engine: unexpected error publishing to %r", topic)
            self._fail(requests, exc)
        else:
            self._finish(requests, result)
            try:  # what the next fan-out will decide on, read off the publishes' path
                lane.activity = f"reading the queues of {topic!r}"
                publisher.refresh_queues(topic, lane.targets, deadline_after(1.0))
            except ZkPubSubError as exc:
                logger.debug("reading the queues of %r: %s", topic, exc)
        finally:
            with self._lock:
                lane.flight = []

    def _take(
        self, lane: _Lane, view: TopicView
    ) -> tuple[list[PublishRequest], list[envelope.Entry]]:
        """The requests of the next transaction, marked sent, and their messages."""
        publisher, topic = self._publisher, lane.topic
        budget = publisher.budget(topic) // max(1, len(lane.targets.of(view)))
        with self._lock:
            count = take_batch(
                (r.size for r in lane.pending),
                budget=budget,
                per_node=publisher.op_size(topic, b""),
                node_limit=self._ctx.config.max_message_bytes,
                coalesce=self._linger > 0,
            )
            taken = [lane.pending.popleft() for _ in range(count)]
            for request in taken:
                request.sent = True
            lane.flight = taken
            lane.written = FanOutResult()
            lane.last_batch = count
            if lane.pending:
                lane.first_at = time.monotonic()
                lane.gather = self._linger > 0  # what did not fit is company already
            return taken, [e for r in taken for e in r.entries]


_Resolved = tuple[Future[PublishReceipt], PublishReceipt | None, BaseException | None]


class _Completions:
    """Resolves ``publish_async`` futures, in order, on a thread of ours."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[list[_Resolved] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, batch: list[_Resolved]) -> None:
        with self._lock:
            if not self._stopped:
                self._queue.put(batch)
                return
        # settled after the stop (a lane or the watchdog still finishing when
        # close gave up waiting): resolved here, or they would never be
        _resolve(batch)

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            _resolve(batch)

    def stop(self, timeout: float) -> None:
        with self._lock:
            self._stopped = True
            self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


def _resolve(batch: list[_Resolved]) -> None:
    for future, receipt, error in batch:
        try:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(receipt)  # type: ignore[arg-type]
        except InvalidStateError:  # the caller cancelled it
            pass


_COMPACT_FROM: Final = 1024  # watched requests before the first look for finished ones


class _Watchdog:
    """Fails ``publish_async`` requests at their deadline, whatever their
    lane is doing."""

    def __init__(self, engine: PublishEngine, name: str) -> None:
        self._engine = engine
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, PublishRequest]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._compact_at = _COMPACT_FROM
        self.compactions = 0  # how often finished requests were dropped from the heap
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def watch(self, request: PublishRequest) -> None:
        assert request.deadline is not None
        with self._cond:
            if len(self._heap) >= self._compact_at:
                # Drop finished requests so the heap stays near what is
                # pending. The next time is once it has doubled: with
                # thousands pending, each watch pays for the scan only once
                # on average, not once a call.
                self._heap = [e for e in self._heap if not e[2].finished]
                heapq.heapify(self._heap)
                self._compact_at = max(_COMPACT_FROM, 2 * len(self._heap))
                self.compactions += 1
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (request.deadline, next(self._seq), request))
            if earliest is None or request.deadline < earliest:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            expired: list[PublishRequest] = []
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    expired.append(heapq.heappop(self._heap)[2])
                if not expired:
                    wait = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(wait)
                    continue
            for request in expired:
                if not request.finished:
                    self._engine.abandon(request)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()


def _seconds(timeout: float | None) -> str:
    return "its timeout" if timeout is None else f"{timeout:g}s"
