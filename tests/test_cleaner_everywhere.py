"""Every client stands for the cleaner election by default; one leads, the
leader's grace applies, and a grace too short for the session timeout is
refused. The election stays single-headed at the end of its counter."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from kazoo.client import KazooClient

from zkpubsub import Client, ClientConfig
from zkpubsub._candidates import candidate_settings, read_candidate
from zkpubsub.cli import main
from zkpubsub.layout import Layout, order_candidates, parse_candidate_node
from zkpubsub.testing import COUNTER_MAX, ZooKeeperCluster, restart_with_cversions

from .helpers import local_servers_only, raw_kazoo, reconnected, wait_until

MakeClient = Callable[..., Client]


def leaders(clients: list[Client]) -> list[Client]:
    return [c for c in clients if c.cleaner is not None and c.cleaner.is_leader]


def test_every_client_stands_and_exactly_one_leads(make_client: MakeClient) -> None:
    clients = [make_client() for _ in range(3)]
    quiet = make_client(cleaner=False)
    assert quiet.cleaner is None
    wait_until(lambda: len(leaders(clients)) == 1, what="a leader")
    assert leaders(clients)[0] is clients[0]  # the first to join
    # each client's cleaner joins on its own thread, maybe after the first leads
    wait_until(lambda: quiet.stats().cleaner_candidates >= 3, 20, "every client standing")
    assert quiet.stats().cleaner_candidates == 3
    clients[0].close()
    wait_until(lambda: leaders(clients[1:]) == [clients[1]], what="the next in line leads")
    assert quiet.stats().cleaner_candidates == 2


def test_a_gone_clients_queue_is_removed_without_anyone_starting_a_cleaner(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    options = {"session_timeout": 2.0, "cleaner_grace": 2.0, "cleaner_interval": 0.5}
    stays = make_client(**options)
    gone = make_client(client_id="gone", **options)
    gone.subscribe("t")
    stays.publish("t", "left behind")
    gone.close()
    layout = Layout(zk_root)
    wait_until(lambda: raw_zk.exists(layout.client_messages("gone")) is None, 20, "queue removed")
    cleaner = stays.cleaner
    assert cleaner is not None
    # the count follows the client's last node, removed after its queues
    wait_until(lambda: cleaner.stats().clients_removed >= 1, 10, "the removal counted")
    assert cleaner.stats().clients_removed == 1


def test_a_grace_shorter_than_the_session_timeout_is_refused(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    with pytest.raises(ValueError, match="shorter than the session timeout"):
        ClientConfig(session_timeout=10.0, cleaner_grace=5.0)
    with pytest.raises(ValueError, match="shorter than the session timeout"):
        make_client(session_timeout=10.0, cleaner_grace=5.0)
    client = make_client(session_timeout=4.0)
    with pytest.raises(ValueError, match="shorter than the session timeout"):
        client.start_cleaner(grace=3.0)
    # NaN passed every comparison: the leader never removed a queue, and
    # wrote {"grace": NaN} into its election node; an infinite or huge
    # interval broke each sweep's wait (OverflowError)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite number of seconds"):
            client.start_cleaner(grace=bad)
        with pytest.raises(ValueError, match="finite number of seconds"):
            ClientConfig(cleaner_grace=bad)
    for bad in (math.nan, math.inf, 1e300, 0):
        with pytest.raises(ValueError, match="interval must be a number of seconds above 0"):
            client.start_cleaner(interval=bad)
        with pytest.raises(ValueError, match="cleaner_interval must be"):
            ClientConfig(cleaner_interval=bad)
    hosted = client.cleaner
    assert hosted is not None and hosted.interval == 30.0  # the refused ones changed nothing
    assert ClientConfig(session_timeout=10.0).grace == 60.0
    assert ClientConfig(session_timeout=40.0).grace == 80.0
    result = CliRunner().invoke(
        main,
        ["--hosts", zk_hosts, "--root", zk_root, "--session-timeout", "10", "cleaner",
         "--grace", "5"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "shorter than the session timeout" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_candidates_write_their_grace_and_the_leaders_applies(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="zkpubsub.cleaner")
    leader = make_client(cleaner_grace=4.0)
    assert leader.cleaner is not None and leader.cleaner.wait_leader(20)
    standby = make_client(cleaner_grace=30.0)
    layout = Layout(zk_root)

    def records() -> set[tuple[str, float | None]]:
        return {
            read_candidate(raw_zk.get(f"{layout.candidates}/{name}")[0])
            for name in raw_zk.get_children(layout.candidates)
        }

    wait_until(lambda: len(records()) == 2, what="the standby's candidacy")
    assert records() == {(leader.client_id, 4.0), (standby.client_id, 30.0)}
    cleaner = standby.cleaner
    assert cleaner is not None
    wait_until(lambda: cleaner.effective_grace == 4.0, what="the leader's grace read")
    assert cleaner.grace == 30.0 and not cleaner.is_leader

    def grace_warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "differs from the leader's" in r.getMessage()]

    # the standby warns after it stored the leader's grace: wait for the record too
    wait_until(grace_warnings, 20, "the warning about the leader's grace")
    warnings = grace_warnings()
    assert len(warnings) == 1 and leader.client_id in warnings[0].getMessage()
    # A changed grace is written into the election node; the place is kept.
    assert standby.start_cleaner(grace=8.0) is cleaner
    assert (standby.client_id, 8.0) in records()
    assert leader.cleaner.is_leader


def test_a_standby_whose_ttls_differ_from_the_leaders_says_so_once_for_each(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader's result and notice TTLs apply, as its grace does; a
    standby with other TTLs said nothing (its election node named only its
    grace)."""
    caplog.set_level(logging.WARNING, logger="zkpubsub.cleaner")
    leader = make_client()
    assert leader.cleaner is not None and leader.cleaner.wait_leader(20)
    standby = make_client(cleaner=False)
    cleaner = standby.start_cleaner(result_ttl=120.0, notice_ttl=600.0)
    layout = Layout(zk_root)

    def settings() -> dict[str, dict[str, float]]:
        nodes = [
            raw_zk.get(f"{layout.candidates}/{n}")[0]
            for n in raw_zk.get_children(layout.candidates)
        ]
        return {read_candidate(data)[0]: candidate_settings(data) for data in nodes}

    def said() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if "differs from the leader's" in r.getMessage()
        ]

    wait_until(lambda: len(said()) == 2, 20, "a warning for each TTL")
    messages = sorted(said())
    assert "its notice TTL of 600s" in messages[0] and "604800s applies" in messages[0]
    assert "its result TTL of 120s" in messages[1] and "3600s applies" in messages[1]
    assert all(leader.client_id in m for m in messages)
    grace = leader.cleaner.grace
    assert settings() == {
        leader.client_id: {"grace": grace, "result_ttl": 3600.0, "notice_ttl": 604800.0},
        standby.client_id: {"grace": grace, "result_ttl": 120.0, "notice_ttl": 600.0},
    }
    # a changed TTL is written into the election node, as a changed grace is
    assert standby.start_cleaner(notice_ttl=900.0) is cleaner
    assert settings()[standby.client_id]["notice_ttl"] == 900.0
    assert leader.cleaner.is_leader and len(said()) == 2


