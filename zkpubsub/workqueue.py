"""A reliable work queue: competing workers with reserve / ack / release.

A work queue is the broadcast machinery with one shared queue: items are
envelopes (the same format as messages) under ``queues/<name>/items``, and
every worker competes for them. Guarantees, each enforced by the server:

* **Nothing acknowledged is lost; nothing is held twice.** Reserving an item
  creates ``reserved/<item>`` as an ephemeral node of the worker's session
  and, in the same transaction, bumps the item's data version, which counts
  reservations (the item's ``attempts``). Only one live session can hold the
  reservation.
* **Zombies cannot ack.** An ack deletes the reservation and the item in one
  transaction, the item only at the version this reservation produced. A
  worker whose session expired (its reservation is gone) or whose item was
  reserved again since (the version moved on) gets
  :class:`~zkpubsub.ReservationLost`, and nothing changes. A release is
  checked the same way.
* **Dead workers' items come back.** A worker that dies or loses its session
  loses its reservations with it; the items are delivered again with
  ``attempts`` one higher.
* **Dead letters.** An item reserved ``max_attempts`` times without an ack
  is moved to ``dead/`` (by the worker releasing it for the last time, or by
  the next worker to find it), with the reason. Moving it proves nobody
  holds it. Dead letters can be listed and replayed.
* **Exactly-once enqueue.** A put creates a receipt in the same transaction;
  after a lost answer the receipt is looked up before anything is written
  again.
* **No herd, no head-of-line blocking.** Workers register under
  ``workers/``; a worker of rank r among W tries first the items whose
  sequence number is r modulo W, so they do not all race for the head, and
  a reserved item never blocks the ones behind it.
* **Priorities.** 0 to 999, lower first, first in first out within a priority
  (exactly so for a single worker; several workers take neighbouring items
  at the same time; a worker working through a backlog lists the queue again
  at most once a second, so an urgent item put meanwhile waits that long).
* **Results.** ``put(..., want_result=True)`` returns a :class:`Ticket`;
  ``item.ack(result=...)`` writes the result in the ack transaction;
  ``ticket.wait()`` reads and removes it. Unread results are removed by the
  cleaner after its ``result_ttl``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, overload

import msgpack
from kazoo.exceptions import NodeExistsError, NoNodeError, NotEmptyError

from . import envelope
from .config import CREATE_OP_OVERHEAD
from .connection import deadline_after, expired, first_error, remaining, translated
from .errors import (
    ClientClosed,
    ConnectionLost,
    ItemFailed,
    OperationTimeout,
    PayloadTooLarge,
    ReservationLost,
)
from .layout import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    WorkQueuePaths,
    new_guid,
    order_items,
    parse_item_node,
    validate_name,
)
from .receipts import landed

if TYPE_CHECKING:
    from .client import Client
    from .consumer import Consumer, ItemHandler

logger = logging.getLogger(__name__)

DEFAULT_PRIORITY: Final = 100
DEFAULT_MAX_ATTEMPTS: Final = 5
RECORD_VERSION: Final = 1
# After a change is seen (a put, a release), a worker reads its list of
# candidates again before its next reserve, but not more often than this; and
# while it still has candidates in hand, not more often than RELIST_WHILE_BUSY:
# listing a long backlog costs the server and the worker more than the items
# put meanwhile are worth (they come after those in hand, unless their
# priority is higher: such an item waits a second at most). A reservation
# lost to another worker, or a worker joining or leaving (which changes
# every worker's share), shows the list in hand is out of date: then the
# shorter interval applies again.
MIN_RELIST_INTERVAL: Final = 0.05
RELIST_WHILE_BUSY: Final = 1.0
_ERROR_TEXT_LIMIT: Final = 2000


def _check_priority(priority: object) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {priority}"
        )
    return priority


def _pack(doc: dict[str, Any]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class WorkQueueStats:
    """Counts of one work queue. ``ready`` items wait for a worker;
    ``reserved`` are held by one; ``dead`` are dead letters."""

    name: str
    ready: int
    reserved: int
    dead: int
    workers: int


@dataclass(frozen=True, slots=True)
class DeadItem:
    """A dead letter: an item given up after ``attempts`` reservations."""

    id: str
    name: str
    payload: Any
    headers: dict[str, str]
    priority: int
    attempts: int
    reason: str
    died_at: float


class Item:
    """A reserved work item. Ack it when done, release it to give it back.

    As a context manager it acks on a clean exit and releases (recording the
    exception) when the block raises.
    """

    def __init__(
        self,
        queue: WorkQueue,
        name: str,
        entry: envelope.Entry,
        payload: Any,
        *,
        token: int,
        priority: int,
        wants_result: bool,
    ) -> None:
        self._queue = queue
        self._name = name
        self._entry = entry
        self._token = token  # the item's data version after our reservation
        self.payload = payload
        self.priority = priority
        self.wants_result = wants_result
        self._finished = False

    @property
    def id(self) -> str:
        return self._entry.id

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._entry.headers)

    @property
    def attempts(self) -> int:
        """How many times the item has been reserved, this time included."""
        return self._token

    @property
    def put_at(self) -> float:
        return self._entry.published_at

    @property
    def producer_id(self) -> str:
        return self._entry.publisher_id

    @property
    def finished(self) -> bool:
        """Acked or released."""
        return self._finished

    def ack(self, result: Any = None) -> None:
        """Done: delete the item (and write ``result`` for its ticket), in one
        transaction that proves this worker still holds it. Raises
        :class:`ReservationLost` if it does not (nothing is changed then)."""
        if self._finished:
            raise ValueError(f"item {self.id} was already acked or released")
        if result is not None and not self.wants_result:
            raise ValueError(f"item {self.id} was put without want_result; there is no ticket")
        self._queue._ack(self, result)
        self._finished = True

    def release(self, error: str | BaseException | None = None) -> None:
        """Give the item back for another attempt (``error`` says why). After
        ``max_attempts`` it goes to the dead letters instead. Raises
        :class:`ReservationLost` if this worker no longer holds it."""
        if self._finished:
            raise ValueError(f"item {self.id} was already acked or released")
        self._queue._release(self, error)
        self._finished = True

    def __enter__(self) -> Item:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._finished:
            return
        if exc is None:
            self.ack()
        else:
            self.release(exc)

    def __repr__(self) -> str:
        return f"<Item {self.id} of {self._queue.name!r} attempts={self.attempts}>"


class Ticket:
    """Waits for the result of an item put with ``want_result=True``."""

    def __init__(self, queue: WorkQueue, item_id: str) -> None:
        self._queue = queue
        self.id = item_id

    def done(self) -> bool:
        """Whether the result (or the news of failure) is there."""
        queue = self._queue
        with translated("ticket"):
            return queue._conn.exists(queue._paths.result(self.id), queue._deadline())

    def wait(self, timeout: float | None = None) -> Any:
        """The result passed to ``ack``, once it is there; it is removed once
        read. Raises :class:`ItemFailed` if the item went to the dead letters
        and ``OperationTimeout`` if ``timeout`` passes first."""
        queue = self._queue
        conn, kazoo = queue._conn, queue._conn.kazoo
        path = queue._paths.result(self.id)
        deadline = deadline_after(timeout)
        arrived = threading.Event()
        with translated("ticket"):
            while True:
                arrived.clear()
                stat = conn.call(
                    lambda: kazoo.exists_async(path, watch=lambda _e: arrived.set()),
                    deadline,
                    f"wait for {path}",
                )
                if stat is not None:
                    try:
                        data, _ = conn.call(lambda: kazoo.get_async(path), deadline, path)
                    except NoNodeError:
                        raise ItemFailed(self.id, "its result was read by someone else") from None
                    conn.delete(path, deadline)
                    return queue._read_result(self.id, data)
                left = remaining(deadline)
                if not arrived.wait(left if left is not None else 1.0) and expired(deadline):
                    raise OperationTimeout(f"no result for item {self.id} within {timeout}s")

    def __repr__(self) -> str:
        return f"<Ticket {self.id} of {self._queue.name!r}>"


class WorkQueue:
    """One named work queue. Made by ``Client.queue(name)``.

    Each instance is one worker in the queue's worker registry (for
    spreading workers over items); use one per worker thread, or
    :meth:`consume`. ``close()`` leaves the registry.
    """

    _instances = 0
    _instances_lock = threading.Lock()

    def __init__(self, client: Client, name: str, *, max_attempts: int) -> None:
        validate_name(name, "queue name")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, not {max_attempts!r}")
        self.name = name
        self.max_attempts = max_attempts
        self._client = client
        self._conn = client._conn
        self._layout = client._layout
        self._paths: WorkQueuePaths = client._layout.work_queue(name)
        with WorkQueue._instances_lock:
            WorkQueue._instances += 1
            self.worker_id = f"{client.client_id}.{WorkQueue._instances}"
        self._lock = threading.Lock()
        self._candidates: deque[str] = deque()
        self._changed = threading.Event()
        self._stale = False
        self._listed_at = 0.0
        self._outdated = False  # the list in hand is known to be out of date
        self._ready = False
        self._worker_session: int | None = None
        self._closed = False
        self.conflicts = 0  # reservations lost to another worker at the last moment

    # -- plumbing ---------------------------------------------------------------------

    def _deadline(self) -> float | None:
        return deadline_after(self._client.config.request_timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"work queue {self.name!r} is closed")
        self._client._check_open()

    def _ensure_paths(self, deadline: float | None) -> None:
        if not self._ready:
            for path in self._paths.all():
                self._conn.ensure_path(path, deadline)
            self._ready = True

    def _ensure_worker(self, deadline: float | None) -> None:
        session = self._conn.session_id
        if session == self._worker_session:
            return
        kazoo = self._conn.kazoo
        path = self._paths.worker(self.worker_id)
        stat = self._conn.call(lambda: kazoo.exists_async(path), deadline, path)
        if stat is None or stat.ephemeralOwner != session:
            with contextlib.suppress(NodeExistsError):  # ours, after a lost answer
                self._conn.call(
                    lambda: kazoo.create_async(path, b"", ephemeral=True), deadline, path
                )
        self._worker_session = session

    def _decode_item(self, name: str, data: bytes) -> tuple[envelope.Entry, Any]:
        entries = envelope.decode(data)
        if len(entries) != 1:
            raise ValueError(f"a work item holds one message, not {len(entries)}")
        entry = entries[0]
        serializer = self._client._serializers.get(entry.content_type)
        if serializer is None:
            raise ValueError(f"no serializer for content type {entry.content_type!r}")
        try:
            return entry, serializer.loads(entry.body)
        except Exception as exc:
            raise ValueError(f"payload is not valid {entry.content_type}: {exc}") from exc

    def _commit(self, txn: Any, deadline: float | None, what: str) -> list[Any]:
        self._conn.wait_connected(deadline, what)
        return self._conn.result(txn.commit_async(), deadline, what)  # type: ignore[no-any-return]

    # -- producing ---------------------------------------------------------------------

    @overload
    def put(
        self,
        payload: Any,
        *,
        priority: int = ...,
        headers: dict[str, str] | None = ...,
        want_result: Literal[False] = ...,
        timeout: float | None = ...,
    ) -> str: ...

    @overload
    def put(
        self,
        payload: Any,
        *,
        priority: int = ...,
        headers: dict[str, str] | None = ...,
        want_result: Literal[True],
        timeout: float | None = ...,
    ) -> Ticket: ...

    def put(
        self,
        payload: Any,
        *,
        priority: int = DEFAULT_PRIORITY,
        headers: dict[str, str] | None = None,
        want_result: bool = False,
        timeout: float | None = None,
    ) -> str | Ticket:
        """Enqueue one item, exactly once. Returns its id, or a :class:`Ticket`
        with ``want_result=True``. Raises ``ValueError`` / ``TypeError`` for a
        bad priority, :class:`SerializationError` or :class:`PayloadTooLarge`
        before anything is sent."""
        (item_id,) = self._put([payload], priority, headers, want_result, timeout)
        return Ticket(self, item_id) if want_result else item_id

    def put_many(
        self,
        payloads: Iterable[Any],
        *,
        priority: int = DEFAULT_PRIORITY,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Enqueue several items, in order, in as few transactions as fit
        (usually one, so all or none). Returns their ids."""
        items = list(payloads)
        if not items:
            raise ValueError("put_many needs at least one payload")
        return self._put(items, priority, headers, False, timeout)

    def _put(
        self,
        payloads: list[Any],
        priority: int,
        headers: dict[str, str] | None,
        want_result: bool,
        timeout: float | None,
    ) -> list[str]:
        _check_priority(priority)
        self._check_open()
        hdrs = envelope.check_headers(headers)
        config = self._client.config
        entries = [
            envelope.make_entry(
                config.serializer,
                topic=self.name,
                payload=p,
                headers=hdrs,
                publisher_id=self._client.client_id,
            )
            for p in payloads
        ]
        datas = [envelope.encode([e]) for e in entries]
        for data in datas:
            if len(data) > config.max_message_bytes:
                raise PayloadTooLarge(len(data), config.max_message_bytes)
        deadline = deadline_after(config.request_timeout if timeout is None else timeout)
        with translated(f"put to queue {self.name!r}"):
            self._ensure_paths(deadline)
            budget = config.max_transaction_bytes - 512
            start = 0
            while start < len(datas):
                used, end = 0, start
                while end < len(datas):
                    size = len(datas[end]) + len(self._paths.items) + 64 + CREATE_OP_OVERHEAD
                    if end > start and used + size > budget:
                        break
                    used += size
                    end += 1
                self._put_once(datas[start:end], priority, want_result, deadline)
                start = end
        return [e.id for e in entries]

    def _put_once(
        self, datas: list[bytes], priority: int, want_result: bool, deadline: float | None
    ) -> None:
        guid = new_guid()
        receipt = self._layout.receipt(self._client.client_id, guid)
        prefix = self._paths.item_prefix(priority, guid, wants_result=want_result)
        kazoo = self._conn.kazoo
        while True:
            txn = kazoo.transaction()
            for data in datas:
                txn.create(prefix, data, sequence=True)
            txn.create(receipt, self._client.client_id.encode())
            try:
                results = self._commit(txn, deadline, f"put to queue {self.name!r}")
            except ConnectionLost:
                if landed(self._conn, receipt, deadline):
                    break
                continue
            _, error = first_error(results)
            if error is None:
                break
            if isinstance(error, NoNodeError):  # the queue's nodes were removed
                self._ready = False
                self._ensure_paths(deadline)
                continue
            raise error
        self._client._publisher.janitor.add(receipt)

    # -- consuming -------------------------------------------------------------------------

    def reserve(self, timeout: float | None = None) -> Item | None:
        """Reserve the next item, waiting up to ``timeout`` seconds (``None``:
        as long as it takes). Returns ``None`` if none came in time."""
        items = self.reserve_many(1, timeout)
        return items[0] if items else None

    def reserve_many(self, limit: int, timeout: float | None = None) -> list[Item]:
        """Reserve up to ``limit`` items in one transaction (at least one,
        unless ``timeout`` passes first)."""
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, not {limit!r}")
        deadline = deadline_after(timeout)
        with translated(f"reserve from queue {self.name!r}"):
            while True:
                self._check_open()
                request_deadline = self._deadline()
                if self._stale:  # something was put or released
                    since = time.monotonic() - self._listed_at
                    busy = self._candidates and not self._outdated
                    if since >= (RELIST_WHILE_BUSY if busy else MIN_RELIST_INTERVAL):
                        self._refresh(request_deadline)
                with self._lock:
                    batch = [
                        self._candidates.popleft() for _ in range(min(limit, len(self._candidates)))
                    ]
                if batch:
                    items = self._reserve_names(batch, request_deadline)
                    if items:
                        return items
                    continue
                self._changed.clear()
                if self._refresh(request_deadline):
                    continue
                left = remaining(deadline)
                if left is not None and left <= 0:
                    return []
                # Watches on items/ and reserved/ wake us; poll now and then too.
                self._changed.wait(1.0 if left is None else min(left, 1.0))

    def _on_change(self, event: object) -> None:  # kazoo's thread
        self._stale = True
        self._changed.set()

    def _on_workers_change(self, event: object) -> None:  # kazoo's thread
        self._stale = self._outdated = True
        self._changed.set()

    def _refresh(self, deadline: float | None) -> bool:
        """List what is available and order it for this worker. True if any.
        The listing leaves watches: a later put or release marks it stale."""
        self._ensure_paths(deadline)
        self._ensure_worker(deadline)
        kazoo, paths = self._conn.kazoo, self._paths
        self._stale = self._outdated = False
        self._listed_at = time.monotonic()
        try:
            answers = self._conn.read_all(
                lambda: [
                    kazoo.get_children_async(paths.items, watch=self._on_change),
                    kazoo.get_children_async(paths.reserved, watch=self._on_change),
                    kazoo.get_children_async(paths.workers, watch=self._on_workers_change),
                ],
                deadline,
                "list queue",
            )
        except BaseException:
            self._stale = True
            raise
        if any(isinstance(answer, NoNodeError) for answer in answers):
            self._ready = False
            return False
        names, reserved, workers = answers
        held = set(reserved)
        ordered, foreign = order_items([n for n in names if n not in held])
        for name in foreign:
            self._bury_foreign(name, deadline)
        # Each worker prefers the items whose sequence number falls on its rank:
        # unlike positions in a listing, that choice agrees between workers
        # whose listings are of different ages.
        workers = sorted(workers)
        count = max(1, len(workers))
        rank = workers.index(self.worker_id) if self.worker_id in workers else 0
        mine: list[str] = []
        others: list[str] = []
        for name in ordered:
            parsed = parse_item_node(name)
            (mine if parsed is not None and parsed[3] % count == rank else others).append(name)
        with self._lock:
            self._candidates = deque(mine + others)
            return bool(self._candidates)

    def _reserve_names(self, names: list[str], deadline: float | None) -> list[Item]:
        conn, kazoo, paths = self._conn, self._conn.kazoo, self._paths
        answers = conn.read_all(
            lambda: [kazoo.get_async(paths.item(n)) for n in names], deadline, "read items"
        )
        ready: list[tuple[str, bytes, int, envelope.Entry, Any]] = []
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, NoNodeError):
                continue  # acked meanwhile
            data, stat = answer
            try:
                entry, payload = self._decode_item(name, data)
            except ValueError as exc:
                self._bury(name, data, stat.version, f"undecodable: {exc}", None, deadline)
                continue
            if stat.version >= self.max_attempts:
                reason = f"reserved {stat.version} times without an ack (max_attempts)"
                self._bury(name, data, stat.version, reason, entry, deadline)
                continue
            ready.append((name, data, stat.version, entry, payload))
        info = _pack({"worker": self.worker_id, "at": time.time()})
        while ready:
            txn = kazoo.transaction()
            for name, data, version, _, _ in ready:
                txn.create(paths.reservation(name), info, ephemeral=True)
                txn.set_data(paths.item(name), data, version)
            try:
                results = self._commit(txn, deadline, "reserve")
            except ConnectionLost:
                ours = self._reserved_after_loss(ready, deadline)
                taken = {item._name for item in ours}
                with self._lock:  # the others are still first in line
                    self._candidates.extendleft(
                        reversed([name for name, *_ in ready if name not in taken])
                    )
                return ours
            index, error = first_error(results)
            if error is None:
                return [
                    self._item(name, version + 1, entry, payload)
                    for name, _, version, entry, payload in ready
                ]
            # Taken by another worker (NodeExists), reserved and released
            # meanwhile (BadVersion) or acked (NoNode): try the others.
            self.conflicts += 1
            self._outdated = True
            del ready[index // 2]
        return []

    def _reserved_after_loss(
        self, tried: list[tuple[str, bytes, int, envelope.Entry, Any]], deadline: float | None
    ) -> list[Item]:
        """After a lost answer: the items whose reservation is ours. Another
        worker of the same client shares our session, so a reservation is
        ours only if it also names this worker."""
        ours = []
        for name, _, version, entry, payload in tried:
            if self._holds(name, version + 1, deadline):
                ours.append(self._item(name, version + 1, entry, payload))
        return ours

    def _holds(self, name: str, token: int, deadline: float | None) -> bool:
        """Whether this worker holds ``name`` at data version ``token``."""
        kazoo, paths = self._conn.kazoo, self._paths
        reservation, item = self._conn.read_all(
            lambda: [
                kazoo.get_async(paths.reservation(name)),
                kazoo.exists_async(paths.item(name)),
            ],
            deadline,
            f"check the reservation of {name}",
        )
        if isinstance(reservation, NoNodeError) or item is None:
            return False
        data, held = reservation
        if held.ephemeralOwner != self._conn.session_id or item.version != token:
            return False
        try:
            return bool(msgpack.unpackb(data, raw=False).get("worker") == self.worker_id)
        except Exception:
            return False

    def _get(self, path: str, deadline: float | None) -> tuple[bytes, Any]:
        kazoo = self._conn.kazoo
        return self._conn.call(lambda: kazoo.get_async(path), deadline, f"read {path}")  # type: ignore[no-any-return]

    def _item(self, name: str, token: int, entry: envelope.Entry, payload: Any) -> Item:
        parsed = parse_item_node(name)
        assert parsed is not None
        return Item(
            self, name, entry, payload, token=token, priority=parsed[1], wants_result=parsed[0]
        )

    # -- finishing items -------------------------------------------------------------------

    def _result_doc(self, status: str, result: Any = None, reason: str = "") -> bytes:
        serializer = self._client.config.serializer
        body = b"" if result is None else serializer.dumps(result)
        return _pack(
            {
                "v": RECORD_VERSION,
                "status": status,
                "ct": serializer.content_type,
                "r": body,
                "reason": reason,
                "at": time.time(),
            }
        )

    def _read_result(self, item_id: str, data: bytes) -> Any:
        doc = msgpack.unpackb(data, raw=False)
        if doc.get("status") != "ok":
            raise ItemFailed(item_id, str(doc.get("reason", "unknown")))
        body = doc.get("r", b"")
        if not body:
            return None
        serializer = self._client._serializers.get(doc.get("ct", ""))
        if serializer is None:
            raise ItemFailed(item_id, f"result has unknown content type {doc.get('ct')!r}")
        return serializer.loads(body)

    def _dead_record(self, name: str, data: bytes, attempts: int, reason: str) -> bytes:
        return _pack(
            {
                "v": RECORD_VERSION,
                "name": name,
                "item": data,
                "attempts": attempts,
                "reason": reason[:_ERROR_TEXT_LIMIT],
                "at": time.time(),
            }
        )

    def _ack(self, item: Item, result: Any) -> None:
        lost = self._ack_all([(item, result)])
        if lost:
            raise ReservationLost(self.name, item.id)

    def ack_many(self, items: Sequence[Item], results: Sequence[Any] | None = None) -> None:
        """Ack several items in one transaction (one result each, or none).
        Each is checked as :meth:`Item.ack` checks it; if some reservations
        were lost, the others are still acked and :class:`ReservationLost`
        names every lost one (``item_ids``)."""
        if results is not None and len(results) != len(items):
            raise ValueError("give one result per item")
        pairs = list(zip(items, results or [None] * len(items), strict=True))
        for item, result in pairs:
            if item._finished:
                raise ValueError(f"item {item.id} was already acked or released")
            if item._queue is not self and item._queue.name != self.name:
                raise ValueError(f"item {item.id} belongs to queue {item._queue.name!r}")
            if result is not None and not item.wants_result:
                raise ValueError(f"item {item.id} was put without want_result; there is no ticket")
        if not pairs:
            return
        lost = self._ack_all(pairs)
        for item, _ in pairs:
            item._finished = True
        if lost:
            raise ReservationLost(self.name, lost[0].id, item_ids=tuple(i.id for i in lost))

    def _ack_all(self, pairs: list[tuple[Item, Any]]) -> list[Item]:
        """Ack in as few transactions as fit; returns the items whose
        reservation was lost (the rest are acked)."""
        paths, layout = self._paths, self._layout
        deadline = self._deadline()
        lost: list[Item] = []
        with translated(f"ack in queue {self.name!r}"):
            todo = [
                (item, self._result_doc("ok", result) if item.wants_result else None)
                for item, result in pairs
            ]
            while todo:
                batch: list[tuple[Item, bytes | None]] = []
                size = 0
                while todo and (not batch or size + len(todo[0][1] or b"") < 500_000):
                    batch.append(todo.pop(0))
                    size += len(batch[-1][1] or b"") + 200
                receipt = layout.receipt(self._client.client_id, new_guid())
                while True:
                    txn = self._conn.kazoo.transaction()
                    for item, doc in batch:
                        txn.delete(paths.reservation(item._name))
                        txn.delete(paths.item(item._name), item._token)
                        if doc is not None:
                            txn.create(paths.result(item.id), doc)
                    txn.create(receipt, self._client.client_id.encode())
                    try:
                        results = self._commit(txn, deadline, "ack")
                    except ConnectionLost:
                        if landed(self._conn, receipt, deadline):
                            self._client._publisher.janitor.add(receipt)
                            break
                        continue
                    if first_error(results)[1] is None:
                        self._client._publisher.janitor.add(receipt)
                        break
                    if len(batch) == 1:
                        lost.append(batch[0][0])
                        break
                    # Some reservation was lost: ack one by one to find which.
                    todo[:0] = batch[1:]
                    batch = batch[:1]
        return lost

    def _release(self, item: Item, error: str | BaseException | None) -> None:
        paths = self._paths
        reason = ""
        if error is not None:
            reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        bury = item.attempts >= self.max_attempts
        deadline = self._deadline()
        with translated(f"release item {item.id}"):
            while True:
                txn = self._conn.kazoo.transaction()
                txn.delete(paths.reservation(item._name))
                if bury:
                    why = f"failed {item.attempts} times" + (
                        f"; last error: {reason}" if reason else ""
                    )
                    data = envelope.encode([item._entry])
                    txn.delete(paths.item(item._name), item._token)
                    txn.create(
                        paths.dead_letter(item._name),
                        self._dead_record(item._name, data, item.attempts, why),
                    )
                    if item.wants_result:
                        txn.create(paths.result(item.id), self._result_doc("dead", reason=why))
                else:
                    txn.check(paths.item(item._name), item._token)
                try:
                    results = self._commit(txn, deadline, "release")
                except ConnectionLost:
                    if self._holds(item._name, item._token, deadline):
                        continue  # still ours: the release did not happen
                    # Released (perhaps reserved again since, even by a worker
                    # sharing our session), or gone with the session.
                    return
                if first_error(results)[1] is None:
                    # It is available again: read the list anew before the next reserve.
                    self._stale, self._listed_at = True, 0.0
                    if bury:
                        logger.warning("queue %r: item %s is a dead letter", self.name, item.id)
                    return
                raise ReservationLost(self.name, item.id)

    def _bury(
        self,
        name: str,
        data: bytes,
        version: int,
        reason: str,
        entry: envelope.Entry | None,
        deadline: float | None,
    ) -> None:
        """Move an item nobody holds to the dead letters (proving that)."""
        paths = self._paths
        parsed = parse_item_node(name)
        txn = self._conn.kazoo.transaction()
        txn.create(paths.reservation(name), b"")  # fails if someone holds it
        txn.delete(paths.reservation(name))
        txn.delete(paths.item(name), version)
        txn.create(paths.dead_letter(name), self._dead_record(name, data, version, reason))
        if entry is not None and parsed is not None and parsed[0]:
            txn.create(paths.result(entry.id), self._result_doc("dead", reason=reason))
        try:
            _, error = first_error(self._commit(txn, deadline, "move to dead letters"))
        except ConnectionLost:
            return  # the next worker to find it tries again
        if error is None:
            logger.warning("queue %r: %s is a dead letter: %s", self.name, name, reason)

    def _bury_foreign(self, name: str, deadline: float | None) -> None:
        try:
            data, stat = self._get(self._paths.item(name), deadline)
        except NoNodeError:
            return
        self._bury(name, data, stat.version, "not a zkpubsub work item", None, deadline)

    # -- looking at the queue ----------------------------------------------------------------

    def __bool__(self) -> bool:
        """A queue handle is always true: ``if queue:`` asks nothing of the
        server (``len(queue)`` does)."""
        return True

    def __len__(self) -> int:
        """Items not yet acked (ready or reserved)."""
        stats = self.stats()
        return stats.ready + stats.reserved

    def stats(self) -> WorkQueueStats:
        conn, kazoo, paths = self._conn, self._conn.kazoo, self._paths
        deadline = self._deadline()
        with translated(f"stats of queue {self.name!r}"):
            stats = conn.read_all(
                lambda: [
                    kazoo.exists_async(p)
                    for p in (paths.items, paths.reserved, paths.dead, paths.workers)
                ],
                deadline,
                "queue stats",
            )
            counts = [0 if stat is None else stat.numChildren for stat in stats]
        items, reserved, dead, workers = counts
        return WorkQueueStats(self.name, max(0, items - reserved), reserved, dead, workers)

    def dead(self) -> list[DeadItem]:
        """The dead letters, oldest first."""
        conn, kazoo, paths = self._conn, self._conn.kazoo, self._paths
        deadline = self._deadline()
        out: list[DeadItem] = []
        with translated(f"dead letters of {self.name!r}"):
            names = conn.children(paths.dead, deadline) or []
            ordered, foreign = order_items(names)
            names = ordered + foreign
            answers = conn.read_all(
                lambda: [kazoo.get_async(paths.dead_letter(n)) for n in names],
                deadline,
                "read dead letters",
            )
            for name, answer in zip(names, answers, strict=True):
                if not isinstance(answer, NoNodeError):
                    out.append(self._dead_item(name, answer[0]))
        return out

    def _dead_item(self, name: str, data: bytes) -> DeadItem:
        parsed = parse_item_node(name)
        priority = parsed[1] if parsed else DEFAULT_PRIORITY
        try:
            doc = msgpack.unpackb(data, raw=False)
            item_data = doc["item"]
            attempts, reason, at = int(doc["attempts"]), str(doc["reason"]), float(doc["at"])
        except Exception:
            return DeadItem(name, name, data, {}, priority, 0, "unreadable dead letter", 0.0)
        try:
            entry, payload = self._decode_item(name, item_data)
        except ValueError:
            return DeadItem(name, name, item_data, {}, priority, attempts, reason, at)
        return DeadItem(
            entry.id, name, payload, dict(entry.headers), priority, attempts, reason, at
        )

    def replay(self, ids: Sequence[str] | None = None) -> int:
        """Put dead letters back (all, or those with these ids) as new items
        with their original payload and priority and no attempts. Returns how
        many were replayed."""
        wanted = None if ids is None else set(ids)
        paths, layout = self._paths, self._layout
        count = 0
        deadline = self._deadline()
        with translated(f"replay dead letters of {self.name!r}"):
            self._ensure_paths(deadline)
            for dead in self.dead():
                if wanted is not None and dead.id not in wanted and dead.name not in wanted:
                    continue
                try:
                    data, stat = self._get(paths.dead_letter(dead.name), deadline)
                except NoNodeError:
                    continue
                try:
                    item_data = msgpack.unpackb(data, raw=False)["item"]
                except Exception:
                    item_data = data
                parsed = parse_item_node(dead.name)
                wants_result = bool(parsed and parsed[0])
                guid = new_guid()
                receipt = layout.receipt(self._client.client_id, guid)
                while True:
                    txn = self._conn.kazoo.transaction()
                    txn.delete(paths.dead_letter(dead.name), stat.version)
                    txn.create(
                        paths.item_prefix(dead.priority, guid, wants_result=wants_result),
                        item_data,
                        sequence=True,
                    )
                    txn.create(receipt, b"")
                    try:
                        results = self._commit(txn, deadline, "replay")
                    except ConnectionLost:
                        if landed(self._conn, receipt, deadline):
                            count += 1
                            break
                        continue
                    if first_error(results)[1] is None:
                        count += 1
                    break  # an error: someone else replayed or removed it
                self._client._publisher.janitor.add(receipt)
        return count

    def ticket(self, item_id: str) -> Ticket:
        """A ticket for an item id (for waiting on it from another process)."""
        return Ticket(self, item_id)

    def consume(
        self,
        handler: ItemHandler,
        *,
        workers: int = 1,
        prefetch: int = 1,
        on_error: Callable[[BaseException, Item], Any] | None = None,
    ) -> Consumer:
        """Run ``workers`` worker threads calling ``handler(item)`` for each
        item: a return acks it (with the return value as the result, when
        one is wanted), an exception releases it (and goes to ``on_error``).
        Each worker reserves up to ``prefetch`` items in one transaction and
        acks the ones it finished in one transaction; a larger prefetch is
        faster, but holds items a little longer and redoes more of them if
        the worker dies. Returns the :class:`Consumer`; ``stop()`` finishes
        the items in hand and stops."""
        from .consumer import Consumer

        self._check_open()
        return Consumer(
            self._client, self.name, handler, workers, self.max_attempts, on_error, prefetch
        )

    def close(self) -> None:
        """Leave the worker registry. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._worker_session is not None and self._worker_session == self._conn.session_id:
            with contextlib.suppress(ClientClosed, ConnectionLost, OperationTimeout, NotEmptyError):
                self._conn.delete(self._paths.worker(self.worker_id), self._deadline())

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WorkQueue {self.name!r} worker={self.worker_id}>"
