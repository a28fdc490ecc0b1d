"""How soon a subscriber process can hear of a write, with nothing of
zkpubsub in the way: the floor under the publish-to-handler latency that no
receive engine on kazoo goes below, on this machine.

``python -m benchmarks.receive_floor [--subscribers 1,10] [--rate 200]
[--seconds 15]`` starts a standalone server (the benchmark's settings) and
warms it. For each subscriber count it starts that many processes, each
with a plain kazoo client (with zkpubsub's callback handler, as
zkpubsub's connections have: :mod:`.kazoo_clients`) and a persistent
recursive watch on a queue of its own (the protocol extension zkpubsub
carries: kazoo has none). One thread commits, open loop at ``--rate`` a
second, a raw transaction that creates a node in every queue, the node's
name carrying its scheduled send time. Per node, each process records,
from that scheduled time:

* ``event``: the watch event naming the node arrived (kazoo's connection
  thread; nothing else done): when the process hears of it;
* ``read``: kazoo answered a read of the node sent on the event (its
  completion thread): the least a subscriber that reads its messages pays
  (``--no-reads``: not sent, and not measured);
* ``handed`` (``--hand-off``): a thread of the process's own took the
  event from kazoo's connection thread through a queue: the least a
  subscriber pays that runs no user code on kazoo's thread.

With ``--delete`` each process also deletes every node created in its
queue once done with it (after its read's answer, else once handed off,
else on its event), as a subscriber does: batched, each node waiting up
to zkpubsub's ``DELETE_LINGER`` for others to share its transaction,
sent without waiting for answers. Without it the processes delete
nothing, so the server does less than it does for subscribers. With
``--delete-unwatched`` instead, each process deletes as many nodes, in
the same batches, from a queue of its own that it does not watch (filled
before it starts): the server writes as much, but the watch brings no
event of the deletes back.

Each process also reports the CPU time it used (user and system, all its
threads) while the measured nodes came: ``cpu_us_per_node`` is that time
over the nodes it heard of, averaged over the processes.

Beside them, ``commit``: the sender's round trip from the scheduled time
(sent without waiting for the one before), here under the load of the
subscribers; and ``floor``: the same transactions, at the same rate, just
before the processes started, with no one watching (the main benchmark's
latency floor).
Percentiles (milliseconds, pooled over the subscribers) go to the screen and
to ``<out>/receive-floor-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import threading
import time
from array import array
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from kazoo.client import KazooClient

from zkpubsub._persistent import NODE_CREATED, PERSISTENT_RECURSIVE, AddWatch, EventHook
from zkpubsub._pump import DELETE_BATCH, DELETE_LINGER

from . import kazoo_clients, server, stats
from .commit_latency import committed
from .progress import Phase, Progress
from .runner import DEFAULT_OUT

ROOT = "/receive-floor"
WARM = "w"  # names of warm-up nodes start so: not measured
START_TIMEOUT = 60.0


def node_name(scheduled: float, warm: bool) -> str:
    """The name (before its sequence number) of a node scheduled at the
    monotonic time ``scheduled``."""
    return f"{WARM if warm else 'n'}{int(scheduled * 1e9)}-"


def scheduled_of(path: str) -> float | None:
    """The scheduled time a measured node's name carries (``None``: a
    warm-up node or not one of ours)."""
    name = path.rsplit("/", 1)[-1]
    if not name.startswith("n"):
        return None
    stamp, _, _ = name[1:].partition("-")
    return int(stamp) / 1e9 if stamp.isdigit() else None


def delete_transactions(zk: KazooClient, paths: list[str]) -> list[Any]:
    """Transactions deleting ``paths``, ``DELETE_BATCH`` to each (not sent)."""
    out = []
    for start in range(0, len(paths), DELETE_BATCH):
        txn = zk.transaction()
        for path in paths[start : start + DELETE_BATCH]:
            txn.delete(path)
        out.append(txn)
    return out


class Deleter:
    """Deletes the nodes given to it in batched transactions: the first of
    a batch waits ``DELETE_LINGER`` for company; answers are not waited
    for, only counted (nodes deleted)."""

    def __init__(self, zk: KazooClient) -> None:
        self._zk = zk
        self._lock = threading.Lock()
        self._paths: list[str] = []
        self._due = threading.Event()
        self._stopping = False
        self._sent = 0
        self._answered = threading.Semaphore(0)
        self.deleted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, path: str) -> None:
        with self._lock:
            self._paths.append(path)
        self._due.set()

    def _run(self) -> None:
        while True:
            self._due.wait()
            if not self._stopping:
                time.sleep(DELETE_LINGER)
            self._due.clear()
            self._flush()
            if self._stopping:
                return

    def _flush(self) -> None:
        with self._lock:
            paths, self._paths = self._paths, []
        for txn in delete_transactions(self._zk, paths):
            self._sent += 1
            txn.commit_async().rawlink(self._done)

    def _done(self, result: Any) -> None:  # kazoo's completion thread
        if result.successful():
            with self._lock:
                self.deleted += sum(1 for r in result.get() if r is True)
        self._answered.release()

    def close(self) -> None:
        """Send what is left and wait for every answer."""
        self._stopping = True
        self._due.set()
        self._thread.join(START_TIMEOUT)
        for _ in range(self._sent):
            if not self._answered.acquire(timeout=START_TIMEOUT):
                raise RuntimeError("a delete transaction got no answer")


def subscriber_main(
    hosts: str,
    queue: str,
    conn: Connection,
    reads: bool = True,
    hand_off: bool = False,
    delete: bool = False,
    pool: str | None = None,
) -> None:
    """One subscriber process: watch ``queue``, read each node created in
    it (unless not ``reads``), hand each event to a thread of its own (if
    ``hand_off``), delete each node when done with it (if ``delete``; a
    node of the unwatched ``pool`` instead, if given), and record the times
    until told to stop; then send them back, with the count of nodes
    deleted and the CPU time used from when told to measure."""
    zk = kazoo_clients.new(hosts, timeout=30.0)
    zk.start(timeout=START_TIMEOUT)
    event_ms = array("d")
    read_ms = array("d")
    handed_ms = array("d")
    handed: SimpleQueue[tuple[str, float | None] | None] = SimpleQueue()
    deleter = Deleter(zk) if delete or pool is not None else None
    spare = iter([f"{pool}/{name}" for name in zk.get_children(pool)] if pool else [])

    def done_with(path: str) -> None:
        if deleter is not None:
            if pool is None:
                deleter.add(path)
            elif (other := next(spare, None)) is not None:
                deleter.add(other)
            else:
                raise RuntimeError(f"{pool} has no node left to delete")

    def take() -> None:  # the thread events are handed to
        while (item := handed.get()) is not None:
            path, scheduled = item
            if scheduled is not None:
                handed_ms.append((time.monotonic() - scheduled) * 1000)
            if not reads:
                done_with(path)

    taker = threading.Thread(target=take, daemon=True)
    if hand_off:
        taker.start()

    # on kazoo's completion thread
    def answered(path: str, scheduled: float | None, result: Any) -> None:
        now = time.monotonic()
        if result.successful() and scheduled is not None:
            read_ms.append((now - scheduled) * 1000)
        done_with(path)

    def on_event(kind: int, path: str) -> None:  # kazoo's connection thread
        now = time.monotonic()
        if kind != NODE_CREATED or path == queue:
            return
        scheduled = scheduled_of(path)
        if scheduled is not None:
            event_ms.append((now - scheduled) * 1000)
        elif deleter is None:
            return  # a warm-up node: nothing to measure, nothing to do
        if hand_off:
            handed.put((path, scheduled))
        if reads:
            zk.get_async(path).rawlink(lambda r, p=path, s=scheduled: answered(p, s, r))
        elif not hand_off:
            done_with(path)

    try:
        zk.ensure_path(queue)
        hook = EventHook(zk)
        hook.watch(zk.chroot + queue, on_event)
        added = zk.handler.async_result()
        zk._call(AddWatch(zk.chroot + queue, PERSISTENT_RECURSIVE), added)
        added.get(timeout=START_TIMEOUT)
        conn.send("ready")
        conn.recv()  # measure
        cpu = time.process_time()
        conn.recv()  # stop
        time.sleep(0.5)  # the last reads' answers
        cpu = time.process_time() - cpu
        if hand_off:
            handed.put(None)
            taker.join(START_TIMEOUT)
        deleted = 0
        if deleter is not None:
            deleter.close()
            deleted = deleter.deleted
        conn.send((list(event_ms), list(read_ms), list(handed_ms), deleted, cpu))
    finally:
        zk.stop()
        zk.close()


def _commit_loop(
    zk: KazooClient,
    queues: list[str],
    rate: float,
    seconds: float,
    warm: bool,
    phase: Phase,
    label: str | None = None,
) -> list[float]:
    """Send the transaction ``rate`` times a second for ``seconds``, open
    loop (each sent at its time whether or not the last was answered);
    each round trip from its scheduled time, in ms."""
    what = label or ("warming" if warm else "measuring")
    times: list[float] = []
    lock = threading.Lock()
    answered = threading.Semaphore(0)

    def done(scheduled: float, _result: Any) -> None:  # kazoo's completion thread
        with lock:
            times.append((time.monotonic() - scheduled) * 1000)
        answered.release()

    start = time.monotonic() + 0.05
    total = int(rate * seconds)
    for i in range(total):
        scheduled = start + i / rate
        pause = scheduled - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        name = node_name(scheduled, warm)
        txn = zk.transaction()
        for queue in queues:
            txn.create(f"{queue}/{name}", b"x" * 100, sequence=True)
        txn.commit_async().rawlink(lambda r, s=scheduled: done(s, r))
        phase.update(f"{what}: sent {i + 1}/{total}")
    for _ in range(total):
        if not answered.acquire(timeout=START_TIMEOUT):
            raise RuntimeError("a transaction got no answer")
    return times


def measure(
    hosts: str,
    zk: KazooClient,
    subscribers: int,
    rate: float,
    seconds: float,
    warm: float,
    phase: Phase,
    reads: bool = True,
    hand_off: bool = False,
    delete: bool = False,
    delete_unwatched: bool = False,
) -> dict[str, Any]:
    """One subscriber count: the floor with no one watching, then start the
    processes, warm them, measure."""
    ctx = multiprocessing.get_context("spawn")
    paths = [f"{ROOT}/{subscribers}/q{i}" for i in range(subscribers)]
    for path in paths:
        zk.ensure_path(path)
    _commit_loop(zk, paths, rate, warm, True, phase)
    floor = _commit_loop(zk, paths, rate, seconds, False, phase, "floor, no one watching")
    if delete or delete_unwatched:  # the processes start on empty queues, as subscribers would
        for path in paths:
            _empty(zk, path)
    pools: list[str | None] = [None] * subscribers
    if delete_unwatched:  # as many nodes as each process will be done with
        filled = [f"{ROOT}/{subscribers}/pool{i}" for i in range(subscribers)]
        for pool in filled:
            _fill(zk, pool, int(rate * warm) + int(rate * seconds))
        pools = list(filled)
    pipes: list[Connection] = []
    procs = []
    try:
        for path, pool in zip(paths, pools, strict=True):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=subscriber_main,
                args=(hosts, path, child, reads, hand_off, delete, pool),
                daemon=True,
            )
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        for pipe in pipes:
            if not pipe.poll(START_TIMEOUT):
                raise RuntimeError("a subscriber process did not start")
            pipe.recv()
        _commit_loop(zk, paths, rate, warm, True, phase)
        for pipe in pipes:
            pipe.send("measure")
        commit = _commit_loop(zk, paths, rate, seconds, False, phase)
        events: list[float] = []
        answers: list[float] = []
        takes: list[float] = []
        deleted = 0
        cpu = 0.0
        for pipe in pipes:
            pipe.send("stop")
        for pipe in pipes:
            if not pipe.poll(START_TIMEOUT):
                raise RuntimeError("a subscriber process did not answer")
            got_events, got_reads, got_takes, got_deleted, got_cpu = pipe.recv()
            cpu += got_cpu
            events += got_events
            answers += got_reads
            takes += got_takes
            deleted += got_deleted
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    expected = len(commit) * subscribers
    return {
        "subscribers": subscribers,
        "rate": rate,
        "sent": len(commit),
        "missing_events": expected - len(events),
        "reads": reads,
        "missing_reads": expected - len(answers) if reads else None,
        "hand_off": hand_off,
        "missing_handed": expected - len(takes) if hand_off else None,
        "delete": delete,
        "delete_unwatched": delete_unwatched,
        "deleted": deleted if delete or delete_unwatched else None,
        # nodes left in the watched queues when the processes stopped
        "left": (
            sum(len(zk.get_children(path)) for path in paths)
            if delete or delete_unwatched
            else None
        ),
        # CPU time of a process per node it heard of, while the measured ones came
        "cpu_us_per_node": round(cpu / len(events) * 1e6, 1) if events else None,
        "floor": stats.summarize_ms([v / 1000 for v in floor]),
        "commit": stats.summarize_ms([v / 1000 for v in commit]),
        "event": stats.summarize_ms([v / 1000 for v in events]),
        "read": stats.summarize_ms([v / 1000 for v in answers]) if reads else None,
        "handed": stats.summarize_ms([v / 1000 for v in takes]) if hand_off else None,
    }


def _empty(zk: KazooClient, path: str) -> None:
    """Delete the nodes in ``path`` (the floor's), in batched transactions."""
    names = [f"{path}/{name}" for name in zk.get_children(path)]
    for txn in delete_transactions(zk, names):
        txn.commit()


def _fill(zk: KazooClient, path: str, count: int) -> None:
    """Make ``path`` hold ``count`` nodes of 100 bytes, and nothing else."""
    zk.ensure_path(path)
    _empty(zk, path)
    for start in range(0, count, DELETE_BATCH):
        txn = zk.transaction()
        for i in range(start, min(count, start + DELETE_BATCH)):
            txn.create(f"{path}/n{i:09d}", b"x" * 100)
        committed(txn)


def _line(cell: dict[str, Any]) -> str:
    parts = [f"{cell['subscribers']} subscriber(s)"]
    for kind in ("floor", "commit", "event", "handed", "read"):
        s = cell[kind]
        if s is None:
            continue
        parts.append(f"{kind} p50 {s['p50']} p99 {s['p99']} ms")
    if cell["cpu_us_per_node"] is not None:
        parts.append(f"{cell['cpu_us_per_node']} µs CPU per node per process")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.receive_floor", description=__doc__)
    parser.add_argument("--subscribers", default="1,10", help="subscriber counts, comma-separated")
    parser.add_argument("--rate", type=float, default=200.0, help="transactions per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measurement")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of warm-up load")
    parser.add_argument(
        "--no-reads", action="store_true", help="hear of each node only, do not read it"
    )
    parser.add_argument(
        "--hand-off",
        action="store_true",
        help="hand each event to a thread of the process's own, and measure when it took it",
    )
    parser.add_argument(
        "--delete",
        action="store_true",
        help="delete each node when done with it, batched, as a subscriber does",
    )
    parser.add_argument(
        "--delete-unwatched",
        action="store_true",
        help="delete as many nodes of a queue nobody watches (writes without their events)",
    )
    parser.add_argument("--zk-dir", default=None, metavar="DIR")
    parser.add_argument("--out", default=None, metavar="DIR")
    args = parser.parse_args(argv)
    if args.delete and args.delete_unwatched:
        parser.error("--delete and --delete-unwatched: one or the other")
    counts = [int(n) for n in args.subscribers.split(",") if n.strip()]
    if not counts or min(counts) < 1:
        parser.error("--subscribers: one or more counts of at least 1")
    progress = Progress()
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    cluster = server.start_standalone(progress, args.zk_dir)
    try:
        zk = kazoo_clients.new(cluster.hosts)
        zk.start(timeout=30)
        try:
            zk.ensure_path(ROOT)
            for n in counts:
                with progress.phase(f"{n} subscriber process(es) at {args.rate:g}/s") as phase:
                    cell = measure(
                        cluster.hosts,
                        zk,
                        n,
                        args.rate,
                        args.seconds,
                        args.warmup,
                        phase,
                        reads=not args.no_reads,
                        hand_off=args.hand_off,
                        delete=args.delete,
                        delete_unwatched=args.delete_unwatched,
                    )
                    cells.append(cell)
                    phase.summary = _line(cell)
        finally:
            zk.stop()
            zk.close()
    finally:
        cluster.close()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "rate": args.rate,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "reads": not args.no_reads,
        "hand_off": args.hand_off,
        "delete": args.delete,
        "delete_unwatched": args.delete_unwatched,
        "cells": cells,
    }
    path = out_dir / f"receive-floor-{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    for cell in cells:
        progress.note(_line(cell))
    progress.note(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
