"""Helper processes of the workloads, and the subscriber child.

:class:`ChildProcess` is ``python -m MODULE COMMAND`` with the connection
options every child takes (:func:`child_parser`), writing JSON lines;
:class:`SubscriberProcess` is a recording subscriber in a child process,
for tests that kill one with SIGKILL. ``python -m
zkpubsub.testing.children subscribe ...`` is that child.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from ..client import Client
from ..layout import Layout
from ..message import Message
from .history import DeliveryRecord, Key, key_of
from .ledger import node_keys
from .queues import queue_entries

__all__ = ["ChildProcess", "SubscriberProcess", "child_parser", "join_threads", "tag"]

logger = logging.getLogger(__name__)


def join_threads(threads: list[threading.Thread], limit: float, what: str) -> None:
    """Join ``threads`` within ``limit`` seconds in all; ``TimeoutError``
    naming those still running after it, with where each of them is."""
    deadline = time.monotonic() + limit
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    if alive:
        frames = sys._current_frames()
        where = "".join(
            f"\n--- {t.name}:\n" + "".join(traceback.format_stack(frames[t.ident]))
            for t in alive
            if t.ident in frames
        )
        names = [t.name for t in alive]
        raise TimeoutError(f"{what} still running after {limit:g}s: {names}{where}")


def tag() -> str:
    """A short random suffix for client names."""
    return uuid.uuid4().hex[:6]


class ChildProcess:
    """A helper process of a workload: ``python -m MODULE COMMAND`` with the
    connection options every child takes (see :func:`child_parser`), writing
    JSON lines to :attr:`out` (in ``directory``, or a new temporary one).
    :meth:`kill` is SIGKILL, :meth:`pause` / :meth:`resume` SIGSTOP and
    SIGCONT."""

    def __init__(
        self,
        module: str,
        command: str,
        name: str,
        *,
        hosts: str,
        root: str,
        session_timeout: float,
        options: list[str],
        directory: str | os.PathLike[str] | None,
    ) -> None:
        if directory is None:
            # a folder of its own, removed when this process exits
            directory = tempfile.mkdtemp(prefix=f"zkpubsub-{command}-")
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
        base = Path(directory)
        self.out = base / f"{name}.jsonl"
        self._args = [
            *(sys.executable, "-m", module, command),
            *("--hosts", hosts, "--root", root, "--session-timeout", str(session_timeout)),
            *options,
            *("--out", str(self.out)),
        ]
        self.process: subprocess.Popen[Any] | None = None

    def _spawn(
        self, *, fresh: bool = True, extra: list[str] | None = None, **popen: Any
    ) -> subprocess.Popen[Any]:
        """Start it (stdout piped, stderr dropped) with an empty output file,
        or, unless ``fresh``, appending to the one of its previous run.
        Give it ``stdin=subprocess.PIPE`` and have it stop at the end of
        its input, so that it does not outlive this process."""
        if fresh:
            self.out.write_bytes(b"")
        self._close_pipe()
        self.process = subprocess.Popen(
            [*self._args, *(extra or [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            **popen,
        )
        return self.process

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
        self._close_pipe()

    def _close_pipe(self) -> None:
        """Close the pipes to and from the last process started, once it
        has ended."""
        process = self.process
        if process is None or process.poll() is None:
            return
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def lines(self, offset: int = 0) -> tuple[list[bytes], int]:
        """The complete lines written from byte ``offset`` on, and the
        offset after them (a line being written is left for later)."""
        try:
            with open(self.out, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return [], offset
        end = data.rfind(b"\n") + 1
        return data[:end].splitlines(), offset + end


def child_parser(
    prog: str, command: str, help: str
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """A child's argument parser and the one of its ``command``, which has
    the options every :class:`ChildProcess` passes; the caller adds its own
    to the second and parses with the first."""
    parser = argparse.ArgumentParser(prog=prog)
    child = parser.add_subparsers(dest="command", required=True).add_parser(command, help=help)
    child.add_argument("--hosts", required=True)
    child.add_argument("--root", required=True)
    child.add_argument("--session-timeout", type=float, default=4.0)
    child.add_argument("--out", required=True)
    return parser, child


class SubscriberProcess(ChildProcess):
    """A subscriber running in a child process that writes each delivery
    to a file as a JSON line (``durable``: a durable subscription)."""

    def __init__(
        self,
        hosts: str,
        root: str,
        topic: str,
        client_id: str,
        *,
        session_timeout: float = 4.0,
        durable: bool = False,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            "zkpubsub.testing.children",
            "subscribe",
            client_id,
            hosts=hosts,
            root=root,
            session_timeout=session_timeout,
            options=[
                *("--topic", topic, "--client-id", client_id),
                *(["--durable"] if durable else []),
            ],
            directory=directory,
        )
        self.client_id = client_id
        self.topic = topic
        self._read = 0

    def start(self, timeout: float = 60.0) -> float:
        """Start it; returns when it has subscribed (the time it did)."""
        return float(self._start(timeout, fresh=True, extra=[])["at"])

    def restart(self, *, truncate_backlog: int = 0, timeout: float = 60.0) -> list[Key]:
        """Start it again after :meth:`kill` (same client id, its output file
        kept). With ``truncate_backlog`` it deletes that many of the oldest
        nodes of its queue once registered, before subscribing: a faulty
        subscriber for the checker to catch. Returns the keys it deleted."""
        extra = ["--truncate-backlog", str(truncate_backlog)] if truncate_backlog else []
        ready = self._start(timeout, fresh=False, extra=extra)
        return [(str(p), int(q)) for p, q in ready.get("truncated", [])]

    def _start(self, timeout: float, *, fresh: bool, extra: list[str]) -> dict[str, Any]:
        # stdin: a pipe nothing is written to; the child stops when it
        # closes, that is when this process ends, however it ends
        process = self._spawn(fresh=fresh, extra=extra, stdin=subprocess.PIPE)
        result: list[dict[str, Any]] = []

        def read_ready() -> None:
            assert process.stdout is not None
            word, _, rest = process.stdout.readline().decode().partition(" ")
            if word == "ready":
                result.append(json.loads(rest))

        reader = threading.Thread(target=read_ready, daemon=True)
        reader.start()
        reader.join(timeout)
        if not result:
            self.kill()
            raise TimeoutError(f"subscriber process {self.client_id} did not subscribe in time")
        return result[0]

    def collect_new(self) -> list[DeliveryRecord]:
        """Deliveries written since the last call (complete lines only)."""
        lines, self._read = self.lines(self._read)
        out = []
        for line in lines:
            doc = json.loads(line)
            out.append(
                DeliveryRecord(
                    self.client_id, doc["topic"], key_of(doc["payload"]), doc["id"], doc["at"]
                )
            )
        return out


def _subscribe_main(args: argparse.Namespace) -> None:
    # Not a cleaner candidate: the audit counts the candidates of the
    # cleaners running in the scenario's own process.
    client = Client(
        args.hosts,
        root=args.root,
        client_id=args.client_id,
        session_timeout=args.session_timeout,
        cleaner=False,
    )
    out = open(args.out, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    lock = threading.Lock()

    def on_message(message: Message) -> None:
        line = json.dumps(
            {
                "topic": message.topic,
                "payload": message.payload,
                "id": message.id,
                "at": time.time(),
            }
        )
        with lock:
            out.write(line.encode() + b"\n")

    truncated = _truncate_backlog(args) if args.truncate_backlog else []
    client.subscribe(args.topic, on_message, durable=args.durable)
    ready = {"at": time.time(), "truncated": truncated}
    sys.stdout.write(f"ready {json.dumps(ready)}\n")
    sys.stdout.flush()
    # Until the parent's end of stdin closes: the parent ended (killed, it
    # could not kill us first). Go as a killed subscriber goes, at once.
    sys.stdin.buffer.read()
    os._exit(0)


def _truncate_backlog(args: argparse.Namespace) -> list[Key]:
    """The injected fault: delete the oldest ``--truncate-backlog`` nodes of
    this subscriber's queue (through a connection of its own); returns the
    keys of the messages they held."""
    from kazoo.client import KazooClient

    queue = Layout(args.root).queue(args.client_id, args.topic)
    zk = KazooClient(hosts=args.hosts, timeout=10.0)
    zk.start(timeout=30)
    try:
        names = queue_entries(zk, args.root, args.client_id, args.topic) or []
        messages = [n for n in names if n.rsplit("/", 1)[-1].startswith("m")]
        keys: list[Key] = []
        for name in messages[: args.truncate_backlog]:
            data, _ = zk.get(f"{queue}/{name}")
            keys.extend(node_keys(name, data))
            zk.delete(f"{queue}/{name}")
        return keys
    finally:
        zk.stop()
        zk.close()


def main(argv: list[str] | None = None) -> None:
    parser, sub = child_parser(
        "python -m zkpubsub.testing.children",
        "subscribe",
        "subscribe and log each delivery as JSON",
    )
    sub.add_argument("--topic", required=True)
    sub.add_argument("--client-id", required=True)
    sub.add_argument("--durable", action="store_true", help="a durable subscription")
    sub.add_argument(
        "--truncate-backlog",
        type=int,
        default=0,
        metavar="N",
        help="a faulty subscriber: delete the N oldest nodes of its queue before subscribing",
    )
    _subscribe_main(parser.parse_args(argv))


if __name__ == "__main__":
    main()
