"""The kazoo handler's persistent select and read-ahead socket (pure:
socket pairs, no ZooKeeper; every test against a server goes through them)."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from zkpubsub.handler import FastThreadingHandler, ReadAheadSocket


def test_select_reports_readiness_and_reuses_its_selector() -> None:
    handler = FastThreadingHandler()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        assert handler.select([a, c], [], [], 0) == ([], [], [])
        b.send(b"x")
        for _ in range(100):
            assert handler.select([a, c], [], [], 0) == ([a], [], [])
        assert len(handler._cache.selectors) == 1  # one selector for 101 calls
        assert handler.select([], [a], [], 0) == ([], [a], [])
        assert handler.select([a], [a], [], 0) == ([a], [a], [])
        d.send(b"y")
        readable, _, _ = handler.select([a, c], [], [], 0)
        assert sorted(s.fileno() for s in readable) == sorted([a.fileno(), c.fileno()])
    finally:
        for s in (a, b, c, d):
            s.close()


def test_new_sockets_get_new_selectors_and_old_ones_are_evicted() -> None:
    handler = FastThreadingHandler()
    pairs = [socket.socketpair() for _ in range(12)]
    try:
        for a, b in pairs:
            b.send(b"x")
            assert handler.select([a], [], [], 0) == ([a], [], [])
        assert len(handler._cache.selectors) <= 8
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def _read_ahead_pair(timeout: float = 5.0) -> tuple[ReadAheadSocket, socket.socket]:
    ours, server = socket.socketpair()
    ours.setblocking(False)
    return ReadAheadSocket(ours, timeout), server


def _frame(body: bytes) -> bytes:
    return struct.pack("!i", len(body)) + body


def test_replies_sent_together_are_read_with_one_receive_and_taken_in_pieces() -> None:
    handler = FastThreadingHandler()
    sock, server = _read_ahead_pair()
    try:
        assert handler.select([sock], [], [], 0) == ([], [], [])  # nothing yet
        server.sendall(_frame(b"first") + _frame(b"second reply"))
        assert handler.select([sock], [], [], 0) == ([sock], [], [])
        assert sock.pending() == 4 + 5 + 4 + 12  # all of it in one read
        lengths = []
        while sock.pending():
            (length,) = struct.unpack("!i", sock.recv(4))
            lengths.append(sock.recv(length))
        assert lengths == [b"first", b"second reply"]
        assert handler.select([sock], [], [], 0) == ([], [], [])
    finally:
        sock.close()
        server.close()


def test_buffered_bytes_make_the_loops_select_answer_and_other_sockets_are_not_starved() -> None:
    """kazoo's loop selects on the connection and its wake-up socket: bytes
    already read ahead must count as readable (the socket itself has
    nothing more), and a wake-up waiting at the same time is reported too."""
    handler = FastThreadingHandler()
    sock, server = _read_ahead_pair()
    wake_r, wake_w = socket.socketpair()
    try:
        server.sendall(_frame(b"a") + _frame(b"b"))
        assert sock.fill()
        assert sock.recv(4 + 1) == _frame(b"a")  # one reply taken, one buffered
        assert handler.select([sock, wake_r], [], [], 5.0) == ([sock], [], [])
        wake_w.send(b"\0")
        readable, _, _ = handler.select([sock, wake_r], [], [], 5.0)
        assert readable == [sock, wake_r]
        assert sock.recv(5) == _frame(b"b")
        wake_r.recv(1)
        assert handler.select([sock, wake_r], [], [], 0) == ([], [], [])
    finally:
        for s in (sock, server, wake_r, wake_w):
            s.close()


def test_a_reply_longer_than_the_read_ahead_arrives_whole() -> None:
    sock, server = _read_ahead_pair()
    body = bytes(range(256)) * 1024  # 256 KiB, as a long listing
    try:
        sender = threading.Thread(target=server.sendall, args=(_frame(body),))
        sender.start()
        handler = FastThreadingHandler()
        parts: list[bytes] = []
        wanted = 4 + len(body)
        while wanted:
            if not sock.pending():
                assert handler.select([sock], [], [], 5.0) == ([sock], [], [])
            chunk = sock.recv(wanted)
            parts.append(chunk)
            wanted -= len(chunk)
        sender.join(5)
        assert b"".join(parts) == _frame(body)
    finally:
        sock.close()
        server.close()


def test_the_end_of_the_stream_reads_as_empty() -> None:
    handler = FastThreadingHandler()
    sock, server = _read_ahead_pair()
    try:
        server.close()
        assert handler.select([sock], [], [], 5.0) == ([sock], [], [])
        assert sock.recv(4) == b""
    finally:
        sock.close()


def test_a_send_into_a_full_buffer_waits_for_room_then_times_out() -> None:
    handler = FastThreadingHandler()
    sock, server = _read_ahead_pair(timeout=0.3)
    try:
        assert handler.select([], [sock], [], 0) == ([], [sock], [])  # no system call
        block = b"x" * 65536
        sent = 0
        with pytest.raises(TimeoutError):  # nobody reads: the kernel's buffers fill up
            while True:
                sent += sock.send(block)
        assert sent > 0
        # once the other end reads, the send goes on
        reader = threading.Thread(target=_read_until_closed, args=(server,))
        reader.start()
        assert sock.send(block) > 0
        sock.close()
        reader.join(10)
        assert not reader.is_alive()
    finally:
        sock.close()
        server.close()


def _read_until_closed(server: socket.socket) -> None:
    server.settimeout(10.0)
    while server.recv(1 << 20):
        pass


def test_kazoos_own_connection_reads_ahead_and_other_sockets_do_not() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    handler = FastThreadingHandler()
    plain = handler.create_connection(address=("127.0.0.1", port), timeout=2.0)
    pinger = handler.create_connection(("127.0.0.1", port))
    try:
        assert isinstance(plain, ReadAheadSocket)
        assert plain.getpeername()[1] == port
        assert isinstance(pinger, socket.socket)
    finally:
        plain.close()
        pinger.close()
        listener.close()
