"""Publish-to-handler latency at fixed rates, with an open-loop publisher.

Message *i* is scheduled at ``t0 + i / rate``; a few sender threads take the
messages in order, wait for their scheduled time and publish. Latency is
measured from the *scheduled* time to the moment the subscriber's handler
runs, so a publish that stalls delays the messages queued behind it and the
stall shows in the percentiles (no coordinated omission). The latency from
the actual send time is kept as well, for contrast. Messages not handled
when the drain cap passes count with the time they had waited by then (the
percentiles are then lower bounds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

from .. import credentials, payload, stats
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


def _implementations() -> list[tuple[str, str, str, str | None]]:
    """(key, label, subscriber implementation, Client attribute needed)."""
    return [
        ("zkpubsub", "zkpubsub publish()", "zkpubsub", None),
        ("zkpubsub-async", "zkpubsub publish_async()", "zkpubsub", "publish_async"),
        ("zkms", "zkms-style reference", "zkms", None),
    ]


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


def _cell(
    ctx: Context, key: str, label: str, sub_impl: str, rate: float, phase: Phase
) -> dict[str, Any]:
    p = ctx.profile
    n = p.latency_subscribers
    total = max(1, int(rate * p.latency_duration))
    root = new_root(f"latency-{key}-{int(rate)}")
    phase.update(f"starting {n} subscribers")
    workers = start_subscribers(ctx, sub_impl, ctx.hosts, root, n, latency=True)
    send, close = _sender(ctx, key, root)
    senders = 1 if key == "zkpubsub-async" else p.latency_senders
    loop = OpenLoop(rate, total, senders, p.latency_behind_cap)
    try:
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
    sched: list[float] = []
    sent: list[float] = []
    for r in received:
        sched.extend(r["lat_sched"])
        sent.extend(r["lat_sent"])
    # Not delivered by the cutoff: each had waited at least this long (the
    # percentiles become lower bounds). Sent but not handled: counted from
    # the last scheduled send; never sent (the sender gave up): from its own.
    undelivered = max(0, loop.sent * n - sum(r["unique"] for r in received))
    sched.extend([cutoff - loop.scheduled(loop.taken - 1)] * undelivered)
    unsent = total - loop.taken
    for i in range(loop.taken, total):
        sched.extend([cutoff - loop.scheduled(i)] * n)
    missing = undelivered + unsent * n
    sched.sort()
    sent.sort()
    saturated = loop.max_behind > BEHIND_LIMIT_S or missing > 0 or loop.errors > 0 or unsent > 0
    send_span = max(1e-9, loop.last_send - loop.start)
    summary = stats.summarize_ms(sched)
    result = {
        "impl": key,
        "label": label,
        "subscribers": n,
        "rate": rate,
        "scheduled": total,
        "sent": loop.sent,
        "unsent": unsent,
        "errors": loop.errors,
        "first_error": loop.first_error,
        "achieved_rate": round(loop.sent / send_span, 1) if loop.sent else None,
        "max_behind_ms": round(loop.max_behind * 1000, 1),
        "missing_deliveries": missing,
        "duplicates": sum(r["duplicates"] for r in received),
        "saturated": saturated,
        "lower_bound": missing > 0,
        "latency_ms": summary,
        "latency_from_send_ms": stats.summarize_ms(sent),
        "cdf_ms": _cdf([v * 1000 for v in sched]),
    }
    phase.summary = (
        f"p50 {summary['p50']} ms, p99 {summary['p99']} ms{' (saturated)' if saturated else ''}"
    )
    return result


def run(ctx: Context) -> dict[str, Any]:
    from zkpubsub import Client

    p = ctx.profile
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for key, label, sub_impl, needs in _implementations():
        if needs and not hasattr(Client, needs):
            reason = f"Client.{needs} is not available in this version"
            skipped.append({"impl": key, "reason": reason})
            ctx.progress.note(f"latency: {label}: skipped, {reason}")
            continue
        saturated_at: float | None = None
        for rate in p.latency_rates:
            if saturated_at is not None:
                skipped.append(
                    {"impl": key, "rate": rate, "reason": f"saturated at {saturated_at:g} msg/s"}
                )
                continue
            name = f"latency {label} at {rate:g} msg/s, {p.latency_subscribers} subscribers"
            with ctx.progress.phase(name) as phase:
                try:
                    cell = _cell(ctx, key, label, sub_impl, rate, phase)
                except Exception as exc:
                    errors.append(
                        {"impl": key, "rate": str(rate), "error": f"{type(exc).__name__}: {exc}"}
                    )
                    phase.summary = f"error: {type(exc).__name__}: {exc}"
                    continue
                results.append(cell)
                if cell["saturated"]:
                    saturated_at = rate
    return {
        "description": (__doc__ or "").strip().splitlines()[0],
        "params": {
            "subscribers": p.latency_subscribers,
            "rates": list(p.latency_rates),
            "duration_s": p.latency_duration,
            "senders": p.latency_senders,
            "drain_cap_s": p.latency_drain_cap,
            "payload_bytes": payload.PAYLOAD_SIZE,
        },
        "results": results,
        "skipped": skipped,
        "errors": errors,
    }
