"""The zkpubsub command line, run as a user would."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner
from kazoo.client import KazooClient

from zkpubsub import Client
from zkpubsub._cli_common import CliContext
from zkpubsub._purges import purge_record
from zkpubsub.cli import main
from zkpubsub.layout import Layout
from zkpubsub.testing import ZooKeeperCluster
from zkpubsub.testing.local import free_ports
from zkpubsub.testing.secure import TEST_PASSWORDS, bus_roles, user_auth

from .helpers import Collector, wait_until

ROOT_DIR = Path(__file__).resolve().parent.parent
MakeClient = Callable[..., Client]


def run(zk_hosts: str, zk_root: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--hosts", zk_hosts, "--root", zk_root, *args])
    return result.exit_code, result.output


def cli_process(
    *args: str, env: Mapping[str, str] | None = None, prelude: str = ""
) -> subprocess.Popen[str]:
    """The program in a process of its own (stderr into stdout), with
    Ctrl-C (SIGINT) raising KeyboardInterrupt in it as in a terminal, even
    where this run ignores SIGINT. ``prelude``: Python run before it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT_DIR), **(env or {}))
    argv = ["zkpubsub", *args]
    code = f"{prelude}\nimport sys\nfrom zkpubsub.cli import run\nsys.argv = {argv!r}\nrun()"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_publish_reaches_subscribers(make_client: MakeClient, zk_hosts: str, zk_root: str) -> None:
    collector = Collector()
    make_client().subscribe("cli", collector)
    code, out = run(zk_hosts, zk_root, "publish", "cli", "hello", "world", "-H", "origin=cli")
    assert code == 0, out
    assert out.count("1 subscriber(s)") == 2
    assert collector.wait(2) == ["hello", "world"]
    assert collector.messages[0].headers == {"origin": "cli"}
    code, out = run(zk_hosts, zk_root, "publish", "--format", "json", "cli", '{"k": [1, 2]}')
    assert code == 0, out
    assert collector.wait(3)[-1] == {"k": [1, 2]}


def test_bad_input_is_a_clear_error(zk_hosts: str, zk_root: str) -> None:
    code, out = run(zk_hosts, zk_root, "publish", "a/b", "x")
    assert code != 0 and "must not contain '/'" in out
    code, out = run(zk_hosts, zk_root, "publish", "--format", "json", "t", "{nope")
    assert code != 0 and "not JSON" in out
    code, out = run(zk_hosts, zk_root, "publish", "-H", "novalue", "t", "x")
    assert code != 0 and "KEY=VALUE" in out
    code, out = run(zk_hosts, zk_root, "publish", "--require-subscribers", "empty", "x")
    assert code != 0 and "NoSubscribers" in out


def test_json_arguments_refused_in_one_line_before_connecting(zk_hosts: str, zk_root: str) -> None:
    """NaN (which no other JSON reader takes) was refused by the serializer
    only after connecting, and a deeply nested array was a traceback."""
    deep = "[" * 100_000 + "]" * 100_000  # too deep for every Python (3.13 reads 5000)
    for args in (
        ("publish", "--format", "json", "t", "1", "NaN"),
        ("queue", "put", "--format", "json", "q", "--", "-Infinity"),
        ("publish", "--format", "json", "t", deep),
        ("queue", "put", "--format", "json", "q", deep),
    ):
        code, out = run("127.0.0.1:1", zk_root, *args)  # nothing is connected
        assert code == 2 and len(out.strip().splitlines()) == 1, (args[0], code, out[-300:])
        assert "not JSON" in out


def test_a_bad_argument_click_finds_is_one_line_too(zk_root: str) -> None:
    """README: a bad option or argument is one line, exit code 2; click's
    own findings (a type, a missing argument, an unknown option or
    command) were its four-line usage block."""
    for args in (
        ("queue", "put", "q", "-p", "abc", "x"),
        ("--session-timeout", "abc", "stats"),
        ("queue", "put"),
        ("queue", "put", "q", "--bogus", "x"),
        ("nosuch",),
        ("queue", "nosuch"),
    ):
        code, out = run("127.0.0.1:1", zk_root, *args)
        assert code == 2 and len(out.strip().splitlines()) == 1, (args, code, out)
        assert out.startswith("Error: "), out
    code, out = run("127.0.0.1:1", zk_root)  # options, and no command
    assert (code, out) == (2, "Error: Missing command.\n")
    code, out = run("127.0.0.1:1", zk_root, "queue", "--help")
    assert code == 0 and "Usage:" in out and "reserve" in out


