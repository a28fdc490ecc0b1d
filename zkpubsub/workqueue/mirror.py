"""A worker's copy of its queue: items, reservations, workers, segments.

Kept by one persistent recursive watch on the queue's node (ZooKeeper
3.6+): every event names the node created or deleted, so a put, a
reservation, an ack, a release or a worker joining changes the copy
without a listing. The copy is filled by one listing at the start, again
after every reconnect (events of the time in between are lost; the watch
is set again before the listing is sent) and when a node that is not a
work item turns up among the items (the listing moves it to the dead
letters), when a reserve finds the copy wrong (it offered an item the
server says is gone or held), and every ``SAFETY_LISTING_INTERVAL``
seconds, as the receive pump lists its queues: whatever went wrong with a
copy lasts no longer.

Events that arrive while a listing is under way are kept and applied over
its result, in order: the server sends an event before the answer of any
read that reflects it, so a name with no event since the listing was sent
is as the listing says, and a name with events is as its last event says.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from kazoo.protocol.states import KazooState

from ..connection import Connection
from ..layout import WorkQueuePaths, parse_item_node, parse_segment_node

__all__ = ["SAFETY_LISTING_INTERVAL", "Mirror", "Snapshot"]

SAFETY_LISTING_INTERVAL: Final = 30.0

_CREATED = 1
_DELETED = 2
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The queue as the mirror knows it now; ``heard``: each item's name and
    when its put was heard of (``time.monotonic()``; 0.0 for those found by
    a listing)."""

    heard: dict[str, float]
    reserved: list[str]
    workers: list[str]
    segments: list[int]

    @property
    def items(self) -> list[str]:
        return list(self.heard)


