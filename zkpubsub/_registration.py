"""The registration protocol: the only code that writes a client's
``clients/<id>`` node and its ``subscribers/<topic>/<id>`` nodes.

* A client id is held by one live session: ``clients/<id>`` is ephemeral;
  registering waits (up to ``owner_wait``) for another session's node at
  that path to go, then raises :class:`~zkpubsub.ClientIdInUse` naming the
  holder. One exception: when the node says its process ran on this very
  machine and in this process namespace (host name, boot id and pid
  namespace all equal) and that pid is not running, its owner is provably
  dead; the node is deleted at its version and taken over at once, with
  the dead session's subscriber nodes and cleaner candidacy for this id
  (so neither a subscribe nor the cleaner election waits for its expiry).
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
from collections.abc import Callable, Iterable
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError

from ._context import Context
from ._deadlines import deadline_after, expired
from ._numbers import is_int
from ._purges import read_purge_record
from ._tree import delete_tree
from ._version import __version__
from .backlog import INLINE_BYTES, Backlog, QueueRecord
from .connection import first_error, translated
from .errors import ClientIdInUse, ConnectionLost, NotAuthorized, OperationTimeout
from .layout import NodeKind, join, split_queue

__all__ = [
    "check_purge",
    "create_ephemeral",
    "delete_queue",
    "describe_holder",
    "end_subscription",
    "holder_is_dead",
    "prepare_queue",
    "process_identity",
    "register_client",
    "register_subscription",
    "release_dead_session",
    "restore_client_data",
    "restore_subscription",
    "unregister_subscription",
]

logger = logging.getLogger(__name__)


_STARTED = time.time()


def process_identity() -> dict[str, Any]:
    """What ``clients/<id>`` says about the process holding it: enough for
    a later process on the same machine to tell whether it still runs."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _STARTED,
        "version": __version__,
    }
    boot, pidns = _boot_id(), _pid_namespace()
    if boot is not None:
        info["boot"] = boot
    if pidns is not None:
        info["pidns"] = pidns
    return info


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _holder(data: bytes) -> dict[str, Any]:
    try:
        info = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe_holder(data: bytes) -> str:
    """``host h, pid p`` of a ``clients/<id>`` node ("unknown" if unreadable)."""
    info = _holder(data)
    if "host" not in info and "pid" not in info:
        return "an unknown process"
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}"


