"""The ``zkpubsub`` command line.

Credentials and TLS settings come from the environment, never from
arguments (``ps`` shows those to every user of the machine):
``ZKPUBSUB_CREDENTIALS`` names a credentials file (TOML, see
:func:`zkpubsub.security.load_credentials`); ``ZKPUBSUB_DIGEST``
(``user:password``), ``ZKPUBSUB_ACL`` and ``ZKPUBSUB_TLS_CA`` / ``_CERT`` /
``_KEY`` set single values.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from ._cli_common import (
    MAX_SESSION_TIMEOUT,
    MIN_SESSION_TIMEOUT,
    BadOption,
    CliContext,
    Interrupted,
    Terminated,
    Unfinished,
    apart,
    close_or_say,
    failure,
    json_arguments,
    name_of,
    not_negative,
    on_a_thread,
    parse_headers,
    pass_ctx,
    positive,
    read_or_fail,
    signals_kept,
    stop_on_sigterm,
    table,
    whole,
    work_queue_table,
)
from ._cli_gateway import gateway
from ._cli_queue import queue
from .client import Client
from .config import (
    DEFAULT_CLEANER_INTERVAL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_NOTICE_TTL,
    DEFAULT_SESSION_TIMEOUT,
    parse_hosts,
)
from .errors import ZkPubSubError
from .layout import DEFAULT_ROOT, validate_root
from .message import Message
from .subscription import Subscription

__all__ = [
    "DEFAULT_HOSTS",
    "MAX_DEV_SERVERS",
    "bench",
    "cleaner",
    "demo",
    "dev_server",
    "main",
    "publish",
    "run",
    "stats",
    "subscribe",
    "top",
]


DEFAULT_HOSTS = "127.0.0.1:2181"
MAX_DEV_SERVERS = 9  # the largest ensemble dev-server starts
CLEANER_POLL = 0.5  # seconds between the cleaner command's looks at its cleaner


_standalone = False  # run as the program: its logging is ours to set up


def run() -> None:
    """The ``zkpubsub`` program."""
    global _standalone
    _standalone = True
    _escape_what_stdout_cannot_show()
    main()


def _escape_what_stdout_cannot_show() -> None:
    """A name the output's encoding has no letters for (a topic named in
    Chinese, printed on a Latin-1 terminal) is shown escaped (``\\u4fa1``),
    as on stderr, rather than ending the command in a traceback."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


def _configure_logging(verbose: int, level: str | None) -> None:
    """zkpubsub's warnings on stderr; kazoo's connection chatter only with -v."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("zkpubsub")
    ours.addHandler(handler)
    ours.propagate = False
    kazoo = logging.getLogger("kazoo")
    kazoo.addHandler(handler)
    kazoo.propagate = False
    ours.setLevel(level or ("DEBUG" if verbose > 1 else "INFO" if verbose else "WARNING"))
    kazoo.setLevel("DEBUG" if verbose > 1 else "WARNING" if verbose else "CRITICAL")


class _SigTerm(BaseException):
    """SIGTERM arrived: raised where the program was, as Ctrl-C raises
    ``KeyboardInterrupt``, so that what it made is closed on the way out."""


def _on_sigterm(signum: int, frame: object) -> None:
    # Once: a second SIGTERM ends the process at once (the first may have
    # been swallowed where it was raised, inside kazoo; or closing takes
    # longer than whoever sent it will wait).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise _SigTerm


class _Program(click.Group):
    """The program's command group: Ctrl-C in a command that does not end
    on it by design (subscribe, top, cleaner, dev-server do) is one line
    and exit code 130, not click's "Aborted!" and 1; SIGTERM there is one
    line and exit code 143 after closing what the command made, not the
    end of the process where it stood (a reservation held to its lease's
    end, a client's nodes to its session's)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with signals_kept() as install:
            install({signal.SIGTERM: _on_sigterm})
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            with _one_line_usage_errors():
                return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None
        except _SigTerm:
            raise Terminated() from None


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """A bad option or argument click finds (a type, a missing argument, an
    unknown option) is one line and exit code 2, as ours are (README), not
    click's usage block; asking for nothing still shows the help."""
    try:
        yield
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            raise
        raise BadOption(exc.format_message()) from exc


