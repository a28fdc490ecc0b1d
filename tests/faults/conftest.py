"""Fixtures of the fault-injection scenarios.

Every scenario starts its own ensemble of real ZooKeeper servers
(``ensemble(3)``) on the session's backend (local processes, or containers
with ``ZKPUBSUB_TEST_BACKEND=testcontainers``), breaks it, and records its
figures with ``scenario``.
At the end of the session the figures are printed as a table; with
``ZKPUBSUB_RELIABILITY_REPORT=<file>`` they are also written there (see
``docs/reliability.md``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zkpubsub.testing import ZooKeeperEnsemble
from zkpubsub.testing.faults import PeerMesh
from zkpubsub.testing.fixtures import ensemble_factory
from zkpubsub.testing.report import ScenarioResult, markdown_table, text_table, write_section

from .scenarios import QUEUE_REPORT_TEXT, REPORT_ENV, REPORT_PREAMBLE, ScenarioRecorder

_RESULTS: list[ScenarioResult] = []
_QUEUE_RESULTS: list[ScenarioResult] = []


class Ensemble:
    """A cluster this test owns, with its optional peer mesh."""

    def __init__(
        self, cluster: ZooKeeperEnsemble[Any], mesh: PeerMesh | None, own_dir: Path | None = None
    ) -> None:
        self.cluster = cluster
        self.mesh = mesh
        self.own_dir = own_dir

    def close(self) -> None:
        self.cluster.close()
        if self.mesh is not None:
            self.mesh.close()
        if self.own_dir is not None:
            shutil.rmtree(self.own_dir, ignore_errors=True)


@pytest.fixture
def ensemble(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Ensemble]]:
    """``ensemble(3, mesh=True, unprivileged_node=3)``: start a private
    ensemble. ``mesh`` routes peer links through proxies (partitions);
    ``prepare(cluster)`` runs before the servers start."""
    factory = ensemble_factory()
    if factory is None:
        pytest.skip("fault scenarios need ZooKeeper servers started by this run (not ZK_HOSTS)")
    made: list[Ensemble] = []

    def make(
        size: int = 3,
        *,
        mesh: bool = False,
        traversable: bool = False,
        prepare: Callable[[ZooKeeperEnsemble[Any]], Any] | None = None,
        **kwargs: Any,
    ) -> Ensemble:
        if traversable:
            # A directory other users can reach (a server run as one of them).
            base = Path(tempfile.mkdtemp(prefix="zkpubsub-faults-"))
            base.chmod(0o755)
        else:
            base = tmp_path / f"zk{len(made)}"
        cluster = factory(size, base_dir=base, **kwargs)
        ens = Ensemble(cluster, None, base if traversable else None)
        made.append(ens)
        if mesh:
            ens.mesh = PeerMesh(cluster)
        if prepare is not None:
            prepare(cluster)
        cluster.start()
        return ens

    try:
        yield make
    finally:
        failed = getattr(request.node, "rep_call", None)
        for ens in made:
            if failed is not None and failed.failed:
                for node in ens.cluster.nodes:
                    print(f"--- server {node.myid} log: {node.log_path}")
                # ZooKeeper's own word that a server's data tree diverged
                for line in ens.cluster.digest_mismatches():
                    print(f"--- digest mismatch, {line}")
            ens.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The soak runs on demand only: ``ZKPUBSUB_SOAK=1`` or ``-m soak``."""
    if os.environ.get("ZKPUBSUB_SOAK") or "soak" in (config.getoption("markexpr") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> ScenarioRecorder:
    """Collects this scenario's figures for the session's table."""
    return ScenarioRecorder(_RESULTS, started=time.monotonic(), queue_results=_QUEUE_RESULTS)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not (_RESULTS or _QUEUE_RESULTS):
        return
    terminalreporter.section("reliability (fault scenarios)")
    if _RESULTS:
        terminalreporter.write_line(text_table(_RESULTS))
    if _QUEUE_RESULTS:
        terminalreporter.write_line("")
        terminalreporter.write_line(text_table(_QUEUE_RESULTS))
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    cores = os.cpu_count()
    paths = " ".join(terminalreporter.config.args) or "tests"
    if _RESULTS:
        total = sum(r.seconds for r in _RESULTS)
        body = (
            "## Default suite (short variants)\n\n"
            "Produced by running the scenarios of the default test suite with the "
            f"report switched on: `ZKPUBSUB_RELIABILITY_REPORT=docs/reliability.md pytest {paths}` "
            f"({len(_RESULTS)} scenarios, {total:.0f} s of scenario wall time on a "
            f"machine with {cores} CPU cores shared with other work).\n\n"
            + markdown_table(_RESULTS)
        )
        write_section(Path(target), "suite", body, preamble=REPORT_PREAMBLE)
    if _QUEUE_RESULTS:
        total = sum(r.seconds for r in _QUEUE_RESULTS)
        body = (
            "## Work queue, default suite (short variants)\n\n"
            "From the same run "
            f"({len(_QUEUE_RESULTS)} scenarios, {total:.0f} s of scenario wall time, "
            f"{cores} CPU cores).\n\n" + QUEUE_REPORT_TEXT + "\n\n" + markdown_table(_QUEUE_RESULTS)
        )
        write_section(Path(target), "queue", body, preamble=REPORT_PREAMBLE)
    terminalreporter.write_line(f"written to {target}")
