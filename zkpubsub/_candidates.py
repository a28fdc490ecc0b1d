"""What a cleaner candidate's election node holds (internal; the format is
in docs/wire-format.md): its client id and its options, as JSON."""

from __future__ import annotations

import json

from ._numbers import is_real

__all__ = ["SETTINGS", "candidate_record", "candidate_settings", "read_candidate"]

# The options an election node names, beside the client id (the leader's
# apply to every sweep, whoever else stands), each with how messages name it.
SETTINGS = {"grace": "grace", "result_ttl": "result TTL", "notice_ttl": "notice TTL"}


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


def _record_doc(data: bytes) -> dict[str, object] | None:
    """An election node's JSON object; ``None`` if it holds none (an
    older candidate's node holds only the client id)."""
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def candidate_settings(data: bytes) -> dict[str, float]:
    """The options (of :data:`SETTINGS`) an election node names: a candidate
    of an earlier version names fewer, or none."""
    doc = _record_doc(data) or {}
    return {key: float(value) for key in SETTINGS if is_real(value := doc.get(key))}


def read_candidate(data: bytes) -> tuple[str, float | None]:
    """``(client id, grace)`` of an election node (an older candidate's node
    holds only the client id)."""
    doc = _record_doc(data)
    if doc is None:
        return data.decode("utf-8", "replace"), None
    grace = doc.get("grace")
    return str(doc.get("client", "")), float(grace) if is_real(grace) else None
