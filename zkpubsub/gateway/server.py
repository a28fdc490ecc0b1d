"""Running the gateway: uvicorn on one address, optionally with TLS."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable

from .settings import GatewaySettings

__all__ = ["check_listener", "is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_listener(
    settings: GatewaySettings,
    *,
    host: str,
    port: int,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> None:
    """``ValueError`` unless the gateway may listen so: a port from 1 to
    65535, tokens for any address but a loopback one, TLS with both a
    certificate and a key that load together, or neither."""
    if not 0 < port < 65536:
        raise ValueError(f"the port must be from 1 to 65535, not {port}")
    if settings.tokens is None and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host} without --tokens: anyone who can reach it could "
            "use the bus; give a tokens file (docs/gateway.md) or listen on 127.0.0.1"
        )
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS for the listener needs both --tls-cert and --tls-key")
    if tls_cert is not None and tls_key is not None:
        # loaded here as uvicorn will, so that a pair that does not load is
        # one line before anything listens (an encrypted key is refused:
        # nothing would give its password)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(tls_cert, tls_key, password=lambda: b"")
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"the listener's certificate and key do not load together: {exc} "
                "(a PEM certificate and its unencrypted key)"
            ) from None


def serve(
    settings: GatewaySettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    log_level: str = "warning",
    on_serving: Callable[[], None] | None = None,
) -> None:
    """Serve the gateway until SIGINT or SIGTERM. Without tokens it listens
    only on a loopback address (``ValueError`` otherwise, and for the other
    faults :func:`check_listener` finds). ``on_serving`` is called just
    before uvicorn takes over (and the signals with it)."""
    import uvicorn

    from .app import create_app

    check_listener(settings, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)
    app = create_app(settings)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # long polls and streams under way end, answered, before the
            # server waits for its connections (then cut them off)
            app.state.gateway.begin_closing()
            await super().shutdown(sockets=sockets)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = Server(config)
    if on_serving is not None:
        on_serving()
    server.run()
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run does: the start-up failed (it said why)