def test_a_put_cut_short_by_a_full_queue_prints_the_ids_it_put(
    make_client: MakeClient, zk_hosts: str, zk_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Client, "queue", functools.partialmethod(Client.queue, max_items=2))
    client_of = CliContext.client
    monkeypatch.setattr(
        CliContext, "client", lambda self, **kw: client_of(self, request_timeout=3.0, **kw)
    )
    code, out = run(zk_hosts, zk_root, "queue", "put", "small", "a", "b", "c")
    assert code == 1 and "QueueFull" in out, out
    ids = [line for line in out.splitlines() if line and not line.startswith("Error")]
    assert len(ids) == 2, out
    queue = make_client().queue("small")
    got = [queue.reserve(5) for _ in ids]
    assert sorted(item.id for item in got if item is not None) == sorted(ids)


def test_subscribe_prints_messages(make_client: MakeClient, zk_hosts: str, zk_root: str) -> None:
    proc = cli_process(
        "--hosts", zk_hosts, "--root", zk_root,
        "subscribe", "feed", "--count", "2", "--json-lines", "--client-id", "cli-sub",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "subscribed to 'feed'" in proc.stdout.readline()
        publisher = make_client()
        publisher.publish("feed", {"n": 1})
        publisher.publish("feed", "two")
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["payload"] for r in records] == [{"n": 1}, "two"]
    assert records[0]["publisher_id"] == publisher.client_id
    assert proc.returncode == 0


def test_stats_shows_topics_and_backlog(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    idle = make_client(client_id="idle-reader")
    idle.subscribe("orders")
    make_client().publish_many("orders", [1, 2, 3])
    make_client().publish("orders", 4)
    code, out = run(zk_hosts, zk_root, "stats")
    assert code == 0, out
    assert "TOPIC" in out and "BACKLOG" in out
    (row,) = [line for line in out.splitlines() if line.startswith("orders ") and "idle" in line]
    assert row.split()[:3] == ["orders", "idle-reader", "2"]
    code, out = run(zk_hosts, zk_root, "stats", "--json")
    doc = json.loads(out)
    assert doc["topics"] == {"orders": ["idle-reader"]}
    assert doc["queues"][0]["backlog"] == 2
    # every node created in the queue (and deleted), as the console counts them
    assert doc["queues"][0]["changes"] == 2


def test_the_cleaner_command_leads_and_stops_on_sigterm(
    zk_hosts: str, zk_root: str, raw_zk: KazooClient
) -> None:
    # the notice of a purged durable subscriber, long enough ago for --notice-ttl
    notice = Layout(zk_root).purge_marker("gone-durable")
    raw_zk.create(notice, purge_record(["t"], finished=True), makepath=True)
    time.sleep(1.1)
    args = ("cleaner", "--interval", "0.5", "--notice-ttl", "1")
    proc = cli_process("--hosts", zk_hosts, "--root", zk_root, *args)
    try:
        assert proc.stdout is not None
        assert "standing for election" in proc.stdout.readline()
        assert proc.stdout.readline().strip() == "leading"
        wait_until(lambda: raw_zk.exists(notice) is None, 20, "the notice expired")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()


@pytest.mark.local_install
def test_dev_server_serves_until_stopped() -> None:
    proc = cli_process("dev-server", "--port", "0")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ZooKeeper serving on 127.0.0.1:"), line
        hosts = line.split()[3]
        zk = KazooClient(hosts=hosts, timeout=6.0)
        zk.start(timeout=20)
        assert zk.exists("/zookeeper") is not None
        zk.stop()
        zk.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()


def test_the_demo_without_java_says_so_in_one_line() -> None:
    """Before, it ended in a ZooKeeperNotFound traceback (dev-server said it
    in one line)."""
    proc = cli_process("demo", env={"PATH": "/nonexistent", "JAVA_HOME": ""})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "Error: no java on PATH" in out, out


@pytest.mark.local_install
def test_the_demo_runs_and_checks_itself() -> None:
    proc = cli_process("demo", "--messages", "90")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "every live subscriber got every message in order" in out
    assert "1 queue(s)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("cache-")]
    assert [r[1] for r in rows if r[3] == "running"] == ["90", "90"]
    assert "queue: 20/20 tasks acked, 0 ready, 0 reserved, 0 dead" in out
    assert "task 7 came back" in out
    assert "HTTP: pulled it and acked it (200, 1 acked)" in out  # the gateway, over HTTP


@pytest.mark.local_install
def test_a_demo_ended_by_sigterm_stops_what_it_started() -> None:
    """Before, SIGTERM ended the demo where it stood and left its
    ZooKeeper, its gateway and its subscriber processes running."""
    proc = cli_process("demo", "--messages", "300")
    assert proc.stdout is not None
    hosts = url = ""
    try:
        for line in proc.stdout:
            if "ZooKeeper serving at " in line:
                hosts = line.split("ZooKeeper serving at ")[1].split()[0]
            elif "HTTP gateway at " in line:
                url = line.split("HTTP gateway at ")[1].split()[0]
            elif "published 100/" in line:
                break
        assert hosts and url, (hosts, url)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert "Error: terminated (SIGTERM) before the command was done" in out
    for address in (hosts, url.split("//")[1]):
        host, port = address.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), 2):
            pass  # nothing listens there any more
    left = []
    for pid in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if pid.isdigit() and hosts.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(pid)
    assert left == [], left  # no subscriber process of the demo's


