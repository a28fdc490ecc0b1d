"""The gateway as a real process: ``python -m zkpubsub ... gateway`` on a free port.

    url, process = start_gateway(hosts, root, tokens={"tokens": [...]})

``tokens`` is a tokens file's path, its content as a dict (written next to
the gateway's log), or ``None`` for a gateway without authentication.
:func:`start_gateway` returns once the gateway answers ``/readyz`` with
200; :func:`stop_gateway` ends it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from zkpubsub.testing.local import free_ports

ROOT_DIR = Path(__file__).resolve().parent.parent

__all__ = ["gateway", "start_gateway", "stop_gateway"]


def start_gateway(
    hosts: str,
    root: str,
    tokens: str | os.PathLike[str] | dict[str, Any] | None = None,
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    global_args: Sequence[str] = (),
    session_timeout: float = 4.0,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    scheme: str = "http",
    verify: Any = True,
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a gateway process; ``(base_url, process)`` once it is ready.
    ``args`` are options of the ``gateway`` command, ``global_args`` of the
    program (``-v``). Its output goes to a log file (see :func:`log_of`)."""
    port = port or free_ports(1)[0]
    folder = Path(tempfile.mkdtemp(prefix="zkpubsub-gateway-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # its log is read until then
    options: list[str] = []
    if isinstance(tokens, dict):
        path = folder / "tokens.json"
        path.write_text(json.dumps(tokens))
        path.chmod(0o600)
        options += ["--tokens", str(path)]
    elif tokens is not None:
        options += ["--tokens", str(tokens)]
    command = [
        sys.executable,
        "-m",
        "zkpubsub",
        "--hosts",
        hosts,
        "--root",
        root,
        "--session-timeout",
        str(session_timeout),
        *global_args,
        "gateway",
        "--port",
        str(port),
        *options,
        *args,
    ]
    environment = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT_DIR), **(env or {}))
    with open(folder / "gateway.log", "wb") as log:  # the child writes it, on a copy
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=ROOT_DIR
        )
    _logs[process.pid] = folder / "gateway.log"
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited ({process.returncode}):\n{log_of(process)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2, verify=verify).status_code == 200:
                return url, process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_gateway(process)
            raise AssertionError(f"the gateway was not ready in {timeout}s:\n{log_of(process)}")
        time.sleep(0.1)


_logs: dict[int, Path] = {}


def log_of(process: subprocess.Popen[bytes]) -> str:
    """What the gateway process wrote so far."""
    path = _logs.get(process.pid)
    return path.read_text(errors="replace") if path and path.exists() else ""


def stop_gateway(process: subprocess.Popen[bytes], *, kill: bool = False) -> int:
    """End the gateway: SIGKILL when ``kill``, else SIGTERM (SIGKILL after 15 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


@contextmanager
def gateway(
    hosts: str, root: str, tokens: str | dict[str, Any] | None = None, **options: Any
) -> Iterator[str]:
    """A gateway process for the ``with`` block; its base URL."""
    url, process = start_gateway(hosts, root, tokens, **options)
    try:
        yield url
    finally:
        stop_gateway(process)
