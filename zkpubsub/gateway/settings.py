"""The gateway's configuration: one frozen dataclass with every default."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .._numbers import is_int
from ..config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_TRANSACTION_BYTES,
    DEFAULT_SESSION_TIMEOUT,
    ClientConfig,
    check_interval,
    parse_hosts,
)
from ..layout import DEFAULT_ROOT, validate_root
from ..security import Security, load_credentials

if TYPE_CHECKING:
    from .auth import TokenBook

__all__ = [
    "DEFAULT_ACK_DEADLINE",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_IDEMPOTENCY_TTL",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_WAIT",
    "GatewaySettings",
]

# A pulled message not acked within this many seconds is handed out again.
DEFAULT_ACK_DEADLINE: Final = 30.0
# The longest a long poll (pull, reserve, a ticket's result) may wait.
DEFAULT_MAX_WAIT: Final = 30.0
# A subscription nobody pulled, acked or streamed for this long is let go
# by the gateway (it stays registered; the cleaner's grace starts then).
DEFAULT_IDLE_TIMEOUT: Final = 300.0
# The lease of an item reserved through the gateway, unless the request asks.
DEFAULT_LEASE: Final = 30.0
# The longest a request's body may take to arrive (a client that sends it
# slowly, or not at all, holds a connection and its task no longer).
DEFAULT_BODY_TIMEOUT: Final = 30.0
# How long an Idempotency-Key's first answer is kept, and how many a token keeps.
DEFAULT_IDEMPOTENCY_TTL: Final = 3600.0
DEFAULT_IDEMPOTENCY_KEYS: Final = 10_000


@dataclass(frozen=True)
class GatewaySettings:
    """What a gateway serves and how.

    ``hosts`` and ``root`` name the bus; ``security`` the gateway's own
    credentials (:func:`zkpubsub.from_environment` by default in the
    command line); ``tokens`` the bearer tokens (``None``: no
    authentication, for a gateway on the loopback interface only).
    ``max_message_bytes`` bounds one message's body (the library's
    default) and ``max_batch_bytes`` a batch request's body.
    """

    hosts: str
    root: str = DEFAULT_ROOT
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    security: Security = field(default_factory=Security)
    tokens: TokenBook | None = None
    ack_deadline: float = DEFAULT_ACK_DEADLINE
    max_wait: float = DEFAULT_MAX_WAIT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    lease: float = DEFAULT_LEASE
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL
    idempotency_keys: int = DEFAULT_IDEMPOTENCY_KEYS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batch_bytes: int = DEFAULT_MAX_TRANSACTION_BYTES
    gateway_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        parse_hosts(self.hosts)
        validate_root(self.root)
        for name in (
            "session_timeout",
            "connect_timeout",
            "ack_deadline",
            "max_wait",
            "idle_timeout",
            "lease",
            "body_timeout",
            "idempotency_ttl",
        ):
            check_interval(getattr(self, name), name)  # not NaN, nor infinite
        for name in ("idempotency_keys", "max_message_bytes", "max_batch_bytes"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        # what the gateway's clients will be made with, its own and each
        # credentials profile's, checked before it serves (an unreadable
        # credentials file, an ACL policy naming no identity...)
        self._client_config(self.security)
        if self.tokens is not None:
            for profile, path in sorted(self.tokens.credentials.items()):
                try:
                    self._client_config(load_credentials(path))
                except (OSError, ValueError, TypeError, RuntimeError) as exc:
                    raise ValueError(f"credentials profile {profile!r}: {exc}") from None

    def _client_config(self, security: Security) -> ClientConfig:
        return ClientConfig(
            hosts=self.hosts,
            root=self.root,
            session_timeout=self.session_timeout,
            connect_timeout=self.connect_timeout,
            **security.options(),
        )
