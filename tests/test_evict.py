"""Bounded queues with ``when_full="evict"``: a subscription whose queue
fills up is ended (deregistered, its queue removed) and told with a gap, by
its own client when it can act and by the cleaner when it cannot (a frozen
process)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from prometheus_client import CollectorRegistry

from zkpubsub import Client, Gap, Message, Subscription
from zkpubsub.backlog import EVICTED, Backlog, QueueRecord
from zkpubsub.layout import Layout
from zkpubsub.metrics import ClientMetrics
from zkpubsub.testing import expire_session
from zkpubsub.testing.proxy import TcpProxy

from .helpers import wait_until
from .procs import Child

MakeClient = Callable[..., Client]


def record_of(raw_zk: KazooClient, path: str) -> QueueRecord | None:
    data, _ = raw_zk.get(path)
    return QueueRecord.decode(data)


def test_a_stuck_subscriber_whose_queue_fills_up_is_evicted_and_told(
    make_client: MakeClient, raw_zk: KazooClient
) -> None:
    sub_client = make_client(client_id="stuck", cleaner=False)
    gaps: list[Gap] = []
    sub_client.add_gap_listener(gaps.append)
    release = threading.Event()
    entered = threading.Event()

    def stuck(msg: Message) -> None:
        entered.set()
        release.wait(60)

    sub = sub_client.subscribe("t", stuck, max_backlog=5, when_full="evict")
    healthy = make_client(client_id="healthy", cleaner=False).subscribe("t")
    pub = make_client(cleaner=False)
    layout = Layout(sub_client.config.root)
    queue = layout.queue("stuck", "t")
    receipts = [pub.publish("t", n) for n in range(12)]
    assert entered.wait(10)
    # the first five went into its queue; no later one
    assert [r.subscribers for r in receipts[:5]] == [2] * 5
    assert all(r.subscribers == 1 for r in receipts[5:]), receipts
    # the sixth found it full and marked it; later ones skipped it until
    # its client, seeing the mark, ended the subscription
    assert receipts[5].skipped == 1 and all(r.skipped <= 1 for r in receipts[6:])
    wait_until(lambda: sub.evicted, 10, "the eviction")
    assert sub.closed
    wait_until(lambda: any(g.reason == EVICTED for g in gaps), 10, "the gap")
    gap = next(g for g in gaps if g.reason == EVICTED)
    assert gap.topics == frozenset({"t"}) and gap.since <= gap.until
    # deregistered and its queue removed, while the handler is still stuck
    assert raw_zk.exists(layout.subscriber("t", "stuck")) is None
    wait_until(lambda: raw_zk.exists(queue) is None, 10, "the queue removed")
    assert not release.is_set()
    # the others go on; publishers no longer count it
    assert pub.publish("t", "after").subscribers == 1
    got = [healthy.get(timeout=10) for _ in range(13)]
    assert [m.payload for m in got if m is not None] == [*range(12), "after"]
    release.set()
    # the client goes on, and may subscribe again, afresh
    again = sub_client.subscribe("t", max_backlog=5, when_full="evict")
    assert pub.publish("t", "fresh").subscribers == 2
    msg = again.get(timeout=10)
    assert msg is not None and msg.payload == "fresh"
    assert not again.evicted


def test_a_drop_queue_is_never_marked_and_its_subscriber_stays(
    make_client: MakeClient, raw_zk: KazooClient
) -> None:
    sub_client = make_client(client_id="slow", cleaner=False)
    sub = sub_client.subscribe("t", max_backlog=3)  # when_full="drop"
    pub = make_client(cleaner=False)
    for n in range(8):
        pub.publish("t", n)
    record = record_of(raw_zk, Layout(pub.config.root).queue("slow", "t"))
    assert record is not None and not record.full
    assert [m.payload for m in (sub.get(timeout=10) for _ in range(3)) if m] == [0, 1, 2]
    assert not sub.evicted


def test_the_cleaner_evicts_a_frozen_subscriber_and_it_learns_when_it_wakes(
    make_client: MakeClient, raw_zk: KazooClient, zk_hosts: str, zk_root: str
) -> None:
    layout = Layout(zk_root)
    queue = layout.queue("frozen", "t")
    with Child(zk_hosts, zk_root, "frozen", "evict-subscriber", "t", "4") as child:
        child.expect("ready")
        janitor = make_client(client_id="janitor", cleaner=False)
        registry = CollectorRegistry()
        ClientMetrics(janitor, registry=registry)
        cleaner = janitor.start_cleaner(grace=60, interval=0.2)
        assert cleaner.wait_leader(20)
        os.kill(child.process.pid, signal.SIGSTOP)  # its session lives on (10 s)
        try:
            pub = make_client(cleaner=False)
            receipts = [pub.publish("t", n) for n in range(10)]
            assert sum(r.subscribers for r in receipts) == 4
            # marked full by a publisher; the frozen client cannot act
            wait_until(lambda: cleaner.stats().subscriptions_evicted == 1, 10, "the eviction")
            assert raw_zk.exists(layout.subscriber("t", "frozen")) is None
            record = record_of(raw_zk, queue)
            assert record is not None and record.evicting  # left for the client to find
            assert raw_zk.get_children(queue) == []  # its messages removed
            assert pub.publish("t", "after").subscribers == 0
            evicted = "zkpubsub_cleaner_subscriptions_evicted_total"
            assert registry.get_sample_value(evicted) == 1
        finally:
            os.kill(child.process.pid, signal.SIGCONT)
        # awake, it finds the subscription ended: it says so and deletes the queue
        assert child.expect("gap", 20) == f"gap {EVICTED}"
        child.expect("evicted", 20)
        wait_until(lambda: raw_zk.exists(queue) is None, 10, "the queue removed")
        assert raw_zk.exists(layout.client("frozen")) is not None  # the client lives on
        assert cleaner.stats().subscriptions_evicted == 1


def test_a_subscription_finding_an_evicted_queue_starts_afresh_with_a_gap(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    layout = Layout(zk_root)
    queue = layout.queue("back", "t")
    marked = QueueRecord(3, Backlog(2, 1000, "evict"), full=True)
    raw_zk.create(queue, marked.encode(), makepath=True)
    raw_zk.create(layout.segment(queue, 3), b"")
    raw_zk.create(layout.segment(queue, 3) + "/m000000000000-0000000000", b"old")
    client = make_client(client_id="back", cleaner=False)
    gaps: list[Gap] = []
    client.add_gap_listener(gaps.append)
    sub = client.subscribe("t", max_backlog=2, when_full="evict")
    wait_until(lambda: gaps, 10, "the gap")
    assert gaps[0].reason == EVICTED and gaps[0].topics == frozenset({"t"})
    record = record_of(raw_zk, queue)
    assert record is not None and not record.full
    assert (record.backlog.max_nodes, record.backlog.when_full) == (2, "evict")
    assert make_client(cleaner=False).publish("t", "new").subscribers == 1
    msg = sub.get(timeout=10)
    assert msg is not None and msg.payload == "new"  # nothing of the old backlog


@contextlib.contextmanager
def evicting_behind_a_proxy(
    make_client: MakeClient, zk_hosts: str, name: str
) -> Iterator[tuple[TcpProxy, Client, Subscription, Client, list[Gap]]]:
    """A client reached through a proxy, with an evicting subscription of
    five messages on "t", its gaps, and a publisher reaching the server."""
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name=name) as proxy:
        sub_client = make_client(hosts=proxy.address, session_timeout=20.0, cleaner=False)
        gaps: list[Gap] = []
        sub_client.add_gap_listener(gaps.append)
        try:
            sub = sub_client.subscribe("t", max_backlog=5, when_full="evict")
            yield proxy, sub_client, sub, make_client(cleaner=False), gaps
        finally:
            # closed while the proxy still stands: closed after it, the
            # client waits out its session to say goodbye
            proxy.unblock()
            sub_client.close()


def marked_full_while_cut_off(proxy: TcpProxy, sub_client: Client, pub: Client) -> None:
    proxy.block("reset")
    wait_until(lambda: not sub_client._ctx.conn.connected.is_set(), 10, "cut off")
    receipts = [pub.publish("t", n) for n in range(10)]
    assert sum(r.skipped for r in receipts) >= 1  # marked full


def test_a_queue_marked_full_while_its_client_was_cut_off_is_found_on_reconnect(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """Before, the guard armed again on reconnect only asked whether the
    queue was there: the mark's change event was lost with the connection,
    publishers skip a marked queue (no later change), and the subscription
    drained its queue and then heard nothing, never told."""
    with evicting_behind_a_proxy(make_client, zk_hosts, "marked-while-away") as (
        proxy,
        sub_client,
        sub,
        pub,
        gaps,
    ):
        marked_full_while_cut_off(proxy, sub_client, pub)
        proxy.unblock()
        wait_until(lambda: sub.evicted, 20, "the eviction found")
        wait_until(lambda: any(g.reason == EVICTED for g in gaps), 10, "the gap")


def test_a_queue_found_marked_full_while_registering_again_is_told_as_a_gap(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """A queue marked full after the new session's records were read is
    emptied by the registration (made afresh). Before, that went untold: no
    gap said the queued messages were dropped."""
    with evicting_behind_a_proxy(make_client, zk_hosts, "marked-while-registering") as (
        proxy,
        sub_client,
        sub,
        pub,
        gaps,
    ):
        creds = sub_client._session_credentials()
        assert creds is not None
        marked_full_while_cut_off(proxy, sub_client, pub)
        expire_session(creds, zk_hosts)
        # as if the records had been read just before the mark
        sub_client._session._evictions = lambda subs, deadline: {}  # type: ignore[method-assign]
        proxy.unblock()
        wait_until(lambda: any(g.reason == EVICTED for g in gaps), 20, "the gap")
        assert not sub.evicted  # the subscription goes on, on a fresh queue
        assert pub.publish("t", "after").subscribers == 1
        got = []  # what was read before its queue was emptied may come first
        while not got or got[-1] != "after":
            msg = sub.get(timeout=10)
            assert msg is not None, got
            got.append(msg.payload)


def test_an_emptied_queue_is_told_though_registering_again_was_tried_twice(
    make_client: MakeClient, zk_hosts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue is emptied by the first try: a retry (another topic's
    registration failed) finds a fresh one, and the gap was not told."""
    import zkpubsub.session as session_module
    from zkpubsub.errors import ConnectionLost

    real = session_module.register_subscription
    failed: list[str] = []

    def fails_once_for_u(ctx: Any, topic: str, *args: Any, **kwargs: Any) -> Any:
        if topic == "u" and not failed:
            failed.append(topic)
            raise ConnectionLost("as if the connection dropped here")
        return real(ctx, topic, *args, **kwargs)

    with evicting_behind_a_proxy(make_client, zk_hosts, "emptied-then-retried") as (
        proxy,
        sub_client,
        _,
        pub,
        gaps,
    ):
        sub_client.subscribe("u")  # registered after "t"
        creds = sub_client._session_credentials()
        assert creds is not None
        marked_full_while_cut_off(proxy, sub_client, pub)
        expire_session(creds, zk_hosts)
        sub_client._session._evictions = lambda subs, deadline: {}  # type: ignore[method-assign]
        monkeypatch.setattr(session_module, "register_subscription", fails_once_for_u)
        proxy.unblock()
        wait_until(lambda: any(g.reason == EVICTED for g in gaps), 20, "the gap")
        assert failed == ["u"]
