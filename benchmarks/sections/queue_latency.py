"""Put-to-reserve latency of the work queue, by how the workers hear of new items.

One producer thread in the harness puts 100-byte items open loop: item *i*
is scheduled at ``t0 + i / rate`` and put at that time (a put that stalls
delays the items behind it, and the stall shows: no coordinated omission).
The workers, each in a worker process with its own session, loop
``reserve(timeout)`` then ``item.ack()``, and record for every item the
time from its *scheduled* put to ``reserve()`` returning (and from the
moment the put was called, for contrast). Items not reserved when the
drain cap passes count with the time they had waited by then (the
percentiles are then lower bounds).

Sides, in a rotating order in every repeat, at each number of workers and
offered rate:

- zkpubsub with ``watch_mode="persistent"``: a worker keeps a mirror of the
  queue fed by a persistent recursive watch and hears of new items by name;
- zkpubsub with ``watch_mode="listing"``: one-shot watches, and the worker
  lists the queue again on each change;
- the **floor**: the commit latency of a raw kazoo create of one sequential
  node, from the same single thread at the same rate (no worker can hear of
  an item before its put commits).

Every cell first runs an unmeasured warm-up (``queue_latency_warmup``
seconds at the same rate; the zkpubsub sides wait until the workers have
taken all of it). Every measured item must be reserved and acked exactly
once, and the queue left empty: anything else is reported as an error.
Requests per item: what the workers' connections sent from the end of the
warm-up until they were stopped (right after the last ack), over the items
they got (a reserve and an ack are two requests at least).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

from .. import credentials, payload, stats
from ..progress import Phase
from ..workers import new_root
from .common import Context, remove_tree
from .latency import BEHIND_LIMIT_S, OpenLoop

FLOOR = "floor"
FLOOR_LABEL = "floor: raw kazoo create of one sequential node"
MODES = ("persistent", "listing")
QUEUE = "bench"
# A worker's reserve() waits this long for an item before it is called again
# (and before it notices it is stopped).
RESERVE_TIMEOUT = 0.5


def _label(mode: str) -> str:
    return f'zkpubsub reserve + ack, watch_mode="{mode}"'


def _key(mode: str) -> str:
    return f"zkpubsub-{mode}"


def _wait_taken(
    ctx: Context, indexes: list[int], expected: int, deadline: float, phase: Phase, label: str
) -> tuple[int, int]:
    """Poll the workers until they have acked ``expected`` items between
    them, or the deadline passes; returns (distinct reserved, acked)."""
    while True:
        counts = [c for per in ctx.pool.call_many(indexes, "zq_timed_counts") for c in per]
        reserved = sum(c[0] for c in counts)
        acked = sum(c[1] for c in counts)
        phase.update(f"{label}: {acked}/{expected} acked")
        if acked >= expected or time.monotonic() >= deadline:
            return reserved, acked
        time.sleep(0.05)


def _floor_cell(ctx: Context, workers: int, rate: float, phase: Phase) -> dict[str, Any]:
    """The commit latency of one raw sequential create, open loop from one
    thread, from the scheduled send to the answer."""
    from ..zkms_reference import connect

    p = ctx.profile
    total = max(1, int(rate * p.queue_latency_duration))
    root = new_root(f"qlat-floor-{workers}-{int(rate)}")
    zk = connect(ctx.hosts)
    parent = f"{root}/items"
    zk.ensure_path(parent)
    sched: list[float] = []
    sent: list[float] = []

    def create(data: bytes) -> None:
        zk.create(f"{parent}/i-", data, sequence=True)
        done = time.monotonic()
        stamp = payload.parse(data)
        sched.append(done - stamp.scheduled)
        sent.append(done - stamp.sent)

    warm = OpenLoop(rate, max(1, int(rate * p.queue_latency_warmup)), 1, p.latency_behind_cap)
    loop = OpenLoop(rate, total, 1, p.latency_behind_cap)
    try:
        phase.update("warm-up")
        warm.run(create, phase)
        sched.clear()
        sent.clear()
        loop.run(create, phase)
    finally:
        zk.stop()
        zk.close()
        remove_tree(ctx.hosts, root)
    summary = stats.summarize_ms(sched)
    producer = loop.outcome()
    saturated = loop.max_behind > BEHIND_LIMIT_S or loop.errors > 0 or producer["unsent"] > 0
    phase.summary = f"p50 {summary['p50']} ms, p99 {summary['p99']} ms"
    return {
        "impl": FLOOR,
        "label": FLOOR_LABEL,
        "workers": workers,
        "rate": rate,
        **producer,
        "reserved": None,
        "acked": None,
        "missing": 0,
        "duplicates": 0,
        "left_in_queue": None,
        "exactly_once": None,
        "saturated": saturated,
        "lower_bound": False,
        "latency_ms": summary,
        "latency_from_put_ms": stats.summarize_ms(sent),
        "put_ms": summary,
    }


def _queue_cell(ctx: Context, mode: str, workers: int, rate: float, phase: Phase) -> dict[str, Any]:
    """``workers`` zkpubsub workers in ``mode``, one process each, under an
    open-loop producer."""
    from zkpubsub import Client

    p = ctx.profile
    total = max(1, int(rate * p.queue_latency_duration))
    root = new_root(f"qlat-{mode}-{workers}-{int(rate)}")
    indexes = list(range(workers))
    put_lat: list[float] = []
    lock = threading.Lock()
    received: list[dict[str, Any]] = []
    started = False
    client = Client(
        ctx.hosts,
        root=root,
        serializer="raw",
        watch_mode=cast(Any, mode),
        **credentials.security(),
    )
    try:
        queue = cast(Any, client).queue(QUEUE, max_items=None)

        def put(data: bytes) -> None:
            queue.put(data)
            done = time.monotonic()
            with lock:
                put_lat.append(done - payload.parse(data).scheduled)

        phase.update(f"starting {workers} workers")
        started = True
        ctx.pool.call_many(
            indexes,
            "zq_timed_start",
            hosts=ctx.hosts,
            root=root,
            queue_name=QUEUE,
            watch_mode=mode,
            reserve_timeout=RESERVE_TIMEOUT,
            timeout=60,
        )
        warm = OpenLoop(rate, max(1, int(rate * p.queue_latency_warmup)), 1, p.latency_behind_cap)
        warm.run(put, phase)
        deadline = time.monotonic() + p.queue_latency_drain_cap
        _, acked = _wait_taken(ctx, indexes, warm.sent, deadline, phase, "warm-up")
        if warm.errors or acked != warm.sent:
            raise RuntimeError(
                f"warm-up: {acked} of {warm.sent} items acked, {warm.errors} puts failed "
                f"({warm.first_error})"
            )
        ctx.pool.call_many(indexes, "zq_timed_reset")
        put_lat.clear()
        loop = OpenLoop(rate, total, 1, p.latency_behind_cap)
        loop.run(put, phase)
        deadline = time.monotonic() + p.queue_latency_drain_cap
        _wait_taken(ctx, indexes, loop.sent, deadline, phase, "reserved")
        cutoff = time.monotonic()
        received = [
            r for per in ctx.pool.call_many(indexes, "zq_timed_stop", timeout=60) for r in per
        ]
        left = queue.stats()
    finally:
        if started and not received:  # an error on the way: stop what was started
            try:
                ctx.pool.call_many(indexes, "zq_timed_stop", timeout=60)
            except Exception as exc:
                phase.update(f"stopping the workers: {type(exc).__name__}: {exc}")
        client.close()
        remove_tree(ctx.hosts, root)

    sched: list[float] = []
    from_put: list[float] = []
    got: set[int] = set()
    duplicates = 0
    for r in received:
        sched.extend(r["lat_sched"])
        from_put.extend(r["lat_sent"])
        duplicates += r["duplicates"] + len(got & set(r["seqs"]))  # twice by one, or by two
        got.update(r["seqs"])
    producer = loop.outcome()
    # Put but not reserved by the cutoff: each had waited at least since the
    # last scheduled put; never put (the producer gave up): since its own.
    missing = len(set(range(loop.taken)) - got)
    sched.extend([cutoff - loop.scheduled(loop.taken - 1)] * missing)
    for i in range(loop.taken, total):
        sched.append(cutoff - loop.scheduled(i))
    unexpected = len(got - set(range(loop.taken)))
    acked = sum(r["acked"] for r in received)
    requests = sum(r["requests"] for r in received)
    ack_errors = sum(r["ack_errors"] for r in received)
    reserve_errors = sum(r["reserve_errors"] for r in received)
    left_in_queue = {"ready": left.ready, "reserved": left.reserved, "dead": left.dead}
    problems = []
    if len(received) != workers:
        problems.append(f"{len(received)} of {workers} workers reported")
    if loop.errors:
        problems.append(f"{loop.errors} puts failed ({loop.first_error})")
    if missing or duplicates or unexpected:
        problems.append(
            f"{missing} items put were not reserved, {duplicates} reserved twice, "
            f"{unexpected} unexpected"
        )
    if acked != loop.sent or ack_errors or reserve_errors:
        first = next((r["first_error"] for r in received if r["first_error"]), None)
        problems.append(
            f"{acked} acks for {loop.sent} items put; {ack_errors} acks and "
            f"{reserve_errors} reserves failed ({first})"
        )
    if any(left_in_queue.values()):
        problems.append(f"left in the queue: {left_in_queue}")
    saturated = (
        loop.max_behind > BEHIND_LIMIT_S or loop.errors > 0 or producer["unsent"] > 0 or missing
    )
    summary = stats.summarize_ms(sorted(sched))
    items = len(got)
    result = {
        "impl": _key(mode),
        "label": _label(mode),
        "watch_mode": mode,
        "workers": workers,
        "rate": rate,
        **producer,
        "reserved": items,
        "acked": acked,
        "per_worker": [r["unique"] for r in received],
        "missing": missing,
        "duplicates": duplicates,
        "unexpected": unexpected,
        "ack_errors": ack_errors,
        "reserve_errors": reserve_errors,
        "left_in_queue": left_in_queue,
        "exactly_once": not problems,
        "problems": problems,
        "saturated": bool(saturated),
        "lower_bound": missing > 0 or producer["unsent"] > 0,
        "latency_ms": summary,
        "latency_from_put_ms": stats.summarize_ms(from_put),
        "put_ms": stats.summarize_ms(put_lat),
        "requests": requests,
        "requests_per_item": round(requests / items, 2) if items else None,
    }
    phase.summary = (
        f"p50 {summary['p50']} ms, p99 {summary['p99']} ms, "
        f"{result['requests_per_item']} requests/item"
        + ("" if not problems else f"; {'; '.join(problems)}")
    )
    return result


Side = tuple[str, str, Callable[[Context, int, float, Phase], dict[str, Any]]]


def _sides() -> list[Side]:
    def side(mode: str) -> Callable[[Context, int, float, Phase], dict[str, Any]]:
        return lambda c, w, r, ph: _queue_cell(c, mode, w, r, ph)

    sides: list[Side] = [(_key(mode), _label(mode), side(mode)) for mode in MODES]
    sides.append((FLOOR, FLOOR_LABEL, _floor_cell))
    return sides


def missing_api() -> str | None:
    """Why the zkpubsub sides cannot run, or ``None`` if they can."""
    import inspect

    from zkpubsub import Client

    if not hasattr(Client, "queue"):
        return "Client.queue is not available in this version"
    if "watch_mode" not in inspect.signature(Client).parameters:
        return "Client takes no watch_mode in this version"
    return None


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    missing = missing_api()
    sides = {key: (label, fn) for key, label, fn in _sides() if not missing or key == FLOOR}
    if missing:
        skipped.append({"impl": "zkpubsub", "reason": missing})
        ctx.progress.note(f"queue-latency: zkpubsub: skipped, {missing}")
    groups = [(w, r) for w in p.queue_latency_workers for r in p.queue_latency_rates]
    orders: dict[str, list[list[str]]] = {}
    for group, (workers, rate) in enumerate(groups):
        schedule = stats.rotations(list(sides), p.repeats, offset=group)
        orders[f"{workers}@{rate:g}"] = [
            [k for r, _, k in schedule if r == rep] for rep in range(p.repeats)
        ]
        for rep, position, key in schedule:
            label, fn = sides[key]
            name = (
                f"queue latency {label} at {rate:g} items/s, {workers} workers "
                f"(run {rep + 1}/{p.repeats})"
            )
            with ctx.progress.phase(name) as phase:
                where = {"impl": key, "workers": str(workers), "rate": f"{rate:g}"}
                try:
                    cell = fn(ctx, workers, rate, phase)
                except Exception as exc:
                    errors.append(
                        {**where, "repeat": str(rep), "error": f"{type(exc).__name__}: {exc}"}
                    )
                    phase.summary = f"error: {type(exc).__name__}: {exc}"
                    continue
                cell.update({"repeat": rep, "position": position})
                runs.append(cell)
                if cell.get("problems"):  # not every item reserved and acked exactly once
                    errors.append(
                        {**where, "repeat": str(rep), "error": "; ".join(cell["problems"])}
                    )
    rows = summarize(runs)
    return {
        "description": (__doc__ or "").strip().splitlines()[0],
        "params": {
            "workers": list(p.queue_latency_workers),
            "rates": list(p.queue_latency_rates),
            "duration_s": p.queue_latency_duration,
            "warmup_s": p.queue_latency_warmup,
            "drain_cap_s": p.queue_latency_drain_cap,
            "behind_cap_s": p.latency_behind_cap,
            "reserve_timeout_s": RESERVE_TIMEOUT,
            "producers": 1,
            "payload_bytes": payload.PAYLOAD_SIZE,
            "repeats": p.repeats,
        },
        "orders": orders,
        "runs": runs,
        "results": rows,
        "comparison": compare(runs),
        "skipped": skipped,
        "errors": errors,
    }


_PERCENTILES = ("mean", "p50", "p90", "p99", "p999", "max")


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per side, number of workers and rate: each percentile the
    median of the repeats, the spread of p50 and p99, and the floor of the
    same workers and rate beside. Rows go by workers, then rate, then side
    (persistent, listing, floor), whatever order the runs took."""
    sides = [_key(mode) for mode in MODES] + [FLOOR]
    out = []
    cells_of = sorted(
        {(r["workers"], r["rate"], r["impl"]) for r in runs},
        key=lambda c: (c[0], c[1], sides.index(c[2]) if c[2] in sides else len(sides)),
    )
    for workers, rate, key in cells_of:
        cells = [
            r for r in runs if r["impl"] == key and r["workers"] == workers and r["rate"] == rate
        ]
        ordered = sorted(cells, key=lambda r: r["latency_ms"]["p99"] or 0.0)
        row = dict(ordered[(len(ordered) - 1) // 2])
        for field in ("repeat", "position", "per_worker", "problems"):
            row.pop(field, None)
        for field in ("latency_ms", "latency_from_put_ms", "put_ms"):
            row[field] = {
                **row[field],
                **{q: stats.median_of([r[field][q] for r in cells]) for q in _PERCENTILES},
            }
        per_item = [r["requests_per_item"] for r in cells if r.get("requests_per_item")]
        row.update(
            {
                "repeats": len(cells),
                "p50_spread": stats.spread([r["latency_ms"]["p50"] for r in cells]),
                "p99_spread": stats.spread([r["latency_ms"]["p99"] for r in cells]),
                "achieved_rate": stats.median_of([r["achieved_rate"] for r in cells]),
                "requests_per_item": stats.median_of(per_item) if per_item else None,
                "saturated": any(r["saturated"] for r in cells),
                "lower_bound": any(r["lower_bound"] for r in cells),
                "errors": sum(r["errors"] for r in cells),
                "duplicates": sum(r["duplicates"] for r in cells),
                "missing": sum(r["missing"] for r in cells),
                "exactly_once": None if key == FLOOR else all(r["exactly_once"] for r in cells),
            }
        )
        out.append(row)
    floors = {(r["workers"], r["rate"]): r for r in out if r["impl"] == FLOOR}
    for row in out:
        floor = floors.get((row["workers"], row["rate"]))
        if floor is not None and row["impl"] != FLOOR:
            row["floor_ms"] = {q: floor["latency_ms"][q] for q in ("p50", "p99")}
    return out


def compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per number of workers and rate, within each repeat: listing over
    persistent (p50, p99, requests per item), and how far each mode's p50
    is above the floor's; medians and spreads over the repeats."""

    def cell(rep: int, impl: str, workers: int, rate: float) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in runs
                if r["repeat"] == rep
                and r["impl"] == impl
                and r["workers"] == workers
                and r["rate"] == rate
            ),
            None,
        )

    def above(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 3)

    out = []
    persistent, listing = _key("persistent"), _key("listing")
    for workers, rate in sorted({(r["workers"], r["rate"]) for r in runs}):
        p50: list[float | None] = []
        p99: list[float | None] = []
        reqs: list[float | None] = []
        pers_floor: list[float | None] = []
        list_floor: list[float | None] = []
        for rep in sorted({r["repeat"] for r in runs}):
            mine = cell(rep, persistent, workers, rate)
            other = cell(rep, listing, workers, rate)
            floor = cell(rep, FLOOR, workers, rate)
            if mine is not None and other is not None:
                p50.append(stats.ratio(other["latency_ms"]["p50"], mine["latency_ms"]["p50"]))
                p99.append(stats.ratio(other["latency_ms"]["p99"], mine["latency_ms"]["p99"]))
                reqs.append(stats.ratio(other["requests_per_item"], mine["requests_per_item"]))
            if floor is not None:
                base = floor["latency_ms"]["p50"]
                for side, into in ((mine, pers_floor), (other, list_floor)):
                    if side is not None:
                        into.append(above(side["latency_ms"]["p50"], base))
        out.append(
            {
                "workers": workers,
                "rate": rate,
                "listing_over_persistent_p50": stats.spread(p50),
                "listing_over_persistent_p99": stats.spread(p99),
                "listing_over_persistent_requests": stats.spread(reqs),
                "persistent_p50_above_floor_ms": stats.spread(pers_floor),
                "listing_p50_above_floor_ms": stats.spread(list_floor),
            }
        )
    return out
