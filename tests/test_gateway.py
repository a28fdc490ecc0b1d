"""The HTTP gateway, as a real process on a free port against real ZooKeeper,
driven with httpx and with curl: every endpoint, the long polls, the event
stream, ack deadlines, leases, auth and problem details."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kazoo.client import KazooClient

from zkpubsub import Client
from zkpubsub._purges import purge_record
from zkpubsub.layout import Layout
from zkpubsub.testing.fixtures import ZooKeeperBackend

from .gateway_proc import log_of, start_gateway, stop_gateway

pytestmark = [pytest.mark.timeout(120)]

ADMIN = "admin-token-0123456789abcdef"
ORDERS = "orders-token-0123456789abcdef"
TOKENS = {
    "tokens": [
        {"name": "ops", "token": ADMIN, "admin": True},
        {
            "name": "orders",
            "token": ORDERS,
            "topics": ["orders.*"],
            "queues": ["jobs.*"],
            "subscriptions": ["orders-*"],
        },
    ]
}
PROBLEM = "application/problem+json"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def root(zookeeper: ZooKeeperBackend) -> Iterator[str]:
    root = f"/t-gateway-{uuid.uuid4().hex[:8]}"
    yield root
    zk = KazooClient(hosts=zookeeper.hosts, timeout=10.0)
    zk.start(timeout=15)
    try:
        zk.delete(root, recursive=True)
    finally:
        zk.stop()
        zk.close()


@pytest.fixture(scope="module")
def gateway_url(zookeeper: ZooKeeperBackend, root: str) -> Iterator[str]:
    url, process = start_gateway(
        zookeeper.hosts, root, TOKENS, args=["--ack-deadline", "2", "--max-wait", "10"]
    )
    yield url
    # uvicorn ends a graceful shutdown by raising the signal again: the
    # command ignores it, and is done
    assert stop_gateway(process) == 0
    assert "Traceback" not in log_of(process)


@pytest.fixture
def api(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, headers=bearer(ADMIN), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def bus(zookeeper: ZooKeeperBackend, root: str) -> Iterator[Client]:
    with Client(zookeeper.hosts, root=root, session_timeout=4.0, cleaner=False) as client:
        yield client


def curl(*args: str, timeout: float = 30) -> tuple[int, dict[str, str], str]:
    """``(status, headers, body)`` of a curl call."""
    done = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        check=True,
    )
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, body


def subscribe(api: httpx.Client, *topics: str, name: str | None = None) -> str:
    name = name or unique("sub-")
    answer = api.put(f"/subscriptions/{name}", json={"topics": list(topics)})
    assert answer.status_code == 201, answer.text
    return name


def pull(api: httpx.Client, name: str, **body: Any) -> list[dict[str, Any]]:
    answer = api.post(f"/subscriptions/{name}/pull", json=body)
    assert answer.status_code == 200, answer.text
    messages: list[dict[str, Any]] = answer.json()["messages"]
    return messages


def pull_all(
    api: httpx.Client, name: str, count: int, auto_ack: bool = False
) -> list[dict[str, Any]]:
    """Pull and ack (or have the pulls ack) until ``count`` messages came."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} messages came"
        batch = pull(api, name, max=10, wait=2, auto_ack=auto_ack)
        got += batch
        ids = [m["ack_id"] for m in batch]
        if ids and not auto_ack:
            assert api.post(f"/subscriptions/{name}/ack", json={"ack_ids": ids}).json()[
                "acked"
            ] == sorted(ids, key=ids.index)
    return got


# -- publishing ---------------------------------------------------------------------------


def test_json_text_and_bytes_bodies_arrive_as_published_with_their_headers(
    api: httpx.Client,
) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    sent = [
        api.post(
            f"/topics/{topic}/messages",
            json={"id": 42},
            # a value in UTF-8, as curl sends what it is given
            headers={"Zkpubsub-Header-Kind": "j", "Zkpubsub-Header-City": "Zürich".encode()},
        ),
        api.post(
            f"/topics/{topic}/messages", content="héllo", headers={"Content-Type": "text/plain"}
        ),
        api.post(
            f"/topics/{topic}/messages",
            content=b"\x00\xff",
            headers={"Content-Type": "application/octet-stream"},
        ),
    ]
    for answer in sent:
        assert answer.status_code == 201
        assert answer.json()["subscribers"] == 1
    got = pull_all(api, name, 3)
    assert [m["id"] for m in got] == [a.json()["message_ids"][0] for a in sent]
    assert got[0]["payload"] == {"id": 42}
    assert got[0]["headers"] == {"kind": "j", "city": "Zürich"}
    assert got[1]["payload"] == "héllo"
    assert base64.b64decode(got[2]["payload_base64"]) == b"\x00\xff"
    assert all(m["deliveries"] == 1 and m["topic"] == topic for m in got)


def test_a_batch_with_one_bad_message_publishes_none_of_it(api: httpx.Client) -> None:
    """A batch whose headers change is several publishes: one refused (a
    message or its headers too large) came after the
    earlier ones were published, and its 4xx answer said nothing of them."""
    topic = unique("t-")
    name = subscribe(api, topic)
    for bad, status, error in (
        ({"payload": "x" * 979_990, "headers": {"k": "v"}}, 413, "PayloadTooLarge"),
        ({"payload": 2, "headers": {"h": "y" * 979_990}}, 413, "PayloadTooLarge"),
    ):
        messages = [{"payload": 1}, bad, {"payload": 3}]
        answer = api.post(f"/topics/{topic}/messages:batch", json={"messages": messages})
        assert answer.status_code == status, answer.text
        assert answer.json()["error"] == error
    answer = api.post(f"/topics/{topic}/messages", json="after")
    assert answer.status_code == 201
    got = pull_all(api, name, 1)
    assert [m["payload"] for m in got] == ["after"]  # nothing of the batches before


