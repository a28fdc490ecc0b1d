"""Fault injection on a ZooKeeper ensemble of this run.

:class:`FaultInjector` breaks a :class:`~zkpubsub.testing.ZooKeeperEnsemble`
the ways real ensembles break, and logs what it did and when:

* kill -9 the current leader (finding the new one each time), optionally
  wiping its data directory before it starts again;
* kill a follower, or the server a given client is connected to;
* a rolling restart;
* kill a majority for a while, then bring it back;
* SIGSTOP a server for a while (its sockets stay open, it answers nothing);
* cut one server off from the others (needs a :class:`PeerMesh`);
* make one server's data directory unwritable (needs the server to run as
  an unprivileged user: see :func:`run_unprivileged`).

Partitions are made in user space: :class:`PeerMesh` routes every link
between two servers through a TCP proxy of its own (each server's
``zoo.cfg`` names proxies for its peers), so cutting a server off means
blocking the proxies on its links. Nothing needs root, Docker or network
namespaces.

An unwritable directory must really refuse writes. The superuser ignores
file modes, so under root the server whose disk "fails" runs as an
unprivileged user, and its data directory is handed back to root when the
fault starts; under any other user, taking the write permission away is
enough. :func:`can_write` checks it from the server user's side. Files the
server already holds open stay writable, so the server should roll its
transaction log often (``snap_count``) to run into the fault quickly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..client import Client
from .proxy import BlockMode, ElectionProxy, TcpProxy
from .server import EnsembleNode, ServerFailed, ZooKeeperEnsemble
from .sessions import close_session

__all__ = [
    "PEER_CONNECT_RETRY",
    "FaultEvent",
    "FaultInjector",
    "FaultLog",
    "Nemesis",
    "PeerMesh",
    "can_write",
    "expire_behind",
    "make_unwritable",
    "make_writable",
    "node_of_client",
    "node_of_session",
    "run_unprivileged",
    "sessions_on",
    "unprivileged_user",
]


logger = logging.getLogger(__name__)

_SESSION_RE: Final = re.compile(r"sid=0x([0-9a-f]+)")
_SERVER_LINE: Final = re.compile(r"^server\.(\d+)=")
# A server that is not listening yet (a new leader opening its quorum port)
# must look slow through a proxy, not gone: peers give up on a closed link.
PEER_CONNECT_RETRY: Final = 3.0


# -- where clients are connected ------------------------------------------------------


def sessions_on(node: EnsembleNode) -> set[int]:
    """Session ids of the clients connected to ``node`` (from ``cons``)."""
    if not node.running or node.paused:
        return set()
    try:
        out = node.command("cons", timeout=2.0)
    except OSError:
        return set()
    return {int(m.group(1), 16) for m in _SESSION_RE.finditer(out)}


def node_of_session(cluster: ZooKeeperEnsemble[Any], session_id: int) -> EnsembleNode | None:
    """The server a session is connected to, if any."""
    node: EnsembleNode
    for node in cluster.nodes:
        if session_id in sessions_on(node):
            return node
    return None


def node_of_client(cluster: ZooKeeperEnsemble[Any], client: Client) -> EnsembleNode | None:
    """The server ``client`` is connected to, if it is connected."""
    creds = client._session_credentials()
    return None if creds is None else node_of_session(cluster, creds[0])


# -- a log of what was done ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One action of the injector: ``at`` is wall-clock time."""

    at: float
    action: str
    node: int | None = None


class FaultLog:
    """Thread-safe list of :class:`FaultEvent`."""

    def __init__(self) -> None:
        self._events: list[FaultEvent] = []
        self._lock = threading.Lock()

    def add(self, action: str, node: EnsembleNode | None = None) -> None:
        event = FaultEvent(time.time(), action, node.myid if node else None)
        logger.info("fault: %s%s", action, f" (node {node.myid})" if node else "")
        with self._lock:
            self._events.append(event)

    def events(self) -> list[FaultEvent]:
        with self._lock:
            return list(self._events)

    def count(self, action: str) -> int:
        return sum(1 for e in self.events() if e.action == action)


# -- partitions -----------------------------------------------------------------------------


