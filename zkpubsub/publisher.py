"""Fan-out: one message (or batch) written into every subscriber's queue.

Guarantees, each kept by the server rather than by a cache:

* One ZooKeeper transaction per fan-out: every subscriber gets the message
  or none does, so all subscribers of a topic see messages in one order,
  whatever the number of publishers.
* The transaction checks the data version of ``subscribers/<topic>``, which
  every subscribe bumps in its own transaction. A subscriber whose
  ``subscribe()`` returned before ``publish()`` was called is therefore
  always included: if the publisher's list is stale, the check fails, the
  list is read again and the transaction retried. An empty list is
  confirmed with ``sync`` before zero is returned.
* A queue deleted mid-publish (its client is gone) is dropped from the
  retry instead of failing the publish.
* Each transaction has a guid, in its message node names and in a receipt
  node ``receipts/<publisher id>/r<guid>`` created in the same transaction.
  After a connection loss the receipt is looked up (after a ``sync``) before
  anything is written again, so a retry never duplicates a message, even one
  every subscriber has already consumed, even across a session expiry.
  Receipts are deleted in batches once confirmed, and with the client's other
  nodes by the cleaner if it goes away.
* A fan-out too large for one transaction is split into several; each part
  is atomic and checks the topic version, so every entitled subscriber is
  still reached, but another publisher's message may then land between two
  parts (order across subscribers of different parts is not guaranteed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import (
    BadVersionError,
    NoNodeError,
    RolledBackError,
    RuntimeInconsistency,
)

from . import envelope
from .config import CREATE_OP_OVERHEAD, ClientConfig
from .connection import Connection, deadline_after, expired
from .errors import (
    ConnectionLost,
    NoSubscribers,
    OperationTimeout,
    PublishTimeout,
    ZooKeeperError,
)
from .layout import Layout, new_guid, validate_name
from .message import PublishReceipt
from .receipts import ReceiptJanitor, landed

if TYPE_CHECKING:
    from kazoo.protocol.states import WatchedEvent

logger = logging.getLogger(__name__)

_CHECK_OP_OVERHEAD = 32
_LONGEST_QUEUE_PATH_EXTRA = 300  # client id (<= 200) and the node name
_SKIPPED = (RolledBackError, RuntimeInconsistency)


@dataclass(frozen=True, slots=True)
class TopicView:
    """The subscribers of a topic as last read, with the version they belong to."""

    version: int | None  # None: the topic node does not exist
    subscribers: tuple[str, ...]


class Publisher:
    """Writes messages into subscriber queues; shared by all threads of a client."""

    def __init__(
        self, conn: Connection, layout: Layout, config: ClientConfig, publisher_id: str
    ) -> None:
        self._conn = conn
        self._layout = layout
        self._config = config
        self._publisher_id = publisher_id
        self._lock = threading.Lock()
        self._views: dict[str, TopicView] = {}
        self._generation: dict[str, int] = {}
        self._watchers: dict[str, Callable[[WatchedEvent], None]] = {}
        self.janitor = ReceiptJanitor(conn, layout, publisher_id)
        self.lookups = 0  # transactions whose answer was lost and were looked up

    # -- building nodes ---------------------------------------------------

    def entries(
        self, topic: str, payloads: Sequence[Any], headers: dict[str, str] | None
    ) -> list[envelope.Entry]:
        """Serialized messages for ``payloads``. Nothing is sent; bad input
        raises here (ValueError, SerializationError)."""
        validate_name(topic, "topic")
        hdrs = envelope.check_headers(headers)
        return [
            envelope.make_entry(
                self._config.serializer,
                topic=topic,
                payload=p,
                headers=hdrs,
                publisher_id=self._publisher_id,
            )
            for p in payloads
        ]

    def build_nodes(
        self, topic: str, payloads: Sequence[Any], headers: dict[str, str] | None
    ) -> tuple[list[str], list[bytes]]:
        """Message ids and node data for ``payloads``, packed into as few nodes
        as ``max_message_bytes`` allows. Nothing is sent."""
        entries = self.entries(topic, payloads, headers)
        return [e.id for e in entries], envelope.pack(entries, self._config.max_message_bytes)

    # -- the subscriber list ------------------------------------------------

    def _watcher(self, topic: str) -> Callable[[WatchedEvent], None]:
        watcher = self._watchers.get(topic)
        if watcher is None:

            def watcher(event: WatchedEvent) -> None:  # kazoo's thread: bookkeeping only
                with self._lock:
                    self._generation[topic] = self._generation.get(topic, 0) + 1
                    self._views.pop(topic, None)

            self._watchers[topic] = watcher
        return watcher

    def view(self, topic: str, deadline: float | None, *, fresh: bool = False) -> TopicView:
        """The subscribers of ``topic``: cached unless ``fresh`` (then synced)."""
        with self._lock:
            cached = None if fresh else self._views.get(topic)
            generation = self._generation.get(topic, 0)
        if cached is not None:
            return cached
        kazoo = self._conn.kazoo
        path = self._layout.topic(topic)
        if fresh:
            self._conn.sync(path, deadline)
        watcher = self._watcher(topic)
        try:
            children, stat = self._conn.call(
                lambda: kazoo.get_children_async(path, watch=watcher, include_data=True),
                deadline,
                "read subscriber list",
            )
        except NoNodeError:
            return TopicView(None, ())
        view = TopicView(stat.version, tuple(sorted(children)))
        with self._lock:
            if self._generation.get(topic, 0) == generation:
                self._views[topic] = view
        return view

    # -- publishing -----------------------------------------------------------

    def publish(
        self,
        topic: str,
        payloads: Sequence[Any],
        headers: dict[str, str] | None,
        *,
        timeout: float | None,
        require_subscribers: bool,
    ) -> PublishReceipt:
        ids, nodes = self.build_nodes(topic, payloads, headers)
        return self.publish_nodes(
            topic, ids, nodes, timeout=timeout, require_subscribers=require_subscribers
        )

    def publish_nodes(
        self,
        topic: str,
        ids: list[str],
        nodes: list[bytes],
        *,
        timeout: float | None,
        require_subscribers: bool,
    ) -> PublishReceipt:
        """Fan ``nodes`` out (split over several transactions if need be)."""
        deadline = deadline_after(timeout)
        reached: set[str] = set()
        transactions = 0
        try:
            for round_nodes in self._rounds(topic, nodes):
                round_reached, txns = self._fan_out(topic, round_nodes, deadline)
                reached |= round_reached
                transactions += txns
        except OperationTimeout as exc:
            raise PublishTimeout(
                f"publish to {topic!r} not confirmed in time ({exc}); the outcome is unknown",
                message_ids=tuple(ids),
                reached=len(reached),
            ) from exc
        if not reached and require_subscribers:
            raise NoSubscribers(topic)
        return PublishReceipt(tuple(ids), len(reached), topic, transactions)

    def _op_size(self, topic: str, data: bytes) -> int:
        """Bytes one message create adds (for the longest possible queue path)."""
        path = len(self._layout.messages) + len(topic) + _LONGEST_QUEUE_PATH_EXTRA
        return len(data) + path + CREATE_OP_OVERHEAD

    def _budget(self, topic: str) -> int:
        """Bytes left for message creates once the check and receipt are in."""
        check = len(self._layout.topic(topic)) + _CHECK_OP_OVERHEAD
        receipt = len(self._layout.receipt(self._publisher_id, new_guid())) + CREATE_OP_OVERHEAD
        return self._config.max_transaction_bytes - check - receipt - len(self._publisher_id)

    def _rounds(self, topic: str, nodes: list[bytes]) -> list[list[bytes]]:
        """Groups of nodes small enough that one subscriber's share fits in a
        transaction. Usually a single group."""
        budget = self._budget(topic)
        rounds: list[list[bytes]] = []
        current: list[bytes] = []
        used = 0
        for data in nodes:
            size = self._op_size(topic, data)
            if current and used + size > budget:
                rounds.append(current)
                current, used = [], 0
            current.append(data)
            used += size
        if current:
            rounds.append(current)
        return rounds

    def _chunks(self, topic: str, targets: list[str], nodes: list[bytes]) -> list[list[str]]:
        """Subscribers grouped so each group's transaction fits the limit."""
        per_subscriber = sum(self._op_size(topic, d) for d in nodes)
        per_txn = max(1, self._budget(topic) // per_subscriber)
        return [targets[i : i + per_txn] for i in range(0, len(targets), per_txn)]

    def _fan_out(
        self, topic: str, nodes: list[bytes], deadline: float | None
    ) -> tuple[set[str], int]:
        """Write ``nodes`` (in order) to every subscriber; returns who got them."""
        reached: set[str] = set()
        dropped: set[str] = set()
        view = self.view(topic, deadline)
        synced = False
        transactions = 0
        while True:
            if expired(deadline):
                raise OperationTimeout(f"publish to {topic!r}: deadline passed")
            targets = [s for s in view.subscribers if s not in reached and s not in dropped]
            if not targets:
                if synced or reached:
                    return reached, transactions
                # An empty (or fully reached) list may be stale: confirm it.
                view = self.view(topic, deadline, fresh=True)
                synced = True
                continue
            assert view.version is not None
            for chunk in self._chunks(topic, targets, nodes):
                outcome, culprit = self._commit(topic, view.version, chunk, nodes, deadline)
                transactions += 1
                if outcome == "ok":
                    reached.update(chunk)
                    continue
                if outcome == "gone":
                    dropped.add(culprit)
                elif outcome == "stale":
                    view = self.view(topic, deadline, fresh=True)
                    synced = True
                break  # re-plan with what is left
            else:
                return reached, transactions

    def _commit(
        self,
        topic: str,
        version: int,
        chunk: list[str],
        nodes: list[bytes],
        deadline: float | None,
    ) -> tuple[str, str]:
        """One fan-out transaction, exactly once. Returns ``("ok", "")``,
        ``("stale", "")`` (subscriber list changed) or ``("gone", id)`` (that
        subscriber's queue no longer exists)."""
        conn, layout = self._conn, self._layout
        topic_path = layout.topic(topic)
        guid = new_guid()
        receipt = layout.receipt(self._publisher_id, guid)
        owners: list[str] = []
        while True:
            conn.wait_connected(deadline, f"publish to {topic!r}")
            txn = conn.kazoo.transaction()
            txn.check(topic_path, version)
            txn.create(receipt, self._publisher_id.encode())
            owners.clear()
            for sub in chunk:
                prefix = layout.message_prefix(layout.queue(sub, topic), guid)
                for data in nodes:
                    txn.create(prefix, data, sequence=True)
                    owners.append(sub)
            try:
                results = conn.result(txn.commit_async(), deadline, f"publish to {topic!r}")
            except ConnectionLost:
                # It may or may not have been applied: look before writing again.
                self.lookups += 1
                if landed(conn, receipt, deadline):
                    self.janitor.add(receipt)
                    return "ok", ""
                continue
            failures = [
                (i, r)
                for i, r in enumerate(results)
                if isinstance(r, Exception) and not isinstance(r, _SKIPPED)
            ]
            if not failures:
                self.janitor.add(receipt)
                return "ok", ""
            index, error = failures[0]
            if index == 0 and isinstance(error, (BadVersionError, NoNodeError)):
                return "stale", ""
            if index == 1 and isinstance(error, NoNodeError):
                # The receipt folder went (the client was away past the grace).
                conn.ensure_path(layout.client_receipts(self._publisher_id), deadline)
                continue
            if index > 1 and isinstance(error, NoNodeError):
                gone = owners[index - 2]
                logger.debug("queue of %s for %r is gone; dropping it", gone, topic)
                return "gone", gone
            raise ZooKeeperError(f"publish to {topic!r}: {type(error).__name__}")
