"""Client configuration: one frozen dataclass, checked once, and every default
of the library in one place (the command line and the components read them
from here)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Final, Literal

from ._acl import AclPolicy
from ._deadlines import MAX_TIMEOUT
from ._numbers import is_finite, is_int
from .backlog import Backlog
from .layout import DEFAULT_ROOT, MAX_NAME_LENGTH, NodeKind, validate_name, validate_root
from .security import Auth, Roles, Sasl, Tls, normalize_auth
from .serializers import Serializer, resolve

__all__ = [
    "CREATE_OP_OVERHEAD",
    "DEFAULT_CLEANER_INTERVAL",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HANDLER_ATTEMPTS",
    "DEFAULT_LINGER",
    "DEFAULT_MAX_LEASE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_RETRY_DELAY",
    "DEFAULT_MAX_TRANSACTION_BYTES",
    "DEFAULT_NOTICE_TTL",
    "DEFAULT_PREFETCH",
    "DEFAULT_QUEUE_ATTEMPTS",
    "DEFAULT_QUEUE_MAX_ITEMS",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RESULT_TTL",
    "DEFAULT_RETRY_DELAY",
    "DEFAULT_SESSION_TIMEOUT",
    "MAX_DEAD_LETTERS",
    "MAX_INTERVAL",
    "MAX_SESSION_TIMEOUT",
    "ClientConfig",
    "check_grace",
    "check_interval",
    "check_timeouts",
    "default_grace",
    "parse_hosts",
]

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
# Publishes accepted but not yet confirmed, across all topics of a client.
DEFAULT_MAX_PENDING: Final = 10_000
# A subscription's handler is tried this often before a message is dropped.
DEFAULT_HANDLER_ATTEMPTS: Final = 3
# A work item reserved this often without an ack becomes a dead letter.
DEFAULT_QUEUE_ATTEMPTS: Final = 5
# A work queue holds at most this many items (ready or reserved) unless told
# otherwise: a put waits for room. Every listing of a queue then stays far
# below 1 MiB, which ZooKeeper's Java tools cannot read past.
DEFAULT_QUEUE_MAX_ITEMS: Final = 10_000
# A work queue keeps at most this many dead letters; an item that fails
# beyond that is dropped (its ticket fails), with an error in the log.
MAX_DEAD_LETTERS: Final = 10_000
# A consumer extends the lease of an item in hand for at most this long in all.
DEFAULT_MAX_LEASE: Final = 3600.0
# A failed handler attempt is tried again after this delay, doubled after
# each further failure up to DEFAULT_MAX_RETRY_DELAY.
DEFAULT_RETRY_DELAY: Final = 0.5
DEFAULT_MAX_RETRY_DELAY: Final = 30.0
# close() waits this long for a handler still running before it gives up on it.
DEFAULT_CLOSE_TIMEOUT: Final = 10.0
DEFAULT_CLEANER_INTERVAL: Final = 30.0
DEFAULT_RESULT_TTL: Final = 3600.0
# How long the notice of a finished purge of a durable subscriber waits for
# the client's return (seconds, by the server's clock).
DEFAULT_NOTICE_TTL: Final = 7 * 24 * 3600.0
# Bytes one create operation adds to a transaction besides its path, data and
# ACL (multi header, length prefixes, flags); the ACL policy adds the size of
# each kind of node's ACL (the open ACL is 28 bytes).
CREATE_OP_OVERHEAD: Final = 64
# Deepest node path below the root (messages/<id>/<topic>/m<guid>-<seq>),
# plus the check and receipt operations every publish transaction carries:
# a sanity bound for names of one byte a character (the publisher sizes each
# transaction by its names' real bytes).
_MAX_PATH_BELOW_ROOT: Final = 2 * MAX_NAME_LENGTH + 64
_PUBLISH_FIXED_OPS: Final = 2 * MAX_NAME_LENGTH + 256


def parse_hosts(hosts: object) -> tuple[list[tuple[str, int]], str]:
    """``(servers, chroot)`` of a ZooKeeper connection string such as
    ``"zk1:2181,zk2:2181/apps/bus"`` (a missing port is 2181; IPv6 hosts in
    brackets). ``ValueError`` says what is wrong with a malformed one."""
    if not isinstance(hosts, str):
        raise TypeError(f"hosts must be a str, not {type(hosts).__name__}")
    text = hosts.strip()
    if not text:
        raise ValueError("hosts is empty; give 'host:port[,host:port...][/chroot]'")
    chroot = ""
    slash = text.find("/")
    if slash >= 0:
        text, chroot = text[:slash], text[slash:]
        if chroot != "/":
            validate_root(chroot)
    servers: list[tuple[str, int]] = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"hosts {hosts!r} has an empty entry; separate servers with ','")
        bracketed = entry.startswith("[")
        if bracketed:
            host, _, rest = entry[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(f"hosts entry {entry!r}: expected '[address]:port'")
            port_text = rest[1:]
        else:
            host, _, port_text = entry.partition(":")
        if ";" in entry:
            raise ValueError(f"hosts {hosts!r}: separate servers with ',', not ';'")
        if not host or any(c.isspace() for c in host) or (not bracketed and ":" in host):
            raise ValueError(f"hosts entry {entry!r} is not 'host:port'")
        port = 2181
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"hosts entry {entry!r}: port must be 1-65535, not {port_text!r}")
            port = int(port_text)
        servers.append((host, port))
    return servers, "" if chroot == "/" else chroot


_POLICIES: Final = ("open", "secured")


def default_grace(session_timeout: float) -> float:
    """The cleaner's default grace: the larger of 60 s and two session timeouts."""
    return max(60.0, 2 * session_timeout)


