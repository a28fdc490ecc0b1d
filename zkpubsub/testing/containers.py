"""ZooKeeper servers in Docker containers, through testcontainers.

:class:`ContainerCluster` is the container twin of
:class:`~zkpubsub.testing.ZooKeeperCluster`: a standalone server or an
N-node ensemble with the same controls (stop, kill, pause, resume,
restart, wipe, leader discovery), for machines with Docker and no local
ZooKeeper or Java (``pip install 'zkpubsub[testcontainers]'``).

Networking stays on loopback: every container shares the host's network
(``network_mode="host"``) and its server binds free ports of 127.0.0.1, as
a local one would; nothing is ever sent to a container's own address, and
the Docker engine needs no bridge. Each node's directory (``zoo.cfg``, the
data directory, the server's log) is mounted into its container at the same
path, so the configuration is the one the local backend writes and the
fault tools that edit it or its directory work unchanged.

The image is ``$ZKPUBSUB_ZOOKEEPER_IMAGE``, by default the official
``zookeeper`` image (pulled if missing). An image built from Debian's
packages works as well (``bash scripts/zookeeper-image.sh``): the server is
started by a script of this module that finds ZooKeeper in either layout,
not by the image's own entry point.

testcontainers' reaper (Ryuk) is switched off unless
``TESTCONTAINERS_RYUK_DISABLED`` says otherwise: it runs from an image of
its own, which may not be there, and needs a bridge. The containers are
removed by :meth:`ContainerCluster.close` (the fixtures call it, whatever
the outcome of the test), at interpreter exit, and at the latest when
their lifetime (``$ZKPUBSUB_CONTAINER_LIFETIME`` seconds, default three
hours) ends: the server is then killed and the container exits.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any, Final

from .server import EnsembleNode, ServerFailed, ZooKeeperEnsemble

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_LIFETIME",
    "IMAGE_ENV",
    "LABEL",
    "LIFETIME_ENV",
    "OLDEST_SUPPORTED",
    "RUN_SCRIPT",
    "ContainerCluster",
    "ContainerNode",
    "DockerUnavailable",
    "default_image",
    "default_lifetime",
    "image_version",
]


IMAGE_ENV: Final = "ZKPUBSUB_ZOOKEEPER_IMAGE"
LIFETIME_ENV: Final = "ZKPUBSUB_CONTAINER_LIFETIME"
DEFAULT_IMAGE: Final = "zookeeper:3.8"
DEFAULT_LIFETIME: Final = 3 * 3600
# every container of this module carries it: `docker ps --filter label=zkpubsub.testing`
LABEL: Final = "zkpubsub.testing"
OLDEST_SUPPORTED: Final = (3, 4)
_EXTRA_HINT: Final = "pip install 'zkpubsub[testcontainers]'"

# Runs in the container as its entry point: ``sh -c SCRIPT run-zookeeper
# CONFIG LOG LIFETIME JVM-FLAGS...`` starts the server in the foreground,
# its output appended to LOG; ``--version`` prints the jar's name
# (``zookeeper-3.8.0``). Debian's packages put the server's classes in
# /usr/share/java; a release (the official image) is unpacked under
# /apache-zookeeper-*-bin (3.5 and later) or /zookeeper-* (3.4), its
# logging configuration in $ZOO_CONF_DIR.
RUN_SCRIPT: Final = r"""
set -eu
if [ "${1:-}" = --version ]; then
    for jar in /usr/share/java/zookeeper-[0-9]*.jar \
        "${ZOOKEEPER_HOME:-/nonexistent}"/lib/zookeeper-[0-9]*.jar \
        /apache-zookeeper-*/lib/zookeeper-[0-9]*.jar \
        /zookeeper-*/zookeeper-[0-9]*.jar /opt/zookeeper/lib/zookeeper-[0-9]*.jar; do
        if [ -f "$jar" ]; then
            basename "$jar" .jar
            exit 0
        fi
    done
    echo "no ZooKeeper server found in this image" >&2
    exit 127
fi
config=$1 log=$2 lifetime=$3
shift 3
exec >>"$log" 2>&1
if [ -f /usr/share/java/zookeeper.jar ]; then
    classpath=/usr/share/java/zookeeper.jar
    # 3.4's manifest names neither the logging API nor a binding for it; the
    # binding goes first, before any that a manifest names
    for jar in slf4j-api slf4j-simple; do
        if [ -f "/usr/share/java/$jar.jar" ]; then
            classpath=/usr/share/java/$jar.jar:$classpath
        fi
    done
