"""``zkpubsub gateway``: the HTTP gateway's command (the gateway itself is
imported only when it runs, so the program works without its extra)."""

from __future__ import annotations

import contextlib
import signal

import click

from ._cli_common import (
    BadOption,
    CliContext,
    Signalled,
    failure,
    pass_ctx,
    seconds_option,
    signals_kept,
    until_signalled,
    whole,
)
from .errors import NotFound, ZkPubSubError
from .gateway.settings import (
    DEFAULT_ACK_DEADLINE,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LEASE,
    DEFAULT_MAX_WAIT,
    GatewaySettings,
)


@click.command()
@click.option("--hosts", "gateway_hosts", default=None, help="Overrides the global --hosts.")
@click.option("--root", "gateway_root", default=None, help="Overrides the global --root.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="ZKPUBSUB_GATEWAY_HOST",
    help="Address to listen on (anything but loopback needs --tokens).",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=int,
    envvar="ZKPUBSUB_GATEWAY_PORT",
    callback=whole("--port", 1, 65535),
)
@click.option(
    "--tokens",
    type=click.Path(exists=True, dir_okay=False),
    envvar="ZKPUBSUB_GATEWAY_TOKENS",
    help="Bearer tokens file (JSON, see docs/gateway.md). Without it: no auth, loopback only.",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Listener TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Listener TLS.")
@seconds_option(
    "--ack-deadline",
    DEFAULT_ACK_DEADLINE,
    "Seconds before a pulled, unacked message is handed out again.",
)
@seconds_option(
    "--lease", DEFAULT_LEASE, "Default lease (visibility timeout) of a reserved work item."
)
@seconds_option("--max-wait", DEFAULT_MAX_WAIT, "Longest long poll (pull, reserve, results).")
@seconds_option(
    "--idle-timeout",
    DEFAULT_IDLE_TIMEOUT,
    "Let go of a subscription unused this long (the cleaner's grace starts then).",
)
@seconds_option(
    "--body-timeout",
    DEFAULT_BODY_TIMEOUT,
    "Longest a request's body may take to arrive (then a 408).",
)
@seconds_option(
    "--idempotency-ttl",
    DEFAULT_IDEMPOTENCY_TTL,
    "Seconds an Idempotency-Key's first answer is kept (in this process).",
)
@pass_ctx
def gateway(
    ctx: CliContext,
    gateway_hosts: str | None,
    gateway_root: str | None,
    host: str,
    port: int,
    tokens: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    ack_deadline: float,
    lease: float,
    max_wait: float,
    idle_timeout: float,
    body_timeout: float,
    idempotency_ttl: float,
) -> None:
    """Serve the bus over HTTP (needs the gateway extra)."""
    try:
        from .gateway import check_listener, load_tokens, require_extra, serve

        require_extra()
    except ImportError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        book = load_tokens(tokens) if tokens else None
        settings = GatewaySettings(
            hosts=gateway_hosts or ctx.hosts,
            root=gateway_root or ctx.root,
            session_timeout=ctx.session_timeout,
            connect_timeout=ctx.connect_timeout,
            security=ctx.security(),
            tokens=book,
            ack_deadline=ack_deadline,
            lease=lease,
            max_wait=max_wait,
            idle_timeout=idle_timeout,
            body_timeout=body_timeout,
            idempotency_ttl=idempotency_ttl,
        )
        check_listener(settings, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)
    except (OSError, ValueError) as exc:
        raise BadOption(str(exc)) from exc
    if not _reach(settings):
        return  # stopped while it connected: as a stop while serving, done
    scheme = "https" if tls_cert else "http"
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"zkpubsub gateway on {scheme}://{shown}:{port} (API docs at /docs)", err=True)
    # uvicorn ends on SIGINT or SIGTERM after a graceful shutdown, then
    # raises the signal again for the handler it found: ignored from the
    # moment uvicorn takes the signals over (until then a signal ends the
    # command as any), so a gateway so ended is done (exit code 0).
    ended = dict.fromkeys((signal.SIGINT, signal.SIGTERM), signal.SIG_IGN)
    with signals_kept() as install:

        def serving() -> None:
            install(ended)

        try:
            serve(
                settings,
                host=host,
                port=port,
                tls_cert=tls_cert,
                tls_key=tls_key,
                on_serving=serving,
            )
        except ValueError as exc:
            raise BadOption(str(exc)) from exc


def _reach(settings: GatewaySettings) -> bool:
    """Reach the bus once, read-only, before serving: a server that does not
    answer, or refuses the gateway's credentials, is one line and exit code
    1 (inside the server's start it was a traceback); Ctrl-C or SIGTERM end
    the wait at once (``False``: the gateway is done, as when they stop it
    serving)."""
    from .observer import Observer

    def look() -> None:
        security = settings.security
        # NotFound: the server answered, and there is no bus yet (the gateway makes it)
        with contextlib.suppress(NotFound):
            Observer(
                settings.hosts,
                root=settings.root,
                session_timeout=settings.session_timeout,
                connect_timeout=settings.connect_timeout,
                auth=security.auth,
                tls=security.tls,
            ).close()

    try:
        until_signalled(look, "zkpubsub-connect")
    except Signalled:
        return False
    except ZkPubSubError as exc:
        raise failure(exc) from exc
    return True
