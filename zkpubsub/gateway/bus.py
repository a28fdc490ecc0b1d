"""The gateway's sessions with the bus: one client per set of credentials.

The gateway's own credentials (``GatewaySettings.security``) give the
default client, connected when the gateway starts; each credentials
profile of the tokens file gets its client on first use. Requests reach the
bus only through these clients (:mod:`zkpubsub.aio`), so every guarantee of
the library holds for them as for any other client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from ..aio import AsyncClient, AsyncWorkQueue
from ..errors import SecurityError
from ..observer import Observer
from ..security import Security, load_credentials
from .auth import Principal
from .settings import GatewaySettings

# Each read of the console's view of the bus waits this long for ZooKeeper
# (not the default request timeout of 30 s): a console shows a problem in
# seconds while ZooKeeper does not answer.
OBSERVER_REQUEST_TIMEOUT: Final = 5.0

__all__ = ["Bus"]

logger = logging.getLogger(__name__)


class Bus:
    """The clients of one gateway, keyed by credentials profile."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._clients: dict[str | None, AsyncClient] = {}
        self._lock = asyncio.Lock()
        self._observer: Observer | None = None
        self._queues: dict[tuple[str | None, str], AsyncWorkQueue] = {}

    def security(self, profile: str | None) -> Security:
        """The credentials of ``profile`` (``None``: the gateway's own)."""
        if profile is None:
            return self.settings.security
        book = self.settings.tokens
        assert book is not None and profile in book.credentials
        try:  # read at each use: changed credentials serve new clients
            return load_credentials(book.credentials[profile])
        except (OSError, ValueError) as exc:  # changed since the start, and spoilt
            logger.error("credentials profile %r: %s", profile, exc)
            raise SecurityError(
                f"the credentials of profile {profile!r} cannot be read (the gateway's log "
                "says why); nothing was done"
            ) from None

    def client_options(self, profile: str | None) -> dict[str, Any]:
        """What every client of ``profile`` is made with (besides its id)."""
        s = self.settings
        return {
            "root": s.root,
            "session_timeout": s.session_timeout,
            "connect_timeout": s.connect_timeout,
            **self.security(profile).options(),
        }

    async def start(self) -> None:
        """Connect the default client (``ConnectTimeout`` and the security
        errors of ``Client`` if it cannot)."""
        await self.client_for(None)

    @property
    def default(self) -> AsyncClient:
        return self._clients[None]

    async def client(self, principal: Principal) -> AsyncClient:
        return await self.client_for(principal.profile)

    async def client_for(self, profile: str | None) -> AsyncClient:
        client = self._clients.get(profile)
        if client is not None:
            return client
        async with self._lock:
            client = self._clients.get(profile)
            if client is None:
                client = await AsyncClient.connect(
                    self.settings.hosts, **self.client_options(profile)
                )
                self._clients[profile] = client
                logger.info("connected for credentials %s", profile or "(the gateway's own)")
            return client

    async def queue(self, principal: Principal, name: str) -> AsyncWorkQueue:
        """The handle on work queue ``name`` for ``principal``'s credentials:
        one per queue and credentials, so the gateway is one worker of each
        queue, whose reservations carry the default lease (``settings.lease``)."""
        key = (principal.profile, name)
        handle = self._queues.get(key)
        if handle is None:
            client = await self.client(principal)
            handle = client.queue(name, visibility_timeout=self.settings.lease)
            self._queues[key] = handle
        return handle

    def observer(self) -> Observer:
        """A read-only view of the bus (blocking: call it on a thread)."""
        if self._observer is None:
            s = self.settings
            self._observer = Observer(
                s.hosts,
                root=s.root,
                session_timeout=s.session_timeout,
                connect_timeout=s.connect_timeout,
                request_timeout=OBSERVER_REQUEST_TIMEOUT,
                auth=s.security.auth,
                tls=s.security.tls,
            )
        return self._observer

    async def close(self) -> None:
        queues, self._queues = list(self._queues.values()), {}
        await asyncio.gather(*(_closed(queue) for queue in queues))
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(_closed(client) for client in clients))  # side by side
        observer, self._observer = self._observer, None
        if observer is not None:
            await asyncio.to_thread(observer.close)


async def _closed(thing: AsyncClient | AsyncWorkQueue) -> None:
    try:
        await thing.close()
    except Exception:
        logger.exception("closing %r", thing)
