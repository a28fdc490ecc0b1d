"""A reliable work queue: competing workers with reserve / ack / release.

A work queue is the broadcast machinery with one shared queue: items are
envelopes (the same format as messages) under ``queues/<name>/items``, and
every worker competes for them. Guarantees, each enforced by the server:

* **Nothing acknowledged is lost; nothing is held twice.** Reserving an item
  creates ``reserved/<item>`` as an ephemeral node of the worker's session
  and, in the same transaction, bumps the item's data version, which counts
  reservations (the item's ``attempts``). Only one live session can hold the
  reservation.
* **Zombies cannot ack.** An ack deletes the reservation and the item in one
  transaction, the item only at the version this reservation produced. A
  worker whose session expired (its reservation is gone) or whose item was
  reserved again since (the version moved on) gets
  :class:`~zkpubsub.ReservationLost`, and nothing changes. A release is
  checked the same way.
* **Dead workers' items come back.** A worker that dies or loses its session
  loses its reservations with it; the items are delivered again with
  ``attempts`` one higher.
* **Leases** (``visibility_timeout``). A reservation can carry a lease,
  judged by the server's clock from the reservation node's ``mtime``; once
  it ran out another worker takes the item over in one transaction that
  also bumps its version, so the old holder's ack fails. ``item.extend()``
  renews it; a consumer extends the items in hand.
* **Bounded.** Items live in segments (``items/s<N>``) of about 10,000, so
  no parent's sequential counter nears its end and no listing passes
  1 MiB; a put waits while the queue holds ``max_items``.
* **Dead letters.** An item reserved ``max_attempts`` times without an ack
  is moved to ``dead/`` (by the worker releasing it for the last time, or by
  the next worker to find it), with the reason. Moving it proves nobody
  holds it. Dead letters can be listed and replayed.
* **Exactly-once enqueue.** A put creates a receipt in the same transaction;
  after a lost answer the receipt is looked up before anything is written
  again.
* **No herd, no head-of-line blocking.** Workers register under
  ``workers/``; a worker of rank r among W tries first the items whose
  sequence number is r modulo W, so they do not all race for the head, and
  a reserved item never blocks the ones behind it. With the watch, an idle
  worker leaves a new item to its own worker for ``LEAVE_TO_OWNER`` (20 ms)
  before trying it: one worker tries each put, not all of them.
* **Priorities.** 0 to 999, lower first, first in first out within a priority
  (exactly so for a single worker; several workers take neighbouring items
  at the same time; a worker working through a backlog lists the queue again
  at most once a second, so an urgent item put meanwhile waits that long).
* **Results.** ``put(..., want_result=True)`` returns a :class:`Ticket`;
  ``item.ack(result=...)`` writes the result in the ack transaction;
  ``ticket.wait()`` reads and removes it. Unread results are removed by the
  cleaner after its ``result_ttl``.

The package: :mod:`.records` (what the nodes hold), :mod:`.items` (``Item``,
``Ticket``), :mod:`.segments` (where items go, the counts), :mod:`.putting`
(a put and its bound), :mod:`.dead_letters` (reading and replaying them),
:mod:`.leases` (the server's clock, the consumer's lease keeper),
:mod:`.registration` (a worker's node), :mod:`.lineup` (which items a
worker tries), :mod:`.worker` (a worker and the life of its reservations),
:mod:`.finishing` (ack, release, burial), :mod:`.queue` (the handle),
:mod:`.consumer` (worker threads).
"""

from __future__ import annotations

from .consumer import Consumer, ConsumerStats, ItemHandler
from .items import Item, Ticket
from .queue import WorkQueue
from .records import DeadItem, WorkQueueStats
from .worker import Worker

__all__ = [
    "Consumer",
    "ConsumerStats",
    "DeadItem",
    "Item",
    "ItemHandler",
    "Ticket",
    "WorkQueue",
    "WorkQueueStats",
    "Worker",
]
