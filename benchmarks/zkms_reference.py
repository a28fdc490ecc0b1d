"""A zkms-style broadcast, re-implemented through kazoo as the baseline.

zkms (a Scala library on Curator) keeps, under a namespace ``zkms``::

    /clients/<uuid>                          ephemeral, one per live client
    /subscribers/<topic>/<uuid>              ephemeral, one per subscription
    /messages/<uuid>/<topic>/msg<seq>        persistent sequential, one per
                                             message per subscriber

``broadcast(topic, data)`` lists ``/subscribers/<topic>`` (every time), raises
if it is empty, then creates one sequential node per subscriber, each with a
synchronous request. A subscriber keeps a children cache of its queue with
data (Curator's ``PathChildrenCache``): on every change it lists the queue
again and reads the new nodes (those reads are pipelined), hands each message
to the callback and deletes its node with a synchronous request (at most
once, no order). Writes go through kazoo's retry as zkms's go through
Curator's retry policy. The cleaner is left out: it runs once a minute and
does not touch live queues.

This keeps zkms's algorithm and its request pattern, not its Scala: the
numbers are what that design costs through the same Python ZooKeeper client
the library uses (kazoo, with the library's own callback handler), on the
same server. zkms's own load test broadcasts from a
thread pool, so the benchmark runs the reference with the same concurrency
as zkpubsub (one thread, several threads sharing a client), and also with
the most a zkms-style publisher could pipeline without changing the design:
:meth:`ZkmsPublisher.broadcast_async` lists the subscribers and sends the
creates for all of them without waiting, so that many broadcasts can be in
flight at once, as many as zkpubsub's ``publish_async`` gets.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState
from kazoo.retry import KazooRetry

from . import kazoo_clients

logger = logging.getLogger(__name__)

NAMESPACE: Final = "zkms"


class NoSubscribers(Exception):
    """zkms raises this when a topic has no subscriber."""


def connect(hosts: str, *, timeout: float = 10.0) -> KazooClient:
    """A started kazoo client whose ``retry`` behaves like zkms's Curator
    policy (exponential back-off from 200 ms; capped at 2 s here). Like
    Curator, a retried sequential create whose first answer was lost may
    create a duplicate. Its handler is zkpubsub's own (:mod:`.kazoo_clients`),
    as for every baseline, floor and ceiling."""
    zk = kazoo_clients.new(
        hosts,
        timeout=timeout,
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=2.0),
        command_retry=KazooRetry(max_tries=-1, delay=0.2, backoff=2, max_delay=2.0),
    )
    zk.start(timeout=30)
    return zk


class ZkmsPaths:
    def __init__(self, root: str) -> None:
        self.root = root
        base = f"{root.rstrip('/')}/{NAMESPACE}"
        self.clients = f"{base}/clients"
        self.subscribers = f"{base}/subscribers"
        self.messages = f"{base}/messages"

    def client(self, client_id: str) -> str:
        return f"{self.clients}/{client_id}"

    def topic(self, topic: str) -> str:
        return f"{self.subscribers}/{topic}"

    def subscriber(self, topic: str, client_id: str) -> str:
        return f"{self.subscribers}/{topic}/{client_id}"

    def queue(self, client_id: str, topic: str) -> str:
        return f"{self.messages}/{client_id}/{topic}"

    def message_prefix(self, client_id: str, topic: str) -> str:
        return f"{self.queue(client_id, topic)}/msg"


class ZkmsPublisher:
    """``broadcast``: list the subscribers, one synchronous create for each."""

    def __init__(self, zk: KazooClient, root: str) -> None:
        self._zk = zk
        self._paths = ZkmsPaths(root)
        for path in (self._paths.clients, self._paths.subscribers, self._paths.messages):
            zk.ensure_path(path)

    def broadcast(self, topic: str, data: bytes) -> int:
        """Write ``data`` into every subscriber's queue; returns how many."""
        zk = self._zk
        try:
            children = zk.retry(zk.get_children, self._paths.topic(topic))
        except NoNodeError:
            raise NoSubscribers(topic) from None
        if not children:
            raise NoSubscribers(topic)
        for child in children:
            zk.retry(zk.create, self._paths.message_prefix(child, topic), data, sequence=True)
        return len(children)

    def broadcast_async(self, topic: str, data: bytes) -> PendingBroadcast:
        """:meth:`broadcast` without waiting: the listing and then every
        create are sent asynchronously; :meth:`PendingBroadcast.result`
        waits for them (and retries what failed synchronously, as the plain
        broadcast would)."""
        return PendingBroadcast(self._zk, self._paths, topic, data)


