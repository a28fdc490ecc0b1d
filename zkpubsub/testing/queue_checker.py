"""Checks a work-queue run's history, and audits the queue afterwards.

The rules (:func:`check_queue`), each must be zero:

* **lost**: an acknowledged put whose item no worker acked. An ack whose
  outcome is unknown (its worker died with it in flight) counts as done
  only if no later hold of the item exists (a later reservation, by time
  or by attempt number, proves the item was still there: that ack was not
  applied) and, given the servers' logs (``deletes``, from
  :attr:`~zkpubsub.testing.ledger.Ledger.item_deletes`, with
  ``sessions``), only if they show the item's node deleted, after the
  reservation and not as a burial, by a session of that worker; the
  audit then shows whether the item is really gone.
* **unexpected**: a reservation of an item nobody tried to put, or of a put
  that failed before anything was sent.
* **put duplicates**: one put that became several items (a retried put
  written twice): seen by the workers (one put's key reserved under two
  item ids), and, given the servers' logs (``items``, from
  :attr:`~zkpubsub.testing.ledger.Ledger.items`), as a put's key in two
  item nodes created.
* **double acks**: one item acked more than once.
* **double holds**: one item held by two workers at once, seen two ways.
  By time, without trusting the library: each hold is *live* from its
  reservation until its worker acked or released it, or until the session
  it was reserved on ended on the server (``sessions``, from the servers'
  logs: :attr:`~zkpubsub.testing.ledger.Ledger.sessions`); two live holds
  of one item that overlap are a double hold. And by the attempt numbers
  the library reports: a reservation's ``attempts`` is the item's data
  version on the server, which every reserve, ack and release is fenced
  by, so two reservations with the same ``attempts``, or any reservation
  after the one that was acked, mean two workers held it together.

Reported, not zero: **duplicates** (an item handled more than once, as
at-least-once allows after a worker died or lost its session),
**redelivered** (reservations after the first), **rejected** (acks and
releases refused with ``ReservationLost``: zombies stopped), and, given
the servers' logs (``returned``, from
:attr:`~zkpubsub.testing.ledger.Ledger.returned`), **returned**: puts
whose item node the servers wrote again after deleting it. That is
ZooKeeper's fault, not the library's (no client can write a node that is
not there), and a returned item is reserved and handled again: the
double acks and holds it causes still count, and a note names its node.

:func:`audit_queue` reads the queue after the run: no reservation without
its item (orphan), and, once the workers are gone, nothing left reserved
and nothing left to do; no dead letter unless the scenario expects some.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from ..layout import Layout, join, parse_segment_node
from .audit import poll
from .history import Key
from .ledger import ItemDelete, ItemWrite, Ledger, Returned, SessionSpan, first_returns
from .queue_history import HoldRecord, PutRecord, QueueHistory

__all__ = [
    "QueueAudit",
    "QueueCheckResult",
    "audit_queue",
    "check_queue",
    "check_queue_against",
    "live_until",
    "look_at_queue",
]


_CLOCK_SLACK = 0.01  # the servers log milliseconds


@dataclass(frozen=True, slots=True)
class QueueCheckResult:
    """What :func:`check_queue` found; ``ok`` when every must-be-zero is."""

    attempted: int
    acked: int
    failed: int
    unknown: int
    reserved: int
    done: int
    lost: int
    unexpected: int
    put_duplicates: int
    double_acks: int
    double_holds: int
    duplicates: int
    redelivered: int
    rejected: int
    recovered: int
    unknown_acks: int
    returned: int = 0
    examples: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.unexpected
            or self.put_duplicates
            or self.double_acks
            or self.double_holds
        )

    def describe(self) -> str:
        text = (
            f"attempted={self.attempted} acked={self.acked} failed={self.failed} "
            f"unknown={self.unknown} reserved={self.reserved} done={self.done} "
            f"lost={self.lost} unexpected={self.unexpected} "
            f"put_duplicates={self.put_duplicates} double_acks={self.double_acks} "
            f"double_holds={self.double_holds} duplicates={self.duplicates} "
            f"redelivered={self.redelivered} rejected={self.rejected} "
            f"recovered={self.recovered} unknown_acks={self.unknown_acks} "
            f"returned={self.returned}"
        )
        if self.examples:
            text += "\n" + "\n".join(f"  {e}" for e in self.examples)
        return text


def _note(examples: list[str], text: str, limit: int) -> None:
    if len(examples) < limit:
        examples.append(text)


def live_until(hold: HoldRecord, sessions: Mapping[str, Sequence[SessionSpan]] | None) -> float:
    """Until when ``hold`` was live: its ack or release, or the end of the
    session its worker reserved it on, whichever came first."""
    end = hold.finished_at if hold.finished_at is not None else float("inf")
    spans = (sessions or {}).get(hold.worker, ())
    span = next((s for s in reversed(spans) if s.start <= hold.reserved_at + _CLOCK_SLACK), None)
    if span is not None and span.end is not None:
        end = min(end, span.end)
    return end


def _overlaps(
    holds: list[HoldRecord], sessions: Mapping[str, Sequence[SessionSpan]] | None
) -> list[tuple[HoldRecord, HoldRecord]]:
    """Pairs of holds of one item that were live at the same time."""
    ordered = sorted(holds, key=lambda h: h.reserved_at)
    out = []
    for i, first in enumerate(ordered):
        until = live_until(first, sessions)
        for later in ordered[i + 1 :]:
            if later.reserved_at + _CLOCK_SLACK < until:
                out.append((first, later))
    return out


def _unknown_ack_why_not(
    hold: HoldRecord,
    holds: Sequence[HoldRecord],
    sessions: Mapping[str, Sequence[SessionSpan]] | None,
    deletes: Mapping[Key, Sequence[ItemDelete]] | None,
) -> str | None:
    """Why ``hold``'s ack of unknown outcome cannot count as done (``None``:
    it may have been applied). See the rule **lost** in the module's text."""
    later = [
        h.hold
        for h in holds
        if h is not hold
        and h.item_id == hold.item_id
        and (h.attempts > hold.attempts or h.reserved_at > hold.reserved_at)
    ]
    if later:
        return f"its item was held again by {later}"
    if deletes is None:
        return None
    own = {s.session for s in (sessions or {}).get(hold.worker, ())}
    key = hold.key
    if key is not None and any(
        d.session in own and not d.buried and d.at + _CLOCK_SLACK >= hold.reserved_at
        for d in deletes.get(key, ())
    ):
        return None
    return "the servers' logs show no ack of its item by a session of that worker"


