"""Real ZooKeeper for tests: local processes, fault controls and fixtures.

``ZooKeeperCluster(1)`` is a standalone server, ``ZooKeeperCluster(3)`` an
ensemble, all on free ports of 127.0.0.1 (``local``: the installed server
and java, free ports, four-letter words). ``expire_session`` ends a
client's session on the server. The pytest fixtures live in
``zkpubsub.testing.fixtures`` (``pytest_plugins = ["zkpubsub.testing.fixtures"]``).

Fault injection, by module: ``faults`` (the injector: kills, pauses,
partitions through a peer mesh, an unwritable data directory), ``proxy``
(TCP proxies that cut, drop, or lose one request or reply), ``workload``
and ``history`` (a recorded publish/subscribe run), ``txnlog`` and
``ledger`` (what the servers' own transaction logs say was written),
``checker`` (lost, excused, unexpected, duplicates, order: the history
judged against the ledger), ``audit`` (the tree after healing) and
``report`` (the reliability table). ``secure`` makes secured servers:
``ServerSecurity`` (a superuser, SASL users, enforced authentication, a
TLS port) for ``ZooKeeperCluster(security=...)``, and ``make_tls_material``
(a CA, keystores and a client certificate made with openssl and keytool).
``counters`` sets a parent's sequential counter in a stopped server's
snapshot (``restart_with_cversions``).
"""

from .counters import COUNTER_MAX, restart_with_cversions, set_cversions
from .local import ZooKeeperNotFound, find_classpath, four_letter, free_ports
from .queues import queue_entries
from .secure import ServerSecurity, TlsMaterial, make_tls_material
from .server import (
    EnsembleNode,
    ServerFailed,
    ZooKeeperCluster,
    ZooKeeperEnsemble,
    ZooKeeperNode,
    running_zookeeper,
)
from .sessions import expire_session

__all__ = [
    "COUNTER_MAX",
    "EnsembleNode",
    "ServerFailed",
    "ServerSecurity",
    "TlsMaterial",
    "ZooKeeperCluster",
    "ZooKeeperEnsemble",
    "ZooKeeperNode",
    "ZooKeeperNotFound",
    "expire_session",
    "find_classpath",
    "four_letter",
    "free_ports",
    "make_tls_material",
    "queue_entries",
    "restart_with_cversions",
    "running_zookeeper",
    "set_cversions",
]
