"""How a reservation ends: acked, released, or buried as a dead letter.

Each is one transaction whose checks the server enforces:

* an ack deletes the reservation and the item, the item only at the data
  version this reservation produced, writes the result, and carries a
  receipt (exactly once after a lost answer);
* a release deletes the reservation and checks the item's version (or, at
  ``max_attempts``, moves the item to the dead letters), with a receipt
  too: after a lost answer it tells a release applied from a reservation
  lost meanwhile (with the session);
* burying an item nobody holds proves that by creating and deleting its
  reservation node in the same transaction.

A queue keeps at most ``MAX_DEAD_LETTERS`` dead letters (so listing them
stays below 1 MiB): an item that fails beyond that is deleted instead,
with an error in the log and a ``dead`` result for its ticket.

After a lost answer to a reserve or an extension, :func:`holds` tells
whether a reservation is still this worker's: its session owns the node,
the item is at the version, and the node names the worker (workers of one
client share a session).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from kazoo.exceptions import NoNodeError

from .. import envelope
from .._context import Context
from ..config import MAX_DEAD_LETTERS
from ..connection import first_error, translated
from ..errors import ConnectionLost, PayloadTooLarge, ReservationLost, SerializationError
from ..layout import NodeKind, WorkQueuePaths, parse_item_node
from .items import Item
from .records import dead_record, reserved_by, result_doc

__all__ = ["ack_all", "bury", "commit", "dead_letters_full", "held_version", "holds", "release"]

logger = logging.getLogger(__name__)

# A transaction of acks carries results up to about this many bytes.
_ACK_BATCH_BYTES: Final = 500_000


def commit(ctx: Context, txn: Any, deadline: float | None, what: str) -> list[Any]:
    """Send ``txn`` once connected; its results (``ConnectionLost`` if the
    answer is lost)."""
    ctx.conn.wait_connected(deadline, what)
    return ctx.conn.result(txn.commit_async(), deadline, what)  # type: ignore[no-any-return]


def holds(
    ctx: Context,
    paths: WorkQueuePaths,
    name: str,
    token: int,
    worker_id: str,
    deadline: float | None,
) -> bool:
    """Whether ``worker_id`` holds ``name`` at data version ``token``."""
    return held_version(ctx, paths, name, token, worker_id, deadline) is not None


def held_version(
    ctx: Context,
    paths: WorkQueuePaths,
    name: str,
    token: int,
    worker_id: str,
    deadline: float | None,
) -> int | None:
    """The data version of the reservation node of ``name`` if
    ``worker_id`` holds it at item version ``token``; ``None`` if not."""
    conn = ctx.conn
    kazoo = conn.kazoo
    # after a lost answer, on another server maybe: sync first, so that the
    # reads see the transaction if it was applied (a session's requests are
    # served in order)
    _, reservation, item = conn.read_all(
        lambda: [
            kazoo.sync_async(paths.reservation(name)),
            kazoo.get_async(paths.reservation(name)),
            kazoo.exists_async(paths.item(name)),
        ],
        deadline,
        f"check the reservation of {name}",
    )
    if isinstance(reservation, NoNodeError) or item is None:
        return None
    data, held = reservation
    if held.ephemeralOwner != conn.session_id or item.version != token:
        return None
    if reserved_by(data) != worker_id:
        return None
    return int(held.version)


def encoded_result(ctx: Context, result: Any) -> bytes:
    """The record an ack writes for ``result``: :class:`SerializationError`
    if the client's serializer cannot encode it, :class:`PayloadTooLarge`
    over ``max_message_bytes`` (the server would drop the connection on it);
    nothing is sent."""
    try:
        doc = result_doc(ctx.config.serializer, "ok", result)
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # what serializers raise
        raise SerializationError(f"the result cannot be serialized: {exc}") from exc
    limit = ctx.config.max_message_bytes
    if len(doc) > limit:
        raise PayloadTooLarge(
            len(doc),
            limit,
            why=f"the result is {len(doc)} bytes encoded, over max_message_bytes ({limit})",
        )
    return doc


def ack_all(ctx: Context, queue: str, pairs: list[tuple[Item, Any]]) -> list[Item]:
    """Ack in as few transactions as fit; returns the items whose
    reservation was lost (the rest are acked). Each transaction's items are
    marked finished as it is applied: one failing after others (raising)
    leaves theirs marked, and a retry leaves them out."""
    paths = ctx.layout.work_queue(queue)
    todo = [  # every result encoded before anything is sent
        (item, encoded_result(ctx, result) if item.wants_result else None) for item, result in pairs
    ]
    deadline = ctx.deadline()
    # a transaction's room, less its receipt (and a margin)
    most = min(_ACK_BATCH_BYTES, ctx.config.max_transaction_bytes - 1024)
    lost: list[Item] = []
    with translated(f"ack in queue {queue!r}"):
        while todo:
            batch: list[tuple[Item, bytes | None]] = []
            size = 0
            while todo and (not batch or size + _ack_size(ctx, paths, *todo[0]) < most):
                batch.append(todo.pop(0))
                size += _ack_size(ctx, paths, *batch[-1])
            while True:
                if ctx.writer.commit(
                    _ack_ops(paths, batch, ctx.acl.acl(NodeKind.RESULT)), deadline, "ack"
                ).applied:
                    for item, _ in batch:
                        item.mark_finished("acked")
                    break
                if len(batch) == 1:
                    lost.append(batch[0][0])
                    break
                # Some reservation was lost: peel items off to find which.
                todo[:0] = batch[1:]
                batch = batch[:1]
    if lost:
        ctx.hooks.reservation_lost(queue, len(lost))
    return lost


def _ack_size(ctx: Context, paths: WorkQueuePaths, item: Item, doc: bytes | None) -> int:
    """Bytes an item's ack adds to a transaction: its paths (in UTF-8),
    its result and each operation's header and ACL (upper estimates)."""
    size = len(paths.reservation(item.name).encode()) + len(paths.item(item.name).encode()) + 128
    if doc is not None:
        size += len(doc) + len(paths.result(item.id).encode()) + 64
        size += ctx.acl.size(NodeKind.RESULT)
    return size


