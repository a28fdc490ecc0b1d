"""How long ZooKeeper takes to confirm a write, before any subscriber.

``python -m benchmarks.commit_latency [--rate 200] [--seconds 15]`` starts a
standalone server (the same settings as the benchmark's), warms it with
transactions for ``--warmup`` seconds, then times paced round trips at
``--rate`` per second from one thread, open loop (each from its scheduled
time, so that a slow one delays the ones behind it and shows):

* ``raw``: kazoo's ``check`` + ``create`` transaction, the smallest write a
  fan-out to one queue needs, with nothing of zkpubsub in the way;
* ``publish``: zkpubsub's ``publish()`` to a topic with one subscriber in
  the same process (its deletes share the server);
* ``floor-txn`` and ``fanout-txn``, taken in turns (``--turns``): the
  latency floor's transaction (one create in each of ``--queues`` queues)
  and, raw through kazoo, the shape of zkpubsub's fan-out transaction to
  as many queues (a receipt, the topic's check, and a check and a create
  per queue): what the publisher's larger transaction costs the server.

It prints the percentiles and writes them as JSON to
``<out>/commit-latency-<timestamp>.json``. The publish-to-handler latency of
the main benchmark cannot be lower than these round trips: its tail is
bounded below by the server's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from zkpubsub import Client

from . import credentials, kazoo_clients, machine, server, stats
from .progress import Progress
from .runner import DEFAULT_OUT

# A call that starts this long behind its schedule marks the run saturated:
# its times then measure a queue of calls, not one call's latency.
SATURATED_BEHIND_S = 1.0


class Paced(list[float]):
    """The times of :func:`paced` (ms), with how many calls were planned and
    how far behind its schedule the latest call started (s)."""

    planned: int = 0
    behind: float = 0.0

    @property
    def saturated(self) -> bool:
        return len(self) < self.planned or self.behind > SATURATED_BEHIND_S


def paced(call: Callable[[], object], rate: float, seconds: float) -> Paced:
    """Call ``call`` ``rate`` times a second for ``seconds``, open loop:
    call *i* is scheduled at ``start + i / rate`` and timed from that
    scheduled time to its return, in ms. A call that takes longer than its
    interval makes the ones behind it late, and their times include the
    wait (no coordinated omission). Calls not made ``seconds`` after the
    last one was scheduled are given up (fewer times). The result says
    whether the sender fell behind (:attr:`Paced.saturated`)."""
    times = Paced()
    total = max(1, int(rate * seconds))
    times.planned = total
    start = time.perf_counter()
    give_up = start + (total - 1) / rate + seconds
    for i in range(total):
        scheduled = start + i / rate
        now = time.perf_counter()
        if now > give_up:
            break
        if scheduled > now:
            time.sleep(scheduled - now)
        else:
            times.behind = max(times.behind, now - scheduled)
        call()
        times.append((time.perf_counter() - scheduled) * 1000)
    return times


def summary(times: list[float], *, saturated: bool = False) -> dict[str, Any]:
    """Percentiles of ``times``; ``saturated``: the sender fell behind its
    schedule (the times measure a queue of calls)."""
    ordered = sorted(times)
    return {
        "count": len(ordered),
        "saturated": saturated,
        **{f"p{q:g}": stats.percentile(ordered, q) for q in (50, 90, 99, 99.9)},
        "max": ordered[-1] if ordered else None,
    }


def committed(txn: Any) -> None:
    """Commit a kazoo transaction; raise if it failed (kazoo returns the
    errors among its results), so that no failed write is timed."""
    failed = [r for r in txn.commit() if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"the transaction failed: {failed!r}")


def described(r: dict[str, Any]) -> str:
    text = f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.1f} ms"
    return text + (" (saturated: the sender fell behind its schedule)" if r["saturated"] else "")


def transaction_shapes(
    zk: KazooClient, args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    """The floor's transaction and the fan-out's shape, to ``args.queues``
    queues, in turns (one first, then the other first, and so on)."""
    base = "/commit-latency-shapes"
    queues = [f"{base}/q{i}" for i in range(args.queues)]
    for queue in queues:
        zk.ensure_path(f"{queue}/s1")
    zk.ensure_path(f"{base}/topic")
    zk.ensure_path(f"{base}/receipts")
    data = b"x" * 100

    def floor() -> None:
        txn = zk.transaction()
        for queue in queues:
            txn.create(f"{queue}/s1/m", data, sequence=True)
        committed(txn)

    def fanout() -> None:
        txn = zk.transaction()
        txn.create(f"{base}/receipts/r", b"", sequence=True)
        txn.check(f"{base}/topic", 0)
        for queue in queues:
            txn.check(queue, 0)
            txn.create(f"{queue}/s1/m", data, sequence=True)
        committed(txn)

    calls = {"floor-txn": floor, "fanout-txn": fanout}
    times: dict[str, list[float]] = {name: [] for name in calls}
    saturated: dict[str, bool] = dict.fromkeys(calls, False)
    turns: dict[str, list[dict[str, Any]]] = {name: [] for name in calls}
    for turn in range(args.turns):
        for name in list(calls) if turn % 2 == 0 else list(calls)[::-1]:
            with progress.phase(f"{name} to {args.queues} queues, turn {turn + 1}") as phase:
                taken = paced(calls[name], args.rate, args.seconds)
                times[name] += taken
                saturated[name] |= taken.saturated
                turns[name].append(summary(taken, saturated=taken.saturated))
                phase.summary = described(turns[name][-1])
    return {
        name: {
            **summary(times[name], saturated=saturated[name]),
            "queues": args.queues,
            "turns": turns[name],
        }
        for name in calls
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.commit_latency", description=__doc__
    )
    parser.add_argument("--rate", type=float, default=200.0, help="round trips per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of warm-up load")
    parser.add_argument("--queues", type=int, default=10, help="queues of the two transactions")
    parser.add_argument("--turns", type=int, default=4, help="turns of the two transactions")
    parser.add_argument("--zk-dir", default=None, metavar="DIR")
    parser.add_argument("--out", default=None, metavar="DIR")
    args = parser.parse_args(argv)
    for option in ("queues", "turns"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    progress = Progress()
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    cluster = server.start_standalone(progress, args.zk_dir)
    try:
        zk = kazoo_clients.new(cluster.hosts)
        zk.start(timeout=30)
        client = Client(cluster.hosts, root="/commit-latency", **credentials.security())
        try:
            zk.ensure_path("/commit-latency-raw")
            with progress.phase(f"warming ZooKeeper for {args.warmup:g}s") as phase:
                until = time.monotonic() + args.warmup
                while (left := until - time.monotonic()) > 0:
                    txn = zk.transaction()
                    for _ in range(10):
                        txn.create("/commit-latency-raw/w", b"x" * 100, sequence=True)
                    txn.commit()
                    phase.update(f"{left:.0f}s left")

            def raw() -> None:
                txn = zk.transaction()
                txn.check("/commit-latency-raw", 0)
                txn.create("/commit-latency-raw/m", b"x" * 100, sequence=True)
                committed(txn)

            client.subscribe("t", lambda _message: None)
            calls: dict[str, Callable[[], object]] = {
                "raw": raw,
                "publish": lambda: client.publish("t", b"x" * 100),
            }
            for name, call in calls.items():
                with progress.phase(f"{name} at {args.rate:g}/s") as phase:
                    taken = paced(call, args.rate, args.seconds)
                    results[name] = summary(taken, saturated=taken.saturated)
                    phase.summary = described(results[name])
            results.update(transaction_shapes(zk, args, progress))
        finally:
            client.close()
            zk.stop()
            zk.close()
    finally:
        cluster.close()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "rate": args.rate,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "code": machine.code_version(),
        **results,
    }
    path = out_dir / f"commit-latency-{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    progress.note(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
