"""The work queue under faults: nothing acknowledged is lost, nothing is
held by two live workers at once, zombies cannot ack.

Producers put numbered items, workers (threads with a client each, or
child processes driven step by step so that they can be killed or stopped
between any two steps) reserve, handle and ack them; every put and every
reservation is recorded and checked by ``zkpubsub.testing.queue_checker``.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import pytest

from zkpubsub import Client, Item
from zkpubsub.layout import Layout
from zkpubsub.testing import expire_session
from zkpubsub.testing.faults import FaultInjector
from zkpubsub.testing.ledger import Ledger
from zkpubsub.testing.proxy import OP_MULTI, ZkClientProxy
from zkpubsub.testing.queue_checker import (
    QueueAudit,
    QueueCheckResult,
    audit_queue,
    check_queue_against,
)
from zkpubsub.testing.queue_history import HoldRecord, QueueHistory
from zkpubsub.testing.queue_workload import QueueWorkload, WorkerProcess
from zkpubsub.testing.txnlog import ClusterLog
from zkpubsub.workqueue import lineup

from .scenarios import SESSION_TIMEOUT, ScenarioRecorder, leader_changes, log_sprung
from .test_connection_loss import _spring_on_any, client_proxies, proxied_hosts

pytestmark = pytest.mark.local_zk

QUEUE = "jobs"


def queue_workload(cluster, root: str, *, hosts: str | None = None, **options: object):
    return QueueWorkload(
        hosts or cluster.hosts,
        root,
        queue=QUEUE,
        session_timeout=SESSION_TIMEOUT,
        log=ClusterLog.of(cluster),
        **options,  # type: ignore[arg-type]
    )


class QueueFinished(NamedTuple):
    result: QueueCheckResult
    audit: QueueAudit
    history: QueueHistory
    ledger: Ledger


def finish_queue(
    name: str,
    wl: QueueWorkload,
    injector: FaultInjector,
    scenario: ScenarioRecorder,
    *,
    drain_timeout: float = 90.0,
) -> QueueFinished:
    """Stop producing, heal, let the workers drain the queue, audit it,
    stop the workers and check (holds judged against the workers' sessions
    as the servers logged them); record the figures. Asserts nothing."""
    wl.stop_producing()
    injector.heal()
    injector.wait_healthy()
    wl.drain(drain_timeout)
    # An ack of unknown outcome counts as done for the drain; if it was not
    # applied, the item comes back once its dead worker's session ends: the
    # workers run on until the queue is empty (or the audit gives up).
    audit = audit_queue(injector.cluster.hosts, wl.root, wl.queue, timeout=3 * SESSION_TIMEOUT + 10)
    wl.stop_workers()
    for proc in wl.processes.values():
        proc.kill()
    history, ledger = wl.history(), wl.ledger()
    result = check_queue_against(history, ledger)
    scenario.record(
        name, result, faults=len(injector.log.events()), audit=audit, notes=history.notes
    )
    return QueueFinished(result, audit, history, ledger)


def assert_queue_clean(
    done: QueueFinished, *, unknown_at_most: int = 0, failed_at_most: int = 0
) -> None:
    """Everything the checker forbids is zero; puts of unknown outcome and
    refused ones are bounded (by default none); the audit finds the queue
    empty, with no reservation and no dead letter."""
    result, audit = done.result, done.audit
    assert result.acked > 0, result.describe()
    assert result.unknown <= unknown_at_most, result.describe()
    assert result.failed <= failed_at_most, result.describe()
    assert result.acked >= result.attempted - unknown_at_most - failed_at_most
    assert result.ok, result.describe()
    assert result.unexpected == 0 and result.lost == 0, result.describe()
    assert result.double_holds == 0, result.describe()
    assert audit.ok, audit.describe()
    # the servers' logs show every acknowledged put as an item node (so the
    # checker's count of puts written twice had them all to count)
    unseen = [
        p.key for p in done.history.puts if p.outcome == "ok" and not done.ledger.items[p.key]
    ]
    assert not unseen, f"acknowledged puts with no item node in the servers' logs: {unseen[:5]}"


def holds_of(wl: QueueWorkload, item_id: str) -> list[HoldRecord]:
    return sorted((h for h in wl.history().holds if h.item_id == item_id), key=lambda h: h.attempts)


def test_q1_leader_kill_nine_three_times_with_four_workers(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl = queue_workload(ens.cluster, "/q1")
    try:
        for _ in range(2):
            wl.add_producer()
        for prefetch in (1, 1, 4, 4):
            wl.add_worker(prefetch=prefetch)
        wl.start_producing()
        wl.wait_acks(100)
        injector.bounce_leader(3, down_for=0.5, between=1.0)
        wl.wait_acks(100)  # the workers go on after the last kill
        done = finish_queue("Q1 leader kill -9 x3, 4 workers", wl, injector, scenario)
    finally:
        wl.close()
    assert leader_changes(done.ledger) >= 3, done.ledger.epochs
    assert done.history.notes.get("suspensions", 0) >= 3, done.history.notes
    assert_queue_clean(done)


def test_q6_leader_partitioned_with_four_workers(ensemble, scenario):
    ens = ensemble(3, mesh=True)
    injector = FaultInjector(ens.cluster, mesh=ens.mesh)
    wl = queue_workload(ens.cluster, "/q6")
    try:
        wl.add_producer()
        for prefetch in (1, 1, 4, 4):
            wl.add_worker(prefetch=prefetch)
        wl.start_producing()
        wl.wait_acks(50)
        injector.isolate(injector.wait_healthy())
        time.sleep(2 * SESSION_TIMEOUT)  # the length of the partition
        wl.wait_acks(50)  # the majority side serves meanwhile
        injector.heal()
        injector.wait_healthy()
        wl.wait_acks(50)
        done = finish_queue("Q6 leader partitioned, 4 workers", wl, injector, scenario)
    finally:
        wl.close()
    assert leader_changes(done.ledger) >= 1, done.ledger.epochs
    assert_queue_clean(done)


def test_q7_connection_loss_in_the_middle_of_a_put(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    proxies = client_proxies(ens.cluster)
    wl = queue_workload(ens.cluster, "/q7-put")
    try:
        producer = wl.add_producer(hosts=proxied_hosts(proxies))
        wl.add_worker()
        wl.start_producing()
        wl.wait_puts(20)
        for _ in range(4):
            # applied by the server, the reply lost
            _spring_on_any(proxies, lambda p, g: p.lose_reply(OP_MULTI, group=g))
            wl.wait_puts(10)
            # never reaches the server
            _spring_on_any(proxies, lambda p, g: p.lose_request(OP_MULTI, group=g))
            wl.wait_puts(10)
        sprung = log_sprung(injector, proxies)
        done = finish_queue("Q7 connection loss mid-put", wl, injector, scenario)
    finally:
        wl.close()
        for p in proxies:
            p.close()
    assert sprung == 8
    cuts = done.history.notes.get(f"suspensions by {producer.client_id}", 0)
    assert cuts >= 8, done.history.notes
    assert done.result.put_duplicates == 0, done.result.describe()
    assert_queue_clean(done)  # the session survived: every put was settled


def test_q7_connection_loss_in_the_middle_of_an_ack(ensemble, scenario):
    """The worker's next request after its handler is the ack's
    transaction: the trap is armed there, so it springs on the ack."""
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    proxies = client_proxies(ens.cluster)
    wl = queue_workload(ens.cluster, "/q7-ack", rate=100)
    trapped: dict[str, str] = {}  # item id -> what was lost
    traps = ["reply", "request"] * 3

    def arm_before_ack(item: Item) -> None:
        if not traps or item.attempts > 1:
            return
        kind = traps.pop(0)
        trapped[item.id] = kind
        # only on the proxy the worker is connected through (it is the only
        # client of these proxies): after the cut it reconnects elsewhere
        (current,) = [p for p in proxies if p.links()]
        current.lose_reply(OP_MULTI) if kind == "reply" else current.lose_request(OP_MULTI)

    try:
        wl.add_producer()
        victim = wl.add_worker(hosts=proxied_hosts(proxies), hook=arm_before_ack)
        wl.start_producing()
        wl.wait_until(lambda: not traps, 60, "every trap to be armed")
        wl.wait_acks(20)
        for p in proxies:
            p.disarm()
        sprung = log_sprung(injector, proxies)
        done = finish_queue("Q7 connection loss mid-ack", wl, injector, scenario)
        history, result = done.history, done.result
    finally:
        wl.close()
        for p in proxies:
            p.close()
    assert sprung == 6
    cuts = history.notes.get(f"suspensions by {victim.client_id}", 0)
    assert cuts >= 6, history.notes
    mine = [h for h in history.holds if h.worker == victim.client_id]
    assert {h.finish for h in mine} == {"acked"}, [h for h in mine if h.finish != "acked"]
    for item_id in trapped:
        (hold,) = [h for h in history.holds if h.item_id == item_id]
        assert hold.finish == "acked" and hold.attempts == 1  # settled, not redelivered
    assert result.redelivered == 0 and result.double_acks == 0, result.describe()
    assert_queue_clean(done)


def test_q8_session_expiry_of_a_worker_holding_a_reservation(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl = queue_workload(ens.cluster, "/q8", rate=100)
    holding, go_on = threading.Event(), threading.Event()
    held: list[str] = []

    def stall_first(item: Item) -> None:
        if not held:
            held.append(item.id)
            holding.set()
            go_on.wait(60)  # "processing" while the session ends on the server

    try:
        wl.add_producer()
        victim = wl.add_worker(hook=stall_first)
        wl.add_worker()
        wl.start_producing()
        assert holding.wait(60)
        expire_session(victim)
        injector.log.add("worker session expired on the server")
        # the item comes back to the other worker, one attempt more
        wl.wait_until(lambda: len(holds_of(wl, held[0])) >= 2, 30, "the item to come back")
        go_on.set()  # the victim acks what it no longer holds
        wl.wait_until(
            lambda: holds_of(wl, held[0])[0].finish != "open", 30, "the victim's ack to end"
        )
        acked_before = sum(
            1 for h in wl.history().holds if h.worker == victim.client_id and h.finish == "acked"
        )
        wl.wait_acks(30)
        done = finish_queue(
            "Q8 worker session expiry holding a reservation", wl, injector, scenario
        )
        history, result = done.history, done.result
    finally:
        go_on.set()
        wl.close()
    first, second = [h for h in history.holds if h.item_id == held[0]][:2]
    assert first.worker == victim.client_id and first.attempts == 1
    assert first.finish == "lost", first  # ReservationLost: the zombie changed nothing
    assert second.attempts == 2 and second.finish == "acked"
    acked_after = sum(
        1 for h in history.holds if h.worker == victim.client_id and h.finish == "acked"
    )
    assert acked_after > acked_before  # the victim works on with its new session
    assert history.notes.get("sessions lost", 0) >= 1
    assert len(done.ledger.sessions[victim.client_id]) == 2  # as the servers saw it
    assert result.rejected == 1, result.describe()
    assert_queue_clean(done)


def _kill_during_ack(proc: WorkerProcess, proxies: list[ZkClientProxy], lose: str) -> None:
    """Send ``ack`` and kill the worker once its transaction was lost on
    the way (``request``) or applied with its reply lost (``reply``)."""
    events = [
        p.lose_reply(OP_MULTI, then_block=True)
        if lose == "reply"
        else p.lose_request(OP_MULTI, then_block=True)
        for p in proxies
    ]
    proc.send("ack")
    deadline = time.monotonic() + 30
    while not any(e.is_set() for e in events):
        assert time.monotonic() < deadline, "the ack never reached the proxy"
        time.sleep(0.01)
    proc.kill()
    for p in proxies:
        p.disarm()
        p.unblock()


def test_q9_a_worker_killed_before_after_processing_and_during_its_ack(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    proxies = client_proxies(ens.cluster)
    wl = queue_workload(ens.cluster, "/q9")
    try:
        wl.add_producer("producer")
        for seq in range(1, 5):
            assert wl.put_one("producer", seq)
        items: dict[str, str] = {}
        # Each of the four holds its item before any is killed: an item whose
        # worker's session ended comes back, and a worker started after that
        # (on a slow machine) would take it instead of its own.
        before = wl.add_worker_process("killed-before")
        items["before"] = before.reserve()["item"]
        after = wl.add_worker_process("killed-after")
        items["after"] = after.reserve()["item"]
        acked = wl.add_worker_process("killed-acked", hosts=proxied_hosts(proxies))
        acked_hold = acked.reserve()
        items["applied"] = acked_hold["item"]
        sending = wl.add_worker_process("killed-sending", hosts=proxied_hosts(proxies))
        sending_hold = sending.reserve()
        items["lost on the way"] = sending_hold["item"]
        # (a) killed before processing
        before.kill()
        # (b) killed after processing, before the ack
        after.handle()
        after.kill()
        # (c) killed during the ack: applied by the server, the reply lost
        acked.handle()
        _kill_during_ack(acked, proxies, "reply")
        acked.in_flight(acked_hold["hold"])
        # (d) killed during the ack: the request lost on the way
        sending.handle()
        _kill_during_ack(sending, proxies, "request")
        sending.in_flight(sending_hold["hold"])
        for _ in range(4):
            injector.log.add("kill -9 a worker process")
        log_sprung(injector, proxies)
        wl.add_worker("rescuer")  # takes what the dead left, once their sessions end
        for seq in range(5, 11):
            assert wl.put_one("producer", seq)
        done = finish_queue(
            "Q9 worker killed before/after processing, during ack", wl, injector, scenario
        )
        result = done.result
    finally:
        wl.close()
        for p in proxies:
            p.close()
    for case in ("before", "after", "lost on the way"):
        first, again = holds_of(wl, items[case])
        assert (first.attempts, again.attempts) == (1, 2), case
        assert again.worker == "rescuer" and again.finish == "acked", case
    # the ack that was applied is not undone: the item never comes back
    (only,) = holds_of(wl, items["applied"])
    assert only.finish == "unknown" and only.handled_at is not None
    assert result.duplicates == 2  # handled, killed, handled again: (b) and (d)
    assert result.unknown_acks == 2
    assert_queue_clean(done)


def test_q10_a_zombie_worker_stopped_past_its_session_timeout_cannot_ack(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl = queue_workload(ens.cluster, "/q10")
    probe = wl.client("probe")
    paths = Layout(probe.root).work_queue(QUEUE)
    go_on = threading.Event()
    rescued: list[str] = []

    def hold_on(item: Item) -> None:  # the rescuer keeps the first item a while
        if not rescued:
            rescued.append(item.id)
            go_on.wait(60)

    def reserved() -> list[str]:
        return sorted(probe._ctx.conn.kazoo.get_children(paths.reserved))

    try:
        wl.add_producer("producer")
        assert wl.put_one("producer", 1)
        zombie = wl.add_worker_process("zombie")
        first = zombie.reserve()
        zombie.handle()
        zombie.pause()  # SIGSTOP past the session timeout
        injector.log.add("worker SIGSTOP")
        wl.wait_until(lambda: not reserved(), 4 * SESSION_TIMEOUT, "the zombie's session to end")
        wl.add_worker("rescuer", hook=hold_on)
        wl.wait_until(lambda: bool(rescued), 30, "the rescuer to take the item")
        zombie.resume()
        # (a) the item is held by another worker: the zombie's ack is refused
        assert zombie.ack() == "lost"
        go_on.set()
        wl.wait_acks(1)
        # (b) the item is done already: refused too
        wl.stop_workers()
        assert wl.put_one("producer", 2)
        second = zombie.reserve()
        assert second["attempts"] == 1
        zombie.pause()
        injector.log.add("worker SIGSTOP")
        wl.wait_until(lambda: not reserved(), 4 * SESSION_TIMEOUT, "the zombie's session to end")
        late = wl.add_worker_process("late")
        again = late.reserve()
        assert again["item"] == second["item"] and again["attempts"] == 2
        assert late.ack() == "acked"
        zombie.resume()
        assert zombie.ack() == "lost"
        # the zombie, on its new session, is a good worker again
        assert wl.put_one("producer", 3)
        third = zombie.reserve()
        assert zombie.ack() == "acked"
        done = finish_queue("Q10 zombie worker (SIGSTOP) x2", wl, injector, scenario)
        result = done.result
    finally:
        go_on.set()
        wl.close()
    assert rescued == [first["item"]]
    (stale, fresh) = holds_of(wl, first["item"])
    assert (stale.finish, fresh.finish, fresh.attempts) == ("lost", "acked", 2)
    assert third["key"] == ["producer", 3]
    assert result.rejected == 2, result.describe()
    # the zombie's first two sessions ended on the server before the others
    # took its items: no two live holds overlapped
    assert len(done.ledger.sessions["zombie"]) == 3, done.ledger.sessions["zombie"]
    assert_queue_clean(done)


def test_a_lost_reserve_answer_never_claims_a_sibling_workers_item(ensemble, monkeypatch):
    """Two workers of one client share its session. Both reserve the only
    item at once, through a proxy that loses the reply of the first reserve
    transaction and cuts the connection: the second one, in flight behind
    it, is lost with it. One reservation landed; after reconnecting, each
    worker must recognise it as its own or not (by its name: the session is
    the same), so exactly one of them gets the item. Repeated until a round
    had both transactions in flight (nearly every round does).

    A worker leaves a new item to its own worker for a moment first; both
    try it at once when that worker is slower (or without the watch). Here
    they must, so the moment is set to nothing."""
    monkeypatch.setattr(lineup, "LEAVE_TO_OWNER", 0.0)
    ens = ensemble(1)
    proxy = ZkClientProxy(("127.0.0.1", ens.cluster.nodes[0].client_port))
    client = Client(proxy.address, root="/q-sibling", session_timeout=SESSION_TIMEOUT)
    exercised = 0
    try:
        for round_ in range(5):
            workers = [client.queue(f"shared-{round_}") for _ in range(2)]
            for q in workers:  # registered, paths made: the race starts at the listing
                assert q.reserve(0.01) is None
            item_id = workers[0].put("only")
            group = threading.Event()
            proxy.lose_reply(OP_MULTI, group=group)
            start = threading.Barrier(2)
            got: list[Item | None] = [None, None]

            def reserve(i: int, q=workers, start=start, got=got) -> None:
                start.wait(10)
                got[i] = q[i].reserve(1.5 * SESSION_TIMEOUT)  # the other waits it out

            threads = [threading.Thread(target=reserve, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            proxy.disarm()
            assert group.is_set(), "the trap never sprang"
            holders = [g for g in got if g is not None]
            assert len(holders) == 1, f"round {round_}: {got}"
            assert holders[0].id == item_id and holders[0].attempts == 1
            holders[0].ack()
            assert len(workers[0]) == 0
            exercised += proxy.behind[-1] >= 1
            if exercised:
                break
    finally:
        client.close()
        proxy.close()
    assert exercised, "no round had both reserve transactions in flight"
