"""The receive pump: one thread per client reads every subscription's queue.

Where the server has them (ZooKeeper 3.6+), one persistent recursive watch
on the client's own ``messages/<id>`` subtree tells the pump of every node
published to any of its queues, by name: the pump reads each such node
directly (reads of all subscriptions pipelined together), without listing
the queue, and hands the messages to each subscription's buffer in queue
order. A node whose name carries its message needs no read: when its
queue is caught up (nothing listed or named before it waits, no listing
due) and the library's own serializers read it, kazoo's connection thread
hands it to the subscription's buffer itself, on the event; otherwise the
pump takes it in its turn. One round asks for at most ``READ_WINDOW_BYTES``
of node data (by the last round's node size), taken in turn from every
subscription, so the answers a server builds for one client stay small
whatever the backlog.
Queues are listed only when a subscription starts, after a reconnect
(events of the time in between are lost; the watch is set again first, so
the listing sees the rest), after the client registered again, and every
``SAFETY_RELIST_INTERVAL`` seconds. Without such watches (an
older server, or ``watch_mode="listing"``), each queue is listed with
one-shot child watches on every change, as before.

Handled nodes are deleted in batched transactions across subscriptions,
without waiting for the answers. A queue deleted under a subscription (the
cleaner took it while the client was away) is made again. Nothing the pump
does is lost by a reconnect: it reads queues, it does not count events.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from kazoo.exceptions import KazooException, NoAuthError, NoNodeError, NotEmptyError
from kazoo.protocol.states import KazooState

from . import envelope
from ._buffer import Delivery, DeliveryBuffer, Node
from ._context import Context
from ._deadlines import remaining
from ._persistent import NODE_CREATED, NODE_DELETED
from ._registration import prepare_queue
from ._tree import delete_tree
from .backlog import Backlog, OverflowMark
from .connection import first_error
from .errors import (
    ClientClosed,
    ConnectionLost,
    DecodeError,
    NotAuthorized,
    OperationTimeout,
    ZkPubSubError,
)
from .layout import (
    brief,
    inline_data,
    join,
    order_names,
    parse_queue_entry,
    parse_segment_node,
    segment_name,
    split_queue,
)
from .message import received
from .serializers import SerializerRegistry

if TYPE_CHECKING:
    from kazoo.protocol.states import WatchedEvent

__all__ = ["READ_WINDOW_BYTES", "ReceivePump", "WatchMode", "decode_node", "read_window"]

logger = logging.getLogger(__name__)

WatchMode = Literal["auto", "persistent", "listing"]

SAFETY_RELIST_INTERVAL: Final = 30.0
DELETE_RETRY: Final = 0.5
# Deletes refused for want of rights (a segment's ACL) go again this often.
REFUSED_RETRY: Final = 30.0
RELIST_WHILE_BUSY: Final = 1.0
DELETE_BATCH: Final = 500
# A close waiting for its last deletes looks this often whether the
# connection is still there (no wait once it is known gone).
DETACH_LOOK: Final = 0.1
# A handled node waits up to DELETE_LINGER for others to share its delete
# transaction, or less once DELETE_EAGER wait: every delete is a write the
# ensemble logs, syncs and sends to every server, and one transaction per
# handled node cost the server more than the publishes did at low rates.
DELETE_LINGER: Final = 0.05
DELETE_EAGER: Final = 64
# Node data one client asks the server for at once: the server builds every
# answer before the client reads it, so a hundred clients each asking for
# their whole read-ahead of large batched nodes would fill its heap. The
# size of the nodes to come is not known: the last round's tells.
READ_WINDOW_BYTES: Final = 2 * 2**20
FIRST_NODE_GUESS: Final = 64 * 2**10


def read_window(wanted: list[list[str]], node_bytes: float) -> list[tuple[int, str]]:
    """The names to read in one round from each subscription's ``wanted``
    list: taken in turn from each (no subscription waits behind another's
    backlog), as many as ``READ_WINDOW_BYTES`` holds at ``node_bytes`` a
    node, and at least one. Pairs of (index into ``wanted``, name)."""
    limit = max(1, int(READ_WINDOW_BYTES // max(1.0, node_bytes)))
    out: list[tuple[int, str]] = []
    depth = 0
    while len(out) < limit:
        row = [(i, names[depth]) for i, names in enumerate(wanted) if depth < len(names)]
        if not row:
            break
        out.extend(row[: limit - len(out)])
        depth += 1
    return out


def unreadable(path: str, error: NotAuthorized) -> DecodeError:
    """A node of the queue whose ACL keeps this client out (written by an
    identity whose roles leave it out): told as one that cannot be
    decoded, and deleted as such (the queue's owner may delete what it
    cannot read). Left there, its every read would fail, and with it the
    round that reads every subscription's nodes."""
    return DecodeError(
        "the node cannot be read: its ACL, set by whoever wrote it (a publisher's Roles), "
        "does not let this client read it",
        path=path,
        data=b"",
        error=error,
    )


