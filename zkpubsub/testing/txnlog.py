"""What the servers committed, read from their own transaction logs.

Every ZooKeeper server appends each transaction it accepts to a log file
(``<dataDir>/version-2/log.<zxid>``) before it acknowledges it. Reading
those files after (or during) a run tells what was really written, without
asking the client library under test: which queue nodes a publish created,
when a registration node appeared and went, which session deleted a node.

The format (``org.apache.zookeeper.server.persistence.FileTxnLog``, jute
encoding, big-endian): a file header (magic ``ZKLG``, version, database
id), then entries ``crc (long), length (int), bytes, 'B'`` where the bytes
are a ``TxnHeader`` (session, cxid, zxid, time in ms, type) followed by the
transaction record and, optionally, a digest. Files are preallocated with
zeros: an entry of length 0 ends the file.

**Committed.** A transaction a majority of the servers logged is committed
(ZooKeeper's atomic broadcast commits every proposal a quorum accepted, and
nothing else); one logged by fewer servers was a proposal of a leader that
died before a quorum accepted it. :class:`ClusterLog` therefore counts a
zxid only when the logs of a majority hold it. Logs are never purged in
these tests (``autopurge.purgeInterval=0``), and a wiped server's logs are
kept aside (``ZooKeeperNode.wipe`` moves them), so no committed transaction
goes missing from the count.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

__all__ = [
    "CHECK",
    "CLOSE_SESSION",
    "CREATE",
    "CREATE2",
    "CREATE_CONTAINER",
    "CREATE_SESSION",
    "CREATE_TTL",
    "DELETE",
    "DELETE_CONTAINER",
    "ERROR",
    "MAGIC",
    "MULTI",
    "SET_DATA",
    "ClusterLog",
    "LogDirectory",
    "Op",
    "Txn",
    "read_entries",
    "read_file",
]


if TYPE_CHECKING:
    from .server import ZooKeeperCluster

MAGIC: Final = 0x5A4B4C47  # "ZKLG"

# org.apache.zookeeper.ZooDefs.OpCode
CREATE: Final = 1
DELETE: Final = 2
SET_DATA: Final = 5
CHECK: Final = 13
MULTI: Final = 14
CREATE2: Final = 15
CREATE_CONTAINER: Final = 19
DELETE_CONTAINER: Final = 20
CREATE_TTL: Final = 21
CREATE_SESSION: Final = -10
CLOSE_SESSION: Final = -11
ERROR: Final = -1

_CREATES: Final = (CREATE, CREATE2, CREATE_CONTAINER, CREATE_TTL)


class _Reader:
    """Jute's binary encoding, big-endian."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def i32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def i64(self) -> int:
        (value,) = struct.unpack_from(">q", self.data, self.pos)
        self.pos += 8
        return int(value)

    def flag(self) -> bool:
        value = self.data[self.pos]
        self.pos += 1
        return value != 0

    def buffer(self) -> bytes:
        n = self.i32()
        if n < 0:
            return b""
        if self.pos + n > len(self.data):
            raise ValueError("buffer runs past the record")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def string(self) -> str:
        return self.buffer().decode("utf-8", "replace")

    def acl(self) -> None:
        for _ in range(max(0, self.i32())):
            self.i32()  # perms
            self.string()  # scheme
            self.string()  # id


@dataclass(frozen=True, slots=True)
class Op:
    """One change a transaction made: ``create``, ``delete``, ``set`` or
    ``check`` of ``path`` (``ephemeral`` for an ephemeral create)."""

    kind: str
    path: str
    data: bytes = b""
    ephemeral: bool = False


@dataclass(frozen=True, slots=True)
class Txn:
    """One logged transaction. ``at`` is the leader's wall clock, seconds.
    ``ops`` are its changes (a failed multi has none); ``closed`` lists the
    ephemeral nodes a session close removed (as the server logged them)."""

    zxid: int
    at: float
    session: int
    type: int
    ops: tuple[Op, ...] = ()
    closed: tuple[str, ...] = ()

    @property
    def epoch(self) -> int:
        """The leader's epoch: a new leader starts a new one."""
        return self.zxid >> 32


def _op(kind: int, r: _Reader) -> Op | None:
    if kind in (CREATE, CREATE2):
        path, data = r.string(), r.buffer()
        r.acl()
        return Op("create", path, data, r.flag())
    if kind in (CREATE_CONTAINER, CREATE_TTL):
        path, data = r.string(), r.buffer()
        return Op("create", path, data)
    if kind in (DELETE, DELETE_CONTAINER):
        return Op("delete", r.string())
    if kind == SET_DATA:
        return Op("set", r.string(), r.buffer())
    if kind == CHECK:
        return Op("check", r.string())
    return None


