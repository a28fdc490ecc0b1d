"""Real session expiry, done on the server.

kazoo's own test helpers only fake an expiry on the client side (the old
session's ephemeral nodes stay). Here a second connection takes over the
session with its id and password and closes it: the server ends the
session, deletes its ephemeral nodes and fires their watches, and the
original client finds its session expired when it reconnects.
"""

from __future__ import annotations

import threading
import time

from kazoo.client import KazooClient, KazooState
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from ..client import Client
from ..security import Auth
from ..state import ClientState

__all__ = [
    "close_session",
    "expire_session",
]


def close_session(
    creds: tuple[int, bytes],
    hosts: str,
    timeout: float = 15.0,
    auth_data: list[tuple[str, str]] | None = None,
) -> None:
    """Attach to the session with its id and password, then close it
    (authenticating with ``auth_data`` first: a server that enforces
    authentication refuses an unauthenticated close)."""
    thief = KazooClient(
        hosts=hosts,
        client_id=creds,
        timeout=10.0,
        connection_retry=KazooRetry(max_tries=20, delay=0.1, max_delay=1.0),
        auth_data=auth_data,
    )
    ended = threading.Event()  # the server says the session is over already
    thief.add_listener(lambda state: ended.set() if state == KazooState.LOST else None)
    try:
        started = thief.start_async()
        deadline = time.monotonic() + timeout
        while not thief.connected and not ended.is_set():
            if time.monotonic() > deadline:
                raise KazooTimeoutError("could not attach to the session in time")
            started.wait(0.05)
        thief.stop()
    finally:
        thief.close()


def expire_session(
    target: Client | tuple[int, bytes],
    hosts: str | None = None,
    *,
    timeout: float = 15.0,
    wait: bool = True,
) -> None:
    """Expire ``target``'s session on the server.

    ``target`` is a :class:`~zkpubsub.Client` or a ``(session_id, password)``
    pair. With ``wait`` and a Client, return once the client has noticed and
    registered again on a new session (its state is CONNECTED again).

    The client reconnects as soon as the server drops its connection for
    the taker; if it wins that race before the session is closed, it is
    back on its old session, which is then taken and closed again.
    """
    auth: list[tuple[str, str]] | None = None
    if isinstance(target, Client):
        auth = [(a.scheme, a.credential) for a in target.config.auth if isinstance(a, Auth)]
        creds = target._session_credentials()
        hosts = hosts or target.config.hosts
        old_session = creds[0] if creds else None
    else:
        creds, old_session = target, target[0]
    if creds is None:
        raise RuntimeError("the client has no live session to expire")
    if hosts is None:
        raise ValueError("hosts is needed with a bare session id")
    if not (wait and isinstance(target, Client)):
        close_session(creds, hosts, timeout, auth)
        return
    deadline = time.monotonic() + timeout + target.config.session_timeout
    while True:
        try:
            close_session(creds, hosts, max(1.0, min(timeout, deadline - time.monotonic())), auth)
        except KazooTimeoutError:
            # The taker never got the session: the client took it back each
            # time (the server hands a session to whichever connection asked
            # last) or it had ended already. See where things stand; try again.
            if time.monotonic() > deadline:
                raise TimeoutError("could not take over the client's session in time") from None
        # back on the old session this long after the close: the close lost
        again = time.monotonic() + 1.0 + target.config.session_timeout / 2
        while True:
            now = time.monotonic()
            current = target._session_credentials()
            connected = target.status == ClientState.CONNECTED
            # registered on the new session: the state alone may still say
            # CONNECTED from before, until the client's supervisor has seen
            # the expiry
            registered = current is not None and target._session.registered_session == current[0]
            if current is not None and current[0] != old_session and connected and registered:
                return
            if now > deadline:
                raise TimeoutError("the client did not register again on a new session in time")
            if now > again and current is not None and current[0] == old_session and connected:
                break
            time.sleep(0.05)
