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

pytestmark = [
    pytest.mark.bench,
    pytest.mark.local_zk,
    pytest.mark.local_install,
    pytest.mark.timeout(300),
]


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
        for name in ("warmup", "fanout", "queue", "latency", "backlog", "stuck", "stall"):
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
        "latency-p50-1",
        "latency-p99-1",
        "latency-p50-10",
        "latency-p99-10",
        "backlog",
        "stuck",
    }
    assert all(t["met"] in (True, False, None) for t in report["targets"])


def test_fanout_delivers_every_published_message_to_every_subscriber(report: dict) -> None:
    runs = report["sections"]["fanout"]["runs"]
    for n in QUICK.fanout_subscribers:
        impls = {r["impl"] for r in runs if r["subscribers"] == n}
        assert {"zkms", "zkms-threads", "zkms-pipelined", "zkpubsub-publish"} <= impls
        assert {"raw", "raw-packed"} <= impls
    for r in runs:
        assert r["published"] > 0, r
        assert r["errors"] == 0, r
        if r["publish_only"]:
            continue
        assert r["complete"], r
        assert r["delivered_min"] == r["published"], r
        assert r["delivered_total"] == r["published"] * r["subscribers"], r
        assert r["duplicates"] == 0, r
        assert r["e2e_rate"] > 0


def test_every_fanout_cell_runs_each_repeat_in_a_rotating_order(report: dict) -> None:
    section = report["sections"]["fanout"]
    runs = section["runs"]
    for n in QUICK.fanout_subscribers:
        orders = section["orders"][str(n)]
        assert len(orders) == QUICK.repeats
        assert all(sorted(o) == sorted(orders[0]) for o in orders)
        assert len({o[0] for o in orders}) == QUICK.repeats  # not always the same first
        for impl in orders[0]:
            cells = [r for r in runs if r["subscribers"] == n and r["impl"] == impl]
            assert sorted(r["repeat"] for r in cells) == list(range(QUICK.repeats))
    for row in section["results"]:
        assert row["repeats"] == QUICK.repeats and row["rates"]["n"] == QUICK.repeats
        assert row["rates"]["min"] <= row["rates"]["median"] <= row["rates"]["max"]
    for ratio in section["ratios"]:
        assert ratio["vs_zkms"]["n"] == QUICK.repeats  # one comparison per repeat
        assert [lv["level"] for lv in ratio["levels"]] == ["1 thread", "threads", "asynchronous"]
        assert all(lv["ratio"]["n"] == QUICK.repeats for lv in ratio["levels"])
        assert ratio["vs_raw_packed"] is not None and ratio["raw_pack"] >= 1


def test_queue_drains_the_same_backlog_and_consumes_every_item_once(report: dict) -> None:
    section = report["sections"]["queue"]
    runs = section["runs"]
    baseline = [r for r in runs if r["impl"] == "lockingqueue"]
    assert sorted({r["workers"] for r in baseline}) == sorted(QUICK.queue_workers)
    assert len(baseline) == len(QUICK.queue_workers) * QUICK.repeats
    for r in runs:
        assert r["put"] == QUICK.queue_items, r
        assert r["consumed"] == r["put"], r
    ours = [r for r in runs if r["impl"] == "zkpubsub"]
    skipped = [s for s in section["skipped"] if s["impl"] == "zkpubsub"]
    assert ours or skipped
    if ours:
        for ratio in section["ratios"]:
            assert ratio["single_vs_single"]["n"] == QUICK.repeats
            assert ratio["best_vs_best"]["n"] == QUICK.repeats
            assert ratio["persistent_vs_listing"]["n"] == QUICK.repeats
        listing = [r for r in runs if r["impl"] == "zkpubsub-listing"]
        assert len(listing) == len(ours)  # the same cells with workers listing


