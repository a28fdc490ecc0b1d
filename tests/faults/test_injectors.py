"""The fault injectors do what they claim, checked on real servers."""

from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss
from kazoo.retry import KazooRetry

from zkpubsub.testing.faults import FaultInjector, can_write, node_of_session, sessions_on
from zkpubsub.testing.proxy import OP_CREATE, ZkClientProxy

pytestmark = pytest.mark.local_zk


def _kazoo(hosts: str) -> KazooClient:
    zk = KazooClient(
        hosts=hosts,
        timeout=10.0,
        connection_retry=KazooRetry(max_tries=-1, delay=0.05, max_delay=0.5),
    )
    zk.start(timeout=30)
    return zk


def test_client_proxy_loses_a_request_before_the_server_sees_it(ensemble):
    ens = ensemble(1)
    server = ens.cluster.nodes[0]
    proxy = ZkClientProxy(("127.0.0.1", server.client_port))
    zk = _kazoo(proxy.address)
    try:
        sprung = proxy.lose_request(OP_CREATE)
        with pytest.raises(ConnectionLoss):
            zk.create("/lost-request", b"")
        assert sprung.is_set()
        zk.retry(zk.sync, "/")
        assert zk.retry(zk.exists, "/lost-request") is None
    finally:
        zk.stop()
        zk.close()
        proxy.close()


def test_client_proxy_loses_the_reply_of_an_applied_request(ensemble):
    ens = ensemble(1)
    server = ens.cluster.nodes[0]
    proxy = ZkClientProxy(("127.0.0.1", server.client_port))
    zk = _kazoo(proxy.address)
    try:
        sprung = proxy.lose_reply(OP_CREATE)
        with pytest.raises(ConnectionLoss):
            zk.create("/lost-reply", b"")
        assert sprung.is_set()
        zk.retry(zk.sync, "/")
        assert zk.retry(zk.exists, "/lost-reply") is not None
    finally:
        zk.stop()
        zk.close()
        proxy.close()


def test_traps_armed_as_one_group_spring_once_across_proxies(ensemble):
    ens = ensemble(1)
    server = ens.cluster.nodes[0]
    first, second = (ZkClientProxy(("127.0.0.1", server.client_port)) for _ in range(2))
    a, b = _kazoo(first.address), _kazoo(second.address)
    group = threading.Event()
    try:
        for proxy in (first, second):
            assert proxy.lose_request(OP_CREATE, group=group) is group
        with pytest.raises(ConnectionLoss):
            a.create("/grouped-1", b"")
        assert group.is_set()
        b.create("/grouped-2", b"")  # the second proxy's trap stood down
        assert (len(first.sprung), len(second.sprung)) == (1, 0)
        assert a.retry(a.exists, "/grouped-1") is None
    finally:
        for zk in (a, b):
            zk.stop()
            zk.close()
        first.close()
        second.close()


def test_a_partitioned_leader_loses_the_lead_and_the_majority_goes_on(ensemble):
    ens = ensemble(3, mesh=True)
    injector = FaultInjector(ens.cluster, mesh=ens.mesh)
    old = injector.wait_healthy()
    zk = _kazoo(",".join(n.address for n in ens.cluster.nodes if n is not old))
    try:
        injector.isolate(old)
        deadline = time.monotonic() + 60
        while True:
            modes = {n.myid: n.mode() for n in ens.cluster.nodes}
            if modes[old.myid] != "leader" and list(modes.values()).count("leader") == 1:
                break
            assert time.monotonic() < deadline, f"no new leader: {modes}"
            time.sleep(0.1)
        zk.retry(zk.create, "/written-during-the-partition", b"")
        assert old.mode() is None  # cut off, it serves nobody
        injector.heal()
        injector.wait_healthy()
        check = _kazoo(old.address)
        try:
            check.sync("/")
            assert check.exists("/written-during-the-partition") is not None
        finally:
            check.stop()
            check.close()
    finally:
        zk.stop()
        zk.close()


def test_sessions_are_found_on_the_server_they_use(ensemble):
    ens = ensemble(3)
    node = ens.cluster.nodes[1]
    zk = _kazoo(node.address)
    try:
        session = zk.client_id[0]
        assert session in sessions_on(node)
        assert node_of_session(ens.cluster, session) is node
    finally:
        zk.stop()
        zk.close()


def test_a_directory_taken_away_is_unwritable_for_the_server_user(ensemble):
    from zkpubsub.testing.faults import make_unwritable, make_writable, run_unprivileged

    holder: dict[str, tuple[int, int]] = {}

    def prepare(cluster):
        holder["ids"] = run_unprivileged(cluster.nodes[0], snap_count=None)

    ens = ensemble(1, traversable=True, prepare=prepare)
    node = ens.cluster.nodes[0]
    uid, gid = holder["ids"]
    version_dir = node.data_dir / "version-2"
    assert can_write(version_dir, uid, gid)
    make_unwritable(node)
    assert not can_write(version_dir, uid, gid)
    make_writable(node)
    assert can_write(version_dir, uid, gid)
