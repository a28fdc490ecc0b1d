"""Publish/subscribe under real faults: nothing acknowledged is lost.

Each test starts its own ensemble, runs publishers and subscribers against
it, breaks it, heals it, then checks the recorded history (see
``zkpubsub.testing.checker`` for what "entitled" and "lost" mean) and audits
the tree (``zkpubsub.testing.audit``). Scenario numbers are those of docs/reliability.md.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence

import pytest
from kazoo.client import KazooClient

from zkpubsub import Client, ClientState
from zkpubsub._queues import STATE_TTL
from zkpubsub.layout import Layout, parse_queue_entry
from zkpubsub.testing import ZooKeeperCluster, ZooKeeperNode, expire_session
from zkpubsub.testing.faults import (
    FaultInjector,
    make_unwritable,
    make_writable,
    node_of_client,
    run_unprivileged,
    sessions_on,
)
from zkpubsub.testing.history import History
from zkpubsub.testing.proxy import ZkClientProxy
from zkpubsub.testing.queues import queue_entries
from zkpubsub.testing.report import ScenarioResult
from zkpubsub.testing.txnlog import Txn
from zkpubsub.testing.workload import Workload

from .scenarios import (
    CLEANER_GRACE,
    SESSION_TIMEOUT,
    ScenarioRecorder,
    assert_clean,
    excuse_bound,
    finish,
    leader_changes,
    longest_ack_gap,
    pubsub_workload,
)

pytestmark = pytest.mark.local_zk


def busiest(cluster: ZooKeeperCluster, clients: list[Client], among: list[ZooKeeperNode]):
    """The node of ``among`` most of ``clients`` are connected to, and how many."""
    ids = set()
    for c in clients:
        creds = c._session_credentials()
        if creds is not None:
            ids.add(creds[0])
    counts = {n.myid: len(sessions_on(n) & ids) for n in among}
    node = max(among, key=lambda n: counts[n.myid])
    return node, counts[node.myid]


def all_clients(wl: Workload) -> list[Client]:
    return [*wl.subscribers.values(), *wl.publishers.values()]


def follower_with_clients(cluster: ZooKeeperCluster, wl: Workload, *, within: float = 15.0):
    """The follower most of ``wl``'s clients are connected to, and how many.

    A client may be between servers and ``cons`` may time out under load, so
    look again until ``within`` has passed. Which server a client picks is
    random: if still no client is on a follower, add subscribers until one
    is (each has two chances in three), so the scenario does not rest on
    the first draw."""
    deadline = time.monotonic() + within
    while True:
        node, connected = busiest(cluster, all_clients(wl), cluster.followers())
        if connected >= 1:
            return node, connected
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for _ in range(10):
        placed = node_of_client(cluster, wl.add_subscriber())
        if placed is not None and placed in cluster.followers():
            return placed, 1
    raise AssertionError("no client on a follower")


def test_1_leader_kill_nine_five_times_during_a_publish_burst(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s1")
    try:
        wl.start_publishing()
        wl.wait_acked(50)
        killed = injector.bounce_leader(5, down_for=0.5, between=1.0)
        wl.wait_acked(50)  # publishing goes on after the last kill
        done = finish("1 leader kill -9 x5", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert len(killed) == 5
    # what the system saw: five new leaders committed, clients lost connections
    assert leader_changes(done.ledger) >= 5, done.ledger.epochs
    assert done.history.notes.get("suspensions", 0) >= 5, done.history.notes
    assert_clean(done)


def test_2_kill_the_follower_the_clients_are_connected_to(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s2", subscribers=5)
    moved = 0
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        for _ in range(2):
            injector.wait_healthy()
            victim, connected = follower_with_clients(ens.cluster, wl)
            moved += connected
            injector.kill(victim)
            wl.wait_acked(30)  # its clients moved to the other servers
            injector.start(victim)
            wl.wait_acked(10)
        done = finish("2 kill the clients' follower x2", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    # every client of a killed follower lost its connection and came back
    assert done.history.notes.get("suspensions", 0) >= moved >= 2, done.history.notes
    assert_clean(done)


def test_3_rolling_restart(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s3")
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        injector.rolling_restart(between=1.0)
        wl.wait_acked(30)
        done = finish("3 rolling restart", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    # every server went down once, so every client lost its connection at
    # least once, and the leader (restarted last) was replaced
    clients = len(wl.subscribers) + len(wl.publishers)
    assert all(
        done.history.notes.get(f"suspensions by {name}", 0) >= 1
        for name in [*wl.subscribers, *wl.publishers]
    ), done.history.notes
    assert done.history.notes.get("suspensions", 0) >= clients
    assert leader_changes(done.ledger) >= 1, done.ledger.epochs
    assert_clean(done)


def test_4_majority_lost_longer_than_the_session_timeout_then_restored(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s4", publish_timeout=40.0)
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        injector.kill_majority(down_for=1.5 * SESSION_TIMEOUT)
        wl.wait_acked(30)
        done = finish("4 majority down > session timeout", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    # publishing stalled for longer than a session timeout, every client lost
    # its connection, a new leader took over; yet no session was lost (the
    # servers' clocks for sessions stop without a quorum)
    assert longest_ack_gap(done.history) > SESSION_TIMEOUT
    assert all(
        done.history.notes.get(f"suspensions by {name}", 0) >= 1
        for name in [*wl.subscribers, *wl.publishers]
    ), done.history.notes
    assert leader_changes(done.ledger) >= 1, done.ledger.epochs
    assert_clean(done)


def test_5_sigstop_shorter_and_longer_than_the_session_timeout(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s5")
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        injector.pause(injector.leader(), 0.5 * SESSION_TIMEOUT)
        injector.wait_healthy()
        wl.wait_acked(30)
        short_stall = longest_ack_gap(wl.history())
        victim, connected = busiest(ens.cluster, all_clients(wl), ens.cluster.nodes)
        before = wl.history().notes.get("suspensions", 0)
        injector.pause(victim, 2.0 * SESSION_TIMEOUT)
        injector.wait_healthy()
        wl.wait_acked(30)
        done = finish("5 SIGSTOP short and long", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    # the frozen leader stalled every write; the clients of the server frozen
    # for two session timeouts lost their connections
    assert short_stall >= 0.4 * SESSION_TIMEOUT, short_stall
    assert connected >= 1
    assert done.history.notes.get("suspensions", 0) - before >= connected, done.history.notes
    assert_clean(done)


def test_6_one_server_partitioned_from_the_others(ensemble, scenario):
    ens = ensemble(3, mesh=True)
    injector = FaultInjector(ens.cluster, mesh=ens.mesh)
    # A cut-off leader keeps its clients' connections (unanswered) until
    # syncLimit passes; only then do the others elect a new one, and a
    # client's session lasts from then on if it is longer than that wait
    # (ZooKeeper's own sizing rule). The other scenarios' 4 s sessions are
    # shorter than these servers' 5 s syncLimit: sessions twice as long here.
    session = 2 * ens.cluster.sync_limit
    wl, cleaners = pubsub_workload(ens.cluster, "/s6", session_timeout=session)
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        leader = injector.wait_healthy()
        injector.isolate(leader)
        time.sleep(2 * SESSION_TIMEOUT)  # the length of the partition
        wl.wait_acked(20)  # the majority side serves meanwhile
        injector.heal()
        injector.wait_healthy()
        follower, _ = busiest(ens.cluster, all_clients(wl), ens.cluster.followers())
        injector.isolate(follower)
        time.sleep(2 * SESSION_TIMEOUT)
        wl.wait_acked(20)
        done = finish("6 one server partitioned x2", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    # the cut-off leader was replaced; clients of the cut-off servers, which
    # stop serving, lost their connections
    assert leader_changes(done.ledger) >= 1, done.ledger.epochs
    assert done.history.notes.get("suspensions", 0) >= 1, done.history.notes
    assert_clean(done)


EXPIRIES = 12


def test_8a_real_session_expiry_of_subscribers_again_and_again(ensemble, scenario):
    """Expiring a session through another connection races with the
    client's reconnect; now and then the server ends the session yet keeps
    the client's new connection open. The client must notice either way."""
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s8a")
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        names = list(wl.subscribers)
        for i in range(EXPIRIES):
            name = names[i % len(names)]
            expire_session(wl.subscribers[name])
            injector.log.add(f"expire session of {name}")
            wl.wait_acked(10)
        wl.wait_acked(30)
        done = finish(f"8a subscriber session expiry x{EXPIRIES}", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    # the servers saw each subscription go and come back every time
    for name in names:
        intervals = done.ledger.registrations[(wl.topic, name)]
        assert len(intervals) >= EXPIRIES // len(names) + 1, (name, intervals)
        assert done.result.per_subscriber[name].get("expected", 0) > 0
    # what was in a queue when its session ended had to arrive; only what was
    # published while a subscription was gone is excused, a moment each time
    assert_clean(done, excused_at_most=excuse_bound(done.history, 0.0, slack=EXPIRIES * 1.0))


def test_8b_real_session_expiry_of_a_publisher_mid_fan_out(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s8b", publishers=0, subscribers=8)
    try:
        # small transactions: every fan-out is split into several
        publisher = wl.add_publisher(max_message_bytes=2000, max_transaction_bytes=3500)
        wl.start_publishing()
        wl.wait_acked(20)
        for _ in range(3):
            expire_session(publisher)
            injector.log.add("expire session of the publisher")
            wl.wait_acked(20)
        done = finish(
            "8b publisher session expiry x3 (split fan-outs)",
            wl,
            injector,
            scenario,
            cleaners,
            total_order=False,
        )
        transactions = publisher.publish(wl.topic, {"probe": True}).transactions
    finally:
        wl.close()
    assert transactions > 1  # the fan-out really was split
    # the servers saw the publisher on four sessions
    assert len(done.ledger.sessions[publisher.client_id]) >= 4, done.ledger.sessions
    assert_clean(done)


def test_8c_real_session_expiry_of_the_cleaner_leader(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s8c")
    try:
        dead = wl.add_subscriber_process()
        wl.start_publishing()
        wl.wait_acked(30)
        wl.kill_subscriber_process(dead.client_id)  # its queue is the cleaner's to remove
        injector.log.add("kill -9 a subscriber process")
        leaders = []
        for _ in range(2):
            wl.wait_until(lambda: sum(c.is_leader for c in cleaners) == 1, 30, "one leader")
            leader = next(c for c in cleaners if c.is_leader)
            host = next(c for c in wl.subscribers.values() if c.client_id == leader.client_id)
            leaders.append(host.client_id)
            expire_session(host)
            injector.log.add("expire session of the cleaner leader")
            wl.wait_until(
                lambda leader=leader: any(c.is_leader for c in cleaners if c is not leader),
                30,
                "another cleaner to lead",
            )
            wl.wait_acked(20)
        # the new leader still removes the dead subscriber's queue
        probe = next(iter(wl.subscribers.values()))
        wl.wait_until(
            lambda: dead.client_id not in {q.client_id for q in probe.stats().queues},
            SESSION_TIMEOUT + 3 * CLEANER_GRACE + 30,
            "the dead subscriber's queue to be removed",
        )
        done = finish("8c cleaner leader session expiry x2", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    for name in leaders:  # each expired leader came back on a new session
        assert len(done.ledger.sessions[name]) >= 2, done.ledger.sessions[name]
    # subscribers hosting an expired leader were unregistered a moment
    assert_clean(done, excused_at_most=excuse_bound(done.history, 0.0, slack=2 * 2.0))


def test_8d_a_subscriber_cut_off_past_its_session_timeout(ensemble, scenario):
    """The plainest real expiry: the server hears nothing from the client
    for longer than the session timeout and ends the session itself."""
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    proxies = [ZkClientProxy(("127.0.0.1", n.client_port)) for n in ens.cluster.nodes]
    wl, cleaners = pubsub_workload(ens.cluster, "/s8d", subscribers=2)
    watcher = KazooClient(hosts=ens.cluster.hosts, timeout=10.0)
    watcher.start(timeout=30)
    outage = 0.0
    try:
        victim = wl.add_subscriber(hosts=",".join(p.address for p in proxies))
        client_node = Layout(wl.root).client(victim.client_id)
        wl.start_publishing()
        wl.wait_acked(30)
        for _ in range(2):
            assert watcher.exists(client_node) is not None  # registered
            cut = time.monotonic()
            for p in proxies:
                p.block("drop")  # packets vanish: no reset, no answer
            injector.log.add("client cut off")
            # the outage lasts until the servers end the session themselves
            # (its client node goes with it; the client cannot make it again)
            wl.wait_until(
                lambda: watcher.exists(client_node) is None,
                2 * SESSION_TIMEOUT + 30,
                "the servers to end the session",
            )
            outage += time.monotonic() - cut
            for p in proxies:
                p.unblock()
            wl.wait_until(
                lambda: victim.status == ClientState.CONNECTED, 60, "the client to come back"
            )
            wl.wait_acked(30)
        done = finish(
            "8d subscriber cut off > session timeout x2", wl, injector, scenario, cleaners
        )
    finally:
        wl.close()
        for p in proxies:
            p.close()
        watcher.stop()
        watcher.close()
    # the servers ended the victim's session twice; it registered again twice
    assert len(done.ledger.sessions[victim.client_id]) == 3, done.ledger.sessions
    assert len(done.ledger.registrations[(wl.topic, victim.client_id)]) == 3
    # its backlog from before each expiry had to arrive; what was published
    # while it was unregistered is excused, at most a cut's length each time
    assert done.result.per_subscriber[victim.client_id].get("expected", 0) > 0
    assert_clean(done, excused_at_most=excuse_bound(done.history, outage))


def _durable_subscriber_comes_back(
    ensemble, scenario, root: str, *, truncate_backlog: int = 0, name: str | None = None
):
    """A durable subscriber process killed with SIGKILL while two publishers
    go on; its queue keeps filling; it comes back (same client id) within
    the cleaner's grace. With ``truncate_backlog`` it is a faulty
    subscriber: once registered again, before subscribing, it deletes that
    many of the oldest nodes of its queue. Returns the finished run, the
    keys it deleted and its client id."""
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, root, subscribers=2)
    try:
        proc = wl.add_subscriber_process(durable=True)
        wl.start_publishing()
        wl.wait_acked(30)
        wl.kill_subscriber_process(proc.client_id, coming_back=True)
        injector.log.add("kill -9 a durable subscriber process")
        wl.wait_acked(100)  # written into its queue while it is away
        truncated = wl.restart_subscriber_process(proc.client_id, truncate_backlog=truncate_backlog)
        injector.log.add("the subscriber process started again")
        wl.wait_acked(30)
        done = (
            finish(name, wl, injector, scenario, cleaners)
            if name
            else finish_unrecorded(wl, injector, cleaners, drain_timeout=15.0)
        )
    finally:
        wl.close()
    return done, truncated, proc.client_id


def finish_unrecorded(wl, injector, cleaners, *, drain_timeout: float):
    """:func:`finish` for a run that is not a scenario of the table (what
    is lost never arrives: the drain gives up after ``drain_timeout``)."""
    sink: list[ScenarioResult] = []
    recorder = ScenarioRecorder(sink, time.monotonic())
    return finish("unrecorded", wl, injector, recorder, cleaners, drain_timeout=drain_timeout)


def test_8e_a_durable_subscriber_killed_and_back_within_the_grace_gets_its_whole_backlog(
    ensemble, scenario
):
    done, _, name = _durable_subscriber_comes_back(
        ensemble, scenario, "/s8e", name="8e durable subscriber killed, back within the grace"
    )
    # the servers kept its registration while it was away, so everything
    # published meanwhile went into its queue, and it had to get all of it
    assert len(done.ledger.sessions[name]) == 2, done.ledger.sessions[name]
    assert len(done.ledger.registrations[(done.history.subscribers[0].topic, name)]) == 1
    assert done.result.per_subscriber[name]["expected"] >= 100 + 30
    # what it handled but had not deleted yet when it was killed comes again
    # (deletes are batched): at-least-once
    assert done.result.duplicates <= 100, done.result.describe()
    assert_clean(done, duplicates_allowed=True)


def test_the_checker_catches_a_subscriber_that_truncates_its_backlog_when_it_comes_back(
    ensemble, scenario
):
    """The checker judges deliveries against the queues the servers' logs
    show written: a subscriber that loses part of its backlog when it
    registers again is caught, message by message."""
    done, truncated, name = _durable_subscriber_comes_back(
        ensemble, scenario, "/s8e-faulty", truncate_backlog=40
    )
    assert len(truncated) == 40, truncated
    # the oldest nodes may hold messages it had handled but not yet deleted
    # when it was killed (deletes are batched): those it did get (13 of 20
    # in one run; 40 leave room for more)
    got = {d.key for d in done.history.deliveries if d.subscriber == name}
    never = [key for key in truncated if key not in got]
    assert len(never) >= 10, (truncated, got)
    assert done.result.lost == len(never), done.result.describe()
    assert set(done.result.lost_examples) <= {(name, key) for key in never}
    assert done.result.per_subscriber[name]["lost"] == len(never)
    assert not done.result.ok
    # the other subscribers were not affected
    others = [s.name for s in done.history.subscribers if s.name != name]
    assert all(done.result.per_subscriber[o].get("lost", 0) == 0 for o in others)


def test_11_a_subscriber_dies_mid_fan_out(ensemble, scenario):
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s11")
    try:
        doomed = [wl.add_subscriber_process() for _ in range(2)]
        wl.start_publishing()
        wl.wait_acked(30)
        for proc in doomed:
            wl.kill_subscriber_process(proc.client_id)
            injector.log.add("kill -9 a subscriber process")
        # publish on while the sessions expire and the cleaner takes the queues
        probe = next(iter(wl.subscribers.values()))
        wl.wait_until(
            lambda: not {p.client_id for p in doomed} & {q.client_id for q in probe.stats().queues},
            SESSION_TIMEOUT + 3 * CLEANER_GRACE + 30,
            "the dead subscribers' queues to be removed",
        )
        wl.wait_acked(30)
        done = finish("11 subscriber dies mid-fan-out", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    # the servers ended both dead subscribers' sessions
    for proc in doomed:
        assert [s.end is not None for s in done.ledger.sessions[proc.client_id]] == [True]
    assert_clean(done)


def test_12_one_server_data_dir_made_unwritable(ensemble, scenario):
    ens = ensemble(3, traversable=True, prepare=lambda c: run_unprivileged(c.nodes[2]))
    injector = FaultInjector(ens.cluster)
    broken = ens.cluster.nodes[2]
    wl, cleaners = pubsub_workload(ens.cluster, "/s12")
    try:
        wl.start_publishing()
        wl.wait_acked(30)
        role = broken.mode()
        log_start = broken.log_path.stat().st_size
        make_unwritable(broken)  # raises if the server's user could still write
        injector.log.add(f"data dir unwritable ({role})", broken)

        def failed_on_disk() -> bool:
            with open(broken.log_path, "rb") as f:
                f.seek(log_start)
                denied = b"Permission denied" in f.read()
            # a failed snapshot ends the process; a failed log write only
            # takes the server out of the ensemble, and it cannot rejoin
            return denied and (not broken.running or broken.mode() not in ("leader", "follower"))

        wl.wait_until(failed_on_disk, 60, "the server to fail on its disk")
        exited = not broken.running
        injector.log.add("server exited" if exited else "server left the ensemble", broken)
        try:
            wl.wait_acked(30)  # the other two serve on
        except TimeoutError:
            # ZooKeeper's availability, not the clients' correctness: a broken
            # server still running takes part in elections, may win one and
            # then fail to write its epoch, again and again. Do what an
            # operator does (stop it) and say so in the scenario's log.
            modes = {node.myid: node.mode() for node in ens.cluster.nodes}
            injector.log.add(f"ensemble stalled {modes}: broken server stopped", broken)
            broken.kill()
            wl.wait_acked(30)
        make_writable(broken)
        broken.kill()
        injector.start(broken)
        done = finish("12 one data dir unwritable", wl, injector, scenario, cleaners)
    finally:
        wl.close()
    assert_clean(done)


STUCK_BACKLOG = 30
RECOVERY = 10


def queue_peak(txns: Sequence[Txn], root: str, subscriber: str, topic: str) -> int:
    """The most entries (message nodes and overflow markers) one subscriber
    queue held at any moment, as the servers' transaction logs show."""
    prefix = Layout(root).queue(subscriber, topic) + "/"
    depth = peak = 0
    for txn in txns:
        for op in txn.ops:
            if (
                not op.path.startswith(prefix)
                or parse_queue_entry(op.path.rsplit("/", 1)[-1]) is None
            ):
                continue
            depth += {"create": 1, "delete": -1}.get(op.kind, 0)
            peak = max(peak, depth)
    return peak


def others_within(history: History, window: float) -> int:
    """The most publishes the other publishers got acknowledged within any
    ``window`` seconds, for the publisher that saw the most: what a
    publisher does not see between two reads of a queue's depth."""
    ends: dict[str, list[float]] = {}
    for p in history.publishes:
        if p.outcome == "ok":
            ends.setdefault(p.publisher, []).append(p.ended)
    most = 0
    for name in ends:
        others = sorted(t for other, times in ends.items() if other != name for t in times)
        for i, start in enumerate(others):
            most = max(most, bisect.bisect_right(others, start + window) - i)
    return most


class DepthSampler:
    """Polls a subscriber queue's entries through a connection of its own
    (as any ZooKeeper client would list it) and keeps the largest count."""

    def __init__(self, hosts: str, root: str, subscriber: str, topic: str) -> None:
        self.peak = 0
        self.last = -1
        self.samples = 0
        self._stop = threading.Event()
        self._zk = KazooClient(hosts=hosts, timeout=10.0)
        self._zk.start(timeout=30)
        self._args = (root, subscriber, topic)
        self._thread = threading.Thread(target=self._run, name="depth-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                entries = queue_entries(self._zk, *self._args)
            except Exception:  # a listing racing a deletion: the next one counts
                continue
            self.samples += 1
            self.last = len(entries or ())
            self.peak = max(self.peak, self.last)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._zk.stop()
        self._zk.close()


def test_13_a_stuck_subscriber_with_a_bounded_queue_under_a_publish_burst(ensemble, scenario):
    """Its handler blocks while two publishers publish as fast as they can to
    it and three healthy subscribers: its queue stays within its bound (as
    the servers see it), the others get everything, and once it is released
    it gets what its queue held and is told of the rest."""
    ens = ensemble(3)
    injector = FaultInjector(ens.cluster)
    wl, cleaners = pubsub_workload(ens.cluster, "/s13", subscribers=3)
    gate = threading.Event()
    sampler = None
    try:
        stuck = wl.add_subscriber(gate=gate, subscription={"max_backlog": STUCK_BACKLOG})
        name = stuck.client_id
        sampler = DepthSampler(ens.cluster.hosts, wl.root, name, wl.topic)
        injector.log.add(f"handler of {name} blocked (max_backlog {STUCK_BACKLOG})")
        wl.start_publishing()
        wl.wait_acked(20 * STUCK_BACKLOG)  # the burst
        stuck_peak, stuck_samples = sampler.peak, sampler.samples
        gate.set()
        injector.log.add(f"handler of {name} released")
        wl.stop_publishing()
        wl.wait_until(lambda: sampler.last == 0, 60, f"{name} to work off its queue")
        # publishers read its depth again after a publish once their reading
        # is STATE_TTL old: one publish each, then every later one goes in
        seqs = {
            p: max(r.seq for r in wl.history().publishes if r.publisher == p) for p in wl.publishers
        }
        for publisher, seq in seqs.items():
            wl.publish_one(publisher, seq + 1)
        time.sleep(0.5)
        late = [
            (publisher, seq + n) for n in range(2, 2 + RECOVERY) for publisher, seq in seqs.items()
        ]
        for key in late:
            wl.publish_one(*key)

        def told_of_every_marker() -> bool:
            markers = [m for m in wl.ledger().markers.values() if m.subscriber == name]
            me = next(s for s in wl.recorder.history().subscribers if s.name == name)
            full = [g for g in me.gaps if g.reason == "backlog full"]
            return bool(markers) and all(m.by_owner for m in markers) and len(full) >= len(markers)

        wl.wait_until(told_of_every_marker, 60, f"{name} to reach its overflow markers")
        done = finish(
            "13 stuck subscriber, bounded queue, publish burst", wl, injector, scenario, cleaners
        )
    finally:
        gate.set()
        if sampler is not None:
            sampler.close()
        wl.close()
    result, history = done.result, done.history
    # its queue stayed within the bound, plus the documented overshoot: what
    # the other publisher wrote between two reads of its depth (about
    # STATE_TTL; twice that for a loaded machine), one node and one overflow
    # marker per publisher
    publishers = len(wl.publishers)
    bound = STUCK_BACKLOG + others_within(history, 2 * STATE_TTL) + 2 * publishers
    peak = queue_peak(wl.log.committed(), wl.root, name, wl.topic)
    assert stuck_samples > 10 and stuck_peak <= peak, (stuck_samples, stuck_peak, peak)
    assert STUCK_BACKLOG <= peak <= bound, (peak, bound)
    assert peak * 5 < result.acked, (peak, result.acked)  # the bound is what kept it small
    # the healthy subscribers got everything, nothing excused
    for healthy in wl.subscribers:
        if healthy != name:
            counts = result.per_subscriber[healthy]
            assert counts["expected"] == result.acked, counts
            assert not any(k.startswith("excused") for k in counts), counts
    # the stuck one got what its queue held, and was told of what was skipped,
    # as many as the servers' logs show skipped
    mine = result.per_subscriber[name]
    skipped = mine["excused (skipped: queue full)"]
    assert skipped == result.skipped == result.excused > 0, result.describe()
    # what was published once the publishers had read its depth again went
    # into its queue (and, nothing being lost, reached it)
    assert all(name in done.ledger.written_to(key) for key in late), late
    assert mine["expected"] >= STUCK_BACKLOG + len(late), mine
    gaps = next(s for s in history.subscribers if s.name == name).gaps
    assert gaps and all(g.reason == "backlog full" and wl.topic in g.topics for g in gaps), gaps
    assert sum(g.missed or 0 for g in gaps) == skipped, (gaps, skipped)
    assert_clean(done, excused_at_most=skipped)
