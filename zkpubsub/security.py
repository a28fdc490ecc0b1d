"""Credentials, TLS and the roles of a secured bus: zkpubsub's own types.

A client authenticates with ``auth`` (ZooKeeper's ``digest`` scheme or
SASL), may talk TLS (``tls``), and writes every node with the ACL its
policy gives that kind of node (``acl``):

* ``"open"``: every node is ``world:anyone`` with every permission (local
  development; the default when no credentials are given);
* ``"secured"`` (the default with credentials): every node is reachable
  only by the identity that created it; every member of the bus uses the
  same credentials (and operators the ZooKeeper superuser);
* :class:`Roles`: named identities for each role (admins who run the
  cleaner, publishers, subscribers, producers and workers of work queues),
  the same configuration for every member of the bus.

``docs/security.md`` has the threat model and ``docs/wire-format.md`` the
exact ACL of each node. :func:`from_environment` reads all three from the
environment or a credentials file (for the command line and services:
never from arguments that ``ps`` shows).
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "CREDENTIALS_ENV",
    "Auth",
    "Roles",
    "Sasl",
    "Security",
    "Tls",
    "digest_identity",
    "from_environment",
    "load_credentials",
    "normalize_auth",
    "sasl_identity",
    "x509_identity",
]

CREDENTIALS_ENV: Final = "ZKPUBSUB_CREDENTIALS"
DIGEST_ENV: Final = "ZKPUBSUB_DIGEST"
ACL_ENV: Final = "ZKPUBSUB_ACL"
TLS_CA_ENV: Final = "ZKPUBSUB_TLS_CA"
TLS_CERT_ENV: Final = "ZKPUBSUB_TLS_CERT"
TLS_KEY_ENV: Final = "ZKPUBSUB_TLS_KEY"

AclChoice = Literal["open", "secured"]


def digest_identity(user: str, password: str) -> str:
    """The ACL identity of a ``digest`` user: ``digest:user:base64(sha1(user:password))``."""
    if ":" in user:
        raise ValueError("a digest user name must not contain ':'")
    raw = hashlib.sha1(f"{user}:{password}".encode()).digest()
    return f"digest:{user}:{base64.b64encode(raw).decode()}"


def sasl_identity(name: str) -> str:
    """The ACL identity of a SASL user (``sasl:name``)."""
    return f"sasl:{name}"


def x509_identity(distinguished_name: str) -> str:
    """The ACL identity of a TLS client certificate (``x509:CN=...``), as
    the server prints the certificate's subject."""
    return f"x509:{distinguished_name}"


@dataclass(frozen=True, slots=True)
class Auth:
    """One ``(scheme, credential)`` pair sent when connecting, as
    ZooKeeper's ``addauth`` (``("digest", "user:password")``). The
    credential is never shown by ``repr``."""

    scheme: str
    credential: str = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, str) or not self.scheme:
            raise ValueError("an auth scheme must be a non-empty str")
        if not isinstance(self.credential, str):
            raise TypeError("an auth credential must be a str")
        if self.scheme == "digest" and ":" not in self.credential:
            raise ValueError("a digest credential is 'user:password'")

    def identity(self) -> str | None:
        """The ACL identity this credential gives, when it can be known here."""
        if self.scheme == "digest":
            user, password = self.credential.split(":", 1)
            return digest_identity(user, password)
        return None


@dataclass(frozen=True, slots=True)
class Sasl:
    """SASL authentication when connecting. ``DIGEST-MD5`` needs
    ``username`` and ``password`` (a server JAAS ``DigestLoginModule``
    user); ``GSSAPI`` (Kerberos) uses the ticket cache of the process
    (``kinit``) and ``principal``. Needs the ``pure-sasl`` package."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    mechanism: str = "DIGEST-MD5"
    service: str = "zookeeper"
    principal: str | None = None

    def __post_init__(self) -> None:
        if self.mechanism == "DIGEST-MD5" and (not self.username or self.password is None):
            raise ValueError("SASL DIGEST-MD5 needs a username and a password")

    def identity(self) -> str | None:
        return sasl_identity(self.username) if self.username else None


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS to ZooKeeper's ``secureClientPort``. ``ca`` is a PEM file of the
    certificate authorities to trust, and the only ones (``None``: the
    system's); ``certfile`` and ``keyfile`` a client certificate (the server
    then also knows the client as ``x509:<subject>``). Certificates are
    verified unless ``verify=False``, and the server's certificate must name
    the host it is reached by (as written in ``hosts``) unless
    ``check_hostname=False`` (``None``, the default: as ``verify``)."""

    ca: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = field(default=None, repr=False)
    verify: bool = True
    check_hostname: bool | None = None

    def __post_init__(self) -> None:
        if self.check_hostname is None:
            object.__setattr__(self, "check_hostname", self.verify)
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("a TLS client certificate needs both certfile and keyfile")
        if self.check_hostname and not self.verify:
            raise ValueError("check_hostname needs verify=True (pass check_hostname=False too)")
        for name in ("ca", "certfile", "keyfile"):
            value = getattr(self, name)
            if value is not None and not os.path.isfile(value):
                raise ValueError(f"TLS {name} {value!r} is not a readable file")

    def _options(self) -> dict[str, Any]:
        """These settings as :func:`client_context`'s keyword arguments,
        which are also kazoo's names for them."""
        return {
            "ca": self.ca,
            "certfile": self.certfile,
            "keyfile": self.keyfile,
            "keyfile_password": self.keyfile_password,
            "verify_certs": self.verify,
            "check_hostname": bool(self.check_hostname),
        }

    def context(self) -> ssl.SSLContext:
        """The client's TLS context for these settings: ``ssl.SSLError`` or
        ``OSError`` if a file cannot be loaded."""
        return client_context(**self._options())


