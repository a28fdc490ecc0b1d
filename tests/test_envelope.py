"""The message envelope and the serializers (pure functions)."""

from __future__ import annotations

import dataclasses
import inspect
import os

import msgpack
import pytest

from zkpubsub import JsonSerializer, MsgpackSerializer, RawSerializer, SerializationError, envelope
from zkpubsub._pump import decode_node
from zkpubsub.envelope import check_headers, decode, encode, encoded_size, make_entry
from zkpubsub.message import Message, received
from zkpubsub.serializers import SerializerRegistry, resolve


def entry(payload: object, serializer: object = None, **kw: object):  # type: ignore[no-untyped-def]
    return make_entry(
        resolve(serializer),  # type: ignore[arg-type]
        topic=kw.get("topic", "t"),  # type: ignore[arg-type]
        payload=payload,
        headers=kw.get("headers", {}),  # type: ignore[arg-type]
        publisher_id="pub-1",
    )


def _one(**fields: object) -> bytes:
    """An envelope of one message, with ``fields`` in place of its own."""
    msg = {"id": "x", "pub": "p", "ts": 0, "topic": "t", "ct": "c", "p": b"", **fields}
    return msgpack.packb({"v": 1, "msgs": [msg]}, use_bin_type=True)  # type: ignore[no-any-return]


def test_round_trip_of_a_batch_keeps_order_and_fields() -> None:
    entries = [entry({"n": i}, headers={"k": str(i)}) for i in range(5)]
    decoded = decode(encode(entries))
    assert decoded == entries
    assert len({e.id for e in decoded}) == 5
    assert decoded[0].publisher_id == "pub-1"
    assert decoded[0].content_type == "application/msgpack"


def test_a_node_decodes_into_the_messages_the_dataclass_would_make() -> None:
    # The receive path makes its messages without Message's own __init__.
    entries = [entry({"n": i}, headers={"k": str(i)}, topic=f"t{i}") for i in range(3)]
    entries.append(entry(b"raw", "raw"))
    path = "/root/messages/c/t/s0000000000/m-0000000007"
    serializers = SerializerRegistry(MsgpackSerializer())
    deliveries = decode_node(serializers, path, path.rpartition("/")[2], encode(entries))
    assert [d.error for d in deliveries] == [None] * 4
    assert {d.node.remaining for d in deliveries} == {4}
    made = [d.message for d in deliveries]
    expected = [
        Message(
            id=e.id,
            topic=e.topic,
            payload=resolve(e.content_type.rpartition("/")[2].replace("octet-stream", "raw")).loads(
                e.body
            ),
            headers=e.headers,
            published_at=e.published_at,
            publisher_id=e.publisher_id,
            content_type=e.content_type,
        )
        for e in entries
    ]
    assert made == expected
    assert [m.payload for m in made] == [{"n": 0}, {"n": 1}, {"n": 2}, b"raw"]  # type: ignore[union-attr]
    assert all(m is not None and m.attempt == 1 for m in made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made[0].topic = "x"  # type: ignore[misc,union-attr]
    assert dataclasses.replace(made[0], attempt=2).attempt == 2  # type: ignore[type-var]


def test_received_takes_every_field_of_message_in_order() -> None:
    # A field added to Message must be added to received() too.
    names = [f.name for f in dataclasses.fields(Message)]
    assert list(inspect.signature(received).parameters) == names
    values = ["i", "t", {"p": 1}, {"h": "v"}, 1.5, "pub", "text/plain", 3]
    assert received(*values) == Message(*values)  # type: ignore[arg-type]
    # received() skips __init__: a __post_init__ would be skipped with it
    assert not hasattr(Message, "__post_init__")


def test_encoded_size_predicts_the_node_size() -> None:
    entries = [entry(b"x" * 100), entry("y" * 50)]
    empty = len(encode([]))
    # msgpack arrays of < 16 items have a one-byte header, so sizes add up
    assert len(encode(entries)) == empty + sum(encoded_size(e) for e in entries)


def test_the_format_is_documented_msgpack() -> None:
    raw = msgpack.unpackb(encode([entry("hi")]), raw=False)
    assert raw["v"] == 1
    (msg,) = raw["msgs"]
    assert set(msg) == {"id", "pub", "ts", "topic", "h", "ct", "p"}
    assert msgpack.unpackb(msg["p"], raw=False) == "hi"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1\xc1\xc1", "not a msgpack envelope"),
        (msgpack.packb([1, 2, 3]), "not a zkpubsub envelope"),
        (msgpack.packb({"v": 99, "msgs": []}), "format 99"),
        (msgpack.packb({"v": 1, "msgs": "nope"}), "not a list"),
        (msgpack.packb({"v": 1, "msgs": [{"id": "x"}]}), "malformed"),
        (
            msgpack.packb(
                {
                    "v": 1,
                    "msgs": [{"id": 1, "pub": "p", "ts": 0, "topic": "t", "ct": "c", "p": b""}],
                }
            ),
            "wrong type",
        ),
        (_one(p="s"), "wrong type"),  # a payload must be bytes
        (_one(h=[1]), "wrong type"),  # headers must be a map
        (msgpack.packb({"v": 1, "msgs": [7]}), "malformed"),
        (_one(ts="then"), "malformed"),
        # the wire specification's rejects, which were read leniently before
        (_one(h=[]), "wrong type"),  # an empty array is no map
        (_one(h=""), "wrong type"),
        (_one(h=False), "wrong type"),
        (_one(ts="1.5"), "malformed"),  # a number, not a text of one
        (_one(ts=True), "malformed"),
    ],
)
def test_garbage_is_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode(data)


