"""Handlers that misbehave: whatever they raise, whatever they return, however
long they block, the subscription goes on, nothing is lost and nothing
stays silent."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from zkpubsub import Client, Message

from .helpers import Collector, wait_until

MakeClient = Callable[..., Client]


class Errors:
    def __init__(self) -> None:
        self.seen: list[tuple[type[BaseException], Any]] = []

    def __call__(self, error: BaseException, message: Message | None) -> None:
        self.seen.append((type(error), message.payload if message else None))


@pytest.mark.parametrize(
    "raised",
    [SystemExit, KeyboardInterrupt, GeneratorExit, asyncio.CancelledError],
    ids=lambda e: e.__name__,
)
def test_a_handler_raising_a_base_exception_fails_that_attempt_and_the_subscription_goes_on(
    make_client: MakeClient, raised: type[BaseException]
) -> None:
    good = Collector()
    errors = Errors()

    def handler(message: Message) -> None:
        if message.payload == "bad":
            raise raised()
        good(message)

    sub = make_client().subscribe("t", handler, on_error=errors, retry_delay=0)
    publisher = make_client()
    for payload in ("before", "bad", "after"):
        publisher.publish("t", payload)
    assert good.wait(2) == ["before", "after"]
    assert errors.seen == [(raised, "bad")] * 3
    # "after" is counted once its handler returned, which may trail the collector
    wait_until(lambda: sub.stats().delivered >= 2, 20, "the deliveries counted")
    stats = sub.stats()
    assert (stats.delivered, stats.dropped, stats.pending) == (2, 1, 0)
    assert not sub.closed


def test_an_async_handler_is_refused_with_a_pointer_to_the_asyncio_api(
    make_client: MakeClient,
) -> None:
    async def handler(message: Message) -> None:
        pass

    class AsyncCallable:
        async def __call__(self, message: Message) -> None:
            pass

    client = make_client()
    for fn in (handler, AsyncCallable()):
        with pytest.raises(TypeError, match=r"zkpubsub\.aio"):
            client.subscribe("t", fn)
        with pytest.raises(TypeError, match="async"):
            client.subscribe("t", on_error=fn)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"zkpubsub\.aio"):
            client.queue("q").consume(fn)  # type: ignore[arg-type]
    assert client.subscriptions() == []


def test_a_coroutine_returned_by_a_handler_is_a_failure_not_a_delivery(
    make_client: MakeClient,
) -> None:
    ran: list[Any] = []

    async def work(message: Message) -> None:
        ran.append(message.payload)

    errors = Errors()
    sub = make_client().subscribe("t", lambda m: work(m), on_error=errors, retry_delay=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" would fail here
        make_client().publish("t", "x")
        wait_until(lambda: sub.stats().dropped == 1, 20, "the message dropped")
    assert ran == []
    assert errors.seen == [(TypeError, "x")] * 3
    assert sub.stats().delivered == 0


def test_failed_attempts_wait_longer_each_time_without_holding_up_other_topics(
    make_client: MakeClient,
) -> None:
    attempts: list[float] = []
    handled: dict[str, float] = {}

    def flaky(message: Message) -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("the cache server is restarting")
        handled["slow"] = time.monotonic()

    def quick(message: Message) -> None:
        handled["fast"] = time.monotonic()

    subscriber = make_client()
    subscriber.subscribe("slow", flaky, on_error=Errors(), retry_delay=0.4, max_retry_delay=5)
    subscriber.subscribe("fast", quick)
    publisher = make_client()
    publisher.publish("slow", "invalidate")
    wait_until(lambda: attempts, 20, "the first attempt")
    publisher.publish("fast", "invalidate")
    wait_until(lambda: "slow" in handled, 20, "the third attempt")
    first_wait, second_wait = attempts[1] - attempts[0], attempts[2] - attempts[1]
    assert first_wait >= 0.4 and second_wait >= 0.8  # doubled
    assert handled["fast"] < attempts[2], "the other topic waited for the retries"


def test_close_gives_up_on_a_blocked_handler_and_leaves_its_message_queued(
    make_client: MakeClient,
) -> None:
    took = close_while_handlers_are_stuck(make_client, "stuck", ["t"])
    assert 1.0 <= took < 1.0 + 5.0  # the close timeout, plus the session's own close


def test_blocked_handlers_of_many_subscriptions_share_one_close_timeout(
    make_client: MakeClient,
) -> None:
    took = close_while_handlers_are_stuck(make_client, "stuck-many", [f"t{i}" for i in range(6)])
    # one wait for all six handlers (each waited a close timeout of its own
    # before: six seconds), plus the session's own close
    assert 1.0 <= took < 1.0 + 3.5, took


def close_while_handlers_are_stuck(
    make_client: MakeClient, client_id: str, topics: list[str]
) -> float:
    """Close a client (``close_timeout=1``) whose handlers, one per topic,
    are all stuck with a message; how long the close took. The messages
    stay queued: a client of the same id gets them again."""
    release = threading.Event()
    entered: list[str] = []

    def stuck(message: Message) -> None:
        entered.append(message.payload)
        release.wait(60)

    first = make_client(client_id=client_id, close_timeout=1.0)
    for topic in topics:
        first.subscribe(topic, stuck)
    publisher = make_client()
    for topic in topics:
        publisher.publish(topic, f"in hand on {topic}")
    wait_until(lambda: len(entered) == len(topics), 20)
    try:
        start = time.monotonic()
        first.close()
        took = time.monotonic() - start
    finally:
        release.set()
    again = Collector()
    second = make_client(client_id=client_id)
    for topic in topics:
        second.subscribe(topic, again)
    assert sorted(again.wait(len(topics))) == sorted(f"in hand on {t}" for t in topics)
    return took
