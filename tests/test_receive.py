"""The receive pump against a real server: a persistent recursive watch and,
as the fallback, listing on every change, both deliver in order; a cut
connection loses nothing; closing stops cleanly and removes the watch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from zkpubsub import Client, ClientState, OperationTimeout, ZooKeeperError, _persistent, _pump
from zkpubsub._probes import parse_srvr_version, server_version
from zkpubsub._pump import DELETE_LINGER, READ_WINDOW_BYTES, read_window
from zkpubsub.backlog import INLINE_BYTES, QueueRecord
from zkpubsub.layout import carries_data
from zkpubsub.testing import four_letter, queue_entries
from zkpubsub.testing.proxy import TcpProxy

from .helpers import Collector, cut_and_reconnect, wait_until

MakeClient = Callable[..., Client]


def version_of(zk_hosts: str) -> tuple[int, int, int]:
    host, _, port = zk_hosts.split(",")[0].rpartition(":")
    version = server_version(host, int(port), 5.0)
    assert version is not None, "the test server tells its version"
    return version


@pytest.fixture
def persistent_watches(zk_hosts: str) -> None:
    if version_of(zk_hosts) < (3, 6, 0):
        pytest.skip("persistent watches need ZooKeeper 3.6+")


@pytest.mark.parametrize("mode", ["persistent", "listing"])
def test_both_ways_of_hearing_of_messages_deliver_everything_in_order(
    make_client: MakeClient, zk_hosts: str, mode: str
) -> None:
    if mode == "persistent" and version_of(zk_hosts) < (3, 6, 0):
        pytest.skip("persistent watches need ZooKeeper 3.6+")
    got = {topic: Collector() for topic in ("a", "b")}
    subscriber = make_client(watch_mode=mode)
    for topic, collector in got.items():
        subscriber.subscribe(topic, collector)
    assert subscriber._pump.persistent is (mode == "persistent")
    publishers = [make_client() for _ in range(2)]

    def publish(p: Client, tag: str) -> None:
        for i in range(150):
            p.publish("ab"[i % 2], f"{tag}{i:03d}")

    threads = [
        threading.Thread(target=publish, args=(p, tag))
        for p, tag in zip(publishers, "xy", strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for collector in got.values():
        seen = collector.wait(150)
        for tag in "xy":
            mine = [m for m in seen if m.startswith(tag)]
            assert mine == sorted(mine) and len(mine) == 75


@pytest.mark.parametrize("mode", ["persistent", "listing"])
def test_a_node_created_again_under_a_handled_name_is_a_new_message(
    make_client: MakeClient, zk_hosts: str, zk_root: str, raw_zk: Any, mode: str
) -> None:
    # The pump remembers the nodes it deleted, to tell one the servers bring
    # back (a lost delete) by its creation zxid; a node created again under
    # such a name is another node, and its message is delivered. (A message
    # too large to travel in the node's name: its data is read.)
    if mode == "persistent" and version_of(zk_hosts) < (3, 6, 0):
        pytest.skip("persistent watches need ZooKeeper 3.6+")
    once = "once" + "." * INLINE_BYTES
    path, data, sub, got, _ = handled_node(make_client, raw_zk, zk_root, mode, once)
    assert data and not carries_data(path)
    raw_zk.create(path, data)  # the same name and bytes: a new node all the same
    assert got.wait(2) == [once, once]
    wait_until(lambda: sub.stats().nodes_deleted == 2, 10, "the second delete")
    assert raw_zk.exists(path) is None


@pytest.mark.parametrize("mode", ["persistent", "listing"])
def test_a_node_carrying_its_message_in_its_name_is_not_delivered_again(
    make_client: MakeClient, zk_hosts: str, zk_root: str, raw_zk: Any, mode: str
) -> None:
    # Its name is its message (id included): the same name back after its
    # delete is the same message, deleted again and not delivered again.
    if mode == "persistent" and version_of(zk_hosts) < (3, 6, 0):
        pytest.skip("persistent watches need ZooKeeper 3.6+")
    path, data, sub, got, _ = handled_node(make_client, raw_zk, zk_root, mode, "small")
    assert data == b"" and carries_data(path)
    raw_zk.create(path, data)
    wait_until(lambda: sub.stats().nodes_deleted == 2, 10, "the second delete")
    assert raw_zk.exists(path) is None
    assert [m.payload for m in got.messages] == ["small"]
    assert sub.stats().delivered == 1


def test_a_queue_whose_record_asks_for_no_names_gets_its_messages_as_data(
    make_client: MakeClient, zk_root: str, raw_zk: Any
) -> None:
    # as a subscriber of an earlier version made it: no "inline" in the record
    gate = threading.Event()
    got = Collector()
    subscriber = make_client()
    subscriber.subscribe("t", lambda m: (gate.wait(30), got(m)))
    queue = f"{zk_root}/messages/{subscriber.client_id}/t"
    data, stat = raw_zk.get(queue)
    record = QueueRecord.decode(data)
    assert record is not None and record.inline == INLINE_BYTES
    raw_zk.set(queue, replace(record, inline=0).encode(), stat.version)
    make_client().publish("t", "small")
    names = wait_until(
        lambda: queue_entries(raw_zk, zk_root, subscriber.client_id, "t"), 10, "the node"
    )
    assert not carries_data(names[0]) and raw_zk.get(f"{queue}/{names[0]}")[0]
    gate.set()
    assert got.wait(1) == ["small"]


class Upper:
    """A serializer of the user's: its code must not run on kazoo's thread."""

    content_type = "text/x-upper"

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def dumps(self, payload: Any) -> bytes:
        return str(payload).encode()

    def loads(self, data: bytes) -> Any:
        self.threads.add(threading.current_thread().name)
        return data.decode().upper()


def test_a_message_in_its_name_goes_from_the_event_to_the_handler_unless_user_code_reads_it(
    make_client: MakeClient, persistent_watches: None
) -> None:
    got = Collector()
    subscriber = make_client(watch_mode="persistent")
    subscriber.subscribe("t", got)
    publisher = make_client()
    for i in range(30):
        publisher.publish("t", i)
        got.wait(i + 1)  # one at a time: each finds its queue caught up
    assert got.payloads == list(range(30))
    assert subscriber._pump.at_once >= 25  # (the first may come before the first listing)

    upper = Upper()
    own = make_client(watch_mode="persistent", serializer=upper)
    mine = Collector()
    own.subscribe("u", mine)
    sender = make_client(serializer=upper)
    for i in range(10):
        sender.publish("u", f"m{i}")
        mine.wait(i + 1)
    assert mine.payloads == [f"M{i}" for i in range(10)]
    assert own._pump.at_once == 0
    assert upper.threads and all(name.startswith("zkpubsub-receive") for name in upper.threads)


def test_a_listing_older_than_a_delete_does_not_pass_for_a_node_come_back(
    make_client: MakeClient,
    zk_root: str,
    raw_zk: Any,
    caplog: pytest.LogCaptureFixture,
    persistent_watches: None,
) -> None:
    # A node whose name carries its message and that the subscription deleted
    # lately is read before anything is decided: a listing taken before the
    # delete shows it, but the server no longer has it.
    path, _, sub, got, client = handled_node(make_client, raw_zk, zk_root, "persistent", "small")
    queue = client._pump._queues["t"]
    name = path[len(queue.path) + 1 :]
    queue.buffer.listed([name], [])  # as an old listing would
    client._pump.wake()
    wait_until(lambda: not queue.buffer.has_unfetched, 10, "the name read")
    time.sleep(0.2)
    assert sub.stats().nodes_deleted == 1 and got.payloads == ["small"]
    assert not [r for r in caplog.records if "deleted already" in r.getMessage()]


def handled_node(
    make_client: MakeClient, raw_zk: Any, zk_root: str, mode: str, payload: str
) -> tuple[str, bytes, Any, Collector, Client]:
    """Publish ``payload`` to a subscriber (watching in ``mode``); once it is
    handled and its node deleted: the node's path and data, the
    subscription, what it got and the subscribing client."""
    gate = threading.Event()
    got = Collector()

    def handler(message: Any) -> None:
        gate.wait(30)
        got(message)

    subscriber = make_client(watch_mode=mode)
    sub = subscriber.subscribe("t", handler)
    make_client().publish("t", payload)
    queue = f"{zk_root}/messages/{subscriber.client_id}/t"
    names = wait_until(
        lambda: queue_entries(raw_zk, zk_root, subscriber.client_id, "t"), 10, "the node"
    )
    path = f"{queue}/{names[0]}"
    data, _ = raw_zk.get(path)
    gate.set()
    assert got.wait(1) == [payload]
    wait_until(lambda: not raw_zk.exists(path), 10, "its delete")
    wait_until(lambda: sub.stats().nodes_deleted == 1, 10, "its delete answered")
    return path, data, sub, got, subscriber


def requests_per_node(make_client: MakeClient, mode: str, topic: str, pad: int = 0) -> float:
    got = Collector()
    # no cleaner on the client counted: its sweeps' requests would count
    subscriber = make_client(watch_mode=mode, cleaner=False)
    sub = subscriber.subscribe(topic, got)
    publisher = make_client()
    publisher.publish(topic, "warm-up")
    got.wait(1)
    wait_until(lambda: sub.stats().nodes_deleted == 1, 20, "the first delete")
    conn = subscriber._ctx.conn
    before = conn.requests
    for i in range(50):
        publisher.publish(topic, f"{i}{'.' * pad}")
        got.wait(i + 2)  # one at a time: every node is its own notification
    wait_until(lambda: sub.stats().nodes_deleted == 51, 20, "deletes")
    return (conn.requests - before) / 50


def test_a_persistent_watch_reads_each_new_node_without_listing_the_queue(
    make_client: MakeClient, persistent_watches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # deletes share transactions however slowly the messages come one by one
    monkeypatch.setattr(_pump, "DELETE_LINGER", 0.5)
    # messages too large to go into node names: each node is read
    listing = requests_per_node(make_client, "listing", "a", pad=INLINE_BYTES)
    persistent = requests_per_node(make_client, "persistent", "b", pad=INLINE_BYTES)
    # listing: a listing, a read and a delete per node; persistent: no listing
    assert listing >= 2.9
    assert persistent <= listing - 0.9
    assert persistent >= 0.95  # a read each (deletes share transactions)


def test_a_message_in_its_node_name_costs_no_read(
    make_client: MakeClient, persistent_watches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_pump, "DELETE_LINGER", 0.5)  # as above
    listing = requests_per_node(make_client, "listing", "a")
    persistent = requests_per_node(make_client, "persistent", "b")
    # listing: the queue and its segment listed per node, no read;
    # persistent: a share of a delete transaction, nothing else
    assert listing <= 2.6
    assert persistent <= 0.5


def test_a_cut_connection_while_messages_arrive_loses_nothing_and_keeps_order(
    make_client: MakeClient, persistent_watches: None, zk_hosts: str
) -> None:
    host, port = zk_hosts.split(",")[0].split(":")
    with TcpProxy((host, int(port)), name="receive") as proxy:
        got = Collector()
        subscriber = make_client(hosts=proxy.address, watch_mode="persistent")
        states: list[ClientState] = []
        subscriber.add_listener(states.append)
        subscriber.subscribe("t", got)
        publisher = make_client()
        stop = threading.Event()
        sent: list[int] = []

        def publish() -> None:
            i = 0
            while not stop.is_set() and i < 2000:
                publisher.publish("t", i)
                sent.append(i)
                i += 1

        sender = threading.Thread(target=publish)
        sender.start()
        try:
            for _ in range(3):
                seen = len(got.messages)
                wait_until(lambda seen=seen: len(got.messages) > seen + 20, 30, "delivery")
                cut_and_reconnect(proxy, states)  # the watch and the outage's events are gone
        finally:
            stop.set()
            sender.join(60)
        assert got.wait(len(sent), 60) == sent  # all of them, in order, once
        assert states.count(ClientState.SUSPENDED) >= 3


def watches_of(zk_hosts: str) -> set[str]:
    """The paths with a watch on the server (``wchp``: each path, then the
    sessions watching it, indented)."""
    host, port = zk_hosts.split(",")[0].split(":")
    out = four_letter(host, int(port), "wchp")
    return {line.strip() for line in out.splitlines() if line.startswith("/")}


def test_closing_the_last_subscription_removes_the_watch_from_the_server(
    make_client: MakeClient, persistent_watches: None, zk_hosts: str, zk_root: str
) -> None:
    client = make_client(watch_mode="persistent")
    base = f"{zk_root}/messages/{client.client_id}"
    first = client.subscribe("a")
    second = client.subscribe("b", Collector())
    wait_until(lambda: base in watches_of(zk_hosts), 10, "the watch set")
    first.close()
    assert base in watches_of(zk_hosts)  # still serving "b"
    second.unsubscribe()
    wait_until(lambda: base not in watches_of(zk_hosts), 10, "the watch removed")
    time.sleep(2.5)  # the pump goes round meanwhile: it set the watch again before
    assert base not in watches_of(zk_hosts)
    assert client.status == ClientState.CONNECTED  # the client goes on
    again = Collector()
    client.subscribe("c", again)  # and can watch again
    make_client().publish("c", "back")
    assert again.wait(1) == ["back"]


def test_a_watch_added_while_its_last_caller_leaves_stays_on_the_server(
    make_client: MakeClient,
    persistent_watches: None,
    zk_hosts: str,
    zk_root: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One caller's removal, decided as another caller adds the same
    path's watch, reached the server after that add: the server then had no
    watch and the second caller heard nothing. (The pause below widens
    the moment between the removal's decision and its request.)"""
    client = make_client(watch_mode="persistent")
    conn = client._ctx.conn
    path = f"{zk_root}/watched"
    heard: list[str] = []
    leaving, adding = threading.Event(), threading.Event()
    unwatch = _persistent.EventHook.unwatch

    def slow_unwatch(self: _persistent.EventHook, server_path: str, on_event: object) -> bool:
        last = unwatch(self, server_path, on_event)  # type: ignore[arg-type]
        if last and threading.current_thread().name == "leaving":
            leaving.set()
            adding.wait(2.0)  # the other caller adds its watch now
            time.sleep(0.2)
        return last

    monkeypatch.setattr(_persistent.EventHook, "unwatch", slow_unwatch)

    def first(change: int, p: str) -> None:
        pass

    assert conn.watch_tree(path, first, None)
    leaver = threading.Thread(target=conn.unwatch_tree, args=(path, first, None), name="leaving")
    leaver.start()
    assert leaving.wait(5)
    adder = threading.Thread(
        target=conn.watch_tree,
        args=(path, lambda change, p: heard.append(p), None),
        name="adding",
    )
    adder.start()
    time.sleep(0.05)
    adding.set()
    adder.join(10)
    leaver.join(10)
    conn.kazoo.exists(path)  # a round trip: both requests answered
    assert conn.kazoo.chroot + path in watches_of(zk_hosts)
    conn.kazoo.create(path + "/child", makepath=True)
    wait_until(lambda: heard, 10, "the new child heard of")