def test_a_batch_arrives_in_order_with_each_message_s_headers(api: httpx.Client) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    messages = [
        {"payload": 1},
        {"payload": 2},
        {"payload": "three", "headers": {"n": "3"}},
        {"payload_base64": base64.b64encode(b"4").decode(), "headers": {"n": "4"}},
    ]
    answer = api.post(f"/topics/{topic}/messages:batch", json={"messages": messages})
    assert answer.status_code == 201, answer.text
    receipt = answer.json()
    assert len(receipt["message_ids"]) == 4 and receipt["subscribers"] == 1
    got = pull_all(api, name, 4)
    assert [m["id"] for m in got] == receipt["message_ids"]
    assert [m.get("payload") for m in got[:3]] == [1, 2, "three"]
    assert got[3]["payload_base64"] == base64.b64encode(b"4").decode()
    assert [m["headers"] for m in got] == [{}, {}, {"n": "3"}, {"n": "4"}]


def test_an_idempotency_key_publishes_once_and_answers_the_first_receipt_again(
    api: httpx.Client,
) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    key = {"Idempotency-Key": unique("k-")}
    first = api.post(f"/topics/{topic}/messages", json={"n": 1}, headers=key)
    again = api.post(f"/topics/{topic}/messages", json={"n": 1}, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = api.post(f"/topics/{topic}/messages", json={"n": 2}, headers=key)
    assert other.status_code == 422 and other.headers["content-type"] == PROBLEM
    assert other.json()["error"] == "IdempotencyKeyReused"
    api.post(f"/topics/{topic}/messages", json="last")
    got = pull_all(api, name, 2)
    assert [m.get("payload") for m in got] == [{"n": 1}, "last"]
    # text in the same charset, named or not, is the same body
    plain_key = {"Idempotency-Key": unique("k-")}
    plain = api.post(
        f"/topics/{topic}/messages",
        content=b"same",
        headers={"Content-Type": "text/plain"} | plain_key,
    )
    named = api.post(
        f"/topics/{topic}/messages",
        content=b"same",
        headers={"Content-Type": "text/plain; charset=UTF8"} | plain_key,
    )
    assert plain.status_code == named.status_code == 201, named.text
    assert named.headers["Idempotent-Replayed"] == "true"
    assert [m.get("payload") for m in pull_all(api, name, 1)] == ["same"]
    # text in another charset is another body (it was taken for a replay)
    latin = {"Content-Type": "text/plain; charset=latin-1", **key}
    cyrillic = {"Content-Type": "text/plain; charset=cp1251", **key}
    text_key = {"Idempotency-Key": unique("k-")}
    first_text = api.post(f"/topics/{topic}/messages", content=b"\xe9", headers=latin | text_key)
    assert first_text.status_code == 201
    other_text = api.post(f"/topics/{topic}/messages", content=b"\xe9", headers=cyrillic | text_key)
    assert other_text.status_code == 422
    assert other_text.json()["error"] == "IdempotencyKeyReused"
    assert [m.get("payload") for m in pull_all(api, name, 1)] == ["\xe9"]
    # a key is per route: the batch route does not share it with the single one
    batch = api.post(
        f"/topics/{topic}/messages:batch", json={"messages": [{"payload": "b"}]}, headers=key
    )
    assert batch.status_code == 201, batch.text
    assert [m.get("payload") for m in pull_all(api, name, 1)] == ["b"]


def test_curl_publishes_pulls_and_acks(api: httpx.Client, gateway_url: str) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    auth = f"Authorization: Bearer {ADMIN}"
    status, _, body = curl(
        "-X", "POST", f"{gateway_url}/topics/{topic}/messages", "-H", auth,
        "-H", "Content-Type: application/json", "-H", "Zkpubsub-Header-From: curl",
        "--data", '{"hello": "curl"}',
    )  # fmt: skip
    assert status == 201 and json.loads(body)["subscribers"] == 1
    status, _, body = curl(
        "-X", "POST", f"{gateway_url}/subscriptions/{name}/pull", "-H", auth,
        "-H", "Content-Type: application/json", "--data", '{"max": 5, "wait": 5}',
    )  # fmt: skip
    [message] = json.loads(body)["messages"]
    assert message["payload"] == {"hello": "curl"} and message["headers"] == {"from": "curl"}
    status, _, body = curl(
        "-X", "POST", f"{gateway_url}/subscriptions/{name}/ack", "-H", auth,
        "-H", "Content-Type: application/json",
        "--data", json.dumps({"ack_ids": [message["ack_id"]]}),
    )  # fmt: skip
    assert status == 200 and json.loads(body)["acked"] == [message["ack_id"]]
    assert pull(api, name, wait=0.3) == []


# -- subscriptions -------------------------------------------------------------------------


def test_a_pull_waits_for_a_message_published_while_it_waits(
    api: httpx.Client, bus: Client
) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    assert pull(api, name, wait=0.2) == []  # nothing there: answered empty after the wait
    timer = threading.Timer(0.5, lambda: bus.publish(topic, "late"))
    timer.start()
    try:
        got = pull(api, name, max=5, wait=8)
    finally:
        timer.join()
    assert [m["payload"] for m in got] == ["late"]


def test_an_unacked_message_comes_back_after_its_ack_deadline(api: httpx.Client) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    api.post(f"/topics/{topic}/messages", json="once")
    [first] = pull(api, name, wait=5, ack_deadline=1)
    assert pull(api, name, wait=0.2) == []  # out, not acked: not handed out twice meanwhile
    [again] = pull(api, name, wait=5)  # waits out the deadline
    assert again["id"] == first["id"] and again["deliveries"] == 2
    assert again["ack_id"] != first["ack_id"]
    answer = api.post(f"/subscriptions/{name}/ack", json={"ack_ids": [first["ack_id"]]}).json()
    assert answer == {"acked": [], "nacked": [], "unknown": [first["ack_id"]]}
    answer = api.post(f"/subscriptions/{name}/ack", json={"ack_ids": [again["ack_id"]]}).json()
    assert answer["acked"] == [again["ack_id"]]
    assert pull(api, name, wait=1.5) == []  # acked: gone for good


def test_a_nacked_message_is_handed_out_again_at_once(api: httpx.Client) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    api.post(f"/topics/{topic}/messages", json="n")
    [first] = pull(api, name, wait=5, ack_deadline=60)
    # one id both acked and nacked: refused, and neither done (it was acked
    # and answered as nacked)
    both = {"ack_ids": [first["ack_id"]], "nack_ids": [first["ack_id"]]}
    answer = api.post(f"/subscriptions/{name}/ack", json=both)
    assert answer.status_code == 400 and answer.json()["error"] == "BadRequest", answer.text
    assert first["ack_id"] in answer.json()["detail"]
    answer = api.post(f"/subscriptions/{name}/ack", json={"nack_ids": [first["ack_id"]]})
    assert answer.json()["nacked"] == [first["ack_id"]]
    [again] = pull(api, name, wait=0.5)
    assert again["id"] == first["id"] and again["deliveries"] == 2


def test_one_subscription_receives_several_topics_and_auto_ack_takes_a_batch(
    api: httpx.Client, bus: Client
) -> None:
    one, two = unique("t-"), unique("t-")
    name = subscribe(api, one, two)
    bus.publish_many(one, list(range(5)))
    bus.publish(two, "two")
    got = pull_all(api, name, 6, auto_ack=True)
    assert [m["payload"] for m in got if m["topic"] == one] == [0, 1, 2, 3, 4]
    assert [m["payload"] for m in got if m["topic"] == two] == ["two"]
    assert all(m["ack_id"] is None for m in got)
    assert pull(api, name, wait=0.3) == []


def test_the_event_stream_sends_messages_and_explicit_acks_settle_them(
    api: httpx.Client, bus: Client
) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    bus.publish_many(topic, ["a", "b"])
    events: list[dict[str, Any]] = []
    with api.stream("GET", f"/subscriptions/{name}/events", timeout=20) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event_id = None
        for line in stream.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            if line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["ack_id"] == event_id
                events.append(event)
                api.post(f"/subscriptions/{name}/ack", json={"ack_ids": [event["ack_id"]]})
                if len(events) == 2:
                    break
    assert [e["payload"] for e in events] == ["a", "b"]
    assert pull(api, name, wait=0.3) == []


def test_a_subscription_back_after_its_purge_is_told_by_a_pull_and_by_the_event_stream(
    api: httpx.Client, zookeeper: ZooKeeperBackend, root: str
) -> None:
    """The gateway passed no gap notice on: an HTTP consumer whose
    subscription the cleaner had purged (or whose session had expired) got a
    201 for its PUT, as for a new one, and never learnt what it had missed."""
    pulled, streamed = unique("gone-"), unique("gone-")
    zk = KazooClient(hosts=zookeeper.hosts, timeout=10.0)
    zk.start(timeout=15)
    try:
        for name in (pulled, streamed):  # the notice of a purge, as the cleaner leaves it
            marker = Layout(root).purge_marker(f"http-{name}")
            zk.create(marker, purge_record(["t-a", "t-b"], finished=True), makepath=True)
    finally:
        zk.stop()
        zk.close()
    assert api.put(f"/subscriptions/{pulled}", json={"topics": ["t-a"]}).status_code == 201
    started = time.monotonic()
    answer = api.post(f"/subscriptions/{pulled}/pull", json={"wait": 8}).json()
    assert time.monotonic() - started < 8  # a gap ends the wait
    assert answer["messages"] == []
    (gap,) = answer["gaps"]
    assert gap["reason"] == "backlog purged" and gap["topics"] == ["t-a", "t-b"]
    assert gap["since"] <= gap["until"]
    assert api.post(f"/subscriptions/{pulled}/pull", json={}).json()["gaps"] == []  # once
    assert api.put(f"/subscriptions/{streamed}", json={"topics": ["t-a"]}).status_code == 201
    with api.stream("GET", f"/subscriptions/{streamed}/events", timeout=20) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("event: ")) == "event: gap"
        told = json.loads(next(lines).removeprefix("data: "))
    assert told["reason"] == "backlog purged" and told["topics"] == ["t-a", "t-b"]


