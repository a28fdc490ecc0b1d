"""What a subscription holds between its queue and its consumer (pure: no
server): read-ahead, order, and when a node may be deleted."""

from __future__ import annotations

import threading
import time

from zkpubsub._buffer import RECENT_DELETES, RECENT_SECONDS, Delivery, DeliveryBuffer, Node
from zkpubsub.message import Message

GUID = "0123456789ab"


def name(seq: int) -> str:
    return f"m{GUID}-{seq:010d}"


def next_of(buffer: DeliveryBuffer, deadline: float | None) -> Delivery | None:
    """The next delivery, waiting for it until ``deadline`` (``None``: when
    the deadline passes or the buffer closes)."""
    taken, _ = buffer.take(1, deadline)
    return taken[0] if taken else None


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
    first = next_of(buffer, 0)
    assert first is not None and first.message == message(1)
    assert buffer.handled(first.node) is False
    assert buffer.take_deletes() == []
    second = next_of(buffer, 0)
    assert second is not None and buffer.handled(second.node) is True
    assert buffer.take_deletes() == [name(1)]


def test_a_run_is_taken_in_order_and_counts_as_pending_until_handled() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    names = [name(i) for i in range(1, 6)]
    buffer.listed(names, [])
    nodes = [Node(n, 1) for n in names]
    buffer.fetched(names, [Delivery(node, message(i)) for i, node in enumerate(nodes, 1)])
    run, low = buffer.take(3, 0)
    assert [d.message for d in run] == [message(1), message(2), message(3)]
    assert low is False  # nothing listed waits to be read
    assert buffer.pending == 5  # taken is not handled
    for delivery in run:
        buffer.handled(delivery.node)
    assert buffer.pending == 2
    rest, _ = buffer.take(10, 0)  # what is buffered: no waiting
    assert [d.message for d in rest] == [message(4), message(5)]
    assert buffer.take(10, 0) == ([], False)
    assert buffer.take(10, time.monotonic() + 0.05) == ([], False)  # the deadline passed
    for delivery in rest:
        buffer.handled(delivery.node)
    assert buffer.pending == 0
    assert buffer.take_deletes() == names


def test_taking_a_run_says_when_read_ahead_runs_low() -> None:
    buffer = DeliveryBuffer(prefetch=4)
    names = [name(i) for i in range(1, 9)]
    buffer.listed(names, [])
    first = buffer.to_fetch()
    assert first == names[:4]
    buffer.fetched(first, [Delivery(Node(n, 1), message(i)) for i, n in enumerate(first, 1)])
    run, low = buffer.take(1, 0)
    assert len(run) == 1 and low is False  # three of four still read ahead
    run, low = buffer.take(2, 0)
    assert len(run) == 2 and low is True  # one left, names waiting: read more


def test_a_consumer_off_our_threads_is_told_when_read_ahead_runs_low() -> None:
    buffer = DeliveryBuffer(prefetch=4)
    names = [name(i) for i in range(1, 9)]
    buffer.listed(names, [])
    first = buffer.to_fetch()
    buffer.fetched(first, [Delivery(Node(n, 1), message(i)) for i, n in enumerate(first, 1)])
    delivery, low = buffer.next_or_notify(lambda: None)
    assert delivery is not None and delivery.message == message(1) and low is False
    buffer.next_or_notify(lambda: None)
    delivery, low = buffer.next_or_notify(lambda: None)
    assert delivery is not None and delivery.message == message(3)
    assert low is True  # one left, names waiting: read more
    assert buffer.pending == 8  # the three taken count until handled


def test_a_closed_buffer_gives_no_run() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    buffer.listed([name(1)], [])
    buffer.fetched([name(1)], [Delivery(Node(name(1), 1), message(1))])
    buffer.close()
    assert buffer.take(10, None) == ([], False)  # at once, though a message is buffered
    assert buffer.take(10, 0) == ([], False)


def test_a_waiting_take_wakes_when_a_message_arrives() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    buffer.listed([name(1)], [])
    got: list[list[Delivery]] = []
    taker = threading.Thread(target=lambda: got.append(buffer.take(10, None)[0]))
    taker.start()
    time.sleep(0.05)
    buffer.fetched([name(1)], [Delivery(Node(name(1), 1), message(1))])
    taker.join(5)
    assert not taker.is_alive()
    assert [d.message for d in got[0]] == [message(1)]


def test_a_node_with_no_message_is_deleted_at_once() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    buffer.listed([name(1)], [])
    buffer.fetched([name(1)], [Delivery(Node(name(1), 0))])
    assert next_of(buffer, 0) is None
    assert buffer.take_deletes() == [name(1)]


