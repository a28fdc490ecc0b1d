"""Real ZooKeeper servers as local processes, for tests, demos and benchmarks.

A :class:`ZooKeeperCluster` is a standalone server (``size=1``) or an
N-node ensemble, every port a free one on 127.0.0.1. Each node can be
stopped, killed with SIGKILL, paused with SIGSTOP, resumed, restarted and
have its data wiped; the cluster finds its leader.

What does not depend on how a server runs (ports, configuration, data
directory, leader discovery through four-letter words) lives in the bases
:class:`ZooKeeperEnsemble` and :class:`EnsembleNode`; the container backend
(:mod:`zkpubsub.testing.containers`) shares them.

The server comes from an installed ZooKeeper: Debian's ``zookeeper``
package (``/usr/share/java/zookeeper.jar``), a release unpacked at
``$ZOOKEEPER_HOME``, or an explicit class path in
``$ZKPUBSUB_ZOOKEEPER_CLASSPATH``.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .secure import ServerSecurity

from .local import (
    JAVA_OPTS_ENV,
    LOG_LEVEL_ENV,
    MAIN_CLASS,
    PORT_FLOOR,
    ZooKeeperNotFound,
    ephemeral_range,
    find_classpath,
    find_java,
    four_letter,
    free_ports,
    port_pool,
)

# What the machine provides (install, ports) lives in .local; the names
# the package used from here are still here.
__all__ = [
    "JAVA_OPTS_ENV",
    "LOG_LEVEL_ENV",
    "MAIN_CLASS",
    "PORT_FLOOR",
    "EnsembleNode",
    "ServerFailed",
    "ZooKeeperCluster",
    "ZooKeeperEnsemble",
    "ZooKeeperNode",
    "ZooKeeperNotFound",
    "digest_mismatches",
    "ephemeral_range",
    "find_classpath",
    "find_java",
    "four_letter",
    "free_ports",
    "port_pool",
    "running_zookeeper",
    "server_lines",
]

_LIVE: weakref.WeakSet[EnsembleNode] = weakref.WeakSet()

# How a server logs that its data tree no longer matches the transactions it
# applies (``zookeeper.digest.enabled``, on by default since 3.6): a line with
# the first of these, then one with the second carrying the whole transaction.
_DIGEST_WARNINGS = ("Digests are not matching", "First digest mismatch on txn")
_DIGEST_LINE_CHARS = 200


def digest_mismatches(log: str) -> list[str]:
    """The lines of a server's log in which ZooKeeper reported that its data
    tree diverged from what the transactions it applied say it should be (a
    digest mismatch), each cut to its first 200 characters."""
    return [
        line[:_DIGEST_LINE_CHARS]
        for line in log.splitlines()
        if any(warning in line for warning in _DIGEST_WARNINGS)
    ]


class ServerFailed(RuntimeError):
    """A ZooKeeper process exited or did not start serving in time."""


class EnsembleNode(abc.ABC):
    """One server of a :class:`ZooKeeperEnsemble`, however it runs.

    Its directory holds ``zoo.cfg``, the data directory and the server's
    log. Subclasses run the server: :class:`ZooKeeperNode` as a local
    process, :class:`~zkpubsub.testing.containers.ContainerNode` in a
    container.
    """

    def __init__(
        self,
        myid: int,
        directory: Path,
        client_port: int,
        peer_port: int,
        election_port: int,
        *,
        java_opts: list[str],
    ) -> None:
        self.myid = myid
        self.directory = directory
        self.data_dir = directory / "data"
        self.log_path = directory / "server.log"
        self.config_path = directory / "zoo.cfg"
        self.client_port = client_port
        self.peer_port = peer_port
        self.election_port = election_port
        self.java_opts = java_opts
        self.paused = False
        # (uid, gid) to run the server as instead of this process's user
        self.run_as: tuple[int, int] | None = None
        self.wiped: list[Path] = []  # data moved aside by wipe()
        # the TLS port of a secured server (``secureClientPort``), if any
        self.secure_port: int | None = None
        _LIVE.add(self)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def secure_address(self) -> str | None:
        """``127.0.0.1:<secureClientPort>`` of a server with TLS."""
        return None if self.secure_port is None else f"127.0.0.1:{self.secure_port}"

    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """Whether the server runs (a paused server still does)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server (no-op if it runs); do not wait for it to serve."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the server at once: no goodbye to peers or clients."""

    @abc.abstractmethod
    def stop(self, timeout: float = 15.0) -> None:
        """Ask the server to exit; kill it if it does not in ``timeout`` seconds."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Freeze the server with its sockets open."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Let a paused server run again."""

    def java_flags(self) -> list[str]:
        """The JVM options of the server: ``java_opts`` and the settings every
        server of these ensembles gets."""
        level = os.environ.get(LOG_LEVEL_ENV, "info")
        return [
            *self.java_opts,
            "-Dzookeeper.admin.enableServer=false",
            f"-Dorg.slf4j.simpleLogger.defaultLogLevel={level}",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
        ]

    def write_config(self, settings: dict[str, str], servers: list[str]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={v}" for k, v in settings.items()]
        lines += [f"dataDir={self.data_dir}", f"clientPort={self.client_port}"]
        if self.secure_port is not None:
            lines.append(f"secureClientPort={self.secure_port}")
        lines += servers
        self.config_path.write_text("\n".join(lines) + "\n")
        if servers:
            (self.data_dir / "myid").write_text(f"{self.myid}\n")

    def wipe(self) -> None:
        """Take the node's snapshots and logs away (keeps ``myid``); stop it
        first. The server starts empty; the files are moved aside, not
        deleted, so that :mod:`~zkpubsub.testing.txnlog` can still read
        what the server had logged."""
        if self.running:
            raise RuntimeError("stop the node before wiping its data")
        kept = self.directory / f"wiped-{len(self.wiped) + 1}"
        kept.mkdir(parents=True, exist_ok=True)
        for child in self.data_dir.iterdir():
            if child.name == "myid":
                continue
            shutil.move(str(child), str(kept / child.name))
        self.wiped.append(kept)

    def log_directories(self) -> list[Path]:
        """The directories holding this server's transaction logs: the live
        one and those moved aside by :meth:`wipe`, oldest first."""
        return [*(d / "version-2" for d in self.wiped), self.data_dir / "version-2"]

    def command(self, word: str, timeout: float = 2.0) -> str:
        return four_letter("127.0.0.1", self.client_port, word, timeout)

    def mode(self) -> str | None:
        """``leader``, ``follower``, ``standalone`` or ``None`` if not serving."""
        if self.paused or not self.running:
            return None
        try:
            out = self.command("srvr", timeout=1.0)
        except OSError:
            return None
        for line in out.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def version(self) -> str | None:
        """The server's version (``3.8.0-...``), ``None`` if not serving."""
        try:
            out = self.command("srvr", timeout=1.0)
        except OSError:
            return None
        for line in out.splitlines():
            if line.startswith("Zookeeper version:"):
                return line.split(":", 1)[1].strip()
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def digest_mismatches(self) -> list[str]:
        """:func:`digest_mismatches` of this server's log (every run of it)."""
        try:
            return digest_mismatches(self.log_path.read_text(errors="replace"))
        except OSError:
            return []

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "stopped")
        return f"<{type(self).__name__} {self.myid} {self.address} {state}>"


