"""The reliability table: one row per scenario, as text or Markdown.

:func:`write_section` keeps ``docs/reliability.md`` made of named sections
(the default suite's short runs, the soak) so that each kind of run
replaces only its own table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from .checker import CheckResult
from .queue_checker import QueueCheckResult

COLUMNS = ("attempted", "acked", "unknown", "delivered", "lost", "duplicates")
EXTRA_COLUMNS = ("failed", "unexpected", "order_violations", "recovered")


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """One scenario's figures, its faults and how long it ran."""

    name: str
    check: CheckResult
    faults: int = 0
    seconds: float = 0.0
    audit_ok: bool | None = None
    notes: dict[str, int] = field(default_factory=dict)

    def row(self) -> list[str]:
        figures = [str(getattr(self.check, c)) for c in (*COLUMNS, *EXTRA_COLUMNS)]
        audit = "-" if self.audit_ok is None else ("ok" if self.audit_ok else "FAILED")
        lost_sessions = self.notes.get("sessions lost", 0)
        return [
            self.name,
            *figures,
            str(self.faults),
            str(lost_sessions),
            audit,
            f"{self.seconds:.0f}",
        ]


HEADER = [
    "scenario",
    *COLUMNS,
    *EXTRA_COLUMNS,
    "faults",
    "sessions lost",
    "audit",
    "seconds",
]

QUEUE_COLUMNS = (
    "attempted",
    "acked",
    "unknown",
    "reserved",
    "done",
    "lost",
    "unexpected",
    "put_duplicates",
    "double_acks",
    "double_holds",
    "duplicates",
    "redelivered",
    "rejected",
)


@dataclass(frozen=True, slots=True)
class QueueScenarioResult:
    """One work-queue scenario's figures (see ``queue_checker``)."""

    name: str
    check: QueueCheckResult
    faults: int = 0
    seconds: float = 0.0
    audit_ok: bool | None = None
    notes: dict[str, int] = field(default_factory=dict)

    def row(self) -> list[str]:
        audit = "-" if self.audit_ok is None else ("ok" if self.audit_ok else "FAILED")
        return [
            self.name,
            *[str(getattr(self.check, c)) for c in QUEUE_COLUMNS],
            str(self.faults),
            str(self.notes.get("sessions lost", 0)),
            audit,
            f"{self.seconds:.0f}",
        ]


QUEUE_HEADER = [
    "scenario",
    *(c.replace("_", " ") for c in QUEUE_COLUMNS),
    "faults",
    "sessions lost",
    "audit",
    "seconds",
]


class Row(Protocol):
    @property
    def name(self) -> str: ...

    def row(self) -> list[str]: ...


R = TypeVar("R", bound=Row)


def _order(result: Row) -> tuple[int, str]:
    """Numbered scenarios first, by number (``"8a ..."`` is 8), then the rest."""
    name = result.name.removeprefix("Q")
    head = name.split(" ", 1)[0]
    digits = "".join(ch for ch in head if ch.isdigit())
    return (int(digits) if digits and head[0].isdigit() else 10**6, result.name)


def ordered(results: Iterable[R]) -> list[R]:
    return sorted(results, key=_order)


def _header_of(results: Sequence[Row]) -> list[str]:
    return QUEUE_HEADER if results and isinstance(results[0], QueueScenarioResult) else HEADER


def markdown_table(results: Sequence[Row]) -> str:
    header = _header_of(results)
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "|".join("---:" for _ in header[1:]) + "|",
    ]
    for r in ordered(results):
        lines.append("| " + " | ".join(r.row()) + " |")
    return "\n".join(lines)


def text_table(results: Sequence[Row]) -> str:
    header = _header_of(results)
    rows = [header, *[r.row() for r in ordered(results)]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _markers(section: str) -> tuple[str, str]:
    return f"<!-- section:{section} -->", f"<!-- end:{section} -->"


def _replace_or_add(text: str, section: str, body: str, *, first: bool = False) -> str:
    start, end = _markers(section)
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _m: block, text)
    if first:
        return block + "\n\n" + text.lstrip()
    return text.rstrip() + "\n\n" + block + "\n"


def write_section(path: Path, section: str, body: str, *, preamble: str = "") -> None:
    """Put ``body`` between the markers of ``section`` in ``path`` (added at
    the end the first time), and ``preamble``, if given, in the ``about``
    section at the top: each kind of run replaces only its own parts."""
    text = path.read_text() if path.exists() else ""
    if preamble:
        text = _replace_or_add(text, "about", preamble, first=True)
    text = _replace_or_add(text, section, body)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")
