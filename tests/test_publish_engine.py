"""The publish engine against a real server: topics do not wait on each
other, every publish keeps its own timeout, and pending publishes are
bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest
from kazoo.client import KazooClient

from zkpubsub import Client, ClientClosed, PublishReceipt, PublishTimeout
from zkpubsub._engine import PublishRequest, _Completions, _Watchdog
from zkpubsub.layout import Layout
from zkpubsub.testing.proxy import OP_MULTI, ZkClientProxy

from .helpers import Collector, wait_until

MakeClient = Callable[..., Client]

# A margin for the scheduler on a loaded machine, not a speed requirement.
MARGIN = 1.0


def test_a_topic_with_a_long_fan_out_does_not_hold_up_another_topic(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """A fan-out too large for one transaction goes out in many; meanwhile a
    publish to another topic is confirmed on its own lane."""
    layout = Layout(zk_root)
    fake = [f"far-{i}" for i in range(12)]
    for cid in fake:  # registered subscribers that never read (durable-style)
        raw_zk.ensure_path(layout.queue(cid, "big"))
        raw_zk.create(layout.subscriber("big", cid), b"durable", makepath=True)
    collector = Collector()
    make_client().subscribe("small", collector)
    publisher = make_client(serializer="raw")
    publisher.publish("small", b"warm-up")
    big = publisher.publish_async("big", b"x" * 900_000, timeout=120)
    small = publisher.publish("small", b"quick")
    assert small.subscribers == 1
    assert not big.done(), "the small topic waited for the big fan-out"
    receipt = big.result(120)
    assert receipt.subscribers == len(fake) and receipt.transactions >= len(fake)
    assert collector.wait(2) == [b"warm-up", b"quick"]


def test_each_publish_keeps_its_own_timeout_while_others_are_in_flight(
    make_cluster: Callable[..., Any],
) -> None:
    zk = make_cluster(1)
    with Client(zk.hosts) as subscriber, Client(zk.hosts) as publisher:
        got = {topic: Collector() for topic in ("a", "b")}
        for topic, collector in got.items():
            subscriber.subscribe(topic, collector)
            publisher.publish(topic, "warm-up")
        (node,) = zk.nodes
        node.pause()  # requests go out; no answer comes back
        try:
            first = publisher.publish_async("a", "first", timeout=25)
            lanes = publisher._engine._lanes  # the engine's own state: "first" is on the wire
            wait_until(lambda: "a" in lanes and lanes["a"].flight, 10, "the first publish sent")
            outcomes: dict[str, tuple[float, PublishTimeout]] = {}
            for topic, timeout in (("a", 2.0), ("b", 1.0)):
                start = time.monotonic()
                with pytest.raises(PublishTimeout) as info:
                    publisher.publish(topic, "late", timeout=timeout)
                outcomes[topic] = (time.monotonic() - start, info.value)
        finally:
            node.resume()
        took, error = outcomes["a"]
        assert 2.0 - 0.05 <= took <= 2.0 + MARGIN
        # queued behind the publish in flight on its topic: never sent
        assert error.sent is False and len(error.message_ids) == 1
        assert "not sent within 2s" in str(error) and "nothing was written" in str(error)
        took, error = outcomes["b"]
        assert 1.0 - 0.05 <= took <= 1.0 + MARGIN
        # its transaction was on the wire: the outcome is unknown
        assert error.sent is True and "outcome is unknown" in str(error)
        assert first.result(30).subscribers == 1
        publisher.publish("a", "after")
        assert got["a"].wait(3) == ["warm-up", "first", "after"]  # "late" was never written


def test_pending_publishes_are_bounded_and_a_full_client_waits_then_refuses(
    make_cluster: Callable[..., Any],
) -> None:
    zk = make_cluster(1)
    with Client(zk.hosts) as subscriber, Client(zk.hosts, max_pending=3) as publisher:
        collector = Collector()
        subscriber.subscribe("t", collector)
        publisher.publish("t", "warm-up")
        (node,) = zk.nodes
        node.pause()
        try:
            accepted = [publisher.publish_async("t", i, timeout=30) for i in range(3)]
            start = time.monotonic()
            with pytest.raises(PublishTimeout) as info:
                publisher.publish_async("t", "refused", timeout=0.5)
            assert time.monotonic() - start >= 0.45
            assert info.value.sent is False and "max_pending=3" in str(info.value)
            waited: list[Future[PublishReceipt]] = []
            waiter = threading.Thread(
                target=lambda: waited.append(publisher.publish_async("t", 3, timeout=30))
            )
            waiter.start()
            time.sleep(0.3)
            assert waiter.is_alive(), "a publish beyond max_pending did not wait for room"
        finally:
            node.resume()
        assert [f.result(30).subscribers for f in accepted] == [1, 1, 1]
        waiter.join(30)
        assert waited and waited[0].result(30).subscribers == 1
        assert collector.wait(5) == ["warm-up", 0, 1, 2, 3]


def test_future_callbacks_run_on_a_thread_of_the_client_and_may_publish(
    make_client: MakeClient,
) -> None:
    collector = Collector()
    make_client().subscribe("t", collector)
    publisher = make_client()
    threads: list[str] = []
    done = threading.Event()

    def chained(future: Future[PublishReceipt]) -> None:
        threads.append(threading.current_thread().name)
        publisher.publish("t", "from the callback")  # does not deadlock
        done.set()

    publisher.publish_async("t", "first").add_done_callback(chained)
    assert done.wait(20)
    assert threads[0].startswith("zkpubsub-futures-")
    assert collector.wait(2) == ["first", "from the callback"]


def _proxy_to(zk_hosts: str, name: str) -> ZkClientProxy:
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    return ZkClientProxy((host, int(port)), name=name)


def test_a_split_fan_out_that_times_out_counts_the_subscribers_it_reached(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """Before, ``PublishTimeout.reached`` was always 0, though the first of
    the fan-out's transactions had been confirmed and its subscribers got
    the message."""
    collectors = [Collector() for _ in range(6)]
    for collector in collectors:
        make_client().subscribe("t", collector)
    with _proxy_to(zk_hosts, "split") as proxy:
        publisher = make_client(
            hosts=proxy.address,
            session_timeout=20.0,
            max_message_bytes=3000,
            max_transaction_bytes=8000,  # two queues' copies a transaction
        )
        publisher.publish("t", "warm-up")
        # the second transaction of the fan-out never reaches the server
        sprung = proxy.lose_request(OP_MULTI, skip=1, then_block=True)
        with pytest.raises(PublishTimeout) as info:
            publisher.publish("t", "x" * 2500, timeout=3)
        assert sprung.is_set()
        (message_id,) = info.value.message_ids

        def delivered() -> int:
            return sum(1 for c in collectors if message_id in [m.id for m in c.messages])

        # the first transaction's copies are delivered (each to a client of
        # its own, in its own time); no more come
        assert 0 < info.value.reached < 6 and info.value.sent
        wait_until(lambda: delivered() == info.value.reached, 10, "the first transaction's copies")
        time.sleep(0.5)
        assert delivered() == info.value.reached
        proxy.unblock()


def test_a_publish_in_flight_when_the_client_closes_is_said_to_have_an_unknown_outcome(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """Its transaction was applied and the answer lost: before, ``close()``
    failed it with a bare ``ClientClosed`` (no ids, no ``sent``), what a
    publish that never left the client gets: retrying it made a duplicate."""
    collector = Collector()
    make_client().subscribe("t", collector)
    with _proxy_to(zk_hosts, "closing") as proxy:
        publisher = make_client(hosts=proxy.address, session_timeout=20.0, close_timeout=1.0)
        publisher.publish("t", "warm-up")
        sprung = proxy.lose_reply(OP_MULTI, then_block=True)
        future = publisher.publish_async("t", "applied", timeout=60)
        assert sprung.wait(5)
        time.sleep(0.5)
        publisher.close()
        error = future.exception(30)
        assert isinstance(error, PublishTimeout), repr(error)
        assert error.sent and len(error.message_ids) == 1
        assert "outcome is unknown" in str(error)
        assert collector.wait(2) == ["warm-up", "applied"]  # it had been applied
        proxy.unblock()


def test_a_publish_that_timed_out_in_flight_is_not_settled_again_by_close(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """Before, ``close()`` took every request still in a lane, finished or
    not: one the watchdog had already failed was announced again (observers
    counted it twice; an asyncio waiter was set twice, which dropped the
    rest of its batch), and ``close()`` said something was left."""
    make_client().subscribe("t", Collector())

    class Outcomes:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def published(self, topic: str, messages: int, seconds: float, outcome: str) -> None:
            self.seen.append(outcome)

    with _proxy_to(zk_hosts, "twice") as proxy:
        publisher = make_client(hosts=proxy.address, session_timeout=20.0, linger=0.5)
        publisher.publish("t", "warm-up")
        outcomes = Outcomes()
        publisher.add_observer(outcomes)
        sprung = proxy.lose_reply(OP_MULTI, then_block=True)
        # one batch (gathered for half a second), sent with the latest deadline
        short = publisher.publish_async("t", "short", timeout=2.0)
        long = publisher.publish_async("t", "long", timeout=60.0)
        assert sprung.wait(5)
        error = short.exception(10)  # the watchdog's; its transaction stays in flight
        assert isinstance(error, PublishTimeout) and error.sent
        assert not long.done()
        assert not publisher._engine.close(timeout=2.0, idle=1.0)  # "long" was left
        assert isinstance(long.exception(5), PublishTimeout)
        assert outcomes.seen == ["PublishTimeout"] * 2  # each once
        proxy.unblock()
        publisher.close()  # while its proxy still stands: no waiting out the closing timeout


def test_an_unexpected_error_fails_the_batch_it_hit_at_once(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the batch in flight was forgotten by the lane: its publish
    waited out its whole timeout and then said its outcome was unknown."""
    make_client().subscribe("t", Collector())
    publisher = make_client()
    publisher.publish("t", "warm-up")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(publisher._publisher, "fan_out", broken)
    future = publisher.publish_async("t", "hit", timeout=30)
    error = future.exception(10)
    assert isinstance(error, RuntimeError) and str(error) == "a bug"
    assert publisher.pending_publishes == 0
    monkeypatch.undo()
    assert publisher.publish("t", "after", timeout=10).subscribers == 1  # the lane lives on


