"""What the numbers were measured on, and how busy the machine was meanwhile.

The :class:`LoadMonitor` samples ``/proc/stat`` and the CPU time of the
processes this run started, so a report can say how many cores *other*
work used while a section ran (a benchmark on a shared machine is noisy;
this says how noisy).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def java_version(java: str = "java") -> str:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = (out.stderr or out.stdout).strip().splitlines()
    return " / ".join(lines[:2]) if lines else "unknown"


def filesystem_of(path: str) -> str:
    """The mount type holding ``path`` (``ext4``, ``tmpfs``…): fsync is only
    meaningful on a real disk."""
    best, fstype = "", "unknown"
    real = os.path.realpath(path)
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def describe() -> dict[str, Any]:
    """The machine, the OS and the Python side."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "kazoo": package_version("kazoo"),
        "zkpubsub": package_version("zkpubsub"),
        "java": java_version(),
        "loadavg_at_start": load_average(),
    }


def load_average() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def _machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    for line in _read("/proc/stat").splitlines():
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:]]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
            total = sum(fields[:8])
            return total - idle, total
    return 0, 0


def _process_ticks(pid: int) -> int:
    """User + system jiffies of one process (its own threads), 0 if gone."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return 0
    fields = raw.rsplit(")", 1)[-1].split()
    # after the command: state(0) ppid(1) … utime(11) stime(12)
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return 0


class LoadMonitor:
    """Samples machine-wide and own CPU use once a second in the background.

    ``pids`` is called at every sample and names the processes of this run
    (this one, its workers, the ZooKeeper servers). ``mark(name)`` starts a
    new interval; ``intervals()`` says, for each one, how many cores were
    busy in total, how many with this run's processes, and the rest (other
    work on the machine).
    """

    def __init__(self, pids: Callable[[], Iterable[int]], interval: float = 1.0) -> None:
        self._pids = pids
        self._interval = interval
        self._lock = threading.Lock()
        self._marks: list[tuple[str, float, int, int, int]] = []
        self._own_base: dict[int, int] = {}
        self._own_used: dict[int, int] = {}
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-load", daemon=True)
        self._samples: list[tuple[float, float, float]] = []  # t, machine cores, own cores

    def start(self) -> LoadMonitor:
        self._sample()
        self._started = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _own(self) -> int:
        """Own CPU ticks accumulated since the monitor started; a process that
        exited keeps what it had used when last seen."""
        for pid in set(self._pids()):
            ticks = _process_ticks(pid)
            # processes alive at the start count from then; later ones (a
            # server started mid-run) from their beginning
            base = self._own_base.setdefault(pid, 0 if self._started else ticks)
            self._own_used[pid] = max(self._own_used.get(pid, 0), ticks - base)
        return sum(self._own_used.values())

    def _sample(self) -> tuple[float, int, int, int]:
        with self._lock:
            busy, total = _machine_busy_ticks()
            own = self._own()
            now = time.monotonic()
            return now, busy, total, own

    def _run(self) -> None:
        last = self._sample()
        while not self._stop.wait(self._interval):
            cur = self._sample()
            dt = cur[0] - last[0]
            if dt > 0:
                machine = (cur[1] - last[1]) / _TICKS / dt
                own = (cur[3] - last[3]) / _TICKS / dt
                with self._lock:
                    self._samples.append((cur[0], round(machine, 2), round(own, 2)))
            last = cur

    def mark(self, name: str) -> None:
        t, busy, _total, own = self._sample()
        with self._lock:
            self._marks.append((name, t, busy, own, 0))

    def intervals(self) -> dict[str, dict[str, float]]:
        """Per marked interval: wall seconds, machine, own and other busy cores."""
        t, busy, _total, own = self._sample()
        with self._lock:
            marks = [*self._marks, ("<end>", t, busy, own, 0)]
        out: dict[str, dict[str, float]] = {}
        for (name, t0, b0, o0, _), (_, t1, b1, o1, _) in itertools.pairwise(marks):
            dt = t1 - t0
            if dt <= 0 or name == "<end>":
                continue
            machine = (b1 - b0) / _TICKS / dt
            ours = (o1 - o0) / _TICKS / dt
            out[name] = {
                "seconds": round(dt, 1),
                "machine_busy_cores": round(machine, 2),
                "own_busy_cores": round(ours, 2),
                "other_busy_cores": round(max(0.0, machine - ours), 2),
            }
        return out

    def samples(self) -> list[tuple[float, float, float]]:
        with self._lock:
            return list(self._samples)
