"""Leases on work items (``visibility_timeout``): a stuck or dead holder's
item comes back when its lease runs out, by the server's clock; extensions
keep it; a zombie's ack is refused."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from zkpubsub import Client, ConnectionLost, Item, OperationTimeout, ReservationLost
from zkpubsub.workqueue.leases import ServerClock

from .helpers import wait_until
from .procs import Child

MakeClient = Callable[..., Client]


def test_an_item_held_past_its_lease_goes_to_another_worker(make_client: MakeClient) -> None:
    stuck = make_client().queue("leased", visibility_timeout=1.0)
    other = make_client().queue("leased", visibility_timeout=1.0)
    item_id = stuck.put("work")
    held = stuck.reserve(5)
    assert held is not None and held.lease == 1.0
    assert 0.5 < (held.lease_left() or 0) <= 1.0
    assert other.reserve(0.5) is None  # still leased
    started = time.monotonic()
    taken = other.reserve(10)
    waited = time.monotonic() - started
    assert taken is not None and (taken.id, taken.attempts) == (item_id, 2)
    assert waited < 4.0, f"taken over {waited:.1f}s after the lease's end"
    with pytest.raises(ReservationLost):
        held.ack()  # the zombie changes nothing
    with pytest.raises(ReservationLost):
        held.extend()
    taken.ack()
    assert len(stuck) == 0


def test_an_extended_lease_keeps_the_item(make_client: MakeClient) -> None:
    # leases far longer than the 0.4 s between extensions: a slow machine too
    holder = make_client().queue("kept", visibility_timeout=2.0)
    other = make_client().queue("kept", visibility_timeout=2.0)
    holder.put("long work")
    item = holder.reserve(5)
    assert item is not None
    version = item.reservation_version
    until = time.monotonic() + 3.5
    while time.monotonic() < until:
        item.extend()  # a lease more, from now
        assert other.reserve(0.4) is None
    assert item.reservation_version > version
    item.extend(30)  # any length
    assert 29 < (item.lease_left() or 0) <= 30
    item.ack()
    assert other.reserve(0.2) is None


def test_lapsed_items_left_for_the_next_reserve_by_its_size_are_taken_over_then(
    make_client: MakeClient,
) -> None:
    """One transaction carries one item of 600 KB: ``reserve_many`` takes one
    and leaves the others first in line. They stayed first but had lost their
    lapsed-lease mark: a worker that lists (no mirror to check them against)
    tried to reserve them as free, and lost each try (a conflict)."""
    holder = make_client().queue("big-lapsed", visibility_timeout=0.5)
    rival = make_client(watch_mode="listing").queue("big-lapsed", visibility_timeout=30)
    holder.put_many([bytes([n]) * 600_000 for n in range(3)])
    held: list[Item] = []
    while len(held) < 3:
        more = holder.reserve_many(3, timeout=5)
        assert more, "items left unreserved"
        held += more
    time.sleep(1.0)  # the holder's leases run out; its session lives on
    taken: list[Item] = []
    while len(taken) < 3:
        more = rival.reserve_many(3, timeout=5)
        assert len(more) == 1, f"{len(more)} items of 600 KB in one transaction"
        taken += more
    assert sorted(item.payload[0] for item in taken) == [0, 1, 2]
    assert [item.attempts for item in taken] == [2, 2, 2]
    assert rival.conflicts == 0
    for item in taken:
        item.ack()
    assert len(rival) == 0


def test_a_session_bound_reservation_is_never_taken_over(make_client: MakeClient) -> None:
    holder = make_client().queue("plain")  # no visibility_timeout
    other = make_client().queue("plain", visibility_timeout=0.5)
    holder.put("x")
    item = holder.reserve(5)
    assert item is not None and item.lease is None and item.lease_left() is None
    assert other.reserve(2.5) is None
    item.extend(0.5)  # it may be given a lease later
    taken = other.reserve(5)
    assert taken is not None and taken.attempts == 2
    taken.ack()


def test_a_sigkilled_workers_item_comes_back_at_its_lease_not_its_session(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    """The child's session lasts 10 s; its lease 1 s."""
    q = make_client().queue("killed", visibility_timeout=1.0)
    item_id = q.put("resize")
    with Child(zk_hosts, zk_root, "leased-worker", "hang-leased-worker", "killed", "1") as child:
        assert child.expect("got").split()[1:] == [item_id, "1"]
        child.kill()
        killed = time.monotonic()
    again = q.reserve(timeout=20)
    waited = time.monotonic() - killed
    assert again is not None and (again.id, again.attempts) == (item_id, 2)
    assert waited < 6.0, f"came back after {waited:.1f}s"  # not the 10 s session
    again.ack()