def holder_is_dead(data: bytes) -> bool:
    """Whether the process that wrote ``clients/<id>`` is provably gone: it
    ran on this machine (same host name and boot), in this pid namespace,
    and its pid is not running. Anything less certain is not proof."""
    info, here = _holder(data), process_identity()
    pid = info.get("pid")
    if not is_int(pid) or pid <= 0 or pid == os.getpid():
        return False
    for key in ("host", "boot", "pidns"):
        if key not in here or info.get(key) != here[key]:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (as another user's process, say)
    return False


def create_ephemeral(
    ctx: Context,
    path: str,
    data: bytes,
    deadline: float | None,
    owner_wait: float,
    *,
    take_over: Callable[[bytes], bool] | None = None,
    on_taken_over: Callable[[int, bytes], None] | None = None,
) -> None:
    """Create an ephemeral node of this session, waiting up to ``owner_wait``
    for another session's node at the same path to go. If ``take_over``
    says the holder (given the node's data) is gone for sure, the node is
    deleted at its version and ``on_taken_over(old session, data)`` runs."""
    conn = ctx.conn
    kazoo = conn.kazoo
    owner_deadline = deadline_after(owner_wait)
    gone = threading.Event()
    told = False
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
        try:
            held, stat = conn.call(
                lambda: kazoo.get_async(path, watch=lambda _e: gone.set()), deadline, path
            )
        except NoNodeError:
            continue
        if stat.ephemeralOwner == conn.session_id:
            return
        if take_over is not None and stat.ephemeralOwner and take_over(held):
            logger.warning(
                "%s was held by %s, which is no longer running: taking it over",
                path,
                describe_holder(held),
            )
            try:
                conn.call(functools.partial(kazoo.delete_async, path, stat.version), deadline, path)
            except (NoNodeError, BadVersionError):
                continue
            except NotAuthorized:
                logger.warning(
                    "%s: this identity may not delete another session's node (only admins"
                    " may); waiting for the dead session to expire instead",
                    path,
                )
                take_over = None
                continue
            if on_taken_over is not None:
                on_taken_over(stat.ephemeralOwner, held)
            continue
        if expired(owner_deadline):
            raise ClientIdInUse(ctx.client_id, holder=describe_holder(held))
        if not told:
            logger.warning(
                "%s is held by another live session (%s); waiting up to %.0f s for it to end",
                path,
                describe_holder(held),
                owner_wait,
            )
            told = True
        gone.wait(0.5)


def register_client(ctx: Context, deadline: float | None, *, owner_wait: float) -> None:
    """Write ``clients/<id>`` for this session and make sure the receipt
    folder exists (once registered, nothing of ours is purged). A holder
    that is provably dead is taken over at once."""
    info = process_identity()
    create_ephemeral(
        ctx,
        ctx.layout.client(ctx.client_id),
        json.dumps(info).encode(),
        deadline,
        owner_wait,
        take_over=holder_is_dead,
        on_taken_over=lambda session, _data: release_dead_session(ctx, session, deadline),
    )
    ctx.conn.ensure_path(ctx.layout.client_receipts(ctx.client_id), deadline)


def release_dead_session(ctx: Context, session: int, deadline: float | None) -> None:
    """Delete what a dead session of this client id still holds and others
    would wait for: its subscriber nodes (each with a bump of the topic's
    version, as an unsubscribe) and its cleaner candidacy."""
    conn, layout, kazoo = ctx.conn, ctx.layout, ctx.conn.kazoo
    topics = conn.children(layout.subscribers, deadline) or []
    stats = conn.read_all(
        lambda: [kazoo.exists_async(layout.subscriber(t, ctx.client_id)) for t in topics],
        deadline,
        "find the dead session's subscriptions",
    )
    for topic, stat in zip(topics, stats, strict=True):
        if stat is None or isinstance(stat, Exception) or stat.ephemeralOwner != session:
            continue
        txn = kazoo.transaction()
        txn.delete(layout.subscriber(topic, ctx.client_id), stat.version)
        txn.set_data(layout.topic(topic), b"", -1)
        # a failure leaves it to go with its session
        with contextlib.suppress(ConnectionLost, NotAuthorized):
            conn.result(txn.commit_async(), deadline, f"remove a dead subscription to {topic!r}")
    names = conn.children(layout.candidates, deadline) or []
    answers = conn.read_all(
        lambda: [kazoo.exists_async(join(layout.candidates, n)) for n in names],
        deadline,
        "find the dead session's candidacy",
    )
    for name, stat in zip(names, answers, strict=True):
        if stat is None or isinstance(stat, Exception) or stat.ephemeralOwner != session:
            continue
        with contextlib.suppress(NoNodeError, BadVersionError, NotAuthorized):
            conn.call(
                functools.partial(kazoo.delete_async, join(layout.candidates, name), stat.version),
                deadline,
                "remove a dead cleaner candidate",
            )


def prepare_queue(
    ctx: Context, topic: str, backlog: Backlog, deadline: float | None
) -> float | None:
    """Make this client's queue for ``topic`` exist with its record (bound,
    current segment) and that segment. A queue with no readable record (from
    before segments, or written over by someone) gets one naming a fresh
    segment after any it has (its older nodes are still read first). A queue
    marked full under ``evict`` is what an eviction left: it is deleted and
    made anew, and the time it was marked (server clock) returned."""
    conn, layout, kazoo = ctx.conn, ctx.layout, ctx.conn.kazoo
    path = layout.queue(ctx.client_id, topic)
    queue_acl = ctx.acl.acl(NodeKind.QUEUE)
    inline = INLINE_BYTES if ctx.acl.names_private else 0
    segment_acl = ctx.acl.acl(NodeKind.SEGMENT)
    evicted: float | None = None
    while True:
        try:
            data, stat = conn.call(lambda: kazoo.get_async(path), deadline, f"read {path}")
        except NoNodeError:
            conn.ensure_path(layout.client_messages(ctx.client_id), deadline)
            conn.ensure_path(layout.topic(topic), deadline)
            txn = kazoo.transaction()
            txn.create(path, QueueRecord(0, backlog, inline=inline).encode(), acl=queue_acl)
            txn.create(layout.segment(path, 0), b"", acl=segment_acl)
            # a publisher that found the queue gone leaves it out until the
            # topic's version changes: made anew (after a deletion by someone
            # else, an eviction, the cleaner), it is written to again at once
            txn.set_data(layout.topic(topic), b"", -1)
        else:
            record = QueueRecord.decode(data)
            if record is not None and record.full:
                logger.warning(
                    "%s: the subscription was evicted (its queue filled up); starting afresh", path
                )
                evicted = stat.mtime / 1000
                delete_tree(conn, path, deadline)
                continue
            if record is not None and record.backlog == backlog and record.inline == inline:
                return evicted
            txn = kazoo.transaction()
            if record is None:
                numbers = split_queue(conn.children(path, deadline) or [])[1]
                fresh = numbers[-1] + 1 if numbers else 0
                fresh_record = QueueRecord(fresh, backlog, inline=inline)
                txn.set_data(path, fresh_record.encode(), stat.version)
                txn.create(layout.segment(path, fresh), b"", acl=segment_acl)
            else:
                kept = QueueRecord(record.segment, backlog, inline=inline, unknown=record.unknown)
                txn.set_data(path, kept.encode(), stat.version)
        conn.wait_connected(deadline, f"prepare {path}")
        with contextlib.suppress(ConnectionLost):  # look again either way
            if first_error(conn.result(txn.commit_async(), deadline, f"prepare {path}"))[1]:
                continue  # changed under us (a roll, a concurrent subscribe): look again
            return evicted


def restore_client_data(ctx: Context, deadline: float | None) -> None:
    """Write the client node's data again (someone else changed it)."""
    kazoo, path = ctx.conn.kazoo, ctx.layout.client(ctx.client_id)
    data = json.dumps(process_identity()).encode()
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
) -> float | None:
    """Queue first, then the subscriber node with a bump of the topic's
    version in the same transaction. Returns when an evicted queue found in
    the way was marked full (see :func:`prepare_queue`), else ``None``."""
    conn, layout, kazoo = ctx.conn, ctx.layout, ctx.conn.kazoo
    topic_path = layout.topic(topic)
    sub_path = layout.subscriber(topic, ctx.client_id)
    data = b"durable" if durable else b""
    evicted = prepare_queue(ctx, topic, backlog or ctx.config.backlog, deadline)
    while True:
        conn.ensure_path(topic_path, deadline)
        stat = conn.call(lambda: kazoo.exists_async(sub_path), deadline, sub_path)
        session = conn.session_id
        txn = kazoo.transaction()
        if stat is not None:
            owner = stat.ephemeralOwner
            if (durable and owner == 0) or (not durable and owner == session):
                return evicted  # already registered as asked (perhaps by a lost answer)
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
            return evicted
        # NodeExists / BadVersion: it changed under us; NoNode: the empty
        # topic node was removed in between. Look again.


