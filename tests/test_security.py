"""A secured bus on real, secured ZooKeeper servers: credentials, ACLs on
every node, roles, TLS, and configuration that cannot work failing fast."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    NoAuthError,
    NoNodeError,
    SessionClosedRequireSaslError,
)
from kazoo.security import OPEN_ACL_UNSAFE

from zkpubsub import (
    AuthenticationFailed,
    Client,
    ClientState,
    Gap,
    NotAuthorized,
    Observer,
    Roles,
    Sasl,
    Tls,
    TlsError,
    digest_identity,
)
from zkpubsub._acl import AclPolicy
from zkpubsub.backlog import QueueRecord
from zkpubsub.config import ClientConfig
from zkpubsub.handler import FastThreadingHandler
from zkpubsub.layout import Layout, NodeKind, carries_data, new_guid
from zkpubsub.security import Auth, from_environment, load_credentials
from zkpubsub.testing import ZooKeeperCluster, expire_session
from zkpubsub.testing.fixtures import backend_name
from zkpubsub.testing.proxy import TcpProxy
from zkpubsub.testing.secure import (
    TEST_PASSWORDS,
    TEST_SASL_USERS,
    ServerSecurity,
    TlsMaterial,
    bus_roles,
    user_auth,
)

from .helpers import wait_until

SUPER = ("digest", "super:super-secret")


def as_role(make: Callable[..., Client], user: str, **kwargs: Any) -> Client:
    return make(auth=user_auth(user), acl=bus_roles(), **kwargs)


@pytest.fixture
def raw(secure_zookeeper: ZooKeeperCluster) -> Iterator[Callable[..., KazooClient]]:
    """Plain kazoo clients with the given credentials (or none)."""
    made: list[KazooClient] = []

    def make(*auth: tuple[str, str], hosts: str | None = None) -> KazooClient:
        zk = KazooClient(hosts=hosts or secure_zookeeper.hosts, timeout=10.0, auth_data=list(auth))
        zk.start(timeout=15)
        made.append(zk)
        return zk

    yield make
    for zk in made:
        zk.stop()
        zk.close()


def walk(zk: KazooClient, path: str) -> list[str]:
    """Every node at and below ``path``; nodes removed meanwhile (a handled
    message, a receipt) are left out."""
    try:
        children = zk.get_children(path)
    except NoNodeError:
        return []
    out = [path]
    for child in sorted(children):
        out.extend(walk(zk, f"{path}/{child}"))
    return out


# -- the secured bus works -----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_a_bus_with_one_identity_publishes_subscribes_and_runs_its_work_queue(
    make_secure_client, secure_zookeeper, tls_material, transport
):
    options: dict[str, Any] = {"auth": user_auth("app")}
    if transport == "tls":
        options.update(hosts=secure_zookeeper.secure_hosts, tls=tls_of(tls_material))
    pub = make_secure_client(**options)
    sub = make_secure_client(client_id="durable-one", **options)
    got: list[Any] = []
    sub.subscribe("t", got.append)
    sub.subscribe("d", durable=True).close()
    assert pub.publish("t", "hello").subscribers == 1
    assert pub.publish("d", "kept").subscribers == 1
    wait_until(lambda: len(got) == 1)
    assert got[0].payload == "hello"
    back = sub.subscribe("d")
    msg = back.get(timeout=10)
    assert msg is not None and msg.payload == "kept"

    q = pub.queue("jobs")
    ticket = q.put({"n": 1}, want_result=True)
    item = sub.queue("jobs").reserve(timeout=10)
    assert item is not None
    item.ack(result="done")
    assert ticket.wait(timeout=10) == "done"
    assert pub.config.acl_policy == "secured"

    leaver = make_secure_client(client_id="leaver", **options)
    leaver.subscribe("t", durable=True).close()
    leaver.close()
    cleaner = pub.start_cleaner(grace=4.0, interval=0.2)
    assert cleaner.wait_leader(10)
    wait_until(lambda: cleaner.stats().clients_removed >= 1, timeout=20)


def test_every_node_of_a_secured_bus_carries_the_policys_acl_and_none_is_open(
    make_secure_client, raw
):
    admin = as_role(make_secure_client, "admin")
    pub = as_role(make_secure_client, "publisher")
    sub = as_role(make_secure_client, "subscriber")
    prod = as_role(make_secure_client, "producer")
    work = as_role(make_secure_client, "worker")
    sub.subscribe("t", lambda m: None)
    pub.publish("t", "x")
    prod.queue("jobs").put(1, want_result=True)
    item = work.queue("jobs").reserve(timeout=10)
    assert item is not None
    item.ack(result="r")
    admin.start_cleaner(grace=60, interval=0.2).wait_leader(10)
    su = raw(SUPER)
    layout = Layout(admin.config.root)
    policy = admin._ctx.acl
    kinds = set()
    for path in walk(su, admin.root):
        try:
            acl, _ = su.get_acls(path)
        except NoNodeError:
            continue  # removed since the walk saw it
        kind = layout.kind_of(path)
        kinds.add(kind)
        assert all(entry.id.scheme != "world" for entry in acl), path
        expected = {(e.id.scheme, e.id.id): e.perms for e in policy.acl(kind)}
        if not any(scheme == "auth" for scheme, _ in expected):
            assert {(e.id.scheme, e.id.id): e.perms for e in acl} == expected, path
    assert {NodeKind.QUEUE, NodeKind.CLIENT, NodeKind.SUBSCRIBER, NodeKind.CANDIDATE} <= kinds
    assert {NodeKind.RESULT, NodeKind.WORKERS, NodeKind.RECEIPT_FOLDER} <= kinds


def test_roles_each_do_their_part_and_the_admin_cleans_up_after_a_gone_client(
    make_secure_client, raw
):
    admin = as_role(make_secure_client, "admin")
    pub = as_role(make_secure_client, "publisher")
    sub = as_role(make_secure_client, "subscriber", client_id="leaver")
    sub.subscribe("t", durable=True).close()
    pub.publish("t", "a")
    sub.close()
    cleaner = admin.start_cleaner(grace=4.0, interval=0.2)
    wait_until(lambda: cleaner.stats().clients_removed >= 1, timeout=20)
    su = raw(SUPER)
    assert su.exists(f"{admin.root}/messages/leaver") is None
    assert not su.get_children(f"{admin.root}/subscribers/t")
    # the notice of the purge, and the subscriber back: told, and it removes it
    wait_until(lambda: su.exists(f"{admin.root}/purging/leaver"), timeout=20)
    gaps: list[Gap] = []
    as_role(make_secure_client, "subscriber", client_id="leaver", on_gap=gaps.append)
    wait_until(lambda: gaps, timeout=20)
    assert gaps[0].topics == frozenset({"t"}) and gaps[0].reason == "backlog purged"
    assert su.exists(f"{admin.root}/purging/leaver") is None


def test_a_secured_client_registers_again_after_its_session_expires(make_secure_client):
    sub = as_role(make_secure_client, "subscriber")
    pub = as_role(make_secure_client, "publisher")
    gaps: list[Gap] = []
    sub.add_gap_listener(gaps.append)
    s = sub.subscribe("t")
    expire_session(sub)
    assert sub.status == ClientState.CONNECTED
    wait_until(lambda: gaps)
    assert pub.publish("t", "after").subscribers == 1
    msg = s.get(timeout=10)
    assert msg is not None and msg.payload == "after"


def test_a_sasl_login_is_an_identity_the_roles_can_name(make_secure_client):
    bob = make_secure_client(auth=[Sasl("bob", TEST_SASL_USERS["bob"])], acl=bus_roles())
    pub = as_role(make_secure_client, "publisher")
    s = bob.subscribe("t")
    assert pub.publish("t", 1).subscribers == 1
    msg = s.get(timeout=10)
    assert msg is not None and msg.payload == 1
    assert bob.publish("t", 2).subscribers == 1


# -- what outsiders and other members cannot do --------------------------------------------


def _populated_bus(make_secure_client: Callable[..., Client]) -> Client:
    """A bus with a node of (nearly) every kind: queues with a backlog,
    durable and plain registrations, a fresh receipt, the election, and a
    work queue with items, a reservation, a dead letter, a result and
    workers."""
    admin = as_role(make_secure_client, "admin")
    pub = as_role(make_secure_client, "publisher")
    sub = as_role(make_secure_client, "subscriber", client_id="reader")
    prod = as_role(make_secure_client, "producer")
    work = as_role(make_secure_client, "worker")
    sub.subscribe("t", durable=True).close()  # registered, nobody reads: a backlog
    sub.subscribe("kept", lambda m: None)
    sub.subscribe("full", durable=True, max_backlog=1).close()
    for n in range(3):  # the queue fills: an overflow marker, made then counted on
        pub.publish("full", n)
    pub.publish("t", "secret")
    jobs = prod.queue("jobs")
    jobs.put(1)
    jobs.put(2)
    jobs.put(3, want_result=True, priority=0)
    wq = work.queue("jobs", max_attempts=1)
    first = wq.reserve(timeout=10)
    assert first is not None
    first.ack(result="r")  # the result of the item that wants one
    doomed = wq.reserve(timeout=10)
    assert doomed is not None
    doomed.release("boom")  # its last attempt: a dead letter
    held = wq.reserve(timeout=10)  # stays reserved
    assert held is not None
    admin.start_cleaner(grace=60, interval=0.2).wait_leader(10)
    ctx = admin._ctx
    wait_until(lambda: ctx.conn.kazoo.exists(ctx.layout.clock))  # its first sweep aged results
    # a purge marker, as a cleaner leaves one while it deletes a gone client
    ctx.conn.kazoo.create(
        ctx.layout.purge_marker("gone"), b"", acl=ctx.acl.acl(NodeKind.PURGE_MARKER)
    )
    # a receipt, as a publisher that died right after its write leaves one
    # (a live one's is deleted within a second or so)
    ctx.conn.kazoo.create(
        ctx.layout.receipt(ctx.client_id, new_guid()),
        ctx.client_id.encode(),
        acl=ctx.acl.acl(NodeKind.RECEIPT),
    )
    return admin


@pytest.mark.parametrize("who", ["nobody", "wrong password", "another identity"])
def test_outsiders_get_no_auth_for_every_read_create_delete_and_set_on_every_node(
    make_secure_client, raw, who
):
    admin = _populated_bus(make_secure_client)
    su = raw(SUPER)
    creds = {
        "nobody": (),
        "wrong password": (("digest", "subscriber:not-the-password"),),
        "another identity": (("digest", "mallory:pw"),),
    }[who]
    outsider = raw(*creds)
    paths = walk(su, admin.root)
    layout = Layout(admin.config.root)
    kinds = {layout.kind_of(p) for p in paths}
    assert set(NodeKind) - kinds == {NodeKind.ABOVE_ROOT, NodeKind.FOREIGN}
    refused: dict[str, int] = {"read": 0, "list": 0, "create": 0, "delete": 0, "set": 0}
    gone: list[str] = []  # receipts the live clients deleted meanwhile
    for path in paths:
        done: list[str] = []
        try:  # a node deleted meanwhile by a live client (a receipt) is gone
            try:
                outsider.get(path)
            except NoAuthError:
                done.append("read")
            for name, op in (
                ("list", lambda p=path: outsider.get_children(p)),
                ("create", lambda p=path: outsider.create(f"{p}/forged", b"x")),
                ("set", lambda p=path: outsider.set(p, b"forged")),
            ):
                with pytest.raises(NoAuthError):
                    op()
                done.append(name)
            if path != admin.root:  # the root's parent is outside the bus
                with pytest.raises(NoAuthError):
                    outsider.delete(path)
                done.append("delete")
        except NoNodeError:
            gone.append(path)
            continue
        for name in done:
            refused[name] += 1
    assert {layout.kind_of(p) for p in gone} <= {NodeKind.RECEIPT}
    checked = len(paths) - len(gone)
    assert refused["read"] == checked
    assert min(refused.values()) >= checked - 1
    assert su.get_children(admin.root)  # nothing was removed


def test_a_client_without_credentials_cannot_use_a_secured_bus(make_secure_client):
    as_role(make_secure_client, "admin")  # makes the root with the roles' ACLs
    with pytest.raises(NotAuthorized):
        make_secure_client()
    start = time.monotonic()
    with pytest.raises(NotAuthorized, match="not authorized"):
        make_secure_client(
            auth=[("digest", "publisher:wrong")], acl=bus_roles(), connect_timeout=10
        )
    assert time.monotonic() - start < 10  # one refusal, no retrying


def test_a_member_without_publish_rights_cannot_inject_a_message(make_secure_client, raw):
    victim = as_role(make_secure_client, "subscriber")
    as_role(make_secure_client, "publisher")
    s = victim.subscribe("t")
    intruder = as_role(make_secure_client, "subscriber2")
    with pytest.raises(NotAuthorized):
        intruder.publish("t", "forged")
    worker = raw(("digest", f"worker:{TEST_PASSWORDS['worker']}"))
    queue = f"{victim.root}/messages/{victim.client_id}/t"
    with pytest.raises(NoAuthError):
        worker.create(f"{queue}/m000000000000-", b"forged", sequence=True)
    assert s.get(timeout=0.5) is None
    # its own queue it may write (docs/security.md): reaching no one else
    mine = intruder.subscribe("own")
    assert intruder.publish("own", "to myself").subscribers == 1
    got = mine.get(timeout=10)
    assert got is not None and got.payload == "to myself"
    assert s.get(timeout=0.5) is None


def test_a_subscriber_cannot_delete_another_subscribers_queue_but_the_admin_can(
    make_secure_client, raw
):
    victim = as_role(make_secure_client, "subscriber", client_id="victim")
    pub = as_role(make_secure_client, "publisher")
    victim.subscribe("t", durable=True).close()
    pub.publish("t", "m")
    queue = f"{victim.root}/messages/{victim.client_id}/t"
    other = raw(("digest", f"subscriber2:{TEST_PASSWORDS['subscriber2']}"))
    [node] = raw(SUPER).get_children(queue)
    for op in (
        lambda: other.delete(f"{queue}/{node}"),
        lambda: other.get_children(queue),
        lambda: other.create(f"{queue}/m000000000000-", b"forged", sequence=True),
        lambda: other.delete(queue),
    ):
        with pytest.raises(NoAuthError):
            op()
    admin = raw(("digest", f"admin:{TEST_PASSWORDS['admin']}"))
    admin.delete(queue, recursive=True)
    assert admin.exists(queue) is None


def test_only_workers_reserve_and_only_admins_join_the_cleaner_election(make_secure_client):
    prod = as_role(make_secure_client, "producer")
    prod.queue("jobs").put(1)
    with pytest.raises(NotAuthorized):
        prod.queue("jobs").reserve(timeout=1)
    sub = as_role(make_secure_client, "subscriber")
    with pytest.raises(NotAuthorized):
        sub.queue("jobs").put(2)
    cleaner = sub.start_cleaner(grace=60, interval=0.2)
    assert not cleaner.wait_leader(2)
    assert not sub._ctx.conn.kazoo.get_children(sub._ctx.layout.candidates)
    wait_until(lambda: cleaner.stopped, 10, "the cleaner stopped by itself")
    assert cleaner.refused is not None
    # then it hears no more of the connection (each start left a listener behind)
    listeners = sub._ctx.conn._listeners
    wait_until(lambda: cleaner._on_state not in listeners, 10, "its state listener removed")
    cleaner.stop()


# -- TLS ---------------------------------------------------------------------------------


def tls_of(material: TlsMaterial, *, ca: Any = None, cert: bool = True) -> Tls:
    return Tls(
        ca=str(ca or material.ca_cert),
        certfile=str(material.client_cert) if cert else None,
        keyfile=str(material.client_key) if cert else None,
    )


def test_over_tls_publish_subscribe_and_the_work_queue_work(
    make_secure_client, secure_zookeeper, tls_material
):
    hosts = secure_zookeeper.secure_hosts
    tls = tls_of(tls_material)
    a = make_secure_client(hosts=hosts, tls=tls, auth=user_auth("app"))
    b = make_secure_client(hosts=hosts, tls=tls_of(tls_material, cert=False), auth=user_auth("app"))
    s = b.subscribe("t")
    assert a.publish("t", "over tls").subscribers == 1
    msg = s.get(timeout=10)
    assert msg is not None and msg.payload == "over tls"
    a.queue("jobs").put(1)
    item = b.queue("jobs").reserve(timeout=10)
    assert item is not None
    item.ack()


def test_a_tls_client_certificate_alone_is_an_identity(
    make_secure_client, secure_zookeeper, tls_material
):
    client = make_secure_client(hosts=secure_zookeeper.secure_hosts, tls=tls_of(tls_material))
    assert client.config.acl_policy == "secured"
    client.subscribe("t")
    assert client.publish("t", 1).subscribers == 1


@pytest.mark.parametrize("trusting", ["another CA", "the system's CAs"])
def test_a_client_that_does_not_trust_the_servers_ca_is_refused_at_once(
    make_secure_client, secure_zookeeper, tls_material, trusting
):
    tls = (
        tls_of(tls_material, ca=tls_material.other_ca_cert, cert=False)
        if trusting == "another CA"
        else Tls()
    )
    start = time.monotonic()
    with pytest.raises(TlsError, match="not trusted") as info:
        make_secure_client(hosts=secure_zookeeper.secure_hosts, tls=tls, connect_timeout=10)
    assert time.monotonic() - start < 5
    assert info.value.errors


def _tls_session(address: str, hostname: str, tls: Tls) -> None:
    """Open and close the TLS connection kazoo's session would use."""
    host, port = address.rsplit(":", 1)
    sock = FastThreadingHandler().create_connection(
        address=(host, int(port)),
        hostname=hostname,
        timeout=5.0,
        use_ssl=True,
        **tls._options(),
    )
    sock.close()


