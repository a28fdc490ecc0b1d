"""The checker: what a run's history must satisfy. Pure functions only.

**Entitlement.** Subscriber *S* is entitled to message *m* when all hold:

1. *S* subscribes to *m*'s topic and its ``subscribe()`` returned before
   *m*'s ``publish()`` was called (``S.subscribed_at <= m.started``);
2. *S* stayed subscribed to the end of the run (it was not closed, killed
   or crashed before the final drain);
3. *S*'s client reported no gap covering *m*: a ``session expired`` gap
   whose ``[since, until]`` overlaps ``[m.started, m.ended]``, or a
   ``backlog purged`` gap with ``m.started <= until`` (the purge may have
   taken anything published before the client came back).

These are exactly the promises of ``Client.publish`` and of gap listeners.

**Figures.**

``attempted``, ``acked``, ``failed``, ``unknown``
    publishes by outcome (see :mod:`zkpubsub.testing.history`).
``expected``
    Σ over acknowledged messages of the number of entitled subscribers.
``delivered``
    distinct (subscriber, message) pairs delivered, to anyone.
``lost``
    entitled (subscriber, acknowledged message) pairs never delivered:
    ``acked x entitled - delivered``. Must be 0.
``unexpected``
    deliveries of a message never attempted (or on another topic, or not
    written by the workload). Must be 0.
``failed_delivered``
    messages whose publish failed for certain yet were delivered. Must be 0.
``duplicates``
    deliveries beyond the first of the same message to the same subscriber.
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


def entitled(sub: SubscriberRecord, msg: PublishRecord) -> bool:
    """Whether ``sub`` must receive ``msg`` if ``msg`` was acknowledged."""
    if sub.topic != msg.topic or sub.ended_at is not None:
        return False
    if sub.subscribed_at > msg.started:
        return False
    for gap in sub.gaps:
        if gap.reason == "backlog purged":
            if msg.started <= gap.until:
                return False
        elif msg.started <= gap.until and gap.since <= msg.ended:
            return False
    return True


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What :func:`check` found. ``ok`` when nothing that must be zero is not."""

    attempted: int
    acked: int
    failed: int
    unknown: int
    expected: int
    delivered: int
    lost: int
    unexpected: int
    failed_delivered: int
    duplicates: int
    order_violations: int
    order_conflicts: int
    recovered: int
    lost_examples: tuple[tuple[str, Key], ...] = ()
    unexpected_examples: tuple[tuple[str, Key | None], ...] = ()
    order_examples: tuple[str, ...] = ()
    per_subscriber: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.unexpected == 0
            and self.failed_delivered == 0
            and self.order_violations == 0
            and self.order_conflicts == 0
        )

    def describe(self) -> str:
        lines = [
            f"attempted={self.attempted} acked={self.acked} failed={self.failed} "
            f"unknown={self.unknown} expected={self.expected} delivered={self.delivered} "
            f"lost={self.lost} unexpected={self.unexpected} "
            f"failed_delivered={self.failed_delivered} duplicates={self.duplicates} "
            f"order_violations={self.order_violations} "
            f"order_conflicts={self.order_conflicts} recovered={self.recovered}"
        ]
        if self.lost_examples:
            lines.append(f"lost (first): {list(self.lost_examples)}")
        if self.unexpected_examples:
            lines.append(f"unexpected (first): {list(self.unexpected_examples)}")
        if self.order_examples:
            lines.append(f"order (first): {list(self.order_examples)}")
        for name, counts in sorted(self.per_subscriber.items()):
            lines.append(f"  {name}: {counts}")
        return "\n".join(lines)


def missing(history: History) -> list[tuple[str, Key]]:
    """Entitled (subscriber, acknowledged message) pairs not delivered yet."""
    got = {(d.subscriber, d.key) for d in history.deliveries if d.key is not None}
    out = []
    for msg in history.publishes:
        if msg.outcome != "ok":
            continue
        for sub in history.subscribers:
            if entitled(sub, msg) and (sub.name, msg.key) not in got:
                out.append((sub.name, msg.key))
    return out


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


def check(history: History, *, total_order: bool = True, examples: int = 10) -> CheckResult:
    """Check a run's history; see the module docstring for the rules."""
    publishes: dict[Key, PublishRecord] = {}
    for p in history.publishes:
        publishes[p.key] = p
    outcomes = [p.outcome for p in history.publishes]

    seen: dict[tuple[str, Key], int] = defaultdict(int)
    unexpected = 0
    unexpected_examples: list[tuple[str, Key | None]] = []
    order_violations = 0
    order_examples: list[str] = []
    last_seq: dict[tuple[str, str], int] = {}
    first_orders: dict[str, list[Key]] = defaultdict(list)
    delivered_keys: set[Key] = set()
    per_sub: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    for d in history.deliveries:
        per_sub[d.subscriber]["deliveries"] += 1
        msg = publishes.get(d.key) if d.key is not None else None
        if msg is None or msg.topic != d.topic:
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

    expected = 0
    lost = 0
    lost_examples: list[tuple[str, Key]] = []
    for msg in history.publishes:
        if msg.outcome != "ok":
            continue
        for sub in history.subscribers:
            if not entitled(sub, msg):
                continue
            expected += 1
            per_sub[sub.name]["entitled"] += 1
            if (sub.name, msg.key) not in seen:
                lost += 1
                per_sub[sub.name]["lost"] += 1
                if len(lost_examples) < examples:
                    lost_examples.append((sub.name, msg.key))

    conflicts, conflict_examples = (0, []) if not total_order else _order_conflicts(first_orders)
    failed_delivered = sum(1 for k in delivered_keys if publishes[k].outcome == "failed")
    recovered = sum(1 for k in delivered_keys if publishes[k].outcome == "unknown")
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    return CheckResult(
        attempted=len(history.publishes),
        acked=outcomes.count("ok"),
        failed=outcomes.count("failed"),
        unknown=outcomes.count("unknown"),
        expected=expected,
        delivered=len(seen),
        lost=lost,
        unexpected=unexpected,
        failed_delivered=failed_delivered,
        duplicates=duplicates,
        order_violations=order_violations,
        order_conflicts=conflicts,
        recovered=recovered,
        lost_examples=tuple(lost_examples),
        unexpected_examples=tuple(unexpected_examples),
        order_examples=tuple(order_examples + conflict_examples),
        per_subscriber={k: dict(v) for k, v in per_sub.items()},
    )


def strictly_increasing(values: Sequence[int]) -> tuple[bool, str]:
    """For the original procedure: each value is the previous plus one."""
    for i in range(1, len(values)):
        if values[i] != values[i - 1] + 1:
            return False, f"value {values[i]} at position {i} follows {values[i - 1]}"
    return True, ""
