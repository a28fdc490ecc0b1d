"""The wire format is enough for a client in another language.

``tests/interop/WireClient.java`` was written from ``docs/wire-format.md``
alone, with ZooKeeper's own Java client and nothing of zkpubsub's. These
tests run it against a real server beside Python clients, both ways: its
messages reach Python subscribers as the Python publisher's would, and it
reads what a Python publisher writes, in order, from node data and from
node names, and leaves its queue empty. On a work queue, Python workers
take its items by priority, and it reserves and acks a Python producer's
items, answering one that waits for a result.
"""

from __future__ import annotations

import base64
import functools
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NamedTuple
from urllib.parse import parse_qsl

import msgpack
import pytest
from kazoo.client import KazooClient

from zkpubsub import Client
from zkpubsub.layout import Layout
from zkpubsub.testing.local import find_classpath, find_java

WIRE_CLIENT = Path(__file__).parent / "interop" / "WireClient.java"
TOPIC = "orders"


@functools.cache
def java_with_compiler() -> str:
    """The java that runs ZooKeeper, if it can run a source file (a JDK)."""
    java = find_java()
    modules = subprocess.run([java, "--list-modules"], capture_output=True, text=True, timeout=60)
    if "jdk.compiler" not in modules.stdout:
        pytest.fail(f"{java} cannot run the Java client: it needs a JDK (scripts/dev.sh install)")
    return java


def java_command(*args: str) -> list[str]:
    """The command line that runs the Java client (compiled on the fly)."""
    return [java_with_compiler(), "-cp", find_classpath(), str(WIRE_CLIENT), *args]


class Read(NamedTuple):
    """One message as the Java client printed it."""

    via: str  # "name" or "data": where the envelope was
    id: str
    topic: str
    publisher: str
    content_type: str
    headers: dict[str, str]
    payload: bytes


def parse_read(line: str) -> Read:
    word, via, msg_id, topic, publisher, content_type, _ts, headers, payload = line.split(" ")
    assert word == "message"
    pairs = {} if headers == "-" else dict(parse_qsl(headers, strict_parsing=True))
    return Read(via, msg_id, topic, publisher, content_type, pairs, base64.b64decode(payload))


