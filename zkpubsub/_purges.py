"""What a purge marker (``purging/<id>``) holds (internal; the format is in
docs/wire-format.md): the topics of the client whose queues the cleaner is
deleting, as JSON, so that a client back in the middle hears of every one,
those whose queues are gone already included. A purge of a client with
durable subscriptions says so in its marker (a cleaner taking it over
knows it by that), and leaves the marker, marked finished, as a notice for
the client's return (until the cleaner's ``notice_ttl``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final

__all__ = [
    "MAX_PURGE_RECORD",
    "purge_durable",
    "purge_finished",
    "purge_record",
    "read_purge_record",
]

# At most this many bytes of topics in a marker (far below a node's 1 MiB):
# a client with more topics hears of those named, and of those it has a
# queue or a subscription for.
MAX_PURGE_RECORD: Final = 256 * 1024


def purge_record(topics: Iterable[str], *, durable: bool = False, finished: bool = False) -> bytes:
    """A marker's data: ``{"topics": [...]}``, sorted, as many as fit in
    :data:`MAX_PURGE_RECORD` bytes; with ``"durable": true`` while a purge
    of a client with durable subscriptions is under way, ``"finished":
    true`` for the notice it leaves."""
    named: list[str] = []
    size = len(b'{"topics": []}')
    for topic in sorted(set(topics)):
        size += len(json.dumps(topic).encode()) + 2
        if size > MAX_PURGE_RECORD:
            break
        named.append(topic)
    if finished:
        return json.dumps({"topics": named, "finished": True}).encode()
    if durable:
        return json.dumps({"topics": named, "durable": True}).encode()
    return json.dumps({"topics": named}).encode()


def _document(data: bytes) -> object:
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None


def read_purge_record(data: bytes) -> list[str]:
    """The topics a marker names (none for an empty marker, as an older
    cleaner writes, or one that is not a record)."""
    doc = _document(data)
    topics = doc.get("topics") if isinstance(doc, dict) else None
    if not isinstance(topics, list):
        return []
    return [t for t in topics if isinstance(t, str) and t]


def purge_finished(data: bytes) -> bool:
    """Whether a marker is the notice of a finished purge (not one under way)."""
    doc = _document(data)
    return isinstance(doc, dict) and doc.get("finished") is True


def purge_durable(data: bytes) -> bool:
    """Whether a marker is of a client with durable subscriptions (a purge
    of it under way, or its notice): its purge ends in a notice."""
    doc = _document(data)
    return isinstance(doc, dict) and (doc.get("durable") is True or doc.get("finished") is True)
