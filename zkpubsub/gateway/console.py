"""The web console at ``/ui``: a live view of the bus in a browser.

The page (plain HTML and a little JavaScript, served from this package,
nothing fetched from elsewhere) shows the clients, the topics with their
subscribers and backlogs, the work queues with their ready, reserved and
dead items and each dead letter's reason, and the cleaner's leader. It lets
an operator publish a test message and replay dead letters, through the
gateway's own endpoints and with the token the operator typed in (kept in
the browser tab's ``sessionStorage``, sent as ``Authorization: Bearer``).

What the page reads is a *snapshot* (:func:`console_snapshot`), taken with
an :class:`~zkpubsub.Observer`, which writes nothing. ``GET /ui/state``
answers one; ``GET /ui/events`` is a Server-Sent Events stream of them:
a ``snapshot`` event on connect, then every ``interval`` seconds either a
``snapshot`` (the bus changed) or an ``alive`` event carrying the time
(nothing changed); a snapshot that cannot be taken (ZooKeeper unreachable)
is a ``problem`` event, and the stream goes on. Pages open at the same
time share their snapshots: the bus is read about once an interval however
many look. Both routes need the token the gateway's ``authorize``
dependency accepts; the page itself does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import NotFound, ZkPubSubError
from ..observer import Observer
from ..stats import BusStats
from ..workqueue.records import DeadItem
from .problems import without_paths

__all__ = ["DEAD_LETTERS_SHOWN", "console_router", "console_snapshot"]

logger = logging.getLogger(__name__)

# The dead letters a snapshot lists per queue (the oldest; the count is exact).
DEAD_LETTERS_SHOWN: Final = 50
# How much of a dead letter's payload a snapshot shows, in characters.
PAYLOAD_PREVIEW: Final = 200

_ASSETS: Final = {
    "console.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
# The page runs only its own script and talks only to the gateway it came from.
_PAGE_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def console_snapshot(observer: Observer) -> dict[str, Any]:
    """What the console shows, as a JSON-able dict, read through ``observer``.

    Keys: ``root``; ``at`` (seconds since the epoch); ``clients`` (``id``,
    ``host``, ``pid``, ``started``, ``version``); ``topics`` (``name``, its
    total ``backlog`` and its ``subscribers``: ``client_id``, ``backlog``,
    ``live`` whether the client is registered, ``subscribed`` whether it is
    a subscriber of the topic now, ``changes`` the queue's count of created
    and deleted nodes, ``segments`` each segment's ``[number, created,
    nodes, zxid]`` and ``loose`` the nodes from before segments, from which two
    snapshots give rates, as :func:`~zkpubsub.stats.moved_between` says); ``work_queues``
    (``name``, ``ready``, ``reserved``, ``dead``, ``workers`` and
    ``dead_letters``: the oldest :data:`DEAD_LETTERS_SHOWN` with ``id``,
    ``name``, ``reason``, ``attempts``, ``priority``, ``died_at`` and a
    ``payload`` preview); ``cleaner`` (``leader``, a client id or ``None``,
    and ``candidates``).

    Blocks on ZooKeeper requests (call it in a thread from async code);
    raises what the observer raises (:class:`~zkpubsub.ZkPubSubError`).
    """
    stats = observer.stats()
    leader = observer.cleaner_leader()
    return {
        "root": stats.root,
        "at": time.time(),
        "clients": [
            {
                "id": info.client_id,
                "host": info.host,
                "pid": info.pid,
                "started": info.started,
                "version": info.version,
            }
            for info in stats.client_info
        ],
        "topics": _topics(stats),
        "work_queues": [
            {
                "name": queue.name,
                "ready": queue.ready,
                "reserved": queue.reserved,
                "dead": queue.dead,
                "workers": queue.workers,
                "dead_letters": _dead_letters(observer, queue.name) if queue.dead else [],
            }
            for queue in stats.work_queues
        ],
        "cleaner": {"leader": leader, "candidates": stats.cleaner_candidates},
    }


def _topics(stats: BusStats) -> list[dict[str, Any]]:
    topics = []
    live = set(stats.clients)
    for topic in stats.topic_names:
        queues = {q.client_id: q for q in stats.queues_of(topic)}
        # a subscriber whose queue is not made yet has an empty one
        ids = sorted(set(queues) | set(stats.topics.get(topic, ())))
        backlogs = {cid: queues[cid].backlog if cid in queues else 0 for cid in ids}
        subscribers = [
            {
                "client_id": cid,
                "backlog": backlogs[cid],
                "live": cid in live,
                "subscribed": cid in stats.topics.get(topic, ()),
                "changes": queues[cid].changes if cid in queues else 0,
                "segments": [
                    [seg.number, seg.created, seg.nodes, seg.zxid]
                    for seg in (queues[cid].segments if cid in queues else ())
                ],
                "loose": queues[cid].loose if cid in queues else 0,
            }
            for cid in ids
        ]
        topics.append(
            {"name": topic, "backlog": sum(backlogs.values()), "subscribers": subscribers}
        )
    return topics


def _dead_letters(observer: Observer, queue: str) -> list[dict[str, Any]]:
    try:
        letters = observer.dead(queue, limit=DEAD_LETTERS_SHOWN)
    except NotFound:  # the queue went away since the stats were read
        return []
    return [_dead_letter(letter) for letter in letters]


def _dead_letter(letter: DeadItem) -> dict[str, Any]:
    return {
        "id": letter.id,
        "name": letter.name,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "priority": letter.priority,
        "died_at": letter.died_at,
        "payload": _preview(letter.payload),
    }


def _preview(payload: Any) -> str:
    if isinstance(payload, (bytes, bytearray)):
        text = repr(bytes(payload))
    else:
        try:
            text = json.dumps(payload, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):
            text = repr(payload)
    if len(text) > PAYLOAD_PREVIEW:
        return text[: PAYLOAD_PREVIEW - 1] + "…"
    return text


def _asset(name: str) -> bytes:
    return (
        resources.files(__package__ or "zkpubsub.gateway")
        .joinpath("static")
        .joinpath(name)
        .read_bytes()
    )


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _unchanged_key(snapshot: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in snapshot.items() if k != "at"}, sort_keys=True)


def console_router(
    observe: Callable[[], Awaitable[dict[str, Any]]],
    authorize: Callable[..., Any],
    *,
    interval: float = 1.0,
    closing: asyncio.Event | None = None,
) -> APIRouter:
    """The console's routes: ``GET /ui`` (the page and its assets, open to
    anyone: they hold no data), ``GET /ui/state`` (one snapshot) and
    ``GET /ui/events`` (the stream), both behind the ``authorize``
    dependency. ``observe`` takes a snapshot (:func:`console_snapshot`
    in a thread); the stream looks every ``interval`` seconds, and ends
    once ``closing`` is set (the server is shutting down)."""
    if interval <= 0:
        raise ValueError(f"interval must be > 0, not {interval!r}")
    assets = {name: (_asset(name), media) for name, media in _ASSETS.items()}
    latest = _Latest(observe, interval / 2).get
    router = APIRouter(tags=["console"])

    @router.get("/ui", include_in_schema=False)
    async def page() -> Response:
        body, media = assets["console.html"]
        return Response(
            body,
            media_type=media,
            headers={"Content-Security-Policy": _PAGE_POLICY, "Cache-Control": "no-cache"},
        )

    def serve(name: str) -> Callable[[], Awaitable[Response]]:
        async def asset() -> Response:
            body, media = assets[name]
            return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

        return asset

    for name in ("console.js", "console.css"):
        router.add_api_route(f"/ui/{name}", serve(name), methods=["GET"], include_in_schema=False)

    @router.get(
        "/ui/state",
        dependencies=[Depends(authorize)],
        summary="A snapshot of the bus, as the console shows it",
    )
    async def state() -> JSONResponse:
        return JSONResponse(await latest(), headers={"Cache-Control": "no-store"})

    @router.get(
        "/ui/events",
        dependencies=[Depends(authorize)],
        summary="Server-Sent Events: snapshots of the bus as it changes",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(
            _stream(latest, request, interval, closing or asyncio.Event()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router


class _Latest:
    """One snapshot shared by every console looking within ``max_age``
    seconds: however many pages are open, the bus is read about once an
    interval. A failed read is shared the same way: the consoles that waited
    for it get its error, not a read each of their own, one after another
    (each waiting for a ZooKeeper that does not answer)."""

    def __init__(self, observe: Callable[[], Awaitable[dict[str, Any]]], max_age: float) -> None:
        self._observe = observe
        self._max_age = max_age
        self._lock = asyncio.Lock()
        self._value: dict[str, Any] | ZkPubSubError | None = None
        self._taken = 0.0

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._value is None or time.monotonic() - self._taken >= self._max_age:
                try:
                    self._value = await self._observe()
                except ZkPubSubError as exc:
                    self._value = exc
                self._taken = time.monotonic()
            if isinstance(self._value, ZkPubSubError):
                raise self._value
            return self._value


async def _stream(
    observe: Callable[[], Awaitable[dict[str, Any]]],
    request: Request,
    interval: float,
    closing: asyncio.Event,
) -> AsyncIterator[str]:
    last: str | None = None
    failing = False
    while not closing.is_set() and not await request.is_disconnected():
        try:
            snapshot = await observe()
        except ZkPubSubError as exc:
            # once per outage (not every second) at WARNING
            logger.log(logging.DEBUG if failing else logging.WARNING, "console: %s", exc)
            failing, last = True, None  # the next snapshot is sent whatever it holds
            detail = without_paths(str(exc))  # as every problem the gateway answers
            yield _event("problem", {"title": type(exc).__name__, "detail": detail})
        else:
            failing = False
            key = _unchanged_key(snapshot)
            if key != last:
                last = key
                yield _event("snapshot", snapshot)
            else:
                yield _event("alive", {"at": snapshot.get("at", time.time())})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(closing.wait(), interval)
