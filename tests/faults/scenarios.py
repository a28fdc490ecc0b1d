"""Shared steps of the fault scenarios: build a workload, finish and check it."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from zkpubsub import Cleaner
from zkpubsub.testing import ZooKeeperCluster
from zkpubsub.testing.audit import Audit, audit_convergence
from zkpubsub.testing.checker import CheckResult, check
from zkpubsub.testing.faults import FaultInjector
from zkpubsub.testing.history import History
from zkpubsub.testing.ledger import Ledger
from zkpubsub.testing.proxy import ZkClientProxy
from zkpubsub.testing.queue_checker import QueueAudit, QueueCheckResult
from zkpubsub.testing.report import ScenarioResult
from zkpubsub.testing.txnlog import ClusterLog
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
recorded.

**The evidence does not come from the library under test.** After each run
the checker reads the servers' own transaction logs
(`zkpubsub/testing/txnlog.py`: a transaction counts once a majority of the
servers logged it) and replays them under the run's root, following only
the documented layout (`zkpubsub/testing/ledger.py`): which subscriber
queues each message was written into, which subscriptions were registered
when each publish committed, which session deleted each message node. The
checker (`zkpubsub/testing/checker.py`) judges the recorded deliveries
against that ledger and defines every column:

* **attempted / acked / unknown**: calls to `publish()`, those confirmed,
  and those whose outcome is unknown (timeout, lost connection, any error
  other than the library's own refusals before sending);
* **expected**: (subscriber, message) pairs that must be delivered: every
  message written into the queue of a subscriber that lived to the end,
  and every acknowledged message a subscriber registered before the
  publish was called was not written to although the servers show it
  registered when the publish committed;
* **excused**: pairs the servers show could not be delivered: the
  subscription was not registered when the publish committed (its session
  had ended and it had not registered again), the node was deleted by
  another session after its subscriber had been away for the cleaner's
  grace, or the subscriber's queue was full: the transaction that carried
  the message into the other queues left or counted an overflow marker in
  that queue instead (a skip without that marker in the log counts as
  lost). Nothing the library reports excuses a pair; each scenario bounds
  this column (0 where no subscriber lost its session or filled its
  queue; otherwise the publish rate times the outage plus a slack, or
  exactly the skips the logs show);
* **delivered**: distinct (subscriber, message) pairs received;
* **lost**: expected pairs never delivered. Must be 0;
* **duplicates**: deliveries beyond the first of one message to one
  subscriber;
* **failed**: publishes the library refused before sending; **failed
  written**: of those, any the servers logged (must be 0); **unexpected**:
  deliveries of a message never published or never written into that
  subscriber's queue (must be 0); **unconfirmed**: acknowledged publishes
  whose receipt counts other queues than the servers logged (must be 0);
  **unreported**: excused pairs no gap notice of the subscriber's client
  covers, and overflow markers a subscriber reached without one (must be
  0: a gap notice is an obligation, not an excuse; for a purged node one
  notice must span the subscriber's whole absence, from its client node's
  delete to the purge, so a notice of an earlier absence does not do; for
  a full queue it must say `backlog full`, name the topic, and span the
  skip);
  **order violations**: messages of one publisher received out of order
  (must be 0); **recovered**: messages of unknown outcome that were
  delivered;
* **faults**: actions of the fault injector, proxy traps that sprang
  included; **sessions lost**: client sessions that expired and were
  registered again; **audit**: the convergence audit after healing (no
  queue or publish receipt of a dead client left after the cleaner's grace,
  no purge marker, exactly one cleaner leader); **seconds**: wall time of
  the scenario, set-up included.

Each scenario also asserts that its fault had an effect the system
observed: new leader epochs in the servers' logs, connections the clients
lost, sessions and registrations the servers saw end and come back,
publishing stalls. No scenario tolerates a publish of unknown outcome.

The scenarios, by number: (1) the leader killed with SIGKILL five times
during a publish burst, each time started again; (2) the follower most
clients are connected to killed, twice; (3) a rolling restart; (4) two of
three servers killed for 1.5 session timeouts; (5) the leader stopped for
half a session timeout, then the busiest server for two; (6) the leader,
then the busiest follower, cut off from the other servers for two session
timeouts each; (7) a publisher's connection lost before a transaction
reached the server and after it was applied (4 times each), the same for a
subscriber deleting what it handled (3 times each), a reply delivered
twice to a subscriber (kazoo's connection loop would die of it; the client
drops the connection and keeps its session), a lost reply followed by the
expiry of the publisher's session; (8a) subscribers' sessions closed on
the server 12 times, (8b) a publisher's 3 times while its fan-outs are
split over several transactions (on a connection made to another server
while the session is being closed, ZooKeeper 3.8.0 at times answers the
publisher's sync a second time here, with a marshalling error, or answers
a later request first: replies the client is not waiting for, as in (7)),
(8c) the cleaner leader's twice while a dead client's queue waits for
removal, (8d) a subscriber cut off until the servers ended its session
(past its session timeout), twice, (8e) a
durable subscriber process killed with SIGKILL while publishing goes on,
and started again within the grace; (11) two subscriber processes killed
with SIGKILL mid-stream, their queues removed by the cleaner while
publishing goes on; (12) the data directory of one server (running as an
unprivileged user) taken away; the server fails on its next write and
exits; (13) a subscriber whose handler blocks, with `max_backlog` 30,
among three healthy ones while two publishers publish as fast as they can:
its queue, counted from the servers' logs, stays within the bound plus the
documented overshoot (what the other publisher writes between two reads of
its depth, one node and one marker per publisher), the healthy subscribers
get everything; then it is released, works off its queue, is told of each
overflow marker (the gap notices' counts add up to the skips the logs
show), and gets what is published next; (S1) and (S8a) scenarios 1 and 8a
again (three kills; the sessions of the three subscribers) on an ensemble
that enforces authentication, every client with credentials and every node
under the secured ACL policy (`tests/faults/test_secured_faults.py`). The
original zookeeper-mq procedure kills the leader of five servers, wipes
its data directory and starts it again, over and over, while 300 items are
written and read back (once as messages of a topic, once through the work
queue).

The checker is tested against the fault it exists for: the run of 8e with
a subscriber that, once registered again, deletes the 40 oldest nodes of
its queue before subscribing reports exactly the messages of those nodes
it never got as lost (the oldest may hold messages it handled before it
was killed and had not deleted yet: deletes are batched)
(`test_the_checker_catches_a_subscriber_that_truncates_its_backlog_when_it_comes_back`).

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
* **lost**: acknowledged puts no worker acked. Must be 0. An ack of
  unknown outcome (its worker killed with it in flight) counts only if no
  later hold of the item exists (a later reservation, by time or attempt
  number, proves that ack was not applied) and the servers' logs show the
  item's node deleted, after that reservation and not into the dead
  letters, by a session of that worker;
* **unexpected**: reservations of items never put (must be 0);
  **put duplicates**: puts that became more than one item, as the workers
  saw them (one put's key under two item ids) or as the servers' logs
  show them (one put's key in two item nodes created; must be 0);
  **double acks**: items acked more than once (must be 0);
* **double holds**: items held by two workers at once, seen two ways: by
  time (each hold is live from its reservation until its ack or release,
  or until the session it was reserved on ended as the servers' logs show;
  two live holds of one item must not overlap), and by the attempt numbers
  the library reports (two reservations with the same attempt number, the
  item's version on the server that fences every reserve, ack and release,
  or a reservation after the one that was acked). Must be 0;
* **duplicates**: items handled more than once (after a worker died or
  lost its session holding them: at-least-once); **redelivered**:
  reservations after an item's first; **rejected**: acks and releases
  refused with `ReservationLost` (a zombie stopped);
* not a column: the checker's notes name each item node the servers' logs
  show written again after its delete, with no create between (a node
  ZooKeeper brought back after a leader change, as traced for the
  broadcast above; no client can write a node that is not there). Such an
  item is reserved and handled again, and the double ack or hold that
  causes still counts;
* **audit**: after the run, nothing left in the queue, nothing reserved,
  no reservation without its item, no dead letter.

The scenarios: (Q1) the leader killed with SIGKILL three times while two
producers and four workers (two reserving one item at a time, two four)
run; (Q6) the leader cut off from the other servers for two session
timeouts; (Q7) a producer's connection lost before its put reached the
server and after it was applied (4 times each); a worker's lost before and
after its ack was applied (3 times each); (Q8) the session of a worker
holding an item ended on the server: the item goes to another worker with
one attempt more, the first worker's ack is refused, and it works on; (Q9)
worker processes killed with SIGKILL before handling an item, after
handling it, and during the ack (once with the ack applied and its reply
lost, once with the request lost); (Q10) a worker process stopped with
SIGSTOP past its session timeout, then resumed: its ack is refused both
while another worker holds the item and after it acked it; (SQ1) the
leader killed twice under one producer and two workers (one reserving one
item at a time, one four) on the secured ensemble of (S1); the original
procedure on the queue (see above). Two workers of one client, sharing its
session, race for one item while the reply of the first reserve
transaction is lost with the second in flight behind it: exactly one gets
the item
(`test_a_lost_reserve_answer_never_claims_a_sibling_workers_item`).\
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
    candidate (the default) with the scenarios' grace and interval (the
    grace at least the session timeout); with ``cleaners=False``, none is."""
    options.setdefault("session_timeout", SESSION_TIMEOUT)
    grace = max(CLEANER_GRACE, options["session_timeout"])
    standing = {"cleaner_grace": grace, "cleaner_interval": CLEANER_INTERVAL}
    if not cleaners:
        standing = {"cleaner": False}
    options["client_options"] = {**standing, **options.get("client_options", {})}
    wl = Workload(
        hosts or cluster.hosts,
        root,
        log=ClusterLog.of(cluster),
        purge_grace=grace if cleaners else None,
        **options,
    )
    for _ in range(subscribers):
        wl.add_subscriber()
    for _ in range(publishers):
        wl.add_publisher()
    return wl, wl.cleaners()


