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
* Each transaction carries a receipt (:mod:`zkpubsub.receipts`), looked up
  after a lost answer before anything is written again, so a retry never
  duplicates a message, even one every subscriber has already consumed,
  even across a session expiry.
* A fan-out too large for one transaction is split into several; each part
  is atomic and checks the topic version, so every entitled subscriber is
  still reached, but another publisher's message may then land between two
  parts (order across subscribers of different parts is not guaranteed).

This module reads subscriber lists, plans transactions and runs one
fan-out; :mod:`zkpubsub._engine` decides what goes out when.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import NoNodeError

from . import envelope
from ._context import Context
from ._fanout import FanOut
from .config import CREATE_OP_OVERHEAD
from .connection import expired
from .errors import OperationTimeout
from .layout import NodeKind, new_guid, validate_name

if TYPE_CHECKING:
    from kazoo.protocol.states import WatchedEvent

__all__ = ["Publisher", "Targets", "TopicView", "plan_rounds", "split_targets"]

logger = logging.getLogger(__name__)

_CHECK_OP_OVERHEAD = 32
_LONGEST_QUEUE_PATH_EXTRA = 300  # client id (<= 200) and the node name


@dataclass(frozen=True, slots=True)
class TopicView:
    """The subscribers of a topic as last read, with the version they belong to."""

    version: int | None  # None: the topic node does not exist
    subscribers: tuple[str, ...]


@dataclass(slots=True)
class Targets:
    """Queues found gone for one version of a topic's subscriber list (a
    lane keeps them between its transactions, so a gone queue costs one
    failed transaction, not one per publish)."""

    excluded: set[str] = field(default_factory=set)
    version: int | None = None

    def of(self, view: TopicView) -> list[str]:
        if view.version != self.version:
            self.excluded.clear()
            self.version = view.version
        return [s for s in view.subscribers if s not in self.excluded]


