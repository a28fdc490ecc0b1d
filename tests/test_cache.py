"""The invalidating cache against a real server: a slow fill racing an
update leaves nothing stale, the publishing instance reads its own writes,
gaps clear it, and its bounds hold."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from zkpubsub import Client, Message
from zkpubsub.cache import InvalidatingCache
from zkpubsub.testing import expire_session

from .helpers import wait_until

MakeClient = Callable[..., Client]
KEYS = [f"user:{i}" for i in range(5)]


class Source:
    """The source of truth: values by key, and a hook inside each read."""

    def __init__(self) -> None:
        self.values = {key: "v1" for key in KEYS}
        self.reads = 0
        self.during_read: Callable[[str], None] = lambda key: None

    def load(self, key: str) -> str:
        self.reads += 1
        value = self.values[key]  # read first ...
        self.during_read(key)  # ... and, while this fill is slow, the value changes
        return value


def race(source: Source, read: Callable[[str], Any], update: Callable[[str], None]) -> int:
    """For every key: a fill reads v1; before it finishes, v2 is written and
    invalidated (and the invalidation has reached the reader). Then read
    again: how many keys still give v1?"""

    def during_read(key: str) -> None:
        if source.values[key] == "v1":
            update(key)

    source.during_read = during_read
    for key in KEYS:
        assert read(key) == "v1"  # the slow fill returns what it read
    source.during_read = lambda key: None
    return sum(read(key) != "v2" for key in KEYS)


def test_a_dict_emptied_by_pop_keeps_the_value_of_a_fill_that_raced_an_update(
    make_client: MakeClient,
) -> None:
    """The naive pattern, as a control: every raced key stays stale."""
    source = Source()
    cache: dict[str, str] = {}
    popped: list[str] = []

    def on_message(message: Message) -> None:
        cache.pop(message.payload, None)
        popped.append(message.payload)

    make_client().subscribe("users", on_message)
    writer = make_client()

    def read(key: str) -> str:
        if key not in cache:
            cache[key] = source.load(key)
        return cache[key]

    def update(key: str) -> None:
        source.values[key] = "v2"
        writer.publish("users", key)
        wait_until(lambda: key in popped, 20, "the invalidation delivered")

    assert race(source, read, update) == len(KEYS)


def test_the_cache_keeps_no_value_from_a_fill_that_raced_an_update(
    make_client: MakeClient,
) -> None:
    source = Source()
    reader = InvalidatingCache(make_client(), "users", source.load)
    writer = InvalidatingCache(make_client(), "users", source.load)

    def update(key: str) -> None:
        seen = reader.stats().invalidations
        source.values[key] = "v2"
        writer.invalidate(key)
        wait_until(lambda: reader.stats().invalidations > seen, 20, "the invalidation delivered")

    assert race(source, reader.get, update) == 0
    assert reader.stats().stale_prevented == len(KEYS)


def test_the_instance_that_invalidates_reads_its_own_write_at_once(
    make_client: MakeClient,
) -> None:
    source = Source()
    cache = InvalidatingCache(make_client(), "users", source.load)
    assert cache.get("user:0") == "v1"
    source.values["user:0"] = "v2"
    cache.invalidate("user:0")
    assert cache.get("user:0") == "v2"  # no wait for the message


def test_a_session_expiry_clears_the_cache_and_discards_fills_under_way(
    make_client: MakeClient,
) -> None:
    source = Source()
    client = make_client()
    cache = InvalidatingCache(client, "users", source.load)
    cache.get("user:1")
    gate = threading.Event()
    source.during_read = lambda key: gate.wait(60)
    filler = threading.Thread(target=cache.get, args=("user:2",))
    filler.start()
    wait_until(lambda: source.reads == 2, 20, "the fill started")
    expire_session(client)  # for real, on the server: invalidations may have been missed
    wait_until(lambda: cache.stats().clears == 1, 30, "the gap notice")
    gate.set()
    filler.join(20)
    assert len(cache) == 0
    assert cache.stats().stale_prevented == 1


def test_ttl_and_size_bound_what_is_kept(make_client: MakeClient) -> None:
    source = Source()
    cache = InvalidatingCache(make_client(), "users", source.load, max_size=2)
    for key in KEYS[:3]:
        cache.get(key)
    assert len(cache) == 2 and KEYS[0] not in cache
    assert cache.stats().evicted == 1
    short = InvalidatingCache(make_client(), "other", source.load, ttl=0.05)
    short.get("user:0")
    reads = source.reads
    wait_until(lambda: short.get("user:0") and source.reads > reads, 5, "the entry expired")
    assert short.stats().expired >= 1
