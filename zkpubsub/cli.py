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
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from .client import Client
from .config import (
    DEFAULT_CLEANER_INTERVAL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT,
    parse_hosts,
)
from .errors import ZkPubSubError
from .gateway.settings import (
    DEFAULT_ACK_DEADLINE,
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LEASE,
    DEFAULT_MAX_WAIT,
)
from .layout import DEFAULT_ROOT, validate_root
from .message import Message
from .observer import Observer
from .security import Security, from_environment
from .subscription import Subscription
from .workqueue.records import WorkQueueStats

DEFAULT_HOSTS = "127.0.0.1:2181"

T = TypeVar("T")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, columns as wide as their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class BadOption(click.ClickException):
    """A bad value on the command line: one line, exit code 2."""

    exit_code = 2


class CliContext:
    def __init__(
        self, hosts: str, root: str, session_timeout: float, connect_timeout: float
    ) -> None:
        self.hosts = hosts
        self.root = root
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout

    def _resolvable(self) -> None:
        servers, _ = parse_hosts(self.hosts)
        for host, port in servers:
            try:
                socket.getaddrinfo(host, port)
                return
            except OSError:
                continue
        names = ", ".join(host for host, _ in servers)
        raise BadOption(f"--hosts: cannot resolve {names}")

    def security(self) -> Security:
        """The bus credentials of the environment (never from arguments)."""
        try:
            return from_environment()
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise click.ClickException(f"credentials: {exc}") from exc

    def client(self, **kwargs: Any) -> Client:
        self._resolvable()
        security = self.security().options()
        try:
            return Client(
                self.hosts,
                root=self.root,
                session_timeout=self.session_timeout,
                connect_timeout=self.connect_timeout,
                **security,
                **kwargs,
            )
        except ZkPubSubError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            raise BadOption(str(exc)) from exc

    def observer(self) -> Observer:
        """A read-only view: creates nothing, not even a mistyped root."""
        self._resolvable()
        try:
            security = self.security()
            return Observer(
                self.hosts,
                root=self.root,
                session_timeout=self.session_timeout,
                connect_timeout=self.connect_timeout,
                auth=security.auth,
                tls=security.tls,
            )
        except ZkPubSubError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


pass_ctx = click.make_pass_decorator(CliContext)


_standalone = False  # run as the program: its logging is ours to set up


def run() -> None:
    """The ``zkpubsub`` program."""
    global _standalone
    _standalone = True
    main()


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


