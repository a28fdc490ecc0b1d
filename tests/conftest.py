"""The suite's plugins, and a last guard against a test that never ends.

``pytest-timeout`` fails a test that runs past its time (``timeout`` in
pyproject.toml, or the test's ``timeout`` mark) by raising in the main
thread. That cannot help when the main thread is stuck where Python cannot
raise (in C code, or waiting for a thread that holds the interpreter), nor
when a teardown hangs after the timeout already fired: the run would then
wait forever, saying nothing. So each test also arms a watchdog for
``STALL_GRACE`` seconds past the test's time: a thread that prints every
thread's stack to the run's real stderr, runs the exit handlers (they
kill the ZooKeeper servers the run started, which run in sessions of
their own and would outlive it) and ends the run with status 1. Should
that thread not get to run (something holds the interpreter),
faulthandler's watchdog, outside the interpreter, prints the stacks and
ends the run ``STALL_BACKSTOP`` seconds later, without the exit handlers.
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import sys
import threading
from collections.abc import Generator

import pytest

pytest_plugins = ["zkpubsub.testing.fixtures"]

# Seconds past a test's own time limit before the run is stopped
# (the environment may set it, for the test of this guard).
STALL_GRACE = float(os.environ.get("ZKPUBSUB_TEST_STALL_GRACE", "120"))
# Seconds after that before faulthandler ends the run, if the guard's own
# thread could not.
STALL_BACKSTOP = float(os.environ.get("ZKPUBSUB_TEST_STALL_BACKSTOP", "60"))
# The limit for a test that has none.
UNLIMITED = 1800.0

_stderr: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    # a copy of the real stderr: the tests' output is captured
    assert sys.__stderr__ is not None
    _stderr.append(os.dup(sys.__stderr__.fileno()))


def pytest_unconfigure(config: pytest.Config) -> None:
    while _stderr:
        os.close(_stderr.pop())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The benchmark harness's tests run in a step of their own
    (``bash scripts/dev.sh test-bench``, which CI runs): they are left out
    of a run that did not ask for them (``-m bench``, ``ZKPUBSUB_BENCH_TESTS=1``
    or ``tests/test_benchmarks.py`` named)."""
    asked = (
        os.environ.get("ZKPUBSUB_BENCH_TESTS") == "1"
        or "bench" in (config.getoption("markexpr") or "")
        or any("test_benchmarks" in str(arg) for arg in config.args)
    )
    if asked:
        return
    bench = [item for item in items if item.get_closest_marker("bench")]
    if bench:
        config.hook.pytest_deselected(items=bench)
        items[:] = [item for item in items if not item.get_closest_marker("bench")]


def time_limit(item: pytest.Item) -> float:
    """The test's pytest-timeout limit in seconds (``UNLIMITED`` if none)."""
    mark = item.get_closest_marker("timeout")
    if mark is not None and mark.args:
        limit = float(mark.args[0])
    else:
        limit = float(item.config.getoption("timeout", None) or item.config.getini("timeout") or 0)
    return limit if limit > 0 else UNLIMITED


class _Guard:
    """The watchdog of the test running now."""

    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    def arm(self, item: pytest.Item) -> None:
        self.cancel()
        seconds = time_limit(item) + STALL_GRACE
        timer = threading.Timer(seconds, self._fire, args=(item.nodeid, seconds))
        timer.name = "test-stall-guard"
        timer.daemon = True
        timer.start()
        self._timer = timer
        faulthandler.dump_traceback_later(seconds + STALL_BACKSTOP, exit=True, file=_stderr[0])

    def cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        faulthandler.cancel_dump_traceback_later()

    @staticmethod
    def _fire(nodeid: str, seconds: float) -> None:
        out = _stderr[0]
        os.write(out, f"\n{nodeid} still running after {seconds:g} s: stopping the run\n".encode())
        faulthandler.dump_traceback(file=out, all_threads=True)
        try:
            atexit._run_exitfuncs()  # not public: nothing public runs them without exiting
        finally:
            os._exit(1)


_guard = _Guard()


# Armed again for each phase: pytest cancels faulthandler's watchdog when a
# phase fails (so a teardown that hangs after a timeout would go unguarded).
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _guard.arm(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _guard.arm(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    _guard.arm(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    finally:
        _guard.cancel()
