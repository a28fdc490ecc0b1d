"""Publish/subscribe under real faults: nothing acknowledged is lost.

Each test starts its own ensemble, runs publishers and subscribers against
it, breaks it, heals it, then checks the recorded history (see
``zkpubsub.testing.checker`` for what "entitled" and "lost" mean) and audits
the tree (``zkpubsub.testing.audit``). Scenario numbers are those of docs/reliability.md.
"""

from __future__ import annotations

import time

import pytest

from zkpubsub import Client, ClientState
from zkpubsub.testing import ZooKeeperCluster, ZooKeeperNode, expire_session
from zkpubsub.testing.faults import (
    FaultInjector,
    make_unwritable,
    make_writable,
    run_unprivileged,
    sessions_on,
)
from zkpubsub.testing.proxy import ZkClientProxy
from zkpubsub.testing.workload import Workload

from .scenarios import CLEANER_GRACE, SESSION_TIMEOUT, assert_clean, finish, pubsub_workload

pytestmark = pytest.mark.local_zk


def busiest(cluster: ZooKeeperCluster, clients: list[Client], among: list[ZooKeeperNode]):
    """The node of ``among`` most of ``clients`` are connected to, and how many."""
    ids = set()
    for c in clients:
        creds = c._session_credentials()
        if creds is not None:
            ids.add(creds[0])
    counts = {n.myid: len(sessions_on(n) & ids) for n in among}
    node = max(among, key=lambda n: counts[n.myid])
    return node, counts[node.myid]


def all_clients(wl: Workload) -> list[Client]:
    return [*wl.subscribers.values(), *wl.publishers.values()]


