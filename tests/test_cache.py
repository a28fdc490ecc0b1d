"""The invalidating cache against a real server: a slow fill racing an
update leaves nothing stale (sync and asyncio), the publishing instance
reads its own writes, gaps clear it, a process frozen past its session
timeout does not serve what changed meanwhile, and its bounds hold."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from zkpubsub import (
    AlreadySubscribed,
    Client,
    ClientClosed,
    ClientState,
    Gap,
    Message,
    PayloadTooLarge,
    SerializationError,
)
from zkpubsub.aio import AsyncClient
from zkpubsub.cache import AsyncInvalidatingCache, InvalidatingCache
from zkpubsub.layout import Layout
from zkpubsub.testing import ZooKeeperCluster, expire_session
from zkpubsub.testing.proxy import TcpProxy

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
    # the gap notice (a cut-off may clear too while it registers again, on a slow machine)
    wait_until(lambda: cache.stats().clears >= 1, 30, "the gap notice")
    gate.set()
    filler.join(20)
    assert len(cache) == 0
    assert cache.stats().stale_prevented == 1


def test_a_session_expiry_clears_the_cache_while_a_slow_gap_listener_holds_the_gap(
    make_client: MakeClient,
) -> None:
    """The cache cleared when the expiry's gap was told, on the client's
    thread, after the listeners added before it: a slow one of the user's
    held it up, and the cache served its copies from before the expiry
    (whose invalidations may have gone nowhere) for as long as it ran."""
    source = Source()
    client = make_client()
    release = threading.Event()
    client.add_gap_listener(lambda gap: release.wait(30))
    try:
        cache = InvalidatingCache(client, "users", source.load)
        assert cache.get("user:0") == "v1"
        assert cache.get("user:0") == "v1" and source.reads == 1  # held
        expire_session(client)  # back on a new session; the gap waits behind the listener
        reads = source.reads
        cache.get("user:0")
        assert source.reads == reads + 1  # loaded again, not served from before
        assert cache.stats().clears >= 1
    finally:
        release.set()


def test_a_gap_on_its_topic_clears_the_cache_on_the_same_session(
    make_client: MakeClient, raw_zk: KazooClient, zk_root: str
) -> None:
    """A gap told without an expiry (here: another client deleted the
    registration, so publishes meanwhile skipped it) clears the cache too."""
    source = Source()
    client = make_client()
    gaps: list[Gap] = []
    client.add_gap_listener(gaps.append)
    cache = InvalidatingCache(client, "users", source.load)
    assert cache._subscription is not None
    cache._subscription.backlog(timeout=10)  # a round trip: the guard's watches are set
    session = client._session.registered_session
    assert cache.get("user:0") == "v1"
    reads = source.reads
    raw_zk.delete(Layout(zk_root).subscriber("users", client.client_id))
    wait_until(lambda: gaps, 10, "the gap")
    wait_until(lambda: cache.stats().clears >= 1, 10, "the cache cleared")
    assert client._session.registered_session == session  # no expiry
    cache.get("user:0")
    assert source.reads == reads + 1


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


def test_a_cut_off_instance_stops_serving_what_it_kept_and_keeps_nothing_until_back(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """A partition: the instance hears nothing, its session expires, others'
    invalidations no longer reach it. It served its old copy until the
    network healed (15 s past its session's end in a probe)."""
    source = Source()
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="cache-partition") as proxy:
        cut_off = InvalidatingCache(
            make_client(hosts=proxy.address, session_timeout=4.0), "users", source.load
        )
        writer = InvalidatingCache(make_client(), "users", source.load)
        assert cut_off.get("user:0") == "v1" and cut_off.get("user:0") == "v1"
        proxy.block("drop")
        source.values["user:0"] = "v2"
        writer.invalidate("user:0")
        # suspended after 2/3 of the session timeout without an answer, cut
        # off a third of it later: then it asks the source, and keeps nothing
        wait_until(lambda: cut_off.get("user:0") == "v2", 15, "the source read again")
        assert cut_off.stats().cut_offs == 1 and len(cut_off) == 0
        reads = source.reads
        assert cut_off.get("user:0") == "v2" and source.reads == reads + 1
        proxy.unblock()
        # connected again (on a new session, with a gap): it keeps again
        # connected again: told to the cache on the client's thread, after any gap
        wait_until(lambda: not cut_off._entries._cut_off, 30, "reconnected")
        assert cut_off.get("user:0") == "v2"
        reads = source.reads
        assert cut_off.get("user:0") == "v2" and source.reads == reads
        assert cut_off.stats().cut_offs == 1


