"""Durable subscriptions over HTTP: make, pull, ack, stream, end.

``PUT /subscriptions/{name}`` makes one (see :mod:`.consumers` for what it
guarantees); ``POST .../pull`` hands messages out with ack ids,
``POST .../ack`` acks them, ``GET .../events`` streams them as
Server-Sent Events, ``DELETE`` ends the subscription and deletes its queues.

The event stream's ack modes (``?ack=``):

* ``explicit`` (the default): each event carries its ack id (the SSE
  ``id:`` and ``ack_id`` in the data); acknowledge it with
  ``POST .../ack``. One not acked within the ack deadline is sent again.
* ``auto``: a message counts as acked once its event was written to the
  connection. One lost with the connection afterwards is lost: use
  ``explicit`` when every message matters.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from ..state import Gap
from .auth import Caller
from .consumers import HttpSubscription, Lent
from .context import state_of
from .disconnects import client_gone
from .models import (
    AckRequest,
    AckResult,
    GapNotice,
    PulledMessage,
    PullRequest,
    PullResult,
    SubscriptionAnswer,
    SubscriptionRequest,
    problem_responses,
)
from .payloads import SmallBodyRoute, payload_fields
from .problems import Problem, by_the_wait

__all__ = ["router"]

# no body of these routes carries a payload: each is held to SMALL_BODY
router = APIRouter(tags=["subscriptions"], route_class=SmallBodyRoute)

# An idle event stream sends a comment this often, so proxies keep it open.
KEEPALIVE = 15.0
# Messages one event-stream round takes at most.
STREAM_BATCH = 64


def _answer(held: HttpSubscription) -> SubscriptionAnswer:
    return SubscriptionAnswer(
        name=held.name,
        topics=held.topics,
        ack_deadline=held.ack_deadline,
        outstanding=len(held.out),
        waiting=len(held.waiting),
    )


def _notice(gap: Gap) -> GapNotice:
    return GapNotice(
        topics=sorted(gap.topics),
        reason=gap.reason,
        since=gap.since,
        until=gap.until,
        missed=gap.missed,
    )


def _pulled(lent: Lent) -> PulledMessage:
    m = lent.message
    return PulledMessage(
        ack_id=lent.ack_id,
        id=m.id,
        topic=m.topic,
        headers=dict(m.headers),
        published_at=m.published_at,
        publisher_id=m.publisher_id,
        deliveries=lent.deliveries,
        **payload_fields(m.payload),
    )


@router.put(
    "/subscriptions/{name}",
    response_model=SubscriptionAnswer,
    status_code=200,
    summary="Make or change a durable subscription",
    description="201 when made, 200 when it existed (its topics are then set to these: "
    "a topic left out is unsubscribed and its queue deleted). From now on every message "
    "published to these topics is kept for it until acked.",
    responses=problem_responses(
        400, 401, 403, 409, 422, extra={201: {"model": SubscriptionAnswer, "description": "Made"}}
    ),
)
async def put_subscription(
    name: str,
    body: SubscriptionRequest,
    request: Request,
    response: Response,
    principal: Caller,
) -> SubscriptionAnswer:
    principal.require("subscription", name)
    held, created = await state_of(request).consumers.put(name, body.topics, principal)
    if created:
        response.status_code = 201
    return _answer(held)


@router.get(
    "/subscriptions/{name}",
    response_model=SubscriptionAnswer,
    summary="A subscription's topics and counts",
    responses=problem_responses(401, 403, 404, 409),
)
async def get_subscription(name: str, request: Request, principal: Caller) -> SubscriptionAnswer:
    principal.require("subscription", name)
    return _answer(await state_of(request).consumers.get(name, principal))


@router.delete(
    "/subscriptions/{name}",
    status_code=204,
    summary="End a subscription (its queues and their messages are deleted)",
    description="204 once it is done. With ZooKeeper not answering, a 503 or 504: the "
    "subscription may still exist, and a DELETE again finishes it.",
    responses=problem_responses(401, 403, 404, 409, 503, 504),
)
async def delete_subscription(name: str, request: Request, principal: Caller) -> Response:
    principal.require("subscription", name)
    await state_of(request).consumers.delete(name, principal)
    return Response(status_code=204)


@router.post(
    "/subscriptions/{name}/pull",
    response_model=PullResult,
    summary="Take messages (long poll)",
    description="Up to max messages, waiting up to wait seconds (at most the gateway's "
    "--max-wait) for the first. Each topic hands out its messages in order, one at a "
    "time: the next once this one is acked. Unacked after ack_deadline seconds (default "
    "the gateway's --ack-deadline), a message is handed out again. With auto_ack the "
    "messages count as acked once answered.",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def pull(
    name: str,
    request: Request,
    principal: Caller,
    body: PullRequest | None = None,
) -> PullResult:
    principal.require("subscription", name)
    gw = state_of(request)
    ask = body or PullRequest.model_validate({})
    wait = min(ask.wait, gw.settings.max_wait)
    started = time.monotonic()
    # a subscription this gateway no longer holds is opened again, which
    # needs ZooKeeper; the long poll ends at its wait all the same
    held = await by_the_wait(
        gw.consumers.get(name, principal),
        wait,
        "pull",
        "the subscription could not be opened again here; nothing was handed out",
    )
    left = max(0.0, wait - (time.monotonic() - started))
    async with client_gone(request, held.changed.set) as gone:
        lent = await held.pull(ask.max, left, ask.ack_deadline, ask.auto_ack, gone)
    # gap notices are kept for the next pull unless this answer is read
    told = not gone.is_set() or gw.closing.is_set()
    gaps = held.take_gaps() if told else []
    return PullResult(messages=[_pulled(x) for x in lent], gaps=[_notice(g) for g in gaps])


@router.post(
    "/subscriptions/{name}/ack",
    response_model=AckResult,
    summary="Ack (or nack) pulled messages",
    description="An acked message is done: it is deleted from the subscription's queue. "
    "A nacked one is handed out again at once. Ack ids past their deadline (the message "
    "went back, to be handed out again under a new ack id) are listed as unknown.",
    responses=problem_responses(400, 401, 403, 404, 409, 422),
)
async def ack(
    name: str,
    body: AckRequest,
    request: Request,
    principal: Caller,
) -> AckResult:
    principal.require("subscription", name)
    both = sorted(set(body.ack_ids) & set(body.nack_ids))
    if both:  # refused before anything is acked or nacked
        raise Problem(
            400,
            "bad-request",
            "Bad request",
            f"ack ids both acked and nacked: {', '.join(both[:10])}",
        )
    held = await state_of(request).consumers.get(name, principal)
    done, unknown = held.ack(body.ack_ids, body.nack_ids)
    nacked = set(body.nack_ids)
    return AckResult(
        acked=[a for a in done if a not in nacked],
        nacked=[a for a in done if a in nacked],
        unknown=unknown,
    )


def _event(lent: Lent, auto: bool) -> str:
    doc = _pulled(lent).model_dump()
    if auto:
        doc["ack_id"] = None
    data = json.dumps(doc, separators=(",", ":"))
    head = "" if auto else f"id: {lent.ack_id}\n"
    return f"{head}event: message\ndata: {data}\n\n"


def _gap_event(gap: Gap) -> str:
    data = json.dumps(_notice(gap).model_dump(), separators=(",", ":"))
    return f"event: gap\ndata: {data}\n\n"


@router.get(
    "/subscriptions/{name}/events",
    summary="Stream messages as Server-Sent Events",
    description="Each message is an event 'message' whose data is the pulled message's "
    "JSON. ack=explicit (default): ack each by its ack id (the event id) with /ack; one "
    "not acked within the ack deadline is sent again. ack=auto: a message counts as "
    "acked once written to the connection. What the subscription may have missed is an "
    "event 'gap' (a pull's gap notice as JSON). A comment line keeps an idle stream open.",
    response_class=StreamingResponse,
    responses=problem_responses(
        401,
        403,
        404,
        409,
        extra={200: {"content": {"text/event-stream": {}}, "description": "The stream"}},
    ),
)
async def events(
    name: str,
    request: Request,
    principal: Caller,
    ack: Literal["explicit", "auto"] = Query("explicit", description="How messages are acked."),
    ack_deadline: float | None = Query(None, gt=0, le=3600),
) -> StreamingResponse:
    principal.require("subscription", name)
    gw = state_of(request)
    held = await gw.consumers.get(name, principal)
    auto = ack == "auto"

    async def stream() -> AsyncIterator[str]:
        held.streams += 1
        batch: list[Lent] = []
        try:
            yield "retry: 1000\n: connected\n\n"
            # ends (the client reconnects) when the gateway shuts down
            while not held.closing and not gw.closing.is_set():
                while held.gaps:  # each taken once written
                    yield _gap_event(held.gaps[0])
                    held.gaps.pop(0)
                batch = await held.pull(STREAM_BATCH, KEEPALIVE, ack_deadline, False, gw.closing)
                if not batch and not held.gaps:
                    yield ": keep-alive\n\n"
                    continue
                while batch:
                    lent = batch[0]
                    yield _event(lent, auto)
                    batch.pop(0)
                    if auto and lent.ack_id is not None:
                        held.ack([lent.ack_id], [])
        finally:
            held.streams -= 1
            held.touch()
            # taken and not written: back to the subscription at once
            held.give_back(batch)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
