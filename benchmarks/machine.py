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
from dataclasses import dataclass
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


def code_version() -> dict[str, Any]:
    """Which code was measured: the commit of the checkout the ``zkpubsub``
    package was imported from, whether its library files differ from that
    commit, and whether it is the checkout this benchmark code belongs to
    (``python -m`` puts the working directory first on the import path, so
    a run from one checkout measures that checkout's library whatever the
    environment says). Empty outside a git checkout."""
    import zkpubsub

    library = Path(zkpubsub.__file__).resolve().parent
    here = Path(__file__).resolve().parent

    def git(cwd: Path, *args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git(library, "rev-parse", "HEAD")
    if not commit:
        return {}
    changed = git(library, "status", "--porcelain", "--", ".")
    return {
        "commit": commit,
        "library_changed": bool(changed),
        "same_checkout": git(library, "rev-parse", "--show-toplevel")
        == git(here, "rev-parse", "--show-toplevel"),
    }


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
        "code": code_version(),
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


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and those they started (a gateway, a
    worker's helpers), from every process's parent in ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _read(str(stat)).rsplit(")", 1)[-1].split()
        with contextlib.suppress(IndexError, ValueError):
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def io_pressure_us() -> int | None:
    """Cumulative microseconds in which some task waited for I/O (Linux PSI)."""
    for line in _read("/proc/pressure/io").splitlines():
        if line.startswith("some "):
            for field in line.split():
                if field.startswith("total="):
                    return int(field[6:])
    return None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    t: float
    busy: int
    own: int
    io_us: int | None
    counters: dict[str, float]


class LoadMonitor:
    """How busy the machine was while each part of the run went on.

    A background thread samples, once a second, the machine's CPU use and the
    CPU time of the processes ``pids()`` names (this run's harness, workers
    and servers). ``mark(name)`` starts a new part; ``intervals()`` gives,
    per part, the cores busy in total, with this run, and with other work;
    the share of time some task waited for I/O (Linux pressure stall
    information); and, from ``counters()`` (cumulative ``cnt_*`` / ``sum_*``
    pairs such as ZooKeeper's ``fsynctime``), the average of each.
    """

    def __init__(
        self,
        pids: Callable[[], Iterable[int]],
        *,
        counters: Callable[[], dict[str, float]] | None = None,
        interval: float = 1.0,
    ) -> None:
        self._pids = pids
        self._counters = counters
        self._interval = interval
        self._lock = threading.Lock()
        self._marks: list[tuple[str, _Snapshot]] = []
        self._own_base: dict[int, int] = {}
        self._own_used: dict[int, int] = {}
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-load", daemon=True)

    def start(self) -> LoadMonitor:
        self._own()
        self._started = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _own(self) -> int:
        """Own CPU ticks accumulated since the monitor started; a process that
        exited keeps what it had used when last seen."""
        with self._lock:
            for pid in set(self._pids()):
                ticks = _process_ticks(pid)
                # processes alive at the start count from then; later ones (a
                # server started mid-run) from their beginning
                base = self._own_base.setdefault(pid, 0 if self._started else ticks)
                self._own_used[pid] = max(self._own_used.get(pid, 0), ticks - base)
            return sum(self._own_used.values())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._own()

    def _snapshot(self) -> _Snapshot:
        counters: dict[str, float] = {}
        if self._counters is not None:
            try:
                counters = self._counters()
            except Exception:
                counters = {}
        busy, _total = _machine_busy_ticks()
        return _Snapshot(time.monotonic(), busy, self._own(), io_pressure_us(), counters)

    def mark(self, name: str) -> None:
        snap = self._snapshot()
        with self._lock:
            self._marks.append((name, snap))

    def finish(self) -> None:
        """End the last part (while the counters can still be read)."""
        self.mark("<end>")

    def intervals(self) -> dict[str, dict[str, float | None]]:
        """Per part: seconds, busy cores (all / this run / other), I/O
        pressure in percent, and the average of every counter pair."""
        with self._lock:
            marks = list(self._marks)
        if not marks or marks[-1][0] != "<end>":
            marks.append(("<end>", self._snapshot()))
        out: dict[str, dict[str, float | None]] = {}
        for (name, a), (_, b) in itertools.pairwise(marks):
            dt = b.t - a.t
            if dt <= 0:
                continue
            machine = (b.busy - a.busy) / _TICKS / dt
            ours = (b.own - a.own) / _TICKS / dt
            part: dict[str, float | None] = {
                "seconds": round(dt, 1),
                "machine_busy_cores": round(machine, 2),
                "own_busy_cores": round(ours, 2),
                "other_busy_cores": round(max(0.0, machine - ours), 2),
                "io_pressure_pct": (
                    None
                    if a.io_us is None or b.io_us is None
                    else round((b.io_us - a.io_us) / (dt * 1e6) * 100, 1)
                ),
            }
            for key in b.counters:
                if not key.startswith("cnt_"):
                    continue
                metric = key[4:]
                count = b.counters[key] - a.counters.get(key, 0.0)
                total = b.counters.get(f"sum_{metric}", 0.0) - a.counters.get(f"sum_{metric}", 0.0)
                part[f"avg_{metric}"] = round(total / count, 3) if count > 0 else None
            out[name] = part
        return out
