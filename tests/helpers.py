"""Small synchronisation helpers for tests: wait for conditions, never sleep blindly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, SessionExpiredError
from kazoo.retry import KazooRetry

from zkpubsub import ClientState, Message
from zkpubsub.testing.fixtures import backend_name
from zkpubsub.testing.proxy import TcpProxy

# A test that edits a stopped server's snapshot with the local ZooKeeper
# classes (``zkpubsub.testing.counters``) needs the servers to be local
# processes: their data directories and class path are this machine's.
local_servers_only = pytest.mark.skipif(
    backend_name() != "local",
    reason="edits a stopped server's snapshot: needs local server processes "
    "(ZKPUBSUB_TEST_BACKEND=local, no ZK_HOSTS)",
)


def raw_kazoo(hosts: str, timeout: float = 10.0) -> KazooClient:
    """A started plain kazoo client that retries its connection at least every
    half second. kazoo's default backoff doubles up to an hour: after a server
    restart that took several seconds, its next try can come later than the
    session timeout, and the session expires although the server is back."""
    zk = KazooClient(
        hosts=hosts,
        timeout=timeout,
        connection_retry=KazooRetry(max_tries=-1, delay=0.05, max_delay=0.5),
    )
    zk.start(timeout=20)
    return zk


def reconnected(zk: KazooClient, timeout: float = 60.0) -> None:
    """Wait until ``zk`` answers again after a server restart. A restart
    slower than the session timeout expires its session; kazoo then starts a
    new one by itself, and the request that saw the expiry fails: ask again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            zk.sync("/")
            return
        except (SessionExpiredError, ConnectionLoss, ConnectionClosedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def cut_and_reconnect(
    proxy: TcpProxy,
    states: list[ClientState],
    meanwhile: Callable[[], object] | None = None,
    timeout: float = 30.0,
) -> None:
    """Cut the client's connection through ``proxy``, run ``meanwhile`` (work
    done while the client is away), and wait until the client, whose state
    changes ``states`` records, has been suspended by this cut and connected
    again. Waiting only for the last state to read ``CONNECTED`` would return
    at once, on the previous cut's reconnection."""
    suspended = states.count(ClientState.SUSPENDED)
    assert proxy.cut() >= 1, "no connection through the proxy to cut"
    if meanwhile is not None:
        meanwhile()
    wait_until(
        lambda: (
            states.count(ClientState.SUSPENDED) > suspended and states[-1] == ClientState.CONNECTED
        ),
        timeout,
        "the client suspended by the cut and connected again",
    )


class Collector:
    """A handler that records messages; ``wait(n)`` blocks until n arrived."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    @property
    def payloads(self) -> list[Any]:
        with self._cond:
            return [m.payload for m in self.messages]

    def wait(self, count: int, timeout: float = 20.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"got {len(self.messages)} of {count} messages in {timeout}s"
                    )
                self._cond.wait(left)
            return [m.payload for m in self.messages]


def drain(queue: object, count: int, timeout: float = 10.0) -> list[object]:
    """Reserve and ack ``count`` items of a work queue, in order; their payloads."""
    out = []
    for _ in range(count):
        item = queue.reserve(timeout)  # type: ignore[attr-defined]
        assert item is not None, f"only {len(out)} of {count} items came"
        out.append(item.payload)
        item.ack()
    return out
