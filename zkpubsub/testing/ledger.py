"""What the servers' logs say a run wrote, in terms of the documented layout.

:func:`replay` replays the committed transactions
(:class:`~zkpubsub.testing.txnlog.ClusterLog`) under a root, following the
layout of ``docs/wire-format.md`` and nothing of the client library:

* each message node created in a subscriber's queue, with the workload keys
  of the messages its envelope carries (:class:`QueueWrite`);
* for each message, the subscribers whose registration node
  (``subscribers/<topic>/<id>``) existed when the last transaction carrying
  it committed: the ones a publisher had to reach;
* each message node deleted by a session other than its subscriber's own,
  and how long the subscriber's client node had been absent by then
  (:class:`Removal`): what a cleaner may have purged; and each one deleted,
  by any session, after its queue's record was marked ``full`` under
  ``evict`` (an eviction deletes the queue unread);
* each overflow marker (:class:`Marker`: created, counted into, read and
  deleted) and, for each message, the queues a transaction that carried it
  to other queues skipped as full (:class:`Skip`): it created or counted
  into an overflow marker there, or, under ``evict``, marked the queue's
  record ``full`` or checked a record so marked;
* each work item node created under a queue's ``items/``, with the
  workload keys its envelope carries (:class:`ItemWrite`): a put whose
  key shows in two item nodes was written twice; and each delete of such
  a node, with the session that deleted it and whether the same
  transaction made it a dead letter (:class:`ItemDelete`);
* each node the log deleted and then wrote again with no create between
  (:class:`Returned`): a node the servers brought back, which no client
  can cause;
* the intervals during which each subscription was registered, each
  client's sessions, and the leader epochs seen.

The checker (:mod:`~zkpubsub.testing.checker`) judges a run's history
against this ledger rather than against what the library reported.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from ..layout import Layout, NodeKind, inline_data
from .history import Key, key_of
from .txnlog import CLOSE_SESSION, Txn

__all__ = [
    "INF",
    "ItemDelete",
    "ItemWrite",
    "Ledger",
    "Marker",
    "QueueWrite",
    "Removal",
    "Returned",
    "SessionSpan",
    "Skip",
    "decode_keys",
    "first_returns",
    "node_keys",
    "replay",
]


INF = float("inf")


@dataclass(frozen=True, slots=True)
class QueueWrite:
    """A message node created in ``subscriber``'s queue."""

    subscriber: str
    topic: str
    zxid: int
    at: float
    path: str


@dataclass(frozen=True, slots=True)
class ItemWrite:
    """A work item node created in ``queue``'s ``items/``, by ``session``."""

    queue: str
    zxid: int
    at: float
    session: int
    path: str


@dataclass(frozen=True, slots=True)
class ItemDelete:
    """A work item node of ``queue`` deleted, by ``session``, at ``path``.
    ``buried``: the same transaction created a dead letter (a burial, or a
    release on the last attempt); otherwise it was an ack, or a burial
    past the queue's limit of dead letters (``docs/wire-format.md``, *Work
    queues*)."""

    queue: str
    zxid: int
    at: float
    session: int
    path: str
    buried: bool = False


@dataclass(frozen=True, slots=True)
class Returned:
    """A node the log deleted at ``deleted`` and that a later transaction,
    ``zxid``, wrote again (``op``: ``"set"``, ``"delete"`` or ``"check"``)
    with no create between. A server refuses a write to a node that is not
    there, so the leader that accepted it had the node back in its data
    tree: ZooKeeper 3.8.0's recovery after a leader change sometimes
    brings a deleted node back (``docs/reliability.md``)."""

    path: str
    deleted: int
    zxid: int
    op: str

    def explained(self, what: str = "node") -> str:
        """This return in words, for a checker's notes (``what``: what to
        call the node)."""
        return (
            f"the servers wrote its {what} {self.path} again ({self.op}, zxid {self.zxid:#x}) "
            f"after deleting it (zxid {self.deleted:#x}): a node ZooKeeper brought back"
        )


def first_returns(returned: Iterable[Returned]) -> dict[str, Returned]:
    """The first time each node came back, by path."""
    out: dict[str, Returned] = {}
    for r in returned:
        out.setdefault(r.path, r)
    return out


@dataclass(frozen=True, slots=True)
class Removal:
    """A message node deleted by a session that was not its subscriber's,
    or in an evicted queue. ``absent_for``: how long the subscriber's ``clients/<id>`` node had been
    gone at that moment (``None``: it was there)."""

    zxid: int
    at: float
    session: int
    absent_for: float | None
    # deleted (by any session, its subscriber's own included) after its
    # queue's record was marked full under ``evict``: the eviction
    evicted: bool = False


