"""``Idempotency-Key``: a retried request answered with its first answer.

A request that carries ``Idempotency-Key: <key>`` is done once per key,
token and route: a repeat within ``ttl`` seconds gets the first answer
(with ``Idempotent-Replayed: true``) and does nothing again; a repeat
that arrives while the first is still running waits for it. The same key
with a different request (another body or headers) is a 422 problem. An
attempt that failed is forgotten, so a retry tries again; unless it may
have written (:func:`may_have_written`: a publish sent and not confirmed,
or written in part): the retry then gets that failure again, and writes
nothing twice.

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
    """Whether a failed attempt may have written something, by what it
    says: a publish sent and not confirmed (``PublishTimeout`` with
    ``sent``, a 504), or one written in part (``PartlyPublished``, a 502).
    Doing it again could write twice."""
    if isinstance(exc, errors.PublishTimeout):
        return exc.sent
    if isinstance(exc, errors.PartlyPublished):
        return True
    if isinstance(exc, Problem):
        sent = exc.error == "PublishTimeout" and exc.extra.get("sent") is True
        return sent or exc.error == "PartlyPublished"
    return False


def _bare(exc: Problem | errors.ZkPubSubError, *, replayed: bool = False) -> Problem:
    """The problem answering ``exc``, holding nothing of the attempt (no
    traceback, so none of its frames' data: the request's body); marked
    ``Idempotent-Replayed`` if ``replayed``."""
    first = exc if isinstance(exc, Problem) else problem_for(exc)
    headers = dict(first.headers or {})
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Problem(
        first.status,
        first.slug,
        first.title,
        first.detail,
        error=first.error,
        headers=headers,
        **first.extra,
    )


@dataclass
class _Entry:
    fingerprint: str
    # the attempt, while it runs and once it answered; ``None`` once it
    # failed in a way kept (``failure``)
    answer: asyncio.Future[Any] | None
    expires: float
    failure: Problem | None = None


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
            if entry.failure is not None:  # a kept failure: answered again, said replayed
                raise _bare(entry.failure, replayed=True)
            assert entry.answer is not None
            try:
                return await asyncio.shield(entry.answer), True
            except (Problem, errors.ZkPubSubError) as exc:
                if may_have_written(exc):  # the attempt waited for, kept: said replayed
                    raise _bare(exc, replayed=True) from None
                raise  # forgotten: the next retry runs again
        # The work runs as a task of its own: a caller that goes away does not
        # cancel it, and a retry meanwhile waits for its answer.
        task = asyncio.ensure_future(work())
        entries[full] = _Entry(fingerprint, task, now + self._ttl)

        def forget_failure(done: asyncio.Future[Any]) -> None:
            current = entries.get(full)
            if current is None or current.answer is not done:
                return
            failed = None if done.cancelled() else done.exception()
            if failed is None and not done.cancelled():
                return  # answered: kept as it is
            if isinstance(failed, (Problem, errors.ZkPubSubError)) and may_have_written(failed):
                # kept, as its answer alone (not the attempt and its data)
                current.failure, current.answer = _bare(failed), None
            else:
                del entries[full]

        task.add_done_callback(forget_failure)
        return await asyncio.shield(task), False
