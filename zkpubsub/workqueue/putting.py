"""Putting items into a work queue, exactly once and within ``max_items``.

A put goes into the queue's current segment (:mod:`.segments`) with a
check of the queue node's version, and carries a receipt (the shared
exactly-once write of :class:`~zkpubsub.receipts.ReceiptWriter`). Several items go
in as few transactions as fit. With ``max_items`` a put first counts the
items (ready or reserved) and waits for room, up to its timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from kazoo.exceptions import BadVersionError, NoNodeError

from .. import envelope
from .._context import Context
from .._deadlines import deadline_after, expired, remaining
from ..config import CREATE_OP_OVERHEAD
from ..connection import translated
from ..errors import PayloadTooLarge, QueueFull, ZkPubSubError, ZooKeeperError
from ..layout import MAX_ITEMS_PER_PUT, NodeKind
from .records import check_priority
from .segments import Segments, ensure_queue

__all__ = ["PUT_REQUESTS_AT_LEAST", "ROOM_POLL_MAX", "ROOM_POLL_MIN", "Producer", "room_polls"]

logger = logging.getLogger(__name__)

# A put waiting for room counts the queue again after this long, doubling
# up to ROOM_POLL_MAX.
ROOM_POLL_MIN = 0.05
ROOM_POLL_MAX = 0.5
# Seconds a put's requests get whatever its timeout (which bounds the wait
# for room; at most the request timeout), so that a short one does not
# leave a transaction sent and its outcome unknown.
PUT_REQUESTS_AT_LEAST = 2.0


def room_polls() -> Iterator[float]:
    """Seconds to wait between counts of a full queue (on a thread or on
    a loop): ROOM_POLL_MIN, doubling up to ROOM_POLL_MAX."""
    delay = ROOM_POLL_MIN
    while True:
        yield delay
        delay = min(2 * delay, ROOM_POLL_MAX)


class Producer:
    """Puts into the queue ``name`` for one queue handle."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        segments: Segments,
        max_items: int | None,
        check_open: Callable[[], None],
    ) -> None:
        self._ctx = ctx
        self._check_open = check_open
        self._name = name
        self._paths = ctx.layout.work_queue(name)
        self._segments = segments
        self._max_items = max_items
        self._ready = False  # the queue's folders exist

    def ensure_paths(self, deadline: float | None) -> None:
        """Make the queue's folders exist (once, unless they were removed)."""
        if not self._ready:
            ensure_queue(self._ctx, self._name, deadline)
            self._ready = True

    def put(
        self,
        payloads: list[Any],
        priority: int,
        headers: dict[str, str] | None,
        want_result: bool,
        timeout: float | None,
        wait_for_room: bool = True,
    ) -> list[str]:
        """Put ``payloads`` in order; returns their item ids. Without
        ``wait_for_room`` a full queue raises :class:`QueueFull` at once (the
        asyncio queue waits for room on its loop)."""
        check_priority(priority)
        self._check_open()
        hdrs = envelope.check_headers(headers)
        ctx = self._ctx
        config = ctx.config
        entries = [
            envelope.make_entry(
                config.serializer,
                topic=self._name,
                payload=p,
                headers=hdrs,
                publisher_id=ctx.client_id,
            )
            for p in payloads
        ]
        datas = [envelope.encode([e]) for e in entries]
        for data in datas:
            if len(data) > config.max_message_bytes:
                raise PayloadTooLarge(len(data), config.max_message_bytes)
        deadline = deadline_after(config.request_timeout if timeout is None else timeout)
        paths = self._paths
        with translated(f"put to queue {self._name!r}"):
            self.ensure_paths(ctx.at_least(deadline, PUT_REQUESTS_AT_LEAST))
            acl_size = ctx.acl.size(NodeKind.ITEM)
            budget = config.max_transaction_bytes - 512 - len(paths.base.encode())
            budget -= ctx.acl.size(NodeKind.RECEIPT)
            most = min(MAX_ITEMS_PER_PUT, self._max_items or MAX_ITEMS_PER_PUT)
            start = 0
            per_item = len(paths.items.encode()) + 80 + CREATE_OP_OVERHEAD + acl_size  # bytes
            while start < len(datas):
                used, end = 0, start
                while end < len(datas) and end - start < most:
                    size = len(datas[end]) + per_item
                    if end > start and used + size > budget:
                        break
                    used += size
                    end += 1
                try:
                    self.wait_for_room(end - start, deadline if wait_for_room else 0.0)
                except QueueFull as full:
                    if not start:
                        raise
                    done = tuple(e.id for e in entries[:start])
                    raise QueueFull(
                        self._name, full.items, full.limit, put_ids=done, asked=len(entries)
                    ) from None
                self._put_once(datas[start:end], priority, want_result, deadline)
                start = end
        return [e.id for e in entries]

    def wait_for_room(self, count: int, deadline: float | None) -> None:
        """Return once ``count`` more items fit under ``max_items``; raise
        :class:`QueueFull` if they do not before ``deadline``. Several
        producers counting at once may together go over by what they put
        at that moment."""
        limit = self._max_items
        if limit is None:
            return
        delays = room_polls()
        while True:
            read_by = deadline if not expired(deadline) else self._ctx.deadline()
            held = self._segments.count(read_by)
            if held + count <= limit:
                return
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise QueueFull(self._name, held, limit)
            self._check_open()
            delay = next(delays)
            time.sleep(delay if left is None else min(delay, left))

    def _put_once(
        self, datas: list[bytes], priority: int, want_result: bool, deadline: float | None
    ) -> None:
        paths, segments = self._paths, self._segments
        acl = self._ctx.acl.acl(NodeKind.ITEM)
        deadline = self._ctx.at_least(deadline, PUT_REQUESTS_AT_LEAST)
        while True:
            seen = segments.current(deadline)
            number, version = seen

            def ops(txn: Any, guid: str, number: int = number, version: int = version) -> None:
                txn.check(paths.base, version)
                prefix = paths.item_prefix(priority, guid, wants_result=want_result, segment=number)
                for data in datas:
                    txn.create(prefix, data, acl=acl, sequence=True)

            outcome = self._ctx.writer.commit(ops, deadline, f"put to queue {self._name!r}")
            if outcome.applied:
                if segments.full(outcome.results or ()):
                    self._roll_after_put(seen, deadline)
                return
            error = outcome.error
            if isinstance(error, BadVersionError):
                segments.forget()  # another producer rolled on: read where to put now
            elif isinstance(error, NoNodeError) and outcome.index == 0:
                self._ready = False  # the queue's nodes were removed: make them again
                self.ensure_paths(deadline)
                segments.forget()
            elif isinstance(error, NoNodeError):
                segments.roll(seen, deadline)  # the segment was removed
            else:
                raise ZooKeeperError(f"put to queue {self._name!r}: {type(error).__name__}")

    def _roll_after_put(self, seen: tuple[int, int], deadline: float | None) -> None:
        """Roll on after a put that filled the segment. The put is done
        whatever happens here: a failed roll is made by the next put."""
        try:
            self._segments.roll(seen, deadline)
        except ZkPubSubError as exc:
            logger.debug("queue %r: rolling to a new segment: %s", self._name, exc)
            self._segments.forget()
