"""kazoo's connection loop, restarted after it died, and stopped."""

from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooClient, KazooState

from zkpubsub._deadlines import deadline_after
from zkpubsub.connection import STOP_AFTER_FAILED_CONNECT, Connection
from zkpubsub.errors import ConnectionLost
from zkpubsub.testing.proxy import OP_EXISTS, ZkClientProxy

from .helpers import wait_until


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_connection_stopped_while_its_dead_loop_is_restarted_stays_stopped(
    zk_hosts: str,
) -> None:
    conn = Connection(zk_hosts, session_timeout=10.0)
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
        # An error kazoo's connection loop does not handle, on its next read
        # of the socket (a ping's answer at the latest): the loop dies.
        reader = conn.kazoo._connection
        read_socket = reader._read_socket

        def failing_read(*args: object) -> object:
            reader._read_socket = read_socket
            raise ValueError("an error kazoo does not handle")

        reader._read_socket = failing_read
        conn.kazoo.exists_async("/")
        assert restarting.wait(10), "the dead loop was not restarted"
        conn.stop()
        # nothing runs on after the stop: no loop, no session
        time.sleep(1.5)
        assert conn.kazoo._connection._connection_routine is None
        assert conn.kazoo.state == KazooState.LOST
        assert not conn.connected.is_set()
    finally:
        conn.stop()


def test_a_reply_delivered_twice_drops_the_connection_and_keeps_the_session(
    zk_hosts: str,
) -> None:
    # kazoo's loop would die of it ("xids do not match") and the session with it
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    proxy = ZkClientProxy((host, int(port)), name="twice")
    conn = Connection(proxy.address, session_timeout=10.0)
    try:
        conn.start(10)
        session = conn.session_id
        loop = conn.kazoo._connection._connection_routine
        states: list[KazooState] = []
        conn.add_state_listener(states.append)
        for n in range(1, 3):
            sprung = proxy.duplicate_reply(OP_EXISTS, while_waiting=True)
            first = conn.kazoo.exists_async("/")
            if n == 2:
                time.sleep(0.3)  # the first is answered before the second is sent
            second = conn.kazoo.exists_async("/")
            assert sprung.wait(10)
            assert conn.result(first, deadline_after(10), "first") is not None
            # the request waiting when the stray reply came: lost with the connection
            with pytest.raises(ConnectionLost):
                conn.result(second, deadline_after(10), "second")
            assert conn.call(lambda: conn.kazoo.exists_async("/"), deadline_after(10), "again")
            assert conn.session_id == session
            assert conn.kazoo._connection._connection_routine is loop
            assert loop.is_alive()
            assert proxy.sprung[-1] == ("duplicate", OP_EXISTS)
            # the connection was dropped and made again, the session never lost
            assert states == [KazooState.SUSPENDED, KazooState.CONNECTED] * n
    finally:
        conn.stop()
        proxy.close()


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


def test_connect_to_a_server_that_never_answers_fails_within_its_timeout(
    zk_hosts: str, zk_root: str
) -> None:
    from zkpubsub import Client, ConnectTimeout

    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    # the connection is taken and nothing answers (a frozen server)
    with ZkClientProxy((host, int(port)), name="frozen") as proxy:
        proxy.block("drop")
        started = time.monotonic()
        with pytest.raises(ConnectTimeout, match="within 2s"):
            Client(proxy.address, root=zk_root, connect_timeout=2.0, session_timeout=10.0)
        took = time.monotonic() - started
    # kazoo's own start waited for its loop, which waits the session
    # timeout for the server's answer (10 s); now the loop stops in the
    # background after STOP_AFTER_FAILED_CONNECT
    assert 2.0 <= took < 2.0 + STOP_AFTER_FAILED_CONNECT + 1.5, took
