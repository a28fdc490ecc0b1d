"""The cleaner's eviction sweep: a subscription whose queue a publisher
marked full under ``evict`` ends even when its own client is frozen.

At the first sweep after the one that saw the mark, the leader deregisters
the subscription and deletes the queue's segments, each transaction
checking that it still leads and that the queue still holds the marked
record. The marked record stays, for the client to find when it wakes (it
then deletes the queue and tells the gap). The deletion of a queue's
segments lives here, shared with the cleaner's sweep of departed clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ._context import Context
from ._deadlines import deadline_after
from ._tree import Guard, Refused, delete_tree, guarded_commit, leader_fence, still_leads
from .backlog import QueueRecord
from .connection import Connection
from .layout import join, parse_segment_node

__all__ = ["delete_queue", "delete_segments", "sweep_evictions"]

logger = logging.getLogger("zkpubsub.cleaner")

Count = Callable[[str, int], None]


def sweep_evictions(
    ctx: Context,
    me: str,
    clients: set[str],
    seen: dict[tuple[str, str, int], float],
    stopping: Callable[[], bool],
    count: Count,
) -> None:
    """End the subscriptions of live ``clients`` whose queue is marked full
    and whose own client has not ended them. ``seen`` remembers when each
    mark (client, topic, record version) was first seen, across sweeps;
    ``me`` is the leader's candidate node, the fence of every transaction."""
    conn, layout, kazoo = ctx.conn, ctx.layout, ctx.conn.kazoo
    deadline = deadline_after(ctx.config.request_timeout)
    owners = sorted(clients)
    listings = conn.read_all(
        lambda: [kazoo.get_children_async(layout.client_messages(c)) for c in owners],
        deadline,
        "list queues",
    )
    queues = [
        (cid, topic)
        for cid, names in zip(owners, listings, strict=True)
        if not isinstance(names, Exception)
        for topic in names
    ]
    if not queues:
        seen.clear()
        return
    heads = conn.read_all(
        lambda: [kazoo.get_async(layout.queue(c, t)) for c, t in queues],
        deadline,
        "read queue records",
    )
    now = time.monotonic()
    marked: set[tuple[str, str, int]] = set()
    for (cid, topic), head in zip(queues, heads, strict=True):
        if isinstance(head, Exception):
            continue
        record = QueueRecord.decode(head[0])
        stat = head[1]
        if record is None or not record.evicting or stat.numChildren == 0:
            continue  # not marked, or evicted already (its segments are gone)
        key = (cid, topic, stat.version)
        marked.add(key)
        first = seen.setdefault(key, now)
        if first == now or stopping():
            continue  # its own client may still act
        evict(ctx, me, cid, topic, stat.version, count)
    for key in list(seen):
        if key not in marked:
            del seen[key]


def evict(ctx: Context, me: str, cid: str, topic: str, version: int, count: Count) -> None:
    """Deregister ``cid``'s subscription to ``topic`` and delete its queue's
    segments, if the queue still holds the marked record of ``version``.
    Raises ``Refused("fence")`` if this cleaner no longer leads."""
    conn, layout = ctx.conn, ctx.layout
    queue = layout.queue(cid, topic)
    deadline = deadline_after(max(60.0, ctx.config.request_timeout))

    fence = leader_fence(me)

    def guard(txn: Any) -> int:
        fenced = fence(txn)
        txn.check(queue, version)  # still the marked record
        return fenced + 1

    def unregister(txn: Any) -> None:
        txn.delete(layout.subscriber(topic, cid))
        txn.set_data(layout.topic(topic), b"", -1)

    try:
        error = guarded_commit(conn, guard, unregister, deadline, "evict")
        nodes = delete_segments(conn, queue, deadline, guard)
    except Refused:
        if not still_leads(conn, me, deadline):
            raise Refused("fence") from None
        return  # the client ended it itself, or subscribed afresh
    count("subscriptions_evicted", 1)
    count("nodes_removed", max(0, nodes))
    logger.warning(
        "cleaner: evicted the subscription of %s to %r (its queue filled up)%s; "
        "%d message node(s) removed",
        cid,
        topic,
        "" if error is None else " (it was not registered)",
        max(0, nodes),
    )


def delete_segments(conn: Connection, queue: str, deadline: float | None, guard: Guard) -> int:
    """Delete the segments of a subscriber queue with what they hold;
    returns how many message nodes (and markers) they held."""
    names = conn.children(queue, deadline) or []
    segments = [join(queue, n) for n in names if parse_segment_node(n) is not None]
    return sum(delete_tree(conn, path, deadline, guard=guard) - 1 for path in segments)


def delete_queue(conn: Connection, queue: str, deadline: float | None, guard: Guard) -> int:
    """Delete a subscriber queue; returns how many message nodes (and
    markers) it held, its segment nodes and itself not counted."""
    entries = delete_segments(conn, queue, deadline, guard)
    # What is left (nodes from before segments) goes in batched transactions.
    return entries + max(0, delete_tree(conn, queue, deadline, guard=guard) - 1)
