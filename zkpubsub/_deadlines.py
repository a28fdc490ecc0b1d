"""Deadlines: every wait in zkpubsub ends by one (internal, pure).

A deadline is a ``time.monotonic()`` instant, or ``None`` for never.
"""

from __future__ import annotations

import time
from typing import Final

from ._numbers import is_real

__all__ = ["MAX_TIMEOUT", "check_timeout", "deadline_after", "earliest", "expired", "remaining"]

# The longest timeout taken, a year: far below what the waits under it take
# (Python's thread waits refuse about 9.2e9 seconds with OverflowError).
MAX_TIMEOUT: Final = 365 * 24 * 3600.0


def deadline_after(timeout: float | None) -> float | None:
    """A monotonic deadline ``timeout`` seconds from now (``None``: never).
    ``ValueError`` for a negative timeout, an infinite or NaN one, and one
    over :data:`MAX_TIMEOUT` (``None`` is the way to wait without end);
    ``TypeError`` for what is no number (a bool included)."""
    if timeout is None:
        return None
    if not is_real(timeout):  # a bool is no number of seconds either
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if not 0 <= timeout <= MAX_TIMEOUT:  # NaN fails too
        raise ValueError(
            f"timeout must be from 0 to {MAX_TIMEOUT:.0f} seconds (a year; None: no limit), "
            f"not {timeout}"
        )
    return time.monotonic() + timeout


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is one :func:`deadline_after` takes (``ValueError``
    or ``TypeError`` otherwise, as it raises)."""
    deadline_after(timeout)
    return timeout


def earliest(*deadlines: float | None) -> float | None:
    """The first of ``deadlines`` to come (``None`` if none has one)."""
    instants = [d for d in deadlines if d is not None]
    return min(instants) if instants else None


def remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