def test_queue_latency_takes_every_item_once_in_both_watch_modes_beside_the_floor(
    report: dict,
) -> None:
    section = report["sections"]["queue-latency"]
    assert section["errors"] == [] and section["skipped"] == []
    runs = section["runs"]
    sides = {"zkpubsub-persistent", "zkpubsub-listing", "floor"}
    groups = [(w, r) for w in QUICK.queue_latency_workers for r in QUICK.queue_latency_rates]
    for workers, rate in groups:
        cells = [r for r in runs if r["workers"] == workers and r["rate"] == rate]
        assert {r["impl"] for r in cells} == sides
        assert len(cells) == len(sides) * QUICK.repeats  # every side in every repeat
        orders = section["orders"][f"{workers}@{rate:g}"]
        assert all(sorted(o) == sorted(sides) for o in orders)
        assert len({o[0] for o in orders}) == QUICK.repeats  # not always the same first
    for r in runs:
        assert r["errors"] == 0, r
        assert r["sent"] + r["unsent"] == r["scheduled"], r
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
        if r["impl"] == "floor":  # one commit per item sent
            assert r["latency_ms"]["count"] == r["sent"], r
            continue
        # every scheduled item has a latency (reserved, or counted as waiting)
        assert r["latency_ms"]["count"] == r["scheduled"], r
        assert r["watch_mode"] in ("persistent", "listing"), r
        assert r["exactly_once"] and r["problems"] == [], r
        assert r["reserved"] == r["acked"] == r["sent"] and r["duplicates"] == 0, r
        assert sum(r["per_worker"]) == r["sent"] and len(r["per_worker"]) == r["workers"], r
        assert r["left_in_queue"] == {"ready": 0, "reserved": 0, "dead": 0}, r
        assert r["requests_per_item"] >= 2, r  # a reserve and an ack at least
    rows = section["results"]
    for row in rows:
        assert row["repeats"] == QUICK.repeats
        if row["impl"] != "floor":
            floor = next(
                f
                for f in rows
                if f["impl"] == "floor"
                and (f["workers"], f["rate"]) == (row["workers"], row["rate"])
            )
            assert row["floor_ms"]["p50"] == floor["latency_ms"]["p50"]
    for c in section["comparison"]:
        assert c["listing_over_persistent_p50"]["n"] == QUICK.repeats  # one per repeat
        assert c["listing_over_persistent_requests"]["n"] == QUICK.repeats


def test_latency_accounts_for_every_scheduled_delivery(report: dict) -> None:
    section = report["sections"]["latency"]
    assert {r["impl"] for r in section["results"]} >= {"zkpubsub", "zkms"}
    for row in section["results"]:
        assert row["repeats"] == QUICK.repeats
    for r in section["runs"]:
        assert r["errors"] == 0, r
        assert r["sent"] + r["unsent"] == r["scheduled"], r
        if r["impl"] == "floor":  # one commit per message, whatever the subscribers
            assert r["latency_ms"]["count"] == r["sent"], r
            # from the actual send: its own figures, never later than from the schedule
            sent, sched = r["latency_from_send_ms"], r["latency_ms"]
            assert sent["count"] == sched["count"] and sent["mean"] < sched["mean"], r
            assert all(sent[q] <= sched[q] for q in ("p50", "p99", "max")), r
            continue
        # delivered, or counted with the time it had waited (a lower bound)
        assert r["latency_ms"]["count"] == r["scheduled"] * r["subscribers"], r
        assert r["lower_bound"] == (r["missing_deliveries"] > 0)
        assert r["duplicates"] == 0, r
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]