def client_context(
    *,
    ca: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    keyfile_password: str | None = None,
    verify_certs: bool = True,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client's TLS context (from :meth:`Tls._options`): it trusts the
    authorities of ``ca`` alone (the system's without one). ``ssl.SSLError``
    or ``OSError`` (a file missing: one a connection may find again later)
    if a file cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED if verify_certs else ssl.CERT_NONE
    if ca:
        context.load_verify_locations(ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certfile and keyfile:
        context.load_cert_chain(certfile, keyfile, password=keyfile_password)
    return context


def _identities(value: object, role: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Iterable):
        raise TypeError(f"{role} must be identities such as 'digest:user:hash'")
    out: list[str] = []
    for ident in value:
        if not isinstance(ident, str) or ":" not in ident.strip(":"):
            raise ValueError(f"{role}: {ident!r} is not 'scheme:id' (e.g. 'sasl:billing')")
        scheme = ident.split(":", 1)[0]
        if scheme in ("world", "auth", "ip"):
            raise ValueError(f"{role}: scheme {scheme!r} names no authenticated identity")
        out.append(ident)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class Roles:
    """Who may do what on a secured bus: ACL identities (``"scheme:id"``,
    see :func:`digest_identity`) per role. Every member of the bus must
    configure the same roles.

    * ``admins`` run the cleaner and administer the bus: every right on
      every node (they alone may join the cleaner election, read and
      delete any queue);
    * ``publishers`` may write into every subscriber's queue;
    * ``subscribers`` may register subscriptions and read what is
      published to them (each reads and deletes only its own queues);
    * ``producers`` may put into work queues, read results and replay dead
      letters;
    * ``workers`` may reserve, ack, release and bury work items.

    Every identity named here is a member: it may register a client and
    read the bus's registry (clients, subscriber lists, the election).
    """

    admins: tuple[str, ...] = ()
    publishers: tuple[str, ...] = ()
    subscribers: tuple[str, ...] = ()
    producers: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _identities(getattr(self, f.name), f.name))
        if not self.admins:
            raise ValueError("Roles needs at least one admin identity (the cleaner's)")

    @property
    def members(self) -> tuple[str, ...]:
        """Every identity of some role."""
        every = (*self.admins, *self.publishers, *self.subscribers, *self.producers, *self.workers)
        return tuple(dict.fromkeys(every))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Roles:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if not isinstance(v, str) else (v,) for k, v in data.items()})


AuthEntry = Auth | Sasl | tuple[str, str]


def normalize_auth(auth: Sequence[AuthEntry] | AuthEntry | None) -> tuple[Auth | Sasl, ...]:
    """``auth`` as given to ``Client`` (pairs, :class:`Auth`, :class:`Sasl`),
    as a tuple of :class:`Auth` and at most one :class:`Sasl`."""
    if auth is None:
        return ()
    if isinstance(auth, (Auth, Sasl)) or (
        isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(x, str) for x in auth)
    ):
        auth = [auth]  # type: ignore[list-item]
    out: list[Auth | Sasl] = []
    for entry in auth:
        if isinstance(entry, (Auth, Sasl)):
            out.append(entry)
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:  # a list: read from JSON
            scheme, credential = entry
            if scheme == "sasl":
                user, _, password = str(credential).partition(":")
                out.append(Sasl(user, password))
            else:
                out.append(Auth(scheme, credential))
        else:
            raise TypeError(  # not the entry itself: it may hold a password
                "auth entries are (scheme, credential) pairs, Auth or Sasl, not a "
                + (
                    f"{len(entry)}-item {type(entry).__name__}"
                    if isinstance(entry, (tuple, list))
                    else type(entry).__name__
                )
            )
    if sum(isinstance(e, Sasl) for e in out) > 1:
        raise ValueError("at most one SASL login per client")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Security:
    """What :func:`from_environment` found: pass ``**sec.options()`` to ``Client``."""

    auth: tuple[Auth | Sasl, ...] = ()
    acl: AclChoice | Roles | None = None
    tls: Tls | None = None

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.auth:
            out["auth"] = self.auth
        if self.acl is not None:
            out["acl"] = self.acl
        if self.tls is not None:
            out["tls"] = self.tls
        return out


