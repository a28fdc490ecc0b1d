"""The znode layout: every path zkpubsub reads or writes is built here, and
every node name it reads is parsed here. Nobody else joins paths.

The layout is a wire format: ``docs/wire-format.md`` describes it for
clients in other languages. Under a root (default ``/zkpubsub``)::

    <root>/clients/<client id>                  ephemeral, one per live client
    <root>/subscribers/<topic>                  persistent; its data version is
                                                bumped by every (un)subscribe
    <root>/subscribers/<topic>/<client id>      one per subscription: ephemeral,
                                                or persistent with data
                                                ``durable`` for a durable one
    <root>/messages/<client id>/<topic>         persistent, the queue; data: its
                                                record (current segment, bound)
    <root>/messages/<client id>/<topic>/s<NNNNNNNNNN>
                                                persistent, a segment of the queue
    <root>/messages/<client id>/<topic>/s<NNNNNNNNNN>/m<guid>-<seq>
                                                persistent sequential, one
                                                envelope (one or more messages)
    <root>/messages/<client id>/<topic>/s<NNNNNNNNNN>/m<guid>.<data>.<seq>
                                                the same, its envelope in its
                                                name (base64url) and no data:
                                                read without a read, written
                                                only to queues whose record
                                                asks for it (``inline``)
    <root>/messages/<client id>/<topic>/s<NNNNNNNNNN>/o<guid>-<seq>
                                                persistent sequential, an
                                                overflow marker (queue full)
    <root>/purging/<client id>                  persistent, while the cleaner
                                                deletes a dead client's queues
    <root>/receipts/<client id>/r<guid>         persistent, written in the same
                                                transaction as a publish, put or
                                                ack; proves it happened after a
                                                lost answer
    <root>/cleaner/candidates/c<guid>-<seq>     ephemeral sequential, cleaner
                                                election; lowest leads
    <root>/cleaner/clock                        the cleaner writes it to read
                                                the server's time (its mtime)
    <root>/queues/<name>                        persistent; its data is the number
                                                of the segment puts go to, and
                                                every put checks its version
    <root>/queues/<name>/items/s<NNNNNNNNNN>    persistent, one segment of items
    <root>/queues/<name>/items/s<N>/<q|r><PPP>-s<N>-<guid>-<seq>
                                                persistent sequential work item,
                                                priority PPP, in segment N; its
                                                data version counts its
                                                reservations (an item name of
                                                the unsegmented layout,
                                                <q|r><PPP>-<guid>-<seq>, sits
                                                directly under items/)
    <root>/queues/<name>/reserved/<item name>   ephemeral, the holder's session
    <root>/queues/<name>/dead/<item name>       persistent dead letter
    <root>/queues/<name>/results/<message id>   persistent task result
    <root>/queues/<name>/workers/<worker id>    ephemeral, one per worker

Sequence numbers are ZooKeeper's signed 32-bit parent counters printed
``%010d``. ZooKeeper 3.8 does not wrap them cleanly at 2^31 - 1 (the
suffix saturates, and pipelined creates briefly see negative numbers), so
a parent must never get near the end: subscriber queues move to a fresh
segment long before (see :mod:`zkpubsub.backlog`), and work items roll
over to a fresh segment every ``SEGMENT_ITEMS`` creates. Order within a
parent is taken from the parsed number (with serial-number arithmetic, in
case a counter ever wraps), never from the string, and segments go in
number order.
"""

from __future__ import annotations

import base64
import enum
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple, TypeVar

__all__ = [
    "DEFAULT_ROOT",
    "GUID_HEX_DIGITS",
    "MAX_ITEMS_PER_PUT",
    "MAX_NAME_LENGTH",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "RESERVED_ROOT",
    "SEGMENT_ITEMS",
    "ItemName",
    "Layout",
    "NodeKind",
    "WorkQueuePaths",
    "brief",
    "carries_data",
    "guid_of",
    "inline_data",
    "inline_text",
    "join",
    "new_guid",
    "order_by_sequence",
    "order_candidates",
    "order_items",
    "order_names",
    "parse_candidate_node",
    "parse_item_node",
    "parse_message_node",
    "parse_queue_entry",
    "parse_segment_node",
    "parse_segment_number",
    "segment_name",
    "split_queue",
    "validate_name",
    "validate_root",
]