def test_curl_streams_events_with_auto_ack(api: httpx.Client, gateway_url: str) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    api.post(
        f"/topics/{topic}/messages:batch", json={"messages": [{"payload": i} for i in range(3)]}
    )
    payloads = []
    with subprocess.Popen(
        ["curl", "-sS", "-N", "--max-time", "20", "-H", f"Authorization: Bearer {ADMIN}",
         f"{gateway_url}/subscriptions/{name}/events?ack=auto"],
        stdout=subprocess.PIPE,
        text=True,
    ) as stream:  # fmt: skip
        try:
            assert stream.stdout is not None
            for line in stream.stdout:
                if line.startswith("data: "):
                    payloads.append(json.loads(line[6:])["payload"])
                    if len(payloads) == 3:
                        break
        finally:
            stream.kill()
    assert payloads == [0, 1, 2]
    assert pull(api, name, wait=0.5) == []  # written to the stream: acked


def test_a_killed_http_consumer_loses_nothing(api: httpx.Client, gateway_url: str) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    api.post(f"/topics/{topic}/messages", json="precious")
    # a consumer on an explicit stream takes the message, then dies without acking
    with subprocess.Popen(
        ["curl", "-sS", "-N", "--max-time", "20", "-H", f"Authorization: Bearer {ADMIN}",
         f"{gateway_url}/subscriptions/{name}/events?ack_deadline=1"],
        stdout=subprocess.PIPE,
        text=True,
    ) as stream:  # fmt: skip
        try:
            assert stream.stdout is not None
            for line in stream.stdout:
                if line.startswith("data: "):
                    assert json.loads(line[6:])["payload"] == "precious"
                    break
        finally:
            stream.kill()
    [again] = pull(api, name, wait=8)
    assert again["payload"] == "precious" and again["deliveries"] >= 2


