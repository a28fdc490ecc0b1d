"""Reading a work queue's dead letters, and replaying them.

A replay puts a dead letter back as a new item (its original payload and
priority, no attempts) in one transaction that deletes the letter at the
version read, deletes its ticket's unread ``dead`` result, and checks the
queue node's version as every put does (:mod:`.segments`); it carries a
receipt, so a lost answer neither loses nor doubles the item.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any, Final

from kazoo.exceptions import BadVersionError, NoNodeError

from .._context import Context
from .._numbers import is_int
from ..connection import Connection
from ..errors import QueueFull
from ..layout import NodeKind, WorkQueuePaths, order_items, parse_item_node
from ..serializers import SerializerRegistry
from .records import DeadItem, dead_item, dead_item_data
from .segments import Segments

__all__ = ["DEAD_READ_WINDOW", "read_dead", "replay"]


def check_dead_limit(limit: object) -> None:
    """``ValueError`` unless ``limit`` is ``None`` or a count of dead letters."""
    if limit is not None and (not is_int(limit) or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, not {limit!r}")


# Dead letters asked of the server at once: each may hold up to a message's
# limit, and the server builds every answer of a pipelined read before the
# client takes them (a thousand of them at once would load its heap).
DEAD_READ_WINDOW: Final = 32


def read_dead(
    conn: Connection,
    serializers: SerializerRegistry,
    paths: WorkQueuePaths,
    deadline: float | None,
    *,
    limit: int | None = None,
    max_bytes: int | None = None,
) -> list[DeadItem]:
    """The dead letters of a queue, oldest first (the ``limit`` oldest, if
    given: only those are read), read :data:`DEAD_READ_WINDOW` at a time;
    with ``max_bytes``, no more once their data reach that many bytes (the
    first is always read)."""
    check_dead_limit(limit)
    if max_bytes is not None and (not is_int(max_bytes) or max_bytes < 1):
        raise ValueError(f"max_bytes must be an int >= 1 or None, not {max_bytes!r}")
    kazoo = conn.kazoo
    # oldest first whatever their priority (their names are the items')
    ordered, foreign = order_items(conn.children(paths.dead, deadline) or [], by_priority=False)
    names = (ordered + foreign)[:limit]
    out: list[DeadItem] = []
    size = 0
    for start in range(0, len(names), DEAD_READ_WINDOW):
        window = names[start : start + DEAD_READ_WINDOW]
        answers = conn.read_all(
            functools.partial(_ask, kazoo, paths, window), deadline, "read dead letters"
        )
        for name, answer in zip(window, answers, strict=True):
            if isinstance(answer, NoNodeError):
                continue
            if max_bytes is not None and out and size + len(answer[0]) > max_bytes:
                return out
            size += len(answer[0])
            out.append(dead_item(serializers, paths.dead_letter(name), name, answer[0]))
    return out


def _ask(kazoo: Any, paths: WorkQueuePaths, names: list[str]) -> list[Any]:
    return [kazoo.get_async(paths.dead_letter(n)) for n in names]


def replay(
    ctx: Context,
    paths: WorkQueuePaths,
    segments: Segments,
    ensure_paths: Callable[[float | None], None],
    wanted: Collection[str] | None,
    wait_for_room: Callable[[int, float | None], None],
    room_deadline: float | None,
) -> int:
    """Put back the dead letters of the queue at ``paths`` (all, or those
    whose id or node name is in ``wanted``), each once ``wait_for_room``
    finds room for it by ``room_deadline``. Returns how many were replayed;
    :class:`QueueFull` names those replayed before room ran out."""
    conn, kazoo = ctx.conn, ctx.conn.kazoo
    replayed: list[str] = []
    deadline = ctx.deadline()
    item_acl = ctx.acl.acl(NodeKind.ITEM)
    ensure_paths(deadline)
    letters = [
        dead
        for dead in read_dead(conn, ctx.serializers, paths, deadline)
        if wanted is None or dead.id in wanted or dead.name in wanted
    ]
    for dead in letters:
        try:
            wait_for_room(1, room_deadline)
        except QueueFull as full:
            raise QueueFull(
                full.queue, full.items, full.limit, put_ids=tuple(replayed), asked=len(letters)
            ) from None
        deadline = ctx.deadline()  # each letter's requests get their own time
        path = paths.dead_letter(dead.name)
        # A ticket's "dead" result not read yet is removed with the replay:
        # the item is live again, and its ack or next burial writes the
        # result anew.
        requests = functools.partial(_letter_and_result, kazoo, paths, dead)
        letter, result = conn.read_all(requests, deadline, f"read {path}")
        if isinstance(letter, NoNodeError):
            continue
        data, stat = letter
        stale = None if result is None else result.version
        while True:
            seen = segments.current(deadline)
            ops = _ReplayOps(paths, dead, data, stat.version, stale, seen, item_acl)
            outcome = ctx.writer.commit(ops, deadline, "replay")
            if outcome.index == ops.check_index and isinstance(outcome.error, BadVersionError):
                segments.forget()  # rolled on meanwhile
                continue
            if outcome.index == ops.check_index + 1 and isinstance(outcome.error, NoNodeError):
                segments.roll(seen, deadline)  # the segment was removed
                continue
            break
        # another error: someone else replayed or removed it
        if outcome.applied:
            replayed.append(dead.id)
    return len(replayed)


def _letter_and_result(kazoo: Any, paths: WorkQueuePaths, dead: DeadItem) -> list[Any]:
    return [
        kazoo.get_async(paths.dead_letter(dead.name)),
        kazoo.exists_async(paths.result(dead.id)),
    ]


class _ReplayOps:
    """Delete the dead letter (at the version read) and its unread result (if
    ``result`` gives its version), and put its item back into the current
    segment (checking the queue node's version). ``check_index`` is the
    index of that check among the operations."""

    def __init__(
        self,
        paths: WorkQueuePaths,
        dead: DeadItem,
        data: bytes,
        version: int,
        result: int | None,
        seen: tuple[int, int],
        acl: Any,
    ) -> None:
        parsed = parse_item_node(dead.name)
        self.wants_result = bool(parsed and parsed.wants_result)
        self.drop_result = result is not None and self.wants_result
        self.check_index = 2 if self.drop_result else 1
        self._args = (paths, dead, dead_item_data(data), version, result, seen)
        self._acl = acl

    def __call__(self, txn: Any, guid: str) -> None:
        paths, dead, item_data, version, result, (segment, queue_version) = self._args
        txn.delete(paths.dead_letter(dead.name), version)
        if self.drop_result:
            txn.delete(paths.result(dead.id), result)
        txn.check(paths.base, queue_version)
        txn.create(
            paths.item_prefix(dead.priority, guid, wants_result=self.wants_result, segment=segment),
            item_data,
            acl=self._acl,
            sequence=True,
        )
