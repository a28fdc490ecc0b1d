"""Worker processes: subscribers, queue consumers and warm-up load.

Subscribers and consumers run in processes of their own, not in the
publisher's: in one process every subscriber's threads would compete with
the publisher for one GIL, and the publisher would be measured slower than
it is (in production they are on other machines). Each worker process hosts
several subscribers, each with its own ZooKeeper session, as separate
service instances would have. Handlers only count and time what they get.

The pool talks to each worker through a pipe: ``(request id, command,
kwargs)`` in, ``(request id, "ok", value)`` or ``(request id, "error",
text)`` out. The pool waits for the answer with the id it sent last and
drops older ones: the late answer of a command that timed out is never
taken for the next command's.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import traceback
import uuid
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

from . import credentials, payload

logger = logging.getLogger(__name__)

Command = Callable[..., Any]


class WorkerError(RuntimeError):
    """A command failed inside a worker process."""


# -- inside a worker --------------------------------------------------------------


class Recorder:
    """What one subscriber received: counts, duplicates, arrival times and,
    when asked, the latency of every message."""

    __slots__ = (
        "count",
        "duplicates",
        "first",
        "keep_latency",
        "last",
        "lat_sched",
        "lat_sent",
        "lat_seq",
        "seen",
    )

    def __init__(self, keep_latency: bool) -> None:
        self.count = 0
        self.duplicates = 0
        self.first = 0.0
        self.last = 0.0
        self.seen: set[int] = set()
        self.keep_latency = keep_latency
        self.lat_sched = array("d")
        self.lat_sent = array("d")
        self.lat_seq = array("q")  # the message of each latency

    def record(self, data: bytes) -> None:
        now = time.monotonic()
        stamp = payload.parse(data)
        if stamp.seq in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(stamp.seq)
        self.count += 1
        if not self.first:
            self.first = now
        self.last = now
        if self.keep_latency:
            self.lat_sched.append(now - stamp.scheduled)
            self.lat_sent.append(now - stamp.sent)
            self.lat_seq.append(stamp.seq)

    @property
    def unique(self) -> int:
        return len(self.seen)

    def summary(self, *, latencies: bool, seqs: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": self.count,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "first": self.first,
            "last": self.last,
        }
        if latencies:
            out["lat_sched"] = self.lat_sched
            out["lat_sent"] = self.lat_sent
            out["lat_seq"] = self.lat_seq
        if seqs:
            out["seqs"] = sorted(self.seen)
        return out


class _Subscriber:
    def __init__(
        self,
        recorder: Recorder,
        close: Callable[[], None],
        requests: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.recorder = recorder
        self.close = close
        # (requests sent, nodes read) so far by the subscriber's connection
        self.requests = requests


class _Takes:
    """What a timed queue worker got since its last reset: per item, the
    time from the put's scheduled (and actual) time to ``reserve()``
    returning, the acks, and the requests its connection sent."""

    def __init__(self, requests: int) -> None:
        self.recorder = Recorder(True)
        self.acked = 0
        self.ack_errors = 0
        self.reserve_errors = 0
        self.first_error: str | None = None
        self.requests_at_start = requests


class _TimedQueueWorker:
    """A zkpubsub queue worker in a thread: ``reserve(timeout)``, then
    ``item.ack()``, until stopped. Its own client (and session)."""

    def __init__(
        self, hosts: str, root: str, queue_name: str, watch_mode: str, reserve_timeout: float
    ) -> None:
        from zkpubsub import Client

        self.client = Client(
            hosts,
            root=root,
            serializer="raw",
            watch_mode=cast(Any, watch_mode),
            **credentials.security(),
        )
        self.queue = cast(Any, self.client).queue(queue_name, max_items=None)
        self.reserve_timeout = reserve_timeout
        # the first reserve registers the worker and lists the queue: done
        # here, so that the worker is in place before the first put
        if self.queue.reserve(timeout=0.01) is not None:
            raise RuntimeError(f"queue {queue_name!r} was not empty")
        self.takes = _Takes(self.requests())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="timed-queue-worker", daemon=True)
        self._thread.start()

    def requests(self) -> int:
        """Requests the client's connection sent so far (the library's counter)."""
        count: int = cast(Any, self.client)._ctx.conn.requests
        return count

    def reset(self) -> None:
        """Start counting afresh (after the warm-up)."""
        self.takes = _Takes(self.requests())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.queue.reserve(timeout=self.reserve_timeout)
            except Exception as exc:
                self._error(self.takes, exc, reserving=True)
                self._stop.wait(0.05)
                continue
            if item is None:
                continue
            takes = self.takes
            takes.recorder.record(item.payload)  # the time reserve() returned
            try:
                item.ack()
            except Exception as exc:
                self._error(takes, exc, reserving=False)
            else:
                takes.acked += 1

    @staticmethod
    def _error(takes: _Takes, exc: Exception, *, reserving: bool) -> None:
        if reserving:
            takes.reserve_errors += 1
        else:
            takes.ack_errors += 1
        if takes.first_error is None:
            takes.first_error = f"{type(exc).__name__}: {exc}"
        logger.warning("timed queue worker: %s failed: %r", "reserve" if reserving else "ack", exc)

    def stop(self) -> dict[str, Any]:
        """Stop the loop, close the client, report since the last reset."""
        self._stop.set()
        self._thread.join(self.reserve_timeout + 30)
        takes = self.takes
        requests = self.requests() - takes.requests_at_start
        try:
            self.client.close()
        except Exception as exc:
            logger.warning("closing a timed queue worker: %r", exc)
        return {
            **takes.recorder.summary(latencies=True, seqs=True),
            "acked": takes.acked,
            "ack_errors": takes.ack_errors,
            "reserve_errors": takes.reserve_errors,
            "first_error": takes.first_error,
            "requests": requests,
            "stopped": not self._thread.is_alive(),
        }


class WorkerState:
    """The commands a worker process answers."""

    def __init__(self) -> None:
        self.subscribers: list[_Subscriber] = []
        # the process's CPU time when its last subscriber was started
        self.cpu_at_start = time.process_time()
        self.stuck: list[Callable[[], None]] = []
        self.timed_workers: list[_TimedQueueWorker] = []
        self._warm_zk: Any = None
        self._warm_hosts = ""

    # -- housekeeping --------------------------------------------------------

    def ping(self) -> int:
        return os.getpid()

    # -- warm-up load --------------------------------------------------------

    def warm(self, hosts: str, root: str, seconds: float, batch: int, window: int) -> int:
        """Creates, reads and deletes for ``seconds``; returns operations done."""
        from .kazoo_clients import new

        if self._warm_zk is None or self._warm_hosts != hosts:
            self.close_warm()
            self._warm_zk = new(hosts, timeout=10.0)
            self._warm_zk.start(timeout=30)
            self._warm_hosts = hosts
        zk = self._warm_zk
        parent = f"{root}/w{os.getpid()}"
        zk.ensure_path(parent)
        data = payload.make(0, 0.0, 0.0)
        ops = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            creates: deque[Any] = deque()
            for _ in range(window):
                txn = zk.transaction()
                for _ in range(batch):
                    txn.create(f"{parent}/n-", data, sequence=True)
                creates.append(txn.commit_async())
            created: list[str] = []
            while creates:
                created.extend(r for r in creates.popleft().get(timeout=60) if isinstance(r, str))
            names = zk.get_children(parent)
            reads = [zk.get_async(p) for p in created[:: max(1, batch // 4)]]
            for r in reads:
                r.get(timeout=60)
            deletes: deque[Any] = deque()
            for i in range(0, len(names), batch):
                txn = zk.transaction()
                for name in names[i : i + batch]:
                    txn.delete(f"{parent}/{name}")
                deletes.append(txn.commit_async())
            while deletes:
                deletes.popleft().get(timeout=60)
            ops += len(created) + len(reads) + len(names) + 1
        return ops

    def close_warm(self) -> None:
        if self._warm_zk is not None:
            with contextlib.suppress(Exception):
                self._warm_zk.stop()
                self._warm_zk.close()
            self._warm_zk = None

    # -- subscribers -----------------------------------------------------------

    def subscribe(
        self,
        impl: str,
        hosts: str,
        root: str,
        topic: str,
        count: int,
        latency: bool = False,
        session_timeout: float = 10.0,
    ) -> list[str]:
        """Start ``count`` subscribers of ``topic``, each with its own session."""
        ids: list[str] = []
        for _ in range(count):
            recorder = Recorder(latency)
            if impl == "zkpubsub":
                sub = self._zkpubsub_subscriber(hosts, root, topic, recorder, session_timeout)
            elif impl == "zkms":
                sub = self._zkms_subscriber(hosts, root, topic, recorder, session_timeout)
            elif impl == "zkpubsub-aio":
                from .aio_variant import subscriber

                sub = subscriber(hosts, root, topic, recorder, session_timeout)
            else:
                raise ValueError(f"unknown subscriber implementation {impl!r}")
            self.subscribers.append(sub[0])
            ids.append(sub[1])
        self.cpu_at_start = time.process_time()
        return ids

    @staticmethod
    def _zkpubsub_subscriber(
        hosts: str, root: str, topic: str, recorder: Recorder, session_timeout: float
    ) -> tuple[_Subscriber, str]:
        from zkpubsub import Client

        client = Client(
            hosts,
            root=root,
            serializer="raw",
            session_timeout=session_timeout,
            **credentials.security(),
        )

        def handler(message: Any) -> None:
            recorder.record(message.payload)

        subscription = client.subscribe(topic, handler)

        def close() -> None:
            try:
                subscription.unsubscribe()
            finally:
                client.close()

        def requests() -> tuple[int, int]:  # the library's own counters
            internal = cast(Any, client)
            return internal._ctx.conn.requests, internal._pump.deliveries_read

        return _Subscriber(recorder, close, requests), client.client_id

    @staticmethod
    def _zkms_subscriber(
        hosts: str, root: str, topic: str, recorder: Recorder, session_timeout: float
    ) -> tuple[_Subscriber, str]:
        from .zkms_reference import ZkmsSubscriber, connect

        zk = connect(hosts, timeout=session_timeout)
        sub = ZkmsSubscriber(zk, root, topic, recorder.record)

        def close() -> None:
            try:
                sub.close(unsubscribe=True)
            finally:
                zk.stop()
                zk.close()

        return _Subscriber(recorder, close), sub.client_id

    def subscribe_stuck(
        self, hosts: str, root: str, topic: str, max_backlog: int, session_timeout: float = 10.0
    ) -> str:
        """A subscriber whose handler blocks until it is unsubscribed, its
        queue bounded at ``max_backlog`` nodes (``when_full="drop"``);
        returns its client id. Not counted by :meth:`counts`."""
        from zkpubsub import Client

        client = Client(
            hosts,
            root=root,
            serializer="raw",
            session_timeout=session_timeout,
            **credentials.security(),
        )
        release = threading.Event()

        def handler(message: Any) -> None:
            release.wait()

        subscription = client.subscribe(
            topic, handler, max_backlog=max_backlog, max_backlog_bytes=2**31 - 1
        )

        def close() -> None:
            release.set()
            try:
                subscription.unsubscribe()
            finally:
                client.close()

        self.stuck.append(close)
        return client.client_id

    def counts(self) -> list[int]:
        return [s.recorder.unique for s in self.subscribers]

    def collect(
        self,
        expected: int | None,
        wait: float,
        latencies: bool = False,
        seqs: bool = False,
        quiet_for: float = 0.0,
    ) -> list[dict[str, Any]]:
        """Wait until every local subscriber has ``expected`` distinct messages
        (or, with ``expected=None``, until none received anything for
        ``quiet_for`` seconds), at most ``wait`` seconds; then report."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            recs = [s.recorder for s in self.subscribers]
            if expected is not None and all(r.unique >= expected for r in recs):
                break
            if expected is None:
                newest = max((r.last for r in recs), default=0.0)
                if time.monotonic() - newest >= quiet_for:
                    break
            time.sleep(0.01)
        # CPU time of the whole process since its subscribers started, a share to each
        cpu = (time.process_time() - self.cpu_at_start) / max(1, len(self.subscribers))
        out = []
        for s in self.subscribers:
            summary = s.recorder.summary(latencies=latencies, seqs=seqs)
            summary["cpu_s"] = cpu
            if s.requests is not None:
                summary["requests"], summary["nodes_read"] = s.requests()
            out.append(summary)
        return out

    def unsubscribe(self) -> int:
        subs, self.subscribers = self.subscribers, []
        stuck, self.stuck = self.stuck, []
        self.zq_timed_stop()
        for close in [*(s.close for s in subs), *stuck]:
            try:
                close()
            except Exception as exc:
                logger.warning("closing a subscriber: %r", exc)
        return len(subs) + len(stuck)

    # -- queue consumers ------------------------------------------------------------

    def lq_consume(self, hosts: str, path: str, idle: float, cap: float) -> dict[str, Any]:
        """kazoo's LockingQueue: get (locks the head), consume (deletes it)."""
        from kazoo.recipe.queue import LockingQueue

        from .zkms_reference import connect

        zk = connect(hosts)
        try:
            queue = LockingQueue(zk, path)
            return _consume_loop(
                lambda: queue.get(timeout=idle), lambda _item: queue.consume(), cap
            )
        finally:
            zk.stop()
            zk.close()

    def zq_consume(
        self,
        hosts: str,
        root: str,
        queue_name: str,
        idle: float,
        cap: float,
        prefetch: int = 1,
        watch_mode: str = "auto",
    ) -> dict[str, Any]:
        """zkpubsub's work queue: reserve, then ack (``prefetch`` > 1: in batches)."""
        from zkpubsub import Client

        client = Client(
            hosts,
            root=root,
            serializer="raw",
            watch_mode=cast(Any, watch_mode),
            **credentials.security(),
        )
        try:
            queue = cast(Any, client).queue(queue_name)
            if prefetch <= 1:
                return _consume_loop(
                    lambda: queue.reserve(timeout=idle), lambda item: item.ack(), cap
                )
            # The fast path: reserve a batch in one transaction, ack it in one.
            return _consume_loop(
                lambda: queue.reserve_many(prefetch, timeout=idle) or None,
                queue.ack_many,
                cap,
                size=len,
            )
        finally:
            client.close()

    def zq_timed_start(
        self, hosts: str, root: str, queue_name: str, watch_mode: str, reserve_timeout: float
    ) -> str:
        """Start a queue worker that reserves and acks until stopped, timing
        each item from its put; returns once the worker is registered."""
        worker = _TimedQueueWorker(hosts, root, queue_name, watch_mode, reserve_timeout)
        self.timed_workers.append(worker)
        return worker.client.client_id

    def zq_timed_counts(self) -> list[tuple[int, int]]:
        """(distinct items reserved, items acked) of each timed worker."""
        return [(w.takes.recorder.unique, w.takes.acked) for w in self.timed_workers]

    def zq_timed_reset(self) -> None:
        for worker in self.timed_workers:
            worker.reset()

    def zq_timed_stop(self) -> list[dict[str, Any]]:
        """Stop the timed workers; what each got since its last reset."""
        workers, self.timed_workers = self.timed_workers, []
        out = []
        for worker in workers:
            try:
                out.append(worker.stop())
            except Exception as exc:
                logger.warning("stopping a timed queue worker: %r", exc)
        return out


