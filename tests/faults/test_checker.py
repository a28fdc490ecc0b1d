"""The checker on hand-made histories and ledgers: each rule, alone."""

from __future__ import annotations

from zkpubsub import ConnectionLost, NoSubscribers, PayloadTooLarge, PublishTimeout
from zkpubsub.testing.checker import check, missing, obligations, strictly_increasing
from zkpubsub.testing.history import (
    DeliveryRecord,
    GapRecord,
    History,
    PublishRecord,
    SubscriberRecord,
    classify,
)
from zkpubsub.testing.ledger import INF, Ledger, Marker, QueueWrite, Removal, Returned, Skip

T = "topic"


def pub(
    seq: int,
    outcome: str = "ok",
    *,
    publisher: str = "p",
    at: float | None = None,
    reached: int | None = None,
) -> PublishRecord:
    start = float(seq) if at is None else at
    return PublishRecord(publisher, seq, T, start, start + 0.5, outcome, reached=reached)  # type: ignore[arg-type]


def sub(name: str, at: float = 0.0, *, ended: float | None = None, gaps=()) -> SubscriberRecord:
    return SubscriberRecord(name, T, at, ended, tuple(gaps))


def got(name: str, seq: int, *, publisher: str = "p", topic: str = T) -> DeliveryRecord:
    return DeliveryRecord(name, topic, (publisher, seq), f"id{seq}", 100.0 + seq)


def history(publishes, deliveries, subscribers) -> History:
    return History(tuple(publishes), tuple(deliveries), tuple(subscribers))


def ledger(
    written: dict[tuple[str, int], set[str]] | None = None,
    *,
    registered: dict[tuple[str, int], set[str]] | None = None,
    removals: dict[tuple[str, tuple[str, int]], Removal] | None = None,
    registrations: dict[str, list[tuple[float, float]]] | None = None,
    subscribers: tuple[str, ...] = ("a", "b"),
    publishes: range = range(1, 10),
) -> Ledger:
    """A ledger in which, by default, every message 1..9 of publisher ``p``
    was written into the queues of ``subscribers``, all registered."""
    out = Ledger()
    if written is None:
        written = {("p", n): set(subscribers) for n in publishes}
    for key, subs in written.items():
        at = float(key[1]) + 0.25
        for s in sorted(subs):
            out.writes[key].append(QueueWrite(s, T, key[1], at, f"/q/{s}/{key}"))
        out.commits[key] = (key[1], at)
        out.registered[key] = frozenset(
            registered[key] if registered and key in registered else subs
        )
    out.removals.update(removals or {})
    for s, spans in (registrations or {}).items():
        out.registrations[(T, s)] = spans
    return out


def test_everything_delivered_once_in_order_is_clean():
    h = history(
        [pub(1), pub(2), pub(3)],
        [got(s, n) for s in ("a", "b") for n in (1, 2, 3)],
        [sub("a"), sub("b")],
    )
    r = check(h, ledger())
    assert r.ok
    assert (r.attempted, r.acked, r.expected, r.excused, r.delivered, r.lost) == (3, 3, 6, 0, 6, 0)


def test_an_acknowledged_message_missing_at_one_subscriber_is_lost():
    h = history([pub(1), pub(2)], [got("a", 1), got("a", 2), got("b", 1)], [sub("a"), sub("b")])
    r = check(h, ledger())
    assert not r.ok
    assert r.lost == 1
    assert r.lost_examples == (("b", ("p", 2)),)
    assert missing(h, ledger()) == [("b", ("p", 2))]


def test_a_message_in_the_queue_must_arrive_even_if_the_library_reported_a_gap():
    """A gap notice excuses nothing: the backlog written before a session
    expired is in the queue and must be delivered (a subscriber that
    dropped it on registering again is caught)."""
    gap = GapRecord(since=0.0, until=50.0, reason="session expired")
    h = history([pub(1), pub(2)], [got("a", 2)], [sub("a", gaps=[gap])])
    r = check(h, ledger(subscribers=("a",)))
    assert r.lost == 1 and r.lost_examples == (("a", ("p", 1)),)


def test_a_node_the_subscriber_deleted_itself_without_handling_it_is_lost():
    # its own session's deletes are not removals: nothing excuses them
    h = history([pub(1)], [], [sub("a")])
    assert check(h, ledger(subscribers=("a",))).lost == 1


