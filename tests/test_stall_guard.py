"""The suite's last guard (tests/conftest.py): a test stuck where
pytest-timeout cannot reach it ends the run with every thread's stack."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# SIGALRM blocked: pytest-timeout's signal never arrives.
STUCK_IN_CALL = """
import signal
import threading

def test_stuck():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    threading.Event().wait(120)
"""

# pytest-timeout fails the call; the teardown then hangs where it cannot reach.
STUCK_IN_TEARDOWN = """
import signal
import threading
import time

import pytest

@pytest.fixture
def resource():
    yield
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    threading.Event().wait(120)

def test_stuck(resource):
    time.sleep(30)
"""


@pytest.mark.parametrize(
    ("source", "where"),
    [(STUCK_IN_CALL, "in test_stuck"), (STUCK_IN_TEARDOWN, "in resource")],
    ids=["call", "teardown-after-a-timeout"],
)
def test_a_test_stuck_past_its_time_ends_the_run_with_the_stacks(
    tmp_path: Path, source: str, where: str
) -> None:
    (tmp_path / "test_stuck.py").write_text(textwrap.dedent(source))
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    # a second's time limit, and the guard two seconds past it; without the
    # guard the run would outlast this test's own 60 s limit
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=1"],
        cwd=tmp_path,
        env={"ZKPUBSUB_TEST_STALL_GRACE": "2", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Timeout (0:00:03)!" in done.stderr, done.stderr
    assert where in done.stderr, done.stderr