def test_latency_rows_carry_the_floor_and_what_the_subscribers_spent(report: dict) -> None:
    section = report["sections"]["latency"]
    rows = section["results"]
    rate = QUICK.latency_target_rate
    for n in QUICK.latency_target_counts:
        floor = [r for r in rows if r["impl"] == "floor" and r["subscribers"] == n]
        own = [r for r in rows if r["impl"] == "zkpubsub-async-own" and r["subscribers"] == n]
        assert floor and own and own[0]["rate"] == rate
        assert own[0]["floor_ms"]["p50"] == floor[0]["latency_ms"]["p50"]
        assert own[0]["placement"] == "one process each"
    for r in rows:
        if r["impl"].startswith("zkpubsub") and r["impl"] != "zkpubsub-aio":
            assert r["requests_per_node"] and r["requests_per_node"] > 0, r
        # every row with subscribers says what their processes spent per message
        if r["impl"] != "floor":
            assert r["cpu_us_per_message"] and r["cpu_us_per_message"] > 0, r
        else:
            assert r["cpu_us_per_message"] is None and r["first_delivery_ms"] is None, r
        if r["impl"] != "floor" and not r["lower_bound"]:
            # one first delivery per message, none later than the deliveries' own
            first, every = r["first_delivery_ms"], r["latency_ms"]
            assert first["count"] == r["scheduled"], r
            assert 0 < first["p50"] <= every["p50"] and first["p99"] <= every["p99"], r
    targets = {t["id"]: t for t in report["targets"]}
    assert targets["latency-p50-1"]["value"] is not None


def test_latency_warms_the_floor_and_target_cells_without_counting_them(report: dict) -> None:
    from benchmarks.sections.latency import FLOOR, OWN, _cells

    section = report["sections"]["latency"]
    cells = _cells(QUICK)
    assert section["params"]["warmup_s"] == QUICK.latency_warmup
    warmed = [(w["impl"], w["subscribers"], w["rate"]) for w in section["warmups"]]
    assert warmed == [(key, n, rate) for key, _, _, n, rate, _ in cells]
    assert all(0 < w["p50"] <= w["p99"] for w in section["warmups"])
    measured = [r for r in section["runs"] if r["impl"] in (FLOOR, OWN)]
    assert len(measured) == len(cells) * QUICK.repeats  # the warm-up pass is not among them
    assert all(
        r["latency_ms"]["count"] >= r["sent"] > QUICK.latency_warmup * r["rate"] for r in measured
    )


def test_backlog_reaches_each_level(report: dict) -> None:
    section = report["sections"]["backlog"]
    levels = section["levels"]
    # bounded above every level: no probe can be an overflow marker's update
    assert section["params"]["subscriber_max_backlog"] == 2**31 - 1
    assert [lv["level"] for lv in levels] == list(QUICK.backlog_levels)
    end = 0
    for lv in levels:
        assert lv["publishes"] > 0
        assert lv["errors"] == 0
        assert len(lv["probes"]) == QUICK.repeats
        # the probes count in the level: each made a node, the last made it
        # the level (a level 0 starts from the empty queue), above the last
        assert lv["backlog_from"] == (0 if lv["level"] == 0 else lv["level"] - lv["publishes"])
        assert lv["backlog_nodes"] - lv["backlog_from"] == lv["publishes"], lv
        if lv["level"]:
            assert lv["backlog_nodes"] == lv["level"], lv
        assert lv["backlog_from"] >= end, lv
        end = lv["backlog_nodes"]
        for run in lv["probes"]:
            assert run["backlog_to"] > run["backlog_from"], run
    assert section["fill"]["messages"] > 0


def test_backlog_probes_end_at_their_level_above_the_one_before() -> None:
    from benchmarks.sections.backlog import fill_target, probe_plan

    levels = (0, 1_000, 10_000, 50_000, 100_000)
    plan = probe_plan(levels, 3, 1_000)
    # level 0 takes half the room to 1,000; 1,000 gets the rest
    assert plan == [(0, 166), (1_000, 167), (10_000, 1_000), (50_000, 1_000), (100_000, 1_000)]
    end = 0
    for level, n in plan:
        start = fill_target(level, n, 3)  # before the first of the three runs
        assert start >= end, (level, start, end)
        if level:  # each run starts n below the next; the last ends at the level
            assert [fill_target(level, n, k) for k in (3, 2, 1)] == [start, start + n, level - n]
        end = start + 3 * n
    assert fill_target(100_000, 1_000, 3) == 97_000
    assert fill_target(0, 166, 2) == 0
    assert [n for _, n in probe_plan(QUICK.backlog_levels, QUICK.repeats, 50)] == [50, 50]
    with pytest.raises(ValueError):
        probe_plan((1_000, 0), 3, 10)
    with pytest.raises(ValueError):
        probe_plan((0, 2), 3, 10)  # no room for three runs


