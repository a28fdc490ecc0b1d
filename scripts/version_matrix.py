"""The core suite against each ZooKeeper version Debian's releases ship.

    bash scripts/dev.sh matrix [--suite SUITE]... [--image IMAGE]... [--output FILE]

For each Debian release (default: bullseye, bookworm, trixie) an image is
built from that release's packages (``scripts/zookeeper-image.sh``, kept if
it exists), and the core suite runs on the container backend against it;
``--image`` adds an image as it is (the official ``zookeeper:3.5``, say).
The table goes to ``docs/zookeeper-versions.md``; each run's pytest output
is kept in a temporary directory named at the end. Needs a running Docker
engine (``dev.sh matrix`` starts one, and stops it afterwards).
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = ("bullseye", "bookworm", "trixie")
RELEASES = {"buster": 10, "bullseye": 11, "bookworm": 12, "trixie": 13, "forky": 14}
# The core suite: every test outside tests/faults that a server in a
# container can run, and the leader-kill scenarios of the broadcast and of
# the work queue on a 3-server ensemble.
CORE = [
    "tests",
    "--ignore=tests/faults",
    "-m",
    "not local_install",
    "tests/faults/test_pubsub_faults.py::test_1_leader_kill_nine_five_times_during_a_publish_burst",
    "tests/faults/test_queue_faults.py::test_q1_leader_kill_nine_three_times_with_four_workers",
]


@dataclass
class Row:
    label: str
    image: str
    zookeeper: str = "?"
    java: str = "?"
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    note: str = ""


def build(suite: str) -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "zookeeper-image.sh"), suite],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def java_of(image: str) -> str:
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "sh",
            image,
            "-c",
            "java -version 2>&1 | head -1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    text = out.stdout.strip()
    parts = text.split('"')
    return parts[1] if len(parts) > 2 else text or "?"


def run_suite(row: Row, logs: Path, extra: list[str]) -> None:
    from zkpubsub.testing.containers import image_version

    row.zookeeper = ".".join(map(str, image_version(row.image)))
    row.java = java_of(row.image)
    junit = logs / f"{row.label}.xml"
    log = logs / f"{row.label}.log"
    env = dict(
        os.environ,
        ZKPUBSUB_TEST_BACKEND="testcontainers",
        ZKPUBSUB_ZOOKEEPER_IMAGE=row.image,
    )
    env.pop("ZK_HOSTS", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *CORE,
        *extra,
    ]
    print(f"== {row.label}: ZooKeeper {row.zookeeper} ({row.image}), log {log}", flush=True)
    started = time.monotonic()
    with open(log, "w") as out:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    row.seconds = time.monotonic() - started
    if not junit.exists():
        row.note = "pytest wrote no report: see the log"
        return
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}.{case.get('name', '')}"
        if case.find("skipped") is not None:
            row.skipped += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            row.failed += 1
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            message = (problem.get("message") if problem is not None else "") or ""
            row.failures.append(f"`{name}`: {message.splitlines()[0][:200] if message else '?'}")
        else:
            row.passed += 1
    print(
        f"   {row.passed} passed, {row.failed} failed, {row.skipped} skipped "
        f"in {row.seconds:.0f} s",
        flush=True,
    )


def report(rows: list[Row]) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        "# ZooKeeper versions",
        "",
        "The library is tested against the ZooKeeper of each Debian release that",
        "the package mirror serves, each in a container built from that release's",
        "own packages (`scripts/zookeeper-image.sh`), with the core suite: every",
        "test outside `tests/faults` that a server in a container can run, and the",
        "leader-kill scenarios of the broadcast (1) and of the work queue (q1) on a",
        "3-server ensemble. Run it with `bash scripts/dev.sh matrix`; it rewrites",
        "this file.",
        "",
        f"Last run: {today}, on a machine with {os.cpu_count()} CPU cores shared with other",
        "work (the times vary with it).",
        "",
        "| Debian release / image | ZooKeeper | Java | passed | failed | skipped | seconds |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        label = f"`{r.image}`"
        if r.label in RELEASES:
            label = f"Debian {RELEASES[r.label]} ({r.label}): {label}"
        lines.append(
            f"| {label} | {r.zookeeper} | {r.java} | {r.passed} | {r.failed} | "
            f"{r.skipped} | {r.seconds:.0f} |"
        )
    for r in rows:
        if r.failures or r.note:
            lines += ["", f"Failures on {r.label} (ZooKeeper {r.zookeeper}):", ""]
            lines += [f"- {f}" for f in r.failures]
            if r.note:
                lines.append(f"- {r.note}")
    lines += [
        "",
        "Left out: the tests marked `local_install` (the benchmarks, the",
        "`dev-server` and `demo` commands), which run ZooKeeper from the local",
        "install whatever the backend.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", help="a Debian release (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="an image as it is")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "zookeeper-versions.md")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    # stopped: end the running suite too (subprocess.run kills it on the way out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    suites = args.suite or ([] if args.image else list(SUITES))
    logs = Path(tempfile.mkdtemp(prefix="zkpubsub-matrix-"))
    rows = [Row(suite, build(suite)) for suite in suites]
    rows += [Row(image, image) for image in args.image]
    for row in rows:
        run_suite(row, logs, args.pytest_args)
    args.output.write_text(report(rows))
    print(f"written to {args.output}; pytest output in {logs}")
    return 0 if all(r.failed == 0 and not r.note for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
