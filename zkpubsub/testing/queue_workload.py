"""A work-queue workload that records everything it does.

:class:`QueueWorkload` runs producer threads (each on a client of its own,
putting ``{"p": <producer>, "s": <seq>}`` one item at a time) and worker
threads (each a client and a :class:`~zkpubsub.WorkQueue` of its own:
reserve, handle, ack), and fills a
:class:`~zkpubsub.testing.queue_history.QueueRecorder`.
:class:`WorkerProcess` is a worker in a child process, driven one step at a
time (reserve, handle, ack, release) so that a test can kill it with
SIGKILL, or stop it with SIGSTOP, between any two steps.

``python -m zkpubsub.testing.queue_workload work ...`` is that child.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from ..client import Client
from ..workqueue import Item, WorkQueue
from .children import ChildProcess, child_parser, join_threads, tag
from .history import describe_error, key_of, payload_for
from .ledger import Ledger, replay
from .queue_checker import check_queue
from .queue_history import (
    HoldRecord,
    QueueHistory,
    QueueRecorder,
    finish_of,
    hold_from_doc,
    hold_to_doc,
)
from .txnlog import ClusterLog
from .workload import ClientPool

__all__ = [
    "HandleHook",
    "QueueWorkload",
    "WorkerProcess",
    "main",
]


logger = logging.getLogger(__name__)

# Called in a worker thread with the item it just reserved, before the ack.
HandleHook = Callable[[Item], None]


class QueueWorkload(ClientPool):
    """Producers and workers on one work queue, all recorded.

    Each producer puts one item at a time, at most ``rate`` per second if
    given, until :meth:`stop_producing` or ``max_items``. Each worker
    reserves up to ``prefetch`` items, "handles" each (``hook``, then a
    ``hold`` of so many seconds) and acks it, until :meth:`stop_workers`.
    ``log`` reads the servers' transaction logs (:meth:`ledger`).
    """

    def __init__(
        self,
        hosts: str,
        root: str,
        *,
        queue: str = "faults",
        session_timeout: float = 4.0,
        request_timeout: float = 20.0,
        put_timeout: float = 20.0,
        rate: float | None = None,
        max_items: int | None = None,
        max_attempts: int = 1000,
        recorder: QueueRecorder | None = None,
        log: ClusterLog | None = None,
    ) -> None:
        self.recorder = recorder or QueueRecorder()
        self.log = log
        super().__init__(
            hosts,
            root,
            session_timeout=session_timeout,
            request_timeout=request_timeout,
            notes=self.recorder,
        )
        self.queue = queue
        self.put_timeout = put_timeout
        self.rate = rate
        self.max_items = max_items
        self.max_attempts = max_attempts
        self.producers: dict[str, Client] = {}
        self.workers: dict[str, Client] = {}
        self.processes: dict[str, WorkerProcess] = {}
        self._producer_threads: list[threading.Thread] = []
        self._worker_threads: list[threading.Thread] = []
        self._stop_producing = threading.Event()
        self._stop_workers = threading.Event()

    # -- clients ---------------------------------------------------------------------------

    def add_producer(self, name: str | None = None, *, hosts: str | None = None) -> Client:
        name = name or f"prod-{len(self.producers) + 1}-{tag()}"
        client = self.client(name, hosts)
        self.producers[name] = client
        return client

    def add_worker(
        self,
        name: str | None = None,
        *,
        hosts: str | None = None,
        prefetch: int = 1,
        hold: float = 0.0,
        hook: HandleHook | None = None,
    ) -> Client:
        """A worker thread on a client of its own, started at once."""
        name = name or f"worker-{len(self.workers) + len(self.processes) + 1}-{tag()}"
        client = self.client(name, hosts)
        self.workers[name] = client
        thread = threading.Thread(
            target=self._work,
            args=(name, client, prefetch, hold, hook),
            name=f"queue-workload-{name}",
            daemon=True,
        )
        self._worker_threads.append(thread)
        thread.start()
        return client

    def add_worker_process(
        self, name: str | None = None, *, hosts: str | None = None
    ) -> WorkerProcess:
        """A worker in a child process, driven step by step."""
        name = name or f"workproc-{len(self.workers) + len(self.processes) + 1}-{tag()}"
        proc = WorkerProcess(
            hosts or self.hosts,
            self.root,
            self.queue,
            name,
            session_timeout=self.session_timeout,
            max_attempts=self.max_attempts,
        )
        proc.start()
        self.processes[name] = proc
        return proc

    # -- producing ------------------------------------------------------------------------

    def start_producing(self) -> None:
        for name, client in self.producers.items():
            t = threading.Thread(
                target=self._produce,
                args=(name, client),
                name=f"queue-workload-{name}",
                daemon=True,
            )
            t.start()
            self._producer_threads.append(t)

    def _produce(self, name: str, client: Client) -> None:
        queue = client.queue(self.queue, max_attempts=self.max_attempts)
        seq = 0
        pause = 1.0 / self.rate if self.rate else 0.0
        while not self._stop_producing.is_set():
            if self.max_items is not None and seq >= self.max_items:
                return
            seq += 1
            self.put_one(name, seq, queue)
            if pause:
                self._stop_producing.wait(pause)

    def put_one(self, name: str, seq: int, queue: WorkQueue | None = None) -> str | None:
        """Put item ``seq`` of producer ``name``, recorded; its id or None."""
        if queue is None:
            queue = self.producers[name].queue(self.queue, max_attempts=self.max_attempts)
        started = time.time()
        try:
            item_id = queue.put(payload_for(name, seq), timeout=self.put_timeout)
        except Exception as exc:
            self.recorder.put(name, seq, started, error=exc)
            logger.info("put %s/%d: %s", name, seq, exc)
            self._stop_producing.wait(0.05)
            return None
        self.recorder.put(name, seq, started, item_id=item_id)
        return item_id

    @property
    def producing(self) -> bool:
        """Whether a producer is still putting (``max_items`` not reached)."""
        return any(t.is_alive() for t in self._producer_threads)

    def stop_producing(self, timeout: float | None = None) -> None:
        self._stop_producing.set()
        join_threads(
            self._producer_threads,
            timeout if timeout is not None else self.put_timeout + 30,
            "producers",
        )

    # -- working ---------------------------------------------------------------------------

    def _work(
        self, name: str, client: Client, prefetch: int, hold: float, hook: HandleHook | None
    ) -> None:
        queue = client.queue(self.queue, max_attempts=self.max_attempts)
        recorder, stop = self.recorder, self._stop_workers
        try:
            while not stop.is_set():
                try:
                    items = queue.reserve_many(prefetch, timeout=0.5)
                except Exception as exc:  # the ensemble is down: try again
                    logger.info("reserve by %s: %s", name, exc)
                    stop.wait(0.1)
                    continue
                # every item of the batch is held from now on, not from when
                # its turn comes: record them all at once
                at = time.time()
                held = [
                    (
                        item,
                        recorder.reserved(name, item.id, key_of(item.payload), item.attempts, at),
                    )
                    for item in items
                ]
                for item, h in held:
                    try:
                        if hook is not None:
                            hook(item)
                        if hold:
                            time.sleep(hold)
                    except Exception as exc:
                        try:
                            item.release(exc)
                        except Exception as err:
                            recorder.finished(h, finish_of("release", err), repr(err))
                        else:
                            recorder.finished(h, "released", repr(exc))
                        continue
                    recorder.handled(h)
                    try:
                        item.ack()
                    except Exception as exc:
                        recorder.finished(h, finish_of("ack", exc), describe_error(exc))
                    else:
                        recorder.finished(h, "acked")
        finally:
            queue.close()

    def stop_workers(self, timeout: float = 60.0) -> None:
        self._stop_workers.set()
        join_threads(self._worker_threads, timeout, "workers")

    # -- the end ---------------------------------------------------------------------------

    def acked_puts(self) -> int:
        return sum(1 for p in self.recorder.history().puts if p.outcome == "ok")

    def acked_items(self) -> int:
        return sum(1 for h in self.recorder.history().holds if h.finish == "acked")

    def wait_puts(self, n: int, timeout: float = 60.0) -> None:
        base = self.acked_puts()
        self.wait_until(lambda: self.acked_puts() >= base + n, timeout, f"{n} acknowledged puts")

    def wait_acks(self, n: int, timeout: float = 60.0) -> None:
        base = self.acked_items()
        self.wait_until(lambda: self.acked_items() >= base + n, timeout, f"{n} acked items")

    def drain(self, timeout: float = 60.0) -> int:
        """Wait until every acknowledged put was acked (or its ack's outcome
        is unknown), or ``timeout`` passes; return how many are left."""
        deadline = time.monotonic() + timeout
        while True:
            left = check_queue(self.history()).lost
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def ledger(self) -> Ledger:
        """What the servers' logs say happened under this root (the workers'
        sessions, for :func:`~zkpubsub.testing.queue_checker.check_queue`)."""
        if self.log is None:
            raise RuntimeError("this workload was given no server logs to read")
        return replay(self.log.committed(), self.root)

    def history(self) -> QueueHistory:
        for proc in self.processes.values():
            self.recorder.add_holds(proc.collect())
        return self.recorder.history()

    def close(self) -> None:
        """Stop everything: producers and workers (threads, processes) and
        every client. Each step runs whatever the earlier ones raised (a
        thread stuck past its time); the first error is raised at the end."""
        self._stop_producing.set()
        self._stop_workers.set()
        steps: list[Callable[[], None]] = [
            lambda: join_threads(self._producer_threads, self.put_timeout + 5, "producers"),
            lambda: join_threads(self._worker_threads, self.request_timeout + 5, "workers"),
            *(proc.kill for proc in self.processes.values()),
            self.close_clients,
        ]
        errors: list[BaseException] = []
        for step in steps:
            try:
                step()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


class WorkerProcess(ChildProcess):
    """A worker in a child process, driven one step at a time.

    :meth:`reserve`, :meth:`handle`, :meth:`ack`, :meth:`release` send a
    command and wait for its answer; :meth:`send` sends one without waiting
    (to kill or stop the process while it runs). Every hold is written to a
    file as a JSON line (a later line of the same hold replaces an earlier
    one).
    """

    def __init__(
        self,
        hosts: str,
        root: str,
        queue: str,
        worker_id: str,
        *,
        session_timeout: float = 4.0,
        max_attempts: int = 1000,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            "zkpubsub.testing.queue_workload",
            "work",
            worker_id,
            hosts=hosts,
            root=root,
            session_timeout=session_timeout,
            options=[
                *("--queue", queue, "--worker-id", worker_id),
                *("--max-attempts", str(max_attempts)),
            ],
            directory=directory,
        )
        self.worker_id = worker_id
        self._answers: list[str] = []
        self._cond = threading.Condition()

    def start(self, timeout: float = 60.0) -> None:
        self._spawn(stdin=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self._answer("ready", timeout)

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                self._answers.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _answer(self, command: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, line in enumerate(self._answers):
                    word, _, rest = line.partition(" ")
                    if word == command:
                        del self._answers[: i + 1]
                        return json.loads(rest) if rest else {}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"worker {self.worker_id} did not answer {command!r}")
                self._cond.wait(left)

    def send(self, command: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def call(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        self.send(command)
        return self._answer(command.split()[0], timeout)

    def reserve(self, timeout: float = 30.0) -> dict[str, Any]:
        """Reserve one item: ``{"item", "key", "attempts", "hold"}`` or ``{}``."""
        return self.call(f"reserve {timeout}", timeout + 30)

    def handle(self) -> dict[str, Any]:
        return self.call("handle")

    def ack(self, timeout: float = 60.0) -> str:
        """Ack the item in hand: how the hold ended (``acked``, ``lost``...)."""
        return str(self.call("ack", timeout)["finish"])

    def release(self, timeout: float = 60.0) -> str:
        return str(self.call("release", timeout)["finish"])

    def in_flight(self, hold: str) -> None:
        """After :meth:`kill`: record that ``hold`` ended with its ack in
        flight (outcome unknown to the worker)."""
        record = {h.hold: h for h in self.collect()}[hold]  # its last line
        record = replace(
            record, finish="unknown", error="killed with its ack in flight", finished_at=time.time()
        )
        with open(self.out, "ab") as f:
            f.write(json.dumps(hold_to_doc(record)).encode() + b"\n")

    def collect(self) -> list[HoldRecord]:
        """Every hold line written so far (complete lines only; a later line
        of a hold replaces the earlier ones)."""
        lines, _ = self.lines()
        return [hold_from_doc(json.loads(line)) for line in lines]


def _work_main(args: argparse.Namespace) -> None:
    client = Client(
        args.hosts,
        root=args.root,
        client_id=args.worker_id,
        session_timeout=args.session_timeout,
    )
    queue = client.queue(args.queue, max_attempts=args.max_attempts)
    out = open(args.out, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    item: Item | None = None
    record: HoldRecord | None = None
    count = 0

    def keep(new: HoldRecord) -> HoldRecord:
        out.write(json.dumps(hold_to_doc(new)).encode() + b"\n")
        return new

    def answer(command: str, doc: dict[str, Any] | None = None) -> None:
        sys.stdout.write(f"{command} {json.dumps(doc or {})}\n")
        sys.stdout.flush()

    answer("ready")
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "reserve":
            item = queue.reserve(float(rest[0]) if rest else None)
            if item is None:
                answer(command)
                continue
            count += 1
            key = key_of(item.payload)
            record = keep(
                HoldRecord(
                    f"{args.worker_id}#{count}",
                    args.worker_id,
                    item.id,
                    key,
                    item.attempts,
                    time.time(),
                )
            )
            answer(
                command,
                {
                    "item": item.id,
                    "key": list(key) if key else None,
                    "attempts": item.attempts,
                    "hold": record.hold,
                },
            )
        elif command == "handle" and record is not None:
            record = keep(replace(record, handled_at=time.time()))
            answer(command)
        elif command in ("ack", "release") and item is not None and record is not None:
            action: Literal["ack", "release"] = "ack" if command == "ack" else "release"
            error: Exception | None = None
            try:
                item.ack() if action == "ack" else item.release()
            except Exception as exc:
                error = exc
            record = keep(
                replace(
                    record,
                    finish=finish_of(action, error),
                    error=describe_error(error),
                    finished_at=time.time(),
                )
            )
            answer(command, {"finish": record.finish})
        elif command == "quit":
            break
    queue.close()
    client.close()


def main(argv: list[str] | None = None) -> None:
    parser, work = child_parser(
        "python -m zkpubsub.testing.queue_workload",
        "work",
        "a worker driven one step at a time from stdin",
    )
    work.add_argument("--queue", required=True)
    work.add_argument("--worker-id", required=True)
    work.add_argument("--max-attempts", type=int, default=1000)
    _work_main(parser.parse_args(argv))


if __name__ == "__main__":
    main()