def test_the_session_trusts_only_the_ca_it_is_given(secure_zookeeper, tls_material, monkeypatch):
    # the system's CAs would trust the server: a given CA replaces them, for
    # every connection of the session (not only the first, which is probed)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_material.ca_cert))
    address = secure_zookeeper.secure_hosts.split(",")[0]
    _tls_session(address, "127.0.0.1", Tls())  # the system's: trusted
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_session(address, "127.0.0.1", tls_of(tls_material, ca=tls_material.other_ca_cert))


def test_the_servers_name_is_checked_unless_told_not_to(secure_zookeeper, tls_material):
    address = secure_zookeeper.secure_hosts.split(",")[0]
    tls = tls_of(tls_material, cert=False)
    assert tls.check_hostname  # the default
    _tls_session(address, "localhost", tls)  # a name the certificate holds
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _tls_session(address, "zookeeper.example", tls)
    _tls_session(address, "zookeeper.example", replace(tls, check_hostname=False))


def test_not_verifying_certificates_checks_no_name_unless_told_to(tls_material) -> None:
    assert Tls(verify=False).check_hostname is False  # no longer a ValueError
    assert Tls(ca=str(tls_material.ca_cert)).check_hostname is True
    with pytest.raises(ValueError, match="check_hostname needs verify=True"):
        Tls(verify=False, check_hostname=True)


