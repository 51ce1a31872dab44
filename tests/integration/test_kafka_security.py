"""SASL and TLS on the Kafka listener (docs/kafka.md#security) with real Kafka clients
(kafka-python, confluent-kafka), on a node with CURVE keys and the ACL authorizer: the
SASL user is ``User:NAME`` for the same ACLs and quotas as a native client, because
the listener forwards each request "on behalf of" its user (appliance/gate.py), which
only a node may do. Users are made with ``sluice kafka-users add`` as an operator would;
the TLS test makes its own CA with ``cryptography``."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka import Producer as CKProducer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError as KPError

from ipc import curve
from ipc.client import Consumer
from ipc.client import TopicPartition as SluiceTP
from ipc.protocol import encode_request, parse_reply
from tests.integration.conftest import REPO, SLUICE, Node, free_port, wait_until
from tests.integration.security_support import KeyRing

pytestmark = pytest.mark.slow
ACL_WAIT_S = 15.0


def add_kafka_user(path: Path, name: str, password: str) -> None:
    """``sluice kafka-users add NAME --password-stdin``, as an operator would."""
    out = subprocess.run(
        [*SLUICE, "kafka-users", "add", name, "--file", str(path), "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert password not in path.read_text()


def acl(principal: str, kind: str, name: str, operation: str) -> dict[str, Any]:
    return {
        "principal": principal,
        "resource_type": kind,
        "resource_name": name,
        "pattern_type": "literal",
        "operation": operation,
        "permission": "allow",
        "host": "*",
    }


class Secured:
    def __init__(self, node: Node, ring: KeyRing, kafka: str, metrics: str) -> None:
        self.node, self.ring, self.kafka, self.metrics = node, ring, kafka, metrics

    def sasl(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> dict[str, Any]:
        return {
            "bootstrap.servers": self.kafka,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism,
            "sasl.username": user,
            "sasl.password": password,
        }

    def grant(self, *bindings: dict[str, Any]) -> None:
        with self.node.admin() as a:
            a.create_acls(bindings)


def start_secured(base: Path, kafka: dict[str, Any], users: dict[str, str], **options: Any) -> tuple[Node, KeyRing]:
    ring = KeyRing.generate(base, users=["admin", "mallory"], nodes=[0])
    authorized = ring.authorize(base / "authorized", ["node-0", "admin", "mallory"])
    security = ring.security_table(0, authorized, authorizer="acl", super_users=["User:admin"])
    creds = base / "kafka-users.toml"
    for name, pw in users.items():
        add_kafka_user(creds, name, pw)
    node = Node(base, node_id=0, security=security, kafka={**kafka, "credentials_file": str(creds)}, **options)
    node.client_security = ring.client("admin")
    node.start()
    host, port = options["kafka_listen"].rsplit(":", 1)

    def listening() -> bool:
        with socket.create_connection((host, int(port)), timeout=2):
            return True

    wait_until(listening, 20, "the Kafka listener")
    return node, ring


@contextlib.contextmanager
def cleanup(node: Node) -> Iterator[None]:
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            node.status()
        node.kill_all()
        shutil.rmtree(os.path.dirname(node.status_path), ignore_errors=True)
        print(f"--- node log tail ---\n{node.log_tail(80)}")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    base = tmp_path_factory.mktemp("kafka-sasl")
    kport, mport = free_port(), free_port()
    users = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
    node, ring = start_secured(
        base,
        {"security_protocol": "SASL_PLAINTEXT"},
        users,
        kafka_listen=f"127.0.0.1:{kport}",
        metrics_listen=f"127.0.0.1:{mport}",
        offsets_topic_partitions=1,
    )
    with cleanup(node):
        s = Secured(node, ring, f"127.0.0.1:{kport}", f"http://127.0.0.1:{mport}/metrics")
        with node.admin() as a:
            a.create_topic("orders", partitions=1)
            a.create_topic("quota", partitions=1)
        yield s


def ck_errors(conf: dict[str, Any]) -> list[KafkaError]:
    """The errors a confluent-kafka producer reports while it tries to reach the listener."""
    errors: list[KafkaError] = []
    p = CKProducer({**conf, "error_cb": errors.append, "socket.timeout.ms": 5000})
    p.produce("orders", b"x")
    wait_until(lambda: p.poll(0.2) >= 0 and bool(errors), 20, "an error from the producer")
    p.purge()
    p.flush(2)
    return errors


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_wrong_password_is_refused_with_a_clear_sasl_error(secured: Secured, mechanism: str) -> None:
    errors = ck_errors(secured.sasl("alice", "not-her-password", mechanism))
    text = " ".join(e.str() for e in errors)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), text
    assert f"invalid credentials with SASL mechanism {mechanism}" in text, text


def test_kafka_python_wrong_password_and_unknown_user(secured: Secured, caplog: pytest.LogCaptureFixture) -> None:
    """kafka-python gives up bootstrapping; the reason it logs is the listener's SASL error."""
    for user, pw in (("alice", "nope"), ("nobody", "alice-pw")):
        caplog.clear()
        with pytest.raises(KPError):
            KafkaProducer(
                bootstrap_servers=secured.kafka,
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="SCRAM-SHA-256",
                sasl_plain_username=user,
                sasl_plain_password=pw,
                bootstrap_timeout_ms=3000,
            )
        assert "SaslAuthenticationFailedError" in caplog.text
        assert "invalid credentials with SASL mechanism SCRAM-SHA-256" in caplog.text


