"""The long soak as a pytest test: deselected unless ``ZKPUBSUB_SOAK=1``
(or ``-m soak``). ``ZKPUBSUB_SOAK_MESSAGES`` and ``ZKPUBSUB_SOAK_MINUTES``
change its size and time bound."""

from __future__ import annotations

import os

import pytest

from .soak import run_queue_soak, run_soak

pytestmark = [
    pytest.mark.soak,
    pytest.mark.local_zk,
    pytest.mark.local_install,
    pytest.mark.timeout(3600),
]


def test_soak_ten_thousand_messages_with_a_leader_kill_every_five_seconds(scenario):
    messages = int(os.environ.get("ZKPUBSUB_SOAK_MESSAGES", "10000"))
    outcome = run_soak(
        messages=messages,
        kill_every=5.0,
        max_minutes=float(os.environ.get("ZKPUBSUB_SOAK_MINUTES", "20")),
    )
    scenario.results.append(outcome.result)
    assert outcome.check.attempted >= messages, outcome.check.describe()
    assert outcome.kills >= 3
    assert outcome.leader_changes >= outcome.kills  # each kill, a new leader committed
    assert outcome.ok, f"{outcome.check.describe()}\naudit: {outcome.audit.describe()}"


def test_queue_soak_ten_thousand_items_with_a_leader_kill_every_five_seconds(scenario):
    items = int(os.environ.get("ZKPUBSUB_SOAK_MESSAGES", "10000"))
    outcome = run_queue_soak(
        items=items,
        kill_every=5.0,
        max_minutes=float(os.environ.get("ZKPUBSUB_SOAK_MINUTES", "20")),
    )
    scenario.queue_results.append(outcome.result)
    assert outcome.check.attempted >= items, outcome.check.describe()
    assert outcome.kills >= 3
    assert outcome.leader_changes >= outcome.kills  # each kill, a new leader committed
    assert outcome.ok, f"{outcome.check.describe()}\naudit: {outcome.audit.describe()}"