def test_a_ca_file_missing_when_the_session_connects_is_a_connection_error_kazoo_retries(
    secure_zookeeper, tls_material, tmp_path
):
    """A certificate being replaced: the connection fails as a socket error
    (kazoo tries again), not a ValueError that would end its loop."""
    address = secure_zookeeper.secure_hosts.split(",")[0]
    ca = tmp_path / "ca.pem"
    ca.write_bytes(tls_material.ca_cert.read_bytes())
    tls = tls_of(tls_material, ca=ca, cert=False)
    ca.unlink()
    with pytest.raises(OSError):
        _tls_session(address, "127.0.0.1", tls)


def test_tls_against_a_plain_port_is_one_clear_error(
    make_secure_client, secure_zookeeper, tls_material
):
    start = time.monotonic()
    with pytest.raises(TlsError, match="handshake"):
        make_secure_client(
            hosts=secure_zookeeper.hosts, tls=tls_of(tls_material, cert=False), connect_timeout=10
        )
    assert time.monotonic() - start < 10


# -- bad credentials fail fast -------------------------------------------------------------


def test_a_wrong_sasl_password_is_refused_within_the_connect_timeout(make_secure_client):
    start = time.monotonic()
    with pytest.raises(AuthenticationFailed, match="SASL"):
        make_secure_client(auth=[Sasl("bob", "wrong")], connect_timeout=10)
    assert time.monotonic() - start < 10


