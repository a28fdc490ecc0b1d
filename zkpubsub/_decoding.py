"""What a queue node holds, as deliveries (internal).

The pump, or the connection's thread when it reads a node the moment a
watch event names it, turns a node's bytes into deliveries: the envelope
is read at once (it says how many messages the node carries), the
payloads are not. A payload is decoded by its serializer — which may be
the user's — only when the subscription's consumer takes the message
(:meth:`~zkpubsub._buffer.Delivery.resolve`), on the consumer's thread:
never on kazoo's.
"""

from __future__ import annotations

import functools
from typing import Any

from . import envelope
from ._buffer import Delivery, Node
from .backlog import OverflowMark
from .errors import DecodeError
from .layout import parse_queue_entry
from .message import Message
from .serializers import SerializerRegistry

__all__ = ["decode_node"]


def decode_node(
    serializers: SerializerRegistry, path: str, name: str, data: bytes, stat: Any = None
) -> list[Delivery]:
    """The deliveries of one queue node: a message each (decoded when
    taken), a :class:`DecodeError` for what cannot be read, one delivery of
    a node with no message (``remaining == 0``) for an empty envelope, or
    the overflow marker it is."""
    parsed = parse_queue_entry(name.rsplit("/", 1)[-1])
    if parsed is not None and parsed[0] == "o":
        window = (stat.ctime / 1000, stat.mtime / 1000) if stat is not None else (0.0, 0.0)
        try:
            return [Delivery(Node(name, 1), mark=OverflowMark.decode(data), window=window)]
        except ValueError as exc:
            error = DecodeError(str(exc), path=path, data=data, error=exc)
            return [Delivery(Node(name, 1), error=error)]
    try:
        entries = envelope.decode(data)
    except ValueError as exc:
        error = DecodeError(str(exc), path=path, data=data, error=exc)
        return [Delivery(Node(name, 1), error=error)]
    node = Node(name, len(entries))
    if not entries:
        return [Delivery(node)]
    return [
        Delivery(node, decode=functools.partial(_message, serializers, path, data, entry))
        for entry in entries
    ]


def _message(
    serializers: SerializerRegistry, path: str, data: bytes, entry: envelope.Entry
) -> Message:
    payload = serializers.loads(entry.content_type, entry.body, path=path, data=data)
    return Message(
        id=entry.id,
        topic=entry.topic,
        payload=payload,
        headers=entry.headers,
        published_at=entry.published_at,
        publisher_id=entry.publisher_id,
        content_type=entry.content_type,
    )