def test_the_consumer_extends_the_leases_of_items_in_hand(make_client: MakeClient) -> None:
    # extended at half a lease: 0.75 s to spare each time
    q = make_client().queue("slow", visibility_timeout=1.5)
    q.put_many(["a", "b"])
    done: list[str] = []

    def slow(item: Item) -> None:
        time.sleep(4.0)  # more than two leases long
        done.append(item.payload)

    consumer = q.consume(slow, prefetch=2)  # the second item waits in hand
    rival = make_client().queue("slow", visibility_timeout=1.5)
    assert rival.reserve(8.5) is None
    wait_until(lambda: len(done) == 2, 20, "both handled")
    consumer.stop()
    assert consumer.stats().acked == 2 and consumer.stats().lost == 0


def test_the_consumer_stops_extending_after_max_lease(make_client: MakeClient) -> None:
    q = make_client().queue("stuck", visibility_timeout=0.5)
    q.put("x")
    release = threading.Event()
    started = threading.Event()

    def stuck(item: Item) -> None:
        started.set()
        release.wait(30)

    consumer = q.consume(stuck, max_lease=1.0)
    assert started.wait(10)
    rival = make_client().queue("stuck", visibility_timeout=30)
    taken = rival.reserve(10)
    assert taken is not None and taken.attempts == 2
    release.set()
    wait_until(lambda: consumer.stats().lost == 1, 10, "the stuck handler's ack refused")
    consumer.stop()
    taken.ack()


def test_bad_leases_are_refused(make_client: MakeClient) -> None:
    client = make_client()
    for bad in (0, -1, True, "5"):
        with pytest.raises(ValueError, match="visibility_timeout"):
            client.queue("q", visibility_timeout=bad)  # type: ignore[arg-type]
    q = client.queue("q")
    with pytest.raises(ValueError, match="max_lease"):
        q.consume(lambda item: None, max_lease=0)
    q.put(1)
    item = q.reserve(5)
    assert item is not None
    with pytest.raises(
        ValueError, match="extend\\(\\) needs seconds: the queue has no visibility_timeout"
    ):
        item.extend()  # no visibility_timeout to extend by
    item.ack()


def test_the_server_clock_is_never_ahead() -> None:
    clock = ServerClock()
    assert clock.now_ms() is None and not clock.expired(0, 1.0)
    clock.saw(1_000_000, received=time.monotonic() - 2.0)
    now = clock.now_ms()
    assert now is not None and 1_001_990 < now < 1_002_500
    assert clock.expired(1_000_000, 1.5) and not clock.expired(1_000_000, 2.5)