def test_a_server_that_enforces_authentication_refuses_a_client_without_credentials(
    make_cluster, tmp_path
):
    if backend_name() != "local":
        pytest.skip("secured servers are started by this run as local processes")
    security = ServerSecurity(sasl_users=dict(TEST_SASL_USERS), enforce_auth=True)
    zk = make_cluster(1, security=security)
    start = time.monotonic()
    with pytest.raises(AuthenticationFailed, match="requires authentication"):
        Client(zk.hosts, connect_timeout=10, root="/enforced")
    assert time.monotonic() - start < 10
    # a wrong password: the server closes the session at the SASL login;
    # refused at once, and kazoo's loop stops rather than dying on a thread
    start = time.monotonic()
    with pytest.raises(AuthenticationFailed, match="SASL"):
        Client(zk.hosts, auth=[Sasl("bob", "wrong")], connect_timeout=10, root="/enforced")
    assert time.monotonic() - start < 10
    with Client(zk.hosts, auth=user_auth("app"), root="/enforced", session_timeout=4) as c:
        c.subscribe("t")
        assert c.publish("t", 1).subscribers == 1
    with Client(zk.hosts, auth=[Sasl("bob", "bob-pw")], root="/enforced-sasl") as c:
        assert c.publish("t", 1).subscribers == 0
    nobody = KazooClient(hosts=zk.hosts, timeout=10.0)
    nobody.start(timeout=15)
    try:
        with pytest.raises((NoAuthError, SessionClosedRequireSaslError, AuthFailedError)):
            nobody.get_children("/enforced")
    finally:
        nobody.stop()
        nobody.close()


