"""What one stuck subscriber among ten costs the publishers, and the server.

Each cell has ten subscribers on a fresh root, each a zkpubsub subscription
with a client of its own, spread over the subscriber processes, and
``stuck_publishers`` publisher clients in threads of the harness, each
publishing one 100-byte message at a time (closed loop). Three cells:

* ``healthy``: ten subscribers that handle every message;
* ``stuck``: nine of those and one whose handler blocks for the whole cell,
  its queue bounded at ``stuck_bound`` nodes (``when_full="drop"``): once
  full, publishers leave one overflow marker each in it and count into it;
* ``unbounded``: the same stuck subscriber with the bound out of reach
  (``max_backlog`` 2^31 - 1): what the bound buys.

Every cell publishes for ``stuck_warmup`` seconds (not measured: the stuck
queue fills up meanwhile) and then for ``stuck_duration`` seconds, measured:
the publishers' acknowledged publishes per second. The cells run in
``stuck_rounds`` rounds, each round running every cell once in a rotating
order, and the cost of the stuck subscriber is taken round by round (stuck
÷ healthy of the same round). Throughout each cell the server's ``mntr``
(``zk_znode_count``, ``zk_approximate_data_size``) and the stuck queue's
entries (a plain listing, as any ZooKeeper client sees it) are sampled
every ``stuck_sample`` seconds. After publishing, the healthy subscribers
must have received every acknowledged message (and none that was not
published): a cell where one did not says so in its ``problems`` and in
the section's errors, which fails the run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

from zkpubsub._queues import STATE_TTL
from zkpubsub.testing.queues import queue_entries

from .. import credentials, payload, stats
from ..progress import Phase
from ..workers import new_root
from .common import TOPIC, Context, collect, kazoo, remove_tree, start_subscribers, stop_subscribers

SUBSCRIBERS: Final = 10
CELLS: Final = ("healthy", "stuck", "unbounded")
UNBOUNDED: Final = 2**31 - 1
TARGET: Final = 0.9


class _Publishers:
    """Publisher clients in threads, one message at a time; acknowledgements
    timed, sequence numbers unique across the threads."""

    def __init__(self, hosts: str, root: str, count: int) -> None:
        from zkpubsub import Client

        self.clients = [
            Client(hosts, root=root, serializer="raw", **credentials.security())
            for _ in range(count)
        ]
        self.acks: list[float] = []
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(c, i, count), daemon=True)
            for i, c in enumerate(self.clients)
        ]

    def _loop(self, client: Any, first: int, step: int) -> None:
        seq = first
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                client.publish(TOPIC, payload.make(seq, now, now))
            except Exception:
                with self._lock:
                    self.errors += 1
                time.sleep(0.01)
            else:
                with self._lock:
                    self.acks.append(time.monotonic())
            seq += step

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def acked(self, since: float = 0.0, until: float = float("inf")) -> int:
        with self._lock:
            return sum(1 for t in self.acks if since <= t < until)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()


class _Sampler:
    """``mntr`` of the server and the stuck queue's entries, every
    ``interval`` seconds: ``[t, znode_count, approximate_data_size,
    stuck entries]`` with ``t`` from ``origin``."""

    def __init__(
        self, ctx: Context, root: str, stuck: str | None, interval: float, origin: float
    ) -> None:
        assert ctx.standalone is not None
        self.node = ctx.standalone.nodes[0]
        self.hosts = ctx.hosts
        self.root, self.stuck = root, stuck
        self.interval, self.origin = interval, origin
        self.samples: list[tuple[float, int | None, int | None, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def mntr(self) -> tuple[int | None, int | None]:
        try:
            text = self.node.command("mntr", timeout=2.0)
        except OSError:
            return None, None
        values: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("zk_znode_count", "zk_approximate_data_size"):
                with contextlib.suppress(ValueError):
                    values[parts[0]] = int(parts[1])
        return values.get("zk_znode_count"), values.get("zk_approximate_data_size")

    def _run(self) -> None:
        with kazoo(self.hosts) as zk:
            while True:
                znodes, size = self.mntr()
                entries = None
                if self.stuck is not None:
                    with contextlib.suppress(Exception):
                        listed = queue_entries(zk, self.root, self.stuck, TOPIC)
                        entries = None if listed is None else len(listed)
                t = round(time.monotonic() - self.origin, 2)
                self.samples.append((t, znodes, size, entries))
                if self._stop.wait(self.interval):
                    return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _growth(samples: Sequence[Sequence[Any]], start: float, end: float) -> float | None:
    """``zk_znode_count`` per second over ``[start, end]`` (least squares)."""
    points = [(s[0], s[1]) for s in samples if start <= s[0] <= end and s[1] is not None]
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var <= 0:
        return None
    return round(float(sum((t - mx) * (v - my) for t, v in points) / var), 1)


def delivery_problems(
    unique: Sequence[int], published: int, failed: int, healthy: int
) -> list[str]:
    """What is wrong with what the ``healthy`` subscribers received
    (``unique``: distinct messages each) of ``published`` acknowledged
    publishes, ``failed`` more having raised (those may have been
    delivered, or not)."""
    problems = []
    if len(unique) != healthy:
        problems.append(f"{len(unique)} of {healthy} healthy subscribers reported")
    short = [u for u in unique if u < published]
    if short:
        problems.append(
            f"{len(short)} healthy subscriber(s) missed acknowledged messages: "
            f"got {min(short):,} of {published:,}"
        )
    extra = [u for u in unique if u > published + failed]
    if extra:
        problems.append(
            f"{len(extra)} healthy subscriber(s) got {max(extra):,} distinct messages, "
            f"more than the {published + failed:,} published"
        )
    return problems


def _cell(ctx: Context, cell: str, repeat: int, phase: Phase) -> dict[str, Any]:
    p = ctx.profile
    hosts = ctx.hosts
    root = new_root(f"stuck-{cell}")
    healthy_count = SUBSCRIBERS if cell == "healthy" else SUBSCRIBERS - 1
    bound = {"stuck": p.stuck_bound, "unbounded": UNBOUNDED}.get(cell)
    phase.update(f"round {repeat + 1}: {cell}: starting {SUBSCRIBERS} subscribers")
    workers = start_subscribers(ctx, "zkpubsub", hosts, root, healthy_count)
    stuck_worker = workers[-1]
    stuck_id = None
    publishers = sampler = None
    try:
        if bound is not None:
            stuck_id = ctx.pool.call(
                stuck_worker,
                "subscribe_stuck",
                hosts=hosts,
                root=root,
                topic=TOPIC,
                max_backlog=bound,
                timeout=60,
            )
        publishers = _Publishers(hosts, root, p.stuck_publishers)
        origin = time.monotonic()
        sampler = _Sampler(ctx, root, stuck_id, p.stuck_sample, origin)
        sampler.start()
        time.sleep(min(1.0, 2 * p.stuck_sample))  # the level before publishing
        t_publish = time.monotonic()
        publishers.start()
        t_measure = t_publish + p.stuck_warmup
        t_end = t_measure + p.stuck_duration
        while time.monotonic() < t_end:
            phase.update(
                f"round {repeat + 1}: {cell}: {publishers.acked():,} acknowledged"
                f"{' (warming up)' if time.monotonic() < t_measure else ''}"
            )
            time.sleep(0.2)
        measured = publishers.acked(t_measure, t_end)
        publishers.stop()
        published = publishers.acked()
        time.sleep(min(1.0, 2 * p.stuck_sample))  # the level after
        sampler.stop()
        phase.update(f"round {repeat + 1}: {cell}: draining the healthy subscribers")
        received = collect(ctx, workers, published, wait=p.stuck_drain_cap)
    finally:
        if publishers is not None:
            publishers.stop()
        if sampler is not None:
            sampler.stop()
        stop_subscribers(ctx, workers)
        remove_tree(hosts, root)
    samples = sampler.samples
    rel = (t_publish - origin, t_measure - origin, t_end - origin)
    before = [s[1] for s in samples if s[0] < rel[0] and s[1] is not None]
    counts = [s[1] for s in samples if s[1] is not None]
    sizes = [s[2] for s in samples if s[2] is not None]
    entries = [s[3] for s in samples if s[3] is not None]
    rate = stats.rate(measured, p.stuck_duration)
    problems = delivery_problems(
        [r["unique"] for r in received], published, publishers.errors, healthy_count
    )
    return {
        "cell": cell,
        "repeat": repeat,
        "subscribers": SUBSCRIBERS,
        "stuck_bound": bound,
        "publishers": p.stuck_publishers,
        "published": published,
        "measured": measured,
        "rate": rate,
        "errors": publishers.errors,
        "delivered_min": min((r["unique"] for r in received), default=0),
        "problems": problems,
        "duplicates": sum(r["duplicates"] for r in received),
        "znodes_before": before[-1] if before else None,
        "znodes_peak": max(counts, default=None),
        "data_size_peak": max(sizes, default=None),
        "znode_growth_per_s": _growth(samples, rel[1], rel[2]),
        "stuck_entries_peak": max(entries, default=None),
        # what the bound may be passed by (docs/wire-format.md): what the
        # other publishers write between two reads of the queue's depth
        # (STATE_TTL; twice that, for a loaded machine), one node and one
        # overflow marker per publisher
        "stuck_allowed": None
        if cell != "stuck" or bound is None or rate is None
        else int(bound + rate * 2 * STATE_TTL + 2 * p.stuck_publishers),
        "publishing_s": [round(rel[0], 2), round(rel[1], 2), round(rel[2], 2)],
        "samples": samples,
    }


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    runs: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    order = stats.rotations(CELLS, p.stuck_rounds)
    for repeat, _, cell in order:
        with ctx.progress.phase(f"stuck: round {repeat + 1}, {cell}") as phase:
            try:
                r = _cell(ctx, cell, repeat, phase)
            except Exception as exc:
                errors.append({"cell": cell, "error": f"{type(exc).__name__}: {exc}"})
                phase.summary = f"error: {type(exc).__name__}: {exc}"
                continue
            runs.append(r)
            phase.summary = (
                f"{r['rate']} publishes/s, znodes {r['znode_growth_per_s']}/s, "
                f"stuck queue peak {r['stuck_entries_peak']}"
            )
            if r["problems"]:  # measured, but not every message arrived: fail loudly
                error = f"round {repeat + 1}: {'; '.join(r['problems'])}"
                errors.append({"cell": cell, "error": error})
                phase.summary += f"; {error}"
                ctx.progress.note(f"stuck: {cell}: {error}")
    by = {(r["repeat"], r["cell"]): r for r in runs}

    def paired(cell: str) -> dict[str, Any] | None:
        return stats.spread(
            [
                stats.ratio(by[(k, cell)]["rate"], by[(k, "healthy")]["rate"])
                if (k, cell) in by and (k, "healthy") in by
                else None
                for k in range(p.stuck_rounds)
            ]
        )

    summary = [
        {
            "cell": cell,
            "rates": stats.spread([r["rate"] for r in runs if r["cell"] == cell]),
            "growth": stats.spread(
                [r["znode_growth_per_s"] for r in runs if r["cell"] == cell], digits=1
            ),
            "stuck_entries_peak": max(
                (r["stuck_entries_peak"] or 0 for r in runs if r["cell"] == cell), default=None
            ),
            "data_size_peak": max(
                (r["data_size_peak"] or 0 for r in runs if r["cell"] == cell), default=None
            ),
        }
        for cell in CELLS
    ]
    within = [
        r["stuck_entries_peak"] is not None and r["stuck_entries_peak"] <= r["stuck_allowed"]
        for r in runs
        if r["cell"] == "stuck" and r["stuck_allowed"] is not None
    ]
    return {
        "description": (__doc__ or "").strip().splitlines()[0],
        "params": {
            "subscribers": SUBSCRIBERS,
            "publishers": p.stuck_publishers,
            "bound": p.stuck_bound,
            "warmup_s": p.stuck_warmup,
            "duration_s": p.stuck_duration,
            "rounds": p.stuck_rounds,
            "sample_s": p.stuck_sample,
            "payload_bytes": payload.PAYLOAD_SIZE,
        },
        "orders": [[c for k, _, c in order if k == r] for r in range(p.stuck_rounds)],
        "runs": runs,
        "summary": summary,
        "stuck_vs_healthy": paired("stuck"),
        "unbounded_vs_healthy": paired("unbounded"),
        "stuck_within_bound": all(within) if within else None,
        "every_message_delivered": all(not r["problems"] for r in runs) if runs else None,
        "target": TARGET,
        "errors": errors,
    }
