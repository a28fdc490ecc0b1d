"""The one place that talks to kazoo's client object.

kazoo is tamed here: reconnect attempts back off to at most two seconds and
never stop; commands are not retried through a session expiry behind the
caller's back; every wait has a deadline; connection errors become
:class:`ConnectionLost`, and :func:`translated` turns any other kazoo error
into :class:`ZooKeeperError` at the public API.

kazoo matches each reply to the oldest request it waits for, and its
connection loop dies on a reply that is not that one's (a reply sent twice,
or one for no request; when the client has reconnected to another server
while its session is being closed, ZooKeeper 3.8.0 at times answers a sync
a second time, with a marshalling error, or answers a later request before
an earlier one): the session would be lost with it. Here such a reply drops
the connection instead, as ZooKeeper's own client does, and kazoo connects
again on the same session; the requests it waited for fail as on any lost
connection. Should the loop die of another error, kazoo reports the session
closed and never reconnects: the loop is started again here, on a new
session; a stop that comes while it is being started waits for that and
then stops it.

A server can end a session while a connection of that session stays open
(the session was closed through another connection to the same server):
every write then fails with "session expired" while kazoo, which learns of
an expiry only when it connects, believes it is connected. Such a reply
makes this module drop the connection, so that kazoo reconnects, hears
that the session is gone and starts a new one.

Security settings are translated here too: credentials become kazoo's
``auth_data`` or ``sasl_options``, :class:`~zkpubsub.Tls` its TLS options.
Bad ones give one clear error at connect, within ``connect_timeout``: a TLS
handshake that fails with every server (:class:`TlsError`), a SASL login or
a session refused for want of authentication (:class:`AuthenticationFailed`).
A node's ACL refusing a request is :class:`NotAuthorized`. Every node this
module creates carries the ACL the policy gives its path (``acl_for``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    ConnectionClosedError,
    ConnectionDropped,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NoWatcherError,
    OperationTimeoutError,
    RolledBackError,
    RuntimeInconsistency,
    SessionClosedRequireSaslError,
    SessionExpiredError,
    UnimplementedError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.serialization import Auth as AuthPacket
from kazoo.protocol.serialization import Connect, Transaction
from kazoo.protocol.states import KazooState, KeeperState
from kazoo.retry import KazooRetry
from kazoo.security import OPEN_ACL_UNSAFE

from ._deadlines import deadline_after, expired, remaining
from ._persistent import (
    PERSISTENT_RECURSIVE,
    WATCHER_ANY,
    AddWatch,
    EventHook,
    RemoveWatches,
)
from ._probes import probe_tls, server_version
from .errors import (
    AuthenticationFailed,
    ClientClosed,
    ConnectionLost,
    ConnectTimeout,
    NotAuthorized,
    OperationTimeout,
    ZkPubSubError,
    ZooKeeperError,
)
from .handler import FastThreadingHandler
from .security import Auth, Sasl, Tls

__all__ = [
    "RECONNECT_MAX_DELAY",
    "STOP_AFTER_FAILED_CONNECT",
    "Connection",
    "first_error",
    "server_error",
    "translated",
]

logger = logging.getLogger(__name__)


class _HideCredentials(logging.Filter):
    """kazoo logs every request it sends at DEBUG, the login (an ``Auth``
    packet, a digest's user and password in clear) among them: its
    credentials are replaced before the record is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, AuthPacket) for a in args):
            record.args = tuple(
                f"Auth(scheme={a.scheme!r}, auth=<hidden>)" if isinstance(a, AuthPacket) else a
                for a in args
            )
        return True


# kazoo's connection logs through its client's logger, this one by default
logging.getLogger("kazoo.client").addFilter(_HideCredentials())

T = TypeVar("T")

