"""A subscription for asyncio code: handlers run on the loop.

It is a threaded :class:`~zkpubsub.Subscription` underneath, with the same
guarantees: queue order, at-least-once, retries with backoff, a node deleted
only after the handler is done with every message in it. What changes is
where user code runs:

* With a handler (``async def`` or a plain function), each message is
  handled on the event loop; the subscription's dispatcher thread waits for
  the coroutine to return before the message counts as handled, so the
  message is deleted only after it returned. Messages already read ahead
  go to the loop in runs (up to 64 in one visit, still one handler call
  after the other, in order), so a backlog does not pay a crossing between
  threads per message. A handler that raises — or is
  cancelled — is a failed attempt, tried again after the retry delay.
* Without a handler, ``await sub.get(timeout)`` and ``async for msg in
  sub`` hand messages out in order; as with the threaded ``get``, a message
  is acknowledged when the next one is asked for (or the subscription is
  closed). Cancelling a ``get`` loses nothing: a message that arrives for
  it waits for the next ``get``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..message import Message
from ..subscription import HandlerInterrupted, Subscription, SubscriptionStats
from ._bridge import Bridge, OnLoop

__all__ = ["AsyncSubscription"]

AsyncHandler = Callable[[Message], Any]


class Inbox:
    """Hands messages from a handler-less subscription's dispatcher thread to
    ``get`` on the loop, one at a time (internal)."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self._cond = threading.Condition()
        self._offered: Message | None = None  # from the dispatcher, not taken yet
        self._held = False  # handed out by get, not acknowledged yet
        self._done = True  # the dispatcher may go on to the next message
        self._closing = False
        self._ready = asyncio.Event()  # loop side: something to look at

    # -- the dispatcher thread --------------------------------------------------------

    def handler(self, message: Message) -> None:
        """The threaded subscription's handler: offer ``message`` and wait
        until ``get`` took it and asked for the next one."""
        with self._cond:
            if self._closing:
                raise HandlerInterrupted
            self._offered = message
            self._done = False
        self._bridge.schedule(self._ready.set)
        with self._cond:
            while not self._done:
                if self._closing:
                    if self._offered is None:
                        return  # handed out: closing acknowledges it, as the threaded get does
                    self._offered = None
                    raise HandlerInterrupted  # never handed out: it stays queued
                self._cond.wait()

    # -- the loop ---------------------------------------------------------------------

    async def get(self, timeout: float | None) -> Message | None:
        self.ack_held()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._ready.clear()
            with self._cond:
                if self._offered is not None:
                    message, self._offered = self._offered, None
                    self._held = True
                    return message
                if self._closing:
                    return None
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return None
            try:
                await asyncio.wait_for(self._ready.wait(), left)
            except asyncio.TimeoutError:
                return None

    def ack_held(self) -> None:
        with self._cond:
            if self._held:
                self._held = False
                self._done = True
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._ready.set()


class AsyncSubscription:
    """Messages of one topic, for asyncio code. Made by
    :meth:`AsyncClient.subscribe <zkpubsub.aio.AsyncClient.subscribe>`."""

    def __init__(
        self, sub: Subscription, bridge: Bridge, inbox: Inbox | None, handler: OnLoop | None
    ) -> None:
        self._sub = sub
        self._bridge = bridge
        self._inbox = inbox
        self._handler = handler

    @property
    def topic(self) -> str:
        return self._sub.topic

    @property
    def durable(self) -> bool:
        return self._sub.durable

    @property
    def closed(self) -> bool:
        return self._sub.closed

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

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next message, or ``None`` if ``timeout`` passes or the
        subscription closes first. Asking for the next message acknowledges
        the previous one. Only for subscriptions made without a handler."""
        if self._inbox is None:
            raise TypeError("get() is for subscriptions made without a handler")
        return await self._inbox.get(timeout)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            message = await self.get()
            if message is None:
                return
            yield message

    async def close(self, timeout: float | None = None) -> None:
        """Stop receiving; the queue and its backlog are kept (see
        :meth:`Subscription.close`). A handler still running after
        ``timeout`` (default: the client's ``close_timeout``) is cancelled
        and its message stays queued. Idempotent."""
        await self._shutdown(self._sub.close, timeout)

    async def unsubscribe(self, timeout: float | None = None) -> None:
        """Stop receiving, deregister and delete the queue. Idempotent."""
        await self._shutdown(self._sub.unsubscribe, timeout)

    async def _shutdown(self, how: Callable[[float | None], None], timeout: float | None) -> None:
        if self._inbox is not None:
            self._inbox.close()
        try:
            await self._bridge.run(how, timeout)
        finally:
            if self._handler is not None:
                # A handler still running past the timeout: its message stays queued.
                self._handler.cancel()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<AsyncSubscription {self.topic!r} {state} delivered={self.delivered}>"