def _parse(entry: bytes) -> Txn:
    r = _Reader(entry)
    session, _cxid, zxid, millis, kind = r.i64(), r.i32(), r.i64(), r.i64(), r.i32()
    at = millis / 1000.0
    if kind == MULTI:
        ops: list[Op] = []
        failed = False
        for _ in range(max(0, r.i32())):
            sub_kind, body = r.i32(), r.buffer()
            if sub_kind == ERROR:
                failed = True
                continue
            op = _op(sub_kind, _Reader(body))
            if op is not None:
                ops.append(op)
        return Txn(zxid, at, session, kind, () if failed else tuple(ops))
    if kind == CLOSE_SESSION:
        closed: list[str] = []
        if r.pos < len(entry):
            try:
                closed = [r.string() for _ in range(max(0, r.i32()))]
            except (struct.error, ValueError):
                closed = []
        return Txn(zxid, at, session, kind, closed=tuple(closed))
    op = _op(kind, r) if kind != ERROR else None
    return Txn(zxid, at, session, kind, (op,) if op is not None else ())


def read_entries(data: bytes, offset: int = 0) -> tuple[list[Txn], int, bool]:
    """The complete, checksummed transactions in ``data`` (a log file's
    bytes from ``offset``; at 0 the file header comes first), how many
    bytes they took, and whether the bytes ran out in the middle of an
    entry (``False``: the log ends here, for now)."""
    pos = 0
    if offset == 0:
        if len(data) < 16:
            return [], 0, len(data) > 0
        magic, _version, _dbid = struct.unpack_from(">iiq", data, 0)
        if magic != MAGIC:
            raise ValueError("not a ZooKeeper transaction log")
        pos = 16
    out: list[Txn] = []
    while True:
        if pos + 12 > len(data):
            return out, pos, True
        crc, length = struct.unpack_from(">qi", data, pos)
        if length <= 0:
            return out, pos, False  # the preallocated zeros: the end
        if pos + 12 + length + 1 > len(data):
            return out, pos, True
        body = data[pos + 12 : pos + 12 + length]
        if data[pos + 12 + length] != 0x42 or (zlib.adler32(body) & 0xFFFFFFFF) != crc:
            return out, pos, False  # torn, or being written
        out.append(_parse(body))
        pos += 12 + length + 1


_CHUNK: Final = 1 << 20


def read_file(path: Path, offset: int = 0) -> tuple[list[Txn], int]:
    """The transactions of one log file from byte ``offset``, and the
    offset after the last complete one."""
    out: list[Txn] = []
    size = _CHUNK
    with open(path, "rb") as f:
        while True:
            f.seek(offset)
            data = f.read(size)
            txns, used, more = read_entries(data, offset)
            out += txns
            offset += used
            if not more or len(data) < size:
                return out, offset
            if not used:
                size *= 2  # one entry larger than the chunk


class LogDirectory:
    """The transaction logs of one server (its live directory and the ones
    kept aside when it was wiped), read incrementally. ``directories`` is a
    list, or a function giving the current list (a server wiped later has
    one more)."""

    def __init__(self, directories: Sequence[Path] | Callable[[], Sequence[Path]]) -> None:
        self._directories = directories
        self._files: dict[Path, tuple[int, int, list[Txn]]] = {}  # path -> (inode, offset, txns)

    @property
    def directories(self) -> list[Path]:
        found = self._directories
        return list(found() if callable(found) else found)

    def _files_now(self) -> list[Path]:
        found: list[Path] = []
        for directory in self.directories:
            try:
                found += [p for p in directory.iterdir() if p.name.startswith("log.")]
            except OSError:
                continue
        return sorted(found)

    def read(self) -> dict[int, Txn]:
        """Every transaction in the files, by zxid (the same zxid twice in
        one server's logs is the same transaction, logged again after a
        restart)."""
        out: dict[int, Txn] = {}
        for path in self._files_now():
            try:
                st = path.stat()
                inode, offset, txns = self._files.get(path, (st.st_ino, 0, []))
                if inode != st.st_ino or st.st_size < offset:
                    inode, offset, txns = st.st_ino, 0, []  # replaced or truncated
                new, offset = read_file(path, offset)
                txns = txns + new
                self._files[path] = (inode, offset, txns)
            except (OSError, ValueError, struct.error):
                continue
            for txn in txns:
                out[txn.zxid] = txn
        return out


class ClusterLog:
    """The committed transactions of an ensemble: those a majority of its
    servers logged, in zxid order."""

    def __init__(self, servers: Iterable[Sequence[Path] | Callable[[], Sequence[Path]]]) -> None:
        self.servers = [LogDirectory(dirs) for dirs in servers]

    @classmethod
    def of(cls, cluster: ZooKeeperCluster) -> ClusterLog:
        """The logs of a cluster's servers (kept across wipes)."""
        return cls([node.log_directories for node in cluster.nodes])

    def committed(self) -> list[Txn]:
        quorum = len(self.servers) // 2 + 1
        seen: dict[int, Txn] = {}
        count: dict[int, int] = {}
        for server in self.servers:
            for zxid, txn in server.read().items():
                seen.setdefault(zxid, txn)
                count[zxid] = count.get(zxid, 0) + 1
        return [seen[z] for z in sorted(seen) if count[z] >= quorum]