def load_credentials(path: str | os.PathLike[str]) -> Security:
    """Read a credentials file (TOML; keep it readable by its owner only)::

    acl = "secured"                      # or "open", or a [roles] table
    [auth]
    digest = "user:password"             # ZooKeeper's digest scheme
    sasl_username = "bob"                # SASL DIGEST-MD5
    sasl_password = "..."
    sasl_mechanism = "DIGEST-MD5"        # or "GSSAPI" (kinit first)
    [tls]
    ca = "/etc/zkpubsub/ca.pem"
    certfile = "/etc/zkpubsub/client.pem"
    keyfile = "/etc/zkpubsub/client.key"
    [roles]
    admins = ["digest:ops:..."]
    publishers = ["sasl:billing"]
    subscribers = ["sasl:billing", "sasl:search"]
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the same parser, from PyPI (a dependency on Python 3.10)
        import tomli as tomllib
    with open(path, "rb") as f:
        data = tomllib.load(f)
    unknown = set(data) - {"acl", "auth", "tls", "roles"}
    if unknown:
        raise ValueError(f"{path}: unknown sections or keys {', '.join(sorted(unknown))}")
    auth: list[Auth | Sasl] = []
    section = dict(data.get("auth", {}))
    digest = section.pop("digest", None)
    if digest is not None:
        auth.append(Auth("digest", str(digest)))
    user = section.pop("sasl_username", None)
    mechanism = section.pop("sasl_mechanism", None)
    password = section.pop("sasl_password", None)
    principal = section.pop("sasl_principal", None)
    if user is not None or mechanism is not None:
        auth.append(Sasl(user, password, mechanism=mechanism or "DIGEST-MD5", principal=principal))
    if section:
        raise ValueError(f"{path}: unknown [auth] keys {', '.join(sorted(section))}")
    tls = None
    if "tls" in data:
        unknown = set(data["tls"]) - {f.name for f in fields(Tls)}
        if unknown:
            raise ValueError(f"{path}: unknown [tls] keys {', '.join(sorted(unknown))}")
        tls = Tls(**data["tls"])
    acl: AclChoice | Roles | None = None
    if "roles" in data:
        acl = Roles.from_mapping(data["roles"])
    elif "acl" in data:
        if data["acl"] not in ("open", "secured"):
            raise ValueError(f"{path}: acl is 'open' or 'secured' (or give a [roles] table)")
        acl = data["acl"]
    return Security(tuple(auth), acl, tls)


def from_environment(environ: Mapping[str, str] | None = None) -> Security:
    """Credentials from the environment: ``$ZKPUBSUB_CREDENTIALS`` names a
    credentials file (:func:`load_credentials`); ``$ZKPUBSUB_DIGEST``
    (``user:password``), ``$ZKPUBSUB_ACL`` (``open``/``secured``) and
    ``$ZKPUBSUB_TLS_CA`` / ``_CERT`` / ``_KEY`` add to or override it."""
    env = os.environ if environ is None else environ
    sec = Security()
    path = env.get(CREDENTIALS_ENV)
    if path:
        if not Path(path).is_file():
            raise ValueError(f"${CREDENTIALS_ENV} names {path!r}, which is not a file")
        sec = load_credentials(path)
    auth, acl, tls = list(sec.auth), sec.acl, sec.tls
    digest = env.get(DIGEST_ENV)
    if digest:
        auth = [a for a in auth if not (isinstance(a, Auth) and a.scheme == "digest")]
        auth.append(Auth("digest", digest))
    choice = env.get(ACL_ENV)
    if choice:
        if choice not in ("open", "secured"):
            raise ValueError(f"${ACL_ENV} is 'open' or 'secured', not {choice!r}")
        acl = choice  # type: ignore[assignment]
    ca, cert, key = env.get(TLS_CA_ENV), env.get(TLS_CERT_ENV), env.get(TLS_KEY_ENV)
    if ca or cert or key:
        tls = tls or Tls()
        tls = replace(  # the file's other settings stay
            tls, ca=ca or tls.ca, certfile=cert or tls.certfile, keyfile=key or tls.keyfile
        )
    return Security(tuple(auth), acl, tls)