def decode_node(
    serializers: SerializerRegistry, path: str, name: str, data: bytes, stat: Any = None
) -> list[Delivery]:
    """The deliveries of one queue node: a message each, a
    :class:`DecodeError` for what cannot be read, one delivery of a node
    with no message (``remaining == 0``) for an empty envelope, or the
    overflow marker it is. A name that carries its envelope gives it (the
    node's ``data`` is empty)."""
    entry = name.rpartition("/")[2]
    carried = inline_data(entry) if not data else None
    if carried is not None:
        data = carried
    parsed = parse_queue_entry(entry)
    czxid = stat.czxid if stat is not None else 0
    if parsed is not None and parsed[0] == "o":
        window = (stat.ctime / 1000, stat.mtime / 1000) if stat is not None else (0.0, 0.0)
        try:
            mark = OverflowMark.decode(data)
            return [Delivery(Node(name, 1, czxid), mark=mark, window=window)]
        except ValueError as exc:
            error = DecodeError(str(exc), path=path, data=data, error=exc)
            return [Delivery(Node(name, 1, czxid), error=error)]
    try:
        entries = envelope.decode(data)
    except ValueError as exc:
        error = DecodeError(str(exc), path=path, data=data, error=exc)
        return [Delivery(Node(name, 1, czxid), error=error)]
    return node_deliveries(serializers, path, data, Node(name, len(entries), czxid), entries)


def node_deliveries(
    serializers: SerializerRegistry,
    path: str,
    data: bytes,
    node: Node,
    entries: list[envelope.Entry],
) -> list[Delivery]:
    """The deliveries of ``node``, whose envelope (``data``) holds ``entries``."""
    if not entries:
        return [Delivery(node)]
    out: list[Delivery] = []
    loads = serializers.loads
    for id_, publisher_id, published_at, topic, headers, content_type, body in entries:
        try:
            payload = loads(content_type, body, path=path, data=data)
        except DecodeError as err:
            out.append(Delivery(node, error=err))
            continue
        message = received(id_, topic, payload, headers, published_at, publisher_id, content_type)
        out.append(Delivery(node, message))
    return out


@dataclass(eq=False, slots=True)
class _Queue:
    """One subscription's queue, as the pump serves it."""

    topic: str
    path: str
    buffer: DeliveryBuffer
    backlog: Backlog
    relist: bool = True
    listing: bool = False  # a listing is being read (no node is taken at once meanwhile)
    listed_at: float = 0.0
    segments: set[str] = field(default_factory=set)  # seen since the last listing
    done: threading.Event = field(default_factory=threading.Event)  # its last deletes sent


