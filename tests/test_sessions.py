"""Session expiry done on the server, and processes that die: nothing is lost."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kazoo.client import KazooClient

from zkpubsub import Client, ClientState, Gap, ZkPubSubError
from zkpubsub.layout import Layout
from zkpubsub.testing import ZooKeeperCluster, expire_session
from zkpubsub.testing.proxy import TcpProxy

from .helpers import Collector, wait_until
from .procs import Child

MakeClient = Callable[..., Client]


def test_an_expired_subscriber_registers_again_and_keeps_receiving(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    layout = Layout(zk_root)
    collector = Collector()
    subscriber = make_client(client_id="expiring")
    states: list[ClientState] = []
    gaps: list[Gap] = []
    subscriber.add_listener(states.append)
    subscriber.add_gap_listener(gaps.append)
    subscriber.subscribe("news", collector)
    publisher = make_client()
    publisher.publish("news", "before")
    assert collector.wait(1) == ["before"]
    old_session = subscriber._session_credentials()[0]  # type: ignore[index]

    expire_session(subscriber)

    new_session = subscriber._session_credentials()[0]  # type: ignore[index]
    assert new_session != old_session
    wait_until(lambda: ClientState.CONNECTED in states, what="CONNECTED after LOST")
    assert ClientState.LOST in states
    assert states.index(ClientState.LOST) < len(states) - 1 - states[::-1].index(
        ClientState.CONNECTED
    )
    for path in (layout.client("expiring"), layout.subscriber("news", "expiring")):
        stat = raw_zk.exists(path)
        assert stat is not None, path
        assert stat.ephemeralOwner == new_session
    wait_until(lambda: gaps, what="gap notice")
    assert gaps[0].topics == frozenset({"news"})
    assert gaps[0].reason == "session expired"
    assert gaps[0].since <= gaps[0].until
    assert publisher.publish("news", "after").subscribers == 1
    assert collector.wait(2) == ["before", "after"]


def test_an_expired_publisher_keeps_publishing(make_client: MakeClient) -> None:
    collector = Collector()
    make_client().subscribe("t", collector)
    publisher = make_client()
    publisher.publish("t", 1)
    expire_session(publisher)
    assert publisher.publish("t", 2).subscribers == 1
    assert collector.wait(2) == [1, 2]


def test_a_subscriber_that_dies_before_deleting_gets_the_message_again(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    publisher = make_client()
    with Child(zk_hosts, zk_root, "durable-worker", "hang-subscriber", "jobs") as child:
        child.expect("ready")
        receipt = publisher.publish("jobs", "rebuild index")
        line = child.expect("got")
        assert line.split()[1] == receipt.message_id
        child.kill()  # dies inside the handler: the node was never deleted
    collector = Collector()
    # The same durable id comes back (waiting for the dead session to expire).
    again = make_client(client_id="durable-worker", registration_wait=20)
    again.subscribe("jobs", collector)
    collector.wait(1)
    (message,) = collector.messages
    assert message.id == receipt.message_id
    assert message.payload == "rebuild index"


def test_an_expired_cleaner_stands_again(make_client: MakeClient) -> None:
    client = make_client()
    cleaner = client.start_cleaner(grace=4.0, interval=0.5)
    assert cleaner.wait_leader(20)
    expire_session(client)
    wait_until(lambda: cleaner.stats().elections_won >= 2, what="elected again on the new session")
    # a win is counted just before the cleaner says it leads
    wait_until(lambda: cleaner.is_leader, 20, "leading on the new session")
    assert cleaner.is_leader
    assert client.stats().cleaner_candidates == 1


def test_a_durable_subscription_keeps_receiving_while_its_client_is_away(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    publisher = make_client()
    first = make_client(client_id="billing-cache")
    first.subscribe("invoices", durable=True)
    publisher.publish("invoices", "while up")
    first.close()  # a restart: the durable registration stays
    # Long after its session ended, publishers still fill its queue.
    assert publisher.publish("invoices", "while away").subscribers == 1
    collector = Collector()
    back = make_client(client_id="billing-cache")
    back.subscribe("invoices", collector, durable=True)
    assert collector.wait(2) == ["while up", "while away"]


def test_a_durable_subscriber_killed_with_sigkill_misses_nothing(
    make_client: MakeClient, zk_hosts: str, zk_root: str, raw_zk: KazooClient
) -> None:
    publisher = make_client()
    with Child(zk_hosts, zk_root, "durable-proc", "hang-subscriber", "jobs", "durable") as child:
        child.expect("ready")
        publisher.publish("jobs", "first")
        child.expect("got")
        child.kill()
    # Its session expires (2 s); publishes go on reaching its queue.
    wait_until(lambda: raw_zk.exists(Layout(zk_root).client("durable-proc")) is None, 20, "expired")
    assert publisher.publish("jobs", "second").subscribers == 1
    collector = Collector()
    make_client(client_id="durable-proc").subscribe("jobs", collector, durable=True)
    assert collector.wait(2) == ["first", "second"]


def test_durable_subscriptions_need_an_id_and_end_with_unsubscribe(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    import pytest

    with pytest.raises(ValueError, match="explicit client_id"):
        make_client().subscribe("t", durable=True)
    client = make_client(client_id="leaving")
    client.subscribe("t", durable=True).close()
    layout = Layout(zk_root)
    stat = raw_zk.exists(layout.subscriber("t", "leaving"))
    assert stat is not None and stat.ephemeralOwner == 0
    client.unsubscribe("t")  # without an open subscription
    assert raw_zk.exists(layout.subscriber("t", "leaving")) is None
    assert raw_zk.exists(layout.queue("leaving", "t")) is None
    assert make_client().publish("t", "x").subscribers == 0
    # a plain subscribe over an old durable registration replaces it
    client.subscribe("u", durable=True).close()
    plain = client.subscribe("u")
    stat = raw_zk.exists(layout.subscriber("u", "leaving"))
    assert stat is not None and stat.ephemeralOwner != 0
    plain.close()
    assert raw_zk.exists(layout.subscriber("u", "leaving")) is None


def test_an_expired_durable_subscriber_reports_no_gap_for_it(make_client: MakeClient) -> None:
    client = make_client(client_id="steady")
    client.subscribe("kept", Collector(), durable=True)
    plain = Collector()
    client.subscribe("plain", plain)
    gaps: list[Gap] = []
    client.add_gap_listener(gaps.append)
    expire_session(client)
    wait_until(lambda: gaps, what="gap")
    assert gaps[0].topics == frozenset({"plain"})


def test_a_subscription_closed_while_no_server_answers_is_ended_once_connected_again(
    make_client: MakeClient, raw_zk: KazooClient, zk_hosts: str, zk_root: str
) -> None:
    """``close()`` raised ``OperationTimeout`` after the request timeout and
    left the registration for the session's life: publishers went on
    filling a queue nobody read. Now the end is finished on reconnect."""
    layout = Layout(zk_root)
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="close-unanswered") as proxy:
        client = make_client(hosts=proxy.address, session_timeout=20.0, request_timeout=3.0)
        plain = client.subscribe("plain", lambda message: None)
        gone = client.subscribe("gone", lambda message: None)
        registration = layout.subscriber("plain", client.client_id)
        queue = layout.queue(client.client_id, "gone")
        assert raw_zk.exists(registration) and raw_zk.exists(queue)
        session = client._session_credentials()[0]  # type: ignore[index]
        proxy.block("drop")  # a partition: the client notices after 2/3 of 20 s
        started = time.monotonic()
        plain.close()
        gone.unsubscribe()  # its queue goes too
        took = time.monotonic() - started
        assert took < 2 * 3.0 + 3, took  # each waits one request at most
        assert raw_zk.exists(registration) and raw_zk.exists(queue)
        proxy.unblock()
        wait_until(lambda: raw_zk.exists(registration) is None, 30, "the registration removed")
        wait_until(lambda: raw_zk.exists(queue) is None, 30, "the queue deleted")
        assert client._session_credentials()[0] == session  # type: ignore[index]
        assert client.status is ClientState.CONNECTED
        again: list[str] = []
        client.subscribe("plain", lambda message: again.append(message.payload))
        make_client().publish("plain", "after")
        wait_until(lambda: again == ["after"], 20, "delivered to the new subscription")


def test_a_close_waiting_on_a_frozen_server_returns_once_the_client_knows(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """Before, the wait for the last deletes looked at the connection once,
    at its start: a close begun while the server had just stopped answering
    waited the whole request timeout (20 s here), though the client knew
    after two thirds of its 3 s session timeout that no server answered."""
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="close-frozen") as proxy:
        client = make_client(hosts=proxy.address, session_timeout=3.0, request_timeout=20.0)
        sub = client.subscribe("t", lambda message: None)
        proxy.block("drop")  # frozen: nothing answers, nothing is refused
        time.sleep(0.3)
        started = time.monotonic()
        sub.close()
        took = time.monotonic() - started
        assert took < 10.0, took  # the client knew after 2 s of silence


def test_a_close_known_unanswerable_returns_at_once_and_a_failed_resubscribe_keeps_its_end(
    make_client: MakeClient, raw_zk: KazooClient, zk_hosts: str, zk_root: str
) -> None:
    """With the client knowing it has no connection, close() waited the
    request timeout for its last deletes; and a subscribe of the same topic
    that failed meanwhile made the deferred deregistration be forgotten."""
    layout = Layout(zk_root)
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="close-known-gone") as proxy:
        client = make_client(hosts=proxy.address, session_timeout=20.0, request_timeout=4.0)
        sub = client.subscribe("t", lambda message: None)
        registration = layout.subscriber("t", client.client_id)
        proxy.block("reset")  # refused at once: the client knows
        wait_until(lambda: client.status is ClientState.SUSPENDED, 20, "suspended")
        started = time.monotonic()
        sub.close()
        took = time.monotonic() - started
        assert took < 2.0, took
        assert client.unfinished == ["t"]
        with pytest.raises(ZkPubSubError):
            client.subscribe("t", lambda message: None)  # no server: refused
        assert raw_zk.exists(registration)
        proxy.unblock()
        wait_until(lambda: raw_zk.exists(registration) is None, 30, "the registration removed")
        assert client.status is ClientState.CONNECTED
        wait_until(lambda: client.unfinished == [], 10, "nothing left unfinished")


def test_a_deferred_end_is_named_unfinished_while_it_is_tried_again(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """The retry of a deferred end took it off the list first: while the
    retry waited for a server, ``unfinished`` was empty (a gateway's
    DELETE then answered 204 for an end not done)."""
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="retry-unfinished") as proxy:
        client = make_client(hosts=proxy.address, session_timeout=20.0, request_timeout=2.0)
        sub = client.subscribe("t", lambda message: None)
        proxy.block("drop")  # connected, but nothing is answered
        sub.close()
        assert client.unfinished == ["t"]
        retry = threading.Thread(
            target=client._session.finish_unfinished, args=(time.monotonic() + 3.0,)
        )
        retry.start()
        time.sleep(1.0)  # the retry waits for an answer
        assert retry.is_alive() and client.unfinished == ["t"]
        retry.join(10)
        assert client.unfinished == ["t"]
        proxy.unblock()
        wait_until(lambda: client.unfinished == [], 30, "the end done once connected again")


def test_a_client_closed_while_it_knows_no_server_answers_returns_at_once_and_ends_its_threads(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """Its cleaner and its receive pump were waiting for the connection to
    come back: close() waited for each in turn (10 s in all) before it went
    on without them."""
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="close-all-known-gone") as proxy:
        client = make_client(hosts=proxy.address, session_timeout=20.0, request_timeout=20.0)
        client.subscribe("t", lambda message: None)
        cleaner = client.cleaner
        assert cleaner is not None and cleaner.wait_leader(20)
        ours = f"-{client.client_id[:12]}"
        proxy.block("reset")  # refused at once: the client knows
        wait_until(lambda: client.status is ClientState.SUSPENDED, 20, "suspended")
        time.sleep(0.5)  # the pump and the cleaner are waiting for the connection
        started = time.monotonic()
        client.close()
        took = time.monotonic() - started
        assert took < 2.0, took
        wait_until(
            lambda: not [t for t in threading.enumerate() if t.name.endswith(ours)],
            10,
            "the client's threads ended",
        )


def test_an_end_deferred_by_a_timeout_is_tried_again_while_the_connection_stays(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    """ZooKeeper frozen for less than the client takes to notice: the
    unsubscribe's deregistration times out (the server applies it once it
    runs again), its queue delete is never sent, and the connection outlives
    the freeze: no reconnect comes to finish it. It is tried again every few
    seconds."""
    zk = make_cluster(1)
    (node,) = zk.nodes
    root = "/deferred-retry"
    with Client(zk.hosts, root=root, session_timeout=20.0, request_timeout=2.0) as client:
        sub = client.subscribe("t", lambda message: None)
        queue = Layout(root).queue(client.client_id, "t")
        watcher = KazooClient(hosts=zk.hosts, timeout=10.0)
        watcher.start(timeout=15)
        try:
            assert watcher.exists(queue)
            node.pause()
            try:
                sub.unsubscribe()  # times out: what is left is deferred
            finally:
                node.resume()
            assert client.status is ClientState.CONNECTED  # never noticed
            wait_until(lambda: watcher.exists(queue) is None, 20, "the queue deleted")
        finally:
            watcher.stop()


def test_a_client_closed_while_no_server_answers_says_so_once(
    make_client: MakeClient, zk_hosts: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscription closed while the server was silent leaves its end to
    the client; the client's own close tries it once more. Before, that
    last try's failure was a warning of its own ("again later", with no
    later): a second line where one says it, as the command line's
    ``subscribe`` showed when the client had not noticed the silence yet."""
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="close-silent") as proxy:
        client = make_client(
            hosts=proxy.address, session_timeout=20.0, request_timeout=2.0, close_timeout=2.0
        )
        sub = client.subscribe("t", lambda message: None)
        proxy.block("drop")  # silent: the client notices only after 2/3 of 20 s
        with caplog.at_level(logging.WARNING, logger="zkpubsub"):
            sub.close()  # one request's time, then its end is deferred
            assert client.status is ClientState.CONNECTED  # not noticed yet
            # once the close's last try is over, a reset spares the test
            # the session's end waiting for a silent server (15 s)
            cut = threading.Timer(3.0, proxy.block, ("reset",))
            cut.start()
            client.close()
            cut.join()
        proxy.unblock()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in said if "again later" in m] == [], said
    assert len([m for m in said if "subscription 't'" in m]) == 1, said