def check_grace(grace: object, session_timeout: float) -> float:
    """A cleaner grace, checked against the session timeout.

    A client's node vanishes when its session expires, one session timeout
    after the server last heard from it; the client registers again as soon
    as it reaches a server. With a grace of at least one session timeout, a
    client cut off for up to twice its session timeout (a partition, a
    pause, a failover) is back before its queues go. A shorter grace is
    refused."""
    if not is_finite(grace) or grace < 0:
        raise ValueError(
            f"the cleaner's grace must be a finite number of seconds >= 0, not {grace!r}"
        )
    if grace < session_timeout:
        raise ValueError(
            f"the cleaner's grace ({grace:g}s) is shorter than the session timeout "
            f"({session_timeout:g}s): a client whose session expired would lose its queues "
            "before it could register again; use at least the session timeout"
        )
    return float(grace)


# The longest interval a cleaner sleeps: a longer one is no interval (and
# past threading.TIMEOUT_MAX a wait raises).
MAX_INTERVAL: Final = MAX_TIMEOUT  # a year
MAX_SESSION_TIMEOUT: Final = 86_400.0  # a day


def check_timeouts(**timeouts: object) -> None:
    """``ValueError`` unless each of ``timeouts`` (by name) is a number of
    seconds above 0, at most a year (a ``session_timeout`` at most a day)."""
    for name, value in timeouts.items():
        # ZooKeeper's connect request carries the session timeout as
        # milliseconds in 32 bits (it grants 20 ticks at most anyway)
        most = MAX_SESSION_TIMEOUT if name == "session_timeout" else MAX_TIMEOUT
        if not is_finite(value) or not 0 < value <= most:
            raise ValueError(
                f"{name} must be a positive number of seconds, at most {most:.0f}, not {value!r}"
            )


