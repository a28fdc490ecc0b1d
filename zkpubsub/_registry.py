"""The open subscriptions of one client, by topic (internal).

The session registers them again after a session expiry and guards them;
the client adds and removes them. A subscription owns its registration:
the registry only knows which ones are open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from .backlog import Backlog
from .errors import AlreadySubscribed

__all__ = ["Registered", "SubscriptionRegistry"]


class Registered(Protocol):
    """What the session needs of an open subscription."""

    @property
    def topic(self) -> str: ...

    @property
    def durable(self) -> bool: ...

    @property
    def bound(self) -> Backlog: ...

    def restored(self) -> None:
        """Registered again on a new session: read the queue again."""

    def evict(self) -> None:
        """End it: its queue filled up under ``evict`` (deregister, delete
        the queue, without waiting for a handler)."""


class SubscriptionRegistry:
    """The open subscriptions of one client, by topic. Its ``lock`` orders
    registrations (a subscribe and a re-registration never interleave) and
    is held while they wait for ZooKeeper; what it holds is read and changed
    under a lock of its own, never held across a request, so that reading it
    (a metrics scrape, the session's supervisor) never waits for a server."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._state = threading.Lock()
        self._subs: dict[str, Registered] = {}
        # closed subscriptions whose ending requests found no server: topic
        # -> whether its queue goes too (the session finishes them once
        # connected again)
        self._unfinished: dict[str, bool] = {}
        # called once a subscription is registered (the session guards it)
        self.on_registered: Callable[[Registered], None] | None = None
        # called when an end is deferred (the session then tries it again)
        self.on_deferred: Callable[[], None] | None = None

    def registered(self, sub: Registered) -> None:
        with self._state:  # registered again: a deferred end of the topic is void
            self._unfinished.pop(sub.topic, None)
        hook = self.on_registered
        if hook is not None:
            hook(sub)

    def add(self, sub: Registered) -> None:
        with self._state:
            if sub.topic in self._subs:
                raise AlreadySubscribed(sub.topic)
            self._subs[sub.topic] = sub

    def discard(self, sub: Registered) -> None:
        with self._state:
            if self._subs.get(sub.topic) is sub:
                del self._subs[sub.topic]

    def defer(self, topic: str, drop_queue: bool) -> None:
        """Deregister ``topic`` (and delete its queue if ``drop_queue``) once
        connected again: a closing subscription could not."""
        with self._state:
            self._unfinished[topic] = self._unfinished.get(topic, False) or drop_queue
        hook = self.on_deferred
        if hook is not None:
            hook()

    def drop_pending(self, topic: str) -> bool:
        """Whether an unsubscribe of ``topic`` still has its queue to delete."""
        with self._state:
            return self._unfinished.get(topic, False)

    def pending_ends(self) -> dict[str, bool]:
        """The deferred ends (topic -> ``drop_queue``); each stays until
        :meth:`ended` (so :meth:`unfinished_topics` names it while it is tried)."""
        with self._state:
            return dict(self._unfinished)

    def ended(self, topic: str, drop_queue: bool) -> None:
        """The deferred end of ``topic`` was done: forget it, unless an end
        that also deletes its queue was deferred meanwhile."""
        with self._state:
            if drop_queue or not self._unfinished.get(topic, False):
                self._unfinished.pop(topic, None)

    def has_unfinished(self) -> bool:
        """Whether any subscription's end is deferred."""
        with self._state:
            return bool(self._unfinished)

    def unfinished_topics(self, *, queues_only: bool = False) -> list[str]:
        """The topics with a deferred end (``queues_only``: those whose
        queue is to be deleted, which outlive the session)."""
        with self._state:
            return sorted(t for t, drop in self._unfinished.items() if drop or not queues_only)

    def get(self, topic: str) -> Registered | None:
        with self._state:
            return self._subs.get(topic)

    def all(self) -> list[Registered]:
        with self._state:
            return list(self._subs.values())

    def topics(self) -> list[str]:
        with self._state:
            return list(self._subs)
