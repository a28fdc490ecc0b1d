"""Publish-to-handler latency at fixed rates, with an open-loop publisher.

Message *i* is scheduled at ``t0 + i / rate``; a few sender threads take the
messages in order, wait for their scheduled time and publish. Latency is
measured from the *scheduled* time to the moment the subscriber's handler
runs, so a publish that stalls delays the messages queued behind it and the
stall shows in the percentiles (no coordinated omission). The latency from
the actual send time is kept as well, for contrast (on the floor's rows
too: from the commit's actual send). Messages not handled when the drain
cap passes, those whose publish raised included, count as missing, with
the time they had waited by then (the percentiles are then lower bounds).

Every cell runs ``repeats`` times, the implementations in a rotating order;
a row reports, for each percentile, the median over the repeats, and the
spread of p50 and p99. The floor's and the targets' cells first run once
unmeasured, ``latency_warmup`` seconds each (their first pass ran slower
than the others, the floor's included, when the section ran alone); the
report keeps those runs' p50 and p99 apart, as ``warmups``.

Beside each row, the **floor** measured in the same run: the commit latency
of one raw kazoo transaction creating one node per subscriber queue, at the
same rate and subscriber count (ZooKeeper notifies watchers when it
commits, so no subscriber can hear of a message sooner). The targets' cells
run zkpubsub with one subscriber process per subscriber; the default rows
spread the subscribers over the subscriber processes. zkpubsub subscribers
also report the requests their connections sent per node they read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

from .. import aio_variant, credentials, payload, stats
from ..progress import Phase
from ..workers import new_root
from .common import (
    TOPIC,
    Context,
    collect,
    remove_tree,
    start_subscribers,
    stop_subscribers,
    wait_delivered,
)

# A sender that falls further behind its schedule than this is saturated.
BEHIND_LIMIT_S = 1.0
CDF_POINTS = 200


FLOOR = "floor"
OWN = "zkpubsub-async-own"


def _implementations() -> list[tuple[str, str, str, str | None]]:
    """(key, label, subscriber implementation, Client attribute needed)."""
    return [
        ("zkpubsub", "zkpubsub publish()", "zkpubsub", None),
        ("zkpubsub-async", "zkpubsub publish_async()", "zkpubsub", "publish_async"),
        (aio_variant.KEY, aio_variant.LATENCY_LABEL, aio_variant.SUBSCRIBER, "publish_async"),
        ("zkms", "zkms-style reference", "zkms", None),
    ]


def _cells(p: Any) -> list[tuple[str, str, str | None, int, float, bool]]:
    """Every cell of one pass: (key, label, subscriber implementation or None,
    subscribers, rate, one process per subscriber)."""
    out: list[tuple[str, str, str | None, int, float, bool]] = []
    for rate in p.latency_rates:
        out.append((FLOOR, FLOOR_LABEL, None, p.latency_subscribers, rate, False))
    for n in p.latency_target_counts:
        if n != p.latency_subscribers or p.latency_target_rate not in p.latency_rates:
            out.append((FLOOR, FLOOR_LABEL, None, n, p.latency_target_rate, False))
        out.append((OWN, OWN_LABEL, "zkpubsub", n, p.latency_target_rate, True))
    return out


FLOOR_LABEL = "floor: raw kazoo transaction, one create per queue"
OWN_LABEL = "zkpubsub publish_async(), one process per subscriber"


def achieved_rate(sent: int, start: float, last_send: float) -> float | None:
    """Sends per second: ``sent`` sends from the first's scheduled time
    ``start`` to the last one's, ``sent - 1`` intervals (``None`` under two)."""
    if sent < 2 or last_send <= start:
        return None
    return round((sent - 1) / (last_send - start), 1)


