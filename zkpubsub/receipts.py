"""Receipts: proof that a write happened, for when its answer was lost.

Every publish, queue put, ack, release and replay transaction also creates
``receipts/<client id>/r<guid>``, as its first operation. If the connection
drops before the answer arrives, the writer syncs and checks that one node:
present means the write happened and must not be repeated, even if every
subscriber already consumed and deleted its copy, and even if the writer's
session expired meanwhile. :class:`ReceiptWriter` is that protocol, written
once: every writer gives it only its own operations and reads the outcome.

Once a write is confirmed its receipt is no longer needed. The janitor
deletes confirmed receipts in batched transactions off the writer's path,
and ``close()`` removes what is left, with the client's receipt folder. The
receipts of a client that went away without closing are removed by the
cleaner with the rest of its nodes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kazoo.exceptions import KazooException, NoNodeError, NotEmptyError

from ._acl import AclPolicy
from .connection import SERVER_MAX_BUFFER, Connection, first_error, request_size
from .errors import ConnectionLost, OperationTimeout, PayloadTooLarge, ZkPubSubError
from .layout import Layout, NodeKind, join, new_guid

__all__ = ["FLUSH_AFTER", "FLUSH_AT", "Outcome", "ReceiptJanitor", "ReceiptWriter", "landed"]

logger = logging.getLogger(__name__)

FLUSH_AT: Final = 200
# A transaction over the server's default buffer whose sending dropped the
# connection this many times, without being applied, was refused for its size.
REFUSALS_TO_GIVE_UP: Final = 2
FLUSH_AFTER: Final = 1.0


def landed(conn: Connection, receipt: str, deadline: float | None) -> bool:
    """After a lost answer: whether the transaction that creates ``receipt``
    was applied. ``sync`` first, so that a transaction the leader applied
    before the connection dropped is visible to this server (the two
    requests are sent together: a session's requests are served in order)."""
    kazoo = conn.kazoo
    _, stat = conn.read_all(
        lambda: [kazoo.sync_async(receipt), kazoo.exists_async(receipt)],
        deadline,
        f"look up {receipt}",
    )
    return stat is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a transaction sent through :class:`ReceiptWriter`.

    ``error`` is ``None`` when it was applied; otherwise the error of the
    caller's operation number ``index`` (counted among the caller's own
    operations, from 0), and nothing of the transaction was applied.
    ``looked_up`` says the answer was lost and the receipt proved the write.
    ``results`` are the answers to the caller's operations when it was
    applied and answered (the paths sequential creates were given, for
    instance); ``None`` after a lookup, when what it created is unknown.
    """

    error: Exception | None = None
    index: int = -1
    looked_up: bool = False
    results: tuple[Any, ...] | None = None

    @property
    def applied(self) -> bool:
        return self.error is None


Ops = Callable[[Any, str], None]  # adds the caller's ops to a transaction, given its guid


class ReceiptWriter:
    """Commits a transaction exactly once: the caller's operations plus a
    receipt. After a lost answer it looks the receipt up before sending
    again; a receipt folder removed meanwhile is made again; a confirmed
    receipt goes to the janitor."""

    def __init__(
        self,
        conn: Connection,
        layout: Layout,
        client_id: str,
        janitor: ReceiptJanitor,
        acl: AclPolicy,
    ) -> None:
        self._conn = conn
        self._acl = acl.acl(NodeKind.RECEIPT)
        self._layout = layout
        self._client_id = client_id
        self._data = client_id.encode()
        self.janitor = janitor
        self.lookups = 0  # transactions whose answer was lost and were looked up

    def commit(self, add_ops: Ops, deadline: float | None, what: str) -> Outcome:
        """Send ``add_ops(txn, guid)``'s operations with a receipt named by
        ``guid``, until the transaction is applied or refused for a reason of
        the caller's. ``add_ops`` may be called several times (a retry after a
        lost answer) and must add the same operations each time. Raises
        ``OperationTimeout`` or ``ClientClosed`` when the deadline passes or
        the client closes, and ``NotAuthorized`` when an ACL refuses one of
        the operations (nothing was applied); the ``OperationTimeout`` of a
        transaction sent and not answered says it may have been applied."""
        conn = self._conn
        guid = new_guid()
        receipt = self._layout.receipt(self._client_id, guid)
        refused = 0  # answers lost, and nothing applied, for a transaction too large
        while True:
            conn.wait_connected(deadline, what)
            txn = conn.kazoo.transaction()
            txn.create(receipt, self._data, acl=self._acl)
            add_ops(txn, guid)
            try:
                results = conn.result(txn.commit_async(), deadline, what)
            except OperationTimeout:
                raise OperationTimeout(
                    f"{what}: no answer from ZooKeeper in time; it may have been applied"
                ) from None
            except ConnectionLost:
                # It may or may not have been applied: look before writing again.
                self.lookups += 1
                if landed(conn, receipt, deadline):
                    self.janitor.add(receipt)
                    return Outcome(looked_up=True)
                size = request_size(txn)
                if size > SERVER_MAX_BUFFER:
                    refused += 1
                    if refused >= REFUSALS_TO_GIVE_UP:
                        raise PayloadTooLarge(
                            size,
                            SERVER_MAX_BUFFER,
                            why=(
                                f"the server dropped the connection {refused} times on "
                                f"receiving this {size}-byte transaction ({what}) and applied "
                                "nothing: its jute.maxbuffer is smaller (ZooKeeper's default "
                                f"is {SERVER_MAX_BUFFER} bytes); raise it on every server, or "
                                "lower max_message_bytes and max_transaction_bytes"
                            ),
                        ) from None
                continue
            index, error = first_error(results)
            if error is None:
                self.janitor.add(receipt)
                return Outcome(results=tuple(results[1:]))
            if index == 0 and isinstance(error, NoNodeError):
                # The receipt folder went (the client was away past the grace).
                conn.ensure_path(self.janitor.folder, deadline)
                continue
            return Outcome(error, index - 1)


class ReceiptJanitor:
    """Deletes confirmed receipts in batched, pipelined transactions.

    Nothing here blocks a writer: deletes are sent asynchronously and their
    answers only do bookkeeping (on kazoo's thread). Receipts are deleted
    once ``FLUSH_AT`` have gathered, or ``FLUSH_AFTER`` seconds after the
    oldest was confirmed, by a thread of the janitor if no write comes to
    do it (so an idle client leaves none behind). Receipts whose delete
    failed for want of a connection are tried again with the next batch.
    """

    def __init__(self, conn: Connection, layout: Layout, client_id: str) -> None:
        self._conn = conn
        self._folder = layout.client_receipts(client_id)
        self._lock = threading.Lock()
        self._due = threading.Condition(self._lock)
        self._paths: list[str] = []
        self._oldest = 0.0
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._name = f"zkpubsub-receipts-{client_id[:12]}"

    @property
    def folder(self) -> str:
        return self._folder

    def add(self, path: str) -> None:
        with self._lock:
            if not self._paths:
                self._oldest = time.monotonic()
                if self._thread is None and not self._stopped:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
                self._due.notify()
            self._paths.append(path)
            due = len(self._paths) >= FLUSH_AT or time.monotonic() - self._oldest > FLUSH_AFTER
        if due:
            self.flush()

    def _run(self) -> None:
        """Flush what an idle writer left, ``FLUSH_AFTER`` after the oldest."""
        while True:
            with self._lock:
                while not self._stopped:
                    if self._paths:
                        left = self._oldest + FLUSH_AFTER - time.monotonic()
                        if left <= 0:
                            break
                        self._due.wait(left)
                    else:
                        self._due.wait()
                if self._stopped:
                    return
                self._oldest = time.monotonic()  # not again before FLUSH_AFTER
            self.flush()

    def _take(self) -> list[str]:
        with self._lock:
            paths, self._paths = self._paths[:FLUSH_AT], self._paths[FLUSH_AT:]
            return paths

    def _give_back(self, paths: list[str]) -> None:
        with self._lock:
            self._paths[:0] = paths

    def flush(self) -> None:
        """Send the pending deletes (asynchronously)."""
        if not self._conn.connected.is_set():
            return  # they wait for the next flush
        while paths := self._take():
            try:
                txn = self._conn.kazoo.transaction()
                for path in paths:
                    txn.delete(path)
                txn.commit_async().rawlink(lambda result, p=paths: self._done(p, result))
            except KazooException as exc:  # the client is closing
                logger.debug("receipt cleanup skipped: %s", exc)
                return

    def _done(self, paths: list[str], result: Any) -> None:  # kazoo's thread
        try:
            results = result.get()
        except Exception:  # kazoo's or its loop's error
            self._give_back(paths)  # no answer: try again with the next batch
            return
        if first_error(results)[1] is None:
            return
        # One was gone already (a retried transaction): the rest go singly.
        for path in paths:
            self._conn.kazoo.delete_async(path)

    def close(self, deadline: float | None) -> None:
        """Delete the pending receipts and every other one left in this
        client's folder (it no longer needs them), then the folder."""
        conn = self._conn
        self.stop()
        names = conn.children(self._folder, deadline) or []
        for i in range(0, len(names), FLUSH_AT):
            txn = conn.kazoo.transaction()
            for name in names[i : i + FLUSH_AT]:
                txn.delete(join(self._folder, name))
            if first_error(conn.result(txn.commit_async(), deadline, "delete receipts"))[1]:
                for name in names[i : i + FLUSH_AT]:
                    with contextlib.suppress(ZkPubSubError):
                        conn.delete(join(self._folder, name), deadline)
        with contextlib.suppress(NoNodeError, NotEmptyError):
            conn.result(conn.kazoo.delete_async(self._folder), deadline, "delete receipts")

    def stop(self) -> None:
        """Forget the pending deletes and end the janitor's thread."""
        with self._lock:
            self._stopped = True
            self._paths.clear()
            self._due.notify()
