"""The gateway as an ASGI application: :func:`create_app`.

::

    from zkpubsub.gateway import GatewaySettings, create_app

    app = create_app(GatewaySettings(hosts="zk1:2181"))  # serve with uvicorn

The application connects to ZooKeeper when it starts (its lifespan) and
lets go of everything when it stops (a server that runs it should call
``app.state.gateway.begin_closing()`` as its shutdown begins, as ``zkpubsub
gateway`` does: long polls and event streams then end, answered): the durable subscriptions it held
stay registered, items it reserved return to their queues when their
leases end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .._version import __version__
from .auth import admin_of
from .bus import Bus
from .consumers import Consumers
from .context import GatewayState
from .idempotency import IdempotencyStore
from .models import ProblemDocument
from .payloads import BodyLimit
from .problems import install_problem_handlers
from .reservations import Reservations
from .settings import GatewaySettings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

# Room for the JSON around the largest payload a route takes.
JSON_SLACK = 64 * 1024

DESCRIPTION = """\
The zkpubsub bus over HTTP: publish to topics, receive through durable
subscriptions (pull with acks, or Server-Sent Events), and use work queues
with leases — with the library's guarantees. Errors are RFC 9457 problem
details. Send `Authorization: Bearer <token>` when the gateway has a tokens
file.
"""


def create_app(settings: GatewaySettings) -> FastAPI:
    """A FastAPI application serving the bus named by ``settings``."""
    from prometheus_client import CollectorRegistry

    from ..metrics import ClientMetrics
    from . import console, health, queues, subscriptions, topics

    bus = Bus(settings)
    state = GatewayState(
        settings=settings,
        bus=bus,
        idempotency=IdempotencyStore(settings.idempotency_ttl, settings.idempotency_keys),
        consumers=Consumers(bus, settings),
        reservations=Reservations(settings.gateway_id),
    )
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        metrics = ClientMetrics(bus.default, registry=registry)
        registry.register(health.GatewayCollector(state))
        state.consumers.start()
        logger.info("gateway %s serving the bus under %s", settings.gateway_id, settings.root)
        try:
            yield
        finally:
            await state.consumers.close()
            metrics.close()
            await bus.close()

    app = FastAPI(
        title="zkpubsub gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.gateway = state
    # no body anywhere passes the largest the gateway takes (a batch's)
    limit = max(settings.max_batch_bytes, settings.max_message_bytes) + JSON_SLACK
    app.add_middleware(BodyLimit, limit=limit)
    app.state.registry = registry
    install_problem_handlers(app)
    app.include_router(topics.router)
    app.include_router(subscriptions.router)
    app.include_router(queues.router)
    app.include_router(health.router)

    async def observe() -> dict[str, Any]:
        return await asyncio.to_thread(lambda: console.console_snapshot(bus.observer()))

    app.include_router(
        console.console_router(observe=observe, authorize=admin_of, closing=state.closing)
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["ProblemDocument"] = ProblemDocument.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
            for path in ("/healthz", "/readyz", "/metrics"):  # open to every caller
                for operation in schema.get("paths", {}).get(path, {}).values():
                    operation["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
