"""``python -m benchmarks``: start ZooKeeper, warm it, run the sections,
write JSON, plots and a Markdown report."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import machine, server
from .profiles import PROFILES, SECTIONS, Profile, subscriber_processes
from .progress import Progress
from .report import public_argv
from .sections.common import Context
from .workers import WorkerPool

logger = logging.getLogger("benchmarks")

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = PACKAGE_DIR / "results"
DEFAULT_DOCS = PACKAGE_DIR.parent / "docs" / "benchmarks.md"
DEFAULT_README = PACKAGE_DIR.parent / "README.md"
# every section but the one that kills an ensemble's leader
STANDALONE_SECTIONS = tuple(name for name in SECTIONS if name != "stall")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Benchmark zkpubsub against a zkms-style reference, kazoo's raw "
            "pipelined transactions and kazoo's LockingQueue, on ZooKeeper "
            "servers started for the run."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (seconds per section, small sizes)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="SECTION",
        help=f"run only these sections (repeat or comma-separate): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help=f"where results go (default: {DEFAULT_OUT.relative_to(PACKAGE_DIR.parent)})",
    )
    parser.add_argument(
        "--docs",
        metavar="FILE",
        default=None,
        help="update the results block of this Markdown file (default for a "
        "full run into the default output: docs/benchmarks.md)",
    )
    parser.add_argument(
        "--readme",
        metavar="FILE",
        default=None,
        help="update the generated performance table of this README (default: with the "
        "docs, README.md)",
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="do not touch any docs file or the README"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="runs of every measured cell (default 3; 2 with --quick)",
    )
    parser.add_argument(
        "--fanout-subscribers",
        default=None,
        metavar="N,N",
        help="subscriber counts of the fan-out section (default 1,10,20,100): a reduced run",
    )
    parser.add_argument(
        "--fanout-seconds",
        type=float,
        default=None,
        metavar="S",
        help="publishing time of each fan-out cell (default 6): a reduced run",
    )
    parser.add_argument(
        "--queue-items",
        type=int,
        default=None,
        metavar="N",
        help="backlog every work-queue cell drains (default 2000): a reduced run",
    )
    parser.add_argument(
        "--latency-rates",
        default=None,
        metavar="R,R",
        help="offered rates of the latency section (default 50,200,1000): a reduced run",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--subscriber-processes",
        type=int,
        default=None,
        metavar="N",
        help="processes the subscribers are spread over (default: one per core, at least 2)",
    )
    parser.add_argument(
        "--latency-subscribers",
        type=int,
        default=None,
        metavar="N",
        help="subscribers in the latency section (default 10, the target's; "
        "another number leaves the latency targets unmeasured)",
    )
    parser.add_argument(
        "--zk-dir",
        default=None,
        metavar="DIR",
        help="parent directory of the ZooKeeper data directories "
        "(default: the system's temporary directory)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument(
        "--report-only",
        metavar="JSON",
        default=None,
        help="run nothing: write the plots, Markdown (and --docs) again from a saved report",
    )
    args = parser.parse_args(argv)
    sections: list[str] = []
    for item in args.only or []:
        for name in item.split(","):
            name = name.strip()
            if name not in SECTIONS:
                parser.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
            if name not in sections:
                sections.append(name)
    args.sections = [s for s in SECTIONS if s in sections] if sections else list(SECTIONS)
    return args


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """While inside, SIGTERM raises ``SystemExit`` in the main thread, so
    that the ``finally`` blocks run as on Ctrl-C: ZooKeeper stopped (its
    data directory removed), the worker processes and the frozen
    subscriber ended, the gateway stopped. A second SIGTERM during that
    cleanup is ignored. The handler before is put back on the way out.
    Outside the main thread (where no handler can be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        logger.warning("SIGTERM: stopping, cleaning up")
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        # None: a handler not set from Python, which cannot be put back
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; returns the process exit code (0 unless a section
    failed to run — missed targets are reported, not failures). A SIGTERM
    stops the run as Ctrl-C does, cleaning up (:func:`sigterm_exits`), and
    exits with status 143."""
    args = parse_args(argv)
    if args.report_only:
        return render_only(args)
    with sigterm_exits():
        return _main(args, argv)


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    profile = PROFILES["quick" if args.quick else "full"]
    if args.repeats is not None:
        profile = replace(profile, repeats=max(1, args.repeats))
    reduced: dict[str, Any] = {}
    if args.fanout_subscribers:
        reduced["fanout_subscribers"] = tuple(
            int(n) for n in args.fanout_subscribers.split(",") if n.strip()
        )
    if args.fanout_seconds is not None:
        reduced["fanout_duration"] = args.fanout_seconds
    if args.queue_items is not None:
        reduced["queue_items"] = max(1, args.queue_items)
    if args.latency_rates:
        reduced["latency_rates"] = tuple(
            float(r) for r in args.latency_rates.split(",") if r.strip()
        )
    if args.repeats is not None and args.repeats < PROFILES["full"].repeats:
        reduced["repeats"] = profile.repeats
    if reduced:
        name = profile.name if args.quick else "reduced"
        profile = replace(profile, name=name, **reduced)
    if args.subscriber_processes is not None:
        profile = replace(profile, subscriber_processes=max(1, args.subscriber_processes))
    if args.latency_subscribers is not None:
        profile = replace(profile, latency_subscribers=max(1, args.latency_subscribers))
    sub_procs = subscriber_processes(profile)
    queue_procs = max(profile.queue_workers, default=1) if "queue" in args.sections else 1
    if "queue-latency" in args.sections:  # one process per queue worker there too
        queue_procs = max((queue_procs, *profile.queue_latency_workers))
    # the latency targets' cells run one subscriber process per subscriber
    latency_procs = (
        max(profile.latency_target_counts, default=1) if "latency" in args.sections else 1
    )
    pool_size = max(sub_procs, queue_procs, latency_procs)

    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    log_dir = out_dir / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    _configure_logging(log_dir / "harness.log")
    progress = Progress(quiet=args.quiet)
    progress.note(
        f"zkpubsub benchmarks, {profile.name} run, sections: {', '.join(args.sections)}; "
        f"results in {out_dir}"
    )

    report: dict[str, Any] = {
        "schema": 1,
        "profile": profile.name,
        "argv": public_argv(list(argv) if argv is not None else sys.argv[1:]),
        "started": started.isoformat(timespec="seconds"),
        "sections_run": args.sections,
        "machine": machine.describe(),
        "params": {**profile.to_json(), "subscriber_processes": sub_procs},
        "sections": {},
        "errors": {},
    }
    failed = _run(args, profile, report, progress, log_dir, pool_size, sub_procs)
    finished = dt.datetime.now(dt.timezone.utc)
    report["finished"] = finished.isoformat(timespec="seconds")
    report["duration_s"] = round((finished - started).total_seconds(), 1)
    report["machine"]["loadavg_at_end"] = machine.load_average()

    json_path = out_dir / f"{stamp}.json"
    publish(report, out_dir, stamp, args, progress, json_path=json_path)
    return 1 if failed else 0


def publish(
    report: dict[str, Any],
    out_dir: Path,
    stamp: str,
    args: argparse.Namespace,
    progress: Progress,
    *,
    json_path: Path | None,
) -> None:
    """Targets, JSON (when ``json_path``), plots, Markdown and the docs block."""
    from . import report as reporting

    report["targets"] = reporting.targets(report)
    if json_path is not None:
        _write_json(json_path, report)
        _write_json(out_dir / "latest.json", report)
    plots: list[str] = []
    if not args.no_plots:
        try:
            from . import plots as plotting

            plots = plotting.write_all(report, out_dir / "plots")
        except Exception as exc:
            logger.exception("plots failed")
            progress.note(f"plots failed: {type(exc).__name__}: {exc}")
    markdown = reporting.markdown(report, plots=plots, relative_to=out_dir)
    (out_dir / f"{stamp}.md").write_text(markdown)
    (out_dir / "latest.md").write_text(markdown)
    docs = _docs_target(args, out_dir)
    if docs is not None:
        reporting.update_docs(docs, report, plots=plots)
        progress.note(f"updated {docs}")
    readme = _readme_target(args, docs)
    if readme is not None and reporting.update_readme(readme, report):
        progress.note(f"updated {readme}")
    progress.note(reporting.summary_lines(report))
    if json_path is not None:
        progress.note(f"wrote {json_path} ({report.get('duration_s')} s)")


def render_only(args: argparse.Namespace) -> int:
    """Write plots, Markdown and docs again from a saved JSON report."""
    source = Path(args.report_only)
    report = json.loads(source.read_text())
    out_dir = Path(args.out) if args.out else source.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = source.stem if source.stem != "latest" else "latest-rendered"
    publish(report, out_dir, stamp, args, Progress(quiet=args.quiet), json_path=None)
    return 0


def _docs_target(args: argparse.Namespace, out_dir: Path) -> Path | None:
    if args.no_docs:
        return None
    if args.docs:
        return Path(args.docs)
    if args.quick or args.out is not None or args.report_only:
        return None
    return DEFAULT_DOCS if DEFAULT_DOCS.parent.is_dir() else None


def _readme_target(args: argparse.Namespace, docs: Path | None) -> Path | None:
    """The README whose performance table follows the docs (or ``--readme``)."""
    if args.no_docs:
        return None
    if args.readme:
        return Path(args.readme)
    if docs is not None and docs.resolve() == DEFAULT_DOCS.resolve():
        return DEFAULT_README if DEFAULT_README.is_file() else None
    return None


def _run(
    args: argparse.Namespace,
    profile: Profile,
    report: dict[str, Any],
    progress: Progress,
    log_dir: Path,
    pool_size: int,
    sub_procs: int,
) -> bool:
    """Run the sections; returns whether any of them failed."""
    failed = False
    zk_dir = args.zk_dir
    pool: WorkerPool | None = None
    ctx: Context | None = None
    monitor: machine.LoadMonitor | None = None
    clusters: list[Any] = []
    try:
        with progress.phase(f"starting {pool_size} worker processes") as phase:
            pool = WorkerPool(pool_size, log_dir=str(log_dir))
            phase.summary = f"ready; subscribers spread over {min(sub_procs, pool_size)}"
        ctx = Context(
            profile=profile,
            pool=pool,
            progress=progress,
            base_dir=zk_dir,
            subscriber_processes=min(sub_procs, pool_size),
        )

        def own_pids() -> list[int]:
            # every process this run started counts as its own (the
            # gateway section's server too), not as other work
            pids = [os.getpid(), *machine.descendants(os.getpid())]
            pids.extend(pool.pids() if pool else [])
            for cluster in clusters:
                pids.extend(n.pid for n in cluster.nodes if n.pid)
            return pids

        monitor = machine.LoadMonitor(
            own_pids, counters=lambda: server.counters(ctx.standalone if ctx else None)
        ).start()
        standalone_needed = [s for s in args.sections if s in STANDALONE_SECTIONS]
        if standalone_needed:
            monitor.mark("startup")
            with progress.phase("starting standalone ZooKeeper") as phase:
                ctx.standalone = server.start_cluster(1, base_dir=zk_dir)
                clusters.append(ctx.standalone)
                report["zookeeper"] = server.describe(ctx.standalone)
                phase.summary = f"{report['zookeeper']['version']} at {ctx.hosts}"
            monitor.mark("warmup")
            with progress.phase("warming ZooKeeper") as phase:
                report["warmup"] = server.warm_up(
                    ctx.standalone,
                    pool,
                    window=profile.warmup_window,
                    min_seconds=profile.warmup_min,
                    cap_seconds=profile.warmup_cap,
                    tolerance=profile.warmup_tolerance,
                    stable_windows=profile.warmup_stable_windows,
                    on_window=lambda t, r: phase.update(f"{r:,.0f} ops/s at {t:.0f}s"),
                )
                w = report["warmup"]
                phase.summary = (
                    f"{w['first_window_ops_per_s']:,.0f} -> {w['final_ops_per_s']:,.0f} ops/s"
                    f"{'' if w['stabilized'] else ' (cap reached before it was stable)'}"
                )
        for name in args.sections:
            monitor.mark(name)
            # a section's module is its name with "_" for "-"
            module = importlib.import_module(f".sections.{name.replace('-', '_')}", __package__)
            try:
                if name == "stall":
                    report["sections"][name] = module.run(ctx, clusters)
                else:
                    report["sections"][name] = module.run(ctx)
                section_errors = report["sections"][name].get("errors")
                if section_errors:
                    failed = True
            except Exception as exc:
                logger.exception("section %s failed", name)
                report["errors"][name] = f"{type(exc).__name__}: {exc}"
                progress.note(f"{name}: failed: {type(exc).__name__}: {exc}")
                failed = True
        monitor.finish()
    except KeyboardInterrupt:
        progress.note("interrupted")
        report["errors"]["run"] = "interrupted"
        failed = True
    finally:
        if pool is not None:
            pool.close()
        for cluster in clusters:
            with contextlib.suppress(Exception):
                cluster.close()  # its data directory goes with it
        if monitor is not None:
            monitor.stop()
            report["load"] = monitor.intervals()
    return failed


def _configure_logging(path: Path) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("benchmarks").setLevel(logging.INFO)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
