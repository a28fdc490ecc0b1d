"""The client for asyncio code: the threaded client's engine, awaited.

:class:`AsyncClient` wraps a :class:`~zkpubsub.Client` and keeps every one
of its guarantees (it is the same engine: no protocol step is written
twice). Nothing it does blocks the event loop: connecting, subscribing and
closing run on threads of the client; a publish is the engine's future,
bridged to the loop. User code — handlers, ``on_error``, state and gap
listeners — runs on the loop; each may be an ``async def`` or a plain
function.

Cancellation has a defined outcome everywhere:

* a cancelled ``publish`` is not withdrawn: the message is written (or
  fails) exactly as if it had been awaited — only the waiting stops;
* a cancelled handler is a failed attempt: the message is tried again
  after the retry delay, like a handler that raised;
* a cancelled ``get`` or ``reserve`` loses nothing: a message that arrives
  for it waits for the next ``get``, an item reserved for it is released;
* a cancelled ``connect`` closes the client it was making; a cancelled
  ``ack``, ``put`` or ``close`` still completes.

``publish``, ``put``, ``ack``, ``release`` and ``close`` start when called
(they return a coroutine of the outcome), so even a task cancelled before
it first ran does not keep them from happening.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from .._deadlines import deadline_after
from .._payloads import payload_list
from ..backlog import WhenFull
from ..client import Client
from ..config import (
    DEFAULT_HANDLER_ATTEMPTS,
    DEFAULT_MAX_RETRY_DELAY,
    DEFAULT_QUEUE_ATTEMPTS,
    DEFAULT_QUEUE_MAX_ITEMS,
    DEFAULT_RETRY_DELAY,
    ClientConfig,
)
from ..errors import PublishTimeout
from ..message import Message, PublishReceipt
from ..state import ClientState, Gap
from ..subscription import Subscription
from ._bridge import Bridge, awaited, begun, calling_task, off_loop
from .subscription import AsyncSubscription, LoopDispatcher
from .workqueue import AsyncWorkQueue

if TYPE_CHECKING:
    from ..cleaner import Cleaner
    from ..stats import BusStats

__all__ = ["AsyncClient"]

logger = logging.getLogger("zkpubsub.aio")

Listener = Callable[[Any], Any]
T = TypeVar("T")


class AsyncClient:
    """A :class:`~zkpubsub.Client` for asyncio code. Make one with
    ``await AsyncClient.connect(hosts, ...)`` (same options as ``Client``)
    or ``async with AsyncClient.connect(hosts, ...) as client:``."""

    def __init__(self, client: Client, bridge: Bridge) -> None:
        """Internal: use :meth:`connect`."""
        self._client = client
        self._bridge = bridge
        # (kind, listener, what the threaded client calls): found again by
        # equality, as the threaded client does (a bound method is a new
        # object each time it is read)
        self._listeners: list[tuple[str, Listener, Callable[[Any], None]]] = []
        self._subs: list[AsyncSubscription] = []
        self._closing: asyncio.Future[None] | None = None
        # publishes handed to the ordered thread to wait for room, not done
        # yet: while there are any, later ones follow them there (in order)
        self._overflow = 0
        self._overflow_lock = threading.Lock()

    @classmethod
    def connect(cls, hosts: str, **options: Any) -> Connecting:
        """Connect and register without blocking the loop (``ConnectTimeout``,
        ``ClientIdInUse`` and bad options raise as for ``Client``). Await it,
        or use it as ``async with``. ``on_gap`` (if given) runs on the loop."""
        return Connecting(cls, hosts, options)

    # -- state ---------------------------------------------------------------------

    @property
    def sync(self) -> Client:
        """The threaded client underneath (for calls made from threads)."""
        return self._client

    @property
    def client_id(self) -> str:
        return self._client.client_id

    @property
    def config(self) -> ClientConfig:
        return self._client.config

    @property
    def root(self) -> str:
        return self._client.root

    @property
    def status(self) -> ClientState:
        return self._client.status

    @property
    def pending_publishes(self) -> int:
        return self._client.pending_publishes

    @property
    def unfinished(self) -> list[str]:
        """:attr:`Client.unfinished`."""
        return self._client.unfinished

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this client delivers to."""
        return self._bridge.loop

    def _wrap(self, kind: str, listener: Listener) -> Callable[[Any], None]:
        check_callable_or_async(listener, "listener")
        bridge = self._bridge

        def deliver(value: Any) -> None:
            bridge.schedule(listener, value)

        self._listeners.append((kind, listener, deliver))
        return deliver

    def _unwrap(self, kind: str, listener: Listener) -> Callable[[Any], None] | None:
        """What :meth:`_wrap` made of ``listener`` (the first, if added twice)."""
        for i, (k, added, deliver) in enumerate(self._listeners):
            if k == kind and added == listener:
                del self._listeners[i]
                return deliver
        return None

    def add_listener(self, listener: Callable[[ClientState], Any]) -> None:
        """Call ``listener(state)`` on the loop on every state change (a
        coroutine function is awaited as a task)."""
        self._client.add_listener(self._wrap("state", listener))

    def remove_listener(self, listener: Callable[[ClientState], Any]) -> None:
        deliver = self._unwrap("state", listener)
        if deliver is not None:
            self._client.remove_listener(deliver)

    def add_observer(self, observer: object) -> None:
        """:meth:`Client.add_observer`: its methods run on the client's
        threads, as the events happen (they must be quick)."""
        self._client.add_observer(observer)

    def remove_observer(self, observer: object) -> None:
        self._client.remove_observer(observer)

    @property
    def cleaner(self) -> Cleaner | None:
        """The cleaner candidate this client hosts (see :attr:`Client.cleaner`)."""
        return self._client.cleaner

    def add_gap_listener(self, listener: Callable[[Gap], Any]) -> None:
        """Call ``listener(gap)`` on the loop when messages may have been missed."""
        self._client.add_gap_listener(self._wrap("gap", listener))

    def remove_gap_listener(self, listener: Callable[[Gap], Any]) -> None:
        deliver = self._unwrap("gap", listener)
        if deliver is not None:
            self._client.remove_gap_listener(deliver)

    # -- publish --------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: Any,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        require_subscribers: bool = False,
    ) -> Coroutine[Any, Any, PublishReceipt]:
        """:meth:`Client.publish`, awaited: the receipt once ZooKeeper
        confirmed, or its error. The publish starts when called: cancelling
        the waiting task (even before it first ran) does not withdraw the
        message, which is written (or fails) as if awaited."""
        return awaited(self._publish(topic, [payload], headers, timeout, require_subscribers))

    def publish_many(
        self,
        topic: str,
        payloads: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        require_subscribers: bool = False,
    ) -> Coroutine[Any, Any, PublishReceipt]:
        """:meth:`Client.publish_many`, awaited (started when called, as :meth:`publish`)."""
        try:
            items = payload_list(payloads, "publish_many")
        except (TypeError, ValueError) as exc:
            return awaited(self._bridge.failed(exc))
        return awaited(self._publish(topic, items, headers, timeout, require_subscribers))

    def _publish(
        self,
        topic: str,
        payloads: list[Any],
        headers: dict[str, str] | None,
        timeout: float | None,
        require_subscribers: bool,
    ) -> asyncio.Future[PublishReceipt]:
        client = self._client
        waiter, settle = self._bridge.settler()
        # The engine settles the waiter itself (Client._publish_to): no
        # concurrent future and no hop through the client's futures thread.
        args = (topic, payloads, headers, timeout, require_subscribers, settle)
        try:
            with self._overflow_lock:
                queued = not self._overflow and client._publish_to(*args, wait_for_room=False)
                if not queued:  # waiting for room would block the loop: wait on a
                    self._overflow += 1  # thread, behind those waiting already
            if not queued:
                # It waits for room on one thread, behind those waiting
                # already, up to what is left of its own timeout; and fails
                # at its deadline even while those before it wait on.
                until = deadline_after(
                    client.config.request_timeout if timeout is None else timeout
                )
                assert until is not None
                entry = _Waiting(topic, until)
                job = self._bridge.submit_in_order(self._publish_waiting, entry, args)
                job.add_done_callback(functools.partial(self._overflowed, settle))
                left = until - time.monotonic()
                self._bridge.loop.call_later(max(0.0, left), self._expire, entry, settle)
        except Exception as exc:  # refused up front: raised where it is awaited
            return self._bridge.failed(exc)
        return waiter

    def _publish_waiting(self, entry: _Waiting, args: tuple[Any, ...]) -> bool:
        """On the ordered thread: hand ``entry`` to the engine, which waits
        for room up to what is left of its timeout (unless it expired)."""
        with self._overflow_lock:
            if entry.expired:
                return False
            entry.taken = True
        topic, payloads, headers, _, require_subscribers, settle = args
        left = entry.until - time.monotonic()
        if left <= 0:
            raise entry.timeout()
        return self._client._publish_to(topic, payloads, headers, left, require_subscribers, settle)

    def _expire(self, entry: _Waiting, settle: Callable[[Any, BaseException | None], None]) -> None:
        """On the loop, at ``entry``'s deadline: fail it if no thread took it."""
        with self._overflow_lock:
            if entry.taken:
                return
            entry.expired = True
        settle(None, entry.timeout())

    def _overflowed(
        self, settle: Callable[[Any, BaseException | None], None], job: Future[bool]
    ) -> None:
        with self._overflow_lock:
            self._overflow -= 1
        _settle_failure(settle, job)

    def publish_nowait(
        self,
        topic: str,
        payload: Any,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        require_subscribers: bool = False,
    ) -> asyncio.Future[PublishReceipt]:
        """Queue a publish and return at once: an asyncio future of its
        receipt (cancelling the future only stops waiting for it). When
        ``max_pending`` publishes are unfinished this waits for room on the
        loop's thread (up to ``timeout``): prefer :meth:`publish` there.
        While publishes wait for room on a thread, it queues behind them."""
        if self._overflow:  # keep the order: behind those waiting for room
            return self._publish(topic, [payload], headers, timeout, require_subscribers)
        waiter, settle = self._bridge.settler()
        self._client._publish_to(topic, [payload], headers, timeout, require_subscribers, settle)
        return waiter

    # -- subscribe ------------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        handler: Callable[[Message], Any] | None = None,
        *,
        on_error: Callable[[BaseException, Message | None], Any] | None = None,
        max_attempts: int = DEFAULT_HANDLER_ATTEMPTS,
        prefetch: int | None = None,
        durable: bool = False,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
        max_backlog: int | None = None,
        max_backlog_bytes: int | None = None,
        when_full: WhenFull | None = None,
    ) -> AsyncSubscription:
        """:meth:`Client.subscribe` with ``handler`` and ``on_error`` run on the
        loop (``async def`` or plain). The message is deleted only after the
        handler returned; one that raises or is cancelled is a failed
        attempt. Without a handler, ``await sub.get()`` or ``async for``.
        Cancelled, it leaves no subscription behind: one made meanwhile is
        closed (its queue kept, as :meth:`Subscription.close` does)."""
        bridge = self._bridge
        if handler is not None:
            check_callable_or_async(handler, "handler")
        dispatcher = LoopDispatcher(bridge, handler)
        report: Callable[[BaseException, Message | None], Any] | None = None
        if on_error is not None:
            check_callable_or_async(on_error, "on_error")
            user_on_error = on_error

            def report(error: BaseException, message: Message | None) -> None:
                bridge.schedule(user_on_error, error, message)

        job = bridge.submit(
            self._client.subscribe,
            topic,
            dispatcher,
            on_error=report,
            max_attempts=max_attempts,
            prefetch=prefetch,
            durable=durable,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
            max_backlog=max_backlog,
            max_backlog_bytes=max_backlog_bytes,
            when_full=when_full,
        )
        try:
            sub = await bridge.wrap(job)
        except asyncio.CancelledError:
            dispatcher.unwanted()  # its handler is never called
            job.add_done_callback(off_loop(_close_unwanted))
            raise
        dispatcher.wanted()
        wrapped = AsyncSubscription(sub, bridge, dispatcher)
        self._subs = [s for s in self._subs if not s.closed]
        self._subs.append(wrapped)
        return wrapped

    def subscriptions(self) -> list[AsyncSubscription]:
        """The open subscriptions made through this client."""
        return [s for s in self._subs if not s.closed]

    async def unsubscribe(self, topic: str) -> None:
        """:meth:`Client.unsubscribe`, on a thread."""
        for sub in self.subscriptions():
            if sub.topic == topic:
                await sub.unsubscribe()
                return
        await self._bridge.run(self._client.unsubscribe, topic)

    # -- work queues, cleaner, stats ---------------------------------------------------

    def queue(
        self,
        name: str,
        *,
        max_attempts: int = DEFAULT_QUEUE_ATTEMPTS,
        max_items: int | None = DEFAULT_QUEUE_MAX_ITEMS,
        visibility_timeout: float | None = None,
    ) -> AsyncWorkQueue:
        """A handle on the work queue ``name`` (see :class:`AsyncWorkQueue`;
        the options are :meth:`Client.queue`'s)."""
        handle = self._client.queue(
            name,
            max_attempts=max_attempts,
            max_items=max_items,
            visibility_timeout=visibility_timeout,
        )
        return AsyncWorkQueue(handle, self._bridge)

    async def start_cleaner(
        self,
        *,
        grace: float | None = None,
        interval: float | None = None,
        result_ttl: float | None = None,
        notice_ttl: float | None = None,
    ) -> Cleaner:
        """:meth:`Client.start_cleaner`, on a thread."""
        return await self._bridge.run(
            self._client.start_cleaner,
            grace=grace,
            interval=interval,
            result_ttl=result_ttl,
            notice_ttl=notice_ttl,
        )

    async def stats(self) -> BusStats:
        """:meth:`Client.stats`, on a thread."""
        return await self._bridge.run(self._client.stats)

    async def run_in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call (of :attr:`sync`, or your own) on the client's
        threads and await its result. Cancelling the await does not stop
        the call: it runs to its end."""
        return await self._bridge.run(fn, *args, **kwargs)

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> Coroutine[Any, Any, None]:
        """Close the subscriptions, then the client, on threads; a handler
        still running after ``close_timeout`` is cancelled. Starts when
        called and completes even if the waiting task is cancelled (before
        it first ran too). Idempotent. A handler that closes its own client
        is not waited for. A close begun on another loop (perhaps gone
        since) is completed here by the threaded client's close."""
        closing = self._closing
        if closing is None:
            caller = calling_task()
            for sub in self._subs:
                sub._note_client_close(caller)
            closing = self._closing = asyncio.ensure_future(self._close())
        elif (running := _running_loop()) is not None and closing.get_loop() is not running:
            return begun(self._bridge.run_to_close(self._client.close))
        return awaited(asyncio.shield(closing))

    async def _close(self) -> None:
        try:
            # the client closes every subscription: their handlers share
            # one close_timeout
            await self._bridge.run_to_close(self._client.close)
        finally:
            self._bridge.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.client_id} {self.status.value} root={self.root!r}>"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def check_callable_or_async(fn: object, what: str) -> None:
    """``TypeError`` unless ``fn`` is callable (plain or ``async``)."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__name__}")


class Connecting:
    """What :meth:`AsyncClient.connect` returns: await it for the client, or
    use it as ``async with`` (the client closes on the way out)."""

    def __init__(self, cls: type[AsyncClient], hosts: str, options: dict[str, Any]) -> None:
        self._cls = cls
        self._hosts = hosts
        self._options = options
        self._client: AsyncClient | None = None

    async def _connect(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        options = dict(self._options)
        bridge = Bridge(loop, (options.get("client_id") or "client")[:12])
        on_gap = options.pop("on_gap", None)
        if on_gap is not None:
            check_callable_or_async(on_gap, "on_gap")
            user_on_gap = on_gap
            options["on_gap"] = lambda gap: bridge.schedule(user_on_gap, gap)
        job = bridge.submit(Client, self._hosts, **options)
        try:
            client = await bridge.wrap(job)
        except asyncio.CancelledError:
            # Nobody will use the client it was making: close it once made.
            job.add_done_callback(off_loop(_close_unwanted))
            bridge.close()
            raise
        except BaseException:
            bridge.close()
            raise
        return self._cls(client, bridge)

    def __await__(self) -> Generator[Any, None, AsyncClient]:
        return self._connect().__await__()

    async def __aenter__(self) -> AsyncClient:
        self._client = await self._connect()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()


class _Waiting:
    """A publish waiting for room behind others (see ``AsyncClient._publish``)."""

    __slots__ = ("expired", "taken", "topic", "until")

    def __init__(self, topic: str, until: float) -> None:
        self.topic = topic
        self.until = until
        self.taken = False  # handed to the engine
        self.expired = False  # failed at its deadline first

    def timeout(self) -> PublishTimeout:
        return PublishTimeout(
            f"publish to {self.topic!r} not sent within its timeout (waiting for room "
            "behind earlier publishes); nothing was written",
            message_ids=(),
            sent=False,
        )


def _settle_failure(settle: Callable[[Any, BaseException | None], None], job: Future[Any]) -> None:
    """A publish handed to a thread that failed there before the engine took
    it: its waiter gets the error (the engine settles the others)."""
    if not job.cancelled() and (error := job.exception()) is not None:
        settle(None, error)


def _close_unwanted(job: Future[Client] | Future[Subscription]) -> None:
    """What a connect or a subscribe made for a caller that was cancelled
    meanwhile is closed (on the thread that made it; a subscription keeps
    its queue, as :meth:`Subscription.close` does)."""
    if job.cancelled() or job.exception() is not None:
        return
    made = job.result()
    try:
        made.close()
    except Exception:
        logger.exception("closing %r after a cancelled connect or subscribe", made)
