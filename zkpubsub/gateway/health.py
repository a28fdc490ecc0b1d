"""``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers 200 while the process serves HTTP and its own client
is not dead (:mod:`zkpubsub.health`: closed, or failing for a minute to
register on a new session), 503 otherwise. ``/readyz``
answers 200 only while the gateway's own client is connected to ZooKeeper
(:func:`zkpubsub.health.check`, strict), 503 otherwise: a gateway cut off
from ZooKeeper can do nothing useful. ``/metrics`` is Prometheus text: the
library's client metrics (:mod:`zkpubsub.metrics`) of the gateway's own
client, and the gateway's own (``zkpubsub_gateway_...``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..health import Health, check
from .context import state_of
from .models import HealthAnswer

__all__ = ["GatewayCollector", "router"]

router = APIRouter(tags=["health"])

# before the gateway's own client is made: live, not ready
_STARTING: Final = {
    "status": "degraded",
    "state": "connecting",
    "live": True,
    "ready": False,
    "reason": "not connected yet",
}


def _answer(health: Health, status_code: int) -> JSONResponse:
    """``health`` as a :class:`HealthAnswer` body (which carries no client id)."""
    body = health.as_dict()
    body.pop("client_id")
    return JSONResponse(body, status_code=status_code)


@router.get(
    "/healthz",
    response_model=HealthAnswer,
    summary="The process is up and its client is not dead",
    responses={503: {"description": "The gateway's own client is dead", "model": HealthAnswer}},
)
async def healthz(request: Request) -> JSONResponse:
    gw = state_of(request)
    try:
        health = check(gw.bus.default)
    except KeyError:
        return JSONResponse(_STARTING)
    return _answer(health, health.liveness_code)


@router.get(
    "/readyz",
    response_model=HealthAnswer,
    summary="Connected to ZooKeeper",
    responses={503: {"description": "Not connected to ZooKeeper", "model": HealthAnswer}},
)
async def readyz(request: Request) -> JSONResponse:
    gw = state_of(request)
    try:
        health = check(gw.bus.default, ready_when_degraded=False)
    except KeyError:
        return JSONResponse(_STARTING, status_code=503)
    return _answer(health, health.readiness_code)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class GatewayCollector:
    """The gateway's own gauges, read at scrape time."""

    def __init__(self, request_state: Any) -> None:
        self._state = request_state

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        gw = self._state
        held = GaugeMetricFamily(
            "zkpubsub_gateway_subscriptions_held",
            "Durable HTTP subscriptions this gateway holds open.",
        )
        held.add_metric([], len(gw.consumers))
        yield held
        out = GaugeMetricFamily(
            "zkpubsub_gateway_messages_outstanding",
            "Messages handed to HTTP consumers and not acked yet.",
        )
        out.add_metric([], gw.consumers.outstanding())
        yield out
        reserved = GaugeMetricFamily(
            "zkpubsub_gateway_reservations_held",
            "Work items reserved through this gateway and not finished.",
        )
        reserved.add_metric([], len(gw.reservations))
        yield reserved
        keys = GaugeMetricFamily(
            "zkpubsub_gateway_idempotency_keys", "Idempotency keys remembered."
        )
        keys.add_metric([], len(gw.idempotency))
        yield keys
