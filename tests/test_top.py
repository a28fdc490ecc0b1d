"""``zkpubsub top`` as an operator meets it: one view with ``--once``, and
a live view refreshed in place on a real terminal (a pseudo-terminal)."""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kazoo.client import KazooClient

from zkpubsub import Client
from zkpubsub.backlog import INLINE_SEGMENT_NODES
from zkpubsub.cli import main
from zkpubsub.layout import Layout
from zkpubsub.observer import Observer
from zkpubsub.stats import QueueStats, SegmentCount, moved_between
from zkpubsub.testing import ZooKeeperCluster
from zkpubsub.top import Sampler

from .helpers import wait_until

ROOT_DIR = Path(__file__).resolve().parent.parent
MakeClient = Callable[..., Client]


def test_once_shows_clients_topics_backlogs_rates_work_queues_and_the_leader(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    reader = make_client(client_id="reader-1", cleaner=False)  # the janitor stands alone
    reader.subscribe("prices")  # nobody reads it: its backlog grows
    host = make_client(client_id="janitor")
    assert host.start_cleaner(grace=60).wait_leader(30)
    jobs = host.queue("thumbs")
    jobs.put_many(["a", "b", "c"])
    publisher = make_client(cleaner=False)
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            publisher.publish("prices", {"p": 1})
            time.sleep(0.02)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(
            main, ["--hosts", zk_hosts, "--root", zk_root, "top", "--once", "--interval", "1"]
        )
    finally:
        stop.set()
        thread.join(10)
    out = result.output
    assert result.exit_code == 0, out
    assert "cleaner leader: janitor" in out
    assert "reader-1" in out and socket.gethostname() in out and str(os.getpid()) in out
    _, _, backlog, rate_in, _, state = cells(out, "prices", "reader-1")
    assert int(backlog) > 0 and float(rate_in) > 0 and state == "live"
    assert cells(out, "thumbs") == ["thumbs", "3", "0", "0", "0"]  # ready, reserved, dead, workers


def cells(out: str, *words: str) -> list[str]:
    """The cells of the table row holding every one of ``words``."""
    row = next(line for line in out.splitlines() if all(w in line for w in words))
    return [cell.strip() for cell in row.split("│")[1:-1]]


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_once_on_an_output_that_cannot_show_a_name_escapes_it(
    make_client: MakeClient, zk_hosts: str, zk_root: str, encoding: str
) -> None:
    make_client(cleaner=False).subscribe("prix-価格")  # no such letters in either
    # stats prints through click, which writes UTF-8 to an output said to
    # be ASCII (it takes it for misconfigured), and escapes in Latin-1
    commands = [["top", "--once", "--interval", "0.1"]]
    for command in commands + ([["stats"]] if encoding == "latin-1" else []):
        proc = subprocess.run(
            [sys.executable, "-m", "zkpubsub", "--hosts", zk_hosts, "--root", zk_root, *command],
            capture_output=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(ROOT_DIR), PYTHONIOENCODING=encoding),
        )
        assert proc.returncode == 0, proc.stderr.decode()
        shown = proc.stdout.decode(encoding)  # all of it in the output's encoding
        assert "prix-\\u4fa1\\u683c" in shown, shown  # escaped, as stderr would


