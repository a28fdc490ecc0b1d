"""Where the time goes: py-spy profiles of a zkpubsub fan-out.

``python -m benchmarks.profiling [--subscribers 20] [--threads 1]
[--window N]`` starts a standalone server, warms it, starts the subscribers
in worker processes and publishes with ``publish()`` from ``--threads``
threads (with ``--window``: one thread keeping ``N`` ``publish_async()``
in flight, as the fan-out's fastest row does), while py-spy
records the publisher's process and one subscriber process at the same time
with ``--gil`` (samples only while Python holds the GIL, that is: burns
CPU). It writes the collapsed stacks (for flame graph tools) and a summary:
how much of the time each process held the GIL, and where that time went —
by package (zkpubsub, kazoo, the standard library, the harness), by thread
and by function.

Needs py-spy (``pip install py-spy``) and the right to attach to a process
(root, or ``ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import credentials, payload, server
from .profiles import FULL
from .progress import Progress
from .runner import DEFAULT_OUT
from .sections.common import TOPIC, Context, remove_tree, start_subscribers, stop_subscribers
from .workers import WorkerPool, new_root

RATE_HZ = 200
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _package(path: str) -> str:
    """The top-level package of a file as py-spy names it (``kazoo/client.py``)."""
    for name in ("zkpubsub", "kazoo", "benchmarks", "msgpack"):
        if f"/{name}/" in path or path.startswith(f"{name}/"):
            return name
    top = path.lstrip("/").split("/", 1)[0].removesuffix(".py")
    if path.startswith("<") or top in sys.stdlib_module_names:
        return "python (stdlib)"
    return "other"


def _short(frame: str) -> tuple[str, str]:
    """``(function (file), package)`` of one collapsed-stack frame."""
    m = _FRAME.match(frame)
    if not m:
        return frame, "other"
    path = m.group("file")
    short = path.split("site-packages/")[-1]
    for marker in ("/zkpubsub/", "/benchmarks/"):
        if marker in short:
            short = marker.strip("/") + "/" + short.split(marker, 1)[1]
    return f"{m.group('func')} ({short})", _package(path)


def summarize(path: Path, seconds: float, top: int = 15) -> dict[str, Any]:
    """The share of time the GIL was held, and where, from py-spy's raw output."""
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        thread = re.sub(r"^thread \((0x[0-9a-f]+|\d+)\):\s*", "", frames[0]).strip()
        named = [_short(f) for f in frames[1:]]
        total += n
        threads[thread] += n
        if named:
            own[named[-1][0]] += n
            packages[named[-1][1]] += n
        for name in {f for f, _ in named}:
            inclusive[name] += n

    def shares(counter: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100 * v / total, 1)) for name, v in counter.most_common(k)]

    return {
        "samples": total,
        "gil_held_pct": round(100 * total / (seconds * RATE_HZ), 1),
        "by_package_pct": shares(packages, 10) if total else [],
        "by_thread_pct": shares(threads, 8) if total else [],
        "self_pct": shares(own, top) if total else [],
        "inclusive_pct": shares(inclusive, top) if total else [],
    }


