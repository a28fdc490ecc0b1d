"""Liveness and readiness of a service that uses zkpubsub, as documented,
HTTP-friendly answers.

The semantics, which :func:`check` implements:

* ``ok``: the client is connected and registered.
* ``degraded``: ZooKeeper cannot be reached (``SUSPENDED``) or the session
  expired and the client is registering again (``LOST``). The process is
  fine and can still serve what it holds (cached reads, work in hand); the
  client recovers by itself. A ZooKeeper outage makes *every* instance
  degraded at once, so it must not take the fleet out of the load
  balancer: degraded is **live** and, by default, **ready**.
* ``dead``: the client is closed (or never connected), or, connected, it
  has failed for ``dead_after`` seconds (default a minute) to register on a
  new session (its id taken by another process, its rights withdrawn):
  it will not recover by itself. Only this should make an orchestrator
  restart the process.

=========  =======  =====================  ==================
status     live     ready                  HTTP (live/ready)
=========  =======  =====================  ==================
ok         yes      yes                    200 / 200
degraded   yes      yes (unless strict)    200 / 200 (503)
dead       no       no                     503 / 503
=========  =======  =====================  ==================

``ready_when_degraded=False`` (strict) suits an instance that cannot do
anything useful without ZooKeeper, e.g. one that only publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ._numbers import is_real
from .client import Client
from .state import ClientState

if TYPE_CHECKING:
    from .aio import AsyncClient

__all__ = ["DEAD", "DEAD_AFTER", "DEGRADED", "OK", "Health", "check"]

# Seconds a connected client may fail to register on a new session before
# it counts as dead.
DEAD_AFTER: Final = 60.0

OK: Final = "ok"
DEGRADED: Final = "degraded"
DEAD: Final = "dead"

_REASONS: Final = {
    ClientState.CONNECTED: "connected to ZooKeeper",
    ClientState.SUSPENDED: "ZooKeeper unreachable; the session may still be alive",
    ClientState.LOST: "the session expired; registering again",
    ClientState.CONNECTING: "not connected yet",
    ClientState.CLOSED: "the client is closed",
}


@dataclass(frozen=True, slots=True)
class Health:
    """One look at a client. ``live``: keep the process. ``ready``: send it
    traffic. ``liveness_code`` / ``readiness_code``: 200 or 503."""

    status: str
    state: ClientState
    live: bool
    ready: bool
    reason: str
    client_id: str

    @property
    def liveness_code(self) -> int:
        return 200 if self.live else 503

    @property
    def readiness_code(self) -> int:
        return 200 if self.ready else 503

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready body for a health endpoint."""
        return {
            "status": self.status,
            "state": self.state.value,
            "live": self.live,
            "ready": self.ready,
            "reason": self.reason,
            "client_id": self.client_id,
        }


def check(
    client: Client | AsyncClient,
    *,
    ready_when_degraded: bool = True,
    dead_after: float = DEAD_AFTER,
) -> Health:
    """The health of ``client`` now (no request to ZooKeeper: it never
    blocks, also during an outage). A client connected but failing to
    register on a new session for ``dead_after`` seconds is dead."""
    if not is_real(dead_after) or not 0 < dead_after < float("inf"):
        raise ValueError(f"dead_after must be a positive number of seconds, not {dead_after!r}")
    state = client.status
    reason = _REASONS[state]
    if state == ClientState.CONNECTED:
        status, live, ready = OK, True, True
    elif state in (ClientState.SUSPENDED, ClientState.LOST):
        status, live, ready = DEGRADED, True, ready_when_degraded
        sync = client if isinstance(client, Client) else client.sync
        failing = sync._session.registration_failing()
        if failing is not None and failing[0] >= dead_after:
            status, live, ready = DEAD, False, False
            reason = f"registering on a new session has failed for {failing[0]:.0f} s: {failing[1]}"
    else:
        status, live, ready = DEAD, False, False
    return Health(status, state, live, ready, reason, client.client_id)