def test_1_leader_kill_nine_five_times_during_a_publish_burst(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s1")
    try:
        wl.start_publishing()
        wl.wait_acked(50)
        killed = injector.bounce_leader(5, down_for=0.5, between=1.0)
        wl.wait_acked(50)  # publishing goes on after the last kill
        result, audit = finish("1 leader kill -9 x5", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert len(killed) == 5
    assert injector.log.count("kill -9") == 5
    assert_clean(result, audit)


def test_2_kill_the_follower_the_clients_are_connected_to(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s2", subscribers=5)
    moved = 0
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        for _ in range(2):
            injector.wait_healthy()
            victim, connected = busiest(ens.cluster, all_clients(wl), ens.cluster.followers())
            assert connected >= 1, "no client on a follower"
            moved += connected
            injector.kill(victim)
            wl.wait_acked(30)  # its clients moved to the other servers
            injector.start(victim)
            wl.wait_acked(10)
        result, audit = finish("2 kill the clients' follower x2", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert moved >= 2
    assert_clean(result, audit)


def test_3_rolling_restart(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s3")
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        injector.rolling_restart(between=1.0)
        wl.wait_acked(30)
        result, audit = finish("3 rolling restart", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert injector.log.count("stop") == 3
    assert_clean(result, audit)


def test_4_majority_lost_longer_than_the_session_timeout_then_restored(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s4", publish_timeout=40.0)
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        outage_started = time.monotonic()
        victims = injector.kill_majority(down_for=1.5 * SESSION_TIMEOUT)
        outage = time.monotonic() - outage_started
        wl.wait_acked(30)
        result, audit = finish(
            "4 majority down > session timeout", wl, injector, scenario, cleaners
        )
    finally:
        wl.close()
    assert len(victims) == 2
    assert outage > SESSION_TIMEOUT
    assert_clean(result, audit)


def test_5_sigstop_shorter_and_longer_than_the_session_timeout(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s5")
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        injector.pause(injector.leader(), 0.5 * SESSION_TIMEOUT)
        injector.wait_healthy()
        wl.wait_acked(30)
        victim, _ = busiest(ens.cluster, all_clients(wl), ens.cluster.nodes)
        injector.pause(victim, 2.0 * SESSION_TIMEOUT)
        injector.wait_healthy()
        wl.wait_acked(30)
        result, audit = finish("5 SIGSTOP short and long", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert injector.log.count("SIGCONT") == 2
    assert_clean(result, audit)


def test_6_one_server_partitioned_from_the_others(ensemble, scenario):
    ens = ensemble(3, mesh=True)
    injector = FaultInjector(ens.cluster, mesh=ens.mesh)
    wl, cleaners = pubsub_workload(ens.cluster, "/s6")
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        leader = injector.wait_healthy()
        injector.isolate(leader)
        time.sleep(2 * SESSION_TIMEOUT)  # the length of the partition
        wl.wait_acked(20)  # the majority side serves meanwhile
        injector.heal()
        injector.wait_healthy()
        follower, _ = busiest(ens.cluster, all_clients(wl), ens.cluster.followers())
        injector.isolate(follower)
        time.sleep(2 * SESSION_TIMEOUT)
        wl.wait_acked(20)
        result, audit = finish("6 one server partitioned x2", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert injector.log.count("heal partition") == 2
    assert_clean(result, audit)


EXPIRIES = 12


def test_8a_real_session_expiry_of_subscribers_again_and_again(ensemble, scenario):
    """Expiring a session through another connection races with the
    client's reconnect; now and then the server ends the session yet keeps
    the client's new connection open. The client must notice either way."""
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s8a")
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        names = list(wl.subscribers)
        for i in range(EXPIRIES):
            name = names[i % len(names)]
            expire_session(wl.subscribers[name])
            injector.log.add(f"expire session of {name}")
            wl.wait_acked(10)
        wl.wait_acked(30)
        result, audit = finish(
            f"8a subscriber session expiry x{EXPIRIES}", wl, injector, scenario, cleaners
        )
        history = wl.history()
    finally:
        wl.close()
    gaps = {s.name: s.gaps for s in history.subscribers}
    assert all(len(gaps[name]) >= EXPIRIES // len(names) for name in names), gaps
    # each was entitled to (and got) the messages published outside its gaps
    for name in names:
        assert result.per_subscriber[name].get("entitled", 0) > 0
    assert_clean(result, audit)


def test_8b_real_session_expiry_of_a_publisher_mid_fan_out(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s8b", publishers=0, subscribers=8)
    try:
        # small transactions: every fan-out is split into several
        publisher = wl.add_publisher(max_message_bytes=2000, max_transaction_bytes=3500)
        wl.start_publishing()
        wl.wait_acked(20)
        for _ in range(3):
            expire_session(publisher)
            injector.log.add("expire session of the publisher")
            wl.wait_acked(20)
        result, audit = finish(
            "8b publisher session expiry x3 (split fan-outs)",
            wl,
            injector,
            scenario,
            cleaners,
            total_order=False,
        )
        transactions = publisher.publish(wl.topic, {"probe": True}).transactions
    finally:
        wl.close()
    assert transactions > 1  # the fan-out really was split
    assert_clean(result, audit)


def test_8c_real_session_expiry_of_the_cleaner_leader(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s8c")
    try:
        dead = wl.add_subscriber_process()
        wl.start_publishing()
        wl.wait_acked(30)
        wl.kill_subscriber_process(dead.client_id)  # its queue is the cleaner's to remove
        injector.log.add("kill -9 a subscriber process")
        for _ in range(2):
            wl.wait_until(lambda: sum(c.is_leader for c in cleaners) == 1, 30, "one leader")
            leader = next(c for c in cleaners if c.is_leader)
            host = next(c for c in wl.subscribers.values() if c.client_id == leader.client_id)
            expire_session(host)
            injector.log.add("expire session of the cleaner leader")
            wl.wait_acked(20)
        # the new leader still removes the dead subscriber's queue
        probe = next(iter(wl.subscribers.values()))
        wl.wait_until(
            lambda: dead.client_id not in {q.client_id for q in probe.stats().queues},
            SESSION_TIMEOUT + 3 * CLEANER_GRACE + 30,
            "the dead subscriber's queue to be removed",
        )
        result, audit = finish(
            "8c cleaner leader session expiry x2", wl, injector, scenario, cleaners
        )
    finally:
        wl.close()
    assert_clean(result, audit)


def test_8d_a_subscriber_cut_off_past_its_session_timeout(ensemble, scenario):
    """The plainest real expiry: the server hears nothing from the client
    for longer than the session timeout and ends the session itself."""
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    proxies = [ZkClientProxy(("127.0.0.1", n.client_port)) for n in ens.cluster.nodes]
    wl, cleaners = pubsub_workload(ens.cluster, "/s8d", subscribers=2)
    try:
        victim = wl.add_subscriber(hosts=",".join(p.address for p in proxies))
        wl.start_publishing()
        wl.wait_acked(30)
        for _ in range(2):
            for p in proxies:
                p.block("drop")  # packets vanish: no reset, no answer
            injector.log.add("client cut off")
            time.sleep(2 * SESSION_TIMEOUT)  # the length of the outage
            for p in proxies:
                p.unblock()
            wl.wait_until(
                lambda: victim.status == ClientState.CONNECTED, 60, "the client to come back"
            )
            wl.wait_acked(30)
        result, audit = finish(
            "8d subscriber cut off > session timeout x2", wl, injector, scenario, cleaners
        )
        history = wl.history()
    finally:
        wl.close()
        for p in proxies:
            p.close()
    gaps = next(s.gaps for s in history.subscribers if s.name == victim.client_id)
    assert len(gaps) == 2, gaps
    assert history.notes.get(f"sessions lost by {victim.client_id}") == 2
    assert_clean(result, audit)


def test_11_a_subscriber_dies_mid_fan_out(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s11")
    try:
        doomed = [wl.add_subscriber_process() for _ in range(2)]
        wl.start_publishing()
        wl.wait_acked(30)
        for proc in doomed:
            wl.kill_subscriber_process(proc.client_id)
            injector.log.add("kill -9 a subscriber process")
        # publish on while the sessions expire and the cleaner takes the queues
        probe = next(iter(wl.subscribers.values()))
        wl.wait_until(
            lambda: not {p.client_id for p in doomed} & {q.client_id for q in probe.stats().queues},
            SESSION_TIMEOUT + 3 * CLEANER_GRACE + 30,
            "the dead subscribers' queues to be removed",
        )
        wl.wait_acked(30)
        result, audit = finish("11 subscriber dies mid-fan-out", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert result.unknown == 0 and result.failed == 0, result.describe()
    assert_clean(result, audit)


def test_12_one_server_data_dir_made_unwritable(ensemble, scenario):
    ens = ensemble(3, traversable=True, prepare=lambda c: run_unprivileged(c.nodes[2]))
    injector = FaultInjector(ens.cluster)
    broken = ens.cluster.nodes[2]
    wl, cleaners = pubsub_workload(ens.cluster, "/s12")
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        role = broken.mode()
        log_start = broken.log_path.stat().st_size
        make_unwritable(broken)  # raises if the server's user could still write
        injector.log.add(f"data dir unwritable ({role})", broken)

        def failed_on_disk() -> bool:
            with open(broken.log_path, "rb") as f:
                f.seek(log_start)
                denied = b"Permission denied" in f.read()
            # a failed snapshot ends the process; a failed log write only
            # takes the server out of the ensemble, and it cannot rejoin
            return denied and (not broken.running or broken.mode() not in ("leader", "follower"))

        wl.wait_until(failed_on_disk, 60, "the server to fail on its disk")
        exited = not broken.running
        injector.log.add("server exited" if exited else "server left the ensemble", broken)
        wl.wait_acked(30)  # the other two serve on
        make_writable(broken)
        broken.kill()
        injector.start(broken)
        result, audit = finish("12 one data dir unwritable", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert_clean(result, audit)