# -- the registration guard ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["subscription node", "queue node", "client node"])
def test_a_registration_deleted_by_another_client_is_written_again_with_a_gap(
    make_client, raw_zk, target
):
    sub = make_client()
    pub = make_client()
    gaps: list[Gap] = []
    sub.add_gap_listener(gaps.append)
    s = sub.subscribe("t")
    s.backlog(timeout=10)  # a round trip: the guard's watches are set on the server
    layout = Layout(sub.config.root)
    path = {
        "subscription node": layout.subscriber("t", sub.client_id),
        "queue node": layout.queue(sub.client_id, "t"),
        "client node": layout.client(sub.client_id),
    }[target]
    raw_zk.delete(path, recursive=True)  # a queue holds its segments
    wait_until(lambda: raw_zk.exists(path) is not None, timeout=10)
    if target != "client node":
        wait_until(lambda: gaps, timeout=10)
        assert gaps[0].topics == frozenset({"t"})
        assert "by another client" in gaps[0].reason
    wait_until(lambda: raw_zk.exists(layout.subscriber("t", sub.client_id)) is not None)
    wait_until(lambda: pub.publish("t", "again").subscribers == 1, timeout=10)
    msg = s.get(timeout=10)
    assert msg is not None and msg.payload == "again"
    assert sub.status == ClientState.CONNECTED


