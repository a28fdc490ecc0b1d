"""Every parent zkpubsub creates children under, with its counter at the end.

ZooKeeper 3.8 saturates a parent's counter at 2**31 - 1 (see
``tests/test_counters.py``). A parent whose children are *named* by that
counter (sequential creates) must never get there: subscriber queue
segments and work-queue item segments are left for fresh ones long before
(``tests/test_queue_segments.py`` covers item segments, and
``tests/test_cleaner_everywhere.py`` the cleaner election, which may reach
it). Every other parent names its children itself (ids, guids, item names,
segment numbers): its counter reaching the end must change nothing. Each
test sets the counters in a stopped server's snapshot and restarts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient

from zkpubsub import Client, Gap
from zkpubsub._queues import created
from zkpubsub.layout import Layout, parse_queue_entry, parse_segment_node
from zkpubsub.testing import COUNTER_MAX, ZooKeeperCluster, restart_with_cversions

from .helpers import local_servers_only, raw_kazoo, reconnected, wait_until

pytestmark = local_servers_only

TOPIC = "t"


@pytest.fixture
def cluster(make_cluster: Callable[..., ZooKeeperCluster]) -> ZooKeeperCluster:
    return make_cluster(1)


@pytest.fixture
def raw(cluster: ZooKeeperCluster) -> Iterator[KazooClient]:
    zk = raw_kazoo(cluster.hosts)
    try:
        yield zk
    finally:
        zk.stop()
        zk.close()


def client(cluster: ZooKeeperCluster, root: str, client_id: str | None = None) -> Client:
    # no cleaner: nothing is removed while the servers restart
    return Client(cluster.hosts, root=root, client_id=client_id, session_timeout=4.0, cleaner=False)


def sequences(raw: KazooClient, segment: str) -> list[int]:
    names = raw.get_children(segment)
    parsed = [parse_queue_entry(n) for n in names]
    return sorted(p[2] for p in parsed if p is not None)


def test_a_subscriber_queue_segment_near_the_counter_end_is_left_without_losing_order(
    cluster: ZooKeeperCluster, raw: KazooClient
) -> None:
    """A segment whose counter is a few creates from 2**31 - 1 (set in the
    server's snapshot) is left for a fresh one at the next publish, before
    any message takes a saturated name; the subscriber gets the message
    left in the old segment, then the new ones, in order."""
    root = "/subcounter"
    layout = Layout(root)
    queue = layout.queue("reader", TOPIC)
    with client(cluster, root, "reader") as reader:
        reader.subscribe(TOPIC, durable=True)
        with client(cluster, root) as publisher:
            publisher.publish(TOPIC, "before")  # stays in segment 0, unread
    restart_with_cversions(cluster, {layout.segment(queue, 0): COUNTER_MAX - 3})
    reconnected(raw)
    with client(cluster, root, "reader") as reader, client(cluster, root) as publisher:
        sub = reader.subscribe(TOPIC, durable=True)
        receipts = [publisher.publish(TOPIC, n) for n in range(6)]
        assert all(r.subscribers == 1 for r in receipts)
        # nothing is deleted before it is handled: the old segment holds
        # "before" only, the new one the six, numbered from 0
        segments = [n for n in map(parse_segment_node, raw.get_children(queue)) if n is not None]
        assert sorted(segments) == [0, 1], segments
        assert sequences(raw, layout.segment(queue, 0)) == [0]
        assert sequences(raw, layout.segment(queue, 1)) == list(range(6))
        got = [sub.get(timeout=10) for _ in range(7)]
        assert [m.payload for m in got if m is not None] == ["before", *range(6)]


def test_an_overflow_marker_in_a_segment_near_the_counter_end_is_left_for_a_fresh_segment(
    cluster: ZooKeeperCluster, raw: KazooClient
) -> None:
    """Markers are numbered by the same counter as messages: a full queue's
    segment near the end is left too, and the gap is still told."""
    root = "/markercounter"
    layout = Layout(root)
    queue = layout.queue("slow", TOPIC)
    with client(cluster, root, "slow") as slow:
        slow.subscribe(TOPIC, durable=True, max_backlog=2)
        with client(cluster, root) as publisher:
            for n in range(2):
                publisher.publish(TOPIC, n)  # the queue is full now
    restart_with_cversions(cluster, {layout.segment(queue, 0): COUNTER_MAX - 1})
    reconnected(raw)
    with client(cluster, root) as publisher:
        receipts = [publisher.publish(TOPIC, n) for n in range(2, 5)]
        assert all(r.subscribers == 0 and r.skipped == 1 for r in receipts), receipts
    segments = sorted(n for n in map(parse_segment_node, raw.get_children(queue)) if n is not None)
    assert segments == [0, 1], segments
    # the old segment holds its two messages and nothing numbered near the end
    assert sequences(raw, layout.segment(queue, 0)) == [0, 1]
    (marker,) = raw.get_children(layout.segment(queue, 1))
    assert parse_queue_entry(marker) is not None and marker.startswith("o")
    with client(cluster, root, "slow") as slow:
        gaps: list[Gap] = []
        slow.add_gap_listener(gaps.append)
        sub = slow.subscribe(TOPIC, durable=True, max_backlog=2)
        got = [sub.get(timeout=10) for _ in range(2)]
        assert [m.payload for m in got if m is not None] == [0, 1]
        assert sub.get(timeout=2) is None  # the marker is a gap, not a message

        def told() -> bool:
            return any(g.reason == "backlog full" and g.missed == 3 for g in gaps)

        wait_until(told, 10, "the gap notice")


def test_parents_named_by_their_children_keep_working_with_a_saturated_counter(
    cluster: ZooKeeperCluster, raw: KazooClient
) -> None:
    """Clients, subscriptions, queues (their segments are named by number),
    receipts, and a work queue's reservations, dead letters, results and
    workers: with each parent's counter at 2**31 - 1, subscribing,
    publishing, putting, reserving, burying, replaying and results go on."""
    root = "/saturated"
    layout = Layout(root)
    paths = layout.work_queue("jobs")
    with client(cluster, root, "reader") as reader, client(cluster, root, "writer") as writer:
        reader.subscribe(TOPIC, durable=True)
        writer.publish(TOPIC, "first")
        q = writer.queue("jobs", max_attempts=1)
        ticket = q.put("job", want_result=True)
        item = q.reserve(5)
        assert item is not None
        item.ack(result="done")
        assert ticket.wait(timeout=5) == "done"
    parents = [
        layout.clients,
        layout.subscribers,
        layout.topic(TOPIC),
        layout.messages,
        f"{layout.messages}/reader",
        layout.queue("reader", TOPIC),
        layout.receipts,
        layout.client_receipts("writer"),
        paths.base,
        paths.reserved,
        paths.dead,
        paths.results,
        paths.workers,
    ]
    # a clean close removes a client's receipt folder; a crashed one leaves it
    raw.ensure_path(layout.client_receipts("writer"))
    restart_with_cversions(cluster, dict.fromkeys(parents, COUNTER_MAX))
    reconnected(raw)
    with (
        client(cluster, root, "reader") as reader,
        client(cluster, root, "writer") as writer,
        client(cluster, root, "other") as other,
    ):
        sub = reader.subscribe(TOPIC, durable=True)
        fresh = other.subscribe(TOPIC)  # a new registration and a new queue
        for n in range(3):
            assert writer.publish(TOPIC, n).subscribers == 2
        got = [sub.get(timeout=10) for _ in range(4)]
        assert [m.payload for m in got if m is not None] == ["first", 0, 1, 2]
        assert [m.payload for m in (fresh.get(timeout=10) for _ in range(3)) if m] == [0, 1, 2]
        q = writer.queue("jobs", max_attempts=1)
        ticket = q.put("again", want_result=True)
        q.put("poison")
        item = q.reserve(5)
        assert item is not None and item.payload == "again"
        item.ack(result=42)
        assert ticket.wait(timeout=5) == 42
        bad = q.reserve(5)
        assert bad is not None and bad.payload == "poison"
        bad.release(RuntimeError("no"))  # the last attempt: a dead letter
        (dead,) = q.dead()
        assert dead.payload == "poison"
        assert q.replay() == 1
        back = q.reserve(5)
        assert back is not None and back.payload == "poison"
        back.ack()
        assert q.reserve(0.3) is None
    # the counters were at their end all along (a sequential child would
    # still be named 2**31 - 1); the writer's receipt folder went with its
    # clean close
    stats = {p: raw.exists(p) for p in parents}
    assert [p for p, stat in stats.items() if stat is None] == [layout.client_receipts("writer")]
    assert {p: created(s) for p, s in stats.items() if s is not None} == dict.fromkeys(
        [p for p in parents if stats[p] is not None], COUNTER_MAX
    )
