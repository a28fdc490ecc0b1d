"""A progress display on stderr: one line per phase, updated in place on a
terminal, printed at most every few seconds otherwise."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._quiet = quiet
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._phase: str | None = None
        self._phase_started = 0.0
        self._last_write = 0.0
        self._width = 0

    def _clock(self) -> str:
        elapsed = int(time.monotonic() - self._started)
        return f"{elapsed // 60:02d}:{elapsed % 60:02d}"

    def _write(self, text: str, *, final: bool) -> None:
        if self._quiet:
            return
        line = f"[{self._clock()}] {text}"
        if self._tty:
            pad = max(0, self._width - len(line))
            self._stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            self._width = 0 if final else len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def phase(self, name: str) -> Phase:
        return Phase(self, name)

    def _begin(self, name: str) -> None:
        with self._lock:
            self._phase = name
            self._phase_started = time.monotonic()
            self._last_write = self._phase_started
            if self._tty:
                self._write(f"{name} …", final=False)

    def update(self, text: str) -> None:
        """Replace the current phase's status text (throttled)."""
        with self._lock:
            if self._phase is None:
                return
            now = time.monotonic()
            every = 0.2 if self._tty else 10.0
            if now - self._last_write < every:
                return
            self._last_write = now
            took = now - self._phase_started
            self._write(f"{self._phase}: {text} ({took:.0f}s)", final=False)

    def _end(self, summary: str) -> None:
        with self._lock:
            took = time.monotonic() - self._phase_started
            self._write(f"{self._phase}: {summary} ({took:.1f}s)", final=True)
            self._phase = None

    def note(self, text: str) -> None:
        """A line of its own (a skipped benchmark, a warning)."""
        with self._lock:
            if self._tty and self._width:
                self._stream.write("\n")
                self._width = 0
            self._write(text, final=True)


class Phase:
    def __init__(self, progress: Progress, name: str) -> None:
        self._progress = progress
        self._name = name
        self.summary = "done"

    def update(self, text: str) -> None:
        self._progress.update(text)

    def __enter__(self) -> Phase:
        self._progress._begin(self._name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.summary = f"failed: {type(exc).__name__}: {exc}"
        self._progress._end(self.summary)