def account(
    received: list[dict[str, Any]],
    subscribers: int,
    taken: int,
    total: int,
    scheduled: Callable[[int], float],
    cutoff: float,
) -> tuple[list[float], int]:
    """Every scheduled delivery's latency from its scheduled time (seconds)
    and how many were missing. Handled: as the subscribers timed it. Not
    handled by ``cutoff`` (lost, or never published: the send raised):
    ``cutoff`` less its scheduled time, what it had waited by then (a lower
    bound). Never sent (the sender gave up): the same, from its own time."""
    sched: list[float] = []
    delivered = [0] * taken  # per message, the subscribers that handled it
    for r in received:
        sched.extend(r["lat_sched"])
        for seq in set(r["lat_seq"]):
            if 0 <= seq < taken:
                delivered[seq] += 1
    missing = 0
    for i in range(total):
        short = subscribers - (delivered[i] if i < taken else 0)
        if short > 0:
            sched.extend([cutoff - scheduled(i)] * short)
            missing += short
    return sched, missing


class OpenLoop:
    """Scheduled sends from a few threads; records how late each one was."""

    def __init__(self, rate: float, total: int, senders: int, behind_cap: float) -> None:
        self.rate = rate
        self.total = total
        self.senders = senders
        self.behind_cap = behind_cap
        self.start = 0.0
        self.give_up = 0.0
        self._next = 0
        self._lock = threading.Lock()
        self.sent = 0
        self.errors = 0
        self.first_error: str | None = None
        self.max_behind = 0.0
        self.last_send = 0.0

    @property
    def taken(self) -> int:
        """Messages handed to a sender; the rest were never sent (saturated)."""
        return self._next

    def scheduled(self, i: int) -> float:
        return self.start + i / self.rate

    def outcome(self) -> dict[str, Any]:
        """What the sends came to, for a cell's result."""
        return {
            "scheduled": self.total,
            "sent": self.sent,
            "unsent": self.total - self.taken,
            "errors": self.errors,
            "first_error": self.first_error,
            "achieved_rate": achieved_rate(self.sent, self.start, self.last_send),
            "max_behind_ms": round(self.max_behind * 1000, 1),
        }

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.total or time.monotonic() > self.give_up:
                return None
            i = self._next
            self._next += 1
            return i

    def run(self, send: Callable[[bytes], None], phase: Phase) -> None:
        self.start = time.monotonic() + 0.2
        self.give_up = self.scheduled(self.total - 1) + self.behind_cap

        def loop() -> None:
            while True:
                i = self._take()
                if i is None:
                    return
                scheduled = self.scheduled(i)
                delay = scheduled - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = time.monotonic()
                try:
                    send(payload.make(i, scheduled, now))
                except Exception as exc:
                    with self._lock:
                        self.errors += 1
                        if self.first_error is None:
                            self.first_error = f"{type(exc).__name__}: {exc}"
                    continue
                with self._lock:
                    self.sent += 1
                    self.max_behind = max(self.max_behind, now - scheduled)
                    self.last_send = max(self.last_send, now)

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(self.senders)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            phase.update(
                f"sent {self.sent}/{self.total}, behind by up to {self.max_behind * 1000:.0f} ms"
            )
            time.sleep(0.25)
        for t in threads:
            t.join()


def _sender(
    ctx: Context, key: str, root: str
) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """A send function for the implementation and how to close it."""
    if key == "zkms":
        from ..zkms_reference import ZkmsPublisher, connect

        zk = connect(ctx.hosts)
        publisher = ZkmsPublisher(zk, root)

        def send_zkms(data: bytes) -> None:
            publisher.broadcast(TOPIC, data)

        def close_zkms() -> None:
            zk.stop()
            zk.close()

        return send_zkms, close_zkms

    from zkpubsub import Client

    client = Client(ctx.hosts, root=root, serializer="raw", **credentials.security())
    if key == "zkpubsub-async":
        futures: list[Any] = []

        def send_async(data: bytes) -> None:
            futures.append(cast(Any, client).publish_async(TOPIC, data))

        def close_async() -> None:
            try:
                for future in futures:
                    future.result(timeout=60)
            finally:
                client.close()

        return send_async, close_async

    def send(data: bytes) -> None:
        client.publish(TOPIC, data)

    return send, client.close