def test_queue_commands(make_client: MakeClient, zk_hosts: str, zk_root: str) -> None:
    code, out = run(zk_hosts, zk_root, "queue", "put", "jobs", "a", "b", "-p", "5")
    assert code == 0, out
    ids = out.split()
    assert len(ids) == 2
    code, out = run(zk_hosts, zk_root, "queue", "stats", "jobs")
    assert code == 0 and out.splitlines()[2].split()[:4] == ["jobs", "2", "0", "0"]
    code, out = run(zk_hosts, zk_root, "queue", "reserve", "jobs", "--release")
    record = json.loads(out)
    assert (record["id"], record["payload"], record["priority"]) == (ids[0], "a", 5)
    code, out = run(zk_hosts, zk_root, "queue", "reserve", "jobs")
    assert json.loads(out)["attempts"] == 2  # released, so taken again
    code, out = run(zk_hosts, zk_root, "queue", "put", "jobs", "-p", "1000", "x")
    assert code == 2 and "--priority must be from 0 to 999" in out
    # a dead letter, then replay
    q = make_client().queue("jobs", max_attempts=1)
    item = q.reserve(5)
    assert item is not None and item.payload == "b"
    item.release("broken")
    code, out = run(zk_hosts, zk_root, "queue", "dead", "jobs", "--json")
    (dead,) = json.loads(out)
    assert dead["payload"] == "b" and "broken" in dead["reason"]
    code, out = run(zk_hosts, zk_root, "queue", "replay", "jobs", "--id", "nosuchid")
    assert code == 1 and "1 of the 1 ids given are not dead letters of 'jobs'" in out, out
    code, out = run(zk_hosts, zk_root, "queue", "replay", "jobs")
    assert out.strip() == "replayed 1 item(s)"
    code, out = run(zk_hosts, zk_root, "queue", "dead", "jobs")
    assert "no dead letters" in out
    code, out = run(zk_hosts, zk_root, "queue", "reserve", "jobs", "--timeout", "5")
    assert json.loads(out)["payload"] == "b"
    code, out = run(zk_hosts, zk_root, "queue", "reserve", "jobs", "--timeout", "0.2")
    assert code != 0 and "no item" in out


def test_reserve_and_replay_of_a_mistyped_queue_create_nothing(
    zk_hosts: str, zk_root: str, raw_zk: KazooClient
) -> None:
    code, out = run(zk_hosts, zk_root, "queue", "put", "jobs", "a")
    assert code == 0, out
    for args in (["reserve", "jbos", "--timeout", "0"], ["replay", "jbos"]):
        code, out = run(zk_hosts, zk_root, "queue", *args)
        assert code == 1 and out.strip() == (
            f"Error: NotFound: there is no work queue 'jbos' under root '{zk_root}'"
        ), out
    assert raw_zk.get_children(Layout(zk_root).work) == ["jobs"]
    code, out = run(zk_hosts, f"{zk_root}-typo", "queue", "reserve", "jobs", "--timeout", "0")
    assert code == 1 and "there is no zkpubsub bus" in out, out
    assert raw_zk.exists(f"{zk_root}-typo") is None


