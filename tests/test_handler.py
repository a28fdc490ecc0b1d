"""The persistent-select kazoo handler (pure: socket pairs, no ZooKeeper)."""

from __future__ import annotations

import socket

from zkpubsub.handler import FastThreadingHandler


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