T = TypeVar("T")

DEFAULT_ROOT: Final = "/zkpubsub"
# ZooKeeper's own tree (quotas, configuration): never a place for a bus.
RESERVED_ROOT: Final = "/zookeeper"
MAX_NAME_LENGTH: Final = 200
GUID_HEX_DIGITS: Final = 12

_SEQ_MODULUS: Final = 1 << 32
_GUID_RE: Final = f"[0-9a-f]{{{GUID_HEX_DIGITS}}}"
# ZooKeeper prints the counter with %010d: "0000000042", "-000000005", "-2147483648".
_SEQ_RE: Final = r"(?:\d{10}|-\d{9,10})"
# A message node that carries its envelope in its name (base64url, no
# padding, between dots), read without reading the node: m<guid>.<data>.<seq>
_INLINE_RE: Final = r"\.([A-Za-z0-9_-]*)\."
_MESSAGE_NODE: Final = re.compile(rf"^m({_GUID_RE})(?:-|{_INLINE_RE})({_SEQ_RE})$")
_QUEUE_ENTRY: Final = re.compile(rf"^([mo])({_GUID_RE})-({_SEQ_RE})$")
_INLINE_ENTRY: Final = re.compile(rf"^m({_GUID_RE}){_INLINE_RE}({_SEQ_RE})$")
_SEGMENT_NODE: Final = re.compile(r"^s(\d{10})$")
_CANDIDATE_NODE: Final = re.compile(rf"^c({_GUID_RE})-({_SEQ_RE})$")
_ITEM_NODE: Final = re.compile(rf"^([qr])(\d{{3}})-(?:s(\d{{10}})-)?({_GUID_RE})-({_SEQ_RE})$")
MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 999
# A work queue's segment takes this many sequential creates, then producers
# roll over to the next one: a segment's counter stays far from 2**31 - 1
# and its listing far below 1 MiB (about 45 bytes a name).
SEGMENT_ITEMS: Final = 10_000
# A put transaction creates at most this many items, so producers putting
# at the moment a segment fills take it only a little past SEGMENT_ITEMS.
MAX_ITEMS_PER_PUT: Final = 1_000


def _forbidden_char(value: str) -> str | None:
    for ch in value:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"control character {ch!r}"
        if 0xD800 <= code <= 0xF8FF or 0xFFF0 <= code <= 0xFFFF:
            return f"character U+{code:04X}, which ZooKeeper rejects in node names"
        if code > 0xFFFF:
            # Java strings hold it as a surrogate pair, which ZooKeeper's
            # path check refuses (and which comes back as bytes no UTF-8
            # decoder accepts).
            return f"character U+{code:04X} (above U+FFFF), which ZooKeeper cannot name nodes with"
    return None


