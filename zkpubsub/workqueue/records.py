"""The records of a work queue: what its nodes hold, and what callers see.

An item node holds an envelope with exactly one message (the broadcast
format). A reservation holds ``{"worker", "at"}`` and, for a leased one,
``"lease"`` (seconds, counted from the node's ``mtime``); a dead letter
``{"v", "name", "item", "attempts", "reason", "at"}``; a result
``{"v", "status", "ct", "r", "reason", "at"}`` (msgpack maps, described in
``docs/wire-format.md``). Everything here is pure: no requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from .. import envelope
from .._numbers import is_int, is_real
from ..errors import DecodeError, ItemFailed
from ..layout import MAX_PRIORITY, MIN_PRIORITY, parse_item_node
from ..serializers import Serializer, SerializerRegistry

__all__ = [
    "DEFAULT_PRIORITY",
    "RECORD_VERSION",
    "DeadItem",
    "WorkQueueStats",
    "check_priority",
    "dead_item",
    "dead_item_data",
    "dead_record",
    "decode_item",
    "lease_of",
    "pack",
    "read_result",
    "reservation_record",
    "reserved_by",
    "result_doc",
]

DEFAULT_PRIORITY: Final = 100
RECORD_VERSION: Final = 1
_ERROR_TEXT_LIMIT: Final = 2000


def check_priority(priority: object) -> int:
    if not is_int(priority):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {priority}"
        )
    return priority


def pack(doc: dict[str, Any]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class WorkQueueStats:
    """Counts of one work queue. ``ready`` items wait for a worker;
    ``reserved`` are held by one; ``dead`` are dead letters."""

    name: str
    ready: int
    reserved: int
    dead: int
    workers: int


@dataclass(frozen=True, slots=True)
class DeadItem:
    """A dead letter: an item given up after ``attempts`` reservations."""

    id: str
    name: str
    payload: Any
    headers: dict[str, str]
    priority: int
    attempts: int
    reason: str
    died_at: float


def decode_item(
    serializers: SerializerRegistry, path: str, data: bytes
) -> tuple[envelope.Entry, Any]:
    """The message of an item node and its payload; :class:`DecodeError`
    says why the node is not a readable work item."""
    try:
        entries = envelope.decode(data)
    except ValueError as exc:
        raise DecodeError(str(exc), path=path, data=data, error=exc) from exc
    if len(entries) != 1:
        raise DecodeError(
            f"a work item holds one message, not {len(entries)}", path=path, data=data
        )
    entry = entries[0]
    return entry, serializers.loads(entry.content_type, entry.body, path=path, data=data)


def reservation_record(worker_id: str, lease: float | None = None) -> bytes:
    """A reservation by ``worker_id``, leased for ``lease`` seconds from the
    node's ``mtime`` (``None``: for as long as the worker's session lives)."""
    doc: dict[str, Any] = {"worker": worker_id, "at": time.time()}
    if lease is not None:
        doc["lease"] = float(lease)
    return pack(doc)


def reserved_by(data: bytes) -> str | None:
    """The worker id a reservation node names (``None`` if unreadable)."""
    try:
        worker = msgpack.unpackb(data, raw=False).get("worker")
    except Exception:
        return None
    return worker if isinstance(worker, str) else None


def lease_of(data: bytes) -> float | None:
    """The lease of a reservation in seconds (``None``: session-bound, or
    unreadable)."""
    try:
        lease = msgpack.unpackb(data, raw=False).get("lease")
    except Exception:
        return None
    if not is_real(lease) or lease <= 0:
        return None
    return float(lease)


def result_doc(serializer: Serializer, status: str, result: Any = None, reason: str = "") -> bytes:
    body = b"" if result is None else serializer.dumps(result)
    return pack(
        {
            "v": RECORD_VERSION,
            "status": status,
            "ct": serializer.content_type,
            "r": body,
            "reason": reason[:_ERROR_TEXT_LIMIT],  # the server takes up to 1 MiB in all
            "at": time.time(),
        }
    )


def read_result(serializers: SerializerRegistry, item_id: str, path: str, data: bytes) -> Any:
    """The result a worker acked ``item_id`` with; :class:`ItemFailed` if it
    went to the dead letters, :class:`DecodeError` if the node is not a
    result record."""
    try:
        doc = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise DecodeError(f"not a msgpack result: {exc}", path=path, data=data, error=exc) from exc
    if not isinstance(doc, dict) or doc.get("status") not in ("ok", "dead"):
        raise DecodeError("not a zkpubsub result record", path=path, data=data)
    if doc["status"] != "ok":
        raise ItemFailed(item_id, str(doc.get("reason", "unknown")))
    body = doc.get("r", b"")
    if not body:
        return None
    content_type = doc.get("ct", "")
    if not isinstance(body, bytes) or not isinstance(content_type, str):
        raise DecodeError("a result record field has the wrong type", path=path, data=data)
    if serializers.get(content_type) is None:
        raise ItemFailed(item_id, f"result has unknown content type {content_type!r}")
    return serializers.loads(content_type, body, path=path, data=data)


def dead_record(name: str, data: bytes, attempts: int, reason: str) -> bytes:
    return pack(
        {
            "v": RECORD_VERSION,
            "name": name,
            "item": data,
            "attempts": attempts,
            "reason": reason[:_ERROR_TEXT_LIMIT],
            "at": time.time(),
        }
    )


def dead_item_data(data: bytes) -> bytes:
    """The item node data kept in a dead letter (the whole node if unreadable)."""
    try:
        item = msgpack.unpackb(data, raw=False)["item"]
    except Exception:
        return data
    return item if isinstance(item, bytes) else data


def dead_item(serializers: SerializerRegistry, path: str, name: str, data: bytes) -> DeadItem:
    """A dead letter as callers see it (what cannot be read shows as raw bytes)."""
    parsed = parse_item_node(name)
    priority = parsed.priority if parsed else DEFAULT_PRIORITY
    try:
        doc = msgpack.unpackb(data, raw=False)
        item_data = doc["item"]
        attempts, reason, at = int(doc["attempts"]), str(doc["reason"]), float(doc["at"])
    except Exception:
        return DeadItem(name, name, data, {}, priority, 0, "unreadable dead letter", 0.0)
    try:
        entry, payload = decode_item(serializers, path, item_data)
    except DecodeError:
        return DeadItem(name, name, item_data, {}, priority, attempts, reason, at)
    return DeadItem(entry.id, name, payload, dict(entry.headers), priority, attempts, reason, at)
