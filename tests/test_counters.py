"""The counter fixture, and what ZooKeeper 3.8 does at the end of a parent's
sequential counter (the baseline the roll-over protects against)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from zkpubsub.testing import ZooKeeperCluster
from zkpubsub.testing.counters import COUNTER_MAX, restart_with_cversions

from .helpers import local_servers_only, raw_kazoo, reconnected

pytestmark = local_servers_only


def suffix(path: str) -> int:
    """The sequence number of a sequential node's path (``-5`` is ``-000000005``)."""
    name = path.rsplit("/", 1)[1]
    digits = name[-11:] if name[-11] == "-" and name[-12] == "-" else name[-10:]
    return int(digits)


def test_a_parents_counter_set_in_the_snapshot_names_the_next_children(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    zk = make_cluster(1)
    raw = raw_kazoo(zk.hosts)
    try:
        raw.ensure_path("/near")
        raw.ensure_path("/other")
        raw.create("/near/x-", sequence=True)  # logged after the last snapshot
        restart_with_cversions(zk, {"/near": 1_000_000, "/other": 7})
        reconnected(raw)
        assert suffix(raw.create("/near/x-", sequence=True)) == 1_000_000
        assert suffix(raw.create("/near/x-", sequence=True)) == 1_000_001
        assert suffix(raw.create("/other/x-", sequence=True)) == 7
        # What a client sees in the stat: creates and deletes, 2 * counter - children.
        stat = raw.exists("/near")
        assert stat.cversion == 2 * 1_000_002 - stat.numChildren
        # A later restart keeps it (the edit is a snapshot, not replayed over).
        zk.restart(zk.nodes[0])
        reconnected(raw)
        assert suffix(raw.create("/near/x-", sequence=True)) == 1_000_002
    finally:
        raw.stop()
        raw.close()


def test_zookeeper_saturates_the_counter_instead_of_wrapping(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    """The baseline: past 2**31 - 1 the suffix repeats, so names stop saying
    the order of creation (and a name without a guid cannot be created)."""
    zk = make_cluster(1)
    raw = raw_kazoo(zk.hosts)
    try:
        raw.ensure_path("/end")
        restart_with_cversions(zk, {"/end": COUNTER_MAX - 2})
        reconnected(raw)
        seen = [
            suffix(raw.create(f"/end/n{uuid.uuid4().hex[:12]}-", sequence=True)) for _ in range(6)
        ]
        assert seen == [COUNTER_MAX - 2, COUNTER_MAX - 1, *[COUNTER_MAX] * 4]
    finally:
        raw.stop()
        raw.close()
