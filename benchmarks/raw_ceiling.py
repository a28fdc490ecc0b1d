"""What kazoo itself can push: multi transactions of sequential creates, many
in flight, no library logic, nothing consuming: publish-only ceilings, not
end-to-end rates.

* One node per message (``pack=1``): one transaction per message, one
  create per subscriber queue, the same 100-byte payload. zkpubsub passes
  this one by sending fewer requests per message (it packs the messages
  that arrive together into one node per queue).
* Packed (``pack=N``): each transaction carries N messages in one node per
  queue (their payloads concatenated, no envelope), as zkpubsub's batching
  does at best: the ceiling for the same packing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    RuntimeInconsistency,
)

from . import payload

# Node data per transaction stays under this (ZooKeeper's jute.maxbuffer is 1 MiB).
TRANSACTION_BUDGET = 900_000


# Bytes one message takes in a queue, with its create's path.
_PER_MESSAGE = payload.PAYLOAD_SIZE + 64

# Message data one publish-only cell may leave in the server (every queue's
# copy counted) before it is deleted: the server holds it all in its heap.
SERVER_DATA_BUDGET = 256 * 2**20


def message_cap(subscribers: int, wanted: int) -> int:
    """At most ``wanted`` messages, and no more than ``subscribers`` copies of
    them fit in ``SERVER_DATA_BUDGET`` (nobody consumes in these cells)."""
    return max(1, min(wanted, SERVER_DATA_BUDGET // (max(1, subscribers) * _PER_MESSAGE)))


def pack_for(subscribers: int, wanted: int) -> int:
    """Messages per node for a packed transaction to ``subscribers`` queues:
    ``wanted``, or fewer if the transaction would not fit."""
    return max(1, min(wanted, TRANSACTION_BUDGET // (max(1, subscribers) * _PER_MESSAGE)))


def push(
    zk: KazooClient,
    parents: list[str],
    *,
    duration: float,
    window: int,
    max_messages: int,
    pack: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Commit transactions of ``pack`` messages each (one create under every
    parent holding them all) for ``duration`` seconds with up to ``window``
    transactions in flight. ``published`` counts messages."""
    prefixes = [f"{p}/m-" for p in parents]
    in_flight: deque[Any] = deque()
    sent = confirmed = failed = 0
    start = time.monotonic()
    end = start + duration
    last = start
    while True:
        now = time.monotonic()
        while len(in_flight) < window and now < end and sent * pack < max_messages:
            data = b"".join(payload.make(sent * pack + i, now, now) for i in range(pack))
            txn = zk.transaction()
            for prefix in prefixes:
                txn.create(prefix, data, sequence=True)
            in_flight.append(txn.commit_async())
            sent += 1
        if not in_flight:
            break
        results = in_flight.popleft().get(timeout=60)
        last = time.monotonic()
        if any(isinstance(r, Exception) for r in results):
            failed += 1
        else:
            confirmed += 1
        if on_progress is not None and confirmed % 200 == 0:
            on_progress(confirmed * pack)
    elapsed = last - start
    return {
        "published": confirmed * pack,
        "transactions": confirmed,
        "failed": failed,
        "seconds": round(elapsed, 3),
        "znodes": confirmed * len(parents),
    }


def delete_tree(zk: KazooClient, path: str, *, batch: int = 500, window: int = 16) -> int:
    """Delete ``path`` and everything below it with pipelined transactions of
    deletes; a child that has children of its own is emptied first."""
    try:
        names = zk.get_children(path)
    except NoNodeError:
        return 0
    deleted = 0
    pending: deque[tuple[list[str], Any]] = deque()

    def submit(group: list[str]) -> Any:
        txn = zk.transaction()
        for name in group:
            txn.delete(f"{path}/{name}")
        return txn.commit_async()

    def settle() -> None:
        nonlocal deleted
        group, request = pending.popleft()
        while True:
            results = request.get(timeout=120)
            errors = [
                (n, r) for n, r in zip(group, results, strict=False) if isinstance(r, Exception)
            ]
            if not errors:
                deleted += len(group)
                return
            gone: set[str] = set()
            for name, error in errors:
                if isinstance(error, NoNodeError):
                    gone.add(name)
                elif isinstance(error, NotEmptyError):
                    deleted += delete_tree(zk, f"{path}/{name}", batch=batch, window=window)
                    gone.add(name)
                elif not isinstance(error, (RolledBackError, RuntimeInconsistency)):
                    raise error
            group = [n for n in group if n not in gone]
            if not group:
                return
            request = submit(group)

    for i in range(0, len(names), batch):
        group = names[i : i + batch]
        pending.append((group, submit(group)))
        if len(pending) >= window:
            settle()
    while pending:
        settle()
    try:
        zk.delete(path)
        deleted += 1
    except NoNodeError:
        pass
    return deleted
