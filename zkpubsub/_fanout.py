"""One fan-out transaction: its operations and the meaning of its errors.

A fan-out writes the same nodes, in order, into the queue of every target
subscriber, and checks the data version of ``subscribers/<topic>`` (which
every subscribe and unsubscribe bumps). Its operations, after the receipt
that :class:`~zkpubsub.receipts.ReceiptWriter` puts first::

    check subscribers/<topic> at version
    create messages/<target 1>/<topic>/m<guid>-   (sequential, one per node)
    ...
    create messages/<target k>/<topic>/m<guid>-

If it fails, the failing operation tells what happened: the check means the
subscriber list changed (read it again); a create means that target's queue
is gone (its client left and the cleaner removed it: drop it). Anything else
is an error zkpubsub does not expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kazoo.exceptions import BadVersionError, NoNodeError

from .errors import ZooKeeperError
from .layout import Layout
from .receipts import Outcome

__all__ = ["FanOut", "Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """``ok``: written to every target; ``stale``: the subscriber list
    changed; ``gone``: the queue of ``culprit`` no longer exists."""

    kind: Literal["ok", "stale", "gone"]
    culprit: str = ""


@dataclass(frozen=True, slots=True)
class FanOut:
    """``nodes`` for each of ``targets``' queues of ``topic``, checked
    against the subscriber list at ``version``."""

    topic: str
    version: int
    targets: tuple[str, ...]
    nodes: tuple[bytes, ...]

    def add_ops(self, layout: Layout, txn: Any, guid: str, acl: Any = None) -> None:
        """Add the check and the creates to ``txn`` (names carry ``guid``;
        every message node gets ``acl``)."""
        txn.check(layout.topic(self.topic), self.version)
        for target in self.targets:
            prefix = layout.message_prefix(layout.queue(target, self.topic), guid)
            for data in self.nodes:
                txn.create(prefix, data, acl=acl, sequence=True)

    def owner(self, index: int) -> str:
        """The target of operation ``index`` (a create; 0 is the check)."""
        return self.targets[(index - 1) // len(self.nodes)]

    def classify(self, outcome: Outcome) -> Verdict:
        """What an :class:`Outcome` of this transaction means. Raises
        :class:`ZooKeeperError` for an error no retry can mend."""
        error, index = outcome.error, outcome.index
        if error is None:
            return Verdict("ok")
        if index == 0 and isinstance(error, (BadVersionError, NoNodeError)):
            return Verdict("stale")
        if index >= 1 and isinstance(error, NoNodeError):
            return Verdict("gone", self.owner(index))
        raise ZooKeeperError(f"publish to {self.topic!r}: {type(error).__name__}")
