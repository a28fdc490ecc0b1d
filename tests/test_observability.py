"""Metrics, health and logging as an operator meets them, against real
servers: every metric moves when its event happens, and a ZooKeeper
outage is "degraded" (live, ready), never "dead"."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from zkpubsub import (
    Client,
    ClientClosed,
    ClientState,
    Message,
    OperationTimeout,
    PublishTimeout,
    ReservationLost,
)
from zkpubsub.health import check
from zkpubsub.metrics import SCRAPE_READS_BUDGET, ClientMetrics
from zkpubsub.testing import ZooKeeperCluster, expire_session
from zkpubsub.testing.proxy import TcpProxy

from .helpers import Collector, wait_until

MakeClient = Callable[..., Client]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_publishes_deliveries_and_their_latency_are_counted(make_client: MakeClient) -> None:
    sub_registry, pub_registry = CollectorRegistry(), CollectorRegistry()
    subscriber = make_client()
    ClientMetrics(subscriber, registry=sub_registry)
    collector = Collector()
    subscriber.subscribe("t", collector)
    publisher = make_client()
    ClientMetrics(publisher, registry=pub_registry)
    publisher.publish("t", 1)
    publisher.publish_many("t", [2, 3])
    collector.wait(3)
    # a publish is counted after its caller was woken, so after publish() returned
    wait_until(
        lambda: (
            (sample(pub_registry, "zkpubsub_publish_duration_seconds_count", topic="t") or 0) >= 2
        ),
        20,
        "both publishes counted",
    )
    assert sample(pub_registry, "zkpubsub_publishes_total", topic="t", outcome="ok") == 3
    assert sample(pub_registry, "zkpubsub_publish_duration_seconds_count", topic="t") == 2
    assert sample(pub_registry, "zkpubsub_publishes_pending") == 0
    wait_until(lambda: sample(sub_registry, "zkpubsub_deliveries_total", topic="t") == 3)
    # the lag of a delivery is observed just after the delivery is counted
    wait_until(
        lambda: (sample(sub_registry, "zkpubsub_delivery_lag_seconds_count", topic="t") or 0) >= 3,
        20,
        "every delivery's lag observed",
    )
    assert sample(sub_registry, "zkpubsub_delivery_lag_seconds_count", topic="t") == 3
    assert sample(sub_registry, "zkpubsub_subscription_pending", topic="t") == 0
    backlog = sample(sub_registry, "zkpubsub_subscription_backlog", topic="t")
    assert backlog is not None and backlog >= 0
    assert sample(sub_registry, "zkpubsub_session_state", state="connected") == 1
    assert sample(sub_registry, "zkpubsub_session_state", state="suspended") == 0
    assert b"zkpubsub_delivery_lag_seconds_bucket" in generate_latest(sub_registry)


def test_handler_errors_drops_and_gaps_are_counted(make_client: MakeClient) -> None:
    registry = CollectorRegistry()
    client = make_client()
    ClientMetrics(client, registry=registry)

    def failing(message: Message) -> None:
        raise RuntimeError("broken handler")

    options: dict[str, Any] = dict(max_attempts=2, retry_delay=0.01, on_error=lambda e, m: None)
    sub = client.subscribe("bad", failing, **options)
    publisher = make_client()
    publisher.publish("bad", "x")
    wait_until(lambda: sample(registry, "zkpubsub_messages_dropped_total", topic="bad") == 1)
    assert sample(registry, "zkpubsub_handler_errors_total", topic="bad") == 2
    # counters outlive the subscription that counted (they went missing,
    # and came back from 0: a reset to Prometheus)
    sub.close()
    assert sample(registry, "zkpubsub_messages_dropped_total", topic="bad") == 1
    assert sample(registry, "zkpubsub_handler_errors_total", topic="bad") == 2
    client.subscribe("bad", failing, **options)
    publisher.publish("bad", "y")
    wait_until(lambda: sample(registry, "zkpubsub_messages_dropped_total", topic="bad") == 2)
    assert sample(registry, "zkpubsub_handler_errors_total", topic="bad") == 4
    assert sample(registry, "zkpubsub_gaps_total", reason="session expired") == 0
    expire_session(client)
    wait_until(lambda: sample(registry, "zkpubsub_gaps_total", reason="session expired") == 1)


def test_work_queue_depth_lost_reservations_and_the_cleaner_are_reported(
    make_client: MakeClient,
) -> None:
    registry = CollectorRegistry()
    client = make_client(cleaner=False)  # no candidate until start_cleaner
    metrics = ClientMetrics(client, registry=registry, queues=["jobs"])
    queue = client.queue("jobs")
    queue.put_many(["a", "b", "c"])
    item = queue.reserve(timeout=20)
    assert item is not None
    assert sample(registry, "zkpubsub_work_queue_items", queue="jobs", state="ready") == 2
    assert sample(registry, "zkpubsub_work_queue_items", queue="jobs", state="reserved") == 1
    assert sample(registry, "zkpubsub_work_queue_workers", queue="jobs") == 1
    expire_session(client)  # the reservation goes with the session
    with pytest.raises(ReservationLost):
        item.ack()
    assert sample(registry, "zkpubsub_reservations_lost_total", queue="jobs") == 1
    assert sample(registry, "zkpubsub_cleaner_leader") == 0
    cleaner = client.start_cleaner(grace=60)
    assert cleaner.wait_leader(30)
    wait_until(lambda: sample(registry, "zkpubsub_cleaner_leader") == 1)
    metrics.close()
    assert sample(registry, "zkpubsub_cleaner_leader") is None


def test_an_outage_is_degraded_live_and_ready_and_only_a_closed_client_is_dead(
    make_cluster: Callable[..., ZooKeeperCluster], zk_root: str
) -> None:
    cluster = make_cluster(1)
    client = Client(cluster.hosts, root=zk_root, session_timeout=4.0)
    try:
        health = check(client)
        assert (health.status, health.liveness_code, health.readiness_code) == ("ok", 200, 200)
        (node,) = cluster.nodes
        node.stop()
        wait_until(lambda: client.status == ClientState.SUSPENDED, 30, "SUSPENDED")
        health = check(client)
        assert (health.status, health.live, health.ready) == ("degraded", True, True)
        assert (health.liveness_code, health.readiness_code) == (200, 200)
        assert check(client, ready_when_degraded=False).readiness_code == 503
        assert health.as_dict()["state"] == "suspended"
        node.start()
        cluster.wait_serving()
        wait_until(lambda: check(client).status == "ok", 30, "ok again")
    finally:
        client.close()
    health = check(client)
    assert (health.status, health.liveness_code, health.readiness_code) == ("dead", 503, 503)


def test_a_client_that_cannot_register_on_its_new_session_turns_dead(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a client whose registration on a new session failed for good
    (its id taken, its rights withdrawn) stayed LOST, "degraded", live and
    ready, for ever: never restarted, never registered."""
    import zkpubsub.session as session_module
    from zkpubsub.errors import NotAuthorized

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise NotAuthorized("as if its rights were withdrawn")

    client = make_client()
    client.subscribe("t", lambda message: None)
    creds = client._session_credentials()
    assert creds is not None
    monkeypatch.setattr(session_module, "check_purge", refused)
    expire_session(creds, client.config.hosts)
    wait_until(lambda: client._session.registration_failing() is not None, 20, "failing")
    assert check(client, dead_after=60.0).status == "degraded"  # not for long yet
    wait_until(lambda: check(client, dead_after=1.0).status == "dead", 10, "dead")
    health = check(client, dead_after=1.0)
    assert (health.status, health.live, health.ready) == ("dead", False, False)
    assert "NotAuthorized" in health.reason and "rights were withdrawn" in health.reason
    assert check(client).status == "degraded"  # a minute by default
    with pytest.raises(ValueError, match="dead_after"):
        check(client, dead_after=0)
    monkeypatch.undo()  # registering works again: ok, without a restart
    wait_until(lambda: check(client, dead_after=1.0).status == "ok", 20, "registered")


