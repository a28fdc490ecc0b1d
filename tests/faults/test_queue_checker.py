"""The work-queue checker on hand-made histories (a pure function)."""

from __future__ import annotations

from zkpubsub import ReservationLost
from zkpubsub.errors import OperationTimeout
from zkpubsub.testing.ledger import ItemWrite, Returned, SessionSpan
from zkpubsub.testing.queue_checker import check_queue
from zkpubsub.testing.queue_history import (
    HoldRecord,
    QueueHistory,
    QueueRecorder,
    finish_of,
    hold_from_doc,
    hold_to_doc,
)


def recorded(puts: int = 3) -> QueueRecorder:
    rec = QueueRecorder()
    for seq in range(1, puts + 1):
        rec.put("p", seq, 0.0, item_id=f"i{seq}")
    return rec


def work(rec: QueueRecorder, worker: str, seq: int, attempts: int, finish: str) -> str:
    hold = rec.reserved(worker, f"i{seq}", ("p", seq), attempts)
    rec.handled(hold)
    rec.finished(hold, finish)  # type: ignore[arg-type]
    return hold


def test_a_clean_run_with_a_redelivery_is_ok() -> None:
    rec = recorded()
    work(rec, "w1", 1, 1, "acked")
    work(rec, "w1", 2, 1, "open")  # the worker died holding it
    work(rec, "w2", 2, 2, "acked")
    work(rec, "w2", 3, 1, "acked")
    result = check_queue(rec.history())
    assert result.ok, result.describe()
    assert (result.done, result.lost, result.redelivered, result.duplicates) == (3, 0, 1, 1)


def test_an_acknowledged_put_nobody_acked_is_lost() -> None:
    rec = recorded()
    work(rec, "w1", 1, 1, "acked")
    work(rec, "w1", 2, 1, "acked")
    work(rec, "w1", 3, 1, "released")
    result = check_queue(rec.history())
    assert result.lost == 1 and not result.ok
    assert any("('p', 3)" in e for e in result.examples)


def test_an_ack_of_unknown_outcome_counts_as_done() -> None:
    rec = recorded(1)
    work(rec, "w1", 1, 1, "unknown")
    assert check_queue(rec.history()).lost == 0


def test_two_holds_at_the_same_attempt_are_a_double_hold() -> None:
    rec = recorded(1)
    work(rec, "w1", 1, 1, "lost")
    work(rec, "w2", 1, 1, "acked")
    result = check_queue(rec.history())
    assert result.double_holds == 1 and not result.ok


def test_a_reservation_after_the_acked_one_is_a_double_hold() -> None:
    rec = recorded(1)
    work(rec, "w1", 1, 1, "acked")
    work(rec, "w2", 1, 2, "open")
    result = check_queue(rec.history())
    assert result.double_holds == 1 and not result.ok


def test_double_acks_put_duplicates_and_unexpected_items_are_found() -> None:
    rec = recorded(2)
    work(rec, "w1", 1, 1, "acked")
    work(rec, "w2", 1, 2, "acked")
    hold = rec.reserved("w1", "other-item", ("p", 2), 1)  # put 2 became two items
    rec.finished(hold, "acked")
    work(rec, "w1", 2, 1, "acked")
    rec.reserved("w1", "i9", ("p", 9), 1)  # never put
    result = check_queue(rec.history())
    assert result.double_acks == 2  # put 1 twice, put 2 on two items
    assert result.put_duplicates == 1
    assert result.unexpected == 1
    assert result.double_holds == 1  # i1 acked at attempt 1, held again at 2
    assert not result.ok


def test_finishes_and_the_worker_file_format() -> None:
    assert finish_of("ack", None) == "acked"
    assert finish_of("release", None) == "released"
    assert finish_of("ack", ReservationLost("q", "i")) == "lost"
    assert finish_of("ack", OperationTimeout("slow")) == "unknown"
    record = HoldRecord("w#1", "w", "i1", ("p", 1), 2, 1.5, 2.0, 3.0, "acked", None)
    assert hold_from_doc(hold_to_doc(record)) == record
    history = QueueHistory((), (record,))
    assert check_queue(history).unexpected == 1


