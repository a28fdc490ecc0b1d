"""Client configuration: one frozen dataclass, checked once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from .layout import DEFAULT_ROOT, MAX_NAME_LENGTH, validate_name, validate_root
from .serializers import Serializer, resolve

DEFAULT_SESSION_TIMEOUT: Final = 10.0
DEFAULT_CONNECT_TIMEOUT: Final = 15.0
DEFAULT_REQUEST_TIMEOUT: Final = 30.0
# ZooKeeper's jute.maxbuffer defaults to 0xfffff bytes (1 MiB - 1) on server and
# client; a request over it makes the server drop the connection. These limits
# leave room for paths and headers inside that.
DEFAULT_MAX_TRANSACTION_BYTES: Final = 1_000_000
DEFAULT_MAX_MESSAGE_BYTES: Final = 980_000
DEFAULT_PREFETCH: Final = 1000
# Publishes gathered for up to this long go out in one transaction.
DEFAULT_LINGER: Final = 0.0002
# Bytes one create operation adds to a transaction besides its path and data
# (multi header, length prefixes, the open ACL, flags).
CREATE_OP_OVERHEAD: Final = 64
# Deepest node path below the root (messages/<id>/<topic>/m<guid>-<seq>),
# plus the check and receipt operations every publish transaction carries.
_MAX_PATH_BELOW_ROOT: Final = 2 * MAX_NAME_LENGTH + 64
_PUBLISH_FIXED_OPS: Final = 2 * MAX_NAME_LENGTH + 256


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a :class:`~zkpubsub.Client` is configured with.

    Times are in seconds. ``max_message_bytes`` bounds one encoded message
    node; ``max_transaction_bytes`` one ZooKeeper transaction. Both must stay
    below the server's ``jute.maxbuffer``. ``prefetch`` is how many queue
    nodes a subscription reads ahead of its handler. ``linger`` is how long
    a publish may wait for others to share its transaction (0: never).
    """

    hosts: str
    client_id: str
    root: str = DEFAULT_ROOT
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_transaction_bytes: int = DEFAULT_MAX_TRANSACTION_BYTES
    prefetch: int = DEFAULT_PREFETCH
    linger: float = DEFAULT_LINGER
    serializer: Serializer = field(default_factory=lambda: resolve(None))

    def __post_init__(self) -> None:
        if not isinstance(self.hosts, str) or not self.hosts.strip():
            raise ValueError("hosts must be a non-empty 'host:port,...' string")
        validate_name(self.client_id, "client_id")
        validate_root(self.root)
        for name in ("session_timeout", "connect_timeout", "request_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if not isinstance(self.linger, (int, float)) or not 0 <= self.linger <= 1:
            raise ValueError(f"linger must be between 0 and 1 second, not {self.linger!r}")
        for name in ("max_message_bytes", "max_transaction_bytes", "prefetch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        one_create = (
            self.max_message_bytes
            + 2 * len(self.root)
            + _MAX_PATH_BELOW_ROOT
            + CREATE_OP_OVERHEAD
            + _PUBLISH_FIXED_OPS
        )
        if one_create > self.max_transaction_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) leaves no room for a "
                f"message node in max_transaction_bytes ({self.max_transaction_bytes})"
            )
