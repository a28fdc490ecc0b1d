"""How a worker orders the items it tries (pure: no server)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zkpubsub.workqueue.lineup import rank_candidates

GUID = "0123456789ab"


def item(priority: int, seq: int, kind: str = "q") -> str:
    return f"{kind}{priority:03d}-{GUID}-{seq:010d}"


def test_lower_priority_numbers_come_first_then_creation_order() -> None:
    names = [item(100, 3), item(5, 9), item(100, 1), item(5, 2)]
    ranked, foreign = rank_candidates(names, [], [], "w")
    assert ranked == [item(5, 2), item(5, 9), item(100, 1), item(100, 3)]
    assert foreign == []


def test_items_held_by_someone_are_not_tried() -> None:
    names = [item(100, 1), item(100, 2)]
    ranked, _ = rank_candidates(names, [item(100, 1)], [], "w")
    assert ranked == [item(100, 2)]


def test_foreign_names_are_set_apart() -> None:
    ranked, foreign = rank_candidates([item(100, 1), "junk"], [], [], "w")
    assert ranked == [item(100, 1)] and foreign == ["junk"]


def test_a_worker_tries_the_items_on_its_rank_first() -> None:
    names = [item(100, seq) for seq in range(6)]
    workers = ["w-b", "w-a", "w-c"]  # sorted: w-a rank 0, w-b rank 1, w-c rank 2
    ranked, _ = rank_candidates(names, [], workers, "w-b")
    assert ranked[:2] == [item(100, 1), item(100, 4)]
    assert sorted(ranked) == sorted(names)


def test_a_worker_s_own_items_never_come_before_more_urgent_ones() -> None:
    # rank 1 of 2 owns the odd sequence numbers; the urgent items are others'
    names = [item(999, 1), item(999, 3), item(0, 2), item(0, 4), item(0, 5)]
    ranked, _ = rank_candidates(names, [], ["a", "b"], "b")
    assert ranked == [item(0, 5), item(0, 2), item(0, 4), item(999, 1), item(999, 3)]


def test_a_worker_not_yet_registered_takes_rank_zero() -> None:
    names = [item(100, seq) for seq in range(4)]
    ranked, _ = rank_candidates(names, [], ["a", "b"], "unlisted")
    assert ranked[:2] == [item(100, 0), item(100, 2)]


@given(st.lists(st.integers(0, 10_000), unique=True, max_size=60), st.integers(1, 6))
def test_workers_first_choices_never_overlap(seqs: list[int], count: int) -> None:
    names = [item(100, s) for s in seqs]
    workers = [f"w{i}" for i in range(count)]
    firsts = []
    for w in workers:
        ranked, _ = rank_candidates(names, [], workers, w)
        mine = [n for n in ranked if int(n.rsplit("-", 1)[1]) % count == workers.index(w)]
        assert ranked[: len(mine)] == mine
        firsts.append(set(mine))
    assert sum(len(f) for f in firsts) == len(set().union(*firsts)) == len(names)