def test_bench_passes_its_arguments_to_the_benchmarks(tmp_path: Path) -> None:
    # as a user would, from anywhere, through the installed console script
    script = Path(sys.executable).parent / "zkpubsub"
    proc = subprocess.Popen(
        [str(script), "bench", "--help"], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "--quick" in out and "--only" in out


def run_process(
    *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "zkpubsub", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT_DIR), **(env or {})),
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--hosts", "abc", "cannot resolve abc"),
        ("--hosts", "zk1:2181;zk2:2181", "separate servers with ','"),
        ("--hosts", "", "hosts is empty"),
        ("--hosts", "127.0.0.1:99999", "port must be 1-65535"),
        ("--root", "nolead", "must start with '/'"),
        ("--session-timeout", "0", "must be a positive number"),
        ("--connect-timeout", "-1", "must be a positive number"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_code_2(option: str, value: str, says: str) -> None:
    code, out, err = run_process(option, value, "stats")
    assert code == 2, (out, err)
    assert err.strip().splitlines() == [err.strip()] and says in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["queue", "reserve", "q", "--timeout", "-1"], "--timeout must be 0 or more seconds"),
        (["queue", "put", "q", "x", "-p", "1000"], "--priority must be from 0 to 999"),
        (["queue", "put", "q", "x", "--wait-result", "-1"], "--wait-result must be 0 or more"),
        (["subscribe", "t", "--count", "-1"], "--count must be 0 or more"),
        (["subscribe", "t", "--timeout", "-1"], "--timeout must be 0 or more seconds"),
        (["cleaner", "--interval", "0"], "--interval must be a positive number"),
        (["cleaner", "--grace", "-3"], "--grace must be a positive number"),
        (["cleaner", "--notice-ttl", "0"], "--notice-ttl must be a positive number"),
        (["demo", "--subscribers", "1"], "--subscribers must be 2 or more"),
        (["demo", "--messages", "9"], "--messages must be 10 or more"),
        (["dev-server", "--size", "0"], "--size must be from 1 to 9"),
        (["dev-server", "--port", "65536"], "--port must be from 0 to 65535"),
        (["gateway", "--port", "0"], "--port must be from 1 to 65535"),
        (["gateway", "--host", "0.0.0.0"], "without --tokens"),
        # names that cannot be node names
        (["queue", "put", "bad/name", "x"], "queue name 'bad/name' must not contain '/'"),
        (["queue", "put", "", "x"], "queue name must not be empty"),
        (["queue", "put", "..", "x", "--wait-result", "5"], "queue name must not be '..'"),
        (["queue", "reserve", "bad/name"], "queue name 'bad/name' must not contain '/'"),
        (["queue", "replay", "bad/name"], "queue name 'bad/name' must not contain '/'"),
        (["queue", "stats", "bad/name"], "queue name 'bad/name' must not contain '/'"),
        (["queue", "dead", ""], "queue name must not be empty"),
        (["publish", "bad/topic", "x"], "topic 'bad/topic' must not contain '/'"),
        (["publish", "", "x"], "topic must not be empty"),
        (["subscribe", "a/b"], "topic 'a/b' must not contain '/'"),
        # seconds past their cap, infinite or NaN
        (["--connect-timeout", "inf", "stats"], "--connect-timeout must be at most 31536000"),
        (["--connect-timeout", "1e300", "stats"], "--connect-timeout must be at most 31536000"),
        (["--connect-timeout", "nan", "stats"], "--connect-timeout must be a positive number"),
        (["--session-timeout", "inf", "stats"], "--session-timeout must be from 0.1 to 86400"),
        (["--session-timeout", "1e7", "publish", "t", "x"], "--session-timeout must be from"),
        (["--session-timeout", "0.001", "stats"], "--session-timeout must be from 0.1 to 86400"),
        (["queue", "reserve", "q", "--timeout", "inf"], "--timeout must be at most 31536000"),
        (["queue", "put", "wq", "x", "--wait-result", "inf"], "--wait-result must be at most"),
        (["queue", "put", "wq", "x", "--wait-result", "1e300"], "seconds (a year), not 1e+300"),
        (["top", "--once", "--interval", "inf"], "--interval must be at most 31536000"),
        (["cleaner", "--interval", "1e300"], "--interval must be at most 31536000"),
        (["cleaner", "--grace", "inf"], "--grace must be at most 31536000"),
        (["subscribe", "t", "--timeout", "inf"], "--timeout must be at most 31536000"),
        (["subscribe", "t", "--timeout", "nan"], "--timeout must be 0 or more seconds"),
        (["gateway", "--max-wait", "inf"], "--max-wait must be at most 31536000"),
    ],
    ids=lambda v: " ".join(map(repr, v)) if isinstance(v, list) else None,
)
def test_a_bad_command_option_is_one_line_and_exit_code_2_before_anything_is_done(
    zk_hosts: str, zk_root: str, raw_zk: KazooClient, args: list[str], says: str
) -> None:
    code, out, err = run_process("--hosts", zk_hosts, "--root", zk_root, *args)
    assert code == 2, (out, err)
    assert one_line(err) and says in err, err
    assert out == "" and "Traceback" not in err
    assert raw_zk.exists(zk_root) is None  # no client came: nothing put, nothing made


def test_an_unreachable_server_is_one_line_after_the_connect_timeout() -> None:
    (port,) = free_ports(1)  # nothing listens there
    code, _out, err = run_process("--hosts", f"127.0.0.1:{port}", "--connect-timeout", "2", "stats")
    assert code == 1
    assert err.strip().splitlines() == [err.strip()], err  # no connection chatter
    assert "ConnectTimeout" in err and "2s" in err


