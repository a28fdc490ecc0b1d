"""Payload serializers: a small ``dumps`` / ``loads`` interface.

msgpack is the default; JSON and raw bytes are built in; any object with a
``content_type`` and the two methods can be passed as ``serializer=``. The
content type travels with every message, so a subscriber decodes each
message with the serializer it was written with, whatever its own default.
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol, runtime_checkable

import msgpack

from .errors import DecodeError

__all__ = [
    "BUILTIN_SERIALIZERS",
    "JsonSerializer",
    "MsgpackSerializer",
    "RawSerializer",
    "Serializer",
    "SerializerRegistry",
    "resolve",
]


@runtime_checkable
class Serializer(Protocol):
    """Turns payloads into bytes and back.

    ``dumps`` raises ``TypeError`` or ``ValueError`` for a payload it cannot
    represent; zkpubsub reports that as ``SerializationError``.
    """

    @property
    def content_type(self) -> str:
        """A MIME-like name, written into every message it serializes."""
        ...

    def dumps(self, payload: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class MsgpackSerializer:
    """msgpack: bytes, str, numbers, lists, dicts (the default)."""

    content_type: Final = "application/msgpack"

    def dumps(self, payload: Any) -> bytes:
        try:
            return msgpack.packb(payload, use_bin_type=True)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"msgpack cannot serialize {type(payload).__name__}: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)


class JsonSerializer:
    """JSON (UTF-8), for payloads that other tools should read as text."""

    content_type: Final = "application/json"

    def dumps(self, payload: Any) -> bytes:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class RawSerializer:
    """Bytes in, bytes out."""

    content_type: Final = "application/octet-stream"

    def dumps(self, payload: Any) -> bytes:
        if isinstance(payload, (bytes, bytearray, memoryview)):
            return bytes(payload)
        raise TypeError(f"the raw serializer takes bytes, not {type(payload).__name__}")

    def loads(self, data: bytes) -> Any:
        return data


BUILTIN_SERIALIZERS: Final[tuple[Serializer, ...]] = (
    MsgpackSerializer(),
    JsonSerializer(),
    RawSerializer(),
)


_OURS: Final = (MsgpackSerializer, JsonSerializer, RawSerializer)


def resolve(serializer: Serializer | str | None) -> Serializer:
    """A serializer instance from an instance, a short name or ``None``."""
    if serializer is None:
        return BUILTIN_SERIALIZERS[0]
    if isinstance(serializer, str):
        names = {"msgpack": 0, "json": 1, "raw": 2}
        if serializer not in names:
            raise ValueError(f"unknown serializer {serializer!r}; use one of {sorted(names)}")
        return BUILTIN_SERIALIZERS[names[serializer]]
    if not isinstance(serializer, Serializer):
        raise TypeError("serializer needs content_type, dumps() and loads()")
    kind = serializer.content_type
    if not isinstance(kind, str) or not kind:  # every reader would refuse the messages
        raise TypeError(f"a serializer's content_type must be a non-empty str, not {kind!r}")
    if not kind.isprintable():  # a lone surrogate, a control character
        raise ValueError(f"a serializer's content_type must be printable text, not {kind!r}")
    return serializer


class SerializerRegistry:
    """The serializers a client can read: the built-in ones and its own.

    Readers (subscriptions, work queues, tickets) decode every payload
    through :meth:`loads`, so an unknown content type or a payload its
    serializer refuses is always the same :class:`~zkpubsub.DecodeError`.
    """

    def __init__(self, default: Serializer) -> None:
        self.default = default
        self._by_type: dict[str, Serializer] = {s.content_type: s for s in BUILTIN_SERIALIZERS}
        self._by_type[default.content_type] = default

    def get(self, content_type: str) -> Serializer | None:
        return self._by_type.get(content_type)

    def ours(self, content_type: str) -> bool:
        """Whether ``content_type`` is read by a serializer of this library
        (no code of the user's runs to read it)."""
        return type(self._by_type.get(content_type)) in _OURS

    def loads(self, content_type: str, body: bytes, *, path: str, data: bytes) -> Any:
        """The payload ``body`` of ``content_type``, read from the node
        ``path`` whose raw bytes are ``data``; :class:`DecodeError` if no
        serializer knows the type or it refuses the body."""
        serializer = self._by_type.get(content_type)
        if serializer is None:
            raise DecodeError(
                f"no serializer for content type {content_type!r}", path=path, data=data
            )
        try:
            return serializer.loads(body)
        except Exception as exc:
            raise DecodeError(
                f"payload is not valid {content_type}: {exc}", path=path, data=data, error=exc
            ) from exc