def test_a_node_purged_after_the_grace_is_excused_and_must_have_been_reported():
    purge = Removal(zxid=5, at=30.0, session=7, absent_for=12.0)
    early = Removal(zxid=5, at=30.0, session=7, absent_for=1.0)
    # over the whole absence: the client node went at 30 - 12, the node at 30
    told = GapRecord(since=15.0, until=40.0, reason="backlog purged")
    lg = ledger(subscribers=("a",), removals={("a", ("p", 1)): purge, ("a", ("p", 2)): early})
    r = check(history([pub(1), pub(2)], [], [sub("a", gaps=[told])]), lg, purge_grace=10.0)
    assert (r.expected, r.excused, r.lost, r.unreported) == (1, 1, 1, 0)  # 2 went too soon
    r = check(history([pub(1)], [], [sub("a")]), lg, purge_grace=10.0)
    assert r.excused == 1 and r.unreported == 1 and not r.ok  # nobody was told
    assert check(history([pub(1)], [], [sub("a")]), lg).lost == 1  # no cleaner ran


def test_a_registered_subscriber_the_publisher_did_not_write_to_is_lost():
    lg = ledger({("p", 1): {"a"}}, registered={("p", 1): {"a", "b"}})
    r = check(history([pub(1, reached=1)], [got("a", 1)], [sub("a"), sub("b")]), lg)
    assert r.lost == 1 and r.lost_examples == (("b", ("p", 1)),)


def test_an_unregistered_subscription_is_excused_only_if_its_client_said_so():
    lg = ledger({("p", 1): {"a"}}, registered={("p", 1): {"a"}})
    told = GapRecord(since=0.5, until=3.0, reason="session expired")
    r = check(history([pub(1)], [got("a", 1)], [sub("a"), sub("b", gaps=[told])]), lg)
    assert (r.expected, r.excused, r.lost, r.unreported) == (1, 1, 0, 0) and r.ok
    r = check(history([pub(1)], [got("a", 1)], [sub("a"), sub("b")]), lg)
    assert r.unreported == 1 and not r.ok


def test_a_publish_that_wrote_nothing_is_judged_by_the_registrations_during_it():
    lg = ledger({}, registrations={"a": [(0.0, INF)], "b": [(0.0, 1.2)]})
    h = history([pub(1)], [], [sub("a"), sub("b", gaps=[GapRecord(1.0, 2.0, "x")])])
    owed = obligations(h, lg)
    assert owed.expected == {("a", ("p", 1))}
    assert [(e.subscriber, e.reason) for e in owed.excused] == [("b", "unregistered")]


def test_a_subscriber_that_joined_after_the_publish_started_is_owed_only_what_it_was_written():
    lg = ledger({("p", 3): {"late"}, ("p", 4): set()}, registered={("p", 4): {"late"}})
    h = history([pub(3), pub(4)], [got("late", 3)], [sub("late", at=5.0)])
    r = check(h, lg)
    assert r.ok and r.expected == 1 and r.excused == 0


def test_a_subscriber_that_ended_early_is_owed_nothing():
    r = check(history([pub(1)], [], [sub("gone", ended=50.0)]), ledger(subscribers=("gone",)))
    assert r.ok and r.expected == 0


def test_a_receipt_that_disagrees_with_the_servers_is_unconfirmed():
    r = check(history([pub(1, reached=3)], [got("a", 1)], [sub("a")]), ledger(subscribers=("a",)))
    assert r.unconfirmed == 1 and not r.ok


def test_unknown_publishes_are_owed_only_where_they_were_written():
    lg = ledger({("p", 1): {"a"}})
    r = check(history([pub(1, "unknown"), pub(2, "unknown")], [got("a", 1)], [sub("a")]), lg)
    assert r.ok and (r.expected, r.recovered) == (1, 1)
    r = check(history([pub(1, "unknown")], [], [sub("a")]), lg)
    assert r.lost == 1  # written into its queue: it must arrive


def test_a_failed_publish_must_not_be_written():
    lg = ledger({("p", 1): {"a"}})
    r = check(history([pub(1, "failed")], [], [sub("a")]), lg)
    assert r.failed_written == 1 and not r.ok
    assert check(history([pub(2, "failed")], [], [sub("a")]), lg).ok


