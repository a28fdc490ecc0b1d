"""The asyncio path, measured beside the threaded one.

The same cells as the threaded variants, driven through ``zkpubsub.aio``
on both ends: the publisher is an ``AsyncClient`` awaiting ``publish()``
on an event loop, and every subscriber is an ``AsyncClient`` whose
``async def`` handler runs on its own event loop (one loop per subscriber,
as one per service instance).

* fan-out: ``async_window`` publishes in flight (as ``publish_async()``'s
  row), closed loop, end to end as every fan-out cell, in two rows:
  ``publish_nowait()`` futures with the oldest awaited when the window is
  full (the threaded row's discipline, the one the goal is judged on) and
  ``publish()`` awaited by a task per message (asyncio's task cost added);
* latency: an open loop on the event loop — message *i* is published at
  ``t0 + i / rate`` as a task, latency counted from the scheduled time; a
  clock thread wakes the loop for each (the loop's timers wake in whole
  milliseconds, where the threaded senders sleep to the microsecond).

:func:`comparison` sets each asyncio cell against its threaded
counterpart (``publish_async()``, the same window): the goal is to be no
more than 15% slower (end-to-end rate at most 15% lower; latency p50 and
p99 at most 15% higher).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from . import payload

if TYPE_CHECKING:
    from .progress import Phase
    from .sections.common import Context
    from .sections.fanout import PublishRun
    from .sections.latency import OpenLoop
    from .workers import Recorder, _Subscriber

KEY: Final = "aio"  # publish() awaited, a task per message
# publish_nowait(), the oldest future awaited when the window is full: the
# threaded row's discipline (publish_async(), the oldest future waited for)
NOWAIT_KEY: Final = "aio-nowait"
KEYS: Final = (NOWAIT_KEY, KEY)
SUBSCRIBER: Final = "zkpubsub-aio"
THREADED: Final = "zkpubsub-async"  # the counterpart: publish_async(), the same window
TOLERANCE: Final = 0.15


def fanout_label(window: int, *, nowait: bool = False) -> str:
    if nowait:
        return f"zkpubsub.aio publish_nowait(), {window} in flight"
    return f"zkpubsub.aio publish(), {window} tasks in flight"


LATENCY_LABEL: Final = "zkpubsub.aio publish()"


# -- the publisher -----------------------------------------------------------------------


def publish_fanout(
    ctx: Context, root: str, topic: str, phase: Phase, *, nowait: bool = False
) -> PublishRun:
    """Closed loop for ``fanout_duration``, ``async_window`` publishes in
    flight: each awaited by a task of its own, or (``nowait``) as the
    threaded row runs, futures from ``publish_nowait()`` with the oldest
    awaited whenever the window is full."""
    from zkpubsub.aio import AsyncClient

    from .sections.fanout import PublishRun

    p = ctx.profile
    run = PublishRun()

    async def futures(client: Any) -> None:
        in_flight: deque[asyncio.Future[Any]] = deque()

        async def settle() -> None:
            try:
                await in_flight.popleft()
                run.published += 1
            except Exception as exc:
                run.failed(exc)

        run.start = time.monotonic()
        end = run.start + p.fanout_duration
        seq = 0
        while time.monotonic() < end and seq < p.fanout_max_messages:
            now = time.monotonic()
            in_flight.append(client.publish_nowait(topic, payload.make(seq, now, now)))
            seq += 1
            if len(in_flight) >= p.async_window:
                await settle()
            if seq % 200 == 0:
                phase.update(f"published {run.published}")
        while in_flight:
            await settle()
        run.end = time.monotonic()

    async def main() -> None:
        async with AsyncClient.connect(ctx.hosts, root=root, serializer="raw") as client:
            if nowait:
                await futures(client)
                return
            room = asyncio.Semaphore(p.async_window)
            tasks: set[asyncio.Task[None]] = set()

            async def one(seq: int, now: float) -> None:
                try:
                    await client.publish(topic, payload.make(seq, now, now))
                    run.published += 1
                except Exception as exc:
                    run.failed(exc)
                finally:
                    room.release()

            run.start = time.monotonic()
            end = run.start + p.fanout_duration
            seq = 0
            while time.monotonic() < end and seq < p.fanout_max_messages:
                await room.acquire()
                task = asyncio.ensure_future(one(seq, time.monotonic()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                seq += 1
                if seq % 200 == 0:
                    phase.update(f"published {run.published}")
            await asyncio.gather(*tasks)
            run.end = time.monotonic()

    asyncio.run(main())
    return run


def run_open_loop(hosts: str, root: str, topic: str, loop: OpenLoop, phase: Phase) -> None:
    """The open loop of the latency section, on an event loop: each message
    is a task started at its scheduled time.

    A clock thread keeps the schedule and wakes the loop for each message,
    as a service's loop is woken by the request that makes it publish. The
    loop's own timers would not do: they wake in whole milliseconds, rounded
    up, so each send would start up to 1 ms late (the threaded senders
    sleep to the microsecond), and latency counts from the scheduled time.
    The time the loop takes to wake still counts."""
    from zkpubsub.aio import AsyncClient

    async def main() -> None:
        async with AsyncClient.connect(hosts, root=root, serializer="raw") as client:
            tasks: set[asyncio.Task[None]] = set()
            event_loop = asyncio.get_running_loop()
            scheduled_all = asyncio.Event()

            async def one(data: bytes) -> None:
                try:
                    await client.publish(topic, data)
                except Exception as exc:
                    loop.errors += 1
                    if loop.first_error is None:
                        loop.first_error = f"{type(exc).__name__}: {exc}"

            def send(i: int, scheduled: float) -> None:  # on the loop
                now = time.monotonic()
                task = asyncio.ensure_future(one(payload.make(i, scheduled, now)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                loop.sent += 1
                loop.max_behind = max(loop.max_behind, now - scheduled)
                loop.last_send = max(loop.last_send, now)
                if i % 50 == 0:
                    phase.update(
                        f"sent {loop.sent}/{loop.total}, behind by up to "
                        f"{loop.max_behind * 1000:.0f} ms"
                    )

            def clock() -> None:  # a thread of its own
                try:
                    while (i := loop._take()) is not None:
                        scheduled = loop.scheduled(i)
                        delay = scheduled - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        event_loop.call_soon_threadsafe(send, i, scheduled)
                finally:
                    event_loop.call_soon_threadsafe(scheduled_all.set)

            loop.start = time.monotonic() + 0.2
            loop.give_up = loop.scheduled(loop.total - 1) + loop.behind_cap
            thread = threading.Thread(target=clock, name="bench-aio-clock", daemon=True)
            thread.start()
            await scheduled_all.wait()
            thread.join()
            await asyncio.gather(*tasks)

    asyncio.run(main())


# -- a subscriber (in a worker process) --------------------------------------------------


def subscriber(
    hosts: str, root: str, topic: str, recorder: Recorder, session_timeout: float
) -> tuple[_Subscriber, str]:
    """An ``AsyncClient`` with an ``async def`` handler, on an event loop of its own."""
    from zkpubsub.aio import AsyncClient

    from .workers import _Subscriber

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-aio-loop", daemon=True)
    thread.start()

    async def start() -> tuple[Any, Any]:
        client = await AsyncClient.connect(
            hosts, root=root, serializer="raw", session_timeout=session_timeout
        )

        async def handler(message: Any) -> None:
            recorder.record(message.payload)

        return client, await client.subscribe(topic, handler)

    client, sub = asyncio.run_coroutine_threadsafe(start(), loop).result(60)

    async def stop() -> None:
        try:
            await sub.unsubscribe()
        finally:
            await client.close()

    def close() -> None:
        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(120)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    return _Subscriber(recorder, close), str(client.client_id)


# -- beside the threaded path ------------------------------------------------------------


def _slower_by(aio: float | None, threaded: float | None, higher_is_better: bool) -> float | None:
    """How much worse the asyncio figure is, as a fraction (negative: better)."""
    if not aio or not threaded:
        return None
    return (threaded / aio - 1) if higher_is_better else (aio / threaded - 1)


def comparison(section: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell of the asyncio path: its figures, the threaded counterpart's,
    how much slower it is, and whether that is within the tolerance."""
    out = []
    if section == "fanout":
        for cell in (r for key in KEYS for r in results if r["impl"] == key):
            twin = next(
                (
                    r
                    for r in results
                    if r["impl"] == THREADED and r["subscribers"] == cell["subscribers"]
                ),
                None,
            )
            theirs = twin.get("e2e_rate") if twin else None
            slower = _slower_by(cell.get("e2e_rate"), theirs, True)
            out.append(
                {
                    "subscribers": cell["subscribers"],
                    "variant": "publish_nowait()" if cell["impl"] == NOWAIT_KEY else "publish()",
                    "judged": cell["impl"] == NOWAIT_KEY,
                    "aio_e2e_rate": cell.get("e2e_rate"),
                    "threaded_e2e_rate": theirs,
                    "slower_by": None if slower is None else round(slower, 3),
                    "within": None if slower is None else slower <= TOLERANCE,
                }
            )
    else:
        for cell in (r for r in results if r["impl"] == KEY):
            twin = next(
                (r for r in results if r["impl"] == THREADED and r["rate"] == cell["rate"]), None
            )
            figures: dict[str, Any] = {"rate": cell["rate"]}
            worst = None
            for q in ("p50", "p99"):
                mine = cell["latency_ms"][q]
                theirs = twin["latency_ms"][q] if twin else None
                slower = _slower_by(mine, theirs, False)
                figures[f"aio_{q}_ms"], figures[f"threaded_{q}_ms"] = mine, theirs
                if slower is not None:
                    worst = slower if worst is None else max(worst, slower)
            figures["slower_by"] = None if worst is None else round(worst, 3)
            figures["within"] = None if worst is None else worst <= TOLERANCE
            out.append(figures)
    return out