def _consume_loop(
    get: Callable[[], Any],
    done: Callable[[Any], Any],
    cap: float,
    size: Callable[[Any], int] = lambda _item: 1,
) -> dict[str, Any]:
    count = 0
    first = last = 0.0
    start = time.monotonic()
    while time.monotonic() - start < cap:
        item = get()
        if item is None:
            break
        done(item)
        count += size(item)
        last = time.monotonic()
        if not first:
            first = last
    return {"count": count, "start": start, "first": first, "last": last}


def _configure_logging(log_path: str | None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    target: logging.Handler
    if log_path:
        target = logging.FileHandler(log_path)
        target.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
        )
    else:
        target = logging.NullHandler()
    root.addHandler(target)
    root.setLevel(logging.WARNING)


def worker_main(conn: multiprocessing.connection.Connection, log_path: str | None) -> None:
    """The loop of a worker process."""
    _configure_logging(log_path)
    state = WorkerState()
    while True:
        try:
            request, name, kwargs = conn.recv()
        except (EOFError, OSError):
            break
        if name == "stop":
            break
        try:
            method = getattr(state, name)
            result = method(**kwargs)
            reply: tuple[int, str, Any] = (request, "ok", result)
        except Exception as exc:
            logger.exception("command %s failed", name)
            reply = (request, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        try:
            conn.send(reply)
        except (OSError, ValueError):
            break
    state.unsubscribe()
    state.close_warm()


def frozen_subscriber_main(
    conn: multiprocessing.connection.Connection,
    hosts: str,
    root: str,
    topic: str,
    session_timeout: float,
    log_path: str | None,
    max_backlog: int | None = None,
    max_backlog_bytes: int | None = None,
) -> None:
    """A zkpubsub subscriber that registers, reports ready and is then
    stopped (SIGSTOP) by the harness: a subscriber that does not consume.
    Its queue is bounded at ``max_backlog`` nodes and ``max_backlog_bytes``
    bytes (``None``: the client's defaults)."""
    _configure_logging(log_path)
    from zkpubsub import Client

    client = Client(
        hosts,
        root=root,
        serializer="raw",
        session_timeout=session_timeout,
        **credentials.security(),
    )
    client.subscribe(
        topic, lambda _m: None, max_backlog=max_backlog, max_backlog_bytes=max_backlog_bytes
    )
    conn.send(client.client_id)
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    client.close()


# -- the harness side ---------------------------------------------------------------


def receive_reply(
    conn: multiprocessing.connection.Connection, request: int, timeout: float, who: str
) -> tuple[str, Any]:
    """The ``(status, value)`` answering ``request`` on ``conn``, within
    ``timeout`` seconds. Answers to earlier requests (commands that timed
    out, answered since) are dropped."""
    deadline = time.monotonic() + timeout
    while True:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            raise WorkerError(f"{who} did not answer within {timeout:g}s")
        answered, status, value = conn.recv()
        if answered == request:
            return status, value
        logger.warning("%s: dropped the late answer to request %s (%s)", who, answered, status)


class Pool:
    """Sending commands to workers and collecting the answers."""

    @property
    def size(self) -> int:
        raise NotImplementedError

    def send(self, index: int, name: str, **kwargs: Any) -> None:
        raise NotImplementedError

    def receive(self, index: int, timeout: float) -> Any:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def call(self, index: int, name: str, *, timeout: float = 120.0, **kwargs: Any) -> Any:
        self.send(index, name, **kwargs)
        return self.receive(index, timeout)

    def call_many(
        self,
        indexes: Sequence[int],
        name: str,
        *,
        timeout: float = 120.0,
        per_worker: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """The same command to several workers at once; answers in order."""
        for n, i in enumerate(indexes):
            extra = per_worker[n] if per_worker is not None else {}
            self.send(i, name, **kwargs, **extra)
        deadline = time.monotonic() + timeout
        errors: list[str] = []
        out: list[Any] = []
        for i in indexes:
            try:
                out.append(self.receive(i, max(0.1, deadline - time.monotonic())))
            except WorkerError as exc:
                errors.append(str(exc))
                out.append(None)
        if errors:
            raise WorkerError("; ".join(errors))
        return out

    def spread(self, count: int, over: int | None = None) -> list[tuple[int, int]]:
        """``(worker, how many)`` to spread ``count`` items over the first
        ``over`` workers (default: all)."""
        size = self.size if over is None else max(1, min(over, self.size))
        shares = [count // size + (1 if i < count % size else 0) for i in range(size)]
        return [(i, n) for i, n in enumerate(shares) if n > 0]


class InlinePool(Pool):
    """Workers as threads of this process: for measuring what sharing the
    publisher's process (and GIL) with the subscribers costs."""

    def __init__(self, size: int = 1) -> None:
        self._states = [WorkerState() for _ in range(size)]
        self._pending: dict[int, tuple[threading.Thread, list[Any]]] = {}

    @property
    def size(self) -> int:
        return len(self._states)

    def pids(self) -> list[int]:
        return [os.getpid()]

    def send(self, index: int, name: str, **kwargs: Any) -> None:
        box: list[Any] = []
        method = getattr(self._states[index], name)

        def run() -> None:
            try:
                box.append(("ok", method(**kwargs)))
            except Exception as exc:
                box.append(("error", f"{type(exc).__name__}: {exc}"))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._pending[index] = (thread, box)

    def receive(self, index: int, timeout: float) -> Any:
        thread, box = self._pending.pop(index)
        thread.join(timeout)
        if not box:
            raise WorkerError(f"inline worker {index} did not answer within {timeout:g}s")
        status, value = box[0]
        if status != "ok":
            raise WorkerError(f"inline worker {index}: {value}")
        return value

    def close(self) -> None:
        for state in self._states:
            state.unsubscribe()
            state.close_warm()


class WorkerPool(Pool):
    """``size`` worker processes (spawned, so no lock or thread is inherited)."""

    def __init__(self, size: int, *, log_dir: str | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ctx = ctx
        self._log_dir = log_dir
        self._conns: list[multiprocessing.connection.Connection] = []
        # per worker, the id of the last request sent (its answer is awaited)
        self._requests: list[int] = []
        self._procs: list[Any] = []
        self._extra: list[Any] = []
        self._extra_conns: list[multiprocessing.connection.Connection] = []
        for i in range(size):
            parent, child = ctx.Pipe()
            log = os.path.join(log_dir, f"worker-{i}.log") if log_dir else None
            proc = ctx.Process(
                target=worker_main, args=(child, log), name=f"bench-worker-{i}", daemon=True
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._requests.append(0)
            self._procs.append(proc)
        for i in range(size):
            self.call(i, "ping", timeout=120)

    @property
    def size(self) -> int:
        return len(self._conns)

    def pids(self) -> list[int]:
        return [p.pid for p in [*self._procs, *self._extra] if p.pid is not None]

    def send(self, index: int, name: str, **kwargs: Any) -> None:
        self._requests[index] += 1
        self._conns[index].send((self._requests[index], name, kwargs))

    def receive(self, index: int, timeout: float) -> Any:
        status, value = receive_reply(
            self._conns[index], self._requests[index], timeout, f"worker {index}"
        )
        if status != "ok":
            raise WorkerError(f"worker {index}: {value}")
        return value

    def start_frozen_subscriber(
        self,
        hosts: str,
        root: str,
        topic: str,
        session_timeout: float,
        *,
        max_backlog: int | None = None,
        max_backlog_bytes: int | None = None,
    ) -> tuple[Any, str]:
        """A subscriber process the caller will SIGSTOP, its queue bounded
        at ``max_backlog`` nodes and ``max_backlog_bytes`` bytes (``None``:
        zkpubsub's defaults); returns it and its id."""
        parent, child = self._ctx.Pipe()
        log = os.path.join(self._log_dir, "frozen-subscriber.log") if self._log_dir else None
        proc = self._ctx.Process(
            target=frozen_subscriber_main,
            args=(child, hosts, root, topic, session_timeout, log, max_backlog, max_backlog_bytes),
            name="bench-frozen-subscriber",
            daemon=True,
        )
        proc.start()
        child.close()
        self._extra.append(proc)
        if not parent.poll(120):
            proc.kill()
            raise WorkerError("the non-consuming subscriber did not start")
        client_id: str = parent.recv()
        self._extra_conns.append(parent)  # open while it lives: closing ends it
        return proc, client_id

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send((0, "stop", {}))
        for proc in self._procs:
            proc.join(15)
        for proc in [*self._procs, *self._extra]:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def new_root(prefix: str) -> str:
    return f"/bench/{prefix}-{uuid.uuid4().hex[:8]}"
