"""The checker: what a run's history must satisfy. Pure functions only.

A run has two records: the :class:`~zkpubsub.testing.history.History`
(what the clients did and saw: publishes and their outcomes, deliveries,
when each subscriber subscribed, whether it stayed to the end, the gap
notices it got) and the :class:`~zkpubsub.testing.ledger.Ledger` (what the
servers' own transaction logs say was written: which queues each message
went into, which subscriptions were registered when, which sessions deleted
what). The history is judged against the ledger; nothing the library under
test reports about itself excuses a missing delivery.

**What a subscriber must receive.** Subscriber *S*, alive to the end of the
run, must receive message *m* (the pair is **expected**) when

1. *m* was written into *S*'s queue, whatever the publish's outcome: the
   library promises to deliver what is in the queue. The one exception
   (**excused**): the node was deleted by a session other than *S*'s own
   after *S*'s client node had been gone for at least the cleaner's grace
   (``purge_grace``): a cleaner purging the queue of a client that was away
   (with ``purge_grace=None`` nothing is excused this way);
2. or *m* was acknowledged, *S*'s ``subscribe()`` returned before *m*'s
   ``publish()`` was called, *m* was not written into *S*'s queue, and
   *S*'s registration node existed when the last transaction carrying *m*
   committed (throughout the publish, for one that wrote nothing): the
   publisher missed a registered subscriber. If the registration was gone
   at that moment (*S*'s session had ended and it had not registered
   again), the pair is **excused**. So is it (``"skipped: queue full"``)
   when *S*'s queue was full and the servers' logs prove the publisher
   skipped it: a transaction that carried *m* into other subscribers'
   queues created or counted into an overflow marker in *S*'s queue
   (``docs/wire-format.md``, *Publishing*), or, under ``evict``
   (``"skipped: evicted"``), marked *S*'s queue record ``full`` or checked
   the record so marked. A publisher that skips a queue without leaving
   that mark in the same transaction, or whose only transaction carrying
   *m* carried it to no queue at all, proves nothing: the pair stays
   expected.

Messages written into a queue under ``evict`` and deleted (by its client
or a cleaner) after its record was marked ``full`` are excused as
``"evicted"``: an eviction deletes the queue unread.

Gap notices are obligations, not excuses: every excused pair must fall in a
gap the subscriber's client reported (``unreported`` counts those that do
not). For a purged node, one notice must span the subscriber's whole
absence up to the purge: from the delete of its client node (the purge's
``absent_for`` before it) to the node's delete; a notice about some other,
earlier absence does not do. For a full queue the notice must say so
(reason ``backlog full``, naming the topic) and its span (the marker's
creation to its last count, or the mark to the eviction) must hold the
skipping transaction or the deletion. Every overflow marker a live
subscriber's own session deleted (it reached it) must be covered by such a
notice too.

**Figures.**

``attempted``, ``acked``, ``failed``, ``unknown``
    publishes by outcome (see :mod:`zkpubsub.testing.history`).
``expected``, ``excused``
    (subscriber, message) pairs, as above.
``delivered``
    distinct (subscriber, message) pairs delivered, to anyone.
``lost``
    expected pairs never delivered. Must be 0.
``unexpected``
    deliveries of a message never attempted, on another topic, or never
    written into that subscriber's queue. Must be 0.
``failed_written``
    publishes that failed "for certain" yet were written or delivered. Must be 0.
``unconfirmed``
    acknowledged publishes whose receipt counts another number of
    subscriber queues than the servers' logs show written. Must be 0.
``skipped``
    the excused pairs whose publisher skipped a full queue (a part of
    ``excused``).
``unreported``
    excused pairs no gap notice of the subscriber covers, and overflow
    markers a subscriber reached without a gap notice. Must be 0.
``duplicates``
    deliveries beyond the first of the same message to the same subscriber.
    One whose node the servers' logs show written again after its delete
    (:attr:`~zkpubsub.testing.ledger.Ledger.returned`: a node ZooKeeper
    brought back) is named in ``other_examples``.
``order_violations``
    deliveries, at one subscriber, of a message from a publisher older than
    one already delivered from that publisher (duplicates aside). Must be 0:
    each publisher publishes one message at a time.
``order_conflicts``
    pairs of messages two subscribers received in opposite orders (only
    checked where fan-outs are single transactions: ``total_order=True``).
``recovered``
    messages with an unknown outcome that were delivered after all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .history import History, Key, PublishRecord, SubscriberRecord
from .ledger import Ledger, Marker, Removal, first_returns

__all__ = [
    "EVICTED",
    "PURGED",
    "SKIPPED",
    "SKIPPED_EVICTED",
    "CheckResult",
    "Excuse",
    "Obligations",
    "check",
    "missing",
    "obligations",
    "strictly_increasing",
]


# Clocks: the history's times are this machine's, the ledger's the
# leader's (the same machine); ZooKeeper logs milliseconds.
_CLOCK_SLACK = 0.01

# Excuses for a full queue: the gap notice must say "backlog full".
SKIPPED = "skipped: queue full"
SKIPPED_EVICTED = "skipped: evicted"
EVICTED = "evicted"
PURGED = "purged"
_FULL_REASONS = frozenset({SKIPPED, SKIPPED_EVICTED, EVICTED})
_FULL_GAP = "backlog full"


@dataclass(frozen=True, slots=True)
class Excuse:
    """An excused pair and why: ``"unregistered"`` (the subscription was not
    registered when the message committed), ``"purged"``, ``"skipped:
    queue full"``, ``"skipped: evicted"`` or ``"evicted"`` (see the
    module's text). ``start``/``end``: the span a gap notice must touch
    (``"unregistered"``) or hold entirely (the others)."""

    subscriber: str
    key: Key
    reason: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Obligations:
    """What each subscriber must receive, and what is excused."""

    expected: frozenset[tuple[str, Key]]
    excused: tuple[Excuse, ...]


def _purged(removal: Removal | None, grace: float | None) -> bool:
    return (
        removal is not None
        and grace is not None
        and removal.absent_for is not None
        and removal.absent_for + _CLOCK_SLACK >= grace
    )


def obligations(
    history: History, ledger: Ledger, *, purge_grace: float | None = None
) -> Obligations:
    """The expected and the excused pairs (see the module's text)."""
    live: dict[str, list[SubscriberRecord]] = defaultdict(list)
    for sub in history.subscribers:
        if sub.ended_at is None:
            live[sub.topic].append(sub)
    expected: set[tuple[str, Key]] = set()
    excused: list[Excuse] = []
    for msg in history.publishes:
        if msg.outcome == "failed":
            continue
        written = ledger.written_to(msg.key)
        for sub in live.get(msg.topic, ()):
            pair = (sub.name, msg.key)
            if sub.name in written:
                removal = ledger.removals.get(pair)
                if removal is not None and removal.evicted:
                    excused.append(Excuse(sub.name, msg.key, EVICTED, removal.at, removal.at))
                elif _purged(removal, purge_grace):
                    assert removal is not None and removal.absent_for is not None
                    # from the moment its client node went to the purge
                    away = removal.at - removal.absent_for
                    excused.append(Excuse(sub.name, msg.key, PURGED, away, removal.at))
                else:
                    expected.add(pair)
                continue
            if msg.outcome != "ok" or sub.subscribed_at > msg.started:
                continue
            if msg.key in ledger.registered:
                registered = sub.name in ledger.registered[msg.key]
            else:
                registered = ledger.registered_throughout(
                    msg.topic, sub.name, msg.started + _CLOCK_SLACK, msg.ended - _CLOCK_SLACK
                )
            skip = ledger.skipped(msg.key).get(sub.name) if registered else None
            if skip is not None:
                reason = SKIPPED if skip.kind == "marker" else SKIPPED_EVICTED
                excused.append(Excuse(sub.name, msg.key, reason, skip.at, skip.at))
            elif registered:
                expected.add(pair)
            else:
                excused.append(Excuse(sub.name, msg.key, "unregistered", msg.started, msg.ended))
    return Obligations(frozenset(expected), tuple(excused))


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What :func:`check` found. ``ok`` when nothing that must be zero is not."""

    attempted: int
    acked: int
    failed: int
    unknown: int
    expected: int
    excused: int
    delivered: int
    lost: int
    unexpected: int
    failed_written: int
    unconfirmed: int
    unreported: int
    duplicates: int
    order_violations: int
    order_conflicts: int
    recovered: int
    skipped: int = 0
    lost_examples: tuple[tuple[str, Key], ...] = ()
    unexpected_examples: tuple[tuple[str, Key | None], ...] = ()
    order_examples: tuple[str, ...] = ()
    other_examples: tuple[str, ...] = ()
    per_subscriber: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.unexpected
            or self.failed_written
            or self.unconfirmed
            or self.unreported
            or self.order_violations
            or self.order_conflicts
        )

    def describe(self) -> str:
        lines = [
            f"attempted={self.attempted} acked={self.acked} failed={self.failed} "
            f"unknown={self.unknown} expected={self.expected} excused={self.excused} "
            f"delivered={self.delivered} lost={self.lost} unexpected={self.unexpected} "
            f"failed_written={self.failed_written} unconfirmed={self.unconfirmed} "
            f"unreported={self.unreported} duplicates={self.duplicates} "
            f"order_violations={self.order_violations} "
            f"order_conflicts={self.order_conflicts} recovered={self.recovered} "
            f"skipped={self.skipped}"
        ]
        if self.lost_examples:
            lines.append(f"lost (first): {list(self.lost_examples)}")
        if self.unexpected_examples:
            lines.append(f"unexpected (first): {list(self.unexpected_examples)}")
        if self.order_examples:
            lines.append(f"order (first): {list(self.order_examples)}")
        if self.other_examples:
            lines.append(f"other (first): {list(self.other_examples)}")
        for name, counts in sorted(self.per_subscriber.items()):
            lines.append(f"  {name}: {counts}")
        return "\n".join(lines)


def missing(
    history: History, ledger: Ledger, *, purge_grace: float | None = None
) -> list[tuple[str, Key]]:
    """Expected (subscriber, message) pairs not delivered yet."""
    got = {(d.subscriber, d.key) for d in history.deliveries if d.key is not None}
    owed = obligations(history, ledger, purge_grace=purge_grace).expected
    return sorted(owed - got)


def _order_conflicts(sequences: dict[str, list[Key]]) -> tuple[int, list[str]]:
    """Pairs of subscribers that saw common messages in different orders:
    counts the messages out of place in the second one's order."""
    conflicts = 0
    examples: list[str] = []
    names = sorted(sequences)
    positions = {n: {k: i for i, k in enumerate(sequences[n])} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = [k for k in sequences[a] if k in positions[b]]
            last = -1
            for k in common:
                pos = positions[b][k]
                if pos < last:
                    conflicts += 1
                    if len(examples) < 5:
                        examples.append(f"{a} and {b} disagree on the place of {k}")
                last = max(last, pos)
    return conflicts, examples


def _covered(sub: SubscriberRecord, excuse: Excuse) -> bool:
    if excuse.reason in _FULL_REASONS:
        return _full_told(sub, excuse.start, excuse.end)
    if excuse.reason == PURGED:
        # one notice over the whole absence that ended in the purge
        return any(
            g.since - _CLOCK_SLACK <= excuse.start and excuse.end <= g.until + _CLOCK_SLACK
            for g in sub.gaps
        )
    return any(
        g.since <= excuse.end + _CLOCK_SLACK and excuse.start - _CLOCK_SLACK <= g.until
        for g in sub.gaps
    )


def _full_told(sub: SubscriberRecord, start: float, end: float) -> bool:
    """Whether a gap notice of ``sub`` says its queue was full (reason
    ``backlog full``, naming its topic) over all of ``[start, end]``."""
    return any(
        g.reason.startswith(_FULL_GAP)
        and sub.topic in g.topics
        and g.since - _CLOCK_SLACK <= start
        and end <= g.until + _CLOCK_SLACK
        for g in sub.gaps
    )


def _unreported_markers(history: History, markers: dict[str, Marker]) -> list[str]:
    """The overflow markers a live subscriber reached (its own session
    deleted them) that no gap notice of its covers."""
    live = {s.name: s for s in history.subscribers if s.ended_at is None}
    out: list[str] = []
    for path, marker in sorted(markers.items()):
        sub = live.get(marker.subscriber)
        if sub is None or sub.topic != marker.topic or not marker.by_owner:
            continue
        if not _full_told(sub, marker.created, marker.written):
            out.append(path)
    return out


def check(
    history: History,
    ledger: Ledger,
    *,
    total_order: bool = True,
    purge_grace: float | None = None,
    examples: int = 10,
) -> CheckResult:
    """Check a run's history against the servers' ledger; see the module
    docstring for the rules. ``purge_grace``: the cleaner's grace period,
    if a cleaner ran."""
    publishes: dict[Key, PublishRecord] = {}
    for p in history.publishes:
        publishes[p.key] = p
    outcomes = [p.outcome for p in history.publishes]

    seen: dict[tuple[str, Key], int] = defaultdict(int)
    unexpected = 0
    unexpected_examples: list[tuple[str, Key | None]] = []
    order_violations = 0
    order_examples: list[str] = []
    other_examples: list[str] = []
    last_seq: dict[tuple[str, str], int] = {}
    first_orders: dict[str, list[Key]] = defaultdict(list)
    delivered_keys: set[Key] = set()
    per_sub: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    for d in history.deliveries:
        per_sub[d.subscriber]["deliveries"] += 1
        msg = publishes.get(d.key) if d.key is not None else None
        if msg is None or msg.topic != d.topic or d.subscriber not in ledger.written_to(msg.key):
            unexpected += 1
            if len(unexpected_examples) < examples:
                unexpected_examples.append((d.subscriber, d.key))
            continue
        key = msg.key
        seen[(d.subscriber, key)] += 1
        if seen[(d.subscriber, key)] > 1:
            per_sub[d.subscriber]["duplicates"] += 1
            continue
        delivered_keys.add(key)
        first_orders[d.subscriber].append(key)
        stream = (d.subscriber, key[0])
        if key[1] < last_seq.get(stream, -(1 << 62)):
            order_violations += 1
            if len(order_examples) < examples:
                order_examples.append(
                    f"{d.subscriber} got {key} after seq {last_seq[stream]} of {key[0]}"
                )
        else:
            last_seq[stream] = key[1]

    owed = obligations(history, ledger, purge_grace=purge_grace)
    lost = 0
    lost_examples: list[tuple[str, Key]] = []
    for pair in sorted(owed.expected):
        per_sub[pair[0]]["expected"] += 1
        if pair not in seen:
            lost += 1
            per_sub[pair[0]]["lost"] += 1
            if len(lost_examples) < examples:
                lost_examples.append(pair)
    subscribers = {s.name: s for s in history.subscribers}
    unreported = 0
    for excuse in owed.excused:
        per_sub[excuse.subscriber][f"excused ({excuse.reason})"] += 1
        if not _covered(subscribers[excuse.subscriber], excuse):
            unreported += 1
            if len(other_examples) < examples:
                other_examples.append(
                    f"{excuse.subscriber} was not told of {excuse.key} ({excuse.reason})"
                )

    for path in _unreported_markers(history, ledger.markers):
        unreported += 1
        marker = ledger.markers[path]
        per_sub[marker.subscriber]["unreported markers"] += 1
        if len(other_examples) < examples:
            other_examples.append(
                f"{marker.subscriber} reached the overflow marker {path} "
                f"(missed={marker.missed}) without a gap notice"
            )

    failed_written = 0
    unconfirmed = 0
    for msg in history.publishes:
        written = ledger.written_to(msg.key)
        if msg.outcome == "failed" and (written or msg.key in delivered_keys):
            failed_written += 1
            if len(other_examples) < examples:
                other_examples.append(f"{msg.key} failed for certain yet was written")
        if msg.outcome == "ok" and msg.reached is not None and msg.reached != len(written):
            unconfirmed += 1
            if len(other_examples) < examples:
                other_examples.append(
                    f"{msg.key}: receipt says {msg.reached} queues, the servers logged "
                    f"{len(written)}"
                )

    came_back = first_returns(ledger.returned)
    for (subscriber, key), n in sorted(seen.items()):
        if n < 2:
            continue
        for write in ledger.writes.get(key, ()):
            r = came_back.get(write.path)
            if write.subscriber == subscriber and r is not None and len(other_examples) < examples:
                other_examples.append(f"{subscriber} got {key} {n} times: {r.explained()}")

    conflicts, conflict_examples = (0, []) if not total_order else _order_conflicts(first_orders)
    recovered = sum(1 for k in delivered_keys if publishes[k].outcome == "unknown")
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    return CheckResult(
        attempted=len(history.publishes),
        acked=outcomes.count("ok"),
        failed=outcomes.count("failed"),
        unknown=outcomes.count("unknown"),
        expected=len(owed.expected),
        excused=len(owed.excused),
        delivered=len(seen),
        lost=lost,
        unexpected=unexpected,
        failed_written=failed_written,
        unconfirmed=unconfirmed,
        unreported=unreported,
        duplicates=duplicates,
        order_violations=order_violations,
        order_conflicts=conflicts,
        recovered=recovered,
        skipped=sum(1 for e in owed.excused if e.reason in (SKIPPED, SKIPPED_EVICTED)),
        lost_examples=tuple(lost_examples),
        unexpected_examples=tuple(unexpected_examples),
        order_examples=tuple(order_examples + conflict_examples),
        other_examples=tuple(other_examples),
        per_subscriber={k: dict(v) for k, v in per_sub.items()},
    )


def strictly_increasing(values: Sequence[int]) -> tuple[bool, str]:
    """For the original procedure: each value is the previous plus one."""
    for i in range(1, len(values)):
        if values[i] != values[i - 1] + 1:
            return False, f"value {values[i]} at position {i} follows {values[i - 1]}"
    return True, ""