@local_servers_only
def test_one_leader_when_the_election_counter_is_saturated(
    make_cluster: Callable[..., ZooKeeperCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past 2**31 - 1 every candidate gets the same number and they sort by
    name: a newcomer may sort before the leader, which then steps down.
    Here every newcomer does (their guids go down)."""
    guids = (f"{n:012x}" for n in range(0xFFFF, 0, -1))
    monkeypatch.setattr("zkpubsub.cleaner.new_guid", lambda: next(guids))
    zk = make_cluster(1)
    root = "/saturated"
    layout = Layout(root)
    raw = raw_kazoo(zk.hosts)
    clients: list[Client] = []
    try:
        raw.ensure_path(layout.candidates)
        restart_with_cversions(zk, {layout.candidates: COUNTER_MAX})
        reconnected(raw)
        options = {"root": root, "session_timeout": 4.0, "cleaner_interval": 0.2}
        for _ in range(4):
            clients.append(Client(zk.hosts, **options))
            wait_until(lambda: leaders(clients) == [clients[-1]], 30, "the newcomer leads")
        names = raw.get_children(layout.candidates)
        assert {parse_candidate_node(n)[1] for n in names} == {COUNTER_MAX}  # type: ignore[index]

        def lowest() -> str:
            first = order_candidates(raw.get_children(layout.candidates))[0]
            return read_candidate(raw.get(f"{layout.candidates}/{first}")[0])[0]

        def settled() -> bool:
            heads = leaders(clients)
            return len(heads) == 1 and heads[0].client_id == lowest()

        wait_until(settled, 30, "one leader, the lowest candidate")
        until = time.monotonic() + 2.0
        while time.monotonic() < until:  # and it stays so
            assert len(leaders(clients)) <= 1
            time.sleep(0.05)
        head = leaders(clients)[0]
        head.close()
        clients.remove(head)
        wait_until(settled, 30, "the next one leads")
    finally:
        for client in clients:
            client.close()
        raw.stop()
        raw.close()
