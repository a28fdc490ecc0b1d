"""kazoo's connection loop, restarted after it died, and stopped."""

from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooState

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
