"""The example service, started by its one command: three FastAPI
instances on a ZooKeeper of their own, kept consistent by the cache."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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
