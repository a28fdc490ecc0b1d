"""A publish stall during a leader kill on a 3-node ensemble.

One publisher publishes one message at a time (closed loop) to one
subscriber; after a few seconds the current leader is killed with SIGKILL.
Every acknowledged publish and every failure is timed. Reported: the longest
gap between two acknowledged publishes, the time from the kill until a
publish called after it is acknowledged, the time until the rate is back to half of
what it was before, failures, and — once the subscriber has drained — lost
(acknowledged, never delivered), duplicated and unexpected (failed or
unknown, delivered anyway) messages. The killed server is restarted before
the next implementation kills the next leader.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import credentials, payload, server
from ..progress import Phase
from ..workers import new_root
from .common import TOPIC, Context, collect, remove_tree, start_subscribers, stop_subscribers

RECOVERED_FRACTION = 0.5
BUCKET_S = 0.1


class Recorder:
    def __init__(self) -> None:
        self.acks: list[tuple[float, int]] = []  # (confirmed at, seq)
        self.started: list[float] = []  # when each acknowledged publish was called
        self.failures: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()


def _loop(send: Callable[[bytes], None], rec: Recorder) -> None:
    seq = 0
    while not rec.stop.is_set():
        now = time.monotonic()
        try:
            send(payload.make(seq, now, now))
        except Exception as exc:
            with rec.lock:
                rec.failures.append((time.monotonic(), type(exc).__name__))
            time.sleep(0.01)
        else:
            with rec.lock:
                rec.acks.append((time.monotonic(), seq))
                rec.started.append(now)
        seq += 1


def _sender(key: str, hosts: str, root: str) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    if key == "zkms":
        from ..zkms_reference import ZkmsPublisher, connect

        zk = connect(hosts)
        publisher = ZkmsPublisher(zk, root)

        def send_zkms(data: bytes) -> None:
            publisher.broadcast(TOPIC, data)

        def close_zkms() -> None:
            zk.stop()
            zk.close()

        return send_zkms, close_zkms

    from zkpubsub import Client

    client = Client(
        hosts, root=root, serializer="raw", request_timeout=20.0, **credentials.security()
    )

    def send(data: bytes) -> None:
        client.publish(TOPIC, data)

    return send, client.close


def _metrics(rec: Recorder, t_kill: float, before: float, now: float) -> dict[str, Any]:
    """Gaps and recovery around the kill at ``t_kill``, as seen at ``now``."""
    with rec.lock:
        times = [t for t, _ in rec.acks]
        started = list(rec.started)
        failures_seen = list(rec.failures)
    pre = [t for t in times if t_kill - before <= t < t_kill]
    pre_rate = len(pre) / before if before > 0 else 0.0
    pre_gaps = [b - a for a, b in itertools.pairwise(pre)]
    # gaps that end after the kill, and the one still open at ``now``
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(times) if b > t_kill]
    last = times[-1] if times else t_kill
    open_gap = now - last
    ongoing = open_gap > 0 and (not gaps or open_gap > max(gaps)[0])
    if ongoing:
        max_gap, gap_from, gap_to = now - last, last, now
    else:
        max_gap, gap_from, gap_to = max(gaps, default=(0.0, t_kill, t_kill))
    # the first publish both called and acknowledged after the kill
    first_after = next((t for t, s in zip(times, started, strict=True) if s > t_kill), None)
    # recovered: the first acknowledgement after the longest gap from which
    # one full second holds at least half the rate of before the kill
    recovered_at = None
    if not ongoing:
        need = RECOVERED_FRACTION * pre_rate
        start = bisect.bisect_left(times, gap_to)
        for i in range(start, len(times)):
            if times[i] + 1.0 > now:
                break  # not a full second observed yet
            j = bisect.bisect_left(times, times[i] + 1.0)
            if j - i >= need:
                recovered_at = times[i]
                break
    timeline: list[tuple[float, int]] = []
    t = t_kill - before
    k = bisect.bisect_left(times, t)
    while t < now:
        count = 0
        while k < len(times) and times[k] < t + BUCKET_S:
            count += 1
            k += 1
        timeline.append((round(t - t_kill, 2), count))
        t += BUCKET_S
    failures: dict[str, int] = {}
    for _, name in failures_seen:
        failures[name] = failures.get(name, 0) + 1
    return {
        "acknowledged": len(times),
        "rate_before": round(pre_rate, 1),
        "max_gap_before_kill_s": round(max(pre_gaps, default=0.0), 3),
        "max_gap_s": round(max_gap, 3),
        "max_gap_from_kill_s": [round(gap_from - t_kill, 3), round(gap_to - t_kill, 3)],
        "still_stalled": ongoing,
        "first_ack_after_kill_s": None if first_after is None else round(first_after - t_kill, 3),
        "recovered_after_s": None if recovered_at is None else round(recovered_at - t_kill, 3),
        "failures": failures,
        "timeline_per_100ms": timeline,
    }


def _cell(ctx: Context, ensemble: Any, key: str, label: str, phase: Phase) -> dict[str, Any]:
    p = ctx.profile
    hosts = ensemble.hosts
    root = new_root(f"stall-{key}")
    sub_impl = "zkms" if key == "zkms" else "zkpubsub"
    phase.update("starting the subscriber")
    workers = start_subscribers(ctx, sub_impl, hosts, root, 1)
    killed = None
    t_kill = t_stop = 0.0
    try:
        send, close = _sender(key, hosts, root)
        rec = Recorder()
        thread = threading.Thread(target=_loop, args=(send, rec), daemon=True)
        try:
            thread.start()
            until = time.monotonic() + p.stall_before
            while time.monotonic() < until:
                phase.update(f"{len(rec.acks)} acknowledged before the kill")
                time.sleep(0.2)
            killed = ensemble.leader()
            if killed is None:
                raise RuntimeError("no leader to kill")
            t_kill = time.monotonic()
            killed.kill()
            phase.update(f"killed leader (server {killed.myid})")
            cap = t_kill + p.stall_after_cap
            while time.monotonic() < cap:
                m = _metrics(rec, t_kill, p.stall_before, time.monotonic())
                if m["recovered_after_s"] is not None and (
                    time.monotonic() - t_kill > m["recovered_after_s"] + p.stall_settle
                ):
                    break
                phase.update(
                    f"after the kill: {m['acknowledged']} acknowledged, longest gap "
                    f"{m['max_gap_s']:.2f}s"
                )
                time.sleep(0.2)
        finally:
            t_stop = time.monotonic()
            rec.stop.set()
            thread.join(30)
            close()
        metrics = _metrics(rec, t_kill, p.stall_before, t_stop)
        phase.update("restarting the killed server, draining")
        killed.start()
        ensemble.wait_serving([killed], timeout=120)
        acked = {seq for _, seq in rec.acks}
        received = collect(ctx, workers, len(acked), seqs=True, wait=30.0)
    finally:
        stop_subscribers(ctx, workers)
        remove_tree(hosts, root)
        if killed is not None and not killed.running:
            with contextlib.suppress(Exception):
                killed.start()
                ensemble.wait_serving([killed], timeout=120)
    delivered = set(received[0]["seqs"]) if received else set()
    metrics.update(
        {
            "impl": key,
            "label": label,
            "killed_server": killed.myid if killed else None,
            "failed_publishes": len(rec.failures),
            "delivered": len(delivered),
            "lost": len(acked - delivered),
            "duplicates": received[0]["duplicates"] if received else None,
            "unexpected": len(delivered - acked),
        }
    )
    phase.summary = (
        f"longest gap {metrics['max_gap_s']} s, recovered after "
        f"{metrics['recovered_after_s']} s, lost {metrics['lost']}, "
        f"duplicates {metrics['duplicates']}"
    )
    return metrics


def run(ctx: Context, clusters: list[Any]) -> dict[str, Any]:
    p = ctx.profile
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    with ctx.progress.phase("stall: starting a 3-node ensemble") as phase:
        ensemble = server.start_cluster(3, base_dir=ctx.base_dir)
        clusters.append(ensemble)
        info = server.describe(ensemble)
        phase.summary = f"leader is server {ensemble.wait_quorum().myid}"
    try:
        with ctx.progress.phase("stall: warming the ensemble") as phase:
            warm = server.warm_up(
                ensemble,
                ctx.pool,
                window=min(2.0, p.stall_warmup),
                min_seconds=p.stall_warmup,
                cap_seconds=p.stall_warmup,
                tolerance=1.0,
                stable_windows=1,
                on_window=lambda t, r: phase.update(f"{r:,.0f} ops/s at {t:.0f}s"),
            )
            phase.summary = f"{warm['final_ops_per_s']:,.0f} ops/s"
        for key, label in (("zkpubsub", "zkpubsub publish()"), ("zkms", "zkms-style reference")):
            with ctx.progress.phase(f"stall: {label}, leader killed") as phase:
                try:
                    results.append(_cell(ctx, ensemble, key, label, phase))
                except Exception as exc:
                    errors.append({"impl": key, "error": f"{type(exc).__name__}: {exc}"})
                    phase.summary = f"error: {type(exc).__name__}: {exc}"
    finally:
        ensemble.close()
    return {
        "description": (__doc__ or "").strip().splitlines()[0],
        "params": {
            "before_s": p.stall_before,
            "after_cap_s": p.stall_after_cap,
            "recovered_fraction": RECOVERED_FRACTION,
            "warmup_s": p.stall_warmup,
        },
        "ensemble": info,
        "warmup": warm,
        "results": results,
        "errors": errors,
    }
