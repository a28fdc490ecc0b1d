"""Errors as RFC 9457 problem details: every failure the gateway answers.

Every error response is ``application/problem+json`` with ``type`` (a
``urn:zkpubsub:problem:<slug>`` URI), ``title``, ``status`` and
``detail``, plus ``error``: the library's error class name when the library
raised it (``PayloadTooLarge``, ``QueueFull``...), else the gateway's own
name for the failure (``BadRequest``, ``Unauthorized``...). Library errors
that carry data add it (``size`` and ``limit`` of a ``PayloadTooLarge``).

Nothing internal leaks: an unexpected exception is logged with its
traceback and answered with a 500 problem that says only that it happened;
no response, problem or log line names ZooKeeper credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Iterator
from typing import Any, Final, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import errors

__all__ = [
    "LONG_POLL_GRACE",
    "PROBLEM_JSON",
    "Problem",
    "bad_input",
    "by_the_wait",
    "install_problem_handlers",
    "problem_for",
    "without_paths",
]

logger = logging.getLogger(__name__)

PROBLEM_JSON: Final = "application/problem+json"

# (status, slug, title) of each library error; the first class of an
# error's MRO found here answers for it.
_LIBRARY: Final[dict[type[BaseException], tuple[int, str, str]]] = {
    errors.PayloadTooLarge: (413, "payload-too-large", "Payload too large"),
    errors.SerializationError: (422, "unserializable", "Payload cannot be serialized"),
    errors.NoSubscribers: (409, "no-subscribers", "The topic has no subscribers"),
    errors.AlreadySubscribed: (409, "already-subscribed", "Already subscribed"),
    errors.ReservationLost: (409, "reservation-lost", "Reservation lost"),
    errors.QueueFull: (503, "queue-full", "Work queue full"),
    errors.ItemFailed: (409, "item-failed", "The item went to the dead letters"),
    errors.NotFound: (404, "not-found", "Not found"),
    errors.ClientIdInUse: (409, "held-elsewhere", "Held by another gateway"),
    errors.PublishTimeout: (504, "publish-timeout", "Publish not confirmed in time"),
    errors.PartlyPublished: (502, "partly-published", "Published to some subscribers only"),
    errors.ConnectTimeout: (503, "zookeeper-unavailable", "ZooKeeper unreachable"),
    errors.OperationTimeout: (504, "timeout", "Timed out"),
    errors.ConnectionLost: (503, "zookeeper-unavailable", "ZooKeeper unreachable"),
    errors.ClientClosed: (503, "closing", "The gateway is closing"),
    errors.NotAuthorized: (403, "zookeeper-refused", "ZooKeeper refused the request"),
    errors.SecurityError: (502, "zookeeper-security", "The gateway's ZooKeeper login failed"),
    errors.DecodeError: (502, "undecodable", "A stored message could not be decoded"),
    errors.ZooKeeperError: (502, "zookeeper-error", "ZooKeeper returned an error"),
    errors.ZkPubSubError: (502, "bus-error", "The bus failed"),
}

# Data a library error carries that a client may act on (never a path,
# which names the bus's layout, nor anything credential-like).
_CARRIED: Final = (
    "size",
    "limit",
    "topic",
    "queue",
    "item_id",
    "items",
    "reason",
    "sent",
    "reached",
)


class Problem(StarletteHTTPException):
    """An error answered as a problem document. ``extra`` members are added
    to the document; ``headers`` to the response. (An HTTP exception, so a
    problem raised while a body is read reaches its handler as it is.)"""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        error: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status, detail, headers)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.error = error or "".join(w.capitalize() for w in slug.split("-"))
        self.headers = headers or {}
        self.extra = extra

    def document(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": f"urn:zkpubsub:problem:{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "error": self.error,
        }
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc

    def response(self, instance: str | None = None) -> JSONResponse:
        return JSONResponse(
            self.document(instance),
            status_code=self.status,
            headers=self.headers,
            media_type=PROBLEM_JSON,
        )


def problem_for(exc: errors.ZkPubSubError) -> Problem:
    """The problem answering a library error."""
    for cls in type(exc).__mro__:
        if cls in _LIBRARY:
            status, slug, title = _LIBRARY[cls]
            break
    else:  # pragma: no cover - ZkPubSubError is in the table
        status, slug, title = 502, "bus-error", "The bus failed"
    if isinstance(exc, errors.PublishTimeout) and not exc.sent:
        status = 503  # never sent: safe to retry
    extra = {k: getattr(exc, k) for k in _CARRIED if _plain(getattr(exc, k, None))}
    if isinstance(exc, (errors.PublishTimeout, errors.PartlyPublished)):
        extra["message_ids"] = list(exc.message_ids)
    if isinstance(exc, errors.PartlyPublished):
        extra["cause"] = type(exc.cause).__name__
    if isinstance(exc, errors.QueueFull) and exc.put_ids:  # a replay part-way
        extra["put_ids"] = list(exc.put_ids)
    headers = {"Retry-After": "1"} if status == 503 else None
    detail = str(exc)
    if isinstance(exc, errors.ClientIdInUse):  # its text names the holder's host and pid
        detail = (
            f"client id {exc.client_id!r} is held by another live session "
            "(another gateway, or one whose session has not ended yet)"
        )
    return Problem(
        status,
        slug,
        title,
        without_paths(detail),
        error=type(exc).__name__,
        headers=headers,
        **extra,
    )


# A ZooKeeper path in an error's text: one or more segments from the root.
_PATH: Final = re.compile(r"(?<![\w.])/[^\s/:'\",()]+(?:/[^\s/:'\",()]*)*")


def without_paths(text: str) -> str:
    """``text`` with every ZooKeeper path in it (which names the bus's
    layout) replaced by ``<node>``."""
    return _PATH.sub("<node>", text)


def _plain(value: object) -> bool:
    return isinstance(value, (str, int, float, bool)) and value is not None


T = TypeVar("T")

# A long poll's own requests wait the request timeout when ZooKeeper does
# not answer; the poll ends this long after its wait all the same.
LONG_POLL_GRACE: Final = 1.0


async def by_the_wait(work: Awaitable[T], wait: float, what: str, unanswered: str) -> T:
    """``work``, cancelled unless done :data:`LONG_POLL_GRACE` after a long
    poll's ``wait``: then a 503 ``ConnectionLost`` problem saying no answer
    came from ZooKeeper within ``what``'s wait, and ``unanswered`` (what
    became of the request). The library's own time-outs pass through."""
    try:
        return await asyncio.wait_for(work, wait + LONG_POLL_GRACE)
    except errors.OperationTimeout:
        raise  # the library's own (a TimeoutError too, on Python 3.11+): its 504
    except asyncio.TimeoutError:
        raise Problem(
            503,
            "zookeeper-unavailable",
            "ZooKeeper unreachable",
            f"no answer from ZooKeeper within the {what}'s wait ({wait:g}s); {unanswered}",
            error="ConnectionLost",
            headers={"Retry-After": "1"},
        ) from None


