"""Publishing over HTTP: ``POST /topics/{topic}/messages`` and its batch form.

The guarantees are the library's (``Client.publish``): a message is
written into every subscriber's queue in one transaction or into none, all
subscribers see one order, and the answer comes once ZooKeeper confirmed
it. A batch's messages arrive in the given order.
"""

from __future__ import annotations

import json
from itertools import groupby
from typing import Any

from fastapi import APIRouter, Header, Request, Response
from pydantic import ValidationError

from ..errors import ZkPubSubError
from ..message import PublishReceipt
from .auth import Caller
from .context import state_of
from .models import BatchRequest, Receipt, problem_responses
from .payloads import decode_base64, message_headers, read_json, read_payload
from .problems import Problem, bad_input, problem_for

__all__ = ["router"]

router = APIRouter(tags=["topics"])

IDEMPOTENCY_DOC = (
    "Done once per key (for this token and topic): a repeat within the gateway's "
    "idempotency window returns the first receipt and publishes nothing."
)

_SINGLE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The payload, by Content-Type. Message headers: request headers "
        "'Zkpubsub-Header-<name>: <value>'.",
        "content": {
            "application/json": {"schema": {"description": "Any JSON value"}},
            "text/plain": {"schema": {"type": "string"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def invalid(exc: ValidationError) -> Problem:
    reasons = [
        {"where": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in exc.errors()
    ]
    detail = "; ".join(f"{r['where']}: {r['reason']}" for r in reasons)
    return Problem(
        422, "invalid-request", "Invalid request", detail, error="ValidationError", errors=reasons
    )


def _receipt(topic: str, receipts: list[PublishReceipt]) -> Receipt:
    return Receipt(
        topic=topic,
        message_ids=[m for r in receipts for m in r.message_ids],
        subscribers=min(r.subscribers for r in receipts),
        skipped=max(r.skipped for r in receipts),
    )


def _published_in_part(
    topic: str, receipts: list[PublishReceipt], exc: Problem | ZkPubSubError
) -> Problem:
    """A batch's later publish failed: the earlier ones were published (a
    retry publishes them again)."""
    cause = problem_for(exc) if isinstance(exc, ZkPubSubError) else exc
    published = [m for r in receipts for m in r.message_ids]
    return Problem(
        502,
        "partly-published",
        "Published to some subscribers only",
        f"the batch's first {len(published)} message(s) were published, then: {cause.detail}",
        error="PartlyPublished",
        published=published,
        cause=cause.error,
        **{k: v for k, v in cause.extra.items() if k in ("message_ids", "sent", "reached")},
    )


@router.post(
    "/topics/{topic}/messages",
    status_code=201,
    response_model=Receipt,
    summary="Publish one message",
    description="Writes the body into the queue of every subscriber of the topic (one "
    "transaction: all or none) and answers once ZooKeeper confirmed it. " + IDEMPOTENCY_DOC,
    openapi_extra=_SINGLE_BODY,
    responses=problem_responses(400, 401, 403, 413, 415, 422, 503, 504),
)
async def publish(
    topic: str,
    request: Request,
    response: Response,
    principal: Caller,
    idempotency_key: str | None = Header(None, description=IDEMPOTENCY_DOC),
) -> Receipt:
    gw = state_of(request)
    principal.require("topic", topic)
    payload, raw = await read_payload(request, gw.settings.max_message_bytes)
    headers = message_headers(request)
    client = await gw.bus.client(principal)
    fingerprint = raw + json.dumps(headers, sort_keys=True).encode()

    async def work() -> Receipt:
        with bad_input("publish"):
            receipt = await client.publish(topic, payload, headers=headers or None)
        return _receipt(topic, [receipt])

    answer, replayed = await gw.idempotency.run(
        ("publish", principal.name, topic), idempotency_key, fingerprint, work
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    result: Receipt = answer
    return result


_BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": BatchRequest.model_json_schema()}},
    }
}


@router.post(
    "/topics/{topic}/messages:batch",
    status_code=201,
    response_model=Receipt,
    summary="Publish several messages, in order",
    description="Each message is a JSON value (payload) or bytes (payload_base64), with "
    "its own headers. Consecutive messages with the same headers go out in one publish "
    "(one transaction when they fit); subscribers receive all of them in the given "
    "order. " + IDEMPOTENCY_DOC,
    openapi_extra=_BATCH_BODY,
    responses=problem_responses(400, 401, 403, 413, 415, 422, 503, 504),
)
async def publish_batch(
    topic: str,
    request: Request,
    response: Response,
    principal: Caller,
    idempotency_key: str | None = Header(None, description=IDEMPOTENCY_DOC),
) -> Receipt:
    gw = state_of(request)
    principal.require("topic", topic)
    doc = await read_json(request, gw.settings.max_batch_bytes)
    try:
        batch = BatchRequest.model_validate(doc)
    except ValidationError as exc:
        raise invalid(exc) from None
    items: list[tuple[Any, dict[str, str]]] = []
    for i, message in enumerate(batch.messages):
        payload: Any = message.payload
        if message.payload_base64 is not None:
            if "payload" in message.model_fields_set:
                raise Problem(
                    400,
                    "bad-request",
                    "Bad request",
                    f"messages[{i}]: give payload or payload_base64, not both",
                )
            payload = decode_base64(message.payload_base64, f"messages[{i}].payload_base64")
        items.append((payload, message.headers or {}))
    client = await gw.bus.client(principal)
    fingerprint = json.dumps(doc, sort_keys=True).encode()

    runs = [
        ([p for p, _ in run], headers or None)
        for headers, run in groupby(items, key=lambda item: item[1])
    ]

    async def work() -> Receipt:
        if len(runs) > 1:  # several publishes: none is sent unless all could be
            with bad_input("publish"):
                for payloads, headers in runs:
                    client.sync._check_messages(topic, payloads, headers)
        receipts: list[PublishReceipt] = []
        for payloads, headers in runs:
            try:
                with bad_input("publish"):
                    receipts.append(await client.publish_many(topic, payloads, headers=headers))
            except (Problem, ZkPubSubError) as exc:
                if not receipts:
                    raise
                raise _published_in_part(topic, receipts, exc) from exc
        return _receipt(topic, receipts)

    answer, replayed = await gw.idempotency.run(
        ("publish batch", principal.name, topic), idempotency_key, fingerprint, work
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    result: Receipt = answer
    return result