def test_a_cut_off_instance_counts_from_the_session_timeout_the_server_granted(
    tmp_path: Path,
) -> None:
    """A server bounds the session timeout a client asks for. Before, the
    cache counted its cut-off from the one asked for (12 s against 2 s
    granted): it served its old copy for seconds after the server had
    ended its session and others' invalidations no longer reached it."""
    source = Source()
    with ZooKeeperCluster(1, base_dir=tmp_path / "zk", max_session_timeout=2.0) as zk:
        host, port = zk.hosts.split(",")[0].rsplit(":", 1)
        with (
            TcpProxy((host, int(port)), name="granted") as proxy,
            Client(proxy.address, session_timeout=12.0, client_id="asked-12") as far,
            Client(zk.hosts, session_timeout=2.0) as near,
        ):
            assert far._ctx.conn.session_timeout == 2.0  # what the server granted
            cut_off = InvalidatingCache(far, "users", source.load)
            writer = InvalidatingCache(near, "users", source.load)
            assert cut_off.get("user:0") == "v1"
            proxy.block("drop")
            source.values["user:0"] = "v2"
            writer.invalidate("user:0")
            node = Layout(far.config.root).client("asked-12")
            raw = KazooClient(hosts=zk.hosts)
            raw.start(10)
            try:
                wait_until(lambda: raw.exists(node) is None, 20, "the session ended")
            finally:
                raw.stop()
                raw.close()
            time.sleep(1.0)  # the cut-off was due a little before the end
            assert cut_off.get("user:0") == "v2"  # not the copy kept
            assert cut_off.stats().cut_offs == 1
            proxy.unblock()


def test_a_slow_state_listener_of_the_users_does_not_hold_up_a_cut_off(
    make_client: MakeClient, zk_hosts: str
) -> None:
    """State listeners are told one after another on one thread: before, a
    listener of the user's told first that took long (here 20 s) held up
    the cache's cut-off for as long, and the cut-off instance served its
    old copy meanwhile."""
    source = Source()
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    release = threading.Event()
    with TcpProxy((host, int(port)), name="cache-slow-listener") as proxy:
        client = make_client(hosts=proxy.address, session_timeout=3.0)
        client.add_listener(lambda state: release.wait(20))  # told first, and slow
        cut_off = InvalidatingCache(client, "users", source.load)
        writer = InvalidatingCache(make_client(), "users", source.load)
        try:
            assert cut_off.get("user:0") == "v1"
            proxy.block("drop")
            source.values["user:0"] = "v2"
            writer.invalidate("user:0")
            # suspended after 2 s of silence, cut off 1 s later
            wait_until(lambda: cut_off.get("user:0") == "v2", 10, "the source read again")
            assert cut_off.stats().cut_offs == 1
        finally:
            release.set()
            proxy.unblock()


def test_a_late_state_notification_does_not_cut_off_a_connected_instance(
    make_client: MakeClient,
) -> None:
    """A notification of ``SUSPENDED`` delivered after the client is
    connected again (the start's own look at the state, or a newer
    notification, came first) must not start a cut-off: before, the cache
    took the state named for the client's, and kept nothing while
    connected until the next change."""
    source = Source()
    cache = InvalidatingCache(make_client(session_timeout=3.0), "users", source.load)
    assert cache.get("user:0") == "v1"
    cache._on_state(ClientState.SUSPENDED)  # the listener, as a late notification calls it
    time.sleep(1.5)  # past the cut-off's third of the session timeout
    reads = source.reads
    assert cache.get("user:0") == "v1" and cache.get("user:1") == "v1"
    assert cache.get("user:1") == "v1" and source.reads == reads + 1
    assert cache.stats().cut_offs == 0


def test_tuple_keys_invalidate_every_instance_and_a_foreign_message_clears(
    make_client: MakeClient,
) -> None:
    """msgpack sends a tuple as a list: the other instances could not drop
    it (an unhashable key: the handler failed, was retried and dropped the
    message, delaying the topic's later invalidations)."""
    values = {("t", 1): "v1", "plain": "p1"}
    reader = InvalidatingCache(make_client(), "pairs", values.__getitem__)
    writer = InvalidatingCache(make_client(), "pairs", values.__getitem__)
    assert reader.get(("t", 1)) == "v1" and reader.get("plain") == "p1"
    values[("t", 1)] = "v2"
    writer.invalidate(("t", 1))
    wait_until(lambda: ("t", 1) not in reader, 10, "the tuple key dropped")
    assert reader.get(("t", 1)) == "v2"
    assert reader.stats().invalidations == 1
    # a message no cache sent (a mapping is no key): everything goes
    make_client().publish("pairs", {"not": "a key"})
    wait_until(lambda: len(reader) == 0, 10, "the cache cleared")
    assert reader._subscription.stats().errors == 0


