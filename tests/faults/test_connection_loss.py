"""Scenario 7: a client loses its connection at a chosen moment.

The client reaches the ensemble only through :class:`ZkClientProxy`
instances (one per server), which can lose a given request before the
server sees it, or lose its reply after the server applied it, and then
reset the connection. The session survives; the client must neither lose
nor duplicate anything.
"""

from __future__ import annotations

import time

import pytest

from zkpubsub.testing.audit import audit_convergence
from zkpubsub.testing.faults import FaultInjector
from zkpubsub.testing.proxy import ZkClientProxy

from .scenarios import CLEANER_GRACE, CLEANER_INTERVAL, SESSION_TIMEOUT

pytestmark = pytest.mark.local_zk


def client_proxies(cluster) -> list[ZkClientProxy]:
    return [
        ZkClientProxy(("127.0.0.1", node.client_port), name=f"client-{node.myid}")
        for node in cluster.nodes
    ]


def proxied_hosts(proxies: list[ZkClientProxy]) -> str:
    return ",".join(p.address for p in proxies)


def test_cleaners_keep_one_candidate_each_across_connection_losses(ensemble, make_client):
    ens = ensemble(3)
    proxies = client_proxies(ens.cluster)
    try:
        hosts = proxied_hosts(proxies)
        clients = [
            make_client(hosts=hosts, root="/s7-election", session_timeout=SESSION_TIMEOUT)
            for _ in range(3)
        ]
        cleaners = [
            c.start_cleaner(grace=CLEANER_GRACE, interval=CLEANER_INTERVAL) for c in clients
        ]
        assert any(c.wait_leader(30) for c in cleaners)
        for _ in range(5):
            cut = sum(p.cut() for p in proxies)
            assert cut >= 3
            deadline = time.monotonic() + 30
            while not all(c.status.value == "connected" for c in clients):
                assert time.monotonic() < deadline, "clients did not reconnect"
                time.sleep(0.05)
            time.sleep(0.3)  # let the cleaners react before the next cut
        audit = audit_convergence(ens.cluster.hosts, "/s7-election", cleaners, timeout=30)
        assert audit.ok, audit.describe()
        assert len(audit.candidates) == 3
        assert FaultInjector(ens.cluster).wait_healthy()
    finally:
        for p in proxies:
            p.close()
