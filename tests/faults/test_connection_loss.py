"""Scenario 7: a client loses its connection at a chosen moment.

The client reaches the ensemble only through :class:`ZkClientProxy`
instances (one per server), which can lose a given request before the
server sees it, or lose its reply after the server applied it, and then
reset the connection. The session survives; the client must neither lose
nor duplicate anything.
"""

from __future__ import annotations

import threading
import time

import pytest

from zkpubsub import Client, ClientState
from zkpubsub.testing.audit import audit_convergence
from zkpubsub.testing.faults import FaultInjector, expire_behind
from zkpubsub.testing.proxy import OP_CREATE, OP_CREATE2, OP_MULTI, ZkClientProxy

from .scenarios import (
    CLEANER_GRACE,
    CLEANER_INTERVAL,
    SESSION_TIMEOUT,
    assert_clean,
    finish,
    log_sprung,
    pubsub_workload,
)

pytestmark = pytest.mark.local_zk


def client_proxies(cluster) -> list[ZkClientProxy]:
    return [
        ZkClientProxy(("127.0.0.1", node.client_port), name=f"client-{node.myid}")
        for node in cluster.nodes
    ]


def proxied_hosts(proxies: list[ZkClientProxy]) -> str:
    return ",".join(p.address for p in proxies)


def test_cleaners_keep_one_candidate_each_across_connection_losses(ensemble):
    ens = ensemble(3)
    proxies = client_proxies(ens.cluster)
    clients: list[Client] = []
    try:
        hosts = proxied_hosts(proxies)
        for _ in range(3):
            clients.append(Client(hosts, root="/s7-election", session_timeout=SESSION_TIMEOUT))
        cleaners = [
            c.start_cleaner(grace=CLEANER_GRACE, interval=CLEANER_INTERVAL) for c in clients
        ]
        assert any(c.wait_leader(30) for c in cleaners)
        for _ in range(5):
            cut = sum(p.cut() for p in proxies)
            assert cut >= 3
            deadline = time.monotonic() + 30
            while not all(c.status == ClientState.CONNECTED for c in clients):
                assert time.monotonic() < deadline, "clients did not reconnect"
                time.sleep(0.05)
            time.sleep(0.3)  # let the cleaners react before the next cut
        audit = audit_convergence(ens.cluster.hosts, "/s7-election", cleaners, timeout=30)
        assert audit.ok, audit.describe()
        assert len(audit.candidates) == 3
        assert FaultInjector(ens.cluster).wait_healthy()
    finally:
        for c in clients:
            c.close()
        for p in proxies:
            p.close()


def _spring_on_any(proxies: list[ZkClientProxy], arm, timeout: float = 60.0) -> None:
    """Arm the same trap on every proxy (the client uses one of them), as one
    group, so that it springs once however fast the client reconnects; wait
    until it has."""
    group = threading.Event()
    for p in proxies:
        arm(p, group)
    try:
        assert group.wait(timeout), "the trap never sprang"
    finally:
        for p in proxies:
            p.disarm()


