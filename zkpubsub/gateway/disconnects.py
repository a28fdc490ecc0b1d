"""Long polls whose HTTP client has gone away, or whose gateway is shutting
down: what they would take then goes to the next consumer, not to nobody.

A server does not cancel a route that is still waiting when its client
disconnects (only a streaming response notices, at its next write), so a
waiting pull or reserve watches the connection itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from .context import state_of

__all__ = ["client_gone", "unless_gone"]

T = TypeVar("T")


@contextlib.asynccontextmanager
async def client_gone(
    request: Request, wake: Callable[[], None] | None = None
) -> AsyncIterator[asyncio.Event]:
    """An event set (and ``wake()`` called) once the client of ``request``,
    whose body was read already, disconnects, or the gateway begins to shut
    down; watched while the block runs."""
    gone = asyncio.Event()

    async def disconnect() -> None:
        with contextlib.suppress(Exception):  # a connection that fails is gone too
            while (await request.receive())["type"] != "http.disconnect":
                pass

    async def watch() -> None:
        ends = [
            asyncio.ensure_future(disconnect()),
            asyncio.ensure_future(state_of(request).closing.wait()),
        ]
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for end in ends:
                end.cancel()
        gone.set()
        if wake is not None:
            wake()

    watcher = asyncio.ensure_future(watch())
    try:
        yield gone
    finally:
        watcher.cancel()
        # waited for without taking a cancel of this task for its own
        await asyncio.wait({watcher})


async def unless_gone(gone: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s outcome; ``None`` if ``gone`` was set first and ``work``,
    cancelled then, ended without one (what it returned all the same, it
    returns: the caller gives that back)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request cancelled: the work with it
        task.cancel()
        raise
    finally:
        waiter.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait({task})  # a cancel of this task is not taken for the work's
    if task.cancelled():
        return None
    return task.result()
