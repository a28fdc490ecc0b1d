"""Client states, gap notices, and the thread that runs user listeners."""

from __future__ import annotations

import enum
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ClientState", "Gap", "Notifier"]

logger = logging.getLogger(__name__)


class ClientState(enum.Enum):
    """Where a client stands with ZooKeeper.

    ``CONNECTED``: a session is live and the client is registered.
    ``SUSPENDED``: the connection dropped; the session may still be alive and
    nothing is lost yet. ``LOST``: the session expired; the client's ephemeral
    registration is gone and it is registering again on a new session.
    ``CLOSED``: ``close()`` was called.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    SUSPENDED = "suspended"
    LOST = "lost"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages on ``topics`` may have been missed between ``since`` and ``until``.

    Sent to gap listeners after the client re-registered on a new session
    (``reason="session expired"``), found that the cleaner had started to
    delete its queues while it was away, or had deleted them (the notice a
    purge of durable subscriptions leaves; ``reason="backlog purged"``), or
    when a subscription reached the place in its queue where publishers
    stopped writing because it was full (``reason="backlog full"``;
    ``missed`` then counts the messages not written), or found a
    subscription node or queue node of its own deleted or changed by
    another client and wrote it again (the reason says which, ending in
    "by another client").
    ``since`` is one session timeout before the connection dropped (or
    before the session was last known alive, if a reply said it had ended):
    the server may end a session a little before the client's own server
    lets it notice, and publishers on other servers see the end first.
    ``until`` is when the client was registered again. A purge found by a
    client starting (its id back after an absence) has ``since`` 0: when
    it went away, and how old its unread backlog was, is not known then.
    After an eviction
    (``reason="backlog full: evicted"``) ``since`` is when the queue was
    found full, and the messages still queued then, published earlier and
    not delivered, went with the queue too (``missed`` is ``None``: nobody
    counted them). Times are wall-clock
    seconds since the epoch. A cache fed by invalidations should drop what
    it holds for these topics.
    """

    topics: frozenset[str]
    since: float
    until: float
    reason: str
    missed: int | None = None


class Notifier:
    """Runs listener callbacks, in order, on one thread of ours.

    A raising listener is logged and the others still run.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def emit(self, listeners: list[Callable[..., Any]], *args: Any) -> None:
        for listener in listeners:
            self._queue.put((listener, args))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                logger.exception("listener %r raised", fn)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
