"""The gateway under faults and in its deployments: killed (SIGKILL) and
restarted, idle subscriptions let go, two gateways side by side, TLS on the
listener, bus credentials per token, and the secure defaults of its
command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from kazoo.client import KazooClient

from zkpubsub import Client
from zkpubsub._purges import purge_record
from zkpubsub.layout import Layout
from zkpubsub.testing import ZooKeeperCluster
from zkpubsub.testing.fixtures import ZooKeeperBackend
from zkpubsub.testing.proxy import TcpProxy
from zkpubsub.testing.secure import TlsMaterial

from .gateway_proc import ROOT_DIR, gateway, log_of, start_gateway, stop_gateway
from .helpers import wait_until

pytestmark = [pytest.mark.timeout(120)]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def pull_payloads(api: httpx.Client, name: str, count: int, wait: float = 15) -> list[Any]:
    """Pull and ack until ``count`` messages came; their payloads."""
    got: list[Any] = []
    deadline = time.monotonic() + wait
    while len(got) < count and time.monotonic() < deadline:
        answer = api.post(f"/subscriptions/{name}/pull", json={"max": 10, "wait": 2})
        assert answer.status_code == 200, answer.text
        batch = answer.json()["messages"]
        got += [m["payload"] for m in batch]
        if batch:
            ids = [m["ack_id"] for m in batch]
            api.post(f"/subscriptions/{name}/ack", json={"ack_ids": ids})
    return got


def test_a_gateway_killed_with_sigkill_loses_nothing(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    topic, queue, name = unique("t-"), unique("q-"), unique("sub-")
    url, process = start_gateway(zookeeper.hosts, zk_root)
    try:
        with httpx.Client(base_url=url, timeout=30) as api:
            assert api.put(f"/subscriptions/{name}", json={"topics": [topic]}).status_code == 201
            api.post(
                f"/topics/{topic}/messages:batch",
                json={"messages": [{"payload": i} for i in range(3)]},
            )
            taken = api.post(f"/subscriptions/{name}/pull", json={"wait": 5}).json()["messages"]
            assert [m["payload"] for m in taken] == [0]  # out, never acked
            api.post(f"/queues/{queue}/items", json="job")
            [item] = api.post(f"/queues/{queue}/reserve", json={"wait": 5}).json()["items"]
    finally:
        stop_gateway(process, kill=True)
    with Client(zookeeper.hosts, root=zk_root, session_timeout=4.0, cleaner=False) as bus:
        receipt = bus.publish_many(topic, [3, 4])  # while no gateway runs
        assert receipt.subscribers == 1  # the durable subscription is still registered
    url, process = start_gateway(zookeeper.hosts, zk_root)
    try:
        with httpx.Client(base_url=url, timeout=30) as api:
            assert pull_payloads(api, name, 5) == [0, 1, 2, 3, 4]
            # the item reserved through the dead gateway comes back once its session is gone
            again = api.post(f"/queues/{queue}/reserve", json={"wait": 10}).json()["items"]
            assert [i["id"] for i in again] == [item["id"]] and again[0]["attempts"] == 2
            old = api.post(f"/queues/{queue}/reservations/{item['reservation']}/ack", json={})
            assert old.status_code == 404  # made through the dead gateway: this one holds nothing
            rid = again[0]["reservation"]
            assert api.post(f"/queues/{queue}/reservations/{rid}/ack", json={}).status_code == 204
    finally:
        stop_gateway(process)


def _held(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("zkpubsub_gateway_subscriptions_held "):
            return float(line.split()[1])
    raise AssertionError("no zkpubsub_gateway_subscriptions_held in /metrics")


def test_an_idle_subscription_is_let_go_and_keeps_what_is_published_meanwhile(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    topic, name = unique("t-"), unique("sub-")
    with (
        # long enough for the metrics read right after the subscribe, loaded or not
        gateway(zookeeper.hosts, zk_root, args=["--idle-timeout", "3"]) as url,
        httpx.Client(base_url=url, timeout=30) as api,
    ):
        assert api.put(f"/subscriptions/{name}", json={"topics": [topic]}).status_code == 201
        assert _held(url) == 1
        deadline = time.monotonic() + 15
        while _held(url) != 0:  # the consumer went away: the gateway lets go
            assert time.monotonic() < deadline, "the idle subscription was not let go"
            time.sleep(0.2)
        receipt = api.post(f"/topics/{topic}/messages", json="while away").json()
        assert receipt["subscribers"] == 1
        assert pull_payloads(api, name, 1) == ["while away"]  # taken up again on demand


def test_a_message_out_within_its_ack_deadline_keeps_its_subscription_held(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    """The idle timeout let go of a subscription whose pulled message could
    still be acked: the ack answered ``unknown``, and the message came again
    with ``deliveries`` 1."""
    topic, name = unique("t-"), unique("sub-")
    with (
        gateway(zookeeper.hosts, zk_root, args=["--idle-timeout", "1"]) as url,
        httpx.Client(base_url=url, timeout=30) as api,
    ):
        assert api.put(f"/subscriptions/{name}", json={"topics": [topic]}).status_code == 201
        api.post(f"/topics/{topic}/messages", json="m")
        answer = api.post(f"/subscriptions/{name}/pull", json={"wait": 10, "ack_deadline": 8})
        [message] = answer.json()["messages"]
        time.sleep(4)  # idle for four times its timeout, the message still out
        assert _held(url) == 1
        acked = {"ack_ids": [message["ack_id"]]}
        answer = api.post(f"/subscriptions/{name}/ack", json=acked)
        assert answer.json()["acked"] == [message["ack_id"]], answer.text
        deadline = time.monotonic() + 15
        while _held(url) != 0:  # nothing out: let go once idle
            assert time.monotonic() < deadline, "the idle subscription was not let go"
            time.sleep(0.2)
        again = api.post(f"/subscriptions/{name}/pull", json={"wait": 1}).json()
        assert again["messages"] == []  # acked: gone for good


def test_a_long_poll_whose_consumer_went_away_takes_nothing_for_nobody(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    """A pull or reserve went on waiting after its client had gone: an
    auto-acked pull took the next message for good, an explicit one held it
    for its ack deadline, a reserve held the next item for its lease."""
    topic, name, queue = unique("t-"), unique("sub-"), unique("q-")
    with (
        gateway(zookeeper.hosts, zk_root) as url,
        httpx.Client(base_url=url, timeout=30) as api,
    ):
        assert api.put(f"/subscriptions/{name}", json={"topics": [topic]}).status_code == 201

        def abandoned(path: str, body: dict[str, Any]) -> None:
            with pytest.raises(httpx.ReadTimeout):  # the client leaves, the poll waits on
                httpx.post(f"{url}{path}", json=body, timeout=1.0)
            time.sleep(0.5)

        for auto_ack in (True, False):
            abandoned(f"/subscriptions/{name}/pull", {"wait": 20, "auto_ack": auto_ack})
            api.post(f"/topics/{topic}/messages", json=f"auto {auto_ack}")
            answer = api.post(f"/subscriptions/{name}/pull", json={"wait": 5}).json()
            got = [(m["payload"], m["deliveries"]) for m in answer["messages"]]
            assert got == [(f"auto {auto_ack}", 1)], auto_ack
            acked = {"ack_ids": [answer["messages"][0]["ack_id"]]}
            assert api.post(f"/subscriptions/{name}/ack", json=acked).json()["acked"]
        abandoned(f"/queues/{queue}/reserve", {"wait": 20})
        assert api.post(f"/queues/{queue}/items", json="job").status_code in (200, 201, 202)
        items = api.post(f"/queues/{queue}/reserve", json={"wait": 5}).json()["items"]
        assert [(i["payload"], i["attempts"]) for i in items] == [("job", 1)]


def test_a_delete_no_server_answers_is_no_204_and_a_delete_again_finishes_it(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    """A DELETE while ZooKeeper did not answer was a 204: the end was left
    to a client the gateway closed at once, the subscription stayed, and
    the next GET took it up again."""
    topic, name = unique("t-"), unique("sub-")
    host, port = zookeeper.hosts.split(",")[0].rsplit(":", 1)
    with (
        TcpProxy((host, int(port)), name="gateway-delete") as proxy,
        gateway(proxy.address, zk_root) as url,
        httpx.Client(base_url=url, timeout=60) as api,
    ):
        assert api.put(f"/subscriptions/{name}", json={"topics": [topic]}).status_code == 201
        proxy.block("reset")
        answer = api.delete(f"/subscriptions/{name}")
        assert answer.status_code in (503, 504), answer.text
        proxy.unblock()
        wait_until(
            lambda: api.get(f"/subscriptions/{name}").status_code == 200,
            30,
            "the subscription, still there",
        )
        assert api.delete(f"/subscriptions/{name}").status_code == 204
        assert api.get(f"/subscriptions/{name}").status_code == 404


def test_a_stop_answers_the_long_polls_and_ends_the_streams_under_way(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    """SIGTERM while a pull, a reserve and an event stream waited: uvicorn
    waited out its 5 s for them, then cancelled them: the pull and the
    reserve got a plain-text 500, the stream was cut off mid-chunk, and the
    log had a traceback for each."""
    import concurrent.futures

    topic, name, queue = unique("t-"), unique("sub-"), unique("q-")
    url, process = start_gateway(zookeeper.hosts, zk_root)
    try:
        with httpx.Client(base_url=url, timeout=60) as api:
            assert api.put(f"/subscriptions/{name}", json={"topics": [topic]}).status_code == 201

            def stream(path: str) -> str:
                with api.stream("GET", path) as answer:
                    return "".join(answer.iter_text())

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                pull = pool.submit(api.post, f"/subscriptions/{name}/pull", json={"wait": 25})
                reserve = pool.submit(api.post, f"/queues/{queue}/reserve", json={"wait": 25})
                events = pool.submit(stream, f"/subscriptions/{name}/events")
                console = pool.submit(stream, "/ui/events")
                time.sleep(1.5)  # all four waiting
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                code = process.wait(30)
                took = time.monotonic() - started
                answers = (pull.result(10), reserve.result(10))
                streamed = events.result(10)
                console_streamed = console.result(10)
    finally:
        if process.poll() is None:
            stop_gateway(process, kill=True)
    assert code == 0
    for answer in answers:
        assert answer.status_code == 200, answer.text
    assert answers[0].json()["messages"] == [] and answers[1].json()["items"] == []
    assert ": connected" in streamed  # and it ended, not cut off
    assert "event: snapshot" in console_streamed
    assert took < 4.5, took  # not the 5 s uvicorn gives them before cancelling
    assert "Traceback" not in log_of(process)


def test_a_body_that_does_not_arrive_in_time_is_a_408(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    """A client that announced 10 bytes and sent 5 held its connection and
    the request's task for as long as it liked (40 s and more)."""
    with gateway(zookeeper.hosts, zk_root, args=["--body-timeout", "1"]) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /topics/t/messages HTTP/1.1\r\nHost: gateway\r\n"
                b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n12345"
            )
            started = time.monotonic()
            received = b""
            while chunk := sock.recv(65536):  # to the end: the gateway closes the connection
                received += chunk
            took = time.monotonic() - started
            answer = received.decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "BodyTimeout" in answer and took < 8, took