def _positive(name: str) -> Callable[[click.Context, click.Parameter, float], float]:
    def check(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
        if not value > 0:
            raise BadOption(f"{name} must be a positive number of seconds, not {value:g}")
        return value

    return check


@click.group()
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
    callback=_positive("--session-timeout"),
)
@click.option(
    "--connect-timeout",
    default=DEFAULT_CONNECT_TIMEOUT,
    show_default=True,
    type=float,
    envvar="ZKPUBSUB_CONNECT_TIMEOUT",
    callback=_positive("--connect-timeout"),
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
@click.option("--port", default=2181, show_default=True, type=int, help="Client port (0: any).")
@click.option("--size", default=1, show_default=True, type=int, help="Nodes (1: standalone).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Keep data here.")
def dev_server(port: int, size: int, data_dir: str | None) -> None:
    """Run a local ZooKeeper in the foreground until Ctrl-C."""
    from .testing.server import ServerFailed, ZooKeeperCluster, ZooKeeperNotFound, free_ports

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
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if not all(n.running for n in cluster.nodes):
                raise click.ClickException("a ZooKeeper process exited; see its server.log")
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


def _parse_headers(values: Sequence[str]) -> dict[str, str]:
    headers = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--header")
        headers[key] = value
    return headers


@main.command()
@click.argument("topic")
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
def publish(
    ctx: CliContext,
    topic: str,
    messages: Sequence[str],
    header: Sequence[str],
    fmt: str,
    require_subscribers: bool,
) -> None:
    """Publish MESSAGES to TOPIC, one message each."""
    headers = _parse_headers(header)
    payloads: list[Any] = []
    for text in messages:
        if fmt == "json":
            try:
                payloads.append(json.loads(text))
            except ValueError as exc:
                raise click.BadParameter(f"not JSON: {exc}", param_hint="MESSAGES") from exc
        else:
            payloads.append(text)
    with ctx.client(serializer="json" if fmt == "json" else None, cleaner=False) as client:
        try:
            for payload in payloads:
                receipt = client.publish(
                    topic, payload, headers=headers, require_subscribers=require_subscribers
                )
                click.echo(f"{receipt.message_id}  {receipt.subscribers} subscriber(s)")
        except (ZkPubSubError, ValueError, TypeError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


def _show(msg: Message) -> str:
    payload = msg.payload
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "backslashreplace")
    text = payload if isinstance(payload, str) else json.dumps(payload, default=repr)
    headers = f" {dict(msg.headers)}" if msg.headers else ""
    return f"[{msg.topic}] {text}{headers}"


@main.command()
@click.argument("topic")
@click.option("--count", "-n", type=int, default=0, help="Stop after N messages (0: never).")
@click.option("--timeout", type=float, default=None, help="Stop after S seconds without one.")
@click.option("--client-id", default=None, help="A durable id that keeps its backlog.")
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
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with ctx.client(client_id=client_id) as client:
            try:
                sub = client.subscribe(topic)
            except (ZkPubSubError, ValueError) as exc:
                raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
            click.echo(f"subscribed to {topic!r} as {client.client_id}", err=True)
            with sub:
                _print_messages(sub, stop, count, timeout, json_lines)
    except KeyboardInterrupt:
        pass  # Ctrl-C: the client closed on the way out


def _print_messages(
    sub: Subscription, stop: threading.Event, count: int, timeout: float | None, json_lines: bool
) -> None:
    seen = 0
    last = time.monotonic()
    while not stop.is_set() and (not count or seen < count):
        msg = sub.get(timeout=0.2)
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
def stats(ctx: CliContext, as_json: bool) -> None:
    """Clients, topics, subscriber queues and work queues (reads only)."""
    with ctx.observer() as observer:
        snapshot = observer.stats()
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
        click.echo(_work_queue_table(snapshot.work_queues))


@main.command()
@click.option(
    "--interval",
    type=float,
    default=2.0,
    show_default=True,
    callback=_positive("--interval"),
    help="Seconds between refreshes (and between the two looks of --once).",
)
@click.option("--once", is_flag=True, help="Print one view (with rates) and exit.")
@pass_ctx
def top(ctx: CliContext, interval: float, once: bool) -> None:
    """A live view of clients, topics, subscribers and work queues (reads only)."""
    try:
        from .top import Sampler, print_frame, show_live
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ctx.observer() as observer:
        sampler = Sampler(observer)
        frame = _read(sampler.sample)
        if once:
            stop.wait(interval)
            print_frame(_read(sampler.sample), sys.stdout)
            return
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends it
            show_live(frame, lambda: _read(sampler.sample), interval, stop)


def _work_queue_table(queues: Sequence[WorkQueueStats]) -> str:
    return table(
        ["WORK QUEUE", "READY", "RESERVED", "DEAD", "WORKERS"],
        [(s.name, s.ready, s.reserved, s.dead, s.workers) for s in queues],
    )


@main.command()
@click.option(
    "--grace",
    type=float,
    default=None,
    envvar="ZKPUBSUB_CLEANER_GRACE",
    help="Seconds a client must be gone before its queues go "
    "(default: max(60, 2 x session timeout); at least the session timeout).",
)
@click.option(
    "--interval",
    type=float,
    default=DEFAULT_CLEANER_INTERVAL,
    show_default=True,
    envvar="ZKPUBSUB_CLEANER_INTERVAL",
    help="Seconds between sweeps (it also sweeps when clients come and go).",
)
@click.option("--client-id", default=None, envvar="ZKPUBSUB_CLEANER_ID")
@pass_ctx
def cleaner(ctx: CliContext, grace: float | None, interval: float, client_id: str | None) -> None:
    """Run a cleaner candidate in the foreground (run two or three)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ctx.client(client_id=client_id, cleaner_grace=grace, cleaner_interval=interval) as client:
        runner = client.start_cleaner()
        click.echo(
            f"cleaner {client.client_id} standing for election (grace {runner.grace:g}s, "
            f"interval {runner.interval:g}s)"
        )
        leading = False
        last: tuple[int, int] = (0, 0)
        try:
            while not stop.wait(1.0):
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
        except KeyboardInterrupt:
            pass


@main.group()
def queue() -> None:
    """Work queues: put, reserve, stats, dead letters, replay."""


def _payloads(messages: Sequence[str], fmt: str) -> list[Any]:
    if fmt == "text":
        return list(messages)
    out = []
    for text in messages:
        try:
            out.append(json.loads(text))
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="PAYLOADS") from exc
    return out


@queue.command("put")
@click.argument("name")
@click.argument("payloads", nargs=-1, required=True)
@click.option(
    "--priority", "-p", default=100, show_default=True, type=int, help="0-999, lower first."
)
@click.option("--header", "-H", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--wait-result",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Put one item wanting a result and wait for it.",
)
@pass_ctx
def queue_put(
    ctx: CliContext,
    name: str,
    payloads: Sequence[str],
    priority: int,
    header: Sequence[str],
    fmt: str,
    wait_result: float | None,
) -> None:
    """Put PAYLOADS into queue NAME, one item each."""
    items = _payloads(payloads, fmt)
    headers = _parse_headers(header)
    if wait_result is not None and len(items) != 1:
        raise click.BadParameter("--wait-result takes exactly one payload")
    with ctx.client(serializer="json" if fmt == "json" else None, cleaner=False) as client:
        q = client.queue(name)
        try:
            if wait_result is not None:
                ticket = q.put(items[0], priority=priority, headers=headers, want_result=True)
                click.echo(ticket.id, err=True)
                click.echo(json.dumps(ticket.wait(timeout=wait_result), default=repr))
                return
            for item_id in q.put_many(items, priority=priority, headers=headers):
                click.echo(item_id)
        except (ZkPubSubError, ValueError, TypeError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@queue.command("reserve")
@click.argument("name")
@click.option("--timeout", type=float, default=10.0, show_default=True)
@click.option("--release", is_flag=True, help="Give the item back instead of acking it.")
@pass_ctx
def queue_reserve(ctx: CliContext, name: str, timeout: float, release: bool) -> None:
    """Take one item from queue NAME, print it, and ack it (or release it)."""
    with ctx.client(cleaner=False) as client:
        try:
            item = client.queue(name).reserve(timeout=timeout)
            if item is None:
                raise click.ClickException(f"no item in {name!r} within {timeout:g}s")
            record = {
                "id": item.id,
                "payload": item.payload,
                "priority": item.priority,
                "attempts": item.attempts,
                "headers": item.headers,
            }
            click.echo(json.dumps(record, default=repr))
            if release:
                item.release()
            else:
                item.ack()
        except ZkPubSubError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@queue.command("list")
@pass_ctx
def queue_list(ctx: CliContext) -> None:
    """The work queues, with their counts (reads only)."""
    with ctx.observer() as observer:
        queues = [observer.queue_stats(name) for name in observer.queues()]
    if not queues:
        click.echo(f"no work queues under {ctx.root}")
        return
    click.echo(_work_queue_table(queues))


@queue.command("stats")
@click.argument("name")
@pass_ctx
def queue_stats(ctx: CliContext, name: str) -> None:
    """Ready, reserved and dead items of queue NAME, and its workers (reads only)."""
    with ctx.observer() as observer:
        s = _read(lambda: observer.queue_stats(name))
    click.echo(_work_queue_table([s]))


def _read(read: Callable[[], T]) -> T:
    try:
        return read()
    except ZkPubSubError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    except ValueError as exc:
        raise BadOption(str(exc)) from exc


@queue.command("dead")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def queue_dead(ctx: CliContext, name: str, as_json: bool) -> None:
    """List the dead letters of queue NAME (reads only)."""
    with ctx.observer() as observer:
        dead = _read(lambda: observer.dead(name))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": d.id,
                        "payload": d.payload,
                        "priority": d.priority,
                        "attempts": d.attempts,
                        "reason": d.reason,
                        "died_at": d.died_at,
                    }
                    for d in dead
                ],
                default=repr,
                indent=2,
            )
        )
        return
    if not dead:
        click.echo(f"no dead letters in {name!r}")
        return
    rows = [
        (d.id, d.attempts, json.dumps(d.payload, default=repr)[:40], d.reason[:60]) for d in dead
    ]
    click.echo(table(["ID", "ATTEMPTS", "PAYLOAD", "REASON"], rows))


@queue.command("replay")
@click.argument("name")
@click.option("--id", "ids", multiple=True, help="Only these items (repeatable).")
@pass_ctx
def queue_replay(ctx: CliContext, name: str, ids: Sequence[str]) -> None:
    """Put dead letters of queue NAME back as new items."""
    with ctx.client(cleaner=False) as client:
        count = client.queue(name).replay(list(ids) or None)
    click.echo(f"replayed {count} item(s)")


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
@click.option("--hosts", "gateway_hosts", default=None, help="Overrides the global --hosts.")
@click.option("--root", "gateway_root", default=None, help="Overrides the global --root.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="ZKPUBSUB_GATEWAY_HOST",
    help="Address to listen on (anything but loopback needs --tokens).",
)
@click.option("--port", default=8080, show_default=True, type=int, envvar="ZKPUBSUB_GATEWAY_PORT")
@click.option(
    "--tokens",
    type=click.Path(exists=True, dir_okay=False),
    envvar="ZKPUBSUB_GATEWAY_TOKENS",
    help="Bearer tokens file (JSON, see docs/gateway.md). Without it: no auth, loopback only.",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Listener TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Listener TLS.")
@click.option(
    "--ack-deadline",
    type=float,
    default=DEFAULT_ACK_DEADLINE,
    show_default=True,
    callback=_positive("--ack-deadline"),
    help="Seconds before a pulled, unacked message is handed out again.",
)
@click.option(
    "--lease",
    type=float,
    default=DEFAULT_LEASE,
    show_default=True,
    callback=_positive("--lease"),
    help="Default lease (visibility timeout) of a reserved work item.",
)
@click.option(
    "--max-wait",
    type=float,
    default=DEFAULT_MAX_WAIT,
    show_default=True,
    callback=_positive("--max-wait"),
    help="Longest long poll (pull, reserve, results).",
)
@click.option(
    "--idle-timeout",
    type=float,
    default=DEFAULT_IDLE_TIMEOUT,
    show_default=True,
    callback=_positive("--idle-timeout"),
    help="Let go of a subscription unused this long (the cleaner's grace starts then).",
)
@click.option(
    "--idempotency-ttl",
    type=float,
    default=DEFAULT_IDEMPOTENCY_TTL,
    show_default=True,
    callback=_positive("--idempotency-ttl"),
    help="Seconds an Idempotency-Key's first answer is kept (in this process).",
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
    idempotency_ttl: float,
) -> None:
    """Serve the bus over HTTP (needs the gateway extra)."""
    try:
        from .gateway import GatewaySettings, load_tokens, serve
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
            idempotency_ttl=idempotency_ttl,
        )
    except (OSError, ValueError) as exc:
        raise BadOption(str(exc)) from exc
    scheme = "https" if tls_cert else "http"
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"zkpubsub gateway on {scheme}://{shown}:{port} (API docs at /docs)", err=True)
    try:
        serve(settings, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)
    except ValueError as exc:
        raise BadOption(str(exc)) from exc


@main.command()
@click.option("--subscribers", default=3, show_default=True, type=int)
@click.option("--messages", default=300, show_default=True, type=int)
@click.option(
    "--secured", is_flag=True, help="A server that requires authentication; ACLs on every node."
)
def demo(subscribers: int, messages: int, secured: bool) -> None:
    """Run a demo on a local ZooKeeper it starts and stops itself."""
    from .demo import run_demo

    sys.exit(run_demo(subscribers=subscribers, messages=messages, secured=secured))