def test_a_watch_that_could_not_be_set_in_time_is_not_set_later(
    make_client: MakeClient, persistent_watches: None, zk_hosts: str, zk_root: str
) -> None:
    """A watch asked for while the connection was down, whose caller gave
    up, reached the server on the reconnect: a watch nobody listened to."""
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="watch-in-time") as proxy:
        client = make_client(hosts=proxy.address, watch_mode="persistent", session_timeout=20.0)
        conn = client._ctx.conn
        path = f"{zk_root}/unwatched"
        kept = f"{zk_root}/kept"
        assert conn.watch_tree(kept, lambda change, p: None, None)  # re-added on the reconnect
        proxy.block("reset")
        wait_until(lambda: client.status is ClientState.SUSPENDED, 20, "suspended")
        with pytest.raises(OperationTimeout):
            conn.watch_tree(path, lambda change, p: None, time.monotonic() + 1.0)
        proxy.unblock()
        wait_until(lambda: client.status is ClientState.CONNECTED, 30, "connected again")
        conn.kazoo.exists(path)  # a round trip: what was queued is answered
        watched = watches_of(zk_hosts)
        assert conn.kazoo.chroot + kept in watched
        assert conn.kazoo.chroot + path not in watched


def test_a_subscription_closed_while_the_pump_reads_stops_cleanly(
    make_client: MakeClient, persistent_watches: None
) -> None:
    subscriber = make_client(watch_mode="persistent")
    handled: list[Any] = []
    sub = subscriber.subscribe("t", handled.append)
    other = Collector()
    subscriber.subscribe("u", other)
    publisher = make_client()
    publisher.publish_many("t", list(range(500)))
    sub.close()
    assert sub.closed
    publisher.publish("u", "still here")
    assert other.wait(1) == ["still here"]  # the pump serves the rest
    backlog = 500 - len(handled)
    again = Collector()
    subscriber.subscribe("t", again)
    assert len(again.wait(backlog)) == backlog  # what was not handled is still queued


