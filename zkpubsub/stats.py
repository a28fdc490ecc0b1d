"""A snapshot of the bus: clients, topics, subscribers, queue backlogs and
work queues, read (never written) with pipelined requests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kazoo.exceptions import NoNodeError

from .connection import Connection
from .layout import Layout
from .workqueue.queue import read_queue_stats
from .workqueue.records import WorkQueueStats

__all__ = ["BusStats", "ClientInfo", "QueueStats", "collect"]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One subscriber queue. ``backlog`` counts message nodes (a node may
    carry a batch); ``live`` says whether its client is registered;
    ``subscribed`` whether it is currently a subscriber of the topic;
    ``changes`` counts the nodes ever created and deleted in it (the server's
    child version), so two snapshots give the rates in and out."""

    client_id: str
    topic: str
    backlog: int
    live: bool
    subscribed: bool
    changes: int = 0  # the queue node's child version: every create and delete adds one


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
    stats = conn.read_all(
        lambda: [kazoo.exists_async(layout.queue(cid, topic)) for cid, topic in pairs],
        deadline,
        "queue stat",
    )
    live = set(clients)
    queues = [
        QueueStats(
            cid,
            topic,
            stat.numChildren,
            cid in live,
            cid in topics.get(topic, ()),
            stat.cversion,
        )
        for (cid, topic), stat in zip(pairs, stats, strict=True)
        if stat is not None
    ]
    candidates = len(_children(conn, layout.candidates, deadline))
    work = tuple(
        read_queue_stats(conn, layout.work_queue(name), name, deadline)
        for name in _children(conn, layout.work, deadline)
    )
    return BusStats(
        layout.root_path, tuple(clients), topics, tuple(queues), candidates, infos, work
    )
