"""Fan-out end to end: messages published and handled by every subscriber.

For each subscriber count, every implementation gets a fresh root, its
subscribers in the worker processes, and a publisher in this process that
publishes for a fixed time (closed loop: as fast as it is confirmed). Then
the harness waits until every subscriber handled every confirmed message
(or the drain cap passes). The end-to-end rate is messages / (last handled
by the slowest subscriber - first publish), so a publisher that outruns its
subscribers gains nothing.

zkpubsub and the zkms-style reference run at the same concurrency levels:
one thread, several threads on one client, and the most each can pipeline
(``publish_async`` with many in flight; the reference's creates for all
subscribers of a message sent at once). The raw kazoo ceilings have no
subscribers: the rate at which transactions of one create per queue can be
pushed, with one message per node and with messages packed as zkpubsub
packs them at best.

Every cell runs ``repeats`` times; each repeat runs the implementations in
another order (:func:`~benchmarks.stats.rotations`). Comparisons are made
within a repeat (best against best, and level against level) and reported
as the median with the smallest and largest of the repeats.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import aio_variant, credentials, payload, raw_ceiling, stats
from ..profiles import Profile
from ..progress import Phase
from ..workers import new_root
from .common import (
    TOPIC,
    Context,
    collect,
    kazoo,
    remove_tree,
    start_subscribers,
    stop_subscribers,
    wait_delivered,
)


@dataclass(frozen=True)
class Impl:
    key: str
    label: str
    subscriber: str | None  # the subscriber implementation; None: publish only
    # "zkpubsub", "zkpubsub-batch" (the caller batches), "aio" (zkpubsub.aio), "zkms" or "raw"
    family: str
    needs: str | None = None  # a Client attribute this variant needs


# Comparisons at the same concurrency: (level, zkpubsub variant, reference variant).
LEVELS: tuple[tuple[str, str, str], ...] = (
    ("1 thread", "zkpubsub-publish", "zkms"),
    ("threads", "zkpubsub-threads", "zkms-threads"),
    ("asynchronous", "zkpubsub-async", "zkms-pipelined"),
)


def implementations_for(p: Profile) -> list[Impl]:
    return [
        Impl("zkms", "zkms-style reference, 1 thread", "zkms", "zkms"),
        Impl(
            "zkms-threads",
            f"zkms-style reference, {p.publisher_threads} threads",
            "zkms",
            "zkms",
        ),
        Impl(
            "zkms-pipelined",
            f"zkms-style reference, {p.async_window} broadcasts in flight (asynchronous "
            "listing and creates)",
            "zkms",
            "zkms",
        ),
        Impl("zkpubsub-publish", "zkpubsub publish(), 1 thread", "zkpubsub", "zkpubsub"),
        Impl(
            "zkpubsub-threads",
            f"zkpubsub publish(), {p.publisher_threads} threads",
            "zkpubsub",
            "zkpubsub",
        ),
        Impl(
            "zkpubsub-async",
            f"zkpubsub publish_async(), {p.async_window} in flight",
            "zkpubsub",
            "zkpubsub",
            needs="publish_async",
        ),
        Impl(
            aio_variant.NOWAIT_KEY,
            aio_variant.fanout_label(p.async_window, nowait=True),
            aio_variant.SUBSCRIBER,
            "aio",
            needs="publish_async",
        ),
        Impl(
            aio_variant.KEY,
            aio_variant.fanout_label(p.async_window),
            aio_variant.SUBSCRIBER,
            "aio",
            needs="publish_async",
        ),
        Impl(
            "zkpubsub-many",
            f"zkpubsub publish_many({p.publish_many_batch}) (caller batches)",
            "zkpubsub",
            "zkpubsub-batch",
        ),
        Impl(
            "raw",
            f"raw kazoo, one node per message, {p.raw_window} in flight (publish only)",
            None,
            "raw",
        ),
        Impl(
            "raw-packed",
            f"raw kazoo, up to {p.raw_pack} messages per node, {p.raw_window} in flight "
            "(publish only)",
            None,
            "raw",
        ),
    ]


@dataclass
class PublishRun:
    published: int = 0
    errors: int = 0
    first_error: str | None = None
    start: float = 0.0
    end: float = 0.0

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"


def _closed_loop(
    send: Callable[[int], int],
    *,
    duration: float,
    max_messages: int,
    threads: int,
    phase: Phase,
) -> PublishRun:
    """Call ``send(seq)`` (returns messages confirmed) from ``threads``
    threads until ``duration`` passes."""
    run = PublishRun()
    counter = itertools.count()
    lock = threading.Lock()
    run.start = time.monotonic()
    end = run.start + duration

    def loop() -> None:
        while time.monotonic() < end:
            seq = next(counter)
            if seq >= max_messages:
                return
            try:
                confirmed = send(seq)
            except Exception as exc:
                with lock:
                    run.failed(exc)
                continue
            with lock:
                run.published += confirmed

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads - 1)]
    for w in workers:
        w.start()
    reporter = threading.Thread(target=_report, args=(run, end, phase), daemon=True)
    reporter.start()
    loop()
    for w in workers:
        w.join()
    run.end = time.monotonic()
    return run


def _report(run: PublishRun, end: float, phase: Phase) -> None:
    while time.monotonic() < end:
        phase.update(f"published {run.published}")
        time.sleep(0.25)


def _publish_zkms(ctx: Context, impl: Impl, root: str, phase: Phase) -> PublishRun:
    """The reference: one thread, ``publisher_threads`` threads sharing its
    client (as zkms's load test broadcasts from a pool), or one thread
    keeping as many broadcasts in flight as ``publish_async`` gets."""
    from ..zkms_reference import ZkmsPublisher

    p = ctx.profile
    with kazoo(ctx.hosts) as zk:
        publisher = ZkmsPublisher(zk, root)
        if impl.key == "zkms-pipelined":
            return _windowed(lambda seq: publisher.broadcast_async(TOPIC, _stamp(seq)), ctx, phase)

        def send(seq: int) -> int:
            publisher.broadcast(TOPIC, _stamp(seq))
            return 1

        return _closed_loop(
            send,
            duration=p.fanout_duration,
            max_messages=p.fanout_max_messages,
            threads=p.publisher_threads if impl.key == "zkms-threads" else 1,
            phase=phase,
        )


def _zkpubsub_client(ctx: Context, root: str) -> Any:
    from zkpubsub import Client

    return Client(ctx.hosts, root=root, serializer="raw", **credentials.security())


def _publish_zkpubsub(ctx: Context, impl: Impl, root: str, phase: Phase) -> PublishRun:
    p = ctx.profile
    client = _zkpubsub_client(ctx, root)
    try:
        if impl.key == "zkpubsub-async":
            return _publish_async(ctx, client, phase)
        if impl.key == "zkpubsub-many":
            batch = p.publish_many_batch

            def send_many(seq: int) -> int:
                now = time.monotonic()
                first = seq * batch
                client.publish_many(
                    TOPIC, [payload.make(first + i, now, now) for i in range(batch)]
                )
                return batch

            return _closed_loop(
                send_many,
                duration=p.fanout_duration,
                max_messages=p.fanout_max_messages // batch,
                threads=1,
                phase=phase,
            )

        def send(seq: int) -> int:
            now = time.monotonic()
            client.publish(TOPIC, payload.make(seq, now, now))
            return 1

        threads = p.publisher_threads if impl.key == "zkpubsub-threads" else 1
        return _closed_loop(
            send,
            duration=p.fanout_duration,
            max_messages=p.fanout_max_messages,
            threads=threads,
            phase=phase,
        )
    finally:
        client.close()


def _stamp(seq: int) -> bytes:
    now = time.monotonic()
    return payload.make(seq, now, now)


def _publish_async(ctx: Context, client: Any, phase: Phase) -> PublishRun:
    """``publish_async`` with a bounded number of unconfirmed publishes."""
    return _windowed(lambda seq: client.publish_async(TOPIC, _stamp(seq)), ctx, phase)


def _windowed(start: Callable[[int], Any], ctx: Context, phase: Phase) -> PublishRun:
    """Call ``start(seq)`` (returns something with ``result(timeout)``) with
    up to ``async_window`` unsettled, for the fan-out duration."""
    p = ctx.profile
    run = PublishRun()
    in_flight: deque[Any] = deque()
    run.start = time.monotonic()
    end = run.start + p.fanout_duration
    seq = 0

    def settle() -> None:
        try:
            in_flight.popleft().result(timeout=60)
            run.published += 1
        except Exception as exc:
            run.failed(exc)

    while time.monotonic() < end and seq < p.fanout_max_messages:
        in_flight.append(start(seq))
        seq += 1
        if len(in_flight) >= p.async_window:
            settle()
        if seq % 200 == 0:
            phase.update(f"published {run.published}")
    while in_flight:
        settle()
    run.end = time.monotonic()
    return run


def _raw_cell(ctx: Context, impl: Impl, n: int, phase: Phase) -> dict[str, Any]:
    p = ctx.profile
    root = new_root(f"fanout-{impl.key}-{n}")
    parents = [f"{root}/q{i}" for i in range(n)]
    pack = raw_ceiling.pack_for(n, p.raw_pack) if impl.key == "raw-packed" else 1
    try:
        with kazoo(ctx.hosts) as zk:
            for parent in parents:
                zk.ensure_path(parent)
            result = raw_ceiling.push(
                zk,
                parents,
                duration=p.fanout_duration,
                window=p.raw_window,
                max_messages=raw_ceiling.message_cap(n, p.fanout_max_messages),
                pack=pack,
                on_progress=lambda done: phase.update(f"committed {done}"),
            )
    finally:
        remove_tree(ctx.hosts, root)
    rate = stats.rate(result["published"], result["seconds"])
    phase.summary = f"{rate} msg/s published"
    return {
        "impl": impl.key,
        "label": impl.label,
        "family": impl.family,
        "subscribers": n,
        "published": result["published"],
        "errors": result["failed"],
        "publish_seconds": result["seconds"],
        "publish_rate": rate,
        "znodes_per_s": stats.rate(result["znodes"], result["seconds"]),
        "messages_per_node": pack,
        "e2e_rate": None,
        "publish_only": True,
        "complete": True,
    }


def measure(ctx: Context, impl: Impl, n: int, phase: Phase) -> dict[str, Any]:
    """One implementation at ``n`` subscribers, on a fresh root."""
    if impl.subscriber is None:
        return _raw_cell(ctx, impl, n, phase)
    p = ctx.profile
    root = new_root(f"fanout-{impl.key}-{n}")
    phase.update(f"starting {n} subscribers")
    workers = start_subscribers(ctx, impl.subscriber, ctx.hosts, root, n)
    try:
        if impl.family == "zkms":
            run = _publish_zkms(ctx, impl, root, phase)
        elif impl.family == "aio":
            nowait = impl.key == aio_variant.NOWAIT_KEY
            run = aio_variant.publish_fanout(ctx, root, TOPIC, phase, nowait=nowait)
        else:
            run = _publish_zkpubsub(ctx, impl, root, phase)
        drain_deadline = time.monotonic() + p.fanout_drain_cap
        wait_delivered(ctx, workers, run.published, drain_deadline, phase)
        received = collect(ctx, workers, run.published)
        now = time.monotonic()
    finally:
        stop_subscribers(ctx, workers)
        remove_tree(ctx.hosts, root)
    unique = [r["unique"] for r in received]
    complete = bool(unique) and min(unique) >= run.published
    last = max((r["last"] for r in received), default=now)
    e2e_seconds = (last if complete else now) - run.start
    e2e_rate = stats.rate(min(unique) if unique else 0, e2e_seconds)
    publish_seconds = run.end - run.start
    result = {
        "impl": impl.key,
        "label": impl.label,
        "family": impl.family,
        "subscribers": n,
        "worker_processes": len(workers),
        "published": run.published,
        "errors": run.errors,
        "first_error": run.first_error,
        "publish_seconds": round(publish_seconds, 3),
        "publish_rate": stats.rate(run.published, publish_seconds),
        "e2e_seconds": round(e2e_seconds, 3),
        "e2e_rate": e2e_rate,
        "deliveries_per_s": None if e2e_rate is None else round(e2e_rate * n, 1),
        "drain_lag_seconds": round(max(0.0, last - run.end), 3),
        "complete": complete,
        "delivered_min": min(unique) if unique else 0,
        "delivered_total": sum(r["count"] for r in received),
        "duplicates": sum(r["duplicates"] for r in received),
        "publish_only": False,
    }
    phase.summary = (
        f"{e2e_rate} msg/s end to end ({run.published} published"
        f"{'' if complete else ', NOT all delivered'})"
    )
    return result


def run(ctx: Context) -> dict[str, Any]:
    p = ctx.profile
    from zkpubsub import Client

    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    impls: list[Impl] = []
    for impl in implementations_for(p):
        if impl.needs and not hasattr(Client, impl.needs):
            reason = f"Client.{impl.needs} is not available in this version"
            skipped.append({"impl": impl.key, "reason": reason})
            ctx.progress.note(f"fan-out: {impl.label}: skipped, {reason}")
        else:
            impls.append(impl)
    by_key = {impl.key: impl for impl in impls}
    orders: dict[str, list[list[str]]] = {}
    for group, n in enumerate(p.fanout_subscribers):
        schedule = stats.rotations([i.key for i in impls], p.repeats, offset=group)
        orders[str(n)] = [[k for r, _, k in schedule if r == rep] for rep in range(p.repeats)]
        for rep, position, key in schedule:
            impl = by_key[key]
            name = f"fan-out {n:>3} subscribers, {impl.label} (run {rep + 1}/{p.repeats})"
            with ctx.progress.phase(name) as phase:
                try:
                    cell = measure(ctx, impl, n, phase)
                except Exception as exc:
                    errors.append(
                        {
                            "impl": impl.key,
                            "subscribers": str(n),
                            "repeat": str(rep),
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    )
                    phase.summary = f"error: {type(exc).__name__}: {exc}"
                    continue
                cell.update({"repeat": rep, "position": position})
                runs.append(cell)
    return {
        "description": __doc__.strip().splitlines()[0] if __doc__ else "",
        "params": {
            "subscribers": list(p.fanout_subscribers),
            "duration_s": p.fanout_duration,
            "drain_cap_s": p.fanout_drain_cap,
            "payload_bytes": payload.PAYLOAD_SIZE,
            "subscriber_processes": ctx.subscriber_processes,
            "repeats": p.repeats,
            "publisher_threads": p.publisher_threads,
            "async_window": p.async_window,
            "raw_pack": p.raw_pack,
        },
        "orders": orders,
        "runs": runs,
        "results": summarize(runs),
        "skipped": skipped,
        "errors": errors,
        "ratios": ratios(runs),
        "asyncio_vs_threaded": aio_variant.comparison("fanout", summarize(runs)),
    }


def value(cell: dict[str, Any]) -> float | None:
    """A run's rate: end to end, or publish only for the raw ceilings."""
    return cell["publish_rate"] if cell.get("publish_only") else cell.get("e2e_rate")


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per implementation and subscriber count: the run with the
    median rate, with the spread of all its runs (``rates``) and totals of
    what must be zero over all of them."""
    out = []
    keys = list(dict.fromkeys((r["impl"], r["subscribers"]) for r in runs))
    for impl, n in keys:
        cells = [r for r in runs if r["impl"] == impl and r["subscribers"] == n]
        ordered = sorted(cells, key=lambda r: value(r) or 0.0)
        middle = dict(ordered[(len(ordered) - 1) // 2])
        middle.pop("repeat", None)
        middle.pop("position", None)
        rates = stats.spread([value(r) for r in cells], digits=1)
        if rates is not None:  # the row's figure is the median of the runs
            middle["publish_rate" if middle.get("publish_only") else "e2e_rate"] = rates["median"]
        middle.update(
            {
                "repeats": len(cells),
                "rates": rates,
                "complete": all(r["complete"] for r in cells),
                "errors": sum(r.get("errors") or 0 for r in cells),
                "duplicates": sum(r.get("duplicates") or 0 for r in cells),
            }
        )
        out.append(middle)
    return out


def best(results: list[dict[str, Any]], n: int, family: str) -> dict[str, Any] | None:
    """The fastest end-to-end result of a family at ``n`` subscribers (a cell
    whose subscribers did not finish within the drain cap counts with what
    every subscriber had handled by then)."""
    cells = [
        r for r in results if r["subscribers"] == n and r["family"] == family and r.get("e2e_rate")
    ]
    return max(cells, key=lambda r: r["e2e_rate"], default=None)


def _rate(runs: list[dict[str, Any]], n: int, rep: int, impl: str) -> float | None:
    cell = next(
        (r for r in runs if r["subscribers"] == n and r["repeat"] == rep and r["impl"] == impl),
        None,
    )
    return None if cell is None else value(cell)


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per subscriber count, compared within each repeat: zkpubsub's best
    per-message variant against the reference's best, each zkpubsub variant
    against the reference at the same concurrency, and zkpubsub's best
    against the raw publish ceilings; medians and spreads over the repeats."""
    out = []
    for n in sorted({r["subscribers"] for r in runs}):
        repeats = sorted({r["repeat"] for r in runs if r["subscribers"] == n})
        best_zk: list[float | None] = []
        best_ref: list[float | None] = []
        winners: list[str] = []
        for rep in repeats:
            here = [r for r in runs if r["subscribers"] == n and r["repeat"] == rep]
            zk = best(here, n, "zkpubsub")
            ref = best(here, n, "zkms")
            best_zk.append(zk["e2e_rate"] if zk else None)
            best_ref.append(ref["e2e_rate"] if ref else None)
            if zk:
                winners.append(zk["impl"])
        raw = [_rate(runs, n, rep, "raw") for rep in repeats]
        packed = [_rate(runs, n, rep, "raw-packed") for rep in repeats]

        def per_repeat(a: list[float | None], b: list[float | None]) -> list[float | None]:
            return [stats.ratio(x, y) for x, y in zip(a, b, strict=True)]

        levels = []
        for level, mine, theirs in LEVELS:
            a = [_rate(runs, n, rep, mine) for rep in repeats]
            b = [_rate(runs, n, rep, theirs) for rep in repeats]
            levels.append(
                {
                    "level": level,
                    "zkpubsub": mine,
                    "zkms": theirs,
                    "ratio": stats.spread(per_repeat(a, b)),
                }
            )
        pack = next(
            (
                r.get("messages_per_node")
                for r in runs
                if r["subscribers"] == n and r["impl"] == "raw-packed"
            ),
            None,
        )
        out.append(
            {
                "subscribers": n,
                "repeats": len(repeats),
                "zkpubsub_best": max(set(winners), key=winners.count) if winners else None,
                "zkpubsub_e2e_rate": stats.spread(best_zk, digits=1),
                "zkms_e2e_rate": stats.spread(best_ref, digits=1),
                "raw_publish_rate": stats.spread(raw, digits=1),
                "raw_packed_rate": stats.spread(packed, digits=1),
                "raw_pack": pack,
                "vs_zkms": stats.spread(per_repeat(best_zk, best_ref)),
                "levels": levels,
                "vs_raw_ceiling": stats.spread(per_repeat(best_zk, raw)),
                "vs_raw_packed": stats.spread(per_repeat(best_zk, packed)),
            }
        )
    return out
