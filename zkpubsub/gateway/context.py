"""What every route of one gateway shares (internal)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from .bus import Bus
from .idempotency import IdempotencyStore
from .results import LeftResults
from .settings import GatewaySettings

if TYPE_CHECKING:
    from .consumers import Consumers
    from .reservations import Reservations

__all__ = ["GatewayState", "state_of"]


@dataclass
class GatewayState:
    """The settings, the bus clients, the idempotency keys, the durable
    subscriptions this gateway holds, the work items it has reserved and
    the ticket results it read for clients that had left."""

    settings: GatewaySettings
    bus: Bus
    idempotency: IdempotencyStore
    consumers: Consumers
    reservations: Reservations
    # set when the server begins to shut down: long polls and event
    # streams end (answered) instead of being cut off
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    left_results: LeftResults = field(default_factory=LeftResults)
    # reads finishing for clients that left (a reference, so that they run on)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def begin_closing(self) -> None:
        """(On the loop.) End the long polls and streams under way."""
        self.closing.set()
        self.consumers.wake_all()


def state_of(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state
