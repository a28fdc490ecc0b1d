"""The local ZooKeeper helpers really do what the fault tests rely on."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

from zkpubsub.testing import ZooKeeperCluster, expire_session
from zkpubsub.testing.server import (
    PORT_FLOOR,
    digest_mismatches,
    ephemeral_range,
    free_ports,
    port_pool,
    server_lines,
)

from .helpers import wait_until


def test_an_ensemble_elects_a_leader_and_survives_losing_it(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    zk = make_cluster(3)
    modes = sorted(n.mode() or "" for n in zk.nodes)
    assert modes == ["follower", "follower", "leader"]
    client = KazooClient(hosts=zk.hosts, timeout=6.0)
    client.start(timeout=20)
    try:
        client.create("/survives", b"1")
        old = zk.wait_quorum()
        old.kill()
        assert not old.running
        new = wait_until(
            lambda: (n := zk.leader()) is not None and n is not old and n, 30, "leader"
        )
        assert new is not old
        wait_until(lambda: client.connected, 30, "client reconnected")
        assert client.get("/survives")[0] == b"1"
        zk.restart(old, kill=True, wipe=True)  # comes back empty and resyncs
        assert old.mode() == "follower"
        single = KazooClient(hosts=old.address, timeout=6.0)
        single.start(timeout=20)
        try:
            single.sync("/survives")
            assert single.get("/survives")[0] == b"1"
        finally:
            single.stop()
            single.close()
    finally:
        client.stop()
        client.close()


def test_a_paused_server_stops_answering_and_resumes(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    zk = make_cluster(1)
    (node,) = zk.nodes
    node.pause()
    assert node.mode() is None
    node.resume()
    wait_until(lambda: node.mode() == "standalone", 20, "serving again")


def test_expire_session_ends_the_session_on_the_server(zk_hosts: str, raw_zk: KazooClient) -> None:
    victim = KazooClient(hosts=zk_hosts, timeout=6.0)
    states: list[KazooState] = []
    victim.add_listener(states.append)
    victim.start(timeout=20)
    try:
        old_session = victim.client_id[0]
        path = victim.create("/ephemeral-", b"", ephemeral=True, sequence=True)
        expire_session(victim.client_id, zk_hosts)
        wait_until(lambda: raw_zk.exists(path) is None, 20, "ephemeral gone on the server")
        wait_until(lambda: KazooState.LOST in states, 20, "the victim told its session expired")
        wait_until(lambda: victim.client_id and victim.client_id[0] != old_session, 20, "new one")
    finally:
        victim.stop()
        victim.close()


def test_free_ports_lie_outside_the_range_of_outgoing_connections() -> None:
    """A port ZooKeeper binds only later (a leader's quorum port) must not be
    one the system may give an outgoing connection meanwhile."""
    low, high = ephemeral_range()
    ports = free_ports(30)
    assert len(set(ports)) == 30
    if len(port_pool()) >= 30:  # the system leaves room below or above its range
        assert all(PORT_FLOOR <= p < 65536 and not low <= p <= high for p in ports), ports
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_zookeeper_3_4_gets_server_lines_without_a_client_address(tmp_path: Path) -> None:
    zk = ZooKeeperCluster(3, base_dir=tmp_path, classpath="unused")
    assert all(";" in line for line in server_lines(list(zk.nodes)))
    old = server_lines(list(zk.nodes), legacy=True)
    assert [line.count(":") for line in old] == [2, 2, 2]
    assert not any(";" in line for line in old)
    assert server_lines(list(zk.nodes[:1])) == []  # a standalone server has none


def test_a_child_process_folder_it_made_itself_is_removed_when_the_test_process_exits() -> None:
    # in a process of its own, whose exit is the test
    code = (
        "from zkpubsub.testing.children import SubscriberProcess\n"
        "p = SubscriberProcess('127.0.0.1:1', '/r', 't', 'c')\n"
        "p.out.write_text('x')\n"
        "print(p.out.parent)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder.name.startswith("zkpubsub-subscribe-")
    assert not folder.exists()


def test_a_servers_report_of_a_diverged_data_tree_is_found_in_its_log() -> None:
    # as ZooKeeper 3.8.0 logged it in a run of the leader-kill scenario
    txn = ", v{s{2,#0002a2f71312f72656365697074732f776f726b65722d33}" * 20
    log = "\n".join(
        [
            "2696 [QuorumPeer[myid=3](plain=127.0.0.1:29226)] INFO QuorumPeer - LOOKING",
            "2698 [CommitProcessor:3] WARN org.apache.zookeeper.server.DataTree - "
            "Message:Digests are not matching. Value is Zxid. Value:8589935601",
            "2708 [CommitProcessor:3] ERROR org.apache.zookeeper.server.DataTree - "
            "First digest mismatch on txn: 144118377631449090,289,8589935601,1796519015301,14",
            txn,
            ", expected digest is 2,309954617375",
            "2716 [main] INFO org.apache.zookeeper.server.ZooKeeperServer - "
            "zookeeper.digest.enabled = true",
        ]
    )
    found = digest_mismatches(log)
    assert len(found) == 2 and "Value:8589935601" in found[0], found
    assert found[1].endswith(
        "First digest mismatch on txn: 144118377631449090,289,8589935601,1796519015301,14"
    )
    long = "Message:Digests are not matching. Value is Zxid." + txn
    assert digest_mismatches(long) == [long[:200]]  # a line is cut to 200 characters
    assert digest_mismatches("zookeeper.digest.enabled = true\nDigest is 1371985504") == []