class PeerMesh:
    """A TCP proxy on every directed link between two servers of an ensemble.

    Build it after the cluster and before ``cluster.start()``: it rewrites
    each server's ``zoo.cfg`` so the server reaches each peer (quorum and
    election ports) through a proxy of its own. :meth:`isolate` then cuts
    one server off from all the others while clients can still reach it.
    """

    def __init__(self, cluster: ZooKeeperEnsemble[Any]) -> None:
        if cluster.size < 2:
            raise ValueError("a partition needs an ensemble of at least two servers")
        if any(node.running for node in cluster.nodes):
            raise RuntimeError("build the mesh before starting the cluster")
        self.cluster = cluster
        self.quorum: dict[tuple[int, int], TcpProxy] = {}
        self.election: dict[tuple[int, int], ElectionProxy] = {}
        nodes = cluster.nodes
        for a in nodes:
            for b in nodes:
                if a is b:
                    continue
                key = (a.myid, b.myid)
                self.quorum[key] = TcpProxy(
                    ("127.0.0.1", b.peer_port),
                    name=f"quorum-{a.myid}to{b.myid}",
                    connect_retry=PEER_CONNECT_RETRY,
                )
                self.election[key] = ElectionProxy(
                    ("127.0.0.1", b.election_port),
                    advertise="",
                    name=f"election-{a.myid}to{b.myid}",
                    connect_retry=PEER_CONNECT_RETRY,
                )
        # a's election connection to b names a's address: make it b's proxy to a
        for (a_id, b_id), proxy in self.election.items():
            proxy.advertise = self.election[(b_id, a_id)].address
        for node in nodes:
            self._rewrite(node)
        self.isolated: set[int] = set()

    def _rewrite(self, node: EnsembleNode) -> None:
        lines = node.config_path.read_text().splitlines()
        out = []
        for line in lines:
            m = _SERVER_LINE.match(line)
            if m is None or int(m.group(1)) == node.myid:
                out.append(line)
                continue
            peer = self.cluster.node(int(m.group(1)))
            key = (node.myid, peer.myid)
            line = f"server.{peer.myid}=127.0.0.1:{self.quorum[key].port}:{self.election[key].port}"
            if not self.cluster.legacy_config:
                line += f";127.0.0.1:{peer.client_port}"
            out.append(line)
        node.config_path.write_text("\n".join(out) + "\n")

    def _links_of(self, myid: int) -> Iterator[TcpProxy]:
        for table in (self.quorum, self.election):
            for (a, b), proxy in table.items():
                if myid in (a, b):
                    yield proxy

    def isolate(self, node: EnsembleNode, mode: BlockMode = "drop") -> None:
        """Cut ``node`` off from every other server (clients still reach it).
        ``"drop"`` loses bytes silently, ``"reset"`` refuses connections."""
        self.isolated.add(node.myid)
        for proxy in self._links_of(node.myid):
            proxy.block(mode)

    def heal(self) -> None:
        """Let every link through again."""
        self.isolated.clear()
        for table in (self.quorum, self.election):
            for proxy in table.values():
                if proxy.blocked is not None:
                    proxy.unblock()

    def close(self) -> None:
        for table in (self.quorum, self.election):
            for proxy in table.values():
                proxy.close()


# -- an unwritable data directory -----------------------------------------------------------


def unprivileged_user(name: str = "nobody") -> tuple[int, int]:
    """``(uid, gid)`` of an unprivileged account."""
    entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise ValueError(f"user {name!r} is the superuser")
    return entry.pw_uid, entry.pw_gid


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def can_write(directory: Path, uid: int, gid: int) -> bool:
    """Whether ``uid`` can create a file in ``directory``, tried for real by
    a process running as that user."""
    probe = directory / f".write-probe-{os.getpid()}"
    identity: dict[str, object] = {}
    if uid != os.geteuid():
        identity = {"user": uid, "group": gid, "extra_groups": []}
    result = subprocess.run(  # type: ignore[call-overload]
        ["sh", "-c", 'printf x > "$0"', str(probe)],
        capture_output=True,
        timeout=30,
        check=False,
        **identity,
    )
    with contextlib.suppress(OSError):
        probe.unlink()
    return bool(result.returncode == 0)


def _server_identity(node: EnsembleNode) -> tuple[int, int]:
    return node.run_as if node.run_as is not None else (os.geteuid(), os.getegid())