def test_a_delivery_never_published_or_never_written_to_that_queue_is_unexpected():
    lg = ledger({("p", 1): {"a"}})
    deliveries = [got("a", 1), got("a", 7), got("a", 1, topic="other"), got("b", 1)]
    r = check(history([pub(1)], deliveries, [sub("a"), sub("b", at=9.0)]), lg)
    assert not r.ok
    assert r.unexpected == 3


def test_duplicates_are_counted_not_fatal():
    h = history([pub(1), pub(2)], [got("a", 1), got("a", 1), got("a", 2), got("a", 1)], [sub("a")])
    r = check(h, ledger(subscribers=("a",)))
    assert r.ok
    assert r.duplicates == 2
    assert r.delivered == 2
    assert r.order_violations == 0  # a late duplicate is not a reordering


def test_per_publisher_order_is_checked_at_each_subscriber():
    lg = ledger({("p", 1): {"a"}, ("p", 2): {"a"}, ("q", 1): {"a"}})
    h = history(
        [pub(1), pub(2), pub(1, publisher="q", at=1.5)],
        [got("a", 2), got("a", 1), got("a", 1, publisher="q")],
        [sub("a")],
    )
    r = check(h, lg)
    assert r.order_violations == 1
    assert not r.ok


def test_subscribers_disagreeing_on_the_order_are_a_conflict():
    lg = ledger({("p", 1): {"a", "b"}, ("q", 1): {"a", "b"}})
    h = history(
        [pub(1), pub(1, publisher="q", at=1.0)],
        [got("a", 1), got("a", 1, publisher="q"), got("b", 1, publisher="q"), got("b", 1)],
        [sub("a"), sub("b")],
    )
    assert check(h, lg).order_conflicts == 1
    assert check(h, lg, total_order=False).ok


def test_outcomes_are_classified_by_what_may_have_been_written():
    assert classify(None) == "ok"
    assert classify(PayloadTooLarge(10, 5)) == "failed"
    assert classify(NoSubscribers("t")) == "failed"
    assert classify(ValueError("from deep inside")) == "unknown"  # proves nothing
    assert classify(PublishTimeout("t", message_ids=("x",), reached=0)) == "unknown"
    assert classify(ConnectionLost("gone")) == "unknown"


def test_strictly_increasing():
    assert strictly_increasing([1, 2, 3]) == (True, "")
    ok, why = strictly_increasing([1, 2, 2, 3])
    assert not ok and "follows 2" in why
    assert not strictly_increasing([1, 3])[0]


# -- full queues: a skip is excused only with the servers' evidence ----------------


def full_gap(since: float, until: float, *, topic: str = T, reason: str = "backlog full"):
    return GapRecord(since, until, reason, frozenset({topic}), 1)


def skipped_ledger(*, marker: bool = True, kind: str = "marker") -> Ledger:
    """Message 1 written to ``a`` and ``b``; message 2 only to ``a``, by a
    transaction at 2.25 that (with ``marker``) left an overflow marker in
    ``b``'s full queue."""
    lg = ledger({("p", 1): {"a", "b"}, ("p", 2): {"a"}}, registered={("p", 2): {"a", "b"}})
    if marker:
        path = "/q/b/s0000000000/o1-0000000001"
        lg.skips[("p", 2)].append(Skip("b", T, 2, 2.25, kind, path))  # type: ignore[arg-type]
        lg.markers[path] = Marker("b", T, 2.25, 2.25, 1, deleted=8.0, by_owner=True)
    return lg


def test_a_message_skipped_for_a_full_queue_is_excused_with_the_marker_and_the_gap_notice():
    h = history(
        [pub(1), pub(2)],
        [got("a", 1), got("a", 2), got("b", 1)],
        [sub("a"), sub("b", gaps=[full_gap(2.25, 2.25)])],
    )
    r = check(h, skipped_ledger())
    assert r.ok, r.describe()
    assert (r.expected, r.excused, r.skipped, r.lost, r.unreported) == (3, 1, 1, 0, 0)
    assert r.per_subscriber["b"]["excused (skipped: queue full)"] == 1


