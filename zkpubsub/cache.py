"""A local cache kept correct across the instances of a service by
invalidations on a topic — the main use of zkpubsub.

Guarantees:

* *No stale fill.* A value loaded while its key was invalidated is handed
  to the caller that loaded it but not kept: a fill that started before an
  invalidation (or a gap) never overwrites what came after it. Each key has
  a generation while a fill of it is under way; the fill is stored only if
  the generation (and the cache's epoch, bumped by every clear) is still
  the one it started with.
* *Read your writes.* ``invalidate(key)`` drops this instance's copy before
  it publishes, so once it returns this instance loads afresh; every other
  instance drops its copy when the message reaches it (publish order is
  one order for all subscribers).
* *Gaps clear.* When the client may have missed invalidations (its session
  expired, its queue was purged) the whole cache is cleared, fills under
  way included.

Keys travel as message payloads: use ``str`` keys (``int`` and ``bytes``
work with the default serializer too). Optional ``ttl`` (seconds) and
``max_size`` (least recently used first out) bound what is kept.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .client import Client
from .message import Message, PublishReceipt
from .state import Gap

__all__ = ["CacheStats", "InvalidatingCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheStats:
    """``stale_prevented``: fills not kept because their key was invalidated
    (or the cache cleared) while they loaded."""

    size: int
    hits: int
    misses: int
    invalidations: int
    stale_prevented: int
    clears: int
    expired: int
    evicted: int


class InvalidatingCache(Generic[K, V]):
    """Values from ``loader`` (the source of truth), invalidated through
    ``topic``. Made on a :class:`~zkpubsub.Client`, which it subscribes to
    the topic (one cache per topic per client)."""

    def __init__(
        self,
        client: Client,
        topic: str,
        loader: Callable[[K], V],
        *,
        ttl: float | None = None,
        max_size: int | None = None,
    ) -> None:
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size must be an int >= 1, not {max_size!r}")
        self._client = client
        self._topic = topic
        self._loader = loader
        self._ttl = ttl
        self._max_size = max_size
        self._lock = threading.Lock()
        self._values: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._generations: dict[K, int] = {}  # keys being loaded
        self._loading: dict[K, int] = {}  # fills under way per key
        self._epoch = 0
        self._counts = dict.fromkeys(
            ("hits", "misses", "invalidations", "stale_prevented", "clears", "expired", "evicted"),
            0,
        )
        client.add_gap_listener(self._on_gap)
        self._subscription = client.subscribe(topic, self._on_message)

    # -- reading -----------------------------------------------------------------------

    def get(self, key: K) -> V:
        """The cached value of ``key``, or a fresh one from the loader."""
        now = time.monotonic()
        with self._lock:
            held = self._values.get(key)
            if held is not None:
                value, stored = held
                if self._ttl is None or now - stored < self._ttl:
                    self._values.move_to_end(key)
                    self._counts["hits"] += 1
                    return value
                del self._values[key]
                self._counts["expired"] += 1
            self._counts["misses"] += 1
            token = (self._epoch, self._generations.setdefault(key, 0))
            self._loading[key] = self._loading.get(key, 0) + 1
        try:
            value = self._loader(key)
        except BaseException:
            with self._lock:
                self._loaded(key)
            raise
        with self._lock:
            # Checked and stored at once: an invalidation cannot slip between.
            fresh = token == (self._epoch, self._generations.get(key))
            self._loaded(key)
            if fresh:
                self._store(key, value)
            else:
                self._counts["stale_prevented"] += 1
        return value

    def _loaded(self, key: K) -> None:  # lock held: one fill of ``key`` ended
        self._loading[key] -= 1
        if not self._loading[key]:
            del self._loading[key]
            del self._generations[key]

    def _store(self, key: K, value: V) -> None:  # lock held
        self._values[key] = (value, time.monotonic())
        self._values.move_to_end(key)
        while self._max_size is not None and len(self._values) > self._max_size:
            self._values.popitem(last=False)
            self._counts["evicted"] += 1

    # -- invalidating -----------------------------------------------------------------------

    def invalidate(self, key: K, *, timeout: float | None = None) -> PublishReceipt:
        """Drop ``key`` here, then tell every other instance (call it after
        the source of truth changed). Raises what ``publish`` raises; this
        instance's copy is gone either way."""
        self.invalidate_local(key)
        return self._client.publish(self._topic, key, timeout=timeout)

    def invalidate_local(self, key: K) -> None:
        """Drop ``key`` in this instance only (and any fill of it under way)."""
        with self._lock:
            self._values.pop(key, None)
            if key in self._generations:
                self._generations[key] += 1
            self._counts["invalidations"] += 1

    def clear(self) -> None:
        """Drop everything here, fills under way included."""
        with self._lock:
            self._values.clear()
            self._epoch += 1
            self._counts["clears"] += 1

    def _on_message(self, message: Message) -> None:
        if message.publisher_id == self._client.client_id:
            return  # dropped before it was published
        key: Any = message.payload
        self.invalidate_local(key)

    def _on_gap(self, gap: Gap) -> None:
        if self._topic in gap.topics:
            self.clear()

    # -- the rest ---------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._values

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(size=len(self._values), **self._counts)

    def close(self) -> None:
        """Stop listening (the client stays open). Idempotent."""
        self._client.remove_gap_listener(self._on_gap)
        self._subscription.close()
        self.clear()

    def __enter__(self) -> InvalidatingCache[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