def _format(name: str, summary: dict[str, Any]) -> str:
    lines = [f"== {name}: GIL held {summary['gil_held_pct']} % of the time"]
    for title, key in (
        ("by package (self time)", "by_package_pct"),
        ("by thread", "by_thread_pct"),
        ("functions, self time", "self_pct"),
        ("functions, inclusive", "inclusive_pct"),
    ):
        lines.append(f"-- {title}")
        lines += [f"{pct:5.1f} %  {label}" for label, pct in summary[key]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="publishing threads")
    parser.add_argument(
        "--window",
        type=int,
        default=0,
        help="publish_async() calls in flight from one thread (instead of --threads)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="profile length")
    parser.add_argument("--processes", type=int, default=2, help="subscriber processes")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    beside = Path(sys.executable).parent / "py-spy"  # installed in this environment
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        parser.error("py-spy is not installed (pip install py-spy)")
    out_dir = Path(args.out) if args.out else DEFAULT_OUT / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if args.window < 0:
        parser.error("--window must be 0 (publish() from threads) or more")
    shape = f"{args.window}inflight" if args.window else f"{args.threads}threads"
    tag = f"{stamp}-{args.subscribers}subs-{shape}"
    progress = Progress()
    cluster = server.start_cluster(1, base_dir=None)
    pool = WorkerPool(args.processes)
    published = 0
    try:
        with progress.phase("warming ZooKeeper") as phase:
            warm = server.warm_up(
                cluster,
                pool,
                window=2.0,
                min_seconds=20.0,
                cap_seconds=60.0,
                tolerance=0.05,
                stable_windows=4,
                on_window=lambda t, r: phase.update(f"{r:,.0f} ops/s"),
            )
            phase.summary = f"{warm['final_ops_per_s']:,.0f} ops/s"
        ctx = Context(
            profile=FULL,
            pool=pool,
            progress=progress,
            base_dir=None,
            standalone=cluster,
            subscriber_processes=args.processes,
        )
        root = new_root("profile")
        from zkpubsub import Client

        workers = start_subscribers(ctx, "zkpubsub", cluster.hosts, root, args.subscribers)
        client = Client(cluster.hosts, root=root, serializer="raw", **credentials.security())
        stop = threading.Event()
        counter = itertools.count()
        lock = threading.Lock()

        def loop() -> None:
            nonlocal published
            while not stop.is_set():
                now = time.monotonic()
                client.publish(TOPIC, payload.make(next(counter), now, now))
                with lock:
                    published += 1

        def windowed() -> None:  # the oldest waited for when the window is full
            nonlocal published
            in_flight: collections.deque[Any] = collections.deque()
            while not stop.is_set():
                now = time.monotonic()
                in_flight.append(client.publish_async(TOPIC, payload.make(next(counter), now, now)))
                if len(in_flight) >= args.window:
                    in_flight.popleft().result(60)
                    published += 1
            for future in in_flight:
                future.result(60)

        if args.window:
            threads = [threading.Thread(target=windowed, daemon=True)]
        else:
            threads = [threading.Thread(target=loop, daemon=True) for _ in range(args.threads)]
        try:
            for t in threads:
                t.start()
            time.sleep(1.0)
            targets = {"publisher": os.getpid(), "subscriber-process": pool.pids()[0]}
            with progress.phase(f"profiling for {args.seconds:g}s") as phase:
                spies = [
                    subprocess.Popen(
                        [
                            spy,
                            "record",
                            "--pid",
                            str(pid),
                            "--duration",
                            str(int(args.seconds)),
                            "--rate",
                            str(RATE_HZ),
                            "--gil",
                            "--threads",
                            "--nonblocking",
                            "--format",
                            "raw",
                            "-o",
                            str(out_dir / f"{tag}-{name}.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for name, pid in targets.items()
                ]
                start = time.monotonic()
                before = published
                for s in spies:
                    s.wait()
                rate = (published - before) / (time.monotonic() - start)
                phase.summary = f"{rate:,.0f} publishes/s while profiled"
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            client.close()
            stop_subscribers(ctx, workers)
            remove_tree(cluster.hosts, root)
    finally:
        pool.close()
        cluster.close()
    how = (
        f"publish_async(), {args.window} in flight"
        if args.window
        else f"publish() from {args.threads} thread(s)"
    )
    report = [
        f"zkpubsub fan-out, {args.subscribers} subscribers over {args.processes} processes, "
        f"{how}: {rate:,.0f} publishes/s while profiled",
    ]
    for name in targets:
        path = out_dir / f"{tag}-{name}.txt"
        if path.exists():
            report.append(_format(name, summarize(path, args.seconds)))
    text = "\n\n".join(report) + "\n"
    (out_dir / f"{tag}-summary.txt").write_text(text)
    print(text)
    print(f"wrote {out_dir / (tag + '-summary.txt')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