def test_a_subscription_closed_while_its_client_registers_again_stops_nothing(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the supervisor read the queue of every subscription it had
    registered again, one closed meanwhile too: the pump no longer knew it,
    the KeyError ended the supervisor's thread, and the client never
    registered again after the next expiry."""
    import zkpubsub.session as session_module

    real = session_module.register_subscription
    registering = threading.Event()

    def slow(*args: object, **kwargs: object) -> object:
        registering.set()
        time.sleep(0.5)  # the closing subscription waits for the registry meanwhile
        return real(*args, **kwargs)  # type: ignore[arg-type]

    collector = Collector()
    subscriber = make_client()
    closing = subscriber.subscribe("closing")
    subscriber.subscribe("kept", collector)
    monkeypatch.setattr(session_module, "register_subscription", slow)
    expire_session(subscriber, wait=False)
    assert registering.wait(30)
    closer = threading.Thread(target=closing.close)
    closer.start()
    wait_until(lambda: subscriber.status == ClientState.CONNECTED, 30, "registered again")
    closer.join(30)
    monkeypatch.undo()
    assert subscriber._session._supervisor.is_alive()  # type: ignore[attr-defined]
    expire_session(subscriber)  # registers again: the supervisor did it
    assert make_client().publish("kept", "after").subscribers == 1
    assert collector.wait(1) == ["after"]


def test_an_unexpected_error_registering_again_is_tried_again(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a new session whose registration failed with an error that
    was no ZkPubSubError was only logged: the client stayed LOST, and
    registered nothing, until its connection next dropped."""
    import zkpubsub.session as session_module

    real = session_module.check_purge
    failed: list[str] = []

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append("once")
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    collector = Collector()
    subscriber = make_client()
    subscriber.subscribe("t", collector)
    monkeypatch.setattr(session_module, "check_purge", fails_once)
    expire_session(subscriber)  # returns once it is CONNECTED on a new session
    assert failed == ["once"]
    assert make_client().publish("t", "after").subscribers == 1
    assert collector.wait(1) == ["after"]