RECONNECT_MAX_DELAY: Final = 2.0
# kazoo's stop joins its threads without a time limit (after waiting up to
# the session timeout, at least 10 s, for its connection loop to end):
# ``Connection.stop`` waits this much longer than that at most.
STOP_GRACE: Final = 5.0
# A connect that failed waits this long for the connection to stop, then
# leaves it stopping in the background (kazoo's loop may be waiting for an
# answer from a server that does not give one).
STOP_AFTER_FAILED_CONNECT: Final = 1.0
# ZooKeeper's default jute.maxbuffer (0xfffff): a request whose packet is
# larger makes the server drop the connection without an answer.
SERVER_MAX_BUFFER: Final = 0xFFFFF
# A removal of a watch being waited for looks this often whether the
# connection is still there (no wait once it is known gone).
UNWATCH_LOOK: Final = 0.1
_REQUEST_HEADER: Final = 12  # length prefix, xid, opcode
_CONNECTION_ERRORS: Final = (ConnectionLoss, SessionExpiredError, OperationTimeoutError)


def first_error(results: list[Any]) -> tuple[int, Exception | None]:
    """The operation that made a transaction fail, if it failed: ``(index,
    error)``, or ``(-1, None)`` when every operation succeeded."""
    for i, r in enumerate(results):
        if isinstance(r, Exception) and not isinstance(r, (RolledBackError, RuntimeInconsistency)):
            return i, r
    return -1, None


def _log_watch_failure(result: Any) -> None:  # kazoo's completion thread
    try:
        result.get_nowait()
    except Exception as exc:  # the next reconnect adds it again; readers list meanwhile
        logger.debug("setting a persistent watch again: %r", exc)


def request_size(txn: Any) -> int:
    """The bytes a kazoo transaction takes on the wire, as the server sees
    its packet length."""
    return len(Transaction(txn.operations).serialize()) + _REQUEST_HEADER


_REQUIRE_AUTH: Final = (
    "the server requires authentication: give credentials (auth=...) with a scheme it enforces"
)


def server_error(what: str, error: BaseException, path: str | None = None) -> ZkPubSubError:
    """The zkpubsub error for an error the server answered (a request's or
    one operation's of a transaction): ``NotAuthorized`` for ``NoAuth``,
    ``AuthenticationFailed`` for a refused login, else ``ZooKeeperError``."""
    where = f" on {path}" if path else ""
    if isinstance(error, NoAuthError):
        return NotAuthorized(
            f"{what}: not authorized{where} (this client's identity has no role "
            "allowing it; a wrong password is another identity)",
            path=path,
        )
    if isinstance(error, SessionClosedRequireSaslError):
        return AuthenticationFailed(f"{what}: {_REQUIRE_AUTH}")
    if isinstance(error, AuthFailedError):
        return AuthenticationFailed(f"{what}: the server refused the credentials")
    return ZooKeeperError(f"{what}: {type(error).__name__}{where}")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn any kazoo error escaping the block into a zkpubsub error."""
    try:
        yield
    except ZkPubSubError:
        raise
    except (NoAuthError, AuthFailedError, SessionClosedRequireSaslError) as exc:
        raise server_error(what, exc) from exc
    except ConnectionClosedError as exc:
        raise ClientClosed(f"{what}: the client is closed") from exc
    except _CONNECTION_ERRORS as exc:
        raise ConnectionLost(f"{what}: {type(exc).__name__}") from exc
    except KazooException as exc:
        raise ZooKeeperError(f"{what}: {type(exc).__name__} {exc}".rstrip()) from exc


def kazoo_security(auth: tuple[Auth | Sasl, ...], tls: Tls | None) -> dict[str, Any]:
    """kazoo's keyword arguments for credentials and TLS."""
    options: dict[str, Any] = {}
    digests = [(a.scheme, a.credential) for a in auth if isinstance(a, Auth)]
    if digests:
        options["auth_data"] = digests
    for a in auth:
        if isinstance(a, Sasl):
            sasl: dict[str, Any] = {"mechanism": a.mechanism, "service": a.service}
            if a.username is not None:
                sasl["username"] = a.username
            if a.password is not None:
                sasl["password"] = a.password
            if a.principal is not None:
                sasl["principal"] = a.principal
            options["sasl_options"] = sasl
    if tls is not None:
        options.update(tls._options(), use_ssl=True)
    return options


