"""The work queue on a real ZooKeeper: reserve / ack / release, redelivery,
dead letters, priorities, results."""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from kazoo.client import KazooClient

from zkpubsub import (
    Client,
    ClientClosed,
    ClientState,
    ConsumerStats,
    Item,
    ItemFailed,
    NotFound,
    OperationTimeout,
    PayloadTooLarge,
    ReservationLost,
    SerializationError,
    Ticket,
)
from zkpubsub.layout import Layout
from zkpubsub.testing import ZooKeeperCluster, expire_session
from zkpubsub.testing.proxy import OP_EXISTS, OP_GET_CHILDREN, OP_GET_DATA, OP_MULTI, ZkClientProxy
from zkpubsub.workqueue.putting import ROOM_POLL_MAX, ROOM_POLL_MIN, room_polls
from zkpubsub.workqueue.records import decode_item

from .helpers import drain, wait_until
from .procs import Child

MakeClient = Callable[..., Client]
T = TypeVar("T")


def test_bad_arguments_raise_clear_errors(make_client: MakeClient) -> None:
    client = make_client()
    q = client.queue("jobs")
    with pytest.raises(TypeError, match="priority must be an int"):
        q.put("x", priority="high")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="priority must be an int"):
        q.put("x", priority=True)
    for bad in (-1, 1000):
        with pytest.raises(ValueError, match="between 0 and 999"):
            q.put("x", priority=bad)
    with pytest.raises(SerializationError):
        q.put(object())
    with pytest.raises(ValueError):
        q.put_many([])
    for name in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            client.queue(name)
    with pytest.raises(ValueError):
        client.queue("jobs", max_attempts=0)
    with pytest.raises(ValueError):
        q.reserve_many(0)
    # a bool is no count, and a lease is finite
    with pytest.raises(ValueError, match="max_attempts"):
        client.queue("jobs", max_attempts=True)
    with pytest.raises(ValueError, match="limit"):
        q.reserve_many(True)
    for name in ("workers", "prefetch"):
        with pytest.raises(ValueError, match=name):
            q.consume(lambda item: None, **{name: True})
    for lease in (math.inf, math.nan, 1e300):  # 1e300 killed the lease keeper's thread
        with pytest.raises(ValueError, match="at most 31536000"):
            client.queue("jobs", visibility_timeout=lease)
    with pytest.raises(TypeError, match="one string"):
        q.replay("abc")
    assert len(q) == 0  # nothing was enqueued by the failed calls
    q.put("x")
    item = q.reserve(timeout=10)
    assert item is not None
    with pytest.raises(ValueError, match="at most 31536000"):
        item.extend(math.inf)
    with pytest.raises(TypeError, match="error must be"):
        item.release(123)  # type: ignore[arg-type]
    item.ack()  # still held: the bad calls changed nothing


def test_a_queue_handle_is_true_without_asking_the_server(make_client: MakeClient) -> None:
    """``if queue:`` must not be a network call (through ``__len__`` it
    would be, and it would raise while the ensemble is away)."""
    client = make_client()
    q = client.queue("truth")
    assert len(q) == 0
    client.close()
    with pytest.raises(ClientClosed):
        len(q)
    assert q


def test_an_empty_reserve_returns_none_after_the_timeout(make_client: MakeClient) -> None:
    q = make_client().queue("empty")
    started = time.monotonic()
    assert q.reserve(timeout=0.5) is None
    assert time.monotonic() - started >= 0.5
    assert q.reserve(timeout=0) is None


def test_items_come_out_first_in_first_out(make_client: MakeClient) -> None:
    q = make_client().queue("fifo")
    for i in range(20):
        q.put(i)
    assert drain(q, 20) == list(range(20))


def test_lower_priority_numbers_come_first_then_fifo(make_client: MakeClient) -> None:
    q = make_client().queue("prio")
    q.put("low-1", priority=500)
    q.put("high-1", priority=1)
    q.put("mid", priority=100)
    q.put("high-2", priority=1)
    q.put("low-2", priority=500)
    q.put("top", priority=0)
    assert drain(q, 6) == ["top", "high-1", "high-2", "mid", "low-1", "low-2"]


def test_a_released_item_comes_back_with_one_more_attempt(make_client: MakeClient) -> None:
    q = make_client().queue("release")
    q.put("a")
    q.put("b")
    first = q.reserve(5)
    assert first is not None and first.payload == "a" and first.attempts == 1
    first.release()
    again = q.reserve(5)
    assert again is not None
    assert (again.id, again.payload, again.attempts) == (first.id, "a", 2)
    with pytest.raises(ValueError, match="already"):
        first.ack()


def test_a_handle_lets_go_of_the_workers_closed_under_it(make_client: MakeClient) -> None:
    # A service keeps its queue handle for its life and may make workers
    # (or consumers) many times: the closed ones must not pile up in it.
    q = make_client().queue("jobs")
    q.put_many(["a", "b", "c", "last"])
    closed = []
    for expected in ("a", "b", "c"):
        worker = q.worker()
        item = worker.reserve(timeout=10)  # registers in the queue
        assert item is not None and item.payload == expected
        item.ack()
        worker.close()
        closed.append(weakref.ref(worker))
        del worker, item
    last = q.worker()
    gc.collect()
    assert [ref() for ref in closed] == [None, None, None]
    item = last.reserve(timeout=10)
    assert item is not None and item.payload == "last"
    item.ack()
    q.close()  # still closes the open one
    with pytest.raises(ClientClosed):
        last.reserve(timeout=0)
    with pytest.raises(ClientClosed):
        q.worker()


