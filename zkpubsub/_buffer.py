"""What a subscription holds between its queue and its consumer.

Names listed but not read yet, messages read and waiting for the handler
(or ``get``), nodes whose messages are not all handled, handled nodes
waiting to be deleted, and the nodes deleted lately. A node is queued for
deletion only once every message it carries has been handled, so a
subscriber that dies first gets it again (at-least-once). A node deleted
lately that is read again as it was (the same creation zxid) is deleted
again, not delivered again: ZooKeeper 3.8 can lose a committed delete, or
serve reads from a server that logged it without applying it, when its
leader fails over in quick succession (docs/reliability.md).
The buffer talks to nobody: the pump fills it and sends its deletes, the
dispatcher (or ``get``) empties it.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .backlog import OverflowMark
from .errors import DecodeError
from .layout import brief, carries_data, parse_queue_entry, parse_segment_node
from .message import Message

__all__ = [
    "RECENT_DELETES",
    "RECENT_SECONDS",
    "Counters",
    "Delivery",
    "DeliveryBuffer",
    "Node",
    "entry_key",
]

logger = logging.getLogger(__name__)

# Deleted nodes remembered after listings stop showing them (and as long as
# they show them), so that one the servers bring back is known for what it
# is: the newest RECENT_DELETES of those deleted in the last RECENT_SECONDS.
RECENT_DELETES: Final = 4096
RECENT_SECONDS: Final = 120.0


def entry_key(name: str, index: int) -> tuple[int, int]:
    """Where a queue entry stands in its queue: ``(segment, sequence)`` for
    ``s<N>/<entry>``; ``(-1, index)`` for a node from before segments, at
    ``index`` in its listing's order (they all come before segments)."""
    segment, _, entry = name.rpartition("/")
    number = parse_segment_node(segment) if segment else None
    parsed = parse_queue_entry(entry)
    if number is None or parsed is None:
        return (-1, index)
    return (number, parsed[2])


