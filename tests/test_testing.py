"""The local ZooKeeper helpers really do what the fault tests rely on."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

from zkpubsub.testing import ZooKeeperCluster, expire_session
from zkpubsub.testing import server as server_module
from zkpubsub.testing.checker import check
from zkpubsub.testing.history import GapRecord, History, PublishRecord, SubscriberRecord
from zkpubsub.testing.ledger import Ledger, QueueWrite, Removal, SessionSpan, replay
from zkpubsub.testing.proxy import OP_CREATE, OP_GET_DATA, TcpProxy, ZkClientProxy
from zkpubsub.testing.queue_checker import check_queue, check_queue_against
from zkpubsub.testing.queue_history import QueueRecorder
from zkpubsub.testing.queue_workload import QueueWorkload
from zkpubsub.testing.secure import ServerSecurity, TlsMaterial
from zkpubsub.testing.server import (
    PORT_FLOOR,
    digest_mismatches,
    ephemeral_range,
    free_ports,
    port_pool,
    server_lines,
)
from zkpubsub.testing.txnlog import MULTI, Op, Txn

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


# -- the work-queue checker: an ack of unknown outcome --------------------------------


def _one_put(*holds: tuple[str, int, str, float]) -> QueueRecorder:
    """Put 1 of producer ``p`` acknowledged as item ``i1``, then ``holds``
    of it: (worker, attempts, finish, reserved at)."""
    rec = QueueRecorder()
    rec.put("p", 1, 0.0, item_id="i1")
    for worker, attempts, finish, at in holds:
        hold = rec.reserved(worker, "i1", ("p", 1), attempts, at=at)
        rec.handled(hold, at=at + 0.1)
        rec.finished(hold, finish, at=at + 0.2)  # type: ignore[arg-type]
    return rec


def test_an_ack_of_unknown_outcome_is_not_done_when_its_item_was_held_again() -> None:
    # the item came back after the ack: that ack was not applied, and the
    # later hold released it: nobody finished the put
    result = check_queue(_one_put(("w1", 1, "unknown", 1.0), ("w2", 2, "released", 9.0)).history())
    assert (result.done, result.lost) == (0, 1) and not result.ok, result.describe()
    assert "held again by ['w2#2']" in result.examples[0], result.examples
    # ... later by time alone, whatever attempt number the library reported
    result = check_queue(_one_put(("w1", 2, "unknown", 1.0), ("w2", 1, "open", 9.0)).history())
    assert result.lost == 1, result.describe()
    # an unknown ack with no hold after it may have been applied; and a
    # later hold that acked finishes the put in any case
    assert check_queue(_one_put(("w1", 1, "unknown", 1.0)).history()).lost == 0
    result = check_queue(_one_put(("w1", 1, "unknown", 1.0), ("w2", 2, "acked", 9.0)).history())
    assert result.ok and result.done == 1, result.describe()


_ITEM = "/r/queues/q/items/s0000000001/q000-s0000000001-f68d32aba2f9-0000000000"


def _envelope(producer: str, seq: int) -> bytes:
    payload = msgpack.packb({"p": producer, "s": seq})
    message = {"id": f"{producer}{seq}", "ct": "application/msgpack", "p": payload}
    return msgpack.packb({"v": 1, "msgs": [message]}, use_bin_type=True)


def _queue_log(deleter: int, *, buried: bool = False) -> Ledger:
    """The servers' log of a run in which worker ``w1`` (session 5) reserved
    the item of put ``p``/1 at 3.0, and session ``deleter`` deleted it at
    4.0, moving it to the dead letters if ``buried``."""
    held = "/r/queues/q/reserved/q000-s0000000001-f68d32aba2f9-0000000000"
    dead = "/r/queues/q/dead/q000-s0000000001-f68d32aba2f9-0000000000"
    delete = [Op("delete", held), Op("delete", _ITEM)]
    if buried:
        delete.append(Op("create", dead, _envelope("p", 1)))
    txns = [
        Txn(1, 1.0, 5, MULTI, (Op("create", "/r/clients/w1", b"", ephemeral=True),)),
        Txn(2, 1.5, 7, MULTI, (Op("create", "/r/clients/w2", b"", ephemeral=True),)),
        Txn(3, 2.0, 9, MULTI, (Op("create", _ITEM, _envelope("p", 1)),)),
        Txn(4, 3.0, 5, MULTI, (Op("create", held, b"", ephemeral=True), Op("set", _ITEM))),
        Txn(5, 4.0, deleter, MULTI, tuple(delete)),
    ]
    return replay(txns, "/r")


def test_an_ack_of_unknown_outcome_counts_as_done_only_if_its_worker_deleted_the_item() -> None:
    history = _one_put(("w1", 1, "unknown", 3.0)).history()
    ledger = _queue_log(5)
    (gone,) = ledger.item_deletes[("p", 1)]
    assert (gone.session, gone.at, gone.path, gone.buried) == (5, 4.0, _ITEM, False)
    assert ledger.sessions["w1"] == [SessionSpan(5, 1.0, None)]
    result = check_queue_against(history, ledger)
    assert result.ok and result.done == 1, result.describe()
    # deleted by another worker's session, or buried: not this ack
    for other in (_queue_log(7), _queue_log(5, buried=True)):
        result = check_queue_against(history, other)
        assert result.lost == 1 and not result.ok, result.describe()
        assert "no ack of its item by a session of that worker" in result.examples[0]
    # never deleted at all
    result = check_queue(history, ledger.sessions, deletes={})
    assert result.lost == 1, result.describe()


# -- the pub/sub checker: a purge must be reported over the absence ------------------


def test_a_purged_node_is_excused_only_by_a_notice_that_spans_the_absence() -> None:
    """The subscriber's client node was gone from 18.0; the cleaner purged
    message 1 from its queue at 30.0."""
    ledger = Ledger()
    ledger.writes[("p", 1)].append(QueueWrite("a", "t", 1, 1.25, "/q/a/1"))
    ledger.commits[("p", 1)] = (1, 1.25)
    ledger.registered[("p", 1)] = frozenset({"a"})
    ledger.removals[("a", ("p", 1))] = Removal(zxid=5, at=30.0, session=7, absent_for=12.0)
    publish = PublishRecord("p", 1, "t", 1.0, 1.5, "ok")

    def judged(*gaps: GapRecord) -> tuple[int, int, int]:
        history = History((publish,), (), (SubscriberRecord("a", "t", 0.0, None, gaps),))
        r = check(history, ledger, purge_grace=10.0)
        return r.excused, r.lost, r.unreported

    assert judged(GapRecord(15.0, 40.0, "backlog purged")) == (1, 0, 0)
    # a notice of an earlier absence, over before this one began, says
    # nothing of the purge (one the old checker took for it: it touched
    # the span from the publish on)
    assert judged(GapRecord(0.5, 5.0, "session expired")) == (1, 0, 1)
    # nor one that begins after the client node was gone, or ends before the purge
    assert judged(GapRecord(20.0, 40.0, "backlog purged")) == (1, 0, 1)
    assert judged(GapRecord(15.0, 25.0, "session expired")) == (1, 0, 1)


# -- the proxies -------------------------------------------------------------------------


class _Target:
    """A server on 127.0.0.1 that keeps every byte each connection sends."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.address = self._listener.getsockname()[:2]
        self.received = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    self.received += data

    def got(self) -> bytes:
        with self._lock:
            return bytes(self.received)

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)

    def close(self) -> None:
        self._listener.close()


