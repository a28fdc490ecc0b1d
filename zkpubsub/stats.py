"""A snapshot of the bus: topics, subscribers, clients and queue backlogs."""

from __future__ import annotations

from dataclasses import dataclass

from kazoo.exceptions import NoNodeError

from .connection import Connection
from .layout import Layout

__all__ = ["BusStats", "QueueStats", "collect"]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One subscriber queue. ``backlog`` counts message nodes (a node may
    carry a batch); ``live`` says whether its client is registered;
    ``subscribed`` whether it is currently a subscriber of the topic."""

    client_id: str
    topic: str
    backlog: int
    live: bool
    subscribed: bool


@dataclass(frozen=True, slots=True)
class BusStats:
    """What ``Client.stats()`` and ``zkpubsub stats`` report."""

    root: str
    clients: tuple[str, ...]
    topics: dict[str, tuple[str, ...]]
    queues: tuple[QueueStats, ...]
    cleaner_candidates: int

    @property
    def total_backlog(self) -> int:
        return sum(q.backlog for q in self.queues)


def _children(conn: Connection, path: str, deadline: float | None) -> list[str]:
    return sorted(conn.children(path, deadline) or [])


def collect(conn: Connection, layout: Layout, deadline: float | None) -> BusStats:
    """Read the whole layout once (pipelined where it can be)."""
    kazoo = conn.kazoo
    clients = _children(conn, layout.clients, deadline)
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
    stats = conn.read_all(
        lambda: [kazoo.exists_async(layout.queue(cid, topic)) for cid, topic in pairs],
        deadline,
        "queue stat",
    )
    live = set(clients)
    queues = [
        QueueStats(cid, topic, stat.numChildren, cid in live, cid in topics.get(topic, ()))
        for (cid, topic), stat in zip(pairs, stats, strict=True)
        if stat is not None
    ]
    candidates = len(_children(conn, layout.candidates, deadline))
    return BusStats(layout.root_path, tuple(clients), topics, tuple(queues), candidates)