def test_deleting_a_subscription_ends_it(api: httpx.Client) -> None:
    topic = unique("t-")
    name = subscribe(api, topic)
    info = api.get(f"/subscriptions/{name}").json()
    assert info["topics"] == [topic]
    assert api.put(f"/subscriptions/{name}", json={"topics": [topic]}).status_code == 200
    assert api.delete(f"/subscriptions/{name}").status_code == 204
    missing = api.post(f"/subscriptions/{name}/pull", json={})
    assert missing.status_code == 404 and missing.json()["error"] == "NoSubscription"
    assert api.post(f"/topics/{topic}/messages", json=1).json()["subscribers"] == 0


# -- work queues ---------------------------------------------------------------------------


def test_a_work_item_is_reserved_acked_with_a_result_and_its_ticket_answers(
    api: httpx.Client,
) -> None:
    queue = unique("q-")
    put = api.post(
        f"/queues/{queue}/items", params={"priority": 5, "want_result": True}, json={"job": 1}
    )
    assert put.status_code == 201
    ticket = put.json()["ticket"]
    pending = api.get(f"/queues/{queue}/results/{ticket}", params={"wait": 0.2})
    assert pending.status_code == 202 and pending.json()["status"] == "pending"
    [item] = api.post(f"/queues/{queue}/reserve", json={"wait": 5}).json()["items"]
    assert item["payload"] == {"job": 1} and item["priority"] == 5 and item["wants_result"]
    assert api.get(f"/queues/{queue}").json()["reserved"] == 1
    rid = item["reservation"]
    assert (
        api.post(f"/queues/{queue}/reservations/{rid}/extend", json={"seconds": 60}).status_code
        == 204
    )
    ack = api.post(f"/queues/{queue}/reservations/{rid}/ack", json={"result": {"ok": True}})
    assert ack.status_code == 204
    done = api.get(f"/queues/{queue}/results/{ticket}", params={"wait": 5}).json()
    assert done == {"id": ticket, "status": "done", "result": {"ok": True},
                    "result_base64": None, "reason": None, "result_error": None}  # fmt: skip
    assert api.get(f"/queues/{queue}").json() == {
        "name": queue, "ready": 0, "reserved": 0, "dead": 0, "workers": 1,  # the gateway
    }  # fmt: skip
    # a result already there is answered without waiting (wait=0), never
    # read and removed behind a "pending" answer
    for n in range(5):
        ticket_n = api.post(f"/queues/{queue}/items", params={"want_result": True}, json=n).json()[
            "ticket"
        ]
        [taken] = api.post(f"/queues/{queue}/reserve", json={"wait": 5}).json()["items"]
        rid_n = taken["reservation"]
        api.post(f"/queues/{queue}/reservations/{rid_n}/ack", json={"result": n * 10})
        now = api.get(f"/queues/{queue}/results/{ticket_n}")
        assert now.status_code == 200 and now.json()["result"] == n * 10, now.text
    again = api.post(f"/queues/{queue}/reservations/{rid}/ack", json={})
    assert again.status_code == 404 and again.json()["error"] == "NoReservation"


