"""What every section gets, and the steps they share."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient

from zkpubsub.testing import ZooKeeperCluster

from .. import raw_ceiling
from ..profiles import Profile
from ..progress import Phase, Progress
from ..workers import Pool

logger = logging.getLogger(__name__)

TOPIC = "bench"


@dataclass
class Context:
    profile: Profile
    pool: Pool
    progress: Progress
    base_dir: str | None
    standalone: ZooKeeperCluster | None = None
    subscriber_processes: int = 2

    @property
    def hosts(self) -> str:
        assert self.standalone is not None, "the standalone server is not running"
        return self.standalone.hosts


def start_subscribers(
    ctx: Context,
    impl: str,
    hosts: str,
    root: str,
    n: int,
    *,
    latency: bool = False,
    session_timeout: float = 10.0,
    over: int | None = None,
) -> list[int]:
    """``n`` subscribers spread over the workers (``over`` of them; default:
    the subscriber processes); returns the workers used."""
    placement = ctx.pool.spread(n, over=over or ctx.subscriber_processes)
    workers = [w for w, _ in placement]
    ctx.pool.call_many(
        workers,
        "subscribe",
        per_worker=[{"count": c} for _, c in placement],
        impl=impl,
        hosts=hosts,
        root=root,
        topic=TOPIC,
        latency=latency,
        session_timeout=session_timeout,
        timeout=60 + 2 * n,
    )
    return workers


def wait_delivered(
    ctx: Context,
    workers: list[int],
    expected: int,
    deadline: float,
    phase: Phase,
    label: str = "delivered",
) -> None:
    """Poll the workers until every subscriber has ``expected`` distinct
    messages or the deadline passes."""
    while True:
        counts = [c for per in ctx.pool.call_many(workers, "counts") for c in per]
        low = min(counts) if counts else 0
        phase.update(f"{label} {low}/{expected} (slowest subscriber)")
        if low >= expected or time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def collect(
    ctx: Context,
    workers: list[int],
    expected: int | None,
    *,
    latencies: bool = False,
    seqs: bool = False,
    wait: float = 0.0,
) -> list[dict[str, Any]]:
    per_worker = ctx.pool.call_many(
        workers,
        "collect",
        expected=expected,
        wait=wait,
        latencies=latencies,
        seqs=seqs,
        timeout=wait + 60,
    )
    return [s for per in per_worker for s in per]


def stop_subscribers(ctx: Context, workers: list[int]) -> None:
    try:
        ctx.pool.call_many(workers, "unsubscribe", timeout=120)
    except Exception as exc:  # keep going: the next cell uses a fresh root
        logger.warning("stopping subscribers: %r", exc)


@contextlib.contextmanager
def kazoo(hosts: str, **kwargs: Any) -> Iterator[KazooClient]:
    from ..zkms_reference import connect

    zk = connect(hosts, **kwargs)
    try:
        yield zk
    finally:
        zk.stop()
        zk.close()


def remove_tree(hosts: str, root: str) -> None:
    """Delete a cell's root so the next cell finds the server as it was."""
    try:
        with kazoo(hosts) as zk:
            raw_ceiling.delete_tree(zk, root)
    except Exception as exc:
        logger.warning("removing %s: %r", root, exc)
