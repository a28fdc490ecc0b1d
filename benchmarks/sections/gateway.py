"""Publish and pull through the HTTP gateway against the library, same run.

A gateway process (``python -m zkpubsub gateway``) on a free port of
127.0.0.1 serves a fresh root of the (warmed) standalone server. Both
sides use the same topic, the same 100-byte payload and the same
subscribers: one durable HTTP subscription and one durable library
subscription.

* **publish**: ``gateway_publishers`` threads, each sending one message at
  a time (an HTTP ``POST`` over its own keep-alive connection, or
  ``Client.publish``) for ``gateway_duration`` seconds. Messages per second.
* **pull**: a backlog of ``gateway_backlog`` messages, published while both
  consumers are away, then drained by one consumer each: through the
  gateway with ``pull`` (``max`` 100, ``auto_ack``), and with explicit
  acks (a pull and an ack per message, as a topic has one message out at a
  time); directly, by a library subscription's ``get`` in the same order.

Each pair runs ``repeats`` times in a rotating order; figures are medians
with their spread, and the ratio is gateway over library per repeat.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import credentials, payload, stats
from ..workers import new_root
from .common import TOPIC, Context, remove_tree

SUBSCRIPTION = "bench"
DIRECT_ID = "bench-direct"
PULL_BATCH = 100


class Http:
    """One keep-alive connection to the gateway."""

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        try:
            self._conn.request(method, path, body=body, headers=headers)
            answer = self._conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server closed the connection while it sat idle (uvicorn's
            # keep-alive ends after 5 s, a drain between cells takes longer)
            self._conn.close()
            self._conn.request(method, path, body=body, headers=headers)
            answer = self._conn.getresponse()
        data = answer.read()
        return answer.status, json.loads(data) if data else None

    def json(self, method: str, path: str, doc: Any) -> tuple[int, Any]:
        return self.call(method, path, json.dumps(doc).encode(), "application/json")

    def close(self) -> None:
        self._conn.close()


@contextlib.contextmanager
def _gateway(hosts: str, root: str) -> Iterator[int]:
    from zkpubsub.testing.local import free_ports

    port = free_ports(1)[0]
    command = [
        sys.executable, "-m", "zkpubsub", "--hosts", hosts, "--root", root,
        "gateway", "--port", str(port), "--max-wait", "10",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            try:
                http_conn = Http(port)
                status, _ = http_conn.call("GET", "/readyz", b"", "text/plain")
                http_conn.close()
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _publish_for(seconds: float, threads: int, send: Callable[[int, int], None]) -> float:
    """Messages per second of ``threads`` threads calling ``send(thread, seq)``."""
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def loop(index: int) -> None:
        seq = 0
        while time.monotonic() < stop:
            send(index, seq)
            seq += 1
        counts[index] = seq

    started = time.monotonic()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - started)


def run(ctx: Context) -> dict[str, Any]:
    from zkpubsub import Client

    p = ctx.profile
    root = new_root("gateway")
    errors: list[dict[str, str]] = []
    results: dict[str, list[float | None]] = {
        k: [] for k in ("publish_gateway", "publish_library", "pull_auto", "pull_acked", "get")
    }
    body = payload.make(0, 0.0, 0.0)
    try:
        with (
            _gateway(ctx.hosts, root) as port,
            Client(
                ctx.hosts, root=root, linger=0, cleaner=False, **credentials.security()
            ) as publisher,
            ctx.progress.phase("gateway") as phase,
        ):
            setup = Http(port)
            status, _ = setup.json("PUT", f"/subscriptions/{SUBSCRIPTION}", {"topics": [TOPIC]})
            if status != 201:
                raise RuntimeError(f"making the HTTP subscription answered {status}")
            with Client(
                ctx.hosts, root=root, client_id=DIRECT_ID, cleaner=False, **credentials.security()
            ) as direct:
                direct.subscribe(TOPIC, durable=True).close()
            conns = [Http(port) for _ in range(p.gateway_publishers)]

            def over_http(index: int, seq: int) -> None:
                status, _ = conns[index].call(
                    "POST", f"/topics/{TOPIC}/messages", body, "application/octet-stream"
                )
                if status != 201:
                    raise RuntimeError(f"publish answered {status}")

            def direct_publish(_index: int, _seq: int) -> None:
                publisher.publish(TOPIC, body)

            cells = {
                "publish_gateway": lambda: _publish_for(
                    p.gateway_duration, p.gateway_publishers, over_http
                ),
                "publish_library": lambda: _publish_for(
                    p.gateway_duration, p.gateway_publishers, direct_publish
                ),
            }
            phase.update("warming up")
            _publish_for(min(1.0, p.gateway_duration), p.gateway_publishers, over_http)
            _drain_all(setup, publisher, ctx.hosts, root)
            for repeat, _, key in stats.rotations(list(cells), p.repeats):
                phase.update(f"{key}, run {repeat + 1}")
                results[key].append(round(cells[key](), 1))
                _drain_all(setup, publisher, ctx.hosts, root)
            for repeat in range(p.repeats):
                phase.update(f"pull, run {repeat + 1}")
                _fill(publisher, p.gateway_backlog)
                results["pull_auto"].append(_pull(setup, p.gateway_backlog, auto=True))
                results["get"].append(_get(ctx.hosts, root, p.gateway_backlog))
                _fill(publisher, p.gateway_backlog_acked)
                results["pull_acked"].append(_pull(setup, p.gateway_backlog_acked, auto=False))
                _get(ctx.hosts, root, p.gateway_backlog_acked)
            for c in conns:
                c.close()
            setup.close()
            phase.summary = (
                f"publish {stats.median_of(results['publish_gateway'])} msg/s through it vs "
                f"{stats.median_of(results['publish_library'])} direct"
            )
    except Exception as exc:
        errors.append({"cell": "gateway", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        remove_tree(ctx.hosts, root)

    def ratios(a: str, b: str) -> dict[str, Any] | None:
        pairs = zip(results[a], results[b], strict=False)
        return stats.spread([stats.ratio(x, y) for x, y in pairs])

    return {
        "publishers": p.gateway_publishers,
        "duration_s": p.gateway_duration,
        "backlog": p.gateway_backlog,
        "backlog_acked": p.gateway_backlog_acked,
        "publish": {
            "gateway": stats.spread(results["publish_gateway"], 1),
            "library": stats.spread(results["publish_library"], 1),
            "ratio": ratios("publish_gateway", "publish_library"),
        },
        "pull": {
            "gateway_auto_ack": stats.spread(results["pull_auto"], 1),
            "gateway_acked": stats.spread(results["pull_acked"], 1),
            "library_get": stats.spread(results["get"], 1),
            "ratio_auto_ack": ratios("pull_auto", "get"),
            "ratio_acked": ratios("pull_acked", "get"),
        },
        "errors": errors,
    }


def _fill(publisher: Any, count: int) -> None:
    for start in range(0, count, 100):
        n = min(100, count - start)
        publisher.publish_many(TOPIC, [payload.make(start + i, 0.0, 0.0) for i in range(n)])


def _pull(conn: Http, count: int, *, auto: bool) -> float | None:
    """Messages per second draining ``count`` through the gateway."""
    got = 0
    started = time.monotonic()
    while got < count:
        ask = {"max": PULL_BATCH, "wait": 5, "auto_ack": True} if auto else {"wait": 5}
        status, answer = conn.json("POST", f"/subscriptions/{SUBSCRIPTION}/pull", ask)
        if status != 200 or not answer["messages"]:
            raise RuntimeError(f"pull answered {status} after {got} of {count}")
        got += len(answer["messages"])
        if not auto:
            ids = [m["ack_id"] for m in answer["messages"]]
            conn.json("POST", f"/subscriptions/{SUBSCRIPTION}/ack", {"ack_ids": ids})
    return stats.rate(got, time.monotonic() - started)


def _get(hosts: str, root: str, count: int) -> float | None:
    """Messages per second draining ``count`` with a library subscription."""
    from zkpubsub import Client

    with Client(
        hosts, root=root, client_id=DIRECT_ID, cleaner=False, **credentials.security()
    ) as client:
        sub = client.subscribe(TOPIC, durable=True)
        got = 0
        started = time.monotonic()
        while got < count:
            if sub.get(timeout=5) is None:
                raise RuntimeError(f"get found {got} of {count}")
            got += 1
        seconds = time.monotonic() - started
        sub.close()
    return stats.rate(got, seconds)


def _drain_all(conn: Http, publisher: Any, hosts: str, root: str) -> None:
    """Empty both subscriptions (what a publish cell left)."""
    while True:
        ask = {"max": 1000, "wait": 0.2, "auto_ack": True}
        status, answer = conn.json("POST", f"/subscriptions/{SUBSCRIPTION}/pull", ask)
        if status != 200 or not answer["messages"]:
            break
    from zkpubsub import Client

    with Client(
        hosts, root=root, client_id=DIRECT_ID, cleaner=False, **credentials.security()
    ) as client:
        sub = client.subscribe(TOPIC, durable=True)
        while sub.get(timeout=0.3) is not None:
            pass
        sub.close()
