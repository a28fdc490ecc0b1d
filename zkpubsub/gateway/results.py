"""Ticket results read for a client that had left, kept for its next request.

A result is removed once read. A long poll whose client left (a client
timeout shorter than its ``wait``) may still read it: the read under way
runs on a thread and is not undone by the client's going. What it reads is
kept here, by credentials profile, queue and ticket, and the next request
for that ticket gets it (once), for :data:`KEEP_FOR` seconds; at most
:data:`KEEP_AT_MOST` are kept (the oldest go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["KEEP_AT_MOST", "KEEP_FOR", "Kept", "LeftResults"]

KEEP_FOR: Final = 600.0
KEEP_AT_MOST: Final = 100  # a result may be up to a message (about 1 MB)

Key = tuple[str | None, str, str]  # credentials profile, queue, ticket


@dataclass(frozen=True, slots=True)
class Kept:
    """A ticket's outcome: its result, or the reason it failed."""

    value: Any = None
    failed: str | None = None


class LeftResults:
    """Outcomes read for requests whose client had left (on the loop only)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[Key, tuple[float, Kept]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, key: Key, outcome: Kept) -> None:
        self._forget_old()
        self._kept[key] = (time.monotonic(), outcome)
        self._kept.move_to_end(key)
        while len(self._kept) > KEEP_AT_MOST:
            self._kept.popitem(last=False)

    def take(self, key: Key) -> Kept | None:
        """The outcome kept for ``key`` (then forgotten), or ``None``."""
        self._forget_old()
        kept = self._kept.pop(key, None)
        return None if kept is None else kept[1]

    def _forget_old(self) -> None:
        now = time.monotonic()
        while self._kept:
            at, _ = next(iter(self._kept.values()))
            if now - at < KEEP_FOR:
                return
            self._kept.popitem(last=False)
