"""kazoo's connection loop, restarted after it died, and stopped."""

from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooClient, KazooState

from zkpubsub.connection import Connection
from zkpubsub.testing.proxy import OP_EXISTS, ZkClientProxy

from .helpers import wait_until


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_connection_stopped_while_its_dead_loop_is_restarted_stays_stopped(
    zk_hosts: str,
) -> None:
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    proxy = ZkClientProxy((host, int(port)), name="revive")
    conn = Connection(proxy.address, session_timeout=10.0)
    try:
        conn.start(10)
        # the restart of the loop is slow, so that the stop comes in the middle of it
        restarting = threading.Event()
        start_async = conn.kazoo.start_async

        def slow_start_async() -> object:
            restarting.set()
            time.sleep(0.5)
            return start_async()

        conn.kazoo.start_async = slow_start_async
        # A reply delivered twice: the second request's reply is not the one
        # kazoo expects ("xids do not match") and its connection loop dies.
        sprung = proxy.duplicate_reply(OP_EXISTS)
        first, second = conn.kazoo.exists_async("/"), conn.kazoo.exists_async("/")
        assert sprung.wait(10)
        first.get(10)
        assert isinstance(second.exception if second.wait(10) else None, RuntimeError)
        assert restarting.wait(10), "the dead loop was not restarted"
        conn.stop()
        # nothing runs on after the stop: no loop, no session
        time.sleep(1.5)
        assert conn.kazoo._connection._connection_routine is None
        assert conn.kazoo.state == KazooState.LOST
        assert not conn.connected.is_set()
    finally:
        conn.stop()
        proxy.close()
    wait_until(lambda: not proxy.links(), 10)


def test_stop_returns_in_time_when_kazoo_cannot_stop_its_threads(
    zk_hosts: str, raw_zk: KazooClient, zk_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = Connection(zk_hosts, session_timeout=10.0)
    release = threading.Event()
    timer = threading.Timer(30, release.set)  # the old stop waited this long
    timer.start()
    try:
        conn.start(10)
        # a callback that holds kazoo's callback thread, which kazoo's stop joins
        held = threading.Event()

        def hold(_event: object) -> None:
            held.set()
            release.wait(60)

        path = f"{zk_root}/held"
        conn.kazoo.exists(path, watch=hold)
        raw_zk.create(path, b"", makepath=True)
        assert held.wait(10)
        started = time.monotonic()
        conn.stop(timeout=2)
        took = time.monotonic() - started
        assert 2 <= took < 10, took
        assert "did not stop within 2s" in caplog.text
        assert not conn.connected.is_set()
        # let go, and kazoo finishes stopping in the background
        release.set()
        wait_until(lambda: conn.kazoo._connection._connection_routine is None, 30)
        assert conn.kazoo.state == KazooState.LOST
    finally:
        release.set()
        timer.cancel()
        conn.stop()


def test_stop_runs_in_place_where_no_thread_can_be_started(
    zk_hosts: str, raw_zk: KazooClient, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python 3.12 refuses new threads in atexit handlers, where clients are
    # often closed
    conn = Connection(zk_hosts, session_timeout=10.0)
    conn.start(10)
    path = f"{zk_root}/ephemeral"
    conn.kazoo.create(path, b"", ephemeral=True, makepath=True)

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", refused)
        conn.stop()
    assert conn.kazoo._connection._connection_routine is None
    assert conn.kazoo.state == KazooState.LOST
    assert raw_zk.exists(path) is None  # the session ended on the server
