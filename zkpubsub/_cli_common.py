"""What the commands of the ``zkpubsub`` program share: the context built
from the global options (hosts, root, timeouts, and credentials from the
environment, never from arguments), plain tables, and option checks that
fail with one line and exit code 2."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from .client import Client
from .config import parse_hosts
from .errors import ZkPubSubError
from .observer import Observer
from .security import Security, from_environment
from .workqueue.records import WorkQueueStats

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


def positive(
    name: str,
) -> Callable[[click.Context, click.Parameter, float | None], float | None]:
    """A check that a seconds option is above 0 (an option left unset passes)."""

    def check(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise BadOption(f"{name} must be a positive number of seconds, not {value:g}")
        return value

    return check


def not_negative(
    name: str,
) -> Callable[[click.Context, click.Parameter, float | None], float | None]:
    def check(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
        if value is not None and not value >= 0:
            raise BadOption(f"{name} must be 0 or more seconds, not {value:g}")
        return value

    return check


def whole(
    name: str, low: int, high: int | None = None
) -> Callable[[click.Context, click.Parameter, int], int]:
    """A check that an integer option lies from ``low`` to ``high``."""

    def check(_ctx: click.Context, _param: click.Parameter, value: int) -> int:
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise BadOption(f"{name} must be {span}, not {value}")
        return value

    return check


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    headers = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--header")
        headers[key] = value
    return headers


def read_or_fail(read: Callable[[], T]) -> T:
    try:
        return read()
    except ZkPubSubError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    except ValueError as exc:
        raise BadOption(str(exc)) from exc


def work_queue_table(queues: Sequence[WorkQueueStats]) -> str:
    return table(
        ["WORK QUEUE", "READY", "RESERVED", "DEAD", "WORKERS"],
        [(s.name, s.ready, s.reserved, s.dead, s.workers) for s in queues],
    )