@click.group(cls=_Program)
@click.option(
    "--hosts",
    envvar="ZKPUBSUB_HOSTS",
    default=DEFAULT_HOSTS,
    show_default=True,
    help="ZooKeeper connection string (env ZKPUBSUB_HOSTS). Credentials and TLS: "
    "env ZKPUBSUB_CREDENTIALS (a credentials file), ZKPUBSUB_DIGEST, ZKPUBSUB_TLS_CA...",
)
@click.option(
    "--root",
    envvar="ZKPUBSUB_ROOT",
    default=DEFAULT_ROOT,
    show_default=True,
    help="Where the bus lives (env ZKPUBSUB_ROOT).",
)
@click.option(
    "--session-timeout",
    default=DEFAULT_SESSION_TIMEOUT,
    show_default=True,
    type=float,
    envvar="ZKPUBSUB_SESSION_TIMEOUT",
    callback=positive("--session-timeout", MAX_SESSION_TIMEOUT, MIN_SESSION_TIMEOUT),
    help=f"Seconds, {MIN_SESSION_TIMEOUT:g} to {MAX_SESSION_TIMEOUT:.0f} (ZooKeeper grants "
    "2 to 20 of its ticks whatever is asked).",
)
@click.option(
    "--connect-timeout",
    default=DEFAULT_CONNECT_TIMEOUT,
    show_default=True,
    type=float,
    envvar="ZKPUBSUB_CONNECT_TIMEOUT",
    callback=positive("--connect-timeout"),
    help="Give up if no ZooKeeper session comes within this many seconds.",
)
@click.option("-v", "--verbose", count=True, help="More log lines (-v: INFO, -vv: DEBUG).")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="The level of zkpubsub's own log lines (default WARNING).",
)
@click.version_option(package_name="zkpubsub")
@click.pass_context
def main(
    ctx: click.Context,
    hosts: str,
    root: str,
    session_timeout: float,
    connect_timeout: float,
    verbose: int,
    log_level: str | None,
) -> None:
    """Reliable pub/sub and work queues on Apache ZooKeeper."""
    try:
        parse_hosts(hosts)
    except ValueError as exc:
        raise BadOption(f"--hosts: {exc}") from exc
    try:
        validate_root(root)
    except ValueError as exc:
        raise BadOption(f"--root: {exc}") from exc
    if _standalone:
        _configure_logging(verbose, log_level.upper() if log_level else None)
    ctx.obj = CliContext(hosts, root, session_timeout, connect_timeout)


@main.command("dev-server")
@click.option(
    "--port",
    default=2181,
    show_default=True,
    type=int,
    callback=whole("--port", 0, 65535),
    help="Client port (0: any).",
)
@click.option(
    "--size",
    default=1,
    show_default=True,
    type=int,
    callback=whole("--size", 1, MAX_DEV_SERVERS),
    help=f"Nodes, 1-{MAX_DEV_SERVERS} (1: standalone).",
)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Keep data here.")
def dev_server(port: int, size: int, data_dir: str | None) -> None:
    """Run a local ZooKeeper in the foreground until Ctrl-C."""
    from .testing.local import ZooKeeperNotFound, free_ports
    from .testing.server import ServerFailed, ZooKeeperCluster

    ports = None
    if port:
        ports = [port, *free_ports(size - 1)]
    try:
        cluster = ZooKeeperCluster(size, base_dir=data_dir, client_ports=ports, tick_time=2000)
        cluster.start()
    except (ZooKeeperNotFound, ServerFailed) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ZooKeeper serving on {cluster.hosts} (data in {cluster.base_dir})")
    click.echo(f"export ZKPUBSUB_HOSTS={cluster.hosts}   # Ctrl-C stops it")
    stop = threading.Event()
    # every SIGTERM only asks: the servers are always stopped on the way out
    # (ended at once, they would outlive the command)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if not all(n.running for n in cluster.nodes):
                raise click.ClickException("a ZooKeeper process exited; see its server.log")
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


