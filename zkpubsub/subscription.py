"""Receiving: one subscription reads its queue ``messages/<id>/<topic>``.

Guarantees:

* Messages arrive in queue sequence order (packed batches in their order).
* Handlers run on a dispatcher thread of this subscription, never on the
  ZooKeeper client's thread.
* A node is deleted only after every message in it has been handled: its
  handler returned, or raised ``max_attempts`` times (each failure goes to
  ``on_error``, whatever it raised, ``SystemExit`` and ``KeyboardInterrupt``
  included; the dispatcher goes on). Failed attempts are tried again after
  ``retry_delay``, doubled after each failure up to ``max_retry_delay``;
  meanwhile later messages of the topic wait (order is kept), other topics
  do not. A subscriber that dies first gets the node again when it comes
  back under the same client id (at-least-once).
* An undecodable or foreign node, or one whose ACL keeps this client
  out, goes to ``on_error`` as a :class:`~zkpubsub.DecodeError` and is
  then deleted: it never blocks the queue, or the client's other queues.
* Without a handler, ``get()`` and iteration hand messages out in order; a
  message is acknowledged when the next one is asked for (or the
  subscription is closed), so a consumer that dies while holding one gets
  it again.

A subscription owns its registration (made when it opens, removed when it
closes as its kind asks) and, with a handler, its dispatcher thread; the
client's receive pump (:mod:`zkpubsub._pump`) reads its queue.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Final

from kazoo.exceptions import BadVersionError, KazooException, NoNodeError

from ._buffer import Delivery, DeliveryBuffer, Node
from ._callables import refuse_awaitable
from ._context import Context
from ._deadlines import deadline_after, remaining
from ._pump import ReceivePump
from ._registration import delete_queue, end_subscription, register_subscription
from ._registry import SubscriptionRegistry
from .backlog import EVICTED, Backlog, OverflowMark
from .config import DEFAULT_MAX_RETRY_DELAY, DEFAULT_RETRY_DELAY
from .connection import translated
from .errors import ClientClosed, ConnectionLost, OperationTimeout, ZkPubSubError
from .layout import join
from .message import Message
from .state import Gap
from .stats import queue_backlog

__all__ = [
    "ErrorHandler",
    "Feed",
    "Handler",
    "HandlerInterrupted",
    "SelfDispatching",
    "Subscription",
    "SubscriptionStats",
    "log_error",
]

logger = logging.getLogger(__name__)

# The most times retry_delay is doubled: 2.0 ** 1024 overflows a float, and
# any delay over 1e-300 s is past a year (the longest max_retry_delay) by then.
_MOST_DOUBLINGS: Final = 1023

# The most messages read already that a dispatcher takes from the buffer at
# once: one hold of its lock for the run, and the pump reads ahead while the
# run is handled (the subscription then holds up to prefetch + this many).
RUN_LENGTH: Final = 64

# Seconds between tries to read and delete an overflow marker while no
# server answers.
MARKER_RETRY: Final = 0.5

Handler = Callable[[Message], Any]
ErrorHandler = Callable[[BaseException, "Message | None"], Any]


class SelfDispatching(ABC):
    """A handler that takes its subscription's messages itself, off any
    thread of the subscription (internal: the asyncio API handles them, or
    hands them to ``get``, on its event loop, where a thread of ours would
    cost two crossings a message). The subscription starts no dispatcher
    thread for it (and its own ``get()`` refuses to serve); it hands it a
    :class:`Feed` when it opens and asks it to stop when it closes."""

    def __call__(self, message: Message) -> Any:
        raise TypeError("a self-dispatching handler is not called per message")

    @abstractmethod
    def start(self, feed: Feed) -> None:
        """The subscription opened (any thread): take messages from ``feed``."""

    @abstractmethod
    def stop(self, timeout: float | None) -> bool:
        """The subscription is closing (its feed is closed already): end,
        waiting up to ``timeout`` seconds for a handler still running
        (``None``: do not wait). ``False`` if one still runs after that: it
        is cancelled, and its message stays queued."""


class Feed:
    """A subscription's messages, as a :class:`SelfDispatching` handler
    takes them: the same buffer, retries and bookkeeping as the dispatcher
    thread's (internal)."""

    __slots__ = ("_sub",)

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    @property
    def max_attempts(self) -> int:
        return self._sub._max_attempts

    def next_or_notify(self, notify: Callable[[], None]) -> Delivery | None:
        """The next delivery if one is read already; otherwise ``None`` and
        ``notify()`` is called once (from the pump's thread: it must only
        hand off) when there are some, or the feed closed."""
        return self._sub._take_or_notify(notify)

    @property
    def closed(self) -> bool:
        return self._sub._buffer.closed

    def take_ready(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` deliveries that are read already (no waiting)."""
        return self._sub._take(limit, 0.0)  # a deadline passed already: no waiting

    def retry_wait(self, attempt: int) -> float:
        return self._sub._retry_wait(attempt)

    def succeeded(self, delivery: Delivery) -> None:
        """The handler returned for ``delivery``'s message."""
        assert delivery.message is not None
        self._sub._succeeded(delivery.message)
        self._sub._handled(delivery.node)

    def failed(self, error: BaseException, message: Message, attempt: int) -> bool:
        """Attempt ``attempt`` failed: report it and count it. ``False``
        when it raised :class:`HandlerInterrupted`: the subscription is
        closing, the message stays queued, stop dispatching."""
        return self._sub._failed(error, message, attempt)

    def given_up(self, delivery: Delivery) -> None:
        """The last attempt failed: the node may go."""
        self._sub._handled(delivery.node)

    def not_a_message(self, delivery: Delivery, deadline: float | None = None) -> None:
        """An undecodable node or an overflow marker (a gap notice). Blocks
        (a marker is read again, until ``deadline`` while no server
        answers): call it on a thread."""
        self._sub._not_a_message(delivery, deadline)

    def hand_out(self, delivery: Delivery) -> Message:
        """A ``get`` took ``delivery``'s message: it is acknowledged by
        :meth:`ack_held` (the next ``get``) or when the subscription closes."""
        return self._sub._hand_out(delivery)

    def ack_held(self) -> None:
        self._sub._ack_held()


class HandlerInterrupted(BaseException):
    """Raised by a handler when its subscription is being closed before it
    could handle its message (the bridge of :mod:`zkpubsub.aio` does): the
    dispatcher stops there, the message stays queued, to be delivered again,
    and it is not counted as a failure. Raise it only on the way to
    ``close()``."""


def log_error(error: BaseException, message: Message | None) -> None:
    """The default ``on_error``: log it."""
    where = f" (message {message.id} on {message.topic!r})" if message else ""
    logger.error("subscription error%s: %s", where, error, exc_info=error)


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """Counters of one subscription.

    ``delivered``: messages handled (handler returned, or handed out by
    ``get``). ``pending``: read from the queue or listed but not handled yet.
    ``errors``: handler failures and undecodable nodes. ``dropped``: messages
    given up after ``max_attempts`` failures.
    """

    topic: str
    delivered: int
    pending: int
    errors: int
    dropped: int
    nodes_deleted: int
    extra: dict[str, int] = field(default_factory=dict)


class Subscription:
    """Messages of one topic for one client. Made by ``Client.subscribe``."""

    def __init__(
        self,
        ctx: Context,
        registry: SubscriptionRegistry,
        topic: str,
        handler: Handler | None,
        *,
        on_error: ErrorHandler | None,
        max_attempts: int,
        prefetch: int,
        durable: bool = False,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
        backlog: Backlog | None = None,
        report_gap: Callable[[Gap], None] | None = None,
        pump: ReceivePump,
    ) -> None:
        self._topic = topic
        self._report_gap = report_gap
        self._backlog = backlog or ctx.config.backlog
        self._durable = durable
        self._ctx = ctx
        self._registry = registry
        self._registered = False
        self._handler = handler
        self._on_error: ErrorHandler = on_error or log_error
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._stopping = threading.Event()  # close() began: no more retries
        self._buffer = DeliveryBuffer(prefetch)
        self._pump = pump
        self._holding: Delivery | None = None  # get(): handed out, not acked
        self._closed = False
        self._evicted = False
        self._close_lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._self_dispatching = handler if isinstance(handler, SelfDispatching) else None
        if handler is not None and self._self_dispatching is None:
            self._dispatcher = threading.Thread(
                target=self._dispatch_loop, name=f"zkpubsub-dispatch-{topic}", daemon=True
            )

    def open(self) -> None:
        """Register (joining the client's open subscriptions) and start
        receiving. When this returns, every later publish reaches it."""
        ctx = self._ctx
        with self._registry.lock:
            self._registry.add(self)
            try:
                with translated(f"subscribe to {self._topic!r}"):
                    if self._registry.drop_pending(self._topic):
                        # an unsubscribe made while no server answered:
                        # its backlog goes before this subscription starts
                        delete_queue(ctx, self._topic, ctx.deadline())
                    evicted = register_subscription(
                        ctx,
                        self._topic,
                        ctx.deadline(),
                        durable=self._durable,
                        backlog=self._backlog,
                    )
                self._registered = True
            except BaseException:
                self._registry.discard(self)
                raise
            self._registry.registered(self)
        if evicted is not None and self._report_gap is not None:
            # an earlier subscription of this id was evicted: what it missed
            # is told to this one, which has its (now empty) queue
            self._report_gap(Gap(frozenset({self._topic}), evicted, time.time(), EVICTED))
        self._pump.attach(self._topic, self._buffer, self._backlog)
        if self._dispatcher is not None:
            self._dispatcher.start()
        elif self._self_dispatching is not None:
            self._self_dispatching.start(Feed(self))

    def restored(self) -> None:
        """The client registered again on a new session: read the queue again."""
        self._pump.relist(self._topic)

    # -- public -------------------------------------------------------------

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def durable(self) -> bool:
        return self._durable

    @property
    def bound(self) -> Backlog:
        """The bound of this subscription's queue."""
        return self._backlog

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def evicted(self) -> bool:
        """Whether the subscription was ended because its queue filled up
        under ``when_full="evict"`` (it is then closed, and a gap told)."""
        return self._evicted

    @property
    def delivered(self) -> int:
        return self._buffer.counters.delivered

    @property
    def errors(self) -> int:
        return self._buffer.counters.errors

    @property
    def pending(self) -> int:
        return self._buffer.pending

    def backlog(self, timeout: float | None = None) -> int:
        """Message nodes (and overflow markers) in this subscription's queue on
        the server now, read and not yet deleted included: a listing of the
        queue and a stat of each segment. ``OperationTimeout`` after
        ``timeout`` seconds (default: the client's ``request_timeout``)."""
        ctx = self._ctx
        with translated(f"backlog of {self._topic!r}"):
            return queue_backlog(
                ctx.conn, ctx.layout, ctx.client_id, self._topic, ctx.deadline(timeout)
            )

    def stats(self) -> SubscriptionStats:
        buffer = self._buffer
        with buffer.lock:
            c = buffer.counters
            return SubscriptionStats(
                self._topic,
                c.delivered,
                buffer.pending,
                c.errors,
                c.dropped,
                c.nodes_deleted,
                {"redelivered": c.redelivered},
            )

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, or ``None`` if ``timeout`` passes or the
        subscription closes first. Asking for the next message acknowledges
        the previous one (its node is deleted once all its messages are).
        Undecodable nodes are reported to ``on_error`` and skipped.

        Read a subscription from one thread (or task) at a time: whoever
        asks next acknowledges what was handed out last."""
        if self._handler is not None:
            raise TypeError("get() is for subscriptions made without a handler")
        deadline = deadline_after(timeout)
        self._ack_held()
        while True:
            delivery = self._next(deadline)
            if delivery is None:
                return None
            if delivery.message is None:
                self._not_a_message(delivery, deadline)
                continue
            return self._hand_out(delivery)

    def _hand_out(self, delivery: Delivery) -> Message:
        """``get()`` hands ``delivery``'s message out: acknowledged by the
        next ``get()`` or by ``close()``. A message still held (two gets
        waited at once) is acknowledged now: the next hand-out would
        otherwise replace it, never acknowledged."""
        assert delivery.message is not None
        with self._buffer.lock:
            earlier, self._holding = self._holding, delivery
            self._buffer.counters.delivered += 1
        if earlier is not None:
            self._handled(earlier.node)
        self._ctx.hooks.handled(self._topic, delivery.message.published_at, time.time())
        return delivery.message

    def __iter__(self) -> Iterator[Message]:
        """Messages until the subscription is closed."""
        while True:
            msg = self.get()
            if msg is None:
                return
            yield msg

    def close(self, timeout: float | None = None) -> None:
        """Stop receiving. A plain subscription is deregistered; a durable one
        stays registered (publishers keep filling its queue). The queue and
        its backlog are kept for a later ``subscribe`` by the same client id.

        A handler still running is waited for up to ``timeout`` seconds
        (default: the client's ``close_timeout``); after that its message
        stays in the queue, to be delivered again, and its thread is left to
        finish on its own. A retry waiting for its delay is not made.
        Idempotent."""
        self._shutdown(drop_queue=False, timeout=timeout)

    def unsubscribe(self, timeout: float | None = None) -> None:
        """Stop receiving, remove the registration and delete the queue with
        its backlog (``timeout`` as for :meth:`close`). Idempotent."""
        self._shutdown(drop_queue=True, timeout=timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Subscription {self._topic!r} {state} delivered={self.delivered}>"

    # -- hand-off between threads ---------------------------------------------

    def _next(self, deadline: float | None) -> Delivery | None:
        run = self._take(1, deadline)
        return run[0] if run else None

    def _take(self, limit: int, deadline: float | None) -> list[Delivery]:
        """Up to ``limit`` deliveries read already, waiting for the first
        until ``deadline``; wakes the pump if read-ahead ran low."""
        run, low = self._buffer.take(limit, deadline)
        self._read_ahead(low)
        return run

    def _take_or_notify(self, notify: Callable[[], None]) -> Delivery | None:
        """:meth:`Feed.next_or_notify`; wakes the pump if read-ahead ran low."""
        delivery, low = self._buffer.next_or_notify(notify)
        self._read_ahead(low)
        return delivery

    def _read_ahead(self, low: bool) -> None:
        """Messages were taken: wake the pump if read-ahead ran ``low``."""
        if low:
            self._pump.wake()

    def _ack_held(self) -> None:
        with self._buffer.lock:
            held, self._holding = self._holding, None
        if held is not None:
            self._handled(held.node)

    def _handled(self, node: Node) -> None:
        if self._buffer.handled(node):
            self._pump.handled(self._buffer)

    def _not_a_message(self, delivery: Delivery, deadline: float | None = None) -> None:
        """An undecodable node (to ``on_error``) or an overflow marker (a gap
        notice, at its place in the queue); handled either way, but for a
        marker no server answered for before the subscription closed."""
        if delivery.error is not None:
            self._report(delivery.error, None)
        elif delivery.mark is not None:
            taken = self._take_marker(delivery, deadline)
            if taken is None:
                return  # closing: it stays queued, told next time as last counted
            mark, window = taken
            logger.warning(
                "subscription %r: %d message(s) of %s were not written: the queue was full",
                self._topic,
                mark.missed,
                mark.publisher,
            )
            if self._report_gap is not None:
                since, until = window
                gap = Gap(frozenset({self._topic}), since, until, "backlog full", mark.missed)
                self._report_gap(gap)
        self._handled(delivery.node)

    def _take_marker(
        self, delivery: Delivery, deadline: float | None
    ) -> tuple[OverflowMark, tuple[float, float]] | None:
        """An overflow marker, as last counted: read it again (publishers may
        have counted into it since it was read ahead) and delete it at that
        version, so no count is lost (a publisher counting later finds it
        gone and leaves a new one). Without a server to answer, tried again
        until the subscription closes (``None``: the marker stays, told
        next time) or, for a ``get()``, until its ``deadline`` (told as last
        read: counts since may be missed)."""
        assert delivery.mark is not None
        mark, window = delivery.mark, delivery.window
        conn = self._ctx.conn
        path = join(self._ctx.layout.queue(self._ctx.client_id, self._topic), delivery.node.name)
        read = functools.partial(conn.kazoo.get_async, path)
        while True:
            try:
                while True:
                    data, stat = conn.call(read, self._ctx.deadline(), path)
                    mark = OverflowMark.decode(data)
                    window = (stat.ctime / 1000, stat.mtime / 1000)
                    delete = functools.partial(conn.kazoo.delete_async, path, stat.version)
                    try:
                        conn.call(delete, self._ctx.deadline(), path)
                        return mark, window
                    except BadVersionError:
                        continue  # counted into meanwhile: read it again
            except NoNodeError:
                # deleted already: by this delete (its answer lost: the count
                # last read stands) or before (a redelivery: the count read ahead)
                return mark, window
            except ClientClosed:
                return None  # it stays, told next time
            except (ConnectionLost, OperationTimeout) as exc:
                if self._stopping.is_set() or self._ctx.is_closed():
                    return None
                left = remaining(deadline)
                if left is not None and left <= 0:
                    logger.warning("subscription %r: marker %s: %s", self._topic, path, exc)
                    return mark, window
                logger.debug("subscription %r: marker %s: %s; again", self._topic, path, exc)
                self._stopping.wait(MARKER_RETRY if left is None else min(MARKER_RETRY, left))
            except (ZkPubSubError, KazooException, ValueError) as exc:
                logger.warning("subscription %r: marker %s: %s", self._topic, path, exc)
                return mark, window

    def _report(self, error: BaseException, message: Message | None) -> None:
        with self._buffer.lock:
            self._buffer.counters.errors += 1
        self._ctx.hooks.errored(self._topic)
        try:
            self._on_error(error, message)
        except BaseException:  # on_error must not end the dispatcher
            logger.exception("on_error raised while reporting %r", error)

    # -- dispatcher thread ---------------------------------------------------------

    def _dispatch_loop(self) -> None:
        assert self._handler is not None
        handler, buffer = self._handler, self._buffer
        while True:
            run = self._take(RUN_LENGTH, None)
            if not run:
                return  # closed
            for delivery in run:
                if buffer.closed:
                    return  # the rest of the run stays queued, as the buffer's
                if delivery.message is None:
                    self._not_a_message(delivery)
                    continue
                if not self._handle(handler, delivery.message):
                    return  # closing while waiting to retry: the message stays queued
                self._handled(delivery.node)

    def _succeeded(self, message: Message) -> None:
        with self._buffer.lock:
            self._buffer.counters.delivered += 1
        self._ctx.hooks.handled(self._topic, message.published_at, time.time())

    def _handle(self, handler: Handler, message: Message) -> bool:
        """Call the handler up to ``max_attempts`` times, waiting between
        attempts. ``False`` if the subscription closed before it was done."""
        for attempt in range(1, self._max_attempts + 1):
            if attempt > 1:
                message = replace(message, attempt=attempt)
                if self._stopping.wait(self._retry_wait(attempt)):
                    return False
            try:
                refuse_awaitable(handler(message), "the handler")
            except BaseException as exc:  # whatever a handler raises is a failure
                if not self._failed(exc, message, attempt):
                    return False  # closing: the message stays queued
            else:
                self._succeeded(message)
                return True
        return True

    def _retry_wait(self, attempt: int) -> float:
        """The wait before attempt ``attempt`` (2 and later): the delay
        doubled each time, up to the most (the doubling stops past a
        thousand attempts, where it would overflow a float)."""
        growth = 2.0 ** min(attempt - 2, _MOST_DOUBLINGS)
        return float(min(self._retry_delay * growth, self._max_retry_delay))

    def _failed(self, error: BaseException, message: Message, attempt: int) -> bool:
        """Attempt ``attempt`` failed: report and count it. ``False`` when
        the handler raised :class:`HandlerInterrupted` (closing: no failure,
        the message stays queued and the dispatching stops)."""
        if isinstance(error, HandlerInterrupted):
            return False
        self._report(error, message)
        given_up = attempt == self._max_attempts
        with self._buffer.lock:
            if given_up:
                self._buffer.counters.dropped += 1
            else:
                self._buffer.counters.redelivered += 1
        if given_up:
            self._ctx.hooks.dropped(self._topic)
        return True

    # -- shutdown -------------------------------------------------------------------------

    def _shutdown(self, *, drop_queue: bool, timeout: float | None) -> None:
        handler = deadline_after(self._ctx.config.close_timeout if timeout is None else timeout)
        halted = self._halt()
        if halted:
            self._wait_for_handler(handler)
        # the last deletes, the deregistration and the queue's removal share
        # one request's time (a closing client's: CLOSING_REQUEST_TIMEOUT)
        self._end(halted=halted, drop_queue=drop_queue, deadline=self._requests_deadline())

    # A closing client ends its subscriptions in these three steps, each
    # for all of them before the next: every subscription stops handing out
    # messages at once, their handlers share one wait (``close_timeout``),
    # and each one's ending requests get a closing request's time (none,
    # once one of them ran out of it: see ``Client.close``).

    def _halt(self, *, evicted: bool = False) -> bool:
        """Stop handing out messages (marked ``evicted`` if so); ``False`` if
        closed already."""
        with self._close_lock:
            already = self._closed
            self._closed = True
            if not already:
                self._evicted = evicted
        if not already:
            self._stopping.set()
            self._buffer.close()
            if self._self_dispatching is not None:
                self._self_dispatching.stop(None)  # told now, waited for next
        return not already

    def _wait_for_handler(self, deadline: float | None) -> None:
        """Wait until ``deadline`` for a handler still running (after
        :meth:`_halt`), then acknowledge what was handed out last."""
        left = remaining(deadline)
        running = False
        dispatcher = self._dispatcher
        if self._self_dispatching is not None:
            running = not self._self_dispatching.stop(left)
        elif dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join(left)
            running = dispatcher.is_alive()
        if running:
            logger.warning(
                "subscription %r: the handler is still running when the close's wait "
                "ends; its message stays queued and will be delivered again",
                self._topic,
            )
        self._ack_held()

    def _end(self, *, halted: bool, drop_queue: bool, deadline: float | None) -> None:
        """The ending requests, until ``deadline``: the last deletes (if
        this close halted it), the deregistration, the queue's removal."""
        if halted:
            self._pump.detach(self._topic, deadline)
        self._deregister(drop_queue=drop_queue, deadline=deadline)

    def evict(self) -> None:
        """End the subscription because its queue filled up under ``evict``
        (the session does this when it sees the queue's record marked): stop
        at once (a handler still running is not waited for: its message goes
        with the queue), deregister and delete the queue. Idempotent."""
        if not self._halt(evicted=True):
            return
        logger.warning(
            "subscription %r evicted: its queue filled up (max_backlog %d nodes, %d bytes)",
            self._topic,
            self._backlog.max_nodes,
            self._backlog.max_bytes,
        )
        with self._buffer.lock:
            self._holding = None
        self._end(halted=True, drop_queue=True, deadline=self._requests_deadline())

    def _requests_deadline(self) -> float | None:
        """The deadline of the requests that end a subscription: one
        request's time, a closing client's if the client is closing."""
        ctx = self._ctx
        return ctx.closing_deadline() if ctx.is_closed() else ctx.deadline()

    def _deregister(self, *, drop_queue: bool, deadline: float | None) -> None:
        """Leave the client's open subscriptions; remove the registration if
        asked (always for ``unsubscribe``, for a plain subscription on
        ``close``) and the queue. While the client closes, a plain
        subscription is deregistered only if connected, within the closing
        client's deadline (``Context.closing_deadline``): ending the session removes it too,
        but a publisher learns of that only from its child watch, and could
        still count it in a publish sent right after ``close()`` returned.
        The deregistration's ``setData`` makes such a publish read the
        subscribers again.

        With the client open and no server to answer (not connected, or
        no answer by ``deadline``), what is left is deferred to the session,
        which finishes it once connected again, and this returns: waiting
        here for a server that may be gone for long helps nobody."""
        ctx = self._ctx
        with self._registry.lock:
            self._registry.discard(self)
            unregister = self._registered and (drop_queue or not self._durable)
            if unregister and ctx.is_closed() and not self._durable:
                unregister = ctx.conn.connected.is_set()
            try:
                end_subscription(
                    ctx,
                    self._topic,
                    deadline,
                    unregister=unregister,
                    drop_queue=drop_queue,
                    once=not ctx.is_closed(),
                )
            except (ConnectionLost, OperationTimeout) as exc:
                if ctx.is_closed():
                    raise
                self._registry.defer(self._topic, drop_queue)  # it always deregisters
                self._registered = False
                logger.warning(
                    "subscription %r: %s; the client finishes it once the server answers",
                    self._topic,
                    exc,
                )
            else:
                self._registered = self._registered and not unregister
