"""What a publisher knows of its topics' subscriber queues.

For each queue it writes to, a publisher keeps the queue's record (current
segment, bound), the data version it read it at, and estimates of what the
queue holds: read from the server before the first write to a queue, then
again after a fan-out once the last read is ``STATE_TTL`` seconds old (off
the publish's own path: its caller has its answer by then), pipelined with
the other queues of the topic, and between two reads advanced by what this
publisher itself wrote; a queue that a reading that old says is full is read
again before it is written to (its subscriber may have drained it since,
and deletions change no version a fan-out checks). From that it decides,
for each queue and each fan-out: write the nodes, move the queue to a fresh
segment first, or — the queue being full — leave or count an overflow
marker (``drop``), or mark the queue's record ``full`` once and skip it
from then on (``evict``).

Staleness and overshoot: another publisher's writes are seen only at the
next read, so a queue can pass its bound by what the other publishers of
the topic write in ``STATE_TTL`` seconds, plus one batch of this one. The
byte bound is estimated from the queue's node count and the average size of
this publisher's nodes on the topic. A fan-out checks every queue's data
version, so a decision taken on an outdated segment fails and is taken
again after a fresh read; it never writes into a segment that was left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from kazoo.exceptions import NoNodeError

from ._context import Context
from ._fanout import FanOut, Target
from .backlog import INLINE_BYTES, ROLL_AT, SEGMENT_NODES, Backlog, QueueRecord
from .layout import parse_queue_entry, split_queue

__all__ = ["STATE_TTL", "QueueState", "QueueStates", "created", "decide", "would_pass"]

STATE_TTL: Final = 1.0


@dataclass(slots=True)
class QueueState:
    """A publisher's knowledge of one subscriber queue."""

    version: int  # data version of the queue node
    record: QueueRecord | None  # None: a queue from before segments
    nodes: int  # message nodes and markers in the whole queue (estimate)
    current: int  # nodes in the current segment (estimate)
    counter: int  # the current segment's sequence counter (creations; highest seen)
    read_at: float
    marker: str | None = None  # this publisher's overflow marker in it
    missed: int = 0  # the count that marker holds
    full_for: int = 1  # the nodes of the fan-out that found it full
    acl: Any = None  # the queue's own ACL, for a segment this publisher creates


def created(stat: Any) -> int:
    """The children ever created under a node — its sequence counter —
    from its stat: ``cversion`` counts creations and deletions, as a signed
    32-bit number, so creations are (cversion + children) / 2 modulo 2^32."""
    return int((stat.cversion + stat.numChildren) % 2**32) // 2


def would_pass(backlog: Backlog, nodes: int, adding: int, node_size: float) -> bool:
    """Whether writing ``adding`` more nodes (of ``node_size`` bytes, an
    estimate) to a queue of ``nodes`` would take it past its bound: a
    fan-out is written to a queue whole or not at all."""
    after = nodes + adding
    return after > backlog.max_nodes or after * node_size > backlog.max_bytes


def decide(
    subscriber: str,
    state: QueueState,
    *,
    node_count: int,
    messages: int,
    node_size: float,
    default: Backlog,
    segment_nodes: int = SEGMENT_NODES,
    roll_at: int = ROLL_AT,
) -> Target | None:
    """What to do with one queue in the next fan-out of ``node_count`` nodes
    (``messages`` messages): a :class:`Target`, or ``None`` to leave it out
    (a queue from before segments found full under ``evict``). The first
    fan-out to find an ``evict`` queue full marks its record instead of
    writing to it; later ones only check that it is still so marked."""
    record = state.record
    backlog = record.backlog if record is not None else default
    full = would_pass(backlog, state.nodes, node_count, node_size)
    if record is not None and record.evicting:  # its subscription is being ended
        return Target(subscriber, state.version, record.segment, skip=True)
    if full and backlog.when_full == "evict":
        if record is None:
            return None
        flag = replace(record, full=True).encode()
        return Target(subscriber, state.version, record.segment, flag=flag)
    asked = record.inline if record is not None else 0
    inline = min(asked, INLINE_BYTES)  # the most this version's op sizes allow for
    if record is not None:
        segment_nodes = min(segment_nodes, record.segment_nodes)
    roll = record is None or state.current >= segment_nodes or state.counter >= roll_at
    segment = 0 if record is None else record.segment + int(roll)
    moved = record.moved(segment) if record is not None else QueueRecord(0, backlog)
    fresh = moved.encode() if roll else None
    acl = state.acl if roll else None
    if not full:
        return Target(subscriber, state.version, segment, fresh, segment_acl=acl, inline=inline)
    marker = state.marker if state.marker and not roll else ""
    # a new marker counts this fan-out's messages alone (the old one keeps its own)
    missed = state.missed + messages if marker else messages
    return Target(subscriber, state.version, segment, fresh, marker, missed, segment_acl=acl)


