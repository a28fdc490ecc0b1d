"""Credentials of the benchmarks' clients, from the environment.

The benchmarks start their own ZooKeeper, which needs none. Pointed at a
secured ensemble, every client (zkpubsub's and the kazoo baselines') takes
``ZKPUBSUB_CREDENTIALS`` / ``ZKPUBSUB_DIGEST`` / ``ZKPUBSUB_TLS_*`` from the
environment, never from the command line (see ``docs/security.md``).
"""

from __future__ import annotations

from typing import Any

from zkpubsub.security import Auth, from_environment


def security() -> dict[str, Any]:
    """``Client`` keyword arguments: ``auth``, ``acl``, ``tls`` when set."""
    return from_environment().options()


def kazoo_auth() -> list[tuple[str, str]]:
    """kazoo's ``auth_data`` for the baselines (digest credentials only)."""
    return [(a.scheme, a.credential) for a in from_environment().auth if isinstance(a, Auth)]