def test_the_server_version_is_read_from_the_srvr_answer() -> None:
    answer = "Zookeeper version: 3.4.13-2d71af4dbe22557fda74f9a9b4309b15a7487f03, built on\n"
    assert parse_srvr_version(answer) == (3, 4, 13)
    assert parse_srvr_version("srvr is not executed because it is not in the whitelist.") is None


def test_watch_mode_auto_uses_what_the_server_has_and_persistent_demands_it(
    make_client: MakeClient, zk_hosts: str
) -> None:
    has = version_of(zk_hosts) >= (3, 6, 0)
    auto = make_client()
    got = Collector()
    auto.subscribe("t", got)
    make_client().publish("t", "either way")
    assert got.wait(1) == ["either way"]
    assert auto._pump.persistent is has  # decided before the pump's first read
    if has:
        demanding = make_client(watch_mode="persistent")
        demanding.subscribe("t", Collector())
        wait_until(lambda: demanding._pump.persistent, 10, "the watch set")
    else:
        with pytest.raises(ZooKeeperError, match=r"3\.6"):
            make_client(watch_mode="persistent")


def test_a_read_round_takes_names_in_turn_and_stays_within_its_window() -> None:
    wanted = [["a1", "a2", "a3"], [], ["c1"], ["d1", "d2"]]
    assert read_window(wanted, 1.0) == [
        (0, "a1"),
        (2, "c1"),
        (3, "d1"),
        (0, "a2"),
        (3, "d2"),
        (0, "a3"),
    ]
    per_node = READ_WINDOW_BYTES / 2
    assert read_window(wanted, per_node) == [(0, "a1"), (2, "c1")]
    assert read_window(wanted, READ_WINDOW_BYTES * 10) == [(0, "a1")]  # at least one
    assert read_window([[], []], 1.0) == []