def test_a_stuck_subscriber_is_measured_in_alternating_rounds_and_stays_within_its_bound(
    report: dict,
) -> None:
    section = report["sections"]["stuck"]
    runs = section["runs"]
    assert len(runs) == 3 * QUICK.stuck_rounds
    orders = section["orders"]
    assert all(sorted(o) == ["healthy", "stuck", "unbounded"] for o in orders)
    assert len({o[0] for o in orders}) == QUICK.stuck_rounds  # not always the same first
    for r in runs:
        assert r["measured"] > 0 and r["errors"] == 0, r
        # the healthy subscribers got every acknowledged message
        assert r["delivered_min"] == r["published"] and r["duplicates"] == 0, r
        assert r["problems"] == [], r
        assert r["samples"] and all(s[1] is not None for s in r["samples"]), r["samples"]
        if r["cell"] == "stuck":
            assert r["stuck_entries_peak"] is not None
            assert r["stuck_entries_peak"] <= r["stuck_allowed"], r
    assert section["stuck_vs_healthy"]["n"] == QUICK.stuck_rounds
    assert section["stuck_within_bound"] is True
    assert section["every_message_delivered"] is True
    target = next(t for t in report["targets"] if t["id"] == "stuck")
    assert target["value"] == section["stuck_vs_healthy"]["median"]


def test_leader_kill_loses_no_acknowledged_message(report: dict) -> None:
    results = {r["impl"]: r for r in report["sections"]["stall"]["results"]}
    assert set(results) == {"zkpubsub", "zkms"}
    for r in results.values():
        assert r["acknowledged"] > 0
        assert r["killed_server"] in (1, 2, 3)
        assert r["lost"] == 0, r


def test_the_readme_table_is_generated_from_the_report(report: dict, tmp_path: Path) -> None:
    from benchmarks.report import README_BEGIN, README_END, readme_summary, update_readme

    summary = readme_summary(report)
    assert "quick run, not for quoting" in summary
    assert "fan-out to 1 subscriber" in summary  # quick sizes: no 20 subscribers, no 4 workers
    assert summary.count("\n- ") == len(report["targets"])
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nold\n{README_END}\n\nrest\n")
    assert update_readme(readme, report)
    text = readme.read_text()
    assert "old" not in text and summary in text and text.endswith("rest\n")
    plain = tmp_path / "OTHER.md"
    plain.write_text("no markers\n")
    assert not update_readme(plain, report) and plain.read_text() == "no markers\n"


def test_commit_latency_times_every_round_trip(tmp_path: Path) -> None:
    from benchmarks import commit_latency

    out, zk_dir = tmp_path / "commit", tmp_path / "zk"
    zk_dir.mkdir()
    args = ["--seconds", "1", "--warmup", "0.5", "--queues", "3", "--turns", "2"]
    assert commit_latency.main([*args, "--out", str(out), "--zk-dir", str(zk_dir)]) == 0
    assert list(zk_dir.iterdir()) == []  # the server's data went with it
    (path,) = out.glob("commit-latency-*.json")
    report = json.loads(path.read_text())
    for name in ("raw", "publish", "floor-txn", "fanout-txn"):
        r = report[name]
        assert r["count"] >= 20, r  # about 200 a second for a second (a turn)
        assert 0 < r["p50"] <= r["p99"] <= r["max"], r
    for name in ("floor-txn", "fanout-txn"):
        assert report[name]["queues"] == 3 and len(report[name]["turns"]) == 2
        assert report[name]["count"] == sum(t["count"] for t in report[name]["turns"])