def _cdf(sorted_ms: list[float]) -> list[tuple[float, float]]:
    """(latency ms, fraction) at up to CDF_POINTS quantiles, for plots."""
    n = len(sorted_ms)
    if n == 0:
        return []
    step = max(1, n // CDF_POINTS)
    points = [(round(sorted_ms[i], 3), round((i + 1) / n, 5)) for i in range(0, n, step)]
    points.append((round(sorted_ms[-1], 3), 1.0))
    return points


def _floor_cell(
    ctx: Context, n: int, rate: float, phase: Phase, duration: float | None = None
) -> dict[str, Any]:
    """The commit latency of one raw transaction creating one node in each
    of ``n`` queues, open loop, from the scheduled send to the answer."""
    from ..zkms_reference import connect

    p = ctx.profile
    total = max(1, int(rate * (p.latency_duration if duration is None else duration)))
    root = new_root(f"latency-floor-{n}-{int(rate)}")
    zk = connect(ctx.hosts)
    queues = [f"{root}/q{i}" for i in range(n)]
    for queue in queues:
        zk.ensure_path(queue)
    latencies: list[float] = []
    from_send: list[float] = []
    lock = threading.Lock()

    def send(data: bytes) -> None:
        txn = zk.transaction()
        for queue in queues:
            txn.create(f"{queue}/m-", data, sequence=True)
        txn.commit()
        done = time.monotonic()
        stamp = payload.parse(data)
        with lock:
            latencies.append(done - stamp.scheduled)
            from_send.append(done - stamp.sent)

    loop = OpenLoop(rate, total, p.latency_senders, p.latency_behind_cap)
    try:
        loop.run(send, phase)
    finally:
        zk.stop()
        zk.close()
        remove_tree(ctx.hosts, root)
    latencies.sort()
    summary = stats.summarize_ms(latencies)
    saturated = loop.max_behind > BEHIND_LIMIT_S or loop.errors > 0 or loop.taken < total
    phase.summary = f"p50 {summary['p50']} ms, p99 {summary['p99']} ms"
    return {
        "impl": FLOOR,
        "label": FLOOR_LABEL,
        "subscribers": n,
        "rate": rate,
        "placement": "-",
        **loop.outcome(),
        "missing_deliveries": 0,
        "duplicates": 0,
        "saturated": saturated,
        "lower_bound": False,
        "latency_ms": summary,
        "latency_from_send_ms": stats.summarize_ms(from_send),
        "first_delivery_ms": None,
        "cdf_ms": _cdf([v * 1000 for v in latencies]),
    }


def _cell(
    ctx: Context,
    key: str,
    label: str,
    sub_impl: str,
    rate: float,
    phase: Phase,
    n: int | None = None,
    own: bool = False,
    duration: float | None = None,
) -> dict[str, Any]:
    p = ctx.profile
    n = p.latency_subscribers if n is None else n
    total = max(1, int(rate * (p.latency_duration if duration is None else duration)))
    root = new_root(f"latency-{key}-{n}-{int(rate)}")
    phase.update(f"starting {n} subscribers")
    workers = start_subscribers(
        ctx, sub_impl, ctx.hosts, root, n, latency=True, over=n if own else None
    )
    sender = "zkpubsub-async" if key == OWN else key
    senders = 1 if sender in ("zkpubsub-async", aio_variant.KEY) else p.latency_senders
    loop = OpenLoop(rate, total, senders, p.latency_behind_cap)
    try:
        if key == aio_variant.KEY:
            aio_variant.run_open_loop(ctx.hosts, root, TOPIC, loop, phase)
        else:
            send, close = _sender(ctx, sender, root)
            try:
                loop.run(send, phase)
            finally:
                close()
        deadline = time.monotonic() + p.latency_drain_cap
        wait_delivered(ctx, workers, loop.sent, deadline, phase, label="handled")
        received = collect(ctx, workers, loop.sent, latencies=True)
        cutoff = time.monotonic()
    finally:
        stop_subscribers(ctx, workers)
        remove_tree(ctx.hosts, root)
    sent: list[float] = []
    first: dict[int, float] = {}  # per message, its first delivery
    for r in received:
        sent.extend(r["lat_sent"])
        for seq, latency in zip(r["lat_seq"], r["lat_sched"], strict=True):
            first[seq] = min(latency, first.get(seq, latency))
    # Not delivered by the cutoff (a send that raised included): each had
    # waited at least this long (the percentiles become lower bounds).
    handled = sum(r["unique"] for r in received)
    unsent = total - loop.taken
    sched, missing = account(received, n, loop.taken, total, loop.scheduled, cutoff)
    sched.sort()
    sent.sort()
    saturated = loop.max_behind > BEHIND_LIMIT_S or missing > 0 or loop.errors > 0 or unsent > 0
    summary = stats.summarize_ms(sched)
    result = {
        "impl": key,
        "label": label,
        "subscribers": n,
        "rate": rate,
        **loop.outcome(),
        "missing_deliveries": missing,
        "duplicates": sum(r["duplicates"] for r in received),
        "saturated": saturated,
        "lower_bound": missing > 0,
        "latency_ms": summary,
        "latency_from_send_ms": stats.summarize_ms(sent),
        # each message's first delivery (of the ones handled): when the
        # quickest of its subscribers had it
        "first_delivery_ms": stats.summarize_ms(list(first.values())),
        "cdf_ms": _cdf([v * 1000 for v in sched]),
        "placement": "one process each" if own else f"{ctx.subscriber_processes} processes",
    }
    reads = sum(r.get("nodes_read", 0) for r in received)
    if reads:  # zkpubsub subscribers: their requests per node read (setup included)
        result["requests_per_node"] = round(sum(r.get("requests", 0) for r in received) / reads, 2)
    if handled:  # what the subscriber processes spent per message handled
        cpu_s = sum(r["cpu_s"] for r in received)
        result["cpu_us_per_message"] = round(cpu_s / handled * 1e6, 1)
    phase.summary = (
        f"p50 {summary['p50']} ms, p99 {summary['p99']} ms{' (saturated)' if saturated else ''}"
    )
    return result


def run(ctx: Context) -> dict[str, Any]:
    from zkpubsub import Client

    p = ctx.profile
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    impls = {}
    for key, label, sub_impl, needs in _implementations():
        if needs and not hasattr(Client, needs):
            reason = f"Client.{needs} is not available in this version"
            skipped.append({"impl": key, "reason": reason})
            ctx.progress.note(f"latency: {label}: skipped, {reason}")
            continue
        impls[key] = (label, sub_impl)
    saturated_at: dict[str, float] = {}
    extra = _cells(p)
    warmups: list[dict[str, Any]] = []
    # the unmeasured pass (repeat None) first
    passes: list[tuple[int | None, list[Any]]] = [(None, extra)] if p.latency_warmup > 0 else []
    passes += [(i, extra if i % 2 == 0 else extra[::-1]) for i in range(p.repeats)]
    for repeat, cells in passes:
        for key, label, subscriber, n, rate, own in cells:
            run_of = "warm-up" if repeat is None else f"run {repeat + 1}/{p.repeats}"
            name = f"latency {label} at {rate:g} msg/s, {n} subscribers ({run_of})"
            duration = p.latency_warmup if repeat is None else None
            with ctx.progress.phase(name) as phase:
                try:
                    if subscriber is None:
                        cell = _floor_cell(ctx, n, rate, phase, duration)
                    else:
                        cell = _cell(ctx, key, label, subscriber, rate, phase, n, own, duration)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    errors.append({"impl": key, "rate": str(rate), "error": f"{run_of}: {error}"})
                    phase.summary = f"error: {error}"
                    continue
                if repeat is None:
                    summary = cell["latency_ms"]
                    warmups.append(
                        {
                            "impl": key,
                            "subscribers": n,
                            "rate": rate,
                            "p50": summary["p50"],
                            "p99": summary["p99"],
                        }
                    )
                    continue
                cell["repeat"] = repeat
                runs.append(cell)
    for rep, _, key in stats.rotations(list(impls), p.repeats):
        label, sub_impl = impls[key]
        for rate in p.latency_rates:
            if key in saturated_at and rate > saturated_at[key]:
                if rep == 0:
                    skipped.append(
                        {
                            "impl": key,
                            "rate": rate,
                            "reason": f"saturated at {saturated_at[key]:g} msg/s",
                        }
                    )
                continue
            name = (
                f"latency {label} at {rate:g} msg/s, {p.latency_subscribers} subscribers "
                f"(run {rep + 1}/{p.repeats})"
            )
            with ctx.progress.phase(name) as phase:
                try:
                    cell = _cell(ctx, key, label, sub_impl, rate, phase)
                except Exception as exc:
                    errors.append(
                        {"impl": key, "rate": str(rate), "error": f"{type(exc).__name__}: {exc}"}
                    )
                    phase.summary = f"error: {type(exc).__name__}: {exc}"
                    continue
                cell["repeat"] = rep
                runs.append(cell)
                if cell["saturated"]:
                    saturated_at[key] = min(rate, saturated_at.get(key, rate))
    return {
        "description": (__doc__ or "").strip().splitlines()[0],
        "params": {
            "subscribers": p.latency_subscribers,
            "rates": list(p.latency_rates),
            "duration_s": p.latency_duration,
            "warmup_s": p.latency_warmup,
            "senders": p.latency_senders,
            "target_rate": p.latency_target_rate,
            "target_counts": list(p.latency_target_counts),
            "drain_cap_s": p.latency_drain_cap,
            "payload_bytes": payload.PAYLOAD_SIZE,
            "repeats": p.repeats,
        },
        "runs": [{k: v for k, v in r.items() if k != "cdf_ms"} for r in runs],
        "results": summarize(runs),
        "warmups": warmups,
        "skipped": skipped,
        "errors": errors,
        "asyncio_vs_threaded": aio_variant.comparison("latency", summarize(runs)),
    }


_PERCENTILES = ("mean", "p50", "p90", "p99", "p999", "max")


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per implementation and rate: each percentile the median of
    the repeats (the run with the median p99 gives the CDF), the spread of
    p50 and p99, and totals of what must be zero."""
    out = []
    for key, rate, n in dict.fromkeys((r["impl"], r["rate"], r["subscribers"]) for r in runs):
        cells = [
            r for r in runs if r["impl"] == key and r["rate"] == rate and r["subscribers"] == n
        ]
        ordered = sorted(cells, key=lambda r: r["latency_ms"]["p99"] or 0.0)
        row = dict(ordered[(len(ordered) - 1) // 2])
        row.pop("repeat", None)
        for field in ("latency_ms", "latency_from_send_ms", "first_delivery_ms"):
            if row[field] is None:  # the floor's: nobody delivers
                continue
            row[field] = {
                **row[field],
                **{q: stats.median_of([r[field][q] for r in cells]) for q in _PERCENTILES},
            }
        row.update(
            {
                "repeats": len(cells),
                "p50_spread": stats.spread([r["latency_ms"]["p50"] for r in cells]),
                "p99_spread": stats.spread([r["latency_ms"]["p99"] for r in cells]),
                "achieved_rate": stats.median_of([r["achieved_rate"] for r in cells]),
                "saturated": any(r["saturated"] for r in cells),
                "lower_bound": any(r["lower_bound"] for r in cells),
                "errors": sum(r["errors"] for r in cells),
                "duplicates": sum(r["duplicates"] for r in cells),
                "requests_per_node": stats.median_of(
                    [r["requests_per_node"] for r in cells if "requests_per_node" in r]
                )
                if any("requests_per_node" in r for r in cells)
                else None,
                "cpu_us_per_message": stats.median_of(
                    [r["cpu_us_per_message"] for r in cells if "cpu_us_per_message" in r]
                )
                if any("cpu_us_per_message" in r for r in cells)
                else None,
            }
        )
        out.append(row)
    floors = {(r["rate"], r["subscribers"]): r for r in out if r["impl"] == FLOOR}
    for row in out:  # the floor beside every row
        floor = floors.get((row["rate"], row["subscribers"]))
        if floor is not None and row["impl"] != FLOOR:
            row["floor_ms"] = {q: floor["latency_ms"][q] for q in ("p50", "p99")}
    return out