class Finished(NamedTuple):
    """A finished scenario: the check, the audit, and the records it judged."""

    result: CheckResult
    audit: Audit | None
    history: History
    ledger: Ledger


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
) -> Finished:
    """Stop publishing, heal, drain, check against the servers' logs and
    audit; record the figures. Asserts nothing: the scenario states what
    must hold."""
    wl.stop_publishing()
    injector.heal()
    injector.wait_healthy()
    wl.drain(drain_timeout)
    history, ledger = wl.history(), wl.ledger()
    result = check(history, ledger, total_order=total_order, purge_grace=wl.purge_grace)
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
    return Finished(result, audit, history, ledger)


def assert_clean(
    done: Finished,
    *,
    duplicates_allowed: bool = False,
    unknown_at_most: int = 0,
    failed_at_most: int = 0,
    excused_at_most: int = 0,
) -> None:
    """Everything the checker forbids is zero, and what it tolerates is
    bounded: publishes of unknown outcome and refused ones (each scenario
    says how many it can cause; by default none), and the pairs excused
    because a subscription was not registered (by default none: a
    subscriber whose session survived is never excused anything)."""
    result, audit = done.result, done.audit
    assert result.acked > 0, result.describe()
    assert result.unknown <= unknown_at_most, result.describe()
    assert result.failed <= failed_at_most, result.describe()
    assert result.acked >= result.attempted - unknown_at_most - failed_at_most
    assert result.expected >= result.acked, result.describe()  # someone had to get each
    assert result.lost == 0, result.describe()
    assert result.unexpected == 0, result.describe()
    assert result.failed_written == 0, result.describe()
    assert result.unconfirmed == 0, result.describe()
    assert result.unreported == 0, result.describe()
    assert result.order_violations == 0, result.describe()
    assert result.order_conflicts == 0, result.describe()
    assert result.excused <= excused_at_most, result.describe()
    if not duplicates_allowed:
        assert result.duplicates == 0, result.describe()
    if audit is not None:
        assert audit.ok, audit.describe()


