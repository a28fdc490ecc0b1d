"""What the commands of the ``zkpubsub`` program share: the context built
from the global options (hosts, root, timeouts, and credentials from the
environment, never from arguments), plain tables, and option checks that
fail with one line and exit code 2."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import click

from .client import Client
from .config import MAX_INTERVAL, parse_hosts
from .config import MAX_SESSION_TIMEOUT as CLIENT_MAX_SESSION_TIMEOUT
from .errors import ZkPubSubError
from .layout import validate_name
from .observer import Observer
from .security import Security, from_environment
from .workqueue.records import WorkQueueStats

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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


def failure(exc: Exception) -> click.ClickException:
    """What the bus or the server refused, or a payload the library could
    not take: one line naming the error, exit code 1."""
    return click.ClickException(f"{type(exc).__name__}: {exc}")


class Interrupted(click.ClickException):
    """Ctrl-C before a command was done: one line, exit code 130 (128 + SIGINT,
    as a shell reports a program that SIGINT ended)."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted (Ctrl-C) before the command was done")


class Terminated(click.ClickException):
    """SIGTERM before a command was done: one line, exit code 143 (128 +
    SIGTERM, as a shell reports a program that SIGTERM ended)."""

    exit_code = 143

    def __init__(self) -> None:
        super().__init__("terminated (SIGTERM) before the command was done")


def close_or_say(what: str, close: Callable[[], object]) -> None:
    """Close ``what`` on the way out of a command; an error doing so (the
    server stopped answering...) is one line on stderr, not a traceback,
    and leaves the command's exit code as it was."""
    try:
        close()
    except Exception as exc:
        click.echo(
            f"Warning: the {what} could not be closed cleanly: {type(exc).__name__}: {exc}",
            err=True,
        )


class CliContext:
    def __init__(
        self, hosts: str, root: str, session_timeout: float, connect_timeout: float
    ) -> None:
        self.hosts = hosts
        self.root = root
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout
        # what the command made (clients, observers): closed by the main
        # thread when a signal ends a command running apart (``apart``)
        self._made: list[Client | Observer] = []
        self._made_lock = threading.Lock()

    def _keep(self, made: T) -> T:
        with self._made_lock:
            self._made.append(made)  # type: ignore[arg-type]
        return made

    def close_made(self) -> None:
        """Close what the command made, each once more (closing is idempotent)."""
        with self._made_lock:
            made, self._made = list(self._made), []
        for item in made:
            close_or_say(type(item).__name__.lower(), item.close)

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
            raise BadOption(f"credentials: {exc}") from exc

    def client(self, **kwargs: Any) -> Client:
        self._resolvable()
        security = self.security().options()
        try:
            return self._keep(
                Client(
                    self.hosts,
                    root=self.root,
                    session_timeout=self.session_timeout,
                    connect_timeout=self.connect_timeout,
                    **security,
                    **kwargs,
                )
            )
        except ZkPubSubError as exc:
            raise failure(exc) from exc
        except ValueError as exc:
            raise BadOption(str(exc)) from exc

    def observer(self) -> Observer:
        """A read-only view: creates nothing, not even a mistyped root."""
        self._resolvable()
        try:
            security = self.security()
            return self._keep(
                Observer(
                    self.hosts,
                    root=self.root,
                    session_timeout=self.session_timeout,
                    connect_timeout=self.connect_timeout,
                    auth=security.auth,
                    tls=security.tls,
                )
            )
        except ZkPubSubError as exc:
            raise failure(exc) from exc
        except ValueError as exc:
            raise BadOption(str(exc)) from exc


pass_ctx = click.make_pass_decorator(CliContext)

P = ParamSpec("P")


# What signal.signal takes as a handler.
SignalHandler = Callable[[int, Any], Any] | int | None


@contextlib.contextmanager
def signals_kept() -> Iterator[Callable[[Mapping[signal.Signals, SignalHandler]], bool]]:
    """Yields ``install(handlers)``, which installs signal handlers (on the
    main thread only: elsewhere it installs nothing and returns False); on
    leaving, every signal installed for has its first-found handler again
    (the default where that was not Python's)."""
    found: dict[int, Any] = {}

    def install(handlers: Mapping[signal.Signals, SignalHandler]) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False  # signals are the main thread's
        for sig, handler in handlers.items():
            found.setdefault(sig, signal.signal(sig, handler))
        return True

    try:
        yield install
    finally:
        for sig, handler in found.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def apart(
    command: Callable[Concatenate[CliContext, P], None],
) -> Callable[Concatenate[CliContext, P], None]:
    """Run a command's body on a thread of its own while the main thread
    only waits for it (put it below ``pass_ctx``). Ctrl-C and SIGTERM then
    set a flag instead of raising an exception wherever the main thread
    stood: raised inside kazoo, such an exception can be swallowed (the
    command went on, the signal lost) or leave a lock held (closing then
    waited for a thread that never came). On a signal the main thread closes
    what the command made (its requests end with ``ClientClosed``) and the
    command ends with one line and exit code 130 (Ctrl-C) or 143 (SIGTERM).
    For the commands that do not handle signals themselves."""

    @functools.wraps(command)
    def run(ctx: CliContext, /, *args: P.args, **kwargs: P.kwargs) -> None:
        try:
            return until_signalled(
                functools.partial(command, ctx, *args, **kwargs), "zkpubsub-command"
            )
        except Signalled as signalled:
            # The program's own handlers are back: a second Ctrl-C (or
            # SIGTERM) while what the command made closes ends that wait too.
            ctx.close_made()
            raise Interrupted() if signalled.signum == signal.SIGINT else Terminated() from None

    return run