def test_a_backlog_of_large_nodes_is_read_a_window_at_a_time(make_client: MakeClient) -> None:
    size = 50_000
    subscriber = make_client(client_id="large")
    subscriber.subscribe("t", durable=True).close()
    publisher = make_client()
    for _ in range(150):
        publisher.publish("t", "x" * size)
    kazoo = subscriber._ctx.conn.kazoo
    get_async = kazoo.get_async
    lock = threading.Lock()
    outstanding = peak = 0

    def counted(path: str, *args: Any, **kwargs: Any) -> Any:
        # Asked for and not yet taken by the pump. (Counting answers in a
        # rawlink callback lagged: kazoo runs those on another thread, after
        # the pump may already have sent its next round.)
        nonlocal outstanding, peak
        with lock:
            outstanding += 1
            peak = max(peak, outstanding)
        result = get_async(path, *args, **kwargs)
        get = result.get

        def taken(*get_args: Any, **get_kwargs: Any) -> Any:
            nonlocal outstanding
            try:
                return get(*get_args, **get_kwargs)
            finally:
                with lock:
                    outstanding -= 1

        result.get = taken
        return result

    kazoo.get_async = counted
    got = Collector()
    subscriber.subscribe("t", got)
    assert [len(p) for p in got.wait(150, 60)] == [size] * 150
    # at ~50 kB a node, 2 MiB is 41 nodes (the first round guesses 64 kB: 32)
    assert 1 < peak <= READ_WINDOW_BYTES // size + 1