def test_a_result_read_for_a_long_poll_whose_client_left_goes_to_the_next_request(
    api: httpx.Client, gateway_url: str
) -> None:
    """A long poll whose client gave up before its wait ended read the
    result when it came (removing it) and answered nobody: every later
    request was told "pending" for ever."""
    queue = unique("q-")
    put = api.post(f"/queues/{queue}/items", params={"want_result": True}, json="job")
    ticket = put.json()["ticket"]
    [item] = api.post(f"/queues/{queue}/reserve", json={"wait": 5}).json()["items"]
    with pytest.raises(httpx.TimeoutException):  # gives up after 1 s of a wait of 8
        httpx.get(
            f"{gateway_url}/queues/{queue}/results/{ticket}",
            params={"wait": 8},
            headers=api.headers,
            timeout=1.0,
        )
    rid = item["reservation"]
    ack = api.post(f"/queues/{queue}/reservations/{rid}/ack", json={"result": {"n": 7}})
    assert ack.status_code == 204
    time.sleep(1.5)  # what the abandoned poll does with it, it has done
    done = api.get(f"/queues/{queue}/results/{ticket}", params={"wait": 5})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "done" and done.json()["result"] == {"n": 7}
    again = api.get(f"/queues/{queue}/results/{ticket}")  # read once: gone now
    assert again.status_code == 202 and again.json()["status"] == "pending"


def test_a_reserve_waits_for_an_item_put_while_it_waits(api: httpx.Client, bus: Client) -> None:
    queue = unique("q-")
    timer = threading.Timer(0.5, lambda: bus.queue(queue).put("late"))
    timer.start()
    try:
        items = api.post(f"/queues/{queue}/reserve", json={"wait": 8}).json()["items"]
    finally:
        timer.join()
    assert [i["payload"] for i in items] == ["late"]
    rid = items[0]["reservation"]
    assert api.post(f"/queues/{queue}/reservations/{rid}/ack", json={}).status_code == 204


def test_reserves_waiting_side_by_side_each_end_at_their_wait(
    gateway_url: str, bus: Client
) -> None:
    """The reserves of one caller on one queue take turns on one worker in
    half-second slices: the time spent waiting for a turn counted against
    none of them, and from five at once they ended with 503 ConnectionLost
    (ZooKeeper healthy, the queue empty). An item put meanwhile goes to one."""
    import concurrent.futures

    queue = unique("q-")

    def reserve(_: int) -> tuple[int, list[Any]]:
        with httpx.Client(base_url=gateway_url, headers=bearer(ADMIN), timeout=30) as api:
            answer = api.post(f"/queues/{queue}/reserve", json={"wait": 2})
            return answer.status_code, answer.json().get("items", [answer.text])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(reserve, range(8)))
        assert answers == [(200, [])] * 8
        waiting = [pool.submit(reserve, n) for n in range(8)]
        time.sleep(0.5)
        bus.queue(queue).put("one")
        answers = [each.result() for each in waiting]
    assert all(code == 200 for code, _ in answers), answers
    assert sorted(i["payload"] for _, items in answers for i in items) == ["one"]


def test_an_extension_without_seconds_renews_the_lease_the_item_was_reserved_with(
    api: httpx.Client,
) -> None:
    queue = unique("q-")
    api.post(f"/queues/{queue}/items", json="job")
    [first] = api.post(f"/queues/{queue}/reserve", json={"wait": 5, "lease": 2}).json()["items"]
    extended = api.post(f"/queues/{queue}/reservations/{first['reservation']}/extend", json={})
    assert extended.status_code == 204
    # renewed for 2 s, not for the gateway's default lease (30 s): another
    # reserve gets the item a little later
    started = time.monotonic()
    [again] = api.post(f"/queues/{queue}/reserve", json={"wait": 10}).json()["items"]
    assert again["id"] == first["id"] and time.monotonic() - started < 10


def test_a_lease_that_runs_out_gives_the_item_to_the_next_reserve(api: httpx.Client) -> None:
    queue = unique("q-")
    api.post(f"/queues/{queue}/items", json="slow")
    [first] = api.post(f"/queues/{queue}/reserve", json={"wait": 5, "lease": 1}).json()["items"]
    [again] = api.post(f"/queues/{queue}/reserve", json={"wait": 10}).json()["items"]
    assert again["id"] == first["id"] and again["attempts"] == first["attempts"] + 1
    late = api.post(f"/queues/{queue}/reservations/{first['reservation']}/ack", json={})
    assert late.status_code == 409 and late.json()["error"] == "ReservationLost"
    ok = api.post(f"/queues/{queue}/reservations/{again['reservation']}/ack", json={})
    assert ok.status_code == 204


def test_released_items_become_dead_letters_with_the_reason_and_replay_brings_them_back(
    api: httpx.Client, gateway_url: str
) -> None:
    queue = unique("q-")
    item_id = api.post(f"/queues/{queue}/items", json={"bad": True}).json()["id"]
    for attempt in range(5):  # the library's max_attempts
        [item] = api.post(f"/queues/{queue}/reserve", json={"wait": 5}).json()["items"]
        assert item["id"] == item_id and item["attempts"] == attempt + 1
        rid = item["reservation"]
        answer = api.post(f"/queues/{queue}/reservations/{rid}/release", json={"error": "boom"})
        assert answer.status_code == 204
    [dead] = api.get(f"/queues/{queue}/dead").json()
    assert dead["id"] == item_id and "boom" in dead["reason"] and dead["payload"] == {"bad": True}
    status, _, body = curl(
        "-X", "POST", f"{gateway_url}/queues/{queue}/dead/replay",
        "-H", f"Authorization: Bearer {ADMIN}", "-H", "Content-Type: application/json",
        "--data", json.dumps({"ids": [item_id]}),
    )  # fmt: skip
    assert status == 200 and json.loads(body) == {"replayed": 1}
    assert api.get(f"/queues/{queue}/dead").json() == []
    assert api.post(f"/queues/{queue}/dead/replay").json() == {"replayed": 0}  # no body: all
    [back] = api.post(f"/queues/{queue}/reserve", json={"wait": 5}).json()["items"]
    assert back["payload"] == {"bad": True} and back["attempts"] == 1


