"""The checker on hand-made histories: each rule, alone."""

from __future__ import annotations

from zkpubsub import ConnectionLost, NoSubscribers, PayloadTooLarge, PublishTimeout
from zkpubsub.testing.checker import check, entitled, missing, strictly_increasing
from zkpubsub.testing.history import (
    DeliveryRecord,
    GapRecord,
    History,
    PublishRecord,
    SubscriberRecord,
    classify,
)

T = "topic"


def pub(
    seq: int, outcome: str = "ok", *, publisher: str = "p", at: float | None = None
) -> PublishRecord:
    start = float(seq) if at is None else at
    return PublishRecord(publisher, seq, T, start, start + 0.5, outcome)  # type: ignore[arg-type]


def sub(name: str, at: float = 0.0, *, ended: float | None = None, gaps=()) -> SubscriberRecord:
    return SubscriberRecord(name, T, at, ended, tuple(gaps))


def got(name: str, seq: int, *, publisher: str = "p", topic: str = T) -> DeliveryRecord:
    return DeliveryRecord(name, topic, (publisher, seq), f"id{seq}", 100.0 + seq)


def history(publishes, deliveries, subscribers) -> History:
    return History(tuple(publishes), tuple(deliveries), tuple(subscribers))


def test_everything_delivered_once_in_order_is_clean():
    h = history(
        [pub(1), pub(2), pub(3)],
        [got(s, n) for s in ("a", "b") for n in (1, 2, 3)],
        [sub("a"), sub("b")],
    )
    r = check(h)
    assert r.ok
    assert (r.attempted, r.acked, r.expected, r.delivered, r.lost, r.duplicates) == (
        3,
        3,
        6,
        6,
        0,
        0,
    )


def test_an_acknowledged_message_missing_at_one_subscriber_is_lost():
    h = history([pub(1), pub(2)], [got("a", 1), got("a", 2), got("b", 1)], [sub("a"), sub("b")])
    r = check(h)
    assert not r.ok
    assert r.lost == 1
    assert r.lost_examples == (("b", ("p", 2)),)
    assert missing(h) == [("b", ("p", 2))]


def test_unknown_and_failed_publishes_are_never_lost():
    h = history([pub(1, "unknown"), pub(2, "failed")], [], [sub("a")])
    r = check(h)
    assert r.ok
    assert (r.acked, r.unknown, r.failed, r.expected, r.lost) == (0, 1, 1, 0, 0)


def test_an_unknown_publish_that_arrives_counts_as_recovered():
    r = check(history([pub(1, "unknown")], [got("a", 1)], [sub("a")]))
    assert r.ok and r.recovered == 1


def test_a_failed_publish_must_not_be_delivered():
    r = check(history([pub(1, "failed")], [got("a", 1)], [sub("a")]))
    assert not r.ok and r.failed_delivered == 1


def test_a_delivery_never_published_is_unexpected():
    r = check(history([pub(1)], [got("a", 1), got("a", 7), got("a", 1, topic="other")], [sub("a")]))
    assert not r.ok
    assert r.unexpected == 2


def test_duplicates_are_counted_not_fatal():
    r = check(
        history([pub(1), pub(2)], [got("a", 1), got("a", 1), got("a", 2), got("a", 1)], [sub("a")])
    )
    assert r.ok
    assert r.duplicates == 2
    assert r.delivered == 2
    assert r.order_violations == 0  # a late duplicate is not a reordering


def test_per_publisher_order_is_checked_at_each_subscriber():
    h = history(
        [pub(1), pub(2), pub(1, publisher="q", at=1.5)],
        [got("a", 2), got("a", 1), got("a", 1, publisher="q")],
        [sub("a")],
    )
    r = check(h)
    assert r.order_violations == 1
    assert not r.ok


def test_subscribers_disagreeing_on_the_order_are_a_conflict():
    h = history(
        [pub(1), pub(1, publisher="q", at=1.0)],
        [got("a", 1), got("a", 1, publisher="q"), got("b", 1, publisher="q"), got("b", 1)],
        [sub("a"), sub("b")],
    )
    assert check(h).order_conflicts == 1
    assert check(h, total_order=False).ok


def test_a_subscriber_that_joined_after_the_publish_started_is_not_entitled():
    assert not entitled(sub("late", at=5.0), pub(3))
    assert entitled(sub("early", at=3.0), pub(3))  # subscribe returned as publish was called


def test_a_subscriber_that_ended_early_is_not_entitled():
    r = check(history([pub(1)], [], [sub("gone", ended=50.0)]))
    assert r.ok and r.expected == 0


def test_a_session_gap_excuses_only_the_publishes_it_overlaps():
    gap = GapRecord(since=10.0, until=20.0, reason="session expired")
    s = sub("a", gaps=[gap])
    assert entitled(s, pub(5))  # 5.0 .. 5.5, before
    assert not entitled(s, pub(9, at=9.8))  # 9.8 .. 10.3 overlaps the start
    assert not entitled(s, pub(15))
    assert not entitled(s, pub(20))  # started as the gap closed
    assert entitled(s, pub(21))


def test_a_purge_gap_excuses_everything_published_before_it_closed():
    s = sub("a", gaps=[GapRecord(since=10.0, until=20.0, reason="backlog purged")])
    assert not entitled(s, pub(1))
    assert not entitled(s, pub(20))
    assert entitled(s, pub(21))


def test_outcomes_are_classified_by_what_may_have_been_written():
    assert classify(None) == "ok"
    assert classify(PayloadTooLarge(10, 5)) == "failed"
    assert classify(NoSubscribers("t")) == "failed"
    assert classify(ValueError("bad topic")) == "failed"
    assert classify(PublishTimeout("t", message_ids=("x",), reached=0)) == "unknown"
    assert classify(ConnectionLost("gone")) == "unknown"


def test_strictly_increasing():
    assert strictly_increasing([1, 2, 3]) == (True, "")
    ok, why = strictly_increasing([1, 2, 2, 3])
    assert not ok and "follows 2" in why
    assert not strictly_increasing([1, 3])[0]
