"""The reliability report: table order and section replacement."""

from __future__ import annotations

from zkpubsub.testing.checker import CheckResult
from zkpubsub.testing.report import ScenarioResult, markdown_table, write_section


def figures(lost: int = 0) -> CheckResult:
    zero = dict.fromkeys(
        ("unexpected", "failed_written", "unconfirmed", "unreported", "duplicates"), 0
    )
    return CheckResult(
        attempted=10,
        acked=10,
        failed=0,
        unknown=0,
        expected=30,
        excused=0,
        delivered=30,
        lost=lost,
        order_violations=0,
        order_conflicts=0,
        recovered=0,
        **zero,
    )


def test_rows_follow_the_scenario_numbers():
    rows = [ScenarioResult(n, figures()) for n in ("12 x", "original", "2 y", "8a z", "1 w")]
    table = markdown_table(rows).splitlines()[2:]
    assert [line.split(" | ")[0] for line in table] == [
        "| 1 w",
        "| 2 y",
        "| 8a z",
        "| 12 x",
        "| original",
    ]


def test_each_run_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "reliability.md"
    write_section(path, "suite", "suite v1", preamble="about v1")
    write_section(path, "soak", "soak v1", preamble="about v2")
    write_section(path, "suite", "suite v2", preamble="about v2")
    text = path.read_text()
    assert "suite v2" in text and "suite v1" not in text
    assert "soak v1" in text
    assert text.count("about v2") == 1 and "about v1" not in text
    assert text.index("about v2") < text.index("suite v2") < text.index("soak v1")


def test_a_work_queue_table_has_the_queue_columns():
    from zkpubsub.testing.queue_checker import check_queue
    from zkpubsub.testing.queue_history import QueueRecorder

    rec = QueueRecorder()
    rec.put("p", 1, 0.0, item_id="i1")
    rec.finished(rec.reserved("w", "i1", ("p", 1), 1), "acked")
    queue_row = ScenarioResult("Q9 y", check_queue(rec.history()))
    header, _, line = markdown_table([queue_row]).splitlines()
    assert "| put duplicates |" in header and "| double holds |" in header
    assert "| delivered |" not in header
    # attempted, acked, unknown, reserved, done, lost
    assert line.startswith("| Q9 y | 1 | 1 | 0 | 1 | 1 | 0 |")
    header = markdown_table([ScenarioResult("1 x", figures())]).splitlines()[0]
    assert "| expected | excused | delivered |" in header
