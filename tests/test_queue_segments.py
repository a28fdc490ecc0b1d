"""A work queue's footprint on ZooKeeper stays bounded: items in segments
(each counter far from 2**31 - 1, each listing far below 1 MiB), a bound on
the items held, and a bound on dead letters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient

from zkpubsub import Client, ItemFailed, QueueFull, ReservationLost
from zkpubsub.layout import (
    MAX_ITEMS_PER_PUT,
    MAX_NAME_LENGTH,
    SEGMENT_ITEMS,
    Layout,
    parse_segment_node,
)
from zkpubsub.testing import COUNTER_MAX, ZooKeeperCluster, restart_with_cversions
from zkpubsub.workqueue import finishing, segments

from .helpers import drain, local_servers_only, wait_until

MakeClient = Callable[..., Client]


def segment_sizes(raw: KazooClient, root: str, queue: str) -> dict[int, int]:
    items = Layout(root).work_queue(queue).items
    sizes = {}
    for child in raw.get_children(items):
        number = parse_segment_node(child)
        if number is not None:
            sizes[number] = raw.exists(f"{items}/{child}").numChildren
    return sizes


def test_a_full_segment_listing_stays_far_below_one_mebibyte() -> None:
    """What a Java client can read: the longest item name, SEGMENT_ITEMS of
    them plus what producers putting at that moment add."""
    paths = Layout().work_queue("q" * MAX_NAME_LENGTH)
    longest = paths.item_prefix(999, "0" * 12, wants_result=True, segment=2**31 - 1)
    name = longest.rsplit("/", 1)[1] + "-2147483648"
    children = SEGMENT_ITEMS + 10 * MAX_ITEMS_PER_PUT  # ten producers at that moment
    assert children * (len(name) + 4) < 1_000_000


def test_items_roll_over_to_new_segments_and_keep_their_order(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "SEGMENT_ITEMS", 5)
    q = make_client().queue("rolling")
    for i in range(12):
        q.put(i)
    q.put_many(range(12, 20))
    q.put("urgent", priority=1)
    sizes = segment_sizes(raw_zk, zk_root, "rolling")
    assert len(sizes) >= 3, sizes
    assert all(n <= 5 + 8 for n in sizes.values())  # one put_many may go past
    assert len(q) == 21
    assert drain(q, 21) == ["urgent", *range(20)]
    # Workers delete the old segments once empty; the current one stays.
    wait_until(
        lambda: q.reserve(0.2) is None and len(segment_sizes(raw_zk, zk_root, "rolling")) == 1,
        what="old segments removed",
    )


def test_a_producer_behind_a_roll_puts_into_the_new_segment(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "SEGMENT_ITEMS", 3)
    slow, fast = make_client().queue("two"), make_client().queue("two")
    slow.put("s0")  # it knows segment 1 now
    for i in range(5):
        fast.put(f"f{i}")  # fills segment 1 and rolls on
    slow.put("s1")  # its check fails: it reads the queue node and follows
    assert sorted(segment_sizes(raw_zk, zk_root, "two")) == [1, 2, 3]
    assert drain(slow, 7) == ["s0", "f0", "f1", "f2", "f3", "f4", "s1"]


def test_concurrent_producers_roll_once_each_segment_and_lose_nothing(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "SEGMENT_ITEMS", 10)
    producers = [make_client().queue("many") for _ in range(4)]
    put: dict[int, list[int]] = {}

    def produce(index: int) -> None:
        put[index] = [i for i in range(25) if producers[index].put((index, i)) and True]

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sizes = segment_sizes(raw_zk, zk_root, "many")
    assert sum(sizes.values()) == 100
    assert sorted(sizes) == list(range(1, len(sizes) + 1))  # no number skipped
    got = drain(producers[0], 100)
    for index in range(4):  # each producer's items in its order
        assert [i for p, i in got if p == index] == list(range(25))  # type: ignore[misc]


@local_servers_only
def test_a_segment_counter_near_its_end_rolls_over_without_losing_order(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    """The real counter: a segment whose cversion is near 2**31 - 1 (set in
    the server's snapshot) is left for a fresh one at the next put, and the
    queue stays FIFO across the roll."""
    zk = make_cluster(1)
    root = "/counter"
    with Client(zk.hosts, root=root, session_timeout=4.0) as client:
        q = client.queue("old")
        q.put("before")
    paths = Layout(root).work_queue("old")
    restart_with_cversions(zk, {paths.segment(1): COUNTER_MAX - 3})
    raw = KazooClient(hosts=zk.hosts, timeout=10.0)
    raw.start(timeout=20)
    try:
        with Client(zk.hosts, root=root, session_timeout=4.0) as client:
            q = client.queue("old")
            for i in range(6):
                q.put(i)
            names = {
                seg: sorted(raw.get_children(paths.segment(seg)))
                for seg in segment_sizes(raw, root, "old")
            }
            assert sorted(names) == [1, 2]
            # The put that saw the end rolled on: nothing took a saturated number.
            assert sorted(n.rsplit("-", 1)[1] for n in names[1]) == [
                "0000000000",
                f"{COUNTER_MAX - 3}",
            ]
            assert len(names[2]) == 5
            assert drain(q, 7) == ["before", *range(6)]
    finally:
        raw.stop()
        raw.close()


def test_a_full_queue_makes_put_wait_then_raise_queue_full(make_client: MakeClient) -> None:
    client = make_client()
    q = client.queue("small", max_items=3)
    q.put_many([1, 2, 3])
    started = time.monotonic()
    with pytest.raises(QueueFull) as info:
        q.put(4, timeout=1.0)
    assert 0.9 <= time.monotonic() - started < 5
    assert (info.value.queue, info.value.items, info.value.limit) == ("small", 3, 3)
    assert info.value.put_ids == () and "nothing was put" in str(info.value)
    assert len(q) == 3  # nothing was put

    # Room made meanwhile lets a waiting put through.
    def take_one() -> None:
        time.sleep(0.5)
        with client.queue("small") as other:  # its worker leaves when done
            item = other.reserve(5)
            assert item is not None
            item.ack()

    taker = threading.Thread(target=take_one)
    taker.start()
    q.put(4, timeout=10.0)
    taker.join(10)
    assert drain(q, 3) == [2, 3, 4]
    # More items than the bound go in transactions of at most max_items:
    # the first one's went in, the rest did not. The error says so and names
    # them (it said "nothing was put" and named none: a retry put them twice).
    with pytest.raises(QueueFull) as info:
        q.put_many(range(5), timeout=1.0)
    assert len(q) == 3 and "3 of 5 items were put" in str(info.value)
    held = [q.reserve(5) for _ in range(3)]
    put = list(zip(info.value.put_ids, range(3), strict=True))
    assert sorted((i.id, i.payload) for i in held if i) == sorted(put)
    with pytest.raises(ValueError, match="max_items"):
        client.queue("small", max_items=0)


def test_a_replay_stays_within_the_bound(make_client: MakeClient) -> None:
    """A replay put every dead letter back whatever max_items said."""
    q = make_client().queue("replayed", max_items=2, max_attempts=1)
    q.put_many(["a", "b"])
    for _ in range(2):
        item = q.reserve(5)
        assert item is not None
        item.release("broken")
    q.put_many(["c", "d"])
    with pytest.raises(QueueFull) as info:
        q.replay(timeout=0.3)
    assert info.value.put_ids == () and len(q.dead()) == 2
    item = q.reserve(5)
    assert item is not None
    item.ack()
    with pytest.raises(QueueFull) as info:
        q.replay(timeout=0.3)
    assert "1 of 2 items were put" in str(info.value)
    (left,) = q.dead()
    assert left.id not in info.value.put_ids
    stats = q.stats()
    assert (stats.ready, stats.dead) == (2, 1)


def test_reserved_items_count_toward_the_bound(make_client: MakeClient) -> None:
    q = make_client().queue("held", max_items=2)
    q.put_many(["a", "b"])
    item = q.reserve(5)
    assert item is not None
    with pytest.raises(QueueFull):
        q.put("c", timeout=0.3)
    item.ack()
    q.put("c", timeout=5)
    unbounded = make_client().queue("held", max_items=None)
    unbounded.put_many(range(10))
    assert len(q) == 12


def test_dead_letters_beyond_their_bound_are_dropped(
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    raw_zk: KazooClient,
    zk_root: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(finishing, "MAX_DEAD_LETTERS", 2)
    q = make_client().queue("failing", max_attempts=1)
    tickets = [q.put(i, want_result=True) for i in range(3)]
    for _ in range(3):
        item = q.reserve(5)
        assert item is not None
        item.release("broken")
    assert [d.payload for d in q.dead()] == [0, 1]
    assert len(q) == 0
    with pytest.raises(ItemFailed, match="dropped"):
        tickets[2].wait(5)
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].levelname == "ERROR"
    # a drop the server refuses (the item taken meanwhile) is not said done
    # (before, it was logged as dropped before it was sent)
    caplog.clear()
    q.put("taken")
    item = q.reserve(5)
    assert item is not None
    raw_zk.delete(Layout(zk_root).work_queue("failing").reservation(item.name))
    with pytest.raises(ReservationLost):
        item.release("broken")
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]


def test_items_of_the_unsegmented_layout_are_read_first(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """A queue written by an earlier version: its items sit directly under
    items/. They are reserved, acked and buried as before; new items go to
    segments, after them."""
    client = make_client()
    paths = Layout(zk_root).work_queue("legacy")
    q = client.queue("legacy", max_attempts=1)
    q.put("new")  # makes the folders, and a segment
    # what an earlier version's put wrote (the envelope of a fresh put)
    item = q.reserve(5)
    assert item is not None
    data = raw_zk.get(paths.item(item.name))[0]
    item.ack()
    for _ in range(2):
        raw_zk.create(f"{paths.items}/q100-0123456789ab-", data, sequence=True)
    q.put("newer")
    first = q.reserve(5)
    assert first is not None and first.payload == "new"
    assert parse_segment_node(first.name) is None and "-s" not in first.name
    first.ack()
    second = q.reserve(5)
    assert second is not None and "-s" not in second.name
    second.release("legacy dead letter")
    assert [d.name for d in q.dead()] == [second.name]
    assert q.replay() == 1
    assert drain(q, 2) == ["newer", "new"]
