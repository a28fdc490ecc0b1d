"""What a subscription holds between its queue and its consumer (pure: no
server): read-ahead, order, and when a node may be deleted."""

from __future__ import annotations

import threading
import time

from zkpubsub._buffer import Delivery, DeliveryBuffer, Node
from zkpubsub.message import Message

GUID = "0123456789ab"


def name(seq: int) -> str:
    return f"m{GUID}-{seq:010d}"


def message(i: int) -> Message:
    return Message(id=str(i), topic="t", payload=i, headers={}, published_at=0.0, publisher_id="p")


def test_names_are_read_in_queue_order_up_to_the_prefetch() -> None:
    buffer = DeliveryBuffer(prefetch=2)
    assert buffer.listed([name(1), name(2), name(3)], []) == []
    assert buffer.to_fetch() == [name(1), name(2)]
    assert buffer.pending == 3


def test_foreign_names_are_reported_once() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    assert buffer.listed([name(1)], ["stray"]) == ["stray"]
    buffer.fetched([], [Delivery(Node("stray", 1))])
    assert buffer.listed([name(1)], ["stray"]) == []


def test_a_node_is_deleted_only_after_all_its_messages_were_handled() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    buffer.listed([name(1)], [])
    node = Node(name(1), 2)
    buffer.fetched([name(1)], [Delivery(node, message(1)), Delivery(node, message(2))])
    first = buffer.next(0)
    assert first is not None and first.message == message(1)
    assert buffer.handled(first.node) is False
    assert buffer.take_deletes() == []
    second = buffer.next(0)
    assert second is not None and buffer.handled(second.node) is True
    assert buffer.take_deletes() == [name(1)]


def test_a_node_with_no_message_is_deleted_at_once() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    buffer.listed([name(1)], [])
    buffer.fetched([name(1)], [Delivery(Node(name(1), 0))])
    assert buffer.next(0) is None
    assert buffer.take_deletes() == [name(1)]


def test_names_read_or_deleted_are_not_read_again_from_a_later_listing() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    buffer.listed([name(1), name(2)], [])
    node = Node(name(1), 1)
    buffer.fetched([name(1)], [Delivery(node, message(1))])
    buffer.listed([name(1), name(2), name(3)], [])
    assert buffer.to_fetch() == [name(2), name(3)]
    delivery = buffer.next(0)
    assert delivery is not None
    buffer.handled(delivery.node)
    buffer.deleted(buffer.take_deletes())
    buffer.listed([name(1), name(2)], [])  # a listing older than the delete
    assert buffer.to_fetch() == [name(2)]
    buffer.listed([name(2)], [])  # once it is gone from listings, it is forgotten
    buffer.listed([name(1), name(2)], [])
    assert buffer.to_fetch() == [name(1), name(2)]


def test_deletes_that_got_no_answer_go_out_again() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    buffer.delete_again([name(5)])
    assert buffer.take_deletes() == [name(5)]


def test_read_ahead_asks_for_more_when_it_runs_low() -> None:
    buffer = DeliveryBuffer(prefetch=4)
    buffer.listed([name(i) for i in range(8)], [])
    nodes = [Node(name(i), 1) for i in range(4)]
    buffer.fetched([n.name for n in nodes], [Delivery(n, message(i)) for i, n in enumerate(nodes)])
    assert not buffer.wants_more() and not buffer.low()
    for _ in range(3):
        assert buffer.next(0) is not None
    assert buffer.wants_more() and buffer.low()


def test_closing_wakes_a_waiting_consumer_and_keeps_the_rest_queued() -> None:
    buffer = DeliveryBuffer(prefetch=4)
    got: list[Delivery | None] = []
    waiter = threading.Thread(target=lambda: got.append(buffer.next(None)))
    waiter.start()
    time.sleep(0.05)
    buffer.close()
    waiter.join(5)
    assert got == [None]
    buffer.fetched([], [Delivery(Node(name(1), 1), message(1))])
    assert buffer.next(0) is None  # closed: what is buffered stays in the queue


def test_next_gives_up_at_its_deadline() -> None:
    buffer = DeliveryBuffer(prefetch=4)
    assert buffer.next(time.monotonic() + 0.01) is None


def test_a_consumer_off_our_threads_is_told_once_when_messages_arrive() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    told: list[int] = []
    buffer.listed([name(1), name(2), name(3)], [])
    assert buffer.next_or_notify(lambda: told.append(1)) is None  # nothing read yet
    buffer.fetched([name(1)], [Delivery(Node(name(1), 0))])  # a node with no message
    assert told == []  # nothing to hand out: still waiting
    buffer.fetched([name(2)], [Delivery(Node(name(2), 1), message(2))])
    buffer.fetched([name(3)], [Delivery(Node(name(3), 1), message(3))])
    assert told == [1]  # once, however many reads follow
    first = buffer.next_or_notify(lambda: told.append(2))
    second = buffer.next_or_notify(lambda: told.append(3))
    assert first is not None and first.message == message(2)
    assert second is not None and second.message == message(3)
    assert told == [1]  # taken without waiting: nobody asked to be told


def test_closing_tells_a_waiting_consumer_and_a_closed_buffer_asks_nothing() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    told: list[str] = []
    assert buffer.next_or_notify(lambda: told.append("waiting")) is None
    buffer.close()
    assert told == ["waiting"]
    buffer.fetched([name(1)], [Delivery(Node(name(1), 1), message(1))])
    assert buffer.next_or_notify(lambda: told.append("after close")) is None
    assert told == ["waiting"]
