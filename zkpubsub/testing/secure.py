"""Secured test servers: authentication, a superuser, SASL users and TLS.

A :class:`ServerSecurity` handed to :class:`~zkpubsub.testing.ZooKeeperCluster`
makes its servers

* accept ``digest`` authentication and know an operators' superuser
  (``-Dzookeeper.DigestAuthenticationProvider.superDigest``);
* accept SASL DIGEST-MD5 logins of ``sasl_users`` (a JAAS file with
  ``DigestLoginModule``);
* with ``enforce_auth``, refuse every request of a session that has not
  authenticated with one of ``enforce_schemes`` (ZooKeeper 3.8's
  ``enforce.auth.enabled``);
* with ``tls``, also listen on a ``secureClientPort`` (the Netty connection
  factory) with a certificate signed by a CA made for the test.

:func:`make_tls_material` makes that CA, the servers' keystore and
truststore, and client certificates, with ``openssl`` and ``keytool``, in a
folder of the caller's.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "NETTY_JARS",
    "TEST_PASSWORDS",
    "TEST_SASL_USERS",
    "ServerSecurity",
    "TlsMaterial",
    "bus_roles",
    "digest_of",
    "make_tls_material",
    "netty_classpath",
    "user_auth",
]

# Debian's zookeeper.jar names netty-handler, -transport, -buffer and -common in
# its manifest but not these, without which the Netty factory cannot load.
NETTY_JARS: Final = (
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-unix-common.jar",
)
STORE_PASSWORD: Final = "zkpubsub-test"


def digest_of(user: str, password: str) -> str:
    """ZooKeeper's digest id of ``user:password``: ``user:base64(sha1(user:password))``."""
    raw = hashlib.sha1(f"{user}:{password}".encode()).digest()
    return f"{user}:{base64.b64encode(raw).decode()}"


def netty_classpath(classpath: str) -> str:
    """``classpath`` with the Netty jars Debian ships beside zookeeper.jar."""
    parts = classpath.split(os.pathsep)
    for jar in parts:
        folder = Path(jar).parent
        extra = [str(folder / name) for name in NETTY_JARS if (folder / name).exists()]
        if extra:
            return os.pathsep.join([*parts, *extra])
    return classpath


@dataclass(frozen=True)
class TlsMaterial:
    """Files made by :func:`make_tls_material` (PEM for clients, PKCS12 for servers)."""

    folder: Path
    ca_cert: Path
    keystore: Path
    truststore: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here: a client trusting only it must fail
    password: str = STORE_PASSWORD


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {result.stderr.decode(errors='replace')[-500:]}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _run(["openssl", "genrsa", "-out", str(key), "2048"], folder)
    _run(
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            str(key),
            "-sha256",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            # what a CA certificate must say under strict verification, the
            # default of Python 3.13's ssl.create_default_context()
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            str(cert),
        ],
        folder,
    )
    return key, cert


def _signed(folder: Path, name: str, cn: str, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run(["openssl", "genrsa", "-out", str(key), "2048"], folder)
    _run(
        ["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr)], folder
    )
    _run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca_cert),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            str(ext),
            "-out",
            str(cert),
        ],
        folder,
    )
    return key, cert


def make_tls_material(folder: str | os.PathLike[str]) -> TlsMaterial:
    """A CA, a server keystore and truststore (PKCS12), a client certificate
    and key (PEM), and an unrelated CA, all in ``folder``."""
    if shutil.which("openssl") is None or shutil.which("keytool") is None:
        raise RuntimeError("making test certificates needs openssl and keytool (a JDK)")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(out, "ca")
    _, other_ca = _ca(out, "other-ca")
    server_key, server_cert = _signed(out, "server", "zookeeper", ca_key, ca_cert)
    client_key, client_cert = _signed(out, "client", "zkpubsub-client", ca_key, ca_cert)
    keystore = out / "server.p12"
    _run(
        [
            "openssl",
            "pkcs12",
            "-export",
            "-in",
            str(server_cert),
            "-inkey",
            str(server_key),
            "-certfile",
            str(ca_cert),
            "-name",
            "server",
            "-out",
            str(keystore),
            "-passout",
            f"pass:{STORE_PASSWORD}",
        ],
        out,
    )
    truststore = out / "truststore.p12"
    _run(
        [
            "keytool",
            "-importcert",
            "-noprompt",
            "-alias",
            "ca",
            "-file",
            str(ca_cert),
            "-keystore",
            str(truststore),
            "-storetype",
            "PKCS12",
            "-storepass",
            STORE_PASSWORD,
        ],
        out,
    )
    return TlsMaterial(out, ca_cert, keystore, truststore, client_cert, client_key, other_ca)


