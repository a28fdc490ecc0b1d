"""Fan-out end to end: messages published and handled by every subscriber.

For each subscriber count, every implementation gets a fresh root, its
subscribers in the worker processes, and a publisher in this process that
publishes for a fixed time (closed loop: as fast as it is confirmed). Then
the harness waits until every subscriber handled every confirmed message
(or the drain cap passes). The end-to-end rate is messages / (last handled
by the slowest subscriber - first publish), so a publisher that outruns its
subscribers gains nothing. The raw kazoo ceiling has no subscribers: it is
the rate at which transactions of one create per queue can be pushed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import credentials, payload, raw_ceiling, stats
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
    family: str  # "zkpubsub", "zkpubsub-batch" (the caller batches), "zkms" or "raw"
    needs: str | None = None  # a Client attribute this variant needs


def implementations_for(p: Profile) -> list[Impl]:
    return [
        Impl("zkms", "zkms-style reference (sync create per subscriber)", "zkms", "zkms"),
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
            "zkpubsub-many",
            f"zkpubsub publish_many({p.publish_many_batch}) (caller batches)",
            "zkpubsub",
            "zkpubsub-batch",
        ),
        Impl(
            "raw",
            f"kazoo pipelined transactions, {p.raw_window} in flight (publish only)",
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


def _publish_zkms(ctx: Context, root: str, phase: Phase) -> PublishRun:
    from ..zkms_reference import ZkmsPublisher

    p = ctx.profile
    with kazoo(ctx.hosts) as zk:
        publisher = ZkmsPublisher(zk, root)

        def send(seq: int) -> int:
            now = time.monotonic()
            publisher.broadcast(TOPIC, payload.make(seq, now, now))
            return 1

        return _closed_loop(
            send,
            duration=p.fanout_duration,
            max_messages=p.fanout_max_messages,
            threads=1,
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


def _publish_async(ctx: Context, client: Any, phase: Phase) -> PublishRun:
    """``publish_async`` with a bounded number of unconfirmed publishes."""
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
        now = time.monotonic()
        in_flight.append(client.publish_async(TOPIC, payload.make(seq, now, now)))
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
    root = new_root(f"fanout-raw-{n}")
    parents = [f"{root}/q{i}" for i in range(n)]
    try:
        with kazoo(ctx.hosts) as zk:
            for parent in parents:
                zk.ensure_path(parent)
            result = raw_ceiling.push(
                zk,
                parents,
                duration=p.fanout_duration,
                window=p.raw_window,
                max_messages=p.fanout_max_messages,
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
            run = _publish_zkms(ctx, root, phase)
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

    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    impls = implementations_for(p)
    for impl in impls:
        if impl.needs and not hasattr(Client, impl.needs):
            reason = f"Client.{impl.needs} is not available in this version"
            skipped.append({"impl": impl.key, "reason": reason})
            ctx.progress.note(f"fan-out: {impl.label}: skipped, {reason}")
    for n in p.fanout_subscribers:
        for impl in impls:
            if impl.needs and not hasattr(Client, impl.needs):
                continue
            with ctx.progress.phase(f"fan-out {n:>3} subscribers, {impl.label}") as phase:
                try:
                    results.append(measure(ctx, impl, n, phase))
                except Exception as exc:
                    errors.append(
                        {
                            "impl": impl.key,
                            "subscribers": str(n),
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    )
                    phase.summary = f"error: {type(exc).__name__}: {exc}"
    return {
        "description": __doc__.strip().splitlines()[0] if __doc__ else "",
        "params": {
            "subscribers": list(p.fanout_subscribers),
            "duration_s": p.fanout_duration,
            "drain_cap_s": p.fanout_drain_cap,
            "payload_bytes": payload.PAYLOAD_SIZE,
            "subscriber_processes": ctx.subscriber_processes,
        },
        "results": results,
        "skipped": skipped,
        "errors": errors,
        "ratios": ratios(results),
    }


def best(results: list[dict[str, Any]], n: int, family: str) -> dict[str, Any] | None:
    """The fastest end-to-end result of a family at ``n`` subscribers (a cell
    whose subscribers did not finish within the drain cap counts with what
    every subscriber had handled by then)."""
    cells = [
        r for r in results if r["subscribers"] == n and r["family"] == family and r.get("e2e_rate")
    ]
    return max(cells, key=lambda r: r["e2e_rate"], default=None)


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per subscriber count: zkpubsub's best per-message variant against the
    zkms-style reference and against the raw publish ceiling."""
    out = []
    for n in sorted({r["subscribers"] for r in results}):
        zk = best(results, n, "zkpubsub")
        ref = best(results, n, "zkms")
        raw = next((r for r in results if r["subscribers"] == n and r["family"] == "raw"), None)
        out.append(
            {
                "subscribers": n,
                "zkpubsub_best": zk["impl"] if zk else None,
                "zkpubsub_e2e_rate": zk["e2e_rate"] if zk else None,
                "zkms_e2e_rate": ref["e2e_rate"] if ref else None,
                "raw_publish_rate": raw["publish_rate"] if raw else None,
                "vs_zkms": stats.ratio(
                    zk["e2e_rate"] if zk else None, ref["e2e_rate"] if ref else None
                ),
                "vs_raw_ceiling": stats.ratio(
                    zk["e2e_rate"] if zk else None, raw["publish_rate"] if raw else None
                ),
            }
        )
    return out
