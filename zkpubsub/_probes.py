"""What a client asks a server on a socket of its own, beside its session:
whether the server takes its TLS settings (kazoo would retry a refused
handshake forever, quietly) and which version it runs (a server older than
3.5 drops the connection on a request it does not know, so features are
asked for only where the version has them)."""

from __future__ import annotations

import re
import socket
import ssl

from .errors import TlsError
from .security import Tls

__all__ = ["parse_srvr_version", "probe_tls", "server_version"]


_SRVR_VERSION = re.compile(r"Zookeeper version: (\d+)\.(\d+)\.(\d+)")


def parse_srvr_version(answer: str) -> tuple[int, int, int] | None:
    """The server version in an answer to the ``srvr`` command, if it has one."""
    match = _SRVR_VERSION.search(answer)
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


def server_version(host: str, port: int, timeout: float) -> tuple[int, int, int] | None:
    """Ask a server its version with ``srvr`` (the one four-letter command
    every version answers by default); ``None`` when it does not say (a
    secure-only port, the command not allowed, no answer in ``timeout``)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"srvr")
            chunks = []
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return None
    return parse_srvr_version(b"".join(chunks).decode("utf-8", "replace"))


def probe_tls(hosts: list[tuple[str, int]], tls: Tls, timeout: float) -> None:
    """Shake hands with each server before kazoo does (kazoo would retry a
    refused handshake forever, quietly). Raises :class:`TlsError` when every
    server that answered refused TLS; returns once one accepts, or when none
    answered at all (kazoo's own waiting then says so)."""
    try:
        context = tls.context()  # what the session's connections use
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"TLS settings unusable: {exc}") from exc
    errors: dict[str, str] = {}
    answered = False
    for host, port in hosts:
        entry = f"{host}:{port}"
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            errors[entry] = f"unreachable ({exc})"
            continue
        answered = True
        try:
            with context.wrap_socket(raw, server_hostname=host) as conn:
                conn.settimeout(timeout)
                return  # a TLS session: let kazoo go on
        except ssl.SSLCertVerificationError as exc:
            errors[entry] = f"server certificate not trusted ({exc.verify_message})"
        except (ssl.SSLError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            errors[entry] = f"TLS handshake failed ({reason}; is this a secure client port?)"
        finally:
            raw.close()
    if answered:
        detail = "; ".join(f"{h}: {e}" for h, e in errors.items())
        raise TlsError(f"no TLS session with any ZooKeeper server: {detail}", errors=errors)
