"""The web console at ``/ui`` (a placeholder: a page and the state as JSON).

``console_router(observe, authorize)`` serves ``GET /ui`` (the page, no
auth: it asks for a token), ``GET /ui/state`` (``observe()``'s snapshot)
and ``GET /ui/events`` (the snapshot as Server-Sent Events); ``authorize``
is the FastAPI dependency that admits admin tokens.
``console_snapshot(observer)`` reads the snapshot (blocking: call it on a
thread).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, StreamingResponse

from ..observer import Observer

__all__ = ["console_router", "console_snapshot"]

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>zkpubsub console</title></head>
<body><h1>zkpubsub console</h1><p>The console is not built into this gateway yet.</p></body>
</html>
"""


def console_snapshot(observer: Observer) -> dict[str, Any]:
    """What the console shows, as JSON-ready data."""
    return {"topics": []}


def console_router(
    observe: Callable[[], Awaitable[dict[str, Any]]], authorize: Callable[..., Any]
) -> APIRouter:
    router = APIRouter(tags=["console"])

    @router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return _PAGE

    @router.get("/ui/state", dependencies=[Depends(authorize)])
    async def state() -> dict[str, Any]:
        return await observe()

    @router.get("/ui/events", dependencies=[Depends(authorize)])
    async def events() -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            while True:
                yield f"event: state\ndata: {json.dumps(await observe())}\n\n"
                await asyncio.sleep(2.0)

        return StreamingResponse(stream(), media_type="text/event-stream")

    return router