@main.command()
@click.argument("topic", callback=name_of("topic"))
@click.argument("messages", nargs=-1, required=True)
@click.option("--header", "-H", multiple=True, help="KEY=VALUE, repeatable.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Send each MESSAGE as a string, or parse it as JSON.",
)
@click.option("--require-subscribers", is_flag=True, help="Fail if the topic has none.")
@pass_ctx
@apart
def publish(
    ctx: CliContext,
    topic: str,
    messages: Sequence[str],
    header: Sequence[str],
    fmt: str,
    require_subscribers: bool,
) -> None:
    """Publish MESSAGES to TOPIC, one message each."""
    headers = parse_headers(header)
    payloads = json_arguments(messages, "message") if fmt == "json" else list(messages)
    with ctx.client(serializer="json" if fmt == "json" else None, cleaner=False) as client:
        try:
            for payload in payloads:
                receipt = client.publish(
                    topic, payload, headers=headers, require_subscribers=require_subscribers
                )
                click.echo(f"{receipt.message_id}  {receipt.subscribers} subscriber(s)")
        except (ZkPubSubError, ValueError, TypeError) as exc:
            raise failure(exc) from exc


def _show(msg: Message) -> str:
    payload = msg.payload
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "backslashreplace")
    text = payload if isinstance(payload, str) else json.dumps(payload, default=repr)
    headers = f" {dict(msg.headers)}" if msg.headers else ""
    return f"[{msg.topic}] {text}{headers}"


