"""Bounded subscriber queues against a real server: a stuck subscriber's
queue stops growing at its bound, publishers skip it and say so, the
subscriber hears how many it missed, and queues move on to fresh segments
without losing order."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kazoo.client import KazooClient

from zkpubsub import Backlog, Client, Gap, Message, _queues
from zkpubsub.backlog import QueueRecord
from zkpubsub.layout import Layout, split_queue
from zkpubsub.testing import queue_entries

from .helpers import Collector, wait_until

MakeClient = Callable[..., Client]


class Stuck:
    """A handler blocked until released, recording what it saw."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen = Collector()
        self.client: Client | None = None

    def __call__(self, message: Message) -> None:
        self.release.wait(120)
        self.seen(message)


def stuck_on_t(make_client: MakeClient, **bound: int) -> tuple[Stuck, list[Gap]]:
    """Client ``slow`` subscribed to ``t`` with a stuck handler and ``bound``;
    the gaps it is told."""
    stuck = Stuck()
    gaps: list[Gap] = []
    slow = stuck.client = make_client(client_id="slow")
    slow.add_gap_listener(gaps.append)
    slow.subscribe("t", stuck, **bound)
    return stuck, gaps


def test_a_stuck_subscribers_queue_stops_at_its_bound_and_it_hears_what_it_missed(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    stuck, gaps = stuck_on_t(make_client, max_backlog=50)
    healthy = Collector()
    make_client().subscribe("t", healthy)
    publisher = make_client()
    receipts = [publisher.publish("t", i) for i in range(300)]
    assert healthy.wait(300) == list(range(300))  # the others get everything
    entries = queue_entries(raw_zk, zk_root, "slow", "t") or []
    markers = [e for e in entries if e.rsplit("/", 1)[-1].startswith("o")]
    assert len(entries) <= 50 + 1 + 1  # the bound, the one in the handler, one marker
    assert len(markers) == 1
    skipped = [r for r in receipts if r.skipped]
    assert skipped and all(r.subscribers == 1 and r.skipped == 1 for r in skipped)
    stuck.release.set()
    missed = 300 - len(entries) + 1  # every message but the ones queued
    wait_until(lambda: any(g.reason == "backlog full" for g in gaps), 30, "the gap notice")
    (gap,) = [g for g in gaps if g.reason == "backlog full"]
    assert gap.topics == {"t"} and gap.missed == missed
    got = stuck.seen.wait(300 - missed)
    assert got == sorted(got) and got[0] == 0  # the oldest were kept, in order
    # once it has caught up, publishers write to it again
    wait_until(lambda: publisher.publish("t", "again").skipped == 0, 30, "room again")
    assert stuck.seen.wait(300 - missed + 1)[-1] == "again"


def test_a_queue_moves_on_to_fresh_segments_and_keeps_one_order_for_all(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_queues, "SEGMENT_NODES", 20)
    stuck = Stuck()
    make_client(client_id="behind").subscribe("t", stuck)
    quick = Collector()
    make_client().subscribe("t", quick)
    publishers = [make_client() for _ in range(2)]

    def publish(p: Client, tag: str) -> None:
        for i in range(120):
            p.publish("t", f"{tag}{i:03d}")

    threads = [
        threading.Thread(target=publish, args=(p, t)) for p, t in zip(publishers, "ab", strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    queue = Layout(zk_root).queue("behind", "t")
    _, segments, _ = split_queue(raw_zk.get_children(queue))
    assert len(segments) >= 3  # the backlog spread over fresh segments
    stuck.release.set()
    everything = stuck.seen.wait(240)
    assert everything == quick.wait(240)  # the same order for both subscribers
    for tag in "ab":
        mine = [m for m in everything if m.startswith(tag)]
        assert mine == sorted(mine) and len(mine) == 120
    # left segments are removed once read; the newest stays
    wait_until(lambda: len(raw_zk.get_children(queue)) == 1, 30, "old segments removed")


def test_a_segment_moves_on_when_its_counter_nears_the_limit(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counter a create returns is the parent's; past ``ROLL_AT`` the
    next fan-out moves the queue on (here the limit is made small)."""
    monkeypatch.setattr(_queues, "ROLL_AT", 25)
    got = Collector()
    make_client(client_id="reader").subscribe("t", got)
    publisher = make_client()
    for i in range(100):
        publisher.publish("t", i)
    assert got.wait(100) == list(range(100))
    queue = Layout(zk_root).queue("reader", "t")
    wait_until(lambda: len(raw_zk.get_children(queue)) == 1, 30, "old segments removed")
    (newest,) = raw_zk.get_children(queue)
    assert newest >= "s0000000003"  # 100 messages are 200 counter steps (create and delete)


def test_the_bound_travels_with_the_queue_and_a_client_wide_default_applies(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    client = make_client(backlog=Backlog(max_nodes=7, when_full="drop"))
    client.subscribe("a")
    client.subscribe("b", max_backlog=9, max_backlog_bytes=5000, when_full="evict")
    layout = Layout(zk_root)
    from zkpubsub.backlog import INLINE_BYTES, QueueRecord

    a, _ = raw_zk.get(layout.queue(client.client_id, "a"))
    b, _ = raw_zk.get(layout.queue(client.client_id, "b"))
    assert QueueRecord.decode(a) == QueueRecord(0, Backlog(7), inline=INLINE_BYTES)
    assert QueueRecord.decode(b) == QueueRecord(0, Backlog(9, 5000, "evict"), inline=INLINE_BYTES)
    with pytest.raises(ValueError, match="when_full"):
        client.subscribe("c", when_full="block")  # type: ignore[arg-type]


def test_a_batch_split_over_several_transactions_counts_each_skipped_message_once(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    stuck, gaps = stuck_on_t(make_client, max_backlog=5)
    publisher = make_client(max_message_bytes=2000, max_transaction_bytes=8000)
    singles = 0
    while not publisher.publish("t", singles).skipped:  # until its queue is full
        singles += 1
        assert singles < 50
    # 30 messages of one node each, five or so to a transaction
    batch = publisher.publish_many("t", ["x" * 1500] * 30)
    assert batch.skipped == 1 and batch.transactions >= 6
    entries = queue_entries(raw_zk, zk_root, "slow", "t") or []
    assert len([e for e in entries if e.rsplit("/", 1)[-1].startswith("o")]) == 1
    stuck.release.set()
    wait_until(lambda: any(g.reason == "backlog full" for g in gaps), 30, "the gap notice")
    (gap,) = [g for g in gaps if g.reason == "backlog full"]
    # the single that found it full and the whole batch, each counted once
    assert gap.missed == 1 + 30
    assert stuck.seen.wait(singles) == list(range(singles))


def test_a_marker_no_server_answers_for_is_read_again_not_told_short(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a failed read of the marker when the subscription reached it
    told the count read ahead, and the node was deleted after: what
    publishers had counted into it since was never told."""
    from zkpubsub.errors import ConnectionLost

    stuck, gaps = stuck_on_t(make_client, max_backlog=5)
    publisher = make_client()
    while not publisher.publish("t", "x").skipped:  # until its queue is full
        pass
    (marker,) = [e for e in queue_entries(raw_zk, zk_root, "slow", "t") or [] if "/o" in e]
    path = f"{Layout(zk_root).queue('slow', 't')}/{marker}"
    slow = stuck.client
    assert slow is not None
    real = slow._ctx.conn.call
    failed: list[str] = []

    def marker_unanswered(fn: Any, deadline: Any, what: str, *args: Any, **kwargs: Any) -> Any:
        if what == path and len(failed) < 3:
            if not failed:  # meanwhile publishers count 40 more into it
                data, _ = raw_zk.get(path)
                doc = json.loads(data)
                raw_zk.set(path, json.dumps({**doc, "missed": doc["missed"] + 40}).encode())
            failed.append(what)
            raise ConnectionLost(f"{what}: as if no server answered")
        return real(fn, deadline, what, *args, **kwargs)

    monkeypatch.setattr(slow._ctx.conn, "call", marker_unanswered)
    stuck.release.set()
    wait_until(lambda: any(g.reason == "backlog full" for g in gaps), 30, "the gap notice")
    (gap,) = [g for g in gaps if g.reason == "backlog full"]
    assert len(failed) == 3 and gap.missed == 1 + 40
    wait_until(lambda: raw_zk.exists(path) is None, 10, "the marker deleted")


def test_a_fan_out_that_would_pass_the_bound_is_not_written_to_that_queue() -> None:
    """The bound was checked before a fan-out without counting its own
    nodes: one publish_many of 100 wrote 50 nodes into a queue bounded at 1,
    and one node more than max_backlog_bytes allows was always written."""
    bound = Backlog(max_nodes=4, max_bytes=1000)
    assert not _queues.would_pass(bound, 3, 1, 100.0)
    assert _queues.would_pass(bound, 3, 2, 100.0)  # a batch of two: past 4
    assert _queues.would_pass(bound, 0, 5, 10.0)
    assert not _queues.would_pass(bound, 1, 1, 500.0)  # 1,000 bytes: at the bound
    assert _queues.would_pass(bound, 1, 1, 719.0)  # 1,438 bytes: past it


def test_a_batch_larger_than_the_room_left_is_skipped_whole_and_counted(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    stuck, gaps = stuck_on_t(make_client, max_backlog=4)
    healthy = Collector()
    make_client().subscribe("t", healthy)
    publisher = make_client(max_message_bytes=2000)
    first = publisher.publish("t", "first")  # held by the stuck handler
    assert first.skipped == 0
    # nine messages, two to a node: five nodes in one transaction, past 4
    batch = publisher.publish_many("t", ["x" * 600] * 9)
    assert batch.transactions == 1 and batch.skipped == 1
    assert healthy.wait(10) == ["first", *["x" * 600] * 9]
    entries = queue_entries(raw_zk, zk_root, "slow", "t") or []
    names = [e.rsplit("/", 1)[-1] for e in entries]
    assert len([n for n in names if not n.startswith("o")]) <= 4, names
    assert len([n for n in names if n.startswith("o")]) == 1
    stuck.release.set()
    wait_until(lambda: any(g.reason == "backlog full" for g in gaps), 30, "the gap notice")
    (gap,) = [g for g in gaps if g.reason == "backlog full"]
    assert gap.missed == 9
    assert stuck.seen.wait(1) == ["first"]


def test_a_queue_full_by_its_byte_bound_gets_one_overflow_marker(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """Past the byte bound (not the node bound) a publisher forgot its
    marker at each read of the queue's depth (once a second) and left a new
    one: a marker and a gap notice per second."""
    stuck, _ = stuck_on_t(make_client, max_backlog_bytes=1000)
    publisher = make_client()
    receipts = []
    for _ in range(35):  # 3.5 s: past three reads of the depth
        receipts.append(publisher.publish("t", "y" * 600))
        time.sleep(0.1)
    entries = queue_entries(raw_zk, zk_root, "slow", "t") or []
    names = [e.rsplit("/", 1)[-1] for e in entries]
    assert len([n for n in names if n.startswith("o")]) == 1, names
    assert sum(r.skipped for r in receipts) >= 30
    stuck.release.set()


def test_a_bound_past_a_java_long_is_refused_and_one_read_is_taken_as_the_largest() -> None:
    for bad in ({"max_nodes": 2**31}, {"max_bytes": 2**63}, {"max_nodes": 10**40}):
        with pytest.raises(ValueError, match="must be an int from 1 to"):
            Backlog(**bad)
    assert Backlog(2**31 - 1, 2**63 - 1).max_nodes == 2**31 - 1
    # a record written before the check still reads (as the largest bound)
    old = b'{"v": 2, "segment": 3, "max_nodes": 1e40, "max_bytes": 7, "when_full": "drop"}'
    record = QueueRecord.decode(old.replace(b"1e40", b"1" + b"0" * 40))
    assert record is not None and record.segment == 3
    assert (record.backlog.max_nodes, record.backlog.max_bytes) == (2**31 - 1, 7)


def test_a_record_another_client_wrote_keeps_its_segment_and_what_this_one_does_not_know() -> None:
    """Before, a record with a ``when_full`` not known here (or a bound out
    of range) read as no record at all: publishers took the queue for one
    from before segments, and every rewrite dropped the fields they did not
    know."""
    newer = {
        "v": 3,
        "segment": 4,
        "max_nodes": 0,
        "max_bytes": "lots",
        "when_full": "block",
        "inline": 512,
        "priority": [1, 2],
    }
    record = QueueRecord.decode(json.dumps(newer).encode())
    assert record is not None and record.segment == 4 and record.inline == 512
    assert record.backlog == Backlog(1, Backlog().max_bytes, "drop")
    moved = json.loads(record.next().encode())
    assert moved["segment"] == 5 and moved["priority"] == [1, 2] and moved["inline"] == 512
    # the bound as the subscriber wrote it: a publisher moving on changes no policy
    assert (moved["when_full"], moved["max_nodes"], moved["max_bytes"]) == ("block", 0, "lots")
    assert json.loads(QueueRecord(4, Backlog(9)).encode())["when_full"] == "drop"
    for unreadable in (b"", b"not json", b"[3]", b'{"segment": -1}', b'{"segment": "4"}'):
        assert QueueRecord.decode(unreadable) is None, unreadable
    assert QueueRecord.decode(b'{"segment": true}') is None


def test_a_queue_whose_record_a_newer_client_wrote_is_published_to_as_it_says(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """A subscriber's record with a mode this version does not know: before,
    its guard took the record for tampering (a gap) and wrote it anew
    without the newer fields, and publishers reading it meanwhile took it
    for a queue from before segments (to be moved to segment 0, which
    exists: their fan-out failed until the record was written anew)."""
    subscriber = make_client(client_id="newer")
    got = Collector()
    gaps: list[Gap] = []
    subscriber.add_gap_listener(gaps.append)
    subscriber.subscribe("t", got)
    path = Layout(zk_root).queue("newer", "t")
    data, stat = raw_zk.get(path)
    doc = dict(json.loads(data), when_full="block", newer={"x": 1})
    raw_zk.set(path, json.dumps(doc).encode(), stat.version)
    publisher = make_client()
    receipt = publisher.publish("t", "after", timeout=5)
    assert receipt.subscribers == 1
    assert got.wait(1) == ["after"]
    time.sleep(0.5)  # the guard had its look at the record
    assert gaps == []
    assert json.loads(raw_zk.get(path)[0])["newer"] == {"x": 1}


def test_batches_that_do_not_fit_keep_one_overflow_marker_while_singles_would(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """A queue with room for a node or two but not for a batch: at each
    read of its depth the publisher asked whether one node would still pass
    the bound, forgot its marker, and left a new one a second."""
    stuck, gaps = stuck_on_t(make_client, max_backlog=10)
    publisher = make_client(max_message_bytes=2000)
    for n in range(7):  # one in the handler, six queued: with the marker, room for two
        assert publisher.publish("t", n).skipped == 0
    skipped = 0
    for _ in range(12):  # 3.6 s: past three reads of the depth
        receipt = publisher.publish_many("t", ["z" * 600] * 7)  # three or four nodes
        skipped += receipt.skipped
        time.sleep(0.3)
    assert skipped == 12
    entries = queue_entries(raw_zk, zk_root, "slow", "t") or []
    names = [e.rsplit("/", 1)[-1] for e in entries]
    assert len([n for n in names if n.startswith("o")]) == 1, names
    stuck.release.set()
    wait_until(lambda: any(g.reason == "backlog full" for g in gaps), 30, "the gap notice")
    assert [g.missed for g in gaps if g.reason == "backlog full"] == [84]


def test_a_marker_that_does_not_read_is_a_decode_error_and_stops_no_queue(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """Before, a marker whose count was no integer (Infinity, 1e999) raised
    OverflowError out of the pump's read: the pump read it again and again,
    and no subscription of the client got anything more."""
    from zkpubsub import DecodeError
    from zkpubsub.layout import new_guid

    errors: list[BaseException] = []
    client = make_client()
    got_a, got_b = Collector(), Collector()
    client.subscribe("a", got_a, on_error=lambda exc, msg: errors.append(exc))
    client.subscribe("b", got_b)
    layout = Layout(zk_root)
    segment = layout.segment(layout.queue(client.client_id, "a"), 0)
    bad = b'{"pub": "x", "missed": Infinity}'
    raw_zk.create(layout.marker_prefix(segment, new_guid()), bad, sequence=True)
    publisher = make_client()
    publisher.publish("a", "after")
    publisher.publish("b", "flows")
    assert got_b.wait(1) == ["flows"]
    assert got_a.wait(1) == ["after"]
    wait_until(lambda: errors, 10, "the marker told as an error")
    assert isinstance(errors[0], DecodeError)


def test_a_new_marker_in_a_fresh_segment_counts_only_what_it_left_out() -> None:
    """Before, a queue found full as it moved to a new segment got a new
    marker counting the old marker's messages too: the gaps told more
    messages missed than were."""
    state = _queues.QueueState(
        version=3,
        record=QueueRecord(0, Backlog(max_nodes=5)),
        nodes=5,
        current=_queues.SEGMENT_NODES,  # the segment is used up: the next write moves on
        counter=_queues.SEGMENT_NODES,
        read_at=time.monotonic(),
        marker="/q/s0000000000/oabc-0000000005",
        missed=7,
    )
    target = _queues.decide(
        "sub", state, node_count=1, messages=2, node_size=100.0, default=Backlog()
    )
    assert target is not None and target.roll is not None and target.marker == ""
    assert target.missed == 2  # the old marker keeps its 7
    state.current = 1  # the same segment: the old marker is updated
    target = _queues.decide(
        "sub", state, node_count=1, messages=2, node_size=100.0, default=Backlog()
    )
    assert target is not None and target.marker == state.marker and target.missed == 9


@pytest.mark.parametrize("when_full", ["drop", "evict"])
def test_a_queue_drained_while_its_publisher_was_quiet_is_not_taken_for_full(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, when_full: str
) -> None:
    """Before, a publisher judged a queue full on the depth it last read
    (plus its own writes): the first publish after a pause found the
    drained queue full, and dropped the message for an overflow marker (a
    gap for nothing), or marked the queue and ended the subscription."""
    stuck = Stuck()
    gaps: list[Gap] = []
    slow = make_client(client_id="slow")
    slow.add_gap_listener(gaps.append)
    sub = slow.subscribe("t", stuck, max_backlog=5, when_full=when_full)  # type: ignore[arg-type]
    publisher = make_client()
    assert [publisher.publish("t", n).skipped for n in range(5)] == [0] * 5  # full now
    stuck.release.set()
    assert stuck.seen.wait(5) == list(range(5))
    wait_until(lambda: not queue_entries(raw_zk, zk_root, "slow", "t"), 10, "drained")
    time.sleep(1.5)  # the publisher's reading grows old
    assert publisher.publish("t", "after").skipped == 0
    assert stuck.seen.wait(6)[-1] == "after"
    assert not sub.evicted and not gaps


def test_a_publisher_forgets_the_queues_of_subscribers_that_left(make_client: MakeClient) -> None:
    """Before, it kept what it knew of every queue it ever wrote to: with
    random client ids, a long-running publisher grew with every restart of
    its subscribers."""
    publisher = make_client()
    queues = publisher._publisher.queues
    for _ in range(3):
        subscriber = make_client()
        subscriber.subscribe("t")
        assert publisher.publish("t", 1).subscribers == 1
        subscriber.close()  # deregistered; its queue stays for the cleaner
    assert publisher.publish("t", 2).subscribers == 0
    wait_until(lambda: not queues._states, 10, "the queues forgotten")