def run_unprivileged(
    node: EnsembleNode, user: str = "nobody", *, snap_count: int | None = 40
) -> tuple[int, int]:
    """Make sure file modes bind ``node``'s server; return its ``(uid, gid)``.

    As root (which ignores file modes), the node runs as ``user`` from its
    next start and owns its directory; every parent of that directory must
    then be searchable by ``user``. Any other user is bound by file modes
    already and the node runs as it is. ``snap_count`` makes the server
    roll its transaction log (and open a new file) every ``snap_count/2 ..
    snap_count`` writes, so it meets an unwritable directory soon."""
    if snap_count is not None:
        node.java_opts = [o for o in node.java_opts if not o.startswith("-Dzookeeper.snapCount=")]
        node.java_opts.append(f"-Dzookeeper.snapCount={snap_count}")
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    uid, gid = unprivileged_user(user)
    for parent in node.directory.resolve().parents:
        if not os.stat(parent).st_mode & 0o001:
            raise PermissionError(
                f"{parent} is not searchable by other users; put the cluster's "
                "base_dir under a directory that is (mode o+x)"
            )
    node.data_dir.mkdir(parents=True, exist_ok=True)
    _chown_tree(node.directory, uid, gid)
    node.run_as = (uid, gid)
    return uid, gid


def _data_dirs(node: EnsembleNode) -> list[Path]:
    return [node.data_dir, *[p for p in node.data_dir.rglob("*") if p.is_dir()]]


def make_unwritable(node: EnsembleNode) -> None:
    """Take ``node``'s data directory away from the user its server runs as
    (files stay readable): owned by root if it ran as another user, and no
    write permission. Raises ``RuntimeError`` if that user can still write
    (a server running as root: see :func:`run_unprivileged`)."""
    uid, gid = _server_identity(node)
    if node.run_as is not None:
        _chown_tree(node.data_dir, 0, 0)
    for directory in _data_dirs(node):
        os.chmod(directory, 0o555)
    for directory in _data_dirs(node):
        if can_write(directory, uid, gid):
            raise RuntimeError(f"{directory} is still writable by uid {uid}")


def make_writable(node: EnsembleNode) -> None:
    """Give the data directory back to the user the server runs as."""
    for directory in _data_dirs(node):
        os.chmod(directory, 0o755)
    if node.run_as is not None:
        _chown_tree(node.data_dir, *node.run_as)


# -- session expiry without a race ----------------------------------------------------------


def expire_behind(client: Client, proxies: Sequence[TcpProxy], hosts: str) -> None:
    """Expire ``client``'s session on the server while the proxies it
    connects through refuse it, then let it back. With the client kept
    away, nothing races the close: the client finds its session expired
    when it reconnects. ``hosts`` reaches the servers directly."""
    creds = client._session_credentials()
    if creds is None:
        raise RuntimeError("the client has no session to expire")
    for proxy in proxies:
        proxy.block("reset")
    try:
        close_session(creds, hosts)
    finally:
        for proxy in proxies:
            proxy.unblock()


# -- the injector ---------------------------------------------------------------------------


