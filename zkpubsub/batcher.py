"""Automatic batching: concurrent publishes coalesced into transactions.

Publishes to a topic wait in that topic's lane. A sender thread writes all
that has gathered (as much as fits in one transaction) as one fan-out
transaction, packing the messages for each subscriber queue into as few
nodes as fit. One transaction per topic is in flight at a time, so the
messages of one publisher keep their order, and while it is in flight the
next batch gathers: under load batches grow by themselves, and an idle
client adds no delay beyond ``linger``. ``linger`` is how long the sender
waits after the first message of a batch for more to come; 0 turns
coalescing off (every publish is its own transaction).

Every guarantee of a single publish holds for a batch: it is one
transaction that checks the topic's version (so a subscriber registered
before the publish was called is reached), carries a receipt (so a lost
answer never leads to a duplicate), and drops a vanished queue instead of
failing. A batch whose messages cannot share one transaction with all the
subscribers (a large message to many subscribers) is published on its own
through the splitting path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final

from kazoo.exceptions import BadVersionError, KazooException, NoNodeError

from . import envelope
from .connection import expired, first_error, remaining
from .errors import (
    ClientClosed,
    ConnectionLost,
    NoSubscribers,
    OperationTimeout,
    PublishTimeout,
    ZkPubSubError,
    ZooKeeperError,
)
from .layout import new_guid
from .message import PublishReceipt
from .publisher import Publisher, TopicView
from .receipts import landed

logger = logging.getLogger(__name__)

# How long the sender sleeps when it has nothing to do and nothing to wait for.
_IDLE: Final = 1.0


@dataclass(slots=True)
class _Request:
    """One publish() / publish_many() call waiting to be sent."""

    entries: list[envelope.Entry]
    size: int  # encoded bytes of its entries
    deadline: float | None
    require_subscribers: bool
    future: Future[PublishReceipt] = field(default_factory=Future)


@dataclass(slots=True)
class _Flight:
    """A transaction on its way: what it carries and to whom."""

    requests: list[_Request]
    targets: list[str]
    nodes: list[bytes]
    receipt: str
    owners: list[str]  # the subscriber of each create, in order


@dataclass(slots=True)
class _Lane:
    pending: deque[_Request] = field(default_factory=deque)
    first_at: float = 0.0  # when the oldest pending request arrived
    flight: _Flight | None = None
    excluded: set[str] = field(default_factory=set)  # queues found gone
    excluded_version: int | None = None


class Batcher:
    """Coalesces publishes; owned by a :class:`Client`."""

    def __init__(self, publisher: Publisher, *, linger: float) -> None:
        self._publisher = publisher
        self._conn = publisher._conn
        self._layout = publisher._layout
        self._config = publisher._config
        self._linger = linger
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._answers: deque[tuple[str, Any]] = deque()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="zkpubsub-batcher", daemon=True)
        self._thread.start()

    # -- callers' side -------------------------------------------------------------------

    def submit(
        self,
        topic: str,
        entries: list[envelope.Entry],
        *,
        deadline: float | None,
        require_subscribers: bool,
    ) -> Future[PublishReceipt]:
        size = sum(envelope.encoded_size(e) for e in entries)
        request = _Request(entries, size, deadline, require_subscribers)
        with self._cond:
            if self._closing:
                raise ClientClosed("the client is closing")
            lane = self._lanes.get(topic)
            if lane is None:
                lane = self._lanes[topic] = _Lane()
            if not lane.pending:
                lane.first_at = time.monotonic()
            lane.pending.append(request)
            self._cond.notify()
        return request.future

    def close(self, timeout: float) -> None:
        """Send what is queued, wait for what is in flight, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            leftovers = [r for lane in self._lanes.values() for r in lane.pending]
            for lane in self._lanes.values():
                if lane.flight is not None:
                    leftovers += lane.flight.requests
                lane.pending.clear()
                lane.flight = None
        for request in leftovers:
            _fail(request, ClientClosed("the client closed before this publish was confirmed"))

    # -- the sender thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._answers:
                        topic, answer = self._answers.popleft()
                        break
                    ready, wait = self._next_lane()
                    if ready is not None:
                        topic, answer = ready, None
                        break
                    if self._closing and not any(
                        lane.flight or lane.pending for lane in self._lanes.values()
                    ):
                        return
                    self._cond.wait(wait)
                lane = self._lanes[topic]
            try:
                if answer is not None:
                    self._on_answer(topic, lane, answer)
                else:
                    self._send(topic, lane)
            except Exception as exc:  # never let the sender die with requests waiting
                logger.exception("publish batcher: unexpected error on %r", topic)
                self._fail_lane(lane, exc)

    def _next_lane(self) -> tuple[str | None, float]:
        """A lane ready to send, or how long to wait for one (lock held)."""
        now = time.monotonic()
        wait = _IDLE
        for topic, lane in self._lanes.items():
            if lane.flight is not None or not lane.pending:
                continue
            due = lane.first_at + self._linger
            if self._closing or now >= due or self._linger <= 0:
                return topic, 0.0
            wait = min(wait, due - now)
        return None, max(wait, 0.0001)

    def _take(self, lane: _Lane, view: TopicView, topic: str) -> list[_Request]:
        """The requests of the next transaction: as many as fit with every
        subscriber (at least one); expired ones are failed on the way."""
        targets = max(1, len(view.subscribers))
        budget = self._publisher._budget(topic) // targets
        per_node = self._publisher._op_size(topic, b"")
        limit = self._config.max_message_bytes
        taken: list[_Request] = []
        used = 0
        with self._cond:
            while lane.pending:
                request = lane.pending[0]
                if expired(request.deadline):
                    lane.pending.popleft()
                    _fail(request, _timeout(request, "not sent before its timeout"))
                    continue
                # Packing may add a node per max_message_bytes of payload.
                cost = request.size + per_node * (1 + request.size // limit)
                if taken and (used + cost > budget or self._linger <= 0):
                    break
                taken.append(lane.pending.popleft())
                used += cost
            if lane.pending:
                lane.first_at = time.monotonic()
        return taken

    def _view(self, topic: str, lane: _Lane, deadline: float | None) -> TopicView:
        view = self._publisher.view(topic, deadline)
        if lane.excluded_version != view.version:
            lane.excluded.clear()
            lane.excluded_version = view.version
        return view

    def _send(self, topic: str, lane: _Lane) -> None:
        with self._cond:  # publishers append to the lane meanwhile
            deadline = self._batch_deadline(list(lane.pending))
        try:
            view = self._view(topic, lane, deadline)
            if not [s for s in view.subscribers if s not in lane.excluded]:
                # An empty list may be stale: confirm it before saying zero.
                view = self._publisher.view(topic, deadline, fresh=True)
                lane.excluded.clear()
                lane.excluded_version = view.version
        except (ConnectionLost, OperationTimeout, ClientClosed) as exc:
            self._expire_or_wait(lane, exc)
            return
        requests = self._take(lane, view, topic)
        if not requests:
            return
        targets = [s for s in view.subscribers if s not in lane.excluded]
        if not targets:
            for request in requests:
                _done(request, topic, 0)
            return
        entries = [e for r in requests for e in r.entries]
        nodes = envelope.pack(entries, self._config.max_message_bytes)
        size = sum(self._publisher._op_size(topic, d) for d in nodes) * len(targets)
        if size > self._publisher._budget(topic):
            self._publish_alone(topic, lane, requests)
            return
        assert view.version is not None
        self._commit(topic, lane, view.version, _Flight(requests, targets, nodes, "", []))

    def _commit(self, topic: str, lane: _Lane, version: int, flight: _Flight) -> None:
        layout = self._layout
        guid = new_guid()
        flight.receipt = layout.receipt(self._publisher._publisher_id, guid)
        flight.owners = []
        txn = self._conn.kazoo.transaction()
        txn.check(layout.topic(topic), version)
        txn.create(flight.receipt, self._publisher._publisher_id.encode())
        for sub in flight.targets:
            prefix = layout.message_prefix(layout.queue(sub, topic), guid)
            for data in flight.nodes:
                txn.create(prefix, data, sequence=True)
                flight.owners.append(sub)
        lane.flight = flight
        try:
            txn.commit_async().rawlink(lambda result: self._answer(topic, result))
        except KazooException as exc:  # closed under us
            lane.flight = None
            for request in flight.requests:
                _fail(request, ClientClosed(f"publish to {topic!r}: {exc}"))

    def _answer(self, topic: str, result: Any) -> None:  # kazoo's thread
        with self._cond:
            self._answers.append((topic, result))
            self._cond.notify()

    def _on_answer(self, topic: str, lane: _Lane, result: Any) -> None:
        flight = lane.flight
        assert flight is not None
        try:
            results = self._conn.result(result, 0, f"publish to {topic!r}")
        except (ConnectionLost, OperationTimeout):
            self._recover(topic, lane, flight)
            return
        except ClientClosed as exc:
            lane.flight = None
            for request in flight.requests:
                _fail(request, exc)
            return
        index, error = first_error(results)
        if error is None:
            self._succeeded(topic, lane, flight)
            return
        lane.flight = None
        if index == 0 and isinstance(error, (BadVersionError, NoNodeError)):
            # The subscriber list changed: read it again, send the batch first.
            try:
                self._publisher.view(topic, self._batch_deadline(flight.requests), fresh=True)
            except ZkPubSubError as exc:
                logger.debug("re-reading subscribers of %r: %s", topic, exc)
            self._requeue(lane, flight.requests)
        elif index == 1 and isinstance(error, NoNodeError):
            self._conn.ensure_path(
                self._publisher.janitor.folder, self._batch_deadline(flight.requests)
            )
            self._requeue(lane, flight.requests)
        elif index >= 2 and isinstance(error, NoNodeError):
            gone = flight.owners[index - 2]
            logger.debug("queue of %s for %r is gone; dropping it", gone, topic)
            lane.excluded.add(gone)
            self._requeue(lane, flight.requests)
        else:
            failure = ZooKeeperError(f"publish to {topic!r}: {type(error).__name__}")
            for request in flight.requests:
                _fail(request, failure)

    def _succeeded(self, topic: str, lane: _Lane, flight: _Flight) -> None:
        lane.flight = None
        self._publisher.janitor.add(flight.receipt)
        for request in flight.requests:
            _done(request, topic, len(flight.targets))

    def _recover(self, topic: str, lane: _Lane, flight: _Flight) -> None:
        """The answer was lost: look for the receipt before sending again."""
        deadline = self._batch_deadline(flight.requests)
        conn = self._conn
        self._publisher.lookups += 1
        try:
            conn.wait_connected(deadline, f"publish to {topic!r}")
            applied = landed(conn, flight.receipt, deadline)
        except (ConnectionLost, OperationTimeout, ClientClosed) as exc:
            lane.flight = None
            for request in flight.requests:
                _fail(request, _timeout(request, f"answer lost and not recovered ({exc})"))
            return
        if applied:
            self._succeeded(topic, lane, flight)
            return
        lane.flight = None
        self._requeue(lane, flight.requests)

    def _requeue(self, lane: _Lane, requests: list[_Request]) -> None:
        with self._cond:
            lane.pending.extendleft(reversed(requests))
            lane.first_at = 0.0  # send it again at once
            self._cond.notify()

    def _publish_alone(self, topic: str, lane: _Lane, requests: list[_Request]) -> None:
        """Requests too large to share a transaction with every subscriber go
        one by one through the splitting path (on this thread, in order)."""
        for request in requests:
            try:
                ids = [e.id for e in request.entries]
                nodes = envelope.pack(request.entries, self._config.max_message_bytes)
                receipt = self._publisher.publish_nodes(
                    topic,
                    ids,
                    nodes,
                    timeout=remaining(request.deadline),
                    require_subscribers=request.require_subscribers,
                )
            except ZkPubSubError as exc:
                _fail(request, exc)
            else:
                request.future.set_result(receipt)

    def _expire_or_wait(self, lane: _Lane, exc: Exception) -> None:
        """Reading the subscribers failed: fail what has expired, wait a bit."""
        with self._cond:
            for request in list(lane.pending):
                if expired(request.deadline) or isinstance(exc, ClientClosed):
                    lane.pending.remove(request)
                    _fail(
                        request,
                        exc if isinstance(exc, ClientClosed) else _timeout(request, str(exc)),
                    )
        if not isinstance(exc, ClientClosed):
            self._conn.connected.wait(0.1)

    def _fail_lane(self, lane: _Lane, exc: Exception) -> None:
        with self._cond:
            requests = list(lane.pending) + (lane.flight.requests if lane.flight else [])
            lane.pending.clear()
            lane.flight = None
        for request in requests:
            _fail(request, exc)

    @staticmethod
    def _batch_deadline(requests: Iterable[_Request]) -> float | None:
        """The latest deadline of ``requests`` (``None`` if any has none)."""
        latest = 0.0
        for request in requests:
            if request.deadline is None:
                return None
            latest = max(latest, request.deadline)
        return latest or None


def _timeout(request: _Request, why: str) -> PublishTimeout:
    return PublishTimeout(
        f"publish not confirmed in time: {why}; the outcome is unknown",
        message_ids=tuple(e.id for e in request.entries),
        reached=0,
    )


def _fail(request: _Request, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)


def _done(request: _Request, topic: str, reached: int) -> None:
    if request.future.done():
        return
    if reached == 0 and request.require_subscribers:
        request.future.set_exception(NoSubscribers(topic))
        return
    ids = tuple(e.id for e in request.entries)
    request.future.set_result(PublishReceipt(ids, reached, topic, 1))
