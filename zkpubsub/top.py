"""``zkpubsub top``: a live view of a bus, refreshed in place.

It reads (through an :class:`~zkpubsub.Observer`, which writes nothing)
the clients with their host and pid, the topics, every subscriber queue
with its backlog and its rates in and out, the work queues (ready,
reserved, dead, workers) and the cleaner's leader. Rates come from two
snapshots: a queue's child version counts every node created and deleted
in it, its node count the difference, so ``in = (Δversion + Δbacklog) / 2``
and ``out = (Δversion - Δbacklog) / 2`` per interval (in nodes: a node may
carry a batch of messages).

Needs the ``top`` extra (``pip install 'zkpubsub[top]'``, which brings
``rich``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Final

from .errors import ConnectionLost, OperationTimeout
from .observer import Observer
from .stats import BusStats, QueueStats, moved_between

__all__ = ["Frame", "Sampler", "print_frame", "render", "show_live"]


logger = logging.getLogger(__name__)

try:
    import rich  # noqa: F401 - the extra's presence, checked on import
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("zkpubsub top needs rich: pip install 'zkpubsub[top]'") from exc


@dataclass(frozen=True, slots=True)
class Frame:
    """One look at the bus: the snapshot, the rates since the previous one
    (nodes per second in and out, by ``(client id, topic)``) and the leader."""

    stats: BusStats
    rates: dict[tuple[str, str], tuple[float, float]]
    leader: str | None
    at: float


class Sampler:
    """Snapshots of a bus, with the rates between consecutive ones."""

    def __init__(self, observer: Observer) -> None:
        self._observer = observer
        self._last: tuple[float, dict[tuple[str, str], QueueStats]] | None = None

    def sample(self) -> Frame:
        stats = self._observer.stats()
        now = time.monotonic()  # when the snapshot was read
        leader = self._observer.cleaner_leader()
        counts = {(q.client_id, q.topic): q for q in stats.queues}
        rates: dict[tuple[str, str], tuple[float, float]] = {}
        if self._last is not None:
            then, before = self._last
            span = max(now - then, 1e-6)
            for key, queue in counts.items():
                if key in before:
                    into, out = moved_between(before[key], queue)
                    rates[key] = (into / span, out / span)
        self._last = (now, counts)
        return Frame(stats, rates, leader, time.time())


def _age(started: float, now: float) -> str:
    if not started:
        return "?"
    seconds = max(0, int(now - started))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def render(frame: Frame, unanswered: float | None = None) -> Any:
    """The frame as a ``rich`` renderable: a heading and four tables; with
    ``unanswered``, a line saying how many seconds the server has not
    answered the next look (the view is older than it seems)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    stats = frame.stats
    heading = Text.assemble(
        ("zkpubsub top", "bold"),
        f"  root {stats.root}  ",
        f"{len(stats.clients)} client(s), {len(stats.topics)} topic(s), "
        f"{len(stats.work_queues)} work queue(s)  cleaner leader: ",
        (frame.leader or "none", "bold" if frame.leader else "dim"),
        f"  ({stats.cleaner_candidates} candidate(s))  "
        + time.strftime("%H:%M:%S", time.localtime(frame.at)),
    )
    if unanswered is not None:
        heading.append(
            f"\nno answer from the server for {unanswered:.0f}s: this view is from the time above",
            "bold reverse",
        )
    clients = Table(title="clients", title_justify="left", expand=False)
    for column in ("client", "host", "pid", "age"):
        clients.add_column(column, justify="right" if column in ("pid", "age") else "left")
    for info in stats.client_info:
        clients.add_row(
            info.client_id,
            info.host or "?",
            str(info.pid or "?"),
            _age(info.started, frame.at),
        )
    topics = Table(title="topics", title_justify="left")
    for column in ("topic", "subscribers", "backlog", "in/s", "out/s"):
        topics.add_column(column, justify="left" if column == "topic" else "right")
    subscribers = Table(title="subscribers", title_justify="left")
    for column in ("topic", "client", "backlog", "in/s", "out/s", "client is"):
        subscribers.add_column(
            column, justify="right" if "/" in column or column == "backlog" else "left"
        )
    for topic in stats.topic_names:
        queues = stats.queues_of(topic)
        known = [
            frame.rates[(q.client_id, topic)] for q in queues if (q.client_id, topic) in frame.rates
        ]
        topics.add_row(
            topic,
            str(len(stats.topics.get(topic, ()))),
            str(sum(q.backlog for q in queues)),
            _rate(max((r[0] for r in known), default=None)),
            _rate(sum(r[1] for r in known) if known else None),
        )
        for q in queues:
            rate = frame.rates.get((q.client_id, topic))
            subscribers.add_row(
                topic,
                q.client_id,
                str(q.backlog),
                _rate(rate[0] if rate else None),
                _rate(rate[1] if rate else None),
                "live" if q.live else "GONE",
            )
    work = Table(title="work queues", title_justify="left")
    for column in ("queue", "ready", "reserved", "dead", "workers"):
        work.add_column(column, justify="left" if column == "queue" else "right")
    for w in stats.work_queues:
        work.add_row(w.name, str(w.ready), str(w.reserved), str(w.dead), str(w.workers))
    return Group(heading, clients, topics, subscribers, work)


def print_frame(frame: Frame, stream: IO[str], width: int = 120) -> None:
    """One frame, as plain text (no colours), on ``stream``."""
    from rich.console import Console

    Console(file=stream, width=width, color_system=None).print(render(frame))


# A look at the bus unanswered this long is said on the screen, and again
# each second it goes on.
UNANSWERED_AFTER: Final = 2.0


def show_live(
    first: Frame,
    sample: Callable[[Callable[[float], None]], Frame],
    interval: float,
    stop: threading.Event,
) -> None:
    """Frames refreshed in place on the terminal every ``interval`` seconds
    until ``stop`` is set (or Ctrl-C). ``sample(waiting)`` takes the next
    frame, calling ``waiting(seconds)`` on this thread while the server
    does not answer; the last frame then says for how long. A look that
    fails for want of a server (its request timeout, a lost connection)
    keeps the last frame, so marked, and the next look tries again: an
    outage does not end the view."""
    from rich.live import Live

    with Live(render(first), auto_refresh=False, screen=False) as live:
        shown = first
        failing_since: float | None = None  # when the first look that failed began
        said = 0

        def waiting(seconds: float) -> None:
            # how long this look has waited, or since the looks began to fail
            nonlocal said
            if failing_since is not None:
                seconds = time.monotonic() - failing_since
            if seconds >= UNANSWERED_AFTER and int(seconds) > said:
                said = int(seconds)
                live.update(render(shown, unanswered=seconds), refresh=True)

        while not stop.wait(interval):
            began = time.monotonic()
            try:
                shown = sample(waiting)
            except (ConnectionLost, OperationTimeout) as exc:
                logger.debug("a look at the bus failed: %s", exc)
                if failing_since is None:
                    failing_since = began
                waiting(0.0)
                continue
            failing_since = None
            said = 0
            live.update(render(shown), refresh=True)
