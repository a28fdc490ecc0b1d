"""The znode layout: names, paths and sequence order (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zkpubsub.layout import (
    Layout,
    NodeKind,
    Place,
    brief,
    carries_data,
    inline_data,
    inline_text,
    order_by_sequence,
    order_names,
    parse_item_node,
    parse_message_node,
    parse_queue_entry,
    validate_name,
    validate_root,
)

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1


def zk_name(guid: str, seq: int) -> str:
    """A message node name exactly as ZooKeeper prints a sequential create."""
    return f"m{guid}-{seq:010d}"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        (".", "'.'"),
        ("..", "'..'"),
        ("a/b", "'/'"),
        ("tab\there", "control character"),
        ("nul\x00", "control character"),
        ("del\x7f", "control character"),
        ("x" * 201, "limit"),
        ("\ufff5", "ZooKeeper rejects"),
    ],
)
def test_bad_names_raise_value_error_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_name(value, "topic")


def test_non_string_name_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="topic must be a str"):
        validate_name(42, "topic")


@pytest.mark.parametrize(
    "value", ["cache.users", "billing-cache", "a", "émoji-✓", ".hidden", "x" * 200]
)
def test_good_names_pass(value: str) -> None:
    assert validate_name(value) == value


def test_roots() -> None:
    assert validate_root("/zkpubsub") == "/zkpubsub"
    assert validate_root("/") == ""
    for bad in ("zkpubsub", "/a/", "/a//b", "/a/../b"):
        with pytest.raises(ValueError):
            validate_root(bad)


def test_paths_are_built_under_the_root() -> None:
    layout = Layout("/apps/bus")
    assert layout.client("c1") == "/apps/bus/clients/c1"
    assert layout.subscriber("t", "c1") == "/apps/bus/subscribers/t/c1"
    assert layout.queue("c1", "t") == "/apps/bus/messages/c1/t"
    assert layout.message_prefix(layout.queue("c1", "t"), "0123456789ab") == (
        "/apps/bus/messages/c1/t/m0123456789ab-"
    )
    assert Layout("/").clients == "/clients"


def test_message_names_parse_including_negative_sequences() -> None:
    guid = "0123456789ab"
    assert parse_message_node(zk_name(guid, 42)) == (guid, 42)
    assert parse_message_node(zk_name(guid, INT_MAX)) == (guid, INT_MAX)
    assert parse_message_node(zk_name(guid, INT_MIN)) == (guid, INT_MIN)
    assert parse_message_node(zk_name(guid, -5)) == (guid, -5)
    assert zk_name(guid, -5) == f"m{guid}--000000005"
    for foreign in ("msg0000000001", "m0123-0000000001", "mZZZZZZZZZZZZ-0000000001", "x"):
        assert parse_message_node(foreign) is None


def test_order_survives_the_32_bit_wrap() -> None:
    created = [INT_MAX - 2, INT_MAX - 1, INT_MAX, INT_MIN, INT_MIN + 1, INT_MIN + 2]
    shuffled = [created[i] for i in (3, 0, 5, 1, 4, 2)]
    assert order_by_sequence((s, s) for s in shuffled) == created
    # and at the second wrap point, -1 -> 0
    created = [-3, -2, -1, 0, 1, 2]
    assert order_by_sequence((s, s) for s in reversed(created)) == created


def test_order_names_sorts_numerically_not_as_strings_and_sets_foreign_aside() -> None:
    guid = "0123456789ab"
    names = [zk_name(guid, s) for s in (10, 9, 100, INT_MIN, INT_MAX)] + ["garbage"]
    ordered, foreign = order_names(names)
    assert ordered == [zk_name(guid, s) for s in (9, 10, 100, INT_MAX, INT_MIN)]
    assert foreign == ["garbage"]


@given(data=st.binary(max_size=300), seq=st.integers(INT_MIN, INT_MAX))
def test_a_name_carrying_its_envelope_gives_it_back_and_parses_as_a_message(
    data: bytes, seq: int
) -> None:
    guid = "0123456789ab"
    prefix = Layout("/r").inline_prefix("/r/messages/c/t/s0000000001", guid, inline_text(data))
    name = f"{prefix.rpartition('/')[2]}{seq:010d}"  # as the server completes it
    assert inline_data(name) == data
    assert carries_data(name) and carries_data(f"s0000000001/{name}")
    assert parse_queue_entry(name) == ("m", guid, seq)
    assert parse_message_node(name) == (guid, seq)
    assert "/" not in name and "=" not in name
    shown = brief(f"/q/s0000000001/{name}")
    assert shown == f"/q/s0000000001/m{guid}.<{len(inline_text(data))} chars>.{seq:010d}"
    assert brief(f"/q/{zk_name(guid, seq)}") == f"/q/{zk_name(guid, seq)}"


def test_names_without_an_envelope_carry_none_and_order_beside_those_with_one() -> None:
    guid = "0123456789ab"
    plain = zk_name(guid, 7)
    assert inline_data(plain) is None and not carries_data(plain)
    assert inline_data(f"m{guid}.not base64.0000000001") is None
    assert inline_data(f"o{guid}.AAAA.0000000001") is None  # markers never carry one
    inline = f"m{guid}.{inline_text(b'x')}.{8:010d}"
    ordered, foreign = order_names([inline, plain, "garbage"])
    assert ordered == [plain, inline] and foreign == ["garbage"]


@given(start=st.integers(INT_MIN, INT_MAX), count=st.integers(0, 300), data=st.data())
def test_any_window_of_the_counter_comes_back_in_creation_order(
    start: int, count: int, data: st.DataObject
) -> None:
    def wrap(n: int) -> int:
        return (n - INT_MIN) % 2**32 + INT_MIN

    step = data.draw(st.integers(1, 1000))
    created = [wrap(start + i * step) for i in range(count)]
    shuffled = data.draw(st.permutations(created))
    assert order_by_sequence((s, s) for s in shuffled) == created


def test_a_path_under_a_work_queue_is_located_by_what_it_is() -> None:
    paths = Layout("/r").work_queue("q")
    base = paths.base
    item = "q500-s0000000002-0123456789ab-0000000007"
    legacy = "q500-0123456789ab-0000000003"
    assert parse_item_node(item) is not None and parse_item_node(legacy) is not None
    assert paths.locate(base) == ("folder", base)
    assert paths.locate(paths.items) == ("folder", paths.items)
    assert paths.locate(paths.segment(2)) == ("segment", "s0000000002")
    assert paths.locate(paths.item(item)) == ("item", item)
    assert paths.locate(paths.item(legacy)) == ("item", legacy)
    assert paths.locate(paths.reservation(item)) == ("reservation", item)
    assert paths.locate(paths.worker("c.1")) == ("worker", "c.1")
    # an item name in a segment it does not name, and other strangers
    for foreign in (
        f"{paths.segment(3)}/{item}",
        f"{paths.items}/stray",
        f"{paths.segment(2)}/stray",
        f"{paths.item(item)}/child",
    ):
        assert paths.locate(foreign) == ("foreign", foreign)
    assert paths.locate(paths.dead_letter(item)) is None
    assert paths.locate(paths.result("id")) is None
    assert paths.locate(f"{base}x/items") is None
    assert paths.locate("/r/queues") is None


def test_a_path_is_placed_with_the_names_it_holds() -> None:
    layout = Layout("/r")
    queue = layout.queue("c1", "news")
    segment = layout.segment(queue, 1)
    message = f"{segment}/m0123456789ab-0000000004"
    inline = f"{segment}/m0123456789ab.{inline_text(b'x')}.0000000005"
    marker = f"{segment}/o0123456789ab-0000000006"
    legacy = f"{queue}/m0123456789ab-0000000001"
    item = "q500-s0000000002-0123456789ab-0000000007"
    work = layout.work_queue("jobs")
    assert layout.place("/r") == Place(NodeKind.ROOT)
    assert layout.place("/") == Place(NodeKind.ABOVE_ROOT)
    assert layout.place(layout.client("c1")) == Place(NodeKind.CLIENT, ("c1",))
    assert layout.place(layout.subscriber("news", "c1")) == Place(
        NodeKind.SUBSCRIBER, ("news", "c1")
    )
    assert layout.place(queue) == Place(NodeKind.QUEUE, ("c1", "news"))
    assert layout.place(segment) == Place(NodeKind.SEGMENT, ("c1", "news", "s0000000001"))
    for path in (message, inline):
        place = layout.place(path)
        assert place.kind is NodeKind.MESSAGE
        assert place.names == ("c1", "news", "s0000000001", path.rpartition("/")[2])
    assert layout.place(marker).kind is NodeKind.MARKER
    assert layout.place(marker).names[:2] == ("c1", "news")
    assert layout.place(legacy) == Place(
        NodeKind.MESSAGE, ("c1", "news", "m0123456789ab-0000000001")
    )
    assert layout.place(layout.receipt("c1", "0123456789ab")) == Place(
        NodeKind.RECEIPT, ("c1", "r0123456789ab")
    )
    assert layout.place(work.base) == Place(NodeKind.WORK_QUEUE, ("jobs",))
    assert layout.place(work.items) == Place(NodeKind.ITEMS, ("jobs",))
    assert layout.place(work.item(item)) == Place(NodeKind.ITEM, ("jobs", "s0000000002", item))
    assert layout.place(work.reservation(item)) == Place(NodeKind.RESERVATION, ("jobs", item))
    assert layout.place(work.worker("w1")) == Place(NodeKind.WORKER, ("jobs", "w1"))
    # what the layout does not name holds no names, and kind_of agrees
    for stranger in (
        f"{segment}/stray",
        f"{queue}/o0123456789ab-0000000001",  # markers came with segments
        f"{message}/child",
        "/r/elsewhere",
        f"{work.items}/stray",
    ):
        assert layout.place(stranger) == Place(NodeKind.FOREIGN)
        assert layout.kind_of(stranger) is NodeKind.FOREIGN
