"""What a local ZooKeeper server needs from the machine: the installed
server and java, free ports on 127.0.0.1, and its four-letter words.

The server comes from an installed ZooKeeper: Debian's ``zookeeper``
package (``/usr/share/java/zookeeper.jar``), a release unpacked at
``$ZOOKEEPER_HOME``, or an explicit class path in
``$ZKPUBSUB_ZOOKEEPER_CLASSPATH``.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import socket
from pathlib import Path
from typing import Final

__all__ = [
    "CLASSPATH_ENV",
    "DEBIAN_JAR",
    "DEBIAN_LOGGER",
    "INSTALL_HINT",
    "JAVA_OPTS_ENV",
    "LOG_LEVEL_ENV",
    "MAIN_CLASS",
    "PORT_FLOOR",
    "ZooKeeperNotFound",
    "ephemeral_range",
    "find_classpath",
    "find_java",
    "four_letter",
    "free_ports",
    "port_pool",
]

CLASSPATH_ENV: Final = "ZKPUBSUB_ZOOKEEPER_CLASSPATH"
JAVA_OPTS_ENV: Final = "ZKPUBSUB_ZOOKEEPER_JAVA_OPTS"
LOG_LEVEL_ENV: Final = "ZKPUBSUB_ZOOKEEPER_LOG_LEVEL"
DEBIAN_JAR: Final = "/usr/share/java/zookeeper.jar"
DEBIAN_LOGGER: Final = "/usr/share/java/slf4j-simple.jar"
MAIN_CLASS: Final = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
INSTALL_HINT: Final = (
    "install ZooKeeper (Debian: apt-get install -y zookeeper), or set "
    f"${CLASSPATH_ENV} to its class path, or $ZOOKEEPER_HOME to an unpacked release"
)


class ZooKeeperNotFound(RuntimeError):
    """No ZooKeeper installation (or no java) was found."""


def find_classpath() -> str:
    """The Java class path of an installed ZooKeeper server."""
    explicit = os.environ.get(CLASSPATH_ENV)
    if explicit:
        return explicit
    home = os.environ.get("ZOOKEEPER_HOME")
    if home:
        jars = sorted(glob.glob(os.path.join(home, "lib", "*.jar")))
        jars += sorted(glob.glob(os.path.join(home, "zookeeper-*.jar")))
        if jars:
            return os.pathsep.join(jars)
    if os.path.exists(DEBIAN_JAR):
        # The jar's manifest names its dependencies; add a logging binding.
        parts = [DEBIAN_JAR]
        if os.path.exists(DEBIAN_LOGGER):
            parts.append(DEBIAN_LOGGER)
        return os.pathsep.join(parts)
    raise ZooKeeperNotFound(f"no ZooKeeper server found: {INSTALL_HINT}")


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.path.exists(os.path.join(java_home, "bin", "java")):
        return os.path.join(java_home, "bin", "java")
    java = shutil.which("java")
    if java is None:
        raise ZooKeeperNotFound(f"no java on PATH: {INSTALL_HINT}")
    return java


PORT_FLOOR: Final = 10000  # below: ports other software on the machine tends to claim
_EPHEMERAL_RANGE_FILE: Final = "/proc/sys/net/ipv4/ip_local_port_range"
_LINUX_EPHEMERAL: Final = (32768, 60999)


def ephemeral_range() -> tuple[int, int]:
    """The ports the system hands out to outgoing connections."""
    try:
        low, high = (int(x) for x in Path(_EPHEMERAL_RANGE_FILE).read_text().split())
    except (OSError, ValueError):
        return _LINUX_EPHEMERAL
    return low, high


def port_pool(floor: int = PORT_FLOOR) -> list[int]:
    """Ports from ``floor`` up that lie outside the ephemeral range."""
    low, high = ephemeral_range()
    return [p for p in range(floor, 65536) if p < low or p > high]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago.

    They are taken outside the range the system uses for outgoing
    connections: ZooKeeper binds some of its ports long after it starts (a
    quorum port once the node leads, every port of a restarted node), and a
    client's or a proxy's outgoing connection must not have taken the port
    meanwhile. Picked at random, so that runs sharing a machine rarely meet.
    """
    pool = port_pool()
    rng = random.SystemRandom()
    rng.shuffle(pool)
    socks: list[socket.socket] = []
    try:
        for port in pool:
            if len(socks) == n:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        while len(socks) < n:  # no room outside the ephemeral range
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def four_letter(host: str, port: int, command: str, timeout: float = 2.0) -> str:
    """Send a four-letter-word command (``srvr``, ``mntr``, ``ruok``…)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command.encode())
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")
