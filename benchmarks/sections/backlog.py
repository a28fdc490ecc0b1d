"""Publish cost as one subscriber's backlog grows to 100,000 messages.

The subscriber is a real zkpubsub subscription in a process of its own that
the harness then freezes (SIGSTOP): it stays registered, with its session
kept alive by the server for the length of the section, and consumes
nothing. Its queue is bounded far above the largest level (``max_backlog``
2^31 - 1 nodes), so that every probe creates a node: a full queue would
take each publish as an overflow marker's update instead. A filler client
fills the queue through the public API, one message per node
(``publish_many`` with ``max_message_bytes`` too small for two messages).
At each level a probe client publishes one message at a time and the
publish latency and rate are measured, ``repeats`` times (the cost ratio is
taken probe by probe and reported with its spread). The probes count in
the level: before each run of probes the queue is filled to the level less
the probes still to come, so the last probe takes it to the level (a level
0 starts from the empty queue; see :func:`probe_plan`). After each run the
backlog must have grown by one node per probe, or the section fails. The
backlog is read from ``Client.stats()`` (nodes and markers in the queue).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

from zkpubsub.backlog import MAX_BYTES, MAX_NODES

from .. import credentials, payload, server, stats
from ..progress import Phase
from ..workers import WorkerPool, new_root
from .common import TOPIC, Context, remove_tree

FILL_NODE_BYTES = 400  # one 100-byte message fits, two do not


def probe_plan(levels: Sequence[int], repeats: int, per_repeat: int) -> list[tuple[int, int]]:
    """``(level, probes per run)`` for each level, its ``repeats`` runs of
    probes taking the backlog from above where the level before ended up to
    the level itself. A level 0 starts from the empty queue and takes at
    most half the room to the next level. A level with less room than
    ``repeats * per_repeat`` gets fewer probes a run."""
    if list(levels) != sorted(set(levels)) or any(level < 0 for level in levels):
        raise ValueError(f"backlog levels must be distinct, ascending, not negative: {levels}")
    if repeats < 1 or per_repeat < 1:
        raise ValueError("repeats and probes per run must be at least 1")
    plan: list[tuple[int, int]] = []
    end = 0  # the backlog when the level before was done
    for k, level in enumerate(levels):
        if level == 0:
            room = levels[k + 1] // 2 if k + 1 < len(levels) else repeats * per_repeat
            n = min(per_repeat, room // repeats)
            end = n * repeats
        else:
            n = min(per_repeat, (level - end) // repeats)
            end = level
        if n < 1:
            raise ValueError(f"backlog level {level}: no room for {repeats} runs of probes")
        plan.append((level, n))
    return plan


def fill_target(level: int, probes: int, runs_left: int) -> int:
    """The backlog to fill to before a run of probes: the level less the
    probes of the runs still to come, this one included (nothing for a
    level 0, which starts empty)."""
    return max(0, level - probes * runs_left)


def _backlog(client: Any, subscriber: str) -> int:
    for q in client.stats().queues:
        if q.client_id == subscriber and q.topic == TOPIC:
            return int(q.backlog)
    return 0


def _filler(ctx: Context, root: str) -> Any:
    """A client whose every message is a node of its own."""
    from zkpubsub import Client

    return Client(
        ctx.hosts,
        root=root,
        serializer="raw",
        max_message_bytes=FILL_NODE_BYTES,
        **credentials.security(),
    )


def _probe(
    client: Any, seq: int, count: int, ctx: Context, phase: Phase
) -> tuple[list[float], float, int]:
    p = ctx.profile
    latencies: list[float] = []
    start = time.monotonic()
    errors = 0
    while len(latencies) < count and time.monotonic() - start < p.backlog_probe_cap:
        t0 = time.monotonic()
        try:
            client.publish(TOPIC, payload.make(seq + len(latencies), t0, t0))
        except Exception:
            errors += 1
            continue
        latencies.append(time.monotonic() - t0)
        if len(latencies) % 50 == 0:
            phase.update(f"probing: {len(latencies)} publishes")
    return latencies, time.monotonic() - start, errors


def run(ctx: Context) -> dict[str, Any]:
    from zkpubsub import Client

    p = ctx.profile
    root = new_root("backlog")
    levels: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    proc = None
    filler = probe = None
    fill_seconds = 0.0
    nodes_per_message: float | None = None
    published = 0
    try:
        with ctx.progress.phase("backlog: starting a subscriber that does not consume") as phase:
            session = server.MAX_SESSION_TIMEOUT * 0.8
            if not isinstance(ctx.pool, WorkerPool):
                raise TypeError("the backlog section needs worker processes")
            plan = probe_plan(p.backlog_levels, p.repeats, p.backlog_probe_publishes)
            # bounded far above the largest level: every probe must create a node
            proc, subscriber = ctx.pool.start_frozen_subscriber(
                ctx.hosts, root, TOPIC, session, max_backlog=MAX_NODES, max_backlog_bytes=MAX_BYTES
            )
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGSTOP)
            phase.summary = f"subscriber {subscriber[:12]} registered and frozen (SIGSTOP)"
        filler = _filler(ctx, root)
        probe = Client(ctx.hosts, root=root, serializer="raw", **credentials.security())
        seq = 10_000_000  # probe messages, apart from the filler's
        for level, per_run in plan:
            with ctx.progress.phase(f"backlog {level:,} messages") as phase:
                backlog = _backlog(probe, subscriber)
                latencies: list[float] = []
                seconds = 0.0
                probe_errors = 0
                probes: list[dict[str, Any]] = []
                backlog_from: int | None = None
                for k in range(p.repeats):
                    target = fill_target(level, per_run, p.repeats - k)
                    t_fill = time.monotonic()
                    while backlog < target:
                        batch = min(p.backlog_fill_batch, target - backlog)
                        now = time.monotonic()
                        filler.publish_many(
                            TOPIC, [payload.make(published + i, now, now) for i in range(batch)]
                        )
                        published += batch
                        before = backlog
                        backlog = _backlog(probe, subscriber)
                        if nodes_per_message is None and backlog > before:
                            nodes_per_message = round((backlog - before) / batch, 3)
                        phase.update(f"filling: {backlog:,} nodes pending")
                    fill_seconds += time.monotonic() - t_fill
                    if backlog_from is None:
                        backlog_from = backlog
                    start_nodes = backlog
                    lat, secs, errs = _probe(probe, seq, per_run, ctx, phase)
                    seq += len(lat) + errs
                    backlog = _backlog(probe, subscriber)
                    grown = backlog - start_nodes
                    # one new node per probe acknowledged (and at most one per
                    # probe that failed): a probe that only updated an
                    # overflow marker, or was dropped, fails the section
                    if not len(lat) <= grown <= len(lat) + errs:
                        raise RuntimeError(
                            f"level {level:,}: {len(lat)} probes acknowledged ({errs} failed) "
                            f"but the backlog went from {start_nodes:,} to {backlog:,} nodes"
                        )
                    latencies += lat
                    seconds += secs
                    probe_errors += errs
                    one = stats.summarize_ms(lat)
                    probes.append(
                        {
                            "p50": one["p50"],
                            "mean": one["mean"],
                            "rate": stats.rate(len(lat), secs),
                            "backlog_from": start_nodes,
                            "backlog_to": backlog,
                        }
                    )
                summary = stats.summarize_ms(latencies)
                levels.append(
                    {
                        "level": level,
                        # the backlog before the first probe and after the last
                        "backlog_from": backlog_from,
                        "backlog_nodes": backlog,
                        "probes_per_run": per_run,
                        "publishes": len(latencies),
                        "errors": probe_errors,
                        "publish_rate": stats.rate(len(latencies), seconds),
                        "latency_ms": summary,
                        "probes": probes,
                    }
                )
                phase.summary = (
                    f"{backlog_from:,} to {backlog:,} pending: publish p50 {summary['p50']} ms, "
                    f"p99 {summary['p99']} ms, {levels[-1]['publish_rate']}/s"
                )
    except Exception as exc:
        errors.append({"error": f"{type(exc).__name__}: {exc}"})
        ctx.progress.note(f"backlog: error: {type(exc).__name__}: {exc}")
    finally:
        for client in (filler, probe):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        if proc is not None:
            proc.kill()  # a stopped process dies of SIGKILL too
            proc.join(10)
        with ctx.progress.phase("backlog: removing the backlog") as phase:
            remove_tree(ctx.hosts, root)
    first = levels[0] if levels else None
    last = levels[-1] if levels else None

    def p50(cell: dict[str, Any] | None) -> float | None:
        return None if cell is None else cell["latency_ms"]["p50"]

    def mean(cell: dict[str, Any] | None) -> float | None:
        return None if cell is None else cell["latency_ms"]["mean"]

    def per_probe(field: str, invert: bool = False) -> dict[str, Any] | None:
        if first is None or last is None:
            return None
        pairs = zip(first.get("probes", []), last.get("probes", []), strict=False)
        if invert:
            return stats.spread([stats.ratio(a[field], b[field]) for a, b in pairs])
        return stats.spread([stats.ratio(b[field], a[field]) for a, b in pairs])

    return {
        "description": (__doc__ or "").strip().splitlines()[0],
        "params": {
            "levels": list(p.backlog_levels),
            "probe_publishes": p.backlog_probe_publishes,
            "subscriber_max_backlog": MAX_NODES,
            "probe_cap_s": p.backlog_probe_cap,
            "fill_batch": p.backlog_fill_batch,
            "repeats": p.repeats,
            "payload_bytes": payload.PAYLOAD_SIZE,
        },
        "fill": {
            "messages": published,
            "seconds": round(fill_seconds, 1),
            "nodes_per_message": nodes_per_message,
        },
        "levels": levels,
        "errors": errors,
        "cost_ratio": {
            "from_level": first["level"] if first else None,
            "to_level": last["level"] if last else None,
            "p50_latency": stats.ratio(p50(last), p50(first)),
            "mean_latency": stats.ratio(mean(last), mean(first)),
            "inverse_rate": stats.ratio(
                first["publish_rate"] if first else None, last["publish_rate"] if last else None
            ),
            "p50_latency_spread": per_probe("p50"),
            "mean_latency_spread": per_probe("mean"),
            "inverse_rate_spread": per_probe("rate", invert=True),
        },
    }
