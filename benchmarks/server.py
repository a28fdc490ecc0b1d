"""The ZooKeeper the benchmark runs against: started here, sized, warmed.

Standalone for throughput and latency, a 3-node ensemble for the leader
kill. Data directories live on the disk of the output directory's file
system and ``forceSync`` keeps its default (``yes``): every write is
fsynced before it is acknowledged, as in production.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, Final

from zkpubsub.testing import ZooKeeperCluster

from . import stats
from .machine import filesystem_of
from .progress import Progress
from .workers import Pool

STANDALONE_JAVA_OPTS: Final = ("-Xms1g", "-Xmx1g", "-XX:+UseParallelGC")
ENSEMBLE_JAVA_OPTS: Final = ("-Xms256m", "-Xmx256m", "-XX:+UseSerialGC")
TICK_TIME_MS: Final = 2000  # ZooKeeper's default
MAX_SESSION_TIMEOUT: Final = 300.0  # the non-consuming subscriber outlives a long fill


def start_standalone(progress: Progress, base_dir: str | None) -> ZooKeeperCluster:
    """A standalone server for a measurement of its own, started under a
    progress phase."""
    with progress.phase("starting a standalone ZooKeeper") as phase:
        cluster = start_cluster(1, base_dir=base_dir)
        phase.summary = cluster.hosts
    return cluster


class BenchmarkCluster(ZooKeeperCluster):
    """A cluster whose data directory (a new one in ``--zk-dir``) is removed
    when it closes: a run leaves nothing behind on that disk."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


def start_cluster(
    size: int, *, base_dir: str | None, java_opts: list[str] | None = None
) -> ZooKeeperCluster:
    opts = list(java_opts or (STANDALONE_JAVA_OPTS if size == 1 else ENSEMBLE_JAVA_OPTS))
    directory = tempfile.mkdtemp(prefix=f"zk{size}-", dir=base_dir)
    cluster = BenchmarkCluster(
        size,
        base_dir=directory,
        tick_time=TICK_TIME_MS,
        max_session_timeout=MAX_SESSION_TIMEOUT,
        java_opts=opts,
    )
    try:
        cluster.start(timeout=120)
        cluster.wait_quorum(timeout=120)
    except BaseException:
        cluster.close()
        raise
    return cluster


def describe(cluster: ZooKeeperCluster) -> dict[str, Any]:
    node = cluster.nodes[0]
    version = "unknown"
    try:
        for line in node.command("srvr").splitlines():
            if line.startswith("Zookeeper version:"):
                version = line.split(":", 1)[1].strip().split("-", 1)[0]
    except OSError:
        pass
    return {
        "nodes": cluster.size,
        "version": version,
        "java_opts": node.java_opts,
        "tick_time_ms": cluster.tick_time,
        "force_sync": "yes (default: every write fsynced before its answer)",
        "data_dir_filesystem": filesystem_of(str(node.data_dir)),
        "connection_factory": "NIO (default)",
    }


WATCHED_METRICS: Final = ("fsynctime", "updatelatency")


def counters(cluster: ZooKeeperCluster | None) -> dict[str, float]:
    """ZooKeeper's cumulative ``cnt_``/``sum_`` pairs of the watched metrics
    (fsync time and write latency, in ms), summed over the running nodes."""
    out: dict[str, float] = {}
    if cluster is None:
        return out
    for node in cluster.nodes:
        if not node.running:
            continue
        try:
            text = node.command("mntr", timeout=1.0)
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 2 or not parts[0].startswith("zk_"):
                continue
            key = parts[0][3:]
            if any(key in (f"cnt_{m}", f"sum_{m}") for m in WATCHED_METRICS):
                with contextlib.suppress(ValueError):
                    out[key] = out.get(key, 0.0) + float(parts[1])
    return out


def warm_up(
    cluster: ZooKeeperCluster,
    pool: Pool,
    *,
    window: float,
    min_seconds: float,
    cap_seconds: float,
    tolerance: float,
    stable_windows: int,
    on_window: Callable[[float, float], None] | None = None,
) -> dict[str, Any]:
    """Run a create/read/delete load from every worker in windows until the
    throughput is stable (the last ``stable_windows`` within ``tolerance`` of
    their mean, after ``min_seconds``) or ``cap_seconds`` passed. Returns the
    curve: operations per second, window by window."""
    root = "/bench/warmup"
    workers = list(range(pool.size))
    curve: list[tuple[float, float]] = []
    rates: list[float] = []
    start = time.monotonic()
    stabilized = False
    while True:
        t0 = time.monotonic()
        done = pool.call_many(
            workers,
            "warm",
            hosts=cluster.hosts,
            root=root,
            seconds=window,
            batch=20,
            window=4,
            timeout=window + 120,
        )
        elapsed = time.monotonic() - t0
        ops_rate = sum(done) / elapsed
        t = time.monotonic() - start
        curve.append((round(t, 2), round(ops_rate, 1)))
        rates.append(ops_rate)
        if on_window is not None:
            on_window(t, ops_rate)
        if t >= min_seconds and stats.stable(rates, stable_windows, tolerance):
            stabilized = True
            break
        if t >= cap_seconds:
            break
    pool.call_many(workers, "close_warm")
    first, last = rates[0], sum(rates[-stable_windows:]) / len(rates[-stable_windows:])
    return {
        "seconds": round(time.monotonic() - start, 1),
        "stabilized": stabilized,
        "window_seconds": window,
        "tolerance": tolerance,
        "first_window_ops_per_s": round(first, 1),
        "final_ops_per_s": round(last, 1),
        "gain": stats.ratio(last, first),
        "curve": curve,
        "load": "create (transactions of 20), list, read a quarter, delete; from every worker",
    }