def publish_rate(history: History) -> float:
    """Acknowledged publishes per second over the publishing span."""
    acked = [p for p in history.publishes if p.outcome == "ok"]
    if len(acked) < 2:
        return 0.0
    span = max(p.ended for p in acked) - min(p.started for p in acked)
    return len(acked) / span if span > 0 else 0.0


def excuse_bound(history: History, seconds: float, slack: float = 2.0) -> int:
    """At most how many pairs a subscription unregistered for ``seconds``
    in all (its outages) may be excused: the publish rate times the outage
    plus ``slack`` (to notice the expiry and register again)."""
    return math.ceil(publish_rate(history) * (seconds + slack))


def longest_ack_gap(history: History) -> float:
    """The longest time between two consecutive acknowledgements: how long
    publishing stalled, as the publishers saw it."""
    ends = sorted(p.ended for p in history.publishes if p.outcome == "ok")
    return max((b - a for a, b in itertools.pairwise(ends)), default=0.0)


def leader_changes(ledger: Ledger) -> int:
    """Leader changes the servers' logs show: each new leader commits under
    a new epoch."""
    return max(0, len(ledger.epochs) - 1)


def log_sprung(injector: FaultInjector, proxies: Sequence[ZkClientProxy]) -> int:
    """Enter the traps that sprang on ``proxies`` into the injector's log
    (they are faults too); returns how many."""
    what = {"request": "request lost", "reply": "reply lost", "duplicate": "reply sent twice"}
    count = 0
    for proxy in proxies:
        for when, op in proxy.sprung:
            injector.log.add(f"trap: {what[when]} (op {op}) on {proxy.name}")
            count += 1
    return count
