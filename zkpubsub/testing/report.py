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

from .checker import CheckResult
from .queue_checker import QueueCheckResult

__all__ = [
    "COLUMNS",
    "EXTRA_COLUMNS",
    "HEADER",
    "QUEUE_COLUMNS",
    "ScenarioResult",
    "markdown_table",
    "ordered",
    "text_table",
    "write_section",
]


COLUMNS = (
    "attempted",
    "acked",
    "unknown",
    "expected",
    "excused",
    "delivered",
    "lost",
    "duplicates",
)
EXTRA_COLUMNS = (
    "failed",
    "unexpected",
    "failed_written",
    "unconfirmed",
    "unreported",
    "order_violations",
    "recovered",
)
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
_TAIL = ("faults", "sessions lost", "audit", "seconds")


def _columns(check: CheckResult | QueueCheckResult) -> tuple[tuple[str, ...], list[str]]:
    """The figures of a publish/subscribe or a work-queue check, and their labels."""
    if isinstance(check, QueueCheckResult):
        return QUEUE_COLUMNS, [c.replace("_", " ") for c in QUEUE_COLUMNS]
    return (*COLUMNS, *EXTRA_COLUMNS), [c.replace("_", " ") for c in (*COLUMNS, *EXTRA_COLUMNS)]


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """One scenario's figures, its faults and how long it ran. A work-queue
    scenario (``QueueCheckResult``) has columns of its own."""

    name: str
    check: CheckResult | QueueCheckResult
    faults: int = 0
    seconds: float = 0.0
    audit_ok: bool | None = None
    notes: dict[str, int] = field(default_factory=dict)

    def header(self) -> list[str]:
        return ["scenario", *_columns(self.check)[1], *_TAIL]

    def row(self) -> list[str]:
        figures = [str(getattr(self.check, c)) for c in _columns(self.check)[0]]
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


HEADER = ["scenario", *(c.replace("_", " ") for c in (*COLUMNS, *EXTRA_COLUMNS)), *_TAIL]


def _order(result: ScenarioResult) -> tuple[int, str]:
    """Numbered scenarios first, by number (``"8a ..."`` is 8), then the rest."""
    name = result.name.removeprefix("Q")
    head = name.split(" ", 1)[0]
    digits = "".join(ch for ch in head if ch.isdigit())
    return (int(digits) if digits and head[0].isdigit() else 10**6, result.name)


def ordered(results: Iterable[ScenarioResult]) -> list[ScenarioResult]:
    return sorted(results, key=_order)


def _header_of(results: Sequence[ScenarioResult]) -> list[str]:
    """One table holds one kind of scenario: its first row names the columns."""
    return results[0].header() if results else HEADER


def markdown_table(results: Sequence[ScenarioResult]) -> str:
    header = _header_of(results)
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "|".join("---:" for _ in header[1:]) + "|",
    ]
    for r in ordered(results):
        lines.append("| " + " | ".join(r.row()) + " |")
    return "\n".join(lines)


def text_table(results: Sequence[ScenarioResult]) -> str:
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
