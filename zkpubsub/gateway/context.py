"""What every route of one gateway shares (internal)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from .bus import Bus
from .idempotency import IdempotencyStore
from .settings import GatewaySettings

if TYPE_CHECKING:
    from .consumers import Consumers
    from .reservations import Reservations

__all__ = ["GatewayState", "state_of"]


@dataclass
class GatewayState:
    """The settings, the bus clients, the idempotency keys, the durable
    subscriptions this gateway holds and the work items it has reserved."""

    settings: GatewaySettings
    bus: Bus
    idempotency: IdempotencyStore
    consumers: Consumers
    reservations: Reservations
    # set when the server begins to shut down: long polls and event
    # streams end (answered) instead of being cut off
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def begin_closing(self) -> None:
        """(On the loop.) End the long polls and streams under way."""
        self.closing.set()
        self.consumers.wake_all()


def state_of(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state