def test_connection_loss_in_the_middle_of_a_publish_neither_loses_nor_duplicates(
    ensemble, scenario
):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    proxies = client_proxies(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s7-publish", publishers=0)
    try:
        publisher = wl.add_publisher(hosts=proxied_hosts(proxies))
        wl.start_publishing()
        wl.wait_acked(20)
        for _ in range(4):
            # applied by the server, the reply never arrives
            _spring_on_any(proxies, lambda p, g: p.lose_reply(OP_MULTI, group=g))
            wl.wait_acked(10)
            # never reaches the server
            _spring_on_any(proxies, lambda p, g: p.lose_request(OP_MULTI, group=g))
            wl.wait_acked(10)
        sprung = log_sprung(injector, proxies)
        done = finish("7 connection loss mid-publish", wl, injector, scenario, cleaners)
    finally:
        wl.close()
        for p in proxies:
            p.close()
    assert sprung == 8
    # the publisher saw each cut, and no session was lost
    cuts = done.history.notes.get(f"suspensions by {publisher.client_id}", 0)
    assert cuts >= 8, done.history.notes
    assert done.history.notes.get("sessions lost", 0) == 0
    assert_clean(done)  # the session survived: every outcome was settled


def test_a_lost_reply_while_joining_the_cleaner_election_leaves_no_orphan(ensemble):
    ens = ensemble(3)
    proxies = client_proxies(ens.cluster)
    # It joins the election once the trap is armed, not while connecting.
    client = Client(
        proxied_hosts(proxies), root="/s7-join", session_timeout=SESSION_TIMEOUT, cleaner=False
    )
    try:
        events = [p.lose_reply(OP_CREATE, OP_CREATE2) for p in proxies]
        cleaner = client.start_cleaner(grace=CLEANER_GRACE, interval=CLEANER_INTERVAL)
        deadline = time.monotonic() + 30
        while not any(e.is_set() for e in events):
            assert time.monotonic() < deadline, "the candidate create was never seen"
            time.sleep(0.01)
        for p in proxies:
            p.disarm()
        assert cleaner.wait_leader(30), "a lone cleaner must lead"
        audit = audit_convergence(ens.cluster.hosts, "/s7-join", [cleaner], timeout=30)
        assert audit.ok, audit.describe()
    finally:
        client.close()
        for p in proxies:
            p.close()


def test_a_reply_delivered_twice_costs_a_connection_not_the_session(ensemble, scenario):
    """kazoo's connection loop would die on a reply it did not expect
    ("xids do not match", seen in production, and in scenario 8b, where
    ZooKeeper 3.8.0 at times answers a sync twice or a later request first)
    and never reconnect by itself; the client drops the connection instead
    and keeps its session."""
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    proxies = client_proxies(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s7-duplicate", subscribers=2)
    try:
        victim = wl.add_subscriber(hosts=proxied_hosts(proxies))
        before = victim._session_credentials()
        wl.start_publishing()
        wl.wait_acked(20)
        for _ in range(2):
            _spring_on_any(proxies, lambda p, g: p.duplicate_reply(OP_MULTI, group=g))
            wl.wait_acked(20)
        log_sprung(injector, proxies)
        wl.wait_until(lambda: victim.status == ClientState.CONNECTED, 60, "reconnected")
        wl.wait_acked(30)
        after = victim._session_credentials()
        done = finish("7 reply delivered twice x2", wl, injector, scenario, cleaners)
    finally:
        wl.close()
        for p in proxies:
            p.close()
    assert after == before
    assert sum(p.sprung.count(("duplicate", OP_MULTI)) for p in proxies) == 2
    # the servers saw the victim on one session, registered once
    assert len(done.ledger.sessions[victim.client_id]) == 1, done.ledger.sessions
    assert len(done.ledger.registrations[(wl.topic, victim.client_id)]) == 1
    assert_clean(done)  # never unregistered: nothing excused


def test_a_publish_whose_reply_is_lost_and_whose_session_then_expires_is_not_duplicated(
    ensemble, scenario
):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    proxies = client_proxies(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s7-expire", publishers=0)
    try:
        publisher = wl.add_publisher(hosts=proxied_hosts(proxies))
        wl.start_publishing()
        wl.wait_acked(20)
        for _ in range(3):
            # applied, the reply lost, the publisher kept away ...
            _spring_on_any(proxies, lambda p, g: p.lose_reply(OP_MULTI, then_block=True, group=g))
            # ... while its session ends on the server
            expire_behind(publisher, proxies, ens.cluster.hosts)
            injector.log.add("the publisher's session expired")
            wl.wait_acked(20)
        sprung = log_sprung(injector, proxies)
        done = finish(
            "7 lost reply + publisher session expiry x3", wl, injector, scenario, cleaners
        )
    finally:
        wl.close()
        for p in proxies:
            p.close()
    assert sprung == 3
    # the servers saw the publisher on four sessions; each lost reply was
    # written once (checked by the checker: no duplicate, no unconfirmed)
    assert len(done.ledger.sessions[publisher.client_id]) >= 4, done.ledger.sessions
    assert_clean(done)


def test_connection_loss_while_a_subscriber_deletes_what_it_handled(ensemble, scenario):
    """A subscriber acknowledges by deleting the nodes it handled (in
    transactions); losing the request or the reply of one must neither
    lose a message nor hand it out twice."""
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    proxies = client_proxies(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s7-ack", subscribers=2)
    try:
        victim = wl.add_subscriber(hosts=proxied_hosts(proxies))
        wl.start_publishing()
        wl.wait_acked(20)
        for _ in range(3):
            _spring_on_any(proxies, lambda p, g: p.lose_reply(OP_MULTI, group=g))
            wl.wait_acked(10)
            _spring_on_any(proxies, lambda p, g: p.lose_request(OP_MULTI, group=g))
            wl.wait_acked(10)
        sprung = log_sprung(injector, proxies)
        done = finish("7 connection loss mid-delete (subscriber)", wl, injector, scenario, cleaners)
    finally:
        wl.close()
        for p in proxies:
            p.close()
    assert sprung == 6
    cuts = done.history.notes.get(f"suspensions by {victim.client_id}", 0)
    assert cuts >= 6, done.history.notes
    assert_clean(done)
