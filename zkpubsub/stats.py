"""A snapshot of the bus: clients, topics, subscribers, queue backlogs and
work queues, read (never written) with pipelined requests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import NoNodeError

from ._queues import created
from .connection import Connection
from .layout import Layout, split_queue
from .workqueue.records import WorkQueueStats
from .workqueue.segments import read_queue_stats

__all__ = [
    "BusStats",
    "ClientInfo",
    "QueueStats",
    "SegmentCount",
    "collect",
    "moved_between",
    "queue_backlog",
]


@dataclass(frozen=True, slots=True)
class SegmentCount:
    """One segment of a subscriber queue: its ``number``, the nodes ever
    ``created`` in it (its sequence counter: a segment rolls over before it
    could wrap), the ``nodes`` in it now, and the ``zxid`` that created it
    (a queue made afresh numbers its segments again)."""

    number: int
    created: int
    nodes: int
    zxid: int = 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One subscriber queue. ``backlog`` counts message nodes (a node may
    carry a batch) and overflow markers, in all its segments; ``live`` says
    whether its client is registered; ``subscribed`` whether it is currently
    a subscriber of the topic; ``changes`` counts the nodes created and
    deleted in its segments (their child versions, summed; it drops when an
    emptied segment is removed); ``segments`` each segment's counts and
    ``loose`` the nodes from before segments, from which
    :func:`moved_between` gives what went in and out between two snapshots."""

    client_id: str
    topic: str
    backlog: int
    live: bool
    subscribed: bool
    changes: int = 0  # the segments' child versions: every create and delete adds one
    segments: tuple[SegmentCount, ...] = ()
    loose: int = 0


