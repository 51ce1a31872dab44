"""The Kafka listener (docs/kafka.md) against a real node, with real Kafka clients
nobody here wrote: kcat (Debian's, librdkafka 2.0), confluent-kafka (its wheel's newer
librdkafka) and kafka-python. Records cross protocols unchanged both ways."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipc.client import Consumer, Producer
from ipc.kafka import apis_data
from ipc.kafka.protocol import decode_response, encode_request
from tests.integration.conftest import Node, free_port, wait_until

pytestmark = pytest.mark.slow
NODE_OPTIONS = {"offsets_topic_partitions": 1}


def _kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        why = "kcat not found (Debian package 'kcat'; `make system-deps` installs it as root)"
        if os.geteuid() == 0:
            pytest.fail(why + ": running as root, so .ci/system-deps should have installed it")
        pytest.skip(why)
    return path


@pytest.fixture
def kafka_node(node_factory: Callable[..., Node]) -> Node:
    port = free_port()
    n = node_factory(kafka_listen=f"127.0.0.1:{port}", **NODE_OPTIONS)
    n.kafka = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    n.start()
    wait_until(lambda: _api_versions(n.kafka) is not None, 20, "the Kafka listener")  # type: ignore[attr-defined]
    return n


def _connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _recv_frame(s: socket.socket) -> bytes | None:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (size,) = struct.unpack(">i", head)
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _api_versions(addr: str, version: int = 3) -> dict[str, Any] | None:
    try:
        with _connect(addr) as s:
            s.sendall(encode_request(apis_data.API_VERSIONS, version, 9, {}))
            frame = _recv_frame(s)
    except OSError:
        return None
    if frame is None:
        return None
    return decode_response(apis_data.API_VERSIONS, min(version, 3) if version <= 3 else 0, frame)[1]


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_kcat_metadata_produce_and_consume_cross_protocol(kafka_node: Node, tmp_path: Any) -> None:
    kcat, addr = _kcat(), kafka_node.kafka  # type: ignore[attr-defined]
    with kafka_node.admin() as admin:
        admin.create_topic("lines", partitions=2)
    meta = subprocess.run([kcat, "-b", addr, "-L", "-t", "lines"], capture_output=True, text=True, timeout=30)
    assert meta.returncode == 0, meta.stderr
    assert f"broker 0 at {addr}" in meta.stdout and 'topic "lines" with 2 partitions' in meta.stdout
    n = 5000
    lines = "".join(f"key-{i}\tvalue {i} " + "x" * (i % 50) + "\n" for i in range(n))
    produce = subprocess.run(
        [kcat, "-b", addr, "-P", "-t", "lines", "-K", "\t", "-H", "origin=kcat", "-z", "lz4"],
        input=lines, capture_output=True, text=True, timeout=60,
    )
    assert produce.returncode == 0, produce.stderr
    consume = subprocess.run(
        [kcat, "-b", addr, "-C", "-t", "lines", "-e", "-q", "-f", "%k\t%s\t%h\n"],
        capture_output=True, text=True, timeout=60,
    )
    assert consume.returncode == 0, consume.stderr
    got = sorted(consume.stdout.splitlines())
    assert got == sorted(f"key-{i}\tvalue {i} " + "x" * (i % 50) + "\torigin=kcat" for i in range(n))
    # the same records through Sluice's own client: same keys, values, headers
    c = Consumer(kafka_node.bootstrap, group_id="sluice-reader", auto_offset_reset="earliest")
    try:
        c.subscribe(["lines"])
        seen: dict[bytes | None, Any] = {}
        deadline = time.monotonic() + 30
        while len(seen) < n and time.monotonic() < deadline:
            for r in c.poll(1000):
                seen[r.key] = r
    finally:
        c.close()
    assert len(seen) == n
    r7 = seen[b"key-7"]
    assert r7.value == b"value 7 " + b"x" * 7 and r7.headers == [("origin", b"kcat")]


def test_sluice_producer_to_confluent_consumer(kafka_node: Node) -> None:
    from confluent_kafka import Consumer as KConsumer

    with kafka_node.admin() as admin:
        admin.create_topic("from-sluice", partitions=1)
    with Producer(kafka_node.bootstrap) as p:
        for i in range(300):
            p.send("from-sluice", b"v%d" % i, key=None if i % 3 == 0 else b"k%d" % i,
                   headers=[("n", str(i).encode()), ("null", None)], timestamp_ms=1_700_000_000_000 + i)
        p.flush()
    c = KConsumer({"bootstrap.servers": kafka_node.kafka, "group.id": "ck",  # type: ignore[attr-defined]
                   "auto.offset.reset": "earliest", "enable.auto.commit": False})
    got = []
    try:
        c.subscribe(["from-sluice"])
        deadline = time.monotonic() + 30
        while len(got) < 300 and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is None:
                got.append(m)
    finally:
        c.close()
    assert [m.offset() for m in got] == list(range(300))
    m3, m4 = got[3], got[4]
    assert (m3.key(), m3.value(), m3.timestamp()[1]) == (None, b"v3", 1_700_000_000_003)
    assert m4.key() == b"k4" and m4.headers() == [("n", b"4"), ("null", None)]


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_confluent_idempotent_producer_each_codec(kafka_node: Node, codec: str) -> None:
    from confluent_kafka import Producer as KProducer

    addr = kafka_node.kafka  # type: ignore[attr-defined]
    with kafka_node.admin() as admin:
        admin.create_topic("codecs", partitions=2)
    p = KProducer({"bootstrap.servers": addr, "compression.type": codec, "enable.idempotence": True,
                   "acks": "all", "linger.ms": 5})
    errors: list[Any] = []
    for i in range(2000):
        p.produce("codecs", key=b"k%d" % i, value=b"%s-%d" % (codec.encode(), i),
                  on_delivery=lambda e, m: errors.append(e) if e else None)
    assert p.flush(60) == 0 and errors == []
    c = Consumer(kafka_node.bootstrap, group_id="codec-check", auto_offset_reset="earliest")
    values = set()
    try:
        c.subscribe(["codecs"])
        deadline = time.monotonic() + 30
        while len(values) < 2000 and time.monotonic() < deadline:
            values.update(r.value for r in c.poll(1000))
    finally:
        c.close()
    assert values == {b"%s-%d" % (codec.encode(), i) for i in range(2000)}


def test_groups_commit_and_resume(kafka_node: Node) -> None:
    """kafka-python and confluent-kafka groups: commits are Sluice commits (the node's
    describe shows them) and a restarted consumer resumes from them."""
    from confluent_kafka import Consumer as KConsumer
    from confluent_kafka import Producer as KProducer
    from kafka import KafkaConsumer

    addr = kafka_node.kafka  # type: ignore[attr-defined]
    with kafka_node.admin() as admin:
        admin.create_topic("orders", partitions=3)
    p = KProducer({"bootstrap.servers": addr})
    for i in range(600):
        p.produce("orders", key=b"%d" % i, value=b"o%d" % i)
    assert p.flush(30) == 0
    kc = KafkaConsumer("orders", bootstrap_servers=addr, group_id="billing", auto_offset_reset="earliest",
                       enable_auto_commit=False, consumer_timeout_ms=3000)
    first = [m for _, m in zip(range(400), kc, strict=False)]
    kc.commit()
    kc.close()
    assert len(first) == 400
    with kafka_node.admin() as admin:
        desc = admin.describe_group("billing")
    assert sum(p["committed_offset"] for p in desc["partitions"]) == 400
    c = KConsumer({"bootstrap.servers": addr, "group.id": "billing", "auto.offset.reset": "earliest"})
    rest = []
    try:
        c.subscribe(["orders"])
        deadline = time.monotonic() + 30
        while len(rest) < 200 and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is None:
                rest.append(m.value())
    finally:
        c.close()
    assert sorted(v for v in [m.value for m in first] + rest) == sorted(b"o%d" % i for i in range(600))


def test_bad_frames_close_only_their_connection(kafka_node: Node) -> None:
    addr = kafka_node.kafka  # type: ignore[attr-defined]
    cases = [
        struct.pack(">i", 2**31 - 1) + b"\x00" * 16,  # a size no request may have
        struct.pack(">i", -5),  # a negative size
        struct.pack(">i", 12) + bytes.fromhex("03e7000000000001ffff") + b"\x00\x00",  # api key 999
        struct.pack(">i", 10) + bytes.fromhex("0003000c00000001ffff"),  # Metadata v12, body missing
        struct.pack(">i", 14) + bytes.fromhex("0003000100000001ffff") + b"\x7f\xff\xff\xff",  # 2 G topics
        struct.pack(">i", 8) + os.urandom(8),
    ]
    for raw in cases:
        with _connect(addr) as s:
            s.sendall(raw)
            assert _closed(s), raw.hex()
    # an ApiVersions newer than served: UNSUPPORTED_VERSION and the ranges (v0 body)
    answer = _api_versions(addr, 99)
    assert answer is not None and answer["error_code"] == 35
    assert {"api_key": 0, "min_version": 3, "max_version": 9} in answer["api_keys"]
    assert _api_versions(addr) is not None  # still serving


def test_pipelined_requests_are_answered_in_order(kafka_node: Node) -> None:
    addr = kafka_node.kafka  # type: ignore[attr-defined]
    with _connect(addr) as s:
        s.sendall(b"".join(encode_request(apis_data.API_VERSIONS, 3, cid, {}) for cid in range(20)))
        cids = []
        for _ in range(20):
            frame = _recv_frame(s)
            assert frame is not None
            cids.append(struct.unpack(">i", frame[:4])[0])
    assert cids == list(range(20))


def test_kafka_python_admin(kafka_node: Node) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_node.kafka)  # type: ignore[attr-defined]
    try:
        admin.create_topics([NewTopic("adm", 2, 1, topic_configs={"retention.ms": "3600000"})])
        assert "adm" in admin.list_topics()
        admin.create_partitions({"adm": NewPartitions(4)})
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "adm")])
        configs = next(iter(res.values()))["adm"]  # {type: {name: {key: data}}}: the overrides
        assert set(configs) == {"retention.ms"}, res
        assert "3600000" in str(configs["retention.ms"]), res
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "adm", {"retention.ms": "7200000"})])
        with kafka_node.admin() as sluice_admin:
            desc = sluice_admin.describe_topic("adm")
            assert len(desc["partitions"]) == 4 and desc["overrides"] == {"retention.ms": "7200000"}
        admin.delete_topics(["adm"])
        wait_until(lambda: "adm" not in admin.list_topics(), 20, "the topic to go")
    finally:
        admin.close()


def test_kcat_balanced_group_of_two(kafka_node: Node) -> None:
    """Two `kcat -G` members share the partitions; every record is read, and the
    group's commits are Sluice's (``describe_group``)."""
    kcat, addr = _kcat(), kafka_node.kafka  # type: ignore[attr-defined]
    with kafka_node.admin() as admin:
        admin.create_topic("shared", partitions=4)
    lines = "".join(f"{i}:v{i}\n" for i in range(400))
    subprocess.run([kcat, "-b", addr, "-P", "-t", "shared", "-K:"], input=lines, text=True, check=True, timeout=30)
    cmd = [kcat, "-b", addr, "-G", "pair", "shared", "-q", "-e", "-o", "beginning"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    try:
        for p in procs:
            out, _err = p.communicate(timeout=60)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert set("".join(outs).split()) == {f"v{i}" for i in range(400)}
    with kafka_node.admin() as admin:
        desc = admin.describe_group("pair")
    assert sum(p["committed_offset"] for p in desc["partitions"]) == 400
