"""Planning publishes into transactions, and reading a fan-out's answer
(pure functions: no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from zkpubsub._engine import company_likely, take_batch
from zkpubsub._fanout import FanOut, Target
from zkpubsub._queues import QueueState, decide
from zkpubsub.backlog import INLINE_BYTES, INLINE_SEGMENT_NODES, Backlog, QueueRecord
from zkpubsub.errors import ZooKeeperError
from zkpubsub.layout import Layout, inline_data, inline_text
from zkpubsub.publisher import Targets, TopicView, plan_rounds, split_targets
from zkpubsub.receipts import Outcome


def test_a_batch_takes_publishes_until_the_budget_is_spent() -> None:
    sizes = [100, 100, 100, 100]
    # each costs its size plus one node's overhead (10): 110 each
    assert take_batch(sizes, budget=330, per_node=10, node_limit=1000, coalesce=True) == 3
    assert take_batch(sizes, budget=1000, per_node=10, node_limit=1000, coalesce=True) == 4


def test_a_batch_always_takes_the_first_publish_even_when_it_is_too_large() -> None:
    assert take_batch([5000, 10], budget=100, per_node=10, node_limit=1000, coalesce=True) == 1


def test_without_coalescing_a_batch_is_one_publish() -> None:
    assert take_batch([1, 1, 1], budget=10**6, per_node=10, node_limit=1000, coalesce=False) == 1


def test_an_empty_lane_gives_an_empty_batch() -> None:
    assert take_batch([], budget=100, per_node=10, node_limit=1000, coalesce=True) == 0


def test_a_publish_larger_than_a_node_counts_the_extra_nodes_packing_adds() -> None:
    # 2500 bytes with a node limit of 1000 packs into 3 nodes: 3 overheads
    assert take_batch([2500, 1], budget=2530, per_node=10, node_limit=1000, coalesce=True) == 1
    assert take_batch([2500, 1], budget=2541, per_node=10, node_limit=1000, coalesce=True) == 2


@given(
    st.lists(st.integers(min_value=0, max_value=5000), max_size=50),
    st.integers(min_value=1, max_value=20000),
)
def test_a_batch_of_several_publishes_never_exceeds_the_budget(
    sizes: list[int], budget: int
) -> None:
    n = take_batch(sizes, budget=budget, per_node=10, node_limit=1000, coalesce=True)
    assert (n == 0) == (not sizes)
    if n > 1:
        assert sum(s + 10 * (1 + s // 1000) for s in sizes[:n]) <= budget


@given(st.lists(st.integers(min_value=1, max_value=3000), max_size=40), st.integers(1, 5000))
def test_rounds_keep_node_order_and_fit_the_budget(sizes: list[int], budget: int) -> None:
    rounds = plan_rounds(sizes, budget)
    assert [i for r in rounds for i in r] == list(range(len(sizes)))
    for r in rounds:
        assert len(r) == 1 or sum(sizes[i] for i in r) <= budget


@given(st.lists(st.integers(1, 10_000), max_size=50), st.integers(1, 100_000))
def test_targets_are_split_into_groups_that_fit(costs: list[int], budget: int) -> None:
    targets = [f"s{i}" for i in range(len(costs))]
    groups = split_targets(targets, costs, budget)
    assert [t for g in groups for t in g] == targets
    for g in groups:
        assert len(g) == 1 or sum(costs[int(t[1:])] for t in g) <= budget


def test_queues_found_gone_are_skipped_until_the_subscriber_list_changes() -> None:
    targets = Targets()
    view = TopicView(3, ("a", "b", "c"))
    assert targets.of(view) == ["a", "b", "c"]
    targets.excluded.add("b")
    assert targets.of(view) == ["a", "c"]
    assert targets.of(TopicView(4, ("a", "b", "c"))) == ["a", "b", "c"]


class RecordingTxn:
    def __init__(self) -> None:
        self.ops: list[tuple[str, str]] = []
        self.data: dict[str, bytes] = {}

    def check(self, path: str, version: int) -> None:
        self.ops.append(("check", path))

    def create(self, path: str, data: bytes, acl: object = None, sequence: bool = False) -> None:
        self.ops.append(("create", path))
        self.data[path] = data

    def set_data(self, path: str, data: bytes, version: int) -> None:
        self.ops.append(("set", path))


ROLL = QueueRecord(4, Backlog()).encode()
FAN = FanOut(
    "t",
    7,
    (
        Target("a", 1, 3),
        Target("b", 2, 4, roll=ROLL),
        Target("c", 5, 3, marker=""),
        Target("d", 6, 3, marker="/r/messages/d/t/s0000000003/o0123456789ab-0000000007", missed=9),
    ),
    (b"n1", b"n2"),
    "pub",
)


def test_a_fan_out_checks_the_topic_and_each_queue_then_writes_in_order() -> None:
    txn = RecordingTxn()
    FAN.add_ops(Layout("/r"), txn, "0123456789ab")
    seg = "/r/messages/{}/t/s{:010d}"
    assert txn.ops == [
        ("check", "/r/subscribers/t"),
        ("check", "/r/messages/a/t"),
        ("create", seg.format("a", 3) + "/m0123456789ab-"),
        ("create", seg.format("a", 3) + "/m0123456789ab-"),
        ("set", "/r/messages/b/t"),  # moving it to segment 4
        ("create", seg.format("b", 4)),
        ("create", seg.format("b", 4) + "/m0123456789ab-"),
        ("create", seg.format("b", 4) + "/m0123456789ab-"),
        ("check", "/r/messages/c/t"),
        ("create", seg.format("c", 3) + "/o0123456789ab-"),  # full: a marker
        ("check", "/r/messages/d/t"),
        ("set", seg.format("d", 3) + "/o0123456789ab-0000000007"),  # counting into it
    ]
    assert len(FAN.op_map()) == len(txn.ops)


def test_nodes_small_enough_for_the_queue_go_into_their_names_without_data() -> None:
    small, large = b"\x01" * 10, b"\x02" * 11
    fan = FanOut("t", 7, (Target("a", 1, 3, inline=10), Target("b", 2, 3)), (small, large), "p")
    txn = RecordingTxn()
    fan.add_ops(Layout("/r"), txn, "0123456789ab")
    seg = "/r/messages/{}/t/s0000000003/m0123456789ab"
    inline = seg.format("a") + "." + inline_text(small) + "."
    assert [path for kind, path in txn.ops if kind == "create"] == [
        inline,
        seg.format("a") + "-",  # too large for this queue
        seg.format("b") + "-",  # its record asks for no names
        seg.format("b") + "-",
    ]
    assert txn.data[inline] == b""
    assert inline_data(inline.rpartition("/")[2] + "0000000001") == small
    assert len(fan.op_map()) == len(txn.ops)


def test_a_queue_asking_for_names_is_told_so_and_moves_on_sooner() -> None:
    record = QueueRecord(2, Backlog(max_nodes=100_000, max_bytes=10**9), inline=100_000)
    target = plan(state(record=record))
    assert target == Target("s", 3, 2, inline=INLINE_BYTES)  # never more than publishers allow
    limit = INLINE_SEGMENT_NODES
    assert plan(state(record=record, current=limit - 1)) == Target("s", 3, 2, inline=INLINE_BYTES)
    full = plan(state(record=record, current=limit))
    assert full is not None and full.segment == 3 and full.roll is not None
    moved = QueueRecord.decode(full.roll)
    assert moved is not None and moved.inline == 100_000 and moved.segment == 3
    assert plan(state(current=limit)) == Target("s", 3, 2)  # no names: later
    # a segment of the longest names lists in well under 1 MiB
    longest = len(Layout("/r").inline_prefix("s", "0" * 12, inline_text(b"x" * INLINE_BYTES)))
    assert INLINE_SEGMENT_NODES * (longest + 10 + 4) < 2**19


def test_a_fan_out_applied_is_ok() -> None:
    assert FAN.classify(Outcome()).kind == "ok"
    assert FAN.classify(Outcome(looked_up=True)).kind == "ok"


@pytest.mark.parametrize("error", [BadVersionError(), NoNodeError()])
def test_a_failed_topic_check_means_the_subscriber_list_changed(error: Exception) -> None:
    assert FAN.classify(Outcome(error, 0)).kind == "stale"


@pytest.mark.parametrize(
    ("index", "error", "kind", "culprit"),
    [
        (1, NoNodeError(), "gone", "a"),  # a's queue check: the queue is gone
        (1, BadVersionError(), "moved", "a"),  # another publisher moved it on
        (3, NoNodeError(), "gone", "a"),  # a create: its segment is gone
        (4, BadVersionError(), "moved", "b"),  # b's record changed meanwhile
        (5, NodeExistsError(), "moved", "b"),  # someone made segment 4 first
        (9, NoNodeError(), "gone", "c"),
        (11, NoNodeError(), "marker", "d"),  # the subscriber read past the marker
    ],
)
def test_a_failed_operation_names_the_queue_and_what_happened_to_it(
    index: int, error: Exception, kind: str, culprit: str
) -> None:
    verdict = FAN.classify(Outcome(error, index))
    assert (verdict.kind, verdict.culprit) == (kind, culprit)


def test_any_other_failure_is_an_error_no_retry_mends() -> None:
    with pytest.raises(ZooKeeperError, match="NodeExistsError"):
        FAN.classify(Outcome(NodeExistsError(), 2))


def test_the_paths_a_fan_out_created_are_told_by_target() -> None:
    # the topic check, then per target: check or record + segment, creates
    results: list[object] = [True, True, "a1", "a2", object(), "seg", "b1", "b2"]
    results += [True, "c-mark", True, object()]
    assert FAN.created(results) == {0: ["a1", "a2"], 1: ["b1", "b2"], 2: ["c-mark"]}


def state(**kw: object) -> QueueState:
    values: dict[str, object] = {
        "version": 3,
        "record": QueueRecord(2, Backlog(max_nodes=100, max_bytes=10_000)),
        "nodes": 10,
        "current": 10,
        "counter": 50,
        "read_at": 0.0,
    }
    values.update(kw)
    return QueueState(**values)  # type: ignore[arg-type]


def plan(st: QueueState, **kw: object) -> Target | None:
    args: dict[str, object] = {"node_count": 1, "messages": 2, "node_size": 50.0}
    args.update(kw)
    return decide("s", st, default=Backlog(), **args)  # type: ignore[arg-type]


def test_a_queue_with_room_is_written_in_its_current_segment() -> None:
    assert plan(state()) == Target("s", 3, 2)


def test_a_queue_at_its_node_bound_gets_a_marker_counting_the_messages_missed() -> None:
    assert plan(state(nodes=100)) == Target("s", 3, 2, marker="", missed=2)
    kept = state(nodes=150, marker="/m", missed=7)
    assert plan(kept) == Target("s", 3, 2, marker="/m", missed=9)


def test_a_queue_at_its_byte_bound_is_full_too() -> None:
    assert plan(state(nodes=50), node_size=200.0) == Target("s", 3, 2, marker="", missed=2)


def test_a_full_queue_that_asked_for_eviction_is_marked_once_then_skipped() -> None:
    evict = QueueRecord(2, Backlog(max_nodes=100, max_bytes=10_000, when_full="evict"))
    marked = QueueRecord(2, evict.backlog, full=True)
    # the first fan-out to find it full marks the record, at the version read
    assert plan(state(nodes=100, record=evict)) == Target("s", 3, 2, flag=marked.encode())
    # marked: skipped (its version checked), whatever its depth now
    assert plan(state(nodes=100, record=marked)) == Target("s", 3, 2, skip=True)
    assert plan(state(nodes=0, record=marked)) == Target("s", 3, 2, skip=True)
    # not full: written as any other
    assert plan(state(nodes=99, record=evict)) == Target("s", 3, 2)


def test_a_marked_target_writes_only_the_record_and_is_not_reached() -> None:
    record = QueueRecord(2, Backlog(max_nodes=1, max_bytes=10_000, when_full="evict"), full=True)
    target = Target("s", 3, 2, flag=record.encode())
    assert target.op_kinds(5) == ["queue"] and not target.writes
    skip = Target("s", 3, 2, skip=True)
    assert skip.op_kinds(5) == ["queue"] and not skip.writes
    assert Target("s", 3, 2).writes and not Target("s", 3, 2, marker="").writes


def test_a_segment_moves_on_at_its_size_or_near_the_counter_limit() -> None:
    moved = QueueRecord(3, Backlog(max_nodes=100, max_bytes=10_000)).encode()
    expected = Target("s", 3, 3, roll=moved)
    assert plan(state(current=40), segment_nodes=40) == expected
    assert plan(state(counter=2**31 - 100)) == expected
    assert plan(state(counter=2**31 - 2**24 - 1)) == Target("s", 3, 2)


def test_a_queue_from_before_segments_moves_to_segment_zero() -> None:
    expected = QueueRecord(0, Backlog()).encode()
    assert plan(state(record=None)) == Target("s", 3, 0, roll=expected)


def test_a_full_queue_moving_on_starts_a_new_marker_in_the_new_segment() -> None:
    target = plan(state(nodes=100, current=40, marker="/old", missed=5), segment_nodes=40)
    # the new marker counts this publish's 2 alone: the old one keeps its 5,
    # and the subscriber reads both (each a gap of its own)
    assert target is not None and target.segment == 3 and target.marker == "" and target.missed == 2


def test_the_record_of_a_queue_survives_a_round_trip_and_old_queues_have_none() -> None:
    record = QueueRecord(12, Backlog(5, 6, "evict"))
    assert QueueRecord.decode(record.encode()) == record
    marked = QueueRecord(12, Backlog(5, 6, "evict"), full=True)
    assert QueueRecord.decode(marked.encode()) == marked and marked.evicting
    assert b'"full"' not in record.encode()  # readers of version 2 records see no change
    assert not QueueRecord(1, Backlog(when_full="drop"), full=True).evicting
    assert QueueRecord.decode(b"") is None
    assert QueueRecord.decode(b"durable") is None
    named = QueueRecord(12, Backlog(5, 6), inline=256)
    assert QueueRecord.decode(named.encode()) == named and named.next().inline == 256
    assert b'"inline"' not in record.encode()
    odd = record.encode().replace(b"}", b',"inline":"many"}')
    assert QueueRecord.decode(odd) == record  # a value it cannot read: no names


def test_a_publish_waits_for_company_only_when_publishes_come_close_together() -> None:
    linger = 0.0002
    assert not company_likely(float("inf"), 0, linger)  # the first publish
    assert not company_likely(0.005, 1, linger)  # a trickle, each alone
    assert company_likely(0.0001, 1, linger)  # the one before came within the linger
    assert company_likely(0.005, 3, linger)  # the last transaction carried several
    assert not company_likely(0.0, 5, 0.0)  # linger 0: never
