"""How workers hear of a work queue's changes, against a real server: with a
persistent recursive watch (the queue mirrored, no listing per change) and,
as the fallback, listing on every change; both reserve everything in order,
a release is heard, a cut connection loses nothing, closing removes the
watch from the server."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from zkpubsub import Client, ClientState
from zkpubsub.layout import parse_item_node
from zkpubsub.testing import four_letter
from zkpubsub.testing.proxy import TcpProxy
from zkpubsub.workqueue import Worker, WorkQueue
from zkpubsub.workqueue import mirror as queue_mirror
from zkpubsub.workqueue.lineup import RELIST_WHILE_BUSY, WATCH_UNTIL_BACKLOG, owner_test

from .helpers import cut_and_reconnect, drain, wait_until
from .test_receive import version_of

MakeClient = Callable[..., Client]
MODES = ["persistent", "listing"]


def needs_watches(zk_hosts: str, mode: str) -> None:
    if mode == "persistent" and version_of(zk_hosts) < (3, 6, 0):
        pytest.skip("persistent watches need ZooKeeper 3.6+")


def watches_of(zk_hosts: str) -> set[str]:
    host, port = zk_hosts.split(",")[0].split(":")
    out = four_letter(host, int(port), "wchp")
    return {line.strip() for line in out.splitlines() if line.startswith("/")}


def reserve_one_by_one(
    make_client: MakeClient, mode: str, count: int, queue: str = "jobs"
) -> tuple[list[Any], float]:
    """Put ``count`` items one at a time, each once the worker (idle, waiting
    in ``reserve``) has acked the one before. Returns the payloads in the
    order reserved and the requests the worker's client sent per item."""
    consumer = make_client(watch_mode=mode, cleaner=False)  # its requests alone count
    worker = consumer.queue(queue).worker()
    producer = make_client().queue(queue)
    assert worker.reserve(timeout=0.2) is None  # registered, watching, idle
    assert worker._lineup.mirrored is (mode == "persistent")
    got: list[Any] = []
    acked = threading.Semaphore(0)

    def work() -> None:
        while len(got) < count:
            item = worker.reserve(timeout=30)
            assert item is not None
            got.append(item.payload)
            item.ack()
            acked.release()

    thread = threading.Thread(target=work)
    before = consumer._ctx.conn.requests
    thread.start()
    for i in range(count):
        producer.put(i)
        assert acked.acquire(timeout=30), f"item {i} not acked"
    thread.join(30)
    return got, (consumer._ctx.conn.requests - before) / count


@pytest.mark.parametrize("mode", MODES)
def test_both_ways_of_hearing_of_items_reserve_everything_in_order(
    make_client: MakeClient, zk_hosts: str, mode: str
) -> None:
    needs_watches(zk_hosts, mode)
    producer = make_client().queue("jobs")
    consumer = make_client(watch_mode=mode)

    def priority(i: int) -> int:
        return 1 if i % 5 == 0 else 2

    for i in range(50):
        producer.put(i, priority=priority(i))
    alone = consumer.queue("jobs").worker()
    first = []
    for _ in range(50):
        item = alone.reserve(timeout=10)
        assert item is not None
        first.append(item.payload)
        item.ack()
    assert first == sorted(range(50), key=lambda i: (priority(i), i))
    alone.close()

    workers = [consumer.queue("jobs").worker() for _ in range(2)]
    got: list[list[int]] = [[], []]

    def work(n: int) -> None:
        while True:
            item = workers[n].reserve(timeout=3)
            if item is None:
                return
            got[n].append(item.payload)
            item.ack()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for i in range(50, 250):
        producer.put(i)  # while the workers reserve
    for t in threads:
        t.join(60)
    assert sorted(got[0] + got[1]) == list(range(50, 250))  # each once
    assert all(w._lineup.mirrored is (mode == "persistent") for w in workers)