def test_commit_latency_refuses_no_queues_or_no_turns_before_starting_a_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import commit_latency

    for option in ("--queues", "--turns"):
        with pytest.raises(SystemExit) as exit_info:
            commit_latency.main([option, "0"])
        assert exit_info.value.code == 2
        assert f"{option} must be at least 1" in capsys.readouterr().err


def test_receive_floor_hears_and_reads_every_node_in_every_process(tmp_path: Path) -> None:
    from benchmarks import receive_floor

    out = tmp_path / "floor"
    argv = ["--subscribers", "1,3", "--rate", "100", "--seconds", "0.5", "--warmup", "0.25"]
    assert receive_floor.main([*argv, "--out", str(out)]) == 0
    (path,) = out.glob("receive-floor-*.json")
    cells = json.loads(path.read_text())["cells"]
    assert [c["subscribers"] for c in cells] == [1, 3]
    for cell in cells:
        n = cell["subscribers"]
        assert cell["sent"] == 50, cell
        assert cell["missing_events"] == cell["missing_reads"] == 0, cell
        assert cell["event"]["count"] == cell["read"]["count"] == 50 * n, cell
        # each node is read after its event arrived, and both after the
        # commit was scheduled: every percentile of the reads is at least
        # the events' (as many of each)
        for q in ("p50", "p99", "max"):
            assert 0 < cell["event"][q] <= cell["read"][q], (q, cell)
        # the floor: as many commits, before any process watched
        assert cell["floor"]["count"] == 50 and cell["floor"]["p50"] > 0, cell
        assert cell["handed"] is None and cell["missing_handed"] is None, cell
        assert cell["cpu_us_per_node"] > 0, cell
    quiet = tmp_path / "events"
    argv += ["--no-reads", "--hand-off"]
    assert receive_floor.main([*argv, "--out", str(quiet)]) == 0
    (path,) = quiet.glob("receive-floor-*.json")
    cells = json.loads(path.read_text())["cells"]
    assert [(c["event"]["count"], c["read"]) for c in cells] == [(50, None), (150, None)]
    for cell in cells:
        # every event handed to the process's own thread, each taken after
        # it arrived
        assert cell["missing_handed"] == 0, cell
        assert cell["handed"]["count"] == cell["event"]["count"], cell
        for q in ("p50", "p99", "max"):
            assert 0 < cell["event"][q] <= cell["handed"][q], (q, cell)


def test_receive_floor_deletes_every_node_when_asked(tmp_path: Path) -> None:
    from benchmarks import receive_floor

    base = ["--subscribers", "2", "--rate", "100", "--seconds", "0.5", "--warmup", "0.25"]
    base.append("--delete")
    # deleted after each read's answer; then after each hand-off, without reads
    for extra in ([], ["--no-reads", "--hand-off"]):
        out = tmp_path / ("reads" if not extra else "handed")
        assert receive_floor.main([*base, *extra, "--out", str(out)]) == 0
        (path,) = out.glob("receive-floor-*.json")
        report = json.loads(path.read_text())
        assert report["delete"] is True
        (cell,) = report["cells"]
        assert cell["missing_events"] == 0, cell
        if not extra:  # no node was deleted before its read was answered
            assert cell["missing_reads"] == 0 and cell["read"]["count"] == 100, cell
        else:
            assert cell["missing_handed"] == 0 and cell["handed"]["count"] == 100, cell
        # the warm-up's 25 nodes and the measurement's 50, in each of the two queues
        assert cell["deleted"] == 2 * (25 + 50), cell
        assert cell["left"] == 0, cell
        assert cell["cpu_us_per_node"] > 0, cell


