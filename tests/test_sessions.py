"""Session expiry done on the server, and processes that die: nothing is lost."""

from __future__ import annotations

from collections.abc import Callable

from kazoo.client import KazooClient

from zkpubsub import Client, ClientState, Gap
from zkpubsub.layout import Layout
from zkpubsub.testing import expire_session

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
    cleaner = client.start_cleaner(grace=1.0, interval=0.5)
    assert cleaner.wait_leader(20)
    expire_session(client)
    wait_until(lambda: cleaner.stats().elections_won >= 2, what="elected again on the new session")
    assert cleaner.is_leader
    assert client.stats().cleaner_candidates == 1