@dataclass(slots=True)
class Node:
    """A fetched queue node: how many of its messages are still unhandled,
    and the zxid of its creation (0: not known), which tells a node from an
    older one of the same name."""

    name: str
    remaining: int
    czxid: int = 0


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
    method takes the buffer's ``lock``; ``cond`` (on that lock) is notified
    when deliveries arrive or the buffer closes, and so is a consumer that
    asked to be told (:meth:`next_or_notify`). Code that only needs the
    lock takes ``lock`` itself: ``with cond`` goes through a Python method
    on every message."""

    prefetch: int
    lock: threading.RLock = field(default_factory=threading.RLock)
    cond: threading.Condition = field(init=False)
    counters: Counters = field(default_factory=Counters)
    closed: bool = False
    _deliveries: deque[Delivery] = field(default_factory=deque)
    _active: dict[str, Node] = field(default_factory=dict)  # fetched, not known deleted
    clock: Callable[[], float] = time.monotonic
    # name -> (czxid, when deleted), in deletion order
    _deleted: dict[str, tuple[int, float]] = field(default_factory=dict)
    _unfetched: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # by key
    _waiting: set[str] = field(default_factory=set)  # the names in _unfetched
    _to_delete: list[str] = field(default_factory=list)
    _notify: Callable[[], None] | None = None  # a waiting consumer not on a thread of ours
    _in_hand: int = 0  # messages the consumer took and has not handled yet

    def __post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)

    # -- the pump's side ---------------------------------------------------------------

    def listed(self, ordered: list[str], foreign: list[str]) -> list[str]:
        """A fresh listing of the queue: ``ordered``, its entries in queue
        order, and ``foreign``, the names that are not zkpubsub's. Remember
        the entries not read yet; return the foreign names not seen before.
        Entries deleted already are read again (:meth:`fetched` tells a node
        that came back from a new one of the same name)."""
        with self.lock:
            deleted, active = self._deleted, self._active
            self._forget_deleted(ordered, foreign)
            self._unfetched = [
                (entry_key(name, i), name) for i, name in enumerate(ordered) if name not in active
            ]
            self._waiting = {name for _, name in self._unfetched}
            return [n for n in foreign if n not in active and n not in deleted]

    def _forget_deleted(self, ordered: list[str], foreign: list[str]) -> None:
        """(Under the lock.) Forget the deleted names a listing no longer
        shows that are older than ``RECENT_SECONDS`` or than the newest
        ``RECENT_DELETES``."""
        deleted = self._deleted
        excess = len(deleted) - RECENT_DELETES
        old = self.clock() - RECENT_SECONDS
        stale: list[str] = []
        for i, (name, (_, at)) in enumerate(deleted.items()):
            if i >= excess and at >= old:
                break  # newer ones follow
            stale.append(name)
        if stale:
            shown = set(ordered) | set(foreign)
            for name in stale:
                if name not in shown:
                    del deleted[name]

    def discovered(self, name: str) -> bool:
        """A node named in a watch event (``s<N>/<entry>``): remember it, in
        queue order, unless it is known already (read, or waiting to be).
        ``True`` if it is new. A name deleted already is read again: the
        event says a node was created under it."""
        key = entry_key(name, -1)
        with self.lock:
            if name in self._waiting or name in self._active:
                return False
            if self._unfetched and key < self._unfetched[-1][0]:
                bisect.insort(self._unfetched, (key, name))
            else:
                self._unfetched.append((key, name))
            self._waiting.add(name)
            return True

    def to_fetch(self) -> list[str]:
        """The next names to read: as many as the prefetch leaves room for."""
        with self.lock:
            room = self.prefetch - len(self._deliveries)
            return [name for _, name in self._unfetched[:room]] if room > 0 else []

    @property
    def has_unfetched(self) -> bool:
        with self.lock:
            return bool(self._unfetched)

    def wants_more(self) -> bool:
        """Names wait to be read and the prefetch has room for them."""
        with self.lock:
            return bool(self._unfetched) and len(self._deliveries) < self.prefetch

    def fetched(self, names: list[str], deliveries: list[Delivery]) -> None:
        """``names`` were read (or found gone); hand out their deliveries.
        A node that carries no message is queued for deletion at once, and
        so is one deleted already that came back as it was (not delivered
        again)."""
        with self.lock:
            back, notify = self._hand_out(names, deliveries)
        self._after(back, notify)

    def arrived(self, name: str, deliveries: list[Delivery]) -> bool:
        """The deliveries of a node a watch event named, taken from its name
        (no read): handed out at once if nothing listed or named before it
        waits to be read and the prefetch has room; otherwise ``False``, and
        the pump takes it in its turn."""
        with self.lock:
            if (
                self._unfetched
                or len(self._deliveries) >= self.prefetch
                or name in self._active
                or name in self._deleted  # back after its delete? the pump reads it
                or self.closed
            ):
                return False
            back, notify = self._hand_out([name], deliveries)
        self._after(back, notify)
        return True

    def _hand_out(
        self, names: list[str], deliveries: list[Delivery]
    ) -> tuple[list[str], Callable[[], None] | None]:
        """(Under the lock.) The work of :meth:`fetched`: the names of
        returned nodes, and whom to notify."""
        done = set(names)
        if done & self._waiting:
            self._unfetched = [e for e in self._unfetched if e[1] not in done]
            self._waiting -= done
        back: list[str] = []
        if self._deleted:
            deliveries = self._drop_returned(deliveries, back)
            self._to_delete.extend(back)
        for delivery in deliveries:
            self._active[delivery.node.name] = delivery.node
        self._deliveries.extend(d for d in deliveries if d.node.remaining > 0)
        for delivery in deliveries:
            if delivery.node.remaining == 0:
                self._to_delete.append(delivery.node.name)
        self.cond.notify_all()
        return back, self._take_notify() if self._deliveries else None

    def _after(self, back: list[str], notify: Callable[[], None] | None) -> None:
        if back:
            logger.warning(
                "%d queue node(s) deleted already were read again as they were (the "
                "ZooKeeper servers lost the delete or serve a stale copy): deleted again, "
                "not delivered again: %s",
                len(back),
                ", ".join(brief(name) for name in back[:3]),
            )
        if notify is not None:
            notify()

    def _drop_returned(self, deliveries: list[Delivery], back: list[str]) -> list[Delivery]:
        """(Under the lock.) ``deliveries`` without those of nodes deleted
        already that came back with the same creation zxid (their names are
        added to ``back``); a new node under a deleted name is new. A node
        whose name carries its envelope is the same message whenever its
        name is the same: it is never delivered again."""
        kept: list[Delivery] = []
        for delivery in deliveries:
            node = delivery.node
            known = self._deleted.get(node.name)
            if known is None:
                kept.append(delivery)
            elif (known[0] and known[0] == node.czxid) or carries_data(node.name):
                if node.name not in back:
                    back.append(node.name)
            else:
                del self._deleted[node.name]
                kept.append(delivery)
        return kept

    def deleted_among(self, names: list[str]) -> set[str]:
        """Those of ``names`` this buffer deleted lately."""
        with self.lock:
            deleted = self._deleted
            return {name for name in names if name in deleted} if deleted else set()

    def take_deletes(self) -> list[str]:
        with self.lock:
            names, self._to_delete = self._to_delete, []
            return names

    def deleted(self, names: list[str]) -> None:
        with self.lock:
            now = self.clock()
            for name in names:
                node = self._active.pop(name, None)
                czxid = self._deleted.pop(name, (0, 0.0))[0] if node is None else node.czxid
                self._deleted[name] = (czxid, now)  # (again: now the newest)
            self.counters.nodes_deleted += len(names)

    def delete_again(self, names: list[str]) -> None:
        """Deletes that got no answer: send them with the next batch."""
        with self.lock:
            self._to_delete.extend(names)

    # -- the consumer's side -----------------------------------------------------------

    def take(self, limit: int, deadline: float | None) -> tuple[list[Delivery], bool]:
        """Up to ``limit`` deliveries, waiting for the first until
        ``deadline`` (none when it passes or the buffer closes: what is
        still buffered then stays in the queue), and whether read-ahead is
        now low (under half the prefetch while names wait to be read),
        under one hold of the lock."""
        with self.lock:
            while not self._deliveries or self.closed:
                if self.closed:
                    return [], False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return [], False
                self.cond.wait(left)
            return self._take(limit), self._low()

    def _take(self, limit: int) -> list[Delivery]:
        deliveries = self._deliveries
        if len(deliveries) <= limit:
            taken = list(deliveries)
            deliveries.clear()
        else:
            taken = [deliveries.popleft() for _ in range(limit)]
        self._in_hand += len(taken)
        return taken

    def next_or_notify(self, notify: Callable[[], None]) -> tuple[Delivery | None, bool]:
        """The next delivery if one is buffered, and whether read-ahead is
        now low (as :meth:`take` says), under one hold of the lock; otherwise
        ``None``, and ``notify()`` is called once (from the pump's thread or
        kazoo's connection thread, so it must only hand off) when deliveries
        arrive or the buffer closes. Nothing is asked of a closed buffer:
        it returns ``None`` at once."""
        with self.lock:
            if self.closed:
                return None, False
            if self._deliveries:
                return self._take(1)[0], self._low()
            self._notify = notify
            return None, False

    def _take_notify(self) -> Callable[[], None] | None:
        notify, self._notify = self._notify, None
        return notify

    def _low(self) -> bool:
        """Read ahead has fallen under half the prefetch while names wait."""
        return bool(self._unfetched) and len(self._deliveries) < self.prefetch // 2

    def handled(self, node: Node) -> bool:
        """One message of ``node`` was handled (or given up); ``True`` when it
        was the last and the node is now queued for deletion."""
        with self.lock:
            if self._in_hand:
                self._in_hand -= 1
            node.remaining -= 1
            if node.remaining > 0:
                return False
            self._to_delete.append(node.name)
            return True

    @property
    def deletes_waiting(self) -> int:
        """Handled nodes queued for deletion, not sent yet."""
        with self.lock:
            return len(self._to_delete)

    @property
    def idle(self) -> bool:
        """Nothing read, waiting, or waiting to be deleted."""
        with self.lock:
            return not (self._deliveries or self._unfetched or self._active or self._to_delete)

    @property
    def unfetched(self) -> int:
        with self.lock:
            return len(self._unfetched)

    @property
    def pending(self) -> int:
        """Read or listed, not yet handled (taken by the consumer included)."""
        with self.lock:
            return len(self._deliveries) + len(self._unfetched) + self._in_hand

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.cond.notify_all()
            notify = self._take_notify()
        if notify is not None:
            notify()
