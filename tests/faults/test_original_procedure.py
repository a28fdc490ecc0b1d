"""The zookeeper-mq fault test, reproduced on zkpubsub.

The original: five servers on one host; a loop finds the leader, kills it
with SIGKILL, wipes its data directory and starts it again five seconds
later, every fifteen seconds; meanwhile 500 items are written, then read
back by one consumer, which checks that each value is the previous one
plus one. It is reproduced twice: on the work queue (items put, then
reserved and acked by one worker), and with the items as messages on a
topic with one subscriber that reads them back with ``get()``. The period
is scaled down (restart after 1.5 s, a kill every 3 s) and the count is
checked too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from zkpubsub import Client
from zkpubsub.testing.checker import check, strictly_increasing
from zkpubsub.testing.faults import FaultInjector, Nemesis
from zkpubsub.testing.history import Recorder
from zkpubsub.testing.ledger import Ledger, replay
from zkpubsub.testing.queue_checker import check_queue_against
from zkpubsub.testing.queue_history import QueueRecorder
from zkpubsub.testing.txnlog import ClusterLog

from .scenarios import SESSION_TIMEOUT

pytestmark = pytest.mark.local_zk

ITEMS = 300
RESTART_AFTER = 1.5
PERIOD = 3.0
# spread the writes over about four kill periods, as the original's 500
# slow puts spanned several kills
PACE = 4 * PERIOD / ITEMS

Writer = Callable[[int], bool]
Reader = Callable[[float], int | None]


def kill_wipe_restart(injector: FaultInjector, stop: threading.Event) -> None:
    while not stop.is_set():
        leader = injector.kill_leader(wipe=True)
        stop.wait(RESTART_AFTER)  # the original waits 5 s before the restart
        injector.start(leader)
        stop.wait(PERIOD - RESTART_AFTER)


def servers_ledger(injector: FaultInjector, root: str) -> Ledger:
    """What the five servers logged (wiped servers' logs kept aside)."""
    return replay(ClusterLog.of(injector.cluster).committed(), root)


def assert_read_back(
    injector: FaultInjector, ledger: Ledger, values: list[int], extra: object
) -> None:
    """The original's checks: every value, each the previous plus one, no
    more; and the servers saw leaders come and go."""
    kills = injector.log.count("kill -9")
    assert kills >= 3, f"only {kills} leader kills"
    assert injector.log.count("wipe data dir") == kills
    assert len(ledger.epochs) - 1 >= 3, f"the servers logged epochs {ledger.epochs}"
    increasing, why = strictly_increasing(values)
    assert increasing, why
    assert values[:1] == [1]
    assert len(values) == ITEMS
    assert extra is None


def run_procedure(
    ensemble, root: str, connect: Callable[[Client, Client], tuple[Writer, Reader]]
) -> tuple[FaultInjector, list[int], int | None]:
    """The procedure itself, on five servers: ``connect(writer, reader)``
    gives how to write value *n* (True if acknowledged) and how to read the
    next value back (None if none came in time). Returns the injector, the
    values read back, and what a read after the last one gave."""
    ens = ensemble(5)
    injector = FaultInjector(ens.cluster)
    options = {"root": root, "session_timeout": SESSION_TIMEOUT, "request_timeout": 30.0}
    reader = Client(ens.cluster.hosts, client_id="consumer", **options)
    writer = Client(ens.cluster.hosts, client_id="producer", **options)
    nemesis = Nemesis(lambda stop: kill_wipe_restart(injector, stop))
    values: list[int] = []
    try:
        write, read = connect(writer, reader)
        nemesis.start()
        for value in range(1, ITEMS + 1):
            if write(value):
                time.sleep(PACE)  # pacing of the writer, not a synchronisation
        # read back while the leader keeps dying
        deadline = time.monotonic() + 120
        while len(values) < ITEMS and time.monotonic() < deadline:
            got = read(1.0)
            if got is not None:
                values.append(got)
        extra = read(1.0)  # nothing beyond the count
        nemesis.stop()
        nemesis.join(60)
        injector.wait_healthy()
    finally:
        nemesis.stop()
        reader.close()
        writer.close()
    return injector, values, extra


def test_original_procedure_kill_and_wipe_the_leader_of_five(ensemble, scenario):
    recorder = Recorder()
    topic = "items"

    def connect(writer: Client, reader: Client) -> tuple[Writer, Reader]:
        sub = reader.subscribe(topic)
        recorder.subscribed("consumer", topic)

        def write(value: int) -> bool:
            started = time.time()
            try:
                receipt = writer.publish(topic, {"p": "producer", "s": value}, timeout=60.0)
            except Exception as exc:  # recorded; the checks below then fail
                recorder.published("producer", value, topic, started, error=exc)
                return False
            recorder.published(
                "producer",
                value,
                topic,
                started,
                message_ids=receipt.message_ids,
                reached=receipt.subscribers,
            )
            return True

        def read(timeout: float) -> int | None:
            message = sub.get(timeout=timeout)
            if message is None:
                return None
            recorder.delivered("consumer", topic, message.payload, message.id)
            return int(message.payload["s"])

        return write, read

    injector, values, extra = run_procedure(ensemble, "/original", connect)
    ledger = servers_ledger(injector, "/original")
    result = check(recorder.history(), ledger)
    scenario.record(
        "original procedure (5 servers, kill -9 + wipe leader)",
        result,
        faults=len(injector.log.events()),
    )
    assert_read_back(injector, ledger, values, extra)
    assert result.acked == result.attempted == ITEMS, result.describe()
    assert result.expected == ITEMS and result.excused == 0, result.describe()
    assert result.ok and result.lost == 0 and result.duplicates == 0, result.describe()


def test_original_procedure_on_the_work_queue(ensemble, scenario):
    recorder = QueueRecorder()

    def connect(writer: Client, reader: Client) -> tuple[Writer, Reader]:
        produce, consume = writer.queue("items"), reader.queue("items")

        def write(value: int) -> bool:
            started = time.time()
            try:
                item_id = produce.put({"p": "producer", "s": value}, timeout=60.0)
            except Exception as exc:  # recorded; the checks below then fail
                recorder.put("producer", value, started, error=exc)
                return False
            recorder.put("producer", value, started, item_id=item_id)
            return True

        def read(timeout: float) -> int | None:
            item = consume.reserve(timeout=timeout)
            if item is None:
                return None
            hold = recorder.reserved(
                "consumer", item.id, ("producer", item.payload["s"]), item.attempts
            )
            recorder.handled(hold)
            item.ack()
            recorder.finished(hold, "acked")
            return int(item.payload["s"])

        return write, read

    injector, values, extra = run_procedure(ensemble, "/original-queue", connect)
    ledger = servers_ledger(injector, "/original-queue")
    result = check_queue_against(recorder.history(), ledger)
    scenario.record(
        "original procedure on the queue (5 servers, kill -9 + wipe leader)",
        result,
        faults=len(injector.log.events()),
    )
    assert_read_back(injector, ledger, values, extra)
    assert result.acked == ITEMS, result.describe()
    assert result.ok and result.done == ITEMS and result.redelivered == 0, result.describe()