def test_read_only_commands_create_nothing_under_a_mistyped_root(
    make_client: MakeClient, zk_hosts: str, zk_root: str, raw_zk: KazooClient
) -> None:
    make_client().queue("jobs").put("x")
    typo = zk_root + "-typo"
    for args in (
        ["stats"],
        ["queue", "stats", "jobs"],
        ["queue", "dead", "jobs"],
        ["queue", "list"],
    ):
        code, out, err = run_process("--hosts", zk_hosts, "--root", typo, *args)
        assert code == 1, (args, out, err)
        assert "no zkpubsub bus under root" in err and "nothing was created" in err
    assert raw_zk.exists(typo) is None
    code, out, err = run_process("--hosts", zk_hosts, "--root", zk_root, "queue", "stats", "jobz")
    assert code == 1 and "no work queue 'jobz'" in err


def test_stats_describes_clients_marks_gone_ones_and_lists_work_queues(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    reader = make_client(client_id="reader-1")
    reader.subscribe("orders")
    gone = make_client(client_id="gone-1")
    gone.subscribe("orders")
    make_client().publish("orders", 1)
    gone.close()  # its queue stays until the cleaner takes it
    make_client().queue("jobs").put_many([1, 2])
    code, out, err = run_process("--hosts", zk_hosts, "--root", zk_root, "stats")
    assert code == 0, err
    (row,) = [line.split() for line in out.splitlines() if line.startswith("reader-1")]
    assert row[2] == str(os.getpid()) and row[1] != "?"  # host and pid of its process
    (queue,) = [line.split() for line in out.splitlines() if "gone-1" in line]
    assert queue[:4] == ["orders", "gone-1", "1", "GONE"]
    assert "await the cleaner" in out
    (jobs,) = [line.split() for line in out.splitlines() if line.startswith("jobs")]
    assert jobs[:4] == ["jobs", "2", "0", "0"]
    code, out, err = run_process("--hosts", zk_hosts, "--root", zk_root, "queue", "list")
    assert code == 0 and out.splitlines()[2].split()[:2] == ["jobs", "2"]


def test_verbose_shows_the_librarys_info_lines(zk_hosts: str, zk_root: str) -> None:
    code, _, err = run_process("--hosts", zk_hosts, "--root", zk_root, "publish", "t", "x")
    assert code == 0 and err == ""
    code, _out, err = run_process("--hosts", zk_hosts, "--root", zk_root, "-v", "publish", "t", "x")
    assert code == 0 and "INFO zkpubsub.client: client" in err and "connected" in err


def test_subscribe_ends_cleanly_on_sigterm(
    zk_hosts: str, zk_root: str, raw_zk: KazooClient
) -> None:
    proc = cli_process(
        "--hosts", zk_hosts, "--root", zk_root, "subscribe", "t", "--client-id", "s1"
    )
    try:
        assert proc.stdout is not None
        assert "subscribed to 't'" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    assert raw_zk.exists(f"{zk_root}/clients/s1") is None  # closed, not just killed


def one_line(err: str) -> bool:
    return err.strip().splitlines() == [err.strip()] and "Traceback" not in err


BAD_ENVIRONMENTS = {
    "acl": ({"ZKPUBSUB_ACL": "foo"}, "$ZKPUBSUB_ACL is 'open' or 'secured', not 'foo'"),
    "tls": ({"ZKPUBSUB_TLS_CA": "/nonexistent/ca.pem"}, "'/nonexistent/ca.pem' is not a readable"),
    "no-file": ({"ZKPUBSUB_CREDENTIALS": "/nonexistent.toml"}, "which is not a file"),
    "bad-toml": ({"ZKPUBSUB_CREDENTIALS": "BAD_TOML"}, "credentials: "),
    # only for commands that create nodes (``stats`` reads, and may)
    "secured-without-credentials": ({"ZKPUBSUB_ACL": "secured"}, "names the client's own identity"),
}
# the gateway's port is free: a gateway that got past the check would serve
BAD_ENVIRONMENT_COMMANDS = {
    "publish": ["publish", "t", "x"],
    "stats": ["stats"],
    "gateway": ["gateway", "--port", str(free_ports(1)[0])],
}


@pytest.mark.parametrize(
    ("env", "says", "command"),
    [
        pytest.param(env, says, command, id=f"{name}-{env_name}")
        for name, command in BAD_ENVIRONMENT_COMMANDS.items()
        for env_name, (env, says) in BAD_ENVIRONMENTS.items()
        if not (name == "stats" and env_name == "secured-without-credentials")
    ],
)
def test_bad_credentials_in_the_environment_are_one_line_and_exit_code_2(
    zk_hosts: str,
    zk_root: str,
    raw_zk: KazooClient,
    tmp_path: Path,
    env: dict[str, str],
    says: str,
    command: list[str],
) -> None:
    if env.get("ZKPUBSUB_CREDENTIALS") == "BAD_TOML":
        bad = tmp_path / "creds.toml"
        bad.write_text("[auth\ndigest = ")
        bad.chmod(0o600)
        env = {"ZKPUBSUB_CREDENTIALS": str(bad)}
    code, out, err = run_process("--hosts", zk_hosts, "--root", zk_root, *command, env=env)
    assert code == 2, (out, err)
    assert one_line(err) and says in err, err
    assert out == ""
    assert raw_zk.exists(zk_root) is None


def test_a_cleaner_whose_identity_may_not_stand_says_so_and_exits_1(
    secure_zookeeper: ZooKeeperCluster, secure_root: str, tmp_path: Path
) -> None:
    roles = bus_roles()
    creds = tmp_path / "creds.toml"
    lists = {
        kind: getattr(roles, kind)
        for kind in ("admins", "publishers", "subscribers", "producers", "workers")
    }
    creds.write_text(
        f'[auth]\ndigest = "publisher:{TEST_PASSWORDS["publisher"]}"\n[roles]\n'
        + "".join(f"{kind} = {json.dumps(list(ids))}\n" for kind, ids in lists.items())
    )
    creds.chmod(0o600)
    proc = cli_process(
        "--hosts", secure_zookeeper.hosts, "--root", secure_root, "--session-timeout", "4",
        "cleaner", "--interval", "0.5",
        env={"ZKPUBSUB_CREDENTIALS": str(creds)},
    )  # fmt: skip
    try:
        started = time.monotonic()
        out, _ = proc.communicate(timeout=30)  # it ran forever, saying nothing
        took = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    lines = out.strip().splitlines()
    assert "standing for election" in lines[0], out
    assert len(lines) == 2 and "Traceback" not in out, out
    assert lines[1].startswith("Error: cleaner ") and "not standing for election" in lines[1]
    assert took < 20, took


def test_subscribe_says_in_one_line_that_it_could_not_close_on_an_unanswering_server(
    make_cluster: Callable[..., ZooKeeperCluster], zk_root: str
) -> None:
    cluster = make_cluster(1)
    (node,) = cluster.nodes
    proc = cli_process(
        "--hosts", cluster.hosts, "--root", zk_root, "--session-timeout", "2", "subscribe", "t",
        # requests give up after 2 s (not 30 s): the test stays short
        prelude="import functools, zkpubsub._cli_common as c\n"
        "c.Client = functools.partial(c.Client, request_timeout=2.0)",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "subscribed to 't'" in proc.stdout.readline()
        node.pause()  # the server stops answering; the client does not know yet
        try:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            node.resume()
    finally:
        proc.kill()
    assert proc.returncode == 0, out  # as for any subscribe that SIGTERM ended
    assert "Traceback" not in out, out
    # one line: the command's, for an error raised by closing the
    # subscription, or the library's warning if its close gave up by itself
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    (line,) = lines
    assert (
        line.startswith("Warning: the subscription to 't' could not be closed cleanly: ")
        and "OperationTimeout" in line
    ) or line.startswith("WARNING zkpubsub.subscription: subscription 't'"), line


@pytest.mark.parametrize("command", [["subscribe", "t"], ["top", "--interval", "1"]])
def test_a_second_sigterm_ends_a_command_that_is_closing_at_once(
    make_cluster: Callable[..., ZooKeeperCluster], zk_root: str, command: list[str]
) -> None:
    """README: in subscribe, top and cleaner a second SIGTERM
    ends the process at once; it only set the stop flag again, and the
    closing against a server that stopped answering ran on."""
    if command[0] == "top":
        pytest.importorskip("rich")
    cluster = make_cluster(1)
    (node,) = cluster.nodes
    Client(cluster.hosts, root=zk_root).close()  # a bus to look at
    proc = cli_process("--hosts", cluster.hosts, "--root", zk_root, *command)
    try:
        if command[0] == "subscribe":
            assert proc.stdout is not None
            assert "subscribed to 't'" in proc.stdout.readline()
        else:
            time.sleep(3.0)  # connected, showing its first view
        node.pause()  # the server stops answering: closing waits for it
        try:
            proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert proc.poll() is None, proc.communicate()[0][-2000:]  # still closing
            second = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            took = time.monotonic() - second
        finally:
            node.resume()
    finally:
        proc.kill()
    assert took < 2.0, took


def interrupted(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> str:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return out


# Sends ``{sig}`` to the process right after kazoo's request call of the
# ``{n}``-th request (whichever thread made it) wrote its wake-up byte: the
# moment a real signal arriving then is handled.
SIGNAL_AFTER_A_REQUEST = """
import os, sys, threading
seen = [0]
def profile(frame, event, arg):
    code = frame.f_code
    if (event == "c_return" and getattr(arg, "__name__", "") == "send"
            and code.co_name == "_call" and code.co_filename.endswith("kazoo/client.py")):
        seen[0] += 1
        if seen[0] == {n}:
            os.kill(os.getpid(), {sig})
sys.setprofile(profile)
threading.setprofile(profile)
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("request_number", [3, 6])
def test_a_signal_arriving_inside_a_zookeeper_request_still_ends_the_command(
    make_client: MakeClient, zk_hosts: str, zk_root: str, sig: int, code: int, request_number: int
) -> None:
    """Raised where the main thread stood, inside kazoo's request call,
    the interruption was swallowed by kazoo (a bare ``except``): the
    command went on to its end (here the whole wait for a result) and the
    signal was lost. Commands now run apart from the thread that takes
    signals."""
    make_client().queue("jobs")
    started = time.monotonic()
    put = cli_process(
        *("--hosts", zk_hosts, "--root", zk_root),
        *("queue", "put", "jobs", "x", "--wait-result", "20"),
        prelude=SIGNAL_AFTER_A_REQUEST.format(n=request_number, sig=int(sig)),
    )
    try:
        out, _ = put.communicate(timeout=60)
    finally:
        put.kill()
    assert put.returncode == code, out
    assert "before the command was done" in out.splitlines()[-1], out
    assert time.monotonic() - started < 15, out  # not the 20 s wait for a result


@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [
        (signal.SIGINT, 130, "Error: interrupted (Ctrl-C) before the command was done"),
        # before, SIGTERM ended the process where it stood (its client's
        # nodes stayed to the session's end, a reservation to its lease's)
        (signal.SIGTERM, 143, "Error: terminated (SIGTERM) before the command was done"),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_before_a_command_is_done_is_one_line_and_exit_code_130_or_143(
    make_client: MakeClient,
    zk_hosts: str,
    zk_root: str,
    raw_zk: KazooClient,
    sig: int,
    code: int,
    said: str,
) -> None:
    base = ("--hosts", zk_hosts, "--root", zk_root)
    assert make_client().queue("jobs").reserve(timeout=0) is None  # made, empty: reserve waits
    clients = f"{zk_root}/clients"
    before = set(raw_zk.get_children(clients))
    reserve = cli_process(*base, "queue", "reserve", "jobs", "--timeout", "60")
    wait_until(lambda: set(raw_zk.get_children(clients)) - before, what="the reserve's client")
    # its worker registers at its first reserve: the client is made and kept
    workers = Layout(zk_root).work_queue("jobs").workers
    wait_until(lambda: raw_zk.exists(workers) and raw_zk.get_children(workers), what="waiting")
    out = interrupted(reserve, sig)
    assert reserve.returncode == code, out
    assert out.strip() == said, out
    assert set(raw_zk.get_children(clients)) == before  # its client closed on the way out

    put = cli_process(*base, "queue", "put", "jobs", "x", "--wait-result", "60")
    assert put.stdout is not None
    ticket = put.stdout.readline().strip()  # the item is in: waiting for its result
    out = interrupted(put, sig)
    assert put.returncode == code, out
    assert out.strip() == said, (ticket, out)

    (port,) = free_ports(1)  # nothing listens there: connecting
    connecting = cli_process(
        "--hosts",
        f"127.0.0.1:{port}",
        "--connect-timeout",
        "60",
        "stats",
        prelude="import zkpubsub.cli\nprint('imported', flush=True)",
    )
    assert connecting.stdout is not None
    assert connecting.stdout.readline().strip() == "imported"  # not interrupted in an import
    time.sleep(0.5)  # connecting
    started = time.monotonic()
    out = interrupted(connecting, sig)
    assert connecting.returncode == code, out
    assert out.strip() == said and time.monotonic() - started < 10, out


@pytest.mark.parametrize("case", ["tls-pair", "profile-type", "profile-file"])
def test_a_gateway_whose_listener_or_tokens_cannot_serve_says_so_before_it_listens(
    zk_hosts: str, zk_root: str, tmp_path: Path, case: str
) -> None:
    """Before: a certificate and key that do not load together, or a token
    naming its profile with a list, were tracebacks (exit 1); a profile
    whose credentials could never make a client let the gateway start and
    answer 500 to every request with that token."""
    (port,) = free_ports(1)
    args = ["gateway", "--port", str(port)]
    creds = tmp_path / "profile.toml"
    creds.write_text('acl = "secured"\n')  # no identity for the secured policy
    creds.chmod(0o600)
    token = {"name": "billing", "token": "t" * 24, "credentials": "billing"}
    book = {"credentials": {"billing": str(creds)}, "tokens": [token]}
    if case == "tls-pair":
        garbage = tmp_path / "cert.pem"
        garbage.write_text("not a certificate\n")
        args += ["--tls-cert", str(garbage), "--tls-key", str(garbage)]
        says = "do not load together"
    elif case == "profile-type":
        token["credentials"] = ["billing"]
        says = "credentials names a profile"
    else:
        says = "credentials profile 'billing'"
    if case != "tls-pair":
        tokens = tmp_path / "tokens.json"
        tokens.write_text(json.dumps(book))
        tokens.chmod(0o600)
        args += ["--tokens", str(tokens)]
    code, out, err = run_process("--hosts", zk_hosts, "--root", zk_root, *args, timeout=30)
    assert code == 2, (out, err)
    assert one_line(err) and says in err, err


@pytest.mark.parametrize(
    "command", [("subscribe", "t"), ("cleaner",), ("top",)], ids=["subscribe", "cleaner", "top"]
)
def test_sigterm_while_subscribe_cleaner_or_top_connects_ends_them_at_once(
    command: tuple[str, ...],
) -> None:
    """SIGTERM ends these quietly (exit 0), as a stop; while they still
    waited for a server it was held until the connect timed out (then exit 1
    with ConnectTimeout). So was Ctrl-C in ``top``."""
    code, out = terminated_while_connecting(*command)
    assert code == 0, out
    assert "Error" not in out and "Traceback" not in out, out


def terminated_while_connecting(*command: str) -> tuple[int, str]:
    """The program's exit code and output when SIGTERM comes while it
    connects to a server that takes the connection and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        silent.settimeout(30)
        port = silent.getsockname()[1]
        proc = cli_process("--hosts", f"127.0.0.1:{port}", "--connect-timeout", "60", *command)
        try:
            conn, _ = silent.accept()  # connecting now
            with conn:
                proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=20)
        finally:
            proc.kill()
    return proc.returncode, out


def test_a_gateway_that_cannot_reach_the_bus_says_so_in_one_line_and_a_signal_ends_the_wait(
    tmp_path: Path,
) -> None:
    """Before, the gateway connected inside its server's start: no server
    answering was a traceback (exit 3) after the connect timeout, and Ctrl-C
    or SIGTERM waited for that timeout. A stop while it connects ends it as
    one while it serves: done (exit 0)."""
    (closed,) = free_ports(1)
    args = ["--hosts", f"127.0.0.1:{closed}", "--connect-timeout", "2", "gateway"]
    code, out, err = run_process(*args, "--port", str(free_ports(1)[0]), timeout=30)
    assert code == 1, (out, err)
    assert one_line(err) and err.startswith("Error: ConnectTimeout: no ZooKeeper session"), err
    code, out = terminated_while_connecting("gateway", "--port", str(free_ports(1)[0]))
    assert code == 0, out
    assert "Error" not in out and "Traceback" not in out, out


@pytest.mark.parametrize("command", [["stats"], ["queue", "list"]])
def test_reading_a_bus_the_identity_may_not_read_is_one_line_and_exit_code_1(
    secure_zookeeper: ZooKeeperCluster,
    secure_root: str,
    make_secure_client: MakeClient,
    command: list[str],
) -> None:
    """Before, stats and queue list ended in a NotAuthorized traceback."""
    admin = make_secure_client(auth=user_auth("admin"), acl=bus_roles(), cleaner=False)
    admin.queue("jobs").put(1)  # the bus and a queue, under the roles' ACLs
    code, out = run(secure_zookeeper.hosts, secure_root, *command)  # no credentials
    assert code == 1, out
    assert "Traceback" not in out and out.strip().splitlines() == [out.strip()], out
    assert out.startswith("Error: NotAuthorized"), out


def test_a_demo_whose_gateway_does_not_start_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Before, the demo went on without the gateway and ended with status
    0, though the gateway is part of what it shows."""
    from zkpubsub.demo import _gateway

    monkeypatch.setenv("ZKPUBSUB_GATEWAY_TOKENS", str(tmp_path / "no-such-tokens.json"))
    steps: list[str] = []
    failures: list[str] = []
    with _gateway("127.0.0.1:9", steps.append, failures) as url:
        assert url is None
    assert failures == ["the HTTP gateway did not start (run `zkpubsub gateway` to see why)"]