class Mirror:
    """The queue at ``paths`` as seen by events. ``on_change(outdated)``
    runs on kazoo's thread (it must only set flags) when an item may have
    become available (put, released) or, with ``outdated``, when the
    workers changed (every worker's share changes)."""

    def __init__(
        self, conn: Connection, paths: WorkQueuePaths, on_change: Callable[[bool], None]
    ) -> None:
        self._conn = conn
        self._paths = paths
        self._on_change = on_change
        self._lock = threading.Lock()
        # item name -> when its put was heard of (0.0: found by a listing)
        self._items: dict[str, float] = {}
        self._reserved: set[str] = set()
        self._workers: set[str] = set()
        self._segments: set[int] = set()
        self._journal: list[tuple[int, str, str]] | None = None  # events during a listing
        self._epoch = 0  # counts connection losses: events may be missing since
        self._listed_epoch = -1  # the epoch of the last listing applied
        self._filled_at = 0.0
        self._foreign = False  # a node that is not an item turned up among the items
        # The connection calls these, which hold the mirror weakly: a worker
        # dropped without close() is collected, and its watch goes with it.
        ref = weakref.ref(self)

        def on_event(change: int, path: str) -> None:
            mirror = ref()
            if mirror is not None:
                mirror._on_event(change, path)

        def on_state(state: KazooState) -> None:
            mirror = ref()
            if mirror is not None:
                mirror._on_state(state)

        self._hooks = on_event, on_state
        # set while watching: removes the watch if the mirror is collected
        self._finalizer: weakref.finalize[Any, Mirror] | None = None

    def start(self, deadline: float | None) -> bool:
        """Set the watch; False if the server has no persistent watches."""
        on_event, on_state = self._hooks
        self._conn.add_state_listener(on_state)
        try:
            watching = self._conn.watch_tree(self._paths.base, on_event, deadline)
        except BaseException:  # no answer in time, say: the next start adds it again
            self._conn.remove_state_listener(on_state)
            raise
        if not watching:
            self._conn.remove_state_listener(on_state)
            return False
        self._finalizer = weakref.finalize(
            self, _forget, self._conn, self._paths.base, on_event, on_state
        )
        return True

    def stop(self, deadline: float | None) -> None:
        """Remove the watch (the server's too, unless another worker of this
        client still watches the queue). Idempotent."""
        if self._finalizer is None:
            return
        self._finalizer.detach()
        self._finalizer = None
        on_event, on_state = self._hooks
        self._conn.remove_state_listener(on_state)
        self._conn.unwatch_tree(self._paths.base, on_event, deadline)

    def current(self) -> bool:
        """Whether the copy holds without a listing: filled since the last
        connection loss, less than ``SAFETY_LISTING_INTERVAL`` ago, and no
        foreign node among the items since."""
        with self._lock:
            fresh = time.monotonic() - self._filled_at < SAFETY_LISTING_INTERVAL
            return fresh and self._listed_epoch == self._epoch and not self._foreign

    def listing(self) -> int:
        """A listing is about to be sent: keep the events from now on.
        Returns the token :meth:`fill` wants."""
        with self._lock:
            self._journal = []
            self._foreign = False
            self._filled_at = time.monotonic()
            return self._epoch

    def fill(
        self,
        token: int,
        items: Iterable[str],
        reserved: Iterable[str],
        workers: Iterable[str],
        segments: Iterable[int],
    ) -> None:
        """The listing's result, with the events since it was sent applied."""
        with self._lock:
            journal, self._journal = self._journal or [], None
            heard = self._items  # an item heard of before keeps its time
            self._items = {name: heard.get(name, 0.0) for name in items}
            self._reserved = set(reserved)
            self._workers, self._segments = set(workers), set(segments)
            if token == self._epoch:
                self._listed_epoch = token
            for change, kind, name in journal:
                self._apply(change, kind, name)

    def abandon(self) -> None:
        """The listing failed: stop keeping events for it."""
        with self._lock:
            self._journal = None

    def invalidate(self) -> None:
        """The copy was found wrong: it holds again only after a listing."""
        with self._lock:
            self._listed_epoch = -1

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                dict(self._items),
                list(self._reserved),
                list(self._workers),
                sorted(self._segments),
            )

    def available(self, name: str, expired: Iterable[str] = ()) -> bool:
        """Whether the item ``name`` is there and not reserved (or reserved
        with a lease that ran out: ``expired``)."""
        with self._lock:
            return name in self._items and (name not in self._reserved or name in expired)

    def forget_segment(self, number: int) -> None:
        """A segment is being deleted (empty and old)."""
        with self._lock:
            self._segments.discard(number)

    # -- kazoo's thread ----------------------------------------------------------------

    def _on_state(self, state: KazooState) -> None:
        if state != KazooState.CONNECTED:
            with self._lock:
                self._epoch += 1  # events may be lost from now on
        else:
            self._on_change(False)  # connected again: list what they missed

    def _on_event(self, change: int, path: str) -> None:
        if change not in (_CREATED, _DELETED):
            return
        located = self._paths.locate(path)
        if located is None:
            return
        kind, name = located
        with self._lock:
            if self._journal is not None:
                self._journal.append((change, kind, name))
            available, outdated = self._apply(change, kind, name)
        if available or outdated:
            self._on_change(outdated)

    def _apply(self, change: int, kind: str, name: str) -> tuple[bool, bool]:
        """Apply one event (the lock held); returns (an item may have become
        available, the workers changed)."""
        created = change == _CREATED
        if kind == "item":
            if created:
                self._items.setdefault(name, time.monotonic())
            else:
                self._items.pop(name, None)
            return created, False
        if kind == "reservation":
            if created:
                self._reserved.add(name)
                return False, False
            self._reserved.discard(name)
            return name in self._items, False  # released (an ack deletes the item next)
        if kind == "worker":
            _mark(self._workers, name, created)
            return False, True
        if kind == "segment":
            _mark(self._segments, parse_segment_node(name) or 0, created)
            return False, False
        if kind == "foreign" and created:
            self._foreign = True
            return True, False
        if kind == "folder" and not created:
            self._listed_epoch = -1  # the queue was deleted: list it again
            return True, False
        return False, False


def _mark(names: set[_T], name: _T, present: bool) -> None:
    if present:
        names.add(name)
    else:
        names.discard(name)


def _forget(
    conn: Connection,
    path: str,
    on_event: Callable[[int, str], None],
    on_state: Callable[[KazooState], None],
) -> None:
    """What stop() does, for a mirror collected without it. It may be
    collected on any thread (kazoo's too, inside a lock it holds): the
    removal, which takes locks, goes to a thread of its own."""
    conn.remove_state_listener(on_state)
    with contextlib.suppress(RuntimeError):  # no new thread at interpreter shutdown
        threading.Thread(
            target=conn.unwatch_tree_soon,
            args=(path, on_event),
            name="zkpubsub-unwatch",
            daemon=True,
        ).start()


def segment_of(name: str) -> int:
    """The segment of an item name in the mirror (0: unsegmented)."""
    parsed = parse_item_node(name)
    return 0 if parsed is None else parsed.segment