def hold(worker: str, reserved: float, finished: float | None, attempts: int, finish: str):
    return HoldRecord(
        f"{worker}#{reserved}", worker, "i1", ("p", 1), attempts, reserved, None, finished, finish
    )  # type: ignore[arg-type]


def test_two_live_holds_that_overlap_in_time_are_a_double_hold_whatever_their_attempts():
    put = QueueRecorder()
    put.put("p", 1, 0.0, item_id="i1")
    # the library numbered them 1 and 2, but both workers held the item at once
    history = QueueHistory(
        put.history().puts, (hold("w1", 1.0, 5.0, 1, "released"), hold("w2", 2.0, 3.0, 2, "acked"))
    )
    result = check_queue(history)
    assert result.double_holds == 1 and not result.ok
    assert any("at the same time" in e for e in result.examples)


def test_a_hold_stops_being_live_when_its_session_ends_on_the_server():
    put = QueueRecorder()
    put.put("p", 1, 0.0, item_id="i1")
    zombie = hold("zombie", 1.0, 9.0, 1, "lost")  # its ack came back refused at 9.0
    rescuer = hold("rescuer", 6.0, 7.0, 2, "acked")
    history = QueueHistory(put.history().puts, (zombie, rescuer))
    assert check_queue(history).double_holds == 1  # nothing says the zombie was dead
    sessions = {
        "zombie": [SessionSpan(1, 0.5, 5.0), SessionSpan(2, 8.5, None)],
        "rescuer": [SessionSpan(3, 0.5, None)],
    }
    assert check_queue(history, sessions).ok  # its session ended at 5.0
    late = {**sessions, "zombie": [SessionSpan(1, 0.5, 6.5)]}
    assert check_queue(history, late).double_holds == 1  # still live at 6.0


def test_a_put_the_servers_logged_as_two_item_nodes_is_a_put_duplicate() -> None:
    rec = recorded(2)
    work(rec, "w1", 1, 1, "acked")
    work(rec, "w1", 2, 1, "acked")
    item = "/r/queues/q/items/s0000000001/q000-s0000000001-f68d32aba2f9-"
    once = {("p", 1): [ItemWrite("q", 3, 1.0, 7, f"{item}0000000001")]}
    assert check_queue(rec.history(), items=once).ok
    twice = {
        ("p", 1): [ItemWrite("q", 3, 1.0, 7, f"{item}0000000001")],
        ("p", 2): [
            ItemWrite("q", 4, 1.1, 7, f"{item}0000000002"),
            ItemWrite("q", 9, 2.5, 7, f"{item}0000000005"),
        ],
    }
    result = check_queue(rec.history(), items=twice)
    assert result.put_duplicates == 1 and not result.ok, result.describe()
    assert any("('p', 2) written as 2 item nodes" in e and "zxid 0x9" in e for e in result.examples)


def test_an_item_node_the_servers_brought_back_is_named_and_its_double_ack_still_counts():
    rec = recorded(1)
    work(rec, "w1", 1, 1, "acked")
    work(rec, "w1", 1, 1, "acked")  # reserved again at attempt 1: its node came back
    path = "/r/queues/q/items/s0000000001/q000-s0000000001-f68d32aba2f9-0000000001"
    items = {("p", 1): [ItemWrite("q", 3, 1.0, 7, path)]}
    back = [Returned(path, 0x9, 0x200000004, "set"), Returned(path, 0x9, 0x200000006, "delete")]
    result = check_queue(rec.history(), items=items, returned=back)
    assert result.returned == 1 and result.double_acks == 1 and not result.ok, result.describe()
    # named first, before the double ack and hold it explains
    note = f"item node {path} again (set, zxid 0x200000004) after deleting it (zxid 0x9)"
    assert note in result.examples[0] and len(result.examples) == 3, result.examples
    assert check_queue(rec.history(), items=items).returned == 0
