"""``Idempotency-Key``: a retried request answered with its first answer.

A request that carries ``Idempotency-Key: <key>`` is done once per key,
token and route: a repeat within ``ttl`` seconds gets the first answer
(with ``Idempotent-Replayed: true``) and does nothing again; a repeat
that arrives while the first is still running waits for it. The same key
with a different request (another body or headers) is a 422 problem. An
attempt that failed is forgotten, so a retry tries again; unless it may
have written (:func:`may_have_written`: its outcome unknown, a 504, or
written in part, a 502 ``PartlyPublished``): the retry then gets that
failure again, and writes nothing twice.

Kept in the memory of one gateway process, for ``ttl`` seconds (default an
hour) and at most ``max_keys`` keys per token (its oldest first out: a
busy token does not push out another's keys): a restarted
gateway, or another gateway behind the same load balancer, does not know
the key and does the request again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from .. import errors
from .problems import Problem, problem_for

__all__ = ["IdempotencyStore", "may_have_written"]

MAX_KEY_LENGTH: Final = 255


def may_have_written(exc: BaseException) -> bool:
    """Whether a failed attempt may have written something: its outcome is
    unknown (a 504: a publish sent and not confirmed, a put not confirmed)
    or it wrote in part (a 502 ``PartlyPublished``). Doing it again could
    write twice."""
    if isinstance(exc, errors.ZkPubSubError):
        exc = problem_for(exc)
    if not isinstance(exc, Problem):
        return False  # a fault of the gateway, before anything was sent
    return exc.status == 504 or exc.error == "PartlyPublished"


def _replayed(exc: Problem | errors.ZkPubSubError) -> Problem:
    """The problem answering ``exc`` again, marked ``Idempotent-Replayed``."""
    first = exc if isinstance(exc, Problem) else problem_for(exc)
    return Problem(
        first.status,
        first.slug,
        first.title,
        first.detail,
        error=first.error,
        headers={**(first.headers or {}), "Idempotent-Replayed": "true"},
        **first.extra,
    )


@dataclass
class _Entry:
    fingerprint: str
    answer: asyncio.Future[Any]
    expires: float


class IdempotencyStore:
    """First answers by key, in memory (see the module doc)."""

    def __init__(self, ttl: float, max_keys: int) -> None:
        self._ttl = ttl
        self._max = max_keys
        # by token: its keys, oldest first (one ttl for all: also first to expire)
        self._owners: dict[str, OrderedDict[tuple[str, ...], _Entry]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._owners.values())

    def _expire(self, now: float) -> None:
        for owner in list(self._owners):
            entries = self._owners[owner]
            while entries:
                key, entry = next(iter(entries.items()))
                if entry.expires > now and len(entries) < self._max:
                    break
                del entries[key]
            if not entries:
                del self._owners[owner]

    async def run(
        self,
        scope: tuple[str, ...],
        key: str | None,
        request: bytes,
        work: Callable[[], Awaitable[Any]],
    ) -> tuple[Any, bool]:
        """``(answer, replayed)``: ``work()``'s answer, or the first answer
        of ``key`` in ``scope`` (the route, the token's name, then what the
        route names; the token's keys are counted together)."""
        if key is None:
            return await work(), False
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise Problem(
                400,
                "bad-idempotency-key",
                "Bad Idempotency-Key",
                f"an Idempotency-Key is 1 to {MAX_KEY_LENGTH} printable characters",
            )
        now = time.monotonic()
        self._expire(now)  # and makes room for one key more
        fingerprint = hashlib.sha256(request).hexdigest()
        full = (*scope, key)
        entries = self._owners.setdefault(scope[1], OrderedDict())
        entry = entries.get(full)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise Problem(
                    422,
                    "idempotency-key-reused",
                    "Idempotency-Key reused",
                    "this Idempotency-Key was used for a different request",
                )
            try:
                return await asyncio.shield(entry.answer), True
            except (Problem, errors.ZkPubSubError) as exc:  # a kept failure: said replayed
                raise _replayed(exc) from exc
        # The work runs as a task of its own: a caller that goes away does not
        # cancel it, and a retry meanwhile waits for its answer.
        task = asyncio.ensure_future(work())
        entries[full] = _Entry(fingerprint, task, now + self._ttl)

        def forget_failure(done: asyncio.Future[Any]) -> None:
            failed = None if done.cancelled() else done.exception()
            if done.cancelled() or (failed is not None and not may_have_written(failed)):
                current = entries.get(full)
                if current is not None and current.answer is done:
                    del entries[full]

        task.add_done_callback(forget_failure)
        return await asyncio.shield(task), False
