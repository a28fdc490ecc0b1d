"""``zkpubsub demo``: cache invalidation and a work queue, for real.

It starts a local ZooKeeper, runs several subscriber processes that each
keep a small cache, publishes a stream of invalidations, kills one
subscriber with SIGKILL half-way, and waits for the elected cleaner to
remove the dead subscriber's queue once its grace period has passed. Then
two worker processes drain a work queue; one is killed with SIGKILL in the
middle of a task, and that task is delivered again to the other. It prints
what happened and exits non-zero if any check failed.

Every client takes credentials and TLS settings from the environment
(``ZKPUBSUB_CREDENTIALS``, ``ZKPUBSUB_DIGEST``…, see ``docs/security.md``).
With ``secured=True`` (``zkpubsub demo --secured``) the demo's server
refuses unauthenticated clients and every client uses a password made for
the run, handed to the subscriber and worker processes in their
environment, never on their command line.

With the ``gateway`` extra installed, the demo also runs the HTTP gateway
on a free port of 127.0.0.1 for its whole length (its URL is printed, with
the API docs at ``/docs``), and at the end publishes, pulls and acks a
message through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEMO_USER",
    "GRACE",
    "QUEUE",
    "SESSION_TIMEOUT",
    "TOPIC",
    "run_demo",
]


TOPIC = "cache.invalidate"
QUEUE = "thumbnails"
SESSION_TIMEOUT = 2.0
GRACE = 3.0
DEMO_USER = "demo"


def _security() -> dict[str, Any]:
    """Credentials and TLS settings from the environment (none by default)."""
    from .security import from_environment

    return from_environment().options()


@dataclass
class _Worker:
    name: str
    process: subprocess.Popen[str]
    received: list[int] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    killed: bool = False

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ready":
                self.ready.set()
            elif word == "got":
                self.received.append(int(rest))


def _subscriber_main(hosts: str, client_id: str) -> None:
    """A service instance: keeps a cache and drops keys it is told to."""
    from .client import Client

    cache = {f"user:{i}": {"name": f"user {i}"} for i in range(50)}

    def invalidate(msg: object) -> None:
        payload = msg.payload  # type: ignore[attr-defined]
        cache.pop(payload["key"], None)
        print("got", payload["seq"], flush=True)

    client = Client(hosts, client_id=client_id, session_timeout=SESSION_TIMEOUT, **_security())
    client.subscribe(TOPIC, invalidate)
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    client.close()


def _worker_main(hosts: str, name: str, hang_on: int) -> None:
    """A worker process; it freezes forever on task ``hang_on`` (first try)."""
    from .client import Client

    client = Client(hosts, client_id=name, session_timeout=SESSION_TIMEOUT, **_security())
    queue = client.queue(QUEUE)
    print("ready", flush=True)
    while True:
        item = queue.reserve(timeout=None)
        assert item is not None
        print("start", item.payload, item.attempts, flush=True)
        if item.payload == hang_on and item.attempts == 1:
            signal.sigwait({signal.SIGTERM})  # stuck mid-task until killed
        time.sleep(0.02)  # the work
        item.ack()
        print("done", item.payload, item.attempts, flush=True)


@dataclass
class _QueueWorker:
    name: str
    process: subprocess.Popen[str]
    events: list[tuple[str, int, int]] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            parts = line.split()
            if parts == ["ready"]:
                self.ready.set()
            elif len(parts) == 3:
                self.events.append((parts[0], int(parts[1]), int(parts[2])))


def _queue_demo(hosts: str, step: Callable[[str], None], failures: list[str]) -> None:
    from .client import Client

    tasks, hang_on = 20, 7
    with Client(
        hosts, client_id="producer", session_timeout=SESSION_TIMEOUT, **_security()
    ) as client:
        queue = client.queue(QUEUE)
        queue.put_many(range(tasks))
        step(f"put {tasks} tasks into the work queue {QUEUE!r}; two worker processes start")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        workers = []
        for name in ("worker-a", "worker-b"):
            args = [sys.executable, "-m", "zkpubsub.demo", "worker", hosts, name, str(hang_on)]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
            worker = _QueueWorker(name, proc)
            threading.Thread(target=worker.read, daemon=True).start()
            workers.append(worker)
        try:
            deadline = time.monotonic() + 30
            stuck = None
            while stuck is None and time.monotonic() < deadline:
                stuck = next((w for w in workers if ("start", hang_on, 1) in w.events), None)
                time.sleep(0.02)
            if stuck is None:
                failures.append(f"no worker started task {hang_on}")
                return
            stuck.process.send_signal(signal.SIGKILL)
            stuck.process.wait()
            step(f"{stuck.name} froze in the middle of task {hang_on}; killed it with SIGKILL")
            survivor = next(w for w in workers if w is not stuck)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(queue) > 0:
                time.sleep(0.1)
            redo = [e for e in survivor.events if e[0] == "done" and e[1] == hang_on]
            if redo:
                step(
                    f"task {hang_on} came back once {stuck.name}'s session expired; "
                    f"{survivor.name} did it (attempt {redo[0][2]})"
                )
            else:
                failures.append(f"task {hang_on} was not redelivered")
            done = [e[1] for w in workers for e in w.events if e[0] == "done"]
            stats = queue.stats()
            step(
                f"queue: {len(set(done))}/{tasks} tasks acked, {stats.ready} ready, "
                f"{stats.reserved} reserved, {stats.dead} dead"
            )
            if sorted(done) != list(range(tasks)):
                failures.append(
                    f"tasks acked: {sorted(done)}, expected each of 0..{tasks - 1} once"
                )
        finally:
            for w in workers:
                if w.process.poll() is None:
                    w.process.kill()
                w.process.wait(10)


def run_demo(
    *,
    subscribers: int = 3,
    messages: int = 300,
    out: Callable[[str], None] = print,
    secured: bool = False,
) -> int:
    from .client import Client
    from .testing.secure import ServerSecurity
    from .testing.server import ZooKeeperCluster

    if subscribers < 2 or messages < 10:
        raise ValueError("the demo needs at least 2 subscribers and 10 messages")
    failures: list[str] = []
    started = time.monotonic()

    def step(text: str) -> None:
        out(f"[{time.monotonic() - started:5.1f}s] {text}")

    security = None
    if secured:
        # a password for this run, in the environment the children inherit
        os.environ["ZKPUBSUB_DIGEST"] = f"{DEMO_USER}:{secrets.token_urlsafe(12)}"
        security = ServerSecurity(enforce_auth=True, enforce_schemes=("digest",))
    step("starting a local ZooKeeper (standalone, 127.0.0.1, a free port)")
    with ZooKeeperCluster(1, security=security) as zk, contextlib.ExitStack() as later:
        step(f"ZooKeeper serving at {zk.hosts}")
        if secured:
            step("it refuses unauthenticated clients; every node gets the secured ACL")
        with Client(
            zk.hosts, client_id="publisher", session_timeout=SESSION_TIMEOUT, **_security()
        ) as pub:
            cleaner = pub.start_cleaner(grace=GRACE, interval=1.0)
            cleaner.wait_leader(10)
            step(f"cleaner elected on the publisher's client (grace {GRACE:g}s)")
            # after the election: the gateway's client stands as a candidate too
            gateway = later.enter_context(_gateway(zk.hosts, step, failures))
            workers: list[_Worker] = []
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            for i in range(subscribers):
                name = f"cache-{i + 1}"
                proc = subprocess.Popen(
                    [sys.executable, "-m", "zkpubsub.demo", "subscriber", zk.hosts, name],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                worker = _Worker(name, proc)
                threading.Thread(target=worker.read, daemon=True).start()
                workers.append(worker)
            try:
                for w in workers:
                    if not w.ready.wait(30):
                        failures.append(f"{w.name} did not start")
                        return _finish(step, failures)
                step(f"{subscribers} subscriber processes, each with its own cache, subscribed")
                victim = workers[1]
                kill_at = messages // 3
                step(
                    f"publishing {messages} invalidations; {victim.name} is killed after {kill_at}"
                )
                t0 = time.monotonic()
                for seq in range(messages):
                    if seq == kill_at:
                        victim.process.send_signal(signal.SIGKILL)
                        victim.process.wait()
                        victim.killed = True
                        step(f"killed {victim.name} with SIGKILL (pid {victim.process.pid})")
                    receipt = pub.publish(TOPIC, {"seq": seq, "key": f"user:{seq % 50}"})
                    if seq % 100 == 99:
                        step(
                            f"  published {seq + 1}/{messages} (last reached {receipt.subscribers})"
                        )
                    time.sleep(0.012)
                rate = messages / (time.monotonic() - t0)
                step(f"published {messages} messages ({rate:.0f} msg/s with pauses)")
                survivors = [w for w in workers if not w.killed]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and any(
                    len(w.received) < messages for w in survivors
                ):
                    time.sleep(0.1)
                backlog = {
                    q.client_id: q.backlog for q in pub.stats().queues if q.client_id == victim.name
                }
                if backlog:
                    step(f"{victim.name}'s queue holds {backlog[victim.name]} undelivered node(s)")
                step(f"waiting for the cleaner to remove {victim.name}'s queue after the grace")
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not cleaner.stats().clients_removed:
                    time.sleep(0.25)
                if any(q.client_id == victim.name for q in pub.stats().queues):
                    failures.append(f"the cleaner did not remove {victim.name}'s queue")
                stats = cleaner.stats()
                step(
                    f"cleaner: {stats.sweeps} sweeps, {stats.queues_removed} queue(s) and "
                    f"{stats.nodes_removed} message node(s) removed"
                )
            finally:
                for w in workers:
                    if w.process.poll() is None:
                        w.process.terminate()
                for w in workers:
                    try:
                        w.process.wait(10)
                    except subprocess.TimeoutExpired:
                        w.process.kill()
            out("")
            out("subscriber  received  in order  status")
            for w in workers:
                in_order = w.received == sorted(w.received) and len(set(w.received)) == len(
                    w.received
                )
                status = "killed" if w.killed else "running"
                order = "yes" if in_order else "NO"
                out(f"{w.name:<10}  {len(w.received):>8}  {order:<8}  {status}")
                if not w.killed and w.received != list(range(messages)):
                    failures.append(f"{w.name} got {len(w.received)}/{messages} or out of order")
                if not in_order:
                    failures.append(f"{w.name} saw messages out of order")
            out("")
        _queue_demo(zk.hosts, step, failures)
        if gateway is not None:
            _gateway_demo(gateway, step, failures)
    return _finish(step, failures)


@contextlib.contextmanager
def _gateway(hosts: str, step: Callable[[str], None], failures: list[str]) -> Iterator[str | None]:
    """The HTTP gateway in a process of its own for the demo's length, if its
    extra is installed: its URL (``None`` without the extra, or, a failure
    of the demo, if it did not start)."""
    from .gateway import require_extra
    from .testing.local import free_ports

    try:
        require_extra()
    except ImportError:
        step("(pip install 'zkpubsub[gateway]' to see the HTTP gateway in the demo too)")
        yield None
        return
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "zkpubsub", "--hosts", hosts, "gateway", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while _http(url, "GET", "/readyz")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                step("the HTTP gateway did not start; going on without it")
                failures.append(
                    "the HTTP gateway did not start (run `zkpubsub gateway` to see why)"
                )
                yield None
                return
            time.sleep(0.2)
        step(f"HTTP gateway at {url} (API docs at {url}/docs) while the demo runs")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _http(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """``(status, JSON answer)`` of one request (status 0 if none came)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            text = answer.read()
            return answer.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def _gateway_demo(url: str, step: Callable[[str], None], failures: list[str]) -> None:
    """A durable subscription, a publish, a pull and an ack, over HTTP."""
    status, _ = _http(url, "PUT", "/subscriptions/demo", {"topics": ["demo.http"]})
    step(f"HTTP: PUT /subscriptions/demo → {status}")
    status, receipt = _http(url, "POST", "/topics/demo.http/messages", {"hello": "http"})
    reached = receipt["subscribers"] if receipt else "?"
    step(f"HTTP: POST /topics/demo.http/messages → {status}, reached {reached} subscriber(s)")
    status, pulled = _http(url, "POST", "/subscriptions/demo/pull", {"wait": 10})
    messages = pulled["messages"] if pulled else []
    if [m.get("payload") for m in messages] != [{"hello": "http"}]:
        failures.append("the message published over HTTP was not pulled back")
        return
    ack = {"ack_ids": [messages[0]["ack_id"]]}
    status, acked = _http(url, "POST", "/subscriptions/demo/ack", ack)
    step(f"HTTP: pulled it and acked it ({status}, {len(acked['acked']) if acked else 0} acked)")
    _http(url, "DELETE", "/subscriptions/demo")


def _finish(step: Callable[[str], None], failures: list[str]) -> int:
    if failures:
        for f in failures:
            step(f"FAILED: {f}")
        return 1
    step(
        "every live subscriber got every message in order; the dead one's queue is gone; "
        "every task was done once, the interrupted one again by the other worker"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "subscriber":
        _subscriber_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "worker":
        _worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(run_demo())
