"""Receipts: proof that a write happened, for when its answer was lost.

Every publish, queue put and ack transaction also creates
``receipts/<client id>/r<guid>``. If the connection drops before the answer
arrives, the writer syncs and checks that one node: present means the write
happened and must not be repeated, even if every subscriber already consumed
and deleted its copy, and even if the writer's session expired meanwhile.

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
from typing import Any, Final

from kazoo.exceptions import KazooException, NoNodeError, NotEmptyError

from .connection import Connection, first_error
from .errors import ZkPubSubError
from .layout import Layout

logger = logging.getLogger(__name__)

FLUSH_AT: Final = 200
FLUSH_AFTER: Final = 1.0


def landed(conn: Connection, receipt: str, deadline: float | None) -> bool:
    """After a lost answer: whether the transaction that creates ``receipt``
    was applied. ``sync`` first, so that a transaction the leader applied
    before the connection dropped is visible to this server."""
    conn.sync(receipt, deadline)
    return conn.exists(receipt, deadline)


class ReceiptJanitor:
    """Deletes confirmed receipts in batched, pipelined transactions.

    Nothing here blocks a writer: deletes are sent asynchronously and their
    answers only do bookkeeping (on kazoo's thread). Receipts whose delete
    failed for want of a connection are tried again with the next batch.
    """

    def __init__(self, conn: Connection, layout: Layout, client_id: str) -> None:
        self._conn = conn
        self._folder = layout.client_receipts(client_id)
        self._lock = threading.Lock()
        self._paths: list[str] = []
        self._oldest = 0.0

    @property
    def folder(self) -> str:
        return self._folder

    def add(self, path: str) -> None:
        with self._lock:
            if not self._paths:
                self._oldest = time.monotonic()
            self._paths.append(path)
            due = len(self._paths) >= FLUSH_AT or time.monotonic() - self._oldest > FLUSH_AFTER
        if due:
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
        with self._lock:
            self._paths.clear()
        names = conn.children(self._folder, deadline) or []
        for i in range(0, len(names), FLUSH_AT):
            txn = conn.kazoo.transaction()
            for name in names[i : i + FLUSH_AT]:
                txn.delete(f"{self._folder}/{name}")
            if first_error(conn.result(txn.commit_async(), deadline, "delete receipts"))[1]:
                for name in names[i : i + FLUSH_AT]:
                    with contextlib.suppress(ZkPubSubError):
                        conn.delete(f"{self._folder}/{name}", deadline)
        with contextlib.suppress(NoNodeError, NotEmptyError):
            conn.result(conn.kazoo.delete_async(self._folder), deadline, "delete receipts")
