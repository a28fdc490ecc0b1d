"""Persistent recursive watches (ZooKeeper 3.6+), which kazoo 2.11 lacks.

A persistent recursive watch on a path (``addWatch``, opcode 106, mode 1)
stays after it fires and fires for every node created, changed or deleted
at or below the path, naming that node. kazoo knows neither the request
nor such events (it looks its one-shot watchers up by exact path and drops
the rest), so this module adds the two request types and a hook in front
of kazoo's own event reader. Only :mod:`zkpubsub.connection` uses it.

The server keeps watches per connection: after a reconnect they must be
added again (kazoo's ``setWatches`` does not carry them), and events of
the time in between are lost — whoever watches must read what it missed.
``removeWatches`` (opcode 18) with the type ``Any`` removes one (ZooKeeper
3.8 has no persistent type for it). A server before 3.6 answers the
request with ``Unimplemented``.
"""

from __future__ import annotations

import logging
import threading
from collections import namedtuple
from collections.abc import Callable
from typing import Any, Final

from kazoo.protocol.serialization import Watch, int_struct, write_string

__all__ = ["AddWatch", "EventHook", "RemoveWatches"]

logger = logging.getLogger(__name__)

PERSISTENT_RECURSIVE: Final = 1
WATCHER_ANY: Final = 3

# ZooKeeper's event types, as numbers on the wire.
NODE_CREATED: Final = 1
NODE_DELETED: Final = 2
NODE_DATA_CHANGED: Final = 3

OnEvent = Callable[[int, str], None]


class AddWatch(namedtuple("AddWatch", "path mode")):
    """The ``addWatch`` request (no ``watcher`` field: kazoo must not file
    it among its one-shot watchers)."""

    type = 106

    def serialize(self) -> bytearray:
        b = bytearray()
        b.extend(write_string(self.path))
        b.extend(int_struct.pack(self.mode))
        return b

    @classmethod
    def deserialize(cls, _bytes: bytes, _offset: int) -> bool:
        return True


class RemoveWatches(namedtuple("RemoveWatches", "path watcher_type")):
    """The ``removeWatches`` request."""

    type = 18

    def serialize(self) -> bytearray:
        b = bytearray()
        b.extend(write_string(self.path))
        b.extend(int_struct.pack(self.watcher_type))
        return b

    @classmethod
    def deserialize(cls, _bytes: bytes, _offset: int) -> bool:
        return True


class EventHook:
    """Sits in front of kazoo's event reader: hands each event at or below a
    watched path to that path's callbacks (on kazoo's connection thread: they
    must only hand off), then lets kazoo do its own work. A path may have
    several callbacks (the server keeps one watch per path and connection)."""

    def __init__(self, kazoo: Any) -> None:
        self._kazoo = kazoo
        self._lock = threading.Lock()
        self._watches: dict[str, list[OnEvent]] = {}  # server path -> callbacks
        reader = kazoo._connection  # kazoo's connection handler: its event reader is wrapped
        self._read = reader._read_watch_event
        reader._read_watch_event = self._on_event

    def watch(self, server_path: str, on_event: OnEvent) -> bool:
        """Add ``on_event`` for ``server_path``; True if the path had none."""
        with self._lock:
            callbacks = self._watches.setdefault(server_path, [])
            callbacks.append(on_event)
            return len(callbacks) == 1

    def unwatch(self, server_path: str, on_event: OnEvent) -> bool:
        """Remove ``on_event`` of ``server_path``; True if the path has no
        callback left (its watch on the server can go)."""
        with self._lock:
            callbacks = self._watches.get(server_path)
            if callbacks is None:
                return False
            if on_event in callbacks:
                callbacks.remove(on_event)
            if callbacks:
                return False
            del self._watches[server_path]
            return True

    def watches(self, server_path: str, on_event: OnEvent) -> bool:
        with self._lock:
            return on_event in self._watches.get(server_path, ())

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._watches)

    def _on_event(self, buffer: bytes, offset: int) -> Any:  # kazoo's connection thread
        event, _ = Watch.deserialize(buffer, offset)
        path: str = event.path
        with self._lock:
            hits = [
                cb
                for base, callbacks in self._watches.items()
                if path == base or path.startswith(base + "/")
                for cb in callbacks
            ]
        if not hits:
            return self._read(buffer, offset)
        relative = self._kazoo.unchroot(path)
        for callback in hits:
            try:
                callback(event.type, relative)
            except Exception:
                logger.exception("persistent watch callback failed")
        kazoo = self._kazoo
        if path in kazoo._data_watchers or path in kazoo._child_watchers:
            return self._read(buffer, offset)  # a one-shot watch of kazoo's too
        return None  # nobody else waits for it: kazoo need not read it again