def unregister_subscription(
    ctx: Context, topic: str, deadline: float | None, *, once: bool = False
) -> None:
    """Remove the subscriber node (either kind) and bump the version.
    ``once``: ``ConnectionLost`` without a connection, instead of waiting
    for one until ``deadline``."""
    conn, layout = ctx.conn, ctx.layout
    sub_path = layout.subscriber(topic, ctx.client_id)
    while True:
        txn = conn.kazoo.transaction()
        txn.delete(sub_path)
        txn.set_data(layout.topic(topic), b"", -1)
        try:
            if once and not conn.connected.is_set():
                raise ConnectionLost(f"unsubscribe from {topic!r}: not connected")
            conn.wait_connected(deadline)
            conn.result(txn.commit_async(), deadline, f"unsubscribe from {topic!r}")
            return  # a NoNode result means there was nothing to remove
        except ConnectionLost:
            if once:
                raise
            continue


def delete_queue(ctx: Context, topic: str, deadline: float | None) -> None:
    """Delete this client's queue for ``topic`` with its backlog."""
    delete_tree(ctx.conn, ctx.layout.queue(ctx.client_id, topic), deadline)
    with contextlib.suppress(NotEmptyError):  # other topics' queues remain
        ctx.conn.delete(ctx.layout.client_messages(ctx.client_id), deadline)


def end_subscription(
    ctx: Context,
    topic: str,
    deadline: float | None,
    *,
    unregister: bool,
    drop_queue: bool,
    once: bool,
) -> None:
    """End this client's subscription to ``topic``: remove its registration
    (if ``unregister``; ``once`` as for ``unregister_subscription``), then
    its queue with the backlog (if ``drop_queue``). Errors are
    ``ZkPubSubError``s of an ``unsubscribe``."""
    with translated(f"unsubscribe from {topic!r}"):
        if unregister:
            unregister_subscription(ctx, topic, deadline, once=once)
        if drop_queue:
            delete_queue(ctx, topic, deadline)


def check_purge(ctx: Context, deadline: float | None, subscribed: Iterable[str]) -> list[str]:
    """After registering: if the cleaner had begun deleting our queues, the
    rest of its work is now refused (it proves our absence in every step).
    Clear its marker and report the topics affected (those the marker
    names, those with a queue left, and ``subscribed``)."""
    conn, layout, kazoo = ctx.conn, ctx.layout, ctx.conn.kazoo
    marker = layout.purge_marker(ctx.client_id)
    try:
        data, _ = conn.call(lambda: kazoo.get_async(marker), deadline, marker)
    except NoNodeError:
        return []
    topics = conn.children(layout.client_messages(ctx.client_id), deadline) or []
    conn.delete(marker, deadline)
    return sorted(set(read_purge_record(data)) | set(topics) | set(subscribed))