def test_a_gap_notice_not_yet_pulled_outlasts_the_subscription_being_let_go(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    name = unique("sub-")
    zk = KazooClient(hosts=zookeeper.hosts, timeout=10.0)
    zk.start(timeout=15)
    try:  # the notice of a purge, as the cleaner leaves it for the subscription's client
        marker = Layout(zk_root).purge_marker(f"http-{name}")
        zk.create(marker, purge_record(["t-gone"], finished=True), makepath=True)
    finally:
        zk.stop()
        zk.close()
    with (
        gateway(zookeeper.hosts, zk_root, args=["--idle-timeout", "1"]) as url,
        httpx.Client(base_url=url, timeout=30) as api,
    ):
        assert api.put(f"/subscriptions/{name}", json={"topics": ["t"]}).status_code == 201
        deadline = time.monotonic() + 15
        while _held(url) != 0:  # let go before anyone pulled
            assert time.monotonic() < deadline, "the idle subscription was not let go"
            time.sleep(0.2)
        answer = api.post(f"/subscriptions/{name}/pull", json={}).json()
        assert [(g["reason"], g["topics"]) for g in answer["gaps"]] == [
            ("backlog purged", ["t-gone"])
        ]


def test_two_gateways_side_by_side_share_topics_and_queues_and_one_holds_a_subscription(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    topic, queue, name = unique("t-"), unique("q-"), unique("sub-")
    with (
        gateway(zookeeper.hosts, zk_root, args=["--idle-timeout", "2"]) as one,
        gateway(zookeeper.hosts, zk_root) as two,
    ):
        a, b = httpx.Client(base_url=one, timeout=30), httpx.Client(base_url=two, timeout=30)
        assert a.put(f"/subscriptions/{name}", json={"topics": [topic]}).status_code == 201
        assert b.post(f"/topics/{topic}/messages", json="via two").json()["subscribers"] == 1
        held = b.post(f"/subscriptions/{name}/pull", json={})
        assert held.status_code == 409 and held.json()["error"] == "ClientIdInUse"
        # nothing of the holder's machine: its host and pid are the bus's business
        detail = held.json()["detail"]
        assert "held by another live session" in detail, detail
        assert socket.gethostname() not in detail and "pid" not in detail, detail
        assert pull_payloads(a, name, 1) == ["via two"]
        b.post(f"/queues/{queue}/items", json="work")
        [item] = a.post(f"/queues/{queue}/reserve", json={"wait": 5}).json()["items"]
        assert item["payload"] == "work"
        elsewhere = b.post(f"/queues/{queue}/reservations/{item['reservation']}/ack", json={})
        assert elsewhere.status_code == 404 and "another gateway" in elsewhere.json()["detail"]
        rid = item["reservation"]
        assert a.post(f"/queues/{queue}/reservations/{rid}/ack", json={}).status_code == 204
        # once the first gateway lets the idle subscription go, the second takes it up
        a.post(f"/topics/{topic}/messages", json="later")
        deadline = time.monotonic() + 20
        while b.get(f"/subscriptions/{name}").status_code == 409:
            assert time.monotonic() < deadline, "the second gateway never took the subscription"
            time.sleep(0.2)
        assert pull_payloads(b, name, 1) == ["later"]


def test_the_listener_speaks_tls(
    zookeeper: ZooKeeperBackend, zk_root: str, tls_material: TlsMaterial
) -> None:
    cert, key = tls_material.folder / "server.pem", tls_material.folder / "server.key"
    ca = ssl.create_default_context(cafile=str(tls_material.ca_cert))
    url, process = start_gateway(
        zookeeper.hosts,
        zk_root,
        args=["--tls-cert", str(cert), "--tls-key", str(key)],
        scheme="https",
        verify=ca,
    )
    try:
        assert httpx.get(f"{url}/readyz", verify=ca).status_code == 200
        done = subprocess.run(
            ["curl", "-sS", "--cacert", str(tls_material.ca_cert), "-X", "POST",
             "-H", "Content-Type: text/plain", "--data", "over tls", f"{url}/topics/t/messages"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(done.stdout)["subscribers"] == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{url.rsplit(':', 1)[1]}/readyz", timeout=5)
    finally:
        stop_gateway(process)


def test_a_token_uses_its_own_bus_credentials_and_no_credential_is_ever_shown(
    zookeeper: ZooKeeperBackend, zk_root: str, tmp_path: Path
) -> None:
    credentials = tmp_path / "billing.toml"
    credentials.write_text('acl = "secured"\n[auth]\ndigest = "billing:billing-secret-pw"\n')
    token = "billing-token-0123456789"
    tokens = {
        "credentials": {"billing": str(credentials)},
        "tokens": [{"name": "billing", "token": token, "credentials": "billing",
                    "topics": ["bill.*"], "subscriptions": ["*"]}],
    }  # fmt: skip
    env = {"ZKPUBSUB_DIGEST": "gateway:gateway-secret-pw", "ZKPUBSUB_ACL": "open"}
    url, process = start_gateway(zookeeper.hosts, zk_root, tokens, env=env, global_args=["-v"])
    try:
        api = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"})
        answers = [
            api.put("/subscriptions/billing", json={"topics": ["bill.x"]}),
            api.post("/topics/bill.x/messages", json="invoice"),
            api.post("/subscriptions/billing/pull", json={"wait": 5}),
            api.post(
                "/topics/bill.x/messages", content="{", headers={"Content-Type": "application/json"}
            ),
            api.post("/topics/other/messages", json=1),
            httpx.get(f"{url}/openapi.json"),
            httpx.get(f"{url}/metrics"),
        ]
        assert [a.status_code for a in answers[:5]] == [201, 201, 200, 400, 403]
        assert answers[2].json()["messages"][0]["payload"] == "invoice"
        zk = KazooClient(zookeeper.hosts, auth_data=[("digest", "billing:billing-secret-pw")])
        zk.start(15)
        try:  # the subscription was registered with the token's credentials
            acls, _ = zk.get_acls(f"{zk_root}/subscribers/bill.x/http-billing")
        finally:
            zk.stop()
            zk.close()
        assert [(a.id.scheme, a.id.id.split(":")[0]) for a in acls] == [("digest", "billing")]
        # credentials spoilt after the start: a subscription opened with them
        # is a problem that names no path (it was a 500)
        credentials.write_text("acl = [")
        spoilt = api.put("/subscriptions/billing2", json={"topics": ["bill.y"]})
        answers.append(spoilt)
        assert spoilt.status_code == 502, spoilt.text
        assert spoilt.json()["error"] == "SecurityError"
        assert str(tmp_path) not in spoilt.text
    finally:
        stop_gateway(process)
    shown = "".join(a.text for a in answers) + log_of(process)
    for secret in ("billing-secret-pw", "gateway-secret-pw", token):
        assert secret not in shown


def _cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    argv = ["zkpubsub", *args]
    code = f"{prelude}\nimport sys\nfrom zkpubsub.cli import run\nsys.argv = {argv!r}\nrun()"
    env = dict(os.environ, PYTHONPATH=str(ROOT_DIR))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )


def test_without_tokens_the_gateway_refuses_to_listen_beyond_loopback() -> None:
    done = _cli("gateway", "--host", "0.0.0.0", "--port", "1")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without --tokens" in done.stderr


def test_the_gateway_names_its_extra_when_its_packages_are_missing() -> None:
    blocked = "import sys\nsys.modules['fastapi'] = None\nimport zkpubsub, zkpubsub.aio"
    done = _cli("gateway", prelude=blocked)
    assert done.returncode != 0
    assert "pip install 'zkpubsub[gateway]'" in done.stderr


def test_a_reserve_or_a_pull_ends_at_its_wait_while_zookeeper_is_frozen(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    import concurrent.futures

    zk = make_cluster(1)
    (node,) = zk.nodes
    url, process = start_gateway(
        zk.hosts, "/frozen", args=["--max-wait", "3", "--idle-timeout", "1"]
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as api:
            queue, name = unique("q-"), unique("sub-")
            assert api.post(f"/queues/{queue}/reserve", json={"wait": 0}).status_code == 200
            assert api.put(f"/subscriptions/{name}", json={"topics": ["t"]}).status_code == 201
            deadline = time.monotonic() + 15
            while _held(url) != 0:  # let go: a pull must open it again
                assert time.monotonic() < deadline, "the idle subscription was not let go"
                time.sleep(0.2)

            def timed(path: str, body: dict[str, Any]) -> tuple[float, httpx.Response]:
                started = time.monotonic()
                answer = api.post(path, json=body)
                return time.monotonic() - started, answer

            node.pause()
            try:
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    asked = [
                        pool.submit(timed, f"/queues/{queue}/reserve", {"wait": 30}),
                        pool.submit(timed, f"/subscriptions/{name}/pull", {"wait": 30}),
                    ]
                    answers = [each.result() for each in asked]
            finally:
                node.resume()
            # --max-wait bounds the long poll (a reserve waited the request
            # timeout, 25-30 s, before; a pull opening its subscription again
            # did still); ZooKeeper's silence is a 503 to retry
            for took, answer in answers:
                assert took < 3 + 1 + 2, (took, answer.text)
                assert answer.status_code == 503, answer.text
                doc = answer.json()
                assert doc["error"] == "ConnectionLost" and answer.headers["Retry-After"] == "1"
            # once ZooKeeper answers again, an item put is reserved as usual
            api.post(f"/queues/{queue}/items", json="job")
            deadline = time.monotonic() + 60
            items: list[Any] = []
            while not items and time.monotonic() < deadline:
                answer = api.post(f"/queues/{queue}/reserve", json={"wait": 3})
                if answer.status_code == 200:
                    items = answer.json()["items"]
            assert [i["payload"] for i in items] == ["job"]
    finally:
        stop_gateway(process, kill=True)


def test_error_details_never_name_a_zookeeper_path() -> None:
    from zkpubsub.errors import ConnectionLost
    from zkpubsub.gateway.problems import problem_for, without_paths

    problem = problem_for(ConnectionLost("stat /zkpubsub/queues/q/items: not connected"))
    assert problem.detail == "stat <node>: not connected" and problem.status == 503
    assert without_paths("NoNodeError: /zkpubsub") == "NoNodeError: <node>"

    text = "stat /zkpubsub/queues/q/items: not connected to ZooKeeper in time"
    assert without_paths(text) == "stat <node>: not connected to ZooKeeper in time"
    assert without_paths("read /a/b/q100-s0000000001-x, then") == "read <node>, then"
    assert without_paths("topic must not be '..'") == "topic must not be '..'"


def test_one_tokens_idempotency_keys_do_not_push_out_anothers() -> None:
    """Before, all tokens shared one list of keys: a busy (or hostile) token
    pushed the others' keys out before their time, and their retries ran
    twice."""
    import asyncio

    from zkpubsub.gateway.idempotency import IdempotencyStore

    async def scenario() -> list[tuple[str, bool]]:
        store = IdempotencyStore(3600.0, 2)
        runs: list[str] = []

        async def run(token: str, key: str) -> tuple[str, bool]:
            async def work() -> str:
                runs.append(f"{token}:{key}")
                return key

            return await store.run(("put", token, "q"), key, key.encode(), work)

        assert await run("a", "a1") == ("a1", False)
        for n in range(5):  # more keys than the limit, all of token b
            await run("b", f"b{n}")
        assert len(store) == 3  # a's one and b's last two
        outcomes = [await run("a", "a1"), await run("b", "b4"), await run("b", "b0")]
        assert runs.count("a:a1") == 1 and runs.count("b:b0") == 2
        return outcomes

    assert asyncio.run(scenario()) == [("a1", True), ("b4", True), ("b0", False)]


def test_a_retry_after_a_failure_that_may_have_written_gets_that_failure_again() -> None:
    """Every failed attempt was forgotten: a retry of a publish that timed
    out after it was sent (504), or of a batch published in part (502),
    with the same Idempotency-Key, wrote it all again."""
    import asyncio

    from zkpubsub.errors import (
        ConnectionLost,
        NotAuthorized,
        OperationTimeout,
        PartlyPublished,
        PublishTimeout,
    )
    from zkpubsub.gateway.idempotency import IdempotencyStore
    from zkpubsub.gateway.problems import Problem

    def partly() -> Exception:
        return PartlyPublished("p", message_ids=("m",), reached=1, cause=NotAuthorized("n"))

    failures: dict[str, tuple[Callable[[], Exception], int]] = {
        "sent, not confirmed": (lambda: PublishTimeout("t", message_ids=("m",)), 1),
        "published in part": (partly, 1),
        "a batch in part": (lambda: Problem(502, "p", "P", "d", error="PartlyPublished"), 1),
        "never sent": (lambda: PublishTimeout("t", message_ids=("m",), sent=False), 2),
        "no connection": (lambda: ConnectionLost("gone"), 2),
        "not connected in time": (lambda: OperationTimeout("not connected in time"), 2),
        "bad input": (lambda: Problem(400, "b", "B", "d"), 2),
    }

    async def scenario() -> dict[str, int]:
        store = IdempotencyStore(3600.0, 100)
        runs: dict[str, int] = {}
        for name, (failure, times) in failures.items():

            async def work(name: str = name, failure: Callable[[], Exception] = failure) -> str:
                runs[name] = runs.get(name, 0) + 1
                raise failure()

            first = failure()
            with pytest.raises(type(first)):
                await store.run(("publish", "token", "t"), name, b"body", work)
            with pytest.raises((Problem, type(first))) as retried:
                await store.run(("publish", "token", "t"), name, b"body", work)
            if times == 1:  # kept: answered again, and said to be
                (entry,) = [e for k, e in store._owners["token"].items() if k[-1] == name]
                assert entry.answer is None and entry.failure is not None  # not the attempt
                assert entry.failure.__traceback__ is None  # nor its frames (the body)
                assert isinstance(retried.value, Problem), retried.value
                assert retried.value.headers["Idempotent-Replayed"] == "true"
                assert retried.value.status in (502, 504)
        return runs

    runs = asyncio.run(scenario())
    assert runs == {name: times for name, (_, times) in failures.items()}


def test_a_partly_published_fan_out_is_a_502_naming_what_it_reached() -> None:
    from zkpubsub.errors import NotAuthorized, PartlyPublished
    from zkpubsub.gateway.problems import problem_for

    cause = NotAuthorized("create /zkpubsub/messages/x/t/s0000000000/m: not authorized")
    problem = problem_for(
        PartlyPublished("publish to 't' reached 3 ...", message_ids=("a",), reached=3, cause=cause)
    )
    doc = problem.document()
    assert doc["status"] == 502 and doc["error"] == "PartlyPublished"
    assert doc["reached"] == 3 and doc["message_ids"] == ["a"] and doc["cause"] == "NotAuthorized"
    assert "/zkpubsub" not in doc["detail"]


def test_a_gateway_stops_in_a_bounded_time_while_zookeeper_is_frozen(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    zk = make_cluster(1)
    (node,) = zk.nodes
    url, process = start_gateway(zk.hosts, "/stopping")
    try:
        with httpx.Client(base_url=url, timeout=30) as api:
            for n in range(6):
                answer = api.put(f"/subscriptions/s{n}", json={"topics": [f"t{n}"]})
                assert answer.status_code == 201
            api.post("/queues/q/items", json="job")
            assert api.post("/queues/q/reserve", json={"wait": 10}).json()["items"]
        node.pause()
        try:
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(120)
            took = time.monotonic() - started
        finally:
            node.resume()
    finally:
        if process.poll() is None:
            stop_gateway(process, kill=True)
    # the subscriptions' clients, then the queue's and the bus's, close side
    # by side; one by one they took 54 s here (six subscriptions), growing
    # with each, and a worker's leaving waited the request timeout
    assert code == 0
    assert took < 40, took
    assert "Traceback" not in log_of(process)


def test_the_console_shows_a_problem_in_seconds_while_zookeeper_is_frozen(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    """Each console read waited the default request timeout (30 s), and the
    consoles waiting behind it each read again: three views of /ui/state
    took 30 to 89 s, a new event stream's first event came after 60 s."""
    import concurrent.futures

    zk = make_cluster(1)
    (node,) = zk.nodes
    url, process = start_gateway(zk.hosts, "/frozen-console", session_timeout=10.0)
    try:
        with httpx.Client(base_url=url, timeout=120) as api:
            assert api.get("/ui/state").status_code == 200  # the view is connected
            node.pause()
            try:
                time.sleep(1.0)  # past the snapshot the consoles share
                started = time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(3) as pool:
                    answers = list(pool.map(lambda _: api.get("/ui/state"), range(3)))
                took = time.monotonic() - started
            finally:
                node.resume()
            assert all(a.status_code in (503, 504) for a in answers), answers
            assert took < 5 + 5, took  # one read's time (5 s), shared by the three
            # and the console reads the bus again once ZooKeeper answers
            deadline = time.monotonic() + 60
            while api.get("/ui/state").status_code != 200:
                assert time.monotonic() < deadline, "the console did not come back"
                time.sleep(0.5)
    finally:
        stop_gateway(process, kill=True)


def test_subscription_names_asked_for_leave_no_lock_behind(zk_hosts: str, zk_root: str) -> None:
    """Before, every subscription name a request named (one that does not
    exist too) kept a lock for as long as the gateway ran."""
    import asyncio

    from zkpubsub.gateway.auth import Principal
    from zkpubsub.gateway.bus import Bus
    from zkpubsub.gateway.consumers import Consumers
    from zkpubsub.gateway.problems import Problem
    from zkpubsub.gateway.settings import GatewaySettings

    async def scenario() -> None:
        settings = GatewaySettings(hosts=zk_hosts, root=zk_root)
        bus = Bus(settings)
        consumers = Consumers(bus, settings)
        principal = Principal("t", admin=True)
        try:
            for n in range(20):
                with pytest.raises(Problem) as info:
                    await consumers.get(f"missing-{n}", principal)
                assert info.value.status == 404
            held, _ = await consumers.put("kept", ["t"], principal)
            assert held.topics == ["t"]
            assert consumers._locks == {}
        finally:
            await consumers.close()
            await bus.close()

    asyncio.run(scenario())


def test_a_reserve_whose_lease_cannot_be_set_gives_its_items_back(
    zk_hosts: str, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, items already reserved stayed held under reservations nobody
    was told of, and the rest stayed reserved too, until the default lease
    ran out."""
    import asyncio

    from zkpubsub.aio.workqueue import AsyncItem
    from zkpubsub.errors import ConnectionLost
    from zkpubsub.gateway.app import create_app
    from zkpubsub.gateway.settings import GatewaySettings

    real = AsyncItem.extend
    calls: list[int] = []

    async def failing(self: AsyncItem, seconds: float | None = None) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionLost("extend: connection lost")
        await real(self, seconds)

    monkeypatch.setattr(AsyncItem, "extend", failing)
    app = create_app(GatewaySettings(hosts=zk_hosts, root=zk_root, lease=600.0))

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                for n in range(3):
                    assert (await http.post("/queues/q/items", json=n)).status_code == 201
                refused = await http.post("/queues/q/reserve", json={"max": 3, "lease": 5})
                assert refused.status_code == 503, refused.text
                stats = (await http.get("/queues/q")).json()
                assert stats["reserved"] == 0 and stats["ready"] == 3, stats
                again = await http.post("/queues/q/reserve", json={"max": 3, "wait": 5})
                assert len(again.json()["items"]) == 3

    asyncio.run(scenario())


@pytest.mark.parametrize("route", ["extend", "release"])
def test_an_extend_or_release_whose_item_was_acked_while_its_body_came_is_a_404(
    zk_hosts: str, zk_root: str, route: str
) -> None:
    """Before, the reservation was looked up before the body was read: an
    ack finished meanwhile made the call a 500 (the item's "already acked")."""
    import asyncio

    from zkpubsub.gateway.app import create_app
    from zkpubsub.gateway.settings import GatewaySettings

    app = create_app(GatewaySettings(hosts=zk_hosts, root=zk_root))

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                assert (await http.post("/queues/q/items", json=1)).status_code == 201
                (item,) = (await http.post("/queues/q/reserve", json={"wait": 5})).json()["items"]
                url = f"/queues/q/reservations/{item['reservation']}"
                acked = asyncio.Event()

                async def slow_body() -> AsyncIterator[bytes]:
                    await acked.wait()  # the ack is done before the body is all there
                    yield b"{}"

                late = asyncio.ensure_future(
                    http.post(
                        f"{url}/{route}",
                        content=slow_body(),
                        headers={"Content-Type": "application/json"},
                    )
                )
                await asyncio.sleep(0.2)
                assert (await http.post(f"{url}/ack", json={})).status_code == 204
                acked.set()
                answer = await late
                assert answer.status_code == 404, answer.text
                assert answer.json()["error"] == "NoReservation"

    asyncio.run(scenario())


def test_healthz_says_the_gateway_is_not_live_once_its_own_client_is_dead(
    zk_hosts: str, zk_root: str
) -> None:
    """Before, /healthz said "live": true with 200 whatever its client's
    state, also with "state": "closed": no orchestrator would restart it."""
    import asyncio

    from zkpubsub.gateway.app import create_app
    from zkpubsub.gateway.settings import GatewaySettings

    app = create_app(GatewaySettings(hosts=zk_hosts, root=zk_root))

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                live = await http.get("/healthz")
                assert live.status_code == 200, live.text
                assert live.json() == {
                    "status": "ok",
                    "state": "connected",
                    "live": True,
                    "ready": True,
                    "reason": "connected to ZooKeeper",
                }
                await app.state.gateway.bus.default.close()  # as if it had died
                dead = await http.get("/healthz")
                assert dead.status_code == 503, dead.text
                body = dead.json()
                assert (body["status"], body["state"], body["live"]) == ("dead", "closed", False)
                assert (await http.get("/readyz")).status_code == 503

    asyncio.run(scenario())


def test_a_batch_whose_later_publish_fails_says_what_was_published(
    zk_hosts: str, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a later run's failure was answered as it came: a 503 "never
    sent, safe to retry" though the earlier runs were published, and the
    retry published them twice."""
    import asyncio

    from zkpubsub import Client, PublishTimeout
    from zkpubsub.aio import AsyncClient
    from zkpubsub.gateway.app import create_app
    from zkpubsub.gateway.settings import GatewaySettings

    real = AsyncClient.publish_many
    calls: list[int] = []

    async def second_fails(self: AsyncClient, topic: str, payloads: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise PublishTimeout(
                "not sent within 1s; nothing was written", message_ids=("x",), sent=False
            )
        return await real(self, topic, payloads, **kwargs)

    monkeypatch.setattr(AsyncClient, "publish_many", second_fails)
    app = create_app(GatewaySettings(hosts=zk_hosts, root=zk_root))
    with Client(zk_hosts, root=zk_root, cleaner=False) as subscriber:
        sub = subscriber.subscribe("t")

        async def scenario() -> dict[str, Any]:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                    batch = {
                        "messages": [
                            {"payload": 1, "headers": {"k": "a"}},
                            {"payload": 2, "headers": {"k": "b"}},
                        ]
                    }
                    answer = await http.post("/topics/t/messages:batch", json=batch)
                    assert answer.status_code == 502, answer.text
                    doc: dict[str, Any] = answer.json()
                    return doc

        doc = asyncio.run(scenario())
        assert doc["error"] == "PartlyPublished" and doc["cause"] == "PublishTimeout"
        first = sub.get(timeout=10)
        assert first is not None and doc["published"] == [first.id]
        assert doc["sent"] is False and doc["message_ids"] == ["x"]


def _answer_then_end(sock: socket.socket) -> bytes:
    """What the gateway sends on ``sock`` until it ends the connection."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_a_client_leaving_mid_body_or_answered_413_costs_the_gateway_nothing(
    zookeeper: ZooKeeperBackend, zk_root: str
) -> None:
    """A client that left while it sent its body was a logged 500 with two
    tracebacks; a 413 left the connection open, reading (and dropping) a
    body that could go on for ever."""
    url, process = start_gateway(zookeeper.hosts, zk_root)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        for path in ("/topics/t1/messages", "/subscriptions/s1/pull"):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                    'Content-Length: 1000\r\n\r\n{"a": '.encode()
                )
                time.sleep(0.3)  # the gateway reads what came, then the client goes
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /subscriptions/s1/pull HTTP/1.1\r\nHost: gw\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            answer = _answer_then_end(sock)  # a timeout here: the connection stayed open
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 413") and b"connection: close" in head, answer
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        stop_gateway(process)
    log = log_of(process)
    assert "Traceback" not in log and " 500" not in log, log