def _lease_judged_then_released_and_reserved_again(
    make_client: MakeClient, name: str
) -> bool | None:
    """Worker B judges A's lease on X run out but takes another item; A
    releases X and C reserves it, with a fresh lease. ``True`` if C still
    holds X after B's next reserve, ``None`` if B took X at once (a
    rightful takeover: the set-up did not happen)."""
    lease = 1.0
    queues = [make_client().queue(name, visibility_timeout=lease) for _ in range(3)]
    a, b, c = (q.worker() for q in queues)
    queues[0].put("X", priority=100)
    x_of_a = a.reserve(timeout=5)
    assert x_of_a is not None and x_of_a.payload == "X"
    queues[0].put("Y1", priority=100)
    y1 = b.reserve(timeout=5)  # B's first look: X reserved
    queues[0].put("Y2", priority=0)  # more urgent than X
    time.sleep(lease + 0.3)  # A's lease runs out; A is slow, not gone
    y2 = b.reserve(timeout=5)  # B's second look: X's lease ran out
    assert y1 is not None and y2 is not None
    if y2.payload != "Y2":
        return None
    x_of_a.release("given back")  # nobody took it over: allowed
    x_of_c = c.reserve(timeout=5)
    assert x_of_c is not None and x_of_c.payload == "X"
    conflicts = b.conflicts
    taken = b.reserve(timeout=0.3)  # X's reservation is C's, 0.3 s into its lease
    try:
        x_of_c.ack()
    except ReservationLost:
        return False
    finally:
        for item in (taken, y1, y2):
            if item is not None:
                item.ack()
    # B tried X (and found it held), rather than never getting to it
    return taken is None and b.conflicts > conflicts


def test_a_lease_judged_run_out_is_not_taken_from_a_reservation_made_since(
    make_client: MakeClient,
) -> None:
    """A takeover deleted the lapsed reservation at the version it had
    read; a reservation made since is a new node, at version 0 again: B
    took X from C 3 to 17 ms into C's lease (a probe, every time the set-up
    was reached)."""
    for attempt in range(6):  # B may take X at once: then the set-up is tried again
        outcome = _lease_judged_then_released_and_reserved_again(make_client, f"q{attempt}")
        if outcome is not None:
            assert outcome, "the item was taken from a reservation made since"
            return
    pytest.fail("the set-up was never reached")


def _answer_lost_once(monkeypatch: pytest.MonkeyPatch, what: str, error: type) -> list[str]:
    """The first ``what`` transaction is applied, and its answer lost."""
    import zkpubsub.workqueue.worker as worker_module

    real = worker_module.commit
    lost: list[str] = []

    def applied_then_lost(ctx: Any, txn: Any, deadline: Any, doing: str) -> Any:
        results = real(ctx, txn, deadline, doing)
        if doing == what and not lost:
            lost.append(doing)
            raise error(f"{doing}: as if the answer had been lost")
        return results

    monkeypatch.setattr(worker_module, "commit", applied_then_lost)
    return lost


def _lookup_fails_once(monkeypatch: pytest.MonkeyPatch, *calls: int) -> list[str]:
    """The first look at whether a reservation is ours (or the ``calls``,
    counted from 1) gets no answer."""
    import zkpubsub.workqueue.worker as worker_module

    real = worker_module.held_version
    failed: list[str] = []
    made = itertools.count(1)

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        if next(made) in (calls or (1,)):
            failed.append(args[2])
            raise OperationTimeout("as if the lookup had found no server")
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "held_version", fails_once)
    return failed


@pytest.mark.parametrize("error", [OperationTimeout, ConnectionLost])
def test_an_extension_whose_answer_was_lost_is_not_taken_for_a_lost_item(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, error: type
) -> None:
    """Before, an extension applied but answered late (OperationTimeout)
    left the item's reservation version behind: the next extension was
    refused and called ReservationLost, the lease keeper let the item go,
    and another worker took it over while it was still being handled."""
    queue = make_client(request_timeout=2.0).queue("extended", visibility_timeout=30.0)
    queue.put("work")
    item = queue.reserve(5)
    assert item is not None
    lost = _answer_lost_once(monkeypatch, "extend a lease", error)
    if error is OperationTimeout:
        with pytest.raises(OperationTimeout):  # said, not known extended
            item.extend()
        assert item.reservation_version == 1  # the version it left was read
    else:
        item.extend()  # extended again, from the version read
        assert item.reservation_version == 2
    assert lost
    before = item.reservation_version
    item.extend()  # from that version
    assert item.reservation_version == before + 1
    item.ack()
    assert len(queue) == 0