@dataclass(frozen=True)
class ServerSecurity:
    """How a test server authenticates and encrypts (see the module doc).

    ``superuser`` is ``(user, password)`` of the operators' digest
    superuser, who passes every ACL. ``sasl_users`` maps SASL DIGEST-MD5
    user names to passwords. ``tls`` is the material of a secure client
    port (make it with :func:`make_tls_material`); ``client_auth`` is
    ZooKeeper's ``ssl.clientAuth`` (``need``, ``want`` or ``none``).
    """

    superuser: tuple[str, str] | None = ("super", "super-secret")
    sasl_users: dict[str, str] = field(default_factory=dict)
    enforce_auth: bool = False
    enforce_schemes: tuple[str, ...] = ("digest", "sasl")
    tls: TlsMaterial | None = None
    client_auth: str = "want"

    def java_opts(self, folder: Path) -> list[str]:
        opts: list[str] = []
        if self.superuser is not None:
            digest = digest_of(*self.superuser)
            opts.append(f"-Dzookeeper.DigestAuthenticationProvider.superDigest={digest}")
        if self.sasl_users:
            jaas = folder / "jaas.conf"
            users = "\n".join(f'    user_{u}="{p}"' for u, p in self.sasl_users.items())
            jaas.write_text(
                "Server {\n    org.apache.zookeeper.server.auth.DigestLoginModule required\n"
                f"{users};\n}};\n"
            )
            opts.append(f"-Djava.security.auth.login.config={jaas}")
        return opts

    def settings(self) -> dict[str, str]:
        cfg: dict[str, str] = {}
        if self.sasl_users:
            cfg["authProvider.1"] = "org.apache.zookeeper.server.auth.SASLAuthenticationProvider"
        if self.enforce_auth:
            cfg["enforce.auth.enabled"] = "true"
            cfg["enforce.auth.schemes"] = ",".join(self.enforce_schemes)
        if self.tls is not None:
            tls = self.tls
            cfg.update(
                {
                    "serverCnxnFactory": "org.apache.zookeeper.server.NettyServerCnxnFactory",
                    "ssl.keyStore.location": str(tls.keystore),
                    "ssl.keyStore.password": tls.password,
                    "ssl.keyStore.type": "PKCS12",
                    "ssl.trustStore.location": str(tls.truststore),
                    "ssl.trustStore.password": tls.password,
                    "ssl.trustStore.type": "PKCS12",
                    "ssl.clientAuth": self.client_auth,
                    "ssl.hostnameVerification": "false",
                }
            )
        return cfg


# The users of the secured test buses: digest users for the roles, and one
# SASL user (DIGEST-MD5, known to the servers' JAAS file).
TEST_PASSWORDS: Final = {
    "admin": "admin-pw",
    "publisher": "publisher-pw",
    "subscriber": "subscriber-pw",
    "subscriber2": "subscriber2-pw",
    "producer": "producer-pw",
    "worker": "worker-pw",
    "app": "app-pw",
}
TEST_SASL_USERS: Final = {"bob": "bob-pw"}


def user_auth(user: str) -> tuple[tuple[str, str], ...]:
    """``auth=`` for one of the test users."""
    return (("digest", f"{user}:{TEST_PASSWORDS[user]}"),)


def bus_roles() -> Any:
    """The :class:`~zkpubsub.Roles` of the secured test buses: one digest
    user per role, two subscribers, and the SASL user ``bob`` as a
    publisher and subscriber."""
    from ..security import Roles, digest_identity, sasl_identity

    def ident(user: str) -> str:
        return digest_identity(user, TEST_PASSWORDS[user])

    bob = sasl_identity("bob")
    return Roles(
        admins=(ident("admin"),),
        publishers=(ident("publisher"), bob),
        subscribers=(ident("subscriber"), ident("subscriber2"), bob),
        producers=(ident("producer"),),
        workers=(ident("worker"),),
    )
