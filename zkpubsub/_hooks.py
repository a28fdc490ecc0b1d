"""Observers of what a client does, for metrics (internal).

The parts of a client report a few events here as they happen: a publish
settled (with its latency), a message handled (with the time it was
published), a reservation found lost. With no observer attached a report
costs one empty-list check. An observer runs on the thread that reports
(a lane, a dispatcher, a worker), so it must be quick and must not block;
whatever it raises is logged and swallowed.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["Hooks"]

logger = logging.getLogger(__name__)


class Hooks:
    """The observers of one client, and the events they hear. An observer
    is any object; each event calls its method of the same name, if it has
    one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._observers: tuple[object, ...] = ()

    def add(self, observer: object) -> None:
        with self._lock:
            self._observers = (*self._observers, observer)

    def remove(self, observer: object) -> None:
        with self._lock:
            self._observers = tuple(o for o in self._observers if o is not observer)

    def _emit(self, event: str, *args: object) -> None:
        for observer in self._observers:
            method = getattr(observer, event, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception:
                logger.exception("observer %r failed on %s", observer, event)

    def published(self, topic: str, messages: int, seconds: float, outcome: str) -> None:
        """A publish settled: ``outcome`` is ``"ok"`` or the error's class name."""
        if self._observers:
            self._emit("published", topic, messages, seconds, outcome)

    def handled(self, topic: str, published_at: float, handled_at: float) -> None:
        """A subscriber's handler returned (or ``get`` handed a message out);
        times are wall-clock seconds (the publisher's clock for the first)."""
        if self._observers:
            self._emit("handled", topic, published_at, handled_at)

    def errored(self, topic: str) -> None:
        """A subscription reported an error (a handler's attempt that
        failed, or a node it could not decode) to its ``on_error``."""
        if self._observers:
            self._emit("errored", topic)

    def dropped(self, topic: str) -> None:
        """A subscription gave a message up after its last attempt."""
        if self._observers:
            self._emit("dropped", topic)

    def reservation_lost(self, queue: str, items: int) -> None:
        """An ack or release found the reservation of ``items`` items gone."""
        if self._observers:
            self._emit("reservation_lost", queue, items)