def test_receive_floor_deletes_as_many_unwatched_nodes_when_asked(tmp_path: Path) -> None:
    from benchmarks import receive_floor

    argv = ["--subscribers", "2", "--rate", "100", "--seconds", "0.5", "--warmup", "0.25"]
    out = tmp_path / "unwatched"
    argv += ["--no-reads", "--hand-off", "--delete-unwatched", "--out", str(out)]
    assert receive_floor.main(argv) == 0
    (path,) = out.glob("receive-floor-*.json")
    report = json.loads(path.read_text())
    assert report["delete_unwatched"] is True and report["delete"] is False
    (cell,) = report["cells"]
    assert cell["missing_events"] == cell["missing_handed"] == 0, cell
    # as many deleted as were taken, none of them from the watched queues
    assert cell["deleted"] == 2 * (25 + 50), cell
    assert cell["left"] == 2 * (25 + 50), cell
    assert cell["cpu_us_per_node"] > 0, cell


def test_receive_floor_refuses_both_kinds_of_delete(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import receive_floor

    with pytest.raises(SystemExit) as exc:
        receive_floor.main(["--delete", "--delete-unwatched"])
    assert exc.value.code == 2
    assert "one or the other" in capsys.readouterr().err


def test_a_node_name_carries_its_scheduled_time() -> None:
    from benchmarks.receive_floor import node_name, scheduled_of

    assert scheduled_of(f"/q/{node_name(12.5, warm=False)}0000000007") == 12.5
    assert scheduled_of(f"/q/{node_name(12.5, warm=True)}0000000007") is None
    assert scheduled_of("/q/other") is None


def test_the_asyncio_path_is_measured_beside_the_threaded_one(report: dict) -> None:
    for name in ("fanout", "latency"):
        section = report["sections"][name]
        assert any(r["impl"] == "aio" for r in section["results"]), name
        rows = section["asyncio_vs_threaded"]
        assert rows and all(r["slower_by"] is not None for r in rows), rows
    fanout = [
        r for r in report["sections"]["fanout"]["results"] if r["impl"] in ("aio", "aio-nowait")
    ]
    assert {r["impl"] for r in fanout} == {"aio", "aio-nowait"}
    assert all(r["complete"] and r["duplicates"] == 0 for r in fanout)
    judged = [r for r in report["sections"]["fanout"]["asyncio_vs_threaded"] if r["judged"]]
    assert judged and all(r["variant"] == "publish_nowait()" for r in judged), judged


def test_the_gateway_section_measures_both_sides_in_the_same_run(report: dict) -> None:
    section = report["sections"]["gateway"]
    assert section["errors"] == []
    for cell in ("gateway", "library", "ratio"):
        assert section["publish"][cell]["n"] == QUICK.repeats, cell
    pull = section["pull"]
    for cell in ("gateway_auto_ack", "gateway_acked", "library_get", "ratio_auto_ack"):
        assert pull[cell]["n"] == QUICK.repeats, cell
    assert all(v > 0 for v in section["publish"]["ratio"]["values"])


def test_a_late_worker_answer_is_dropped_not_taken_for_the_next() -> None:
    import multiprocessing

    from benchmarks.workers import WorkerError, receive_reply

    mine, theirs = multiprocessing.Pipe()
    try:
        theirs.send((1, "ok", "the answer to a command that timed out"))
        theirs.send((2, "ok", "the answer to request 2"))
        assert receive_reply(mine, 2, 5.0, "worker 0") == ("ok", "the answer to request 2")
        theirs.send((2, "ok", "late"))  # only earlier answers: nothing for request 3
        with pytest.raises(WorkerError, match="did not answer"):
            receive_reply(mine, 3, 0.2, "worker 0")
    finally:
        mine.close()
        theirs.close()


def test_commit_latency_counts_from_the_schedule() -> None:
    import time

    from benchmarks.commit_latency import paced

    calls = []

    def call() -> None:  # the first call stalls for 250 ms
        calls.append(time.perf_counter())
        if len(calls) == 1:
            time.sleep(0.25)

    times = paced(call, 100.0, 0.3)
    assert len(times) == 30
    # the second call was due 10 ms in and made at 250: it waited 240 ms;
    # every call due during the stall waited for it
    assert times[0] >= 250 and times[1] >= 230, times
    assert all(times[i] >= 235 - 10 * i for i in range(20)), times
    assert times.planned == 30 and 0.2 <= times.behind < 1.0
    assert not times.saturated  # it caught up within a second


def test_commit_latency_says_when_the_sender_fell_behind() -> None:
    import time

    from benchmarks.commit_latency import paced, summary

    times = paced(lambda: time.sleep(0.05), 100.0, 0.3)  # 50 ms a call, due every 10
    assert times.saturated, (len(times), times.behind)
    assert summary(times, saturated=times.saturated)["saturated"] is True


def test_placement_spreads_subscribers_over_every_process() -> None:
    from benchmarks.placement import context
    from benchmarks.progress import Progress
    from benchmarks.workers import Pool

    class Four(Pool):
        @property
        def size(self) -> int:
            return 4

    ctx = context(QUICK, Four(), Progress(quiet=True), None)
    assert ctx.subscriber_processes == 4
    assert [n for _, n in ctx.pool.spread(8, over=ctx.subscriber_processes)] == [2, 2, 2, 2]


def test_latency_counts_a_failed_send_as_missing() -> None:
    from array import array

    from benchmarks.sections.latency import account, achieved_rate

    def scheduled(i: int) -> float:
        return 100.0 + i * 0.1

    def got(seqs: list[int]) -> dict:
        return {
            "lat_seq": array("q", seqs),
            "lat_sched": array("d", [0.002] * len(seqs)),
            "unique": len(seqs),
        }

    # four messages scheduled, three taken by the senders; message 1's
    # send raised, so neither subscriber had it; message 3 was never sent
    received = [got([0, 2]), got([0, 2])]
    sched, missing = account(received, 2, 3, 4, scheduled, cutoff=101.0)
    assert missing == 2 * 1 + 2 * 1  # message 1 for both, message 3 for both
    assert len(sched) == 4 * 2  # every scheduled delivery has a latency
    assert sorted(sched)[-4:] == pytest.approx([0.7, 0.7, 0.9, 0.9])
    # 11 sends, on time at 10 a second: 10 intervals in 1 s
    assert achieved_rate(11, 5.0, 6.0) == 10.0
    assert achieved_rate(1, 5.0, 5.0) is None


def test_sigterm_stops_a_run_through_its_cleanup() -> None:
    import os
    import signal
    import time

    from benchmarks.runner import sigterm_exits

    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(SystemExit) as exit_info, sigterm_exits():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            cleaned.append(True)
    assert exit_info.value.code == 143 and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_stuck_section_tells_a_healthy_subscriber_that_missed_messages() -> None:
    from benchmarks.sections.stuck import delivery_problems

    assert delivery_problems([100, 100], 100, 0, 2) == []
    assert delivery_problems([101, 100], 100, 1, 2) == []  # a failed publish that arrived
    (missed,) = delivery_problems([100, 97], 100, 0, 2)
    assert "missed" in missed and "97" in missed
    assert len(delivery_problems([100], 100, 0, 2)) == 1  # one did not report
    assert len(delivery_problems([103, 100], 100, 1, 2)) == 1  # more than was published


def test_every_baseline_kazoo_client_has_zkpubsubs_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    from kazoo.client import KazooClient

    from benchmarks import kazoo_clients, zkms_reference
    from zkpubsub.handler import FastThreadingHandler

    assert isinstance(kazoo_clients.new("127.0.0.1:1").handler, FastThreadingHandler)
    monkeypatch.setattr(KazooClient, "start", lambda self, timeout=15: None)
    zk = zkms_reference.connect("127.0.0.1:1")  # the reference's, the floors', the ceilings'
    assert isinstance(zk.handler, FastThreadingHandler)
