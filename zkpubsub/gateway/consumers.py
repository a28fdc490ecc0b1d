"""Durable subscriptions the gateway holds on behalf of HTTP consumers.

A named HTTP subscription ``<name>`` is a library client with the stable
id ``http-<name>`` and a durable subscription (``durable=True``) to each of
its topics. So what the library guarantees a durable subscriber holds for
an HTTP consumer:

* every message published to a topic after the subscription was made is
  kept in its queue in ZooKeeper until the consumer acked it — while the
  consumer is away, while the gateway is restarting, and while nobody holds
  the subscription, for up to the cleaner's grace period;
* messages of one topic are handed out in queue order. A message counts as
  handled (its node may be deleted) only when the consumer acked it: the
  library's handler for it returns only then. So a topic has one message
  out at a time; the next is handed out once it is acked;
* a message handed out and not acked within the ack deadline is handed out
  again (``deliveries`` one higher); so is one whose holder let go.

The gateway holds a subscription (a ZooKeeper session with the client id)
from its first use until it has been idle — no pull, ack or open stream —
for ``idle_timeout``, and no message it handed out is within its ack
deadline; it then closes that client, leaving the subscription
registered, and the cleaner's grace starts. A client id is held by one live
session: a second gateway asked for a subscription another gateway holds
answers 409 (``ClientIdInUse``) until the holder lets it go or its session
expires. A gateway that restarts on the same machine takes its
subscriptions over at once (the library's fast restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from ..aio import AsyncClient, AsyncSubscription
from ..errors import OperationTimeout, ZkPubSubError
from ..layout import validate_name
from ..message import Message
from ..state import Gap
from ..subscription import HandlerInterrupted
from .auth import Principal
from .bus import Bus
from .problems import Problem, bad_input
from .settings import GatewaySettings

__all__ = ["CLIENT_ID_PREFIX", "Consumers", "HttpSubscription", "Lent"]

logger = logging.getLogger(__name__)

CLIENT_ID_PREFIX: Final = "http-"
# The handler only fails when the event loop stops under it (a message let
# go is HandlerInterrupted, which is no failure): never give a message up.
HANDLER_ATTEMPTS: Final = 2**31 - 1
# How often idle subscriptions are looked for.
REAP_INTERVAL: Final = 1.0
# An auto-acked pull that has some messages keeps gathering for this long
# while more keep coming.
GATHER: Final = 0.005


@dataclass
class Lent:
    """A message the library handed to the gateway; its handler waits on
    ``done`` (set by an ack; ``HandlerInterrupted`` lets it go unhandled)."""

    message: Message
    done: asyncio.Future[None]
    deliveries: int = 0
    ack_id: str | None = None
    deadline: float = 0.0  # loop time the ack is due by


@dataclass
class HttpSubscription:
    """One durable HTTP subscription held by this gateway."""

    name: str
    owner: str  # the credentials profile its client uses ("" for the gateway's own)
    client: AsyncClient
    ack_deadline: float
    subs: dict[str, AsyncSubscription] = field(default_factory=dict)
    waiting: deque[Lent] = field(default_factory=deque)
    out: dict[str, Lent] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_used: float = field(default_factory=time.monotonic)
    streams: int = 0  # event streams and pulls waiting now
    closing: bool = False
    # what its client heard it may have missed, not told to a consumer yet
    gaps: list[Gap] = field(default_factory=list)

    @property
    def topics(self) -> list[str]:
        return sorted(self.subs)

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def heard(self, gap: Gap) -> None:
        """A gap notice of its client (on the loop): for the next pull or
        stream, which it also wakes."""
        self.gaps.append(gap)
        self.changed.set()

    def take_gaps(self) -> list[Gap]:
        taken, self.gaps = self.gaps, []
        return taken

    def handler(self) -> Callable[[Message], Any]:
        async def lend(message: Message) -> None:
            if self.closing:
                raise HandlerInterrupted
            lent = Lent(message, asyncio.get_running_loop().create_future())
            self.waiting.append(lent)
            self.changed.set()
            await lent.done  # an ack returns; HandlerInterrupted leaves it queued

        return lend

    def lent_until(self) -> float:
        """The loop time the last ack deadline of a message out ends (0 if
        none is out): until then an ack may come, and the subscription is
        held however idle."""
        return max((lent.deadline for lent in self.out.values()), default=0.0)

    def _expire(self, now: float) -> float | None:
        """Put messages past their ack deadline back; the next deadline."""
        soonest: float | None = None
        for ack_id, lent in list(self.out.items()):
            if lent.deadline <= now:
                del self.out[ack_id]
                lent.ack_id = None
                self.waiting.appendleft(lent)
            elif soonest is None or lent.deadline < soonest:
                soonest = lent.deadline
        return soonest

    def _take(self, limit: int, ack_deadline: float, auto_ack: bool, now: float) -> list[Lent]:
        taken: list[Lent] = []
        while self.waiting and len(taken) < limit:
            lent = self.waiting.popleft()
            if lent.done.done():
                continue  # let go meanwhile
            lent.deliveries += 1
            if auto_ack:
                lent.ack_id = None
                lent.done.set_result(None)
            else:
                lent.ack_id = uuid.uuid4().hex
                lent.deadline = now + ack_deadline
                self.out[lent.ack_id] = lent
            taken.append(lent)
        return taken

    async def pull(
        self,
        limit: int,
        wait: float,
        ack_deadline: float | None,
        auto_ack: bool,
        gone: asyncio.Event | None = None,
    ) -> list[Lent]:
        """Up to ``limit`` messages, waiting up to ``wait`` seconds for the
        first. Each gets an ack id due within ``ack_deadline`` seconds, or is
        acked at once with ``auto_ack``. Once ``gone`` is set (the consumer
        went away; set ``changed`` with it) it takes no more, and what it
        took with ack ids goes back at once: none (nobody reads the answer)."""
        self.streams += 1  # a waiting pull keeps the subscription held
        try:
            taken = await self._pull(limit, wait, ack_deadline, auto_ack, gone)
        finally:
            self.streams -= 1
            self.touch()
        if gone is None or not gone.is_set():
            return taken
        self.give_back(taken)
        return []

    def give_back(self, taken: Iterable[Lent]) -> None:
        """Messages taken with ack ids and handed to nobody (their consumer
        left, or a stream could not write them): out again at once, first,
        their deliveries as before."""
        for lent in reversed(list(taken)):
            if lent.ack_id is not None and self.out.pop(lent.ack_id, None) is lent:
                lent.deliveries -= 1
                self._requeue(lent)

    def _requeue(self, lent: Lent) -> None:
        """``lent``, taken out of ``out``, is next to be handed out."""
        lent.ack_id = None
        self.waiting.appendleft(lent)
        self.changed.set()

    async def _pull(
        self,
        limit: int,
        wait: float,
        ack_deadline: float | None,
        auto_ack: bool,
        gone: asyncio.Event | None,
    ) -> list[Lent]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait
        deadline = self.ack_deadline if ack_deadline is None else ack_deadline
        taken: list[Lent] = []
        while not self.closing and not (gone is not None and gone.is_set()):
            now = loop.time()
            self.changed.clear()
            soonest = self._expire(now)
            taken += self._take(limit - len(taken), deadline, auto_ack, now)
            if len(taken) >= limit or (self.gaps and not taken):
                break  # full, or a gap to tell now
            if taken:
                if not auto_ack:
                    break
                # the library hands the next message over once this one is acked
                try:
                    await asyncio.wait_for(self.changed.wait(), GATHER)
                except asyncio.TimeoutError:
                    break
                continue
            left = give_up - now
            if left <= 0:
                break
            if soonest is not None:
                left = min(left, max(0.0, soonest - now) + 0.001)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return taken

    def ack(self, ack_ids: Iterable[str], nack_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Ack (the message is handled: its node may go) or nack (hand it
        out again now) by ack id; returns ``(done, unknown)``."""
        self.touch()
        done, unknown = [], []
        for ack_id in ack_ids:
            lent = self.out.pop(ack_id, None)
            if lent is None or lent.done.done():
                unknown.append(ack_id)
                continue
            lent.done.set_result(None)
            done.append(ack_id)
        for ack_id in nack_ids:
            lent = self.out.pop(ack_id, None)
            if lent is None or lent.done.done():
                unknown.append(ack_id)
                continue
            self._requeue(lent)  # a delivery that counts: a nack is an answer
            done.append(ack_id)
        return done, unknown

    def let_go(self) -> None:
        """Every message lent and not acked stays queued, to come again."""
        self.closing = True
        for lent in [*self.waiting, *self.out.values()]:
            if not lent.done.done():
                lent.done.set_exception(HandlerInterrupted())
                lent.done.exception()  # retrieved: the handler may be gone
        self.waiting.clear()
        self.out.clear()
        self.changed.set()

    def let_go_of(self, topic: str) -> None:
        for lent in [*self.waiting, *self.out.values()]:
            if lent.message.topic == topic and not lent.done.done():
                lent.done.set_exception(HandlerInterrupted())
                lent.done.exception()
        self.waiting = deque(x for x in self.waiting if x.message.topic != topic)
        self.out = {k: x for k, x in self.out.items() if x.message.topic != topic}


