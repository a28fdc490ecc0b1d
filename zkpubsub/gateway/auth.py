"""Bearer tokens: who may call the gateway, with which bus credentials, on what.

The tokens file (JSON; keep it readable by the gateway's user only)::

    {
      "credentials": {"billing": "/etc/zkpubsub/billing.toml"},
      "tokens": [
        {"name": "billing", "token_sha256": "9f86d0...", "credentials": "billing",
         "topics": ["orders.*"], "queues": ["invoices"], "subscriptions": ["billing-*"]},
        {"name": "ops", "token": "a long random string", "admin": true}
      ]
    }

* ``credentials`` names the bus credentials a token may use: each is a
  credentials file of the library (:func:`zkpubsub.security.load_credentials`).
  A token without ``credentials`` uses the gateway's own (its environment,
  as every ``zkpubsub`` command). The gateway opens one ZooKeeper session
  per set of credentials in use.
* a token is given as ``token`` (the secret itself) or ``token_sha256``
  (the hex SHA-256 of it, so the file need not hold the secret);
* ``topics``, ``queues`` and ``subscriptions`` are glob patterns
  (:mod:`fnmatch`, ``*`` and ``?``; case-sensitive) of the names the token
  may use: publishing to and subscribing to a topic, every operation of a
  work queue, and the names of its durable subscriptions. Nothing matches
  by default;
* ``admin: true`` may use every name and the operator views (the console).

Without a tokens file every request is allowed (an anonymous admin): the
command line then refuses to listen anywhere but on the loopback interface.
A missing or unknown token is a 401 problem with ``WWW-Authenticate:
Bearer``; a name outside the token's patterns a 403 problem. Tokens and
credentials never appear in responses, logs or the OpenAPI document.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from fastapi import Depends, Request

from .problems import Problem

__all__ = ["ANONYMOUS", "Admin", "Caller", "Principal", "TokenBook", "load_tokens"]

Kind = Literal["topic", "queue", "subscription"]

_TOKEN_KEYS: Final = frozenset(
    {"name", "token", "token_sha256", "credentials", "topics", "queues", "subscriptions", "admin"}
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a token's name, the credentials profile it
    uses (``None``: the gateway's own) and what it may touch."""

    name: str
    profile: str | None = None
    topics: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    subscriptions: tuple[str, ...] = ()
    admin: bool = False

    def may(self, kind: Kind, name: str) -> bool:
        if self.admin:
            return True
        patterns = {"topic": self.topics, "queue": self.queues, "subscription": self.subscriptions}
        return any(fnmatch.fnmatchcase(name, p) for p in patterns[kind])

    def require(self, kind: Kind, name: str) -> None:
        """403 problem unless this principal may use ``name``."""
        if not self.may(kind, name):
            raise Problem(
                403,
                "forbidden",
                "Forbidden",
                f"token {self.name!r} may not use {kind} {name!r}",
                error="Forbidden",
            )


ANONYMOUS: Final = Principal("anonymous", admin=True)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class TokenBook:
    """The tokens of a tokens file: ``credentials`` maps a profile name to
    its credentials file; ``principals`` maps a token's SHA-256 to whom it
    stands for."""

    principals: Mapping[str, Principal]
    credentials: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, token: str) -> Principal | None:
        digest = _digest(token)
        for known, principal in self.principals.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None


def _patterns(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"{where}: {key} must be a list of glob patterns")
    return tuple(value)


def load_tokens(path: str | os.PathLike[str]) -> TokenBook:
    """Read a tokens file (see the module doc); ``ValueError`` says what is
    wrong with it (never quoting a token)."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from None
    return parse_tokens(data, str(path))


def parse_tokens(data: object, where: str = "tokens") -> TokenBook:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object with 'tokens'")
    unknown = set(data) - {"tokens", "credentials"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    credentials = data.get("credentials", {})
    if not isinstance(credentials, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in credentials.items()
    ):
        raise ValueError(f"{where}: credentials maps names to credentials files")
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ValueError(f"{where}: 'tokens' must be a non-empty list")
    principals: dict[str, Principal] = {}
    for i, entry in enumerate(tokens):
        at = f"{where}: tokens[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{at} is not an object")
        extra = set(entry) - _TOKEN_KEYS
        if extra:
            raise ValueError(f"{at}: unknown keys {', '.join(sorted(extra))}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{at}: needs a name")
        if ("token" in entry) == ("token_sha256" in entry):
            raise ValueError(f"{at} ({name}): give one of token or token_sha256")
        if "token" in entry:
            secret = entry["token"]
            if not isinstance(secret, str) or len(secret) < 16:
                raise ValueError(f"{at} ({name}): a token must be a string of 16+ characters")
            digest = _digest(secret)
        else:
            digest = str(entry["token_sha256"]).lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{at} ({name}): token_sha256 must be 64 hex digits")
        if digest in principals:
            raise ValueError(f"{at} ({name}): the same token is listed twice")
        profile = entry.get("credentials")
        if profile is not None and not isinstance(profile, str):
            raise ValueError(f"{at} ({name}): credentials names a profile (a string)")
        if profile is not None and profile not in credentials:
            raise ValueError(f"{at} ({name}): credentials {profile!r} is not defined")
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            raise ValueError(f"{at} ({name}): admin must be true or false")
        principals[digest] = Principal(
            name,
            profile,
            _patterns(entry, "topics", at),
            _patterns(entry, "queues", at),
            _patterns(entry, "subscriptions", at),
            admin,
        )
    return TokenBook(principals, dict(credentials))


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        error="Unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="zkpubsub"'},
    )


def bearer(headers: Mapping[str, str], book: TokenBook) -> Principal:
    """The principal of a request's ``Authorization: Bearer`` header, or a
    401 problem."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if not value:
        raise _unauthorized("this gateway needs 'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("only 'Authorization: Bearer <token>' is accepted")
    principal = book.lookup(token.strip())
    if principal is None:
        raise _unauthorized("the token is not known to this gateway")
    return principal


def principal_of(request: Request) -> Principal:
    """The FastAPI dependency: who this request acts for."""
    book: TokenBook | None = request.app.state.gateway.settings.tokens
    if book is None:
        return ANONYMOUS
    principal = bearer(request.headers, book)
    request.state.principal = principal
    return principal


def admin_of(request: Request) -> Principal:
    """The FastAPI dependency of operator views: an admin token, else a 401
    or 403 problem."""
    principal = principal_of(request)
    if not principal.admin:
        raise Problem(
            403,
            "forbidden",
            "Forbidden",
            f"token {principal.name!r} is not an admin token",
            error="Forbidden",
        )
    return principal


# Route parameters: who calls (any known token), and an admin token.
Caller = Annotated[Principal, Depends(principal_of)]
Admin = Annotated[Principal, Depends(admin_of)]
