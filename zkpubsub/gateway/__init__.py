"""The HTTP gateway: the bus from any language, through ``zkpubsub gateway``.

Needs the ``gateway`` extra (``pip install 'zkpubsub[gateway]'``: FastAPI,
uvicorn and prometheus-client); this package imports without it, and its
functions name the extra when it is missing. :func:`create_app` makes the
ASGI application; :func:`serve` runs it with uvicorn, as the command line
does. ``docs/gateway.md`` describes the API and its guarantees.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from .settings import GatewaySettings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .auth import TokenBook

__all__ = [
    "GatewaySettings",
    "check_listener",
    "create_app",
    "load_tokens",
    "require_extra",
    "serve",
]

_EXTRA = ("fastapi", "uvicorn", "prometheus_client")


def require_extra() -> None:
    """``ImportError`` naming the extra unless the gateway's packages are installed."""
    missing = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"the zkpubsub gateway needs {', '.join(missing)}: pip install 'zkpubsub[gateway]'"
        )


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway as a FastAPI application (see :mod:`.app`)."""
    require_extra()
    from .app import create_app as make

    return make(settings)


def load_tokens(path: str) -> TokenBook:
    """Read a tokens file (see :mod:`.auth`)."""
    require_extra()
    from .auth import load_tokens as load

    return load(path)


def check_listener(settings: GatewaySettings, **options: Any) -> None:
    """``ValueError`` unless :func:`serve` may listen with these options
    (see :mod:`.server`)."""
    from .server import check_listener as check

    check(settings, **options)


def serve(settings: GatewaySettings, **options: Any) -> None:
    """Serve the gateway with uvicorn until SIGINT or SIGTERM (see :mod:`.server`)."""
    require_extra()
    from .server import serve as run

    run(settings, **options)