@pytest.fixture
def java_subscriber(
    zk_hosts: str, zk_root: str
) -> Iterator[Callable[..., tuple[subprocess.Popen[str], IO[str]]]]:
    """``start(client_id, count, inline=...)``: the Java client subscribed
    to TOPIC, its ``ready`` line read; stopped at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(client_id: str, count: int, *, inline: bool) -> tuple[subprocess.Popen[str], IO[str]]:
        args = ["subscribe", zk_hosts, zk_root, TOPIC, client_id, str(count), "30"]
        proc = subprocess.Popen(
            java_command(*args, *(["inline"] if inline else [])),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(60)
        assert ready == ["ready\n"], f"the Java subscriber did not start: {ready} {proc.poll()}"
        return proc, proc.stdout

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("inline", [True, False], ids=["names", "data"])
def test_a_java_subscriber_reads_a_python_publisher_in_order(
    make_client: Callable[..., Client],
    java_subscriber: Callable[..., tuple[subprocess.Popen[str], IO[str]]],
    raw_zk: KazooClient,
    zk_root: str,
    inline: bool,
) -> None:
    proc, _ = java_subscriber("java-sub", 6, inline=inline)
    publisher = make_client(client_id="py-pub")
    small = [{"n": n} for n in range(3)]
    large = {"n": 3, "pad": "x" * 2000}  # past what a name may carry
    receipts = [publisher.publish(TOPIC, p, headers={"k": "v w"}) for p in small]
    receipts.append(publisher.publish(TOPIC, large))
    packed = publisher.publish_many(TOPIC, [{"n": 4}, {"n": 5}])  # one node, two messages
    assert [r.subscribers for r in receipts] == [1, 1, 1, 1] and packed.subscribers == 1
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    reads = [parse_read(line) for line in stdout.splitlines()]
    ids = [r.message_id for r in receipts] + list(packed.message_ids)
    assert [r.id for r in reads] == ids
    assert [msgpack.unpackb(r.payload) for r in reads] == [*small, large, {"n": 4}, {"n": 5}]
    assert {(r.topic, r.publisher, r.content_type) for r in reads} == {
        (TOPIC, "py-pub", "application/msgpack")
    }
    assert [r.headers for r in reads[:4]] == [{"k": "v w"}] * 3 + [{}]
    # the publisher honoured the queue record: names only where it asked
    expected = ["name", "name", "name", "data", "name", "name"] if inline else ["data"] * 6
    assert [r.via for r in reads] == expected
    segment = Layout(zk_root).segment(Layout(zk_root).queue("java-sub", TOPIC), 0)
    assert raw_zk.get_children(segment) == []  # it deleted what it read


def test_a_java_publisher_reaches_python_subscribers(
    make_client: Callable[..., Client], zk_hosts: str, zk_root: str, raw_zk: KazooClient
) -> None:
    subs = [make_client(client_id=f"py-sub-{n}").subscribe(TOPIC) for n in range(2)]
    run = subprocess.run(
        java_command("publish", zk_hosts, zk_root, TOPIC, "java-pub", "4"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    published = [line.split(" ") for line in run.stdout.splitlines()]
    assert [p[0] for p in published] == ["published"] * 4
    assert {p[2] for p in published} == {"2"}
    # Python subscribers ask for envelopes in names: the fourth is too big for one
    assert [p[3] for p in published] == ["name,name"] * 3 + ["data,data"]
    for sub in subs:
        got = [sub.get(timeout=10) for _ in range(4)]
        assert all(m is not None for m in got)
        messages = [m for m in got if m is not None]
        assert [m.id for m in messages] == [p[1] for p in published]
        assert [m.payload["n"] for m in messages] == [0, 1, 2, 3]
        assert {(m.topic, m.publisher_id, m.content_type) for m in messages} == {
            (TOPIC, "java-pub", "application/json")
        }
        assert all(m.headers == {"lang": "java"} for m in messages)
        assert messages[3].payload["pad"] == "x" * 600
        assert sub.get(timeout=0.5) is None
    # every receipt deleted once its answer came
    assert raw_zk.get_children(Layout(zk_root).client_receipts("java-pub")) == []


def test_the_java_client_refuses_bad_arguments_with_its_usage() -> None:
    run = subprocess.run(java_command("publish"), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.startswith("usage: WireClient publish")


def test_python_workers_take_a_java_producers_items_by_priority(
    make_client: Callable[..., Client], zk_hosts: str, zk_root: str
) -> None:
    queue = make_client(client_id="py-worker").queue("jobs")
    run = subprocess.run(
        java_command("put", zk_hosts, zk_root, "jobs", "java-producer", "3"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    put = [line.split(" ") for line in run.stdout.splitlines()]
    assert [(p[0], p[2]) for p in put] == [("put", "5"), ("put", "1"), ("put", "3")]
    taken = []
    for _ in range(3):
        item = queue.reserve(timeout=10)
        assert item is not None
        taken.append(item)
        item.ack()
    assert [i.id for i in taken] == [put[1][1], put[2][1], put[0][1]]  # lower priority first
    assert [(i.payload, i.priority, i.attempts) for i in taken] == [
        ({"n": 1}, 1, 1),
        ({"n": 2}, 3, 1),
        ({"n": 0}, 5, 1),
    ]
    assert {(i.producer_id, i.headers["lang"]) for i in taken} == {("java-producer", "java")}
    assert queue.reserve(timeout=0.5) is None
    stats = queue.stats()
    assert (stats.ready, stats.reserved, stats.dead) == (0, 0, 0)


def test_a_java_worker_acks_a_python_producers_items_and_answers_a_ticket(
    make_client: Callable[..., Client], zk_hosts: str, zk_root: str
) -> None:
    queue = make_client(client_id="py-producer").queue("jobs")
    plain = queue.put({"job": 1}, priority=7)
    ticket = queue.put({"job": 2}, priority=2, want_result=True)
    run = subprocess.run(
        java_command("work", zk_hosts, zk_root, "jobs", "java-worker", "2", "30"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr
    acked = [line.split(" ") for line in run.stdout.splitlines()]
    assert [(a[0], a[1], a[2]) for a in acked] == [
        ("acked", ticket.id, "1"),  # priority 2 before 7
        ("acked", plain, "1"),
    ]
    assert [msgpack.unpackb(base64.b64decode(a[4])) for a in acked] == [{"job": 2}, {"job": 1}]
    size = len(msgpack.packb({"job": 2}))
    assert base64.b64decode(acked[0][3]) == b'{"done":true,"bytes":%d}' % size
    assert ticket.wait(timeout=10) == {"done": True, "bytes": size}
    stats = queue.stats()
    assert (stats.ready, stats.reserved, stats.dead) == (0, 0, 0)