@main.command()
@click.argument("topic", callback=name_of("topic"))
@click.option(
    "--count",
    "-n",
    type=int,
    default=0,
    callback=whole("--count", 0),
    help="Stop after N messages (0: never).",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    callback=not_negative("--timeout"),
    help="Stop after S seconds without one.",
)
@click.option(
    "--client-id",
    default=None,
    help="A fixed id: what was queued and not printed when this ends is printed by the "
    "next subscribe with the id (what is published in between is not kept for it).",
)
@click.option("--json-lines", is_flag=True, help="Print each message as a JSON object.")
@pass_ctx
def subscribe(
    ctx: CliContext,
    topic: str,
    count: int,
    timeout: float | None,
    client_id: str | None,
    json_lines: bool,
) -> None:
    """Print messages published to TOPIC (until Ctrl-C or SIGTERM)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, stop_on_sigterm(stop))
    try:
        # On the way out (the end, Ctrl-C, SIGTERM, an error) the
        # subscription and then the client close; an error doing so is one
        # line (the server stopped answering...), not a traceback.
        with contextlib.ExitStack() as on_exit:
            client = _connect_until(ctx, stop, client_id=client_id)
            if client is None:
                return
            on_exit.callback(close_or_say, "client", client.close)
            try:
                sub = client.subscribe(topic)
            except (ZkPubSubError, ValueError) as exc:
                raise failure(exc) from exc
            on_exit.callback(close_or_say, f"subscription to {topic!r}", sub.close)
            click.echo(f"subscribed to {topic!r} as {client.client_id}", err=True)
            _print_messages(sub, stop, count, timeout, json_lines)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends it


def _connect_until(ctx: CliContext, stop: threading.Event, **options: Any) -> Client | None:
    """The command's client, made on a thread of its own: SIGTERM (``stop``)
    ends a connect still waiting for a server at once, and Ctrl-C is raised
    here, never inside kazoo. ``None`` when stopped first (what was made by
    then is closed)."""
    try:
        return on_a_thread(lambda: ctx.client(**options), "zkpubsub-connect", stop.is_set)
    except Unfinished:
        ctx.close_made()
        return None
    except KeyboardInterrupt:
        ctx.close_made()
        raise


def _print_messages(
    sub: Subscription, stop: threading.Event, count: int, timeout: float | None, json_lines: bool
) -> None:
    seen = 0
    last = time.monotonic()
    while not stop.is_set() and (not count or seen < count):
        msg = read_or_fail(lambda: sub.get(timeout=0.2))
        if msg is None:
            if timeout is not None and time.monotonic() - last >= timeout:
                return
            continue
        last = time.monotonic()
        seen += 1
        if json_lines:
            record = {
                "id": msg.id,
                "topic": msg.topic,
                "payload": msg.payload,
                "headers": dict(msg.headers),
                "published_at": msg.published_at,
                "publisher_id": msg.publisher_id,
            }
            click.echo(json.dumps(record, default=repr))
        else:
            click.echo(_show(msg))


def _age(started: float, now: float) -> str:
    if not started:
        return "?"
    seconds = max(0, int(now - started))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
@apart
def stats(ctx: CliContext, as_json: bool) -> None:
    """Clients, topics, subscriber queues and work queues (reads only)."""
    with ctx.observer() as observer:
        snapshot = read_or_fail(observer.stats)
    now = time.time()
    if as_json:
        doc = {
            "root": snapshot.root,
            "clients": [
                {"client_id": c.client_id, "host": c.host, "pid": c.pid, "started": c.started}
                for c in snapshot.client_info
            ],
            "topics": {t: list(s) for t, s in snapshot.topics.items()},
            "queues": [
                {
                    "client_id": q.client_id,
                    "topic": q.topic,
                    "backlog": q.backlog,
                    "live": q.live,
                    "subscribed": q.subscribed,
                    "changes": q.changes,
                }
                for q in snapshot.queues
            ],
            "work_queues": [
                {
                    "name": w.name,
                    "ready": w.ready,
                    "reserved": w.reserved,
                    "dead": w.dead,
                    "workers": w.workers,
                }
                for w in snapshot.work_queues
            ],
            "cleaner_candidates": snapshot.cleaner_candidates,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    gone = sorted({q.client_id for q in snapshot.queues if not q.live})
    click.echo(
        f"root {snapshot.root}: {len(snapshot.clients)} client(s), "
        f"{len(snapshot.topics)} topic(s), {len(snapshot.work_queues)} work queue(s), "
        f"{snapshot.cleaner_candidates} cleaner candidate(s)"
        + (f"; queues of {len(gone)} gone client(s) await the cleaner" if gone else "")
    )
    if snapshot.client_info:
        click.echo()
        click.echo(
            table(
                ["CLIENT", "HOST", "PID", "AGE"],
                [
                    (c.client_id, c.host or "?", c.pid or "?", _age(c.started, now))
                    for c in snapshot.client_info
                ],
            )
        )
    if snapshot.topics:
        click.echo()
        click.echo(
            table(["TOPIC", "SUBSCRIBERS"], [(t, len(s)) for t, s in snapshot.topics.items()])
        )
    if snapshot.queues:
        click.echo()
        rows = [
            (
                q.topic,
                q.client_id,
                q.backlog,
                "live" if q.live else "GONE",
                "yes" if q.subscribed else "no",
            )
            for q in snapshot.queues
        ]
        click.echo(table(["TOPIC", "QUEUE (CLIENT ID)", "BACKLOG", "CLIENT", "SUBSCRIBED"], rows))
    if snapshot.work_queues:
        click.echo()
        click.echo(work_queue_table(snapshot.work_queues))


@main.command()
@click.option(
    "--interval",
    type=float,
    default=2.0,
    show_default=True,
    callback=positive("--interval"),
    help="Seconds between refreshes (and between the two looks of --once).",
)
@click.option("--once", is_flag=True, help="Print one view (with rates) and exit.")
@pass_ctx
def top(ctx: CliContext, interval: float, once: bool) -> None:
    """A live view of clients, topics, subscribers and work queues (reads only)."""
    try:
        from .top import Frame, Sampler, print_frame, show_live
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()

    def interrupted(*_: object) -> None:
        # Ctrl-C sets a flag, never raises inside a request (which could
        # leave the client unable to close); the view's reads run on a thread
        # of their own and are given up on it. A second Ctrl-C interrupts.
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    with signals_kept() as install:
        install({signal.SIGTERM: stop_on_sigterm(stop), signal.SIGINT: interrupted})
        try:  # the connect too: a signal ends one still waiting for a server
            made = on_a_thread(ctx.observer, "zkpubsub-connect", stop.is_set)
        except Unfinished:
            ctx.close_made()
            return
        with made as observer, contextlib.suppress(Unfinished):
            sampler = Sampler(observer)

            def look(waiting: Callable[[float], None] | None = None) -> Frame:
                # on a thread of its own, given up on a signal: the view
                # ends at once, not when a read of an unanswering server
                # times out (it fails when what it reads from closes);
                # meanwhile told how long it waits
                began = time.monotonic()

                def give_up() -> bool:
                    if waiting is not None:
                        waiting(time.monotonic() - began)
                    return stop.is_set()

                return on_a_thread(sampler.sample, "zkpubsub-top-read", give_up)

            frame = read_or_fail(look)  # the first look fails in one line
            if once:
                stop.wait(interval)
                print_frame(read_or_fail(look), sys.stdout)
                return
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends it
                # a look failing for want of a server is tried again; any
                # other failure of the bus ends the view in one line
                try:
                    show_live(frame, look, interval, stop)
                except ZkPubSubError as exc:
                    raise failure(exc) from exc


@main.command()
@click.option(
    "--grace",
    type=float,
    default=None,
    envvar="ZKPUBSUB_CLEANER_GRACE",
    callback=positive("--grace"),
    help="Seconds a client must be gone before its queues go "
    "(default: max(60, 2 x session timeout); at least the session timeout).",
)
@click.option(
    "--interval",
    type=float,
    default=DEFAULT_CLEANER_INTERVAL,
    show_default=True,
    envvar="ZKPUBSUB_CLEANER_INTERVAL",
    callback=positive("--interval"),
    help="Seconds between sweeps (it also sweeps when clients come and go).",
)
@click.option(
    "--notice-ttl",
    type=float,
    default=DEFAULT_NOTICE_TTL,
    show_default=True,
    envvar="ZKPUBSUB_CLEANER_NOTICE_TTL",
    callback=positive("--notice-ttl"),
    help="Seconds the notice of a purged durable subscriber waits for it to come back "
    "(the leader's applies).",
)
@click.option(
    "--client-id",
    default=None,
    envvar="ZKPUBSUB_CLEANER_ID",
    help="A fixed client id for this candidate, readable in `zkpubsub stats` "
    "(default: a fresh one each start).",
)
@pass_ctx
def cleaner(
    ctx: CliContext,
    grace: float | None,
    interval: float,
    notice_ttl: float,
    client_id: str | None,
) -> None:
    """Run a cleaner candidate in the foreground (run two or three)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, stop_on_sigterm(stop))
    try:
        # started below with every option: none of its sweeps goes by the
        # default notice TTL
        client = _connect_until(
            ctx,
            stop,
            client_id=client_id,
            cleaner=False,
            cleaner_grace=grace,
            cleaner_interval=interval,
        )
        if client is None:
            return
        try:
            _run_cleaner(client, stop, notice_ttl)
        finally:
            close_or_say("client", client.close)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends it; the client closed on the way out


