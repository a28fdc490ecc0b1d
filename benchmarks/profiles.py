"""How big and how long each section runs: ``full`` (the published numbers)
and ``quick`` (a smoke run that checks the harness end to end)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

SECTIONS: Final = (
    "fanout",
    "queue",
    "queue-latency",
    "latency",
    "backlog",
    "stuck",
    "stall",
    "gateway",
)


def subscriber_processes(profile: Profile) -> int:
    if profile.subscriber_processes > 0:
        return profile.subscriber_processes
    return max(2, os.cpu_count() or 2)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    # processes hosting subscribers (0: one per core, at least 2); queue
    # workers get one process each. The publisher runs in the harness process.
    subscriber_processes: int = 0
    # every measured cell runs this many times, in a rotating order
    repeats: int = 3
    # warm-up of the standalone server: windows until stable or the cap
    warmup_window: float = 2.0
    warmup_min: float = 20.0
    warmup_cap: float = 90.0
    warmup_tolerance: float = 0.05
    warmup_stable_windows: int = 4
    # fan-out end to end
    fanout_subscribers: tuple[int, ...] = (1, 10, 20, 100)
    fanout_duration: float = 6.0
    fanout_drain_cap: float = 30.0
    fanout_max_messages: int = 200_000
    publisher_threads: int = 8
    async_window: int = 256
    publish_many_batch: int = 100
    raw_window: int = 64
    raw_pack: int = 256  # messages per node in the packed raw ceiling (at most)
    # work queue: every implementation drains the same backlog
    queue_workers: tuple[int, ...] = (1, 4)
    queue_items: int = 2_000
    queue_consume_cap: float = 120.0
    queue_idle: float = 1.0
    # put-to-reserve latency of the work queue, open loop, by how workers
    # hear of new items (watch_mode), beside the commit floor: workers (one
    # process each), offered rates, the measured window and the unmeasured
    # warm-up of every cell, and how long the workers may take to catch up
    queue_latency_workers: tuple[int, ...] = (1, 4)
    queue_latency_rates: tuple[float, ...] = (50.0, 200.0)
    queue_latency_duration: float = 10.0
    queue_latency_warmup: float = 1.0
    queue_latency_drain_cap: float = 30.0
    # publish-to-handler latency, open loop
    latency_subscribers: int = 10
    latency_rates: tuple[float, ...] = (50.0, 200.0, 1000.0)
    # the floor and the targets' cells: one subscriber process per subscriber,
    # at this rate, for these subscriber counts
    latency_target_rate: float = 200.0
    latency_target_counts: tuple[int, ...] = (1, 10)
    latency_duration: float = 10.0
    latency_warmup: float = 5.0  # one unmeasured pass of the floor's and targets' cells
    latency_senders: int = 4
    latency_drain_cap: float = 10.0
    # a saturated sender gives up this long after its last scheduled send
    latency_behind_cap: float = 5.0
    # publish cost against a growing backlog
    backlog_levels: tuple[int, ...] = (0, 1_000, 10_000, 50_000, 100_000)
    backlog_probe_publishes: int = 1_000
    backlog_probe_cap: float = 10.0
    backlog_fill_batch: int = 500
    # one stuck subscriber among ten: rounds of healthy / stuck / unbounded
    stuck_publishers: int = 4
    stuck_bound: int = 1_000
    stuck_warmup: float = 5.0
    stuck_duration: float = 10.0
    stuck_rounds: int = 5
    stuck_sample: float = 0.5
    stuck_drain_cap: float = 60.0
    # leader kill on a 3-node ensemble
    stall_warmup: float = 15.0
    stall_before: float = 5.0
    stall_after_cap: float = 30.0
    stall_settle: float = 3.0
    # the HTTP gateway against the library: publishing threads and how long,
    # and the backlogs drained (auto-acked pulls and get; explicit acks)
    gateway_publishers: int = 8
    gateway_duration: float = 6.0
    gateway_backlog: int = 3_000
    gateway_backlog_acked: int = 300

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FULL: Final = Profile("full")

QUICK: Final = replace(
    FULL,
    name="quick",
    repeats=2,
    warmup_window=0.5,
    warmup_min=1.0,
    warmup_cap=2.0,
    warmup_stable_windows=2,
    warmup_tolerance=0.25,
    fanout_subscribers=(1, 4),
    fanout_duration=0.15,
    fanout_drain_cap=10.0,
    publisher_threads=4,
    async_window=32,
    publish_many_batch=20,
    raw_pack=32,
    queue_workers=(1, 2),
    queue_items=60,
    queue_consume_cap=20.0,
    queue_idle=0.3,
    queue_latency_workers=(2,),
    queue_latency_rates=(50.0,),
    queue_latency_duration=0.3,
    queue_latency_warmup=0.3,
    queue_latency_drain_cap=10.0,
    latency_subscribers=2,
    latency_rates=(100.0,),
    latency_target_rate=100.0,
    latency_target_counts=(1, 2),
    latency_duration=0.3,
    latency_warmup=0.2,
    latency_senders=2,
    latency_drain_cap=5.0,
    latency_behind_cap=2.0,
    backlog_levels=(0, 1_000),
    backlog_probe_publishes=50,
    backlog_probe_cap=3.0,
    stuck_publishers=2,
    stuck_bound=50,
    stuck_warmup=0.2,
    stuck_duration=0.3,
    stuck_rounds=2,
    stuck_sample=0.1,
    stuck_drain_cap=20.0,
    stall_warmup=0.5,
    stall_before=1.0,
    stall_after_cap=15.0,
    stall_settle=0.5,
    gateway_publishers=2,
    gateway_duration=0.6,
    gateway_backlog=100,
    gateway_backlog_acked=30,
)

PROFILES: Final = {"full": FULL, "quick": QUICK}
