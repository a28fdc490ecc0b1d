"""TCP proxies that can cut a connection at a chosen moment.

A :class:`TcpProxy` listens on a free port of 127.0.0.1 and forwards every
connection to a target. It can then

* ``cut()`` every open connection at once (a TCP reset, as when a route or a
  process goes away),
* ``block("reset")``: refuse new connections and reset the open ones,
* ``block("drop")``: keep the sockets open but let no byte through in either
  direction (packets vanish, as in a network partition: the peers notice
  only through their own timeouts), and ``unblock()`` afterwards, which
  closes the connections whose bytes were dropped (their streams are torn).

:class:`ZkClientProxy` sits between a ZooKeeper client and one server and
reads the client protocol's frames, so a test can lose the connection in
the middle of a given request: before the server sees it
(:meth:`ZkClientProxy.lose_request`), or after the server applied it but
before the client hears the reply (:meth:`ZkClientProxy.lose_reply`).

Everything runs on threads of the calling process; no privileges needed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from typing import Final, Literal

__all__ = [
    "OP_CLOSE_SESSION",
    "OP_CREATE",
    "OP_CREATE2",
    "OP_DELETE",
    "OP_EXISTS",
    "OP_GET_CHILDREN",
    "OP_GET_CHILDREN2",
    "OP_GET_DATA",
    "OP_MULTI",
    "OP_PING",
    "OP_SET_DATA",
    "OP_SYNC",
    "BlockMode",
    "ElectionProxy",
    "Link",
    "TcpProxy",
    "TrapKind",
    "ZkClientProxy",
]


logger = logging.getLogger(__name__)

BlockMode = Literal["reset", "drop"]
TrapKind = Literal["request", "reply", "duplicate"]

_CHUNK: Final = 65536
_ACCEPT_POLL: Final = 0.2

# ZooKeeper client protocol operation codes (org.apache.zookeeper.ZooDefs.OpCode).
OP_CREATE: Final = 1
OP_DELETE: Final = 2
OP_EXISTS: Final = 3
OP_GET_DATA: Final = 4
OP_SET_DATA: Final = 5
OP_GET_CHILDREN: Final = 8
OP_SYNC: Final = 9
OP_PING: Final = 11
OP_GET_CHILDREN2: Final = 12
OP_MULTI: Final = 14
OP_CREATE2: Final = 15
OP_CLOSE_SESSION: Final = -11


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (no orderly FIN), ignoring errors."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class Link:
    """One proxied connection: the accepted socket and the one to the target."""

    def __init__(self, proxy: TcpProxy, downstream: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.downstream = downstream
        self.upstream = upstream
        self.dropping = False
        # cut by the proxy (a trap sprang): not one more byte passes, in
        # either direction, whatever a pump has in hand; close() follows
        self.cut = False
        self.closed = threading.Event()
        self._lock = threading.Lock()
        # one writer at a time on each socket: the pumps, and a proxy that
        # sends on its own (a held reply let go by a request)
        self._sending = {True: threading.Lock(), False: threading.Lock()}

    def start(self) -> None:
        for src, dst, forward in (
            (self.downstream, self.upstream, True),
            (self.upstream, self.downstream, False),
        ):
            threading.Thread(
                target=self._pump,
                args=(src, dst, forward),
                name=f"proxy-{self.proxy.name}-{'up' if forward else 'down'}",
                daemon=True,
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, forward: bool) -> None:
        try:
            while not self.closed.is_set():
                data = src.recv(_CHUNK)
                if not data or self.cut:
                    break
                if self.dropping:
                    continue
                out = self.proxy.filter(self, data, forward)
                if self.closed.is_set() or self.cut:
                    break
                if out:
                    with self._sending[forward]:
                        if self.cut:
                            break
                        dst.sendall(out)
        except OSError:
            pass
        finally:
            self.close(reset=False)

    def send(self, data: bytes, *, forward: bool) -> None:
        """Send ``data`` towards the target (``forward``) or the client
        (nothing once the link is :attr:`cut`)."""
        with self._sending[forward]:
            if not self.cut:
                (self.upstream if forward else self.downstream).sendall(data)

    def sever(self) -> None:
        """Cut the link at once, from whichever thread: mark it :attr:`cut`
        (the pumps forward nothing more, not even what they hold) and shut
        both sockets down, to be reset when closed. :meth:`close` is still
        to be called (it may not be on a thread that holds the proxy's
        locks)."""
        self.cut = True
        for sock in (self.downstream, self.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self, *, reset: bool = True) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for sock in (self.downstream, self.upstream):
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self.proxy._forget(self)


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; cut or block on demand."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        port: int = 0,
        name: str = "",
        host: str = "127.0.0.1",
        connect_retry: float = 0.0,
    ) -> None:
        self.target = target
        self.connect_retry = connect_retry
        self.name = name or f"{target[0]}:{target[1]}"
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self._listener.settimeout(_ACCEPT_POLL)
        self.host, self.port = self._listener.getsockname()[:2]
        self._links: set[Link] = set()
        self._lock = threading.Lock()
        self._blocked: BlockMode | None = None
        self._closed = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{name}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def blocked(self) -> BlockMode | None:
        return self._blocked

    def links(self) -> list[Link]:
        with self._lock:
            return [link for link in self._links if not link.closed.is_set()]

    # -- faults -------------------------------------------------------------------

    def cut(self) -> int:
        """Reset every open connection now; new ones are still accepted.
        Returns how many were cut."""
        links = self.links()
        for link in links:
            link.close(reset=True)
        return len(links)

    def block(self, mode: BlockMode = "reset") -> None:
        """``"reset"``: refuse new connections and reset open ones.
        ``"drop"``: let no byte through, keep sockets open (a partition)."""
        with self._lock:
            self._blocked = mode
            links = list(self._links)
        for link in links:
            if mode == "reset":
                link.close(reset=True)
            else:
                link.dropping = True

    def unblock(self) -> None:
        """Let traffic through again. Connections that dropped bytes are
        reset: their byte streams cannot be resumed."""
        with self._lock:
            self._blocked = None
            links = list(self._links)
        for link in links:
            if link.dropping:
                link.close(reset=True)

    # -- hooks --------------------------------------------------------------------

    def filter(self, link: Link, data: bytes, forward: bool) -> bytes:
        """Bytes to pass on (``forward``: towards the target). Subclasses
        inspect or rewrite the stream here; the default passes it as is."""
        return data

    def on_connect(self, link: Link) -> None:
        """Called for each new connection before any byte is forwarded."""

    # -- plumbing -------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed:
                    return
                continue
            conn.settimeout(None)
            if self._blocked == "reset":
                _reset(conn)
                continue
            threading.Thread(
                target=self._connect, args=(conn,), name=f"proxy-{self.name}-dial", daemon=True
            ).start()

    def _connect(self, conn: socket.socket) -> None:
        """Dial the target for a new connection, for up to ``connect_retry``
        seconds: the client's connect already succeeded, so a target that
        is down for a moment must look slow rather than gone."""
        deadline = time.monotonic() + self.connect_retry
        while True:
            try:
                upstream = socket.create_connection(self.target, timeout=5.0)
                upstream.settimeout(None)
                break
            except OSError:
                if self._closed or time.monotonic() >= deadline or self._blocked == "reset":
                    _reset(conn)  # the target is down: so is the proxy
                    return
                time.sleep(0.05)
        for s in (conn, upstream):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = Link(self, conn, upstream)
        # One look at the proxy's state, and the link added in the same
        # breath: a block() or close() then either finds the link among its
        # links or has already left its mark for this look to see.
        with self._lock:
            refused = self._closed or self._blocked == "reset"
            if not refused:
                link.dropping = self._blocked == "drop"
                self._links.add(link)
                self.accepted += 1
        if refused:
            link.close(reset=True)
            return
        self.on_connect(link)
        link.start()

    def _forget(self, link: Link) -> None:
        with self._lock:
            self._links.discard(link)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in self.links():
            link.close(reset=True)
        self._thread.join(2)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} -> {self.target[0]}:{self.target[1]}>"


class _Frames:
    """Splits a length-prefixed ZooKeeper stream into frames."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.first = True  # the connect request / response has no header

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Complete frames (with their length prefix) and whether each is
        the first of the stream."""
        self.buffer += data
        out: list[tuple[bytes, bool]] = []
        while len(self.buffer) >= 4:
            (length,) = struct.unpack_from(">i", self.buffer, 0)
            if length < 0 or len(self.buffer) < 4 + length:
                break
            frame = bytes(self.buffer[: 4 + length])
            del self.buffer[: 4 + length]
            out.append((frame, self.first))
            self.first = False
        return out


class _Trap:
    """A pending cut: on the next request of ``ops`` (after ``skip`` of them)."""

    def __init__(
        self, ops: frozenset[int], when: TrapKind, skip: int, group: threading.Event | None
    ) -> None:
        self.ops = ops
        self.when = when
        self.skip = skip
        self.sprung = group if group is not None else threading.Event()
        self.xid: int | None = None
        self.link: Link | None = None
        self.op: int | None = None
        self.then_block = False
        self.hold = False  # a duplicate held until the next request of ``ops``
        self.held: bytes | None = None
        self.behind = 0  # requests of ``ops`` sent on its link after the trapped one


class ZkClientProxy(TcpProxy):
    """A proxy for the ZooKeeper client protocol that can lose one request
    or its reply, then cut the connection.

    ``lose_request(OP_MULTI)``: the next multi request from the client is
    never forwarded and the connection is reset: the server never saw it.
    ``lose_reply(OP_MULTI)``: the next multi reaches the server; its reply
    is swallowed and the connection reset: the server applied the request
    but the client cannot know. Both return an event set when the trap
    springs. ``requests`` counts the requests seen, by operation code;
    ``sprung`` lists each trap that sprang, as ``(kind, op)``, and
    ``behind`` how many requests of the trapped operations were sent on the
    same connection after the trapped one, before its reply (whose fate is
    the trapped one's: they were in flight when the connection was cut).
    """

    def __init__(self, target: tuple[str, int], *, port: int = 0, name: str = "") -> None:
        self._traps: list[_Trap] = []
        self._streams: dict[tuple[int, bool], _Frames] = {}
        self._trap_lock = threading.Lock()
        self.requests: dict[int, int] = {}
        self.sprung: list[tuple[str, int]] = []  # (when, op) of each sprung trap
        self.behind: list[int] = []  # for each sprung trap, requests in flight behind it
        super().__init__(target, port=port, name=name)

    # Each trap returns the event it sets when it springs. Traps armed with
    # the same ``group`` event (on the proxies of several servers) spring
    # once in all: the first sets it, and the others then stand down.

    def lose_request(
        self,
        *ops: int,
        skip: int = 0,
        then_block: bool = False,
        group: threading.Event | None = None,
    ) -> threading.Event:
        """Cut before the next request of one of ``ops`` reaches the server
        (and refuse connections from then on if ``then_block``)."""
        return self._arm(ops, "request", skip, then_block, group)

    def lose_reply(
        self,
        *ops: int,
        skip: int = 0,
        then_block: bool = False,
        group: threading.Event | None = None,
    ) -> threading.Event:
        """Forward the next request of one of ``ops``, swallow its reply, cut
        (and refuse connections from then on if ``then_block``)."""
        return self._arm(ops, "reply", skip, then_block, group)

    def duplicate_reply(
        self,
        *ops: int,
        skip: int = 0,
        group: threading.Event | None = None,
        while_waiting: bool = False,
    ) -> threading.Event:
        """Deliver the reply to the next request of one of ``ops`` twice (a
        reply the client did not expect; the connection stays up). With
        ``while_waiting`` the reply is held, if need be, until the client
        sends its next request of ``ops``, so that the second copy comes while that request
        waits for its answer (without it, the client may have had nothing
        waiting by then)."""
        return self._arm(ops, "duplicate", skip, False, group, while_waiting)

    def disarm(self) -> None:
        with self._trap_lock:
            self._traps.clear()

    def _arm(
        self,
        ops: tuple[int, ...],
        when: TrapKind,
        skip: int,
        then_block: bool = False,
        group: threading.Event | None = None,
        hold: bool = False,
    ) -> threading.Event:
        if not ops:
            raise ValueError("name at least one operation code")
        trap = _Trap(frozenset(ops), when, skip, group)
        trap.then_block = then_block
        trap.hold = hold
        with self._trap_lock:
            self._traps.append(trap)
        return trap.sprung

    def filter(self, link: Link, data: bytes, forward: bool) -> bytes:
        key = (id(link), forward)
        with self._trap_lock:
            if link.cut or link.closed.is_set():
                # a stream cut in the middle: what follows is not to be
                # read as a new one (whose first frame would pass unread)
                return b""
            frames = self._streams.setdefault(key, _Frames())
            out = bytearray()
            for frame, first in frames.feed(data):
                if first:
                    out += frame
                    continue
                action = self._on_request(link, frame) if forward else self._on_reply(link, frame)
                if action == "cut":
                    # Pass on what came before the trapped frame, then cut.
                    self._cut_after(link, bytes(out), forward)
                    return b""
                if action == "hold":
                    continue
                if action == "duplicate":
                    out += frame
                out += frame
            return bytes(out)

    def _on_request(self, link: Link, frame: bytes) -> str:
        if len(frame) < 12:
            return "pass"
        xid, op = struct.unpack_from(">ii", frame, 4)
        self.requests[op] = self.requests.get(op, 0) + 1
        for trap in list(self._traps):
            if trap.sprung.is_set():  # its group sprang on another proxy
                self._traps.remove(trap)
                continue
            if trap.xid is not None and trap.link is link and op in trap.ops:
                trap.behind += 1
                if trap.held is not None:
                    # the held reply, twice, before this request goes on
                    assert trap.op is not None
                    self._spring(trap, trap.op)
                    with contextlib.suppress(OSError):
                        link.send(trap.held * 2, forward=False)
                    continue
            if trap.xid is not None or op not in trap.ops:
                continue
            if trap.skip > 0:
                trap.skip -= 1
                continue
            if trap.when == "request":
                self._spring(trap, op)
                return "cut"
            trap.xid, trap.link, trap.op = xid, link, op
            return "pass"
        return "pass"

    def _on_reply(self, link: Link, frame: bytes) -> str:
        if len(frame) < 8:
            return "pass"
        (xid,) = struct.unpack_from(">i", frame, 4)
        for trap in self._traps:
            if trap.link is link and trap.xid == xid:
                if trap.hold and not trap.behind:
                    # nothing sent behind it yet: hold it for the next one
                    trap.held = frame
                    return "hold"
                assert trap.op is not None
                self._spring(trap, trap.op)
                return "duplicate" if trap.when == "duplicate" else "cut"
        return "pass"

    def _spring(self, trap: _Trap, op: int) -> None:
        if trap.then_block:
            with self._lock:
                self._blocked = "reset"
        self._traps.remove(trap)
        self.sprung.append((trap.when, op))
        self.behind.append(trap.behind)
        trap.sprung.set()
        logger.info("proxy %s: sprang a %s trap on op %d", self.name, trap.when, op)

    def _cut_after(self, link: Link, head: bytes, forward: bool) -> None:
        if head:
            with contextlib.suppress(OSError):
                link.send(head, forward=forward)
        # Cut now, before this pump or the other reads on: a request behind
        # the lost one must not reach the server (on one TCP stream it
        # cannot). Closing takes the lock held here: on another thread.
        link.sever()
        self._streams.pop((id(link), True), None)
        self._streams.pop((id(link), False), None)
        threading.Thread(target=link.close, name="proxy-cut", daemon=True).start()

    def _forget(self, link: Link) -> None:
        with self._trap_lock:
            self._streams.pop((id(link), True), None)
            self._streams.pop((id(link), False), None)
        super()._forget(link)


def _initial_message(buffer: bytearray) -> int | None:
    """Length of a complete election initial message at the start of
    ``buffer``; ``None`` if more bytes are needed."""
    if len(buffer) < 8:
        return None
    (version,) = struct.unpack_from(">q", buffer, 0)
    if version >= 0:
        return 8  # the oldest form: just the server id
    if len(buffer) < 20:
        return None
    length: int = struct.unpack_from(">i", buffer, 16)[0]
    if len(buffer) < 20 + length:
        return None
    return 20 + length


class ElectionProxy(TcpProxy):
    """A proxy for ZooKeeper's leader-election port.

    A server that opens an election connection names its own election
    address in the first message; a receiver with the higher id drops the
    connection and dials that address back. This proxy rewrites the
    address to ``advertise`` (the proxy on the way back), so the callback
    goes through the proxies as well and a partition cuts it too.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        advertise: str,
        port: int = 0,
        name: str = "",
        connect_retry: float = 0.0,
    ) -> None:
        self.advertise = advertise
        self._pending: dict[int, bytearray] = {}
        self._pending_lock = threading.Lock()
        super().__init__(target, port=port, name=name, connect_retry=connect_retry)

    def on_connect(self, link: Link) -> None:
        with self._pending_lock:
            self._pending[id(link)] = bytearray()

    def filter(self, link: Link, data: bytes, forward: bool) -> bytes:
        if not forward:
            return data
        with self._pending_lock:
            buffer = self._pending.get(id(link))
            if buffer is None:
                return data
            buffer += data
            size = _initial_message(buffer)
            if size is None:
                return b""
            del self._pending[id(link)]
        head, rest = bytes(buffer[:size]), bytes(buffer[size:])
        if size > 8:
            addr = self.advertise.encode()
            head = head[:16] + struct.pack(">i", len(addr)) + addr
        return head + rest

    def _forget(self, link: Link) -> None:
        with self._pending_lock:
            self._pending.pop(id(link), None)
        super()._forget(link)
