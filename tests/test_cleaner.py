"""The elected cleaner on a real ZooKeeper."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kazoo.client import KazooClient

from zkpubsub import Client, Gap, receipts
from zkpubsub import cleaner as cleaner_module
from zkpubsub import session as session_module
from zkpubsub._purges import (
    MAX_PURGE_RECORD,
    purge_durable,
    purge_finished,
    purge_record,
    read_purge_record,
)
from zkpubsub._tree import Refused
from zkpubsub.errors import ConnectionLost
from zkpubsub.layout import Layout
from zkpubsub.testing import expire_session
from zkpubsub.testing.proxy import TcpProxy

from .helpers import Collector, wait_until
from .procs import Child

MakeClient = Callable[..., Client]


def queue_exists(raw: KazooClient, root: str, client_id: str, topic: str) -> bool:
    return raw.exists(Layout(root).queue(client_id, topic)) is not None


def test_a_dead_clients_queue_goes_after_the_grace_and_not_before(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    host = make_client(session_timeout=3.0)  # a grace is at least the session timeout
    live = make_client(client_id="live")
    live.subscribe("t")
    doomed = make_client(client_id="doomed")
    doomed.subscribe("t")
    host.publish_many("t", range(10))
    cleaner = host.start_cleaner(grace=3.0, interval=0.3)
    assert cleaner.wait_leader(20)
    doomed.close()  # its session ends: /clients/doomed is gone now
    gone_at = time.monotonic()
    time.sleep(1.5)
    assert queue_exists(raw_zk, zk_root, "doomed", "t"), "deleted within the grace"
    stats = wait_until(lambda: (s := cleaner.stats()).clients_removed and s, 20, "purge done")
    assert time.monotonic() - gone_at >= 3.0
    assert not queue_exists(raw_zk, zk_root, "doomed", "t")
    assert raw_zk.exists(Layout(zk_root).client_messages("doomed")) is None
    assert raw_zk.exists(Layout(zk_root).purge_marker("doomed")) is None
    assert stats.queues_removed == 1
    assert stats.nodes_removed == 1  # publish_many packed 10 messages in one node
    assert stats.clients_removed == 1
    time.sleep(1.0)  # several more sweeps
    assert queue_exists(raw_zk, zk_root, "live", "t"), "a live queue was deleted"
    assert raw_zk.exists(Layout(zk_root).queue(host.client_id, "t")) is None


def test_a_durable_subscriber_back_within_the_grace_keeps_its_backlog(
    make_client: MakeClient,
) -> None:
    """Its backlog, and what was published while it was away: a durable
    subscription stays registered while its client is gone."""
    host = make_client()
    cleaner = host.start_cleaner(grace=30.0, interval=0.2)
    assert cleaner.wait_leader(20)
    billing = make_client(client_id="billing-cache")
    billing.subscribe("invoices", durable=True).close()
    for i in range(5):
        host.publish("invoices", i)
    billing.close()
    for i in range(5, 10):  # while it is away
        assert host.publish("invoices", i).subscribers == 1
    before = cleaner.stats().sweeps
    wait_until(lambda: cleaner.stats().sweeps >= before + 3, 20, "several sweeps meanwhile")
    collector = Collector()
    make_client(client_id="billing-cache").subscribe("invoices", collector, durable=True)
    assert collector.wait(10) == list(range(10))
    assert cleaner.stats().queues_removed == 0


def test_a_plain_subscriber_back_within_the_grace_keeps_only_what_was_queued(
    make_client: MakeClient,
) -> None:
    host = make_client()
    cleaner = host.start_cleaner(grace=30.0, interval=0.2)
    assert cleaner.wait_leader(20)
    billing = make_client(client_id="billing-cache")
    billing.subscribe("invoices")
    for i in range(5):
        host.publish("invoices", i)
    billing.close()
    assert host.publish("invoices", 5).subscribers == 0  # not registered while away
    before = cleaner.stats().sweeps
    wait_until(lambda: cleaner.stats().sweeps >= before + 3, 20, "several sweeps meanwhile")
    collector = Collector()
    make_client(client_id="billing-cache").subscribe("invoices", collector)
    assert collector.wait(5) == [0, 1, 2, 3, 4]
    assert cleaner.stats().queues_removed == 0


def test_a_standby_takes_over_when_the_leaders_process_dies(
    make_client: MakeClient, zk_hosts: str, zk_root: str, raw_zk: KazooClient
) -> None:
    with Child(zk_hosts, zk_root, "first-cleaner", "cleaner") as child:
        child.expect("leader")
        standby_host = make_client(session_timeout=2.0)
        standby = standby_host.start_cleaner(grace=2.0, interval=0.3)
        time.sleep(1.0)
        assert not standby.is_leader
        # a client whose queue needs cleaning once someone leads
        orphan = make_client(client_id="orphan")
        orphan.subscribe("t")
        child.kill()
    orphan.close()
    assert standby.wait_leader(20), "the standby never took over"
    wait_until(lambda: not queue_exists(raw_zk, zk_root, "orphan", "t"), 20, "cleaning resumed")
    # The dead leader's election node went with its session: one candidate left.
    assert standby_host.stats().cleaner_candidates == 1


def test_exactly_one_of_several_candidates_leads(make_client: MakeClient) -> None:
    cleaners = [make_client().start_cleaner(grace=5.0, interval=0.3) for _ in range(3)]
    wait_until(lambda: any(c.is_leader for c in cleaners), what="a leader")
    time.sleep(0.5)
    assert sum(c.is_leader for c in cleaners) == 1
    leader = next(c for c in cleaners if c.is_leader)
    leader.stop()
    wait_until(lambda: sum(c.is_leader for c in cleaners) == 1, what="a new leader")
    assert not leader.is_leader


def test_a_big_queue_is_deleted_in_bounded_transactions(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """12,000 deletes would be ~1.3 MB in one transaction: over jute.maxbuffer."""
    layout = Layout(zk_root)
    queue = layout.queue("huge", "t")
    raw_zk.ensure_path(queue)
    total = 12_000
    for _ in range(total // 1000):
        txn = raw_zk.transaction()
        for _ in range(1000):
            txn.create(f"{queue}/m0123456789ab-", b"", sequence=True)
        assert not any(isinstance(r, Exception) for r in txn.commit())
    host = make_client(session_timeout=2.0)
    cleaner = host.start_cleaner(grace=2.0, interval=0.3)
    wait_until(lambda: cleaner.stats().clients_removed, 60, "huge removed")
    assert raw_zk.exists(layout.client_messages("huge")) is None
    assert cleaner.stats().nodes_removed == total


def test_the_cleaner_refuses_when_the_client_is_back(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """Its transactions prove the client's absence; they fail once it registers."""
    host = make_client()
    cleaner = host.start_cleaner(grace=3600.0, interval=60.0)
    assert cleaner.wait_leader(20)
    back = make_client(client_id="back")
    back.subscribe("t")
    host.publish("t", "keep me")
    me = cleaner._candidate
    assert me is not None
    cleaner._purge(me, "back")  # as if it had decided the client was gone
    assert queue_exists(raw_zk, zk_root, "back", "t")
    assert raw_zk.exists(Layout(zk_root).purge_marker("back")) is None
    assert cleaner.stats().queues_removed == 0