def test_a_split_fan_out_refused_after_its_first_part_says_what_it_reached(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """Before, a later part's refusal was raised as it came (here
    ``NotAuthorized``), as if nothing had been written: a retry duplicated
    the message for every queue the first part had reached."""
    from kazoo.security import make_acl, make_digest_acl

    from zkpubsub import NotAuthorized, PartlyPublished

    layout = Layout(zk_root)
    fake = [f"far-{i}" for i in range(6)]
    for cid in fake:  # registered subscribers that never read (durable-style)
        raw_zk.ensure_path(layout.queue(cid, "t"))
        raw_zk.create(layout.subscriber("t", cid), b"durable", makepath=True)
    # the last queue (in the fan-out's order) belongs to someone else
    last = layout.queue(fake[-1], "t")
    readable = make_acl("world", "anyone", read=True)
    raw_zk.set_acls(last, [make_digest_acl("other", "pw", all=True), readable])
    publisher = make_client(serializer="raw", max_message_bytes=3000, max_transaction_bytes=8000)
    with pytest.raises(PartlyPublished) as info:
        publisher.publish("t", b"x" * 2500, timeout=20)
    error = info.value
    assert isinstance(error.cause, NotAuthorized)
    assert 0 < error.reached < len(fake) and len(error.message_ids) == 1
    written = [
        cid
        for cid in fake[:-1]
        if any(
            raw_zk.get_children(f"{layout.queue(cid, 't')}/{s}")
            for s in raw_zk.get_children(layout.queue(cid, "t"))
        )
    ]
    assert len(written) == error.reached


@pytest.mark.parametrize("name", ["a" * 200, "中" * 200])
def test_a_fan_outs_size_estimate_counts_bytes_not_characters(
    make_client: MakeClient, name: str
) -> None:
    """Before, paths were counted in characters: with names of three-byte
    characters a transaction's estimate fell short of what was sent (the
    server drops the connection on a transaction over its buffer)."""
    from kazoo.protocol.serialization import CheckVersion, Create

    from zkpubsub._fanout import Target
    from zkpubsub.layout import NodeKind

    client = make_client()
    publisher = client._publisher
    ctx = client._ctx
    queue = ctx.layout.queue(name, name)  # a subscriber named as the topic
    node = ctx.layout.segment(queue, 0) + "/m" + "f" * 32 + "-0000000000"
    data = b"x" * 600  # not inlined
    sent = len(CheckVersion(queue, 0).serialize()) + len(
        Create(node, data, ctx.acl.acl(NodeKind.MESSAGE), 2).serialize()
    )
    target = Target(subscriber=name, version=0, segment=0)
    estimate = publisher.target_cost(name, target, publisher.op_size(name, data), 1)
    assert estimate >= sent


def _far_request() -> PublishRequest:
    return PublishRequest("t", [], 0, 3600.0, time.monotonic() + 3600.0, False)


class _NoEngine:
    def abandon(self, request: PublishRequest) -> None:  # no deadline comes near
        raise AssertionError(request)


def test_the_deadline_watch_looks_for_finished_requests_once_its_heap_has_doubled() -> None:
    """With more than 1024 requests pending, the watch scanned its whole heap
    on every publish_async (seconds of a caller's time at 10,000 pending).
    Now a scan comes only once the heap has doubled since the last; when
    requests finish as they go, the heap stays at its first bound."""
    watchdog = _Watchdog(_NoEngine(), "test-deadlines")  # type: ignore[arg-type]
    try:
        for _ in range(20_000):  # all still pending
            watchdog.watch(_far_request())
        assert watchdog.compactions == 5  # at 1,024, 2,048, 4,096, 8,192 and 16,384
        assert len(watchdog._heap) == 20_000
    finally:
        watchdog.stop()
    watchdog = _Watchdog(_NoEngine(), "test-deadlines")  # type: ignore[arg-type]
    try:
        largest = 0
        for _ in range(5_000):  # each finished before the next comes
            request = _far_request()
            watchdog.watch(request)
            request.finished = True
            largest = max(largest, len(watchdog._heap))
        assert largest == 1024
    finally:
        watchdog.stop()


def test_a_future_settled_after_close_stopped_its_completions_is_still_resolved() -> None:
    """A lane or the watchdog settling a request just as close() gave up
    waiting handed its future over after the completion thread's stop: the
    future was never resolved, and a result() without a timeout hung."""
    completions = _Completions("test-futures")
    completions.stop(timeout=5.0)
    future: Future[PublishReceipt] = Future()
    completions.put([(future, None, ClientClosed("closed"))])
    assert isinstance(future.exception(timeout=5), ClientClosed)
