"""Looking into subscriber queues from a test, as a foreign client would."""

from __future__ import annotations

from typing import Any

from kazoo.exceptions import NoNodeError

from ..layout import Layout, split_queue

__all__ = ["queue_entries"]


def queue_entries(zk: Any, root: str, client_id: str, topic: str) -> list[str] | None:
    """The message nodes and markers of a subscriber queue, in queue order,
    as paths relative to the queue (``s0000000000/m<guid>-<seq>``; nodes from
    before segments bare), or ``None`` if the queue does not exist. ``zk``
    is a started ``KazooClient``."""
    layout = Layout(root)
    queue = layout.queue(client_id, topic)
    try:
        names = zk.get_children(queue)
    except NoNodeError:
        return None
    entries, segments, _ = split_queue(names)
    out = list(entries)
    for number in segments:
        path = layout.segment(queue, number)
        try:
            listed = split_queue(zk.get_children(path))[0]
        except NoNodeError:
            continue
        name = path.rsplit("/", 1)[-1]
        out += [f"{name}/{entry}" for entry in listed]
    return out