def _ack_ops(paths: WorkQueuePaths, batch: list[tuple[Item, bytes | None]], acl: list[Any]) -> Any:
    """Per item: delete its reservation and the item at the version the
    reservation produced, and write its result (with ``acl``)."""

    def ops(txn: Any, _guid: str) -> None:
        for item, doc in batch:
            txn.delete(paths.reservation(item.name))
            txn.delete(paths.item(item.name), item.token)
            if doc is not None:
                txn.create(paths.result(item.id), doc, acl=acl)

    return ops


def dead_letters_full(ctx: Context, paths: WorkQueuePaths, deadline: float | None) -> bool:
    """Whether the queue already keeps ``MAX_DEAD_LETTERS`` dead letters."""
    kazoo = ctx.conn.kazoo
    stat = ctx.conn.call(lambda: kazoo.exists_async(paths.dead), deadline, "count dead letters")
    return stat is not None and stat.numChildren >= MAX_DEAD_LETTERS


def _dropped(reason: str) -> str:
    """Why an item is dropped: the dead letters are full."""
    return f"dropped, the dead letters being full: {reason}"


def _log_dropped(queue: str, name: str, reason: str) -> None:
    """Once the drop is applied (not before: it may be refused)."""
    logger.error(
        "queue %r: %s is %s (the queue keeps %d dead letters already)",
        queue,
        name,
        reason,
        MAX_DEAD_LETTERS,
    )


def release(
    ctx: Context,
    item: Item,
    error: str | BaseException | None,
    *,
    max_attempts: int,
) -> bool:
    """Give ``item`` back, or bury it at ``max_attempts``, in one
    transaction with a receipt: after a lost answer the receipt tells
    whether it was applied (a reservation lost meanwhile is not taken for
    one given back). ``True`` when it was; raises :class:`ReservationLost`
    when the server refuses it."""
    paths = ctx.layout.work_queue(item.queue)
    reason = ""
    if error is not None:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    buried = item.attempts >= max_attempts
    deadline = ctx.deadline()
    with translated(f"release item {item.id}"):
        full = buried and dead_letters_full(ctx, paths, deadline)
        why = f"failed {item.attempts} times" + (f"; last error: {reason}" if reason else "")
        if buried and full:
            why = _dropped(why)

        def ops(txn: Any, guid: str) -> None:  # the same operations at every try
            txn.delete(paths.reservation(item.name))
            if not buried:
                txn.check(paths.item(item.name), item.token)
                return
            txn.delete(paths.item(item.name), item.token)
            if not full:
                record = dead_record(item.name, envelope.encode([item.entry]), item.attempts, why)
                acl = ctx.acl.acl(NodeKind.DEAD_LETTER)
                txn.create(paths.dead_letter(item.name), record, acl=acl)
            if item.wants_result:
                doc = result_doc(ctx.config.serializer, "dead", reason=why)
                txn.create(paths.result(item.id), doc, acl=ctx.acl.acl(NodeKind.RESULT))

        if ctx.writer.commit(ops, deadline, "release").applied:
            if buried and full:
                _log_dropped(item.queue, item.name, why)
            elif buried:
                logger.warning("queue %r: item %s is a dead letter", item.queue, item.id)
            return True
        ctx.hooks.reservation_lost(item.queue, 1)
        raise ReservationLost(item.queue, item.id)


def bury(
    ctx: Context,
    queue: str,
    name: str,
    data: bytes,
    version: int,
    reason: str,
    entry: envelope.Entry | None,
    deadline: float | None,
    *,
    path: str | None = None,
    lapsed: int | None = None,
) -> bool:
    """Move an item nobody holds to the dead letters (proving that), as
    ``name`` (the node is at ``path``, by default the item node ``name``).
    ``lapsed`` is the version of a reservation whose lease ran out (it is
    deleted at that version instead). ``True`` when this transaction did it."""
    paths = ctx.layout.work_queue(queue)
    parsed = parse_item_node(name)
    full = dead_letters_full(ctx, paths, deadline)
    txn = ctx.conn.kazoo.transaction()
    acl = ctx.acl
    if lapsed is None:
        # fails if someone holds it
        txn.create(paths.reservation(name), b"", acl=acl.acl(NodeKind.RESERVATION))
        txn.delete(paths.reservation(name))
    else:
        txn.delete(paths.reservation(name), lapsed)  # fails if extended meanwhile
    txn.delete(path or paths.item(name), version)
    if full:
        reason = _dropped(reason)
    else:
        record = dead_record(name, data, version, reason)
        txn.create(paths.dead_letter(name), record, acl=acl.acl(NodeKind.DEAD_LETTER))
    if entry is not None and parsed is not None and parsed.wants_result:
        doc = result_doc(ctx.config.serializer, "dead", reason=reason)
        txn.create(paths.result(entry.id), doc, acl=acl.acl(NodeKind.RESULT))
    try:
        _, error = first_error(commit(ctx, txn, deadline, "move to dead letters"))
    except ConnectionLost:
        return False  # the next worker to find it tries again
    if error is None and full:
        _log_dropped(queue, name, reason)
    elif error is None:
        logger.warning("queue %r: %s is a dead letter: %s", queue, name, reason)
    return error is None