class _Proto:
    """A serializer only its own client knows."""

    content_type = "application/x-proto"

    def dumps(self, payload: Any) -> bytes:
        return repr(payload).encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


def test_an_invalidation_the_cache_cannot_read_clears_it(make_client: MakeClient) -> None:
    """A node on the topic this client could not decode went to the
    subscription's default on_error (logged, dropped): the cache kept
    serving what another instance had invalidated."""
    values = {"k": "v1"}
    reader = InvalidatingCache(make_client(), "users", values.__getitem__)
    assert reader.get("k") == "v1"
    values["k"] = "v2"
    other = make_client(serializer=_Proto())  # an instance moving to a new serializer
    other.publish("users", "k")
    wait_until(lambda: reader._subscription.stats().errors == 1, 10, "the node reported")
    wait_until(lambda: len(reader) == 0, 10, "the cache cleared")
    assert reader.get("k") == "v2"


@pytest.mark.anyio
async def test_an_invalidation_the_async_cache_cannot_read_clears_it(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    values = {"k": "v1"}

    async def load(key: str) -> str:
        return values[key]

    async with AsyncClient.connect(zk_hosts, root=zk_root) as client:
        reader = await AsyncInvalidatingCache.open(client, "users", load)
        assert await reader.get("k") == "v1"
        values["k"] = "v2"
        make_client(serializer=_Proto()).publish("users", "k")
        await _eventually(lambda: len(reader) == 0)
        assert await reader.get("k") == "v2"
        await reader.close()


@pytest.mark.anyio
async def test_an_async_cache_started_late_counts_no_freeze(zk_hosts: str, zk_root: str) -> None:
    """The freeze watch counted from the cache's construction: a start()
    a third of the session timeout later was taken for a frozen process."""
    async with AsyncClient.connect(zk_hosts, root=zk_root, session_timeout=1.5) as client:
        cache = AsyncInvalidatingCache(client, "users", _async(Source()))
        await asyncio.sleep(1.0)  # longer than a third of the session timeout
        await cache.start()
        assert (cache.stats().freezes, cache.stats().clears) == (0, 0)
        await cache.close()


def test_a_slow_subscribe_counts_no_freeze(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start whose subscribe took a third of the session timeout was
    taken for a frozen process: the cache counted a freeze and cleared."""
    client = make_client(session_timeout=3.0)
    subscribe = client.subscribe

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)  # longer than a third of the session timeout
        return subscribe(*args, **kwargs)

    monkeypatch.setattr(client, "subscribe", slow)
    cache = InvalidatingCache(client, "users", Source().load)
    time.sleep(0.3)  # the freeze watch has looked
    assert (cache.stats().freezes, cache.stats().clears) == (0, 0)
    cache.close()


def test_a_cache_whose_client_closed_stops_its_watch(make_client: MakeClient) -> None:
    """Before, the freeze watch of a cache left open ran for as long as the
    process did (a thread waking ten times a second) after its client closed."""
    client = make_client()
    cache = InvalidatingCache(client, "users", Source().load)
    assert cache.get("user:0") == "v1"
    watch = cache._entries._watch
    assert watch is not None and watch.is_alive()
    client.close()
    watch.join(5)
    assert not watch.is_alive()
    assert len(cache) == 0  # and it keeps nothing


def test_bad_cache_options_are_refused_up_front(make_client: MakeClient) -> None:
    client = make_client()
    for options in ({"max_size": True}, {"ttl": True}, {"ttl": "5"}, {"ttl": math.nan}):
        with pytest.raises(ValueError):
            InvalidatingCache(client, "bad", str, **options)
    with pytest.raises(TypeError, match="loader must be callable"):
        InvalidatingCache(client, "bad", "not a function")  # type: ignore[arg-type]
    # nothing was left subscribed by the refused ones
    cache = InvalidatingCache(client, "bad", str)
    assert cache.get(1) == "1"


@pytest.mark.anyio
async def test_a_key_no_instance_could_invalidate_is_refused_before_loading(
    make_client: MakeClient, zk_hosts: str, zk_root: str
) -> None:
    """Before, ``get`` kept the value of a key too large to publish (or one
    the serializer cannot encode) and ``invalidate`` then raised: a copy no
    instance could ever drop."""
    loads: list[object] = []

    def loader(key: object) -> str:
        loads.append(key)
        return "value"

    big = "k" * 2_000
    cache = InvalidatingCache(make_client(max_message_bytes=1_000), "keys", loader)
    with pytest.raises(PayloadTooLarge):
        cache.get(big)
    with pytest.raises(SerializationError):
        cache.get(frozenset({1}))
    for nan_key in (math.nan, ("user", math.nan)):  # NaN equals no NaN an invalidation brings
        with pytest.raises(ValueError, match="NaN"):
            cache.get(nan_key)
    assert loads == [] and len(cache) == 0
    assert cache.get("small") == "value" and loads == ["small"]

    async with (
        await AsyncClient.connect(zk_hosts, root=zk_root, max_message_bytes=1_000) as client,
        AsyncInvalidatingCache(client, "keys", loader) as acache,
    ):
        with pytest.raises(PayloadTooLarge):
            await acache.get(big)
        with pytest.raises(SerializationError):
            await acache.get(frozenset({1}))
        with pytest.raises(ValueError, match="NaN"):
            await acache.get(math.nan)
        assert loads == ["small"] and len(acache) == 0
        assert await acache.get("other") == "value" and loads == ["small", "other"]


@pytest.mark.anyio
async def test_a_cancelled_start_leaves_the_topic_free_and_starts_run_once(
    zk_hosts: str, zk_root: str
) -> None:
    """A cancelled start left its subscription behind: every later start or
    open on that topic was ``AlreadySubscribed`` for the client's life."""
    source = Source()
    async with AsyncClient.connect(zk_hosts, root=zk_root) as client:
        cache = AsyncInvalidatingCache(client, "users", _async(source))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cache.start(), 0.001)
        await cache.start()  # at once: it waits for what the cancelled one made to close
        assert await _read_now(source, cache, "user:0") == "v1"
        await cache.close()
        with pytest.raises(ClientClosed):
            await cache.start()  # closed is closed
        # another cache object cannot wait for it: the topic is free soon
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                AsyncInvalidatingCache.open(client, "users", _async(source)), 0.001
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                again = await AsyncInvalidatingCache.open(client, "users", _async(source))
                break
            except AlreadySubscribed:
                assert time.monotonic() < deadline, "the topic stayed taken"
                await asyncio.sleep(0.1)
        await again.close()
        # two tasks starting one cache at once: one subscription, no error
        twice = AsyncInvalidatingCache(client, "sessions", _async(source))
        await asyncio.gather(twice.start(), twice.start())
        assert [s.topic for s in client.sync.subscriptions()].count("sessions") == 1


@pytest.mark.anyio
async def test_a_cache_closed_while_it_starts_stays_closed(zk_hosts: str, zk_root: str) -> None:
    """close() during start() found no subscription yet; start() then set
    one: the closed cache served (and kept) values again."""
    source = Source()
    async with AsyncClient.connect(zk_hosts, root=zk_root) as client:
        cache = AsyncInvalidatingCache(client, "users", _async(source))
        starting = asyncio.ensure_future(cache.start())
        await asyncio.sleep(0)  # under way
        await cache.close()
        with pytest.raises(ClientClosed):
            await starting
        with pytest.raises(ClientClosed):
            await cache.get("user:0")
        # what it made is closed: the topic is free again
        deadline = time.monotonic() + 10
        while "users" in [s.topic for s in client.sync.subscriptions()]:
            assert time.monotonic() < deadline, "the subscription stayed"
            await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_closing_an_async_cache_after_its_client_stops_its_watch(
    zk_hosts: str, zk_root: str
) -> None:
    source = Source()
    client = await AsyncClient.connect(zk_hosts, root=zk_root)
    cache = await AsyncInvalidatingCache.open(client, "users", _async(source))
    watch = cache._entries._watch
    assert watch is not None and watch.is_alive()
    await client.close()
    await cache.close()  # raised ClientClosed, and left the watch thread running
    watch.join(5)
    assert not watch.is_alive()
    with pytest.raises(ClientClosed):
        await cache.get("user:0")
