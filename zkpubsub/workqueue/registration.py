"""A worker's registration, ``workers/<worker id>``, and the server's clock.

A worker registers as an ephemeral node of its client's session when it
first lists the queue, and again after a new session; the other workers
rank themselves by the registered ids (see :mod:`.lineup`). An earlier
session's node under the same id (a process that died and whose client
id was taken over) is removed first: worker ids are one worker's alone.

Writing the node is also how a worker learns the server's time: the
``mtime`` of the write anchors the :class:`~.leases.ServerClock` that
judges leases.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError

from .._context import Context
from ..connection import first_error
from ..errors import ClientClosed, ConnectionLost, OperationTimeout
from ..layout import WorkQueuePaths
from .leases import ServerClock

__all__ = ["Registration"]


class Registration:
    """The node ``workers/<worker_id>`` of one worker, and its ``clock``."""

    def __init__(self, ctx: Context, paths: WorkQueuePaths, worker_id: str) -> None:
        self._ctx = ctx
        self._path = paths.worker(worker_id)
        self.clock = ServerClock()
        self._session: int | None = None  # the session the node belongs to

    def ensure(self, deadline: float | None) -> None:
        """Make the node exist in the current session (a no-op if it does)."""
        conn = self._ctx.conn
        session = conn.session_id
        if session == self._session:
            return
        kazoo = conn.kazoo
        path = self._path
        while True:
            stat = conn.call(lambda: kazoo.exists_async(path), deadline, path)
            if stat is not None and stat.ephemeralOwner == session:
                break
            if stat is not None:
                # an earlier session of this client id left it
                with contextlib.suppress(NoNodeError, BadVersionError):
                    conn.call(
                        functools.partial(kazoo.delete_async, path, stat.version), deadline, path
                    )
                continue

            def register() -> Any:
                # create and touch in one transaction: the touch's stat gives
                # the server's time (a create returning its stat needs 3.5+)
                txn = kazoo.transaction()
                txn.create(path, b"", acl=conn.acl_for(path), ephemeral=True)
                txn.set_data(path, b"", -1)
                return txn.commit_async()

            results = conn.call(register, deadline, path)
            _, error = first_error(results)
            if isinstance(error, NodeExistsError):
                continue  # ours after a lost answer, or the old one again: look
            if error is not None:
                raise error
            self.clock.saw(results[1].mtime)
            break
        self._session = session

    def read_clock(self, deadline: float | None) -> None:
        """Learn the server's time: write the node, read its ``mtime``."""
        conn = self._ctx.conn
        try:
            stat = conn.call(
                functools.partial(conn.kazoo.set_async, self._path, b""), deadline, self._path
            )
        except NoNodeError:
            self._session = None
            self.ensure(deadline)
            return
        self.clock.saw(stat.mtime)

    def leave(self) -> None:
        """Remove the node if this session made it; errors are left to the
        session's end (an ephemeral node goes with it)."""
        conn = self._ctx.conn
        if self._session is not None and self._session == conn.session_id:
            with contextlib.suppress(ClientClosed, ConnectionLost, OperationTimeout, NotEmptyError):
                conn.delete(self._path, self._ctx.closing_deadline())
