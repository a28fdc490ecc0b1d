"""pytest fixtures on real ZooKeeper.

Enable with ``pytest_plugins = ["zkpubsub.testing.fixtures"]`` in a
``conftest.py``. The backend is chosen by the environment:

* default: a standalone server started from the local install for the
  whole session (a missing install is an error, not a skip);
* ``ZKPUBSUB_TEST_BACKEND=testcontainers``: the same in Docker containers
  (:class:`~zkpubsub.testing.containers.ContainerCluster`, image from
  ``$ZKPUBSUB_ZOOKEEPER_IMAGE``); ensembles a test breaks are containers too;
* ``ZK_HOSTS=host:port,...``: an external ensemble; tests that control
  servers (``make_cluster``) skip.

Tests marked ``local_install`` run servers from the local install
themselves; they skip on another backend when there is no local install.
Every test gets a fresh root (``zk_root``), deleted afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Protocol

import pytest
from kazoo.client import KazooClient

from ..client import Client
from .local import ZooKeeperNotFound, find_classpath, find_java
from .secure import TEST_SASL_USERS, ServerSecurity, TlsMaterial, make_tls_material
from .server import ZooKeeperCluster, ZooKeeperEnsemble

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "ExternalZooKeeper",
    "Terminated",
    "ZooKeeperBackend",
    "backend_name",
    "ensemble_factory",
    "has_local_install",
    "local_cluster",
    "make_client",
    "make_cluster",
    "make_secure_client",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_setup",
    "pytest_unconfigure",
    "raw_zk",
    "secure_root",
    "secure_zookeeper",
    "start_ensemble",
    "tls_material",
    "zk_hosts",
    "zk_root",
    "zookeeper",
]


BACKEND_ENV: Final = "ZKPUBSUB_TEST_BACKEND"
BACKENDS: Final = ("local", "testcontainers")


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


def backend_name() -> str:
    """``external`` (``ZK_HOSTS``), ``testcontainers`` or ``local``."""
    if os.environ.get("ZK_HOSTS"):
        return "external"
    name = os.environ.get(BACKEND_ENV) or "local"
    if name not in BACKENDS:
        raise pytest.UsageError(
            f"${BACKEND_ENV} must be one of {', '.join(BACKENDS)}, not {name!r}"
        )
    return name


def ensemble_factory() -> Callable[..., ZooKeeperEnsemble[Any]] | None:
    """What starts ensembles on this run's backend (``factory(3, base_dir=...)``),
    ``None`` for an external one."""
    name = backend_name()
    if name == "testcontainers":
        from .containers import ContainerCluster

        return ContainerCluster
    if name == "local":
        return ZooKeeperCluster
    return None


def has_local_install() -> bool:
    try:
        find_classpath()
        find_java()
    except ZooKeeperNotFound:
        return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "local_install: runs ZooKeeper from the local install itself "
        "(skipped on another backend when there is none)",
    )
    _stop_on_sigterm()


class Terminated(KeyboardInterrupt):
    """The run got SIGTERM: it stops as on Ctrl-C."""


def _stop_on_sigterm() -> None:
    """Make SIGTERM end the run as Ctrl-C does: the fixtures' teardowns
    and the exit handlers stop the ZooKeeper servers it started (they run
    in sessions of their own, and a run killed by the signal's default
    would leave them running). Only where SIGTERM has no handler yet."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    run = os.getpid()

    def terminated(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends it at once
        if os.getpid() != run:  # a child forked by a test: the signal's default
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGTERM, terminated)
    _installed.append(terminated)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _installed:
        if signal.getsignal(signal.SIGTERM) is _installed.pop():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


_installed: list[Callable[[int, object], None]] = []


def pytest_report_header(config: pytest.Config) -> str:
    name = backend_name()
    if name == "testcontainers":
        from .containers import default_image

        return f"zookeeper: testcontainers backend, image {default_image()}"
    if name == "external":
        return f"zookeeper: external, {os.environ['ZK_HOSTS']}"
    return "zookeeper: local processes"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("local_install") is None or backend_name() == "local":
        return
    if not has_local_install():
        pytest.skip("needs ZooKeeper and Java installed on this machine")


def start_ensemble(
    factory: Callable[..., ZooKeeperEnsemble[Any]], *args: Any, **kwargs: Any
) -> ZooKeeperEnsemble[Any]:
    """Build and start an ensemble; if it does not come up, close it (no
    server or container left behind) and raise."""
    cluster = factory(*args, **kwargs)
    try:
        return cluster.start()
    except BaseException:
        cluster.close()
        raise


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperBackend]:
    """The session's ZooKeeper: a standalone server on the chosen backend."""
    factory = ensemble_factory()
    backend: ZooKeeperBackend
    if factory is None:
        backend = ExternalZooKeeper(os.environ["ZK_HOSTS"])
    else:
        backend = start_ensemble(factory, 1, base_dir=tmp_path_factory.mktemp("zk-session"))
    try:
        yield backend
    finally:
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
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., ZooKeeperEnsemble[Any]]]:
    """Start private ensembles (``make_cluster(3)``) that this test may break,
    on the session's backend; all are closed after the test, whatever its
    outcome."""
    factory = ensemble_factory()
    if factory is None:
        pytest.skip("needs ZooKeeper servers started by this run (not ZK_HOSTS)")
    made: list[ZooKeeperEnsemble[Any]] = []

    def make(size: int = 1, **kwargs: Any) -> Any:
        cluster = factory(size, base_dir=tmp_path / f"zk{len(made)}", **kwargs)
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
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
