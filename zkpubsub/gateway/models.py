"""The JSON documents of the gateway's API (they make its OpenAPI schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AckRequest",
    "AckResult",
    "BatchMessage",
    "BatchRequest",
    "DeadLetter",
    "ExtendRequest",
    "HealthAnswer",
    "ItemAckRequest",
    "ProblemDocument",
    "PullRequest",
    "PullResult",
    "PulledMessage",
    "PutResult",
    "QueueStatsAnswer",
    "Receipt",
    "ReleaseRequest",
    "ReplayRequest",
    "ReplayResult",
    "ReserveRequest",
    "ReserveResult",
    "ReservedItem",
    "SubscriptionAnswer",
    "SubscriptionRequest",
    "TicketAnswer",
    "problem_responses",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Receipt(BaseModel):
    """ZooKeeper stored the publish: every subscriber queue or none."""

    topic: str
    message_ids: list[str] = Field(description="One id per message, in publish order.")
    subscribers: int = Field(description="Subscriber queues the message(s) were written to.")
    skipped: int = Field(0, description="Subscribers skipped because their queue was full.")


class BatchMessage(_Strict):
    payload: Any = Field(None, description="Any JSON value.")
    payload_base64: str | None = Field(None, description="Bytes, base64 (instead of payload).")
    headers: dict[str, str] | None = None


class BatchRequest(_Strict):
    messages: list[BatchMessage] = Field(min_length=1)


class ReplayRequest(_Strict):
    ids: list[str] | None = Field(None, description="Dead letters to replay; none or empty: all.")


class ReplayResult(BaseModel):
    replayed: int


class SubscriptionRequest(_Strict):
    topics: list[str] = Field(min_length=1, description="Topics whose messages it receives.")


class SubscriptionAnswer(BaseModel):
    name: str
    topics: list[str]
    ack_deadline: float = Field(description="Seconds an unacked message stays out.")
    outstanding: int = Field(description="Messages handed out and not acked yet.")
    waiting: int = Field(description="Messages ready to be handed out.")


class PullRequest(_Strict):
    max: int = Field(1, ge=1, le=1000, description="At most this many messages.")
    wait: float = Field(0.0, ge=0, description="Seconds to wait for a first message.")
    ack_deadline: float | None = Field(
        None, gt=0, le=3600, description="Seconds before an unacked message comes back."
    )
    auto_ack: bool = Field(False, description="Count messages as acked once answered.")


class PulledMessage(BaseModel):
    ack_id: str | None = Field(description="Give it to /ack (null when auto-acked).")
    id: str
    topic: str
    payload: Any = None
    payload_base64: str | None = None
    payload_error: str | None = Field(
        None,
        description="Why the payload is not shown (nested too deep, or holding NaN or an "
        "infinity: it cannot be written as JSON).",
    )
    headers: dict[str, str]
    published_at: float
    publisher_id: str
    deliveries: int = Field(description="Times this message was handed out, this one included.")


class GapNotice(BaseModel):
    """Messages on these topics may have been missed (the library's ``Gap``)."""

    topics: list[str]
    reason: str = Field(
        description="'session expired', 'backlog purged' (gone longer than the cleaner's "
        "grace), 'backlog full', or a node changed 'by another client'."
    )
    since: float = Field(description="From when (seconds since the epoch).")
    until: float = Field(description="Until when (seconds since the epoch).")
    missed: int | None = Field(None, description="How many, when counted.")


class PullResult(BaseModel):
    messages: list[PulledMessage]
    gaps: list[GapNotice] = Field(
        default_factory=list,
        description="What the subscription may have missed, each told once (a pull "
        "waiting for messages returns with them at once).",
    )


class AckRequest(_Strict):
    ack_ids: list[str] = Field(default_factory=list)
    nack_ids: list[str] = Field(
        default_factory=list, description="Hand these back at once, to be delivered again."
    )


class AckResult(BaseModel):
    acked: list[str]
    nacked: list[str]
    unknown: list[str] = Field(description="Ack ids past their deadline or never given.")


class PutResult(BaseModel):
    id: str
    ticket: str | None = Field(None, description="With want_result: wait on /results/{ticket}.")


class ReserveRequest(_Strict):
    max: int = Field(1, ge=1, le=100)
    wait: float = Field(0.0, ge=0)
    lease: float | None = Field(None, gt=0, le=43200, description="Visibility timeout, seconds.")


class ReservedItem(BaseModel):
    reservation: str = Field(description="Ack, release or extend through this id.")
    id: str
    payload: Any = None
    payload_base64: str | None = None
    payload_error: str | None = Field(
        None,
        description="Why the payload is not shown (nested too deep, or holding NaN or an "
        "infinity: it cannot be written as JSON).",
    )
    headers: dict[str, str]
    priority: int
    attempts: int
    put_at: float
    lease: float = Field(description="Seconds the reservation lasts without an extension.")
    wants_result: bool


class ReserveResult(BaseModel):
    items: list[ReservedItem]


class ItemAckRequest(_Strict):
    result: Any = None


class ReleaseRequest(_Strict):
    error: str | None = None


class ExtendRequest(_Strict):
    seconds: float | None = Field(None, gt=0, le=43200)


class QueueStatsAnswer(BaseModel):
    name: str
    ready: int
    reserved: int
    dead: int
    workers: int


class DeadLetter(BaseModel):
    id: str
    payload: Any = None
    payload_base64: str | None = None
    payload_error: str | None = Field(
        None,
        description="Why the payload is not shown (nested too deep, or holding NaN or an "
        "infinity: it cannot be written as JSON).",
    )
    headers: dict[str, str]
    priority: int
    attempts: int
    reason: str
    died_at: float


class TicketAnswer(BaseModel):
    id: str
    status: Literal["done", "failed", "pending"]
    result: Any = None
    result_base64: str | None = None
    reason: str | None = None
    result_error: str | None = Field(
        default=None,
        description="Why a result (written other than through a gateway) is null: "
        "nested too deep, or holding NaN or an infinity, it cannot be written as JSON.",
    )


class HealthAnswer(BaseModel):
    status: str
    state: str
    live: bool
    ready: bool
    reason: str


class ProblemDocument(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="urn:zkpubsub:problem:<slug>")
    title: str
    status: int
    detail: str
    error: str = Field(description="The library's error class name, or the gateway's.")
    instance: str | None = None


def problem_responses(
    *statuses: int, extra: dict[int | str, dict[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (and ``extra``)."""
    reasons = {
        400: "Bad input",
        401: "No token, or an unknown one",
        403: "The token may not use this name",
        404: "No such thing",
        409: "Conflict with the state of the bus",
        413: "Payload too large",
        415: "Unsupported media type",
        422: "Invalid request",
        503: "ZooKeeper unreachable or a queue full: retry later",
        504: "Not confirmed in time",
    }
    schema = {"schema": {"$ref": "#/components/schemas/ProblemDocument"}}
    out: dict[int | str, dict[str, Any]] = {
        s: {"description": reasons.get(s, "Error"), "content": {"application/problem+json": schema}}
        for s in statuses
    }
    out.update(extra or {})
    return out