def test_a_publisher_that_found_a_queue_gone_writes_to_it_again_once_it_is_made_anew(
    make_client, raw_zk, zk_hosts
):
    """A publisher leaves out a queue it found gone until the topic's
    version changes. The guard made the queue anew but left the version as
    it was: that publisher never wrote to the subscriber again."""
    host, port = zk_hosts.split(",")[0].rsplit(":", 1)
    with TcpProxy((host, int(port)), name="queue-made-anew") as proxy:
        sub = make_client(hosts=proxy.address, session_timeout=20.0)
        pub = make_client()
        gaps: list[Gap] = []
        sub.add_gap_listener(gaps.append)
        s = sub.subscribe("t")
        s.backlog(timeout=10)  # a round trip: the guard's watches are set on the server
        assert pub.publish("t", "before").subscribers == 1
        before = s.get(timeout=10)  # read before the queue goes
        assert before is not None and before.payload == "before"
        queue = Layout(sub.config.root).queue(sub.client_id, "t")
        proxy.block("drop")  # the subscriber hears of nothing until it is let through
        raw_zk.delete(queue, recursive=True)
        assert pub.publish("t", "meanwhile").subscribers == 0  # found gone: left out
        proxy.unblock()
        wait_until(lambda: gaps, timeout=30)
        assert gaps[0].topics == frozenset({"t"})
        wait_until(lambda: raw_zk.exists(queue) is not None, timeout=10)
        assert pub.publish("t", "after").subscribers == 1
        after = s.get(timeout=10)
        assert after is not None and after.payload == "after"


@pytest.mark.parametrize("target", ["subscription node", "queue node"])
def test_a_registration_changed_by_another_client_is_put_back_with_a_gap(
    make_client, raw_zk, target
):
    sub = make_client(client_id="guarded")
    gaps: list[Gap] = []
    sub.add_gap_listener(gaps.append)
    subscription = sub.subscribe("t", durable=True)
    # the guard's watches are asked for as subscribe returns: a round trip
    # on the client's own session makes sure the server has set them before
    # another client changes the node
    subscription.backlog(timeout=10)
    layout = Layout(sub.config.root)
    path = (
        layout.subscriber("t", sub.client_id)
        if target == "subscription node"
        else layout.queue(sub.client_id, "t")
    )
    before, _ = raw_zk.get(path)
    raw_zk.set(path, b"forged")
    wait_until(lambda: gaps, timeout=10)
    assert gaps[0].topics == frozenset({"t"})
    if target == "subscription node":
        wait_until(lambda: raw_zk.get(path)[0] == before, timeout=10)
        return
    # an unreadable queue record is written anew, its messages in a fresh segment
    old = QueueRecord.decode(before)
    assert old is not None

    def restored() -> bool:
        record = QueueRecord.decode(raw_zk.get(path)[0])
        return record is not None and record.backlog == old.backlog and record.segment > old.segment

    wait_until(restored, timeout=10)


def test_the_guard_is_armed_again_after_a_reconnect(make_client, raw_zk):
    sub = make_client()
    gaps: list[Gap] = []
    sub.add_gap_listener(gaps.append)
    sub.subscribe("t")
    expire_session(sub)
    gaps.clear()
    path = Layout(sub.config.root).subscriber("t", sub.client_id)
    raw_zk.delete(path)
    # the expiry's own gap is told on the listeners' thread and may come after the clear
    wait_until(lambda: any("by another client" in g.reason for g in gaps), timeout=10)
    wait_until(lambda: raw_zk.exists(path) is not None, timeout=10)


def test_unsubscribing_closing_and_changing_kind_do_not_trip_the_guard(make_client):
    sub = make_client(client_id="own-changes")
    gaps: list[Gap] = []
    sub.add_gap_listener(gaps.append)
    sub.subscribe("a").unsubscribe()
    sub.subscribe("b").close()
    sub.subscribe("c", durable=True).close()
    sub.subscribe("c").close()  # replaces the durable registration by a plain one
    sub.subscribe("c", durable=True)
    sub.subscribe("a")  # a new queue for a topic unsubscribed before
    time.sleep(1.0)
    assert gaps == []


# -- configuration -----------------------------------------------------------------------


def test_a_root_inside_zookeepers_own_tree_is_refused():
    for root in ("/zookeeper", "/zookeeper/quota/bus"):
        with pytest.raises(ValueError, match="reserved"):
            ClientConfig(root=root)
    ClientConfig(root="/zookeeper-bus")


def test_credentials_are_never_shown_and_a_secured_policy_needs_an_identity():
    config = ClientConfig(auth=[("digest", "app:very-secret")])
    assert "very-secret" not in repr(config)
    assert "very-secret" not in repr(Sasl("bob", "very-secret"))
    assert config.acl_policy == "secured"
    assert ClientConfig().acl_policy == "open"
    with pytest.raises(ValueError, match="credentials"):
        ClientConfig(acl="secured")
    with pytest.raises(ValueError, match="admin"):
        Roles(publishers=("digest:a:b",))
    with pytest.raises(ValueError, match="no authenticated identity"):
        Roles(admins=("world:anyone",))


def test_kazoos_debug_log_of_the_login_hides_the_password(make_client, caplog):
    # kazoo logs each request it sends at DEBUG, the digest login with its
    # password in clear (the command line's -vv turned that on)
    caplog.set_level(logging.DEBUG, logger="kazoo.client")
    client = make_client(auth=[("digest", "app:very-secret")])
    client.publish("t", "x")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Auth(scheme='digest', auth=<hidden>)" in logged
    assert "very-secret" not in logged


