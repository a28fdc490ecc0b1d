"""The pump of one subscription: it lists the queue, reads its nodes and
deletes the handled ones.

A children watch on the queue marks the listing stale; the pump lists again
(at most once a second while names listed earlier still wait to be read),
reads up to the prefetch with pipelined reads, and sends the deletes of
handled nodes in transactions without waiting for their answers. A queue
deleted under it (the cleaner took it while the client was away) is made
again. Connection trouble makes it list again once connected; nothing it
does is lost by a reconnect, because it reads the queue, not events.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from kazoo.exceptions import KazooException, NoNodeError, NotEmptyError

from . import envelope
from ._buffer import Delivery, DeliveryBuffer, Node
from ._context import Context
from ._registration import prepare_queue
from ._tree import delete_tree
from .backlog import Backlog, OverflowMark
from .connection import first_error, remaining
from .errors import ClientClosed, ConnectionLost, DecodeError, OperationTimeout, ZkPubSubError
from .layout import join, order_names, parse_queue_entry, segment_name, split_queue
from .message import Message
from .serializers import SerializerRegistry

if TYPE_CHECKING:
    from kazoo.protocol.states import WatchedEvent

__all__ = ["QueueReader", "decode_node"]

logger = logging.getLogger(__name__)

SAFETY_RELIST_INTERVAL: Final = 30.0
DELETE_RETRY: Final = 0.5
RELIST_WHILE_BUSY: Final = 1.0
DELETE_BATCH: Final = 500


def decode_node(
    serializers: SerializerRegistry, path: str, name: str, data: bytes, stat: Any = None
) -> list[Delivery]:
    """The deliveries of one queue node: a message each, a
    :class:`DecodeError` for what cannot be read, one delivery of a node
    with no message (``remaining == 0``) for an empty envelope, or the
    overflow marker it is."""
    parsed = parse_queue_entry(name.rsplit("/", 1)[-1])
    if parsed is not None and parsed[0] == "o":
        window = (stat.ctime / 1000, stat.mtime / 1000) if stat is not None else (0.0, 0.0)
        try:
            return [Delivery(Node(name, 1), mark=OverflowMark.decode(data), window=window)]
        except ValueError as exc:
            error = DecodeError(str(exc), path=path, data=data, error=exc)
            return [Delivery(Node(name, 1), error=error)]
    try:
        entries = envelope.decode(data)
    except ValueError as exc:
        return [
            Delivery(Node(name, 1), error=DecodeError(str(exc), path=path, data=data, error=exc))
        ]
    node = Node(name, len(entries))
    if not entries:
        return [Delivery(node)]
    out: list[Delivery] = []
    for entry in entries:
        try:
            payload = serializers.loads(entry.content_type, entry.body, path=path, data=data)
        except DecodeError as err:
            out.append(Delivery(node, error=err))
            continue
        message = Message(
            id=entry.id,
            topic=entry.topic,
            payload=payload,
            headers=entry.headers,
            published_at=entry.published_at,
            publisher_id=entry.publisher_id,
            content_type=entry.content_type,
        )
        out.append(Delivery(node, message))
    return out


class QueueReader:
    """The pump thread of one subscription (internal)."""

    def __init__(self, ctx: Context, topic: str, buffer: DeliveryBuffer, backlog: Backlog) -> None:
        self._ctx = ctx
        self._backlog = backlog
        self._conn = ctx.conn
        self._topic = topic
        self._path = ctx.layout.queue(ctx.client_id, topic)
        self._buffer = buffer
        self._relist = True
        self._retry_deletes = False
        self._trees: set[str] = set()  # handled nodes someone gave children
        self._trees_lock = threading.Lock()
        self._stop = False
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"zkpubsub-pump-{topic}", daemon=True
        )

    def start(self) -> None:
        self._wake.set()
        self._thread.start()

    def wake(self) -> None:
        """Something to do: handled nodes to delete, or room to read ahead."""
        self._wake.set()

    def relist(self) -> None:
        """The queue may hold names not seen yet (a watch, a new session)."""
        self._relist = True
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Stop after a last flush of the deletes (bounded by ``timeout``)."""
        self._stop = True
        self._wake.set()
        if self._thread is not threading.current_thread() and self._thread.is_alive():
            self._thread.join(timeout)

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        last_list = 0.0
        while True:
            # Deletes that found no connection are tried again soon.
            self._wake.wait(DELETE_RETRY if self._retry_deletes else SAFETY_RELIST_INTERVAL)
            self._wake.clear()
            self._retry_deletes = False
            if self._stop:
                break
            try:
                self._flush_deletes()
                since = time.monotonic() - last_list
                # Names not seen yet are newer than every name listed, so
                # while listed ones wait to be fetched, listing again (the
                # whole backlog) can wait too, for a while.
                busy = self._buffer.has_unfetched
                if (self._relist and (not busy or since > RELIST_WHILE_BUSY)) or (
                    since > SAFETY_RELIST_INTERVAL
                ):
                    self._relist = False
                    self._list()
                    last_list = time.monotonic()
                self._fetch()
                backoff = 0.05
            except ClientClosed:
                break
            except (ConnectionLost, OperationTimeout) as exc:
                logger.debug("subscription %r: %s; will retry", self._topic, exc)
                self.relist()
                self._sleep_until_connected(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                logger.exception("subscription %r: unexpected error; will retry", self._topic)
                self.relist()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        # Final flush so handled messages are not delivered again.
        try:
            self._flush_deletes(wait=True)
        except ZkPubSubError as exc:
            logger.debug("subscription %r: final delete failed: %s", self._topic, exc)

    def _sleep_until_connected(self, pause: float) -> None:
        time.sleep(pause)
        while not self._stop and not self._conn.connected.is_set():
            self._conn.connected.wait(0.2)

    def _on_watch(self, event: WatchedEvent) -> None:  # kazoo's thread
        self.relist()

    def _list(self) -> None:
        """List the queue: entries from before segments, then every segment
        in order (a watch on the queue and on its newest segment). Segments
        older than the newest no longer grow; an empty one is deleted."""
        conn, layout = self._conn, self._ctx.layout
        kazoo = conn.kazoo
        try:
            names: list[str] = conn.result(
                kazoo.get_children_async(self._path, watch=self._on_watch),
                self._ctx.deadline(),
                f"list queue {self._path}",
            )
        except NoNodeError:
            # Deleted under us (the cleaner took it while we were away).
            prepare_queue(self._ctx, self._topic, self._backlog, self._ctx.deadline())
            self.relist()
            return
        ordered, numbers, foreign = split_queue(names)
        segments = [layout.segment(self._path, n) for n in numbers]
        newest = len(segments) - 1
        listings = conn.read_all(
            lambda: [
                kazoo.get_children_async(p, watch=self._on_watch if i == newest else None)
                for i, p in enumerate(segments)
            ],
            self._ctx.deadline(),
            f"list the segments of {self._path}",
        )
        for number, path, listing in zip(numbers, segments, listings, strict=True):
            if isinstance(listing, NoNodeError):
                continue
            name = segment_name(number)
            entries, strays = order_names(listing)
            ordered += [f"{name}/{entry}" for entry in entries]
            foreign += [f"{name}/{stray}" for stray in strays]
            if not listing and path != segments[newest]:
                kazoo.delete_async(path)  # emptied and left: NotEmpty/NoNode are fine
        for name in self._buffer.listed(ordered, foreign):
            self._fetch_foreign(name)

    def _fetch_foreign(self, name: str) -> None:
        path = join(self._path, name)
        try:
            data, _ = self._conn.result(
                self._conn.kazoo.get_async(path), self._ctx.deadline(), f"read {path}"
            )
        except NoNodeError:
            return
        error = DecodeError("node name is not a zkpubsub message node", path=path, data=data)
        self._buffer.fetched([], [Delivery(Node(name, 1), error=error)])

    def _fetch(self) -> None:
        batch = self._buffer.to_fetch()
        if not batch:
            return
        kazoo = self._conn.kazoo
        requests = [(name, kazoo.get_async(join(self._path, name))) for name in batch]
        deadline = self._ctx.deadline()
        deliveries: list[Delivery] = []
        fetched: list[str] = []
        try:
            for name, request in requests:
                path = join(self._path, name)
                try:
                    data, stat = self._conn.result(request, deadline, f"read {path}")
                except NoNodeError:
                    fetched.append(name)  # gone already: nothing to deliver
                    continue
                deliveries.extend(decode_node(self._ctx.serializers, path, name, data, stat))
                fetched.append(name)
        finally:
            self._buffer.fetched(fetched, deliveries)
            if self._buffer.wants_more():
                self._wake.set()

    # -- deletes ---------------------------------------------------------------------

    def _flush_deletes(self, wait: bool = False) -> None:
        """Send the deletes of handled nodes, in transactions, without waiting
        for them (unless ``wait``): their answers only do bookkeeping, so the
        pump goes on listing and fetching meanwhile. A handled node someone
        gave children (nothing of zkpubsub's writes below a message node) is
        deleted with them, so it is not delivered again."""
        with self._trees_lock:
            trees, self._trees = self._trees, set()
        for name in trees:
            path = join(self._path, name)
            logger.warning("subscription %r: %s has child nodes; deleting them", self._topic, path)
            delete_tree(self._conn, path, self._ctx.deadline())
            self._buffer.deleted([name])
        names = self._buffer.take_deletes()
        if not names:
            return
        kazoo = self._conn.kazoo
        answered = []
        for i in range(0, len(names), DELETE_BATCH):
            batch = names[i : i + DELETE_BATCH]
            done = threading.Event()
            try:
                txn = kazoo.transaction()
                for name in batch:
                    txn.delete(join(self._path, name))
                txn.commit_async().rawlink(
                    lambda r, b=batch, d=done: self._deletes_answered(b, r, d)
                )
            except KazooException:  # the client is closing: they stay queued
                self._delete_again(batch)
                continue
            answered.append(done)
        if wait:
            deadline = self._ctx.deadline()
            for done in answered:
                done.wait(remaining(deadline))

    def _delete_again(self, names: list[str]) -> None:
        self._buffer.delete_again(names)
        self._retry_deletes = True

    def _deletes_answered(self, batch: list[str], result: Any, done: threading.Event) -> None:
        """A delete transaction's answer (kazoo's thread: bookkeeping only)."""
        try:
            try:
                results = result.get()
            except Exception:  # no answer (kazoo's or its loop's error): again once connected
                self._delete_again(batch)
                return
            if first_error(results)[1] is None:
                self._buffer.deleted(batch)
                return
            # One node was gone already (the cleaner, a retried delete): the
            # rest go one by one, each answer doing its own bookkeeping.
            for name in batch:
                self._conn.kazoo.delete_async(join(self._path, name)).rawlink(
                    lambda r, n=name: self._delete_answered(n, r)
                )
        finally:
            done.set()

    def _delete_answered(self, name: str, result: Any) -> None:  # kazoo's thread
        try:
            result.get()
        except NoNodeError:
            pass
        except NotEmptyError:  # children below it: the pump deletes the subtree
            with self._trees_lock:
                self._trees.add(name)
            self._retry_deletes = True
            self._wake.set()
            return
        except Exception:  # no answer: again once connected
            self._delete_again([name])
            return
        self._buffer.deleted([name])
