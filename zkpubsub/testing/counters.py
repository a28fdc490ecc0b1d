"""Set a parent's sequential counter (its ``cversion``) on a real server.

ZooKeeper names a sequential child after its parent's ``cversion``, a
signed 32-bit number that grows by one with every child created. Reaching
its end takes two billion creates; to see what happens there, this module
edits the counter in a stopped server's data with ZooKeeper's own classes:

1. a small Java helper (compiled once with ``javac`` against the server's
   class path, kept in a cache directory) restores the node's data tree
   from its latest snapshot and transaction logs (``FileTxnSnapLog``),
2. sets ``DataNode.stat.cversion`` of the given paths,
3. writes a new snapshot at the last transaction's zxid (replacing one of
   that name). The logs hold nothing after that zxid, so a restarted
   server loads the edited tree and replays nothing over it.

The helper writes the snapshot without a tree digest (the digest covers
each node's stat, and the edited tree no longer matches the one recorded
while replaying); the server computes a new one as it loads.

``set_cversions(node, {path: value})`` edits one stopped node;
``restart_with_cversions(cluster, {path: value})`` stops every node of a
cluster, edits each, and starts them again. Paths are server paths (a
client's chroot is not applied).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from .local import find_java
from .server import ZooKeeperCluster, ZooKeeperNode

__all__ = [
    "CACHE_ENV",
    "COUNTER_MAX",
    "CounterEditFailed",
    "compile_helper",
    "restart_with_cversions",
    "set_cversions",
]

#: The largest value of a parent's counter (``Integer.MAX_VALUE``).
COUNTER_MAX: Final = 2**31 - 1
#: Where the compiled helper is kept (default ``~/.cache/zkpubsub``).
CACHE_ENV: Final = "ZKPUBSUB_CACHE_DIR"

_CLASS: Final = "ZkPubSubSetCversion"
_SOURCE: Final = """\
import java.io.File;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.zookeeper.server.DataNode;
import org.apache.zookeeper.server.DataTree;
import org.apache.zookeeper.server.persistence.FileTxnSnapLog;

/** args: dataDir (path cversion)... ; prints the zxid of the snapshot written. */
public class ZkPubSubSetCversion {
    public static void main(String[] args) throws Exception {
        File dir = new File(args[0]);
        FileTxnSnapLog log = new FileTxnSnapLog(dir, dir);
        try {
            DataTree tree = new DataTree();
            ConcurrentHashMap<Long, Integer> sessions = new ConcurrentHashMap<>();
            long zxid = log.restore(tree, sessions, (header, record, digest) -> { });
            if (zxid < 0 || log.findMostRecentSnapshot() == null) {
                System.err.println("no snapshot in " + dir);
                System.exit(3);
            }
            for (int i = 1; i + 1 < args.length; i += 2) {
                DataNode node = tree.getNode(args[i]);
                if (node == null) {
                    System.err.println("no node " + args[i]);
                    System.exit(4);
                }
                synchronized (node) {
                    node.stat.setCversion(Integer.parseInt(args[i + 1]));
                }
                node.setDigestCached(false);
            }
            log.save(tree, sessions, true);
            System.out.println(tree.lastProcessedZxid);
        } finally {
            log.close();
        }
    }
}
"""


class CounterEditFailed(RuntimeError):
    """The helper could not be compiled or could not edit the snapshot."""


def _cache_dir() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zkpubsub"


def _javac() -> str:
    java = Path(find_java()).resolve()
    javac = java.parent / "javac"
    if javac.exists():
        return str(javac)
    found = shutil.which("javac")
    if found is None:
        raise CounterEditFailed("no javac (a JDK, not only a JRE, is needed: openjdk-17-jdk)")
    return found


def compile_helper(classpath: str) -> Path:
    """The directory holding the compiled helper for ``classpath`` (compiled
    on first use; concurrent callers share one compilation)."""
    javac = _javac()
    key = hashlib.sha256(f"{_SOURCE}\0{classpath}\0{javac}".encode()).hexdigest()[:16]
    target = _cache_dir() / f"set-cversion-{key}"
    if (target / f"{_CLASS}.class").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / f"{_CLASS}.class").exists():
            return target
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            (work / f"{_CLASS}.java").write_text(_SOURCE)
            done = subprocess.run(
                [javac, "-nowarn", "-cp", classpath, "-d", str(work), str(work / f"{_CLASS}.java")],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode != 0:
                raise CounterEditFailed(f"javac failed:\n{done.stdout}{done.stderr}")
            os.replace(work, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(work)
    return target


def set_cversions(node: ZooKeeperNode, cversions: Mapping[str, int]) -> int:
    """Set the ``cversion`` of each path in the stopped ``node``'s data:
    the next sequential child of ``path`` is then named after ``value``.
    Returns the zxid of the snapshot written."""
    if node.running:
        raise CounterEditFailed(f"stop {node!r} before editing its snapshot")
    for path, value in cversions.items():
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute server path")
        if not -(2**31) <= value <= COUNTER_MAX:
            raise ValueError(f"cversion {value} is not a signed 32-bit number")
    helper = compile_helper(node.classpath)
    args = [str(node.data_dir)]
    for path, value in cversions.items():
        args += [path, str(value)]
    done = subprocess.run(
        [
            find_java(),
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-Dzookeeper.digest.enabled=false",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp",
            os.pathsep.join([str(helper), node.classpath]),
            _CLASS,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise CounterEditFailed(
            f"editing the snapshot of {node!r} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return int(done.stdout.strip().splitlines()[-1])


def restart_with_cversions(
    cluster: ZooKeeperCluster, cversions: Mapping[str, int], *, timeout: float = 60.0
) -> None:
    """Stop every node of ``cluster``, set the counters in each one's data,
    start them again and wait for a quorum. Clients keep their sessions if
    they reconnect within their session timeout."""
    for node in cluster.nodes:
        node.stop()
    for node in cluster.nodes:
        set_cversions(node, cversions)
    cluster.start(timeout)
    cluster.wait_quorum(timeout)