class ZooKeeperNode(EnsembleNode):
    """One ZooKeeper server process."""

    def __init__(
        self,
        myid: int,
        directory: Path,
        client_port: int,
        peer_port: int,
        election_port: int,
        *,
        java_opts: list[str],
        classpath: str,
    ) -> None:
        super().__init__(
            myid, directory, client_port, peer_port, election_port, java_opts=java_opts
        )
        self.classpath = classpath
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        if self.running:
            return
        java = find_java()
        cmd = [java, *self.java_flags(), "-cp", self.classpath, MAIN_CLASS, str(self.config_path)]
        uid, gid = self.run_as if self.run_as is not None else (None, None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.directory,
                user=uid,
                group=gid,
                extra_groups=None if uid is None else [],
            )
        finally:
            log.close()
        self.paused = False

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no goodbye to peers or clients."""
        if self.process is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        self.process.wait(30)
        self.paused = False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the process freezes with its sockets open."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False


NodeT = TypeVar("NodeT", bound=EnsembleNode)


def server_lines(nodes: list[EnsembleNode], *, legacy: bool = False) -> list[str]:
    """The ``server.N=`` lines of an ensemble's ``zoo.cfg``. ``legacy``: the
    form ZooKeeper 3.4 reads, without the client address (3.5 and later
    accept both; the client port then comes from ``clientPort``)."""
    if len(nodes) < 2:
        return []
    lines = []
    for n in nodes:
        line = f"server.{n.myid}=127.0.0.1:{n.peer_port}:{n.election_port}"
        lines.append(line if legacy else f"{line};127.0.0.1:{n.client_port}")
    return lines


class ZooKeeperEnsemble(abc.ABC, Generic[NodeT]):
    """A standalone ZooKeeper (``size=1``) or an ensemble on 127.0.0.1,
    whichever way its servers run (see :class:`ZooKeeperCluster` and
    :class:`~zkpubsub.testing.containers.ContainerCluster`).

    ``tick_time`` is in milliseconds; sessions may then last from two ticks
    up to ``max_session_timeout`` seconds. ``settings`` are extra ``zoo.cfg``
    lines (``{"jute.maxbuffer": ...}`` goes in ``java_opts``). ``security``
    (a :class:`~zkpubsub.testing.secure.ServerSecurity`) adds a superuser,
    SASL users, enforced authentication and a TLS port. Use as a context
    manager or call ``start()`` / ``close()``.
    """

    # ZooKeeper 3.4 reads only the old form of the server lines
    legacy_config = False

    def __init__(
        self,
        size: int = 1,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        tick_time: int = 200,
        max_session_timeout: float = 60.0,
        java_opts: list[str] | None = None,
        settings: dict[str, str] | None = None,
        client_ports: list[int] | None = None,
        security: ServerSecurity | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("an ensemble needs at least one node")
        if client_ports is not None and len(client_ports) != size:
            raise ValueError("give one client port per node")
        self.size = size
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="zkpubsub-zk-")).absolute()
        self.tick_time = tick_time
        sync_ticks = max(5, 5_000 // tick_time)
        # Seconds a leader waits for its followers (and they for it) before
        # giving up: clients of a server cut off from the others keep their
        # sessions only if the session timeout is longer than this and the
        # election after it.
        self.sync_limit = sync_ticks * tick_time / 1000
        opts = java_opts
        if opts is None:
            opts = os.environ.get(JAVA_OPTS_ENV, "-Xmx384m -XX:+UseSerialGC").split()
        self.security = security
        if security is not None:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            opts = [*opts, *security.java_opts(self.base_dir)]
        # Every port in one call: ports picked by separate calls, each free
        # the moment it was picked, may be the same. A TLS port each after
        # the client, quorum and election ports; none of them a port given.
        tls = security is not None and security.tls is not None
        given = set(client_ports or [])
        wanted = (4 if tls else 3) * size
        ports = [p for p in free_ports(wanted + len(given)) if p not in given][:wanted]
        secure_ports = ports[3 * size :]
        for i, port in enumerate(client_ports or []):
            ports[3 * i] = port
        self.nodes: list[NodeT] = [
            self._new_node(
                i + 1,
                self.base_dir / f"node{i + 1}",
                ports[3 * i : 3 * i + 3],
                java_opts=list(opts),
            )
            for i in range(size)
        ]
        cfg = {
            "tickTime": str(tick_time),
            "initLimit": str(max(10, 10_000 // tick_time)),
            "syncLimit": str(sync_ticks),
            "clientPortAddress": "127.0.0.1",
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "*",
            "minSessionTimeout": str(2 * tick_time),
            "maxSessionTimeout": str(int(max_session_timeout * 1000)),
            "maxClientCnxns": "0",
            "autopurge.purgeInterval": "0",
        }
        if size > 1:
            cfg["standaloneEnabled"] = "false"
            cfg["reconfigEnabled"] = "false"
            cfg["electionPortBindRetry"] = "0"
        if security is not None:
            cfg.update(security.settings())
            if security.tls is not None:
                for node, port in zip(self.nodes, secure_ports, strict=True):
                    node.secure_port = port
        cfg.update(settings or {})
        servers = server_lines(list(self.nodes), legacy=self.legacy_config)
        for node in self.nodes:
            node.write_config(cfg, servers)
        self._closed = False

    @abc.abstractmethod
    def _new_node(
        self, myid: int, directory: Path, ports: list[int], *, java_opts: list[str]
    ) -> NodeT:
        """A node with client, quorum and election ports ``ports``."""

    # -- whole cluster ---------------------------------------------------------------

    @property
    def hosts(self) -> str:
        """The connection string naming every node."""
        return ",".join(n.address for n in self.nodes)

    @property
    def secure_hosts(self) -> str:
        """The connection string of every node's TLS port (a secured cluster)."""
        return ",".join(n.secure_address for n in self.nodes if n.secure_address)

    def start(self, timeout: float = 60.0) -> ZooKeeperEnsemble[NodeT]:
        for node in self.nodes:
            node.start()
        self.wait_serving(timeout=timeout)
        return self

    def wait_serving(self, nodes: list[NodeT] | None = None, timeout: float = 60.0) -> None:
        """Wait until every given node (default: every running one) serves."""
        targets = nodes if nodes is not None else [n for n in self.nodes if n.running]
        deadline = time.monotonic() + timeout
        while True:
            waiting = [n for n in targets if n.mode() is None]
            if not waiting:
                return
            for n in waiting:
                if not n.running:
                    raise ServerFailed(f"{n!r} exited:\n{n.log_tail()}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n!r}\n{n.log_tail(15)}" for n in waiting)
                raise ServerFailed(f"ZooKeeper not serving after {timeout:g}s:\n{tails}")
            time.sleep(0.1)

    def wait_quorum(self, timeout: float = 60.0) -> NodeT:
        """Wait until some node leads (or serves standalone); return it."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader()
            if leader is not None:
                return leader
            if time.monotonic() > deadline:
                raise ServerFailed(f"no leader after {timeout:g}s")
            time.sleep(0.1)

    def leader(self) -> NodeT | None:
        """The node that reports ``Mode: leader`` (or the standalone server)."""
        for node in self.nodes:
            if node.mode() in ("leader", "standalone"):
                return node
        return None

    def followers(self) -> list[NodeT]:
        return [n for n in self.nodes if n.mode() == "follower"]

    def digest_mismatches(self) -> list[str]:
        """Every server's :meth:`~EnsembleNode.digest_mismatches`, each line
        prefixed with the server's id."""
        return [f"server {n.myid}: {line}" for n in self.nodes for line in n.digest_mismatches()]

    def node(self, myid: int) -> NodeT:
        return self.nodes[myid - 1]

    def server_version(self) -> str | None:
        """The version a serving node reports (``3.8.0-...``)."""
        for node in self.nodes:
            version = node.version()
            if version is not None:
                return version
        return None

    def restart(self, node: NodeT, *, kill: bool = False, wipe: bool = False) -> None:
        """Stop (or kill), optionally wipe, start again and wait until it serves."""
        if kill:
            node.kill()
        else:
            node.stop()
        if wipe:
            node.wipe()
        node.start()
        self.wait_serving([node])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ZooKeeperEnsemble[NodeT]:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} size={self.size} hosts={self.hosts}>"


