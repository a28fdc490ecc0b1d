"""The long soak: many messages while the leader is killed every few seconds.

Run it with::

    python -m tests.faults.soak                    # 10,000 messages, a kill every 5 s
    python -m tests.faults.soak --messages 50000 --max-minutes 30
    python -m tests.faults.soak --queue            # the work queue: 10,000 items
    python -m tests.faults.soak --report docs/reliability.md

or through pytest (``ZKPUBSUB_SOAK=1 pytest tests/faults -m soak``). It
starts its own ensemble on free ports of 127.0.0.1, runs publishers and
subscribers (with ``--queue``: producers and competing workers) against it
while a loop kills the current leader with SIGKILL (wiping the data
directory of every third victim) and starts it again, then heals, drains,
checks and audits. It stops publishing at the message count or at the time
bound, whichever comes first, and exits non-zero if an acknowledged
message was lost (or anything else the checker forbids).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zkpubsub.testing import ZooKeeperCluster
from zkpubsub.testing.audit import Audit, audit_convergence
from zkpubsub.testing.checker import CheckResult, check
from zkpubsub.testing.faults import FaultInjector, Nemesis
from zkpubsub.testing.ledger import Ledger
from zkpubsub.testing.queue_checker import (
    QueueAudit,
    QueueCheckResult,
    audit_queue,
    check_queue_against,
)
from zkpubsub.testing.queue_workload import QueueWorkload
from zkpubsub.testing.report import ScenarioResult, markdown_table, text_table, write_section
from zkpubsub.testing.txnlog import ClusterLog
from zkpubsub.testing.workload import Workload

from .scenarios import CLEANER_GRACE, CLEANER_INTERVAL, REPORT_PREAMBLE, SESSION_TIMEOUT

logger = logging.getLogger("zkpubsub.soak")


@dataclass(frozen=True)
class SoakResult:
    result: ScenarioResult
    check: CheckResult | QueueCheckResult
    audit: Audit | QueueAudit
    kills: int
    leader_changes: int  # new leader epochs in the servers' logs
    # the servers' own reports of a diverged data tree (ZooKeeper's, not a
    # failure of the run by themselves; see ``ZooKeeperEnsemble.digest_mismatches``)
    digest_mismatches: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        # A broadcast is never delivered twice while its subscriber lives; a
        # queue item may be, after its worker's session ended (at-least-once),
        # which the queue checker tells apart from a double hold. No session
        # of a subscriber is lost to leader kills: nothing may be excused.
        # The clients wait out every failover: no outcome may stay unknown.
        return not self.failures()

    def failures(self) -> list[str]:
        """What made the run fail, in words (nothing: it passed)."""
        out = []
        if not self.check.ok:
            out.append("the checker found violations (see the table)")
        if not self.audit.ok:
            out.append("the audit failed")
        if self.check.unknown or self.check.failed:
            out.append(f"{self.check.unknown} unknown and {self.check.failed} failed outcomes")
        if isinstance(self.check, CheckResult):
            if self.check.duplicates:
                out.append(f"{self.check.duplicates} duplicate deliveries")
            if self.check.excused:
                out.append(f"{self.check.excused} pairs excused")
        return out


def kill_leader_every(
    injector: FaultInjector, period: float, down_for: float, stop: threading.Event
) -> None:
    """Kill the leader at ``period``, ``2 * period``, ... seconds from now
    (a fixed clock: the time a restart takes does not stretch the period;
    a kill that is due while the previous victim is still starting comes as
    soon as it serves), and start it again ``down_for`` seconds later."""
    start = time.monotonic()
    n = 0
    while not stop.wait(max(0.0, start + (n + 1) * period - time.monotonic())):
        n += 1
        victim = injector.kill_leader(wipe=n % 3 == 0)
        stop.wait(down_for)
        injector.start(victim)


def kill_interval(injector: FaultInjector) -> float | None:
    """The mean time between two leader kills, as they happened."""
    times = [e.at for e in injector.log.events() if e.action == "kill -9"]
    if len(times) < 2:
        return None
    return (times[-1] - times[0]) / (len(times) - 1)


def _under_kills(
    injector: FaultInjector,
    *,
    kill_every: float,
    down_for: float,
    until: float,
    busy: Callable[[], bool],
    progress: Callable[[], str],
) -> None:
    """Kill the leader every ``kill_every`` seconds while ``busy()`` (and
    until the monotonic time ``until``), logging ``progress()`` now and then;
    then stop the nemesis."""
    nemesis = Nemesis(lambda stop: kill_leader_every(injector, kill_every, down_for, stop))
    nemesis.start()
    last_report = time.monotonic()
    try:
        while busy() and time.monotonic() < until:
            time.sleep(0.5)
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                logger.info("%s, %d leader kills so far", progress(), injector.log.count("kill -9"))
    finally:
        nemesis.stop()
        nemesis.join(120)


def _outcome(
    what: str,
    injector: FaultInjector,
    kill_every: float,
    started: float,
    check: CheckResult | QueueCheckResult,
    audit: Audit | QueueAudit,
    notes: dict[str, int],
    ledger: Ledger,
) -> SoakResult:
    kills = injector.log.count("kill -9")
    measured = kill_interval(injector)
    name = (
        f"{what}, leader kill -9 every {kill_every:g}s "
        f"({kills} kills, {injector.log.count('wipe data dir')} with wipe"
        + (f", one every {measured:.1f}s as measured" if measured else "")
        + ")"
    )
    entry = ScenarioResult(
        name=name,
        check=check,
        faults=len(injector.log.events()),
        seconds=time.monotonic() - started,
        audit_ok=audit.ok,
        notes=notes,
    )
    return SoakResult(
        entry,
        check,
        audit,
        kills,
        max(0, len(ledger.epochs) - 1),
        tuple(injector.cluster.digest_mismatches()),
    )


def run_soak(
    *,
    messages: int = 10_000,
    kill_every: float = 5.0,
    down_for: float = 1.0,
    max_minutes: float = 20.0,
    servers: int = 3,
    publishers: int = 2,
    subscribers: int = 3,
    base_dir: str | None = None,
) -> SoakResult:
    """Run the soak; bounded by ``max_minutes`` for the publishing phase
    (healing, draining and the audit add at most a few minutes more)."""
    started = time.monotonic()
    cluster = ZooKeeperCluster(servers, base_dir=base_dir)
    cluster.start()
    injector = FaultInjector(cluster)
    wl = Workload(
        cluster.hosts,
        "/soak",
        session_timeout=SESSION_TIMEOUT,
        max_messages=-(-messages // publishers),
        publish_timeout=30.0,
        log=ClusterLog.of(cluster),
        purge_grace=CLEANER_GRACE,
        client_options={"cleaner_grace": CLEANER_GRACE, "cleaner_interval": CLEANER_INTERVAL},
    )
    try:
        for _ in range(subscribers):
            wl.add_subscriber()
        for _ in range(publishers):
            wl.add_publisher()
        wl.start_publishing()
        _under_kills(
            injector,
            kill_every=kill_every,
            down_for=down_for,
            until=started + max_minutes * 60,
            busy=lambda: wl.publishing,
            progress=lambda: f"soak: {len(wl.recorder.history().publishes)} published",
        )
        wl.stop_publishing()
        injector.wait_healthy()
        wl.drain(180)
        ledger = wl.ledger()
        result = check(wl.history(), ledger, purge_grace=CLEANER_GRACE)
        audit = audit_convergence(
            cluster.hosts, wl.root, wl.cleaners(), timeout=3 * CLEANER_GRACE + 60
        )
        what = f"soak: {servers} servers"
        notes = wl.recorder.history().notes
        return _outcome(what, injector, kill_every, started, result, audit, notes, ledger)
    finally:
        wl.close()
        cluster.close()


def run_queue_soak(
    *,
    items: int = 10_000,
    kill_every: float = 5.0,
    down_for: float = 1.0,
    max_minutes: float = 20.0,
    servers: int = 3,
    producers: int = 2,
    workers: int = 4,
    base_dir: str | None = None,
) -> SoakResult:
    """The soak on the work queue: producers put, competing workers (half
    one item at a time, half four) reserve and ack, while the leader dies."""
    started = time.monotonic()
    cluster = ZooKeeperCluster(servers, base_dir=base_dir)
    cluster.start()
    injector = FaultInjector(cluster)
    wl = QueueWorkload(
        cluster.hosts,
        "/soak-queue",
        queue="soak",
        session_timeout=SESSION_TIMEOUT,
        max_items=-(-items // producers),
        put_timeout=30.0,
        log=ClusterLog.of(cluster),
    )
    try:
        for _ in range(producers):
            wl.add_producer()
        for n in range(workers):
            wl.add_worker(prefetch=1 if n % 2 == 0 else 4)
        wl.start_producing()
        _under_kills(
            injector,
            kill_every=kill_every,
            down_for=down_for,
            until=started + max_minutes * 60,
            busy=lambda: wl.producing,
            progress=lambda: f"queue soak: {wl.acked_puts()} put, {wl.acked_items()} acked",
        )
        wl.stop_producing()
        injector.wait_healthy()
        wl.drain(180)
        audit = audit_queue(cluster.hosts, wl.root, wl.queue, timeout=3 * SESSION_TIMEOUT + 60)
        wl.stop_workers()
        history = wl.history()
        what = f"queue soak: {servers} servers, {workers} workers"
        ledger = wl.ledger()
        result = check_queue_against(history, ledger)
        return _outcome(what, injector, kill_every, started, result, audit, history.notes, ledger)
    finally:
        wl.close()
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__)
    parser.add_argument(
        "--messages", type=int, default=10_000, help="messages to publish (items to put)"
    )
    parser.add_argument(
        "--queue", action="store_true", help="soak the work queue instead of the broadcast"
    )
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--down-for", type=float, default=1.0, help="seconds a victim stays down")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="bound on publishing")
    parser.add_argument("--servers", type=int, default=3, choices=(3, 5))
    parser.add_argument("--report", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    logger.setLevel(logging.INFO)
    if not args.verbose:  # every kill makes each client log a dropped connection
        logging.getLogger("kazoo").setLevel(logging.ERROR)
    run = run_queue_soak if args.queue else run_soak
    size = {"items": args.messages} if args.queue else {"messages": args.messages}
    outcome = run(  # type: ignore[operator]
        **size,
        kill_every=args.kill_every,
        down_for=args.down_for,
        max_minutes=args.max_minutes,
        servers=args.servers,
    )
    print(text_table([outcome.result]))
    print(outcome.check.describe())
    print(f"audit: {'ok' if outcome.audit.ok else 'FAILED'} ({outcome.audit.describe()})")
    if outcome.digest_mismatches:
        print("the servers reported their data trees diverged (digest mismatches):")
        for line in outcome.digest_mismatches:
            print(f"  {line}")
    if args.report:
        flag, who = (
            (" --queue", "2 producers, 4 workers")
            if args.queue
            else ("", "2 publishers, 3 subscribers")
        )
        body = (
            f"## {'Queue soak' if args.queue else 'Soak'}\n\n"
            f"Produced by `python -m tests.faults.soak{flag} --messages {args.messages} "
            f"--kill-every {args.kill_every:g} --report {args.report}` "
            f"({args.servers} servers, {who}, "
            f"on a machine with {os.cpu_count()} CPU cores).\n\n" + markdown_table([outcome.result])
        )
        if not outcome.ok:
            body += "\n\n**This run failed:** " + "; ".join(outcome.failures()) + "."
        section = "soak-queue" if args.queue else "soak"
        write_section(args.report, section, body, preamble=REPORT_PREAMBLE)
        print(f"written to {args.report}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
