"""An opt-in ZooKeeper in a Docker container, through testcontainers.

Selected with ``ZKPUBSUB_TEST_BACKEND=testcontainers`` where a Docker engine
runs. It offers a connection string only: tests that kill, pause or restart
servers need local processes and are skipped with it. This backend is not
exercised on machines without Docker.
"""

from __future__ import annotations

import time
from typing import Any

from .server import four_letter

IMAGE = "zookeeper:3.8"


class ContainerZooKeeper:
    """A standalone ZooKeeper in a container (``pip install zkpubsub[testcontainers]``)."""

    def __init__(self, image: str = IMAGE) -> None:
        try:
            from testcontainers.core.container import DockerContainer
        except ImportError as exc:  # pragma: no cover - optional extra
            raise ImportError(
                "the container backend needs testcontainers: pip install 'zkpubsub[testcontainers]'"
            ) from exc
        self._container: Any = (
            DockerContainer(image)
            .with_exposed_ports(2181)
            .with_env("ZOO_4LW_COMMANDS_WHITELIST", "*")
            .with_env("ZOO_ADMINSERVER_ENABLED", "false")
        )
        self.hosts = ""

    def start(self, timeout: float = 120.0) -> ContainerZooKeeper:
        self._container.start()
        host = self._container.get_container_host_ip()
        port = int(self._container.get_exposed_port(2181))
        self.hosts = f"{host}:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if "Mode:" in four_letter(host, port, "srvr"):
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"container ZooKeeper not serving after {timeout:g}s")

    def close(self) -> None:
        self._container.stop()