def validate_name(value: object, kind: str = "name") -> str:
    """Check that ``value`` can be one znode name (a topic, a client id, a queue).

    Raises ``TypeError`` for a non-string and ``ValueError`` with the reason
    for an empty name, ``.``, ``..``, a ``/``, a control character, a
    character ZooKeeper refuses in names (surrogates, private use, above
    U+FFFF) or a name longer than ``MAX_NAME_LENGTH``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{kind} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{kind} must not be empty")
    if value in (".", ".."):
        raise ValueError(f"{kind} must not be {value!r}")
    if "/" in value:
        raise ValueError(f"{kind} {value!r} must not contain '/'")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{kind} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    bad = _forbidden_char(value)
    if bad is not None:
        raise ValueError(f"{kind} {value!r} contains {bad}")
    return value


def validate_root(root: object) -> str:
    """Check a root path such as ``/zkpubsub`` or ``/apps/billing/bus``."""
    if not isinstance(root, str):
        raise TypeError(f"root must be a str, not {type(root).__name__}")
    if not root.startswith("/"):
        raise ValueError(f"root {root!r} must start with '/'")
    if root == "/":
        return ""
    if root.endswith("/"):
        raise ValueError(f"root {root!r} must not end with '/'")
    if root == RESERVED_ROOT or root.startswith(RESERVED_ROOT + "/"):
        raise ValueError(f"root {root!r} is inside ZooKeeper's reserved {RESERVED_ROOT} tree")
    for part in root[1:].split("/"):
        validate_name(part, "root path segment")
    return root


def new_guid() -> str:
    """A random id for a node name: found again after a connection loss."""
    return secrets.token_hex(GUID_HEX_DIGITS // 2)


def join(parent: str, name: str) -> str:
    """The path of ``name`` under ``parent`` (``name`` as read from a listing)."""
    return f"{parent}/{name}"


class NodeKind(enum.Enum):
    """What a node is, by its place in the layout (the ACL policy gives each
    kind its ACL). ``ABOVE_ROOT`` is a parent of the root (or of a chroot);
    ``FOREIGN`` anything under the root the layout does not name."""

    ABOVE_ROOT = "above root"
    ROOT = "root"
    CLIENTS = "clients"
    CLIENT = "clients/<id>"
    SUBSCRIBERS = "subscribers"
    TOPIC = "subscribers/<topic>"
    SUBSCRIBER = "subscribers/<topic>/<id>"
    MESSAGES = "messages"
    CLIENT_MESSAGES = "messages/<id>"
    QUEUE = "messages/<id>/<topic>"
    SEGMENT = "messages/<id>/<topic>/s<N>"
    MESSAGE = "messages/<id>/<topic>/s<N>/m<guid>-<seq>"
    MARKER = "messages/<id>/<topic>/s<N>/o<guid>-<seq>"
    RECEIPTS = "receipts"
    RECEIPT_FOLDER = "receipts/<id>"
    RECEIPT = "receipts/<id>/r<guid>"
    PURGING = "purging"
    PURGE_MARKER = "purging/<id>"
    CLEANER = "cleaner"
    CANDIDATES = "cleaner/candidates"
    CANDIDATE = "cleaner/candidates/c<guid>-<seq>"
    CLOCK = "cleaner/clock"
    WORK_QUEUES = "queues"
    WORK_QUEUE = "queues/<name>"
    ITEMS = "queues/<name>/items"
    ITEM_SEGMENT = "queues/<name>/items/s<N>"
    ITEM = "queues/<name>/items/s<N>/<item>"
    RESERVED = "queues/<name>/reserved"
    RESERVATION = "queues/<name>/reserved/<item>"
    DEAD = "queues/<name>/dead"
    DEAD_LETTER = "queues/<name>/dead/<item>"
    RESULTS = "queues/<name>/results"
    RESULT = "queues/<name>/results/<message id>"
    WORKERS = "queues/<name>/workers"
    WORKER = "queues/<name>/workers/<worker id>"
    FOREIGN = "foreign"


_FOLDERS: Final = {
    "clients": (NodeKind.CLIENTS, NodeKind.CLIENT),
    "subscribers": (NodeKind.SUBSCRIBERS, NodeKind.TOPIC, NodeKind.SUBSCRIBER),
    "receipts": (NodeKind.RECEIPTS, NodeKind.RECEIPT_FOLDER, NodeKind.RECEIPT),
    "purging": (NodeKind.PURGING, NodeKind.PURGE_MARKER),
}
_QUEUE_FOLDERS: Final = {
    "items": (NodeKind.ITEMS,),
    "reserved": (NodeKind.RESERVED, NodeKind.RESERVATION),
    "dead": (NodeKind.DEAD, NodeKind.DEAD_LETTER),
    "results": (NodeKind.RESULTS, NodeKind.RESULT),
    "workers": (NodeKind.WORKERS, NodeKind.WORKER),
}


def _item_kind(parts: list[str]) -> NodeKind:
    """The kind of a node under a work queue's ``items/`` (``parts`` below it)."""
    segment = parse_segment_node(parts[0])
    if len(parts) == 1:
        if segment is not None and segment > 0:
            return NodeKind.ITEM_SEGMENT
        # an item of the unsegmented layout
        return NodeKind.ITEM if parse_item_node(parts[0]) is not None else NodeKind.FOREIGN
    if len(parts) == 2 and segment and parse_item_node(parts[1]) is not None:
        return NodeKind.ITEM
    return NodeKind.FOREIGN