def check_interval(value: object, name: str) -> float:
    """A seconds interval: a finite number above 0, at most ``MAX_INTERVAL``."""
    if not is_finite(value) or not 0 < value <= MAX_INTERVAL:
        raise ValueError(
            f"{name} must be a number of seconds above 0 and at most {MAX_INTERVAL:g}, "
            f"not {value!r}"
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a :class:`~zkpubsub.Client` is configured with.

    Pass one as ``Client(hosts, config=...)``; keyword arguments given to
    ``Client`` override its fields. ``client.config`` is the configuration
    in force, with ``hosts`` and the (possibly random) ``client_id`` filled in.

    Times are in seconds. ``max_message_bytes`` bounds one encoded message
    node; ``max_transaction_bytes`` one ZooKeeper transaction. Both must stay
    below the server's ``jute.maxbuffer``. ``prefetch`` is how many queue
    nodes a subscription reads ahead of its handler (its dispatcher takes
    up to 64 messages read already at a time, and reading ahead goes on
    meanwhile). ``linger`` is how long
    a publish may wait for others to share its transaction, when publishes
    are coming close together (a lone publish is sent at once; 0: never).
    ``max_pending`` bounds the publishes accepted and not yet confirmed: a
    publish beyond it waits for room up to its own timeout, then raises
    :class:`~zkpubsub.PublishTimeout` without sending anything.
    ``cleaner``: the client stands for the cleaner election from the moment
    it connects (one candidate leads; the others wait, at no cost but a
    watch), with ``cleaner_grace`` (default: the larger of 60 s and two
    session timeouts; at least the session timeout) and
    ``cleaner_interval``. ``registration_wait`` is how long the constructor waits for an earlier
    session of the same ``client_id`` to expire (default: two session
    timeouts). ``close_timeout`` bounds how long ``close()`` waits for the
    handlers still running (one wait for them all): a message is then left in the queue
    (delivered again to this client id) and the handler's thread is left to
    finish on its own. ``backlog`` is the default bound of this client's
    subscriber queues (see :class:`~zkpubsub.Backlog`). ``watch_mode`` is
    how the client hears of new messages and work items: ``"persistent"``,
    one persistent recursive watch on its queues and one on each work queue
    its workers take from while they have little work in hand (ZooKeeper
    3.6+), each new node named by its event; ``"listing"``, child watches
    and a listing on each change (any server); ``"auto"`` (the default),
    the first where the server has it.

    ``auth`` are the credentials sent when connecting: ``(scheme,
    credential)`` pairs as ZooKeeper's ``addauth`` (``("digest",
    "user:password")``), :class:`~zkpubsub.Sasl` for a SASL login.
    ``acl`` is the ACL policy of every node the client creates: ``"open"``
    (anyone may do anything; the default without credentials),
    ``"secured"`` (only the creating identity; the default with
    credentials) or :class:`~zkpubsub.Roles`. ``tls``
    (:class:`~zkpubsub.Tls`) connects to ZooKeeper's secure client port.
    ``docs/security.md`` explains them.
    """

    hosts: str = ""
    client_id: str | None = None
    root: str = DEFAULT_ROOT
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_transaction_bytes: int = DEFAULT_MAX_TRANSACTION_BYTES
    prefetch: int = DEFAULT_PREFETCH
    linger: float = DEFAULT_LINGER
    max_pending: int = DEFAULT_MAX_PENDING
    registration_wait: float | None = None
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    backlog: Backlog = field(default_factory=Backlog)
    watch_mode: Literal["auto", "persistent", "listing"] = "auto"
    cleaner: bool = True
    cleaner_grace: float | None = None
    cleaner_interval: float = DEFAULT_CLEANER_INTERVAL
    serializer: Serializer = field(default_factory=lambda: resolve(None))
    auth: tuple[Auth | Sasl, ...] = ()
    acl: str | Roles | None = None
    tls: Tls | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "auth", normalize_auth(self.auth))
        if not (self.acl is None or isinstance(self.acl, Roles) or self.acl in _POLICIES):
            raise ValueError(f"acl must be 'open', 'secured' or a Roles, not {self.acl!r}")
        if self.tls is not None and not isinstance(self.tls, Tls):
            raise TypeError(f"tls must be a zkpubsub.Tls, not {type(self.tls).__name__}")
        if self.acl_policy != "open" and not self._authenticated:
            raise ValueError(
                f"acl={self.acl!r} names the client's own identity: give credentials "
                "(auth=...) or a TLS client certificate"
            )
        self._check()

    def _check(self) -> None:
        if not isinstance(self.hosts, str):
            raise TypeError(f"hosts must be a str, not {type(self.hosts).__name__}")
        if self.hosts:
            parse_hosts(self.hosts)
        if self.client_id is not None:
            validate_name(self.client_id, "client_id")
        validate_root(self.root)
        check_timeouts(
            session_timeout=self.session_timeout,
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
            close_timeout=self.close_timeout,
        )
        if self.watch_mode not in ("auto", "persistent", "listing"):
            raise ValueError(
                f"watch_mode must be 'auto', 'persistent' or 'listing', not {self.watch_mode!r}"
            )
        if not isinstance(self.backlog, Backlog):
            raise TypeError(f"backlog must be a Backlog, not {type(self.backlog).__name__}")
        if not isinstance(self.cleaner, bool):
            raise TypeError(f"cleaner must be a bool, not {type(self.cleaner).__name__}")
        if self.cleaner_grace is not None:
            check_grace(self.cleaner_grace, self.session_timeout)
        check_interval(self.cleaner_interval, "cleaner_interval")
        wait = self.registration_wait
        # the registration's requests get 5 s more, within a timeout's year
        if wait is not None and (not is_finite(wait) or not 0 <= wait <= MAX_TIMEOUT - 5):
            raise ValueError(
                f"registration_wait must be from 0 to {MAX_TIMEOUT - 5:.0f} seconds, not {wait!r}"
            )
        if not is_finite(self.linger) or not 0 <= self.linger <= 1:
            raise ValueError(f"linger must be between 0 and 1 second, not {self.linger!r}")
        for name in ("max_message_bytes", "max_transaction_bytes", "prefetch", "max_pending"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        # the ACLs of a message node and of the receipt travel in the transaction
        policy = AclPolicy(self.acl_policy, auth=self.auth, tls=self.tls)
        acls = policy.size(NodeKind.MESSAGE) + policy.size(NodeKind.RECEIPT)
        one_create = (
            self.max_message_bytes
            + 2 * len(self.root.encode())
            + _MAX_PATH_BELOW_ROOT
            + CREATE_OP_OVERHEAD
            + _PUBLISH_FIXED_OPS
            + acls
        )
        if one_create > self.max_transaction_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) leaves no room for a "
                f"message node in max_transaction_bytes ({self.max_transaction_bytes})"
                + (f" with the ACLs of the policy ({acls} bytes)" if not policy.open else "")
            )

    @staticmethod
    def field_names() -> frozenset[str]:
        """The names ``Client`` accepts as keyword overrides."""
        return frozenset(f.name for f in fields(ClientConfig))

    @property
    def _authenticated(self) -> bool:
        return bool(self.auth) or (self.tls is not None and self.tls.certfile is not None)

    @property
    def acl_policy(self) -> str | Roles:
        """The ACL policy in force: ``acl``, or when it is ``None``
        ``"secured"`` with credentials and ``"open"`` without."""
        if self.acl is not None:
            return self.acl
        return "secured" if self._authenticated else "open"

    @property
    def grace(self) -> float:
        """The cleaner grace in force (``cleaner_grace`` or its default)."""
        if self.cleaner_grace is not None:
            return float(self.cleaner_grace)
        return default_grace(self.session_timeout)

    @property
    def owner_wait(self) -> float:
        """How long to wait for an earlier session of this id to expire."""
        if self.registration_wait is not None:
            return self.registration_wait
        return 2 * self.session_timeout
