"""The registration protocol: the only code that writes a client's
``clients/<id>`` node and its ``subscribers/<topic>/<id>`` nodes.

* A client id is held by one live session: ``clients/<id>`` is ephemeral;
  registering waits (up to ``owner_wait``) for another session's node at
  that path to go, then raises :class:`~zkpubsub.ClientIdInUse`.
* A subscription registers its queue first, then its subscriber node with
  a bump of the topic's data version in the same transaction (publishers
  check that version, so a publish started after ``subscribe()`` returned
  reaches it). A durable registration is a persistent node, a plain one
  ephemeral; an existing node of the other kind (ours) is replaced in the
  same transaction.
* After registering, a marker left by a cleaner that had begun deleting
  this id's queues is cleared, and the topics affected are reported.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable

from kazoo.exceptions import NodeExistsError, NoNodeError, NotEmptyError

from ._context import Context
from ._tree import delete_tree
from ._version import __version__
from .backlog import Backlog, QueueRecord
from .connection import deadline_after, expired, first_error
from .errors import ClientIdInUse, ConnectionLost, OperationTimeout
from .layout import NodeKind, split_queue

__all__ = [
    "check_purge",
    "create_ephemeral",
    "delete_queue",
    "prepare_queue",
    "register_client",
    "register_subscription",
    "restore_client_data",
    "restore_subscription",
    "unregister_subscription",
]

logger = logging.getLogger(__name__)


def create_ephemeral(
    ctx: Context, path: str, data: bytes, deadline: float | None, owner_wait: float
) -> None:
    """Create an ephemeral node of this session, waiting up to ``owner_wait``
    for another session's node at the same path to go."""
    conn = ctx.conn
    kazoo = conn.kazoo
    owner_deadline = deadline_after(owner_wait)
    gone = threading.Event()
    while True:
        conn.wait_connected(deadline, f"create {path}")
        try:
            conn.result(
                kazoo.create_async(path, data, acl=conn.acl_for(path), ephemeral=True),
                deadline,
                path,
            )
            return
        except ConnectionLost:
            continue  # if it landed, the next try finds it with our owner
        except NodeExistsError:
            pass
        gone.clear()
        stat = conn.call(
            lambda: kazoo.exists_async(path, watch=lambda _e: gone.set()), deadline, path
        )
        if stat is None:
            continue
        if stat.ephemeralOwner == conn.session_id:
            return
        if expired(owner_deadline):
            raise ClientIdInUse(ctx.client_id)
        logger.info("%s is held by another session; waiting for it to expire", path)
        gone.wait(0.5)


_STARTED = time.time()


def _client_info() -> bytes:
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _STARTED,
        "version": __version__,
    }
    return json.dumps(info).encode()


def register_client(ctx: Context, deadline: float | None, *, owner_wait: float) -> None:
    """Write ``clients/<id>`` for this session and make sure the receipt
    folder exists (once registered, nothing of ours is purged)."""
    create_ephemeral(ctx, ctx.layout.client(ctx.client_id), _client_info(), deadline, owner_wait)
    ctx.conn.ensure_path(ctx.layout.client_receipts(ctx.client_id), deadline)


def prepare_queue(ctx: Context, topic: str, backlog: Backlog, deadline: float | None) -> None:
    """Make this client's queue for ``topic`` exist with its record (bound,
    current segment) and that segment. A queue with no readable record (from
    before segments, or written over by someone) gets one naming a fresh
    segment after any it has (its older nodes are still read first)."""
    conn, layout, kazoo = ctx.conn, ctx.layout, ctx.conn.kazoo
    path = layout.queue(ctx.client_id, topic)
    queue_acl = ctx.acl.acl(NodeKind.QUEUE)
    segment_acl = ctx.acl.acl(NodeKind.SEGMENT)
    while True:
        try:
            data, stat = conn.call(lambda: kazoo.get_async(path), deadline, f"read {path}")
        except NoNodeError:
            conn.ensure_path(layout.client_messages(ctx.client_id), deadline)
            txn = kazoo.transaction()
            txn.create(path, QueueRecord(0, backlog).encode(), acl=queue_acl)
            txn.create(layout.segment(path, 0), b"", acl=segment_acl)
        else:
            record = QueueRecord.decode(data)
            if record is not None and record.backlog == backlog:
                return
            txn = kazoo.transaction()
            if record is None:
                numbers = split_queue(conn.children(path, deadline) or [])[1]
                fresh = numbers[-1] + 1 if numbers else 0
                txn.set_data(path, QueueRecord(fresh, backlog).encode(), stat.version)
                txn.create(layout.segment(path, fresh), b"", acl=segment_acl)
            else:
                txn.set_data(path, QueueRecord(record.segment, backlog).encode(), stat.version)
        conn.wait_connected(deadline, f"prepare {path}")
        with contextlib.suppress(ConnectionLost):  # look again either way
            if first_error(conn.result(txn.commit_async(), deadline, f"prepare {path}"))[1]:
                continue  # changed under us (a roll, a concurrent subscribe): look again
            return


