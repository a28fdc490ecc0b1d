"""The servers' transaction logs, read back (on files written here in
ZooKeeper's format), and the ledger replayed from them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import msgpack

from zkpubsub.layout import inline_text
from zkpubsub.testing.ledger import decode_keys, node_keys, replay
from zkpubsub.testing.txnlog import (
    CLOSE_SESSION,
    CREATE,
    DELETE,
    ERROR,
    MAGIC,
    MULTI,
    SET_DATA,
    ClusterLog,
    Op,
    Txn,
    read_file,
)


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">i", len(raw)) + raw


def _buf(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def create(path: str, data: bytes = b"", *, ephemeral: bool = False) -> bytes:
    acl = struct.pack(">i", 1) + struct.pack(">i", 31) + _s("world") + _s("anyone")
    return _s(path) + _buf(data) + acl + bytes([ephemeral]) + struct.pack(">i", 0)


def delete(path: str) -> bytes:
    return _s(path)


def entry(zxid: int, kind: int, body: bytes, *, session: int = 1, millis: int = 1000) -> bytes:
    header = struct.pack(">qiqqi", session, 0, zxid, millis, kind)
    payload = header + body
    return struct.pack(">qi", zlib.adler32(payload), len(payload)) + payload + b"B"


def multi(*ops: tuple[int, bytes]) -> bytes:
    out = struct.pack(">i", len(ops))
    for kind, body in ops:
        out += struct.pack(">i", kind) + _buf(body)
    return out


def write_log(directory: Path, *entries: bytes, tail: bytes = b"") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "log.1"
    header = struct.pack(">iiq", MAGIC, 2, 0)
    path.write_bytes(header + b"".join(entries) + tail + bytes(4096))  # preallocated zeros
    return path


def envelope(*keys: tuple[str, int]) -> bytes:
    msgs = [
        {"id": f"{p}{s}", "ct": "application/msgpack", "p": msgpack.packb({"p": p, "s": s})}
        for p, s in keys
    ]
    return msgpack.packb({"v": 1, "msgs": msgs}, use_bin_type=True)


def test_a_log_file_reads_back_to_its_last_complete_entry(tmp_path: Path) -> None:
    good = [
        entry(1, CREATE, create("/r/clients/a", ephemeral=True), session=7),
        entry(2, MULTI, multi((CREATE, create("/r/x")), (SET_DATA, _s("/r") + _buf(b"")))),
        entry(3, MULTI, multi((ERROR, struct.pack(">i", -110)), (ERROR, b""))),
        entry(4, CLOSE_SESSION, struct.pack(">i", 1) + _s("/r/clients/a"), session=7),
    ]
    torn = entry(5, DELETE, delete("/r/x"))[:-3]
    txns, offset = read_file(write_log(tmp_path, *good, tail=torn))
    assert [t.zxid for t in txns] == [1, 2, 3, 4]
    assert txns[0].ops[0].ephemeral and txns[0].session == 7 and txns[0].at == 1.0
    assert [(o.kind, o.path) for o in txns[1].ops] == [("create", "/r/x"), ("set", "/r")]
    assert txns[2].ops == ()  # a failed multi changed nothing
    assert txns[3].closed == ("/r/clients/a",)
    assert offset == 16 + sum(len(e) for e in good)


def test_only_what_a_majority_of_servers_logged_is_committed(tmp_path: Path) -> None:
    shared = [entry(z, DELETE, delete(f"/n{z}")) for z in (1, 2)]
    phantom = entry(3, DELETE, delete("/phantom"))
    write_log(tmp_path / "a", *shared, phantom)  # a leader that died with a proposal
    write_log(tmp_path / "b", *shared)
    write_log(tmp_path / "c", shared[0])  # wiped, or joined late
    log = ClusterLog([[tmp_path / d] for d in "abc"])
    assert [t.zxid for t in log.committed()] == [1, 2]


def test_the_ledger_follows_writes_registrations_and_removals() -> None:
    sub, other = 10, 20

    def txn(zxid: int, at: float, session: int, *ops: tuple[str, str, bytes, bool]) -> Txn:
        return Txn(zxid, at, session, MULTI, tuple(Op(k, p, d, e) for k, p, d, e in ops))

    q = "/r/messages/s/t"
    txns = [
        txn(1, 1.0, sub, ("create", "/r/clients/s", b"", True)),
        txn(2, 2.0, sub, ("create", "/r/subscribers/t/s", b"", True)),
        txn(
            3,
            3.0,
            30,
            ("check", "/r/subscribers/t", b"", False),
            ("create", f"{q}/m111111111111-0000000001", envelope(("p", 1)), False),
        ),
        txn(
            4,
            4.0,
            30,
            ("create", f"{q}/m222222222222-0000000002", envelope(("p", 2), ("p", 3)), False),
        ),
        txn(
            4,
            4.5,
            30,
            ("create", f"{q}/s0000000000", b"", False),  # a segment (wire format 2)
            ("create", f"{q}/s0000000000/m555555555555-0000000000", envelope(("p", 5)), False),
            (
                "create",
                f"{q}/s0000000000/o666666666666-0000000001",
                b'{"pub":"p","missed":1}',
                False,
            ),
        ),
        txn(5, 5.0, sub, ("delete", f"{q}/m111111111111-0000000001", b"", False)),  # handled
        Txn(6, 6.0, sub, CLOSE_SESSION, closed=("/r/clients/s", "/r/subscribers/t/s")),
        txn(
            7,
            7.0,
            30,
            ("create", "/r/messages/x/t/m333333333333-0000000003", envelope(("p", 4)), False),
        ),
        txn(8, 9.5, other, ("delete", f"{q}/m222222222222-0000000002", b"", False)),  # someone else
        txn(9, 10.0, 11, ("create", "/r/clients/s", b"", True)),
    ]
    ledger = replay(txns, "/r")
    assert ledger.written_to(("p", 1)) == {"s"} and ledger.written_to(("p", 3)) == {"s"}
    assert ledger.written_to(("p", 5)) == {"s"}  # in a segment
    assert ledger.registered[("p", 1)] == {"s"}
    assert ledger.registered[("p", 4)] == frozenset()  # s was gone by then
    assert ("s", ("p", 1)) not in ledger.removals  # its own delete
    removal = ledger.removals[("s", ("p", 2))]
    assert removal.session == other and removal.absent_for == 3.5
    assert ledger.registrations[("t", "s")] == [(2.0, 6.0)]
    assert ledger.registered_throughout("t", "s", 2.5, 5.5)
    assert not ledger.registered_throughout("t", "s", 5.5, 6.5)
    assert ledger.unregistered_seconds("t", "s", 5.0, 8.0) == 2.0
    assert [(s.session, s.start, s.end) for s in ledger.sessions["s"]] == [
        (sub, 1.0, 6.0),
        (11, 10.0, None),
    ]
    assert ledger.epochs == (0,)


def test_only_workload_payloads_have_keys() -> None:
    assert decode_keys(envelope(("p", 1), ("q", 2))) == (("p", 1), ("q", 2))
    assert decode_keys(b"not msgpack\xc1") == ()
    assert decode_keys(msgpack.packb({"v": 1, "msgs": [{"p": b"\x01"}]})) == ()


def test_a_node_that_carries_its_envelope_in_its_name_has_its_keys() -> None:
    data = envelope(("p", 1))
    named = f"/r/messages/s/t/s0000000000/m0123456789ab.{inline_text(data)}.0000000004"
    assert node_keys(named, b"") == (("p", 1),)
    assert node_keys("/r/messages/s/t/s0000000000/m0123456789ab-0000000004", data) == (("p", 1),)


def _multi(zxid: int, at: float, session: int, *ops: tuple[str, str, bytes]) -> Txn:
    return Txn(zxid, at, session, MULTI, tuple(Op(k, p, d) for k, p, d in ops))


def _mark(missed: int) -> bytes:
    return b'{"pub":"p","missed":%d}' % missed


def test_the_ledger_sees_a_full_queue_skipped_only_in_a_transaction_that_carried_the_message():
    full, ok = "/r/messages/full/t/s0000000000", "/r/messages/ok/t/s0000000000"
    marker = f"{full}/oaaaaaaaaaaaa-0000000005"
    txns = [
        _multi(1, 1.0, 50, ("create", "/r/clients/full", b"")),
        # the marker created, and message 1 written to the other queue
        _multi(
            2,
            2.0,
            30,
            ("check", "/r/messages/full/t", b""),
            ("create", marker, _mark(1)),
            ("check", "/r/messages/ok/t", b""),
            ("create", f"{ok}/maaaaaaaaaaaa-0000000001", envelope(("p", 1))),
        ),
        # counted into with message 2
        _multi(
            3,
            3.0,
            30,
            ("set", marker, _mark(2)),
            ("create", f"{ok}/mbbbbbbbbbbbb-0000000002", envelope(("p", 2))),
        ),
        # a marker counted into by a transaction that carried nothing proves nothing
        _multi(4, 4.0, 30, ("set", marker, _mark(3))),
        # message 4 skipped the full queue with no mark there
        _multi(5, 5.0, 30, ("create", f"{ok}/mcccccccccccc-0000000003", envelope(("p", 4)))),
        _multi(6, 6.0, 50, ("delete", marker, b"")),  # the subscriber reached it
    ]
    ledger = replay(txns, "/r")
    assert set(ledger.skipped(("p", 1))) == {"full"}
    skip = ledger.skipped(("p", 2))["full"]
    assert (skip.kind, skip.path, skip.zxid, skip.at) == ("marker", marker, 3, 3.0)
    assert ledger.skipped(("p", 4)) == {}
    assert ledger.written_to(("p", 1)) == {"ok"}  # a marker is not a write
    life = ledger.markers[marker]
    assert (life.subscriber, life.topic, life.created, life.written) == ("full", "t", 2.0, 4.0)
    assert (life.missed, life.deleted, life.by_owner) == (3, 6.0, True)


def test_the_ledger_sees_an_evicted_queue_skipped_and_its_messages_deleted_unread():
    q, ok = "/r/messages/ev/t", "/r/messages/ok/t/s0000000000"
    record = b'{"v":2,"segment":0,"max_nodes":1,"max_bytes":100,"when_full":"evict"}'
    marked = record[:-1] + b',"full":true}'
    txns = [
        _multi(1, 1.0, 50, ("create", "/r/clients/ev", b"")),
        _multi(2, 2.0, 50, ("create", q, record), ("create", f"{q}/s0000000000", b"")),
        _multi(
            3,
            3.0,
            30,
            ("check", q, b""),
            ("create", f"{q}/s0000000000/m111111111111-0000000000", envelope(("p", 1))),
            ("create", f"{ok}/m111111111111-0000000000", envelope(("p", 1))),
        ),
        _multi(
            4,
            4.0,
            30,
            ("set", q, marked),
            ("create", f"{ok}/m222222222222-0000000001", envelope(("p", 2))),
        ),
        _multi(
            5,
            5.0,
            31,
            ("check", q, b""),
            ("create", f"{ok}/m333333333333-0000000002", envelope(("p", 3))),
        ),
        _multi(6, 6.0, 50, ("delete", f"{q}/s0000000000/m111111111111-0000000000", b"")),
        _multi(7, 7.0, 50, ("delete", f"{q}/s0000000000", b""), ("delete", q, b"")),
        # made anew: a check of it is no longer a skip
        _multi(8, 8.0, 50, ("create", q, record), ("create", f"{q}/s0000000000", b"")),
        _multi(
            9,
            9.0,
            30,
            ("check", q, b""),
            ("create", f"{ok}/m444444444444-0000000003", envelope(("p", 4))),
        ),
    ]
    ledger = replay(txns, "/r")
    assert ledger.skipped(("p", 1)) == {}
    assert [ledger.skipped(("p", n))["ev"].kind for n in (2, 3)] == ["evict", "evict"]
    assert ledger.skipped(("p", 4)) == {}
    removal = ledger.removals[("ev", ("p", 1))]
    assert removal.evicted and removal.session == 50 and removal.at == 6.0


def test_the_ledger_lists_the_item_nodes_each_put_became() -> None:
    items = "/r/queues/q/items"
    name = "q000-s0000000001-f68d32aba2f9-"

    def txn(zxid: int, *ops: tuple[str, bytes]) -> Txn:
        return _multi(zxid, float(zxid), 5, *(("create", p, d) for p, d in ops))

    ledger = replay(
        [
            txn(1, ("/r/queues/q", b""), (items, b""), (f"{items}/s0000000001", b"")),
            txn(2, (f"{items}/s0000000001/{name}0000000000", envelope(("p", 1)))),
            txn(3, (f"{items}/s0000000001/{name}0000000001", envelope(("p", 2)))),
            txn(4, (f"{items}/s0000000001/{name}0000000002", envelope(("p", 2)))),  # again
            txn(5, ("/r/queues/q/dead/x", envelope(("p", 3)))),  # not an item node
        ],
        "/r",
    )
    assert [w.zxid for w in ledger.items[("p", 1)]] == [2]
    assert [(w.queue, w.zxid, w.session) for w in ledger.items[("p", 2)]] == [
        ("q", 3, 5),
        ("q", 4, 5),
    ]
    assert ("p", 3) not in ledger.items


def test_the_ledger_finds_a_node_written_again_after_its_delete() -> None:
    item = "/r/queues/q/items/s0000000001/q000-s0000000001-f68d32aba2f9-0000000000"
    held = "/r/queues/q/reserved/q000-s0000000001-f68d32aba2f9-0000000000"

    def txn(zxid: int, *ops: tuple[str, str, bytes]) -> Txn:
        return _multi(zxid, float(zxid), 5, *ops)

    ledger = replay(
        [
            txn(1, ("create", item, envelope(("p", 1)))),
            txn(2, ("create", held, b""), ("set", item, b"")),  # reserved
            # a lease taken over: its reservation deleted and made again at once
            txn(3, ("delete", held, b""), ("create", held, b""), ("set", item, b"")),
            txn(4, ("delete", held, b""), ("delete", item, b"")),  # acked
            txn(5, ("create", "/other/x", b""), ("delete", "/other/x", b"")),  # not under root
            txn(6, ("set", "/other/x", b"")),
            txn(7 << 32, ("create", held, b""), ("set", item, b"")),  # back
            txn((7 << 32) + 1, ("check", item, b""), ("delete", held, b""), ("delete", item, b"")),
        ],
        "/r",
    )
    assert [(r.path, r.deleted, r.zxid, r.op) for r in ledger.returned] == [
        (item, 4, 7 << 32, "set"),
        (item, 4, (7 << 32) + 1, "check"),
        (item, 4, (7 << 32) + 1, "delete"),
    ]
    # the reservation was made anew each time (a create between): never returned
    assert all(r.path == item for r in ledger.returned)
