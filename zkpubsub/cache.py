"""A local cache kept correct across the instances of a service by
invalidations on a topic — the main use of zkpubsub. Sync
(:class:`InvalidatingCache`, on a :class:`~zkpubsub.Client`) and asyncio
(:class:`AsyncInvalidatingCache`, on a :class:`~zkpubsub.aio.AsyncClient`,
with an ``async`` loader) flavours share one core.

Guarantees:

* *No stale fill.* A value loaded while its key was invalidated is handed
  to the caller that loaded it but not kept: a fill that started before an
  invalidation (or a gap) never overwrites what came after it. Each key has
  a generation while a fill of it is under way; the fill is stored only if
  the generation (and the cache's epoch, bumped by every clear) is still
  the one it started with.
* *Read your writes.* ``invalidate(key)`` drops this instance's copy before
  it publishes, so once it returns this instance loads afresh; every other
  instance drops its copy when the message reaches it (publish order is
  one order for all subscribers). A message the cache's own client
  publishes on the topic is taken for one of its ``invalidate()`` calls
  (dropped here already) and not applied again: invalidate through the
  cache, not ``client.publish``.
* *Gaps clear.* When the client may have missed invalidations (its session
  expired, its queue was purged) the whole cache is cleared, fills under
  way included. A session expiry clears it as soon as the client knows
  (and it keeps nothing until the client has registered again), not when
  the gap is told: that waits behind the client's listeners, the user's
  included.
* *A frozen process forgets.* A process stopped (SIGSTOP, a VM pause, a
  long GC pause) for a third of the session timeout or longer may come
  back to an expired session whose invalidations it never got, and its
  threads run again before the client can notice: the cache notices the
  jump of the monotonic clock itself, on its next read or on its own
  watch thread, whichever comes first, and clears before serving anything.
* *A cut-off instance stops keeping.* Once its client has known for a
  third of the session timeout that it has no connection (at once on a
  refused or reset connection; after two thirds of the session timeout of
  silence in a partition), the session may have expired without it and
  others' invalidations no longer reach it: the cache clears, and until
  the client is connected again every ``get`` loads from the loader and
  keeps nothing.
* The session timeout both count from is the one in force: the one asked
  for, or the server's grant if shorter (a server bounds it).

Keys travel as message payloads: use ``str`` keys (``int``, ``bytes`` and
tuples of them work with the default serializer too). A key that could not
be invalidated (the client's serializer cannot encode it, or it is larger
than ``max_message_bytes``) is refused by ``get`` before the loader runs,
with the error ``invalidate`` would raise (``SerializationError``,
``PayloadTooLarge``), as is a key holding a NaN (``ValueError``: it equals
no key an invalidation brings): nothing is kept that no instance could drop. A message on the
topic that names no possible key (one another publisher sent), or that
this client cannot read (another serializer), clears the cache. Optional
``max_size`` (least recently used first out) bounds what is kept, and
``ttl`` (seconds) how long a value is served: an expired value is dropped
when its key is next read, and counts in ``len()`` and ``stats().size``
until then.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from ._numbers import is_int, is_real
from .client import Client
from .errors import ClientClosed
from .message import Message, PublishReceipt
from .state import ClientState, Gap
from .subscription import log_error

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .subscription import Subscription

__all__ = ["AsyncInvalidatingCache", "CacheStats", "InvalidatingCache"]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_NOT_A_KEY: Final = object()
# A pause of this share of the session timeout counts as a freeze.
STALL_SHARE: Final = 1 / 3
_Token = tuple[int, int]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """``stale_prevented``: fills not kept because their key was invalidated
    (or the cache cleared) while they loaded. ``freezes``: clears because the
    process had been stopped long enough to have missed invalidations.
    ``cut_offs``: clears because the client was without a connection that
    long (``get`` loads without keeping until it is connected again)."""

    size: int
    hits: int
    misses: int
    invalidations: int
    stale_prevented: int
    clears: int
    expired: int
    evicted: int
    freezes: int = 0
    cut_offs: int = 0


class _Entries(Generic[K, V]):
    """What a cache holds and the tokens of fills under way (thread-safe)."""

    def __init__(
        self, ttl: float | None, max_size: int | None, stall_after: Callable[[], float]
    ) -> None:
        if ttl is not None and (not is_real(ttl) or not ttl > 0):
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        if max_size is not None and (not is_int(max_size) or max_size < 1):
            raise ValueError(f"max_size must be an int >= 1, not {max_size!r}")
        self._ttl = ttl
        self._max_size = max_size
        self._stall_after = stall_after
        self._lock = threading.Lock()
        self._values: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._generations: dict[K, int] = {}  # keys being loaded
        self._loading: dict[K, int] = {}  # fills under way per key
        self._epoch = 0
        self._last_seen = time.monotonic()  # the latest moment this process is known to run
        self._counts = dict.fromkeys(
            (
                "hits",
                "misses",
                "invalidations",
                "stale_prevented",
                "clears",
                "expired",
                "evicted",
                "freezes",
                "cut_offs",
            ),
            0,
        )
        self._cut_since: float | None = None  # when the client lost its connection
        self._cut_off = False  # without a connection for stall_after: keep nothing
        # the client's state, and the session it last registered on
        self._state: Callable[[], ClientState] = lambda: ClientState.CONNECTED
        self._registered: Callable[[], int | None] = lambda: None
        self._session: int | None = None
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    # -- the freeze watch ----------------------------------------------------------------

    def begin(
        self,
        state: Callable[[], ClientState] | None = None,
        registered: Callable[[], int | None] | None = None,
    ) -> None:
        """The cache starts listening: the freeze watch counts from now (a
        start long after the cache was made is no frozen process).
        ``state()``: the client's; ``registered()``: the session it last
        registered on."""
        with self._lock:
            self._last_seen = time.monotonic()
            if state is not None:
                self._state = state
            if registered is not None:
                self._registered = registered
                self._session = registered()

    def start_watch(self, name: str, ended: Callable[[], bool]) -> None:
        """Watch for freezes and the client's state on a thread until
        :meth:`stop_watch` or until ``ended()`` (the cache no longer hears
        invalidations). Freezes count from now: a slow start (its subscribe)
        is no frozen process. The state is looked at here too, not only when
        the client's listeners are told: a slow listener of the user's,
        told first, would hold up a cut-off for as long as it runs."""
        self.begin()
        self._watch = threading.Thread(
            target=self._watch_loop, args=(ended,), name=name, daemon=True
        )
        self._watch.start()

    def _watch_loop(self, ended: Callable[[], bool]) -> None:
        while not self._stop.wait(min(0.1, self._stall_after() / 4)):
            if ended():  # its client was closed: nothing more to watch for
                self._stop.set()
                self.clear()
                return
            self.connection()

    def _check_stall(self) -> None:  # lock held
        self._check_session()
        now = time.monotonic()
        stall_after = self._stall_after()
        if self._watch is not None and now - self._last_seen >= stall_after:
            self._clear()
            self._counts["freezes"] += 1
        self._last_seen = now
        cut = self._cut_since
        if cut is not None and not self._cut_off and now - cut >= stall_after:
            self._clear()
            self._cut_off = True
            self._counts["cut_offs"] += 1

    def _check_session(self) -> None:  # lock held
        """A session expired: what is held goes at once, not when the gap
        saying so is told (it waits behind the client's listeners, the
        user's included, and comes only once the client registered again)."""
        session = self._registered()
        if session != self._session:  # registered on a new one
            self._session = session
            self._clear()
        if self._state() is ClientState.LOST and not self._cut_off:
            # expired, registering again: invalidations go nowhere meanwhile
            self._clear()
            self._cut_off = True
            if self._cut_since is None:
                self._cut_since = time.monotonic()

    def connection(self) -> None:
        """The client's connection came back or went away: its state, read
        under the lock, says which, so that of two notifications the one
        applied last applies the newest state."""
        with self._lock:
            now = self._state()
            if now is ClientState.CLOSED:
                return
            if now is ClientState.CONNECTED:
                self._cut_since, self._cut_off = None, False
            elif self._cut_since is None:
                self._cut_since = time.monotonic()
            self._check_stall()

    def stop_watch(self) -> None:
        self._stop.set()

    # -- reading -------------------------------------------------------------------------

    def lookup(self, key: K) -> tuple[bool, V | None, _Token]:
        """``(True, value, _)`` on a hit; on a miss ``(False, None, token)``,
        and a fill of ``key`` is under way until :meth:`loaded` or :meth:`failed`."""
        with self._lock:
            self._check_stall()
            held = None if self._cut_off else self._values.get(key)
            if held is not None:
                value, stored = held
                if self._ttl is None or self._last_seen - stored < self._ttl:
                    self._values.move_to_end(key)
                    self._counts["hits"] += 1
                    return True, value, (0, 0)
                del self._values[key]
                self._counts["expired"] += 1
            self._counts["misses"] += 1
            token = (self._epoch, self._generations.setdefault(key, 0))
            self._loading[key] = self._loading.get(key, 0) + 1
            return False, None, token

    def loaded(self, key: K, token: _Token, value: V) -> None:
        """A fill ended with ``value``: kept only if nothing invalidated it."""
        with self._lock:
            self._check_stall()
            # Checked and stored at once: an invalidation cannot slip between.
            fresh = token == (self._epoch, self._generations.get(key))
            self._ended(key)
            if not fresh:
                self._counts["stale_prevented"] += 1
            elif not self._cut_off:  # cut off: loaded, kept nowhere
                self._store(key, value)

    def failed(self, key: K) -> None:
        with self._lock:
            self._ended(key)

    def _ended(self, key: K) -> None:  # lock held: one fill of ``key`` ended
        self._loading[key] -= 1
        if not self._loading[key]:
            del self._loading[key]
            del self._generations[key]

    def _store(self, key: K, value: V) -> None:  # lock held
        self._values[key] = (value, time.monotonic())
        self._values.move_to_end(key)
        while self._max_size is not None and len(self._values) > self._max_size:
            self._values.popitem(last=False)
            self._counts["evicted"] += 1

    # -- invalidating --------------------------------------------------------------------

    def invalidate(self, key: K) -> None:
        with self._lock:
            self._values.pop(key, None)
            if key in self._generations:
                self._generations[key] += 1
            self._counts["invalidations"] += 1

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:  # lock held
        self._values.clear()
        self._epoch += 1
        self._counts["clears"] += 1

    # -- the rest ------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._values

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(size=len(self._values), **self._counts)


class _Listening(Generic[K, V]):
    """What both flavours do on the client's threads: drop keys named on the
    topic by other instances, clear on a gap touching the topic."""

    _entries: _Entries[K, V]
    _topic: str
    _client_id: str
    _listened: Client | None = None  # the client whose state counts
    _subscription: Subscription | None

    def _on_message(self, message: Message) -> None:
        if message.publisher_id == self._client_id:
            return  # dropped before it was published
        key = _as_key(message.payload)
        if key is _NOT_A_KEY:
            # not a key any cache could hold (published by something else):
            # whatever it meant to invalidate, nothing here outlives it
            logger.warning(
                "a message on %s is not a cache key (%s): clearing the cache",
                self._topic,
                type(message.payload).__name__,
            )
            self._entries.clear()
        else:
            self._entries.invalidate(key)

    def _on_error(self, error: BaseException, message: Message | None) -> None:
        log_error(error, message)
        if message is None:
            # a node on the topic this client cannot read (another
            # serializer, another writer): whatever it meant to invalidate,
            # nothing here outlives it
            logger.warning("a message on %s could not be read: clearing the cache", self._topic)
            self._entries.clear()

    def _on_gap(self, gap: Gap) -> None:
        if self._topic in gap.topics:
            self._entries.clear()

    def _on_state(self, state: ClientState) -> None:
        # The state named may be older than the client's (a notification
        # can arrive after the start's own look, or after a newer one's
        # delivery): the client's is what counts.
        if self._listened is not None:
            self._entries.connection()

    def _listen(self, client: Client) -> None:
        self._entries.begin(lambda: client.status, lambda: client._session.registered_session)
        self._listened = client
        client.add_gap_listener(self._on_gap)
        client.add_listener(self._on_state)
        self._on_state(client.status)

    def _not_listening(self) -> bool:
        subscription = self._subscription
        return subscription is None or subscription.closed

    def _stop_listening(self, client: Client) -> None:
        client.remove_gap_listener(self._on_gap)
        client.remove_listener(self._on_state)

    def invalidate_local(self, key: K) -> None:
        """Drop ``key`` in this instance only (and any fill of it under way)."""
        self._entries.invalidate(key)

    def clear(self) -> None:
        """Drop everything here, fills under way included."""
        self._entries.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> CacheStats:
        return self._entries.stats()


def _as_key(payload: Any) -> Any:
    """The key a message names: the payload, with the lists a serializer
    made of tuples made tuples again (msgpack has no tuples); ``_NOT_A_KEY``
    if it cannot be a key (unhashable)."""
    if isinstance(payload, list):
        items = [_as_key(item) for item in payload]
        return _NOT_A_KEY if any(i is _NOT_A_KEY for i in items) else tuple(items)
    try:
        hash(payload)
    except TypeError:
        return _NOT_A_KEY
    return payload


def _check_findable(key: Any) -> None:
    """``ValueError`` for a key no invalidation could find: one holding a
    NaN (which equals nothing, not even the NaN an invalidation carries)."""
    if isinstance(key, float) and math.isnan(key):
        raise ValueError("a cache key holding NaN could never be invalidated (NaN equals nothing)")
    if isinstance(key, tuple):
        for part in key:
            _check_findable(part)


def _entries_for(
    client: Client, loader: object, ttl: float | None, max_size: int | None
) -> _Entries[Any, Any]:
    """A cache's entries, its options checked (``loader`` too). A pause
    counts from a share of the session timeout in force: the one asked for,
    or the server's grant if shorter (the session ends at that)."""
    if not callable(loader):
        raise TypeError(f"loader must be callable, not {type(loader).__name__}")
    asked, conn = client.config.session_timeout, client._ctx.conn
    return _Entries(ttl, max_size, lambda: min(asked, conn.session_timeout) * STALL_SHARE)


def _check_listening(subscription: Subscription | None) -> None:
    """``ClientClosed`` unless the cache still hears invalidations: a value
    it served then could be stale for ever."""
    if subscription is None or subscription.closed:
        raise ClientClosed(
            "the cache no longer hears invalidations: it, its subscription or its client was closed"
        )


class InvalidatingCache(_Listening[K, V]):
    """Values from ``loader`` (the source of truth), invalidated through
    ``topic``. Made on a :class:`~zkpubsub.Client`, which it subscribes to
    the topic (one cache per topic per client)."""

    def __init__(
        self,
        client: Client,
        topic: str,
        loader: Callable[[K], V],
        *,
        ttl: float | None = None,
        max_size: int | None = None,
    ) -> None:
        self._entries = _entries_for(client, loader, ttl, max_size)
        self._client = client
        self._client_id = client.client_id
        self._topic = topic
        self._loader = loader
        self._listen(client)
        try:
            self._subscription = client.subscribe(topic, self._on_message, on_error=self._on_error)
        except BaseException:
            self._stop_listening(client)
            raise
        self._entries.start_watch(f"zkpubsub-cache-{topic}", self._not_listening)

    def get(self, key: K) -> V:
        """The cached value of ``key``, or a fresh one from the loader.
        ``ClientClosed`` once the cache no longer hears invalidations (it,
        its subscription or its client was closed)."""
        _check_listening(self._subscription)
        hit, value, token = self._entries.lookup(key)
        if hit:
            return value  # type: ignore[return-value]
        try:
            _check_findable(key)
            self._client._check_messages(self._topic, [key])
            value = self._loader(key)
        except BaseException:
            self._entries.failed(key)
            raise
        self._entries.loaded(key, token, value)
        return value

    def invalidate(self, key: K, *, timeout: float | None = None) -> PublishReceipt:
        """Drop ``key`` here, then tell every other instance (call it after
        the source of truth changed). Raises what ``publish`` raises; this
        instance's copy is gone either way."""
        self._entries.invalidate(key)
        return self._client.publish(self._topic, key, timeout=timeout)

    def close(self) -> None:
        """Stop listening (the client stays open); ``get`` then raises
        ``ClientClosed``. Idempotent."""
        self._stop_listening(self._client)
        try:
            if self._subscription is not None:
                self._subscription.close()
        finally:  # kept nothing, watched nothing, whatever the close raised
            self._entries.stop_watch()
            self._entries.clear()

    def __enter__(self) -> InvalidatingCache[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncInvalidatingCache(_Listening[K, V]):
    """:class:`InvalidatingCache` for asyncio code: ``await cache.get(key)``
    with an ``async`` loader (a plain function is called on the loop: wrap a
    blocking one in ``asyncio.to_thread``), ``await cache.invalidate(key)``.
    Invalidations are applied on the client's threads, so a busy loop does
    not delay them. Open it with ``await cache.start()`` or ``async with``
    (or ``await AsyncInvalidatingCache.open(...)``)."""

    def __init__(
        self,
        client: AsyncClient,
        topic: str,
        loader: Callable[[K], Awaitable[V]],
        *,
        ttl: float | None = None,
        max_size: int | None = None,
    ) -> None:
        self._entries = _entries_for(client.sync, loader, ttl, max_size)
        self._client = client
        self._client_id = client.client_id
        self._topic = topic
        self._loader = loader
        self._subscription: Subscription | None = None
        self._closed = False
        self._starting = asyncio.Lock()
        self._unwanted: asyncio.Future[None] | None = None  # closing what a cancelled start made

    @classmethod
    async def open(
        cls,
        client: AsyncClient,
        topic: str,
        loader: Callable[[K], Awaitable[V]],
        *,
        ttl: float | None = None,
        max_size: int | None = None,
    ) -> AsyncInvalidatingCache[K, V]:
        """Make one and start it."""
        cache = cls(client, topic, loader, ttl=ttl, max_size=max_size)
        await cache.start()
        return cache

    async def start(self) -> None:
        """Subscribe to the topic (on a thread). Idempotent, and safe to
        call from several tasks at once; ``ClientClosed`` once the cache was
        closed (also when it is closed while it starts). A cancelled start
        leaves nothing behind: a subscription made meanwhile is closed in
        the background (this cache's next start waits for that; another
        cache object on the topic may find it ``AlreadySubscribed`` until
        it is done)."""
        async with self._starting:
            unwanted, self._unwanted = self._unwanted, None
            if unwanted is not None:
                await asyncio.shield(unwanted)
            if self._closed:
                raise ClientClosed("the cache is closed")
            if self._subscription is not None:
                return
            client = self._client.sync
            self._listen(client)
            made = asyncio.ensure_future(
                self._client.run_in_thread(
                    client.subscribe, self._topic, self._on_message, on_error=self._on_error
                )
            )
            try:
                subscription = await asyncio.shield(made)
            except BaseException as exc:
                self._stop_listening(client)
                if isinstance(exc, asyncio.CancelledError):
                    self._unwanted = asyncio.ensure_future(self._close_made(made))
                raise
            if self._closed:  # closed while it subscribed: what it made goes too
                self._stop_listening(client)
                await self._close_made(made)
                raise ClientClosed("the cache was closed while it started")
            self._subscription = subscription
            self._entries.start_watch(f"zkpubsub-cache-{self._topic}", self._not_listening)

    async def _close_made(self, made: asyncio.Future[Subscription]) -> None:
        """Close the subscription ``made`` for a start that will not use it."""
        try:
            subscription = await made
            await self._client.run_in_thread(subscription.close)
        except Exception as exc:  # it failed, or its client is closed (and it with it)
            logger.debug("closing the subscription of an unfinished start: %r", exc)

    async def get(self, key: K) -> V:
        """The cached value of ``key``, or a fresh one from the loader. A
        cancelled load keeps nothing."""
        if self._subscription is None and not self._closed:
            raise RuntimeError("start the cache first (await cache.start(), or async with)")
        _check_listening(self._subscription)
        hit, value, token = self._entries.lookup(key)
        if hit:
            return value  # type: ignore[return-value]
        try:
            _check_findable(key)
            self._client.sync._check_messages(self._topic, [key])
            loaded: Any = self._loader(key)
            if inspect.isawaitable(loaded):
                loaded = await loaded
        except BaseException:
            self._entries.failed(key)
            raise
        self._entries.loaded(key, token, loaded)
        return loaded  # type: ignore[no-any-return]

    async def invalidate(self, key: K, *, timeout: float | None = None) -> PublishReceipt:
        """Drop ``key`` here (before anything is awaited), then tell every
        other instance. Raises what ``publish`` raises; this instance's copy
        is gone either way."""
        self._entries.invalidate(key)
        return await self._client.publish(self._topic, key, timeout=timeout)

    async def close(self) -> None:
        """Stop listening (the client stays open); ``get`` then raises
        ``ClientClosed``. Idempotent; whole even when the client was closed
        first or the await is cancelled (the subscription then finishes
        closing in the background)."""
        self._closed = True
        self._stop_listening(self._client.sync)
        self._entries.stop_watch()
        self._entries.clear()
        subscription, self._subscription = self._subscription, None
        if subscription is not None and not subscription.closed:
            await self._client.run_in_thread(subscription.close)

    async def __aenter__(self) -> AsyncInvalidatingCache[K, V]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