def restore_client_data(ctx: Context, deadline: float | None) -> None:
    """Write the client node's data again (someone else changed it)."""
    kazoo, path = ctx.conn.kazoo, ctx.layout.client(ctx.client_id)
    data = _client_info()
    with contextlib.suppress(NoNodeError):  # gone: the deletion guard handles it
        ctx.conn.call(lambda: kazoo.set_async(path, data), deadline, f"restore {path}")


def restore_subscription(
    ctx: Context, topic: str, deadline: float | None, *, durable: bool, backlog: Backlog
) -> None:
    """Register again after someone else deleted or changed the subscription
    node or the queue node: the queue with a readable record (publishers
    change the record themselves when they move the queue on), the
    subscription node with its expected (empty or ``durable``) data."""
    register_subscription(ctx, topic, deadline, durable=durable, backlog=backlog)
    conn, kazoo = ctx.conn, ctx.conn.kazoo
    path = ctx.layout.subscriber(topic, ctx.client_id)
    data = b"durable" if durable else b""
    try:
        found, _ = conn.call(functools.partial(kazoo.get_async, path), deadline, path)
        if found != data:
            conn.call(functools.partial(kazoo.set_async, path, data), deadline, path)
    except NoNodeError:
        pass  # deleted again: the guard hears of it


def register_subscription(
    ctx: Context,
    topic: str,
    deadline: float | None,
    *,
    durable: bool = False,
    backlog: Backlog | None = None,
) -> None:
    """Queue first, then the subscriber node with a bump of the topic's
    version in the same transaction."""
    conn, layout, kazoo = ctx.conn, ctx.layout, ctx.conn.kazoo
    topic_path = layout.topic(topic)
    sub_path = layout.subscriber(topic, ctx.client_id)
    data = b"durable" if durable else b""
    prepare_queue(ctx, topic, backlog or ctx.config.backlog, deadline)
    while True:
        conn.ensure_path(topic_path, deadline)
        stat = conn.call(lambda: kazoo.exists_async(sub_path), deadline, sub_path)
        session = conn.session_id
        txn = kazoo.transaction()
        if stat is not None:
            owner = stat.ephemeralOwner
            if (durable and owner == 0) or (not durable and owner == session):
                return  # already registered as asked (perhaps by a lost answer)
            if owner not in (0, session):
                # A dying session's node: it goes when that session expires.
                if expired(deadline):
                    raise OperationTimeout(f"subscribe to {topic!r}: {sub_path} stays taken")
                time.sleep(0.2)
                continue
            txn.delete(sub_path, stat.version)
        txn.create(sub_path, data, acl=conn.acl_for(sub_path), ephemeral=not durable)
        txn.set_data(topic_path, b"", -1)
        try:
            results = conn.result(txn.commit_async(), deadline, f"subscribe to {topic!r}")
        except ConnectionLost:
            continue  # the exists() above tells whether it landed
        if not any(isinstance(r, Exception) for r in results):
            return
        # NodeExists / BadVersion: it changed under us; NoNode: the empty
        # topic node was removed in between. Look again.


def unregister_subscription(ctx: Context, topic: str, deadline: float | None) -> None:
    """Remove the subscriber node (either kind) and bump the version."""
    conn, layout = ctx.conn, ctx.layout
    sub_path = layout.subscriber(topic, ctx.client_id)
    while True:
        txn = conn.kazoo.transaction()
        txn.delete(sub_path)
        txn.set_data(layout.topic(topic), b"", -1)
        try:
            conn.wait_connected(deadline)
            conn.result(txn.commit_async(), deadline, f"unsubscribe from {topic!r}")
            return  # a NoNode result means there was nothing to remove
        except ConnectionLost:
            continue


def delete_queue(ctx: Context, topic: str, deadline: float | None) -> None:
    """Delete this client's queue for ``topic`` with its backlog."""
    delete_tree(ctx.conn, ctx.layout.queue(ctx.client_id, topic), deadline)
    with contextlib.suppress(NotEmptyError):  # other topics' queues remain
        ctx.conn.delete(ctx.layout.client_messages(ctx.client_id), deadline)


def check_purge(ctx: Context, deadline: float | None, subscribed: Iterable[str]) -> list[str]:
    """After registering: if the cleaner had begun deleting our queues, the
    rest of its work is now refused (it proves our absence in every step).
    Clear its marker and report the topics affected (those with a queue
    left, and ``subscribed``)."""
    conn, layout, kazoo = ctx.conn, ctx.layout, ctx.conn.kazoo
    marker = layout.purge_marker(ctx.client_id)
    stat = conn.call(lambda: kazoo.exists_async(marker), deadline, marker)
    if stat is None:
        return []
    topics = conn.children(layout.client_messages(ctx.client_id), deadline) or []
    conn.delete(marker, deadline)
    return sorted(set(topics) | set(subscribed))
