"""A kazoo callback handler whose ``select`` keeps its selectors.

kazoo's connection thread calls ``handler.select`` for every loop and for
every read and write, and the stock threading handler builds (and closes) a
new epoll selector each time: several system calls and Python objects per
request. This handler keeps one selector per set of sockets (the loop's,
the reader's, the writer's) and reuses it until the sockets change. Every
other behaviour is the stock handler's.
"""

from __future__ import annotations

import selectors
import threading
from typing import Any, Final

from kazoo.handlers.threading import SequentialThreadingHandler

__all__ = ["FastThreadingHandler"]

_MAX_CACHED: Final = 8


class _Cache(threading.local):
    def __init__(self) -> None:
        self.selectors: dict[tuple[Any, ...], tuple[selectors.BaseSelector, dict[int, Any]]] = {}


class FastThreadingHandler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's sequential threading handler with a persistent ``select``.

    The selectors are per thread (only kazoo's connection thread selects);
    a thread's selectors are closed by that thread when evicted, and freed
    with the thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache = _Cache()

    def select(
        self, rlist: list[Any], wlist: list[Any], xlist: list[Any], timeout: float | None = None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be non-negative")
        # The socket objects themselves are part of the key: a reconnect
        # brings new sockets, which may reuse the old file descriptor numbers.
        key = (*(id(f) for f in rlist), None, *(id(f) for f in wlist))
        cache = self._cache.selectors
        entry = cache.get(key)
        if entry is None:
            if len(cache) >= _MAX_CACHED:  # sockets of earlier connections
                for old, _ in cache.values():
                    old.close()
                cache.clear()
            selector: selectors.BaseSelector = selectors.DefaultSelector()
            by_fd: dict[int, Any] = {}
            for f in rlist:
                selector.register(f, selectors.EVENT_READ)
                by_fd[f.fileno()] = f
            for f in wlist:
                if f.fileno() in by_fd:
                    selector.modify(f, selectors.EVENT_READ | selectors.EVENT_WRITE)
                else:
                    selector.register(f, selectors.EVENT_WRITE)
                by_fd[f.fileno()] = f
            entry = (selector, by_fd)
            cache[key] = entry
        selector, by_fd = entry
        readable: list[Any] = []
        writable: list[Any] = []
        try:
            ready = selector.select(timeout)
        except (OSError, ValueError):
            # A socket was closed under us (a reconnect): start afresh next time.
            selector.close()
            del cache[key]
            raise
        for selector_key, events in ready:
            f = by_fd[selector_key.fd]
            if events & selectors.EVENT_READ:
                readable.append(f)
            if events & selectors.EVENT_WRITE:
                writable.append(f)
        return readable, writable, []
