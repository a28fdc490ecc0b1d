"""What a cleaner candidate's election node holds (internal; the format is
in docs/wire-format.md): its client id and its grace, as JSON."""

from __future__ import annotations

import json

from ._numbers import is_real

__all__ = ["candidate_record", "read_candidate"]


def candidate_record(client_id: str, grace: float) -> bytes:
    """What a candidate's election node holds: its client id and grace."""
    return json.dumps({"client": client_id, "grace": grace}).encode()


def read_candidate(data: bytes) -> tuple[str, float | None]:
    """``(client id, grace)`` of an election node (an older candidate's node
    holds only the client id)."""
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        doc = None
    if isinstance(doc, dict):
        grace = doc.get("grace")
        if not is_real(grace):
            return str(doc.get("client", "")), None
        return str(doc.get("client", "")), float(grace)
    return data.decode("utf-8", "replace"), None
