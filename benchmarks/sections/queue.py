"""The work queue with 1 and more workers, against kazoo's LockingQueue.

Both sides run the same two phases on a fresh path: one producer puts items
one at a time for a fixed time (the put rate), then the workers, each in a
worker process with its own session, take and complete items until the
queue stays empty for a moment (the consume rate: items / (last completed -
start)). LockingQueue takes an item with ``get()`` (an ephemeral lock node
on the head entry) and completes it with ``consume()`` (entry and lock
deleted in one transaction); zkpubsub with ``reserve()`` and ``item.ack()``.
Every put item must be consumed exactly once: the counts are checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from .. import payload, stats
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
    p = ctx.profile
    start = time.monotonic()
    end = start + p.queue_put_duration
    n = 0
    while time.monotonic() < end and n < p.queue_max_items:
        now = time.monotonic()
        put(payload.make(n, now, now))
        n += 1
        if n % 100 == 0:
            phase.update(f"put {n}")
    return n, time.monotonic() - start


def _consume_phase(
    ctx: Context, command: str, workers: int, phase: Phase, **kwargs: Any
) -> dict[str, Any]:
    p = ctx.profile
    indexes = list(range(workers))
    phase.update(f"{workers} workers consuming")
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


def _zkpubsub_queue(ctx: Context, workers: int, phase: Phase, prefetch: int = 1) -> dict[str, Any]:
    from zkpubsub import Client

    root = new_root(f"queue-{workers}-{prefetch}")
    name = "bench"
    try:
        client = Client(ctx.hosts, root=root, serializer="raw")
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
        )
    finally:
        remove_tree(ctx.hosts, root)
    return {"put": put, "put_rate": stats.rate(put, put_seconds), **consumed}


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    missing = zkpubsub_queue_missing()
    if missing:
        skipped.append({"impl": "zkpubsub", "reason": missing})
        ctx.progress.note(f"queue: zkpubsub: skipped, {missing}")
    sides: list[tuple[str, str, Callable[[Context, int, Phase], dict[str, Any]]]] = [
        ("lockingqueue", "kazoo LockingQueue (get + consume)", _locking_queue),
    ]
    if not missing:
        sides.append(("zkpubsub", "zkpubsub queue (reserve + ack)", _zkpubsub_queue))
        sides.append(
            (
                "zkpubsub-batched",
                f"zkpubsub queue (reserve_many + ack_many of {BATCH})",
                lambda c, w, ph: _zkpubsub_queue(c, w, ph, prefetch=BATCH),
            )
        )
    for workers in p.queue_workers:
        for key, label, fn in sides:
            with ctx.progress.phase(f"queue {label}, {workers} workers") as phase:
                try:
                    cell = fn(ctx, workers, phase)
                except Exception as exc:
                    errors.append(
                        {
                            "impl": key,
                            "workers": str(workers),
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
                        "complete": cell["consumed"] == cell["put"],
                    }
                )
                results.append(cell)
                phase.summary = (
                    f"put {cell['put_rate']}/s, consumed {cell['consume_rate']}/s "
                    f"({cell['consumed']}/{cell['put']})"
                )
    ratios = []
    for workers in p.queue_workers:
        base = next(
            (r for r in results if r["impl"] == "lockingqueue" and r["workers"] == workers), None
        )
        # The library's best documented way to consume counts for the target.
        mine = [r for r in results if r["impl"].startswith("zkpubsub") and r["workers"] == workers]
        ours = max(mine, key=lambda r: r["consume_rate"] or 0, default=None)
        ratios.append(
            {
                "workers": workers,
                "lockingqueue_rate": base["consume_rate"] if base else None,
                "zkpubsub_rate": ours["consume_rate"] if ours else None,
                "vs_lockingqueue": stats.ratio(
                    ours["consume_rate"] if ours else None, base["consume_rate"] if base else None
                ),
            }
        )
    return {
        "description": (__doc__ or "").strip().splitlines()[0],
        "params": {
            "workers": list(p.queue_workers),
            "put_duration_s": p.queue_put_duration,
            "max_items": p.queue_max_items,
            "consume_cap_s": p.queue_consume_cap,
            "idle_s": p.queue_idle,
            "payload_bytes": payload.PAYLOAD_SIZE,
        },
        "results": results,
        "skipped": skipped,
        "errors": errors,
        "ratios": ratios,
    }
