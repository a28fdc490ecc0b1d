"""Where should the subscribers of a fan-out benchmark run?

``python -m benchmarks.placement`` measures fan-out end to end at one
subscriber count with the subscribers as threads of the publisher's own
process, then spread over 1, 2 and 4 worker processes, on one warmed
standalone server. In production subscribers are other processes on other
machines; the question is how much hosting them beside the publisher (one
GIL) or packing many into one process distorts what is measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import machine, server
from .profiles import FULL, Profile
from .progress import Progress
from .runner import DEFAULT_OUT
from .sections import fanout
from .sections.common import Context
from .workers import InlinePool, Pool, WorkerPool


def context(profile: Profile, pool: Pool, progress: Progress, cluster: Any) -> Context:
    """A fan-out context whose subscribers are spread over every process
    (or thread) of ``pool``: "4 worker processes" means four."""
    return Context(
        profile=profile,
        pool=pool,
        progress=progress,
        base_dir=None,
        standalone=cluster,
        subscriber_processes=pool.size,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.placement", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--processes", default="1,2,4", help="worker process counts to try")
    parser.add_argument(
        "--impls", default="zkms,zkpubsub-publish,zkpubsub-threads", help="fan-out variants"
    )
    parser.add_argument("--warmup-cap", type=float, default=45.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.processes.split(",") if x.strip()]
    profile = replace(
        FULL,
        name="placement",
        fanout_duration=args.duration,
        warmup_min=min(FULL.warmup_min, args.warmup_cap),
        warmup_cap=args.warmup_cap,
    )
    progress = Progress()
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = server.start_cluster(1, base_dir=None)
    results: list[dict[str, Any]] = []
    try:
        warm_pool = WorkerPool(max(counts, default=1))
        try:
            with progress.phase("warming ZooKeeper") as phase:
                warm = server.warm_up(
                    cluster,
                    warm_pool,
                    window=profile.warmup_window,
                    min_seconds=profile.warmup_min,
                    cap_seconds=profile.warmup_cap,
                    tolerance=profile.warmup_tolerance,
                    stable_windows=profile.warmup_stable_windows,
                    on_window=lambda t, r: phase.update(f"{r:,.0f} ops/s at {t:.0f}s"),
                )
                phase.summary = f"{warm['final_ops_per_s']:,.0f} ops/s"
        finally:
            warm_pool.close()
        placements: list[tuple[str, int]] = [("threads in the publisher's process", 0)]
        placements += [(f"{k} worker process{'es' if k > 1 else ''}", k) for k in counts]
        impls = [i for i in fanout.implementations_for(profile) if i.key in args.impls.split(",")]
        for label, k in placements:
            pool: Pool = InlinePool(1) if k == 0 else WorkerPool(k)
            try:
                ctx = context(profile, pool, progress, cluster)
                for impl in impls:
                    name = f"{args.subscribers} subscribers as {label}: {impl.label}"
                    with progress.phase(name) as phase:
                        cell = fanout.measure(ctx, impl, args.subscribers, phase)
                    cell["placement"] = label
                    cell["processes"] = k
                    results.append(cell)
            finally:
                pool.close()
    finally:
        cluster.close()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"placement-{stamp}.json"
    path.write_text(json.dumps({"machine": machine.describe(), "results": results}, indent=1))
    print(f"{'placement':<40} {'variant':<44} {'e2e msg/s':>10} {'publish/s':>10}")
    for r in results:
        print(
            f"{r['placement']:<40} {r['label']:<44} {r['e2e_rate']!s:>10} {r['publish_rate']!s:>10}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