def test_an_extension_refused_for_a_version_an_unanswered_one_left_goes_on(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer lost and the look at the version too: the next extension,
    sent at the old version, is refused; the server is asked whose the
    reservation is before it is called lost."""
    queue = make_client(request_timeout=2.0).queue("refused", visibility_timeout=30.0)
    queue.put("work")
    item = queue.reserve(5)
    assert item is not None
    _answer_lost_once(monkeypatch, "extend a lease", OperationTimeout)
    looked = _lookup_fails_once(monkeypatch)
    with pytest.raises(OperationTimeout):
        item.extend()
    assert looked and item.reservation_version == 0  # behind the server's 1
    item.extend()
    assert item.reservation_version == 2
    item.ack()


def test_a_reservation_whose_answer_and_lookup_were_lost_is_handed_out_next_time(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the reservation applied (no lease) and the lookup after the
    lost answer failed too: no one had the item in hand, no one could take
    it, and it stayed reserved for as long as the session lived."""
    queue = make_client(request_timeout=2.0).queue("in-doubt")
    other = make_client().queue("in-doubt")
    item_id = queue.put("work")
    worker = queue.worker()
    _answer_lost_once(monkeypatch, "reserve", ConnectionLost)
    looked = _lookup_fails_once(monkeypatch)
    with pytest.raises(OperationTimeout):
        worker.reserve(5)
    assert looked
    assert queue.stats().reserved == 1 and other.reserve(0.5) is None  # ours, in doubt
    item = worker.reserve(5)  # found ours: handed out
    assert item is not None and (item.id, item.payload, item.attempts) == (item_id, "work", 1)
    item.ack()
    assert queue.stats().reserved == 0 and len(queue) == 0


def test_reservations_in_doubt_found_ours_are_kept_when_a_later_lookup_fails(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_client(request_timeout=2.0).queue("in-doubt-two")
    ids = [queue.put(n) for n in range(2)]
    worker = queue.worker()
    _answer_lost_once(monkeypatch, "reserve", ConnectionLost)
    # the lookup after the loss fails, then the second of the next two
    _lookup_fails_once(monkeypatch, 1, 3)
    with pytest.raises(OperationTimeout):
        worker.reserve_many(2, 5)
    first = worker.reserve_many(2, 5)  # the one found before the failure
    assert [item.id for item in first] == ids[:1]
    second = worker.reserve_many(2, 5)  # the other, still in doubt, found now
    assert [item.id for item in second] == ids[1:]
    for item in first + second:
        item.ack()
    assert queue.stats().reserved == 0 and len(queue) == 0


def test_a_reservation_in_doubt_is_given_back_when_its_worker_closes(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_client(request_timeout=2.0).queue("in-doubt-closed")
    other = make_client().queue("in-doubt-closed")
    item_id = queue.put("work")
    worker = queue.worker()
    _answer_lost_once(monkeypatch, "reserve", ConnectionLost)
    _lookup_fails_once(monkeypatch)
    with pytest.raises(OperationTimeout):
        worker.reserve(5)
    worker.close()
    taken = other.reserve(5)
    assert taken is not None and taken.id == item_id
    taken.ack()


def test_the_lease_keeper_ends_with_the_consumer_s_workers(make_client: MakeClient) -> None:
    """Before, a consumer whose client closed (no stop()) left its lease
    keeper's thread waiting for ever."""
    client = make_client()
    queue = client.queue("kept", visibility_timeout=5.0)
    handled = threading.Event()
    consumer = queue.consume(lambda item: handled.set())
    queue.put(1)
    assert handled.wait(10)
    name = "zkpubsub-leases-kept"
    wait_until(lambda: any(t.name == name for t in threading.enumerate()), 5, "the keeper")
    client.close()
    wait_until(lambda: not consumer.running, 10, "the workers ended")
    wait_until(
        lambda: not any(t.name == name for t in threading.enumerate()), 10, "the keeper ended"
    )