def test_another_worker_can_ack_after_a_release(make_client: MakeClient) -> None:
    one = make_client().queue("handover")
    two = make_client().queue("handover")
    one.put("job")
    item = one.reserve(5)
    assert item is not None
    assert two.reserve(0.3) is None  # held by one
    item.release()
    taken = two.reserve(5)
    assert taken is not None and taken.payload == "job"
    taken.ack()
    assert len(two) == 0


def test_three_readers_one_item_exactly_one_gets_it(make_client: MakeClient) -> None:
    queues = [make_client().queue("race") for _ in range(3)]
    got: list[Item | None] = [None, None, None]
    barrier = threading.Barrier(3)

    def read(i: int) -> None:
        barrier.wait()
        got[i] = queues[i].reserve(timeout=2)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    queues[0].put("the only one")
    for t in threads:
        t.join()
    winners = [g for g in got if g is not None]
    assert len(winners) == 1
    assert winners[0].payload == "the only one"


def test_a_reserved_head_never_blocks_the_rest(make_client: MakeClient) -> None:
    one = make_client().queue("hol")
    two = make_client().queue("hol")
    for i in range(3):
        one.put(i)
    head = one.reserve(5)
    assert head is not None and head.payload == 0
    nxt = two.reserve(1)  # the next worker takes another item at once
    assert nxt is not None and nxt.payload in (1, 2)


def test_an_item_is_a_context_manager(make_client: MakeClient) -> None:
    q = make_client().queue("ctx")
    q.put("ok")
    q.put("fails")
    with q.reserve(5) as item:  # type: ignore[union-attr]
        assert item.payload == "ok"
    with pytest.raises(RuntimeError), q.reserve(5) as item:  # type: ignore[union-attr]
        raise RuntimeError("handler crashed")
    back = q.reserve(5)
    assert back is not None and back.payload == "fails" and back.attempts == 2
    back.ack()
    assert len(q) == 0


