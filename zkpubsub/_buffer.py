"""What a subscription holds between its queue and its consumer.

Names listed but not read yet, messages read and waiting for the handler
(or ``get``), nodes whose messages are not all handled, handled nodes
waiting to be deleted, and nodes deleted but perhaps still in a listing.
A node is queued for deletion only once every message it carries has been
handled, so a subscriber that dies first gets it again (at-least-once).
The buffer talks to nobody: the pump fills it and sends its deletes, the
dispatcher (or ``get``) empties it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .backlog import OverflowMark
from .errors import DecodeError
from .message import Message

__all__ = ["Counters", "Delivery", "DeliveryBuffer", "Node"]


@dataclass(slots=True)
class Node:
    """A fetched queue node: how many of its messages are still unhandled."""

    name: str
    remaining: int


@dataclass(slots=True)
class Delivery:
    """One message of a node, the reason the node could not be read, or an
    overflow marker (``mark``) met in the queue."""

    node: Node
    message: Message | None = None
    error: DecodeError | None = None
    mark: OverflowMark | None = None
    window: tuple[float, float] = (0.0, 0.0)  # a marker's first and last skip (server clock)


@dataclass(slots=True)
class Counters:
    delivered: int = 0
    errors: int = 0
    dropped: int = 0
    redelivered: int = 0
    nodes_deleted: int = 0


@dataclass(slots=True)
class DeliveryBuffer:
    """The state shared by a subscription's pump and its consumer. Every
    method takes the buffer's lock; ``cond`` is notified when deliveries
    arrive or the buffer closes."""

    prefetch: int
    cond: threading.Condition = field(default_factory=threading.Condition)
    counters: Counters = field(default_factory=Counters)
    closed: bool = False
    _deliveries: deque[Delivery] = field(default_factory=deque)
    _active: dict[str, Node] = field(default_factory=dict)  # fetched, not known deleted
    _deleted: set[str] = field(default_factory=set)  # deleted, may still show in a listing
    _unfetched: list[str] = field(default_factory=list)
    _to_delete: list[str] = field(default_factory=list)

    # -- the pump's side ---------------------------------------------------------------

    def listed(self, ordered: list[str], foreign: list[str]) -> list[str]:
        """A fresh listing of the queue: ``ordered``, its entries in queue
        order, and ``foreign``, the names that are not zkpubsub's. Remember
        the entries not read yet; return the foreign names not seen before."""
        with self.cond:
            self._deleted &= set(ordered) | set(foreign)
            known = self._active.keys() | self._deleted
            self._unfetched = [n for n in ordered if n not in known]
            return [n for n in foreign if n not in known]

    def to_fetch(self) -> list[str]:
        """The next names to read: as many as the prefetch leaves room for."""
        with self.cond:
            room = self.prefetch - len(self._deliveries)
            return self._unfetched[:room] if room > 0 else []

    @property
    def has_unfetched(self) -> bool:
        with self.cond:
            return bool(self._unfetched)

    def wants_more(self) -> bool:
        """Names wait to be read and the prefetch has room for them."""
        with self.cond:
            return bool(self._unfetched) and len(self._deliveries) < self.prefetch

    def fetched(self, names: list[str], deliveries: list[Delivery]) -> None:
        """``names`` were read (or found gone); hand out their deliveries.
        A node that carries no message is queued for deletion at once."""
        with self.cond:
            done = set(names)
            self._unfetched = [n for n in self._unfetched if n not in done]
            for delivery in deliveries:
                self._active[delivery.node.name] = delivery.node
            self._deliveries.extend(d for d in deliveries if d.node.remaining > 0)
            for delivery in deliveries:
                if delivery.node.remaining == 0:
                    self._to_delete.append(delivery.node.name)
            self.cond.notify_all()

    def take_deletes(self) -> list[str]:
        with self.cond:
            names, self._to_delete = self._to_delete, []
            return names

    def deleted(self, names: list[str]) -> None:
        with self.cond:
            for name in names:
                self._active.pop(name, None)
                self._deleted.add(name)
            self.counters.nodes_deleted += len(names)

    def delete_again(self, names: list[str]) -> None:
        """Deletes that got no answer: send them with the next batch."""
        with self.cond:
            self._to_delete.extend(names)

    # -- the consumer's side -----------------------------------------------------------

    def next(self, deadline: float | None) -> Delivery | None:
        """The next delivery, or ``None`` when ``deadline`` passes or the
        buffer closes (what is still buffered then stays in the queue)."""
        with self.cond:
            while not self._deliveries or self.closed:
                if self.closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self.cond.wait(left)
            return self._deliveries.popleft()

    def low(self) -> bool:
        """Read ahead has fallen under half the prefetch while names wait."""
        with self.cond:
            return bool(self._unfetched) and len(self._deliveries) < self.prefetch // 2

    def handled(self, node: Node) -> bool:
        """One message of ``node`` was handled (or given up); ``True`` when it
        was the last and the node is now queued for deletion."""
        with self.cond:
            node.remaining -= 1
            if node.remaining > 0:
                return False
            self._to_delete.append(node.name)
            return True

    @property
    def pending(self) -> int:
        """Read or listed, not yet handled."""
        with self.cond:
            return len(self._deliveries) + len(self._unfetched)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
