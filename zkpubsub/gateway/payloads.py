"""Payloads in and out of HTTP: request bodies by content type, headers by
name, and payloads written into JSON answers.

A body becomes the payload by its ``Content-Type``:

* ``application/json`` (or any ``+json`` type): the JSON value;
* ``text/plain``: the text, a ``str`` (``charset`` honoured, UTF-8 by default);
* ``application/octet-stream``: the bytes.

Message headers travel as request headers ``Zkpubsub-Header-<name>:
<value>``; HTTP header names are case-insensitive, so ``<name>`` arrives
lower-cased.

In JSON answers a payload is ``"payload": <JSON value>``, except bytes,
which are ``"payload_base64": "<base64>"`` (and bytes nested in a value are
written as base64 strings).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import json
import math
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from fastapi import Request, Response
from fastapi.routing import APIRoute

from .auth import principal_of
from .context import state_of
from .problems import Problem

__all__ = [
    "HEADER_PREFIX",
    "MAX_DEPTH",
    "SMALL_BODY",
    "SmallBodyRoute",
    "decode_base64",
    "json_of",
    "message_headers",
    "payload_fields",
    "read_body",
    "read_json",
    "read_payload",
    "too_deep",
]

HEADER_PREFIX: Final = "zkpubsub-header-"
# The limit of every JSON body that carries no payload (subscriptions,
# pulls, acks, reserves, releases, extensions, replays).
SMALL_BODY: Final = 64 * 1024
# The deepest nesting of arrays and objects a body (or a payload handed
# out) may have: writing JSON recurses, and a payload read back deeper than
# the interpreter can go would fail each time it was handed out.
MAX_DEPTH: Final = 100


def _too_large(limit: int, size: int | None = None) -> Problem:
    said = f"the body is {size} bytes, over" if size is not None else "the body is over"
    return Problem(
        413,
        "payload-too-large",
        "Payload too large",
        f"{said} the limit of {limit} bytes",
        limit=limit,
        # the rest of the body is not read: the connection ends with the answer
        headers={"Connection": "close"},
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 problem once it passes ``limit`` bytes
    (before reading it when ``Content-Length`` says so), or a 408 problem
    if it has not all arrived within the gateway's body timeout."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, int(declared))

    async def arrived() -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    timeout = state_of(request).settings.body_timeout
    try:
        return await asyncio.wait_for(arrived(), timeout)
    except asyncio.TimeoutError:
        raise Problem(
            408,
            "body-timeout",
            "Request body too slow",
            f"the request's body did not arrive within {timeout:g}s",
            error="BodyTimeout",
            headers={"Connection": "close"},
        ) from None


def _codec(charset: str) -> str:
    """A charset's codec name (``utf8`` and ``UTF-8`` are ``utf-8``); an
    unknown one as given (its decoding fails anyway)."""
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return charset.lower()


def _media_type(request: Request) -> tuple[str, dict[str, str]]:
    value = request.headers.get("content-type", "")
    kind, *params = (p.strip() for p in value.split(";"))
    options = {}
    for p in params:
        key, _, val = p.partition("=")
        options[key.strip().lower()] = val.strip().strip('"')
    return kind.lower(), options


def is_json(kind: str) -> bool:
    return kind == "application/json" or kind.endswith("+json")


def _unsupported(kind: str, accepted: str) -> Problem:
    return Problem(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        f"Content-Type {kind or '(none)'!r} is not accepted here; send {accepted}",
    )


def parse_json(body: bytes) -> Any:
    """The JSON of ``body``: standard JSON only (``NaN`` and ``Infinity``,
    numbers too large for a float and integers beyond 64 bits are refused,
    as nesting deeper than :data:`MAX_DEPTH` is), else a 400."""
    try:
        value = json.loads(
            body,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_int64,
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "bad-json", "Malformed JSON", f"the body is not JSON: {exc}") from None
    except RecursionError:
        pass  # too deep for the parser: said below
    else:
        deep, lone = _walk(value, strings=b"\\u" in body)
        if not deep:
            if lone is not None:
                raise Problem(
                    400,
                    "bad-json",
                    "Malformed JSON",
                    f"the body holds the lone surrogate \\u{ord(lone):04x}, which is no text",
                )
            return value
    raise Problem(
        400,
        "bad-json",
        "Malformed JSON",
        f"the body is nested deeper than {MAX_DEPTH} levels (arrays and objects)",
    )


def too_deep(value: Any) -> bool:
    """Whether ``value`` nests arrays and objects deeper than
    :data:`MAX_DEPTH` (looked at without recursion)."""
    return _walk(value, strings=False)[0]


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _walk(value: Any, *, strings: bool) -> tuple[bool, str | None]:
    """One walk of ``value`` (without recursion): whether it nests arrays
    and objects deeper than :data:`MAX_DEPTH`, and, if ``strings``, a lone
    surrogate in its strings (keys too). JSON lets ``\\ud800`` be written,
    but no text holds it (an escaped pair is read as the one character it
    makes)."""
    lone: str | None = None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            found = None
            if strings and lone is None and not item.isascii():
                found = _SURROGATE.search(item)
            if found:
                lone = found.group()
            continue
        if isinstance(item, Mapping):
            children: Any = item.values()
            if strings:
                stack.extend((key, depth) for key in item)
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            return True, None
        stack.extend((child, depth + 1) for child in children)
    return False, lone


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _int64(text: str) -> int:
    number = int(text)
    if not -(2**63) <= number < 2**64:  # what a message's encoding carries
        raise ValueError(f"{text[:40]}{'...' if len(text) > 40 else ''} is beyond 64 bits")
    return number


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of a JSON number's range")
    return number


async def read_payload(request: Request, limit: int) -> tuple[Any, bytes]:
    """The payload of a request by its ``Content-Type`` (see the module doc),
    and the bytes that made it (media type and body)."""
    kind, options = _media_type(request)
    if not (is_json(kind) or kind in ("text/plain", "application/octet-stream")):
        raise _unsupported(kind, "application/json, text/plain or application/octet-stream")
    body = await read_body(request, limit)
    charset = _codec(options.get("charset", "utf-8")) if kind == "text/plain" else ""
    raw = kind.encode() + b";" + charset.encode() + b"\0" + body
    if is_json(kind):
        return parse_json(body), raw
    if kind == "text/plain":
        charset = options.get("charset", "utf-8")
        try:
            return body.decode(charset), raw
        except (LookupError, UnicodeError) as exc:  # some codecs raise the bare UnicodeError
            raise Problem(
                400, "bad-text", "Undecodable text", f"the body is not {charset} text: {exc}"
            ) from None
    return body, raw


async def read_json(request: Request, limit: int, *, empty: Any = None) -> Any:
    """A JSON request body (``empty`` when there is none)."""
    return json_of(request, await read_body(request, limit), empty)


def json_of(request: Request, body: bytes, empty: Any = None) -> Any:
    """The JSON of ``request``'s ``body`` (``empty`` when it is blank): a
    415 problem for another Content-Type, a 400 for bad JSON."""
    if not body.strip():
        return empty
    kind, _ = _media_type(request)
    if kind and not is_json(kind):
        raise _unsupported(kind, "application/json")
    return parse_json(body)


def message_headers(request: Request) -> dict[str, str]:
    """The message headers given as ``Zkpubsub-Header-<name>`` request
    headers, their values read as UTF-8 (a 400 if they are not)."""
    headers = {}
    for key, value in request.headers.items():  # values as Latin-1, byte for byte
        if key.startswith(HEADER_PREFIX) and len(key) > len(HEADER_PREFIX):
            try:
                headers[key[len(HEADER_PREFIX) :]] = value.encode("latin-1").decode("utf-8")
            except UnicodeError:
                raise Problem(
                    400, "bad-request", "Bad request", f"the value of header {key} is not UTF-8"
                ) from None
    return headers


def decode_base64(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise Problem(400, "bad-request", "Bad request", f"{where} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Problem(400, "bad-request", "Bad request", f"{where} is not base64: {exc}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _not_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or an infinity (looked at without
    recursion): a number JSON has no way to write."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def payload_fields(payload: Any) -> dict[str, Any]:
    """``{"payload": ...}`` or, for bytes, ``{"payload_base64": ...}``. A
    payload nested deeper than :data:`MAX_DEPTH`, or holding a NaN or an
    infinity (published other than through a gateway, which refuses such
    bodies), cannot be written as JSON here: ``{"payload": null,
    "payload_error": ...}`` says so."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return {"payload_base64": base64.b64encode(bytes(payload)).decode()}
    if too_deep(payload):
        return {"payload": None, "payload_error": f"nested deeper than {MAX_DEPTH} levels"}
    if _not_finite(payload):
        return {"payload": None, "payload_error": "holds NaN or an infinity, which JSON cannot"}
    return {"payload": _jsonable(payload)}


