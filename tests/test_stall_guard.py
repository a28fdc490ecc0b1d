"""The suite's last guard (tests/conftest.py): a test stuck where
pytest-timeout cannot reach it ends the run with every thread's stack, and
the ZooKeeper servers the run started go with it; so do they when the run
is ended by SIGTERM (the fixtures plugin)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
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

# A real server, started in a session of its own, then stuck.
STUCK_WITH_A_SERVER = """
import signal
import threading
from pathlib import Path

from zkpubsub.testing import ZooKeeperCluster

def test_stuck():
    cluster = ZooKeeperCluster(1)
    cluster.start()
    Path("server.pid").write_text(str(cluster.nodes[0].pid))
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    threading.Event().wait(120)
"""

# A real server, and a test waiting (for the SIGTERM the test sends).
WAITING_WITH_A_SERVER = """
import threading
from pathlib import Path

from zkpubsub.testing import ZooKeeperCluster

def test_waiting():
    cluster = ZooKeeperCluster(1)
    cluster.start()
    Path("server.pid").write_text(str(cluster.nodes[0].pid))
    threading.Event().wait(120)
"""

# Stuck in C code that holds the interpreter: no Python thread can run.
STUCK_HOLDING_THE_INTERPRETER = """
import ctypes
import signal

def test_stuck():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    ctypes.PyDLL(None).sleep(120)
"""


def run_stuck(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_stuck.py").write_text(textwrap.dedent(source))
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    # a second's time limit, the guard two seconds past it and faulthandler
    # two more; without them the run would outlast this test's own limit
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=1"],
        cwd=tmp_path,
        env={
            "ZKPUBSUB_TEST_STALL_GRACE": "2",
            "ZKPUBSUB_TEST_STALL_BACKSTOP": "2",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("source", "where"),
    [(STUCK_IN_CALL, "in test_stuck"), (STUCK_IN_TEARDOWN, "in resource")],
    ids=["call", "teardown-after-a-timeout"],
)
def test_a_test_stuck_past_its_time_ends_the_run_with_the_stacks(
    tmp_path: Path, source: str, where: str
) -> None:
    done = run_stuck(tmp_path, source)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "test_stuck.py::test_stuck still running after 3 s" in done.stderr, done.stderr
    assert where in done.stderr, done.stderr


def test_a_stuck_run_stops_the_servers_it_started(tmp_path: Path) -> None:
    done = run_stuck(tmp_path, STUCK_WITH_A_SERVER)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "still running after" in done.stderr, done.stderr
    pid = int((tmp_path / "server.pid").read_text())
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"the server (pid {pid}) outlived the run"


def test_a_run_ended_by_sigterm_stops_the_servers_it_started(tmp_path: Path) -> None:
    (tmp_path / "test_waiting.py").write_text(textwrap.dedent(WAITING_WITH_A_SERVER))
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=100"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        pid_file = tmp_path / "server.pid"
        deadline = time.monotonic() + 60
        while not pid_file.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_file.exists(), run.communicate(timeout=30)[0]
        pid = int(pid_file.read_text())
        assert alive(pid)
        run.terminate()  # SIGTERM
        out, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0, out
    assert "Terminated: SIGTERM" in out, out
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"the server (pid {pid}) outlived the run"


def test_a_test_holding_the_interpreter_is_ended_by_faulthandler(tmp_path: Path) -> None:
    done = run_stuck(tmp_path, STUCK_HOLDING_THE_INTERPRETER)
    assert done.returncode == 1, (done.stdout, done.stderr)
    # the guard's thread never ran; faulthandler's watchdog did, 2 s later
    assert "still running after" not in done.stderr, done.stderr
    assert "Timeout (0:00:05)!" in done.stderr, done.stderr
    assert "in test_stuck" in done.stderr, done.stderr


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
