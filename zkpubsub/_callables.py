"""Checks on the callables users hand in: handlers run on threads of ours,
so an ``async def`` handler (which only makes a coroutine when called) is
refused up front, and a coroutine returned anyway counts as a failure."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["check_callable", "refuse_awaitable"]

_ASYNC_HINT = (
    "it would only create a coroutine that nobody awaits; "
    "use zkpubsub.aio for async handlers, or a plain function"
)


def check_callable(fn: object, what: str) -> None:
    """``TypeError`` unless ``fn`` is a plain (not ``async``) callable."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__name__}")
    call = getattr(fn, "__call__", None)  # noqa: B004 - the method itself is inspected
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call):
        raise TypeError(f"{what} {fn!r} is an async function: {_ASYNC_HINT}")


def refuse_awaitable(result: Any, what: str) -> None:
    """A handler returned an awaitable (a coroutine made by a wrapper of an
    ``async`` function): close it and raise ``TypeError``."""
    if result is None:  # most handlers return nothing: no need to ask
        return
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TypeError(f"{what} returned {type(result).__name__}: {_ASYNC_HINT}")