def _message_kind(parts: list[str], depth: int) -> NodeKind:
    """The kind of a node under ``messages/`` (``parts`` from ``messages``)."""
    if depth <= 2:
        return (NodeKind.MESSAGES, NodeKind.CLIENT_MESSAGES, NodeKind.QUEUE)[depth]
    segment = parse_segment_node(parts[3]) is not None
    if depth == 3:
        if segment:
            return NodeKind.SEGMENT
        legacy = parse_queue_entry(parts[3])  # a node from before segments
        return NodeKind.MESSAGE if legacy is not None and legacy[0] == "m" else NodeKind.FOREIGN
    entry = parse_queue_entry(parts[4]) if segment and depth == 4 else None
    if entry is None:
        return NodeKind.FOREIGN
    return NodeKind.MESSAGE if entry[0] == "m" else NodeKind.MARKER


class Place(NamedTuple):
    """Where a node stands in the layout (:meth:`Layout.place`): its kind
    and the names its path holds below the root, in order, without the
    layout's own folder names: ``CLIENT`` (client id); ``SUBSCRIBER``
    (topic, client id); ``QUEUE`` (client id, topic); ``MESSAGE`` and
    ``MARKER`` (client id, topic, segment, entry; a message node from
    before segments: client id, topic, entry); ``RECEIPT`` (client id,
    receipt); ``CANDIDATE`` (its name); ``WORK_QUEUE`` and every kind
    within a work queue (the queue's name, then the names below its
    folder: ``ITEM`` queue, segment, item). ``FOREIGN``, the root and the
    nodes above it hold none."""

    kind: NodeKind
    names: tuple[str, ...] = ()


_FOREIGN: Final = Place(NodeKind.FOREIGN)


def _place(kind: NodeKind, names: list[str]) -> Place:
    return _FOREIGN if kind is NodeKind.FOREIGN else Place(kind, tuple(names))


