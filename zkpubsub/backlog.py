"""How much a subscriber queue may hold, and the records that say so.

A subscriber queue ``messages/<id>/<topic>`` keeps its messages in
*segments* ``s<NNNNNNNNNN>`` below it; the queue node's data is a
:class:`QueueRecord` (JSON) naming the current segment and the queue's
bound. Publishers write into the current segment only, and every fan-out
transaction checks the queue node's data version, so a publisher whose idea
of the current segment is out of date writes nothing and reads the record
again. A publisher moves a queue to a fresh segment (one transaction: the
record with the next segment number, at the version it read, and the new
segment node) when the current one holds ``SEGMENT_NODES`` nodes or its
sequence counter passes ``ROLL_AT``: no listing of a segment grows past
about a quarter of ZooKeeper's 1 MiB buffer, and no counter comes near
2^31 - 1, where ZooKeeper 3.8 stops counting.

When a queue holds ``max_backlog`` nodes or ``max_backlog_bytes`` bytes,
publishers stop writing into it. With ``when_full="drop"`` (the default)
each publisher leaves one overflow marker ``o<guid>-<seq>`` in the queue,
whose data (:class:`OverflowMark`) counts the messages it skipped; the
subscriber reaches the marker in queue order and hears of the gap. With
``when_full="evict"`` the first publisher to find the queue full marks its
record ``full`` (at the version it read) and every publisher then skips it
without a marker; the subscription is ended: by its own client, whose
guard sees the record change (it deregisters, deletes the queue, and reports
a gap with ``reason="backlog full: evicted"``), or, if that client does not
act (a frozen process), by the leading cleaner at its next sweep, which
deregisters it and deletes the queue's segments, leaving the marked record
for the client to find when it wakes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, Literal

from ._numbers import is_int

__all__ = [
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_MAX_BACKLOG_BYTES",
    "EVICTED",
    "INLINE_BYTES",
    "INLINE_SEGMENT_NODES",
    "MAX_BYTES",
    "MAX_NODES",
    "ROLL_AT",
    "SEGMENT_NODES",
    "Backlog",
    "OverflowMark",
    "QueueRecord",
    "WhenFull",
]

WhenFull = Literal["drop", "evict"]

DEFAULT_MAX_BACKLOG: Final = 100_000
# The largest bounds (a Java int and long: clients in other languages read them)
MAX_NODES: Final = 2**31 - 1
MAX_BYTES: Final = 2**63 - 1
DEFAULT_MAX_BACKLOG_BYTES: Final = 256 * 1024 * 1024
# A segment holds about this many nodes before publishers move on: its
# listing (about 28 bytes a name) stays far below the 1 MiB buffer even
# when several publishers overshoot it for a second.
SEGMENT_NODES: Final = 10_000
# A segment whose sequence counter reached this moves on long before the
# counter saturates at 2^31 - 1 (16 million creations of margin).
ROLL_AT: Final = 2**31 - 2**24
RECORD_VERSION: Final = 2
# A subscriber's record asks publishers to write envelopes up to this size
# into the node's name (``inline``): its pump then reads the message from
# the watch event or the listing, without a read per node (two small
# messages packed together still fit). The names get long (about 1.33
# bytes a byte: up to about 720), so such a queue moves to a fresh segment
# every INLINE_SEGMENT_NODES nodes: a listing stays under 400 KiB.
INLINE_BYTES: Final = 512
INLINE_SEGMENT_NODES: Final = 512
# The reason of the gap told when a subscription is evicted.
EVICTED: Final = "backlog full: evicted"


@dataclass(frozen=True, slots=True)
class Backlog:
    """The bound of one subscription's queue: ``max_nodes`` message nodes
    (a node may carry a packed batch) and ``max_bytes`` bytes of node data,
    and what publishers do when either is reached."""

    max_nodes: int = DEFAULT_MAX_BACKLOG
    max_bytes: int = DEFAULT_MAX_BACKLOG_BYTES
    when_full: WhenFull = "drop"

    def __post_init__(self) -> None:
        for name, most in (("max_nodes", MAX_NODES), ("max_bytes", MAX_BYTES)):
            value = getattr(self, name)
            if not is_int(value) or not 1 <= value <= most:
                raise ValueError(f"{name} must be an int from 1 to {most}, not {value!r}")
        if self.when_full not in ("drop", "evict"):
            raise ValueError(f"when_full must be 'drop' or 'evict', not {self.when_full!r}")


# The fields of a queue record this version reads; others are kept as they
# were by every rewrite of the record (a newer client's, for one).
_RECORD_FIELDS: Final = frozenset(
    ("v", "segment", "max_nodes", "max_bytes", "when_full", "full", "inline")
)


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """The data of a subscriber queue node."""

    segment: int
    backlog: Backlog
    # set by the first publisher that found an ``evict`` queue full: the
    # subscription is to be ended (by its client, or the cleaner)
    full: bool = False
    # the largest envelope its subscriber reads from a node's name (0: none)
    inline: int = 0
    # fields this version does not know, kept when it rewrites the record,
    # and the bound fields it did not understand as written (kept as they
    # were by a publisher that moves the queue on: the subscriber's own)
    unknown: tuple[tuple[str, object], ...] = ()
    unread: tuple[tuple[str, object], ...] = ()

    def encode(self) -> bytes:
        doc: dict[str, object] = dict(self.unknown)
        doc.update(
            {
                "v": RECORD_VERSION,
                "segment": self.segment,
                "max_nodes": self.backlog.max_nodes,
                "max_bytes": self.backlog.max_bytes,
                "when_full": self.backlog.when_full,
            }
        )
        doc.update(self.unread)
        if self.full:
            doc["full"] = True
        if self.inline:
            doc["inline"] = self.inline
        return json.dumps(doc, separators=(",", ":")).encode()

    @property
    def evicting(self) -> bool:
        """Whether the subscription is to be evicted (``evict`` and full)."""
        return self.full and self.backlog.when_full == "evict"

    @classmethod
    def decode(cls, data: bytes) -> QueueRecord | None:
        """The record, or ``None`` for a queue made before segments (empty
        data, or no JSON object with a ``segment`` from 0 up): publishers
        move such a queue to segment 0. What else does not read is taken
        leniently, so that a record written by a newer or another client
        keeps its segment: a bound that is no integer reads as the default,
        one out of range as the nearest it takes (1 to ``MAX_NODES`` /
        ``MAX_BYTES``), a ``when_full`` not known here as ``drop``."""
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        segment = doc.get("segment")
        if not is_int(segment) or segment < 0:
            return None
        default = Backlog()
        when_full = doc.get("when_full")
        backlog = Backlog(
            _bound(doc.get("max_nodes"), MAX_NODES, default.max_nodes),
            _bound(doc.get("max_bytes"), MAX_BYTES, default.max_bytes),
            when_full if when_full in ("drop", "evict") else "drop",
        )
        inline = doc.get("inline", 0)
        unknown = tuple((k, v) for k, v in doc.items() if k not in _RECORD_FIELDS)
        read: dict[str, object] = {
            "max_nodes": backlog.max_nodes,
            "max_bytes": backlog.max_bytes,
            "when_full": backlog.when_full,
        }
        unread = tuple((k, doc[k]) for k, v in read.items() if k in doc and doc[k] != v)
        return cls(
            segment,
            backlog,
            doc.get("full", False) is True,
            max(0, inline) if is_int(inline) else 0,
            unknown,
            unread,
        )

    def moved(self, segment: int) -> QueueRecord:
        """This record naming ``segment`` (not marked full; the rest kept,
        the bound as it was written)."""
        return QueueRecord(
            segment, self.backlog, inline=self.inline, unknown=self.unknown, unread=self.unread
        )

    def next(self) -> QueueRecord:
        return self.moved(self.segment + 1)

    @property
    def segment_nodes(self) -> int:
        """Nodes a segment of this queue takes before publishers move on."""
        return INLINE_SEGMENT_NODES if self.inline else SEGMENT_NODES


def _bound(value: object, most: int, default: int) -> int:
    """A bound as read from a record: an integer clamped to 1..``most``
    (a record may have been written before bounds were checked, or by
    another client), anything else the default."""
    return min(max(value, 1), most) if is_int(value) else default


@dataclass(frozen=True, slots=True)
class OverflowMark:
    """An overflow marker: ``missed`` messages of ``publisher`` were not
    written to this queue because it was full."""

    publisher: str
    missed: int

    def encode(self) -> bytes:
        return json.dumps({"pub": self.publisher, "missed": self.missed}).encode()

    @classmethod
    def decode(cls, data: bytes) -> OverflowMark:
        """``ValueError`` if ``data`` is not a marker."""
        try:
            doc = json.loads(data)
            missed = doc["missed"]
            if not is_int(missed) or missed < 0:  # Infinity, 1e999, "5", -1...
                raise ValueError(f"missed is {missed!r}, not a count")
            return cls(str(doc["pub"]), missed)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise ValueError(f"not an overflow marker: {exc!r}") from None
