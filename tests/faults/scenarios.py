"""Shared steps of the fault scenarios: build a workload, finish and check it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from zkpubsub import Cleaner
from zkpubsub.testing import ZooKeeperCluster
from zkpubsub.testing.audit import Audit, audit_convergence
from zkpubsub.testing.checker import CheckResult, check
from zkpubsub.testing.faults import FaultInjector
from zkpubsub.testing.report import ScenarioResult
from zkpubsub.testing.workload import Workload

REPORT_ENV = "ZKPUBSUB_RELIABILITY_REPORT"

SESSION_TIMEOUT = 4.0
CLEANER_GRACE = 5.0
CLEANER_INTERVAL = 1.0

REPORT_PREAMBLE = """\
# Reliability under faults

Every figure below comes from a run of the fault-injection scenarios in
`tests/faults/` against real ZooKeeper 3.8 server processes on one machine
(127.0.0.1; 3-server ensembles, 5 for the original procedure; tick 200 ms;
client session timeout 4 s; cleaner grace 5 s). Servers are killed with
SIGKILL, stopped with SIGSTOP, cut off from their peers through TCP
proxies, restarted with wiped data, or made to fail their disk writes;
client connections are cut, or lose one request or one reply, at chosen
moments; sessions are ended on the server. Meanwhile publishers publish
and subscribers receive, and every publish and every delivery is
recorded. The checker (`zkpubsub/testing/checker.py`) defines every column:

* **attempted / acked / unknown**: calls to `publish()`, those confirmed,
  and those whose outcome is unknown (timeout, lost connection);
* **delivered**: distinct (subscriber, message) pairs received;
* **lost**: acknowledged messages an entitled subscriber never received.
  A subscriber is entitled to a message when its `subscribe()` returned
  before `publish()` was called, it stayed subscribed to the end, and its
  client reported no gap covering the publish. Must be 0;
* **duplicates**: deliveries beyond the first of one message to one
  subscriber;
* **failed**: publishes refused before anything was sent; **unexpected**:
  deliveries of messages never published (must be 0); **order_violations**:
  messages of one publisher received out of order (must be 0);
  **recovered**: messages of unknown outcome that were delivered;
* **faults**: actions of the fault injector; **sessions lost**: client
  sessions that expired and were registered again; **audit**: the
  convergence audit after healing (no queue or publish receipt of a dead
  client left after the cleaner's grace, no purge marker, exactly one
  cleaner leader); **seconds**: wall time of the scenario, set-up included.

The scenarios, numbered as in the issue: (1) the leader killed with
SIGKILL five times during a publish burst, each time started again;
(2) the follower most clients are connected to killed, twice; (3) a
rolling restart; (4) two of three servers killed for 1.5 session
timeouts; (5) the leader stopped for half a session timeout, then the
busiest server for two; (6) the leader, then the busiest follower, cut
off from the other servers for two session timeouts each; (7) a
publisher's connection lost before a transaction reached the server and
after it was applied (4 times each), the same for a subscriber deleting
what it handled (3 times each), a reply delivered twice (which kills
kazoo's connection loop), a lost reply followed by the expiry of the
publisher's session; (8a) subscribers' sessions closed on the server 12
times, (8b) a publisher's 3 times while its fan-outs are split over
several transactions, (8c) the cleaner leader's twice while a dead
client's queue waits for removal, (8d) a subscriber cut off for two
session timeouts, twice; (11) two subscriber processes killed with
SIGKILL mid-stream, their queues removed by the cleaner while publishing
goes on; (12) the data directory of one server (running as an
unprivileged user) taken away; the server fails on its next write and
exits. The original zookeeper-mq procedure kills the leader of five
servers, wipes its data directory and starts it again, over and over,
while 300 items are written and read back.

The work-queue scenarios of the issue (workers killed or paused while
holding items, acknowledgements cut mid-way) are not covered here.

Numbers vary from run to run (they depend on timing); the zeros must not.
"""


@dataclass
class ScenarioRecorder:
    """Hands each scenario's figures to the session's table."""

    results: list[ScenarioResult]
    started: float
    recorded: list[ScenarioResult] = field(default_factory=list)

    def record(
        self,
        name: str,
        result: CheckResult,
        *,
        faults: int,
        audit: Audit | None = None,
        notes: dict[str, int] | None = None,
    ) -> ScenarioResult:
        entry = ScenarioResult(
            name=name,
            check=result,
            faults=faults,
            seconds=time.monotonic() - self.started,
            audit_ok=None if audit is None else audit.ok,
            notes=dict(notes or {}),
        )
        self.results.append(entry)
        self.recorded.append(entry)
        return entry


def pubsub_workload(
    cluster: ZooKeeperCluster,
    root: str,
    *,
    publishers: int = 2,
    subscribers: int = 3,
    cleaners: bool = True,
    hosts: str | None = None,
    **options: Any,
) -> tuple[Workload, list[Cleaner]]:
    """Subscribers (each hosting a cleaner candidate) and publishers on ``cluster``."""
    options.setdefault("session_timeout", SESSION_TIMEOUT)
    wl = Workload(hosts or cluster.hosts, root, **options)
    for _ in range(subscribers):
        wl.add_subscriber()
    for _ in range(publishers):
        wl.add_publisher()
    running: list[Cleaner] = []
    if cleaners:
        for client in wl.subscribers.values():
            running.append(client.start_cleaner(grace=CLEANER_GRACE, interval=CLEANER_INTERVAL))
    return wl, running


def finish(
    name: str,
    wl: Workload,
    injector: FaultInjector,
    scenario: ScenarioRecorder,
    cleaners: Sequence[Cleaner] = (),
    *,
    total_order: bool = True,
    drain_timeout: float = 90.0,
    audit_timeout: float | None = None,
) -> tuple[CheckResult, Audit | None]:
    """Stop publishing, heal, drain, check and audit; record the figures.
    Asserts nothing: the scenario states what must hold."""
    wl.stop_publishing()
    injector.heal()
    injector.wait_healthy()
    wl.drain(drain_timeout)
    result = check(wl.history(), total_order=total_order)
    audit = None
    if cleaners:
        audit = audit_convergence(
            injector.cluster.hosts,
            wl.root,
            cleaners,
            timeout=audit_timeout or 3 * CLEANER_GRACE + 30,
        )
    scenario.record(
        name,
        result,
        faults=len(injector.log.events()),
        audit=audit,
        notes=wl.recorder.history().notes,
    )
    return result, audit


def assert_clean(
    result: CheckResult, audit: Audit | None, *, duplicates_allowed: bool = False
) -> None:
    assert result.acked > 0, result.describe()
    assert result.lost == 0, result.describe()
    assert result.unexpected == 0, result.describe()
    assert result.failed_delivered == 0, result.describe()
    assert result.order_violations == 0, result.describe()
    assert result.order_conflicts == 0, result.describe()
    if not duplicates_allowed:
        assert result.duplicates == 0, result.describe()
    if audit is not None:
        assert audit.ok, audit.describe()