else
    classpath=
    for home in "${ZOOKEEPER_HOME:-}" /apache-zookeeper-* /zookeeper-* /opt/zookeeper; do
        if [ -n "$home" ] && [ -d "$home/lib" ]; then
            classpath="${ZOO_CONF_DIR:-/conf}:$home/*:$home/lib/*"
            break
        fi
    done
    if [ -z "$classpath" ]; then
        echo "no ZooKeeper server found in this image"
        exit 127
    fi
fi
java=java
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    java=$JAVA_HOME/bin/java
fi
set -- "$java" "$@" -Dzookeeper.root.logger=INFO,CONSOLE -cp "$classpath" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$config"
if [ "$lifetime" -gt 0 ] && command -v timeout >/dev/null 2>&1; then
    exec timeout -s KILL "$lifetime" "$@"
fi
exec "$@"
"""


class DockerUnavailable(RuntimeError):
    """No Docker engine answers, or the image cannot be had."""


def default_image() -> str:
    """``$ZKPUBSUB_ZOOKEEPER_IMAGE``, else the official image."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def default_lifetime() -> int:
    """Seconds after which a server container ends by itself (0: never)."""
    value = os.environ.get(LIFETIME_ENV)
    return int(value) if value else DEFAULT_LIFETIME


def _testcontainers() -> Any:
    """testcontainers' ``DockerContainer``, with the reaper off unless asked for."""
    try:
        from testcontainers.core import config as tc_config
        from testcontainers.core.container import DockerContainer
    except ImportError as exc:  # pragma: no cover - optional extra
        raise ImportError(f"the container backend needs testcontainers: {_EXTRA_HINT}") from exc
    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        tc_config.testcontainers_config.ryuk_disabled = True
    return DockerContainer


@functools.cache
def _docker() -> Any:
    """A docker-py client for the engine testcontainers would use."""
    _testcontainers()
    from testcontainers.core.docker_client import DockerClient

    try:
        return DockerClient().client
    except Exception as exc:
        raise DockerUnavailable(
            f"no Docker engine reachable ({exc}); start dockerd or set DOCKER_HOST"
        ) from exc


def _parse_version(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"no version in {text!r}")
    return tuple(int(part) for part in match.groups())


@functools.cache
def image_version(image: str) -> tuple[int, ...]:
    """The ZooKeeper version inside ``image`` (pulled if missing), read from
    its jar's name in a short-lived container without network."""
    client = _docker()
    try:
        out = client.containers.run(
            image,
            entrypoint=["sh", "-c", RUN_SCRIPT, "run-zookeeper", "--version"],
            network_mode="none",
            remove=True,
            stdout=True,
            stderr=True,
            labels={LABEL: "version-probe"},
        )
    except Exception as exc:
        raise DockerUnavailable(
            f"cannot run image {image!r} ({exc}); pull it, or build one from Debian's "
            f"packages (bash scripts/zookeeper-image.sh) and name it in ${IMAGE_ENV}"
        ) from exc
    text = out.decode("utf-8", "replace").strip()
    try:
        return _parse_version(text)
    except ValueError:
        raise DockerUnavailable(f"no ZooKeeper server found in image {image!r}: {text}") from None