def test_an_outage_while_registering_again_does_not_count_as_failing(
    make_client: MakeClient, zk_hosts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only failing while connected counts: a registration cut short by an
    outage, then an outage longer than ``dead_after``, made the next
    (connected, slow, successful) try look dead from its first moment."""
    import zkpubsub.session as session_module
    from zkpubsub.errors import NotAuthorized

    real = session_module.check_purge
    calls: list[float] = []
    seen: list[str] = []
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="failing-then-outage") as proxy:
        client = make_client(hosts=proxy.address, session_timeout=6.0)

        def cut_then_slow(*args: Any, **kwargs: Any) -> Any:
            calls.append(time.monotonic())
            if len(calls) == 1:
                proxy.block("reset")  # the connection goes while it registers
                raise NotAuthorized("one failure, as the connection went")
            until = time.monotonic() + 1.5  # the next try, connected: slow but fine
            while time.monotonic() < until:
                seen.append(check(client, dead_after=1.0).status)
                time.sleep(0.05)
            return real(*args, **kwargs)

        client.subscribe("t", lambda message: None)
        monkeypatch.setattr(session_module, "check_purge", cut_then_slow)
        expire_session(client, zk_hosts, wait=False)
        wait_until(lambda: len(calls) == 1, 20, "the first try")
        time.sleep(2.5)  # an outage longer than dead_after
        assert check(client, dead_after=1.0).status == "degraded"
        proxy.unblock()
        wait_until(lambda: client.status is ClientState.CONNECTED, 30, "registered")
    assert len(calls) >= 2 and seen
    assert "dead" not in seen, seen


def test_backlogs_stay_in_the_scrape_as_last_read_while_the_client_is_cut_off(
    make_cluster: Callable[..., ZooKeeperCluster], zk_root: str
) -> None:
    """While the client was not connected the backlog series were left
    out, though the module says one read stays in every scrape."""
    cluster = make_cluster(1)
    client = Client(cluster.hosts, root=zk_root, session_timeout=30.0)
    registry = CollectorRegistry()
    try:
        client.subscribe("kept")
        client.publish("kept", 1)  # not taken: it stays in the queue
        ClientMetrics(client, registry=registry)
        assert sample(registry, "zkpubsub_subscription_backlog", topic="kept") == 1
        (node,) = cluster.nodes
        node.stop()
        wait_until(lambda: client.status == ClientState.SUSPENDED, 30, "SUSPENDED")
        assert sample(registry, "zkpubsub_subscription_backlog", topic="kept") == 1
        node.start()
        cluster.wait_serving()
    finally:
        client.close()


def test_metrics_on_a_closed_client_are_refused_and_leave_the_registry_free(
    make_client: MakeClient,
) -> None:
    """The refusal came after the registration: the registry then refused
    every later ClientMetrics (its names were taken)."""
    closed = make_client()
    closed.close()
    registry = CollectorRegistry()
    with pytest.raises(ClientClosed):
        ClientMetrics(closed, registry=registry)
    ClientMetrics(make_client(), registry=registry)
    assert b"zkpubsub_session_state" in generate_latest(registry)


def test_the_library_logs_through_a_null_handler_under_documented_names() -> None:
    ours = logging.getLogger("zkpubsub")
    assert any(isinstance(h, logging.NullHandler) for h in ours.handlers)
    for name in ("zkpubsub.client", "zkpubsub.session", "zkpubsub.subscription", "zkpubsub.aio"):
        assert logging.getLogger(name).parent is not None


def _held(lock: Any) -> bool:
    """Whether another thread holds ``lock``."""
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


def test_slow_backlog_reads_leave_the_work_queues_their_share_of_a_scrape(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backlogs were read first, with the whole budget: while they took
    it (many subscriptions, a slow server) no work queue was ever reported."""
    client = make_client()
    client.queue("jobs").put("x")
    sub = client.subscribe("slow")

    def slow_backlog(timeout: float | None = None) -> int:
        time.sleep(SCRAPE_READS_BUDGET if timeout is None else timeout)
        raise OperationTimeout("as a server too slow to answer in time")

    monkeypatch.setattr(sub, "backlog", slow_backlog)
    registry = CollectorRegistry()
    ClientMetrics(client, registry=registry, queues=["jobs"])
    assert sample(registry, "zkpubsub_work_queue_items", queue="jobs", state="ready") == 1


def test_a_scrape_spends_a_bounded_time_on_a_server_that_stopped_answering(
    make_cluster: Callable[..., ZooKeeperCluster], zk_root: str
) -> None:
    cluster = make_cluster(1)
    client = Client(cluster.hosts, root=zk_root, session_timeout=30.0)
    registry = CollectorRegistry()
    try:
        for topic in ("a", "b", "c"):
            client.subscribe(topic)
        ClientMetrics(client, registry=registry, queues=["jobs", "other"])
        assert sample(registry, "zkpubsub_subscription_backlog", topic="a") == 0
        (node,) = cluster.nodes
        node.pause()  # frozen: the client still thinks it is connected
        subscribing = threading.Thread(target=lambda: client.subscribe("d"), daemon=True)
        try:
            assert client.status == ClientState.CONNECTED
            # a subscribe waiting for the server holds the registrations'
            # lock: the scrape waited for it (the request timeout) before
            subscribing.start()
            wait_until(lambda: _held(client._subs.lock), 10, "the subscribe holding the lock")
            start = time.monotonic()
            text = generate_latest(registry).decode()
            took = time.monotonic() - start
        finally:
            node.resume()
        subscribing.join(30)
        # four reads would each have waited the request timeout (30 s)
        assert took < SCRAPE_READS_BUDGET + 5, took
        assert 'zkpubsub_session_state{state="connected"} 1.0' in text
        assert 'zkpubsub_subscription_pending{topic="c"}' in text
    finally:
        client.close()


def test_scrapes_out_of_time_read_the_backlogs_in_turn_and_keep_those_read(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each scrape read the backlogs from the first subscription on until its
    budget ran out: past what one budget reads (about 2,000 subscriptions)
    the same later topics never had a backlog series. Here a budget reads
    two per scrape."""
    from zkpubsub import metrics

    reads: dict[float, int] = {}

    def two_per_scrape(deadline: float | None) -> bool:  # a scrape's deadline is its own
        assert deadline is not None
        reads[deadline] = reads.get(deadline, 0) + 1
        return reads[deadline] > 2

    client = make_client()
    topics = [f"t{n}" for n in range(5)]
    for topic in topics:
        client.subscribe(topic)
    registry = CollectorRegistry()
    ClientMetrics(client, registry=registry)
    monkeypatch.setattr(metrics, "expired", two_per_scrape)

    def scraped() -> dict[str, float]:
        return {
            s.labels["topic"]: s.value
            for family in registry.collect()
            if family.name == "zkpubsub_subscription_backlog"
            for s in family.samples
        }

    assert list(scraped()) == topics[:2]
    assert list(scraped()) == topics[:4]
    assert list(scraped()) == topics  # t4 and t0 read, the others as last read
    client.publish("t4", "one")  # not taken: it stays in the queue
    assert scraped()["t4"] == 0  # t1 and t2 read
    assert scraped()["t4"] == 1  # t3 and t4 read


def test_queue_names_given_to_the_metrics_are_checked_up_front(make_client: MakeClient) -> None:
    client = make_client()
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="must not contain '/'"):
        ClientMetrics(client, registry=registry, queues=["a/b"])
    with pytest.raises(TypeError, match="not one str"):
        ClientMetrics(client, registry=registry, queues="jobs")
    metrics = ClientMetrics(client, registry=registry)
    with pytest.raises(ValueError, match="queue name"):
        metrics.watch_queue("")
    assert b"zkpubsub_session_state" in generate_latest(registry)  # scrapes still work


def test_a_second_metrics_object_on_one_registry_is_refused(make_client: MakeClient) -> None:
    """Before, it was taken silently: every series came twice, which a
    scrape in the OpenMetrics format refuses (``Clashing name``)."""
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    client = make_client()
    registry = CollectorRegistry()
    metrics = ClientMetrics(client, registry=registry)
    for again in (client, make_client()):
        with pytest.raises(ValueError, match="a registry takes one ClientMetrics"):
            ClientMetrics(again, registry=registry)
    client.publish("t", 1)  # counted once: the refused ones do not count
    assert sample(registry, "zkpubsub_publishes_total", topic="t", outcome="ok") == 1
    assert list(text_string_to_metric_families(openmetrics(registry).decode()))
    # what the registry checks is what a scrape gives
    assert {f.name for f in metrics.describe()} == {f.name for f in metrics.collect()}


def test_a_publish_refused_for_want_of_room_is_counted(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    """``PublishTimeout`` (``sent=False``) for a full ``max_pending`` was
    raised before the publish reached the counting: invisible back-pressure."""
    cluster = make_cluster(1)
    (node,) = cluster.nodes
    with Client(cluster.hosts, max_pending=1) as publisher:
        registry = CollectorRegistry()
        ClientMetrics(publisher, registry=registry)
        publisher.publish("t", "warm-up")
        node.pause()
        try:
            accepted = publisher.publish_async("t", 1, timeout=30)
            with pytest.raises(PublishTimeout):
                publisher.publish_async("t", 2, timeout=0.3)
            outcome = "PublishTimeout"
            assert sample(registry, "zkpubsub_publishes_total", topic="t", outcome=outcome) == 1
        finally:
            node.resume()
        accepted.result(30)
        assert sample(registry, "zkpubsub_publishes_total", topic="t", outcome="ok") == 2