def test_messages_go_into_node_names_only_where_every_lister_may_read_them():
    admin, pub, sub = (digest_identity(u, "pw") for u in ("admin", "pub", "sub"))
    assert AclPolicy("open").names_private
    assert AclPolicy("secured", auth=(Auth("digest", "app:pw"),)).names_private
    # publishers list segments: a publisher that may not read messages must
    # not find them in names
    assert not AclPolicy(
        Roles(admins=(admin,), publishers=(pub,), subscribers=(sub,))
    ).names_private
    both = Roles(admins=(admin,), publishers=(pub,), subscribers=(sub, pub))
    assert AclPolicy(both).names_private
    assert not AclPolicy(bus_roles()).names_private


def test_a_publisher_that_may_not_read_messages_finds_none_in_node_names(make_secure_client, raw):
    sub = as_role(make_secure_client, "subscriber", client_id="keeper")
    sub.subscribe("t", durable=True).close()  # the queue stays, and keeps what comes
    as_role(make_secure_client, "publisher").publish("t", "secret")
    su = raw(SUPER)
    queue = f"{sub.root}/messages/keeper/t"
    record = QueueRecord.decode(su.get(queue)[0])
    assert record is not None and record.inline == 0
    segment = f"{queue}/s{record.segment:010d}"
    (name,) = su.get_children(segment)
    assert not carries_data(name) and su.get(f"{segment}/{name}")[0]
    publisher = raw(("digest", f"publisher:{TEST_PASSWORDS['publisher']}"))
    assert publisher.get_children(segment) == [name]  # it may list the queue
    with pytest.raises(NoAuthError):
        publisher.get(f"{segment}/{name}")  # but not read the message


def test_credentials_come_from_a_file_or_the_environment(tmp_path, tls_material):
    path = tmp_path / "creds.toml"
    admin = digest_identity("admin", "pw")
    path.write_text(
        '[auth]\ndigest = "app:pw"\n'
        f'[tls]\nca = "{tls_material.ca_cert}"\n'
        f'[roles]\nadmins = ["{admin}"]\npublishers = ["sasl:bob"]\n'
    )
    sec = load_credentials(path)
    assert sec.auth[0].identity() == digest_identity("app", "pw")
    assert isinstance(sec.acl, Roles) and sec.acl.admins == (admin,)
    assert sec.tls is not None and sec.tls.ca == str(tls_material.ca_cert)
    env = from_environment({"ZKPUBSUB_CREDENTIALS": str(path), "ZKPUBSUB_DIGEST": "other:pw2"})
    assert [a.identity() for a in env.auth] == [digest_identity("other", "pw2")]
    assert from_environment({}).options() == {}
    assert from_environment({"ZKPUBSUB_ACL": "open"}).options() == {"acl": "open"}


def test_auth_pairs_may_be_lists_and_a_bad_entry_is_not_echoed():
    config = ClientConfig(auth=[["digest", "alice:s3cret"]])  # as JSON or YAML gives it
    assert config.auth == (Auth("digest", "alice:s3cret"),)
    for bad in (["digest", "alice:s3cret", "x"], ("digest", "alice:s3cret", "x"), "alice:s3cret"):
        with pytest.raises(TypeError, match="pairs") as info:
            ClientConfig(auth=[bad])
        assert "s3cret" not in str(info.value)


def test_the_environment_changes_only_the_tls_files_it_names(tmp_path, tls_material):
    path = tmp_path / "creds.toml"
    path.write_text(
        f'[tls]\nca = "{tls_material.ca_cert}"\ncheck_hostname = false\n'
        f'certfile = "{tls_material.client_cert}"\nkeyfile = "{tls_material.client_key}"\n'
        'keyfile_password = "secret"\n'
    )
    env = {"ZKPUBSUB_CREDENTIALS": str(path), "ZKPUBSUB_TLS_CA": str(tls_material.other_ca_cert)}
    tls = from_environment(env).tls
    assert tls is not None and tls.ca == str(tls_material.other_ca_cert)
    assert tls.certfile == str(tls_material.client_cert)
    assert not tls.check_hostname and tls.keyfile_password == "secret"  # the file's, kept
    path.write_text('[tls]\nca_file = "ca.pem"\n')
    with pytest.raises(ValueError, match=r"creds\.toml: unknown \[tls\] keys ca_file"):
        load_credentials(path)


def test_the_open_policy_writes_what_it_always_did(make_client, raw_zk):
    client = make_client()
    client.subscribe("t")
    acl, _ = raw_zk.get_acls(Layout(client.config.root).queue(client.client_id, "t"))
    assert acl == OPEN_ACL_UNSAFE


