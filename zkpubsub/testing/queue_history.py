"""What a work-queue fault run did: every put and every reservation.

A :class:`QueueRecorder` is filled while the run goes on (from any thread,
and from the files of worker processes) and hands out an immutable
:class:`QueueHistory` for :func:`~zkpubsub.testing.queue_checker.check_queue`.

Each item is known by its workload key ``(producer, seq)``, carried in the
payload (as for publishes, see :mod:`~zkpubsub.testing.history`), so a
reservation can be matched to its put even when the put's outcome is
unknown.

A *hold* is one reservation of one item by one worker, from ``reserve()``
returning it to its end:

``acked``
    ``ack()`` returned: ZooKeeper confirmed the item is done.
``released``
    ``release()`` returned: the item was given back (or buried).
``lost``
    ``ack()`` or ``release()`` raised :class:`~zkpubsub.ReservationLost`:
    the worker no longer held it, and nothing was changed.
``unknown``
    The ack's outcome is not known: the worker died while it was in flight,
    or it raised another error (a timeout, a closed client).
``open``
    Nothing was tried: the worker died holding it, or the run ended first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from ..errors import ReservationLost
from .history import Key, Outcome, classify, describe_error

__all__ = [
    "Finish",
    "HoldRecord",
    "PutRecord",
    "QueueHistory",
    "QueueRecorder",
    "finish_of",
    "hold_from_doc",
    "hold_to_doc",
]


Finish = Literal["acked", "released", "lost", "unknown", "open"]


def finish_of(action: Literal["ack", "release"], error: BaseException | None) -> Finish:
    """How a hold ended after ``action`` returned (``None``) or raised."""
    if error is None:
        return "acked" if action == "ack" else "released"
    if isinstance(error, ReservationLost):
        return "lost"
    return "unknown"


@dataclass(frozen=True, slots=True)
class PutRecord:
    """One call to ``put()``. Times are wall-clock seconds."""

    producer: str
    seq: int
    started: float
    ended: float
    outcome: Outcome
    item_id: str | None = None
    error: str | None = None

    @property
    def key(self) -> Key:
        return (self.producer, self.seq)


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """One reservation of one item by one worker (see the module's text)."""

    hold: str
    worker: str
    item_id: str
    key: Key | None
    attempts: int
    reserved_at: float
    handled_at: float | None = None
    finished_at: float | None = None
    finish: Finish = "open"
    error: str | None = None


@dataclass(frozen=True, slots=True)
class QueueHistory:
    puts: tuple[PutRecord, ...]
    holds: tuple[HoldRecord, ...]
    notes: dict[str, int] = field(default_factory=dict)


class QueueRecorder:
    """Collects a queue run's history; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._puts: list[PutRecord] = []
        self._holds: dict[str, HoldRecord] = {}
        self._notes: dict[str, int] = {}
        self._count = 0

    def put(
        self,
        producer: str,
        seq: int,
        started: float,
        *,
        item_id: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        record = PutRecord(
            producer,
            seq,
            started,
            time.time(),
            classify(error),
            item_id,
            describe_error(error),
        )
        with self._lock:
            self._puts.append(record)

    def reserved(
        self, worker: str, item_id: str, key: Key | None, attempts: int, at: float | None = None
    ) -> str:
        """Record a reservation; returns its hold id for the later calls."""
        with self._lock:
            self._count += 1
            hold = f"{worker}#{self._count}"
            self._holds[hold] = HoldRecord(
                hold, worker, item_id, key, attempts, time.time() if at is None else at
            )
        return hold

    def handled(self, hold: str, at: float | None = None) -> None:
        with self._lock:
            record = self._holds[hold]
            self._holds[hold] = replace(record, handled_at=time.time() if at is None else at)

    def finished(
        self, hold: str, finish: Finish, error: str | None = None, at: float | None = None
    ) -> None:
        with self._lock:
            record = self._holds[hold]
            self._holds[hold] = replace(
                record,
                finish=finish,
                error=error,
                finished_at=time.time() if at is None else at,
            )

    def add_holds(self, records: Iterable[HoldRecord]) -> None:
        """Holds recorded elsewhere (a worker process); a later record of
        the same hold id replaces an earlier one."""
        with self._lock:
            for record in records:
                self._holds[record.hold] = record

    def note(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._notes[what] = self._notes.get(what, 0) + n

    def history(self) -> QueueHistory:
        with self._lock:
            return QueueHistory(tuple(self._puts), tuple(self._holds.values()), dict(self._notes))


def hold_to_doc(record: HoldRecord) -> dict[str, Any]:
    """A hold as a JSON-able dict (worker processes write these)."""
    return asdict(record)


def hold_from_doc(doc: dict[str, Any]) -> HoldRecord:
    key = doc.get("key")
    return HoldRecord(**{**doc, "key": (str(key[0]), int(key[1])) if key else None})