def test_names_read_are_not_read_again_from_a_later_listing() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    buffer.listed([name(1), name(2)], [])
    node = Node(name(1), 1, czxid=11)
    buffer.fetched([name(1)], [Delivery(node, message(1))])
    buffer.listed([name(1), name(2), name(3)], [])
    assert buffer.to_fetch() == [name(2), name(3)]
    assert buffer.discovered(name(1)) is False


def handle_and_delete(buffer: DeliveryBuffer, seq: int, czxid: int) -> None:
    buffer.listed([name(seq)], [])
    buffer.fetched([name(seq)], [Delivery(Node(name(seq), 1, czxid), message(seq))])
    delivery = next_of(buffer, 0)
    assert delivery is not None and buffer.handled(delivery.node)
    assert buffer.take_deletes() == [name(seq)]
    buffer.deleted([name(seq)])


def test_a_deleted_node_read_again_as_it_was_is_deleted_again_not_delivered() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    handle_and_delete(buffer, 1, czxid=11)
    # the servers show it again (a lost delete, a server serving a stale copy)
    buffer.listed([name(1), name(2)], [])
    assert buffer.to_fetch() == [name(1), name(2)]  # read again, to see which node it is
    buffer.fetched(
        [name(1), name(2)],
        [Delivery(Node(name(1), 1, czxid=11), message(1)), Delivery(Node(name(2), 1), message(2))],
    )
    got = next_of(buffer, 0)
    assert got is not None and got.message == message(2)  # not message 1 again
    assert next_of(buffer, 0) is None
    assert buffer.take_deletes() == [name(1)]  # deleted again
    buffer.deleted([name(1)])
    buffer.listed([name(1)], [])  # and again, for as long as a stale copy shows it
    buffer.fetched([name(1)], [Delivery(Node(name(1), 1, czxid=11), message(1))])
    assert next_of(buffer, 0) is None and buffer.take_deletes() == [name(1)]


def test_a_new_node_under_a_deleted_name_is_delivered() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    handle_and_delete(buffer, 1, czxid=11)
    assert buffer.discovered(name(1)) is True  # an event names a create: read it
    assert buffer.to_fetch() == [name(1)]
    buffer.fetched([name(1)], [Delivery(Node(name(1), 1, czxid=99), message(7))])
    got = next_of(buffer, 0)
    assert got is not None and got.message == message(7)
    assert buffer.handled(got.node) and buffer.take_deletes() == [name(1)]


def test_a_deleted_node_found_gone_when_read_again_delivers_nothing() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    handle_and_delete(buffer, 1, czxid=11)
    buffer.listed([name(1)], [])  # a listing older than the delete
    buffer.fetched([name(1)], [])  # the read finds nothing
    assert next_of(buffer, 0) is None and buffer.take_deletes() == []
    assert buffer.to_fetch() == []


def test_deleted_names_are_remembered_while_listed_and_for_the_newest_few_thousand() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    handle_and_delete(buffer, 1, czxid=11)
    handle_and_delete(buffer, 2, czxid=12)
    for seq in range(3, RECENT_DELETES + 3):
        buffer.deleted([name(seq)])
    buffer.listed([name(2)], [])  # name(1) is older than the newest RECENT_DELETES, and gone
    buffer.fetched([name(2)], [Delivery(Node(name(2), 1, czxid=12), message(2))])
    assert next_of(buffer, 0) is None  # name(2) was shown: still known
    buffer.listed([name(1)], [])
    buffer.fetched([name(1)], [Delivery(Node(name(1), 1, czxid=11), message(1))])
    got = next_of(buffer, 0)  # name(1) was forgotten: delivered as any node is
    assert got is not None and got.message == message(1)


def test_deleted_names_are_forgotten_after_recent_seconds_once_listings_stop_showing_them() -> None:
    now = [1000.0]
    buffer = DeliveryBuffer(prefetch=10, clock=lambda: now[0])
    handle_and_delete(buffer, 1, czxid=11)
    now[0] += RECENT_SECONDS / 2
    handle_and_delete(buffer, 2, czxid=12)
    now[0] += RECENT_SECONDS / 2 + 1  # name(1) deleted longer ago than that, name(2) not
    buffer.listed([name(1), name(2)], [])  # both still shown: both kept
    buffer.listed([], [])  # neither shown: name(1) forgotten
    buffer.listed([name(1), name(2)], [])
    buffer.fetched(
        [name(1), name(2)],
        [
            Delivery(Node(name(1), 1, czxid=11), message(1)),
            Delivery(Node(name(2), 1, czxid=12), message(2)),
        ],
    )
    got = next_of(buffer, 0)
    assert got is not None and got.message == message(1)  # forgotten: delivered
    assert next_of(buffer, 0) is None  # name(2) is still known: not delivered again
    assert buffer.take_deletes() == [name(2)]