def plan_rounds(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Indexes of nodes grouped so each group's creates (of ``sizes`` bytes)
    fit in ``budget`` for one subscriber. Usually a single group."""
    rounds: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if current and used + size > budget:
            rounds.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        rounds.append(current)
    return rounds


def split_targets(targets: Sequence[str], per_target: int, budget: int) -> list[list[str]]:
    """Subscribers grouped so each group's transaction fits ``budget``."""
    per_txn = max(1, budget // max(1, per_target))
    return [list(targets[i : i + per_txn]) for i in range(0, len(targets), per_txn)]


class Publisher:
    """Reads subscriber lists and writes fan-outs; shared by a client's lanes."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._message_acl = ctx.acl.acl(NodeKind.MESSAGE)
        self._message_acl_size = ctx.acl.size(NodeKind.MESSAGE)
        self._lock = threading.Lock()
        self._views: dict[str, TopicView] = {}
        self._generation: dict[str, int] = {}
        self._watchers: dict[str, Callable[[WatchedEvent], None]] = {}

    # -- building nodes ---------------------------------------------------

    def entries(
        self, topic: str, payloads: Sequence[Any], headers: dict[str, str] | None
    ) -> list[envelope.Entry]:
        """Serialized messages for ``payloads``, each checked against
        ``max_message_bytes``. Nothing is sent; bad input raises here
        (``ValueError``, ``SerializationError``, ``PayloadTooLarge``)."""
        validate_name(topic, "topic")
        hdrs = envelope.check_headers(headers)
        ctx = self._ctx
        out = [
            envelope.make_entry(
                ctx.config.serializer,
                topic=topic,
                payload=p,
                headers=hdrs,
                publisher_id=ctx.client_id,
            )
            for p in payloads
        ]
        for entry in out:
            envelope.check_size(entry, ctx.config.max_message_bytes)
        return out

    def build_nodes(
        self, topic: str, payloads: Sequence[Any], headers: dict[str, str] | None
    ) -> tuple[list[str], list[bytes]]:
        """Message ids and node data for ``payloads``, packed into as few nodes
        as ``max_message_bytes`` allows. Nothing is sent."""
        entries = self.entries(topic, payloads, headers)
        return [e.id for e in entries], envelope.pack(entries, self._ctx.config.max_message_bytes)

    # -- sizes --------------------------------------------------------------

    def op_size(self, topic: str, data: bytes) -> int:
        """Bytes one message create adds (for the longest possible queue path)."""
        path = len(self._ctx.layout.messages) + len(topic) + _LONGEST_QUEUE_PATH_EXTRA
        return len(data) + path + CREATE_OP_OVERHEAD + self._message_acl_size

    def budget(self, topic: str) -> int:
        """Bytes left for message creates once the check and receipt are in."""
        ctx = self._ctx
        check = len(ctx.layout.topic(topic)) + _CHECK_OP_OVERHEAD
        receipt = (
            len(ctx.layout.receipt(ctx.client_id, new_guid()))
            + CREATE_OP_OVERHEAD
            + ctx.acl.size(NodeKind.RECEIPT)
        )
        return ctx.config.max_transaction_bytes - check - receipt - len(ctx.client_id)

    # -- the subscriber list ------------------------------------------------

    def _watcher(self, topic: str) -> Callable[[WatchedEvent], None]:
        with self._lock:
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
        conn = self._ctx.conn
        kazoo = conn.kazoo
        path = self._ctx.layout.topic(topic)
        watcher = self._watcher(topic)

        def requests() -> list[Any]:
            read = kazoo.get_children_async(path, watch=watcher, include_data=True)
            # sync first (sent together: a session's requests are served in order)
            return [kazoo.sync_async(path), read] if fresh else [read]

        answer = conn.read_all(requests, deadline, "read subscriber list")[-1]
        if isinstance(answer, NoNodeError):
            return TopicView(None, ())
        children, stat = answer
        view = TopicView(stat.version, tuple(sorted(children)))
        with self._lock:
            if self._generation.get(topic, 0) == generation:
                self._views[topic] = view
        return view

    # -- one fan-out ----------------------------------------------------------

    def fan_out(
        self,
        topic: str,
        nodes: list[bytes],
        deadline: float | None,
        targets: Targets,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[set[str], int]:
        """Write ``nodes`` (in order) into every subscriber's queue, split over
        several transactions if they do not fit in one. Returns the
        subscribers reached and the number of transactions. Raises
        ``OperationTimeout`` when ``deadline`` passes first."""
        reached: set[str] = set()
        transactions = 0
        budget = self.budget(topic)
        sizes = [self.op_size(topic, d) for d in nodes]
        for indexes in plan_rounds(sizes, budget):
            part = [nodes[i] for i in indexes]
            per_target = sum(sizes[i] for i in indexes)
            got, txns = self._round(topic, part, per_target, deadline, targets, progress)
            reached |= got
            transactions += txns
        return reached, transactions

    def _round(
        self,
        topic: str,
        nodes: list[bytes],
        per_target: int,
        deadline: float | None,
        targets: Targets,
        progress: Callable[[str], None] | None,
    ) -> tuple[set[str], int]:
        ctx = self._ctx
        say = progress or (lambda _what: None)
        reached: set[str] = set()
        say(f"reading the subscribers of {topic!r}")
        view = self.view(topic, deadline)
        synced = False
        transactions = 0
        while True:
            if expired(deadline):
                raise OperationTimeout(f"publish to {topic!r}: deadline passed")
            todo = [s for s in targets.of(view) if s not in reached]
            if not todo:
                if synced or reached:
                    return reached, transactions
                # An empty (or fully reached) list may be stale: confirm it.
                say(f"confirming that {topic!r} has no subscribers")
                view = self.view(topic, deadline, fresh=True)
                synced = True
                continue
            assert view.version is not None
            for chunk in split_targets(todo, per_target, self.budget(topic)):
                fan = FanOut(topic, view.version, tuple(chunk), tuple(nodes))
                say("waiting for ZooKeeper to confirm the transaction")
                outcome = ctx.writer.commit(
                    functools.partial(fan.add_ops, ctx.layout, acl=self._message_acl),
                    deadline,
                    f"publish to {topic!r}",
                )
                transactions += 1
                verdict = fan.classify(outcome)
                if verdict.kind == "ok":
                    reached.update(chunk)
                    continue
                if verdict.kind == "gone":
                    logger.debug("queue of %s for %r is gone; dropping it", verdict.culprit, topic)
                    targets.excluded.add(verdict.culprit)
                else:  # stale
                    say(f"reading the changed subscribers of {topic!r}")
                    view = self.view(topic, deadline, fresh=True)
                    synced = True
                break  # plan again with what is left
            else:
                return reached, transactions
