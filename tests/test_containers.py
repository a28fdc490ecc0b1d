"""The container backend: servers in Docker, on the host's loopback, gone when done.

These run with ``ZKPUBSUB_TEST_BACKEND=testcontainers`` only (``bash
scripts/dev.sh test-containers``); the controls every backend shares are
tested in ``test_testing.py``, on whichever backend the run uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from zkpubsub.testing import ServerFailed
from zkpubsub.testing.fixtures import backend_name, start_ensemble

from .helpers import wait_until

pytestmark = pytest.mark.skipif(
    backend_name() != "testcontainers", reason="needs ZKPUBSUB_TEST_BACKEND=testcontainers"
)


def containers_in(directory: Path) -> list[Any]:
    """Every container (running or not) of the backend serving from ``directory``."""
    from zkpubsub.testing.containers import LABEL, _docker

    found: list[Any] = _docker().containers.list(all=True, filters={"label": LABEL})
    return [c for c in found if c.labels.get(f"{LABEL}.directory", "").startswith(str(directory))]


def test_a_server_in_a_container_has_the_version_of_its_image(tmp_path: Path) -> None:
    from zkpubsub.testing.containers import ContainerCluster

    with ContainerCluster(1, base_dir=tmp_path) as zk:
        version = zk.server_version()
        assert version is not None
        assert version.startswith(".".join(map(str, zk.image_version)))


def test_a_container_shares_the_hosts_network_and_runs_as_the_tests_user(
    tmp_path: Path,
) -> None:
    from zkpubsub.testing.containers import ContainerCluster

    with ContainerCluster(1, base_dir=tmp_path) as zk:
        (node,) = zk.nodes
        (container,) = containers_in(tmp_path)
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
        client = KazooClient(hosts=node.address, timeout=6.0)
        client.start(timeout=20)
        try:
            client.create("/written-in-a-container", b"1")
        finally:
            client.stop()
            client.close()
        owners = {p.stat().st_uid for p in node.data_dir.rglob("*")}
        assert owners == {os.getuid()}  # the test can wipe and delete it


def test_closing_an_ensemble_removes_every_container(tmp_path: Path) -> None:
    from zkpubsub.testing.containers import ContainerCluster

    zk = start_ensemble(ContainerCluster, 3, base_dir=tmp_path)
    try:
        assert len(containers_in(tmp_path)) == 3
        zk.wait_quorum().kill()
        assert len(containers_in(tmp_path)) == 2
    finally:
        zk.close()
    assert containers_in(tmp_path) == []


def test_an_ensemble_that_does_not_start_leaves_no_container(tmp_path: Path) -> None:
    from zkpubsub.testing.containers import ContainerCluster

    with pytest.raises(ServerFailed, match="exited"):
        start_ensemble(ContainerCluster, 1, base_dir=tmp_path, settings={"tickTime": "never"})
    assert containers_in(tmp_path) == []


def test_a_container_ends_by_itself_when_its_lifetime_is_over(tmp_path: Path) -> None:
    from zkpubsub.testing.containers import ContainerCluster

    zk = ContainerCluster(1, base_dir=tmp_path, lifetime=2)
    try:
        (node,) = zk.nodes
        node.start()  # serving or not, it ends
        assert node.running
        wait_until(lambda: not node.running, 30, "the container's end")
    finally:
        zk.close()
    assert containers_in(tmp_path) == []
