"""A read-only view of a bus, for operators and their tools.

An :class:`Observer` opens a ZooKeeper session without registering as a
client and never writes: it creates no node, not even the root, so a
mistyped root is reported (:class:`~zkpubsub.NotFound`) instead of being
made. What it reads is what ``zkpubsub stats`` and ``zkpubsub queue
stats`` / ``dead`` / ``list`` show.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from kazoo.exceptions import NoNodeError

from ._candidates import read_candidate
from ._deadlines import deadline_after
from .config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT,
    check_timeouts,
    parse_hosts,
)
from .connection import Connection, translated
from .errors import NotFound
from .layout import (
    DEFAULT_ROOT,
    Layout,
    join,
    order_candidates,
    validate_name,
)
from .security import Auth, Sasl, Tls, normalize_auth
from .serializers import SerializerRegistry, resolve
from .stats import BusStats, collect
from .workqueue.dead_letters import check_dead_limit, read_dead
from .workqueue.records import DeadItem, WorkQueueStats
from .workqueue.segments import read_queue_stats

__all__ = ["Observer"]


class Observer:
    """Reads a bus under ``root`` without joining it, with the credentials
    ``auth`` and ``tls`` take as for :class:`~zkpubsub.Client` (a secured bus
    shows its members only what their ACLs let them read). Raises
    :class:`~zkpubsub.NotFound` if there is no bus there,
    :class:`~zkpubsub.ConnectTimeout` if no session comes within
    ``connect_timeout``."""

    def __init__(
        self,
        hosts: str,
        *,
        root: str = DEFAULT_ROOT,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        auth: Iterable[Auth | Sasl | tuple[str, str]] = (),
        tls: Tls | None = None,
    ) -> None:
        parse_hosts(hosts)
        check_timeouts(
            session_timeout=session_timeout,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
        )
        self._layout = Layout(root)
        self._request_timeout = request_timeout
        self._serializers = SerializerRegistry(resolve(None))
        self._conn = Connection(
            hosts, session_timeout=session_timeout, auth=normalize_auth(tuple(auth)), tls=tls
        )
        self._conn.start(connect_timeout)
        try:
            with translated("look for the bus"):
                if not self._conn.exists(self._layout.clients, self._deadline()):
                    raise NotFound(
                        f"there is no zkpubsub bus under root {self._layout.root_path!r} "
                        f"on {hosts} (nothing was created)"
                    )
        except BaseException:
            self._conn.stop()
            raise

    def _deadline(self) -> float | None:
        return deadline_after(self._request_timeout)

    @property
    def root(self) -> str:
        return self._layout.root_path

    def stats(self) -> BusStats:
        """Clients, topics, subscribers, every queue's backlog, work queues."""
        with translated("stats"):
            return collect(self._conn, self._layout, self._deadline())

    def cleaner_leader(self) -> str | None:
        """The client id of the cleaner candidate that leads (the lowest
        sequence number), or ``None`` if no cleaner stands."""
        conn = self._conn
        with translated("cleaner election"):
            names = conn.children(self._layout.candidates, self._deadline()) or []
            for name in order_candidates(names):  # the lowest, unless it left meanwhile
                path = join(self._layout.candidates, name)
                try:
                    data, _ = conn.call(
                        functools.partial(conn.kazoo.get_async, path), self._deadline(), path
                    )
                except NoNodeError:
                    continue
                return read_candidate(bytes(data))[0] or "?"
        return None

    def queues(self) -> list[str]:
        """The names of the work queues."""
        with translated("list work queues"):
            return sorted(self._conn.children(self._layout.work, self._deadline()) or [])

    def _queue(self, name: str) -> str:
        validate_name(name, "queue name")
        if name not in self.queues():
            raise NotFound(f"there is no work queue {name!r} under root {self.root!r}")
        return name

    def queue_stats(self, name: str) -> WorkQueueStats:
        """Ready, reserved and dead items of the queue, and its workers."""
        paths = self._layout.work_queue(self._queue(name))
        with translated(f"stats of queue {name!r}"):
            return read_queue_stats(self._conn, paths, name, self._deadline())

    def dead(self, name: str, *, limit: int | None = None) -> list[DeadItem]:
        """The dead letters of the queue, oldest first: all of them, or the
        ``limit`` oldest (only those are read)."""
        check_dead_limit(limit)  # before any read
        paths = self._layout.work_queue(self._queue(name))
        with translated(f"dead letters of {name!r}"):
            return read_dead(self._conn, self._serializers, paths, self._deadline(), limit=limit)

    def close(self) -> None:
        self._conn.stop()

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