def markdown(section: dict[str, Any]) -> list[str]:
    """The comparison as report lines (nothing when the section has none)."""
    rows = section.get("asyncio_vs_threaded") or []
    if not rows:
        return []
    lines = [
        "",
        "The asyncio path (`zkpubsub.aio` publisher and `async def` handlers) beside "
        "the threaded `publish_async()` with the same window; goal: no more than "
        f"{TOLERANCE:.0%} slower.",
    ]
    if any("variant" in r for r in rows):
        lines.append(
            "Fan-out is judged on `publish_nowait()`, driven as the threaded row is (the "
            "oldest future awaited when the window is full); `publish()` awaited by a "
            "task per message is shown beside it (not judged)."
        )
    lines.append("")
    for r in rows:
        where = f"{r['subscribers']} subscribers" if "subscribers" in r else f"{r['rate']:g} msg/s"
        if "variant" in r:
            where += f", {r['variant']}"
        if "aio_e2e_rate" in r:
            figures = f"{r['aio_e2e_rate']} vs {r['threaded_e2e_rate']} msg/s"
        else:
            figures = (
                f"p50 {r['aio_p50_ms']} vs {r['threaded_p50_ms']} ms, "
                f"p99 {r['aio_p99_ms']} vs {r['threaded_p99_ms']} ms"
            )
        if r["slower_by"] is None:
            verdict = "not measured"
        else:
            outcome = "met" if r["within"] else "missed"
            if not r.get("judged", True):
                outcome = "not judged"
            verdict = f"{r['slower_by']:+.0%} ({outcome})"
        lines.append(f"- {where}: {figures}: {verdict}")
    return lines
