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
    """The open subscriptions of one client, by topic. Its lock also orders
    registrations: a subscribe and a re-registration never interleave."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._subs: dict[str, Registered] = {}
        # called once a subscription is registered (the session guards it)
        self.on_registered: Callable[[Registered], None] | None = None

    def registered(self, sub: Registered) -> None:
        hook = self.on_registered
        if hook is not None:
            hook(sub)

    def add(self, sub: Registered) -> None:
        with self.lock:
            if sub.topic in self._subs:
                raise AlreadySubscribed(sub.topic)
            self._subs[sub.topic] = sub

    def discard(self, sub: Registered) -> None:
        with self.lock:
            if self._subs.get(sub.topic) is sub:
                del self._subs[sub.topic]

    def get(self, topic: str) -> Registered | None:
        with self.lock:
            return self._subs.get(topic)

    def all(self) -> list[Registered]:
        with self.lock:
            return list(self._subs.values())

    def topics(self) -> list[str]:
        with self.lock:
            return list(self._subs)
