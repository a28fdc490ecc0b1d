"""One fan-out transaction: its operations and the meaning of its errors.

A fan-out writes the same nodes, in order, into the current segment of
every target subscriber's queue, and checks the data version of
``subscribers/<topic>`` (which every subscribe and unsubscribe bumps). Its
operations, after the receipt that :class:`~zkpubsub.receipts.ReceiptWriter`
puts first::

    check subscribers/<topic> at version
    per target:
      check messages/<target>/<topic> at the version its publisher read
        (or, moving it to a fresh segment: setData of its record at that
        version, and create the segment)
      create .../s<segment>/m<guid>-   (sequential, one per node; or, for
        a node no larger than the queue record's ``inline``, with no data:
        .../s<segment>/m<guid>.<node data, base64url>. )
        (or, the queue being full: create .../s<segment>/o<guid>- , an
        overflow marker, or setData of this publisher's marker there)

If it fails, the failing operation tells what happened: the topic check
means the subscriber list changed (read it again); a queue's check or
record means another publisher moved it to a fresh segment (read its state
again), or, with ``NoNode``, that the queue is gone (its client left and the
cleaner removed it: drop it); a marker's ``NoNode`` means the subscriber
has read past it. Anything else is an error zkpubsub does not expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from .backlog import OverflowMark
from .errors import ZooKeeperError
from .layout import Layout, inline_text
from .receipts import Outcome

__all__ = ["Acls", "FanOut", "Target", "Verdict"]

Op = Literal["topic", "queue", "segment", "node", "marker", "count"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """``ok``: applied; ``stale``: the subscriber list changed; ``gone``:
    the queue of ``culprit`` no longer exists; ``moved``: its queue moved to
    another segment (or changed its bound); ``marker``: the subscriber
    consumed the overflow marker this publisher was counting into."""

    kind: Literal["ok", "stale", "gone", "moved", "marker"]
    culprit: str = ""


@dataclass(frozen=True, slots=True)
class Acls:
    """The ACLs of the nodes a fan-out creates (``None``: kazoo's default,
    the open ACL)."""

    message: Any = None
    marker: Any = None


@dataclass(frozen=True, slots=True)
class Target:
    """One subscriber queue in a fan-out.

    ``version`` is the data version of the queue node as read; ``segment``
    the segment written into. ``roll`` is the new queue record when this
    transaction moves the queue to ``segment``. ``marker`` is ``None`` to
    write the nodes, ``""`` to create an overflow marker instead (the queue
    is full), or the path of this publisher's marker to update; ``missed``
    is then the marker's count. ``flag`` is the queue's record marked
    ``full`` (an ``evict`` queue found full): it is written, at ``version``,
    and nothing else. ``skip``: the queue is marked so already; its version
    is checked (so a publisher that read it before the queue was made anew
    learns of it) and nothing written.
    """

    subscriber: str
    version: int
    segment: int
    roll: bytes | None = None
    marker: str | None = None
    missed: int = 0
    segment_acl: Any = field(default=None, compare=False)  # a new segment's ACL (None: open)
    flag: bytes | None = None
    skip: bool = False
    inline: int = 0

    @property
    def writes(self) -> bool:
        """Whether the fan-out writes the messages into this queue."""
        return self.marker is None and self.flag is None and not self.skip

    def op_kinds(self, nodes: int) -> list[Op]:
        if self.flag is not None or self.skip:
            return ["queue"]
        kinds: list[Op] = ["queue"]
        if self.roll is not None:
            kinds.append("segment")
        if self.marker is None:
            kinds.extend(["node"] * nodes)
        else:
            kinds.append("marker" if self.marker == "" else "count")
        return kinds


@dataclass(frozen=True, slots=True)
class FanOut:
    """``nodes`` for each of ``targets``' queues of ``topic``, checked
    against the subscriber list at ``version``; markers name ``publisher``."""

    topic: str
    version: int
    targets: tuple[Target, ...]
    nodes: tuple[bytes, ...]
    publisher: str

    def op_map(self) -> list[tuple[int, Op]]:
        """For each operation, in order: the index of its target (-1 for the
        topic check) and its kind."""
        out: list[tuple[int, Op]] = [(-1, "topic")]
        for i, target in enumerate(self.targets):
            out.extend((i, kind) for kind in target.op_kinds(len(self.nodes)))
        return out

    def add_ops(self, layout: Layout, txn: Any, guid: str, acls: Acls | None = None) -> None:
        """Add the operations to ``txn`` (node names carry ``guid``; nodes
        get the ACLs of ``acls``, a new segment its target's)."""
        acls = acls or Acls()
        texts: dict[int, str] = {}  # the nodes written into names, encoded once
        txn.check(layout.topic(self.topic), self.version)
        for target in self.targets:
            queue = layout.queue(target.subscriber, self.topic)
            segment = layout.segment(queue, target.segment)
            if target.flag is not None:
                txn.set_data(queue, target.flag, target.version)
                continue
            if target.skip:
                txn.check(queue, target.version)
                continue
            if target.roll is not None:
                txn.set_data(queue, target.roll, target.version)
                txn.create(segment, b"", acl=target.segment_acl)
            else:
                txn.check(queue, target.version)
            if target.marker is None:
                for i, data in enumerate(self.nodes):
                    if 0 < len(data) <= target.inline:
                        text = texts.get(i)
                        if text is None:
                            text = texts[i] = inline_text(data)
                        prefix = layout.inline_prefix(segment, guid, text)
                        txn.create(prefix, b"", acl=acls.message, sequence=True)
                    else:
                        prefix = layout.message_prefix(segment, guid)
                        txn.create(prefix, data, acl=acls.message, sequence=True)
                continue
            mark = OverflowMark(self.publisher, target.missed).encode()
            if target.marker == "":
                prefix = layout.marker_prefix(segment, guid)
                txn.create(prefix, mark, acl=acls.marker, sequence=True)
            else:
                txn.set_data(target.marker, mark, -1)

    def classify(self, outcome: Outcome) -> Verdict:
        """What an :class:`Outcome` of this transaction means. Raises
        :class:`ZooKeeperError` for an error no retry can mend."""
        error, index = outcome.error, outcome.index
        if error is None:
            return Verdict("ok")
        ops = self.op_map()
        if 0 <= index < len(ops):
            target, kind = ops[index]
            if kind == "topic" and isinstance(error, (BadVersionError, NoNodeError)):
                return Verdict("stale")
            culprit = self.targets[target].subscriber if target >= 0 else ""
            if kind == "count" and isinstance(error, NoNodeError):
                return Verdict("marker", culprit)
            if isinstance(error, NoNodeError) and kind != "topic":
                return Verdict("gone", culprit)
            if (kind == "queue" and isinstance(error, BadVersionError)) or (
                kind == "segment" and isinstance(error, NodeExistsError)
            ):
                return Verdict("moved", culprit)
        raise ZooKeeperError(f"publish to {self.topic!r}: {type(error).__name__}")

    def created(self, results: Sequence[Any]) -> dict[int, list[str]]:
        """The paths the applied transaction created, by target index
        (``results``: the answers to this fan-out's operations, in order)."""
        out: dict[int, list[str]] = {}
        for (target, kind), result in zip(self.op_map(), results, strict=False):
            if kind in ("node", "marker") and isinstance(result, str):
                out.setdefault(target, []).append(result)
        return out