def test_handled_nodes_arriving_one_by_one_share_delete_transactions(
    make_client: MakeClient, raw_zk: Any, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each delete is a write the whole ensemble logs and syncs: a handled
    node waits up to the linger for others to share its transaction (one
    transaction per linger at most), and is deleted soon after all the same."""
    got = Collector()
    subscriber = make_client(client_id="lingering")
    subscriber.subscribe("t", got)
    publisher = make_client()
    publisher.publish("t", -1)
    got.wait(1)
    wait_until(lambda: queue_entries(raw_zk, zk_root, "lingering", "t") == [])
    kazoo = subscriber._ctx.conn.kazoo
    sent: list[str] = []
    send = kazoo._call

    def counting(request: Any, async_object: Any) -> Any:
        sent.append(type(request).__name__)
        return send(request, async_object)

    monkeypatch.setattr(kazoo, "_call", counting)
    started = time.monotonic()
    for i in range(40):  # one at a time: each handled before the next arrives
        publisher.publish("t", i)
        time.sleep(0.01)
    got.wait(41)
    wait_until(lambda: queue_entries(raw_zk, zk_root, "lingering", "t") == [], timeout=5.0)
    elapsed = time.monotonic() - started
    transactions = sent.count("Transaction")
    # one delete transaction per node before the linger (40 here, in ~0.5 s)
    assert 1 <= transactions <= elapsed / DELETE_LINGER + 2, (transactions, elapsed)


def test_kazoos_own_watches_inside_a_persistently_watched_tree_still_fire(
    make_client: MakeClient, zk_root: str, raw_zk: Any, persistent_watches: None
) -> None:
    # the event hook serves the persistent watch and leaves kazoo's reader
    # out only for events no one-shot watch of kazoo's waits for
    subscriber = make_client(watch_mode="persistent")
    subscriber.subscribe("t", Collector())
    kazoo = subscriber._ctx.conn.kazoo
    node = f"{zk_root}/messages/{subscriber.client_id}/elsewhere"  # no subscription's
    fired: list[Any] = []
    kazoo.exists(node, watch=fired.append)
    raw_zk.create(node, b"")
    wait_until(lambda: fired, 10, "kazoo's exists watch")
    assert fired[0].type == "CREATED" and fired[0].path == node
    kazoo.get_children(node, watch=fired.append)
    raw_zk.delete(node)
    wait_until(lambda: len(fired) == 2, 10, "kazoo's child watch")
    assert fired[1].type == "DELETED"


@pytest.mark.parametrize("then", ["tried again", "closed"])
def test_handled_nodes_the_subscriber_may_not_delete_are_told_once_and_tried_again_slowly(
    make_client: MakeClient,
    raw_zk: Any,
    zk_root: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    then: str,
) -> None:
    """A segment whose ACL leaves deletes to another identity: the deletes
    of what was handled were sent again every half second, a request each,
    for as long as the ACL stayed, and nothing said why. They now wait
    between tries, and get a last one when the subscription closes."""
    from kazoo.security import ACL, Permissions, make_acl

    from zkpubsub.layout import Layout

    retry = 4.0 if then == "tried again" else 30.0  # 30 s in use
    monkeypatch.setattr(_pump, "REFUSED_RETRY", retry, raising=False)
    got = Collector()
    client = make_client(cleaner=False)
    subscription = client.subscribe("t", got)
    segment = Layout(zk_root).queue(client.client_id, "t") + "/s0000000000"
    no_delete = Permissions.ALL & ~Permissions.DELETE
    raw_zk.set_acls(segment, [ACL(no_delete, make_acl("world", "anyone").id)])
    publisher = make_client(cleaner=False)
    with caplog.at_level(logging.WARNING, logger="zkpubsub._pump"):
        for i in range(3):
            publisher.publish("t", i)
        got.wait(3, 10)
        wait_until(lambda: "may not delete handled nodes" in caplog.text, 10, "the refusal told")
        wait_until(lambda: len(client._pump._refused) == 3, 10, "every delete refused")
        requests = client._ctx.conn.requests
        time.sleep(1.5)  # three tries of four requests each, before
        assert client._ctx.conn.requests - requests <= 2
        assert len(raw_zk.get_children(segment)) == 3  # handled, still there
        assert caplog.text.count("may not delete handled nodes") == 1
    raw_zk.set_acls(segment, [make_acl("world", "anyone", all=True)])
    if then == "closed":  # the rights given back, they go with the subscription's end
        subscription.close()
        wait_until(lambda: raw_zk.get_children(segment) == [], 10, "the handled nodes deleted")
        return
    # the rights given back, they go at the next try
    publisher.publish("t", 3)  # its delete is refused no more; the others wait their turn
    wait_until(lambda: raw_zk.get_children(segment) == [], 20, "the handled nodes deleted")
    assert [m.payload for m in got.messages] == [0, 1, 2, 3]  # none delivered again
