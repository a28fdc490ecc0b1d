"""What a cleaner candidate's election node holds (internal; the format is
in docs/wire-format.md): its client id and its options, as JSON."""

from __future__ import annotations

import json

from ._numbers import is_real

__all__ = ["SETTINGS", "candidate_record", "candidate_settings", "read_candidate"]

# The options an election node names, beside the client id: the leader's
# apply to every sweep, whoever else stands.
SETTINGS = ("grace", "result_ttl", "notice_ttl")


def candidate_record(
    client_id: str,
    grace: float,
    *,
    result_ttl: float | None = None,
    notice_ttl: float | None = None,
) -> bytes:
    """What a candidate's election node holds: its client id and options."""
    doc: dict[str, object] = {"client": client_id, "grace": grace}
    if result_ttl is not None:
        doc["result_ttl"] = result_ttl
    if notice_ttl is not None:
        doc["notice_ttl"] = notice_ttl
    return json.dumps(doc).encode()


def candidate_settings(data: bytes) -> dict[str, float]:
    """The options (of :data:`SETTINGS`) an election node names: a candidate
    of an earlier version names fewer, or none."""
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {key: float(doc[key]) for key in SETTINGS if is_real(doc.get(key))}


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
