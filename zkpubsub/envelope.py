"""The bytes inside a message node: a msgpack envelope that may carry a batch.

Format version 1 (documented in docs/wire-format.md)::

    {"v": 1, "msgs": [{"id": str, "pub": str, "ts": float, "topic": str,
                       "h": {str: str}, "ct": str, "p": bin}, ...]}

``id`` is unique per message, ``pub`` the publisher's client id, ``ts`` the
publish time in seconds since the epoch, ``h`` the headers, ``ct`` the
payload's content type and ``p`` the serialized payload.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import msgpack

from .errors import PayloadTooLarge, SerializationError
from .serializers import Serializer

__all__ = [
    "EMPTY_ENVELOPE",
    "ENVELOPE_OVERHEAD",
    "FORMAT_VERSION",
    "Entry",
    "check_headers",
    "check_size",
    "decode",
    "encode",
    "encoded_size",
    "make_entry",
    "new_message_id",
    "pack",
]

FORMAT_VERSION: Final = 1


class Entry(NamedTuple):
    """One message in an envelope, payload still serialized. (A named tuple:
    a subscriber makes one per message it reads, and a tuple is made in a
    third of the time a frozen dataclass takes.)"""

    id: str
    publisher_id: str
    published_at: float
    topic: str
    headers: Mapping[str, str]
    content_type: str
    body: bytes


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of ``headers``; keys and values must be str."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise SerializationError(
            f"headers must be a mapping of str to str, not {type(headers).__name__}"
        )
    out: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SerializationError(
                f"header {key!r}: keys and values must be str, not "
                f"{type(key).__name__} and {type(value).__name__}"
            )
        for text in (key, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise SerializationError(
                    f"header {key!r}: {text!r} is not valid Unicode text ({exc.reason})"
                ) from exc
        out[key] = value
    return out


class _MessageIds:
    """Unique message ids, cheaply: 32 hex digits, a random prefix of 64 bits
    drawn once per process (again in a forked child) and a counter. A
    ``uuid4`` per message asked the kernel for randomness on every publish."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()  # next() on it is atomic: no lock needed

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


_IDS: Final = _MessageIds()
os.register_at_fork(after_in_child=_IDS.reseed)


def new_message_id() -> str:
    """A fresh message id, unique across processes (32 hex digits)."""
    return _IDS.next()


def make_entry(
    serializer: Serializer,
    *,
    topic: str,
    payload: Any,
    headers: dict[str, str],
    publisher_id: str,
) -> Entry:
    """Serialize one payload into an :class:`Entry` with a fresh message id."""
    try:
        body = serializer.dumps(payload)
    except Exception as exc:  # a custom serializer may raise anything
        raise SerializationError(
            f"cannot serialize payload of type {type(payload).__name__} "
            f"with {serializer.content_type}: {exc}"
        ) from exc
    if not isinstance(body, bytes):
        raise SerializationError(
            f"serializer {serializer!r} returned {type(body).__name__}, not bytes"
        )
    return Entry(
        id=new_message_id(),
        publisher_id=publisher_id,
        published_at=time.time(),
        topic=topic,
        headers=headers,
        content_type=serializer.content_type,
        body=body,
    )


def _entry_map(e: Entry) -> dict[str, Any]:
    return {
        "id": e.id,
        "pub": e.publisher_id,
        "ts": e.published_at,
        "topic": e.topic,
        "h": dict(e.headers),
        "ct": e.content_type,
        "p": e.body,
    }


def encode(entries: Sequence[Entry]) -> bytes:
    """The node data for one or more entries."""
    return msgpack.packb(  # type: ignore[no-any-return]
        {"v": FORMAT_VERSION, "msgs": [_entry_map(e) for e in entries]}, use_bin_type=True
    )


def encoded_size(entry: Entry) -> int:
    """The bytes one entry adds to an envelope."""
    return len(msgpack.packb(_entry_map(entry), use_bin_type=True))


EMPTY_ENVELOPE: Final = len(encode([]))
# A batch's message array header grows by up to 4 bytes with its length.
ENVELOPE_OVERHEAD: Final = EMPTY_ENVELOPE + 4


def check_size(entry: Entry, limit: int) -> int:
    """The size of a node holding only ``entry``; :class:`PayloadTooLarge` if
    that is over ``limit``."""
    alone = EMPTY_ENVELOPE + encoded_size(entry)
    if alone > limit:
        raise PayloadTooLarge(alone, limit)
    return alone


def pack(entries: Sequence[Entry], limit: int) -> list[bytes]:
    """Entries packed, in order, into as few envelopes of at most ``limit``
    bytes as they fit in. Raises :class:`PayloadTooLarge` for an entry that
    does not fit even alone."""
    return pack_counted(entries, limit)[0]


def pack_counted(entries: Sequence[Entry], limit: int) -> tuple[list[bytes], list[int]]:
    """:func:`pack`, with how many entries each envelope holds (an overflow
    marker counts messages, not nodes)."""
    nodes: list[bytes] = []
    counts: list[int] = []
    group: list[Entry] = []
    size = ENVELOPE_OVERHEAD
    for entry in entries:
        entry_size = check_size(entry, limit) - EMPTY_ENVELOPE
        if group and size + entry_size > limit:
            nodes.append(encode(group))
            counts.append(len(group))
            group, size = [], ENVELOPE_OVERHEAD
        group.append(entry)
        size += entry_size
    if group:
        nodes.append(encode(group))
        counts.append(len(group))
    for data in nodes:  # the estimate is exact for msgpack, but be sure
        if len(data) > limit:
            raise PayloadTooLarge(len(data), limit)
    return nodes, counts


def decode(data: bytes) -> list[Entry]:
    """The entries of a node; ``ValueError`` says why data is not an envelope."""
    try:
        doc = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ValueError(f"not a msgpack envelope: {exc}") from exc
    if not isinstance(doc, dict) or "v" not in doc or "msgs" not in doc:
        raise ValueError("not a zkpubsub envelope (no 'v' and 'msgs')")
    if doc["v"] != FORMAT_VERSION:
        raise ValueError(
            f"envelope format {doc['v']!r} is not supported (this reads {FORMAT_VERSION})"
        )
    msgs = doc["msgs"]
    if not isinstance(msgs, list):
        raise ValueError("envelope 'msgs' is not a list")
    out: list[Entry] = []
    for raw in msgs:
        try:
            headers = raw.get("h")
            if headers is None:  # missing or nil: none (empty is a map too)
                headers = {}
            ts = raw["ts"]
            if type(ts) is not float and type(ts) is not int:  # not a str, nor a bool
                raise TypeError(f"ts is a {type(ts).__name__}, not a number")
            # Entry(...) without the named tuple's own __new__, a Python function
            entry = tuple.__new__(
                Entry,
                (
                    raw["id"],
                    raw["pub"],
                    float(ts),
                    raw["topic"],
                    headers,
                    raw["ct"],
                    raw["p"],
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed message in envelope: {exc!r}") from exc
        if not (
            type(entry.id) is str
            and type(entry.publisher_id) is str
            and type(entry.topic) is str
            and type(entry.content_type) is str
            and type(entry.body) is bytes
            and type(headers) is dict
        ):
            raise ValueError("malformed message in envelope: a field has the wrong type")
        out.append(entry)
    return out
