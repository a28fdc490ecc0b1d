"""A kazoo callback handler that spends fewer system calls per request.

kazoo's connection thread calls ``handler.select`` for every loop and for
every read and write, and the stock threading handler builds (and closes) a
new epoll selector each time: several system calls and Python objects per
request. This handler keeps one selector per set of sockets (the loop's,
the reader's, the writer's) and reuses it until the sockets change.

Its plain TCP connections also read ahead (:class:`ReadAheadSocket`): one
``recv`` takes whatever the server has sent, and kazoo's reads of a reply's
length and body, and of the replies after it, are served from that buffer
without a ``select`` each. A ``select`` for writing alone answers at once
(the socket's send waits for room itself, when the kernel's buffer is
full). The connection loop's ``select`` reports a socket with buffered
bytes as readable. TLS connections keep the stock reads and writes. Every
other behaviour is the stock handler's.
"""

from __future__ import annotations

import select
import selectors
import socket
import ssl
import threading
from typing import Any, Final

from kazoo.handlers.threading import SequentialThreadingHandler

from .security import client_context

__all__ = ["FastThreadingHandler", "ReadAheadSocket", "tls_connection"]

_MAX_CACHED: Final = 8
# What one read from the server's socket takes at most.
READ_AHEAD: Final = 65536


class ReadAheadSocket:
    """A non-blocking plain socket of kazoo's connection that reads ahead.

    Only kazoo's connection thread reads and writes it; other threads may
    only shut it down or ask for its peer (both go to the socket).
    """

    __slots__ = ("_data", "_eof", "_pos", "_sock", "_timeout")

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._data = b""
        self._pos = 0
        self._eof = False

    def pending(self) -> int:
        """Bytes read from the socket and not yet taken."""
        return len(self._data) - self._pos

    def fill(self) -> bool:
        """Read what the socket has, without waiting. True if something
        can be taken now (bytes, or the end of the stream)."""
        if self._pos < len(self._data) or self._eof:
            return True
        try:
            data = self._sock.recv(READ_AHEAD)
        except (BlockingIOError, InterruptedError):
            return False
        self._data, self._pos = data, 0
        self._eof = not data
        return True

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._data) and not self._eof:
            self._data, self._pos = self._sock.recv(max(size, READ_AHEAD)), 0
            self._eof = not self._data
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def send(self, data: Any) -> int:
        """Send what fits now; if nothing fits, wait for room (up to the
        connection's timeout, then ``TimeoutError``)."""
        while True:
            try:
                return self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                poller = select.poll()
                poller.register(self._sock.fileno(), select.POLLOUT)
                if not poller.poll(int(self._timeout * 1000)):
                    raise TimeoutError("socket time-out during write") from None

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __getattr__(self, name: str) -> Any:  # shutdown, getpeername, setblocking, ...
        return getattr(self._sock, name)


class _Cache(threading.local):
    def __init__(self) -> None:
        self.selectors: dict[tuple[Any, ...], tuple[selectors.BaseSelector, dict[int, Any]]] = {}


def tls_connection(
    address: tuple[str, int],
    hostname: str | None = None,
    timeout: float | None = None,
    use_ssl: bool = True,
    **options: Any,
) -> ssl.SSLSocket:
    """A session's TLS connection, with :meth:`Tls.context`'s trust
    (``options`` as :meth:`Tls._options`). kazoo's own adds the system's CAs
    to the one given, so any certificate they trust would do for a server.
    A file that cannot be read is an ``OSError``, which kazoo tries again (a
    certificate being replaced)."""
    context = client_context(**options)
    family = socket.getaddrinfo(address[0], address[1], 0, socket.SOCK_STREAM)[0][0]
    conn = context.wrap_socket(socket.socket(family), server_hostname=hostname)
    try:
        conn.settimeout(timeout)
        conn.connect(address)  # and the handshake
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        conn.close()
        raise
    return conn


class FastThreadingHandler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's sequential threading handler with a persistent ``select``.

    The selectors are per thread (only kazoo's connection thread selects);
    a thread's selectors are closed by that thread when evicted, and freed
    with the thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache = _Cache()

    def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("use_ssl"):
            return tls_connection(**kwargs)
        sock = super().create_connection(*args, **kwargs)
        # kazoo's own connection names its address; its read-only pinger
        # does not, and reads the socket as it is
        if "address" not in kwargs:
            return sock
        return ReadAheadSocket(sock, float(kwargs.get("timeout") or 10.0))

    def select(
        self, rlist: list[Any], wlist: list[Any], xlist: list[Any], timeout: float | None = None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be non-negative")
        if not wlist and len(rlist) == 1 and type(rlist[0]) is ReadAheadSocket:
            if rlist[0].fill():  # a read of a reply: there is something to take
                return rlist, [], []
        elif not rlist and len(wlist) == 1 and type(wlist[0]) is ReadAheadSocket:
            return [], wlist, []  # its send waits for room itself
        buffered = [f for f in rlist if type(f) is ReadAheadSocket and f.pending()]
        if buffered:  # look at the others too, without waiting (requests to send)
            readable, writable, _ = self._select(rlist, wlist, 0)
            return [*buffered, *(f for f in readable if f not in buffered)], writable, []
        return self._select(rlist, wlist, timeout)

    def _select(
        self, rlist: list[Any], wlist: list[Any], timeout: float | None
    ) -> tuple[list[Any], list[Any], list[Any]]:
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