class FaultInjector:
    """Breaks a running cluster on request and records each action.

    Every method returns once the fault is in place (and, for the ones that
    heal, once the ensemble serves again). ``timeout`` bounds each wait for
    the ensemble.
    """

    def __init__(
        self,
        cluster: ZooKeeperEnsemble[Any],
        *,
        mesh: PeerMesh | None = None,
        log: FaultLog | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.cluster = cluster
        self.mesh = mesh
        self.log = log or FaultLog()
        self.timeout = timeout

    # -- single steps -----------------------------------------------------------------

    def leader(self) -> EnsembleNode:
        leader: EnsembleNode = self.cluster.wait_quorum(self.timeout)
        return leader

    def kill(self, node: EnsembleNode, *, wipe: bool = False) -> EnsembleNode:
        node.kill()
        self.log.add("kill -9", node)
        if wipe:
            node.wipe()
            self.log.add("wipe data dir", node)
        return node

    def start(self, node: EnsembleNode) -> None:
        node.start()
        self.cluster.wait_serving([node], timeout=self.timeout)
        self.log.add("start", node)

    def kill_leader(self, *, wipe: bool = False) -> EnsembleNode:
        """kill -9 whoever leads now."""
        return self.kill(self.leader(), wipe=wipe)

    def kill_follower(self) -> EnsembleNode:
        followers = self.cluster.followers()
        if not followers:
            raise ServerFailed("no follower to kill")
        return self.kill(followers[0])

    def pause(self, node: EnsembleNode, seconds: float) -> None:
        """SIGSTOP ``node`` for ``seconds``, then SIGCONT."""
        node.pause()
        self.log.add(f"SIGSTOP {seconds:g}s", node)
        try:
            time.sleep(seconds)  # the length of the fault, not a synchronisation
        finally:
            node.resume()
            self.log.add("SIGCONT", node)

    def isolate(self, node: EnsembleNode, mode: BlockMode = "drop") -> None:
        if self.mesh is None:
            raise RuntimeError("partitions need a PeerMesh built before the cluster started")
        self.mesh.isolate(node, mode)
        self.log.add(f"partition ({mode})", node)

    def heal(self) -> None:
        if self.mesh is not None:
            self.mesh.heal()
            self.log.add("heal partition")

    # -- composite faults -----------------------------------------------------------------

    def bounce_leader(
        self,
        times: int,
        *,
        down_for: float = 0.5,
        between: float = 1.0,
        wipe: bool = False,
        stop: threading.Event | None = None,
    ) -> list[EnsembleNode]:
        """kill -9 the current leader ``times`` times; each time wait for a
        new leader, start the old one again after ``down_for`` seconds and
        let the ensemble run ``between`` seconds."""
        killed = []
        for _ in range(times):
            if stop is not None and stop.is_set():
                break
            old = self.kill_leader(wipe=wipe)
            killed.append(old)
            new = self.leader()
            self.log.add("new leader", new)
            _sleep(down_for, stop)
            self.start(old)
            _sleep(between, stop)
        return killed

    def rolling_restart(self, *, between: float = 1.0, leader_last: bool = True) -> None:
        """Stop and start every server in turn, waiting for each to serve."""
        leader = self.leader()
        order = [n for n in self.cluster.nodes if n is not leader] + [leader]
        if not leader_last:
            order.reverse()
        for node in order:
            node.stop()
            self.log.add("stop", node)
            self.start(node)
            self.leader()
            time.sleep(between)  # load on the whole ensemble before the next one

    def kill_majority(self, down_for: float, *, include_leader: bool = True) -> list[EnsembleNode]:
        """kill -9 a majority (the leader among them), wait ``down_for``
        seconds, start them again and wait for a leader."""
        size = self.cluster.size
        need = size // 2 + 1
        leader = self.leader()
        others = [n for n in self.cluster.nodes if n is not leader and n.running]
        victims = ([leader] if include_leader else []) + others
        victims = victims[:need]
        for node in victims:
            self.kill(node)
        time.sleep(down_for)  # the length of the outage
        for node in victims:
            node.start()
            self.log.add("start", node)
        self.cluster.wait_serving(victims, timeout=self.timeout)
        self.log.add("new leader", self.leader())
        return victims

    def wait_healthy(self, timeout: float | None = None) -> EnsembleNode:
        """Wait until every running server serves, one leads and the others
        follow it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        running: list[EnsembleNode] = [n for n in self.cluster.nodes if n.running]
        while True:
            modes = [n.mode() for n in running]
            if modes.count("leader") == 1 and modes.count("follower") == len(running) - 1:
                return running[modes.index("leader")]
            if len(running) == 1 and modes == ["standalone"]:
                return running[0]
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"ensemble not healthy: {list(zip(running, modes, strict=True))}"
                )
            time.sleep(0.1)


def _sleep(seconds: float, stop: threading.Event | None) -> None:
    if stop is None:
        time.sleep(seconds)
    else:
        stop.wait(seconds)


class Nemesis:
    """Runs a fault schedule on a thread of its own while a workload runs.

    ``Nemesis(lambda stop: injector.bounce_leader(5, stop=stop))``; ``start()``,
    then ``join()`` re-raises whatever the schedule raised.
    """

    def __init__(self, schedule: Callable[[threading.Event], object]) -> None:
        self._schedule = schedule
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def _run(self) -> None:
        try:
            self._schedule(self.stop_event)
        except BaseException as exc:
            self.error = exc
            logger.exception("nemesis failed")
        finally:
            self.done.set()

    def start(self) -> Nemesis:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop_event.set()
            self._thread.join(30)
            raise TimeoutError("the fault schedule did not finish in time")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.stop_event.set()
