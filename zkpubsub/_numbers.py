"""Checks on numbers handed in by users or read from ZooKeeper (internal,
pure): a bool is an ``int`` to Python, but never a count or a number of
seconds here."""

from __future__ import annotations

import math
from typing import TypeGuard

__all__ = ["is_finite", "is_int", "is_real"]


def is_int(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[float]:
    """An ``int`` or ``float`` that is not a bool (infinities and NaN too)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: object) -> TypeGuard[float]:
    """A finite ``int`` or ``float`` (not a bool, an infinity or NaN)."""
    return is_real(value) and math.isfinite(value)
