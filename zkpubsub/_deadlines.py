"""Deadlines: every wait in zkpubsub ends by one (internal, pure).

A deadline is a ``time.monotonic()`` instant, or ``None`` for never.
"""

from __future__ import annotations

import math
import time

__all__ = ["check_timeout", "deadline_after", "earliest", "expired", "remaining"]


def deadline_after(timeout: float | None) -> float | None:
    """A monotonic deadline ``timeout`` seconds from now (``None``: never).
    ``ValueError`` for a negative timeout, and for an infinite or NaN one
    (``None`` is the way to wait without end)."""
    if timeout is None:
        return None
    if timeout < 0 or not math.isfinite(timeout):
        raise ValueError(f"timeout must be >= 0 and finite (None: no limit), not {timeout}")
    return time.monotonic() + timeout


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is one :func:`deadline_after` takes (``ValueError``
    otherwise)."""
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