class Signalled(Exception):
    """:func:`until_signalled` gave up on its call at this signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stop_on_sigterm(stop: threading.Event) -> SignalHandler:
    """A SIGTERM handler for a command that ends cleanly on it: the first
    sets ``stop``; a second ends the process at once (closing against a
    server that stopped answering can take longer than whoever sent it
    will wait)."""

    def handler(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return handler


def until_signalled(call: Callable[[], T], name: str) -> T:
    """``call()`` on a thread of its own (:func:`on_a_thread`) while Ctrl-C
    and SIGTERM are only noted: what it returns or raises, or
    :class:`Signalled` at the first of them while it still runs (raised
    once the handlers found are back). Off the main thread, which has no
    signals, ``call()`` runs right there."""
    received: list[int] = []

    def note(signum: int, frame: object) -> None:
        received.append(signum)

    with signals_kept() as install:
        if not install(dict.fromkeys((signal.SIGINT, signal.SIGTERM), note)):
            return call()
        try:
            return on_a_thread(call, name, lambda: bool(received))
        except Unfinished:
            pass
    raise Signalled(received[0])


class Unfinished(Exception):
    """:func:`on_a_thread` gave up waiting for a call still under way."""


def on_a_thread(call: Callable[[], T], name: str, give_up: Callable[[], bool]) -> T:
    """``call()`` on a daemon thread of its own while this thread waits (so
    that a signal handled here is never raised inside kazoo): what it returns
    or raises; :class:`Unfinished` as soon as ``give_up()`` is true while it
    still runs (a call done by then keeps its outcome)."""
    got: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            got.append(call())
        except BaseException as exc:  # handed to the waiting thread
            failed.append(exc)

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    while worker.is_alive():
        if give_up():
            raise Unfinished
        worker.join(0.05)
    if failed:
        raise failed[0]
    return got[0]


# The longest any seconds option may be: far below what the waits below it
# take (threading.TIMEOUT_MAX), and longer than anyone means to wait.
MAX_SECONDS: Final = MAX_INTERVAL  # a year
# --session-timeout: ZooKeeper grants from 2 to 20 ticks of its tickTime
# (4 to 40 s by default) whatever is asked, but the client also waits this
# long (split among the servers) for a connection and its handshake; and the
# wire takes milliseconds below 2**31.
MIN_SESSION_TIMEOUT: Final = 0.1
MAX_SESSION_TIMEOUT: Final = CLIENT_MAX_SESSION_TIMEOUT  # a day, as a Client takes

_SPANS: Final = {MAX_SECONDS: "a year", MAX_SESSION_TIMEOUT: "a day"}


def _seconds(value: float) -> str:
    span = _SPANS.get(value)
    return f"{value:.0f} seconds ({span})" if span else f"{value:g} seconds"


def seconds_option(flag: str, default: float, help: str) -> Callable[[F], F]:
    """A ``--flag S`` option of a positive number of seconds, its default shown."""
    return click.option(
        flag, type=float, default=default, show_default=True, callback=positive(flag), help=help
    )


def positive(
    name: str, high: float = MAX_SECONDS, low: float | None = None
) -> Callable[[click.Context, click.Parameter, float | None], float | None]:
    """A check that a seconds option is above 0 (or from ``low``) and at most
    ``high`` (an option left unset passes)."""

    def check(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
        if value is None:
            return value
        if not value > 0:
            raise BadOption(f"{name} must be a positive number of seconds, not {value:g}")
        if not value <= high or (low is not None and value < low):
            span = f"from {low:g} to" if low is not None else "at most"
            raise BadOption(f"{name} must be {span} {_seconds(high)}, not {value:g}")
        return value

    return check


def not_negative(
    name: str, high: float = MAX_SECONDS
) -> Callable[[click.Context, click.Parameter, float | None], float | None]:
    """A check that a seconds option is 0 or more and at most ``high`` (an
    option left unset passes)."""

    def check(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
        if value is None:
            return value
        if not value >= 0:
            raise BadOption(f"{name} must be 0 or more seconds, not {value:g}")
        if not value <= high:
            raise BadOption(f"{name} must be at most {_seconds(high)}, not {value:g}")
        return value

    return check


def name_of(kind: str) -> Callable[[click.Context, click.Parameter, T], T]:
    """A check that an argument (or each value of a repeated option) can be
    the name of a ``kind`` (a topic, a queue): the library's own check, made
    before anything is connected."""

    def check(_ctx: click.Context, _param: click.Parameter, value: T) -> T:
        names = value if isinstance(value, tuple) else (value,)
        for one in names:
            try:
                validate_name(one, kind)
            except (TypeError, ValueError) as exc:
                raise BadOption(str(exc)) from exc
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
            raise BadOption(f"--header: {item!r} is not KEY=VALUE")
        headers[key] = value
    return headers


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no such number)")


def json_arguments(texts: Sequence[str], what: str) -> list[Any]:
    """Each of ``texts`` as strict JSON (no NaN or Infinity, which no other
    JSON reader takes); a bad one is one line, exit code 2."""
    out = []
    for n, text in enumerate(texts, 1):
        try:
            out.append(json.loads(text, parse_constant=_no_constant))
        except ValueError as exc:
            raise BadOption(f"{what} {n}: not JSON: {exc}") from exc
        except RecursionError:
            raise BadOption(f"{what} {n}: not JSON: nested too deeply") from None
    return out


def read_or_fail(read: Callable[[], T]) -> T:
    try:
        return read()
    except ZkPubSubError as exc:
        raise failure(exc) from exc
    except ValueError as exc:
        raise BadOption(str(exc)) from exc


def work_queue_table(queues: Sequence[WorkQueueStats]) -> str:
    return table(
        ["WORK QUEUE", "READY", "RESERVED", "DEAD", "WORKERS"],
        [(s.name, s.ready, s.reserved, s.dead, s.workers) for s in queues],
    )
