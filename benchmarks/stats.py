"""Small statistics helpers (no numpy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of already sorted values, nearest rank."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize_ms(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, p50, p90, p99, p99.9 and max of durations, in milliseconds."""
    ordered = sorted(values_s)
    if not ordered:
        return {
            "count": 0,
            "mean": None,
            "p50": None,
            "p90": None,
            "p99": None,
            "p999": None,
            "max": None,
        }

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000.0, 3)

    return {
        "count": len(ordered),
        "mean": ms(sum(ordered) / len(ordered)),
        "p50": ms(percentile(ordered, 50)),
        "p90": ms(percentile(ordered, 90)),
        "p99": ms(percentile(ordered, 99)),
        "p999": ms(percentile(ordered, 99.9)),
        "max": ms(ordered[-1]),
    }


def rate(count: int, seconds: float) -> float | None:
    if seconds <= 0 or count <= 0:
        return None
    return round(count / seconds, 1)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def stable(values: Sequence[float], window: int, tolerance: float) -> bool:
    """Whether the last ``window`` values lie within ``tolerance`` of their mean."""
    if len(values) < window:
        return False
    tail = values[-window:]
    mean = sum(tail) / window
    if mean <= 0:
        return False
    return all(abs(v - mean) <= tolerance * mean for v in tail)


def spread(values: Sequence[float | None], digits: int = 2) -> dict[str, Any] | None:
    """Median, smallest and largest of repeated measurements (``None``s,
    from cells that could not be measured, are left out), and the values."""
    got = sorted(v for v in values if v is not None)
    if not got:
        return None
    mid = len(got) // 2
    median = got[mid] if len(got) % 2 else (got[mid - 1] + got[mid]) / 2
    return {
        "median": round(median, digits),
        "min": round(got[0], digits),
        "max": round(got[-1], digits),
        "n": len(got),
        "values": [round(v, digits) for v in values if v is not None],
    }


def median_of(values: Sequence[float | None]) -> float | None:
    s = spread(values, digits=6)
    return None if s is None else float(s["median"])


def rotations(keys: Sequence[str], repeats: int, offset: int = 0) -> list[tuple[int, int, str]]:
    """``(repeat, position, key)`` in the order to run them: every repeat
    runs every key once, each repeat starting further along the list (and
    every other one going backwards), so that no variant always runs first,
    last, or after the same neighbour."""
    order: list[tuple[int, int, str]] = []
    k = len(keys)
    if not k:
        return order
    step = max(1, -(-k // max(1, repeats)))
    for r in range(repeats):
        shift = (offset + r * step) % k
        turn = list(keys[shift:]) + list(keys[:shift])
        if r % 2:
            turn.reverse()
        order += [(r, pos, key) for pos, key in enumerate(turn)]
    return order
