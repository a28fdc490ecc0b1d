"""Planning publishes into transactions, and reading a fan-out's answer
(pure functions: no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from zkpubsub._engine import take_batch
from zkpubsub._fanout import FanOut
from zkpubsub.errors import ZooKeeperError
from zkpubsub.layout import Layout
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


@given(st.integers(0, 50), st.integers(1, 10_000), st.integers(1, 100_000))
def test_targets_are_split_into_groups_that_fit(count: int, per: int, budget: int) -> None:
    targets = [f"s{i}" for i in range(count)]
    groups = split_targets(targets, per, budget)
    assert [t for g in groups for t in g] == targets
    for g in groups:
        assert len(g) == 1 or len(g) * per <= budget


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

    def check(self, path: str, version: int) -> None:
        self.ops.append(("check", path))

    def create(self, path: str, data: bytes, acl: object = None, sequence: bool = False) -> None:
        self.ops.append(("create", path))


FAN = FanOut("t", 7, ("a", "b"), (b"n1", b"n2"))


def test_a_fan_out_checks_the_topic_then_creates_each_node_for_each_target_in_order() -> None:
    txn = RecordingTxn()
    FAN.add_ops(Layout("/r"), txn, "0123456789ab")
    assert txn.ops == [
        ("check", "/r/subscribers/t"),
        ("create", "/r/messages/a/t/m0123456789ab-"),
        ("create", "/r/messages/a/t/m0123456789ab-"),
        ("create", "/r/messages/b/t/m0123456789ab-"),
        ("create", "/r/messages/b/t/m0123456789ab-"),
    ]


def test_a_fan_out_applied_is_ok() -> None:
    assert FAN.classify(Outcome()).kind == "ok"
    assert FAN.classify(Outcome(looked_up=True)).kind == "ok"


@pytest.mark.parametrize("error", [BadVersionError(), NoNodeError()])
def test_a_failed_check_means_the_subscriber_list_changed(error: Exception) -> None:
    assert FAN.classify(Outcome(error, 0)).kind == "stale"


@pytest.mark.parametrize(("index", "culprit"), [(1, "a"), (2, "a"), (3, "b"), (4, "b")])
def test_a_failed_create_names_the_subscriber_whose_queue_is_gone(index: int, culprit: str) -> None:
    verdict = FAN.classify(Outcome(NoNodeError(), index))
    assert (verdict.kind, verdict.culprit) == ("gone", culprit)


def test_any_other_failure_is_an_error_no_retry_mends() -> None:
    with pytest.raises(ZooKeeperError, match="NodeExistsError"):
        FAN.classify(Outcome(NodeExistsError(), 2))
