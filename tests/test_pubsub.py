"""Topic broadcast on a real ZooKeeper: fan-out, order, atomicity, delivery."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient

from zkpubsub import (
    AlreadySubscribed,
    Client,
    ClientIdInUse,
    ClientState,
    Message,
    NoSubscribers,
    PayloadTooLarge,
    SerializationError,
)
from zkpubsub.layout import Layout
from zkpubsub.testing import ZooKeeperCluster, queue_entries
from zkpubsub.testing.proxy import OP_MULTI, ZkClientProxy

from .helpers import Collector, wait_until

MakeClient = Callable[..., Client]


def backlog(raw: KazooClient, root: str, client: Client, topic: str) -> int:
    entries = queue_entries(raw, root, client.client_id, topic)
    return -1 if entries is None else len(entries)


def test_fan_out_reaches_every_subscriber_in_order(make_client: MakeClient) -> None:
    publisher = make_client(client_id="pub")
    collectors = [Collector() for _ in range(5)]
    for c in collectors:
        make_client().subscribe("cache.users", c)
    receipts = [
        publisher.publish("cache.users", {"n": i}, headers={"origin": "test"}) for i in range(30)
    ]
    assert {r.subscribers for r in receipts} == {5}
    for c in collectors:
        assert c.wait(30) == [{"n": i} for i in range(30)]
    first = collectors[0].messages[0]
    assert first.id == receipts[0].message_id
    assert first.topic == "cache.users"
    assert first.headers == {"origin": "test"}
    assert first.publisher_id == "pub"
    assert abs(first.published_at - time.time()) < 60
    assert first.attempt == 1


def test_every_subscriber_sees_the_same_order_with_concurrent_publishers(
    make_client: MakeClient,
) -> None:
    collectors = [Collector() for _ in range(4)]
    for c in collectors:
        make_client().subscribe("t", c)
    publishers = [make_client(client_id=f"p{i}") for i in range(3)]
    per_publisher = 80

    def run(client: Client, name: str) -> None:
        for i in range(per_publisher):
            client.publish("t", [name, i])

    threads = [threading.Thread(target=run, args=(p, p.client_id)) for p in publishers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = per_publisher * len(publishers)
    orders = [c.wait(total, timeout=60) for c in collectors]
    assert all(order == orders[0] for order in orders), "subscribers disagree on order"
    interleavings = {tuple(x[0] for x in orders[0][i : i + 10]) for i in range(0, total, 10)}
    assert len(interleavings) > 1  # the publishers really did interleave
    for name in ("p0", "p1", "p2"):
        assert [i for n, i in orders[0] if n == name] == list(range(per_publisher))


def test_a_subscribe_that_returned_receives_every_later_publish(make_client: MakeClient) -> None:
    """Race subscribes against a publisher whose subscriber list is cached."""
    publisher = make_client(client_id="racer")
    publisher.subscribe("race", Collector())  # so the list is never empty
    started = itertools.count(1)
    last_started = 0
    stop = threading.Event()

    def publish_forever() -> None:
        nonlocal last_started
        while not stop.is_set():
            n = next(started)
            last_started = n  # set before publish() is called
            publisher.publish("race", n)

    thread = threading.Thread(target=publish_forever)
    thread.start()
    try:
        checks = []
        for _ in range(12):
            collector = Collector()
            subscriber = make_client()
            subscriber.subscribe("race", collector)
            mark = last_started  # every publish numbered above this started later
            checks.append((collector, mark))
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    final = last_started
    for collector, mark in checks:
        wanted = set(range(mark + 1, final + 1))
        wait_until(lambda c=collector, w=wanted: w <= set(c.payloads), 30, "later publishes")
        assert wanted <= set(collector.payloads)
        # and what arrived arrived in order
        assert collector.payloads == sorted(collector.payloads)


def test_a_vanished_queue_is_dropped_and_the_fan_out_stays_atomic(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    a, c = Collector(), Collector()
    make_client().subscribe("t", a)
    make_client().subscribe("t", c)
    publisher = make_client()
    assert publisher.publish("t", 1).subscribers == 2
    # A subscriber that registered and whose queue the cleaner then removed:
    layout = Layout(zk_root)
    raw_zk.ensure_path(layout.queue("ghost", "t"))
    txn = raw_zk.transaction()
    txn.create(layout.subscriber("t", "ghost"), b"", ephemeral=True)
    txn.set_data(layout.topic("t"), b"")
    assert not any(isinstance(r, Exception) for r in txn.commit())
    assert publisher.publish("t", 2).subscribers == 3
    raw_zk.delete(layout.queue("ghost", "t"), recursive=True)
    # The publisher still lists "ghost"; its transaction fails on the missing
    # queue, is rolled back everywhere, and is retried without it.
    assert publisher.publish("t", 3).subscribers == 2
    assert publisher.publish("t", 4).subscribers == 2
    assert a.wait(4) == [1, 2, 3, 4]
    assert c.wait(4) == [1, 2, 3, 4]
    time.sleep(0.3)
    assert a.payloads == [1, 2, 3, 4] and c.payloads == [1, 2, 3, 4]  # no duplicates


def test_no_subscribers_returns_zero_or_raises_if_asked(make_client: MakeClient) -> None:
    client = make_client()
    assert client.publish("nobody", "x").subscribers == 0
    with pytest.raises(NoSubscribers) as info:
        client.publish("nobody", "x", require_subscribers=True)
    assert info.value.topic == "nobody"


def test_a_raising_handler_goes_to_on_error_and_the_message_comes_again(
    make_client: MakeClient,
) -> None:
    errors: list[tuple[BaseException, Message | None]] = []
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def handler(msg: Message) -> None:
        seen.append((msg.payload, msg.attempt))
        if msg.payload == 1 and msg.attempt == 1:
            raise RuntimeError("cache server down")
        if msg.payload == 2:
            done.set()

    sub = make_client().subscribe("t", handler, on_error=lambda e, m: errors.append((e, m)))
    publisher = make_client()
    publisher.publish("t", 1)
    publisher.publish("t", 2)
    assert done.wait(20)
    assert seen == [(1, 1), (1, 2), (2, 1)]
    assert len(errors) == 1
    assert str(errors[0][0]) == "cache server down"
    assert errors[0][1] is not None and errors[0][1].payload == 1
    assert sub.stats().errors == 1
    # a delivery is counted after its handler returned, which may trail the event it set
    wait_until(lambda: sub.stats().delivered >= 2, 20, "the second delivery counted")
    assert sub.stats().delivered == 2


def test_a_poison_message_is_dropped_after_max_attempts_and_the_rest_flows(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    errors: list[BaseException] = []
    good = Collector()

    def handler(msg: Message) -> None:
        if msg.payload == "poison":
            raise ValueError("cannot handle")
        good(msg)

    client = make_client()
    sub = client.subscribe("t", handler, on_error=lambda e, m: errors.append(e), max_attempts=3)
    publisher = make_client()
    publisher.publish("t", "poison")
    publisher.publish("t", "fine")
    assert good.wait(1) == ["fine"]
    assert len(errors) == 3
    assert sub.stats().dropped == 1
    wait_until(lambda: backlog(raw_zk, zk_root, client, "t") == 0, what="poison node deleted")


def test_handled_nodes_are_deleted_after_the_handler_returns(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow(msg: Message) -> None:
        entered.set()
        assert release.wait(20)

    client = make_client()
    client.subscribe("t", slow)
    make_client().publish("t", "x")
    assert entered.wait(20)
    time.sleep(0.3)
    assert backlog(raw_zk, zk_root, client, "t") == 1  # still there while handling
    release.set()
    wait_until(lambda: backlog(raw_zk, zk_root, client, "t") == 0, what="node deleted")


def test_get_acknowledges_the_previous_message_when_asked_for_the_next(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    client = make_client()
    sub = client.subscribe("t")
    publisher = make_client()
    for i in range(3):
        publisher.publish("t", i)
    first = sub.get(timeout=10)
    assert first is not None and first.payload == 0
    time.sleep(0.3)
    assert backlog(raw_zk, zk_root, client, "t") == 3
    second = sub.get(timeout=10)
    assert second is not None and second.payload == 1
    wait_until(lambda: backlog(raw_zk, zk_root, client, "t") == 2, what="first acked")
    sub.close()  # acknowledges the one held, keeps the rest
    wait_until(lambda: backlog(raw_zk, zk_root, client, "t") == 1, what="second acked on close")
    again = client.subscribe("t")
    third = again.get(timeout=10)
    assert third is not None and third.payload == 2
    assert again.get(timeout=0.2) is None


def test_two_gets_waiting_at_once_leave_no_message_unacknowledged(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """Before, two threads' get() waiting at once were both handed a
    message, the second replacing the first as the one held: the first was
    never acknowledged, and came again to the next subscription."""
    client = make_client(client_id="two-gets")
    sub = client.subscribe("t", durable=True)
    got: list[Message | None] = []
    threads = [threading.Thread(target=lambda: got.append(sub.get(timeout=20))) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both wait (if one did not yet, it acknowledges the other's first)
    publisher = make_client()
    for payload in ("a", "b"):  # a node each
        publisher.publish("t", payload)
    for thread in threads:
        thread.join(20)
    assert sorted(m.payload for m in got if m is not None) == ["a", "b"]
    sub.close()  # acknowledges the one held last
    wait_until(lambda: backlog(raw_zk, zk_root, client, "t") == 0, what="both acknowledged")
    assert client.subscribe("t", durable=True).get(timeout=0.5) is None  # nothing again


def test_iteration_ends_when_the_subscription_closes(make_client: MakeClient) -> None:
    client = make_client()
    sub = client.subscribe("t")
    make_client().publish_many("t", ["a", "b"])
    got: list[str] = []

    def consume() -> None:
        for msg in sub:
            got.append(msg.payload)

    thread = threading.Thread(target=consume)
    thread.start()
    wait_until(lambda: got == ["a", "b"], what="two messages")
    sub.close()
    thread.join(10)
    assert not thread.is_alive()


def test_close_and_unsubscribe_are_idempotent_and_subscribing_again_works(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    client = make_client()
    layout = Layout(zk_root)
    sub = client.subscribe("t")
    with pytest.raises(AlreadySubscribed):
        client.subscribe("t")
    sub.close()
    sub.close()
    assert raw_zk.exists(layout.subscriber("t", client.client_id)) is None
    assert raw_zk.exists(layout.queue(client.client_id, "t")) is not None  # kept
    collector = Collector()
    again = client.subscribe("t", collector)
    assert make_client().publish("t", "hello").subscribers == 1
    assert collector.wait(1) == ["hello"]
    again.unsubscribe()
    again.unsubscribe()
    again.close()
    assert raw_zk.exists(layout.queue(client.client_id, "t")) is None  # deleted
    assert make_client().publish("t", "nobody").subscribers == 0
    third = client.subscribe("t", Collector())
    assert make_client().publish("t", "back").subscribers == 1
    third.close()


def test_publish_many_packs_one_node_per_subscriber_in_order(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    idle = make_client()
    idle.subscribe("t")  # never reads: its queue shows the node count
    collector = Collector()
    make_client().subscribe("t", collector)
    receipt = make_client().publish_many("t", range(200))
    assert receipt.subscribers == 2
    assert len(receipt.message_ids) == len(set(receipt.message_ids)) == 200
    assert receipt.transactions == 1
    assert collector.wait(200) == list(range(200))
    assert [m.id for m in collector.messages] == list(receipt.message_ids)
    assert backlog(raw_zk, zk_root, idle, "t") == 1


def test_a_fan_out_too_large_for_one_transaction_is_split_and_reaches_everyone(
    make_client: MakeClient,
) -> None:
    collectors = [Collector() for _ in range(12)]
    for c in collectors:
        make_client().subscribe("big", c)
    publisher = make_client(max_transaction_bytes=40_000, max_message_bytes=10_000)
    payload = b"x" * 8_000
    receipt = publisher.publish("big", payload)
    assert receipt.subscribers == 12
    assert receipt.transactions > 1
    for c in collectors:
        assert c.wait(1) == [payload]


def test_the_default_size_limit_is_accepted_by_the_server(make_client: MakeClient) -> None:
    collector = Collector()
    make_client().subscribe("t", collector)
    publisher = make_client(serializer="raw")
    limit = publisher.config.max_message_bytes
    probe = 100_000  # same msgpack header width as the final body
    overhead = len(publisher._publisher.build_nodes("t", [b"z" * probe], None)[1][0]) - probe
    body = b"z" * (limit - overhead)
    assert publisher.publish("t", body).subscribers == 1
    assert collector.wait(1) == [body]
    with pytest.raises(PayloadTooLarge) as info:
        publisher.publish("t", body + b"z")
    assert info.value.limit == limit
    assert info.value.size == limit + 1


def test_bad_input_raises_clear_errors_and_sends_nothing(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    collector = Collector()
    subscriber = make_client()
    subscriber.subscribe("t", collector)
    publisher = make_client()
    with pytest.raises(PayloadTooLarge) as big:
        publisher.publish("t", b"x" * 2_000_000)
    assert big.value.size > big.value.limit == publisher.config.max_message_bytes
    with pytest.raises(SerializationError):
        publisher.publish("t", object())
    with pytest.raises(SerializationError):
        publisher.publish("t", "ok", headers={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(SerializationError):
        publisher.publish_many("t", ["fine", {1, 2}])  # one bad item: nothing is sent
    for bad in ("", ".", "..", "a/b", "bell\x07"):
        with pytest.raises(ValueError):
            publisher.publish(bad, "x")
        with pytest.raises(ValueError):
            subscriber.subscribe(bad)
    with pytest.raises(ValueError):
        publisher.publish_many("t", [])
    for name in ("max_attempts", "prefetch"):  # a bool is no count
        with pytest.raises(ValueError, match=name):
            subscriber.subscribe("t2", **{name: True})
    with pytest.raises(ValueError):
        make_client(client_id="has/slash")
    time.sleep(0.3)
    assert backlog(raw_zk, zk_root, subscriber, "t") == 0
    assert collector.payloads == []
    publisher.publish("t", "after")
    assert collector.wait(1) == ["after"]


def test_malformed_and_foreign_nodes_go_to_on_error_and_never_block(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    errors: list[tuple[BaseException, Message | None]] = []
    collector = Collector()
    client = make_client()
    client.subscribe("t", collector, on_error=lambda e, m: errors.append((e, m)))
    publisher = make_client()
    publisher.publish("t", "before")
    queue = Layout(zk_root).queue(client.client_id, "t")
    raw_zk.create(f"{queue}/m0123456789ab-", b"\xc1garbage", sequence=True)
    raw_zk.create(f"{queue}/not-ours", b"foreign")
    publisher.publish("t", "after")
    assert collector.wait(2) == ["before", "after"]
    wait_until(lambda: len(errors) == 2, what="two decode errors")
    by_data = {e.data: e for e, _ in errors}  # type: ignore[attr-defined]
    assert set(by_data) == {b"\xc1garbage", b"foreign"}
    assert by_data[b"foreign"].path == f"{queue}/not-ours"
    assert "not a zkpubsub message node" in str(by_data[b"foreign"])
    assert all(m is None for _, m in errors)
    # only the current segment is left, and nothing in it
    wait_until(lambda: raw_zk.get_children(queue) == ["s0000000000"], what="bad nodes removed")
    # the delivered "after" is deleted once its handler returned, which may trail the collector
    wait_until(
        lambda: queue_entries(raw_zk, zk_root, client.client_id, "t") == [],
        what="the delivered messages deleted",
    )
    publisher.publish("t", "still alive")
    assert collector.wait(3)[-1] == "still alive"


def test_messages_come_in_creation_order_across_the_sequence_wrap(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    from zkpubsub.envelope import encode, make_entry
    from zkpubsub.serializers import resolve

    layout = Layout(zk_root)
    queue = layout.queue("wrapper", "t")
    raw_zk.ensure_path(queue)
    created = [2**31 - 2, 2**31 - 1, -(2**31), -(2**31) + 1]
    for seq in reversed(created):  # written out of order on purpose
        entry = make_entry(resolve(None), topic="t", payload=seq, headers={}, publisher_id="x")
        raw_zk.create(f"{queue}/m0123456789ab-{seq:010d}", encode([entry]))
    collector = Collector()
    make_client(client_id="wrapper").subscribe("t", collector)
    assert collector.wait(4) == created


def test_a_chroot_in_the_hosts_string_works(zk_hosts: str, raw_zk: KazooClient) -> None:
    chroot = f"/chroot-{time.time_ns()}"
    hosts = f"{zk_hosts}{chroot}"
    try:
        with Client(hosts, session_timeout=4) as a, Client(hosts, session_timeout=4) as b:
            collector = Collector()
            a.subscribe("t", collector)
            assert b.publish("t", "in chroot").subscribers == 1
            assert collector.wait(1) == ["in chroot"]
            assert raw_zk.exists(f"{chroot}/zkpubsub/subscribers/t/{a.client_id}")
    finally:
        raw_zk.delete(chroot, recursive=True)


def test_two_live_clients_cannot_share_an_id(make_client: MakeClient) -> None:
    make_client(client_id="only-one")
    with pytest.raises(ClientIdInUse) as info:
        make_client(client_id="only-one", registration_wait=0.5)
    assert info.value.client_id == "only-one"


def test_closed_clients_refuse_work(make_client: MakeClient) -> None:
    from zkpubsub import ClientClosed

    client = make_client()
    states: list[ClientState] = []
    client.add_listener(states.append)
    client.close()
    client.close()
    assert client.status == ClientState.CLOSED
    with pytest.raises(ClientClosed):
        client.publish("t", "x")
    with pytest.raises(ClientClosed):
        client.subscribe("t")
    # a listener added now would never be told anything
    with pytest.raises(ClientClosed):
        client.add_listener(states.append)
    with pytest.raises(ClientClosed):
        client.add_gap_listener(print)
    wait_until(lambda: states == [ClientState.CLOSED], what="CLOSED reported")


def test_user_code_never_runs_on_the_zookeeper_clients_threads(make_client: MakeClient) -> None:
    import threading as th

    seen: dict[str, str] = {}
    done = th.Event()

    def handler(msg: Message) -> None:
        seen["handler"] = th.current_thread().name
        raise RuntimeError("to reach on_error")

    def on_error(exc: BaseException, msg: Message | None) -> None:
        seen["on_error"] = th.current_thread().name
        done.set()

    client = make_client()
    client.add_listener(lambda state: seen.setdefault("listener", th.current_thread().name))
    client.subscribe("t", handler, on_error=on_error, max_attempts=1)
    make_client().publish("t", "x")
    assert done.wait(20)
    client.close()
    wait_until(lambda: "listener" in seen, what="listener called")
    assert seen["handler"].startswith("zkpubsub-dispatch-")
    assert seen["on_error"].startswith("zkpubsub-dispatch-")
    assert seen["listener"].startswith("zkpubsub-listeners-")
    assert seen.keys() == {"handler", "on_error", "listener"}


def test_publish_is_exactly_once_across_a_connection_loss(
    make_cluster: Callable[..., object],
) -> None:
    zk = make_cluster(1)
    hosts = zk.hosts  # type: ignore[attr-defined]
    with Client(hosts, session_timeout=3.0) as publisher, Client(hosts) as subscriber:
        sub = subscriber.subscribe("t")
        states: list[ClientState] = []
        publisher.add_listener(states.append)
        publisher.publish("t", "warm-up")
        (node,) = zk.nodes  # type: ignore[attr-defined]
        node.pause()  # the request goes out; the answer never comes; the client drops
        sender = threading.Thread(target=lambda: publisher.publish("t", "exactly once"))
        sender.start()
        wait_until(lambda: ClientState.SUSPENDED in states, 10, "connection dropped")
        node.resume()
        sender.join(30)
        assert not sender.is_alive()
        assert publisher._engine.lookups >= 1  # the answer was lost and looked up
        got = [sub.get(10), sub.get(10), sub.get(0.5)]
        assert [m.payload if m else None for m in got] == ["warm-up", "exactly once", None]


def test_a_reply_delivered_twice_neither_fails_nor_repeats_a_publish(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    """A reply the client did not expect drops the connection (kazoo's loop
    would die of it), and the requests it was waiting for are lost with it.
    For a publish that is a lost answer like any other: looked up, not
    raised, not sent twice; the session stays."""
    zk = make_cluster(1)
    (node,) = zk.nodes
    topics = ("a", "b")
    rounds, per_round = 3, 40
    with ZkClientProxy(("127.0.0.1", node.client_port), name="writer") as proxy:
        reader = Client(zk.hosts, client_id="reader")
        writer = Client(proxy.address, client_id="writer", session_timeout=5.0)
        try:
            subs = {t: reader.subscribe(t) for t in topics}
            session = writer._session_credentials()
            for n in range(rounds):
                sprung = proxy.duplicate_reply(OP_MULTI)
                futures = [
                    writer.publish_async(t, [n, i]) for i in range(per_round) for t in topics
                ]
                for future in futures:
                    assert future.result(60).subscribers == 1
                assert sprung.is_set()
                wait_until(lambda: writer.status == ClientState.CONNECTED, 30, "reconnected")
            assert writer._session_credentials() == session
            assert proxy.sprung == [("duplicate", OP_MULTI)] * rounds
            expected = sorted([n, i] for n in range(rounds) for i in range(per_round))
            for topic, sub in subs.items():
                got = []
                while (message := sub.get(timeout=5)) is not None:
                    got.append(message.payload)
                    if len(got) == len(expected):
                        break
                assert sorted(got) == expected, topic
                assert sub.get(timeout=0.5) is None, f"{topic}: a publish came twice"
        finally:
            writer.close()
            reader.close()


def test_closing_a_client_deregisters_its_plain_subscriptions_so_publishers_read_again(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    # Ending the session would remove the registration too, but a publisher
    # hears of that only from its child watch and may count the subscriber
    # in a publish sent right after close(); the version bump of an explicit
    # deregistration makes that publish's check fail and the list be read
    # again.
    layout = Layout(zk_root)
    publisher = make_client()
    leaving = make_client(client_id="leaving")
    leaving.subscribe("t")
    durable = make_client(client_id="stays")
    durable.subscribe("t", durable=True)
    assert publisher.publish("t", 0).subscribers == 2
    _, before = raw_zk.get(layout.topic("t"))
    leaving.close()
    _, after = raw_zk.get(layout.topic("t"))
    assert after.version > before.version
    assert raw_zk.exists(layout.subscriber("t", "leaving")) is None
    assert publisher.publish("t", 1).subscribers == 1
    durable.close()  # a durable registration stays
    assert raw_zk.exists(layout.subscriber("t", "stays")) is not None
