"""Receipts: proof that a write happened, for when its answer was lost.

Every publish (and every queue put) transaction also creates
``receipts/<guid>``. If the connection drops before the answer arrives, the
writer syncs and checks that one node: present means the write happened and
must not be repeated, even if every subscriber already consumed and deleted
its copy. Once a write is confirmed its receipt is no longer needed; the
writer deletes receipts in batches in the background, and the cleaner
removes the ones a crashed writer left behind once they are older than the
receipt TTL (by the server's clock).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

from kazoo.exceptions import KazooException

from .connection import Connection

logger = logging.getLogger(__name__)

FLUSH_AT: Final = 200
FLUSH_AFTER: Final = 1.0


class ReceiptJanitor:
    """Deletes confirmed receipts in batched, pipelined transactions.

    Nothing here blocks: deletes are sent asynchronously and their answers
    only do bookkeeping. A receipt whose delete fails is left to the
    cleaner's TTL sweep.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._paths: list[str] = []
        self._oldest = 0.0

    def add(self, path: str) -> None:
        with self._lock:
            if not self._paths:
                self._oldest = time.monotonic()
            self._paths.append(path)
            due = len(self._paths) >= FLUSH_AT or time.monotonic() - self._oldest > FLUSH_AFTER
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            paths, self._paths = self._paths, []
        if not paths or not self._conn.connected.is_set():
            if paths:
                with self._lock:
                    self._paths[:0] = paths
            return
        try:
            txn = self._conn.kazoo.transaction()
            for path in paths:
                txn.delete(path)
            txn.commit_async().rawlink(lambda result: self._done(paths, result))
        except KazooException as exc:  # the client is closing
            logger.debug("receipt cleanup skipped: %s", exc)

    def _done(self, paths: list[str], result: Any) -> None:  # kazoo's thread
        try:
            results = result.get()
        except KazooException:
            return  # connection trouble: the cleaner's TTL sweep takes them
        if any(isinstance(r, Exception) for r in results):
            # One was gone already (the cleaner took it): delete the rest singly.
            for path in paths:
                self._conn.kazoo.delete_async(path)
