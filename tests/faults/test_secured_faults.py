"""Short fault scenarios once more, on a secured ensemble.

The servers enforce authentication (``enforce.auth.enabled``) and every
client uses credentials with the default secured ACL policy, so every node
carries an ACL and every request is checked against it: the leader killed
during a publish burst, subscribers' sessions ended on the server again and
again, and the leader killed under a work queue. The history checks and
audits are those of the open scenarios; the audit reads the tree as the
ZooKeeper superuser.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest
from kazoo.client import KazooClient

from zkpubsub import Cleaner
from zkpubsub.layout import Layout
from zkpubsub.testing import expire_session
from zkpubsub.testing.audit import look
from zkpubsub.testing.checker import check
from zkpubsub.testing.faults import FaultInjector
from zkpubsub.testing.queue_checker import check_queue_against, look_at_queue
from zkpubsub.testing.secure import ServerSecurity, user_auth

from .scenarios import (
    CLEANER_GRACE,
    SESSION_TIMEOUT,
    Finished,
    ScenarioRecorder,
    assert_clean,
    excuse_bound,
    pubsub_workload,
)
from .test_queue_faults import QueueFinished, assert_queue_clean, queue_workload

pytestmark = pytest.mark.local_zk

SECURITY = ServerSecurity(enforce_auth=True, enforce_schemes=("digest",))
SUPER = [("digest", "super:super-secret")]
OPTIONS: dict[str, Any] = {"auth": user_auth("app")}

A = TypeVar("A")


def audited(hosts: str, look_once: Callable[[KazooClient], A], timeout: float) -> A:
    """Look at the tree as the superuser until the look is ``ok``."""
    zk = KazooClient(hosts=hosts, timeout=10.0, auth_data=SUPER)
    zk.start(timeout=30)
    try:
        deadline = time.monotonic() + timeout
        while True:
            result = look_once(zk)
            if result.ok or time.monotonic() > deadline:  # type: ignore[attr-defined]
                return result
            time.sleep(0.25)
    finally:
        zk.stop()
        zk.close()


def finish_secured(
    name: str,
    wl: Any,
    injector: FaultInjector,
    scenario: ScenarioRecorder,
    cleaners: Sequence[Cleaner],
) -> Finished:
    """:func:`~.scenarios.finish`, with the audit reading the tree as the
    superuser (nobody else may read every node)."""
    wl.stop_publishing()
    injector.heal()
    injector.wait_healthy()
    wl.drain(90.0)
    history, ledger = wl.history(), wl.ledger()
    result = check(history, ledger, total_order=True, purge_grace=wl.purge_grace)
    layout = Layout(wl.root)
    running = list({id(c): c for c in [*cleaners, *wl.cleaners()]}.values())

    def sweep_and_look(zk: KazooClient) -> Any:
        for cleaner in running:
            if cleaner.is_leader:
                cleaner.sweep_now()
        return look(zk, layout, running)

    audit = audited(injector.cluster.hosts, sweep_and_look, 3 * CLEANER_GRACE + 30)
    scenario.record(
        name,
        result,
        faults=len(injector.log.events()),
        audit=audit,
        notes=wl.recorder.history().notes,
    )
    return Finished(result, audit, history, ledger)


def test_s1_secured_leader_kill_nine_three_times_during_a_publish_burst(ensemble, scenario):
    ens = ensemble(3, security=SECURITY)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/sec1", client_options=OPTIONS)
    try:
        wl.start_publishing()
        wl.wait_acked(50)
        killed = injector.bounce_leader(3, down_for=0.5, between=1.0)
        wl.wait_acked(50)
        done = finish_secured("S1 secured: leader kill -9 x3", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert len(killed) == 3
    assert_clean(done)


def test_s8a_secured_subscribers_sessions_ended_on_the_server(ensemble, scenario):
    ens = ensemble(3, security=SECURITY)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/sec8a", client_options=OPTIONS)
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        names = list(wl.subscribers)
        for name in names:
            expire_session(wl.subscribers[name])
            injector.log.add(f"expire session of {name}")
            wl.wait_acked(10)
        wl.wait_acked(20)
        done = finish_secured(
            "S8a secured: subscriber session expiry x3", wl, injector, scenario, cleaners
        )
    finally:
        wl.close()
    assert all(s.gaps for s in done.history.subscribers)
    # only what was published while a subscription was gone is excused
    assert_clean(done, excused_at_most=excuse_bound(done.history, 0.0, slack=len(names) * 1.0))


def test_sq1_secured_leader_kill_nine_under_a_work_queue(ensemble, scenario):
    ens = ensemble(3, security=SECURITY)
    injector = FaultInjector(ens.cluster)
    wl = queue_workload(ens.cluster, "/secq1")
    wl.client_options = dict(OPTIONS)
    try:
        wl.add_producer()
        for prefetch in (1, 4):
            wl.add_worker(prefetch=prefetch)
        wl.start_producing()
        wl.wait_acks(60)
        killed = injector.bounce_leader(2, down_for=0.5, between=1.0)
        wl.wait_acks(60)
        wl.stop_producing()
        injector.heal()
        injector.wait_healthy()
        wl.drain(90.0)
        audit = audited(
            ens.cluster.hosts,
            lambda zk: look_at_queue(zk, wl.root, wl.queue),
            3 * SESSION_TIMEOUT + 10,
        )
        wl.stop_workers()
        history, ledger = wl.history(), wl.ledger()
        result = check_queue_against(history, ledger)
        scenario.record(
            "SQ1 secured: leader kill -9 x2, 2 workers",
            result,
            faults=len(injector.log.events()),
            audit=audit,
            notes=history.notes,
        )
    finally:
        wl.close()
    assert len(killed) == 2
    assert_queue_clean(QueueFinished(result, audit, history, ledger))