def test_without_sasl_the_listener_is_closed(secured: Secured) -> None:
    errors = ck_errors({"bootstrap.servers": secured.kafka})
    assert errors  # a plaintext client's first request (ApiVersions is fine, Metadata is not) closes it


def test_read_needs_the_acl_then_works(secured: Secured) -> None:
    """alice may write; bob may describe but not read (TOPIC_AUTHORIZATION_FAILED), then may."""
    secured.grant(
        acl("User:alice", "topic", "orders", "write"),
        acl("User:bob", "topic", "orders", "describe"),
        acl("User:bob", "group", "unused", "read"),  # librdkafka looks its group's coordinator up
        acl("User:bob", "group", "bob-group", "read"),  # for kafka-python's group, below
    )
    p = CKProducer({**secured.sasl("alice", "alice-pw"), "enable.idempotence": True, "acks": "all"})
    delivered: list[Any] = []

    def produce_all() -> bool:
        delivered.clear()
        for i in range(20):
            p.produce("orders", b"v%d" % i, key=b"k", on_delivery=lambda e, m: delivered.append(e))
        p.flush(10)
        return len(delivered) == 20 and all(e is None for e in delivered)

    wait_until(produce_all, ACL_WAIT_S, "alice's produce with WRITE", interval=0.2)

    def bob_reads() -> Any:
        c = CKConsumer({**secured.sasl("bob", "bob-pw"), "group.id": "unused", "enable.auto.commit": False})
        try:
            c.assign([TopicPartition("orders", 0, 0)])
            for _ in range(40):
                m = c.poll(0.25)
                if m is not None:
                    return m.error().code() if m.error() else m.value()
            return None
        finally:
            c.close()

    # until bob's DESCRIBE and group ACLs reach the front (a GROUP_AUTHORIZATION_FAILED before),
    # his fetch is refused: he may never read without READ
    wait_until(
        lambda: bob_reads() == KafkaError.TOPIC_AUTHORIZATION_FAILED, ACL_WAIT_S, "bob's fetch refused", interval=0.2
    )
    secured.grant(acl("User:bob", "topic", "orders", "read"))
    wait_until(lambda: bob_reads() == b"v0", ACL_WAIT_S, "bob reading with READ")

    # kafka-python with a consumer group (bob may read the group since the first grant)
    consumer = KafkaConsumer(
        "orders",
        bootstrap_servers=secured.kafka,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="bob",
        sasl_plain_password="bob-pw",
        group_id="bob-group",
        auto_offset_reset="earliest",
        consumer_timeout_ms=15000,
    )
    try:
        got = []
        for m in consumer:
            got.append(m.value)
            if len(got) >= 20:
                break
        consumer.commit()
    finally:
        consumer.close()
    assert got[:20] == [b"v%d" % i for i in range(20)]
    with secured.node.admin() as a:
        committed = a.describe_group("bob-group")
    assert "orders" in orjson.dumps(committed).decode()