@pytest.mark.parametrize("h", [None, {}])
def test_a_nil_or_empty_header_map_is_no_headers(h: object) -> None:
    (got,) = decode(_one(h=h, ts=7))
    assert got.headers == {} and got.published_at == 7.0


def test_serializers_round_trip() -> None:
    for ser, value in (
        (MsgpackSerializer(), {"a": [1, b"b", None]}),
        (JsonSerializer(), {"a": [1, "b", None]}),
        (RawSerializer(), b"\x00\x01"),
    ):
        assert ser.loads(ser.dumps(value)) == value


def test_unserializable_payloads_raise_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot serialize payload of type object"):
        entry(object())
    with pytest.raises(SerializationError):
        entry(float("nan"), "json")
    with pytest.raises(SerializationError, match="raw serializer takes bytes"):
        entry("text", "raw")
    assert issubclass(SerializationError, TypeError)


def test_headers_must_be_strings() -> None:
    assert check_headers(None) == {}
    assert check_headers({"a": "b"}) == {"a": "b"}
    with pytest.raises(SerializationError, match="keys and values must be str"):
        check_headers({"a": 1})  # type: ignore[dict-item]
    with pytest.raises(SerializationError, match="mapping"):
        check_headers([("a", "b")])  # type: ignore[arg-type]


def test_unknown_serializer_name() -> None:
    with pytest.raises(ValueError, match="unknown serializer"):
        resolve("yaml")


# The fork is the point (threads of earlier tests may still run; the child
# only takes an id and exits): Python 3.12+ warns of any fork with threads.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_message_ids_are_32_hex_digits_unique_and_new_in_a_forked_child() -> None:
    ids = [envelope.new_message_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids must not repeat the parent's
        os.write(write, envelope.new_message_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    mine = envelope.new_message_id()
    assert len(child) == 32 and child[:16] != mine[:16], (child, mine)


@pytest.mark.parametrize(
    ("content_type", "error"),
    [(b"text/x", TypeError), ("", TypeError), (None, TypeError), ("text/\ud800", ValueError)],
)
def test_a_serializers_content_type_is_checked_up_front(
    content_type: object, error: type[Exception]
) -> None:
    """Before, a bytes content type was taken and every reader then refused
    the messages; a lone surrogate raised UnicodeEncodeError at publish."""

    class Custom:
        def __init__(self) -> None:
            self.content_type = content_type

        def dumps(self, payload: object) -> bytes:
            return b""

        def loads(self, data: bytes) -> object:
            return None

    with pytest.raises(error, match="content_type"):
        resolve(Custom())  # type: ignore[arg-type]