def check_queue(
    history: QueueHistory,
    sessions: Mapping[str, Sequence[SessionSpan]] | None = None,
    *,
    items: Mapping[Key, Sequence[ItemWrite]] | None = None,
    returned: Sequence[Returned] = (),
    deletes: Mapping[Key, Sequence[ItemDelete]] | None = None,
    examples: int = 10,
) -> QueueCheckResult:
    """Check a queue run's history; see the module docstring for the rules.
    ``sessions``: each worker's sessions as the servers logged them (without
    them a hold is live until its worker finished with it). ``items``: the
    item nodes the servers logged created, by key (a dead letter replayed
    on purpose is a second node for its key: leave ``items`` out of a run
    that replays). ``returned``: the nodes the servers wrote again after
    deleting them (counted among ``items``' nodes). ``deletes``: the item
    nodes' deletes the servers logged, by key; given them, an ack of
    unknown outcome counts as done only if a session of its worker (in
    ``sessions``) deleted the item."""
    puts: dict[Key, PutRecord] = {p.key: p for p in history.puts}
    outcomes = [p.outcome for p in history.puts]
    found: list[str] = []

    # first in the notes: what explains the double acks and holds that follow
    came_back = first_returns(returned)
    returned_keys = 0
    for key, writes in (items or {}).items():
        back = next((came_back[w.path] for w in writes if w.path in came_back), None)
        if back is not None:
            returned_keys += 1
            _note(found, f"{key}: {back.explained('item node')}", examples)

    by_key: dict[Key, list[HoldRecord]] = defaultdict(list)
    by_item: dict[str, list[HoldRecord]] = defaultdict(list)
    unexpected = 0
    for hold in history.holds:
        by_item[hold.item_id].append(hold)
        put = puts.get(hold.key) if hold.key is not None else None
        if put is None or put.outcome == "failed":
            unexpected += 1
            _note(
                found, f"unexpected: {hold.worker} reserved {hold.key} ({hold.item_id})", examples
            )
            continue
        by_key[put.key].append(hold)

    put_duplicates = 0
    double_acks = 0
    duplicates = 0
    done = 0
    lost = 0
    recovered = 0
    finished: set[Key] = set()  # puts an ack (or an ack that may have been applied) finished
    not_applied: dict[Key, list[str]] = defaultdict(list)
    for key, holds in by_key.items():
        ids = {h.item_id for h in holds}
        if len(ids) > 1:
            put_duplicates += len(ids) - 1
            _note(found, f"put {key} became {len(ids)} items: {sorted(ids)}", examples)
        acks = [h for h in holds if h.finish == "acked"]
        if len(acks) > 1:
            double_acks += len(acks) - 1
            _note(found, f"{key} acked {len(acks)} times: {[h.hold for h in acks]}", examples)
        unknown_done = False
        for h in holds:
            if h.finish != "unknown":
                continue
            why = _unknown_ack_why_not(h, holds, sessions, deletes)
            if why is None:
                unknown_done = True
            else:
                not_applied[key].append(f"the ack of unknown outcome by {h.hold}: {why}")
        if acks or unknown_done:
            done += 1
            finished.add(key)
        handled = sum(1 for h in holds if h.handled_at is not None)
        duplicates += max(0, handled - 1)
        if puts[key].outcome == "unknown":
            recovered += 1
    for key, writes in (items or {}).items():
        if len(writes) > 1 and len({h.item_id for h in by_key.get(key, [])}) <= 1:
            put_duplicates += len(writes) - 1
            nodes = ", ".join(
                f"{w.path} (zxid {w.zxid:#x}, session {w.session:#x})" for w in writes
            )
            _note(found, f"put {key} written as {len(writes)} item nodes: {nodes}", examples)
    for put in history.puts:
        if put.outcome != "ok":
            continue
        if put.key not in finished:
            lost += 1
            holds = by_key.get(put.key, [])
            why = "".join(f"; {w}" for w in not_applied.get(put.key, ()))
            _note(found, f"lost: {put.key} ({put.item_id}), holds {len(holds)}{why}", examples)

    double_holds = 0
    for item_id, holds in by_item.items():
        for first, second in _overlaps(holds, sessions):
            double_holds += 1
            _note(
                found,
                f"{item_id} held by {first.hold} and {second.hold} at the same time",
                examples,
            )
        seen: dict[int, HoldRecord] = {}
        for h in holds:
            if h.attempts in seen:
                double_holds += 1
                _note(
                    found,
                    f"{item_id} held twice at attempt {h.attempts}: "
                    f"{seen[h.attempts].hold} and {h.hold}",
                    examples,
                )
            else:
                seen[h.attempts] = h
        for acked in (h for h in holds if h.finish == "acked"):
            later = [h for h in holds if h.attempts > acked.attempts]
            if later:
                double_holds += len(later)
                _note(
                    found,
                    f"{item_id} acked by {acked.hold} at attempt {acked.attempts} "
                    f"but held again by {[h.hold for h in later]}",
                    examples,
                )

    return QueueCheckResult(
        attempted=len(history.puts),
        acked=outcomes.count("ok"),
        failed=outcomes.count("failed"),
        unknown=outcomes.count("unknown"),
        reserved=len(history.holds),
        done=done,
        lost=lost,
        unexpected=unexpected,
        put_duplicates=put_duplicates,
        double_acks=double_acks,
        double_holds=double_holds,
        duplicates=duplicates,
        redelivered=sum(1 for h in history.holds if h.attempts > 1),
        rejected=sum(1 for h in history.holds if h.finish == "lost"),
        recovered=recovered,
        unknown_acks=sum(1 for h in history.holds if h.finish == "unknown"),
        returned=returned_keys,
        examples=tuple(found),
    )