class ZooKeeperCluster(ZooKeeperEnsemble[ZooKeeperNode]):
    """A standalone ZooKeeper (``size=1``) or an ensemble of local processes.

    The server comes from the local install (see :func:`find_classpath`),
    or from ``classpath``. The other arguments are those of
    :class:`ZooKeeperEnsemble`.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        tick_time: int = 200,
        max_session_timeout: float = 60.0,
        java_opts: list[str] | None = None,
        settings: dict[str, str] | None = None,
        classpath: str | None = None,
        client_ports: list[int] | None = None,
        security: ServerSecurity | None = None,
    ) -> None:
        self.classpath = classpath or find_classpath()
        if security is not None and security.tls is not None:
            from .secure import netty_classpath

            # the server's TLS needs Netty, which ZooKeeper's own jar leaves out
            self.classpath = netty_classpath(self.classpath)
        super().__init__(
            size,
            base_dir=base_dir,
            tick_time=tick_time,
            max_session_timeout=max_session_timeout,
            java_opts=java_opts,
            settings=settings,
            client_ports=client_ports,
            security=security,
        )

    def _new_node(
        self, myid: int, directory: Path, ports: list[int], *, java_opts: list[str]
    ) -> ZooKeeperNode:
        return ZooKeeperNode(myid, directory, *ports, java_opts=java_opts, classpath=self.classpath)

    def start(self, timeout: float = 60.0) -> ZooKeeperCluster:
        super().start(timeout)
        return self

    def __enter__(self) -> ZooKeeperCluster:
        super().__enter__()
        return self


@contextlib.contextmanager
def running_zookeeper(size: int = 1, **kwargs: object) -> Iterator[ZooKeeperCluster]:
    """``with running_zookeeper(3) as zk: Client(zk.hosts)``."""
    cluster = ZooKeeperCluster(size, **kwargs)  # type: ignore[arg-type]
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def _kill_leftovers() -> None:
    for node in list(_LIVE):
        with contextlib.suppress(Exception):
            node.kill()


atexit.register(_kill_leftovers)
