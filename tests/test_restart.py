"""A stable client id comes back at once when its previous process is
provably dead; a live holder is waited for, then named."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient

from zkpubsub import Client, ClientIdInUse
from zkpubsub._registration import holder_is_dead, process_identity
from zkpubsub.layout import Layout

from .helpers import Collector
from .procs import Child

MakeClient = Callable[..., Client]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    return child.pid


def record(**changes: object) -> bytes:
    info = dict(process_identity(), **changes)
    return json.dumps(info).encode()


def test_only_a_process_of_this_machine_that_is_gone_counts_as_dead() -> None:
    gone = dead_pid()
    assert holder_is_dead(record(pid=gone))
    assert not holder_is_dead(record())  # this very process
    assert not holder_is_dead(record(pid=1))  # running
    assert not holder_is_dead(record(pid=gone, host="elsewhere"))
    assert not holder_is_dead(record(pid=gone, boot="another-boot"))
    assert not holder_is_dead(record(pid=gone, pidns=1))  # another pid namespace
    older = json.loads(record(pid=gone))
    del older["boot"], older["pidns"]  # written by a version that did not say
    assert not holder_is_dead(json.dumps(older).encode())
    assert not holder_is_dead(b"not json")


def test_a_restart_with_a_stable_id_takes_over_from_a_dead_process(
    make_client: MakeClient, zk_hosts: str, zk_root: str, raw_zk: KazooClient
) -> None:
    """The dead process's 10 s session still holds its nodes: its client
    node, its subscriber node and its cleaner candidacy."""
    layout = Layout(zk_root)
    with Child(zk_hosts, zk_root, "stable-id", "long-subscriber", "t") as child:
        child.expect("ready")
        child.kill()
    assert raw_zk.exists(layout.client("stable-id")) is not None
    dead_candidacy = raw_zk.get_children(layout.candidates)
    assert dead_candidacy
    started = time.monotonic()
    client = make_client(client_id="stable-id", session_timeout=10.0)
    collector = Collector()
    client.subscribe("t", collector)
    took = time.monotonic() - started
    assert took < 5.0, f"restart took {took:.1f}s"  # not the 10 s session
    owner = raw_zk.exists(layout.client("stable-id")).ephemeralOwner
    assert owner == client._ctx.conn.session_id
    assert make_client().publish("t", "after the restart").subscribers == 1
    assert collector.wait(1) == ["after the restart"]
    # The dead process's cleaner candidacy went with its registration.
    assert not set(dead_candidacy) & set(raw_zk.get_children(layout.candidates))


def test_a_live_holder_is_waited_for_then_named(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    make_client(client_id="taken")
    caplog.set_level(logging.INFO, logger="zkpubsub")
    started = time.monotonic()
    with pytest.raises(ClientIdInUse) as info:
        make_client(client_id="taken", registration_wait=1.5)
    assert time.monotonic() - started >= 1.5
    assert f"pid {os.getpid()}" in str(info.value) and info.value.holder.startswith("host ")
    waits = [r for r in caplog.records if "held by another live session" in r.getMessage()]
    assert len(waits) == 1
