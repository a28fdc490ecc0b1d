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
from zkpubsub.testing.queue_checker import QueueAudit, QueueCheckResult
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

The scenarios, by number: (1) the leader killed with
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
while 300 items are written and read back (once as messages of a topic,
once through the work queue).

The work queue has its own table, further down.

Numbers vary from run to run (they depend on timing); the zeros must not.
"""

QUEUE_REPORT_TEXT = """\
Producers put numbered items; workers (threads with a client each, and
worker processes driven one step at a time so that they can be killed or
stopped between any two steps) reserve, handle and ack them. The checker
(`zkpubsub/testing/queue_checker.py`) defines the columns:

* **attempted / acked / unknown**: calls to `put()`, those confirmed, and
  those of unknown outcome;
* **reserved**: reservations made (an item reserved again after its
  worker died counts again); **done**: distinct items acked;
* **lost**: acknowledged puts no worker acked. Must be 0;
* **unexpected**: reservations of items never put (must be 0);
  **put duplicates**: puts that became more than one item (must be 0);
  **double acks**: items acked more than once (must be 0);
* **double holds**: items held by two workers at once: two reservations
  with the same attempt number (the item's version on the server, which
  fences every reserve, ack and release), or a reservation after the one
  that was acked. Must be 0;
* **duplicates**: items handled more than once (after a worker died or
  lost its session holding them: at-least-once); **redelivered**:
  reservations after an item's first; **rejected**: acks and releases
  refused with `ReservationLost` (a zombie stopped);
* **audit**: after the run, nothing left in the queue, nothing reserved,
  no reservation without its item.

The scenarios: (Q1) the leader killed with SIGKILL three times while two
producers and four workers (two reserving one item at a time, two four)
run; (Q6) the leader cut off from the other servers for two session
timeouts; (Q7) a producer's connection lost before its put reached the
server and after it was applied (4 times each); a worker's lost before
and after its ack was applied (3 times each); (Q8) the session of a worker
holding an item ended on the server: the item goes to another worker with
one attempt more, the first worker's ack is refused, and it works on;
(Q9) worker processes killed with SIGKILL before handling an item, after
handling it, and during the ack (once with the ack applied and its reply
lost, once with the request lost); (Q10) a worker process stopped with
SIGSTOP past its session timeout, then resumed: its ack is refused both
while another worker holds the item and after it acked it; the original
procedure on the queue (see above).\
"""


@dataclass
class ScenarioRecorder:
    """Hands each scenario's figures to the session's tables (one for
    publish/subscribe, one for the work queue)."""

    results: list[ScenarioResult]
    started: float
    queue_results: list[ScenarioResult] = field(default_factory=list)

    def record(
        self,
        name: str,
        result: CheckResult | QueueCheckResult,
        *,
        faults: int,
        audit: Audit | QueueAudit | None = None,
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
        table = self.queue_results if isinstance(result, QueueCheckResult) else self.results
        table.append(entry)
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
    """Subscribers and publishers on ``cluster``, every client a cleaner
    candidate (the default) with the scenarios' grace and interval; with
    ``cleaners=False``, none is."""
    options.setdefault("session_timeout", SESSION_TIMEOUT)
    standing = {"cleaner_grace": CLEANER_GRACE, "cleaner_interval": CLEANER_INTERVAL}
    if not cleaners:
        standing = {"cleaner": False}
    options["client_options"] = {**standing, **options.get("client_options", {})}
    wl = Workload(hosts or cluster.hosts, root, **options)
    for _ in range(subscribers):
        wl.add_subscriber()
    for _ in range(publishers):
        wl.add_publisher()
    return wl, wl.cleaners()


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
        # and the candidates of clients added since (every client stands)
        running = list({id(c): c for c in [*cleaners, *wl.cleaners()]}.values())
        audit = audit_convergence(
            injector.cluster.hosts,
            wl.root,
            running,
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