class Layout:
    """Builds every path under one root. ``Layout("/zkpubsub").queue("a", "t")``."""

    __slots__ = (
        "candidates",
        "cleaner",
        "clients",
        "clock",
        "messages",
        "purging",
        "receipts",
        "root",
        "subscribers",
        "work",
    )

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = validate_root(root)
        self.clients = f"{self.root}/clients"
        self.subscribers = f"{self.root}/subscribers"
        self.messages = f"{self.root}/messages"
        self.purging = f"{self.root}/purging"
        self.receipts = f"{self.root}/receipts"
        self.cleaner = f"{self.root}/cleaner"
        self.candidates = f"{self.cleaner}/candidates"
        self.clock = f"{self.cleaner}/clock"
        self.work = f"{self.root}/queues"

    @property
    def root_path(self) -> str:
        return self.root or "/"

    def base_paths(self) -> tuple[str, ...]:
        """The persistent nodes every client makes sure exist."""
        return (
            self.clients,
            self.subscribers,
            self.messages,
            self.purging,
            self.receipts,
            self.candidates,
        )

    def client(self, client_id: str) -> str:
        return f"{self.clients}/{client_id}"

    def topic(self, topic: str) -> str:
        return f"{self.subscribers}/{topic}"

    def subscriber(self, topic: str, client_id: str) -> str:
        return f"{self.subscribers}/{topic}/{client_id}"

    def client_messages(self, client_id: str) -> str:
        return f"{self.messages}/{client_id}"

    def queue(self, client_id: str, topic: str) -> str:
        return f"{self.messages}/{client_id}/{topic}"

    def segment(self, queue_path: str, number: int) -> str:
        """Segment ``number`` of a queue."""
        return f"{queue_path}/{segment_name(number)}"

    def message_prefix(self, parent: str, guid: str) -> str:
        """The path handed to a sequential create of a message node (under
        a segment; before segments, under the queue itself)."""
        return f"{parent}/m{guid}-"

    def inline_prefix(self, segment: str, guid: str, text: str) -> str:
        """The path handed to a sequential create of a message node that
        carries its envelope in its name (``text``: :func:`inline_text`)."""
        return f"{segment}/m{guid}.{text}."

    def marker_prefix(self, segment: str, guid: str) -> str:
        """The path handed to a sequential create of an overflow marker."""
        return f"{segment}/o{guid}-"

    def purge_marker(self, client_id: str) -> str:
        return f"{self.purging}/{client_id}"

    def client_receipts(self, client_id: str) -> str:
        return f"{self.receipts}/{client_id}"

    def receipt(self, client_id: str, guid: str) -> str:
        """The receipt node one transaction of ``client_id`` creates."""
        return f"{self.receipts}/{client_id}/r{guid}"

    def candidate_prefix(self, guid: str) -> str:
        return f"{self.candidates}/c{guid}-"

    def work_queue(self, name: str) -> WorkQueuePaths:
        return WorkQueuePaths(f"{self.work}/{name}")

    def kind_of(self, path: str) -> NodeKind:
        """The kind of the node at ``path`` (an absolute path as this layout
        builds them)."""
        return self.place(path).kind

    def place(self, path: str) -> Place:
        """Where the node at ``path`` stands: its kind and the names its
        path holds (see :class:`Place`)."""
        root = self.root
        if path == self.root_path:
            return Place(NodeKind.ROOT)
        if not path.startswith(root + "/"):
            return Place(NodeKind.ABOVE_ROOT)
        parts = path[len(root) + 1 :].split("/")
        head, depth = parts[0], len(parts) - 1
        if head == "messages":
            return _place(_message_kind(parts, depth), parts[1:])
        kinds = _FOLDERS.get(head)
        if kinds is not None:
            return _place(kinds[depth], parts[1:]) if depth < len(kinds) else _FOREIGN
        if head == "cleaner":
            if depth == 0:
                return Place(NodeKind.CLEANER)
            if parts[1] == "clock" and depth == 1:
                return Place(NodeKind.CLOCK)
            if parts[1] == "candidates" and depth <= 2:
                kind = NodeKind.CANDIDATES if depth == 1 else NodeKind.CANDIDATE
                return _place(kind, parts[2:])
            return _FOREIGN
        if head == "queues":
            if depth <= 1:
                return _place(
                    NodeKind.WORK_QUEUES if depth == 0 else NodeKind.WORK_QUEUE, parts[1:]
                )
            names = [parts[1], *parts[3:]]
            if parts[2] == "items" and depth >= 3:
                return _place(_item_kind(parts[3:]), names)
            folder = _QUEUE_FOLDERS.get(parts[2])
            if folder is not None and depth <= 3:
                return _place(folder[depth - 2], names)
        return _FOREIGN


class WorkQueuePaths:
    """The paths of one work queue. ``base`` (the queue's own node) holds
    the number of the segment puts go to."""

    __slots__ = ("base", "dead", "items", "reserved", "results", "workers")

    def __init__(self, base: str) -> None:
        self.base = base
        self.items = f"{base}/items"
        self.reserved = f"{base}/reserved"
        self.dead = f"{base}/dead"
        self.results = f"{base}/results"
        self.workers = f"{base}/workers"

    def all(self) -> tuple[str, ...]:
        return (self.items, self.reserved, self.dead, self.results, self.workers)

    def item(self, name: str) -> str:
        """The path of the item node ``name`` (in its segment, which the name
        says; directly under ``items/`` for the unsegmented layout and for
        names that are not item names)."""
        parsed = parse_item_node(name)
        if parsed is None or parsed.segment == 0:
            return f"{self.items}/{name}"
        return f"{self.segment(parsed.segment)}/{name}"

    def segment(self, number: int) -> str:
        return f"{self.items}/{segment_name(number)}"

    def item_prefix(self, priority: int, guid: str, *, wants_result: bool, segment: int) -> str:
        """The path handed to a sequential create of an item in ``segment``."""
        if segment < 1:
            raise ValueError(f"segments are numbered from 1, not {segment}")
        kind = "r" if wants_result else "q"
        return f"{self.segment(segment)}/{kind}{priority:03d}-{segment_name(segment)}-{guid}-"

    def reservation(self, name: str) -> str:
        return f"{self.reserved}/{name}"

    def dead_letter(self, name: str) -> str:
        return f"{self.dead}/{name}"

    def result(self, message_id: str) -> str:
        return f"{self.results}/{message_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.workers}/{worker_id}"

    def locate(self, path: str) -> tuple[str, str] | None:
        """What the node at ``path`` is to this queue, as ``(kind, name)``:
        ``("item", name)`` for a work item (in its segment, or of the
        unsegmented layout), ``("segment", name)``, ``("reservation",
        name)``, ``("worker", worker id)``, ``("foreign", path)`` for a node
        among the items that is none of these, ``("folder", path)`` for the
        queue's node or one of its folders; ``None`` for the rest (dead
        letters, results)."""
        base = self.base
        if path == base:
            return "folder", path
        if not path.startswith(base + "/"):
            return None
        parts = path[len(base) + 1 :].split("/")
        head, depth = parts[0], len(parts)
        if depth == 1:
            return ("folder", path) if head in ("items", "reserved", "workers") else None
        if head == "reserved" and depth == 2:
            return "reservation", parts[1]
        if head == "workers" and depth == 2:
            return "worker", parts[1]
        if head != "items" or depth > 3:
            return ("foreign", path) if head == "items" else None
        number = parse_segment_node(parts[1])
        parsed = parse_item_node(parts[-1])
        if depth == 2:
            if number:
                return "segment", parts[1]
            if parsed is not None and parsed.segment == 0:
                return "item", parts[1]
        elif number and parsed is not None and parsed.segment == number:
            return "item", parts[2]
        return "foreign", path


