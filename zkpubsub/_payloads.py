"""The payloads a call of several takes (``publish_many``, ``put_many``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["payload_list"]


def payload_list(payloads: Iterable[Any], what: str) -> list[Any]:
    """``payloads`` as a list: ``TypeError`` for a ``str`` or bytes (one
    payload, which taken as several would send each character or byte),
    ``ValueError`` for none."""
    if isinstance(payloads, (str, bytes, bytearray, memoryview)):
        raise TypeError(
            f"{what} takes several payloads (a list of them), not one {type(payloads).__name__}"
        )
    items = list(payloads)
    if not items:
        raise ValueError(f"{what} needs at least one payload")
    return items
