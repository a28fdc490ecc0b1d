"""The example service, started by its one command: three FastAPI
instances on a ZooKeeper of their own, kept consistent by the cache."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from zkpubsub.testing import ZooKeeperCluster

from .helpers import wait_until

ROOT_DIR = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.local_zk, pytest.mark.timeout(180)]


def test_a_write_on_one_instance_invalidates_the_others() -> None:
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT_DIR / "examples" / "cache_service.py"), "--instances", "3"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT_DIR,
    )
    try:
        assert launcher.stdout is not None
        started = json.loads(launcher.stdout.readline())
        one, two, three = (httpx.Client(base_url=url, timeout=10) for url in started["instances"])
        for instance in (two, three):
            assert instance.get("/users/1").json()["name"] == "Ada"  # loaded, now cached
            assert instance.get("/users/1").json()["name"] == "Ada"
            assert instance.get("/stats").json()["cache"]["hits"] >= 1
        answer = one.put("/users/1", json={"name": "Grace"})
        assert answer.status_code == 200 and answer.json()["instances_told"] == 3
        assert one.get("/users/1").json()["name"] == "Grace"  # its own write, at once
        for instance in (two, three):
            deadline = time.monotonic() + 10
            while instance.get("/users/1").json()["name"] != "Grace":
                assert time.monotonic() < deadline, "an instance kept the old name"
                time.sleep(0.05)
        delivered = 'zkpubsub_deliveries_total{topic="cache.users"} 1.0'
        # the delivery is counted after the handler (which dropped the key) returned
        wait_until(lambda: delivered in two.get("/metrics").text, 10, "the delivery counted")
        metrics = two.get("/metrics").text
        assert delivered in metrics
        assert 'zkpubsub_session_state{state="connected"} 1.0' in metrics
        for instance in (one, two, three):
            assert instance.get("/health/live").status_code == 200
            ready = instance.get("/health/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "ok"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(60) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)


def test_a_sigterm_while_the_service_starts_leaves_nothing_running() -> None:
    """A SIGTERM while the launcher started its ZooKeeper killed the
    launcher (143) before its clean-up began: the ZooKeeper, in a session of
    its own, ran on for good, with its folder."""
    import tempfile

    def folders() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("cache-service-*"))

    before = folders()
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT_DIR / "examples" / "cache_service.py"), "--instances", "2"],
        stdout=subprocess.DEVNULL,
        cwd=ROOT_DIR,
    )
    try:
        wait_until(lambda: folders() - before, 60, "the launcher's folder")
        (folder,) = folders() - before
        launcher.send_signal(signal.SIGTERM)  # its ZooKeeper is starting
        assert launcher.wait(60) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert not folder.exists()
    java = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True)
    assert java.stdout == "", java.stdout


def test_a_terminals_ctrl_c_shuts_every_instance_down_cleanly() -> None:
    """Ctrl-C reaches the whole foreground group; the launcher sent each
    instance a second SIGINT, which uvicorn takes for a forced quit: it
    skipped the shutdown that closes the cache and the client (tracebacks)."""
    import os

    launcher = subprocess.Popen(
        [sys.executable, str(ROOT_DIR / "examples" / "cache_service.py"), "--instances", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT_DIR,
        start_new_session=True,  # a group of its own, as a terminal's job
    )
    try:
        assert launcher.stdout is not None
        assert json.loads(launcher.stdout.readline())["instances"]
        os.killpg(launcher.pid, signal.SIGINT)
        _, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0
    assert "Traceback" not in err, err


def test_a_scrape_while_zookeeper_is_frozen_does_not_hold_up_the_health_endpoints(
    make_cluster: Callable[..., ZooKeeperCluster], tmp_path: Path
) -> None:
    """The example scraped on its event loop: with ZooKeeper frozen (the
    client not told yet) a scrape's reads held the loop for their budget
    (3 s), and a liveness probe sent meanwhile waited as long."""
    spec = importlib.util.spec_from_file_location(
        "cache_service", ROOT_DIR / "examples" / "cache_service.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    zk = make_cluster(1)
    (node,) = zk.nodes
    db = tmp_path / "users.db"
    example.init_db(db)
    app = example.make_app(zk.hosts, "/example-scrape", db, "one")

    async def probe_while_scraping() -> tuple[int, float, int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://one") as http:
                assert (
                    await http.get("/users/1")
                ).status_code == 200  # a subscription's backlog to read
                assert (await http.get("/metrics")).status_code == 200
                node.pause()
                try:
                    started = time.monotonic()
                    scrape = asyncio.ensure_future(http.get("/metrics"))
                    await asyncio.sleep(0.2)  # the scrape is reading
                    live = await http.get("/health/live")
                    took = time.monotonic() - started - 0.2
                    scraped = await scrape
                finally:
                    node.resume()
        return live.status_code, took, scraped.status_code

    status, took, scraped = asyncio.run(probe_while_scraping())
    assert status == 200 and scraped == 200
    assert took < 1.0, took