@contextlib.contextmanager
def bad_input(what: str) -> Iterator[None]:
    """Around a library call given the request's input: a ``ValueError`` or
    ``TypeError`` it raises about that input is a 400 problem (library
    errors pass through to their own handler)."""
    try:
        yield
    except errors.ZkPubSubError:
        raise
    except (ValueError, TypeError) as exc:
        raise Problem(400, "bad-request", "Bad request", f"{what}: {exc}") from exc


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem document."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return exc.response(request.url.path)

    async def on_library(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.ZkPubSubError)
        problem = problem_for(exc)
        if problem.status >= 500:
            logger.warning("%s %s: %s: %s", request.method, request.url.path, problem.error, exc)
        return problem.response(request.url.path)

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        reasons = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()))
            reasons.append({"where": where, "reason": str(e.get("msg", "invalid"))})
        detail = "; ".join(f"{r['where']}: {r['reason']}" for r in reasons) or "invalid request"
        problem = Problem(
            422, "invalid-request", "Invalid request", detail, error="RequestValidationError"
        )
        problem.extra["errors"] = reasons
        return problem.response(request.url.path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        slug = {404: "no-route", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        problem = Problem(
            exc.status_code, slug, title, str(exc.detail), headers=dict(exc.headers or {})
        )
        return problem.response(request.url.path)

    async def on_gone(request: Request, exc: Exception) -> JSONResponse:
        # the client left while it sent its body: nobody reads the answer
        logger.debug(
            "%s %s: the client left before its body was in", request.method, request.url.path
        )
        problem = Problem(
            400,
            "client-disconnected",
            "Client disconnected",
            "the client left before its request's body was in; nothing was done",
            headers={"Connection": "close"},
        )
        return problem.response(request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        problem = Problem(
            500,
            "internal",
            "Internal error",
            "the gateway failed to answer this request; the failure is in its log",
            error="InternalError",
        )
        return problem.response(request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(errors.ZkPubSubError, on_library)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_gone)
    app.add_exception_handler(Exception, on_unexpected)
