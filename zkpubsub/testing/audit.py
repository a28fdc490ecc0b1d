"""The convergence audit: what the tree must look like once faults healed.

After the cleaner's grace period:

* no queue (``messages/<id>``) and no publish receipts (``receipts/<id>``)
  of a client that is not registered;
* no purge marker left behind (``purging/<id>``), but the notices of
  finished purges of durable subscribers;
* exactly one cleaner leads: one running cleaner says it leads, and it owns
  the lowest candidate node; there is one candidate node per running
  cleaner (none left over from an expired session).

:func:`audit_convergence` reads the tree with a plain ZooKeeper client of
its own, waiting up to a deadline for those to hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from .._candidates import read_candidate
from .._purges import purge_finished
from ..cleaner import Cleaner
from ..layout import Layout, join, order_candidates

__all__ = [
    "Audit",
    "audit_convergence",
    "look",
    "poll",
]


class _Verdict(Protocol):
    @property
    def ok(self) -> bool: ...


A = TypeVar("A", bound=_Verdict)


@dataclass(frozen=True, slots=True)
class Audit:
    """One look at the tree. ``ok`` when every rule holds."""

    clients: tuple[str, ...]
    dead_queues: tuple[str, ...]
    dead_receipts: tuple[str, ...]
    purge_markers: tuple[str, ...]
    candidates: tuple[str, ...]  # client ids, lowest candidate first
    leaders: tuple[str, ...]  # running cleaners that say they lead
    running_cleaners: int

    @property
    def ok(self) -> bool:
        return (
            not self.dead_queues
            and not self.dead_receipts
            and not self.purge_markers
            and len(self.leaders) == 1
            and bool(self.candidates)
            and self.candidates[0] == self.leaders[0]
            and len(self.candidates) == self.running_cleaners
        )

    def describe(self) -> str:
        return (
            f"dead queues={list(self.dead_queues)} dead receipts={list(self.dead_receipts)} "
            f"purge markers={list(self.purge_markers)} "
            f"leaders={list(self.leaders)} candidates={list(self.candidates)} "
            f"running cleaners={self.running_cleaners}"
        )


def look(zk: KazooClient, layout: Layout, cleaners: Sequence[Cleaner]) -> Audit:
    """Read the tree once (after a sync) and the cleaners' own view."""
    zk.sync(layout.root_path)
    clients = set(zk.get_children(layout.clients))
    owners = set(zk.get_children(layout.messages))
    publishers = set(zk.get_children(layout.receipts)) if zk.exists(layout.receipts) else set()
    markers = []
    for cid in zk.get_children(layout.purging):
        try:
            data, _ = zk.get(layout.purge_marker(cid))
        except NoNodeError:
            continue
        if not purge_finished(data):  # a finished purge's notice may stay
            markers.append(cid)
    names = zk.get_children(layout.candidates)
    holders = []
    for name in order_candidates(names):
        try:
            data, _ = zk.get(join(layout.candidates, name))
        except NoNodeError:
            continue
        holders.append(read_candidate(data)[0])
    running = [c for c in cleaners if not c.stopped]
    return Audit(
        clients=tuple(sorted(clients)),
        dead_queues=tuple(sorted(owners - clients)),
        dead_receipts=tuple(sorted(publishers - clients)),
        purge_markers=tuple(sorted(markers)),
        candidates=tuple(holders),
        leaders=tuple(c.client_id for c in running if c.is_leader),
        running_cleaners=len(running),
    )


def poll(hosts: str, look_once: Callable[[KazooClient], A], *, timeout: float) -> A:
    """Look at the tree through a client of its own until the look is
    ``ok`` or ``timeout`` seconds pass; return the last look."""
    zk = KazooClient(hosts=hosts, timeout=10.0)
    zk.start(timeout=30)
    try:
        deadline = time.monotonic() + timeout
        while True:
            audit = look_once(zk)
            if audit.ok or time.monotonic() > deadline:
                return audit
            time.sleep(0.25)
    finally:
        zk.stop()
        zk.close()


def audit_convergence(
    hosts: str,
    root: str,
    cleaners: Sequence[Cleaner],
    *,
    timeout: float,
) -> Audit:
    """Wait up to ``timeout`` seconds for the rules to hold; return the last
    look (check ``.ok``). Asks the leading cleaner to sweep while waiting."""
    layout = Layout(root)

    def sweep_and_look(zk: KazooClient) -> Audit:
        for cleaner in cleaners:
            if cleaner.is_leader:
                cleaner.sweep_now()
        return look(zk, layout, cleaners)

    return poll(hosts, sweep_and_look, timeout=timeout)
