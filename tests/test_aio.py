"""The asyncio API against a real server: the threaded engine's guarantees,
user code on the loop, nothing blocking the loop, and a defined outcome
for every cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from kazoo.client import KazooClient

from zkpubsub import (
    AlreadySubscribed,
    Client,
    ClientClosed,
    ClientState,
    ConnectTimeout,
    Gap,
    ItemFailed,
    Message,
    NoSubscribers,
    PublishReceipt,
    PublishTimeout,
    QueueFull,
)
from zkpubsub.aio import AsyncClient, AsyncItem, WrongLoop
from zkpubsub.aio import client as aio_client
from zkpubsub.aio._bridge import Bridge
from zkpubsub.aio.subscription import LoopDispatcher
from zkpubsub.layout import Layout
from zkpubsub.testing import expire_session, free_ports, queue_entries
from zkpubsub.testing.proxy import TcpProxy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

Connect = Callable[..., Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def connect(zk_hosts: str, zk_root: str) -> AsyncIterator[Connect]:
    """``await connect(**options)``: async clients on the test's root, closed at the end."""
    made: list[AsyncClient] = []

    async def make(**options: Any) -> AsyncClient:
        options.setdefault("root", zk_root)
        options.setdefault("session_timeout", 4.0)
        client = await AsyncClient.connect(options.pop("hosts", zk_hosts), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def eventually(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.02)


class Heartbeat:
    """Ticks on the loop; a loop blocked by a call shows as a long gap."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            self.ticks += 1
            last = now

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_an_async_handler_runs_on_the_loop_and_gets_what_was_published(
    connect: Connect,
) -> None:
    loop_thread = threading.get_ident()
    got: list[tuple[Any, int]] = []

    async def handler(message: Message) -> None:
        await asyncio.sleep(0)
        got.append((message.payload, threading.get_ident()))

    subscriber = await connect()
    await subscriber.subscribe("orders", handler)
    publisher = await connect()
    receipt = await publisher.publish("orders", {"id": 1})
    assert isinstance(receipt, PublishReceipt) and receipt.subscribers == 1
    many = await publisher.publish_many("orders", [{"id": 2}, {"id": 3}])
    assert len(many.message_ids) == 2
    await eventually(lambda: len(got) == 3, what="three messages handled")
    assert [payload for payload, _ in got] == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert {thread for _, thread in got} == {loop_thread}


async def test_a_message_is_deleted_only_after_its_coroutine_returned(
    connect: Connect, raw_zk: KazooClient, zk_root: str
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(message: Message) -> None:
        started.set()
        await release.wait()

    subscriber = await connect()
    await subscriber.subscribe("jobs", slow)
    cid = subscriber.client_id
    await (await connect()).publish("jobs", "work")
    await asyncio.wait_for(started.wait(), 20)
    await asyncio.sleep(0.5)  # the pump would have deleted a handled node by now
    assert len(queue_entries(raw_zk, zk_root, cid, "jobs") or []) == 1
    release.set()
    await eventually(
        lambda: queue_entries(raw_zk, zk_root, cid, "jobs") == [], what="the node deleted"
    )


async def test_a_cancelled_handler_is_a_failed_attempt_and_the_message_comes_again(
    connect: Connect,
) -> None:
    attempts: list[int] = []
    errors: list[BaseException] = []

    async def handler(message: Message) -> None:
        attempts.append(message.attempt)
        if message.attempt == 1:
            waited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.05, waited.cancel)
            await waited  # cancelled by somebody else: the handler's task was not

    async def on_error(error: BaseException, message: Message | None) -> None:
        errors.append(error)

    subscriber = await connect()
    sub = await subscriber.subscribe("t", handler, on_error=on_error, retry_delay=0.05)
    await (await connect()).publish("t", "x")
    await eventually(lambda: attempts == [1, 2] and sub.delivered == 1, what="a second attempt")
    assert len(errors) == 1 and "Cancelled" in type(errors[0]).__name__
    assert sub.stats().errors == 1 and sub.stats().dropped == 0


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 cannot tell a cancelled task")
def test_asyncio_run_ends_while_a_handler_awaits_and_its_message_stays_queued(
    zk_hosts: str, zk_root: str
) -> None:
    """Leaving ``asyncio.run`` without closing the client cancels every
    task: the handler's task took that for a failed attempt, tried again and
    waited for the next message, so ``asyncio.run`` never returned."""
    calls: list[int] = []
    made: list[AsyncClient] = []
    ended: list[BaseException | None] = []

    async def main() -> None:
        client = await AsyncClient.connect(
            zk_hosts, root=zk_root, client_id="left-open", session_timeout=4.0
        )
        made.append(client)
        started = asyncio.Event()

        async def handler(message: Message) -> None:
            calls.append(message.attempt)
            started.set()
            await asyncio.sleep(30)

        await client.subscribe("t", handler, durable=True)
        await client.publish("t", "x")
        await asyncio.wait_for(started.wait(), 20)
        raise RuntimeError("the application's own error")

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            ended.append(exc)
        else:
            ended.append(None)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(15)
    try:
        assert not runner.is_alive(), "asyncio.run did not return"
        assert len(ended) == 1 and isinstance(ended[0], RuntimeError), ended
        assert calls == [1]  # not tried again after the shutdown's cancel
    finally:
        for client in made:
            client.sync.close()
    # the message was not acked: the durable queue hands it out again
    with Client(zk_hosts, root=zk_root, client_id="left-open", session_timeout=4.0) as again:
        got: list[Message] = []
        again.subscribe("t", got.append, durable=True)
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [m.payload for m in got] == ["x"]


async def test_a_backlog_is_handled_on_the_loop_without_a_crossing_per_message(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscriber = await connect(client_id="runs")
    await (await subscriber.subscribe("t", durable=True)).close()
    await (await connect()).publish_many("t", list(range(300)))
    crossings = wakeups = 0
    call, notify = Bridge.call, LoopDispatcher._notify

    def counted(self: Bridge, *args: Any, **kwargs: Any) -> Any:
        nonlocal crossings
        crossings += 1
        return call(self, *args, **kwargs)

    def woken(self: LoopDispatcher) -> None:
        nonlocal wakeups
        wakeups += 1
        notify(self)

    monkeypatch.setattr(Bridge, "call", counted)
    monkeypatch.setattr(LoopDispatcher, "_notify", woken)
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    async def handler(message: Message) -> None:
        seen.append((message.payload, message.attempt))
        if message.payload == 100 and message.attempt == 1:
            raise ValueError("once")

    sub = await subscriber.subscribe(
        "t", handler, on_error=lambda e, m: errors.append(e), retry_delay=0.05, prefetch=300
    )
    await eventually(lambda: sub.delivered == 300, what="the backlog handled")
    assert [p for p, _ in seen] == [*range(101), *range(100, 300)]  # in order, 100 twice
    assert [a for p, a in seen if p == 100] == [1, 2]
    assert len(errors) == 1 and str(errors[0]) == "once"
    assert sub.stats().errors == 1 and sub.stats().dropped == 0
    assert crossings == 0  # no thread waits on the loop for a handler
    assert wakeups < 300 // 4  # the loop is woken per read, not per message


async def test_closing_past_a_stuck_handler_cancels_it_and_its_message_stays_queued(
    connect: Connect, raw_zk: KazooClient, zk_root: str
) -> None:
    started = asyncio.Event()
    cancelled: list[int] = []

    async def stuck(message: Message) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(message.attempt)
            raise

    subscriber = await connect(client_id="stuck")
    sub = await subscriber.subscribe("t", stuck, durable=True)
    await (await connect()).publish("t", "again")
    await asyncio.wait_for(started.wait(), 20)
    began = time.monotonic()
    await asyncio.wait_for(sub.close(timeout=0.3), 20)
    assert time.monotonic() - began < 10
    assert cancelled == [1]
    assert sub.stats().errors == 0 and sub.stats().dropped == 0  # not a failed attempt
    assert len(queue_entries(raw_zk, zk_root, "stuck", "t") or []) == 1
    got: list[Any] = []
    await subscriber.subscribe("t", lambda m: got.append((m.payload, m.attempt)))
    await eventually(lambda: got, what="the message delivered again")
    assert got == [("again", 1)]


async def test_foreign_nodes_go_to_on_error_on_the_loop_and_never_block(
    connect: Connect, raw_zk: KazooClient, zk_root: str
) -> None:
    loop_thread = threading.get_ident()
    errors: list[tuple[BaseException, int]] = []
    got: list[str] = []

    async def handler(message: Message) -> None:
        got.append(message.payload)

    async def on_error(error: BaseException, message: Message | None) -> None:
        errors.append((error, threading.get_ident()))

    subscriber = await connect()
    await subscriber.subscribe("t", handler, on_error=on_error)
    publisher = await connect()
    await publisher.publish("t", "before")
    queue = Layout(zk_root).queue(subscriber.client_id, "t")
    raw_zk.create(f"{queue}/not-ours", b"foreign")
    await publisher.publish("t", "after")
    await eventually(lambda: got == ["before", "after"] and errors, what="both handled")
    assert [type(e).__name__ for e, _ in errors] == ["DecodeError"]
    assert {thread for _, thread in errors} == {loop_thread}
    await eventually(
        lambda: raw_zk.get_children(queue) == ["s0000000000"], what="the foreign node deleted"
    )


async def test_get_and_async_for_hand_messages_out_in_order_and_a_cancelled_get_loses_nothing(
    connect: Connect,
) -> None:
    subscriber = await connect()
    sub = await subscriber.subscribe("feed")
    assert await sub.get(timeout=0.1) is None
    waiting = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0.1)
    waiting.cancel()  # nothing had come for it yet
    publisher = await connect()
    for i in range(5):
        await publisher.publish("feed", i)
    first = await sub.get(timeout=20)
    assert first is not None and first.payload == 0
    seen = []
    async for message in sub:
        seen.append(message.payload)
        if message.payload == 4:
            break
    assert seen == [1, 2, 3, 4]
    ender = asyncio.ensure_future(sub.get())
    await sub.close()
    assert await asyncio.wait_for(ender, 20) is None  # close ends a waiting get
    assert sub.stats().errors == 0


async def test_a_cancelled_subscribe_never_calls_its_handler_and_takes_nothing(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the handler's task started as the subscription was made,
    before the subscribe awaiting it returned: cancelled, the caller was
    told there was no subscription while its handler was handed, and had
    deleted, the queue's messages until the close came."""
    first = await connect(client_id="cancelled")
    await (await first.subscribe("kept", durable=True)).close()
    publisher = await connect()
    for n in range(3):
        await publisher.publish("kept", n)
    await first.close()
    real = aio_client._close_unwanted
    closed = threading.Event()

    def slow_close(job: Any) -> None:
        time.sleep(1.0)  # a close that comes late (its thread busy)
        real(job)
        closed.set()

    monkeypatch.setattr(aio_client, "_close_unwanted", slow_close)
    again = await connect(client_id="cancelled")
    handled: list[Any] = []
    made = asyncio.ensure_future(
        again.subscribe("kept", lambda m: handled.append(m.payload), durable=True)
    )
    await asyncio.sleep(0)
    made.cancel()
    with pytest.raises(asyncio.CancelledError):
        await made
    for _ in range(200):  # made, then closed late
        if closed.is_set():
            break
        await asyncio.sleep(0.1)
    assert closed.is_set() and not again.sync.subscriptions()
    assert handled == []
    monkeypatch.undo()
    got: list[Any] = []
    await again.subscribe("kept", lambda m: got.append(m.payload), durable=True)
    for _ in range(100):
        if len(got) == 3:
            break
        await asyncio.sleep(0.1)
    assert got == [0, 1, 2]  # nothing was taken


async def test_a_message_not_taken_before_close_stays_queued_for_the_next_subscriber(
    connect: Connect,
) -> None:
    subscriber = await connect(client_id="keeper")
    sub = await subscriber.subscribe("kept")
    publisher = await connect()
    await publisher.publish("kept", "a")
    await publisher.publish("kept", "b")
    message = await sub.get(timeout=20)
    assert message is not None and message.payload == "a"
    await asyncio.sleep(0.3)  # "b" is offered by now, but never taken
    await sub.close()  # acknowledges "a", keeps "b"
    again = await subscriber.subscribe("kept")
    message = await again.get(timeout=20)
    assert message is not None and message.payload == "b"
    assert sub.stats().errors == 0


async def test_a_cancelled_publish_is_still_written(connect: Connect) -> None:
    subscriber = await connect()
    sub = await subscriber.subscribe("t")
    publisher = await connect()
    task = asyncio.ensure_future(publisher.publish("t", "sent anyway"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    message = await sub.get(timeout=20)
    assert message is not None and message.payload == "sent anyway"
    future = publisher.publish_nowait("t", "later")
    receipt = await future
    assert receipt.subscribers == 1


async def test_calls_cancelled_before_they_first_ran_still_happen(connect: Connect) -> None:
    """A publish, put or ack was a coroutine that started only when it first
    ran: a task cancelled before that (``wait_for(..., 0)``, a cancel right
    after ``ensure_future``) never sent it."""
    sub = await (await connect()).subscribe("t")
    publisher = await connect()
    queue = publisher.queue("q")

    def cancelled_at_once(started: Awaitable[Any]) -> None:
        assert asyncio.ensure_future(started).cancel()

    cancelled_at_once(publisher.publish("t", "one"))
    cancelled_at_once(publisher.publish_many("t", ["two", "three"]))
    cancelled_at_once(queue.put("job"))
    got = [await sub.get(timeout=20) for _ in range(3)]
    assert [m.payload for m in got if m is not None] == ["one", "two", "three"]
    item = await queue.reserve(timeout=20)
    assert item is not None and item.payload == "job"
    cancelled_at_once(item.ack())

    async def acked() -> bool:
        stats = await queue.stats(timeout=10)
        return (stats.ready, stats.reserved) == (0, 0)

    deadline = time.monotonic() + 20
    while not await acked():
        assert time.monotonic() < deadline, "the ack was not sent"
        await asyncio.sleep(0.1)
    closing = await connect()
    cancelled_at_once(closing.close())
    await eventually(lambda: closing.status == ClientState.CLOSED, what="closed")


async def test_a_publish_that_fails_raises_its_error_in_the_awaiting_task_by_its_timeout(
    connect: Connect, zk_hosts: str
) -> None:
    publisher = await connect()
    with pytest.raises(NoSubscribers):
        await publisher.publish("nobody", "x", require_subscribers=True)
    with pytest.raises(NoSubscribers):
        await publisher.publish_nowait("nobody", "x", require_subscribers=True)
    host, port = zk_hosts.split(",")[0].split(":")
    with TcpProxy((host, int(port)), name="aio-publish") as proxy:
        cut_off = await connect(hosts=proxy.address, session_timeout=10.0)
        await cut_off.publish("t", "before")
        proxy.block("drop")  # a partition: nothing answers, nothing is refused
        async with Heartbeat() as beat:
            started = time.monotonic()
            with pytest.raises(PublishTimeout) as info:
                await cut_off.publish("t", "during", timeout=1.5)
            took = time.monotonic() - started
        assert 1.4 < took < 3.0, took
        assert "1.5s" in str(info.value)
        assert beat.longest < 0.5, "the publish blocked the loop"
        proxy.unblock()


async def test_connecting_subscribing_and_closing_leave_the_loop_free(
    zk_hosts: str, zk_root: str
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    async with Heartbeat() as beat:
        with pytest.raises(ConnectTimeout):
            await AsyncClient.connect(f"127.0.0.1:{port}", root=zk_root, connect_timeout=1.0)
    assert beat.ticks > 30 and beat.longest < 0.5
    async with Heartbeat() as beat, AsyncClient.connect(zk_hosts, root=zk_root) as client:
        sub = await client.subscribe("t", lambda m: None)
        await client.publish("t", 1)
        await sub.close()
    assert beat.longest < 0.5
    assert client.status == ClientState.CLOSED


async def test_state_and_gap_listeners_run_on_the_loop(connect: Connect) -> None:
    loop_thread = threading.get_ident()
    states: list[tuple[ClientState, int]] = []
    gaps: list[tuple[Gap, int]] = []

    async def on_gap(gap: Gap) -> None:
        gaps.append((gap, threading.get_ident()))

    client = await connect()
    client.add_listener(lambda state: states.append((state, threading.get_ident())))
    client.add_gap_listener(on_gap)
    await client.subscribe("news", lambda m: None)
    await asyncio.to_thread(expire_session, client.sync)
    await eventually(lambda: gaps, what="a gap notice")
    assert gaps[0][0].topics == frozenset({"news"}) and gaps[0][1] == loop_thread
    assert ClientState.LOST in [s for s, _ in states]
    assert {thread for _, thread in states} == {loop_thread}


async def test_a_listener_given_as_a_bound_method_is_removed_as_in_the_threaded_client(
    connect: Connect,
) -> None:
    """Listeners were found again by id(): a bound method is a new object
    at each attribute read, so removing one did nothing."""

    class Watcher:
        def __init__(self) -> None:
            self.seen: list[Any] = []

        def on_state(self, state: ClientState) -> None:
            self.seen.append(state)

        def on_gap(self, gap: Gap) -> None:
            self.seen.append(gap)

    removed, kept = Watcher(), Watcher()
    client = await connect()
    for watcher in (removed, kept, kept):  # added twice: called twice, removed once
        client.add_listener(watcher.on_state)
        client.add_gap_listener(watcher.on_gap)
    client.remove_listener(removed.on_state)
    client.remove_gap_listener(removed.on_gap)
    client.remove_listener(kept.on_state)
    await client.subscribe("news", lambda m: None)
    await asyncio.to_thread(expire_session, client.sync)
    await eventually(lambda: any(isinstance(x, Gap) for x in kept.seen), what="a gap notice")
    await eventually(lambda: ClientState.LOST in kept.seen, what="the state")
    await asyncio.sleep(0.2)  # anything for the removed one would be delivered by now
    assert removed.seen == []
    assert kept.seen.count(ClientState.LOST) == 1
    assert len([x for x in kept.seen if isinstance(x, Gap)]) == 2


async def test_an_async_subscription_tells_its_bound_eviction_and_backlog(
    connect: Connect,
) -> None:
    """AsyncSubscription had no bound, evicted or backlog() (the threaded
    subscription's), though the asyncio client takes when_full="evict"."""
    client = await connect()
    sub = await client.subscribe("t", max_backlog=50, when_full="evict")
    assert (sub.bound.max_nodes, sub.bound.when_full) == (50, "evict")
    assert sub.evicted is False
    publisher = await connect()
    for n in range(2):
        await publisher.publish("t", n)
    assert await sub.backlog(timeout=10) == 2  # read ahead, not handled: still there


async def test_an_async_consumer_stops_extending_after_max_lease(connect: Connect) -> None:
    """The asyncio consume took no max_lease: a stuck handler's leases were
    extended for an hour."""
    client = await connect()
    queue = client.queue("stuck", visibility_timeout=0.5)
    await queue.put("x")
    started = asyncio.Event()
    release = asyncio.Event()

    async def stuck(item: AsyncItem) -> None:
        started.set()
        await release.wait()

    consumer = queue.consume(stuck, max_lease=1.0)
    await asyncio.wait_for(started.wait(), 10)
    rival = (await connect()).queue("stuck", visibility_timeout=30)
    taken = await rival.reserve(10)
    assert taken is not None and taken.attempts == 2
    release.set()
    await eventually(lambda: consumer.stats().lost == 1, what="the stuck handler's ack refused")
    await consumer.stop()
    await taken.ack()


async def test_the_work_queue_puts_reserves_acks_and_answers_tickets(connect: Connect) -> None:
    producer = await connect()
    queue = producer.queue("thumbs")
    ticket = await queue.put({"image": 7}, want_result=True)
    worker = (await connect()).queue("thumbs")
    item = await worker.reserve(timeout=20)
    assert item is not None and item.payload == {"image": 7} and item.attempts == 1
    assert item.lease is None and item.lease_left() is None  # no visibility_timeout
    await item.ack(result="done")
    assert await ticket.wait(timeout=20) == "done"
    await queue.put_many([1, 2])
    async with await worker.reserve(timeout=20) as held:  # type: ignore[union-attr]
        assert held.payload == 1
    with pytest.raises(ValueError):
        async with await worker.reserve(timeout=20) as failing:  # type: ignore[union-attr]
            raise ValueError("no")
    assert failing.finished  # released (with the error), not acked
    again = await worker.reserve(timeout=20)
    assert again is not None and again.payload == 2 and again.attempts == 2
    await again.ack()
    stats = await queue.stats(timeout=10)
    assert (stats.ready, stats.reserved) == (0, 0)
    assert await worker.reserve(timeout=0.2) is None
    leased = (await connect()).queue("leased", visibility_timeout=30)
    await leased.put("x")
    held_for = await leased.reserve(timeout=20)
    assert held_for is not None and held_for.lease == 30
    await held_for.ack()


def test_calls_cancelled_before_they_ran_leave_no_unread_error_behind(
    zk_hosts: str, zk_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A call that starts when called and fails, cancelled before its task
    first ran, left its error unread: asyncio logged it with a traceback."""
    import gc

    async def calls() -> None:
        async with AsyncClient.connect(zk_hosts, root=zk_root) as client:
            queue = client.queue("unread")
            await queue.put("job")
            item = await queue.reserve(timeout=20)
            assert item is not None
            await item.release()
            for failing in (
                item.ack(),  # released already: ValueError
                client.publish("nobody", 1, require_subscribers=True),
                client.publish_many("t", []),
                queue.put_many([]),
            ):
                asyncio.ensure_future(failing).cancel()
            await asyncio.sleep(1)
        gc.collect()

    asyncio.run(calls())
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_a_ticket_of_a_dead_item_raises_and_leaves_no_unread_error_behind(
    zk_hosts: str, zk_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The error reached the waiting task, and asyncio logged it again, with
    a traceback, as a future's exception never retrieved (three times here)."""
    import gc

    async def waits() -> None:
        async with AsyncClient.connect(zk_hosts, root=zk_root) as client:
            queue = client.queue("doomed", max_attempts=1)
            for n in range(3):
                ticket = await queue.put(n, want_result=True)
                item = await queue.reserve(timeout=20)
                assert item is not None
                await item.release("broken")
                with pytest.raises(ItemFailed, match="broken"):
                    await ticket.wait(timeout=20)
        gc.collect()

    asyncio.run(waits())
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_cancelled_reserve_gives_back_an_item_it_took(connect: Connect) -> None:
    worker = (await connect()).queue("q")
    producer = (await connect()).queue("q")
    for _ in range(5):
        task = asyncio.ensure_future(worker.reserve())
        await asyncio.sleep(0.1)
        await producer.put("job")
        # the reserve under way may take "job" after this; it may also have
        # returned it already (the watch can beat the put's answer): then
        # it was not cancelled, and the round is taken again
        if task.cancel():
            break
        item = await task
        assert item is not None and item.payload == "job"
        await item.ack()
    else:
        pytest.fail("every reserve had returned before it could be cancelled")
    with pytest.raises(asyncio.CancelledError):
        await task
    other = (await connect()).queue("q")
    item = await other.reserve(timeout=20)
    assert item is not None and item.payload == "job"
    await item.ack()


async def test_a_cancelled_ticket_wait_keeps_the_result_for_the_next_wait(
    connect: Connect,
) -> None:
    queue = (await connect()).queue("results")
    ticket = await queue.put("job", want_result=True)
    item = await (await connect()).queue("results").reserve(timeout=20)
    assert item is not None
    waiting = asyncio.ensure_future(ticket.wait())
    await asyncio.sleep(0.2)
    waiting.cancel()  # its read of the result, under way, may now find it
    await item.ack(result=42)
    assert await ticket.wait(timeout=20) == 42
    assert waiting.cancelled()


async def test_async_consume_runs_the_handler_on_the_loop_and_releases_on_failure(
    connect: Connect,
) -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    failed: list[str] = []

    async def handler(item: AsyncItem) -> Any:
        threads.add(threading.get_ident())
        await asyncio.sleep(0)
        if item.payload == "bad" and item.attempts == 1:
            raise RuntimeError("first try fails")
        return f"did {item.payload}"

    queue = (await connect()).queue("work")
    tickets = [await queue.put(p, want_result=True) for p in ("a", "bad", "c")]
    worker = (await connect()).queue("work")
    consumer = worker.consume(
        handler, workers=2, on_error=lambda exc, item: failed.append(item.payload)
    )
    async with consumer:
        results = [await t.wait(timeout=30) for t in tickets]
    assert results == ["did a", "did bad", "did c"]
    assert threads == {loop_thread}
    assert failed == ["bad"]
    assert consumer.stats().acked == 3 and consumer.stats().released == 1


async def test_stop_past_its_timeout_ends_a_consumer_that_took_items_ahead(
    connect: Connect,
) -> None:
    """With prefetch above one, stop(timeout) cancelled the running handler
    and returned while the worker went on to the next item taken ahead: its
    handler was never cancelled and the consumer kept running."""
    begun: list[int] = []

    async def slow(item: AsyncItem) -> None:
        begun.append(item.payload)
        await asyncio.sleep(20)

    queue = (await connect()).queue("slow")
    await queue.put_many([1, 2, 3])
    consumer = (await connect()).queue("slow").consume(slow, prefetch=3)
    await eventually(lambda: begun == [1], what="the first handler running")
    await consumer.stop(timeout=0.5)
    assert not consumer.running
    assert begun == [1] and consumer.stats().released == 3
    stats = await queue.stats(timeout=10)
    assert (stats.ready, stats.reserved) == (3, 0)


async def test_a_cancelled_stop_still_ends_the_consumer(connect: Connect) -> None:
    """stop() was three steps awaited in turn: cancelled in the first, the
    workers were never closed (they stayed registered)."""
    begun: list[str] = []

    async def slow(item: AsyncItem) -> None:
        begun.append(item.payload)
        await asyncio.sleep(1)

    queue = (await connect()).queue("stopping")
    await queue.put("job")
    consumer = (await connect()).queue("stopping").consume(slow)
    # the handler runs: the stop waits for it, longer than the cancelled wait
    await eventually(lambda: begun == ["job"], what="the handler running")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(consumer.stop(timeout=5), 0.05)

    async def unregistered() -> bool:
        return (await queue.stats(timeout=10)).workers == 0

    deadline = time.monotonic() + 20
    while not await unregistered():
        assert time.monotonic() < deadline, "the workers were not closed"
        await asyncio.sleep(0.1)
    assert not consumer.running
    await consumer.stop()  # the first one's end


async def test_closing_what_a_closed_client_made_is_quiet(connect: Connect) -> None:
    """Each close is idempotent, but after the client's close they raised
    ClientClosed (so did an ``async with`` around them on its way out).
    (``unsubscribe`` still does, as the threaded one: it could not do it.)"""
    client = await connect(client_id="closes")
    plain, durable = await client.subscribe("t"), await client.subscribe("d", durable=True)
    queue = client.queue("q")
    consumer = queue.consume(lambda item: None)
    await client.close()
    await plain.close()
    await durable.close()
    await consumer.stop(timeout=1)
    await queue.close()
    assert not consumer.running


async def test_an_async_client_serves_inside_a_running_uvicorn_app(
    zk_hosts: str, zk_root: str
) -> None:
    import httpx
    import uvicorn
    from fastapi import FastAPI

    seen: list[Any] = []

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncClient.connect(zk_hosts, root=zk_root) as client:

            async def remember(message: Message) -> None:
                seen.append(message.payload)

            await client.subscribe("events", remember)
            app.state.bus = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/publish/{value}")
    async def publish(value: str) -> dict[str, int]:
        receipt = await app.state.bus.publish("events", value)
        return {"subscribers": receipt.subscribers}

    @app.get("/seen")
    async def get_seen() -> list[Any]:
        return seen

    (port,) = free_ports(1)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.ensure_future(server.serve())
    try:
        await eventually(lambda: server.started, what="uvicorn started")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answer = await http.post("/publish/hello")
            assert answer.json() == {"subscribers": 1}
            for _ in range(200):
                if (await http.get("/seen")).json() == ["hello"]:
                    break
                await asyncio.sleep(0.05)
            assert (await http.get("/seen")).json() == ["hello"]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)


async def test_a_cancelled_subscribe_leaves_no_subscription_behind(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await connect()
    publisher = await connect()
    # the subscribe goes on on its thread; what it made is closed once made
    unwanted_closed = threading.Event()
    close_unwanted = aio_client._close_unwanted

    def watched(job: Any) -> None:
        close_unwanted(job)
        unwanted_closed.set()

    monkeypatch.setattr(aio_client, "_close_unwanted", watched)
    task = asyncio.ensure_future(client.subscribe("orders", lambda m: None))
    await asyncio.sleep(0)  # under way on a thread
    assert task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(unwanted_closed.wait, 20), "what it made was not closed"
    assert not client.sync.subscriptions()
    receipt = await publisher.publish("orders", "after the cancel")
    assert receipt.subscribers == 0
    deadline = time.monotonic() + 20
    while True:  # and the topic is free again once that close is done
        try:
            sub = await client.subscribe("orders")
            break
        except AlreadySubscribed:
            assert time.monotonic() < deadline, "the cancelled subscription never let go"
            await asyncio.sleep(0.05)
    assert (await publisher.publish("orders", 1)).subscribers == 1
    got = await sub.get(timeout=10)
    assert got is not None and got.payload == 1


async def test_a_subscribe_cancelled_once_made_is_closed_off_the_loop(connect: Connect) -> None:
    """Before, a cancel that came after the subscription was made, and
    before the loop heard of it, closed it on the loop: the loop froze for
    the close's whole timeout (the close waited for its dispatcher, which
    only the loop could end)."""
    client = await connect(close_timeout=3.0)
    task = asyncio.ensure_future(client.subscribe("made", lambda m: None))
    await asyncio.sleep(0)  # under way on a thread
    deadline = time.monotonic() + 20
    while not client.sync.subscriptions():  # made, the loop not told yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.5)  # (the loop still held) its thread is done with it
    started = time.monotonic()
    assert task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2.0  # the loop was not held
    deadline = time.monotonic() + 20
    while client.sync.subscriptions():  # closed meanwhile, on a thread
        assert time.monotonic() < deadline, "what it made was not closed"
        await asyncio.sleep(0.05)


async def test_publishes_waiting_for_room_keep_their_order(connect: Connect, zk_hosts: str) -> None:
    """Before, each publish that found max_pending unfinished waited for room
    on a thread of its own: when room came, they raced for it, and the
    messages of one task were written out of order."""
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    subscriber = await connect()
    sub = await subscriber.subscribe("ordered")
    with TcpProxy((host, int(port)), name="room") as proxy:
        publisher = await connect(hosts=proxy.address, max_pending=2, session_timeout=20.0)
        await publisher.publish("ordered", "warm-up")
        proxy.block("drop")  # the first two stay unfinished: the rest wait for room
        waiting = [publisher.publish("ordered", n) for n in range(20)]
        await asyncio.sleep(0.5)
        proxy.unblock()
        await asyncio.wait_for(asyncio.gather(*waiting), 60)
    got = []
    while len(got) < 21:
        message = await sub.get(timeout=10)
        assert message is not None, got
        got.append(message.payload)
    assert got == ["warm-up", *range(20)]


async def test_a_publish_waiting_for_room_behind_another_fails_at_its_own_deadline(
    connect: Connect, zk_hosts: str
) -> None:
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="deadlines") as proxy:
        publisher = await connect(hosts=proxy.address, max_pending=1, session_timeout=20.0)
        await publisher.publish("t", "warm-up")
        proxy.block("drop")
        first = publisher.publish("t", "in flight", timeout=30)
        await asyncio.sleep(0.2)
        patient = publisher.publish("t", "patient", timeout=30)  # waits for room
        hasty = publisher.publish("t", "hasty", timeout=1)  # waits behind it
        started = time.monotonic()
        with pytest.raises(PublishTimeout) as info:
            await hasty
        assert time.monotonic() - started < 3.0  # its own deadline, not the one before it
        assert info.value.sent is False
        proxy.unblock()
        assert (await asyncio.wait_for(first, 40)).topic == "t"
        assert (await asyncio.wait_for(patient, 40)).topic == "t"


async def test_a_consumers_on_error_is_checked_up_front(connect: Connect) -> None:
    queue = (await connect()).queue("jobs")
    with pytest.raises(TypeError, match="on_error must be callable"):
        queue.consume(lambda item: None, on_error=42)  # type: ignore[arg-type]


def test_a_consumer_whose_loop_ended_takes_nothing_more(zk_hosts: str, zk_root: str) -> None:
    """Before, a consumer left running when its asyncio.run ended took item
    after item, failed each at once (no loop to run the handler on) and
    gave it back: every item went to the dead letters, no handler run."""
    made: list[AsyncClient] = []
    handled: list[Any] = []

    async def main() -> None:
        client = await AsyncClient.connect(zk_hosts, root=zk_root, cleaner=False)
        made.append(client)

        async def handler(item: AsyncItem) -> None:
            handled.append(item.payload)

        client.queue("left").consume(handler)  # and the loop ends, the client open

    asyncio.run(main())
    try:
        with Client(zk_hosts, root=zk_root, cleaner=False) as producer:
            queue = producer.queue("left")
            queue.put_many([1, 2, 3])
            time.sleep(3.0)
            stats = queue.stats()
            assert stats.dead == 0, stats
            assert stats.ready + stats.reserved == 3, stats
        assert handled == []
    finally:
        made[0].sync.close()


async def test_bad_timeouts_and_a_closed_client_are_the_documented_errors(
    connect: Connect,
) -> None:
    client = await connect()
    sub = await client.subscribe("t")
    queue = client.queue("q")
    for bad in (-1.0, math.inf, math.nan, 1e10):
        for call in (
            lambda b=bad: sub.get(timeout=b),
            lambda b=bad: queue.reserve(timeout=b),
            lambda b=bad: queue.ticket("0" * 32).wait(timeout=b),
            lambda b=bad: client.publish("t", "never", timeout=b),
        ):
            with pytest.raises(ValueError, match="timeout must be from 0 to 31536000 seconds"):
                await call()
    assert sub.stats().delivered == 0
    await client.close()
    for closed in (
        lambda: client.subscribe("other"),
        lambda: client.stats(),
        lambda: client.run_in_thread(time.sleep, 0),
        lambda: queue.put("x"),
        lambda: queue.reserve(timeout=0),
    ):
        with pytest.raises(ClientClosed):
            await closed()
    # made on a thread with no loop running, awaited on the loop
    made = await asyncio.to_thread(client.publish, "t", "late")
    with pytest.raises(ClientClosed):
        await made
    with pytest.raises(ClientClosed):
        client.add_listener(print)


async def test_subscribe_takes_the_backlog_options_and_the_client_its_observers(
    connect: Connect,
) -> None:
    client = await connect()
    sub = await client.subscribe("t", max_backlog=7, max_backlog_bytes=70_000, when_full="evict")
    assert (sub.sync.bound.max_nodes, sub.sync.bound.when_full) == (7, "evict")

    class Counting:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def published(self, topic: str, *_: object) -> None:
            self.seen.append(topic)

    observer = Counting()
    client.add_observer(observer)
    await client.publish("t", 1)
    await eventually(lambda: observer.seen == ["t"], what="the observer heard the publish")
    client.remove_observer(observer)
    await client.publish("t", 2)
    assert observer.seen == ["t"]
    assert client.cleaner is client.sync.cleaner


async def test_reserves_cancelled_before_they_reserve_cost_the_item_no_attempt(
    connect: Connect,
) -> None:
    # three reserves of one handle, cancelled while they wait: the first
    # is waiting for an item, the others for their turn on the handle
    worker = (await connect()).queue("q", max_attempts=3)
    waiting = [asyncio.ensure_future(worker.reserve(timeout=30)) for _ in range(3)]
    await asyncio.sleep(0.3)
    for task in waiting:
        assert task.cancel()
    producer = (await connect()).queue("q", max_attempts=3)
    await producer.put("job")
    await asyncio.sleep(2.0)  # time for a reserve that would still take it
    for task in waiting:
        with pytest.raises(asyncio.CancelledError):
            await task
    # before, each took the item and gave it back unseen: three attempts,
    # and the item went to the dead letters
    assert await producer.dead() == []
    item = await producer.reserve(timeout=20)
    assert item is not None and item.payload == "job"
    assert item.attempts == 1
    await item.ack()


async def test_reserves_waiting_for_their_turn_hold_no_thread(connect: Connect) -> None:
    """Reserves of one handle take turns on its worker: each waited for its
    turn on a thread of the client, so forty long polls held all 32 and
    every other call of the client (a put, an ack) queued behind them."""
    client = await connect()
    worker = client.queue("turns")
    waiting = [asyncio.ensure_future(worker.reserve(timeout=3)) for _ in range(40)]
    await asyncio.sleep(1.0)
    busy = [t for t in threading.enumerate() if t.name.startswith("zkpubsub-aio")]
    assert len(busy) <= 4, len(busy)  # a slice under way, and threads since let go
    await client.queue("turns").put("job")
    got = [item for item in await asyncio.gather(*waiting) if item is not None]
    assert [item.payload for item in got] == ["job"]
    await got[0].ack()


async def test_puts_waiting_for_room_hold_no_thread(connect: Connect) -> None:
    """A put waiting for room in a full queue held a thread of the client for
    its whole timeout: forty of them held all 32, and every other call of
    the client (a stats with a one second timeout, an ack, close) waited
    behind them (about 20 s where they waited 20)."""
    client = await connect()
    full = client.queue("full", max_items=1)
    await full.put("first")
    waiting = [asyncio.ensure_future(full.put(n, timeout=4)) for n in range(40)]
    await asyncio.sleep(0.5)
    started = time.monotonic()
    stats = await client.queue("other").stats(timeout=2)
    took = time.monotonic() - started
    assert stats.ready == 0 and took < 3, took
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, QueueFull) and o.put_ids == () for o in outcomes), outcomes
    assert len(await full.dead()) == 0 and (await full.stats(timeout=5)).ready == 1


async def test_closing_the_client_waits_one_close_timeout_for_all_stuck_handlers(
    connect: Connect,
) -> None:
    client = await connect(client_id="stuck-aio", close_timeout=1.0)
    entered: list[str] = []
    never = asyncio.Event()

    async def stuck(message: Message) -> None:
        entered.append(message.payload)
        await never.wait()

    topics = [f"t{i}" for i in range(6)]
    for topic in topics:
        await client.subscribe(topic, stuck)
    publisher = await connect()
    for topic in topics:
        await publisher.publish(topic, topic)
    deadline = time.monotonic() + 20
    while len(entered) < len(topics) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sorted(entered) == topics
    started = time.monotonic()
    await client.close()
    took = time.monotonic() - started
    # the six handlers share one close_timeout (each waited one of its
    # own before: 6 s), and are cancelled; their messages stay queued
    assert 1.0 <= took < 4.0, took
    again = await connect(client_id="stuck-aio")
    got: list[str] = []
    for topic in topics:
        await again.subscribe(topic, lambda m: got.append(m.payload))
    deadline = time.monotonic() + 20
    while len(got) < len(topics) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sorted(got) == topics


async def noted(
    call: Callable[[], Awaitable[Any]], outcome: dict[str, Any], finished: asyncio.Event
) -> None:
    """Await ``call()`` (from a handler); note in ``outcome`` how it ended
    and how long it took, then set ``finished``."""
    started = time.monotonic()
    try:
        await call()
        outcome["ended"] = "returned"
    except BaseException as exc:
        outcome["ended"] = type(exc).__name__
        raise
    finally:
        outcome["took"] = time.monotonic() - started
        finished.set()


@pytest.mark.parametrize("through", ["await", "wait_for"])
@pytest.mark.parametrize("closes", ["subscription", "client"])
async def test_a_handler_that_closes_its_own_subscription_or_client_is_not_waited_for(
    connect: Connect, closes: str, through: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The close waited for the handler that was awaiting it: the whole
    close_timeout (6 s here), then the handler was cancelled, with a warning
    that it was still running; a threaded handler's close returns at once.
    Through ``wait_for`` (before Python 3.12, the close then ran in a task
    of its own) a subscription's close did so still."""
    client = await connect(close_timeout=6.0)
    publisher = await connect()
    outcome: dict[str, Any] = {}
    finished = asyncio.Event()
    subs: list[Any] = []

    async def handler(message: Any) -> None:
        closing = subs[0].close if closes == "subscription" else client.close
        if through == "wait_for":
            await noted(lambda: asyncio.wait_for(closing(), 20), outcome, finished)
        else:
            await noted(closing, outcome, finished)

    subs.append(await client.subscribe("t", handler))
    await publisher.publish("t", "stop")
    await asyncio.wait_for(finished.wait(), 30)
    assert outcome["ended"] == "returned", outcome
    assert outcome["took"] < 2.0, outcome
    assert not [r for r in caplog.records if "still running" in r.getMessage()]


async def test_a_client_used_on_another_event_loop_refuses_and_does_nothing(
    connect: Connect,
) -> None:
    """A publish made on another loop raised a RuntimeError about futures
    attached to a different loop, and was written all the same; a reserve
    raised so and kept its item reserved, for nobody."""
    client = await connect()
    listener = await connect()
    got: list[Any] = []
    await listener.subscribe("t", lambda message: got.append(message.payload))
    queue = client.queue("jobs")
    await queue.put("job")
    feed = await client.subscribe("feed")  # no handler: get()

    def on_another_loop() -> list[BaseException]:
        async def use() -> list[BaseException]:
            refused: list[BaseException] = []
            calls = (
                lambda: client.publish("t", "elsewhere"),
                lambda: queue.reserve(timeout=1),
                lambda: queue.put("elsewhere"),
                lambda: feed.get(timeout=1),
            )
            for call in calls:
                try:
                    await call()
                except RuntimeError as exc:
                    refused.append(exc)
            try:  # a consumer would run its handlers on the client's loop
                queue.consume(lambda item: None)
            except RuntimeError as exc:
                refused.append(exc)
            return refused

        return asyncio.run(use())

    refused = await asyncio.to_thread(on_another_loop)
    assert len(refused) == 5, refused
    await client.publish("t", "here")  # on its own loop it works, and comes after
    await eventually(lambda: got, what="the publish made on the client's loop")
    assert got == ["here"]
    stats = await queue.stats()
    assert (stats.ready, stats.reserved) == (1, 0), stats
    assert all(isinstance(exc, WrongLoop) for exc in refused), refused
    assert "nothing was done" in str(refused[0])


async def test_a_client_closed_on_another_loop_closes_on_its_own_too(connect: Connect) -> None:
    """close() on another loop, then on the client's own: the second
    awaited the first's future, which belongs to the other loop, and raised."""
    client = await connect()

    async def close_elsewhere() -> None:
        await client.close()

    await asyncio.to_thread(asyncio.run, close_elsewhere())
    assert client.status is ClientState.CLOSED
    await client.close()  # on its own loop: done already, no error
    await asyncio.wait_for(client.close(), 10)


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="Python 3.10 cannot tell the task's cancel from others"
)
def test_a_handler_that_swallows_its_tasks_cancel_still_stops_the_deliveries(
    zk_hosts: str, zk_root: str
) -> None:
    """asyncio.run ending cancels the handler's task; a handler that caught
    that and returned was given the next message, and asyncio.run never
    returned."""
    handled: list[Any] = []
    made: list[AsyncClient] = []
    publisher = Client(zk_hosts, root=zk_root)

    async def main() -> None:
        client = await AsyncClient.connect(zk_hosts, root=zk_root, session_timeout=4.0)
        made.append(client)
        began = asyncio.Event()

        async def handler(message: Any) -> None:
            handled.append(message.payload)
            began.set()
            with contextlib.suppress(asyncio.CancelledError):  # swallowed
                await asyncio.sleep(30)

        await client.subscribe("t", handler)
        publisher.publish("t", "one")
        publisher.publish("t", "two")
        await began.wait()
        # returning ends the loop: asyncio.run cancels the handler's task

    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    runner.start()
    runner.join(20)
    try:
        assert not runner.is_alive(), handled
        assert handled == ["one"]
    finally:
        if made:
            made[0].sync.close()
        publisher.close()


@pytest.mark.parametrize("through", ["await", "wait_for"])
async def test_a_consume_handler_that_stops_its_own_consumer_is_not_waited_for(
    connect: Connect, through: str
) -> None:
    """stop() waited for the handler awaiting it: its whole timeout (4 s
    here), then the handler was cancelled and its item released, with an
    error logged. Through ``wait_for`` (before Python 3.12, the stop then
    ran in a task of its own) it did so still."""
    client = await connect()
    queue = client.queue("jobs")
    await queue.put("stop")
    outcome: dict[str, Any] = {}
    finished = asyncio.Event()
    consumers: list[Any] = []

    async def handler(item: AsyncItem) -> None:
        if through == "wait_for":
            stopping = lambda: asyncio.wait_for(consumers[0].stop(timeout=4), 20)  # noqa: E731
        else:
            stopping = lambda: consumers[0].stop(timeout=4)  # noqa: E731
        await noted(stopping, outcome, finished)

    consumers.append(queue.consume(handler))
    await asyncio.wait_for(finished.wait(), 30)
    assert outcome["ended"] == "returned" and outcome["took"] < 2.0, outcome
    await consumers[0].stop()  # the stop under way, awaited: it ends
    assert not consumers[0].running
    stats = await queue.stats()
    assert (stats.ready, stats.reserved, stats.dead) == (0, 0, 0), stats  # acked: done
