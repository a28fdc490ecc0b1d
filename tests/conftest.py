"""The suite's plugins, and a last guard against a test that never ends.

``pytest-timeout`` fails a test that runs past its time (``timeout`` in
pyproject.toml, or the test's ``timeout`` mark) by raising in the main
thread. That cannot help when the main thread is stuck where Python cannot
raise (in C code, or waiting for a thread that holds the interpreter), nor
when a teardown hangs after the timeout already fired: the run would then
wait forever, saying nothing. So each test also arms faulthandler's
watchdog, a thread of its own outside the interpreter, for
``STALL_GRACE`` seconds past the test's time: it prints every thread's
stack to the run's real stderr and ends the run with status 1.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Generator

import pytest

pytest_plugins = ["zkpubsub.testing.fixtures"]

# Seconds past a test's own time limit before the run is stopped
# (the environment may set it, for the test of this guard).
STALL_GRACE = float(os.environ.get("ZKPUBSUB_TEST_STALL_GRACE", "120"))
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


def time_limit(item: pytest.Item) -> float:
    """The test's pytest-timeout limit in seconds (``UNLIMITED`` if none)."""
    mark = item.get_closest_marker("timeout")
    if mark is not None and mark.args:
        limit = float(mark.args[0])
    else:
        limit = float(item.config.getoption("timeout", None) or item.config.getini("timeout") or 0)
    return limit if limit > 0 else UNLIMITED


def _arm(item: pytest.Item) -> None:
    faulthandler.dump_traceback_later(time_limit(item) + STALL_GRACE, exit=True, file=_stderr[0])


# Armed again for each phase: pytest cancels faulthandler's watchdog when a
# phase fails (so a teardown that hangs after a timeout would go unguarded).
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _arm(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _arm(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    _arm(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()