class Terminal:
    """``zkpubsub ARGS`` on a pseudo-terminal of its own, and what it drew."""

    def __init__(self, *args: str, columns: int = 120) -> None:
        master, slave = pty.openpty()
        env = dict(os.environ, PYTHONPATH=str(ROOT_DIR), LINES="40", TERM="xterm")
        env["COLUMNS"] = str(columns)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zkpubsub", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self._master = master
        self.screen = b""

    def read_until(self, seen: Callable[[bytes], bool], limit: float) -> bytes:
        """What it drew, once ``seen(it)`` or after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not seen(self.screen):
            ready, _, _ = select.select([self._master], [], [], 0.2)
            if ready:
                try:
                    self.screen += os.read(self._master, 65536)
                except OSError:
                    break  # it ended
        return self.screen

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.close(self._master)


def test_the_live_view_refreshes_in_place_on_a_terminal_and_ends_on_ctrl_c(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    make_client().subscribe("live-topic")
    top = Terminal("--hosts", zk_hosts, "--root", zk_root, "top", "--interval", "0.3")
    try:
        screen = top.read_until(lambda drawn: drawn.count(b"zkpubsub top") >= 3, 30)
        assert screen.count(b"zkpubsub top") >= 3, screen[-2000:]
        assert b"live-topic" in screen
        assert b"\x1b[" in screen and (b"\x1b[1A" in screen or b"\x1b[2K" in screen)  # in place
        top.process.send_signal(signal.SIGINT)
        assert top.process.wait(20) == 0
    finally:
        top.close()


def test_the_live_view_says_when_the_server_stops_answering(
    make_cluster: Callable[..., ZooKeeperCluster],
) -> None:
    """With ZooKeeper frozen, the last view stayed on the screen as it was,
    unmarked, until the read failed at its request timeout (about 30 s)."""
    zk = make_cluster(1)
    (node,) = zk.nodes
    Client(zk.hosts, root="/frozen-live", cleaner=False).close()  # a bus to look at
    args = ["--hosts", zk.hosts, "--root", "/frozen-live", "--session-timeout", "30"]
    top = Terminal(*args, "top", "--interval", "0.3", columns=160)
    said = b"no answer from the server for"
    try:
        screen = top.read_until(lambda drawn: drawn.count(b"zkpubsub top") >= 2, 30)
        assert screen.count(b"zkpubsub top") >= 2, screen[-2000:]  # refreshing
        assert said not in screen
        node.pause()
        try:
            screen = top.read_until(lambda drawn: said in drawn, 15)
            assert said in screen, screen[-2000:]
        finally:
            node.resume()
        top.process.send_signal(signal.SIGINT)
        assert top.process.wait(20) == 0
    finally:
        top.close()


def test_the_live_view_ends_at_once_on_a_signal_while_the_server_does_not_answer(
    make_cluster: Callable[..., ZooKeeperCluster], tmp_path: Path
) -> None:
    """A signal only ended the view at its next wait: with ZooKeeper frozen
    the read under way ran to the request timeout, and its failure made the
    exit code 1 (29 s after SIGTERM, where 0 is documented)."""
    zk = make_cluster(1)
    (node,) = zk.nodes
    Client(zk.hosts, root="/frozen-top", cleaner=False).close()  # a bus to look at
    env = dict(os.environ, PYTHONPATH=str(ROOT_DIR))
    command = [sys.executable, "-m", "zkpubsub", "--hosts", zk.hosts, "--root", "/frozen-top"]
    command += ["--session-timeout", "4", "top", "--interval", "0.3"]
    log = tmp_path / "top.out"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        # connected (a pipe gets the last view only at the end), then refreshing
        deadline = time.monotonic() + 30
        while "sid=0x" not in node.command("cons"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(1.0)
        node.pause()
        try:
            time.sleep(1.0)  # a read under way, unanswered
            process.send_signal(signal.SIGTERM)  # Ctrl-C takes the same way out
            code = process.wait(15)
        finally:
            node.resume()
        assert code == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_what_moved_counts_each_segment_and_those_removed() -> None:
    def queue(*segments: tuple[int, ...], loose: int = 0) -> QueueStats:
        segs = tuple(SegmentCount(*s) for s in segments)
        backlog = loose + sum(s.nodes for s in segs)
        return QueueStats("c", "t", backlog, True, True, 0, segs, loose)

    # segment 1 drained and removed, 2 took 10 more and lost 30, 3 is new
    before = queue((1, 512, 200, 11), (2, 100, 100, 12), loose=4)
    after = queue((2, 110, 80, 12), (3, 7, 7, 13), loose=1)
    assert moved_between(before, after) == (10 + 7, 200 + 30 + 0 + 3)
    assert moved_between(after, after) == (0, 0)
    # the queue made afresh (evicted, purged): its segment 0 is another one
    assert moved_between(queue((0, 50, 50, 20)), queue((0, 3, 3, 90))) == (3, 50)
    assert moved_between(queue((0, 50, 50, 20)), queue((0, 60, 60, 90))) == (60, 50)


def test_rates_hold_while_a_drained_segment_is_removed(
    make_client: MakeClient, raw_zk: KazooClient, zk_hosts: str, zk_root: str
) -> None:
    """``changes`` sums the child versions of the segments there now: a
    segment removed once drained took its whole history out of the sum, and
    ``top`` showed 0 in and 477 out for 100 in and 1,501 out."""
    sub = make_client(client_id="drainer", cleaner=False).subscribe("rates")
    publisher = make_client(cleaner=False)
    for i in range(INLINE_SEGMENT_NODES + 20):  # one node each: into a second segment
        publisher.publish("rates", i)
    queue_path = Layout(zk_root).queue("drainer", "rates")
    assert len(raw_zk.get_children(queue_path)) == 2
    with Observer(zk_hosts, root=zk_root) as observer:
        sampler = Sampler(observer)
        first = sampler.sample()
        for i in range(30):
            publisher.publish("rates", i)
        for _ in range(INLINE_SEGMENT_NODES + 50):
            assert sub.get(timeout=5) is not None
        assert sub.get(timeout=1.0) is None  # and no more
        wait_until(lambda: len(raw_zk.get_children(queue_path)) == 1, 30, "segment removed")
        second = sampler.sample()
    (before,) = first.stats.queues
    (after,) = second.stats.queues
    assert moved_between(before, after) == (30, INLINE_SEGMENT_NODES + 50)
    rate_in, rate_out = second.rates[("drainer", "rates")]
    assert rate_out == pytest.approx(rate_in * (INLINE_SEGMENT_NODES + 50) / 30)


def test_the_live_view_keeps_its_last_frame_through_failed_looks_and_goes_on(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look that failed for want of a server (its request timeout) ended
    the live view with exit code 1: an outage of 30 s ended ``top``."""
    import zkpubsub.top as top_module
    from zkpubsub import OperationTimeout
    from zkpubsub.stats import BusStats
    from zkpubsub.top import Frame, show_live

    monkeypatch.setattr(top_module, "UNANSWERED_AFTER", 0.0)
    drawn: list[tuple[str, float | None]] = []
    render = top_module.render

    def drawing(frame: Frame, unanswered: float | None = None) -> Any:
        drawn.append((frame.stats.root, unanswered))
        return render(frame, unanswered)

    monkeypatch.setattr(top_module, "render", drawing)
    first = Frame(BusStats("/first", (), {}, (), 0), {}, None, time.time())
    later = Frame(BusStats("/later", (), {}, (), 0), {}, None, time.time())
    stop = threading.Event()
    looks: list[str] = []

    def sample(waiting: Callable[[float], None]) -> Frame:
        looks.append("look")
        if len(looks) <= 2:
            time.sleep(0.6)  # the view says "for 1 s" on the second
            raise OperationTimeout("no answer within the request timeout")
        stop.set()
        return later

    show_live(first, sample, 0.01, stop)  # returns: it did not end at the failures
    assert len(looks) == 3
    # the last frame stayed, marked unanswered, then the next look was shown
    assert any(root == "/first" and unanswered for root, unanswered in drawn), drawn
    assert drawn[-1] == ("/later", None), drawn
    assert "/later" in capsys.readouterr().out


def test_the_live_view_marks_no_healthy_look_unanswered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting from the last answer, the wait between refreshes made every
    look of a healthy server start "unanswered" (with the default interval
    of 2 s, every refresh flashed the banner)."""
    import zkpubsub.top as top_module
    from zkpubsub.stats import BusStats
    from zkpubsub.top import Frame, show_live

    monkeypatch.setattr(top_module, "UNANSWERED_AFTER", 0.3)
    drawn: list[float | None] = []
    render = top_module.render

    def drawing(frame: Frame, unanswered: float | None = None) -> Any:
        drawn.append(unanswered)
        return render(frame, unanswered)

    monkeypatch.setattr(top_module, "render", drawing)
    frame = Frame(BusStats("/healthy", (), {}, (), 0), {}, None, time.time())
    stop = threading.Event()
    looks: list[int] = []

    def sample(waiting: Callable[[float], None]) -> Frame:
        waiting(0.01)  # asked at once: the server answers in 10 ms
        looks.append(1)
        if len(looks) == 2:
            stop.set()
        return frame

    show_live(frame, sample, 1.1, stop)  # each look comes 1.1 s after the last answer
    assert len(looks) == 2 and drawn and all(u is None for u in drawn), drawn
