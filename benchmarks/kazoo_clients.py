"""The kazoo clients of the baselines, floors and ceilings.

zkpubsub's connections run kazoo with zkpubsub's own callback handler
(:class:`zkpubsub.handler.FastThreadingHandler`: one ``select`` kept per set
of sockets, replies read ahead), not kazoo's stock one. Every plain kazoo
client of the benchmarks is made here with the same handler, so that a
baseline, floor or ceiling is costed through the same I/O as the library it
is compared with: the comparison measures the design, not the handler.
"""

from __future__ import annotations

from typing import Any

from kazoo.client import KazooClient

from zkpubsub.handler import FastThreadingHandler

from . import credentials


def new(hosts: str, *, timeout: float = 10.0, **kwargs: Any) -> KazooClient:
    """A kazoo client (not started) with zkpubsub's handler and the
    environment's digest credentials; ``kwargs`` go to ``KazooClient``."""
    return KazooClient(
        hosts=hosts,
        timeout=timeout,
        handler=FastThreadingHandler(),
        auth_data=credentials.kazoo_auth(),
        **kwargs,
    )