class ContainerNode(EnsembleNode):
    """One ZooKeeper server in a container of its own.

    ``kill`` removes the container at once (SIGKILL); ``stop`` asks the
    server to exit first; ``pause`` freezes it (its cgroup: sockets stay
    open, nothing answers); ``start`` runs a new container on the same
    directory, so the data survives unless wiped.
    """

    def __init__(
        self,
        myid: int,
        directory: Path,
        client_port: int,
        peer_port: int,
        election_port: int,
        *,
        java_opts: list[str],
        image: str,
        lifetime: int,
    ) -> None:
        super().__init__(
            myid, directory, client_port, peer_port, election_port, java_opts=java_opts
        )
        self.image = image
        self.lifetime = lifetime
        self._started: Any = None  # testcontainers' DockerContainer, once started
        self._container: Any = None  # and the docker-py Container it wraps

    @property
    def container_id(self) -> str | None:
        return None if self._container is None else str(self._container.id)

    @property
    def running(self) -> bool:
        container = self._container
        if container is None:
            return False
        try:
            container.reload()
        except Exception:  # removed behind our back
            return False
        return container.status in ("running", "paused")

    def start(self) -> None:
        if self.running:
            return
        self._remove()  # one that exited by itself
        uid, gid = self.run_as if self.run_as is not None else (os.getuid(), os.getgid())
        mount = str(self.directory)
        command = [
            str(self.config_path),
            str(self.log_path),
            str(self.lifetime),
            *self.java_flags(),
        ]
        container = (
            _testcontainers()(self.image)
            .with_name(f"zkpubsub-zk{self.client_port}-{uuid.uuid4().hex[:8]}")
            .with_command(command)
            .with_volume_mapping(mount, mount, "rw")
            .with_kwargs(
                entrypoint=["sh", "-c", RUN_SCRIPT, "run-zookeeper"],
                network_mode="host",
                network=None,  # keeps testcontainers from choosing one
                user=f"{uid}:{gid}",
                working_dir=mount,
                labels={LABEL: "zookeeper", f"{LABEL}.directory": mount},
            )
        )
        try:
            container.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                container.stop()
            raise ServerFailed(f"{self!r}: the container did not start: {exc}") from exc
        self._started = container
        self._container = container.get_wrapped_container()
        self.paused = False

    def _remove(self) -> None:
        """Remove the container, running or not (SIGKILL), and close its client."""
        started, self._started, self._container = self._started, None, None
        self.paused = False
        if started is not None:
            with contextlib.suppress(Exception):
                started.stop()

    def kill(self) -> None:
        """SIGKILL and remove the container: no goodbye to peers or clients."""
        self._remove()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, SIGKILL after ``timeout`` seconds, then remove the container."""
        container = self._container
        if container is None:
            return
        with contextlib.suppress(Exception):
            if self.paused:
                container.unpause()
            container.stop(timeout=max(1, math.ceil(timeout)))
        self._remove()

    def pause(self) -> None:
        """Freeze every process of the container (``docker pause``)."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.pause()
                self.paused = True

    def resume(self) -> None:
        if self._container is not None and self.paused:
            with contextlib.suppress(Exception):
                self._container.unpause()
        self.paused = False


class ContainerCluster(ZooKeeperEnsemble[ContainerNode]):
    """A standalone ZooKeeper (``size=1``) or an ensemble in containers.

    ``image`` defaults to :func:`default_image`; its ZooKeeper version is
    read first (:func:`image_version`), and a 3.4 server gets the
    configuration it reads. ``lifetime`` (seconds, default
    :func:`default_lifetime`) bounds every container. The other arguments
    are those of :class:`~zkpubsub.testing.ZooKeeperEnsemble`.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        image: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        tick_time: int = 200,
        max_session_timeout: float = 60.0,
        java_opts: list[str] | None = None,
        settings: dict[str, str] | None = None,
        client_ports: list[int] | None = None,
        lifetime: int | None = None,
    ) -> None:
        self.image = image or default_image()
        self.lifetime = default_lifetime() if lifetime is None else lifetime
        self.image_version = image_version(self.image)
        if self.image_version[:2] < OLDEST_SUPPORTED:
            raise ServerFailed(
                f"image {self.image!r} has ZooKeeper "
                f"{'.'.join(map(str, self.image_version))}; 3.4 or later is needed"
            )
        self.legacy_config = self.image_version[:2] < (3, 5)
        super().__init__(
            size,
            base_dir=base_dir,
            tick_time=tick_time,
            max_session_timeout=max_session_timeout,
            java_opts=java_opts,
            settings=settings,
            client_ports=client_ports,
        )

    def _new_node(
        self, myid: int, directory: Path, ports: list[int], *, java_opts: list[str]
    ) -> ContainerNode:
        return ContainerNode(
            myid, directory, *ports, java_opts=java_opts, image=self.image, lifetime=self.lifetime
        )

    def start(self, timeout: float = 120.0) -> ContainerCluster:
        super().start(timeout)
        return self

    def __enter__(self) -> ContainerCluster:
        super().__enter__()
        return self