def test_a_leader_that_could_not_see_for_a_while_counts_the_grace_again(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, zk_hosts: str
) -> None:
    """A client came back and left again while the leader's connection was
    down: the leader went on counting its absence from before, and purged it
    (a grace early) as soon as it could see again."""
    address, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((address, int(port)), name="blinded") as proxy:
        host = make_client(hosts=proxy.address, session_timeout=3.0)
        cleaner = host.start_cleaner(grace=6.0, interval=0.3)
        assert cleaner.wait_leader(20)
        gone = make_client(client_id="gone", cleaner=False)
        gone.subscribe("t")
        gone.close()  # absent from now: the queue stays for the grace
        time.sleep(3.0)
        proxy.block("reset")  # the leader sees nothing for a while (its session stays)
        make_client(client_id="gone", cleaner=False).close()  # back, and away again
        time.sleep(1.0)
        proxy.unblock()
        wait_until(lambda: cleaner.is_leader, 20, "leading again")
        time.sleep(3.0)  # past the grace since the client first left
        assert queue_exists(raw_zk, zk_root, "gone", "t"), "deleted before a fresh grace"
        wait_until(lambda: cleaner.stats().clients_removed, 30, "purged after it")


def test_a_cleaner_that_lost_the_lead_deletes_nothing(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    host = make_client()
    cleaner = host.start_cleaner(grace=3600.0, interval=60.0)
    assert cleaner.wait_leader(20)
    gone = make_client(client_id="gone")
    gone.subscribe("t")
    gone.close()
    stale = Layout(zk_root).candidate_prefix("0123456789ab") + "0000000099"  # not ours
    with pytest.raises(Refused) as info:
        cleaner._purge(stale, "gone")
    assert info.value.reason == "fence"
    assert queue_exists(raw_zk, zk_root, "gone", "t")


def test_a_client_back_during_a_purge_hears_about_the_gap(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    client = make_client(client_id="returning")
    client.subscribe("t")
    gaps: list[Gap] = []
    client.add_gap_listener(gaps.append)
    # The cleaner had begun (its marker is there) when the client came back.
    raw_zk.create(Layout(zk_root).purge_marker("returning"), b"")
    expire_session(client)
    wait_until(lambda: any(g.reason == "backlog purged" for g in gaps), what="purge gap")
    purged = next(g for g in gaps if g.reason == "backlog purged")
    assert purged.topics == frozenset({"t"})
    assert raw_zk.exists(Layout(zk_root).purge_marker("returning")) is None


def test_a_purge_gap_is_told_though_registering_again_failed_once_after_reading_it(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client deletes the marker when it reads it: a registration that
    then failed, and was tried again, found none, and the gap was never told."""
    client = make_client(client_id="retrying")
    client.subscribe("t")
    gaps: list[Gap] = []
    client.add_gap_listener(gaps.append)
    raw_zk.create(Layout(zk_root).purge_marker("retrying"), purge_record(["t", "u"]))
    registering = session_module.register_subscription
    failed: list[str] = []

    def fails_once(*args: Any, **kwargs: Any) -> None:
        if not failed:
            failed.append("once")
            raise ConnectionLost("as if the connection dropped here")
        registering(*args, **kwargs)

    monkeypatch.setattr(session_module, "register_subscription", fails_once)
    expire_session(client)
    wait_until(lambda: any(g.reason == "backlog purged" for g in gaps), 30, what="purge gap")
    assert failed == ["once"]
    purged = next(g for g in gaps if g.reason == "backlog purged")
    assert purged.topics == frozenset({"t", "u"})


def test_empty_topics_and_a_gone_clients_receipts_are_removed(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    layout = Layout(zk_root)
    host = make_client(session_timeout=2.0)
    sub = make_client().subscribe("short-lived")
    sub.close()
    # A publisher that crashed with a receipt not yet deleted:
    raw_zk.create(layout.receipt("crashed", "0123456789ab"), b"", makepath=True)
    cleaner = host.start_cleaner(grace=2.0, interval=0.3)
    wait_until(lambda: raw_zk.exists(layout.topic("short-lived")) is None, 20, "topic removed")
    # the cleaner counts a removal after its reply arrives, which may be after we saw it
    wait_until(lambda: cleaner.stats().topics_removed, 20, "topic removal counted")
    wait_until(lambda: cleaner.stats().clients_removed, 20, "crashed client purged")
    assert raw_zk.exists(layout.client_receipts("crashed")) is None
    assert cleaner.stats().topics_removed == 1
    # publishing to a removed topic is fine: nobody subscribes
    assert host.publish("short-lived", "x").subscribers == 0
    assert make_client().subscribe("short-lived") is not None


def test_publishers_delete_their_own_receipts(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Receipts wait up to FLUSH_AFTER for a batch; a longer wait here keeps a
    # slow machine's five publishes within it.
    monkeypatch.setattr(receipts, "FLUSH_AFTER", 3.0)
    collector = Collector()
    make_client().subscribe("t", collector)
    publisher = make_client()
    for i in range(5):
        publisher.publish("t", i)
    folder = Layout(zk_root).client_receipts(publisher.client_id)
    assert len(raw_zk.get_children(folder)) == 5  # deleted in batches, not one by one
    time.sleep(receipts.FLUSH_AFTER + 0.1)
    publisher.publish("t", "later")  # the batch is old enough: it goes
    wait_until(lambda: raw_zk.get_children(folder) == [], what="receipts deleted as they go")
    publisher.publish("t", "last")
    publisher.close()  # deletes what is left, and the folder
    assert raw_zk.exists(folder) is None


def test_the_cleaner_ends_a_durable_subscription_after_the_grace(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    layout = Layout(zk_root)
    host = make_client(session_timeout=2.0)
    away = make_client(client_id="away-for-good")
    away.subscribe("t", durable=True)
    away.close()
    assert host.publish("t", "kept for a while").subscribers == 1
    cleaner = host.start_cleaner(grace=2.0, interval=0.3)
    wait_until(lambda: cleaner.stats().clients_removed, 20, "purged")
    assert cleaner.stats().registrations_removed == 1
    assert raw_zk.exists(layout.subscriber("t", "away-for-good")) is None
    assert raw_zk.exists(layout.client_messages("away-for-good")) is None
    assert host.publish("t", "nobody now").subscribers == 0
    # the purge left a notice naming the topic, and the cleaner lets it be
    marker = layout.purge_marker("away-for-good")
    data, _ = raw_zk.get(marker)
    assert purge_finished(data) and read_purge_record(data) == ["t"]
    time.sleep(2.5)  # the grace again, and passes after it
    assert cleaner.stats().clients_removed == 1
    assert raw_zk.exists(marker) is not None
    # back after the purge: told when it starts (the backlog is gone), once
    gaps: list[Gap] = []
    back = make_client(client_id="away-for-good", on_gap=gaps.append)
    wait_until(lambda: gaps, what="purge gap at start")
    assert gaps[0].reason == "backlog purged" and gaps[0].topics == frozenset({"t"})
    # it spans the absence and the backlog's age, which it cannot know
    # (before, since == until: a window that held nothing)
    assert gaps[0].since == 0.0 and gaps[0].until > time.time() - 60
    assert raw_zk.exists(marker) is None
    assert back.subscribe("t", durable=True).get(timeout=0.5) is None


def test_a_purge_notice_waits_its_ttl_and_a_plain_client_is_left_none(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    layout = Layout(zk_root)
    host = make_client(session_timeout=2.0)
    durable = make_client(client_id="durable-away")
    durable.subscribe("t", durable=True)
    durable.close()
    plain = make_client(client_id="plain-away")
    plain.subscribe("t").close()  # its queue stays for a return within the grace
    plain.close()
    assert raw_zk.exists(layout.client_messages("plain-away")) is not None
    cleaner = host.start_cleaner(grace=2.0, interval=0.3)
    wait_until(lambda: cleaner.stats().clients_removed == 2, 20, "both purged")
    assert raw_zk.exists(layout.client_messages("plain-away")) is None
    assert raw_zk.exists(layout.purge_marker("plain-away")) is None
    assert raw_zk.exists(layout.purge_marker("durable-away")) is not None
    host.start_cleaner(notice_ttl=1.0)
    wait_until(
        lambda: raw_zk.exists(layout.purge_marker("durable-away")) is None, 20, "notice expired"
    )
    with pytest.raises(ValueError, match="notice_ttl"):
        host.start_cleaner(notice_ttl=-1)


def test_unread_results_are_removed_after_their_ttl(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    client = make_client()
    q = client.queue("rpc")
    q.put("job", want_result=True)
    item = q.reserve(5)
    assert item is not None
    item.ack(result="nobody reads this")
    results = Layout(zk_root).work_queue("rpc").results
    assert len(raw_zk.get_children(results)) == 1
    # one more, with a node under it (another program's): it goes too, and
    # does not keep the rest from going
    raw_zk.create(f"{results}/r-foreign/child", b"", makepath=True)
    cleaner = client.start_cleaner(grace=60, interval=0.3, result_ttl=1.0)
    wait_until(lambda: raw_zk.get_children(results) == [], 20, "results expired")
    time.sleep(1.0)  # more sweeps
    assert cleaner.stats().results_removed == 2  # results, not the node under one


def test_a_client_starting_during_a_purge_hears_about_it(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    layout = Layout(zk_root)
    raw_zk.ensure_path(layout.queue("restarted", "t"))
    # the marker names the client's topics: "gone" had a queue already
    # deleted in full, which the gap left out (it named the queues left)
    raw_zk.create(layout.purge_marker("restarted"), purge_record(["gone", "t"]), makepath=True)
    gaps: list[Gap] = []
    make_client(client_id="restarted", on_gap=gaps.append)
    wait_until(lambda: gaps, what="purge gap at start")
    assert gaps[0].reason == "backlog purged" and gaps[0].topics == frozenset({"gone", "t"})
    assert raw_zk.exists(layout.purge_marker("restarted")) is None
    # a marker of an older cleaner is empty: the queues left are named
    raw_zk.ensure_path(layout.queue("older", "t"))
    raw_zk.create(layout.purge_marker("older"), b"")
    older: list[Gap] = []
    make_client(client_id="older", on_gap=older.append)
    wait_until(lambda: older, what="purge gap at start")
    assert older[0].topics == frozenset({"t"})


def test_the_purge_marker_names_every_topic_of_the_gone_client(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = make_client()
    cleaner = host.start_cleaner(grace=3600.0, interval=60.0)
    assert cleaner.wait_leader(20)
    gone = make_client(client_id="gone-all")
    for topic in ("a", "b"):
        gone.subscribe(topic, durable=True)
    gone.close()
    marker = Layout(zk_root).purge_marker("gone-all")
    seen: list[bytes] = []
    deleting = cleaner_module.delete_queue

    def watched(*args: Any, **kwargs: Any) -> int:  # the marker, as a queue goes
        seen.append(raw_zk.get(marker)[0])
        return deleting(*args, **kwargs)

    monkeypatch.setattr(cleaner_module, "delete_queue", watched)
    me = cleaner._candidate
    assert me is not None
    cleaner._purge(me, "gone-all", ["a", "b"])
    assert [read_purge_record(data) for data in seen] == [["a", "b"]] * 2
    assert not any(purge_finished(data) for data in seen)
    # durable subscriptions: the marker stays, finished, as a notice
    data, _ = raw_zk.get(marker)
    assert purge_finished(data) and read_purge_record(data) == ["a", "b"]


def test_a_purge_taken_over_or_done_again_keeps_its_notice_and_names_every_topic(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = Layout(zk_root)
    host = make_client()
    cleaner = host.start_cleaner(grace=3600.0, interval=60.0)
    assert cleaner.wait_leader(20)
    me = cleaner._candidate
    assert me is not None
    # another leader stopped after it had removed the durable registrations:
    # its marker says the client was durable, and the notice stays
    raw_zk.ensure_path(layout.queue("taken-over", "a") + "/s0000000001/m" + "0" * 32 + "-1")
    raw_zk.create(layout.purge_marker("taken-over"), purge_record(["a"], durable=True))
    cleaner._purge(me, "taken-over", [])
    data, _ = raw_zk.get(layout.purge_marker("taken-over"))
    assert purge_finished(data) and read_purge_record(data) == ["a"]
    assert raw_zk.exists(layout.client_messages("taken-over")) is None
    # a notice, and then a queue again: while the purge runs, the marker
    # names both (and is under way, not finished); its end, a notice again
    raw_zk.ensure_path(layout.queue("taken-over", "b"))
    seen: list[bytes] = []
    deleting = cleaner_module.delete_queue

    def watched(*args: Any, **kwargs: Any) -> int:
        seen.append(raw_zk.get(layout.purge_marker("taken-over"))[0])
        return deleting(*args, **kwargs)

    monkeypatch.setattr(cleaner_module, "delete_queue", watched)
    cleaner._purge(me, "taken-over", [])
    assert [read_purge_record(d) for d in seen] == [["a", "b"]]
    assert not purge_finished(seen[0]) and purge_durable(seen[0])
    data, _ = raw_zk.get(layout.purge_marker("taken-over"))
    assert purge_finished(data) and read_purge_record(data) == ["a", "b"]
    assert cleaner.stats().clients_removed == 2


def test_a_purge_stops_once_its_client_was_back_even_if_gone_again(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client back deletes the marker: a purge decided before went on
    after it had gone again, with no new grace (what it had subscribed and
    been sent since was deleted unheard)."""
    layout = Layout(zk_root)
    host = make_client()
    cleaner = host.start_cleaner(grace=3600.0, interval=60.0)
    assert cleaner.wait_leader(20)
    me = cleaner._candidate
    assert me is not None
    for topic in ("a", "b"):
        raw_zk.ensure_path(layout.queue("flicker", topic))
    deleting = cleaner_module.delete_queue

    def back_and_gone(*args: Any, **kwargs: Any) -> int:
        # as the client does when it registers (and then it leaves again)
        raw_zk.delete(layout.purge_marker("flicker"))
        return deleting(*args, **kwargs)

    monkeypatch.setattr(cleaner_module, "delete_queue", back_and_gone)
    cleaner._purge(me, "flicker", [])
    assert queue_exists(raw_zk, zk_root, "flicker", "a")
    assert queue_exists(raw_zk, zk_root, "flicker", "b")
    assert cleaner.stats().clients_removed == 0
    assert cleaner.is_leader


def test_a_client_purged_while_cut_off_hears_of_that_alone_when_it_is_back(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, zk_hosts: str
) -> None:
    """Back on a new session after the cleaner had purged it, the client
    also said its queue was "replaced by another client" (a second gap, and
    a warning): it had made the queue again itself."""
    marker = Layout(zk_root).purge_marker("cut-off")
    host = make_client(session_timeout=2.0)  # a grace is at least the session timeout
    cleaner = host.start_cleaner(grace=2.0, interval=0.3)
    assert cleaner.wait_leader(20)
    gaps: list[Gap] = []
    address, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((address, int(port)), name="cut-off") as proxy:
        away = make_client(
            hosts=proxy.address,
            client_id="cut-off",
            session_timeout=2.0,
            cleaner=False,
            on_gap=gaps.append,
        )
        sub = away.subscribe("a", durable=True)
        away.subscribe("p")
        proxy.block("reset")
        wait_until(
            lambda: raw_zk.exists(marker) and purge_finished(raw_zk.get(marker)[0]), 30, "purged"
        )
        proxy.unblock()
        wait_until(lambda: len(gaps) >= 2, 30, "the expiry's and the purge's gaps")
        assert host.publish("a", "after").subscribers == 1
        got = sub.get(timeout=10)
        assert got is not None and got.payload == "after"
        time.sleep(0.5)  # the guards of the queues, armed again, have looked
    assert [(g.reason, g.topics) for g in gaps] == [
        ("session expired", frozenset({"p"})),
        ("backlog purged", frozenset({"a", "p"})),
    ]


def test_a_purge_marker_names_the_topics_it_can_hold() -> None:
    assert read_purge_record(purge_record(["b", "a", "b"])) == ["a", "b"]
    assert read_purge_record(purge_record(["a"], finished=True)) == ["a"]
    assert purge_finished(purge_record(["a"], finished=True))
    assert not purge_finished(purge_record(["a"]))
    assert not purge_finished(b'{"topics": [], "finished": "yes"}')
    for foreign in (b"", b"{", b"[1]", b'{"topics": "t"}', b"\xff"):
        assert read_purge_record(foreign) == []
    many = [f"topic-{n:06d}" for n in range(50_000)]
    record = purge_record(many)
    assert len(record) <= MAX_PURGE_RECORD
    assert read_purge_record(record) == many[: len(read_purge_record(record))]


def test_a_node_the_cleaner_may_not_read_does_not_stop_it(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """Before, any NotAuthorized in a sweep was taken for "this identity may
    not stand": the leader stopped for good, the next one met the same node
    and stopped too, until no cleaner was left."""
    from kazoo.security import make_digest_acl

    layout = Layout(zk_root)
    host = make_client(session_timeout=3.0)
    cleaner = host.start_cleaner(grace=3.0, interval=0.3)
    assert cleaner.wait_leader(20)
    # receipts of a gone client, written by another identity, that only it may read
    secret = make_digest_acl("other", "pw", all=True)
    ghost = layout.receipts + "/ghost"
    raw_zk.create(ghost, b"", acl=[secret], makepath=True)
    doomed = make_client(client_id="doomed")
    doomed.subscribe("t")
    host.publish("t", 1)
    doomed.close()
    wait_until(lambda: cleaner.stats().clients_removed, 30, "the readable client purged")
    assert not cleaner.stopped and cleaner.refused is None
    assert raw_zk.exists(layout.client_messages("doomed")) is None
    assert raw_zk.exists(ghost) is not None  # left alone


def test_a_gone_client_the_cleaner_may_not_remove_is_tried_again_each_interval(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, once its grace was over, the refused purge was tried again at
    every sweep, and the grace it kept over had the leader sweep every half
    second, whatever its interval. And a retry found due with the grace
    raised meanwhile kept its time, now past: the same half-second sweeps."""
    from kazoo.security import make_digest_acl

    layout = Layout(zk_root)
    secret = make_digest_acl("other", "pw", all=True)
    raw_zk.ensure_path(layout.receipts)
    raw_zk.create(layout.receipts + "/ghost", b"", acl=[secret])
    host = make_client(session_timeout=2.0)
    with caplog.at_level(logging.WARNING, logger="zkpubsub.cleaner"):
        cleaner = host.start_cleaner(grace=2.0, interval=1.5)
        assert cleaner.wait_leader(20)
        wait_until(lambda: "gone client ghost" in caplog.text, 20, "the purge refused")
    before = cleaner.stats().sweeps
    time.sleep(1.2)  # two sweeps, before: tried again at the interval, not at once
    assert cleaner.stats().sweeps - before <= 1
    cleaner.configure(grace=600.0)  # when the retry is due, its grace is not over
    before = cleaner.stats().sweeps
    time.sleep(3.0)  # two sweeps, at the interval (six, before)
    assert cleaner.stats().sweeps - before <= 3
    assert not cleaner.stopped and cleaner.refused is None


def test_waiting_for_the_lead_of_a_stopped_cleaner_ends_and_bad_timeouts_are_refused(
    make_client: MakeClient,
) -> None:
    """Before, ``wait_leader()`` of a cleaner that had stopped (refused, or
    stopped by hand) never returned; NaN and negative timeouts returned
    False, infinite ones raised OverflowError (``stop`` after stopping)."""
    cleaner = make_client(session_timeout=3.0).start_cleaner(grace=3.0, interval=0.3)
    assert cleaner.wait_leader(20)
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="timeout"):
            cleaner.wait_leader(bad)
        with pytest.raises(ValueError, match="timeout"):
            cleaner.stop(bad)
    assert not cleaner.stopped  # a refused stop() did nothing
    cleaner.stop()
    returned: list[bool] = []
    waiter = threading.Thread(target=lambda: returned.append(cleaner.wait_leader()), daemon=True)
    waiter.start()
    waiter.join(5)
    assert returned == [False]


def test_a_join_answered_too_late_leaves_no_second_candidate_node(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a join applied but answered after its deadline was tried again
    under a new name: the client stood twice, the node of the first try
    sorting before it, and waited behind itself for as long as its session."""
    from zkpubsub.connection import Connection
    from zkpubsub.errors import OperationTimeout

    real = Connection.result
    late: list[str] = []

    def answered_late(self: Connection, async_result: Any, deadline: Any, what: str) -> Any:
        value = real(self, async_result, deadline, what)
        if what == "join cleaner election" and not late:
            late.append(value)
            raise OperationTimeout(f"{what}: no answer from ZooKeeper in time")
        return value

    monkeypatch.setattr(Connection, "result", answered_late)
    cleaner = make_client(session_timeout=3.0).start_cleaner(grace=3.0, interval=0.3)
    assert cleaner.wait_leader(20)
    assert late
    assert len(raw_zk.get_children(Layout(zk_root).candidates)) == 1


def test_a_purge_longer_than_its_deadline_goes_on_in_the_next_sweep(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a purge that ran past its deadline ended the leader's term:
    it stood again, every gone client's grace started over, and the purge
    went on only a grace later, slice by slice."""
    layout = Layout(zk_root)
    host = make_client(session_timeout=3.0)
    doomed = make_client(client_id="doomed")
    doomed.subscribe("t")
    segment = layout.segment(layout.queue("doomed", "t"), 0)
    for start in range(0, 1500, 250):  # many nodes: many transactions to delete
        txn = raw_zk.transaction()
        for n in range(start, start + 250):
            txn.create(f"{segment}/m{n:032x}-{n:010d}", b"x")
        txn.commit()
    real = cleaner_module.deadline_after

    def short(timeout: float | None) -> float | None:  # a purge's: a fraction of a second
        if timeout is not None and timeout >= 60:
            return real(0.05)
        return real(timeout)

    monkeypatch.setattr(cleaner_module, "deadline_after", short)
    cleaner = host.start_cleaner(grace=3.0, interval=0.3)
    assert cleaner.wait_leader(20)
    doomed.close()
    wait_until(lambda: raw_zk.exists(layout.client_messages("doomed")) is None, 30, "purged")
    assert cleaner.stats().elections_won == 1


def test_a_client_back_in_the_middle_of_its_purge_counts_the_queues_that_went(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a purge that the client's return stopped half way counted
    nothing, and said the queues stay, though some had gone."""
    layout = Layout(zk_root)
    host = make_client(session_timeout=3.0)
    doomed = make_client(client_id="doomed")
    doomed.subscribe("a")
    doomed.subscribe("b")
    real = cleaner_module.delete_queue
    deleted: list[str] = []

    def then_back(conn: Any, path: str, *args: Any, **kwargs: Any) -> int:
        removed = real(conn, path, *args, **kwargs)
        deleted.append(path)
        if len(deleted) == 1:  # the client is back before the next queue goes
            raw_zk.create(layout.client("doomed"), b"", ephemeral=True)
        return removed

    monkeypatch.setattr(cleaner_module, "delete_queue", then_back)
    cleaner = host.start_cleaner(grace=3.0, interval=0.3)
    assert cleaner.wait_leader(20)
    doomed.close()
    wait_until(lambda: deleted, 30, "the purge begun")
    time.sleep(1.0)  # more sweeps: the client is back
    stats = cleaner.stats()
    assert stats.queues_removed == 1 and stats.clients_removed == 0
    assert len(deleted) == 1
    (kept,) = {"a", "b"} - {deleted[0].rsplit("/", 1)[1]}
    assert raw_zk.exists(layout.queue("doomed", kept)) is not None


def test_a_stage_of_a_sweep_refused_a_node_leaves_the_later_stages_to_run(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """Before, a node the cleaner may not read among the work queues'
    results ended the sweep there: purge notices never expired."""
    from kazoo.security import make_digest_acl

    layout = Layout(zk_root)
    host = make_client(session_timeout=2.0)
    results = layout.work_queue("theirs").results
    raw_zk.ensure_path(results.rsplit("/", 1)[0])
    raw_zk.create(results, b"", acl=[make_digest_acl("other", "pw", all=True)])
    raw_zk.create(
        layout.purge_marker("durable-away"),
        purge_record(["t"], durable=True, finished=True),
        makepath=True,
    )
    cleaner = host.start_cleaner(grace=2.0, interval=0.3, notice_ttl=1.0)
    wait_until(
        lambda: raw_zk.exists(layout.purge_marker("durable-away")) is None, 20, "notice expired"
    )
    assert not cleaner.stopped