def test_dead_letters_are_listed_oldest_first_up_to_a_limit(api: httpx.Client) -> None:
    """Every dead letter, payload and all, was read for one answer: up to
    10,000 of up to 980 KB each."""
    queue = unique("q-")
    ids = [api.post(f"/queues/{queue}/items", json=n).json()["id"] for n in range(3)]
    for _ in range(5):  # the library's max_attempts
        items = api.post(f"/queues/{queue}/reserve", json={"max": 3, "wait": 5}).json()["items"]
        assert len(items) == 3, items
        for item in items:
            release = f"/queues/{queue}/reservations/{item['reservation']}/release"
            assert api.post(release, json={"error": "no"}).status_code == 204
    assert [d["id"] for d in api.get(f"/queues/{queue}/dead").json()] == ids
    assert [d["id"] for d in api.get(f"/queues/{queue}/dead?limit=2").json()] == ids[:2]
    for bad in ("0", "10001", "x"):
        answer = api.get(f"/queues/{queue}/dead?limit={bad}")
        assert answer.status_code == 422 and answer.json()["error"] == "RequestValidationError"


# -- auth ------------------------------------------------------------------------------------


def test_no_token_or_a_wrong_one_is_refused_with_a_bearer_challenge(gateway_url: str) -> None:
    for headers in ({}, bearer("not-a-token-at-all"), {"Authorization": "Basic eDp5"}):
        answer = httpx.post(f"{gateway_url}/topics/orders.x/messages", json=1, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.headers["content-type"] == PROBLEM
        assert answer.json()["error"] == "Unauthorized"
    status, headers, _ = curl(f"{gateway_url}/queues/jobs.a")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    # who calls is asked before what they sent is judged: a body that is not
    # JSON, of another type or too large was a 400, 415 or 413 without a token
    routes = ("/subscriptions/s/pull", "/subscriptions/s/ack", "/queues/jobs.a/reserve")
    for url in routes:
        for content, kind in (
            (b"{no", "application/json"),
            (b"{}", "text/plain"),
            (b" " * 70_000, "application/json"),
        ):
            answer = httpx.post(
                f"{gateway_url}{url}", content=content, headers={"Content-Type": kind}
            )
            assert answer.status_code == 401, (url, kind, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_token_uses_only_the_names_its_patterns_allow(gateway_url: str) -> None:
    with httpx.Client(base_url=gateway_url, headers=bearer(ORDERS), timeout=30) as orders:
        assert orders.post("/topics/orders.new/messages", json=1).status_code == 201
        refused = orders.post("/topics/payments/messages", json=1)
        assert refused.status_code == 403 and refused.json()["error"] == "Forbidden"
        assert orders.get("/queues/jobs.a").status_code == 200
        assert orders.get("/queues/other").status_code == 403
        assert (
            orders.put("/subscriptions/orders-a", json={"topics": ["orders.new"]}).status_code
            == 201
        )
        bad_topic = orders.put("/subscriptions/orders-b", json={"topics": ["payments"]})
        assert bad_topic.status_code == 403
        assert orders.put("/subscriptions/mine", json={"topics": ["orders.x"]}).status_code == 403
        assert orders.get("/ui/state").status_code == 403  # operator views: admin tokens only
        assert orders.delete("/subscriptions/orders-a").status_code == 204


def test_a_put_cannot_drop_topics_its_token_may_not_use(gateway_url: str) -> None:
    name = unique("orders-")
    with (
        httpx.Client(base_url=gateway_url, headers=bearer(ADMIN), timeout=30) as admin,
        httpx.Client(base_url=gateway_url, headers=bearer(ORDERS), timeout=30) as orders,
    ):
        both = {"topics": ["orders.new", "payments"]}
        assert admin.put(f"/subscriptions/{name}", json=both).status_code == 201
        assert orders.get(f"/subscriptions/{name}").status_code == 403
        narrowed = orders.put(f"/subscriptions/{name}", json={"topics": ["orders.new"]})
        assert narrowed.status_code == 403, narrowed.text  # as a GET or a DELETE is
        kept = admin.get(f"/subscriptions/{name}")
        assert sorted(kept.json()["topics"]) == ["orders.new", "payments"]
        assert admin.delete(f"/subscriptions/{name}").status_code == 204


# -- problems --------------------------------------------------------------------------------


def test_bad_input_is_a_problem_document_with_a_reason_never_a_500(api: httpx.Client) -> None:
    json_type = {"Content-Type": "application/json"}
    octets = {"Content-Type": "application/octet-stream"}
    cases = [
        (api.post("/topics/t/messages", content="{no", headers=json_type), 400, "BadJson"),
        (
            api.post("/topics/t/messages", content="x", headers={"Content-Type": "text/xml"}),
            415,
            "UnsupportedMediaType",
        ),
        (
            api.post("/topics/t/messages", content=b"x" * 980_001, headers=octets),
            413,
            "PayloadTooLarge",
        ),
        (api.post("/topics/%01/messages", json=1), 400, "BadRequest"),
        (  # streamed without a length, over the largest body any route takes
            api.post("/subscriptions/x/ack", content=iter([b"[" * 1_100_000]), headers=json_type),
            413,
            "PayloadTooLarge",
        ),
        (api.post("/topics/t/messages:batch", json={"messages": []}), 422, "ValidationError"),
        (
            api.post("/topics/t/messages:batch", json={"messages": [{"payload_base64": "!"}]}),
            400,
            "BadRequest",
        ),
        (api.post("/subscriptions/nobody/pull", json={}), 404, "NoSubscription"),
        (api.post("/subscriptions/x/pull", json={"max": 0}), 422, "RequestValidationError"),
        (api.put("/subscriptions/x", json={"topic": "t"}), 422, "RequestValidationError"),
        (
            api.post("/queues/q/items", params={"priority": 1000}, json=1),
            422,
            "RequestValidationError",
        ),
        (api.post("/queues/q/reservations/nope/ack", json={}), 404, "NoReservation"),
        (api.get("/no/such/route"), 404, "NoRoute"),
    ]
    for answer, status, error in cases:
        assert answer.status_code == status, (answer.request.url, answer.text)
        assert answer.headers["content-type"] == PROBLEM
        doc = answer.json()
        assert doc["status"] == status and doc["error"] == error
        assert doc["type"].startswith("urn:zkpubsub:problem:") and doc["title"] and doc["detail"]
        assert "Traceback" not in answer.text
    too_large = cases[2][0].json()
    assert too_large["limit"] == 980_000
    # JSON that is not standard, or too deep to read, is refused, never changed
    beyond_64_bits = ("[18446744073709551616]", '{"x": -9223372036854775809}', "9" * 400)
    for body in (
        "NaN",
        '{"x": Infinity}',
        "[-Infinity]",
        "[1e999]",
        "[" * 100_000 + "]" * 100_000,
        *beyond_64_bits,
    ):
        for url in ("/topics/t/messages", "/queues/q/items"):
            answer = api.post(url, content=body, headers=json_type)
            assert answer.status_code == 400, (url, body[:20], answer.text)
            assert answer.json()["error"] == "BadJson"
    # a lone surrogate is no text: it could be neither stored nor echoed
    for url, body in (
        ("/topics/t/messages", '"\\ud800"'),
        ("/queues/q/items", '{"x": "a\\udc00"}'),
        ("/subscriptions/x/ack", '{"ack_ids": ["\\ud800"], "nack_ids": ["\\ud800"]}'),
        ("/topics/t/messages:batch", '{"messages": [{"payload": 1, "headers": {"\\udfff": "v"}}]}'),
    ):
        answer = api.post(url, content=body, headers=json_type)
        assert answer.status_code == 400, (url, body, answer.text)
        assert answer.json()["error"] == "BadJson" and "surrogate" in answer.json()["detail"]
    # an escaped pair is one character, and stays so
    answer = api.post("/topics/t/messages", content='"\\ud83d\\ude00"', headers=json_type)
    assert answer.status_code in (201, 404), answer.text  # (404: nobody subscribes to t)
    # a message header's value that is not UTF-8 is refused, not guessed at
    answer = api.post("/topics/t/messages", json=1, headers={"Zkpubsub-Header-X": b"\xff"})
    assert answer.status_code == 400 and answer.json()["error"] == "BadRequest", answer.text
    assert "UTF-8" in answer.json()["detail"]
    # a charset that names no text codec is a bad request, not a failure
    for charset in ("undefined", "punycode", "no-such-charset"):
        answer = api.post(
            "/topics/t/messages",
            content=b"\xff\xfe-x",
            headers={"Content-Type": f"text/plain; charset={charset}"},
        )
        assert answer.status_code == 400, (charset, answer.text)
        assert answer.json()["error"] == "BadText"
    # the routes whose bodies a model reads check them the same way first
    for url in ("/subscriptions/x/pull", "/queues/q/reserve"):
        answer = api.post(url, content="{}", headers={"Content-Type": "text/plain"})
        assert answer.status_code == 415, (url, answer.text)
        assert answer.json()["error"] == "UnsupportedMediaType"
        for body in ('{"max": NaN}', "[" * 30_000 + "]" * 30_000, "{no"):
            answer = api.post(url, content=body, headers=json_type)
            assert answer.status_code == 400, (url, body[:20], answer.text)
            assert answer.json()["error"] == "BadJson"
    # white space alone is no body there, as on the routes reading their own
    answer = api.post(f"/queues/{unique('blank-')}/reserve", content=" \n ", headers=json_type)
    assert answer.status_code == 200 and answer.json() == {"items": []}, answer.text
    answer = api.put(f"/subscriptions/{unique('blank-')}", content="  ", headers=json_type)
    assert answer.status_code == 422 and "body: Field required" in answer.text, answer.text
    # a subscription with one bad topic among good ones is not made at all
    name = unique("bad-")
    answer = api.put(f"/subscriptions/{name}", json={"topics": ["fine", ".."]})
    assert answer.status_code == 400 and answer.json()["error"] == "BadRequest"
    assert api.get(f"/subscriptions/{name}").status_code == 404
    # a body that carries no payload stays under 64 KiB on every route
    for answer in (
        api.put("/subscriptions/x", json={"topics": ["t"] * 30_000}),
        api.post("/subscriptions/x/ack", json={"ack_ids": ["a" * 40] * 3_000}),
        api.post("/subscriptions/x/pull", content=iter([b" " * 70_000]), headers=json_type),
        api.post(
            "/queues/q/reserve", content=b'{"max": 1' + b" " * 200_000 + b"}", headers=json_type
        ),
    ):
        assert answer.status_code == 413, (answer.request.url, answer.text)
        assert answer.json()["error"] == "PayloadTooLarge" and answer.json()["limit"] == 65_536


# -- health, metrics, documents ----------------------------------------------------------------


def test_health_readiness_metrics_and_the_openapi_document(gateway_url: str) -> None:
    assert httpx.get(f"{gateway_url}/healthz").json()["live"] is True
    ready = httpx.get(f"{gateway_url}/readyz")
    assert ready.status_code == 200 and ready.json()["state"] == "connected"
    metrics = httpx.get(f"{gateway_url}/metrics").text
    assert 'zkpubsub_session_state{state="connected"} 1.0' in metrics
    assert "zkpubsub_gateway_subscriptions_held" in metrics
    doc = httpx.get(f"{gateway_url}/openapi.json").json()
    for path in (
        "/topics/{topic}/messages",
        "/topics/{topic}/messages:batch",
        "/subscriptions/{name}/pull",
        "/subscriptions/{name}/events",
        "/queues/{queue}/reserve",
        "/queues/{queue}/dead/replay",
        "/queues/{queue}/results/{ticket}",
    ):
        assert path in doc["paths"]
    schemas = doc["components"]["schemas"]
    assert {"Receipt", "PullResult", "ReserveResult", "ProblemDocument"} <= set(schemas)
    receipt = doc["paths"]["/topics/{topic}/messages"]["post"]["responses"]["201"]
    assert receipt["content"]["application/json"]["schema"]["$ref"].endswith("/Receipt")
    # routes that read their JSON body themselves describe it all the same
    for path, field in (
        ("/queues/{queue}/reservations/{reservation}/ack", "result"),
        ("/queues/{queue}/reservations/{reservation}/release", "error"),
        ("/queues/{queue}/reservations/{reservation}/extend", "seconds"),
        ("/queues/{queue}/dead/replay", "ids"),
    ):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert field in body["schema"]["properties"], path
    for path in ("/healthz", "/readyz", "/metrics"):  # no token needed
        assert doc["paths"][path]["get"]["security"] == [], path
    assert httpx.get(f"{gateway_url}/docs").status_code == 200
    assert ADMIN not in json.dumps(doc)


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_numbers_json_has_not_are_said_never_sent_as_null_or_as_no_json(
    api: httpx.Client, bus: Client
) -> None:
    """msgpack carries NaN and infinities: a pull answered them as null as
    if the payload were null, the event stream wrote NaN (no JSON), and a
    ticket's infinite result read "done" with a null result (then gone)."""
    topic, queue = unique("t-"), unique("q-")
    name = subscribe(api, topic)
    bus.publish(topic, {"x": math.nan})
    bus.publish(topic, [math.inf])
    got = pull_all(api, name, 2, auto_ack=True)
    assert [m["payload"] for m in got] == [None, None]
    assert all("NaN or an infinity" in m["payload_error"] for m in got), got
    streamed = subscribe(api, topic)
    bus.publish(topic, {"y": -math.inf})
    with api.stream("GET", f"/subscriptions/{streamed}/events?ack=auto", timeout=20) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = _strict_json(line[6:])  # JSON, as the stream promises
                break
    assert event["payload"] is None and "NaN or an infinity" in event["payload_error"]
    ticket = bus.queue(queue).put("job", want_result=True)
    item = bus.queue(queue).reserve(timeout=10)
    assert item is not None
    item.ack(result=math.inf)
    answer = api.get(f"/queues/{queue}/results/{ticket.id}", params={"wait": 5})
    doc = _strict_json(answer.text)
    assert doc["status"] == "done" and doc["result"] is None
    assert "NaN or an infinity" in doc["result_error"]


def test_a_payload_nested_too_deep_is_refused_and_one_published_otherwise_is_handed_out(
    api: httpx.Client, zookeeper: ZooKeeperBackend, root: str
) -> None:
    """Before, a payload 600 arrays deep was taken (201) and every pull of
    it was a 500 (a RecursionError writing it out): with auto_ack it was
    gone, without it the topic's next message never came."""
    topic = unique("t-")
    name = subscribe(api, topic)
    deep = "[" * 600 + "]" * 600
    json_type = {"Content-Type": "application/json"}
    for url in (f"/topics/{topic}/messages", f"/queues/{unique('q-')}/items"):
        answer = api.post(url, content=deep, headers=json_type)
        assert answer.status_code == 400 and answer.json()["error"] == "BadJson", answer.text
        assert "deeper than 100" in answer.json()["detail"]
    nested: Any = "bottom"
    for _ in range(600):
        nested = [nested]
    with Client(zookeeper.hosts, root=root, serializer="json", cleaner=False) as library:
        library.publish(topic, nested)  # the library takes it: JSON goes that deep
        library.publish(topic, "next")
    got = pull_all(api, name, 2, auto_ack=True)
    assert got[0]["payload"] is None and "nested deeper than 100" in got[0]["payload_error"]
    assert got[1]["payload"] == "next"