def test_a_native_client_cannot_speak_for_another(secured: Secured) -> None:
    """mallory's CURVE client sends on_behalf_of User:admin (a super user): ignored."""
    with secured.node.admin() as a:
        md = a._call("metadata", topics=["orders"], allow_auto_create=False)
    endpoint = md["topics"][0]["partitions"][0]["endpoint"]
    server = curve.load_key_file(str(secured.ring.server_public), secret=False)
    me = curve.load_key_file(str(secured.ring.secret("mallory")), secret=True)
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        curve.configure_client(s, curve.ClientKeys(server.public, me.public, me.secret))
        s.connect(endpoint)
        forged = {"principal": "User:admin", "host": "127.0.0.1"}
        s.send(encode_request("fetch", 1, topic="orders", partition=0, offset=0, max_bytes=1024, on_behalf_of=forged))
        assert s.poll(10_000), "no reply"
        reply = parse_reply(s.recv_multipart(copy=False))
    finally:
        ctx.destroy(0)
    assert reply.error is not None and reply.error.code == "TOPIC_AUTHORIZATION_FAILED", reply
    assert "User:mallory" in reply.error.message


def _throttle_seconds(metrics_url: str, principal: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("sluice_quota_throttle_time_seconds_total{") and f'principal="{principal}"' in line:
            total += float(line.split()[-1])
    return total


def test_producer_quota_applies_to_the_kafka_principal(secured: Secured) -> None:
    secured.grant(acl("User:carol", "topic", "quota", "write"))
    with secured.node.admin() as a:
        a.set_quota("carol", producer_byte_rate=50_000)
    p = CKProducer({**secured.sasl("carol", "carol-pw", "PLAIN"), "linger.ms": 5, "acks": 1})
    value = b"x" * 1000

    def throttled() -> bool:
        for _ in range(200):
            p.produce("quota", value)
            p.poll(0)
        p.flush(30)
        return _throttle_seconds(secured.metrics, "User:carol") > 0

    wait_until(throttled, 30, "carol's produce to be throttled", interval=0.1)
    assert _throttle_seconds(secured.metrics, "User:ANONYMOUS") == 0
    with secured.node.admin() as a:
        a.set_quota("carol", producer_byte_rate=None)


# ---- TLS ---------------------------------------------------------------------------------------
def make_ca_and_server_cert(d: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sluice test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = d / "ca.pem", d / "kafka.crt", d / "kafka.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def test_sasl_ssl_with_a_test_ca(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    kport = free_port()
    kafka = {"security_protocol": "SASL_SSL", "tls_cert_file": str(cert), "tls_key_file": str(key)}
    node, _ = start_secured(tmp_path, kafka, {"alice": "alice-pw"}, kafka_listen=f"127.0.0.1:{kport}")
    with cleanup(node):
        with node.admin() as a:
            a.create_topic("tls", partitions=1)
            a.create_acls([acl("User:alice", "topic", "tls", "write"), acl("User:alice", "topic", "tls", "read")])
        addr = f"127.0.0.1:{kport}"
        conf = {
            "bootstrap.servers": addr,
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(ca),
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "alice",
            "sasl.password": "alice-pw",
        }
        p = CKProducer({**conf, "acks": "all"})
        results: list[Any] = []

        def produced() -> bool:
            results.clear()
            p.produce("tls", b"over-tls", on_delivery=lambda e, m: results.append(e))
            p.flush(10)
            return results == [None]

        wait_until(produced, ACL_WAIT_S, "a produce over SASL_SSL", interval=0.2)
        kp = KafkaConsumer(
            bootstrap_servers=addr,
            security_protocol="SASL_SSL",
            ssl_cafile=str(ca),
            sasl_mechanism="PLAIN",
            sasl_plain_username="alice",
            sasl_plain_password="alice-pw",
            auto_offset_reset="earliest",
            consumer_timeout_ms=10000,
        )
        try:
            from kafka import TopicPartition as KTP

            kp.assign([KTP("tls", 0)])
            got = []
            for m in kp:  # consumer_timeout_ms bounds the wait
                got.append(m.value)
                if m.value == b"over-tls":
                    break
        finally:
            kp.close()
        assert b"over-tls" in got
        # a client that does not trust the CA (no ssl.ca.location) is refused by its own TLS check
        errors = ck_errors({k: v for k, v in conf.items() if k != "ssl.ca.location"})
        assert any("certificate" in e.str().lower() or e.code() == KafkaError._SSL for e in errors), errors
        # the record is the same record for Sluice's own client
        c = Consumer(node.bootstrap, security=node.client_security, auto_offset_reset="earliest")
        try:
            c.assign([SluiceTP("tls", 0)])
            recs = wait_until(lambda: c.poll(1000) or None, 10, "the record by ipc.client")
        finally:
            c.close()
        assert any(r.value == b"over-tls" for r in recs)