def _run_cleaner(client: Client, stop: threading.Event, notice_ttl: float) -> None:
    runner = client.start_cleaner(notice_ttl=notice_ttl)
    click.echo(
        f"cleaner {client.client_id} standing for election (grace {runner.grace:g}s, "
        f"interval {runner.interval:g}s)"
    )
    leading = False
    last: tuple[int, int] = (0, 0)
    while not stop.wait(CLEANER_POLL):
        if runner.stopped:
            # by itself: this identity may not stand (under Roles only
            # admins do), or its client went away
            why = runner.refused or "its client closed"
            raise click.ClickException(
                f"cleaner {client.client_id} stopped, not standing for election: {why}"
            )
        s = runner.stats()
        if s.is_leader != leading:
            leading = s.is_leader
            click.echo("leading" if leading else "standing by")
        if (s.queues_removed, s.nodes_removed) != last:
            last = (s.queues_removed, s.nodes_removed)
            click.echo(
                f"sweeps {s.sweeps}, queues removed {s.queues_removed}, "
                f"nodes removed {s.nodes_removed}"
            )


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: Sequence[str]) -> None:
    """Run the benchmarks (from a source checkout; --help for their options)."""
    checkout = Path(__file__).resolve().parent.parent  # an editable install's repository
    if (checkout / "benchmarks" / "runner.py").exists() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        from benchmarks import main as run_benchmarks
    except ImportError as exc:
        raise click.ClickException(
            "the benchmarks live in the source repository's benchmarks/ folder: run this "
            "from a checkout, with the bench extra installed (pip install -e '.[bench]')"
        ) from exc
    sys.exit(run_benchmarks(list(args)))


@main.command()
@click.option(
    "--subscribers", default=3, show_default=True, type=int, callback=whole("--subscribers", 2)
)
@click.option(
    "--messages", default=300, show_default=True, type=int, callback=whole("--messages", 10)
)
@click.option(
    "--secured", is_flag=True, help="A server that requires authentication; ACLs on every node."
)
def demo(subscribers: int, messages: int, secured: bool) -> None:
    """Run a demo on a local ZooKeeper it starts and stops itself."""
    from .demo import run_demo
    from .testing.local import ZooKeeperNotFound
    from .testing.server import ServerFailed

    try:
        code = run_demo(subscribers=subscribers, messages=messages, secured=secured)
    except (ZooKeeperNotFound, ServerFailed) as exc:  # one line, as dev-server says it
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


main.add_command(queue)
main.add_command(gateway)