def parse_message_node(name: str) -> tuple[str, int] | None:
    """``(guid, sequence)`` of a message node name, or ``None`` if foreign."""
    m = _MESSAGE_NODE.match(name)
    if m is None:
        return None
    return m.group(1), int(m.group(3))


def inline_text(data: bytes) -> str:
    """``data`` as it is written into a node name: base64url, unpadded."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def carries_data(name: str) -> bool:
    """Whether a queue entry's name (``s<N>/<entry>`` or ``<entry>``) is a
    message node that carries its envelope (``m<guid>.<data>.<seq>``)."""
    return _INLINE_ENTRY.match(name.rpartition("/")[2]) is not None


def brief(path: str) -> str:
    """``path`` for a log line: a name carrying an envelope shows its size,
    not the message (``.../m<guid>.<N bytes>.<seq>``)."""
    head, slash, name = path.rpartition("/")
    m = _INLINE_ENTRY.match(name)
    if m is None:
        return path
    return f"{head}{slash}m{m.group(1)}.<{len(m.group(2))} chars>.{m.group(3)}"


def inline_data(name: str) -> bytes | None:
    """The envelope a message node's name carries (``m<guid>.<data>.<seq>``),
    or ``None`` for any other name (its data is the node's)."""
    m = _INLINE_ENTRY.match(name)
    if m is None:
        return None
    text = m.group(2)
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None


def segment_name(number: int) -> str:
    """The node name of segment ``number`` (of a subscriber queue or of a
    work queue's ``items/``)."""
    return f"s{number:010d}"


def parse_segment_node(name: str) -> int | None:
    """The number of a segment node name, or ``None``."""
    m = _SEGMENT_NODE.match(name)
    return None if m is None else int(m.group(1))


def parse_queue_entry(name: str) -> tuple[str, str, int] | None:
    """``(kind, guid, sequence)`` of a node in a segment: kind ``"m"`` for
    a message node (its envelope in its data or in its name), ``"o"`` for
    an overflow marker; ``None`` if foreign."""
    m = _QUEUE_ENTRY.match(name)
    if m is not None:
        return m.group(1), m.group(2), int(m.group(3))
    m = _INLINE_ENTRY.match(name)
    if m is None:
        return None
    return "m", m.group(1), int(m.group(3))


def parse_candidate_node(name: str) -> tuple[str, int] | None:
    """``(guid, sequence)`` of a cleaner candidate node name, or ``None``."""
    m = _CANDIDATE_NODE.match(name)
    if m is None:
        return None
    return m.group(1), int(m.group(2))


class ItemName(NamedTuple):
    """What a work item's node name says. ``segment`` is 0 for an item of
    the unsegmented layout (directly under ``items/``)."""

    wants_result: bool
    priority: int
    segment: int
    guid: str
    sequence: int


def parse_item_node(name: str) -> ItemName | None:
    """What a work item name says, or ``None`` if it is not one."""
    m = _ITEM_NODE.match(name)
    if m is None:
        return None
    segment = int(m.group(3)) if m.group(3) is not None else 0
    if m.group(3) is not None and segment == 0:
        return None  # segments are numbered from 1
    return ItemName(m.group(1) == "r", int(m.group(2)), segment, m.group(4), int(m.group(5)))


def parse_segment_number(data: bytes) -> int | None:
    """The current segment a queue node's data names: ``0`` for none yet
    (empty data), ``None`` for data that is not a segment number."""
    if not data:
        return 0
    text = data.decode("ascii", "replace")
    if not text.isdigit() or len(text) > 10:
        return None
    return int(text)


def order_items(names: Sequence[str], *, by_priority: bool = True) -> tuple[list[str], list[str]]:
    """Work item names by priority (lower first; not ``by_priority``: put
    order alone), then creation order: segment by segment (the unsegmented
    layout's items first), and by sequence within a segment. Also returns
    the foreign names."""
    groups: dict[tuple[int, int], list[tuple[int, str]]] = {}
    foreign: list[str] = []
    for name in names:
        parsed = parse_item_node(name)
        if parsed is None:
            foreign.append(name)
        else:
            key = (parsed.priority if by_priority else 0, parsed.segment)
            groups.setdefault(key, []).append((parsed.sequence, name))
    ordered: list[str] = []
    for key in sorted(groups):
        ordered.extend(order_by_sequence(groups[key]))
    return ordered, foreign


def guid_of(name: str) -> str | None:
    """The guid part of a message or candidate node name."""
    parsed = parse_message_node(name) or parse_candidate_node(name)
    return parsed[0] if parsed else None


def order_by_sequence(items: Iterable[tuple[int, T]]) -> list[T]:
    """Order ``(sequence, item)`` pairs as ZooKeeper created them.

    The counter is a signed 32-bit number that wraps (…, 2147483647,
    -2147483648, …, -1, 0, …). The live nodes of one parent always span
    less than half the counter's range, so the order starts just after the
    largest gap on the 2**32 circle.
    """
    pairs = sorted(((seq % _SEQ_MODULUS, item) for seq, item in items), key=lambda p: p[0])
    if len(pairs) < 2:
        return [item for _, item in pairs]
    start = 0
    widest = pairs[0][0] + _SEQ_MODULUS - pairs[-1][0]
    for i in range(1, len(pairs)):
        gap = pairs[i][0] - pairs[i - 1][0]
        if gap > widest:
            widest, start = gap, i
    ordered = pairs[start:] + pairs[:start]
    return [item for _, item in ordered]


def order_candidates(names: Sequence[str]) -> list[str]:
    """Cleaner candidate node names in election order (foreign names left
    out): by sequence, and by name where sequences are equal (as they are
    once ZooKeeper's counter saturated), so every reader agrees."""
    parsed = sorted((p[1], name) for name in names if (p := parse_candidate_node(name)) is not None)
    return order_by_sequence(parsed)


def order_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the node names of one parent into ``(ordered, foreign)``:
    message nodes and overflow markers in creation order, and the rest."""
    known: list[tuple[int, str]] = []
    foreign: list[str] = []
    for name in names:
        parsed = parse_queue_entry(name)
        if parsed is None:
            foreign.append(name)
        else:
            known.append((parsed[2], name))
    return order_by_sequence(known), foreign


def split_queue(names: Sequence[str]) -> tuple[list[str], list[int], list[str]]:
    """The children of a queue node: ``(entries, segments, foreign)`` —
    message nodes and markers from before segments (in creation order), the
    segment numbers (ascending), and the rest."""
    segments: list[int] = []
    rest: list[str] = []
    for name in names:
        number = parse_segment_node(name)
        if number is None:
            rest.append(name)
        else:
            segments.append(number)
    entries, foreign = order_names(rest)
    return entries, sorted(segments), foreign
