"""A publish sent from its caller's thread, against a real server.

When a topic's lane thread waits idle and the fan-out needs no request
first, the caller sends the transaction itself and the lane thread takes
the answer. Whatever the answer needs (a lookup after a lost reply, a new
plan after a stale subscriber list) is the lane thread's, as for any
publish: nothing lost, nothing twice, order kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kazoo.client import KazooClient

from zkpubsub import Client
from zkpubsub.layout import Layout
from zkpubsub.testing import ZooKeeperCluster
from zkpubsub.testing.proxy import OP_MULTI, ZkClientProxy

from .helpers import Collector, wait_until

MakeClient = Callable[..., Client]


def _lane_idle(client: Client, topic: str) -> None:
    """Wait until the topic's lane thread waits for work (the engine's own
    state: a publish then goes out from its caller's thread)."""
    lanes = client._engine._lanes
    wait_until(lambda: topic in lanes and lanes[topic].idle, 10, f"the lane of {topic!r} idle")


def test_publishes_sent_at_once_arrive_once_and_in_order(make_client: MakeClient) -> None:
    subscribers = [Collector(), Collector()]
    for collector in subscribers:
        make_client().subscribe("t", collector)
    publisher = make_client()
    engine = publisher._engine
    publisher.publish("t", -1)  # reads the subscribers and their queues
    futures = []
    for i in range(100):  # spaced: the lane is idle again between most of them
        futures.append(publisher.publish_async("t", i))
        time.sleep(0.005)
    for i in range(100, 120):  # blocking publishes, after a pause each
        _lane_idle(publisher, "t")
        assert publisher.publish("t", i).subscribers == 2
    for future in futures:
        assert future.result(30).subscribers == 2
    assert engine.sent_at_once > 0
    expected = list(range(-1, 120))
    for collector in subscribers:
        assert collector.wait(len(expected), timeout=30) == expected


def test_a_publish_sent_at_once_whose_reply_is_lost_is_looked_up_not_sent_again(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    zk = make_cluster(1)
    (node,) = zk.nodes
    with ZkClientProxy(("127.0.0.1", node.client_port), name="publisher") as proxy:
        reader = Client(zk.hosts, client_id="reader")
        publisher = Client(proxy.address, client_id="publisher", session_timeout=5.0)
        try:
            sub = reader.subscribe("t")
            publisher.publish("t", "before")
            _lane_idle(publisher, "t")
            engine = publisher._engine
            at_once, lookups = engine.sent_at_once, engine.lookups
            sprung = proxy.lose_reply(OP_MULTI)  # applied by the server, the reply lost
            receipt = publisher.publish("t", "lost reply")
            assert sprung.is_set()
            assert receipt.subscribers == 1
            assert engine.sent_at_once == at_once + 1, "not sent from the caller's thread"
            assert engine.lookups == lookups + 1, "the lost reply was not looked up"
            publisher.publish("t", "after")
            got = []
            while (message := sub.get(timeout=5)) is not None:
                got.append(message.payload)
                if len(got) == 3:
                    break
            assert got == ["before", "lost reply", "after"]
            assert sub.get(timeout=0.5) is None, "a publish came twice"
        finally:
            publisher.close()
            reader.close()


def test_a_publish_sent_at_once_on_a_stale_subscriber_list_is_planned_again(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    # A subscribe bumps the data version of the topic's node; a publisher
    # hears of it from a child watch, later. Bumping the version alone makes
    # the publisher's cached list stale without telling it: its transaction's
    # check fails, and the lane thread reads the list again and sends anew.
    collector = Collector()
    make_client().subscribe("t", collector)
    publisher = make_client()
    publisher.publish("t", 0)
    _lane_idle(publisher, "t")
    engine = publisher._engine
    at_once = engine.sent_at_once
    topic = Layout(zk_root).topic("t")
    data, _ = raw_zk.get(topic)
    raw_zk.set(topic, data)
    receipt = publisher.publish("t", 1)
    assert engine.sent_at_once == at_once + 1, "not sent from the caller's thread"
    assert receipt.transactions == 2  # the stale one refused, nothing of it applied
    assert receipt.subscribers == 1
    publisher.publish("t", 2)
    assert collector.wait(3, timeout=10) == [0, 1, 2]
    time.sleep(0.5)
    assert collector.payloads == [0, 1, 2], "a publish came twice"
