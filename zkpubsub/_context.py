"""What a client's components share, built once by the client.

Subscriptions, the publish engine, work queues, workers, consumers and the
cleaner each receive this context and talk to ZooKeeper and to each other's
machinery only through it: the connection, the layout, the configuration
in force, the client's id, the serializers it reads with, the receipt
writer (with its janitor), the ACL policy every create follows, the open
check and the observers of events (:mod:`zkpubsub._hooks`, for metrics).
No component reaches into another's private state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ._acl import AclPolicy
from ._deadlines import deadline_after
from ._hooks import Hooks
from .config import ClientConfig
from .connection import Connection
from .errors import ClientClosed
from .layout import Layout
from .receipts import ReceiptJanitor, ReceiptWriter
from .serializers import SerializerRegistry

__all__ = ["CLOSING_REQUEST_TIMEOUT", "Context"]

# The longest a closing client waits for each of its last requests.
CLOSING_REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True, eq=False)
class Context:
    """The shared machinery of one client (internal; not part of the API)."""

    conn: Connection
    layout: Layout
    config: ClientConfig  # with hosts and client_id filled in
    client_id: str
    explicit_id: bool  # the user chose the id (a durable subscriber can come back)
    serializers: SerializerRegistry
    writer: ReceiptWriter
    acl: AclPolicy
    is_closed: Callable[[], bool]
    hooks: Hooks = field(default_factory=Hooks)  # observers of events, for metrics

    @classmethod
    def build(
        cls,
        conn: Connection,
        config: ClientConfig,
        client_id: str,
        *,
        explicit_id: bool,
        is_closed: Callable[[], bool],
    ) -> Context:
        layout = Layout(config.root)
        acl = AclPolicy(config.acl_policy, auth=config.auth, tls=config.tls)
        conn.acl_for = acl.for_paths(layout)
        janitor = ReceiptJanitor(conn, layout, client_id)
        return cls(
            conn=conn,
            layout=layout,
            config=config,
            client_id=client_id,
            explicit_id=explicit_id,
            serializers=SerializerRegistry(config.serializer),
            writer=ReceiptWriter(conn, layout, client_id, janitor, acl),
            acl=acl,
            is_closed=is_closed,
        )

    @property
    def janitor(self) -> ReceiptJanitor:
        return self.writer.janitor

    def deadline(self, timeout: float | None = None) -> float | None:
        """The deadline of one request made now: ``timeout`` seconds, or
        ``request_timeout`` when none is given."""
        return deadline_after(self.config.request_timeout if timeout is None else timeout)

    def at_least(self, deadline: float | None, seconds: float) -> float | None:
        """``deadline``, or ``seconds`` from now (at most ``request_timeout``)
        if that is later: for the requests of a call whose timeout bounds a
        wait, so that a short one still gives them time to be answered."""
        floor = self.deadline(min(self.config.request_timeout, seconds))
        return None if deadline is None or floor is None else max(deadline, floor)

    def closing_deadline(self) -> float | None:
        """The deadline of one request a closing client makes: its
        ``request_timeout``, at most ``CLOSING_REQUEST_TIMEOUT``."""
        return deadline_after(min(CLOSING_REQUEST_TIMEOUT, self.config.request_timeout))

    def check_open(self) -> None:
        if self.is_closed():
            raise ClientClosed("the client is closed")
