"""The work queue with 1 and more workers, against kazoo's LockingQueue.

Every implementation drains the same backlog: on a fresh path one producer
puts ``queue_items`` items one at a time (the put rate), then the workers,
each in a worker process with its own session, take and complete items
until all of them are done (the consume rate: items / (last completed -
start)). Each side thus works through the same range of backlog sizes,
from ``queue_items`` down to none: LockingQueue lists every child for each
item, so timing it only at its largest backlog would flatter the other side.
LockingQueue takes an item with ``get()`` (an ephemeral lock node on the
head entry) and completes it with ``consume()`` (entry and lock deleted in
one transaction); zkpubsub with ``reserve()`` and ``item.ack()``, one item
at a time, and with ``reserve_many`` / ``ack_many`` (batches). Every put
item must be consumed exactly once: the counts are checked.

Comparisons, within each repeat (the order of the implementations rotates):
one item at a time against one item at a time at the same number of
workers, zkpubsub's best against LockingQueue's best at any number of
workers, and zkpubsub's default (workers hear of items through a persistent
watch where the server has one) against ``watch_mode="listing"`` (workers
list the queue on every change), one item at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from .. import credentials, payload, stats
from ..progress import Phase
from ..workers import new_root
from .common import Context, kazoo, remove_tree

# Items a worker reserves (and acks) per transaction on the batched side.
BATCH = 32


def zkpubsub_queue_missing() -> str | None:
    """Why the zkpubsub side cannot run, or ``None`` if it can."""
    from zkpubsub import Client

    if not hasattr(Client, "queue"):
        return "Client.queue is not available in this version"
    return None


def _put_phase(put: Callable[[bytes], Any], ctx: Context, phase: Phase) -> tuple[int, float]:
    items = ctx.profile.queue_items
    start = time.monotonic()
    for n in range(items):
        now = time.monotonic()
        put(payload.make(n, now, now))
        if n % 100 == 0:
            phase.update(f"put {n}/{items}")
    return items, time.monotonic() - start


def _consume_phase(
    ctx: Context, command: str, workers: int, phase: Phase, **kwargs: Any
) -> dict[str, Any]:
    p = ctx.profile
    indexes = list(range(workers))
    phase.update(f"{workers} workers draining {p.queue_items} items")
    done = ctx.pool.call_many(
        indexes,
        command,
        idle=p.queue_idle,
        cap=p.queue_consume_cap,
        timeout=p.queue_consume_cap + 120,
        **kwargs,
    )
    total = sum(d["count"] for d in done)
    start = min(d["start"] for d in done)
    last = max((d["last"] for d in done if d["count"]), default=start)
    return {
        "consumed": total,
        "per_worker": [d["count"] for d in done],
        "consume_seconds": round(last - start, 3),
        "consume_rate": stats.rate(total, last - start),
    }


def _locking_queue(ctx: Context, workers: int, phase: Phase) -> dict[str, Any]:
    from kazoo.recipe.queue import LockingQueue

    path = new_root(f"lockingqueue-{workers}")
    try:
        with kazoo(ctx.hosts) as zk:
            queue = LockingQueue(zk, path)
            put, put_seconds = _put_phase(queue.put, ctx, phase)
        consumed = _consume_phase(ctx, "lq_consume", workers, phase, hosts=ctx.hosts, path=path)
    finally:
        remove_tree(ctx.hosts, path)
    return {"put": put, "put_rate": stats.rate(put, put_seconds), **consumed}


def _zkpubsub_queue(
    ctx: Context, workers: int, phase: Phase, prefetch: int = 1, watch_mode: str = "auto"
) -> dict[str, Any]:
    from zkpubsub import Client

    root = new_root(f"queue-{workers}-{prefetch}-{watch_mode}")
    name = "bench"
    try:
        client = Client(ctx.hosts, root=root, serializer="raw", **credentials.security())
        try:
            # the backlog the consumers then drain, beyond the default bound
            queue = cast(Any, client).queue(name, max_items=None)
            put, put_seconds = _put_phase(queue.put, ctx, phase)
        finally:
            client.close()
        consumed = _consume_phase(
            ctx,
            "zq_consume",
            workers,
            phase,
            hosts=ctx.hosts,
            root=root,
            queue_name=name,
            prefetch=prefetch,
            watch_mode=watch_mode,
        )
    finally:
        remove_tree(ctx.hosts, root)
    return {"put": put, "put_rate": stats.rate(put, put_seconds), **consumed}


Side = tuple[str, str, Callable[[Context, int, Phase], dict[str, Any]]]


def _sides(missing: str | None) -> list[Side]:
    sides: list[Side] = [
        ("lockingqueue", "kazoo LockingQueue (get + consume)", _locking_queue),
    ]
    if not missing:
        sides.append(("zkpubsub", "zkpubsub queue (reserve + ack)", _zkpubsub_queue))
        sides.append(
            (
                "zkpubsub-listing",
                'zkpubsub queue (reserve + ack), watch_mode="listing"',
                lambda c, w, ph: _zkpubsub_queue(c, w, ph, watch_mode="listing"),
            )
        )
        sides.append(
            (
                "zkpubsub-batched",
                f"zkpubsub queue (reserve_many + ack_many of {BATCH})",
                lambda c, w, ph: _zkpubsub_queue(c, w, ph, prefetch=BATCH),
            )
        )
    return sides


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    missing = zkpubsub_queue_missing()
    if missing:
        skipped.append({"impl": "zkpubsub", "reason": missing})
        ctx.progress.note(f"queue: zkpubsub: skipped, {missing}")
    sides = {key: (label, fn) for key, label, fn in _sides(missing)}
    orders: dict[str, list[list[str]]] = {}
    for group, workers in enumerate(p.queue_workers):
        schedule = stats.rotations(list(sides), p.repeats, offset=group)
        orders[str(workers)] = [[k for r, _, k in schedule if r == rep] for rep in range(p.repeats)]
        for rep, position, key in schedule:
            label, fn = sides[key]
            name = f"queue {label}, {workers} workers (run {rep + 1}/{p.repeats})"
            with ctx.progress.phase(name) as phase:
                try:
                    cell = fn(ctx, workers, phase)
                except Exception as exc:
                    errors.append(
                        {
                            "impl": key,
                            "workers": str(workers),
                            "repeat": str(rep),
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    )
                    phase.summary = f"error: {type(exc).__name__}: {exc}"
                    continue
                cell.update(
                    {
                        "impl": key,
                        "label": label,
                        "workers": workers,
                        "repeat": rep,
                        "position": position,
                        "complete": cell["consumed"] == cell["put"],
                    }
                )
                runs.append(cell)
                phase.summary = (
                    f"put {cell['put_rate']}/s, consumed {cell['consume_rate']}/s "
                    f"({cell['consumed']}/{cell['put']})"
                )
    return {
        "description": (__doc__ or "").strip().splitlines()[0],
        "params": {
            "workers": list(p.queue_workers),
            "items": p.queue_items,
            "consume_cap_s": p.queue_consume_cap,
            "idle_s": p.queue_idle,
            "payload_bytes": payload.PAYLOAD_SIZE,
            "batch": BATCH,
            "repeats": p.repeats,
        },
        "orders": orders,
        "runs": runs,
        "results": summarize(runs),
        "skipped": skipped,
        "errors": errors,
        "ratios": ratios(runs),
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per implementation and worker count: the run with the median
    consume rate, with the spread of all its runs."""
    out = []
    for impl, workers in dict.fromkeys((r["impl"], r["workers"]) for r in runs):
        cells = [r for r in runs if r["impl"] == impl and r["workers"] == workers]
        ordered = sorted(cells, key=lambda r: r["consume_rate"] or 0.0)
        middle = dict(ordered[(len(ordered) - 1) // 2])
        middle.pop("repeat", None)
        middle.pop("position", None)
        rates = stats.spread([r["consume_rate"] for r in cells], digits=1)
        if rates is not None:  # the row's figure is the median of the runs
            middle["consume_rate"] = rates["median"]
        middle.update(
            {
                "repeats": len(cells),
                "rates": rates,
                "put_rates": stats.spread([r["put_rate"] for r in cells], digits=1),
                "complete": all(r["complete"] for r in cells),
            }
        )
        out.append(middle)
    return out


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per worker count, within each repeat: zkpubsub one item at a time
    against LockingQueue (one at a time, as it only can) with as many
    workers, and zkpubsub's best (batched or not) against LockingQueue's
    best at any worker count; medians and spreads over the repeats."""

    def rate(rep: int, impl: str, workers: int) -> float | None:
        cell = next(
            (
                r
                for r in runs
                if r["repeat"] == rep and r["impl"] == impl and r["workers"] == workers
            ),
            None,
        )
        return None if cell is None else cell["consume_rate"]

    repeats = sorted({r["repeat"] for r in runs})
    worker_counts = sorted({r["workers"] for r in runs})
    lq_best: dict[int, float | None] = {}
    for rep in repeats:
        rates = [v for w in worker_counts if (v := rate(rep, "lockingqueue", w)) is not None]
        lq_best[rep] = max(rates) if rates else None
    out = []
    for workers in worker_counts:
        single, best_vs_best, ours_best, theirs, by_watch = [], [], [], [], []
        for rep in repeats:
            mine = rate(rep, "zkpubsub", workers)
            by_watch.append(stats.ratio(mine, rate(rep, "zkpubsub-listing", workers)))
            batched = rate(rep, "zkpubsub-batched", workers)
            base = rate(rep, "lockingqueue", workers)
            top = max((v for v in (mine, batched) if v is not None), default=None)
            single.append(stats.ratio(mine, base))
            best_vs_best.append(stats.ratio(top, lq_best[rep]))
            ours_best.append(top)
            theirs.append(base)
        out.append(
            {
                "workers": workers,
                "repeats": len(repeats),
                "lockingqueue_rate": stats.spread(theirs, digits=1),
                "lockingqueue_best_rate": stats.spread(list(lq_best.values()), digits=1),
                "zkpubsub_best_rate": stats.spread(ours_best, digits=1),
                "single_vs_single": stats.spread(single),
                "best_vs_best": stats.spread(best_vs_best),
                # the default (a persistent watch where the server has it)
                # against listing on every change, one item at a time
                "persistent_vs_listing": stats.spread(by_watch),
            }
        )
    return out