def _frame(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def test_a_request_behind_a_lost_one_never_reaches_the_server() -> None:
    """On one TCP stream nothing sent after a request the network lost can
    arrive: the proxy cuts the link the moment its trap springs, even while
    the closing of the link (on another thread) has not got anywhere."""
    target = _Target()
    proxy = ZkClientProxy(target.address)  # type: ignore[arg-type]
    client = socket.create_connection((proxy.host, proxy.port), timeout=5)
    try:
        connect = _frame(b"connect")
        client.sendall(connect)
        wait_until(lambda: target.got() == connect, 10, "the connect request forwarded")
        sprung = proxy.lose_request(OP_CREATE)
        (link,) = proxy.links()
        with link._lock:  # the link's close() waits: the cut must not
            client.sendall(_frame(struct.pack(">ii", 1, OP_CREATE) + b"lost"))
            assert sprung.wait(10)
            time.sleep(0.1)
            with contextlib.suppress(OSError):
                client.sendall(_frame(struct.pack(">ii", 2, OP_GET_DATA) + b"behind"))
            time.sleep(0.5)
        wait_until(lambda: link.closed.is_set(), 10, "the link closed")
        target.join(10)
        assert target.got() == connect
    finally:
        client.close()
        proxy.close()
        target.close()


class _HookedLock:
    """A proxy's lock that runs ``hook`` once, on the thread dialling the
    target, just before that thread takes it: what another thread did at
    that moment."""

    def __init__(self, real: Any, hook: Callable[[], None]) -> None:
        self.real = real
        self.hook = hook
        self.fired = threading.Event()

    def __enter__(self) -> None:
        if threading.current_thread().name.endswith("-dial") and not self.fired.is_set():
            self.fired.set()
            self.hook()
        self.real.acquire()

    def __exit__(self, *exc: object) -> None:
        self.real.release()


@pytest.mark.parametrize("fault", ["drop", "reset", "close"])
def test_a_connection_being_dialled_when_the_proxy_blocks_or_closes_is_caught(fault: str) -> None:
    target = _Target()
    proxy = TcpProxy(target.address)  # type: ignore[arg-type]
    actions: dict[str, Callable[[], None]] = {
        "drop": lambda: proxy.block("drop"),
        "reset": lambda: proxy.block("reset"),
        "close": proxy.close,
    }
    hooked = _HookedLock(proxy._lock, actions[fault])
    proxy._lock = hooked  # type: ignore[assignment]
    client = socket.create_connection((proxy.host, proxy.port), timeout=5)
    try:
        assert hooked.fired.wait(10)
        wait_until(lambda: target.connections == 1, 10, "the target dialled")
        time.sleep(0.2)  # the dial thread past its lock
        with contextlib.suppress(OSError):
            client.sendall(b"not to pass")
        time.sleep(0.5)
        assert target.got() == b"", fault
        if fault == "drop":
            assert [link.dropping for link in proxy.links()] == [True]
        else:
            assert proxy.links() == []
    finally:
        client.close()
        proxy.close()
        target.close()


# -- the workloads' clean-up and records -----------------------------------------------


def test_a_queue_workload_closes_everything_even_when_a_thread_is_stuck() -> None:
    wl = QueueWorkload("127.0.0.1:1", "/r", put_timeout=0.0, request_timeout=0.0)
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, daemon=True)
    stuck.start()
    wl._producer_threads.append(stuck)
    done: list[str] = []

    class Proc:
        def kill(self) -> None:
            done.append("killed")

    wl.processes["proc"] = Proc()  # type: ignore[assignment]
    wl.close_clients = lambda: done.append("clients closed")  # type: ignore[method-assign]
    try:
        with pytest.raises(TimeoutError, match="producers"):
            wl.close()
        assert done == ["killed", "clients closed"]
    finally:
        release.set()


