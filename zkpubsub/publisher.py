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
from typing import TYPE_CHECKING, Any, TypeVar

from kazoo.exceptions import NoNodeError

from . import envelope
from ._context import Context
from ._deadlines import expired
from ._fanout import Acls, FanOut, Target
from ._queues import QueueStates
from .backlog import INLINE_BYTES
from .config import CREATE_OP_OVERHEAD
from .errors import OperationTimeout
from .layout import NodeKind, new_guid, validate_name

if TYPE_CHECKING:
    from kazoo.protocol.states import WatchedEvent

__all__ = ["FanOutResult", "Publisher", "Targets", "TopicView", "plan_rounds", "split_targets"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CHECK_OP_OVERHEAD = 32
_MARKER_OP = 200  # a marker create or setData: its small JSON and the op
# the client id (200 characters, as bytes when ASCII: a target's own adds
# what its UTF-8 takes beyond) and the node name
_LONGEST_QUEUE_PATH_EXTRA = 300


def _utf8_extra(text: str) -> int:
    """Bytes ``text`` takes in UTF-8 beyond one a character (what a size
    counted in characters misses)."""
    return 0 if text.isascii() else len(text.encode()) - len(text)


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


def split_targets(targets: Sequence[T], costs: Sequence[int], budget: int) -> list[list[T]]:
    """Targets grouped, in order, so each group's operations (of ``costs``
    bytes) fit ``budget`` (a target larger than it goes alone)."""
    groups: list[list[T]] = []
    current: list[T] = []
    used = 0
    for target, cost in zip(targets, costs, strict=True):
        if current and used + cost > budget:
            groups.append(current)
            current, used = [], 0
        current.append(target)
        used += cost
    if current:
        groups.append(current)
    return groups


@dataclass(slots=True)
class FanOutResult:
    """Who a fan-out wrote to, who it skipped as full, in how many
    transactions."""

    reached: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    transactions: int = 0


class Publisher:
    """Reads subscriber lists and writes fan-outs; shared by a client's lanes."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._acls = Acls(ctx.acl.acl(NodeKind.MESSAGE), ctx.acl.acl(NodeKind.MARKER))
        self._message_acl_size = ctx.acl.size(NodeKind.MESSAGE)
        # the path every queue's nodes share, and the rest of the longest one
        self._queue_path_base = len(ctx.layout.messages.encode()) + _LONGEST_QUEUE_PATH_EXTRA
        self._lock = threading.Lock()
        self._views: dict[str, TopicView] = {}
        self._generation: dict[str, int] = {}
        self._watchers: dict[str, Callable[[WatchedEvent], None]] = {}
        self.queues = QueueStates(ctx)
        # the version of each topic's subscriber list its queues were last pruned at
        self._pruned: dict[str, int | None] = {}

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
        """Bytes one message create adds (for the longest possible queue path;
        a node small enough to go into its name, as long as that takes)."""
        path = self._queue_path_bytes(topic)
        size = len(data)
        if size <= INLINE_BYTES:
            size = (size + 2) // 3 * 4 + 2  # base64 and the dots around it
        return size + path + CREATE_OP_OVERHEAD + self._message_acl_size

    def _queue_path_bytes(self, topic: str) -> int:
        """Bytes of the longest path of a node in a queue of ``topic``."""
        return self._queue_path_base + len(topic) + _utf8_extra(topic)

    def budget(self, topic: str) -> int:
        """Bytes left for message creates once the check and receipt are in."""
        ctx = self._ctx
        check = len(ctx.layout.topic(topic).encode()) + _CHECK_OP_OVERHEAD
        receipt = (
            len(ctx.layout.receipt(ctx.client_id, new_guid()).encode())
            + CREATE_OP_OVERHEAD
            + ctx.acl.size(NodeKind.RECEIPT)
        )
        return ctx.config.max_transaction_bytes - check - receipt - len(ctx.client_id.encode())

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

    def refresh_queues(self, topic: str, targets: Targets, deadline: float | None) -> None:
        """Read again the queues of ``topic`` last read ``STATE_TTL`` ago (after
        a fan-out, so no publish waits for it)."""
        view = self.view(topic, deadline)
        if self._pruned.get(topic) != view.version:  # the list changed: forget who left
            self.queues.keep_only(topic, view.subscribers)
            self._pruned[topic] = view.version
        for culprit in self.queues.refresh(topic, targets.of(view), deadline):
            targets.excluded.add(culprit)

    def target_cost(self, topic: str, target: Target, per_target: int, nodes: int = 1) -> int:
        """Bytes ``target``'s operations add to a transaction (with
        ``per_target`` bytes of ``nodes`` node creates when it is written to)."""
        acl = self._ctx.acl
        queue = self._queue_path_bytes(topic)
        extra = _utf8_extra(target.subscriber)  # in each of its paths
        queue += extra
        per_target += nodes * extra
        cost = queue + _CHECK_OP_OVERHEAD
        if target.flag is not None:
            return cost + len(target.flag)
        if target.skip:
            return cost
        if target.roll is not None:
            cost += len(target.roll) + queue + CREATE_OP_OVERHEAD + acl.size(NodeKind.SEGMENT)
        if target.marker is None:
            return cost + per_target
        return cost + queue + _MARKER_OP + acl.size(NodeKind.MARKER)

    def fan_out(
        self,
        topic: str,
        nodes: list[bytes],
        deadline: float | None,
        targets: Targets,
        *,
        counts: Sequence[int] | None = None,
        progress: Callable[[str], None] | None = None,
        result: FanOutResult | None = None,
    ) -> FanOutResult:
        """Write ``nodes`` (in order) into every subscriber's queue, split over
        several transactions if they do not fit in one; a full queue gets an
        overflow marker (or nothing) instead, counting the messages each
        transaction left out (``counts``: messages per node, one each by
        default). Raises ``OperationTimeout`` when ``deadline`` passes first
        (``result``, if given, is filled as transactions are confirmed: what
        was written before)."""
        if counts is not None and len(counts) != len(nodes):
            raise ValueError(f"{len(counts)} message counts for {len(nodes)} nodes")
        result = FanOutResult() if result is None else result
        budget = self.budget(topic)
        sizes = [self.op_size(topic, d) for d in nodes]
        for indexes in plan_rounds(sizes, budget):
            part = [nodes[i] for i in indexes]
            per_target = sum(sizes[i] for i in indexes)
            messages = sum(counts[i] for i in indexes) if counts is not None else len(indexes)
            self._round(topic, part, per_target, messages, deadline, targets, result, progress)
        return result

    def _round(
        self,
        topic: str,
        nodes: list[bytes],
        per_target: int,
        messages: int,
        deadline: float | None,
        targets: Targets,
        result: FanOutResult,
        progress: Callable[[str], None] | None,
    ) -> None:
        ctx = self._ctx
        say = progress or (lambda _what: None)
        done: set[str] = set()  # written, or skipped as full, in this round
        reached_before = len(result.reached)
        say(f"reading the subscribers of {topic!r}")
        view = self.view(topic, deadline)
        synced = False
        while True:
            if expired(deadline):
                raise OperationTimeout(f"publish to {topic!r}: deadline passed")
            todo = [s for s in targets.of(view) if s not in done]
            if not todo:
                if synced or done or len(result.reached) > reached_before:
                    return
                # An empty (or fully reached) list may be stale: confirm it.
                say(f"confirming that {topic!r} has no subscribers")
                view = self.view(topic, deadline, fresh=True)
                synced = True
                continue
            assert view.version is not None
            say(f"reading the queues of {topic!r}")
            for culprit in self.queues.refresh(topic, todo, deadline, unknown_only=True):
                logger.debug("queue of %s for %r is gone; dropping it", culprit, topic)
                targets.excluded.add(culprit)
            planned, full = self.queues.plan(
                topic, [s for s in todo if s not in targets.excluded], nodes, messages
            )
            judged_full = [t.subscriber for t in planned if t.flag or t.marker is not None]
            read, gone = self.queues.read_again(topic, [*judged_full, *full], deadline)
            if read:  # on an old reading: judged again on a fresh one
                targets.excluded.update(gone)
                planned, full = self.queues.plan(
                    topic, [s for s in todo if s not in targets.excluded], nodes, messages
                )
            done.update(full)
            result.skipped.update(full)
            costs = [self.target_cost(topic, t, per_target, len(nodes)) for t in planned]
            for chunk in split_targets(planned, costs, self.budget(topic)):
                fan = FanOut(topic, view.version, tuple(chunk), tuple(nodes), ctx.client_id)
                say("waiting for ZooKeeper to confirm the transaction")
                outcome = ctx.writer.commit(
                    functools.partial(fan.add_ops, ctx.layout, acls=self._acls),
                    deadline,
                    f"publish to {topic!r}",
                )
                result.transactions += 1
                verdict = fan.classify(outcome)
                if verdict.kind == "ok":
                    self.queues.applied(topic, fan, outcome.results)
                    for target in chunk:
                        done.add(target.subscriber)
                        bucket = result.reached if target.writes else result.skipped
                        bucket.add(target.subscriber)
                    continue
                if verdict.kind == "gone":
                    logger.debug("queue of %s for %r is gone; dropping it", verdict.culprit, topic)
                    targets.excluded.add(verdict.culprit)
                    self.queues.forget(topic, verdict.culprit)
                elif verdict.kind in ("moved", "marker"):
                    self.queues.forget(topic, verdict.culprit)  # read it again
                else:  # stale
                    say(f"reading the changed subscribers of {topic!r}")
                    view = self.view(topic, deadline, fresh=True)
                    synced = True
                break  # plan again with what is left
