"""Between the event loop and the client's threads (internal).

The asyncio API drives the same engine as the threaded one. Two crossings
do all the work:

* loop → threads: a blocking call of the threaded client runs on a thread
  pool of the async client (never on the loop); a publish is a future of
  the engine, bridged to the loop.
* threads → loop: user code (handlers, listeners, ``on_error``) runs on the
  loop. A work-queue worker thread that needs a handler's outcome waits for
  the coroutine it scheduled there, so what happens to the item after the
  handler (ack, release) is decided by the threaded engine exactly as for a
  plain handler. A subscription's handler needs no such thread: a task on
  the loop takes its messages (:mod:`zkpubsub.aio.subscription`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..errors import ClientClosed

__all__ = ["Bridge", "LoopStopped", "OnLoop", "WrongLoop", "off_loop"]

logger = logging.getLogger("zkpubsub.aio")

T = TypeVar("T")

# How often a thread waiting for a coroutine checks that the loop still runs.
_LOOP_CHECK = 0.5
# Threads for the blocking calls of one async client (created on demand).
_MAX_THREADS = 32


def off_loop(
    cleanup: Callable[[concurrent.futures.Future[T]], None],
) -> Callable[[concurrent.futures.Future[T]], None]:
    """``cleanup`` as a done callback of a job that runs on a thread of its
    own: a job already done runs its callbacks at once, on the thread that
    adds them (the loop's), and a cleanup blocks (closes, releases)."""

    def callback(job: concurrent.futures.Future[T]) -> None:
        if job.cancelled() or job.exception() is not None:
            return  # it made nothing: nothing to close or release
        try:
            threading.Thread(
                target=cleanup, args=(job,), name="zkpubsub-aio-cleanup", daemon=True
            ).start()
        except RuntimeError:  # no new thread at interpreter shutdown (3.12): here, then
            cleanup(job)

    return callback


def awaited(future: asyncio.Future[T]) -> Coroutine[Any, Any, T]:
    """A coroutine of ``future``'s outcome: what the calls that start when
    called return, so that they can be awaited, wrapped in a task (which
    ``create_task`` needs) or given to ``wait_for`` as coroutines can. An
    outcome nobody waits for any more (the task was cancelled before it
    first ran, or the coroutine was dropped) is dropped unread, not logged
    as never retrieved."""
    future.add_done_callback(_read_outcome)
    return _outcome_of(future)


async def _outcome_of(future: asyncio.Future[T]) -> T:
    return await future


def begun(work: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    """``work`` in a task of its own, begun now: cancelling the coroutine
    returned only stops the waiting, as :meth:`Bridge.start` does."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_read_outcome)
    return awaited(asyncio.shield(task))


def calling_task() -> asyncio.Task[Any] | None:
    """The task making a call, taken as the call is made: the coroutine the
    call returns may run in another (``wait_for`` wraps it in a task of its
    own before Python 3.12). ``None`` outside a running loop."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _read_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # read: not logged as never retrieved


class LoopStopped(RuntimeError):
    """The event loop stopped (or closed) before a handler could finish."""


class WrongLoop(RuntimeError):
    """An async client used on another event loop than its own."""


class Bridge:
    """The loop of one async client and the threads it hands blocking calls to."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self.loop = loop
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=_MAX_THREADS, thread_name_prefix=f"zkpubsub-aio-{name}"
        )
        # one thread, for calls that must keep the order they were made in
        self._in_order = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"zkpubsub-aio-{name}-ordered"
        )
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._draining = False

    # -- loop -> threads -------------------------------------------------------------

    def submit(
        self, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Start ``fn`` on a thread of ours (``ClientClosed`` once the client
        closed them; ``WrongLoop``, starting nothing, if called on another
        running event loop than the client's)."""
        self.check_loop()
        try:
            return self._executor.submit(functools.partial(fn, *args, **kwargs))
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise ClientClosed("the client is closed") from exc

    def submit_in_order(
        self, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """:meth:`submit`, on the one thread that runs such calls one after
        another, in the order they were made."""
        self.check_loop()
        try:
            return self._in_order.submit(functools.partial(fn, *args, **kwargs))
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise ClientClosed("the client is closed") from exc

    def check_loop(self) -> None:
        """``WrongLoop`` if this runs on another event loop than the
        client's (its futures and its deliveries belong to that one); a
        thread with no running loop passes."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is not self.loop:
            raise WrongLoop(
                "this async client belongs to the event loop it was connected on, and "
                "was used on another: nothing was done (connect one per loop, or use "
                "client.sync from threads)"
            )

    def start(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """``fn`` on a thread of ours, started now (not when a coroutine
        would first run): an asyncio future of its outcome. Cancelling it only
        stops the waiting; a task cancelled before it ran does not keep the
        call from running. ``ClientClosed`` comes through the future."""
        try:
            return self.wrap(self.submit(fn, *args, **kwargs))
        except ClientClosed as exc:
            return self.failed(exc)

    def failed(self, error: BaseException) -> asyncio.Future[Any]:
        """A future of the loop that failed with ``error`` already (a call
        refused before it started; made on any thread)."""
        refused: asyncio.Future[Any] = self.loop.create_future()
        refused.set_exception(error)
        return refused

    async def run_to_close(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`run` for a call that closes or stops something (idempotent):
        once the client closed its threads, on the loop's default executor;
        on another loop than the client's (its own may be gone), on that
        loop's."""
        running = asyncio.get_running_loop()
        if running is not self.loop:
            return await running.run_in_executor(None, functools.partial(fn, *args, **kwargs))
        try:
            job = self.submit(fn, *args, **kwargs)
        except ClientClosed:
            return await self.loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))
        return await self.wrap(job)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` on a thread of ours. Cancelling the await does not stop the
        call: it runs to its end (its outcome is the threaded API's), and
        only the waiting is abandoned."""
        return await self.wrap(self.submit(fn, *args, **kwargs))

    def wrap(self, future: concurrent.futures.Future[T]) -> asyncio.Future[T]:
        """An asyncio future resolved (on the loop) like ``future``. Cancelling
        it only stops the waiting: ``future`` goes on."""
        waiter, settle = self.settler()
        future.add_done_callback(functools.partial(_settle_like, settle))
        return waiter

    def settler(self) -> tuple[asyncio.Future[Any], Callable[[Any, BaseException | None], None]]:
        """An asyncio future and, for any thread, the function that settles
        it: ``settle(result, error)``. Settlements that come close together
        are handed to the loop in one wake-up (where ``asyncio.wrap_future``
        costs one per future). Cancelling the future only stops the waiting.
        ``WrongLoop`` on another running loop than the client's."""
        self.check_loop()
        waiter: asyncio.Future[Any] = self.loop.create_future()
        return waiter, functools.partial(self._settled, waiter)

    def _settled(
        self, waiter: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        with self._lock:
            self._done.append((waiter, result, error))
            if self._draining:
                return
            self._draining = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:  # on the loop
        with self._lock:
            done, self._done = self._done, []
            self._draining = False
        for waiter, result, error in done:
            if waiter.done():  # cancelled (or, were it told twice, the first word stands)
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(result)

    # -- threads -> loop -------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        running: set[_Crossing] | None = None,
    ) -> Any:
        """From a thread of ours: run ``fn(*args)`` on the loop (awaited when
        it returns an awaitable) and wait for its end. Raises what it raised;
        ``concurrent.futures.CancelledError`` when the coroutine was
        cancelled; :class:`LoopStopped` when the loop stopped first. The call
        is in ``running`` while it runs."""
        loop = self.loop
        if loop.is_closed():
            raise LoopStopped("the event loop is closed")
        crossing = _Crossing(loop, fn, args)
        if running is not None:
            with self._lock:
                if isinstance(running, _Running) and running.stopped:
                    raise concurrent.futures.CancelledError()  # as if cancelled before it began
                running.add(crossing)
        try:
            try:
                loop.call_soon_threadsafe(crossing.start)
            except RuntimeError:  # closed meanwhile
                raise LoopStopped("the event loop is closed") from None
            while not crossing.wait(_LOOP_CHECK):
                if loop.is_closed() or not loop.is_running():
                    crossing.cancel()
                    raise LoopStopped("the event loop stopped while a handler ran")
            return crossing.outcome()
        finally:
            if running is not None:
                with self._lock:
                    running.discard(crossing)

    def on_loop(self, fn: Callable[..., Any]) -> OnLoop:
        """``fn`` as a plain callable for a thread of ours: each call runs it
        on the loop and waits (see :meth:`call`)."""
        return OnLoop(self, fn)

    def cancel(self, running: set[_Crossing]) -> int:
        """Cancel the calls in ``running``; returns how many."""
        with self._lock:
            calls = list(running)
        return sum(1 for crossing in calls if crossing.cancel())

    def schedule(self, fn: Callable[..., Any], *args: Any) -> None:
        """From any thread: run ``fn(*args)`` on the loop, without waiting;
        what it raises is logged."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            self.loop.call_soon_threadsafe(self._start, fn, args)

    def _start(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            result = fn(*args)
        except Exception:
            logger.exception("listener %r raised", fn)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            task.add_done_callback(functools.partial(_log_failure, fn))

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        self._in_order.shutdown(wait=False)


class _Crossing:
    """One call of user code on the loop that a thread of ours waits for.

    Cheaper than ``run_coroutine_threadsafe``: a plain function runs in the
    loop's callback without a task; a coroutine gets one task; the waiting
    thread sleeps on a bare lock."""

    __slots__ = (
        "_args",
        "_cancelled",
        "_done",
        "_error",
        "_finished",
        "_fn",
        "_loop",
        "_result",
        "_task",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        self._loop = loop
        self._fn = fn
        self._args = args
        self._result: Any = None
        self._error: BaseException | None = None
        self._task: asyncio.Future[Any] | None = None
        self._cancelled = False
        self._done = False
        self._finished = threading.Lock()
        self._finished.acquire()  # released once the outcome is known

    @property
    def task(self) -> asyncio.Future[Any] | None:
        """The task running the call, once it began (a coroutine's)."""
        return self._task

    def start(self) -> None:  # on the loop
        if self._cancelled:
            self._finish(None, concurrent.futures.CancelledError())
            return
        try:
            result = self._fn(*self._args)
        except BaseException as exc:  # the caller's thread raises it
            self._finish(None, exc)
            return
        if not inspect.isawaitable(result):
            self._finish(result, None)
            return
        self._task = task = asyncio.ensure_future(result)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:  # on the loop
        if task.cancelled():
            self._finish(None, concurrent.futures.CancelledError())
        elif (error := task.exception()) is not None:
            self._finish(None, error)
        else:
            self._finish(task.result(), None)

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._done = True
        self._finished.release()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the outcome; ``True`` once it is known."""
        if self._finished.acquire(timeout=timeout):
            self._finished.release()  # known for good: later waits return at once
            return True
        return False

    def outcome(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> bool:
        """From any thread: cancel the call (its task, or the call before it
        starts); ``False`` if it had finished."""
        if self._done:
            return False
        self._cancelled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self._cancel_task)
        return True

    def _cancel_task(self) -> None:  # on the loop
        if self._task is not None:
            self._task.cancel()


class _Running(set["_Crossing"]):
    """The calls of an :class:`OnLoop` under way; once ``stopped``, no more
    begin (changed under the bridge's lock)."""

    stopped = False


class OnLoop:
    """A user's callable, called from our threads, run on the loop."""

    def __init__(self, bridge: Bridge, fn: Callable[..., Any]) -> None:
        self._bridge = bridge
        self.fn = fn
        self._running = _Running()

    def __call__(self, *args: Any) -> Any:
        return self._bridge.call(self.fn, *args, running=self._running)

    def cancel(self) -> int:
        """Cancel the calls still running; returns how many."""
        return self._bridge.cancel(self._running)

    def stop(self) -> int:
        """Cancel the calls still running, and every later one before it
        starts; returns how many were running."""
        with self._bridge._lock:  # a call begins (or not) wholly before or after
            self._running.stopped = True
        return self.cancel()

    def runs(self, task: asyncio.Future[Any] | None) -> bool:
        """(On the loop.) Whether ``task`` is one of the calls under way."""
        with self._bridge._lock:
            calls = list(self._running)
        return task is not None and any(crossing.task is task for crossing in calls)

    def __repr__(self) -> str:
        return f"<on the loop: {self.fn!r}>"


def _settle_like(
    settle: Callable[[Any, BaseException | None], None],
    future: concurrent.futures.Future[Any],
) -> None:
    if future.cancelled():
        settle(None, asyncio.CancelledError())
    elif (error := future.exception()) is not None:
        settle(None, error)
    else:
        settle(future.result(), None)


def _log_failure(fn: object, task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("listener %r raised", fn, exc_info=task.exception())