def test_deletes_that_got_no_answer_go_out_again() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    buffer.delete_again([name(5)])
    assert buffer.take_deletes() == [name(5)]


def test_read_ahead_asks_for_more_when_it_runs_low() -> None:
    buffer = DeliveryBuffer(prefetch=4)
    buffer.listed([name(i) for i in range(8)], [])
    nodes = [Node(name(i), 1) for i in range(4)]
    buffer.fetched([n.name for n in nodes], [Delivery(n, message(i)) for i, n in enumerate(nodes)])
    assert not buffer.wants_more()
    for _ in range(2):
        taken, low = buffer.take(1, 0)
        assert taken and not low  # three, then two of the four read ahead are left
    taken, low = buffer.take(1, 0)
    assert taken and low and buffer.wants_more()  # one left, under half the prefetch


def test_closing_wakes_a_waiting_consumer_and_keeps_the_rest_queued() -> None:
    buffer = DeliveryBuffer(prefetch=4)
    got: list[Delivery | None] = []
    waiter = threading.Thread(target=lambda: got.append(next_of(buffer, None)))
    waiter.start()
    time.sleep(0.05)
    buffer.close()
    waiter.join(5)
    assert got == [None]
    buffer.fetched([], [Delivery(Node(name(1), 1), message(1))])
    assert next_of(buffer, 0) is None  # closed: what is buffered stays in the queue


def test_next_gives_up_at_its_deadline() -> None:
    buffer = DeliveryBuffer(prefetch=4)
    assert next_of(buffer, time.monotonic() + 0.01) is None


def test_a_consumer_off_our_threads_is_told_once_when_messages_arrive() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    told: list[int] = []
    buffer.listed([name(1), name(2), name(3)], [])
    assert buffer.next_or_notify(lambda: told.append(1)) == (None, False)  # nothing read yet
    buffer.fetched([name(1)], [Delivery(Node(name(1), 0))])  # a node with no message
    assert told == []  # nothing to hand out: still waiting
    buffer.fetched([name(2)], [Delivery(Node(name(2), 1), message(2))])
    buffer.fetched([name(3)], [Delivery(Node(name(3), 1), message(3))])
    assert told == [1]  # once, however many reads follow
    first, _ = buffer.next_or_notify(lambda: told.append(2))
    second, _ = buffer.next_or_notify(lambda: told.append(3))
    assert first is not None and first.message == message(2)
    assert second is not None and second.message == message(3)
    assert told == [1]  # taken without waiting: nobody asked to be told


def test_closing_tells_a_waiting_consumer_and_a_closed_buffer_asks_nothing() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    told: list[str] = []
    assert buffer.next_or_notify(lambda: told.append("waiting")) == (None, False)
    buffer.close()
    assert told == ["waiting"]
    buffer.fetched([name(1)], [Delivery(Node(name(1), 1), message(1))])
    assert buffer.next_or_notify(lambda: told.append("after close")) == (None, False)
    assert told == ["waiting"]


def test_a_node_taken_from_its_event_is_handed_out_only_when_nothing_waits_before_it() -> None:
    buffer = DeliveryBuffer(prefetch=2)
    buffer.listed([name(1)], [])  # listed, not read yet: a later node must wait for it
    assert buffer.arrived(name(2), [Delivery(Node(name(2), 1), message(2))]) is False
    assert next_of(buffer, 0) is None
    buffer.fetched([name(1)], [Delivery(Node(name(1), 1), message(1))])
    assert buffer.arrived(name(2), [Delivery(Node(name(2), 1), message(2))]) is True
    assert buffer.arrived(name(2), [Delivery(Node(name(2), 1), message(2))]) is False  # known
    # the prefetch is full: the pump takes it in its turn
    assert buffer.arrived(name(3), [Delivery(Node(name(3), 1), message(3))]) is False
    got = [next_of(buffer, 0), next_of(buffer, 0)]
    assert [d.message for d in got if d is not None] == [message(1), message(2)]


def test_a_lately_deleted_name_is_never_taken_from_its_event() -> None:
    buffer = DeliveryBuffer(prefetch=10)
    handle_and_delete(buffer, 1, czxid=11)
    # back after its delete, or an old listing's news: the pump reads it first
    assert buffer.arrived(name(1), [Delivery(Node(name(1), 1), message(1))]) is False
    assert buffer.deleted_among([name(1), name(2)]) == {name(1)}
    buffer.close()
    assert buffer.arrived(name(2), [Delivery(Node(name(2), 1), message(2))]) is False
