"""The ACL policy: the exact ACL every node zkpubsub creates carries.

ZooKeeper checks a request against the ACL of the node it names (READ to
list or read, WRITE to set data) or of its parent (CREATE to create a
child, DELETE to delete one); ACLs are not inherited, so every create
carries its own. This module is the only one that decides them: from the
policy in force (``"open"``, ``"secured"`` or :class:`~zkpubsub.Roles`) it
gives the ACL of each :class:`~zkpubsub.layout.NodeKind`, and every create
of the library passes it. ``docs/wire-format.md`` lists the same table.

In the table, ``owner`` is the identity that creates the node (written as
ZooKeeper's ``auth`` scheme, which the server replaces by the creating
session's authenticated identities), ``members`` every identity of some
role. With ``"secured"`` every role is the creator's identity: the bus has
one identity (and ZooKeeper's superuser).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from kazoo.security import ACL, OPEN_ACL_UNSAFE, Id

from .layout import Layout, NodeKind
from .security import Auth, Roles, Sasl, Tls

__all__ = ["ACL_TABLE", "AclPolicy", "Grant", "acl_bytes"]

READ: Final = 1
WRITE: Final = 2
CREATE: Final = 4
DELETE: Final = 8
ADMIN: Final = 16
ALL: Final = READ | WRITE | CREATE | DELETE | ADMIN

Grant = tuple[str, int]  # (role, permissions)

ADMINS: Final = "admins"
MEMBERS: Final = "members"
OWNER: Final = "owner"
PUBLISHERS: Final = "publishers"
SUBSCRIBERS: Final = "subscribers"
PRODUCERS: Final = "producers"
WORKERS: Final = "workers"

_R, _W, _C, _D = READ, WRITE, CREATE, DELETE

# The secured ACL of each kind of node: who gets which permissions. Admins
# get every permission everywhere (listed once, below).
ACL_TABLE: Final[dict[NodeKind, tuple[Grant, ...]]] = {
    NodeKind.ABOVE_ROOT: ((MEMBERS, _R | _C),),
    NodeKind.ROOT: ((MEMBERS, _R | _C),),
    NodeKind.CLIENTS: ((MEMBERS, _R | _C),),
    NodeKind.CLIENT: ((OWNER, _R | _W), (MEMBERS, _R)),
    NodeKind.SUBSCRIBERS: ((MEMBERS, _R), (SUBSCRIBERS, _C)),
    NodeKind.TOPIC: ((MEMBERS, _R), (SUBSCRIBERS, _W | _C | _D)),
    NodeKind.SUBSCRIBER: ((OWNER, _R | _W), (MEMBERS, _R)),
    NodeKind.MESSAGES: ((MEMBERS, _R), (SUBSCRIBERS, _C | _D)),
    NodeKind.CLIENT_MESSAGES: ((OWNER, _R | _C | _D), (MEMBERS, _R)),
    # Publishers read a queue's record and write it when they move the queue
    # to a fresh segment, which they create; a segment a publisher creates
    # carries the queue's own ACL (read from the server), so its owner stays
    # the subscriber.
    NodeKind.QUEUE: ((OWNER, _R | _W | _C | _D), (PUBLISHERS, _R | _W | _C)),
    NodeKind.SEGMENT: ((OWNER, _R | _W | _C | _D), (PUBLISHERS, _R | _W | _C)),
    NodeKind.MESSAGE: ((SUBSCRIBERS, _R),),
    # each publisher counts into its own marker
    NodeKind.MARKER: ((OWNER, _R | _W), (SUBSCRIBERS, _R)),
    NodeKind.RECEIPTS: ((MEMBERS, _R | _C),),
    NodeKind.RECEIPT_FOLDER: ((OWNER, _R | _C | _D),),
    NodeKind.RECEIPT: ((OWNER, _R),),
    NodeKind.PURGING: ((MEMBERS, _R | _D),),
    NodeKind.PURGE_MARKER: ((MEMBERS, _R),),
    NodeKind.CLEANER: ((MEMBERS, _R | _C),),
    NodeKind.CANDIDATES: ((MEMBERS, _R),),
    NodeKind.CANDIDATE: ((MEMBERS, _R),),
    NodeKind.CLOCK: (),
    NodeKind.WORK_QUEUES: ((MEMBERS, _R), (PRODUCERS, _C), (WORKERS, _C)),
    # producers move a work queue to its next segment: they write the
    # queue's segment number and create the segment; workers delete the
    # segments that emptied
    NodeKind.WORK_QUEUE: ((MEMBERS, _R), (PRODUCERS, _W | _C), (WORKERS, _C)),
    NodeKind.ITEMS: ((MEMBERS, _R), (PRODUCERS, _C), (WORKERS, _R | _D)),
    NodeKind.ITEM_SEGMENT: ((MEMBERS, _R), (PRODUCERS, _C), (WORKERS, _R | _D)),
    NodeKind.ITEM: ((WORKERS, _R | _W),),
    NodeKind.RESERVED: ((MEMBERS, _R), (WORKERS, _R | _C | _D)),
    NodeKind.RESERVATION: ((WORKERS, _R),),
    NodeKind.DEAD: ((MEMBERS, _R), (WORKERS, _C), (PRODUCERS, _D)),
    NodeKind.DEAD_LETTER: ((WORKERS, _R), (PRODUCERS, _R)),
    NodeKind.RESULTS: ((MEMBERS, _R), (WORKERS, _C), (PRODUCERS, _R | _D)),
    NodeKind.RESULT: ((PRODUCERS, _R),),
    NodeKind.WORKERS: ((MEMBERS, _R), (WORKERS, _C | _D)),
    # a worker writes its own node to read the server's clock (its mtime)
    NodeKind.WORKER: ((OWNER, _R | _W), (MEMBERS, _R)),
    NodeKind.FOREIGN: ((MEMBERS, _R),),
}

# Bytes an ACL entry naming the creator ("auth") may take once the server
# has written the creator's identities in (x509 subjects can be long).
_AUTH_ENTRY_ESTIMATE: Final = 320


def _entry(ident: str, perms: int) -> ACL:
    scheme, _, name = ident.partition(":")
    return ACL(perms, Id(scheme, name))


def acl_bytes(acl: list[ACL], own_size: int = _AUTH_ENTRY_ESTIMATE) -> int:
    """Bytes ``acl`` adds to a create request as the server stores it (each
    ``auth`` entry counted as the creator's identities, ``own_size``)."""
    size = 4
    for entry in acl:
        if entry.id.scheme == "auth":
            size += own_size
        else:
            size += 12 + len(entry.id.scheme.encode()) + len(entry.id.id.encode())
    return size


class AclPolicy:
    """The ACL of every kind of node under one policy (built once per client)."""

    def __init__(
        self,
        choice: str | Roles,
        *,
        auth: tuple[Auth | Sasl, ...] = (),
        tls: Tls | None = None,
    ) -> None:
        self.open = choice == "open"
        self.roles = choice if isinstance(choice, Roles) else None
        self.describe = "open" if self.open else "secured" if self.roles is None else "roles"
        self._acls: dict[NodeKind, list[ACL]] = {}
        for kind, grants in ACL_TABLE.items():
            self._acls[kind] = list(OPEN_ACL_UNSAFE) if self.open else self._build(grants)
        own = 0
        for a in auth:
            ident = a.identity()
            own += 12 + (len(ident) if ident is not None else _AUTH_ENTRY_ESTIMATE)
        if tls is not None and tls.certfile is not None:
            own += _AUTH_ENTRY_ESTIMATE
        self._own_size = max(own, 16)
        self._sizes = {kind: acl_bytes(acl, self._own_size) for kind, acl in self._acls.items()}

    def _identities(self, role: str) -> tuple[str, ...]:
        roles = self.roles
        if roles is None or role == OWNER:
            return ("auth:",)  # the creator's identities
        if role == MEMBERS:
            return roles.members
        ids: tuple[str, ...] = getattr(roles, role)
        return ids

    def _build(self, grants: tuple[Grant, ...]) -> list[ACL]:
        perms: dict[str, int] = {}
        for ident in self._identities(ADMINS):
            perms[ident] = ALL
        for role, bits in grants:
            for ident in self._identities(role):
                perms[ident] = perms.get(ident, 0) | bits
        return [_entry(ident, bits) for ident, bits in perms.items()]

    @property
    def names_private(self) -> bool:
        """Whether everyone who may list a queue segment (publishers, the
        subscriber) may read its messages too, so that messages may go into
        node names: open, ``"secured"``, or roles whose publishers are all
        subscribers (or admins)."""
        if self.open:
            return True

        def readers(kind: NodeKind) -> set[tuple[str, str]]:
            return {(a.id.scheme, a.id.id) for a in self._acls[kind] if a.perms & READ}

        own = ("auth", "")  # the subscriber that made the segment
        return readers(NodeKind.SEGMENT) - {own} <= readers(NodeKind.MESSAGE)

    def acl(self, kind: NodeKind) -> list[ACL]:
        """The ACL a node of ``kind`` is created with."""
        return self._acls[kind]

    def size(self, kind: NodeKind) -> int:
        """Bytes the ACL of ``kind`` adds to each create (as stored)."""
        return self._sizes[kind]

    def for_paths(self, layout: Layout) -> Callable[[str], list[ACL]]:
        """The ACL of the node at a path of ``layout`` (for ``ensure_path``)."""
        return lambda path: self._acls[layout.kind_of(path)]


def perm_letters(perms: int) -> str:
    """ZooKeeper's letters for ``perms``, in its order (``cdrwa``)."""
    letters = ((CREATE, "c"), (DELETE, "d"), (READ, "r"), (WRITE, "w"), (ADMIN, "a"))
    return "".join(letter for bit, letter in letters if perms & bit)


def table_rows() -> list[str]:
    """The secured ACL of each kind of node as markdown table rows (the
    table of ``docs/wire-format.md``)."""
    rows = []
    for kind, grants in ACL_TABLE.items():
        cells = ", ".join(f"{role} `{perm_letters(bits)}`" for role, bits in grants)
        rows.append(f"| `{kind.value}` | {cells or '—'} |")
    return rows