def test_a_message_skipped_without_a_marker_in_the_log_is_lost_whatever_the_client_said():
    h = history(
        [pub(1), pub(2)],
        [got("a", 1), got("a", 2), got("b", 1)],
        [sub("a"), sub("b", gaps=[full_gap(0.0, 50.0)])],  # a gap notice excuses nothing
    )
    r = check(h, skipped_ledger(marker=False))
    assert not r.ok
    assert (r.lost, r.excused, r.skipped) == (1, 0, 0)
    assert r.lost_examples == (("b", ("p", 2)),)


def test_a_marker_without_the_gap_notice_is_flagged():
    h = history([pub(1), pub(2)], [got("a", 1), got("a", 2), got("b", 1)], [sub("a"), sub("b")])
    r = check(h, skipped_ledger())
    assert not r.ok
    assert r.excused == 1 and r.lost == 0
    # the skipped pair, and the marker it reached, both unreported
    assert r.unreported == 2 and r.per_subscriber["b"]["unreported markers"] == 1
    assert any("overflow marker" in e for e in r.other_examples)


def test_a_gap_notice_for_a_full_queue_must_say_so_name_the_topic_and_span_the_skip():
    wrong = [
        GapRecord(0.0, 50.0, "session expired", frozenset({T}), None),
        full_gap(0.0, 50.0, topic="other"),
        full_gap(3.0, 9.0),  # after the skip
    ]
    for gap in wrong:
        h = history(
            [pub(1), pub(2)],
            [got("a", 1), got("a", 2), got("b", 1)],
            [sub("a"), sub("b", gaps=[gap])],
        )
        r = check(h, skipped_ledger())
        assert r.unreported == 2 and not r.ok, gap


def test_a_marker_reached_with_nothing_skipped_by_the_log_still_needs_its_gap_notice():
    # a publisher that skipped the queue for messages it carried nowhere else
    lg = ledger({("p", 1): {"a"}}, subscribers=("a",))
    lg.markers["/q/a/s0000000000/o1-0000000003"] = Marker("a", T, 4.0, 5.0, 2, 9.0, True)
    h = history([pub(1)], [got("a", 1)], [sub("a")])
    assert check(h, lg).unreported == 1
    h = history([pub(1)], [got("a", 1)], [sub("a", gaps=[full_gap(4.0, 5.0)])])
    assert check(h, lg).ok
    # one a cleaner removed, or one still there, the subscriber never reached
    lg.markers["/q/a/s0000000000/o1-0000000003"] = Marker("a", T, 4.0, 5.0, 2, 9.0, False)
    assert check(history([pub(1)], [got("a", 1)], [sub("a")]), lg).ok


def test_an_evicted_subscription_is_excused_what_its_publishers_skipped_and_its_queue_held():
    lg = skipped_ledger(kind="evict")
    lg.markers.clear()
    lg.removals[("b", ("p", 1))] = Removal(zxid=3, at=3.0, session=9, absent_for=None, evicted=True)
    told = full_gap(2.0, 4.0, reason="backlog full: evicted")
    h = history([pub(1), pub(2)], [got("a", 1), got("a", 2)], [sub("a"), sub("b", gaps=[told])])
    r = check(h, lg)
    assert r.ok, r.describe()
    assert (r.excused, r.skipped, r.lost) == (2, 1, 0)
    assert r.per_subscriber["b"]["excused (evicted)"] == 1
    assert r.per_subscriber["b"]["excused (skipped: evicted)"] == 1
    r = check(history([pub(1), pub(2)], [got("a", 1), got("a", 2)], [sub("a"), sub("b")]), lg)
    assert r.unreported == 2 and not r.ok


def test_a_duplicate_whose_node_the_servers_brought_back_is_named():
    h = history([pub(1), pub(2)], [got("a", 1), got("a", 2), got("a", 2)], [sub("a")])
    lg = ledger(subscribers=("a",))
    assert check(h, lg).duplicates == 1 and check(h, lg).other_examples == ()
    node = f"/q/a/{('p', 2)}"
    lg.returned.append(Returned(node, 0x5, 0x300000002, "delete"))
    r = check(h, lg)
    assert r.duplicates == 1, r  # still counted
    assert r.other_examples == (
        f"a got ('p', 2) 2 times: the servers wrote its node {node} again (delete, zxid "
        "0x300000002) after deleting it (zxid 0x5): a node ZooKeeper brought back",
    )
