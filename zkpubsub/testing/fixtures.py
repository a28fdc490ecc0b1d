"""pytest fixtures on real ZooKeeper.

Enable with ``pytest_plugins = ["zkpubsub.testing.fixtures"]`` in a
``conftest.py``. The backend is chosen by the environment:

* default: a standalone server started from the local install for the
  whole session (a missing install is an error, not a skip);
* ``ZK_HOSTS=host:port,...``: an external ensemble; tests that control
  server processes (``local_zk`` marker / ``local_cluster`` fixture) skip;
* ``ZKPUBSUB_TEST_BACKEND=testcontainers``: a container (needs Docker).

Every test gets a fresh root (``zk_root``), deleted afterwards.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
from kazoo.client import KazooClient

from ..client import Client
from .secure import TEST_SASL_USERS, ServerSecurity, TlsMaterial, make_tls_material
from .server import ZooKeeperCluster


class ZooKeeperBackend(Protocol):
    @property
    def hosts(self) -> str: ...

    def close(self) -> None: ...


class ExternalZooKeeper:
    """An ensemble someone else runs (``ZK_HOSTS``)."""

    def __init__(self, hosts: str) -> None:
        self.hosts = hosts

    def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperBackend]:
    """The session's ZooKeeper: a local standalone server unless told otherwise."""
    backend: ZooKeeperBackend
    external = os.environ.get("ZK_HOSTS")
    if external:
        backend = ExternalZooKeeper(external)
    elif os.environ.get("ZKPUBSUB_TEST_BACKEND") == "testcontainers":
        from .containers import ContainerZooKeeper

        backend = ContainerZooKeeper().start()
    else:
        backend = ZooKeeperCluster(1, base_dir=tmp_path_factory.mktemp("zk-session")).start()
    yield backend
    backend.close()


@pytest.fixture
def zk_hosts(zookeeper: ZooKeeperBackend) -> str:
    return zookeeper.hosts


@pytest.fixture
def local_cluster(zookeeper: ZooKeeperBackend) -> ZooKeeperCluster:
    """The session's server when it is a local process this run controls."""
    if not isinstance(zookeeper, ZooKeeperCluster):
        pytest.skip("needs a ZooKeeper process started by this run (not ZK_HOSTS/containers)")
    return zookeeper


@pytest.fixture
def make_cluster(
    tmp_path: Any, zookeeper: ZooKeeperBackend
) -> Iterator[Callable[..., ZooKeeperCluster]]:
    """Start private clusters (``make_cluster(3)``) that this test may break."""
    if not isinstance(zookeeper, ZooKeeperCluster):
        pytest.skip("needs ZooKeeper processes started by this run (not ZK_HOSTS/containers)")
    made: list[ZooKeeperCluster] = []

    def make(size: int = 1, **kwargs: Any) -> ZooKeeperCluster:
        cluster = ZooKeeperCluster(size, base_dir=tmp_path / f"zk{len(made)}", **kwargs)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.close()


def _root_name(nodeid: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid.split("::")[-1])[:60].strip("-.")
    return f"/t-{name or 'test'}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def zk_root(zk_hosts: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh root path for this test; removed afterwards."""
    root = _root_name(request.node.nodeid)
    yield root
    zk = KazooClient(hosts=zk_hosts.split("/", 1)[0], timeout=10.0)
    try:
        zk.start(timeout=15)
        zk.delete(root, recursive=True)
    except Exception:
        pass
    finally:
        zk.stop()
        zk.close()


@pytest.fixture
def raw_zk(zk_hosts: str) -> Iterator[KazooClient]:
    """A plain kazoo client, for tests that write what a foreign client would."""
    zk = KazooClient(hosts=zk_hosts, timeout=10.0)
    zk.start(timeout=15)
    yield zk
    zk.stop()
    zk.close()


@pytest.fixture
def make_client(zk_hosts: str, zk_root: str) -> Iterator[Callable[..., Client]]:
    """``make_client(client_id=..., session_timeout=...)``: clients on the
    test's root, closed at the end."""
    made: list[Client] = []

    def make(**kwargs: Any) -> Client:
        kwargs.setdefault("root", zk_root)
        kwargs.setdefault("session_timeout", 4.0)
        kwargs.setdefault("request_timeout", 20.0)
        client = Client(kwargs.pop("hosts", zk_hosts), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# -- secured servers --------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """A CA, server keystores and a client certificate, made for this run."""
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def secure_zookeeper(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TlsMaterial
) -> Iterator[ZooKeeperCluster]:
    """A standalone server of this run with a superuser, SASL users and a
    TLS port. It does not enforce authentication: unauthenticated clients
    get in and meet the ACLs."""
    if os.environ.get("ZK_HOSTS") or os.environ.get("ZKPUBSUB_TEST_BACKEND") == "testcontainers":
        pytest.skip("secured servers are started by this run (not ZK_HOSTS/containers)")
    security = ServerSecurity(sasl_users=dict(TEST_SASL_USERS), tls=tls_material)
    cluster = ZooKeeperCluster(
        1, base_dir=tmp_path_factory.mktemp("zk-secure"), security=security
    ).start()
    yield cluster
    cluster.close()


@pytest.fixture
def secure_root(
    secure_zookeeper: ZooKeeperCluster, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh root on the secured server; removed afterwards (as the superuser)."""
    root = _root_name(request.node.nodeid)
    yield root
    user, password = ServerSecurity().superuser or ("super", "")
    zk = KazooClient(
        hosts=secure_zookeeper.hosts, timeout=10.0, auth_data=[("digest", f"{user}:{password}")]
    )
    try:
        zk.start(timeout=15)
        zk.delete(root, recursive=True)
    except Exception:
        pass
    finally:
        zk.stop()
        zk.close()


@pytest.fixture
def make_secure_client(
    secure_zookeeper: ZooKeeperCluster, secure_root: str
) -> Iterator[Callable[..., Client]]:
    """``make_secure_client(auth=..., acl=...)``: clients of the secured
    server on the test's root, closed at the end."""
    made: list[Client] = []

    def make(**kwargs: Any) -> Client:
        kwargs.setdefault("root", secure_root)
        kwargs.setdefault("session_timeout", 4.0)
        kwargs.setdefault("request_timeout", 20.0)
        client = Client(kwargs.pop("hosts", secure_zookeeper.hosts), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
