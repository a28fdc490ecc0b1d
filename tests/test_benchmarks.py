"""The benchmark harness, end to end in its quick mode, against real ZooKeeper.

Checks that every section runs and reports consistent counts (everything
published was delivered, every item put was consumed, nothing acknowledged
was lost across a leader kill). It never checks speed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import main
from benchmarks.profiles import QUICK, SECTIONS

pytestmark = [pytest.mark.local_zk, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("bench")
    code = main(["--quick", "--out", str(out), "--quiet"])
    return code, out


@pytest.fixture(scope="module")
def report(quick_run: tuple[int, Path]) -> dict:
    _, out = quick_run
    return json.loads((out / "latest.json").read_text())


def test_the_quick_run_succeeds_and_writes_its_report(quick_run: tuple[int, Path]) -> None:
    code, out = quick_run
    assert code == 0
    stamped = [p for p in out.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1
    assert (out / "latest.md").read_text().startswith("# Benchmark results")
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("warmup", "fanout", "queue", "latency", "backlog", "stall"):
            assert (out / "plots" / f"{name}.png").stat().st_size > 0


def test_every_section_is_reported_without_errors(report: dict) -> None:
    assert report["profile"] == "quick"
    assert set(report["sections"]) == set(SECTIONS)
    assert report["errors"] == {}
    for name, section in report["sections"].items():
        assert section.get("errors", []) == [], name
    assert report["zookeeper"]["version"].startswith("3.")
    assert report["warmup"]["curve"]
    assert {t["id"] for t in report["targets"]} == {
        "fanout-20",
        "fanout-1",
        "queue-4",
        "latency-p50",
        "latency-p99",
        "backlog",
    }
    assert all(t["met"] in (True, False, None) for t in report["targets"])


def test_fanout_delivers_every_published_message_to_every_subscriber(report: dict) -> None:
    results = report["sections"]["fanout"]["results"]
    for n in QUICK.fanout_subscribers:
        impls = {r["impl"] for r in results if r["subscribers"] == n}
        assert {"zkms", "zkpubsub-publish", "raw"} <= impls
    for r in results:
        assert r["published"] > 0, r
        assert r["errors"] == 0, r
        if r["publish_only"]:
            continue
        assert r["complete"], r
        assert r["delivered_min"] == r["published"], r
        assert r["delivered_total"] == r["published"] * r["subscribers"], r
        assert r["duplicates"] == 0, r
        assert r["e2e_rate"] > 0


def test_queue_consumes_every_item_once(report: dict) -> None:
    section = report["sections"]["queue"]
    baseline = [r for r in section["results"] if r["impl"] == "lockingqueue"]
    assert [r["workers"] for r in baseline] == list(QUICK.queue_workers)
    for r in section["results"]:
        assert r["put"] > 0
        assert r["consumed"] == r["put"], r
    ours = [r for r in section["results"] if r["impl"] == "zkpubsub"]
    skipped = [s for s in section["skipped"] if s["impl"] == "zkpubsub"]
    assert ours or skipped


def test_latency_accounts_for_every_scheduled_delivery(report: dict) -> None:
    results = report["sections"]["latency"]["results"]
    assert {r["impl"] for r in results} >= {"zkpubsub", "zkms"}
    for r in results:
        assert r["errors"] == 0, r
        assert r["sent"] + r["unsent"] == r["scheduled"], r
        # delivered, or counted with the time it had waited (a lower bound)
        assert r["latency_ms"]["count"] == r["scheduled"] * r["subscribers"], r
        assert r["lower_bound"] == (r["missing_deliveries"] > 0)
        assert r["duplicates"] == 0, r
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]


def test_backlog_reaches_each_level(report: dict) -> None:
    section = report["sections"]["backlog"]
    levels = section["levels"]
    assert [lv["level"] for lv in levels] == list(QUICK.backlog_levels)
    for lv in levels:
        assert lv["backlog_nodes"] >= lv["level"]
        assert lv["publishes"] > 0
        assert lv["errors"] == 0
    assert section["fill"]["messages"] > 0


def test_leader_kill_loses_no_acknowledged_message(report: dict) -> None:
    results = {r["impl"]: r for r in report["sections"]["stall"]["results"]}
    assert set(results) == {"zkpubsub", "zkms"}
    for r in results.values():
        assert r["acknowledged"] > 0
        assert r["killed_server"] in (1, 2, 3)
        assert r["lost"] == 0, r


def test_commit_latency_times_both_round_trips(tmp_path: Path) -> None:
    from benchmarks import commit_latency

    out = tmp_path / "commit"
    assert commit_latency.main(["--seconds", "1", "--warmup", "0.5", "--out", str(out)]) == 0
    (path,) = out.glob("commit-latency-*.json")
    report = json.loads(path.read_text())
    for name in ("raw", "publish"):
        r = report[name]
        assert r["count"] >= 20, r  # about 200 a second for a second
        assert 0 < r["p50"] <= r["p99"] <= r["max"], r


def test_the_asyncio_path_is_measured_beside_the_threaded_one(report: dict) -> None:
    for name in ("fanout", "latency"):
        section = report["sections"][name]
        assert any(r["impl"] == "aio" for r in section["results"]), name
        rows = section["asyncio_vs_threaded"]
        assert rows and all(r["slower_by"] is not None for r in rows), rows
    fanout = [r for r in report["sections"]["fanout"]["results"] if r["impl"] == "aio"]
    assert all(r["complete"] and r["duplicates"] == 0 for r in fanout)
