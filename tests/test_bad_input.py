"""Bad input and foreign data: a clear error from the documented tree, and
nothing written, lost or left behind."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from kazoo.client import KazooClient

from zkpubsub import (
    Client,
    ClientClosed,
    ClientState,
    DecodeError,
    Message,
    PayloadTooLarge,
    SerializationError,
)
from zkpubsub._deadlines import deadline_after
from zkpubsub.config import ClientConfig
from zkpubsub.layout import Layout
from zkpubsub.testing import queue_entries

from .helpers import Collector, wait_until

MakeClient = Callable[..., Client]

EMOJI = "cache-\U0001f600"


def test_names_with_characters_above_u_ffff_are_refused_before_anything_is_sent(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    client = make_client()
    with pytest.raises(ValueError, match="above U\\+FFFF"):
        client.publish(EMOJI, "x")
    with pytest.raises(ValueError, match="above U\\+FFFF"):
        client.subscribe(EMOJI)
    with pytest.raises(ValueError, match="above U\\+FFFF"):
        client.queue(EMOJI)
    with pytest.raises(ValueError, match="above U\\+FFFF"):
        make_client(client_id=EMOJI)
    assert raw_zk.get_children(Layout(zk_root).subscribers) == []


def test_a_header_that_is_not_valid_unicode_is_a_serialization_error(
    make_client: MakeClient,
) -> None:
    collector = Collector()
    make_client().subscribe("t", collector)
    client = make_client()
    for headers in ({"k": "lone \ud800 surrogate"}, {"\udfff": "v"}):
        with pytest.raises(SerializationError, match="not valid Unicode"):
            client.publish("t", "x", headers=headers)
        with pytest.raises(SerializationError):
            client.queue("q").put("x", headers=headers)
    client.publish("t", "fine")
    assert collector.wait(1) == ["fine"]


class Exploding:
    content_type = "application/x-exploding"

    def dumps(self, payload: Any) -> bytes:
        raise RuntimeError("the codec is broken")

    def loads(self, data: bytes) -> Any:
        raise RuntimeError("the codec is broken")


def test_whatever_a_custom_serializer_raises_becomes_a_serialization_error(
    make_client: MakeClient,
) -> None:
    client = make_client(serializer=Exploding())
    with pytest.raises(SerializationError, match="the codec is broken") as info:
        client.publish("t", "x")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(SerializationError, match="the codec is broken"):
        client.queue("q").put("x")


@pytest.mark.parametrize(
    "garbage",
    [b"\xc1 not msgpack", b"\xa5hello", b"\x81\xa6status\xa4what"],
    ids=["not msgpack", "not a map", "unknown status"],
)
def test_a_ticket_finding_garbage_for_its_result_raises_a_decode_error(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str, garbage: bytes
) -> None:
    q = make_client().queue("jobs")
    ticket = q.put("job", want_result=True)
    raw_zk.create(Layout(zk_root).work_queue("jobs").result(ticket.id), garbage)
    with pytest.raises(DecodeError) as info:
        ticket.wait(5)
    assert info.value.data == garbage and info.value.path.endswith(ticket.id)


def test_a_message_node_someone_gave_a_child_is_deleted_after_handling_not_redelivered(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    layout = Layout(zk_root)
    queue = layout.queue("reader", "t")

    def handler(message: Message) -> None:
        if message.payload == "adopted":
            (node,) = queue_entries(raw_zk, zk_root, "reader", "t") or []
            raw_zk.create(f"{queue}/{node}/stray", b"")

    reader = make_client(client_id="reader")
    sub = reader.subscribe("t", handler)
    make_client().publish("t", "adopted")
    wait_until(lambda: sub.stats().nodes_deleted == 1, 20, "the node deleted")
    assert queue_entries(raw_zk, zk_root, "reader", "t") == []
    reader.close()
    again = Collector()
    make_client(client_id="reader").subscribe("t", again)
    make_client().publish("t", "next")
    assert again.wait(1) == ["next"]


def test_a_node_the_subscriber_may_not_read_is_an_error_and_stops_no_other_topic(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """Before, reading a node whose ACL left the subscriber out failed the
    receive pump's whole round, again and again: no subscription of the
    client received anything more, and on_error was never told."""
    from kazoo.security import make_digest_acl

    layout = Layout(zk_root)
    errors: list[BaseException] = []
    got = Collector()
    reader = make_client(client_id="guarded")
    reader.subscribe("a", lambda message: None, on_error=lambda exc, msg: errors.append(exc))
    reader.subscribe("b", got)
    publisher = make_client()
    publisher.publish("b", "before")
    assert got.wait(1) == ["before"]
    segment = layout.segment(layout.queue("guarded", "a"), 0)
    someone_else = [make_digest_acl("someone-else", "secret", all=True)]
    raw_zk.create(f"{segment}/junk", b"x", acl=someone_else)  # a foreign name
    raw_zk.create(layout.message_prefix(segment, "0" * 12), b"x", acl=someone_else, sequence=True)
    # no event may tell of a node one cannot read: its queue's next listing
    # finds it (one after a reconnect, or every 30 s), asked for here
    reader._pump.relist()
    publisher.publish("a", "wakes the pump")
    for n in range(3):
        publisher.publish("b", n)
    assert got.wait(4, 20) == ["before", 0, 1, 2]
    wait_until(lambda: len(errors) == 2, 20, "both told")
    assert all(isinstance(e, DecodeError) and "cannot be read" in str(e) for e in errors)
    assert {e.path.rsplit("/", 1)[1][:4] for e in errors if isinstance(e, DecodeError)} == {
        "junk",
        "m000",
    }
    wait_until(lambda: raw_zk.get_children(segment) == [], 20, "both deleted")


def test_an_idle_publisher_leaves_no_receipts_behind(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    make_client().subscribe("t")
    publisher = make_client()
    for i in range(3):
        publisher.publish("t", i)
    publisher.queue("q").put("item")
    folder = Layout(zk_root).client_receipts(publisher.client_id)
    wait_until(lambda: raw_zk.get_children(folder) == [], 10, "the receipts deleted")


def test_a_transaction_larger_than_the_server_accepts_fails_once_with_payload_too_large(
    make_client: MakeClient,
) -> None:
    """Limits raised above the server's jute.maxbuffer: the server drops the
    connection on such a request; the publisher says why instead of
    reconnecting until its timeout with the outcome unknown."""
    collector = Collector()
    make_client().subscribe("t", collector)
    publisher = make_client(
        serializer="raw", max_message_bytes=1_500_000, max_transaction_bytes=1_600_000
    )
    states: list[ClientState] = []
    publisher.add_listener(states.append)
    with pytest.raises(PayloadTooLarge, match=r"jute\.maxbuffer") as info:
        publisher.publish("t", b"x" * 1_200_000, timeout=15)
    assert info.value.size > info.value.limit == 0xFFFFF
    assert states.count(ClientState.SUSPENDED) <= 2
    publisher.publish("t", b"small")
    assert collector.wait(1) == [b"small"]  # the large one was never written


def test_a_timeout_that_is_no_number_is_a_type_error_that_says_so() -> None:
    """A str failed inside a comparison ("'<=' not supported between..."),
    and True was taken for one second."""
    for bad in ("1", True, b"1", [1]):
        with pytest.raises(TypeError, match="timeout must be a number of seconds or None, not"):
            deadline_after(bad)  # type: ignore[arg-type]
    assert deadline_after(None) is None and deadline_after(0) is not None


@pytest.mark.parametrize(
    "bad",
    # 1e10 passed the checks and raised OverflowError inside a thread wait
    [-1.0, math.inf, math.nan, 1e10],
    ids=["negative", "inf", "nan", "past-a-year"],
)
def test_a_timeout_that_is_negative_infinite_nan_or_past_a_year_is_refused_before_anything_is_sent(
    make_client: MakeClient, bad: float
) -> None:
    collector = Collector()
    make_client().subscribe("t", collector)
    pull = make_client().subscribe("p")
    client = make_client()
    queue = client.queue("q")
    for call in (
        lambda: client.publish("t", "never", timeout=bad),
        lambda: client.publish_async("t", "never", timeout=bad),
        lambda: pull.get(timeout=bad),
        lambda: queue.ticket("0" * 32).wait(timeout=bad),
        lambda: queue.reserve(timeout=bad),
        lambda: pull.close(timeout=bad),
        lambda: queue.consume(lambda item: None).stop(timeout=bad),
    ):
        with pytest.raises(ValueError, match="timeout must be from 0 to 31536000 seconds"):
            call()
    # nothing was sent, and the client's other callers are unharmed
    assert not pull.closed
    client.publish("t", "after")
    assert collector.wait(1) == ["after"]
    assert client.pending_publishes == 0
    for option in ("request_timeout", "session_timeout", "connect_timeout", "close_timeout"):
        with pytest.raises(ValueError, match=f"{option} must be a positive number"):
            make_client(**{option: bad})


def test_a_ticket_for_an_id_that_is_no_node_name_is_refused_and_touches_nothing(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    queue = make_client().queue("q")
    queue.put("x")
    results = Layout(zk_root).work_queue("q").results
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="item id"):
            queue.ticket(bad)
    assert raw_zk.exists(results) is not None


def test_an_item_listed_twice_in_one_ack_and_a_listener_that_is_not_callable_are_refused(
    make_client: MakeClient,
) -> None:
    client = make_client()
    queue = client.queue("q")
    queue.put("x")
    item = queue.reserve(timeout=10)
    assert item is not None
    with pytest.raises(ValueError, match="listed twice"):
        queue.ack_many([item, item])
    queue.ack_many([item])  # still held, and acked once
    assert queue.stats().ready == 0 and queue.stats().reserved == 0
    for add in (client.add_listener, client.add_gap_listener):
        with pytest.raises(TypeError, match="must be callable"):
            add(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        # the session timeout travels as milliseconds in 32 bits: kazoo
        # failed inside its connect past about 24.8 days
        ("session_timeout", 86_401.0),
        ("request_timeout", 1e10),
        ("connect_timeout", 1e10),
        ("close_timeout", math.inf),
    ],
)
def test_client_timeouts_past_their_bound_are_refused_up_front(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{option} must be a positive number of seconds, at most"):
        ClientConfig(hosts="127.0.0.1:2181", **{option: value})


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, -1.0, True, "5"])
@pytest.mark.parametrize("option", ["idempotency_ttl", "lease", "ack_deadline", "max_wait"])
def test_gateway_seconds_must_be_finite_and_positive(option: str, value: object) -> None:
    """Before, NaN and infinity were taken: a NaN idempotency_ttl let every
    key expire at once (a retry ran twice), an infinite lease made every
    queue request a 500."""
    pytest.importorskip("fastapi")
    from zkpubsub.gateway.settings import GatewaySettings

    with pytest.raises(ValueError, match=f"{option} must be a number of seconds above 0"):
        GatewaySettings(hosts="127.0.0.1:2181", **{option: value})
    GatewaySettings(hosts="127.0.0.1:2181", **{option: 5.0})


def test_retry_delays_gap_listener_and_registration_wait_are_checked_up_front(
    make_client: MakeClient,
) -> None:
    """A NaN retry delay retried at once in threads and never on asyncio,
    an infinite one ended the dispatcher thread at its first retry; a gap
    listener that is no callable failed at the first gap, in a log line; a
    registration wait past a year failed after connecting, naming another
    timeout."""
    client = make_client()
    for option in ("retry_delay", "max_retry_delay"):
        for bad in (math.nan, math.inf, 1e10, -1.0):
            with pytest.raises(ValueError, match=f"{option} must be"):
                client.subscribe("t", lambda m: None, **{option: bad})
    assert client.subscriptions() == []
    with pytest.raises(TypeError, match="on_gap must be callable"):
        make_client(on_gap=5)
    closed = make_client()
    closed.close()
    with pytest.raises(ClientClosed):  # as adding a listener is; it was taken silently
        closed.add_observer(object())
    with pytest.raises(ValueError, match="registration_wait must be"):
        ClientConfig(hosts="127.0.0.1:2181", registration_wait=1e12)


def test_a_handler_failing_past_a_thousand_attempts_ends_in_a_drop_not_a_dead_dispatcher(
    make_client: MakeClient,
) -> None:
    """The wait before attempt 1026 overflowed (2.0 ** 1024), even with
    no delay at all: the dispatcher thread ended and the topic was never
    handled again."""
    attempts = 1100
    handled: list[Any] = []
    failures: list[BaseException] = []

    def handler(message: Any) -> None:
        if message.payload == "poison":
            raise RuntimeError("poison")
        handled.append(message.payload)

    sub = make_client().subscribe(
        "t",
        handler,
        on_error=lambda e, m: failures.append(e),
        max_attempts=attempts,
        retry_delay=0,
        max_retry_delay=0,
    )
    publisher = make_client()
    publisher.publish("t", "poison")
    publisher.publish("t", "next")
    wait_until(lambda: handled == ["next"], 60, "the message after the poison handled")
    assert len(failures) == attempts and sub.stats().dropped == 1


def test_one_str_or_bytes_given_as_several_payloads_is_a_type_error_and_nothing_is_sent(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """``put_many("abc")`` put three items, "a", "b" and "c"; publish_many
    sent a message per character (or per byte, as ints)."""
    client = make_client()
    client.subscribe("t", lambda message: None)
    queue = client.queue("jobs")
    for payloads in ("abc", b"abc", bytearray(b"abc")):
        with pytest.raises(TypeError, match="several payloads"):
            queue.put_many(payloads)
        with pytest.raises(TypeError, match="several payloads"):
            client.publish_many("t", payloads)
        with pytest.raises(TypeError, match="several payloads"):
            client.publish_many_async("t", payloads)
    assert queue.stats().ready == 0
    assert queue_entries(raw_zk, zk_root, client.client_id, "t") == []


@pytest.mark.parametrize(
    ("option", "value"),
    [("session_timeout", -1.0), ("session_timeout", math.nan), ("request_timeout", math.inf)],
)
def test_an_observers_timeouts_are_checked_before_it_connects(option: str, value: float) -> None:
    """Before, a negative session timeout was used to connect, a NaN one
    failed inside the ZooKeeper client, and a bad request timeout only after
    a session was opened."""
    from zkpubsub.observer import Observer

    with pytest.raises(ValueError, match=f"{option} must be a positive number of seconds"):
        Observer("127.0.0.1:1", **{option: value})  # no server there: nothing is tried
