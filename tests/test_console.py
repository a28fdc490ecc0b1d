"""The web console: the snapshot it shows, read from a real bus; its routes
served by uvicorn (the page open to anyone, the data only with a token, the
event stream following the bus); and the page itself in a headless
Chromium against a real gateway process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Header, HTTPException

from tests.gateway_proc import gateway
from tests.helpers import wait_until
from zkpubsub import Client, Observer, OperationTimeout
from zkpubsub.gateway.console import console_router, console_snapshot

MakeClient = Callable[..., Client]
TOKEN = "console-test-token"


def make_bus(make_client: MakeClient, *, janitor_leads: bool = True) -> Client:
    """A bus with something to show: a cleaner (``janitor``, the leader if
    it is the first), a durable subscriber gone away with 3 messages waiting
    for it, a live subscriber, and a work queue with one ready item and one
    dead letter. Returns the publisher."""
    host = make_client(client_id="janitor")
    cleaner = host.start_cleaner(grace=600)
    if janitor_leads:
        assert cleaner.wait_leader(30)
    away = make_client(client_id="reader-1", cleaner=False)
    away.subscribe("prices", durable=True)
    away.close()  # a durable subscription stays registered: its queue fills
    make_client(client_id="reader-2", cleaner=False).subscribe("prices", lambda m: None)
    publisher = make_client(client_id="publisher", cleaner=False)
    for n in range(3):
        publisher.publish("prices", {"p": n})
    jobs = host.queue("jobs", max_attempts=1)
    jobs.put({"order": 7}, priority=3)
    item = jobs.reserve(10)
    assert item is not None
    item.release("backend down: <h1>502 Bad Gateway</h1>")  # the last attempt: a dead letter
    jobs.put("waiting")
    return publisher


def test_a_snapshot_shows_clients_topics_backlogs_work_queues_dead_letters_and_the_leader(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    make_bus(make_client)
    with Observer(zk_hosts, root=zk_root) as observer:

        def drained() -> dict[str, Any] | None:
            snapshot = console_snapshot(observer)
            return snapshot if snapshot["topics"][0]["subscribers"][1]["backlog"] == 0 else None

        snapshot = wait_until(drained, what="the live subscriber to take its messages")
    assert json.loads(json.dumps(snapshot)) == snapshot  # JSON as it is
    assert snapshot["root"] == zk_root
    assert {c["id"] for c in snapshot["clients"]} == {"janitor", "reader-2", "publisher"}
    assert all(c["host"] == socket.gethostname() and c["pid"] > 0 for c in snapshot["clients"])
    assert snapshot["cleaner"] == {"leader": "janitor", "candidates": 1}
    (topic,) = snapshot["topics"]
    assert topic["name"] == "prices" and topic["backlog"] == 3
    away, live = topic["subscribers"]
    assert away["client_id"] == "reader-1" and away["backlog"] == 3
    assert away["live"] is False and away["subscribed"] is True
    assert live["client_id"] == "reader-2" and live["live"] is True and live["backlog"] == 0
    assert away["changes"] >= 3  # every node created counts
    (queue,) = snapshot["work_queues"]
    assert {k: queue[k] for k in ("name", "ready", "reserved", "dead", "workers")} == {
        "name": "jobs",
        "ready": 1,
        "reserved": 0,
        "dead": 1,
        "workers": 1,
    }
    (letter,) = queue["dead_letters"]
    assert "backend down" in letter["reason"] and letter["attempts"] == 1
    assert letter["priority"] == 3 and letter["payload"] == '{"order": 7}'
    assert letter["died_at"] == pytest.approx(time.time(), abs=120)


def test_a_snapshot_lists_the_oldest_dead_letters_and_counts_them_all(
    make_client: MakeClient, zk_hosts: str, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zkpubsub.gateway import console

    monkeypatch.setattr(console, "DEAD_LETTERS_SHOWN", 2)
    jobs = make_client().queue("bulk", max_attempts=1)
    for n in range(3):
        jobs.put({"n": n, "blob": "x" * 500})
        item = jobs.reserve(10)
        assert item is not None
        item.release(f"failure {n}")
    with Observer(zk_hosts, root=zk_root) as observer:
        (queue,) = console_snapshot(observer)["work_queues"]
        assert len(observer.dead("bulk")) == 3 and len(observer.dead("bulk", limit=1)) == 1
        with pytest.raises(ValueError, match="limit"):
            observer.dead("bulk", limit=-1)
    assert queue["dead"] == 3
    assert [d["reason"][-9:] for d in queue["dead_letters"]] == ["failure 0", "failure 1"]
    preview = queue["dead_letters"][0]["payload"]
    assert preview.startswith('{"n": 0, "blob": "xxx') and preview.endswith("…")
    assert len(preview) == console.PAYLOAD_PREVIEW


# -- the routes, served by uvicorn ------------------------------------------------------


def authorize(authorization: str = Header(default="")) -> None:
    """What the gateway's dependency does for the console: a bearer token or 401."""
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401, "a console token is needed", {"WWW-Authenticate": "Bearer"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture
def console_app(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> Iterator[tuple[FastAPI, Observer]]:
    """The console's router on a bare app, observing the test's root (where
    a first client made the bus)."""
    make_client(client_id="first", cleaner=False)
    observer = Observer(zk_hosts, root=zk_root)

    async def observe() -> dict[str, Any]:
        return await asyncio.to_thread(console_snapshot, observer)

    app = FastAPI()
    app.include_router(console_router(observe, authorize, interval=0.2))
    yield app, observer
    observer.close()


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a Server-Sent Events response."""
    kind, data = "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield kind, json.loads("\n".join(data))
            kind, data = "message", []


def test_the_page_and_its_assets_are_served_without_a_token_and_hold_no_data(
    make_client: MakeClient, console_app: tuple[FastAPI, Observer]
) -> None:
    make_client().subscribe("secret-topic")
    app, _ = console_app
    with serving(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        page = http.get("/ui")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert 'src="ui/console.js"' in page.text and "secret-topic" not in page.text
        script = http.get("/ui/console.js")
        assert script.status_code == 200 and "text/javascript" in script.headers["content-type"]
        assert "/ui/events" in script.text
        assert http.get("/ui/console.css").headers["content-type"].startswith("text/css")
        assert "/ui/state" in http.get("/openapi.json").json()["paths"]


def test_the_state_and_the_event_stream_are_refused_without_the_token(
    console_app: tuple[FastAPI, Observer],
) -> None:
    app, _ = console_app
    with serving(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/ui/state").status_code == 401
        wrong = {"Authorization": "Bearer not-it"}
        assert http.get("/ui/state", headers=wrong).status_code == 401
        with http.stream("GET", "/ui/events", headers=wrong) as stream:
            assert stream.status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        state = http.get("/ui/state", headers=good)
        assert state.status_code == 200 and state.json()["topics"] == []


def test_the_event_stream_sends_a_snapshot_on_connect_then_each_change(
    make_client: MakeClient, console_app: tuple[FastAPI, Observer]
) -> None:
    publisher = make_bus(make_client)
    app, _ = console_app
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        serving(app) as base,
        httpx.Client(base_url=base, timeout=10) as http,
        http.stream("GET", "/ui/events", headers=headers) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        seen = events(stream)
        kind, first = next(seen)
        assert kind == "snapshot"
        assert first["topics"][0]["subscribers"][0]["backlog"] == 3
        publisher.publish("prices", {"p": 3})
        alive = 0
        for kind, data in seen:
            if kind == "alive":
                alive += 1
                assert data["at"] >= first["at"]
                continue
            assert kind == "snapshot"
            # the live reader-2 deletes its copy on its own thread after the publish
            # committed: wait for that change too before expecting no more
            subscribers = data["topics"][0]["subscribers"]
            if subscribers[0]["backlog"] == 4 and subscribers[1]["backlog"] == 0:
                break
        # nothing changes any more: the stream says it is alive, sends no snapshot
        kinds = [next(seen)[0] for _ in range(3)]
        assert kinds == ["alive"] * 3


def test_the_event_stream_reports_a_snapshot_it_cannot_take_and_goes_on() -> None:
    calls = 0

    async def observe() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OperationTimeout("list /bus-root/clients: stats did not complete within 20 s")
        return {"at": time.time(), "calls": calls}

    app = FastAPI()
    app.include_router(console_router(observe, authorize, interval=0.05))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        serving(app) as base,
        httpx.Client(base_url=base, timeout=10) as http,
        http.stream("GET", "/ui/events", headers=headers) as stream,
    ):
        seen = events(stream)
        assert next(seen) == ("snapshot", {"at": pytest.approx(time.time(), abs=60), "calls": 1})
        kind, problem = next(seen)
        assert kind == "problem" and problem["title"] == "OperationTimeout"
        assert "did not complete" in problem["detail"]
        # as in every problem the gateway answers, a path reads <node>
        assert "<node>" in problem["detail"] and "/bus-root" not in problem["detail"]
        kind, after = next(seen)
        assert kind == "snapshot" and after["calls"] == 3  # sent again after the problem


def test_consoles_open_at_the_same_time_share_their_snapshots() -> None:
    calls = 0

    async def observe() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"at": time.time(), "calls": calls}  # a change every time

    app = FastAPI()
    app.include_router(console_router(observe, authorize, interval=0.2))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        serving(app) as base,
        httpx.Client(base_url=base, timeout=10) as http,
        http.stream("GET", "/ui/events", headers=headers) as one,
        http.stream("GET", "/ui/events", headers=headers) as two,
    ):
        first, second = events(one), events(two)
        for _ in range(5):
            seen = {next(first)[1]["calls"], next(second)[1]["calls"]}
    # two streams alone would have read the bus 10 times for these 10 events
    assert max(seen) < 10


# -- the page in a headless browser -----------------------------------------------------


def chromium_path() -> str:
    """Debian's chromium (``scripts/dev.sh install`` puts it there), or the
    one ``ZKPUBSUB_CHROMIUM`` names. Missing, the test fails under CI and is
    skipped elsewhere."""
    path = os.environ.get("ZKPUBSUB_CHROMIUM") or shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium: bash scripts/dev.sh install installs it")
        pytest.skip("no chromium on this machine (bash scripts/dev.sh install installs it)")
    return path


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A page of a headless chromium, closed at the end. Waits (actions and
    ``expect``) last up to 20 s: a loaded machine is slow, never wrong."""
    if os.environ.get("CI"):
        import playwright.sync_api as sync_api  # part of the test extra: CI must have it
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    sync_api.expect.set_options(timeout=20_000)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


ADMIN = {"name": "ops", "token": TOKEN, "admin": True}
READER = {"name": "reader", "token": "a-token-for-prices-only", "topics": ["prices"]}


@pytest.fixture
def gateway_url(make_client: MakeClient, zk_hosts: str, zk_root: str) -> Iterator[str]:
    """A real gateway process on the test's root (made by a first client),
    with an admin token and a token that may only publish to ``prices``."""
    make_client(client_id="first", cleaner=False)
    with gateway(zk_hosts, zk_root, {"tokens": [ADMIN, READER]}) as url:
        yield url


def test_the_page_shows_the_bus_live_publishes_and_replays_dead_letters(
    make_client: MakeClient, zk_hosts: str, zk_root: str, gateway_url: str, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    publisher = make_bus(make_client, janitor_leads=False)  # the gateway's client may lead
    with Observer(zk_hosts, root=zk_root) as observer:
        # each cleaner joins the election on its own thread, maybe after make_bus returned
        leader = wait_until(observer.cleaner_leader, 20, "a cleaner candidate")
    page = browser_page
    page.goto(f"{gateway_url}/ui")
    expect(page.locator("#status")).to_have_text("signed out")  # the gateway wants a token
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login-error")).to_be_empty()
    page.fill("#token", "not-a-token-of-this-gateway")
    page.click("#connect")
    expect(page.locator("#login-error")).to_contain_text("token")  # refused: asked again
    page.fill("#token", READER["token"])
    page.click("#connect")
    expect(page.locator("#login-error")).to_contain_text("not an admin token")
    page.fill("#token", TOKEN)
    page.click("#connect")
    expect(page.locator("#status")).to_have_text("live")

    away = page.locator('tr.subscriber[data-topic="prices"][data-client="reader-1"] td.backlog')
    expect(away).to_have_text("3")
    expect(page.locator("#leader")).to_have_text(leader or "none")
    expect(page.locator('#clients tr[data-client="reader-2"]')).to_contain_text("reader-2")

    # published from the page, then from the library: the page follows
    page.fill("#publish-topic", "prices")
    page.fill("#publish-payload", '{"from": "the console"}')
    page.click("#publish")
    expect(page.locator("#publish-result")).to_contain_text("Published to prices")
    expect(away).to_have_text("4")
    publisher.publish("prices", {"from": "the library"})
    expect(away).to_have_text("5")

    dead = page.locator('#dead-letters tr[data-queue="jobs"]')
    expect(dead.locator("td.reason")).to_contain_text("<h1>502 Bad Gateway</h1>")  # as text
    queue = page.locator('#queues tr[data-queue="jobs"]')
    expect(queue.locator("td.dead")).to_have_text("1")
    expect(queue.locator("td.ready")).to_have_text("1")
    if os.environ.get("ZKPUBSUB_CONSOLE_SCREENSHOT"):
        page.screenshot(path=os.environ["ZKPUBSUB_CONSOLE_SCREENSHOT"], full_page=True)
    dead.locator("button.replay").click()
    expect(page.locator("#replay-result")).to_contain_text("Replayed 1 dead letter(s) of jobs")
    expect(queue.locator("td.dead")).to_have_text("0")
    expect(queue.locator("td.ready")).to_have_text("2")

    # what ZooKeeper holds: the letter is gone, its item ready again
    jobs = make_client(cleaner=False).queue("jobs")
    assert jobs.dead() == []
    stats = jobs.stats()
    assert (stats.ready, stats.dead) == (2, 0)
    payloads = set()
    for _ in range(2):
        item = jobs.reserve(10)
        assert item is not None
        payloads.add(json.dumps(item.payload))
        item.ack()
    assert payloads == {'{"order": 7}', '"waiting"'}


def test_a_gateway_without_tokens_shows_the_page_without_asking_for_one(
    make_client: MakeClient, zk_hosts: str, zk_root: str, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    make_client(client_id="first", cleaner=False).subscribe("news")
    with gateway(zk_hosts, zk_root) as url:
        page = browser_page
        page.goto(f"{url}/ui")
        expect(page.locator("#status")).to_have_text("live")
        expect(page.locator("#login")).to_be_hidden()
        expect(
            page.locator('tr.subscriber[data-topic="news"][data-client="first"]')
        ).to_be_visible()


def test_the_pages_rates_count_what_moved_as_the_library_does(browser_page: Any) -> None:
    """The page works out rates as ``moved_between`` does: it once summed
    child versions, whose history a removed segment took with it."""
    from zkpubsub.gateway import console
    from zkpubsub.stats import QueueStats, SegmentCount, moved_between

    script = (Path(console.__file__).parent / "static" / "console.js").read_text()
    page = browser_page
    page.set_content("<html><body></body></html>")
    page.add_script_tag(content=script)  # its functions are the page's
    cases = [
        ([(1, 512, 200, 11), (2, 100, 100, 12)], 4, [(2, 110, 80, 12), (3, 7, 7, 13)], 1),
        ([(0, 50, 50, 20)], 0, [(0, 3, 3, 90)], 0),
        ([], 3, [(1, 9, 9, 5)], 0),
    ]
    for before, loose_before, after, loose_after in cases:

        def queue(segments: list[tuple[int, int, int, int]], loose: int) -> QueueStats:
            segs = tuple(SegmentCount(*s) for s in segments)
            return QueueStats("c", "t", 0, True, True, 0, segs, loose)

        expected = list(moved_between(queue(before, loose_before), queue(after, loose_after)))
        got = page.evaluate(
            "([a, b]) => moved(a, b)",
            [
                {"segments": [list(s) for s in before], "loose": loose_before},
                {"segments": [list(s) for s in after], "loose": loose_after},
            ],
        )
        assert got == expected