class Consumers:
    """The HTTP subscriptions this gateway holds, opened on demand."""

    def __init__(self, bus: Bus, settings: GatewaySettings) -> None:
        self._bus = bus
        self._settings = settings
        self._held: dict[str, HttpSubscription] = {}
        # a lock per subscription name while someone uses or waits for it
        # (names come from requests: dropped when unused, so they do not pile up)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # gap notices of subscriptions let go before anyone was told them:
        # told when the subscription is taken up again here
        self._untold: dict[str, list[Gap]] = {}
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._held)

    def wake_all(self) -> None:
        """Wake every pull and stream waiting (they look again at what
        ends them)."""
        for held in self._held.values():
            held.changed.set()

    def outstanding(self) -> int:
        return sum(len(s.out) for s in self._held.values())

    def start(self) -> None:
        self._reaper = asyncio.ensure_future(self._reap())

    @staticmethod
    def client_id(name: str) -> str:
        with bad_input("subscription name"):
            validate_name(name, "subscription name")
            return validate_name(CLIENT_ID_PREFIX + name, "subscription name")

    @contextlib.asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(name) or (asyncio.Lock(), 0)
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    async def _open(self, name: str, principal: Principal) -> HttpSubscription:
        options = self._bus.client_options(principal.profile)
        # gaps heard while the client is made (a purge's notice) come first
        early: list[Gap] = []
        made: list[HttpSubscription] = []

        def heard(gap: Gap) -> None:  # on the loop
            if made:
                made[0].heard(gap)
            else:
                early.append(gap)

        client = await AsyncClient.connect(
            self._settings.hosts,
            client_id=self.client_id(name),
            cleaner=False,
            registration_wait=0.0,
            on_gap=heard,
            **options,
        )
        logger.info("holding subscription %r", name)
        held = HttpSubscription(name, principal.profile or "", client, self._settings.ack_deadline)
        made.append(held)
        for gap in [*self._untold.pop(name, []), *early]:
            held.heard(gap)
        return held

    async def _subscribe(self, held: HttpSubscription, topic: str) -> None:
        with bad_input("topic"):
            held.subs[topic] = await held.client.subscribe(
                topic,
                held.handler(),
                durable=True,
                max_attempts=HANDLER_ATTEMPTS,
                retry_delay=0.1,
                max_retry_delay=1.0,
            )

    async def _registered_topics(self, name: str, principal: Principal) -> list[str]:
        client = await self._bus.client(principal)
        stats = await client.stats()
        wanted = self.client_id(name)
        return sorted(t for t, ids in stats.topics.items() if wanted in ids)

    async def put(
        self, name: str, topics: list[str], principal: Principal
    ) -> tuple[HttpSubscription, bool]:
        """Make (or change) subscription ``name`` to receive ``topics``;
        topics it had and are not listed are unsubscribed (their queues
        deleted). ``(subscription, created)``. Every topic is checked
        before anything is made or changed."""
        self.client_id(name)
        for topic in topics:
            with bad_input("topic"):
                validate_name(topic, "topic")
        for topic in topics:
            principal.require("topic", topic)
        async with self._lock(name):
            held = self._held.get(name)
            created = False
            if held is None or held.closing:
                known = await self._registered_topics(name, principal)
                for topic in known:  # those it drops too, as a GET or a DELETE needs
                    principal.require("topic", topic)
                created = not known
                held = await self._open(name, principal)
                self._held[name] = held
                try:
                    for topic in known:
                        if topic in topics:
                            await self._subscribe(held, topic)
                except BaseException:
                    self._held.pop(name, None)
                    await self._close(held)
                    raise
                for topic in known:
                    if topic not in topics:
                        with bad_input("topic"):
                            await held.client.unsubscribe(topic)
            else:
                for topic in held.topics:
                    principal.require("topic", topic)
            for topic in sorted(set(held.subs) - set(topics)):
                held.let_go_of(topic)
                await held.subs.pop(topic).unsubscribe()
            for topic in topics:
                if topic not in held.subs:
                    await self._subscribe(held, topic)
            held.touch()
            return held, created

    async def get(self, name: str, principal: Principal) -> HttpSubscription:
        """Subscription ``name``, held here (opened if it is registered);
        a 404 problem if it does not exist."""
        self.client_id(name)
        held = self._held.get(name)
        if held is None or held.closing:
            async with self._lock(name):
                held = self._held.get(name)
                if held is None or held.closing:
                    held = await self._reopen(name, principal)
        for topic in held.topics:
            principal.require("topic", topic)
        held.touch()
        return held

    async def _reopen(self, name: str, principal: Principal) -> HttpSubscription:
        topics = await self._registered_topics(name, principal)
        if not topics:
            raise Problem(
                404,
                "no-subscription",
                "No such subscription",
                f"no subscription {name!r}: it was never made, was deleted, or its "
                "consumer stayed away longer than the cleaner's grace",
            )
        for topic in topics:
            principal.require("topic", topic)
        held = await self._open(name, principal)
        try:
            for topic in topics:
                await self._subscribe(held, topic)
        except BaseException:
            await self._close(held)
            raise
        self._held[name] = held
        return held

    async def delete(self, name: str, principal: Principal) -> None:
        """End subscription ``name``: deregister it and delete its queues."""
        held = await self.get(name, principal)
        async with self._lock(name):
            held.let_go()
            try:
                for topic in list(held.subs):
                    await held.subs.pop(topic).unsubscribe()
                if held.client.unfinished:
                    # its client would finish them once ZooKeeper answers,
                    # but it closes now: ended in part, or not at all
                    raise OperationTimeout(
                        f"subscription {name!r}: ZooKeeper did not answer its end "
                        f"({', '.join(held.client.unfinished)}); it may still exist: "
                        "delete it again"
                    )
            finally:
                self._held.pop(name, None)
                await self._close(held)
                self._untold.pop(name, None)  # ended: nothing left to tell

    async def _close(self, held: HttpSubscription) -> None:
        if held.gaps:  # kept for the next holder here (a delete drops them below)
            self._untold.setdefault(held.name, []).extend(held.take_gaps())
        held.let_go()
        try:
            await held.client.close()
        except ZkPubSubError as exc:
            logger.warning("closing subscription %r: %s", held.name, exc)
        logger.info("let go of subscription %r", held.name)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            for name, held in list(self._held.items()):
                if not self._idle(held):
                    continue
                async with self._lock(name):  # looked at again: a pull may have come meanwhile
                    if self._held.get(name) is held and self._idle(held):
                        del self._held[name]
                        await self._close(held)

    def _idle(self, held: HttpSubscription) -> bool:
        """(On the loop.) No pull, ack or stream for the idle timeout, and
        no message out within its ack deadline."""
        return (
            not held.streams
            and held.last_used <= time.monotonic() - self._settings.idle_timeout
            and held.lent_until() <= asyncio.get_running_loop().time()
        )

    async def close(self) -> None:
        """Let go of every subscription (each stays registered)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        held, self._held = list(self._held.values()), {}
        # each is a client of its own: they close side by side (one by one,
        # a ZooKeeper gone cost each its session's end in turn)
        outcomes = await asyncio.gather(*(self._close(sub) for sub in held), return_exceptions=True)
        for sub, outcome in zip(held, outcomes, strict=True):
            if isinstance(outcome, Exception):
                logger.error("closing subscription %r", sub.name, exc_info=outcome)
