"""Work items this gateway reserved for HTTP workers, by reservation id.

An HTTP worker reserves through the gateway: the gateway's session holds
the reservation, with a lease (the visibility timeout, judged by
ZooKeeper's clock). The reservation id names the gateway that made it; its
ack, release and extension must come back to that gateway, which holds the
item. When the lease runs out (the worker went away, or the gateway did)
the library hands the item to the next reserve, with ``attempts`` one
higher, and the old reservation's ack is refused (``ReservationLost``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Final

from ..aio import AsyncItem, AsyncWorkQueue
from .problems import Problem

__all__ = ["Reservations"]

# A reservation whose lease ended is forgotten this long after (its ack is
# refused by the library meanwhile, with a clearer answer than "unknown").
FORGET_AFTER: Final = 60.0


@dataclass
class Held:
    principal: str
    queue: str
    item: AsyncItem
    handle: AsyncWorkQueue
    lease: float  # seconds: the lease it was reserved with


class Reservations:
    """Reserved items by reservation id (``<gateway id>.<random>``)."""

    def __init__(self, gateway_id: str) -> None:
        self._gateway_id = gateway_id
        self._held: dict[str, Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def add(
        self, principal: str, queue: str, item: AsyncItem, handle: AsyncWorkQueue, lease: float
    ) -> str:
        self._forget_expired()
        rid = f"{self._gateway_id}.{uuid.uuid4().hex}"
        self._held[rid] = Held(principal, queue, item, handle, lease)
        return rid

    def get(self, rid: str, principal: str, queue: str) -> Held:
        held = self._held.get(rid)
        if held is not None and held.item.finished:  # acked or released meanwhile
            del self._held[rid]
            held = None
        if held is None or held.queue != queue or held.principal != principal:
            gateway, _, _ = rid.partition(".")
            where = (
                "it was made through another gateway (or an earlier run of this one); "
                "send its ack to that gateway, or let its lease return the item"
                if gateway != self._gateway_id
                else "it was acked or released already, or its lease ended long ago"
            )
            raise Problem(
                404,
                "no-reservation",
                "No such reservation",
                f"this gateway holds no reservation {rid!r} of queue {queue!r}: {where}",
            )
        return held

    def drop(self, rid: str) -> None:
        self._held.pop(rid, None)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for rid, held in list(self._held.items()):
            until = held.item.sync.lease_until
            if held.item.finished or (until is not None and until + FORGET_AFTER < now):
                del self._held[rid]
