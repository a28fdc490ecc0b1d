"""Receiving: one subscription reads its queue ``messages/<id>/<topic>``.

Guarantees:

* Messages arrive in queue sequence order (packed batches in their order).
* Handlers run on a dispatcher thread of this subscription, never on the
  ZooKeeper client's thread.
* A node is deleted only after every message in it has been handled: its
  handler returned, or raised ``max_attempts`` times (each failure goes to
  ``on_error``). A subscriber that dies first gets the node again when it
  comes back under the same client id (at-least-once).
* An undecodable or foreign node goes to ``on_error`` as a
  :class:`~zkpubsub.DecodeError` and is then deleted: it never blocks the
  queue.
* Without a handler, ``get()`` and iteration hand messages out in order; a
  message is acknowledged when the next one is asked for (or the
  subscription is closed), so a consumer that dies while holding one gets
  it again.

A subscription owns its registration (made when it opens, removed when it
closes as its kind asks) and its threads: the pump (:mod:`zkpubsub._reader`)
and, with a handler, the dispatcher.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ._buffer import Delivery, DeliveryBuffer, Node
from ._context import Context
from ._reader import QueueReader
from ._registration import delete_queue, register_subscription, unregister_subscription
from .connection import deadline_after, translated
from .message import Message
from .session import SubscriptionRegistry

__all__ = ["ErrorHandler", "Handler", "Subscription", "SubscriptionStats", "log_error"]

logger = logging.getLogger(__name__)

Handler = Callable[[Message], Any]
ErrorHandler = Callable[[BaseException, "Message | None"], Any]


def log_error(error: BaseException, message: Message | None) -> None:
    """The default ``on_error``: log it."""
    where = f" (message {message.id} on {message.topic!r})" if message else ""
    logger.error("subscription error%s: %s", where, error, exc_info=error)


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """Counters of one subscription.

    ``delivered``: messages handled (handler returned, or handed out by
    ``get``). ``pending``: read from the queue or listed but not handled yet.
    ``errors``: handler failures and undecodable nodes. ``dropped``: messages
    given up after ``max_attempts`` failures.
    """

    topic: str
    delivered: int
    pending: int
    errors: int
    dropped: int
    nodes_deleted: int
    extra: dict[str, int] = field(default_factory=dict)


class Subscription:
    """Messages of one topic for one client. Made by ``Client.subscribe``."""

    def __init__(
        self,
        ctx: Context,
        registry: SubscriptionRegistry,
        topic: str,
        handler: Handler | None,
        *,
        on_error: ErrorHandler | None,
        max_attempts: int,
        prefetch: int,
        durable: bool = False,
    ) -> None:
        self._topic = topic
        self._durable = durable
        self._ctx = ctx
        self._registry = registry
        self._registered = False
        self._handler = handler
        self._on_error: ErrorHandler = on_error or log_error
        self._max_attempts = max_attempts
        self._buffer = DeliveryBuffer(prefetch)
        self._reader = QueueReader(ctx, topic, self._buffer)
        self._holding: Delivery | None = None  # get(): handed out, not acked
        self._closed = False
        self._close_lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        if handler is not None:
            self._dispatcher = threading.Thread(
                target=self._dispatch_loop, name=f"zkpubsub-dispatch-{topic}", daemon=True
            )

    def open(self) -> None:
        """Register (joining the client's open subscriptions) and start
        receiving. When this returns, every later publish reaches it."""
        ctx = self._ctx
        with self._registry.lock:
            self._registry.add(self)
            try:
                with translated(f"subscribe to {self._topic!r}"):
                    register_subscription(ctx, self._topic, ctx.deadline(), durable=self._durable)
                self._registered = True
            except BaseException:
                self._registry.discard(self)
                raise
            self._registry.registered(self)
        self._reader.start()
        if self._dispatcher is not None:
            self._dispatcher.start()

    def restored(self) -> None:
        """The client registered again on a new session: read the queue again."""
        self._reader.relist()

    # -- public -------------------------------------------------------------

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def durable(self) -> bool:
        return self._durable

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def delivered(self) -> int:
        return self._buffer.counters.delivered

    @property
    def errors(self) -> int:
        return self._buffer.counters.errors

    @property
    def pending(self) -> int:
        return self._buffer.pending

    def stats(self) -> SubscriptionStats:
        buffer = self._buffer
        with buffer.cond:
            c = buffer.counters
            return SubscriptionStats(
                self._topic,
                c.delivered,
                buffer.pending,
                c.errors,
                c.dropped,
                c.nodes_deleted,
                {"redelivered": c.redelivered},
            )

    def get(self, timeout: float | None = None) -> Message | None:
        """The next message, or ``None`` if ``timeout`` passes or the
        subscription closes first. Asking for the next message acknowledges
        the previous one (its node is deleted once all its messages are).
        Undecodable nodes are reported to ``on_error`` and skipped."""
        if self._handler is not None:
            raise TypeError("get() is for subscriptions made without a handler")
        deadline = deadline_after(timeout)
        self._ack_held()
        while True:
            delivery = self._next(deadline)
            if delivery is None:
                return None
            if delivery.error is not None:
                self._report(delivery.error, None)
                self._handled(delivery.node)
                continue
            assert delivery.message is not None
            with self._buffer.cond:
                self._holding = delivery
                self._buffer.counters.delivered += 1
            return delivery.message

    def __iter__(self) -> Iterator[Message]:
        """Messages until the subscription is closed."""
        while True:
            msg = self.get()
            if msg is None:
                return
            yield msg

    def close(self) -> None:
        """Stop receiving. A plain subscription is deregistered; a durable one
        stays registered (publishers keep filling its queue). The queue and
        its backlog are kept for a later ``subscribe`` by the same client id.
        Idempotent."""
        self._shutdown(drop_queue=False)

    def unsubscribe(self) -> None:
        """Stop receiving, remove the registration and delete the queue with
        its backlog. Idempotent."""
        self._shutdown(drop_queue=True)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Subscription {self._topic!r} {state} delivered={self.delivered}>"

    # -- hand-off between threads ---------------------------------------------

    def _next(self, deadline: float | None) -> Delivery | None:
        delivery = self._buffer.next(deadline)
        if delivery is not None and self._buffer.low():
            self._reader.wake()
        return delivery

    def _ack_held(self) -> None:
        with self._buffer.cond:
            held, self._holding = self._holding, None
        if held is not None:
            self._handled(held.node)

    def _handled(self, node: Node) -> None:
        if self._buffer.handled(node):
            self._reader.wake()

    def _report(self, error: BaseException, message: Message | None) -> None:
        with self._buffer.cond:
            self._buffer.counters.errors += 1
        try:
            self._on_error(error, message)
        except Exception:
            logger.exception("on_error raised while reporting %r", error)

    # -- dispatcher thread ---------------------------------------------------------

    def _dispatch_loop(self) -> None:
        assert self._handler is not None
        handler = self._handler
        counters = self._buffer.counters
        while True:
            delivery = self._next(None)
            if delivery is None:
                return
            if delivery.error is not None:
                self._report(delivery.error, None)
                self._handled(delivery.node)
                continue
            message = delivery.message
            assert message is not None
            for attempt in range(1, self._max_attempts + 1):
                if attempt > 1:
                    message = replace(message, attempt=attempt)
                try:
                    handler(message)
                except Exception as exc:
                    self._report(exc, message)
                    with self._buffer.cond:
                        if attempt == self._max_attempts:
                            counters.dropped += 1
                        else:
                            counters.redelivered += 1
                    continue
                with self._buffer.cond:
                    counters.delivered += 1
                break
            self._handled(delivery.node)

    # -- shutdown -------------------------------------------------------------------------

    def _shutdown(self, *, drop_queue: bool) -> None:
        with self._close_lock:
            already = self._closed
            self._closed = True
        timeout = self._ctx.config.request_timeout
        if not already:
            self._buffer.close()
            dispatcher = self._dispatcher
            if dispatcher is not None and dispatcher is not threading.current_thread():
                dispatcher.join(timeout)
            self._ack_held()
            self._reader.stop(timeout)
        self._deregister(drop_queue=drop_queue)

    def _deregister(self, *, drop_queue: bool) -> None:
        """Leave the client's open subscriptions; remove the registration if
        asked (always for ``unsubscribe``, for a plain subscription on
        ``close`` unless the client is closing: ending the session removes
        it) and the queue."""
        ctx = self._ctx
        with self._registry.lock:
            self._registry.discard(self)
            unregister = self._registered and (drop_queue or not self._durable)
            if unregister and ctx.is_closed() and not self._durable:
                unregister = False
            deadline = ctx.deadline()
            with translated(f"unsubscribe from {self._topic!r}"):
                if unregister:
                    unregister_subscription(ctx, self._topic, deadline)
                    self._registered = False
                if drop_queue:
                    delete_queue(ctx, self._topic, deadline)