@dataclass(slots=True)
class _Read:
    """One queue being read by :meth:`QueueStates.refresh`."""

    subscriber: str
    queue: str
    version: int = 0
    record: QueueRecord | None = None
    listed: bool = False
    current: int = 0
    counter: int = 0
    nodes: int = 0  # outside the current segment
    older: list[str] = field(default_factory=list)
    acl: Any = None


class QueueStates:
    """The publisher's knowledge of every queue it writes to (shared by a
    client's lanes; each lane touches only its own topic's queues)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], QueueState] = {}
        self._node_size: dict[str, float] = {}  # average node size per topic

    def get(self, topic: str, subscriber: str) -> QueueState | None:
        with self._lock:
            return self._states.get((topic, subscriber))

    def forget(self, topic: str, subscriber: str) -> None:
        with self._lock:
            self._states.pop((topic, subscriber), None)

    def keep_only(self, topic: str, subscribers: Sequence[str]) -> None:
        """Forget the queues of ``topic`` of subscribers not in ``subscribers``
        (gone from its list: a long-running publisher would otherwise keep
        one for every subscriber that ever came)."""
        kept = set(subscribers)
        with self._lock:
            for key in [k for k in self._states if k[0] == topic and k[1] not in kept]:
                del self._states[key]

    def node_size(self, topic: str) -> float:
        with self._lock:
            return self._node_size.get(topic, 0.0)

    def refresh(
        self,
        topic: str,
        subscribers: list[str],
        deadline: float | None,
        *,
        unknown_only: bool = False,
    ) -> set[str]:
        """Read the queues of ``subscribers`` whose state is unknown or (unless
        ``unknown_only``) older than ``STATE_TTL``: the queue node (record and version), then its
        current segment's stat (count and counter) and, where older segments
        or nodes from before segments remain, its listing and their stats.
        Returns the subscribers whose queue is gone."""
        due = self._due(topic, subscribers, unknown=True, stale=not unknown_only)
        return self._read(topic, due, deadline)

    def _due(self, topic: str, subscribers: list[str], *, unknown: bool, stale: bool) -> list[str]:
        """Those of ``subscribers`` whose queue state is unknown (if
        ``unknown``) or was read ``STATE_TTL`` or more ago (if ``stale``)."""
        now = time.monotonic()
        with self._lock:
            states = [(s, self._states.get((topic, s))) for s in subscribers]
        return [
            s
            for s, st in states
            if (unknown if st is None else stale and now - st.read_at >= STATE_TTL)
        ]

    def _read(self, topic: str, due: list[str], deadline: float | None) -> set[str]:
        """Read the queues of ``due`` (as :meth:`refresh` says); the
        subscribers whose queue is gone."""
        if not due:
            return set()
        conn, layout = self._ctx.conn, self._ctx.layout
        kazoo = conn.kazoo
        reads = [_Read(s, layout.queue(s, topic)) for s in due]
        heads = conn.read_all(lambda: [kazoo.get_async(r.queue) for r in reads], deadline, "queues")
        with self._lock:
            known = {s: st.acl for (t, s), st in self._states.items() if t == topic}
        for read in reads:
            read.acl = known.get(read.subscriber)
        unknown = [r for r in reads if r.acl is None and not self._ctx.acl.open]
        if unknown:  # a segment this publisher creates gets the queue's own ACL
            acls = conn.read_all(
                lambda: [kazoo.get_acls_async(r.queue) for r in unknown], deadline, "queue ACLs"
            )
            for read, answer in zip(unknown, acls, strict=True):
                if not isinstance(answer, NoNodeError):
                    read.acl = answer[0]
        gone = set()
        for read, head in zip(reads, heads, strict=True):
            if isinstance(head, NoNodeError):
                gone.add(read.subscriber)
                continue
            read.version = head[1].version
            read.record = QueueRecord.decode(head[0])
            read.listed = head[1].numChildren > 1 or read.record is None
        reads = [r for r in reads if r.subscriber not in gone]

        def segments() -> list[Any]:
            out = []
            for r in reads:
                if r.record is not None:
                    out.append(kazoo.exists_async(layout.segment(r.queue, r.record.segment)))
                if r.listed:
                    out.append(kazoo.get_children_async(r.queue))
            return out

        answers = iter(conn.read_all(segments, deadline, "queue segments"))
        for r in reads:
            if r.record is not None:
                stat = next(answers)
                if stat is not None and not isinstance(stat, NoNodeError):
                    r.current, r.counter = stat.numChildren, created(stat)
            if r.listed:
                names = next(answers)
                if not isinstance(names, NoNodeError):
                    entries, numbers, _ = split_queue(names)
                    r.nodes += len(entries)
                    mine = r.record.segment if r.record is not None else None
                    r.older = [layout.segment(r.queue, n) for n in numbers if n != mine]
        older = [p for r in reads for p in r.older]
        if older:
            stats = iter(
                conn.read_all(lambda: [kazoo.exists_async(p) for p in older], deadline, "segments")
            )
            for r in reads:
                for _ in r.older:
                    stat = next(stats)
                    if stat is not None and not isinstance(stat, NoNodeError):
                        r.nodes += stat.numChildren
        read_at = time.monotonic()
        with self._lock:
            size = self._node_size.get(topic, 0.0)
            for r in reads:
                state = QueueState(
                    version=r.version,
                    record=r.record,
                    nodes=r.nodes + r.current,
                    current=r.current,
                    counter=r.counter,
                    read_at=read_at,
                    acl=r.acl,
                )
                previous = self._states.get((topic, r.subscriber))
                backlog = r.record.backlog if r.record is not None else None
                if (
                    previous is not None
                    and previous.marker is not None
                    and previous.version == state.version
                    and backlog is not None
                    and would_pass(backlog, state.nodes, previous.full_for, size)
                ):  # still full (for such a fan-out), same segment: keep counting into its marker
                    state.marker, state.missed = previous.marker, previous.missed
                    state.full_for = previous.full_for
                self._states[(topic, r.subscriber)] = state
            for s in gone:
                self._states.pop((topic, s), None)
        return gone

    def read_again(
        self, topic: str, subscribers: list[str], deadline: float | None
    ) -> tuple[bool, set[str]]:
        """Read again the queues of ``subscribers`` last read ``STATE_TTL``
        or more ago (a queue judged full on an old reading may have been
        drained since: deletions change no version a fan-out checks).
        ``(whether any was read, the subscribers whose queue is gone)``."""
        old = self._due(topic, subscribers, unknown=False, stale=True)
        return bool(old), self._read(topic, old, deadline)

    def plan(
        self,
        topic: str,
        subscribers: list[str],
        nodes: list[bytes],
        messages: int,
    ) -> tuple[list[Target], list[str]]:
        """The targets of the next fan-out, and the full queues skipped."""
        default = self._ctx.config.backlog
        size = sum(len(d) for d in nodes) / max(1, len(nodes))
        with self._lock:
            average = self._node_size.get(topic, size)
            targets: list[Target] = []
            skipped: list[str] = []
            for s in subscribers:
                state = self._states.get((topic, s))
                if state is None:  # not read (a race with a new subscriber): read it first
                    continue
                target = decide(
                    s,
                    state,
                    node_count=len(nodes),
                    messages=messages,
                    node_size=average,
                    default=default,
                    segment_nodes=SEGMENT_NODES,
                    roll_at=ROLL_AT,
                )
                if target is None:
                    skipped.append(s)
                else:
                    targets.append(target)
            return targets, skipped

    def applied(self, topic: str, fan: FanOut, results: Sequence[Any] | None) -> None:
        """Advance the estimates by what an applied fan-out wrote."""
        size = sum(len(d) for d in fan.nodes) / max(1, len(fan.nodes))
        created = fan.created(results) if results is not None else {}
        with self._lock:
            previous = self._node_size.get(topic, size)
            self._node_size[topic] = previous * 0.9 + size * 0.1
            for i, target in enumerate(fan.targets):
                key = (topic, target.subscriber)
                state = self._states.get(key)
                if state is None:
                    continue
                if results is None:  # answer lost and looked up: what it made is unknown
                    self._states[key] = replace(state, read_at=0.0, marker=None, missed=0)
                    continue
                if target.skip:
                    continue
                if target.flag is not None:
                    state.version += 1
                    state.record = QueueRecord.decode(target.flag)
                    continue
                if target.roll is not None:
                    state.version += 1
                    state.record = QueueRecord.decode(target.roll)
                    state.current = 0
                    state.counter = 0
                paths = created.get(i, [])
                if target.marker is None:
                    state.nodes += len(fan.nodes)
                    state.current += len(fan.nodes)
                elif target.marker == "":
                    state.nodes += 1
                    state.current += 1
                    state.marker = paths[-1] if paths else None
                    state.missed = target.missed
                    state.full_for = len(fan.nodes)
                else:
                    state.missed = target.missed
                    state.full_for = max(state.full_for, len(fan.nodes))
                for path in paths:
                    parsed = parse_queue_entry(path.rsplit("/", 1)[-1])
                    if parsed is not None:
                        state.counter = max(state.counter, parsed[2])
