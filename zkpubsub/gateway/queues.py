"""Work queues over HTTP: put, reserve with a lease, ack, release, extend,
stats, dead letters, replay and waiting for a ticket's result.

Every guarantee is the library's work queue's: an item is held by one
reservation at a time; an ack or release of a reservation that was lost
(its lease ran out and another worker took the item) is refused with a 409
``ReservationLost`` problem and changes nothing; an item reserved
``max_attempts`` times without an ack becomes a dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any, Final

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ValidationError

from ..aio import AsyncTicket, AsyncWorkQueue
from ..config import MAX_DEAD_LETTERS
from ..errors import ItemFailed, OperationTimeout
from ..layout import validate_name
from .auth import Caller, Principal
from .context import GatewayState, state_of
from .disconnects import client_gone, unless_gone
from .models import (
    DeadLetter,
    ExtendRequest,
    ItemAckRequest,
    PutResult,
    QueueStatsAnswer,
    ReleaseRequest,
    ReplayRequest,
    ReplayResult,
    ReservedItem,
    ReserveRequest,
    ReserveResult,
    TicketAnswer,
    problem_responses,
)
from .payloads import (
    SMALL_BODY,
    SmallBodyRoute,
    message_headers,
    payload_fields,
    read_json,
    read_payload,
)
from .problems import bad_input, by_the_wait
from .reservations import Held
from .results import Kept, Key
from .topics import _SINGLE_BODY, invalid

__all__ = ["router"]


logger = logging.getLogger(__name__)


def _optional_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI description of an optional JSON body of ``model`` (for
    routes that read their body themselves, which FastAPI cannot see)."""
    return {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


router = APIRouter(tags=["queues"])
# routes whose JSON body is a model FastAPI reads (64 KiB at most; included below)
_small = APIRouter(tags=["queues"], route_class=SmallBodyRoute)


async def _handle(gw: GatewayState, principal: Principal, name: str) -> AsyncWorkQueue:
    principal.require("queue", name)
    with bad_input("queue"):
        validate_name(name, "queue name")
    return await gw.bus.queue(principal, name)


async def _body(request: Request, model: type[BaseModel], limit: int = SMALL_BODY) -> Any:
    doc = await read_json(request, limit, empty={})
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise invalid(exc) from None


@router.post(
    "/queues/{queue}/items",
    status_code=201,
    response_model=PutResult,
    summary="Put an item",
    description="The body is the item's payload, by Content-Type (as for publishing); "
    "item headers as 'Zkpubsub-Header-<name>'. With want_result=true the answer names "
    "a ticket to wait on. Honours Idempotency-Key.",
    openapi_extra=_SINGLE_BODY,
    responses=problem_responses(400, 401, 403, 413, 415, 503),
)
async def put(
    queue: str,
    request: Request,
    response: Response,
    principal: Caller,
    priority: int = Query(100, ge=0, le=999, description="0-999, lower first."),
    want_result: bool = Query(False, description="Keep the ack's result for a ticket."),
    idempotency_key: str | None = Header(None),
) -> PutResult:
    gw = state_of(request)
    handle = await _handle(gw, principal, queue)
    payload, raw = await read_payload(request, gw.settings.max_message_bytes)
    headers = message_headers(request)
    fingerprint = raw + json.dumps([headers, priority, want_result], sort_keys=True).encode()

    async def work() -> PutResult:
        with bad_input("put"):
            if want_result:
                ticket = await handle.put(
                    payload, priority=priority, headers=headers or None, want_result=True
                )
                return PutResult(id=ticket.id, ticket=ticket.id)
            item_id = await handle.put(payload, priority=priority, headers=headers or None)
            return PutResult(id=item_id, ticket=None)

    answer, replayed = await gw.idempotency.run(
        ("put", principal.name, queue), idempotency_key, fingerprint, work
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    result: PutResult = answer
    return result


@_small.post(
    "/queues/{queue}/reserve",
    response_model=ReserveResult,
    summary="Reserve items (long poll)",
    description="Up to max items, waiting up to wait seconds (at most the gateway's "
    "--max-wait) for the first. Each is reserved for lease seconds (default the "
    "gateway's --lease): not acked, released or extended by then, it goes to another "
    "worker and this reservation's ack is refused.",
    responses=problem_responses(401, 403, 413, 422),
)
async def reserve(
    queue: str,
    request: Request,
    principal: Caller,
    body: ReserveRequest | None = None,
) -> ReserveResult:
    gw = state_of(request)
    ask = body or ReserveRequest.model_validate({})
    lease = ask.lease or gw.settings.lease
    handle = await _handle(gw, principal, queue)
    wait = min(ask.wait, gw.settings.max_wait)
    async with client_gone(request) as gone:
        # a consumer gone while it waits reserves nothing for nobody
        items = await unless_gone(
            gone,
            by_the_wait(
                handle.reserve_many(ask.max, wait),
                wait,
                "reserve",
                "nothing was reserved for this request (an item a reserve under way took "
                "goes back)",
            ),
        )
    if items is None:
        return ReserveResult(items=[])  # nobody reads it
    if gone.is_set():  # reserved as the consumer left, or as the gateway stops
        await asyncio.gather(*(item.release() for item in items), return_exceptions=True)
        return ReserveResult(items=[])
    if lease != gw.settings.lease:  # reserved with the default lease: now the one asked for
        try:
            for item in items:
                await item.extend(lease)
        except BaseException:  # nobody will hear of them: given back, not left held
            await asyncio.gather(*(item.release() for item in items), return_exceptions=True)
            raise
    out = []
    for item in items:
        rid = gw.reservations.add(principal.name, queue, item, handle, lease)
        out.append(
            ReservedItem(
                reservation=rid,
                id=item.id,
                headers=dict(item.headers),
                priority=item.priority,
                attempts=item.attempts,
                put_at=item.put_at,
                lease=lease,
                wants_result=item.wants_result,
                **payload_fields(item.payload),
            )
        )
    return ReserveResult(items=out)


def _held(
    request: Request, principal: Principal, queue: str, reservation: str
) -> tuple[GatewayState, Held]:
    """The gateway and ``principal``'s reservation ``reservation`` of ``queue``
    (403 outside the principal's queues, 404 for a reservation not held here)."""
    gw = state_of(request)
    principal.require("queue", queue)
    return gw, gw.reservations.get(reservation, principal.name, queue)


@contextlib.contextmanager
def _dropped_when_finished(gw: GatewayState, reservation: str, held: Held) -> Iterator[None]:
    """Forget the reservation once its item is finished, however the call ended."""
    try:
        yield
    finally:
        if held.item.finished:
            gw.reservations.drop(reservation)


@router.post(
    "/queues/{queue}/reservations/{reservation}/ack",
    status_code=204,
    summary="Ack a reserved item (with its result)",
    openapi_extra=_optional_body(ItemAckRequest),
    responses=problem_responses(401, 403, 404, 409),
)
async def ack(
    queue: str,
    reservation: str,
    request: Request,
    principal: Caller,
) -> Response:
    gw, held = _held(request, principal, queue, reservation)
    body = await _body(request, ItemAckRequest, gw.settings.max_message_bytes)
    gw, held = _held(request, principal, queue, reservation)  # finished while it came?
    with _dropped_when_finished(gw, reservation, held), bad_input("ack"):
        await held.item.ack(body.result)
    return Response(status_code=204)


@router.post(
    "/queues/{queue}/reservations/{reservation}/release",
    status_code=204,
    summary="Give a reserved item back (with the error)",
    description="The item is tried again by the next reserve; after max_attempts "
    "reservations it becomes a dead letter with this error as its reason.",
    openapi_extra=_optional_body(ReleaseRequest),
    responses=problem_responses(401, 403, 404, 409),
)
async def release(
    queue: str,
    reservation: str,
    request: Request,
    principal: Caller,
) -> Response:
    gw, held = _held(request, principal, queue, reservation)
    body = await _body(request, ReleaseRequest)
    gw, held = _held(request, principal, queue, reservation)  # finished while it came?
    with _dropped_when_finished(gw, reservation, held), bad_input("release"):
        await held.item.release(body.error)
    return Response(status_code=204)


@router.post(
    "/queues/{queue}/reservations/{reservation}/extend",
    status_code=204,
    summary="Extend a reservation's lease",
    description="Renews the lease for seconds from now (default: the lease it was "
    "reserved with). A 409 ReservationLost if the item is no longer held.",
    openapi_extra=_optional_body(ExtendRequest),
    responses=problem_responses(401, 403, 404, 409),
)
async def extend(
    queue: str,
    reservation: str,
    request: Request,
    principal: Caller,
) -> Response:
    _held(request, principal, queue, reservation)
    body = await _body(request, ExtendRequest)
    _, held = _held(request, principal, queue, reservation)  # finished while it came?
    with bad_input("extend"):
        await held.item.extend(held.lease if body.seconds is None else body.seconds)
    return Response(status_code=204)


@router.get(
    "/queues/{queue}",
    response_model=QueueStatsAnswer,
    summary="Counts of a work queue",
    responses=problem_responses(401, 403, 404),
)
async def stats(queue: str, request: Request, principal: Caller) -> QueueStatsAnswer:
    handle = await _handle(state_of(request), principal, queue)
    s = await handle.stats()
    return QueueStatsAnswer(
        name=s.name, ready=s.ready, reserved=s.reserved, dead=s.dead, workers=s.workers
    )


# Dead letters one listing answers with by default: each may hold up to a
# message's limit, and a queue keeps up to MAX_DEAD_LETTERS of them.
DEAD_LIMIT: Final = 100
# Bytes of dead letters one listing holds (and answers) at most: fewer
# letters than asked for when they are large (the oldest is always given).
DEAD_ANSWER_BYTES: Final = 16 * 2**20


@router.get(
    "/queues/{queue}/dead",
    response_model=list[DeadLetter],
    summary="The dead letters, oldest first",
    responses=problem_responses(401, 403, 404),
)
async def dead(
    queue: str,
    request: Request,
    principal: Caller,
    limit: int = Query(
        DEAD_LIMIT,
        ge=1,
        le=MAX_DEAD_LETTERS,
        description="At most this many, the oldest (only those are read); fewer once "
        "they hold 16 MiB (the oldest is always given).",
    ),
) -> list[DeadLetter]:
    handle = await _handle(state_of(request), principal, queue)
    return [
        DeadLetter(
            id=d.id,
            headers=dict(d.headers),
            priority=d.priority,
            attempts=d.attempts,
            reason=d.reason,
            died_at=d.died_at,
            **payload_fields(d.payload),
        )
        for d in await handle.dead(limit=limit, max_bytes=DEAD_ANSWER_BYTES)
    ]


@router.post(
    "/queues/{queue}/dead/replay",
    response_model=ReplayResult,
    summary="Put dead letters back",
    description='Optional JSON body {"ids": [...]}; none or an empty list replays all. '
    "Each goes back as a new item with its payload and priority.",
    openapi_extra=_optional_body(ReplayRequest),
    responses=problem_responses(401, 403, 422),
)
async def replay(
    queue: str,
    request: Request,
    principal: Caller,
) -> ReplayResult:
    gw = state_of(request)
    handle = await _handle(gw, principal, queue)
    body = await _body(request, ReplayRequest)
    count = await handle.replay(body.ids or None)
    return ReplayResult(replayed=count)


@router.get(
    "/queues/{queue}/results/{ticket}",
    response_model=TicketAnswer,
    summary="Wait for a ticket's result (long poll)",
    description="status done (with the ack's result, which is removed once read), "
    "failed (the item became a dead letter; reason says why), or pending with HTTP 202 "
    "when wait seconds passed first (at most the gateway's --max-wait). Of requests "
    "taking one result at once, one has it and the others get a 404; a result already "
    "taken is not there any more (pending). A result read for a long poll whose client "
    "had left is kept for the ticket's next request.",
    responses=problem_responses(
        401, 403, 404, extra={202: {"description": "No result yet", "model": TicketAnswer}}
    ),
)
async def result(
    queue: str,
    ticket: str,
    request: Request,
    response: Response,
    principal: Caller,
    wait: float = Query(0.0, ge=0, description="Seconds to wait for the result."),
) -> TicketAnswer:
    gw = state_of(request)
    handle = await _handle(gw, principal, queue)
    with bad_input("ticket"):
        waiter = handle.ticket(ticket)
    key = (principal.profile, queue, ticket)
    kept = gw.left_results.take(key)  # read for an earlier request whose client left
    if kept is not None:
        return _ticket_answer(ticket, kept)
    async with client_gone(request) as gone:
        try:
            outcome = await unless_gone(
                gone, _outcome(waiter, min(wait, gw.settings.max_wait) or 0.001)
            )
        except OperationTimeout:
            return _pending(response, ticket)
    if gw.closing.is_set():  # the gateway stops, its client is still there: answered
        if outcome is None:
            outcome = await _read_under_way(waiter)
        if outcome is None:
            return _pending(response, ticket)
        return _ticket_answer(ticket, outcome)
    if outcome is None:  # the client left: the read under way may still take the result
        task = asyncio.ensure_future(_keep_what_is_read(gw, key, waiter))
        gw.background.add(task)
        task.add_done_callback(gw.background.discard)
        return _pending(response, ticket)
    if gone.is_set():  # read for a client that left: kept for its next request
        gw.left_results.keep(key, outcome)
        return _pending(response, ticket)
    return _ticket_answer(ticket, outcome)


def _pending(response: Response, ticket: str) -> TicketAnswer:
    """No result yet: a 202."""
    response.status_code = 202
    return TicketAnswer(id=ticket, status="pending")


async def _outcome(waiter: AsyncTicket, timeout: float) -> Kept:
    """The ticket's result or failure (``OperationTimeout`` if neither came)."""
    try:
        return Kept(value=await waiter.wait(timeout))
    except ItemFailed as exc:
        return Kept(failed=exc.reason)


async def _read_under_way(waiter: AsyncTicket) -> Kept | None:
    """What the read a cancelled wait had under way takes (``None``:
    nothing): it is waited for, and no other is begun after it. With none
    under way, one look is made at once."""
    try:
        return await _outcome(waiter, 0.0)
    except Exception as exc:  # nothing there yet (it stays there), or no server
        logger.debug("ticket %s: the read under way took nothing (%r)", waiter.id, exc)
        return None


async def _keep_what_is_read(gw: GatewayState, key: Key, waiter: AsyncTicket) -> None:
    """Finish the read a request whose client left had under way, and keep
    what it took for the ticket's next request (a result is read once)."""
    outcome = await _read_under_way(waiter)
    if outcome is not None:
        gw.left_results.keep(key, outcome)


def _ticket_answer(ticket: str, outcome: Kept) -> TicketAnswer:
    if outcome.failed is not None:
        return TicketAnswer(id=ticket, status="failed", reason=outcome.failed)
    fields = payload_fields(outcome.value)
    return TicketAnswer(
        id=ticket,
        status="done",
        result=fields.get("payload"),
        result_base64=fields.get("payload_base64"),
        result_error=fields.get("payload_error"),
    )


router.include_router(_small)