def test_a_worker_killed_mid_task_gives_the_item_back(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    q = make_client().queue("jobs")
    item_id = q.put("resize image")
    with Child(zk_hosts, zk_root, "doomed-worker", "hang-worker", "jobs") as child:
        line = child.expect("got")
        assert line.split()[1:] == [item_id, "1"]  # id and attempts
        child.kill()
    again = q.reserve(timeout=20)  # once the dead worker's session expires
    assert again is not None
    assert (again.id, again.attempts) == (item_id, 2)
    again.ack()


def test_a_zombie_cannot_ack_or_release(make_client: MakeClient) -> None:
    zombie_client = make_client()
    zombie = zombie_client.queue("jobs")
    zombie.put("only once")
    held = zombie.reserve(5)
    assert held is not None
    expire_session(zombie_client)  # its reservation is gone with its session
    other = make_client().queue("jobs")
    taken = other.reserve(5)
    assert taken is not None and taken.id == held.id and taken.attempts == 2
    with pytest.raises(ReservationLost):
        held.ack()
    with pytest.raises(ReservationLost):
        held.release()
    assert len(other) == 1  # the zombie changed nothing
    taken.ack()
    assert len(other) == 0


def test_a_reservation_lost_with_no_new_holder_is_still_refused(make_client: MakeClient) -> None:
    client = make_client()
    q = client.queue("jobs")
    q.put("x")
    held = q.reserve(5)
    assert held is not None
    expire_session(client)
    with pytest.raises(ReservationLost):
        held.ack()
    again = q.reserve(5)
    assert again is not None and again.attempts == 2
    again.ack()


def test_dead_letters_after_max_attempts_and_replay(make_client: MakeClient) -> None:
    q = make_client().queue("flaky", max_attempts=3)
    q.put("poison", headers={"kind": "bad"}, priority=7)
    q.put("fine")
    seen = []
    for _ in range(4):
        item = q.reserve(2)
        assert item is not None
        seen.append((item.payload, item.attempts))
        if item.payload == "poison":
            item.release(RuntimeError("corrupt input"))
        else:
            item.ack()
    assert seen == [("poison", 1), ("poison", 2), ("poison", 3), ("fine", 1)]
    assert q.reserve(0.3) is None
    stats = q.stats()
    assert (stats.ready, stats.reserved, stats.dead) == (0, 0, 1)
    (dead,) = q.dead()
    assert dead.payload == "poison" and dead.attempts == 3 and dead.priority == 7
    assert dead.headers == {"kind": "bad"}
    assert "corrupt input" in dead.reason
    assert q.replay() == 1
    assert q.dead() == []
    back = q.reserve(5)
    assert back is not None and back.payload == "poison" and back.attempts == 1
    back.ack()


def test_a_replayed_dead_letter_whose_result_nobody_read_can_be_acked_or_buried_again(
    make_client: MakeClient,
) -> None:
    q = make_client().queue("tickets", max_attempts=1)
    ticket = q.put("job", want_result=True)
    first = q.reserve(5)
    assert first is not None
    first.release("backend down")  # the last attempt: a dead letter, and a "dead" result
    assert ticket.done()
    assert q.replay() == 1  # before anyone read that result
    assert not ticket.done()  # the item is live again
    again = q.reserve(5)
    assert again is not None and again.payload == "job"
    again.ack(result="done")
    assert ticket.wait(5) == "done"
    # and once more through the dead letters: buried again, replayed again
    ticket = q.put("job 2", want_result=True)
    for _ in range(2):
        held = q.reserve(5)
        assert held is not None
        held.release("still down")
        assert len(q.dead()) == 1
        if _ == 0:
            assert q.replay() == 1
    with pytest.raises(ItemFailed, match="still down"):
        ticket.wait(5)


def test_an_item_whose_workers_keep_dying_becomes_a_dead_letter(
    make_client: MakeClient,
) -> None:
    q = make_client().queue("deadly", max_attempts=2)
    q.put("kills workers")
    for attempt in (1, 2):
        victim = make_client()
        item = victim.queue("deadly", max_attempts=2).reserve(5)
        assert item is not None and item.attempts == attempt
        expire_session(victim)  # the worker "dies" holding it
    assert q.reserve(0.5) is None  # the next worker buries it instead
    (dead,) = q.dead()
    assert dead.attempts == 2 and "without an ack" in dead.reason


def test_four_competing_workers_ack_every_item_exactly_once(make_client: MakeClient) -> None:
    total = 2000
    producer = make_client().queue("bulk")
    ids = []
    for start in range(0, total, 250):
        ids += producer.put_many(range(start, start + 250))
    assert len(set(ids)) == total
    handled: Counter[str] = Counter()
    lock = threading.Lock()

    def handler_for(worker: str) -> Callable[[Item], None]:
        def handle(item: Item) -> None:
            with lock:
                handled[item.id] += 1

        return handle

    consumers = [
        make_client().queue("bulk").consume(handler_for(f"w{i}"), workers=1) for i in range(4)
    ]
    wait_until(lambda: sum(handled.values()) >= total and len(producer) == 0, 120, "drained")
    for c in consumers:
        c.stop()
    # handled exactly once each, so never by two workers at once (holds that
    # overlap in time are checked under faults: tests/faults/test_queue_*)
    assert set(handled) == set(ids)
    assert set(handled.values()) == {1}
    assert sum(c.stats().acked for c in consumers) == total
    assert all(c.stats().acked > 0 for c in consumers)  # all four took part


def test_results_round_trip_and_are_removed_once_read(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    q = make_client().queue("rpc")
    ticket = q.put({"op": "add", "args": [2, 3]}, want_result=True)
    assert not ticket.done()
    with pytest.raises(OperationTimeout):
        ticket.wait(timeout=0.2)
    worker = make_client().queue("rpc")
    item = worker.reserve(5)
    assert item is not None and item.wants_result
    item.ack(result=sum(item.payload["args"]))
    assert ticket.wait(timeout=5) == 5
    results = Layout(zk_root).work_queue("rpc").results
    assert raw_zk.get_children(results) == []
    # a plain item has no ticket to write to
    q.put("plain")
    plain = worker.reserve(5)
    assert plain is not None
    with pytest.raises(ValueError, match="without want_result"):
        plain.ack(result=1)
    plain.ack()


def test_a_result_goes_to_one_ticket_and_to_every_thread_waiting_on_it(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """Waiters read the result side by side and each deleted it: several
    got it, or a late one was told the item had failed ("its result was
    read by someone else", a 'failed' answer at the gateway)."""
    import concurrent.futures

    q = make_client().queue("rpc")
    ticket = q.put("job", want_result=True)
    other = make_client().queue("rpc").ticket(ticket.id)  # another process's
    item = q.reserve(5)
    assert item is not None

    def outcome(waiting: Ticket) -> Any:
        try:
            return waiting.wait(10)
        except NotFound as exc:
            return str(exc)
        except OperationTimeout:  # it looked after the taker's delete: none
            return "none"

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        mine = [pool.submit(outcome, ticket) for _ in range(3)]
        theirs = pool.submit(outcome, other)
        time.sleep(1.0)  # all four wait for the result
        item.ack(result="done")
        outcomes = [each.result() for each in mine] + [theirs.result()]
    gone = f"the result of item {ticket.id} is gone: another ticket took it first, or a replay "
    gone += "removed it"
    # one ticket took it, and all its waiters have it; the other has none
    # (told it is gone, or, having looked after the delete, none in time)
    mine, theirs = outcomes[:3], outcomes[3]
    if theirs == "done":
        assert set(mine) <= {gone, "none"}, outcomes
    else:
        assert mine == ["done"] * 3 and theirs in (gone, "none"), outcomes
    taker = ticket if mine[0] == "done" else other
    assert taker.done() and taker.wait(0) == "done"  # kept for the taker's waiters
    assert raw_zk.get_children(Layout(zk_root).work_queue("rpc").results) == []


def test_a_waited_for_item_that_dies_fails_its_ticket(make_client: MakeClient) -> None:
    q = make_client().queue("rpc", max_attempts=1)
    ticket = q.put("doomed", want_result=True)
    elsewhere = make_client().queue("rpc").ticket(ticket.id)  # another process's view
    item = q.reserve(5)
    assert item is not None
    item.release("cannot do it")
    with pytest.raises(ItemFailed, match="cannot do it"):
        elsewhere.wait(timeout=5)


def test_a_put_waiting_for_room_counts_again_sooner_first_then_at_most_every_half_second() -> None:
    delays = room_polls()
    seen = [next(delays) for _ in range(7)]
    assert (ROOM_POLL_MIN, ROOM_POLL_MAX) == (0.05, 0.5)
    assert seen == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5])


def test_a_put_with_no_time_to_wait_for_room_is_written_and_answered(
    make_client: MakeClient,
) -> None:
    # the timeout bounds the wait for room; the put's own requests get
    # their time (with timeout=0 every put raised OperationTimeout, though
    # written, and a producer trying again would have put it twice)
    q = make_client().queue("quick")
    ids = [q.put(n, timeout=0) for n in range(20)]
    assert len(set(ids)) == 20 and len(q) == 20
    assert q.put_many(["a", "b"], timeout=0) and len(q) == 22


def test_a_ticket_waited_for_without_time_answers_a_result_that_is_there(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    q = make_client().queue("rpc")
    ticket = q.put("job", want_result=True)
    # nothing there yet: the zero wait ends at once
    with pytest.raises(OperationTimeout, match="no result"):
        ticket.wait(timeout=0)
    item = q.reserve(5)
    assert item is not None
    item.ack(result="done")
    # there: read and removed, though the wait gives it no time (its reads
    # had none before, and a zero wait never answered)
    assert ticket.wait(timeout=0) == "done"
    results = Layout(zk_root).work_queue("rpc").results
    assert raw_zk.get_children(results) == []
    doomed = make_client().queue("rpc", max_attempts=1)
    failing = doomed.put("doomed", want_result=True)
    taken = doomed.reserve(5)
    assert taken is not None
    taken.release("cannot")
    with pytest.raises(ItemFailed, match="cannot"):
        failing.wait(timeout=0)
    assert raw_zk.get_children(results) == []  # a failure read is removed too


def test_a_consumer_acks_once_zookeeper_answers_again(
    make_cluster: Callable[..., ZooKeeperCluster], caplog: pytest.LogCaptureFixture
) -> None:
    zk = make_cluster(1)
    (node,) = zk.nodes
    with Client(zk.hosts, session_timeout=30.0, request_timeout=2.0) as client:
        q = client.queue("paused")
        ticket = q.put("job", want_result=True)
        entered, go_on = threading.Event(), threading.Event()

        def handle(item: Item) -> str:
            entered.set()
            go_on.wait(30)
            return "done"

        consumer = q.consume(handle)
        try:
            assert entered.wait(20)
            node.kill()
            try:
                with caplog.at_level(logging.WARNING, logger="zkpubsub.workqueue.consumer"):
                    go_on.set()
                    # the ack fails: not connected within the request timeout
                    wait_until(lambda: "could not ack" in caplog.text, 20, "the ack failed")
            finally:
                node.start()
            # the ack is tried again and taken (before, it was given up and
            # the item stayed reserved for as long as the session lived); a
            # try applied whose answer came too late (a slow restart) finds
            # the item gone on the next, and counts as lost
            wait_until(
                lambda: consumer.stats().acked + consumer.stats().lost == 1, 40, "the ack taken"
            )
            assert ticket.wait(timeout=10) == "done"
            stats = q.stats()
            assert (stats.ready, stats.reserved) == (0, 0)
        finally:
            go_on.set()
            consumer.stop()


def test_consume_acks_releases_and_stops_gracefully(make_client: MakeClient) -> None:
    q = make_client().queue("loop", max_attempts=2)
    errors: list[BaseException] = []
    done: list[int] = []
    started = threading.Event()
    finish = threading.Event()

    def handle(item: Item) -> int:
        if item.payload == "slow":
            started.set()
            assert finish.wait(10)
        elif item.payload == "bad":
            raise ValueError("bad item")
        done.append(item.payload)
        return 0

    consumer = q.consume(handle, workers=2, on_error=lambda e, i: errors.append(e))
    q.put_many([1, 2, "bad", 3])
    wait_until(lambda: sorted(done, key=str) == [1, 2, 3] and len(errors) == 2, what="handled")
    assert len(q.dead()) == 1  # buried before on_error was told of the last failure
    q.put("slow")
    assert started.wait(10)
    stopper = threading.Thread(target=consumer.stop)
    stopper.start()
    time.sleep(0.3)
    assert stopper.is_alive()  # waits for the item in hand
    finish.set()
    stopper.join(10)
    assert not consumer.running
    assert consumer.stats().acked == 4 and consumer.stats().released == 2
    assert len(q) == 0


def test_a_consume_handler_that_finishes_its_item_itself_and_raises_keeps_the_worker(
    make_client: MakeClient,
) -> None:
    """``with item:`` releases the item on the way out of a raising
    handler; the consumer's own release then raised ValueError (already
    released) out of the worker thread: the rest of its batch was never
    handled, nor acked, and the consumer took nothing more."""
    q = make_client().queue("itself", max_attempts=10)
    handled: list[Any] = []
    errors: list[BaseException] = []

    def handle(item: Item) -> None:
        if item.payload == "bad" and item.attempts == 1:
            with item:
                raise RuntimeError("bad item")
        handled.append(item.payload)

    q.put_many(["bad", 1, 2])
    consumer = q.consume(handle, prefetch=3, on_error=lambda e, i: errors.append(e))
    try:
        wait_until(lambda: sorted(handled, key=str) == [1, 2, "bad"], 20, "all handled")
        wait_until(lambda: len(q) == 0, 20, "all acked")
        assert consumer.running
        assert [type(e) for e in errors] == [RuntimeError]
    finally:
        consumer.stop()


def test_consumer_stats_count_the_items_a_handler_finished_itself(
    make_client: MakeClient,
) -> None:
    """Before, an item the handler acked itself, or released with ``with
    item:`` as it raised, was counted neither acked nor released."""
    q = make_client().queue("counted", max_attempts=10)

    def handle(item: Item) -> None:
        if item.payload == "acked by itself":
            item.ack()
        elif item.payload == "released by itself" and item.attempts == 1:
            with item:
                raise RuntimeError("once")

    q.put_many(["acked by itself", "released by itself", "plain"])
    consumer = q.consume(handle, on_error=lambda e, i: None)
    try:
        wait_until(lambda: len(q) == 0, 20, "all acked")
        wait_until(lambda: consumer.stats().acked == 3, 10, "three acks counted")
        assert consumer.stats() == ConsumerStats(acked=3, released=1, lost=0)
    finally:
        consumer.stop()


def test_an_ack_failing_after_its_first_transactions_retries_only_the_rest(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a consumer's ack split over transactions, failing after the
    first applied, was retried whole: the items acked already were found
    gone, counted lost and warned of as ReservationLost."""
    client = make_client(max_transaction_bytes=6000, max_message_bytes=4000)
    q = client.queue("split")
    tickets = [q.put(n, want_result=True) for n in range(4)]
    writer = client._ctx.writer
    real = writer.commit
    acks: list[str] = []

    def second_ack_unsent(add_ops: Any, deadline: Any, what: str) -> Any:
        if what == "ack":
            acks.append(what)
            if len(acks) == 2:
                raise OperationTimeout("ack: as if no server had answered (never sent)")
        return real(add_ops, deadline, what)

    monkeypatch.setattr(writer, "commit", second_ack_unsent)
    consumer = q.consume(lambda item: "r" * 2500, prefetch=4)
    try:
        assert [t.wait(20) for t in tickets] == ["r" * 2500] * 4
        wait_until(lambda: consumer.stats().acked == 4, 10, "four acks counted")
        assert consumer.stats() == ConsumerStats(acked=4, released=0, lost=0)
        assert len(acks) >= 3  # split, failed once, tried again
    finally:
        consumer.stop()


def test_a_result_that_cannot_be_written_fails_its_item_not_the_worker(
    make_client: MakeClient,
) -> None:
    """An unencodable result raised a plain TypeError from the ack, out of
    the consumer's worker thread: its batch stayed reserved, and no more
    was taken. A direct ack raised TypeError, not SerializationError."""
    q = make_client().queue("results", max_attempts=1)
    worker = make_client().queue("results")
    ticket = q.put("direct", want_result=True)
    item = worker.reserve(10)
    assert item is not None
    with pytest.raises(SerializationError, match="result"):
        item.ack(result={1, 2})
    with pytest.raises(PayloadTooLarge):
        item.ack(result=b"x" * 1_100_000)  # refused before it is sent
    item.ack(result="fine")  # nothing was changed: it still holds the item
    assert ticket.wait(10) == "fine"

    errors: list[BaseException] = []
    bad = q.put("set", want_result=True)
    good = q.put("ok", want_result=True)
    consumer = q.consume(
        lambda i: {1, 2} if i.payload == "set" else "done",
        prefetch=2,
        on_error=lambda e, i: errors.append(e),
    )
    try:
        assert good.wait(20) == "done"
        with pytest.raises(ItemFailed, match="result"):
            bad.wait(20)  # failed, once: dead (max_attempts=1)
        assert consumer.running
        assert [type(e) for e in errors] == [SerializationError]
    finally:
        consumer.stop()


def test_stop_waits_one_timeout_for_all_the_busy_workers(make_client: MakeClient) -> None:
    q = make_client().queue("busy")
    release = threading.Event()
    busy: list[str] = []

    def handle(item: Item) -> None:
        busy.append(item.payload)
        release.wait(60)

    consumer = q.consume(handle, workers=6)
    try:
        q.put_many(["a", "b", "c", "d", "e", "f"])
        wait_until(lambda: len(busy) == 6, what="six items in hand")
        started = time.monotonic()
        consumer.stop(timeout=1.0)
        took = time.monotonic() - started
    finally:
        release.set()
    # one wait for the six workers (each waited a timeout of its own
    # before: six seconds); then the workers leave the registry
    assert 1.0 <= took < 4.0, took
    consumer.join(10)
    assert not consumer.running


def test_a_failed_item_is_given_back_before_on_error_is_told(make_client: MakeClient) -> None:
    q = make_client().queue("told", max_attempts=2)
    seen: list[tuple[bool, int, int, int]] = []
    told = threading.Event()

    def on_error(_exc: BaseException, item: Item) -> None:
        stats = q.stats()  # on the worker's thread: nobody can reserve it meanwhile
        seen.append((item.finished, stats.ready, stats.reserved, stats.dead))
        if len(seen) == 2:
            told.set()

    def fail(_item: Item) -> None:
        raise ValueError("no")

    consumer = q.consume(fail, workers=1, on_error=on_error)
    try:
        q.put("x")
        assert told.wait(20)
    finally:
        consumer.stop()
    # first failure: released, ready again; second (the last attempt): buried
    assert seen == [(True, 1, 0, 0), (True, 0, 0, 1)]


def test_the_queue_works_after_a_real_session_expiry_of_a_worker(
    make_client: MakeClient,
) -> None:
    worker_client = make_client()
    done: list[int] = []
    consumer = worker_client.queue("resilient").consume(lambda item: done.append(item.payload))
    producer = make_client().queue("resilient")
    producer.put(1)
    wait_until(lambda: done == [1], what="first item")
    expire_session(worker_client)
    producer.put(2)
    wait_until(lambda: done == [1, 2], 20, "second item after expiry")
    consumer.stop()
    assert consumer.stats().acked == 2


def test_foreign_nodes_in_a_queue_become_dead_letters(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    q = make_client().queue("mixed")
    q.put("real")
    items = Layout(zk_root).work_queue("mixed").items
    raw_zk.create(f"{items}/junk", b"not ours")
    raw_zk.create(f"{items}/q100-0123456789ab-", b"\xc1", sequence=True)
    got = q.reserve(5)
    assert got is not None and got.payload == "real"
    got.ack()
    assert q.reserve(0.3) is None
    reasons = sorted(d.reason for d in q.dead())
    assert len(reasons) == 2
    assert any("not a zkpubsub work item" in r for r in reasons)
    assert any("undecodable" in r for r in reasons)


def test_put_is_exactly_once_across_a_connection_loss(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    zk = make_cluster(1)
    client = Client(zk.hosts, session_timeout=3.0, request_timeout=30)
    try:
        states: list[ClientState] = []
        client.add_listener(states.append)
        q = client.queue("once")
        q.put("warm-up")
        (node,) = zk.nodes
        node.pause()  # the request is sent; no answer comes, the client drops the connection
        putter = threading.Thread(target=lambda: q.put("exactly once"))
        putter.start()
        wait_until(lambda: ClientState.SUSPENDED in states, 10, "connection dropped")
        node.resume()
        putter.join(30)
        assert not putter.is_alive()
        assert drain(q, 2) == ["warm-up", "exactly once"]
        assert q.reserve(0.5) is None
    finally:
        client.close()


def test_workers_spread_over_items_instead_of_racing_for_the_head(
    make_client: MakeClient,
) -> None:
    total = 400
    make_client().queue("spread").put_many(range(total))
    queues = [make_client().queue("spread").worker() for _ in range(4)]
    for q in queues:
        q._lineup.refresh(None)  # every worker registered before they start
    taken: list[list[int]] = [[] for _ in queues]
    barrier = threading.Barrier(len(queues))

    def work(i: int) -> None:
        barrier.wait()
        while (item := queues[i].reserve(timeout=0.5)) is not None:
            taken[i].append(item.payload)
            item.ack()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(queues))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(p for t in taken for p in t) == list(range(total))
    conflicts = sum(q.conflicts for q in queues)
    # Racing for the head, three of four workers would lose almost every
    # time (about 300 here); spread, a few percent (up to 71 seen on a slow
    # machine, ZooKeeper in a container).
    assert conflicts < total // 4, f"{conflicts} conflicts for {total} items"


def test_ack_many_acks_in_one_go_and_names_a_lost_reservation(make_client: MakeClient) -> None:
    zombie_client = make_client()
    q = zombie_client.queue("batch")
    q.put_many(range(6))
    first = q.reserve_many(3, timeout=5)
    assert [i.payload for i in first] == [0, 1, 2]
    q.ack_many(first)
    assert all(i.finished for i in first)
    rest = q.reserve_many(3, timeout=5)
    assert [i.payload for i in rest] == [3, 4, 5]
    # One of them is released behind the holder's back (as if it had expired
    # and another worker had taken and released it): the others still go.
    other = make_client().queue("batch")
    rest[1].release()
    rest[1]._finished = False  # the zombie still thinks it holds it
    taken = other.reserve(5)
    assert taken is not None and taken.id == rest[1].id
    with pytest.raises(ReservationLost) as info:
        q.ack_many(rest)
    assert info.value.item_id == rest[1].id
    assert info.value.item_ids == (rest[1].id,)
    assert len(q) == 1  # only the item the other worker holds is left
    taken.ack()


def test_ack_many_names_every_lost_reservation(make_client: MakeClient) -> None:
    client = make_client()
    q = client.queue("batch")
    q.put_many(range(4))
    held = q.reserve_many(4, timeout=5)
    assert [i.payload for i in held] == [0, 1, 2, 3]
    expire_session(client)  # every reservation goes with the session
    other = make_client().queue("batch")
    retaken = other.reserve_many(4, timeout=5)
    assert sorted(i.payload for i in retaken) == [0, 1, 2, 3]
    retaken[0].ack()  # the first is gone, the other three are held by `other`
    with pytest.raises(ReservationLost) as info:
        q.ack_many(held)
    assert set(info.value.item_ids) == {i.id for i in held}
    assert all(i.id in str(info.value) for i in held)
    assert len(other) == 3  # the zombie changed nothing
    other.ack_many(retaken[1:])
    assert len(other) == 0


def test_after_a_lost_answer_a_worker_claims_only_reservations_that_name_it(
    make_client: MakeClient,
) -> None:
    """Two workers of one client share its session: after a lost answer a
    worker must recognise its own reservation by its name, not the session.
    This drives the recovery step directly on states set up by hand; the
    same race over a real lost reply is in tests/faults/test_queue_faults.py."""
    client = make_client()
    q = client.queue("shared")
    mine, sibling = q.worker(), q.worker()
    q.put("one")
    paths = Layout(client.root).work_queue("shared")
    assert mine._lineup.refresh(mine._ctx.deadline())
    (name,) = mine._lineup.names()
    data, stat = client._ctx.conn.kazoo.get(paths.item(name))
    entry, payload = decode_item(client._ctx.serializers, paths.item(name), data)
    # Our reserve transaction never reached the server; the sibling took the item.
    taken = sibling.reserve(5)
    assert taken is not None and taken.id == entry.id
    tried = [(name, data, stat.version, entry, payload)]
    assert mine.reserved_after_loss(tried, mine._ctx.deadline()) == []
    # ... and when it was ours after all, it is recognised.
    taken.release()
    again = mine.reserve(5)
    assert again is not None and again.id == entry.id and again.attempts == 2
    tried = [(name, data, again.attempts - 1, entry, payload)]
    (recovered,) = mine.reserved_after_loss(tried, mine._ctx.deadline())
    assert recovered.id == entry.id and recovered.attempts == 2
    again.ack()
    assert len(q) == 0


def test_reserving_more_data_than_one_transaction_carries_takes_what_fits(
    make_client: MakeClient,
) -> None:
    # 20 items of 60 KB: 1.2 MB, past what one transaction may carry. The
    # reserve rewrote them all in one (the server dropped the connection,
    # and the reserve tried again for ever, past its timeout)
    q = make_client().queue("big")
    q.put_many([bytes([n]) * 60_000 for n in range(20)])
    started = time.monotonic()
    first = q.reserve_many(20, timeout=10)
    assert time.monotonic() - started < 10
    assert 1 <= len(first) < 20
    rest = q.reserve_many(20, timeout=10)
    taken = first + rest
    while len(taken) < 20:
        more = q.reserve_many(20, timeout=10)
        assert more, "items left unreserved"
        taken += more
    assert sorted(item.payload[0] for item in taken) == list(range(20))
    q.ack_many(first)
    for item in taken[len(first) :]:
        item.ack()
    assert len(q) == 0
    # a consumer prefetching such items handles them all
    q.put_many([bytes([n]) * 100_000 for n in range(16)])
    seen: list[int] = []
    consumer = q.consume(lambda item: seen.append(item.payload[0]), prefetch=16)
    try:
        wait_until(lambda: len(seen) == 16, 60, "16 large items handled")
    finally:
        consumer.stop()
    assert sorted(seen) == list(range(16))


def test_consume_with_prefetch_handles_every_item_once(make_client: MakeClient) -> None:
    q = make_client().queue("prefetched")
    q.put_many(range(300))
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    def handle(item: Item) -> None:
        with lock:
            seen[item.payload] += 1

    consumers = [make_client().queue("prefetched").consume(handle, workers=2, prefetch=20)]
    wait_until(lambda: sum(seen.values()) == 300 and len(q) == 0, 60, "all handled")
    for c in consumers:
        c.stop()
    assert set(seen) == set(range(300)) and set(seen.values()) == {1}
    assert consumers[0].stats().acked == 300


@pytest.mark.parametrize("lose", ["request", "reply"])
def test_reads_are_sent_again_after_a_lost_connection(
    make_cluster: Callable[..., ZooKeeperCluster], lose: str
) -> None:
    """A read lost with its connection (the listing, an item, the stats, a
    dead letter) is sent again once connected: nothing raises, nothing is
    skipped."""
    zk = make_cluster(1)
    (node,) = zk.nodes
    with ZkClientProxy(("127.0.0.1", node.client_port), name="worker") as proxy:
        client = Client(proxy.address, session_timeout=5.0, request_timeout=30)
        try:
            q = client.queue("reads", max_attempts=1)
            q.put_many(["first", "second", "third"])
            trap = proxy.lose_request if lose == "request" else proxy.lose_reply

            def through(op: int, read: Callable[[], T]) -> T:
                sprung = trap(op)
                value = read()
                assert sprung.is_set(), f"no read (op {op}) was lost"
                return value

            first = through(OP_GET_CHILDREN, lambda: q.reserve(10))  # the listing
            assert first is not None and first.payload == "first" and first.attempts == 1
            first.ack()
            second = through(OP_GET_DATA, lambda: q.reserve(10))  # the item itself
            assert second is not None and second.payload == "second"
            second.release()  # its only attempt is spent: the next reserve buries it
            third = q.reserve(10)
            assert third is not None and third.payload == "third"
            third.ack()
            stats = through(OP_EXISTS, q.stats)
            assert (stats.ready, stats.reserved, stats.dead) == (0, 0, 1)
            (dead,) = through(OP_GET_DATA, q.dead)
            assert dead.payload == "second" and dead.attempts == 1
            assert len(proxy.sprung) == 4
        finally:
            client.close()


def test_a_release_whose_answer_was_lost_with_the_session_says_the_reservation_was_lost(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    """The release is lost with the connection and the worker's session
    ends before it is back: before, ``release()`` took the item no longer
    held for one given back and returned (``ack()`` raised, as the README
    says of both), and at the last attempt the error it gave was lost."""
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with ZkClientProxy((host, int(port)), name="releasing") as proxy:
        # no cleaner: the worker's client sends no multi but the release
        worker = make_client(
            hosts=proxy.address, session_timeout=4.0, request_timeout=30, cleaner=False
        )
        producer = make_client()
        producer.queue("q").put("p")
        item = worker.queue("q").reserve(timeout=10)
        assert item is not None
        session = worker._session_credentials()
        assert session is not None
        sprung = proxy.lose_request(OP_MULTI, then_block=True)

        def fault() -> None:
            assert sprung.wait(10)
            expire_session(session, zk_hosts, wait=False)  # ended while cut off
            time.sleep(0.5)
            proxy.unblock()

        cutting = threading.Thread(target=fault)
        cutting.start()
        try:
            with pytest.raises(ReservationLost):
                item.release("boom")
        finally:
            cutting.join()
        assert producer.queue("q").stats().dead == 0


def test_a_reserve_answered_after_its_deadline_keeps_what_it_reserved(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a reserve whose answer came too late (an OperationTimeout,
    the transaction applied) raised: the item stayed reserved by this
    worker's session, held by nobody, for as long as the session lived."""
    from zkpubsub.errors import OperationTimeout
    from zkpubsub.workqueue import worker as worker_module

    client = make_client()
    q = client.queue("late")
    q.put("x")
    real = worker_module.commit

    def late(ctx: Any, txn: Any, deadline: Any, what: str) -> Any:
        answer = real(ctx, txn, deadline, what)
        if what == "reserve":
            raise OperationTimeout(f"{what}: no answer from ZooKeeper in time")
        return answer

    monkeypatch.setattr(worker_module, "commit", late)
    item = q.reserve(timeout=5)
    monkeypatch.undo()
    assert item is not None and item.payload == "x"
    item.ack()
    stats = q.stats()
    assert stats.ready == 0 and stats.reserved == 0


def test_an_item_buried_with_a_huge_error_still_tells_its_ticket(make_client: MakeClient) -> None:
    """Before, the dead letter cut the error to 2,000 characters but the
    ticket's result kept it whole: an error over the server's 1 MiB made the
    release fail, and the item stayed reserved."""
    from zkpubsub import ItemFailed

    q = make_client().queue("huge-error", max_attempts=1)
    ticket = q.put("x", want_result=True)
    item = q.reserve(timeout=5)
    assert item is not None
    item.release(RuntimeError("e" * 1_200_000))
    with pytest.raises(ItemFailed) as info:
        ticket.wait(timeout=10)
    assert "eee" in str(info.value) and len(str(info.value)) < 10_000
    stats = q.stats()
    assert stats.reserved == 0 and stats.dead == 1


def test_a_queue_named_in_multibyte_characters_takes_and_acks_big_batches(
    make_client: MakeClient,
) -> None:
    """Before, sizes were counted in characters and an ack counted no path:
    with a name of three-byte characters, one put or ack transaction went
    over the server's 1 MiB, which dropped the connection, and the call
    failed."""
    q = make_client().queue("中" * 200)
    count = 900
    q.put_many([b""] * count)  # one put: estimated to fit, it did not
    items: list[Any] = []
    while len(items) < count:
        got = q.reserve_many(count - len(items), timeout=10)
        assert got, len(items)
        items += got
    q.ack_many(items)  # one ack: the same
    stats = q.stats()
    assert stats.ready == 0 and stats.reserved == 0


def test_dead_letters_are_listed_oldest_first_whatever_their_priority(
    make_client: MakeClient,
) -> None:
    """Before, they were listed by priority first: dead(limit=1) hid an
    older dead letter of a lower priority behind a newer urgent one."""
    q = make_client().queue("dead-order", max_attempts=1)
    q.put("old, not urgent", priority=500)
    q.put("new, urgent", priority=5)
    for _ in range(2):
        item = q.reserve(timeout=5)
        assert item is not None
        item.release("no")
    assert [d.payload for d in q.dead()] == ["old, not urgent", "new, urgent"]
    assert [d.payload for d in q.dead(limit=1)] == ["old, not urgent"]


def test_dead_letters_are_read_in_windows_and_within_a_byte_budget(
    make_client: MakeClient,
) -> None:
    """A listing read every letter asked for in one pipelined round, each up
    to a message's limit: the server built them all at once, and the caller
    held them all (10,000 of a megabyte for a gateway's listing)."""
    q = make_client().queue("dead-budget", max_attempts=1)
    q.put_many([bytes([n]) * 10_000 for n in range(40)])  # more than one window
    for item in q.reserve_many(40, timeout=10):
        item.release("no")
    assert q.stats().dead == 40
    assert [d.payload[0] for d in q.dead()] == list(range(40))  # oldest first, across windows
    assert [d.payload[0] for d in q.dead(max_bytes=25_000)] == [0, 1]
    assert [d.payload[0] for d in q.dead(max_bytes=1)] == [0]  # the oldest, always
    with pytest.raises(ValueError, match="max_bytes"):
        q.dead(max_bytes=0)


def test_a_ticket_waiting_long_keeps_one_watcher(make_client: MakeClient) -> None:
    """Before, each second of a wait without a timeout added a watcher of
    its own to the client's, for as long as it waited."""
    client = make_client()
    q = client.queue("patient")
    ticket = q.put("x", want_result=True)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(ticket.wait()), daemon=True)
    waiter.start()
    time.sleep(3.5)  # about three rounds of the wait
    path = Layout(client.config.root).work_queue("patient").result(ticket.id)
    assert len(client._ctx.conn.kazoo._data_watchers[path]) == 1
    item = q.reserve(timeout=5)
    assert item is not None
    item.ack(result="done")
    waiter.join(10)
    assert got == ["done"]