def moved_between(before: QueueStats, after: QueueStats) -> tuple[int, int]:
    """Nodes created in and deleted from a queue between two snapshots of
    it: a segment in both counts its new creations, and what it lost
    besides; one that appeared counts all it ever had; one removed meanwhile
    (emptied: publishers write to the newest, or the queue made afresh)
    counts what it held as deleted; nodes from before segments only go."""
    then = {(s.number, s.zxid): s for s in before.segments}
    into = out = 0
    for seg in after.segments:
        old = then.pop((seg.number, seg.zxid), None)
        made = seg.created - (0 if old is None else old.created)
        held = 0 if old is None else old.nodes
        into += max(0, made)
        out += max(0, held + made - seg.nodes)
    out += sum(s.nodes for s in then.values())  # removed since
    out += max(0, before.loose - after.loose)
    return into, out


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A registered client as it describes itself in ``clients/<id>``
    (informative: ``host`` and ``pid`` of its process, ``started`` in
    seconds since the epoch, empty or 0 where it said nothing readable)."""

    client_id: str
    host: str = ""
    pid: int = 0
    started: float = 0.0
    version: str = ""


@dataclass(frozen=True, slots=True)
class BusStats:
    """What ``Client.stats()`` and ``zkpubsub stats`` report."""

    root: str
    clients: tuple[str, ...]
    topics: dict[str, tuple[str, ...]]
    queues: tuple[QueueStats, ...]
    cleaner_candidates: int
    client_info: tuple[ClientInfo, ...] = field(default=())
    work_queues: tuple[WorkQueueStats, ...] = field(default=())

    @property
    def total_backlog(self) -> int:
        return sum(q.backlog for q in self.queues)

    @property
    def topic_names(self) -> list[str]:
        """Every topic that has a subscriber or a subscriber queue, sorted."""
        return sorted(set(self.topics) | {q.topic for q in self.queues})

    def queues_of(self, topic: str) -> list[QueueStats]:
        """The subscriber queues of ``topic`` (a queue may outlive its
        subscriber, until the cleaner removes it)."""
        return [q for q in self.queues if q.topic == topic]


def _children(conn: Connection, path: str, deadline: float | None) -> list[str]:
    return sorted(conn.children(path, deadline) or [])


def _client_info(client_id: str, data: Any) -> ClientInfo:
    try:
        doc = json.loads(data)
        return ClientInfo(
            client_id,
            str(doc.get("host", "")),
            int(doc.get("pid", 0)),
            float(doc.get("started", 0.0)),
            str(doc.get("version", "")),
        )
    except (ValueError, TypeError, AttributeError):
        return ClientInfo(client_id)


def queue_backlog(
    conn: Connection, layout: Layout, client_id: str, topic: str, deadline: float | None
) -> int:
    """The entries of one subscriber queue, in all its segments (0 if it
    does not exist)."""
    kazoo = conn.kazoo
    queue = layout.queue(client_id, topic)
    names = conn.children(queue, deadline)
    if names is None:
        return 0
    entries, numbers, _ = split_queue(names)
    stats = conn.read_all(
        lambda: [kazoo.exists_async(layout.segment(queue, n)) for n in numbers],
        deadline,
        "segment stat",
    )
    return len(entries) + sum(int(s.numChildren) for s in stats if s is not None)


def collect(conn: Connection, layout: Layout, deadline: float | None) -> BusStats:
    """Read the whole layout once (pipelined where it can be)."""
    kazoo = conn.kazoo
    clients = _children(conn, layout.clients, deadline)
    described = conn.read_all(
        lambda: [kazoo.get_async(layout.client(cid)) for cid in clients],
        deadline,
        "read clients",
    )
    infos = tuple(
        _client_info(cid, answer[0])
        for cid, answer in zip(clients, described, strict=True)
        if not isinstance(answer, NoNodeError)
    )
    topic_names = _children(conn, layout.subscribers, deadline)
    listed = conn.read_all(
        lambda: [kazoo.get_children_async(layout.topic(t)) for t in topic_names],
        deadline,
        "list subscribers",
    )
    topics: dict[str, tuple[str, ...]] = {
        topic: tuple(sorted(ids))
        for topic, ids in zip(topic_names, listed, strict=True)
        if not isinstance(ids, NoNodeError)
    }
    owners = _children(conn, layout.messages, deadline)
    owned = conn.read_all(
        lambda: [kazoo.get_children_async(layout.client_messages(cid)) for cid in owners],
        deadline,
        "list queues",
    )
    pairs = [
        (cid, topic)
        for cid, names in zip(owners, owned, strict=True)
        if not isinstance(names, NoNodeError)
        for topic in sorted(names)
    ]
    listings = conn.read_all(
        lambda: [kazoo.get_children_async(layout.queue(cid, topic)) for cid, topic in pairs],
        deadline,
        "list queue segments",
    )
    # A queue's backlog: its nodes from before segments, and each segment's.
    found: list[tuple[str, str, int, list[tuple[int, str]]]] = []
    for (cid, topic), names in zip(pairs, listings, strict=True):
        if isinstance(names, NoNodeError):
            continue
        entries, numbers, _ = split_queue(names)
        queue = layout.queue(cid, topic)
        found.append((cid, topic, len(entries), [(n, layout.segment(queue, n)) for n in numbers]))
    segments = [path for *_, paths in found for _, path in paths]
    counts = iter(
        conn.read_all(
            lambda: [kazoo.exists_async(path) for path in segments], deadline, "segment stat"
        )
    )
    live = set(clients)
    queues = []
    for cid, topic, loose, paths in found:
        changes, backlog = 0, loose
        segs = []
        for number, _ in paths:
            stat = next(counts)
            if stat is not None:
                backlog += stat.numChildren
                changes += stat.cversion
                segs.append(SegmentCount(number, created(stat), stat.numChildren, stat.czxid))
        subscribed = cid in topics.get(topic, ())
        queues.append(
            QueueStats(cid, topic, backlog, cid in live, subscribed, changes, tuple(segs), loose)
        )
    candidates = len(_children(conn, layout.candidates, deadline))
    work = tuple(
        read_queue_stats(conn, layout.work_queue(name), name, deadline)
        for name in _children(conn, layout.work, deadline)
    )
    return BusStats(
        layout.root_path, tuple(clients), topics, tuple(queues), candidates, infos, work
    )
