"""The invalidating cache against a real server: a slow fill racing an
update leaves nothing stale (sync and asyncio), the publishing instance
reads its own writes, gaps clear it, a process frozen past its session
timeout does not serve what changed meanwhile, and its bounds hold."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from zkpubsub import Client, ClientClosed, Message
from zkpubsub.aio import AsyncClient
from zkpubsub.cache import AsyncInvalidatingCache, InvalidatingCache
from zkpubsub.layout import Layout
from zkpubsub.testing import expire_session

from .cache_proc import TOPIC, CacheProcess
from .helpers import wait_until

MakeClient = Callable[..., Client]
KEYS = [f"user:{i}" for i in range(5)]


class Source:
    """The source of truth: values by key, and a hook inside each read."""

    def __init__(self) -> None:
        self.values = {key: "v1" for key in KEYS}
        self.reads = 0
        self.during_read: Callable[[str], None] = lambda key: None
        self.gate = asyncio.Event()  # the async loader's slow first fill waits on it
        self.reads_of: dict[str, int] = {}

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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_async_cache_keeps_no_value_from_a_fill_that_raced_an_update(
    zk_hosts: str, zk_root: str
) -> None:
    source = Source()
    async with (
        AsyncClient.connect(zk_hosts, root=zk_root) as reader_client,
        AsyncClient.connect(zk_hosts, root=zk_root) as writer_client,
    ):
        reader = await AsyncInvalidatingCache.open(reader_client, "users", _async(source))
        writer = await AsyncInvalidatingCache.open(writer_client, "users", _async(source))
        stale = 0
        for key in KEYS:
            fill = asyncio.ensure_future(reader.get(key))
            await _eventually(lambda key=key: source.reads_of.get(key))  # the fill read v1
            seen = reader.stats().invalidations
            source.values[key] = "v2"
            await writer.invalidate(key)
            await _eventually(lambda seen=seen: reader.stats().invalidations > seen)
            source.gate.set()  # the slow fill ends, with v1
            assert await fill == "v1"
            source.gate.clear()
            stale += await _read_now(source, reader, key) != "v2"
        assert stale == 0
        assert reader.stats().stale_prevented == len(KEYS)
        # read your writes: dropped here before invalidate() returned
        assert await _read_now(source, writer, KEYS[0]) == "v2"
        source.values[KEYS[0]] = "v3"
        await writer.invalidate(KEYS[0])
        assert await _read_now(source, writer, KEYS[0]) == "v3"
        await reader.close()
        await writer.close()


def _async(source: Source) -> Callable[[str], Any]:
    source.gate = asyncio.Event()
    source.reads_of = {}

    async def load(key: str) -> str:
        source.reads += 1
        value = source.values[key]  # read first ...
        source.reads_of[key] = source.reads_of.get(key, 0) + 1
        if source.reads_of[key] == 1:
            await source.gate.wait()  # ... and the first fill of each key is slow
        return value

    return load


async def _read_now(source: Source, cache: AsyncInvalidatingCache[str, str], key: str) -> str:
    source.gate.set()
    try:
        return await cache.get(key)
    finally:
        source.gate.clear()


async def _eventually(condition: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_an_instance_frozen_past_its_session_timeout_does_not_serve_what_changed_meanwhile(
    make_client: MakeClient, zk_hosts: str, zk_root: str, raw_zk: KazooClient, tmp_path: Path
) -> None:
    store = tmp_path / "users.json"
    store.write_text(json.dumps({"user:1": "v1"}))

    def load(key: str) -> str:
        return str(json.loads(store.read_text())[key])

    writer = InvalidatingCache(make_client(), TOPIC, load)
    child = CacheProcess(zk_hosts, zk_root, store, "frozen-instance", session_timeout=2.0)
    child.start()
    try:
        assert child.get("user:1") == "v1"  # cached in the child now
        child.pause()
        # The server ends the frozen child's session: it misses what follows.
        wait_until(
            lambda: raw_zk.exists(Layout(zk_root).client("frozen-instance")) is None,
            30,
            "the frozen child's session to expire",
        )
        store.write_text(json.dumps({"user:1": "v2"}))
        writer.invalidate("user:1")
        child.resume()
        assert child.get("user:1") == "v2"  # at once, before its client noticed anything
        wait_until(
            lambda: raw_zk.exists(Layout(zk_root).client("frozen-instance")) is not None,
            30,
            "the child to register again",
        )
        store.write_text(json.dumps({"user:1": "v3"}))
        writer.invalidate("user:1")
        deadline = time.monotonic() + 20
        while child.get("user:1") != "v3":  # invalidations reach it again
            assert time.monotonic() < deadline, "the child never saw v3"
            time.sleep(0.05)
    finally:
        child.kill()


def test_a_cache_that_no_longer_hears_invalidations_refuses_to_serve(
    make_client: MakeClient,
) -> None:
    source = Source()
    closed_cache = InvalidatingCache(make_client(), "users", source.load)
    client = make_client()
    orphan = InvalidatingCache(client, "sessions", source.load)
    assert closed_cache.get("user:0") == "v1" and orphan.get("user:0") == "v1"
    closed_cache.close()
    client.close()  # the cache's client: its subscription ends with it
    for cache in (closed_cache, orphan):
        with pytest.raises(ClientClosed, match="no longer hears invalidations"):
            cache.get("user:0")
    closed_cache.close()  # still idempotent


@pytest.mark.anyio
async def test_a_closed_async_cache_refuses_to_serve(zk_hosts: str, zk_root: str) -> None:
    source = Source()
    async with AsyncClient.connect(zk_hosts, root=zk_root) as client:
        cache = AsyncInvalidatingCache(client, "users", _async(source))
        with pytest.raises(RuntimeError, match="start the cache first"):
            await cache.get("user:0")
        await cache.start()
        assert await _read_now(source, cache, "user:0") == "v1"
        await cache.close()
        with pytest.raises(ClientClosed, match="no longer hears invalidations"):
            await cache.get("user:0")
