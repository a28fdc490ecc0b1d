"""zkpubsub for asyncio: the same engine and guarantees, awaited.

::

    from zkpubsub.aio import AsyncClient

    async with AsyncClient.connect("zk1:2181") as client:
        async def on_order(msg):  # runs on the loop
            await handle(msg.payload)

        await client.subscribe("orders", on_order)
        receipt = await client.publish("orders", {"id": 42})

Nothing blocks the event loop: connecting, subscribing and closing run on
threads of the client, and a publish is the engine's own future bridged to
the loop. Handlers, ``on_error`` and listeners run on the loop. A message is
deleted only after its handler's coroutine returned; a handler that raises
or is cancelled is a failed attempt. See :mod:`zkpubsub.aio.client` for
what cancellation does to each call. A client belongs to the event loop
it was connected on: a call made on another running loop raises
``WrongLoop`` and does nothing.
"""

from __future__ import annotations

from ._bridge import LoopStopped, WrongLoop
from .client import AsyncClient, Connecting
from .subscription import AsyncSubscription
from .workqueue import AsyncConsumer, AsyncItem, AsyncTicket, AsyncWorkQueue

__all__ = [
    "AsyncClient",
    "AsyncConsumer",
    "AsyncItem",
    "AsyncSubscription",
    "AsyncTicket",
    "AsyncWorkQueue",
    "Connecting",
    "LoopStopped",
    "WrongLoop",
]
