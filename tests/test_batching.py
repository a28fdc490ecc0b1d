"""Automatic batching of publishes, and publish_async, on a real ZooKeeper."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient

from zkpubsub import Client, ClientClosed, NoSubscribers, PublishTimeout
from zkpubsub._context import CLOSING_REQUEST_TIMEOUT
from zkpubsub.layout import Layout
from zkpubsub.testing import ZooKeeperCluster, queue_entries

from .helpers import Collector, wait_until

MakeClient = Callable[..., Client]


def nodes_in(raw: KazooClient, root: str, client: Client, topic: str) -> int:
    entries = queue_entries(raw, root, client.client_id, topic)
    return -1 if entries is None else len(entries)


def test_concurrent_publishes_share_transactions_and_keep_their_order(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    idle = make_client()
    idle.subscribe("t")  # never reads: one node per transaction piles up
    collectors = [Collector() for _ in range(3)]
    for c in collectors:
        make_client().subscribe("t", c)
    publisher = make_client(linger=0.005)
    threads, per_thread = 8, 40

    def run(n: int) -> None:
        for i in range(per_thread):
            assert publisher.publish("t", [n, i]).subscribers == 4

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = threads * per_thread
    orders = [c.wait(total, 60) for c in collectors]
    assert all(o == orders[0] for o in orders)
    for n in range(threads):
        assert [i for m, i in orders[0] if m == n] == list(range(per_thread))
    transactions = nodes_in(raw_zk, zk_root, idle, "t")
    assert 0 < transactions < total  # several publishes went out together


def test_publish_async_confirms_in_order_from_one_thread(make_client: MakeClient) -> None:
    collector = Collector()
    make_client().subscribe("t", collector)
    publisher = make_client()
    futures = [publisher.publish_async("t", i) for i in range(500)]
    receipts = [f.result(timeout=60) for f in futures]
    assert all(r.subscribers == 1 for r in receipts)
    assert collector.wait(500, 60) == list(range(500))
    assert [m.id for m in collector.messages] == [r.message_id for r in receipts]


def test_a_lone_publish_is_not_held_for_company(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """A publish that reaches an idle lane with none before it waits for
    nobody, even with the longest linger; publishes coming close together
    still wait for each other and share a transaction."""
    idle = make_client()
    idle.subscribe("t")  # never reads: one node per transaction piles up
    collector = Collector()
    make_client().subscribe("t", collector)
    publisher = make_client(linger=1.0)
    lone = publisher.publish_async("t", "lone")
    time.sleep(0.3)  # were it held for company, the next would share its transaction
    close = [publisher.publish_async("t", name) for name in ("first", "second")]
    assert [f.result(30).subscribers for f in (lone, *close)] == [2, 2, 2]
    assert collector.wait(3, 30) == ["lone", "first", "second"]
    assert nodes_in(raw_zk, zk_root, idle, "t") == 2  # "lone" alone, the others together


def test_linger_zero_turns_coalescing_off(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    idle = make_client()
    idle.subscribe("t")
    publisher = make_client(linger=0)
    futures = [publisher.publish_async("t", i) for i in range(20)]
    assert [f.result(30).subscribers for f in futures] == [1] * 20
    assert nodes_in(raw_zk, zk_root, idle, "t") == 20
    assert publisher.publish("t", "direct").subscribers == 1  # the direct path
    with pytest.raises(ValueError, match="linger"):
        make_client(linger=-1)


def test_a_subscribe_that_returned_receives_every_later_async_publish(
    make_client: MakeClient,
) -> None:
    publisher = make_client()
    publisher.subscribe("race", Collector())
    stop = threading.Event()
    started = 0

    def publish_forever() -> None:
        nonlocal started
        while not stop.is_set():
            started += 1
            publisher.publish_async("race", started)
            if started % 50 == 0:
                time.sleep(0.001)

    thread = threading.Thread(target=publish_forever)
    thread.start()
    checks = []
    try:
        for _ in range(8):
            collector = Collector()
            make_client().subscribe("race", collector)
            checks.append((collector, started))
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    publisher.publish("race", "flush")  # everything before it is confirmed
    final = started
    for collector, mark in checks:
        wanted = set(range(mark + 1, final + 1))
        wait_until(lambda c=collector, w=wanted: w <= set(c.payloads), 60, "later publishes")
        got = [p for p in collector.payloads if p != "flush"]
        assert got == sorted(got)


def test_a_vanished_queue_is_dropped_from_a_batch(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    a = Collector()
    make_client().subscribe("t", a)
    layout = Layout(zk_root)
    raw_zk.ensure_path(layout.queue("ghost", "t"))
    txn = raw_zk.transaction()
    txn.create(layout.subscriber("t", "ghost"), b"", ephemeral=True)
    txn.set_data(layout.topic("t"), b"")
    txn.commit()
    publisher = make_client()
    assert publisher.publish("t", 0).subscribers == 2
    raw_zk.delete(layout.queue("ghost", "t"), recursive=True)
    futures = [publisher.publish_async("t", i) for i in range(1, 50)]
    assert {f.result(30).subscribers for f in futures} == {1}
    assert a.wait(50) == list(range(50))


def test_a_large_message_to_many_subscribers_is_split(make_client: MakeClient) -> None:
    collectors = [Collector() for _ in range(10)]
    for c in collectors:
        make_client().subscribe("big", c)
    publisher = make_client(max_transaction_bytes=40_000, max_message_bytes=10_000)
    small = [publisher.publish_async("big", i) for i in range(5)]
    large = publisher.publish_async("big", b"x" * 8_000)
    after = publisher.publish_async("big", "after")
    assert large.result(30).transactions > 1
    assert [f.result(30).subscribers for f in [*small, after]] == [10] * 6
    for c in collectors:
        assert c.wait(7) == [0, 1, 2, 3, 4, b"x" * 8_000, "after"]


def test_no_subscribers_and_bad_input_through_the_batcher(make_client: MakeClient) -> None:
    client = make_client()
    assert client.publish_async("empty", 1).result(10).subscribers == 0
    with pytest.raises(NoSubscribers):
        client.publish_async("empty", 1, require_subscribers=True).result(10)
    with pytest.raises(ValueError):
        client.publish_async("a/b", 1)  # raised at once, nothing queued
    from zkpubsub import PayloadTooLarge, SerializationError

    with pytest.raises(SerializationError):
        client.publish_async("t", object())
    with pytest.raises(PayloadTooLarge):
        client.publish_async("t", b"x" * 2_000_000)


def test_publishes_time_out_while_zookeeper_is_unreachable_and_close_never_hangs(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    zk = make_cluster(1)
    with Client(zk.hosts, session_timeout=6.0) as subscriber:
        subscriber.subscribe("t", Collector())
        publisher = Client(zk.hosts, session_timeout=6.0)
        (node,) = zk.nodes
        node.pause()
        try:
            started = time.monotonic()
            futures = [publisher.publish_async("t", i, timeout=1.0) for i in range(5)]
            for f in futures:
                with pytest.raises(PublishTimeout):
                    f.result(timeout=30)
            assert time.monotonic() - started < 25
            pending = publisher.publish_async("t", "left over", timeout=60)
            closer = threading.Thread(target=publisher.close)
            closer.start()
        finally:
            node.resume()
        closer.join(60)
        assert not closer.is_alive()
        assert pending.done()  # confirmed, or failed: not left hanging


def test_many_threads_publishing_async_as_fast_as_they_can(make_client: MakeClient) -> None:
    collector = Collector()
    make_client().subscribe("flood", collector)
    publisher = make_client()
    threads, each = 4, 2500
    futures: list[list[object]] = [[] for _ in range(threads)]

    def flood(n: int) -> None:
        for i in range(each):
            futures[n].append(publisher.publish_async("flood", [n, i]))

    workers = [threading.Thread(target=flood, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    receipts = [f.result(timeout=120) for fs in futures for f in fs]  # type: ignore[attr-defined]
    assert {r.subscribers for r in receipts} == {1}
    got = collector.wait(threads * each, 120)
    for n in range(threads):
        assert [i for m, i in got if m == n] == list(range(each))


def test_closing_with_subscriptions_while_the_server_is_gone_takes_a_bounded_time(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    zk = make_cluster(1)
    client = Client(zk.hosts, session_timeout=4.0, request_timeout=30.0)
    subs = [client.subscribe(f"t{n}") for n in range(8)]
    (node,) = zk.nodes
    node.kill()
    started = time.monotonic()
    client.close()
    took = time.monotonic() - started
    # all subscriptions' last deletes and deregistrations share one closing
    # request's time (each had one of its own before: 8 x 5 s)
    session_end = 10 + 5  # the session timeout, 10 s at least, and 5 s more
    assert took < CLOSING_REQUEST_TIMEOUT + session_end + 5, took
    assert all(s.closed for s in subs)


def test_a_publish_pending_while_the_client_closes_on_a_frozen_server_fails_with_client_closed(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    zk = make_cluster(1)
    client = Client(zk.hosts, session_timeout=4.0, request_timeout=30.0)
    client.subscribe("t")
    (node,) = zk.nodes
    node.pause()
    try:
        pending = client.publish_async("t", b"x", timeout=120)
        time.sleep(0.5)
        started = time.monotonic()
        client.close()
        took = time.monotonic() - started
        with pytest.raises(ClientClosed):
            pending.result(timeout=5)
    finally:
        node.resume()
    # the engine gives up once nothing was confirmed for a closing request's
    # time (it waited the request timeout before, and the publish its own)
    session_end = 10 + 5
    assert took < 2 * CLOSING_REQUEST_TIMEOUT + session_end + 5, took
