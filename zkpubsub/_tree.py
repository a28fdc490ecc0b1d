"""Deleting subtrees in bounded transactions, optionally guarded.

ZooKeeper deletes one childless node per operation and bounds a transaction
by ``jute.maxbuffer``; a large queue therefore goes in several transactions
of at most ``DELETE_BATCH`` deletes. A *guard* prefixes every transaction
with operations of the caller's (the cleaner's fence and its proof that a
client is still absent): if a guard operation fails, nothing of that
transaction is applied and :class:`Refused` says which kind of guard failed.
Deletes are idempotent, so a transaction whose answer was lost is simply
sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from kazoo.exceptions import BadVersionError, NoNodeError, NotEmptyError

from .connection import Connection, first_error
from .errors import ConnectionLost, ZooKeeperError
from .layout import join

__all__ = ["DELETE_BATCH", "Guard", "Refused", "delete_batch", "delete_tree", "guarded_commit"]

DELETE_BATCH: Final = 500

Guard = Callable[[Any], int]  # adds ops to a transaction, returns how many


class Refused(Exception):
    """A guard op failed: ``reason`` is ``"fence"`` when a checked node was
    gone or had changed (leadership lost), ``"back"`` otherwise (a node the
    guard creates exists again: the client is back)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def leader_fence(me: str) -> Guard:
    """A guard that checks the election node ``me`` exists: its cleaner still
    leads, on the session that made it."""

    def fence(txn: Any) -> int:
        txn.check(me, -1)
        return 1

    return fence


def still_leads(conn: Connection, me: str, deadline: float | None) -> bool:
    """Whether the election node ``me`` exists (after a guard was refused:
    fenced out, or the guard's other checks)."""
    return conn.call(lambda: conn.kazoo.exists_async(me), deadline, "election") is not None


def _refusal(error: Exception) -> Refused:
    return Refused("fence" if isinstance(error, (NoNodeError, BadVersionError)) else "back")


def delete_tree(
    conn: Connection,
    path: str,
    deadline: float | None,
    *,
    guard: Guard | None = None,
    batch: int = DELETE_BATCH,
) -> int:
    """Delete ``path`` and everything below it in transactions of at most
    ``batch`` deletes, each prefixed by ``guard``'s ops. Returns the number of
    nodes deleted. Raises :class:`Refused` if a guard op fails."""
    deleted = 0
    while True:
        children = conn.children(path, deadline)
        if children is None:
            return deleted
        for i in range(0, len(children), batch):
            chunk = [join(path, c) for c in children[i : i + batch]]
            deleted += delete_batch(conn, chunk, deadline, guard, recurse=True)
        n = delete_batch(conn, [path], deadline, guard, recurse=False)
        if n >= 0:
            return deleted + n
        # NotEmpty: something was written below meanwhile; go round again.


def delete_batch(
    conn: Connection,
    paths: list[str],
    deadline: float | None,
    guard: Guard | None,
    *,
    recurse: bool,
) -> int:
    """Delete ``paths`` in one guarded transaction; returns how many. A path
    that turns out to have children is emptied first (``recurse``) or makes
    this return -1."""
    kazoo = conn.kazoo
    deleted = 0
    while paths:
        conn.wait_connected(deadline, "delete")
        txn = kazoo.transaction()
        g = guard(txn) if guard else 0
        for p in paths:
            txn.delete(p)
        try:
            results = conn.result(txn.commit_async(), deadline, "delete")
        except ConnectionLost:
            continue  # deletes are idempotent: NoNode on the retry is fine
        index, error = first_error(results)
        if error is None:
            return deleted + len(paths)
        if index < g:
            raise _refusal(error)
        culprit = paths[index - g]
        if isinstance(error, NoNodeError):
            paths = [p for p in paths if p != culprit]
        elif isinstance(error, NotEmptyError) and recurse:
            deleted += delete_tree(conn, culprit, deadline, guard=guard)
            paths = [p for p in paths if p != culprit]
        elif isinstance(error, NotEmptyError):
            return -1
        else:
            raise ZooKeeperError(f"delete {culprit}: {type(error).__name__}")
    return deleted


def guarded_commit(
    conn: Connection,
    guard: Guard,
    add_ops: Callable[[Any], None],
    deadline: float | None,
    what: str,
) -> Exception | None:
    """Commit ``guard``'s ops and ``add_ops``' in one transaction, again after a
    lost answer. Returns ``None`` on success or the error of the first failed
    op of ``add_ops`` (``NodeExists`` on a retry, ``NoNode``…): those are for
    the caller to judge. Raises :class:`Refused` if a guard op failed."""
    while True:
        conn.wait_connected(deadline, what)
        txn = conn.kazoo.transaction()
        g = guard(txn)
        add_ops(txn)
        try:
            results = conn.result(txn.commit_async(), deadline, what)
        except ConnectionLost:
            continue
        index, error = first_error(results)
        if error is not None and index < g:
            raise _refusal(error)
        return error
