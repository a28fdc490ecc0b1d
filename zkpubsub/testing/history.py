"""What a fault-injection run did: every publish and every delivery.

A :class:`Recorder` is filled while the run goes on (from any thread) and
hands out an immutable :class:`History` for :func:`~zkpubsub.testing.checker.check`.

Each published message is known by its workload key ``(publisher, seq)``:
the publisher's name and its own sequence number, carried in the payload,
so a delivery can be matched to its publish even when the publish's outcome
(and therefore zkpubsub's message id) is unknown.

Outcome of a publish:

``ok``
    ``publish()`` returned a receipt: ZooKeeper confirmed the write.
``failed``
    ``publish()`` raised one of the library's own refusals that come before
    anything is sent: a payload too large, one that cannot be serialized,
    no subscribers when some were required. The checker verifies against
    the servers' logs that nothing was written.
``unknown``
    Anything else: a timeout, a lost connection, a closed client, an error
    from the server, any other exception (a ``ValueError`` from deep inside
    a client library proves nothing). The message may or may not have been
    written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import NoSubscribers, PayloadTooLarge, SerializationError

__all__ = [
    "DeliveryRecord",
    "GapRecord",
    "History",
    "Key",
    "Outcome",
    "PublishRecord",
    "Recorder",
    "SubscriberRecord",
    "classify",
    "describe_error",
    "key_of",
    "payload_for",
]


Outcome = Literal["ok", "failed", "unknown"]
Key = tuple[str, int]  # (publisher, seq)

# The library's refusals before anything is sent (the checker verifies it).
_CERTAIN_FAILURES = (PayloadTooLarge, SerializationError, NoSubscribers)


def classify(error: BaseException | None) -> Outcome:
    """The outcome of a publish that returned (``None``) or raised ``error``."""
    if error is None:
        return "ok"
    if isinstance(error, _CERTAIN_FAILURES):
        return "failed"
    return "unknown"


def describe_error(error: BaseException | None) -> str | None:
    """How a record names an error: ``"Type: message"``."""
    return None if error is None else f"{type(error).__name__}: {error}"


def payload_for(publisher: str, seq: int) -> dict[str, Any]:
    """The payload the workload publishes for key ``(publisher, seq)``."""
    return {"p": publisher, "s": seq}


def key_of(payload: Any) -> Key | None:
    """The workload key carried by a delivered payload, ``None`` if foreign."""
    if isinstance(payload, dict):
        pub, seq = payload.get("p"), payload.get("s")
        if isinstance(pub, str) and isinstance(seq, int):
            return pub, seq
    return None


@dataclass(frozen=True, slots=True)
class PublishRecord:
    """One call to ``publish()``. Times are wall-clock seconds."""

    publisher: str
    seq: int
    topic: str
    started: float
    ended: float
    outcome: Outcome
    message_ids: tuple[str, ...] = ()
    reached: int | None = None  # subscribers in the receipt
    error: str | None = None

    @property
    def key(self) -> Key:
        return (self.publisher, self.seq)


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One call of a subscriber's handler. ``key`` is ``None`` for a
    payload the workload did not write."""

    subscriber: str
    topic: str
    key: Key | None
    message_id: str
    at: float


@dataclass(frozen=True, slots=True)
class GapRecord:
    """A gap notice a subscriber's client received (see ``zkpubsub.Gap``):
    the topics it named (empty: not recorded) and, for a full queue, how
    many messages it said were missed."""

    since: float
    until: float
    reason: str
    topics: frozenset[str] = frozenset()
    missed: int | None = None


@dataclass(frozen=True, slots=True)
class SubscriberRecord:
    """One subscription: when ``subscribe()`` returned, when it ended
    (``None``: alive until the run's end) and the gaps it was told of."""

    name: str
    topic: str
    subscribed_at: float
    ended_at: float | None = None
    gaps: tuple[GapRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class History:
    publishes: tuple[PublishRecord, ...]
    deliveries: tuple[DeliveryRecord, ...]
    subscribers: tuple[SubscriberRecord, ...]
    notes: dict[str, int] = field(default_factory=dict)


class Recorder:
    """Collects a run's history; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._publishes: list[PublishRecord] = []
        self._deliveries: list[DeliveryRecord] = []
        self._subscribers: dict[str, SubscriberRecord] = {}
        self._notes: dict[str, int] = {}

    # -- publishing ---------------------------------------------------------------

    def published(
        self,
        publisher: str,
        seq: int,
        topic: str,
        started: float,
        *,
        message_ids: tuple[str, ...] = (),
        reached: int | None = None,
        error: BaseException | None = None,
    ) -> PublishRecord:
        record = PublishRecord(
            publisher=publisher,
            seq=seq,
            topic=topic,
            started=started,
            ended=time.time(),
            outcome=classify(error),
            message_ids=message_ids,
            reached=reached,
            error=describe_error(error),
        )
        with self._lock:
            self._publishes.append(record)
        return record

    # -- receiving ----------------------------------------------------------------

    def subscribed(self, name: str, topic: str, at: float | None = None) -> None:
        with self._lock:
            self._subscribers[name] = SubscriberRecord(name, topic, at or time.time())

    def ended(self, name: str, at: float | None = None) -> None:
        """The subscriber stopped (closed, crashed, killed) before the end."""
        with self._lock:
            rec = self._subscribers[name]
            if rec.ended_at is None:
                self._subscribers[name] = SubscriberRecord(
                    rec.name, rec.topic, rec.subscribed_at, at or time.time(), rec.gaps
                )

    def gap(
        self,
        name: str,
        since: float,
        until: float,
        reason: str,
        *,
        topics: frozenset[str] = frozenset(),
        missed: int | None = None,
    ) -> None:
        with self._lock:
            rec = self._subscribers[name]
            gaps = (*rec.gaps, GapRecord(since, until, reason, topics, missed))
            self._subscribers[name] = SubscriberRecord(
                rec.name, rec.topic, rec.subscribed_at, rec.ended_at, gaps
            )

    def delivered(
        self, subscriber: str, topic: str, payload: Any, message_id: str, at: float | None = None
    ) -> None:
        record = DeliveryRecord(subscriber, topic, key_of(payload), message_id, at or time.time())
        with self._lock:
            self._deliveries.append(record)

    def add_deliveries(self, records: Iterable[DeliveryRecord]) -> None:
        with self._lock:
            self._deliveries.extend(records)

    def note(self, what: str, n: int = 1) -> None:
        """Count something worth reporting (sessions lost, reconnects…)."""
        with self._lock:
            self._notes[what] = self._notes.get(what, 0) + n

    # -- reading --------------------------------------------------------------------

    def history(self) -> History:
        with self._lock:
            return History(
                tuple(self._publishes),
                tuple(self._deliveries),
                tuple(self._subscribers.values()),
                dict(self._notes),
            )

    def delivered_count(self) -> int:
        with self._lock:
            return len(self._deliveries)