def test_a_prefetched_batch_is_recorded_held_from_its_reservation() -> None:
    """A worker reserving two items at once holds both from then on: the
    second is not reserved later for waiting its turn."""
    wl = QueueWorkload("127.0.0.1:1", "/r")

    class Item:
        def __init__(self, seq: int) -> None:
            self.id, self.payload, self.attempts = f"i{seq}", {"p": "p", "s": seq}, 1

        def ack(self) -> None:
            pass

    class Queue:
        batches = [[Item(1), Item(2)]]

        def reserve_many(self, n: int, timeout: float) -> list[Item]:
            if self.batches:
                return self.batches.pop()
            wl._stop_workers.set()
            return []

        def close(self) -> None:
            pass

    class Client:
        def queue(self, name: str, max_attempts: int) -> Queue:
            return Queue()

    wl._work("w", Client(), 2, 0.3, None)  # type: ignore[arg-type]
    first, second = wl.recorder.history().holds
    assert first.finish == second.finish == "acked"
    assert second.reserved_at - first.reserved_at < 0.05
    assert second.reserved_at < first.finished_at  # type: ignore[operator]


def test_a_subscriber_child_ends_when_its_parent_is_killed(
    zk_hosts: str, zk_root: str, tmp_path: Path
) -> None:
    code = (
        "import sys, time\n"
        "from zkpubsub.testing.children import SubscriberProcess\n"
        "p = SubscriberProcess(sys.argv[1], sys.argv[2], 't', 'orphan', directory=sys.argv[3])\n"
        "p.start()\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, zk_hosts, zk_root, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    child: int | None = None
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)

        def gone() -> bool:
            try:
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return True
            return state == "Z"  # exited, not reaped yet

        wait_until(gone, 30, "the orphaned subscriber ended")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait(30)
        if parent.stdout is not None:
            parent.stdout.close()
        if child is not None:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)


def test_an_ensemble_with_tls_gets_every_port_distinct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ports released between two picks may be picked again: free_ports as
    # it may behave, with nothing bound in between
    monkeypatch.setattr(server_module, "free_ports", lambda n: list(range(42000, 42000 + n)))
    tls = TlsMaterial(*(tmp_path / name for name in "abcdefg"))  # type: ignore[arg-type]
    zk = ZooKeeperCluster(
        3, base_dir=tmp_path, classpath="unused", security=ServerSecurity(tls=tls)
    )
    ports = [p for n in zk.nodes for p in (n.client_port, n.peer_port, n.election_port)]
    ports += [n.secure_port for n in zk.nodes]  # type: ignore[misc]
    assert len(set(ports)) == 12, ports