def check_queue_against(history: QueueHistory, ledger: Ledger) -> QueueCheckResult:
    """:func:`check_queue` with everything the servers' logs tell: the
    workers' sessions, the item nodes each put became and who deleted
    them, and the nodes that came back."""
    return check_queue(
        history,
        ledger.sessions,
        items=ledger.items,
        returned=ledger.returned,
        deletes=ledger.item_deletes,
    )


@dataclass(frozen=True, slots=True)
class QueueAudit:
    """The queue as read after the run."""

    items: tuple[str, ...]
    reserved: tuple[str, ...]
    orphans: tuple[str, ...]  # reservations without their item
    dead: tuple[str, ...]
    workers: tuple[str, ...]
    dead_expected: bool = False

    @property
    def ok(self) -> bool:
        dead = self.dead and not self.dead_expected
        return not (self.items or self.reserved or self.orphans or dead)

    def describe(self) -> str:
        return (
            f"items left={list(self.items)} reserved={list(self.reserved)} "
            f"orphan reservations={list(self.orphans)} dead letters={len(self.dead)} "
            f"workers registered={list(self.workers)}"
        )


def look_at_queue(
    zk: KazooClient, root: str, name: str, *, dead_expected: bool = False
) -> QueueAudit:
    paths = Layout(root).work_queue(name)
    zk.sync(paths.base)

    def children(path: str) -> list[str]:
        try:
            return sorted(zk.get_children(path))
        except NoNodeError:
            return []

    items: list[str] = []
    for child in children(paths.items):
        if parse_segment_node(child) is None:
            items.append(child)  # an item of the unsegmented layout, or foreign
        else:
            items.extend(children(join(paths.items, child)))
    reserved = children(paths.reserved)
    present = set(items)
    return QueueAudit(
        items=tuple(sorted(items)),
        reserved=tuple(reserved),
        orphans=tuple(r for r in reserved if r not in present),
        dead=tuple(children(paths.dead)),
        workers=tuple(children(paths.workers)),
        dead_expected=dead_expected,
    )


def audit_queue(
    hosts: str, root: str, name: str, *, timeout: float, dead_expected: bool = False
) -> QueueAudit:
    """Wait up to ``timeout`` seconds (dead workers' sessions take up to a
    session timeout to end) for the queue to be empty, with nothing
    reserved, no orphan and (unless ``dead_expected``) no dead letter;
    return the last look (check ``.ok``)."""
    return poll(
        hosts,
        lambda zk: look_at_queue(zk, root, name, dead_expected=dead_expected),
        timeout=timeout,
    )