@dataclass(frozen=True, slots=True)
class Skip:
    """A transaction (``zxid``, committed at ``at``) that carried a message
    to other queues and skipped ``subscriber``'s as full: ``kind`` is
    ``"marker"`` (it created or counted into the overflow marker ``path``
    in that queue, policy ``drop``) or ``"evict"`` (it marked the record of
    the queue ``path`` ``full``, or checked the record so marked)."""

    subscriber: str
    topic: str
    zxid: int
    at: float
    kind: Literal["marker", "evict"]
    path: str


@dataclass
class Marker:
    """An overflow marker's life in the logs: created at ``created``, last
    written (created or counted into) at ``written`` with the count
    ``missed``; deleted at ``deleted`` (``None``: still there at the end of
    the log), by its subscriber's own session (``by_owner``: it reached it)
    or another (a cleaner)."""

    subscriber: str
    topic: str
    created: float
    written: float
    missed: int | None
    deleted: float | None = None
    by_owner: bool = False


@dataclass(frozen=True, slots=True)
class SessionSpan:
    """One session of a client id: from the creation of its ``clients/<id>``
    node to the session's end (``None``: still open at the end of the log)."""

    session: int
    start: float
    end: float | None


@dataclass
class Ledger:
    """See the module's text. Times are the leader's clock, in seconds."""

    writes: dict[Key, list[QueueWrite]] = field(default_factory=lambda: defaultdict(list))
    # key -> (zxid, time) of the last transaction that wrote it
    commits: dict[Key, tuple[int, float]] = field(default_factory=dict)
    # key -> subscribers registered on its topic when that transaction committed
    registered: dict[Key, frozenset[str]] = field(default_factory=dict)
    removals: dict[tuple[str, Key], Removal] = field(default_factory=dict)
    # key -> the queues transactions carrying it skipped as full
    skips: dict[Key, list[Skip]] = field(default_factory=lambda: defaultdict(list))
    markers: dict[str, Marker] = field(default_factory=dict)  # by path
    # (topic, subscriber) -> [(since, until)]; until INF while registered at the end
    registrations: dict[tuple[str, str], list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    sessions: dict[str, list[SessionSpan]] = field(default_factory=lambda: defaultdict(list))
    # key -> the work item nodes created carrying it
    items: dict[Key, list[ItemWrite]] = field(default_factory=lambda: defaultdict(list))
    # key -> the deletes of the item nodes carrying it, in log order
    item_deletes: dict[Key, list[ItemDelete]] = field(default_factory=lambda: defaultdict(list))
    # nodes under the root written again after their delete, in log order
    returned: list[Returned] = field(default_factory=list)
    epochs: tuple[int, ...] = ()
    transactions: int = 0

    def written_to(self, key: Key) -> set[str]:
        return {w.subscriber for w in self.writes.get(key, ())}

    def skipped(self, key: Key) -> dict[str, Skip]:
        """The subscribers whose queue a transaction carrying ``key`` to
        other queues skipped as full, with the first such skip."""
        out: dict[str, Skip] = {}
        for skip in self.skips.get(key, ()):
            out.setdefault(skip.subscriber, skip)
        return out

    def registered_throughout(self, topic: str, subscriber: str, start: float, end: float) -> bool:
        """Whether the subscription was registered during all of ``[start, end]``."""
        return any(
            since <= start and end <= until
            for since, until in self.registrations.get((topic, subscriber), ())
        )

    def unregistered_seconds(self, topic: str, subscriber: str, start: float, end: float) -> float:
        """How long, within ``[start, end]``, the subscription was not registered."""
        covered = 0.0
        for since, until in self.registrations.get((topic, subscriber), ()):
            covered += max(0.0, min(until, end) - max(since, start))
        return max(0.0, (end - start) - covered)


def decode_keys(data: bytes) -> tuple[Key, ...]:
    """The workload keys of the messages in a node's envelope (format 1 of
    ``docs/wire-format.md``); payloads of other kinds are skipped."""
    try:
        doc = msgpack.unpackb(data, raw=False)
    except Exception:
        return ()
    if not isinstance(doc, dict) or not isinstance(doc.get("msgs"), list):
        return ()
    keys: list[Key] = []
    for msg in doc["msgs"]:
        if not isinstance(msg, dict) or not isinstance(msg.get("p"), bytes):
            continue
        payload: Any
        try:
            if msg.get("ct") == "application/json":
                payload = json.loads(msg["p"])
            else:
                payload = msgpack.unpackb(msg["p"], raw=False)
        except Exception:
            continue
        key = key_of(payload)
        if key is not None:
            keys.append(key)
    return tuple(keys)


def node_keys(path: str, data: bytes) -> tuple[Key, ...]:
    """The workload keys of a message node at ``path``: of the envelope
    its name carries, or else of its ``data``."""
    inline = inline_data(path.rpartition("/")[2])
    return decode_keys(inline if inline is not None else data)


class _Replay:
    """The replay's state; see :func:`replay`."""

    def __init__(self, root: str) -> None:
        base = root.rstrip("/")
        self.below_root = f"{base}/"
        self.layout = Layout(base)
        self.ledger = Ledger()
        self.client_owner: dict[str, int] = {}
        self.client_gone_at: dict[str, float] = {}
        self.open_spans: dict[int, tuple[str, float]] = {}  # session -> (client, start)
        self.registered: dict[str, dict[str, float]] = defaultdict(dict)  # topic -> sub -> since
        self.eph_owner: dict[str, int] = {}
        self.ephemerals: dict[int, set[str]] = defaultdict(set)
        self.nodes: dict[str, tuple[str, tuple[Key, ...]]] = {}  # message path -> (sub, keys)
        self.evicting: set[str] = set()  # queue paths whose record is marked full (evict)
        self.gone: dict[str, int] = {}  # path under the root -> zxid of its last delete
        self.item_keys: dict[str, tuple[Key, ...]] = {}  # item node path -> its keys

    # -- one transaction ----------------------------------------------------------

    def apply(self, txn: Txn) -> None:
        if txn.type == CLOSE_SESSION:
            gone = set(txn.closed) | self.ephemerals.pop(txn.session, set())
            for path in sorted(gone):
                self._deleted(path, txn)
                self._mark_gone(path, txn.zxid)
            self._end_span(txn.session, txn.at)
            return
        carried: dict[str, list[Key]] = {}
        for op in txn.ops:
            if op.kind == "create":
                place = self.layout.place(op.path)
                if place.kind is NodeKind.MESSAGE:
                    carried.setdefault(place.names[1], []).extend(node_keys(op.path, op.data))
        for topic, keys in carried.items():  # who had to be reached, before this commit
            reach = frozenset(self.registered[topic])
            for key in keys:
                self.ledger.commits[key] = (txn.zxid, txn.at)
                self.ledger.registered[key] = reach
        self._skips(txn, carried)
        for op in txn.ops:
            if op.kind == "create":
                self.gone.pop(op.path, None)
                self._created(op.path, op.data, op.ephemeral, txn)
                continue
            deleted = self.gone.get(op.path)
            if deleted is not None:
                self.ledger.returned.append(Returned(op.path, deleted, txn.zxid, op.kind))
            if op.kind == "delete":
                self._deleted(op.path, txn)
                self._mark_gone(op.path, txn.zxid)
            elif op.kind == "set":
                self._set(op.path, op.data, txn)

    def _mark_gone(self, path: str, zxid: int) -> None:
        if path.startswith(self.below_root):
            self.gone[path] = zxid

    def _skips(self, txn: Txn, carried: dict[str, list[Key]]) -> None:
        """The queues of the topics this transaction carried messages of
        that it skipped as full, instead of writing them there."""
        if not carried:
            return
        for op in txn.ops:
            kind, names = self.layout.place(op.path)
            if kind is NodeKind.MARKER and op.kind in ("create", "set"):
                skip = Skip(names[0], names[1], txn.zxid, txn.at, "marker", op.path)
            elif kind is NodeKind.QUEUE and (
                (op.kind == "set" and _marked_full(op.data))
                or (op.kind == "check" and op.path in self.evicting)
            ):
                skip = Skip(names[0], names[1], txn.zxid, txn.at, "evict", op.path)
            else:
                continue
            for key in carried.get(skip.topic, ()):
                self.ledger.skips[key].append(skip)

    def _created(self, path: str, data: bytes, ephemeral: bool, txn: Txn) -> None:
        if ephemeral:
            self.eph_owner[path] = txn.session
            self.ephemerals[txn.session].add(path)
        kind, names = self.layout.place(path)
        if kind is NodeKind.CLIENT:
            name = names[0]
            self.client_owner[name] = txn.session
            self.client_gone_at.pop(name, None)
            if ephemeral:
                self.open_spans[txn.session] = (name, txn.at)
        elif kind is NodeKind.SUBSCRIBER:
            self.registered[names[0]].setdefault(names[1], txn.at)
        elif kind is NodeKind.MESSAGE:
            sub, topic = names[:2]
            keys = node_keys(path, data)
            self.nodes[path] = (sub, keys)
            for key in keys:
                self.ledger.writes[key].append(QueueWrite(sub, topic, txn.zxid, txn.at, path))
        elif kind is NodeKind.MARKER:
            self.ledger.markers[path] = Marker(names[0], names[1], txn.at, txn.at, _missed(data))
        elif kind is NodeKind.QUEUE:
            self._set(path, data, txn)
        elif kind is NodeKind.ITEM:
            write = ItemWrite(names[0], txn.zxid, txn.at, txn.session, path)
            keys = decode_keys(data)
            self.item_keys[path] = keys
            for key in keys:
                self.ledger.items[key].append(write)

    def _set(self, path: str, data: bytes, txn: Txn) -> None:
        """A queue record or an overflow marker written."""
        if self.layout.kind_of(path) is NodeKind.QUEUE:
            if _marked_full(data):
                self.evicting.add(path)
            else:
                self.evicting.discard(path)
        marker = self.ledger.markers.get(path)
        if marker is not None and marker.deleted is None:
            marker.written = txn.at
            marker.missed = _missed(data)

    def _deleted(self, path: str, txn: Txn) -> None:
        owner = self.eph_owner.pop(path, None)
        if owner is not None:
            self.ephemerals[owner].discard(path)
        kind, names = self.layout.place(path)
        if kind is NodeKind.CLIENT:
            name = names[0]
            if name in self.client_owner:
                session = self.client_owner.pop(name)
                self.client_gone_at[name] = txn.at
                self._end_span(session, txn.at)
        elif kind is NodeKind.SUBSCRIBER:
            topic, sub = names
            since = self.registered[topic].pop(sub, None)
            if since is not None:
                self.ledger.registrations[(topic, sub)].append((since, txn.at))
        elif kind is NodeKind.ITEM:
            buried = any(
                op.kind == "create" and self.layout.kind_of(op.path) is NodeKind.DEAD_LETTER
                for op in txn.ops
            )
            gone = ItemDelete(names[0], txn.zxid, txn.at, txn.session, path, buried)
            for key in self.item_keys.get(path, ()):
                self.ledger.item_deletes[key].append(gone)
        elif path in self.evicting:
            self.evicting.discard(path)  # the queue itself
        elif path in self.ledger.markers:
            marker = self.ledger.markers[path]
            if marker.deleted is None:
                marker.deleted = txn.at
                marker.by_owner = self.client_owner.get(marker.subscriber) == txn.session
        elif path in self.nodes:
            sub, keys = self.nodes.pop(path)
            if self._queue_of(path) in self.evicting:
                # the eviction deletes the queue unread (its client or a cleaner)
                for key in keys:
                    self.ledger.removals.setdefault(
                        (sub, key), Removal(txn.zxid, txn.at, txn.session, None, evicted=True)
                    )
                return
            if self.client_owner.get(sub) == txn.session:
                return  # the subscriber's own delete: it says it handled them
            gone_at = self.client_gone_at.get(sub)
            absent = None if sub in self.client_owner or gone_at is None else txn.at - gone_at
            for key in keys:
                self.ledger.removals.setdefault(
                    (sub, key), Removal(txn.zxid, txn.at, txn.session, absent)
                )

    def _queue_of(self, path: str) -> str | None:
        """The queue path of a message node or marker."""
        kind, names = self.layout.place(path)
        if kind not in (NodeKind.MESSAGE, NodeKind.MARKER):
            return None
        return self.layout.queue(names[0], names[1])

    def _end_span(self, session: int, at: float) -> None:
        span = self.open_spans.pop(session, None)
        if span is not None:
            self.ledger.sessions[span[0]].append(SessionSpan(session, span[1], at))

    def finish(self, epochs: Iterable[int], count: int) -> Ledger:
        for topic, subs in self.registered.items():
            for sub, since in subs.items():
                self.ledger.registrations[(topic, sub)].append((since, INF))
        for session, (name, start) in self.open_spans.items():
            self.ledger.sessions[name].append(SessionSpan(session, start, None))
        for spans in self.ledger.sessions.values():
            spans.sort(key=lambda s: s.start)
        self.ledger.epochs = tuple(sorted(set(epochs)))
        self.ledger.transactions = count
        return self.ledger


def replay(txns: Sequence[Txn], root: str) -> Ledger:
    """Replay committed transactions (in zxid order) under ``root``."""
    replay = _Replay(root)
    for txn in txns:
        replay.apply(txn)
    return replay.finish((t.epoch for t in txns), len(txns))


def _marked_full(record: bytes) -> bool:
    """Whether a queue record (JSON) is marked ``full`` under ``evict``."""
    try:
        doc = json.loads(record)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("full") is True and doc.get("when_full") == "evict"


def _missed(data: bytes) -> int | None:
    """The count of an overflow marker's data (``{"pub", "missed"}``)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    missed = doc.get("missed") if isinstance(doc, dict) else None
    return missed if isinstance(missed, int) else None