class SmallBodyRoute(APIRoute):
    """A route whose request body is JSON of at most :data:`SMALL_BODY`
    bytes, checked before the route's model reads it: a 413 problem past
    the limit, a 415 for another Content-Type, a 400 ``BadJson`` for JSON
    that is not standard or not JSON at all (as :func:`parse_json`). A body
    of only white space is no body. Its callers are authenticated first (a
    401 before any of those)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            principal_of(request)  # who calls, before what they sent
            read = await read_body(request, SMALL_BODY)
            json_of(request, read)  # checked, then read again by the route's model
            # blank is no body, as for the routes that read theirs themselves
            body: bytes | None = read if read.strip() else b""

            async def replay() -> Any:  # the body read, then what the connection says
                nonlocal body
                if body is None:
                    return await request.receive()
                message = {"type": "http.request", "body": body, "more_body": False}
                body = None
                return message

            return await handler(Request(request.scope, replay))

        return limited


class BodyLimit:
    """ASGI middleware: no request body of any route passes ``limit`` bytes
    (a 413 problem), whatever reads it. Routes with their own, smaller
    limits check those themselves."""

    def __init__(self, app: Any, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._limit
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                response = _too_large(limit, int(value)).response(scope.get("path"))
                await response(scope, receive, send)
                return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        await self._app(scope, limited, send)
