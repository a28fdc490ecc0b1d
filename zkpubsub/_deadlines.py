"""Deadlines: every wait in zkpubsub ends by one (internal, pure).

A deadline is a ``time.monotonic()`` instant, or ``None`` for never.
"""

from __future__ import annotations

import time

__all__ = ["deadline_after", "expired", "remaining"]


def deadline_after(timeout: float | None) -> float | None:
    """A monotonic deadline ``timeout`` seconds from now (``None``: never)."""
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout}")
    return time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
