"""A subscription for asyncio code: handlers run on the loop.

It is a threaded :class:`~zkpubsub.Subscription` underneath, with the same
guarantees: queue order, at-least-once, retries with backoff, a node deleted
only after the handler is done with every message in it. What changes is
where user code runs:

* With a handler (``async def`` or a plain function), a task on the event
  loop takes the messages from the subscription's buffer and calls the
  handler with each, in order; a message counts as handled (and its node
  may be deleted) only once the handler returned. No dispatcher thread
  stands between the client's receive pump and the loop: the pump wakes the
  loop when messages arrive (one crossing for what one read brought), and
  what is read ahead is handled without crossing again. A handler that
  raises — or is cancelled — is a failed attempt, tried again after the
  retry delay (the same delays, counters and ``on_error`` reports as the
  threaded dispatcher's).
* Without a handler, ``await sub.get(timeout)`` and ``async for msg in
  sub`` hand messages out in order; as with the threaded ``get``, a message
  is acknowledged when the next one is asked for (or the subscription is
  closed). Cancelling a ``get`` loses nothing: a message that arrives for
  it waits for the next ``get``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any, Final

from .._buffer import Delivery
from .._deadlines import check_timeout, deadline_after
from ..backlog import Backlog
from ..message import Message
from ..subscription import (
    RUN_LENGTH,
    Feed,
    SelfDispatching,
    Subscription,
    SubscriptionStats,
)
from ._bridge import Bridge, calling_task

__all__ = ["AsyncSubscription"]

logger = logging.getLogger("zkpubsub.aio")

AsyncHandler = Callable[[Message], Any]

# How often close() waiting for the handler's task checks that the loop runs.
_LOOP_CHECK: Final = 0.5


class LoopDispatcher(SelfDispatching):
    """Takes a subscription's messages from its buffer on the event loop
    (internal): with a handler, a task there calls it with each; without,
    ``get`` hands them out."""

    def __init__(self, bridge: Bridge, fn: AsyncHandler | None) -> None:
        self._bridge = bridge
        self.fn = fn
        self._feed: Feed | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()  # loop side: the pump read something
        self._stopping = asyncio.Event()  # loop side: the subscription is closing
        self._finished = threading.Event()  # the task ended (or there is none)
        self._cancelling = False
        self._closed_by_its_handler = False
        # the handler's task starts once the subscribe awaiting it returns:
        # one cancelled must not have its handler called meanwhile
        self._wanted = False
        self._begin_asked = False

    # -- the subscription's side (any thread) ------------------------------------------

    def start(self, feed: Feed) -> None:
        self._feed = feed
        if self.fn is None:
            self._finished.set()
            return
        try:
            self._bridge.loop.call_soon_threadsafe(self._begin)
        except RuntimeError:  # the loop is closed: nothing will be handled here
            self._finished.set()

    def note_close(self, caller: asyncio.Task[Any] | None) -> None:
        """(As a close is called.) A close called by this dispatcher's own
        handler (the task ``caller``) is not to wait for the handler: it
        waits for that close (the threaded dispatcher's rule too)."""
        if self._task is not None and caller is self._task:
            self._closed_by_its_handler = True

    def stop(self, timeout: float | None) -> bool:
        loop = self._bridge.loop
        self._on_loop(self._stopping.set)
        self._on_loop(self._finish_if_not_started)
        if self._closed_by_its_handler:
            return True  # it returns once the close does
        if timeout is None:
            return self._finished.is_set()
        waited = 0.0
        while not self._finished.wait(min(_LOOP_CHECK, max(0.0, timeout - waited))):
            waited += _LOOP_CHECK
            if waited >= timeout or loop.is_closed() or not loop.is_running():
                self._on_loop(self._cancel)  # its message stays queued
                return False
        return True

    # -- the loop ---------------------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._bridge.loop.call_soon_threadsafe(fn)

    def _notify(self) -> None:  # the pump's thread
        self._on_loop(self._arrived.set)

    async def next(self, deadline: float | None) -> Delivery | None:
        """The next delivery, or ``None`` when the loop's clock passes
        ``deadline`` or the subscription closes. Cancelling it loses
        nothing: the delivery stays in the buffer."""
        feed = self._feed
        assert feed is not None
        loop = asyncio.get_running_loop()
        while True:
            delivery = feed.next_or_notify(self._notify)
            if delivery is not None or feed.closed:
                return delivery
            self._arrived.clear()  # a wake-up of an earlier wait (one for this one is not in yet)
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                return None

    async def get(self, timeout: float | None) -> Message | None:
        """``get`` without a handler: acknowledge the message handed out
        last, then hand out the next."""
        feed = self._feed
        assert feed is not None
        feed.ack_held()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            delivery = await self.next(deadline)
            if delivery is None:
                return None
            if delivery.message is not None:
                return feed.hand_out(delivery)
            # a deadline on the client's clock, not the loop's (uvloop's is another)
            left = None if deadline is None else max(0.0, deadline - loop.time())
            await self._bridge.run(feed.not_a_message, delivery, deadline_after(left))

    def wanted(self) -> None:
        """(On the loop.) The subscribe awaiting this got its subscription:
        the handler's task may start."""
        self._wanted = True
        if self._begin_asked:
            self._start_task()

    def unwanted(self) -> None:
        """(On the loop.) The subscribe awaiting this was cancelled: no task
        starts, and closing the subscription waits for none."""
        self._finished.set()

    def _begin(self) -> None:
        if not self._wanted:
            self._begin_asked = True  # (or never, unwanted)
            return
        self._start_task()

    def _finish_if_not_started(self) -> None:
        """(On the loop, as it stops.) No task yet (its subscribe has not
        returned): none will start, and the close waits for none."""
        if self._task is None:
            self._finished.set()

    def _start_task(self) -> None:
        if self._task is not None or self._stopping.is_set():
            return
        self._task = task = asyncio.ensure_future(self._run())
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if not self._cancelling:
                logger.info("the handler's task was cancelled: no more deliveries until closed")
        elif (error := task.exception()) is not None:
            logger.error("the handler's task failed", exc_info=error)
        self._finished.set()

    def _cancel(self) -> None:
        self._cancelling = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        feed = self._feed
        assert feed is not None
        ahead: deque[Delivery] = deque()  # taken from the buffer, not handled yet
        while True:
            if not ahead:
                first = await self.next(None)
                if first is None:
                    return
                # What is read already comes along: the buffer empties, so
                # the pump reads ahead while these are handled.
                ahead.append(first)
                ahead.extend(feed.take_ready(RUN_LENGTH - 1))
            elif feed.closed:
                return  # the rest stays queued
            delivery = ahead.popleft()
            if delivery.message is None:  # a gap notice or an undecodable node
                await self._bridge.run(feed.not_a_message, delivery)
            elif not await self._handle(feed, delivery):
                return  # closing: the message stays queued
            if _task_cancelled():
                # the task was asked to stop while the handler ran, and the
                # handler swallowed that: it stops all the same
                raise asyncio.CancelledError

    async def _handle(self, feed: Feed, delivery: Delivery) -> bool:
        """Call the handler up to ``max_attempts`` times, waiting between
        attempts. ``False`` if the subscription closed before it was done."""
        fn, message = self.fn, delivery.message
        assert fn is not None and message is not None
        for attempt in range(1, feed.max_attempts + 1):
            if attempt > 1:
                message = replace(message, attempt=attempt)
                if await self._stopped_within(feed.retry_wait(attempt)):
                    return False
            try:
                result = fn(message)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError as exc:
                if self._cancelling or _task_cancelled():
                    # close() gave up waiting, or the task itself was
                    # cancelled (asyncio.run ending, a server's shutdown):
                    # the message stays queued
                    raise
                error: BaseException = exc  # something the handler awaited was cancelled
            except BaseException as exc:  # whatever a handler raises is a failure
                error = exc
            else:
                feed.succeeded(delivery)
                return True
            if not feed.failed(error, message, attempt):
                return False  # closing: the message stays queued
        feed.given_up(delivery)
        return True

    async def _stopped_within(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except asyncio.TimeoutError:
            return False
        return True


def _task_cancelled() -> bool:
    """Whether the running task was asked to stop (Python 3.11+ counts the
    requests). Python 3.10 cannot tell it from a ``CancelledError`` the
    handler let out: there, it counts as a failed attempt."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return cancelling is not None and cancelling() > 0


class AsyncSubscription:
    """Messages of one topic, for asyncio code. Made by
    :meth:`AsyncClient.subscribe <zkpubsub.aio.AsyncClient.subscribe>`."""

    def __init__(self, sub: Subscription, bridge: Bridge, dispatcher: LoopDispatcher) -> None:
        self._sub = sub
        self._bridge = bridge
        self._dispatcher = dispatcher

    @property
    def topic(self) -> str:
        return self._sub.topic

    @property
    def durable(self) -> bool:
        return self._sub.durable

    @property
    def bound(self) -> Backlog:
        """The bound of this subscription's queue."""
        return self._sub.bound

    @property
    def closed(self) -> bool:
        return self._sub.closed

    @property
    def evicted(self) -> bool:
        """See :attr:`Subscription.evicted`."""
        return self._sub.evicted

    @property
    def delivered(self) -> int:
        return self._sub.delivered

    @property
    def errors(self) -> int:
        return self._sub.errors

    @property
    def pending(self) -> int:
        return self._sub.pending

    @property
    def sync(self) -> Subscription:
        """The threaded subscription underneath."""
        return self._sub

    def stats(self) -> SubscriptionStats:
        return self._sub.stats()

    async def backlog(self, timeout: float | None = None) -> int:
        """:meth:`Subscription.backlog`, read on the client's threads."""
        return await self._bridge.run(self._sub.backlog, check_timeout(timeout))

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next message, or ``None`` if ``timeout`` passes or the
        subscription closes first. Asking for the next message acknowledges
        the previous one (read it from one task at a time, as
        :meth:`Subscription.get` says). Only for subscriptions made without
        a handler."""
        if self._dispatcher.fn is not None:
            raise TypeError("get() is for subscriptions made without a handler")
        self._bridge.check_loop()  # before the last message is acknowledged
        return await self._dispatcher.get(check_timeout(timeout))

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            message = await self.get()
            if message is None:
                return
            yield message

    def close(self, timeout: float | None = None) -> Coroutine[Any, Any, None]:
        """Stop receiving; the queue and its backlog are kept (see
        :meth:`Subscription.close`). A handler still running after
        ``timeout`` (default: the client's ``close_timeout``) is cancelled
        and its message stays queued. Idempotent. Called by the
        subscription's own handler (awaited, or through ``wait_for``), it
        does not wait for that handler."""
        return self._shutdown(self._sub.close, timeout, calling_task())

    def unsubscribe(self, timeout: float | None = None) -> Coroutine[Any, Any, None]:
        """Stop receiving, deregister and delete the queue. Idempotent."""
        return self._shutdown(self._sub.unsubscribe, timeout, calling_task())

    async def _shutdown(
        self,
        how: Callable[[float | None], None],
        timeout: float | None,
        caller: asyncio.Task[Any] | None,
    ) -> None:
        # A handler still running past the timeout is cancelled: its message
        # stays queued; a get waiting is ended; the message get handed out
        # last is acknowledged.
        timeout = check_timeout(timeout)  # a close refused notes nothing
        self._dispatcher.note_close(caller)
        await self._bridge.run_to_close(how, timeout)

    def _note_client_close(self, caller: asyncio.Task[Any] | None) -> None:
        """The client closes: see :meth:`LoopDispatcher.note_close`."""
        self._dispatcher.note_close(caller)

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<AsyncSubscription {self.topic!r} {state} delivered={self.delivered}>"