def test_a_worker_with_the_watch_hears_of_puts_without_listing(
    make_client: MakeClient, zk_hosts: str
) -> None:
    needs_watches(zk_hosts, "persistent")
    got, persistent = reserve_one_by_one(make_client, "persistent", 30, "a")
    assert got == list(range(30))
    got, listing = reserve_one_by_one(make_client, "listing", 30, "b")
    assert got == list(range(30))
    # each item: a read, the reserving and the acking transactions; a
    # listing is five requests more (queue node, items/, reserved/,
    # workers/, the segment), made at least once per item without the watch
    assert persistent <= 3.5, persistent
    assert listing >= persistent + 4.5, (listing, persistent)


def test_idle_workers_leave_a_new_item_to_its_own_worker(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """Four idle workers hear of each put at once; only the item's own worker
    (by rank) tries it, the others see it reserved and send nothing."""
    needs_watches(zk_hosts, "persistent")
    count = 40
    clients = [make_client(watch_mode="persistent", cleaner=False) for _ in range(4)]
    workers = [c.queue("herd").worker() for c in clients]
    for w in workers:
        assert w.reserve(timeout=0.2) is None  # registered, watching
    for w in workers:
        w._lineup.refresh(None)  # each knows all four
    producer = make_client().queue("herd")
    got: list[tuple[int, Any]] = []
    acked = threading.Semaphore(0)
    stop = threading.Event()

    def work(n: int) -> None:
        while not stop.is_set():
            item = workers[n].reserve(timeout=0.5)
            if item is not None:
                got.append((n, item.payload))
                item.ack()
                acked.release()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # all four waiting in reserve
    before = sum(c._ctx.conn.requests for c in clients)
    try:
        for i in range(count):
            producer.put(i)
            assert acked.acquire(timeout=30), f"item {i} not acked"
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    requests = (sum(c._ctx.conn.requests for c in clients) - before) / count
    assert sorted(p for _, p in got) == list(range(count))  # each once
    assert {n for n, _ in got} == {0, 1, 2, 3}  # spread over all four
    conflicts = sum(w.conflicts for w in workers)
    # Without leaving items to their own workers, all four try each item:
    # three lose (conflicts about 3 per item), and the workers send about
    # nine requests per item. The own worker alone sends three (read,
    # reserve, ack); a slow own worker lets the others try now and then.
    assert conflicts < count // 2, conflicts
    assert requests < 5.0, requests


def test_an_item_whose_own_worker_is_busy_goes_to_another(
    make_client: MakeClient, zk_hosts: str
) -> None:
    needs_watches(zk_hosts, "persistent")
    busy_client, idle_client = make_client(), make_client()
    busy, idle = busy_client.queue("own").worker(), idle_client.queue("own").worker()
    producer = make_client().queue("own")
    producer.put("held")
    held = busy.reserve(timeout=5)  # and it never reserves again
    assert held is not None
    assert idle.reserve(timeout=0.2) is None
    assert idle._lineup.mirrored
    idle._lineup.refresh(None)  # knows both workers: half the items are busy's own
    for i in range(6):
        producer.put(i)
    assert set(drain(idle, 6, timeout=5)) == set(range(6))  # six items, each once
    held.ack()


def test_an_item_left_to_its_own_worker_is_left_from_when_it_was_heard_of(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """An urgent item heard of a while ago is tried before a less urgent
    one, whoever's own it is: LEAVE_TO_OWNER counts from the put's event,
    not from the worker's first look at its mirror after it."""
    needs_watches(zk_hosts, "persistent")
    clients = [make_client(watch_mode="persistent", cleaner=False) for _ in range(2)]
    workers = [c.queue("heard").worker() for c in clients]
    for w in workers:
        assert w.reserve(timeout=0.2) is None  # registered, watching
    for w in workers:
        w._lineup.refresh(None)  # each knows both
    producer = make_client().queue("heard")
    producer.put("urgent", priority=0)
    producer.put("later", priority=100)
    mirror = workers[0]._lineup._mirror
    assert mirror is not None
    wait_until(lambda: len(mirror.snapshot().items) == 2, 10, "the puts heard")
    (urgent,) = [n for n in mirror.snapshot().items if parse_item_node(n).priority == 0]
    ids = [w.worker_id for w in workers]
    (other,) = [w for w in workers if not owner_test(ids, w.worker_id)(urgent)]  # not its own
    time.sleep(0.3)  # both puts heard of long before LEAVE_TO_OWNER ran out
    assert other._lineup.mirrored
    item = other.reserve(timeout=5)
    assert item is not None and item.payload == "urgent"
    item.ack()


@pytest.mark.parametrize("mode", MODES)
def test_an_item_released_by_one_worker_is_heard_by_a_waiting_one(
    make_client: MakeClient, zk_hosts: str, mode: str
) -> None:
    needs_watches(zk_hosts, mode)
    first = make_client().queue("jobs")
    first.put("x")
    item = first.reserve(timeout=10)
    assert item is not None and item.payload == "x"
    other = make_client(watch_mode=mode).queue("jobs").worker()
    assert other.reserve(timeout=0.5) is None  # it is held
    taken: list[Any] = []
    waiter = threading.Thread(target=lambda: taken.append(other.reserve(timeout=20)))
    waiter.start()
    item.release()
    waiter.join(25)
    assert taken and taken[0] is not None and taken[0].payload == "x"
    assert taken[0].attempts == 2


def test_a_cut_connection_while_items_are_put_loses_nothing(
    make_client: MakeClient, zk_hosts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_watches(zk_hosts, "persistent")
    # the listing after the reconnect finds them, not the listing for safety
    monkeypatch.setattr(queue_mirror, "SAFETY_LISTING_INTERVAL", 1e9)
    host, port = zk_hosts.split(",")[0].split(":")
    with TcpProxy((host, int(port)), name="queue-mirror") as proxy:
        consumer = make_client(hosts=proxy.address, watch_mode="persistent")
        states: list[ClientState] = []
        consumer.add_listener(states.append)
        worker = consumer.queue("jobs").worker()
        producer = make_client().queue("jobs")
        got: list[int] = []
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                try:
                    item = worker.reserve(timeout=1)
                    if item is not None:
                        got.append(item.payload)
                        item.ack()
                except Exception:  # a connection loss mid-call: go on
                    continue

        thread = threading.Thread(target=work)
        thread.start()
        put = 0

        def put_next(count: int) -> None:
            nonlocal put
            for _ in range(count):
                producer.put(put)
                put += 1

        try:
            for _ in range(3):
                put_next(20)
                wait_until(lambda p=put: len(set(got)) >= p - 15, 30, "items reserved")
                # the watch and the events of the outage are gone; items are
                # put while the worker is away
                cut_and_reconnect(proxy, states, meanwhile=lambda: put_next(20))
            wait_until(lambda: set(got) == set(range(put)), 60, "every item reserved")
        finally:
            stop.set()
            thread.join(30)
        assert worker._lineup.mirrored
        assert states.count(ClientState.SUSPENDED) >= 3
        stats = producer.stats()
        assert (stats.ready, stats.reserved) == (0, 0)


def test_closing_the_last_worker_of_a_queue_removes_its_watch_from_the_server(
    make_client: MakeClient, zk_hosts: str
) -> None:
    needs_watches(zk_hosts, "persistent")
    client = make_client(watch_mode="persistent")
    queue = client.queue("jobs")
    base = client._ctx.layout.work_queue("jobs").base
    first, second = queue.worker(), queue.worker()
    for worker in (first, second):
        assert worker.reserve(timeout=0.1) is None
    assert base in watches_of(zk_hosts)
    first.close()
    assert base in watches_of(zk_hosts)  # the second still watches
    make_client().queue("jobs").put("still heard")
    item = second.reserve(timeout=10)
    assert item is not None and item.payload == "still heard"
    item.ack()
    second.close()
    wait_until(lambda: base not in watches_of(zk_hosts), 10, "the watch removed")
    assert client.status == ClientState.CONNECTED


def test_events_during_a_listing_count_over_its_result(
    make_client: MakeClient, zk_hosts: str
) -> None:
    # A listing answered before a put (or an ack) does not show it; the
    # events that came while it was under way are applied over it.
    needs_watches(zk_hosts, "persistent")
    client = make_client(watch_mode="persistent")
    queue = client.queue("jobs")
    producer = make_client().queue("jobs")
    producer.put("old")
    worker = queue.worker()
    old = worker.reserve(timeout=5)  # listed: the mirror is filled
    assert old is not None
    old.ack()
    mirror = worker._lineup._mirror
    assert mirror is not None and mirror.current()
    wait_until(lambda: not mirror.snapshot().items, 10, "the ack heard")
    producer.put("kept")
    wait_until(lambda: mirror.snapshot().items, 10, "the put heard")
    (kept,) = mirror.snapshot().items
    token = mirror.listing()  # a listing sent now, answered ...
    producer.put("new")
    wait_until(lambda: len(mirror.snapshot().items) == 2, 10, "the put heard")
    mirror.fill(token, [kept], [], [], [])  # ... before that put
    assert len(mirror.snapshot().items) == 2
    assert mirror.current()
    item = worker.reserve(timeout=5)
    assert item is not None and item.payload == "kept"
    token = mirror.listing()
    item.ack()
    wait_until(lambda: len(mirror.snapshot().items) == 1, 10, "the ack heard")
    mirror.fill(token, [kept, *mirror.snapshot().items], [], [], [])  # answered before the ack
    assert kept not in mirror.snapshot().items


def test_a_mirror_found_wrong_by_a_reserve_is_listed_again_at_once(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """A mirror that missed an ack still offers the item; the reserve that
    finds it gone has the queue listed again, instead of reading the item
    again and again until the safety listing."""
    needs_watches(zk_hosts, "persistent")
    client = make_client(watch_mode="persistent")
    worker = client.queue("jobs").worker()
    make_client().queue("jobs").put("gone")
    item = worker.reserve(timeout=5)
    assert item is not None
    item.ack()
    mirror = worker._lineup._mirror
    assert mirror is not None
    wait_until(lambda: not mirror.snapshot().items, 10, "the ack heard")
    known = mirror.snapshot()
    mirror.fill(mirror.listing(), [item.name], [], known.workers, known.segments)  # the ack missed
    assert mirror.current() and mirror.available(item.name)
    before, started = client._ctx.conn.requests, time.monotonic()
    assert worker.reserve(timeout=0.5) is None
    took, requests = time.monotonic() - started, client._ctx.conn.requests - before
    assert took < 3.0 and requests < 20, (took, requests)
    assert not mirror.snapshot().items and mirror.current()


def test_a_worker_dropped_without_close_takes_its_watch_with_it(
    make_client: MakeClient, zk_hosts: str
) -> None:
    needs_watches(zk_hosts, "persistent")
    client = make_client(watch_mode="persistent")
    base = client._ctx.layout.work_queue("jobs").base
    worker = client.queue("jobs").worker()
    assert worker.reserve(timeout=0.1) is None
    assert worker._lineup.mirrored and base in watches_of(zk_hosts)
    del worker
    gc.collect()
    wait_until(lambda: base not in watches_of(zk_hosts), 10, "the watch removed")
    hook = client._ctx.conn._watches
    assert hook is not None and not any(base in path for path in hook.paths())
    again = client.queue("jobs").worker()  # the queue can be watched again
    make_client().queue("jobs").put("heard")
    item = again.reserve(timeout=10)
    assert item is not None and item.payload == "heard"


BACKLOG = WATCH_UNTIL_BACKLOG + 8


def with_a_backlog_in_hand(
    make_client: MakeClient, zk_hosts: str
) -> tuple[WorkQueue, Client, Worker]:
    """A queue of ``BACKLOG`` items (payloads 0, 1, ...) and a worker that
    reserved and acked the first, and so holds a backlog: (the producer's
    queue, the worker's client, the worker). It no longer watches."""
    needs_watches(zk_hosts, "persistent")
    producer = make_client().queue("jobs", max_items=None)
    for i in range(BACKLOG):
        producer.put(i)
    consumer = make_client(watch_mode="persistent", cleaner=False)  # its requests alone count
    base = consumer._ctx.layout.work_queue("jobs").base
    worker = consumer.queue("jobs").worker()
    first = worker.reserve(timeout=10)
    assert first is not None and first.payload == 0
    # a backlog in hand: no watch telling of every reservation and ack
    assert not worker._lineup.mirrored
    wait_until(lambda: base not in watches_of(zk_hosts), 10, "the watch removed")
    first.ack()
    return producer, consumer, worker


def test_an_urgent_item_put_after_the_watch_was_dropped_comes_before_the_backlog(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """Between dropping its watch for a backlog and its next listing a
    worker watches nothing: the list in hand is marked stale when the watch
    goes, so the listing due within ``RELIST_WHILE_BUSY`` finds an item of
    higher priority put meanwhile, long before the backlog runs out."""
    producer, _, worker = with_a_backlog_in_hand(make_client, zk_hosts)
    producer.put("urgent", priority=0)
    time.sleep(RELIST_WHILE_BUSY + 0.2)  # the stale list's next listing is due
    item = worker.reserve(timeout=10)
    assert item is not None and item.payload == "urgent"
    item.ack()
    item = worker.reserve(timeout=10)
    assert item is not None and item.payload == 1  # then the backlog, in order
    item.ack()


def test_a_worker_with_a_backlog_in_hand_lists_instead_and_watches_again_when_dry(
    make_client: MakeClient, zk_hosts: str
) -> None:
    producer, consumer, worker = with_a_backlog_in_hand(make_client, zk_hosts)
    base = consumer._ctx.layout.work_queue("jobs").base
    got: list[Any] = [0]
    producer.put("put meanwhile")  # heard through a listing
    while len(got) < BACKLOG + 1:
        item = worker.reserve(timeout=10)
        assert item is not None, got
        got.append(item.payload)
        item.ack()
    assert got[:BACKLOG] == list(range(BACKLOG)) and got[BACKLOG] == "put meanwhile"
    assert worker.reserve(timeout=0.2) is None  # dry: watching again
    assert worker._lineup.mirrored and base in watches_of(zk_hosts)
    before = consumer._ctx.conn.requests
    producer.put("heard")
    item = worker.reserve(timeout=10)
    assert item is not None and item.payload == "heard"
    item.ack()
    # heard from the watch: the reservation, the ack, no listing
    assert consumer._ctx.conn.requests - before <= 3


def test_a_mirror_whose_watch_could_not_be_set_leaves_no_listener(
    make_client: MakeClient, zk_hosts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, each start that failed (no answer in time) left its state
    listener on the connection."""
    from zkpubsub.errors import OperationTimeout
    from zkpubsub.layout import Layout
    from zkpubsub.workqueue.mirror import Mirror

    needs_watches(zk_hosts, "persistent")
    client = make_client(watch_mode="persistent")
    conn = client._ctx.conn
    before = len(conn._listeners)

    def unanswered(*args: Any, **kwargs: Any) -> bool:
        raise OperationTimeout("add watch: no answer from ZooKeeper in time")

    monkeypatch.setattr(conn, "watch_tree", unanswered)
    mirror = Mirror(conn, Layout(client.config.root).work_queue("jobs"), lambda _outdated: None)
    for _ in range(3):
        with pytest.raises(OperationTimeout):
            mirror.start(client._ctx.deadline())
    assert len(conn._listeners) == before


def test_a_worker_closed_while_its_watch_starts_leaves_no_watch(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a close beside a reserve that was starting the worker's
    watch left that watch (and its state listener) running after the close."""
    from zkpubsub.workqueue import mirror as mirror_module

    real_start, real_stop = mirror_module.Mirror.start, mirror_module.Mirror.stop
    starting, go = threading.Event(), threading.Event()
    stopped: list[Any] = []

    def slow_start(self: Any, deadline: Any) -> bool:
        started = real_start(self, deadline)
        starting.set()
        go.wait(20)  # the close comes now
        return started

    def stop(self: Any, deadline: Any) -> None:
        stopped.append(self)
        real_stop(self, deadline)

    monkeypatch.setattr(mirror_module.Mirror, "start", slow_start)
    monkeypatch.setattr(mirror_module.Mirror, "stop", stop)
    worker = make_client().queue("closing").worker()
    outcome: list[Any] = []

    def reserve() -> None:
        try:
            outcome.append(worker.reserve(2))
        except Exception as exc:  # the worker closed under it
            outcome.append(exc)

    thread = threading.Thread(target=reserve)
    thread.start()
    assert starting.wait(20)
    worker.close()
    go.set()
    thread.join(20)
    assert outcome and not thread.is_alive()
    assert worker._lineup._mirror is None and len(stopped) == 1  # the one started, stopped