class ReceivePump:
    """The pump of one client (internal)."""

    def __init__(self, ctx: Context, mode: WatchMode = "auto") -> None:
        self._ctx = ctx
        self._conn = ctx.conn
        self._mode = mode
        self._base = ctx.layout.client_messages(ctx.client_id)
        self._lock = threading.Lock()
        self._queues: dict[str, _Queue] = {}
        self._events: deque[tuple[int, str]] = deque()
        # held while an event is taken: one taken at once on kazoo's thread
        # must not overtake one the pump is still taking
        self._event_lock = threading.Lock()
        self._wake = threading.Event()
        self._watching: bool | None = None  # None: not set; False: the server has none
        self._retry_deletes = False
        self._delete_due: float | None = None  # when the handled nodes waiting go
        self._trees: set[tuple[_Queue, str]] = set()  # handled nodes someone gave children
        self._undeletable: set[str] = set()  # queues whose handled nodes stay (told once)
        self._refused: list[tuple[_Queue, str]] = []  # their deletes, until REFUSED_RETRY
        self._refused_next = 0.0  # when they go again
        self._detaching: set[str] = set()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.nodes_read = 0  # nodes read, or taken from their names, by the pump
        self.at_once = 0  # nodes handed out by kazoo's thread on their event
        self._node_bytes = float(FIRST_NODE_GUESS)  # the last round's mean node size
        ctx.conn.add_state_listener(self._on_state)

    @property
    def deliveries_read(self) -> int:
        """Nodes taken into the buffers so far, for the requests-per-node figure."""
        return self.nodes_read + self.at_once

    @property
    def persistent(self) -> bool:
        """Whether a persistent recursive watch serves this client's queues."""
        return bool(self._watching)

    # -- subscriptions' side -------------------------------------------------------------

    def attach(self, topic: str, buffer: DeliveryBuffer, backlog: Backlog) -> None:
        """Start reading ``topic``'s queue into ``buffer``."""
        queue = _Queue(topic, self._ctx.layout.queue(self._ctx.client_id, topic), buffer, backlog)
        with self._lock:
            self._queues[topic] = queue
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run,
                    name=f"zkpubsub-receive-{self._ctx.client_id[:12]}",
                    daemon=True,
                )
                self._thread.start()
        self._wake.set()

    def detach(self, topic: str, deadline: float | None) -> None:
        """Stop reading ``topic`` after a last send of its deletes (waited
        for until ``deadline``, which also bounds removing the watch)."""
        with self._lock:
            queue = self._queues.get(topic)
        if queue is None:
            return
        queue.relist = False
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            with self._lock:
                self._detaching.add(topic)
            self._wake.set()
            # without a connection the pump cannot send them: no wait (what
            # was handled and not deleted is delivered again, at least once),
            # and none once the connection is found gone while waiting
            while self._conn.connected.is_set():
                left = remaining(deadline)
                if left is not None and left <= 0:
                    break
                if queue.done.wait(DETACH_LOOK if left is None else min(DETACH_LOOK, left)):
                    break
        with self._lock:
            self._queues.pop(topic, None)
            drop = not self._queues and bool(self._watching)
            if drop:  # the last one: nothing to hear of (set again by the next attach)
                self._watching = None
        if drop:
            self._conn.unwatch_tree(self._base, self._on_event, deadline)

    def relist(self, topic: str | None = None) -> None:
        """The queue of ``topic`` (or of every subscription) may hold names
        not seen yet: list it."""
        with self._lock:
            if topic is None:
                queues = list(self._queues.values())
            else:  # not there: closed meanwhile (nothing to read)
                queues = [q for q in (self._queues.get(topic),) if q is not None]
        for queue in queues:
            queue.relist = True
        self._wake.set()

    def handled(self, buffer: DeliveryBuffer) -> None:
        """A subscription queued a handled node for deletion (its consumer's
        thread): wake the pump to start the linger, or to send at once when
        ``DELETE_EAGER`` wait; otherwise the linger's end wakes it."""
        if self._delete_due is None or buffer.deletes_waiting >= DELETE_EAGER:
            self._wake.set()

    def wake(self) -> None:
        """Something to do: handled nodes to delete, or room to read ahead."""
        self._wake.set()

    def close(self, timeout: float) -> None:
        self._stop = True
        self._wake.set()
        self._conn.remove_state_listener(self._on_state)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- kazoo's threads: hand-offs only -------------------------------------------------

    def _on_state(self, state: KazooState) -> None:
        if state == KazooState.CONNECTED:
            self.relist()  # events of the outage are lost: catch up by listing

    def _on_event(self, kind: int, path: str) -> None:  # kazoo's connection thread
        if kind == NODE_DELETED and path.count("/", len(self._base)) > 2:
            return  # a queue entry deleted (most likely by this pump): nothing to do
        with self._event_lock:
            if kind == NODE_CREATED and not self._events and self._at_once(path):
                return
            self._events.append((kind, path))
        self._wake.set()

    def _at_once(self, path: str) -> bool:
        """(kazoo's connection thread, under the event lock.) A node whose
        name carries its message, in a queue that is caught up: hand it to
        its subscription now, without a hop through the pump. Only with the
        built-in serializers (no user code runs on kazoo's thread), and not
        while a listing is due (events may have been missed: what they named
        comes first)."""
        located = self._locate(path)
        if located is None:
            return False
        queue, rest, segment, entry = located
        data = inline_data(entry)
        if data is None or queue.relist or queue.listing or parse_segment_node(segment) is None:
            return False
        serializers = self._ctx.serializers
        try:
            entries = envelope.decode(data)
        except ValueError:
            return False  # the pump reports it
        if not all(serializers.ours(e.content_type) for e in entries):
            return False
        node = Node(rest, len(entries))
        deliveries = node_deliveries(serializers, join(queue.path, rest), data, node, entries)
        if not queue.buffer.arrived(rest, deliveries):
            return False
        queue.segments.add(segment)
        self.at_once += 1
        if not entries:
            self._wake.set()  # nothing to handle: its delete
        return True

    def _locate(self, path: str) -> tuple[_Queue, str, str, str] | None:
        """The subscription's queue an event's path lies in, with the path
        under the queue (``rest``), split into ``segment`` and ``entry``;
        ``None`` outside every attached queue."""
        prefix = self._base + "/"
        if not path.startswith(prefix):
            return None
        topic, _, rest = path[len(prefix) :].partition("/")
        with self._lock:
            queue = self._queues.get(topic)
        if queue is None:
            return None
        segment, _, entry = rest.partition("/")
        return queue, rest, segment, entry

    def _on_child_watch(self, topic: str, _event: WatchedEvent) -> None:
        with self._lock:
            queue = self._queues.get(topic)
        if queue is not None:
            queue.relist = True
            self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while True:
            timeout = DELETE_RETRY if self._retry_deletes else 1.0
            due = self._linger_end(self._deletes_waiting())
            if due is not None:
                timeout = min(timeout, max(0.0, due - time.monotonic()))
            self._wake.wait(timeout)
            self._wake.clear()
            retry, self._retry_deletes = self._retry_deletes, False
            if self._stop:
                break
            try:
                self._watch()
                self._take_events()
                self._retry_refused()
                if self._deletes_due(retry):
                    self._flush_deletes()
                self._finish_detached()
                self._list_due()
                self._fetch()
                backoff = 0.05
            except ClientClosed:
                break
            except (ConnectionLost, OperationTimeout) as exc:
                logger.debug("receive pump: %s; will retry", exc)
                self.relist()
                self._sleep_until_connected(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                logger.exception("receive pump: unexpected error; will retry")
                self.relist()
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        try:  # a last send, so handled messages are not delivered again
            self._retry_refused(now=True)
            self._flush_deletes(wait=True)
        except ZkPubSubError as exc:
            logger.debug("receive pump: final delete failed: %s", exc)
        for queue in self._all():
            queue.done.set()

    def _all(self) -> list[_Queue]:
        with self._lock:
            return list(self._queues.values())

    def _sleep_until_connected(self, pause: float) -> None:
        time.sleep(pause)
        while not self._stop and not self._conn.connected.is_set():
            self._conn.connected.wait(0.2)

    def _watch(self) -> None:
        """Set the persistent watch once (where the server has them)."""
        if self._watching is not None or self._mode == "listing":
            return
        with self._lock:
            if not self._queues:  # the last one left: no watch until one comes
                return
        ok = self._conn.watch_tree(self._base, self._on_event, self._ctx.deadline())
        if not ok:
            if self._mode == "persistent":  # the server said so only now (3.5)
                logger.error(
                    "watch_mode='persistent', but the server has no persistent watches "
                    "(ZooKeeper < 3.6): queues are listed on change instead"
                )
            else:
                logger.info("the server has no persistent watches: queues are listed on change")
        with self._lock:
            self._watching = ok
            drop = ok and not self._queues
            if drop:
                self._watching = None
        if drop:  # the last one left while it was set
            self._conn.unwatch_tree(self._base, self._on_event, self._ctx.deadline())
            return
        self.relist()  # whatever came before the watch was set

    def _take_events(self) -> None:
        """Created entries go to their subscription's buffer, by name; a
        queue or segment deleted by someone else makes it list again."""
        while True:
            with self._event_lock:
                if not self._events:
                    return
                self._take_event(*self._events.popleft())

    def _take_event(self, kind: int, path: str) -> None:
        """(Under the event lock.) One event: see :meth:`_take_events`."""
        located = self._locate(path)
        if located is None:
            return
        queue, rest, segment, entry = located
        if kind == NODE_CREATED:
            if entry and "/" not in entry and parse_queue_entry(entry) is not None:
                queue.buffer.discovered(rest)
                queue.segments.add(segment)
            elif rest and (entry or parse_segment_node(segment) is None):
                queue.relist = True  # something not ours: the listing reports it
        elif kind == NODE_DELETED and not entry:
            queue.relist = True  # the queue, or a segment, went

    # -- listing ---------------------------------------------------------------------------

    def _list_due(self) -> None:
        now = time.monotonic()
        for queue in self._all():
            if len(queue.segments) > 1 and queue.buffer.idle:
                queue.relist = True  # all read: the listing removes emptied old segments
            since = now - queue.listed_at
            # Listing on every change (no persistent watch), the names not
            # seen yet are newer than every name listed, so while listed ones
            # wait to be read, listing again can wait a little. With the
            # watch, a listing is due only when events may have been missed
            # (a reconnect): nothing is read before it, or what the events
            # name would overtake what they missed.
            busy = not self._watching and queue.buffer.has_unfetched and since < RELIST_WHILE_BUSY
            if (queue.relist and not busy) or since > SAFETY_RELIST_INTERVAL:
                queue.listing = True
                queue.relist = False
                try:
                    self._list(queue)
                except NotAuthorized as exc:  # this queue only: the others go on
                    logger.error("receive pump: %s; listed again in a while", exc)
                finally:
                    queue.listing = False
                queue.listed_at = time.monotonic()

    def _list(self, queue: _Queue) -> None:
        """List a queue: entries from before segments, then every segment in
        order. Without a persistent watch, child watches (on the queue and
        its newest segment) ask for the next listing. Segments older than the
        newest no longer grow; an empty one is deleted."""
        conn, layout = self._conn, self._ctx.layout
        kazoo = conn.kazoo
        watch = None if self._watching else functools.partial(self._on_child_watch, queue.topic)
        try:
            names: list[str] = conn.result(
                kazoo.get_children_async(queue.path, watch=watch),
                self._ctx.deadline(),
                f"list queue {queue.path}",
            )
        except NoNodeError:
            # Deleted under us (the cleaner took it while we were away).
            prepare_queue(self._ctx, queue.topic, queue.backlog, self._ctx.deadline())
            queue.relist = True
            self._wake.set()
            return
        ordered, numbers, foreign = split_queue(names)
        segments = [layout.segment(queue.path, n) for n in numbers]
        queue.segments = {segment_name(n) for n in numbers[-1:]}  # and those not empty, below
        newest = len(segments) - 1
        listings = conn.read_all(
            lambda: [
                kazoo.get_children_async(p, watch=watch if i == newest else None)
                for i, p in enumerate(segments)
            ],
            self._ctx.deadline(),
            f"list the segments of {queue.path}",
        )
        for number, path, listing in zip(numbers, segments, listings, strict=True):
            if isinstance(listing, NoNodeError):
                continue
            name = segment_name(number)
            entries, strays = order_names(listing)
            ordered += [f"{name}/{entry}" for entry in entries]
            foreign += [f"{name}/{stray}" for stray in strays]
            if listing:
                queue.segments.add(name)
            elif path != segments[newest]:
                kazoo.delete_async(path)  # emptied and left: NotEmpty/NoNode are fine
        for name in queue.buffer.listed(ordered, foreign):
            self._fetch_foreign(queue, name)

    def _fetch_foreign(self, queue: _Queue, name: str) -> None:
        path = join(queue.path, name)
        try:
            data, _ = self._conn.result(
                self._conn.kazoo.get_async(path), self._ctx.deadline(), f"read {path}"
            )
        except NoNodeError:
            return
        except NotAuthorized as exc:
            error = unreadable(path, exc)
        else:
            error = DecodeError("node name is not a zkpubsub message node", path=path, data=data)
        queue.buffer.fetched([], [Delivery(Node(name, 1), error=error)])

    # -- reading ----------------------------------------------------------------------------

    def _fetch(self) -> None:
        """Read what every subscription has room for, pipelined, within the
        read window (the rest in the next rounds)."""
        kazoo = self._conn.kazoo
        queues = self._all()
        chosen = read_window([q.buffer.to_fetch() for q in queues], self._node_bytes)
        if not chosen:
            return
        wanted = [(queues[i], name) for i, name in chosen]
        # A name that carries its envelope is not read, unless this
        # subscription deleted it lately: is it back, or was the listing
        # that showed it older than the delete?
        carried: dict[_Queue, dict[str, bytes]] = {}
        for queue, name in wanted:
            data = inline_data(name.rpartition("/")[2])
            if data is not None:
                carried.setdefault(queue, {})[name] = data
        for queue, names in carried.items():
            for name in queue.buffer.deleted_among(list(names)):
                del names[name]
        requests: list[tuple[_Queue, str, Any]] = []
        for queue, name in wanted:
            data = carried.get(queue, {}).get(name)
            request = data if data is not None else kazoo.get_async(join(queue.path, name))
            requests.append((queue, name, request))
        deadline = self._ctx.deadline()
        results: dict[_Queue, tuple[list[str], list[Delivery]]] = {}
        read = size = 0
        try:
            for queue, name, request in requests:
                path = join(queue.path, name)
                fetched, deliveries = results.setdefault(queue, ([], []))
                if isinstance(request, bytes):  # the envelope its name carries
                    deliveries.extend(decode_node(self._ctx.serializers, path, name, request))
                    fetched.append(name)
                    self.nodes_read += 1
                    continue
                try:
                    data, stat = self._conn.result(request, deadline, f"read {path}")
                except NoNodeError:
                    fetched.append(name)  # gone already: nothing to deliver
                    continue
                except NotAuthorized as exc:
                    deliveries.append(Delivery(Node(name, 1), error=unreadable(path, exc)))
                    fetched.append(name)
                    continue
                deliveries.extend(decode_node(self._ctx.serializers, path, name, data, stat))
                fetched.append(name)
                self.nodes_read += 1
                read, size = read + 1, size + len(data)
        finally:
            if read:
                self._node_bytes = size / read
            for queue in {q for q, _ in wanted}:
                fetched, deliveries = results.get(queue, ([], []))
                queue.buffer.fetched(fetched, deliveries)
                if queue.buffer.wants_more():
                    self._wake.set()

    # -- deletes ------------------------------------------------------------------------------

    def _finish_detached(self) -> None:
        with self._lock:
            leaving, self._detaching = self._detaching, set()
            queues = [self._queues[t] for t in leaving if t in self._queues]
            # deletes refused for want of rights get a last try with them
            last = [(q, n) for q, n in self._refused if q in queues]
            self._refused = [(q, n) for q, n in self._refused if q not in queues]
        for queue, name in last:
            queue.buffer.delete_again([name])
        if queues:
            self._flush_deletes(wait=True, only=queues)
            for queue in queues:
                queue.done.set()

    def _deletes_waiting(self) -> int:
        return sum(q.buffer.deletes_waiting for q in self._all())

    def _linger_end(self, waiting: int) -> float | None:
        """When the ``waiting`` handled nodes go (the first seen starts the
        linger); ``None`` when none wait."""
        if not waiting:
            self._delete_due = None
        elif self._delete_due is None:
            self._delete_due = time.monotonic() + DELETE_LINGER
        return self._delete_due

    def _deletes_due(self, retry: bool) -> bool:
        """Whether the handled nodes waiting are sent this round: a retry is
        due, ``DELETE_EAGER`` of them wait, or their linger is over."""
        waiting = self._deletes_waiting()
        due = self._linger_end(waiting)
        if retry or self._trees:
            return True
        if due is None:
            return False
        if waiting >= DELETE_EAGER or time.monotonic() >= due:
            self._delete_due = None
            return True
        return False

    def _flush_deletes(self, wait: bool = False, only: list[_Queue] | None = None) -> None:
        """Send the deletes of handled nodes, in transactions across queues,
        without waiting for them (unless ``wait``): their answers only do
        bookkeeping, so the pump goes on reading meanwhile. A handled node
        someone gave children is deleted with them."""
        with self._lock:
            trees, self._trees = self._trees, set()
        for queue, name in trees:
            path = join(queue.path, name)
            logger.warning("receive pump: %s has child nodes; deleting them", brief(path))
            delete_tree(self._conn, path, self._ctx.deadline())
            queue.buffer.deleted([name])
        kazoo = self._conn.kazoo
        work = [(q, n) for q in (only or self._all()) for n in q.buffer.take_deletes()]
        answered = []
        for i in range(0, len(work), DELETE_BATCH):
            batch = work[i : i + DELETE_BATCH]
            done = threading.Event()
            try:
                txn = kazoo.transaction()
                for queue, name in batch:
                    txn.delete(join(queue.path, name))
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

    def _retry_refused(self, now: bool = False) -> None:
        """Queue again the deletes refused for want of rights, once
        ``REFUSED_RETRY`` has passed (or ``now``); those of queues no longer
        read are dropped."""
        with self._lock:
            if not self._refused or (not now and time.monotonic() < self._refused_next):
                return
            attached = set(map(id, self._queues.values()))
            refused = [(q, n) for q, n in self._refused if id(q) in attached]
            self._refused = []
        if refused:
            self._delete_again(refused)

    def _delete_again(self, batch: list[tuple[_Queue, str]]) -> None:
        for queue, name in batch:
            queue.buffer.delete_again([name])
        self._retry_deletes = True

    def _deletes_answered(
        self, batch: list[tuple[_Queue, str]], result: Any, done: threading.Event
    ) -> None:
        """A delete transaction's answer (kazoo's thread: bookkeeping only)."""
        try:
            try:
                results = result.get()
            except Exception:  # no answer (kazoo's or its loop's error): again once connected
                self._delete_again(batch)
                return
            if first_error(results)[1] is None:
                for queue, name in batch:
                    queue.buffer.deleted([name])
                return
            # One node was gone already (the cleaner, a retried delete): the
            # rest go one by one, each answer doing its own bookkeeping.
            for queue, name in batch:
                self._conn.kazoo.delete_async(join(queue.path, name)).rawlink(
                    lambda r, q=queue, n=name: self._delete_answered(q, n, r)
                )
        finally:
            done.set()

    def _delete_answered(self, queue: _Queue, name: str, result: Any) -> None:  # kazoo's thread
        try:
            result.get()
        except NoNodeError:
            pass
        except NotEmptyError:  # children below it: the pump deletes the subtree
            with self._lock:
                self._trees.add((queue, name))
            self._retry_deletes = True
            self._wake.set()
            return
        except NoAuthError:
            # its segment's ACL leaves deletes to another identity (a
            # publisher whose roles leave this subscriber out): it stays,
            # handled, tried again every REFUSED_RETRY (not every
            # DELETE_RETRY: requests for every such node, twice a second,
            # for as long as the ACL stays); said once for the queue
            if queue.path not in self._undeletable:
                self._undeletable.add(queue.path)
                logger.warning(
                    "receive pump: may not delete handled nodes of %s (%s): the ACL its "
                    "writer set leaves this client out; they stay, tried again every %gs",
                    brief(queue.path),
                    brief(join(queue.path, name)),
                    REFUSED_RETRY,
                )
            with self._lock:
                if not self._refused:
                    self._refused_next = time.monotonic() + REFUSED_RETRY
                self._refused.append((queue, name))
            return
        except Exception:  # no answer: again once connected
            self._delete_again([(queue, name)])
            return
        queue.buffer.deleted([name])