class Connection:
    """A kazoo client with bounded waits and state tracking."""

    def __init__(
        self,
        hosts: str,
        *,
        session_timeout: float,
        client_id: tuple[int, bytes] | None = None,
        handler: Any = None,
        auth: tuple[Auth | Sasl, ...] = (),
        tls: Tls | None = None,
        acl_for: Callable[[str], list[Any]] | None = None,
    ) -> None:
        retry = KazooRetry(
            max_tries=-1, delay=0.05, backoff=2, max_jitter=0.3, max_delay=RECONNECT_MAX_DELAY
        )
        self.tls = tls
        self.stop_timeout = max(10.0, session_timeout) + STOP_GRACE
        self._asked_timeout = session_timeout
        self._granted_timeout: float | None = None  # what the server gave the last session
        self._connected_once = False  # the session was set up once
        self.kazoo = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            client_id=client_id,
            handler=handler if handler is not None else FastThreadingHandler(),
            connection_retry=retry,
            command_retry=KazooRetry(max_tries=1, ignore_expire=False),
            **kazoo_security(auth, tls),
        )
        self.authenticating = any(isinstance(a, Sasl) for a in auth)
        self.auth_failed = threading.Event()
        # the ACL of a node this module creates, by path (ensure_path)
        self.acl_for: Callable[[str], list[Any]] = acl_for or (lambda _path: OPEN_ACL_UNSAFE)
        self.connected = threading.Event()
        self.closing = threading.Event()
        # held while kazoo's loop is started again or stopped: a stop never
        # runs in the middle of a restart (which would start it again after)
        self._lifecycle = threading.Lock()
        self._listeners: list[Callable[[KazooState], None]] = []
        self._session: tuple[int, bytes] | None = None
        self._connected_at: float | None = None
        # set when a reply showed the session gone while still connected:
        # the session was known alive at this (wall-clock) time, no later
        self.session_lost_since: float | None = None
        self._watches: EventHook | None = None  # made on the first persistent watch
        # Held while a persistent watch's callbacks change and its request to
        # the server is queued: the server sees adds and removals in the order
        # the callbacks changed (else a removal by the last caller could
        # reach it after another caller's add, and that caller hear nothing).
        # Never taken on kazoo's thread: a thread holding it may wait in
        # kazoo's _call for that thread (its wake-up socket full).
        self._watch_order = threading.Lock()
        # whether the server has persistent watches: None until asked
        self.persistent_watches: bool | None = None
        self._requests = 0
        self._requests_lock = threading.Lock()
        send = self.kazoo._call  # counted, for the requests each delivery costs

        def counted(request: Any, async_object: Any) -> Any:
            with self._requests_lock:
                self._requests += 1
            return send(request, async_object)

        self.kazoo._call = counted
        self._drop_on_unexpected_replies()
        self._refuse_sasl_closed_sessions()
        self._note_granted_timeout()
        self.kazoo.add_listener(self._on_state)

    def _drop_on_unexpected_replies(self) -> None:
        """Make a reply to no waiting request drop the connection (kazoo's
        loop would die of it: "xids do not match", or an empty deque)."""
        kazoo = self.kazoo
        reader = kazoo._connection
        read_response = reader._read_response

        def checked(header: Any, buffer: bytes, offset: int) -> Any:  # kazoo's connection thread
            waiting = kazoo._pending
            if not waiting or waiting[0][2] != header.xid:
                expected = waiting[0][2] if waiting else None
                raise ConnectionDropped(
                    f"a reply with xid {header.xid} (error code {header.err}) "
                    f"while waiting for xid {expected}"
                )
            return read_response(header, buffer, offset)

        reader._read_response = checked

    def _refuse_sasl_closed_sessions(self) -> None:
        """Make a SASL login that a server enforcing authentication answers
        by closing the session a refused login, as a refusal from any other
        server is (kazoo's loop would die of the error it raises, and be
        revived to fail again)."""
        reader = self.kazoo._connection
        authenticate = reader._authenticate_with_sasl

        def refused(host: str, timeout: float) -> Any:  # kazoo's connection thread
            try:
                return authenticate(host, timeout)
            except SessionClosedRequireSaslError as exc:
                raise AuthFailedError("the server closed the session at the SASL login") from exc

        reader._authenticate_with_sasl = refused

    def _note_granted_timeout(self) -> None:
        """Keep the session timeout the server grants at each connection
        (kazoo only logs it): a server bounds what a client asks for."""
        reader = self.kazoo._connection
        invoke = reader._invoke

        def noted(timeout: float, request: Any, xid: int | None = None) -> Any:  # kazoo's thread
            answer = invoke(timeout, request, xid)
            if isinstance(request, Connect) and isinstance(answer, tuple):
                granted = getattr(answer[0], "time_out", 0)
                if granted > 0:
                    self._granted_timeout = granted / 1000.0
            return answer

        reader._invoke = noted

    @property
    def session_timeout(self) -> float:
        """The session timeout in force: the one the server granted the
        last session, or, before any, the one asked for."""
        granted = self._granted_timeout
        return self._asked_timeout if granted is None else granted

    @property
    def requests(self) -> int:
        """Requests sent on this connection's sessions so far."""
        with self._requests_lock:
            return self._requests

    # kazoo's thread: only flags and hand-offs happen here.
    def _on_state(self, state: KazooState) -> None:
        if state == KazooState.CONNECTED:
            cid = self.kazoo.client_id
            if cid is not None:
                self._session = (int(cid[0]), bytes(cid[1]))
            self._connected_at = time.time()
            # Persistent watches do not outlive a connection: add them again
            # now, before any request sent after this reconnect.
            # (Not under _watch_order: a removal decided after the look at
            # the paths is queued after these adds, and one decided between
            # that look and the adds is queued again here, after them.)
            watched = self._watches.paths() if self._watches is not None else []
            if self.persistent_watches is not False and watched:
                for path in watched:
                    self._add_watch_async(path).rawlink(_log_watch_failure)
                left = set(self._watches.paths()) if self._watches is not None else set()
                for path in watched:
                    if path not in left:
                        self._remove_watch_async(path)
            self.connected.set()
        else:
            if state == KazooState.LOST:
                self._session = None
                if self.kazoo.client_state == KeeperState.AUTH_FAILED:
                    self.auth_failed.set()  # kazoo stops for good: no reconnecting
                if self.kazoo.client_state == KeeperState.CLOSED and not self.closing.is_set():
                    # kazoo's connection loop ended though nobody stopped it:
                    # it met an error it does not handle (a reply it did not
                    # expect) and would never reconnect.
                    threading.Thread(
                        target=self._revive, name="zkpubsub-revive", daemon=True
                    ).start()
            self.connected.clear()
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                logger.exception("internal state listener failed")

    def _revive(self) -> None:
        """Start kazoo's connection loop again (on a new session)."""
        with self._lifecycle:
            if self.closing.is_set():
                return
            logger.warning("the ZooKeeper connection loop stopped on an error; starting it again")
            try:
                self.kazoo.start_async()
            except Exception:
                logger.exception("restarting the ZooKeeper connection failed")

    def add_state_listener(self, listener: Callable[[KazooState], None]) -> None:
        """``listener`` runs on kazoo's thread and must only hand off work."""
        self._listeners.append(listener)

    def remove_state_listener(self, listener: Callable[[KazooState], None]) -> None:
        """Idempotent, from any thread (two may remove the same one at once)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def start(self, timeout: float) -> None:
        """Connect within ``timeout``: ``ConnectTimeout``, ``TlsError`` or
        ``AuthenticationFailed`` otherwise (the connection is then stopped)."""
        deadline = deadline_after(timeout)
        if self.tls is not None:
            probe_tls(list(self.kazoo.hosts), self.tls, min(timeout, 5.0))
        # kazoo's start() stops the connection itself when it times out, and
        # waits for its thread: against a server that takes connections and
        # does not answer (frozen), that is a session timeout past ours
        self.kazoo.start_async().wait(remaining(deadline))
        if not self.kazoo.connected:
            self._stop_quietly()
            # kazoo announces the session before the SASL exchange: a start
            # woken by that and then finding it refused sees no connection
            # (kazoo has run our listener, which set the flag, by then)
            if self.auth_failed.is_set():
                raise AuthenticationFailed(
                    "the server refused the SASL login (wrong user name or password, or "
                    "no SASL on the server)"
                )
            raise ConnectTimeout(
                f"no ZooKeeper session within {timeout:g}s (hosts {self.kazoo.hosts!r})"
            )
        # The first request follows the logins (kazoo sends a SASL exchange
        # and every addauth before any request): its answer tells whether
        # they were accepted and whether the server lets this session in.
        try:
            self.result(self.kazoo.exists_async("/"), deadline, "authenticate")
        except AuthenticationFailed as exc:
            self._stop_quietly()
            if isinstance(exc.__cause__, SessionClosedRequireSaslError):
                raise AuthenticationFailed(_REQUIRE_AUTH) from exc
            raise AuthenticationFailed(
                "the server refused the SASL login (wrong user name or password, or "
                "no SASL on the server)"
                if self.authenticating
                else "the server refused the credentials"
            ) from exc
        except (ConnectionLost, OperationTimeout) as exc:
            self._stop_quietly()
            if self.kazoo.client_state == KeeperState.AUTH_FAILED:
                raise AuthenticationFailed("the server refused the SASL login") from exc
            raise ConnectTimeout(f"no usable ZooKeeper session within {timeout:g}s") from exc
        cid = self.kazoo.client_id
        if self._session is None and cid is not None:
            self._session = (int(cid[0]), bytes(cid[1]))
        self._connected_once = True
        self.connected.set()

    def _stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Close the session (ephemeral nodes go at once) and free the socket.
        A restart of kazoo's loop under way finishes first, and is stopped.

        Returns within ``timeout`` (``stop_timeout`` by default): kazoo's
        stop waits for its threads without a limit, so it runs on a thread
        of its own, which is left to finish in the background (with a
        warning) if it takes longer. A connection that never connected
        waits ``STOP_AFTER_FAILED_CONNECT`` at most (without the warning),
        once. Where no thread can be started (an atexit handler on Python
        3.12), it runs here, with no limit."""
        if self.closing.is_set() and not self._connected_once:
            return  # a failed start stopped it already
        self.closing.set()
        self.connected.clear()
        limit = self.stop_timeout if timeout is None else timeout
        warn = self._connected_once
        if not warn:
            limit = min(limit, STOP_AFTER_FAILED_CONNECT)
        failed: list[Exception] = []

        def stop_kazoo() -> None:
            with self._lifecycle:
                try:
                    self.kazoo.stop()
                except Exception as exc:
                    failed.append(exc)
                finally:
                    with contextlib.suppress(Exception):
                        self.kazoo.close()

        stopping = threading.Thread(target=stop_kazoo, name="zkpubsub-stop", daemon=True)
        try:
            stopping.start()
        except RuntimeError:  # no new thread at interpreter shutdown (an atexit handler)
            stop_kazoo()
        else:
            stopping.join(limit)
            if stopping.is_alive():
                (logger.warning if warn else logger.debug)(
                    "the ZooKeeper connection did not stop within %gs; "
                    "it goes on stopping in the background",
                    limit,
                )
                return
        if failed:
            raise failed[0]

    # -- persistent recursive watches (ZooKeeper 3.6+) ------------------------------

    def has_persistent_watches(self) -> bool:
        """Whether the server has persistent watches (ZooKeeper 3.6+). Asked
        once, with ``srvr``, before any ``addWatch`` is sent: a server older
        than 3.5 does not answer an unknown request but drops the connection,
        and every request sent with it. A server that does not tell its
        version is taken to have them (3.5 refuses ``addWatch`` cleanly)."""
        if self.persistent_watches is None:
            version = self._server_version()
            self.persistent_watches = version is None or version >= (3, 6, 0)
            if version is not None and not self.persistent_watches:
                logger.info("ZooKeeper %s has no persistent watches", ".".join(map(str, version)))
        return self.persistent_watches

    def _server_version(self) -> tuple[int, int, int] | None:
        """The version of the server this client is connected to (or, before
        the first connection, of the first one that says)."""
        if self.tls is not None:
            return None  # a secure port speaks only TLS (and TLS came with 3.5)
        handler = getattr(self.kazoo, "_connection", None)
        sock = getattr(handler, "_socket", None)
        peers: list[tuple[str, int]] = []
        with contextlib.suppress(OSError, AttributeError, ValueError):
            host, port = sock.getpeername()[:2]  # type: ignore[union-attr]
            peers.append((str(host), int(port)))
        if not peers:
            peers = [(str(h), int(p)) for h, p in self.kazoo.hosts]
        for host, port in peers:
            version = server_version(host, port, 2.0)
            if version is not None:
                return version
        return None

    def _add_watch_async(self, server_path: str) -> Any:
        result = self.kazoo.handler.async_result()
        self.kazoo._call(AddWatch(server_path, PERSISTENT_RECURSIVE), result)
        return result

    def _remove_watch_async(self, server_path: str) -> Any:
        result = self.kazoo.handler.async_result()
        self.kazoo._call(RemoveWatches(server_path, WATCHER_ANY), result)
        return result

    def watch_tree(
        self, path: str, on_event: Callable[[int, str], None], deadline: float | None
    ) -> bool:
        """Watch ``path`` and every node below it: ``on_event(type, path)``
        for each node created (1), deleted (2) or changed (3), on kazoo's
        connection thread (it must only hand off), until :meth:`unwatch_tree`
        with the same ``on_event``. The watch is set again after every
        reconnect, before any other request of the new connection, so a read
        made after a reconnect (or after this call) sees what its events
        missed. Several callers may watch one path (the server keeps one
        watch for all). ``False`` if the server does not have such watches
        (before ZooKeeper 3.6): nothing is watched then."""
        if not self.has_persistent_watches():
            return False
        server_path = self.kazoo.chroot + path
        with self._watch_order:
            if self._watches is None:
                self._watches = EventHook(self.kazoo)
            self._watches.watch(server_path, on_event)
            # sent for every caller, even where the path is watched already:
            # the caller's next requests then follow a watch the server has
            first = [self._add_watch_async(server_path)] if self.connected.is_set() else []

        def add() -> Any:  # again after a lost answer, in order as above
            if first:
                return first.pop()
            with self._watch_order:
                return self._add_watch_async(server_path)

        try:
            self.call(add, deadline, f"watch {path}")
        except UnimplementedError:
            self.persistent_watches = False
            self.unwatch_tree_soon(path, on_event)
            return False
        except BaseException:
            self.unwatch_tree_soon(path, on_event)
            raise
        return True

    def unwatch_tree(
        self, path: str, on_event: Callable[[int, str], None], deadline: float | None
    ) -> None:
        """Stop calling ``on_event`` for ``path``; the last caller's
        unwatching removes the watch from the server (without a connection,
        the removal waits in kazoo's queue for the next one; this does not,
        nor once the connection is found gone while it waits)."""
        result = self.unwatch_tree_soon(path, on_event)
        if result is None:
            return
        while not result.ready():
            left = remaining(deadline)
            if not self.connected.is_set() or (left is not None and left <= 0):
                return
            result.wait(UNWATCH_LOOK if left is None else min(UNWATCH_LOOK, left))
        with contextlib.suppress(NoWatcherError, ConnectionLost, OperationTimeout, ClientClosed):
            self.result(result, deadline, f"stop watching {path}")

    def unwatch_tree_soon(self, path: str, on_event: Callable[[int, str], None]) -> Any:
        """:meth:`unwatch_tree` without waiting for the server (any thread,
        not kazoo's): the pending answer of the removal, or ``None`` if
        there is nothing to remove from the server. The removal is queued
        also while the connection is down: a watch re-added on the reconnect
        (or asked for before the loss) reaches the server before it, and a
        server without the watch answers ``NoWatcher``."""
        server_path = self.kazoo.chroot + path
        with self._watch_order:
            if self._watches is None or not self._watches.watches(server_path, on_event):
                return None
            if not self._watches.unwatch(server_path, on_event):
                return None  # another caller still watches it
            if self.persistent_watches is False:
                return None  # the server never had it
            return self._remove_watch_async(server_path)

    @property
    def session_id(self) -> int | None:
        """The id of the current session, also while the connection is down
        (the session may well be alive); ``None`` once it has expired and
        until a new one is established."""
        session = self._session
        return None if session is None else session[0]

    @property
    def credentials(self) -> tuple[int, bytes] | None:
        """Session id and password (for tests that expire a session for real)."""
        return self._session

    def wait_connected(
        self,
        deadline: float | None,
        what: str = "waiting for ZooKeeper",
        *,
        stop: threading.Event | None = None,
    ) -> None:
        """Return once connected; raise ``OperationTimeout``, or
        ``ClientClosed`` once the client closes or ``stop`` is set."""
        while not self.connected.is_set():
            if self.closing.is_set():
                raise ClientClosed(f"{what}: the client is closed")
            if stop is not None and stop.is_set():
                raise ClientClosed(f"{what}: stopped")
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise OperationTimeout(f"{what}: not connected to ZooKeeper in time")
            self.connected.wait(0.1 if left is None else min(left, 0.1))

    def result(self, async_result: Any, deadline: float | None, what: str) -> Any:
        """Wait for one request. Connection errors raise ``ConnectionLost``
        (so would kazoo's "xids do not match", an answer that will never
        come, were the reply not caught first); an ACL's refusal raises
        ``NotAuthorized`` (also for one operation of a transaction: nothing
        of it was applied) and a refused login ``AuthenticationFailed``;
        other kazoo errors (NoNodeError…) are left for the caller."""
        try:
            value = async_result.get(timeout=remaining(deadline))
        except (NoAuthError, AuthFailedError, SessionClosedRequireSaslError) as exc:
            raise server_error(what, exc) from exc
        except KazooTimeoutError as exc:
            raise OperationTimeout(f"{what}: no answer from ZooKeeper in time") from exc
        except ConnectionClosedError as exc:
            if self.closing.is_set():
                raise ClientClosed(f"{what}: the client is closed") from exc
            # kazoo's loop stopped on an error and is being started again
            raise ConnectionLost(f"{what}: connection closed by kazoo") from exc
        except SessionExpiredError as exc:
            self._expired_reply(what)
            raise ConnectionLost(f"{what}: SessionExpiredError") from exc
        except _CONNECTION_ERRORS as exc:
            raise ConnectionLost(f"{what}: {type(exc).__name__}") from exc
        except RuntimeError as exc:
            # kazoo's "xids do not match" (a reply it did not expect, which
            # _drop_on_unexpected_replies catches first): whether this
            # request was applied is unknown
            raise ConnectionLost(f"{what}: the connection loop stopped ({exc.args[0]})") from exc
        if isinstance(value, list):
            if any(isinstance(r, SessionExpiredError) for r in value):
                # a transaction refused as a whole: nothing of it was applied
                self._expired_reply(what)
                raise ConnectionLost(f"{what}: SessionExpiredError")
            for r in value:
                if isinstance(r, (NoAuthError, SessionClosedRequireSaslError)):
                    raise server_error(what, r)
        return value

    def _expired_reply(self, what: str) -> None:
        """The server said the session expired. If kazoo still holds a
        connection, drop it: kazoo learns of an expiry only on connecting."""
        if not self.connected.is_set() or self.closing.is_set():
            return  # kazoo knows already (or we are closing)
        if self.session_lost_since is None:
            self.session_lost_since = self._connected_at or time.time()
        logger.warning("%s: the server ended the session; reconnecting for a new one", what)
        handler = getattr(self.kazoo, "_connection", None)
        sock = getattr(handler, "_socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def call(self, request: Callable[[], Any], deadline: float | None, what: str) -> Any:
        """Run an idempotent request, again after every connection loss, until
        it answers or the deadline passes."""
        return self._again_after_loss(
            lambda: self.result(request(), deadline, what), deadline, what
        )

    def _again_after_loss(self, attempt: Callable[[], T], deadline: float | None, what: str) -> T:
        while True:
            self.wait_connected(deadline, what)
            try:
                return attempt()
            except ConnectionLost:
                if self.closing.is_set():
                    raise ClientClosed(f"{what}: the client is closed") from None
                if expired(deadline):
                    raise OperationTimeout(
                        f"{what}: connection lost and not back in time"
                    ) from None
                logger.debug("%s: connection lost, retrying", what)

    def read_all(
        self, requests: Callable[[], list[Any]], deadline: float | None, what: str
    ) -> list[Any]:
        """Send several reads at once and wait for them all; after a
        connection loss send them all again, until the deadline passes.
        Each answer is the value read or, for a node that is not there, the
        ``NoNodeError`` itself (callers usually skip those)."""

        def answers() -> list[Any]:
            out: list[Any] = []
            for request in requests():
                try:
                    out.append(self.result(request, deadline, what))
                except NoNodeError as exc:
                    out.append(exc)
            return out

        return self._again_after_loss(answers, deadline, what)

    def children(
        self, path: str, deadline: float | None, *, watch: Callable[[Any], None] | None = None
    ) -> list[str] | None:
        """The children of ``path``, or ``None`` if it does not exist."""
        kazoo = self.kazoo
        try:
            names: list[str] = self.call(
                lambda: kazoo.get_children_async(path, watch=watch), deadline, f"list {path}"
            )
        except NoNodeError:
            return None
        return names

    def delete(self, path: str, deadline: float | None) -> bool:
        """Delete a childless node; ``False`` if it was not there."""
        kazoo = self.kazoo
        try:
            self.call(lambda: kazoo.delete_async(path), deadline, f"delete {path}")
        except NoNodeError:
            return False
        return True

    def ensure_path(self, path: str, deadline: float | None) -> None:
        """Create ``path`` and its missing parents (persistent, empty), each
        with the ACL ``acl_for`` gives its path. An existing node is left as
        it is (finding it needs no right on it)."""
        kazoo = self.kazoo
        missing: list[str] = []
        node = path
        while node not in ("", "/"):
            if self.call(functools.partial(kazoo.exists_async, node), deadline, f"stat {node}"):
                break
            missing.append(node)
            node = node.rsplit("/", 1)[0]
        for node in reversed(missing):
            create = functools.partial(kazoo.create_async, node, b"", acl=self.acl_for(node))
            try:
                self.call(create, deadline, f"create {node}")
            except NodeExistsError:
                pass
            except NoNodeError:  # a parent was deleted meanwhile: start again
                self.ensure_path(path, deadline)
                return

    def sync(self, path: str, deadline: float | None) -> None:
        """Bring this client's server up to date with the leader."""
        kazoo = self.kazoo
        self.call(lambda: kazoo.sync_async(path), deadline, f"sync {path}")

    def exists(self, path: str, deadline: float | None) -> bool:
        kazoo = self.kazoo
        return self.call(lambda: kazoo.exists_async(path), deadline, f"stat {path}") is not None