class PendingBroadcast:
    """One broadcast in flight (see :meth:`ZkmsPublisher.broadcast_async`)."""

    def __init__(self, zk: KazooClient, paths: ZkmsPaths, topic: str, data: bytes) -> None:
        self._zk = zk
        self._paths = paths
        self._topic = topic
        self._data = data
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._left = 0
        self._listing_failed: BaseException | None = None
        self._failed: list[str] = []
        self.subscribers = 0
        zk.get_children_async(paths.topic(topic)).rawlink(self._listed)

    def _listed(self, request: Any) -> None:  # kazoo's callback thread
        try:
            children = request.get()
        except Exception as exc:
            self._listing_failed = exc
            self._done.set()
            return
        if not children:
            self._listing_failed = NoSubscribers(self._topic)
            self._done.set()
            return
        self.subscribers = self._left = len(children)
        for child in children:
            prefix = self._paths.message_prefix(child, self._topic)
            create = self._zk.create_async(prefix, self._data, sequence=True)
            create.rawlink(lambda r, prefix=prefix: self._created(prefix, r))

    def _created(self, prefix: str, request: Any) -> None:  # kazoo's callback thread
        try:
            request.get()
        except Exception:
            with self._lock:
                self._failed.append(prefix)
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._done.set()

    def result(self, timeout: float = 60.0) -> int:
        """Wait for the broadcast; returns how many queues it was written to."""
        zk = self._zk
        if not self._done.wait(timeout):
            raise TimeoutError(f"broadcast to {self._topic!r} not done in {timeout:g}s")
        if self._listing_failed is not None:
            if isinstance(self._listing_failed, NoSubscribers | NoNodeError):
                raise NoSubscribers(self._topic)
            # the listing failed (a lost connection): do it all again, synchronously
            return ZkmsPublisher(zk, self._paths.root).broadcast(self._topic, self._data)
        for prefix in self._failed:
            zk.retry(zk.create, prefix, self._data, sequence=True)
        return self.subscribers


class ZkmsSubscriber:
    """One zkms client subscribed to one topic; ``callback(data)`` per message,
    called on this subscriber's thread (never on kazoo's)."""

    def __init__(
        self,
        zk: KazooClient,
        root: str,
        topic: str,
        callback: Callable[[bytes], object],
        *,
        client_id: str | None = None,
    ) -> None:
        self._zk = zk
        self._paths = ZkmsPaths(root)
        self._topic = topic
        self._callback = callback
        self.client_id = client_id or str(uuid.uuid4())
        self._queue = self._paths.queue(self.client_id, topic)
        self._wake = threading.Event()
        self._stop = False
        self._handled: set[str] = set()  # deleted, may still be listed
        self.delivered = 0
        self._register()
        zk.add_listener(self._on_state)
        self._thread = threading.Thread(
            target=self._run, name=f"zkms-sub-{self.client_id[:8]}", daemon=True
        )
        self._thread.start()

    def _register(self) -> None:
        zk, paths = self._zk, self._paths
        for path in (paths.client(self.client_id), paths.subscriber(self._topic, self.client_id)):
            with contextlib.suppress(NodeExistsError):
                zk.create(path, b"", ephemeral=True, makepath=True)
        zk.ensure_path(self._queue)

    def _on_state(self, state: KazooState) -> None:  # kazoo's thread
        if state == KazooState.CONNECTED:
            self._wake.set()

    def _on_watch(self, _event: object) -> None:  # kazoo's thread
        self._wake.set()

    def _run(self) -> None:
        self._wake.set()
        while True:
            self._wake.wait(1.0)
            if self._stop:
                return
            if not self._wake.is_set():
                continue
            self._wake.clear()
            try:
                self._drain()
            except KazooException as exc:
                logger.debug("zkms subscriber %s: %r; listing again", self.client_id, exc)
                self._wake.set()
                time.sleep(0.1)

    def _drain(self) -> None:
        zk = self._zk
        names = zk.get_children(self._queue, watch=self._on_watch)
        self._handled &= set(names)
        fresh = sorted(n for n in names if n not in self._handled)
        reads = [(name, zk.get_async(f"{self._queue}/{name}")) for name in fresh]
        for name, request in reads:
            if self._stop:
                return
            try:
                data, _stat = request.get()
            except NoNodeError:
                continue
            self._handled.add(name)  # in the cache: never delivered again
            try:
                self._callback(data)
            except Exception:
                logger.exception("zkms callback failed")
            self.delivered += 1
            with contextlib.suppress(NoNodeError):
                zk.retry(zk.delete, f"{self._queue}/{name}")

    def close(self, *, unsubscribe: bool = True) -> None:
        """Stop; with ``unsubscribe`` delete the subscription and the queue,
        as zkms's ``unsubscribe`` does."""
        self._stop = True
        self._wake.set()
        self._thread.join(10)
        self._zk.remove_listener(self._on_state)
        if unsubscribe:
            try:
                self._zk.delete(self._queue, recursive=True)
                self._zk.delete(self._paths.subscriber(self._topic, self.client_id))
            except KazooException as exc:
                logger.debug("zkms unsubscribe: %r", exc)