def test_a_transaction_budget_counts_the_acls_bytes(make_secure_client):
    client = as_role(make_secure_client, "publisher")
    open_client_budget = ClientConfig().max_transaction_bytes
    publisher = client._publisher
    assert publisher.op_size("t", b"x" * 10) > 10 + len(client._ctx.layout.messages)
    assert client._ctx.acl.size(NodeKind.MESSAGE) > 100
    assert publisher.budget("t") < open_client_budget


def test_threads_do_not_leak_after_a_refused_connect(make_secure_client):
    before = threading.active_count()
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            make_secure_client(auth=[Sasl("bob", "wrong")], connect_timeout=5)
    time.sleep(0.5)
    assert threading.active_count() <= before + 2


def test_a_refused_sasl_login_marks_the_connection_whoever_wakes_first(secure_zookeeper):
    # kazoo announces the session before the SASL exchange and takes it back
    # when the server refuses: a start() woken by the first may find the
    # session gone and raise a time-out at once. The flag start() then reads
    # must be set, or the refusal reads as a connect timeout.
    from zkpubsub.connection import Connection

    conn = Connection(secure_zookeeper.hosts, session_timeout=4.0, auth=(Sasl("bob", "wrong"),))
    try:
        conn.kazoo.start_async()
        assert conn.auth_failed.wait(20)
    finally:
        conn.kazoo.stop()
        conn.kazoo.close()


# -- the command line ----------------------------------------------------------------------


def test_the_command_line_takes_credentials_from_the_environment(
    make_secure_client, secure_zookeeper, secure_root, tmp_path
):
    from click.testing import CliRunner

    from zkpubsub.cli import main

    sub = make_secure_client(auth=user_auth("app"))
    s = sub.subscribe("t")
    base = {"ZKPUBSUB_HOSTS": secure_zookeeper.hosts, "ZKPUBSUB_ROOT": secure_root}
    refused = CliRunner().invoke(main, ["publish", "t", "hi"], env=base)
    assert refused.exit_code != 0 and "NotAuthorized" in refused.output
    creds = tmp_path / "creds.toml"
    creds.write_text(f'[auth]\ndigest = "app:{TEST_PASSWORDS["app"]}"\n')
    creds.chmod(0o600)
    ok = CliRunner().invoke(
        main, ["publish", "t", "hi"], env={**base, "ZKPUBSUB_CREDENTIALS": str(creds)}
    )
    assert ok.exit_code == 0, ok.output
    msg = s.get(timeout=10)
    assert msg is not None and msg.payload == "hi"


def test_the_wire_format_lists_the_acl_of_every_kind_of_node():
    from pathlib import Path

    from zkpubsub._acl import table_rows

    doc = (Path(__file__).parent.parent / "docs" / "wire-format.md").read_text()
    missing = [row for row in table_rows() if row not in doc]
    assert not missing, missing


def test_the_largest_message_still_fits_its_transaction_with_the_roles_acls(make_secure_client):
    subs = [as_role(make_secure_client, user) for user in ("subscriber", "subscriber2")]
    for sub in subs:
        sub.subscribe("big")
    pub = as_role(make_secure_client, "publisher", serializer="raw")
    payload = b"x" * 979_000
    receipt = pub.publish("big", payload)
    assert receipt.subscribers == 2 and receipt.transactions == 2
    for sub in subs:
        msg = sub.subscriptions()[0].get(timeout=10)
        assert msg is not None and msg.payload == payload


def test_acls_too_large_for_the_largest_message_are_refused_up_front():
    many = Roles(
        admins=(digest_identity("admin", "pw"),),
        subscribers=tuple(digest_identity(f"user{i}", "pw") for i in range(600)),
    )
    with pytest.raises(ValueError, match="ACLs of the policy"):
        ClientConfig(auth=[("digest", "admin:pw")], acl=many)
    ClientConfig(auth=[("digest", "admin:pw")], acl=many, max_message_bytes=900_000)


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_an_observer_reads_a_secured_bus_with_its_credentials_and_nothing_without(
    make_secure_client, secure_zookeeper, secure_root, tls_material, transport
):
    options: dict[str, Any] = {"auth": user_auth("app")}
    hosts = secure_zookeeper.hosts
    if transport == "tls":
        hosts = secure_zookeeper.secure_hosts
        options["tls"] = tls_of(tls_material)
    sub = make_secure_client(hosts=hosts, client_id="reader", **options)
    sub.subscribe("t", durable=True).close()
    make_secure_client(hosts=hosts, **options).publish("t", "waiting")
    with Observer(hosts, root=secure_root, **options) as observer:
        stats = observer.stats()
        assert stats.topics["t"] == ("reader",)
        assert [(q.client_id, q.backlog) for q in stats.queues_of("t")] == [("reader", 1)]
    with (
        Observer(secure_zookeeper.hosts, root=secure_root) as outsider,
        pytest.raises(NotAuthorized),
    ):
        outsider.stats()
