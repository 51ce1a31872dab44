"""DeleteRecords (issue 19) against a real node: ``Admin.delete_records``, ``sluice topics
delete-records``, Kafka's DeleteRecords through the Kafka listener with confluent-kafka's
``AdminClient.delete_records``, a restart, and the ACL it needs (DELETE on the topic)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipc.client import Consumer, Producer, TopicPartition
from ipc.errors import OffsetOutOfRangeError, TopicAuthorizationFailedError, UnknownTopicOrPartitionError
from tests.integration.conftest import REPO, SLUICE, Node, free_port, wait_until
from tests.integration.security_support import KeyRing
from tests.integration.test_security import Secured, acl, eventually

TOPIC = "trimmed"
TIMEOUT_S = 60


@pytest.fixture
def kafka_node(node_factory: Callable[..., Node]) -> Node:
    port = free_port()
    n = node_factory(kafka_listen=f"127.0.0.1:{port}", offsets_topic_partitions=1)
    n.kafka = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    n.start()
    from tests.integration.test_kafka_listener import _api_versions

    wait_until(lambda: _api_versions(n.kafka) is not None, 20, "the Kafka listener")  # type: ignore[attr-defined]
    return n


def produce(node: Node, topic: str, partition: int, count: int, start: int = 0) -> None:
    p = Producer(node.bootstrap, acks="all")
    try:
        futures = [p.send(topic, b"v%d" % i, partition=partition) for i in range(start, start + count)]
        p.flush(30)
        for f in futures:
            f.get(30)
    finally:
        p.close()


def read_from_beginning(node: Node, topic: str, partition: int, count: int) -> list[tuple[int, bytes | None]]:
    """``count`` records of the partition from its beginning (offset and value)."""
    c = Consumer(node.bootstrap, auto_offset_reset="earliest")
    got: list[tuple[int, bytes | None]] = []
    try:
        c.assign([TopicPartition(topic, partition)])
        c.seek_to_beginning()
        for _ in range(300):  # bounded: each poll waits at most 100 ms
            got.extend((r.offset, r.value) for r in c.poll(100))
            if len(got) >= count:
                break
        beginning = c.beginning_offsets([TopicPartition(topic, partition)])[TopicPartition(topic, partition)]
    finally:
        c.close()
    assert len(got) == count, f"read {len(got)} of {count}"
    return [(beginning, None), *got]


def sluice(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLUICE_BOOTSTRAP", None)
    return subprocess.run(
        [*SLUICE, *args, "--bootstrap", node.bootstrap],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        cwd=str(node.base),
    )


def test_delete_records_through_every_front_door_and_a_restart(kafka_node: Node, tmp_path: Path) -> None:
    node = kafka_node
    with node.admin() as admin:
        admin.create_topic(TOPIC, partitions=2)
    produce(node, TOPIC, 0, 100)
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)

    # the client: 40 becomes the log start offset of partition 0; -1 (the high watermark) of the empty one
    with node.admin() as admin:
        assert admin.delete_records({tp0: 40, tp1: -1}) == {tp0: 40, tp1: 0}
        assert admin.list_offsets({tp0: "earliest"})[tp0] == 40
        # bad input: clear errors, per partition where the node answers, before sending where it cannot be right
        with pytest.raises(ValueError, match="offset -2 for trimmed-0 is not an offset >= 0 or -1"):
            admin.delete_records({tp0: -2})
        got = admin.delete_records({tp0: 101, TopicPartition(TOPIC, 7): 1, TopicPartition("nosuch", 0): 1})
        assert isinstance(got[tp0], OffsetOutOfRangeError) and "past the high watermark 100" in str(got[tp0])
        assert isinstance(got[TopicPartition(TOPIC, 7)], UnknownTopicOrPartitionError)
        assert "has 2 partition(s)" in str(got[TopicPartition(TOPIC, 7)])
        assert isinstance(got[TopicPartition("nosuch", 0)], UnknownTopicOrPartitionError)
        assert "nosuch" not in admin.list_topics()  # never created
    records = read_from_beginning(node, TOPIC, 0, 60)
    assert records[0] == (40, None)  # beginning_offsets
    assert records[1:] == [(i, b"v%d" % i) for i in range(40, 100)]

    # the CLI, as kafka-delete-records: a topic and offset, or the JSON file; errors exit 1
    out = sluice(node, "topics", "delete-records", TOPIC, "--partition", "0", "--offset", "50")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "Records delete operation completed:",
        f"partition: {TOPIC}-0\tlow_watermark: 50",
    ]
    plan = tmp_path / "offsets.json"
    plan.write_text(json.dumps({"partitions": [{"topic": TOPIC, "partition": 9, "offset": 3}], "version": 1}))
    out = sluice(node, "topics", "delete-records", "--offset-json-file", str(plan))
    assert out.returncode == 1 and f"partition: {TOPIC}-9\terror: UNKNOWN_TOPIC_OR_PARTITION" in out.stdout, out
    out = sluice(node, "topics", "delete-records", TOPIC, "--offset", "-3")
    assert out.returncode == 1 and "is not an offset >= 0 or -1 (the high watermark)" in out.stderr, out
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr

    # a restart keeps the log start offset (its checkpoint)
    assert node.stop() == 0
    node.start()
    records = read_from_beginning(node, TOPIC, 0, 50)
    assert records[0] == (50, None) and records[1] == (50, b"v50")

    # Kafka's DeleteRecords through the listener, with confluent-kafka's admin client
    from confluent_kafka import TopicPartition as KafkaTP
    from confluent_kafka.admin import AdminClient

    kadmin = AdminClient({"bootstrap.servers": node.kafka})  # type: ignore[attr-defined]
    futures = kadmin.delete_records([KafkaTP(TOPIC, 0, 70)], request_timeout=30)
    (deleted,) = [f.result(30) for f in futures.values()]
    assert deleted.low_watermark == 70
    futures = kadmin.delete_records([KafkaTP(TOPIC, 0, 500)], request_timeout=30)
    with pytest.raises(Exception, match="OFFSET_OUT_OF_RANGE"):
        next(iter(futures.values())).result(30)
    with node.admin() as admin:
        assert admin.list_offsets({tp0: "earliest"})[tp0] == 70


# ---- the ACL: DELETE on the topic ------------------------------------------------------------
@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    ring = KeyRing.generate(tmp_path, users=["admin", "u-del"], nodes=[0])
    authorized = ring.authorize(tmp_path / "authorized", ["node-0", "admin", "u-del"])
    security = ring.security_table(0, authorized, authorizer="acl", super_users=["User:admin"])
    node = Node(tmp_path, node_id=0, security=security)
    node.client_security = ring.client("admin")
    try:
        node.start()
        yield Secured(node, ring, authorized)
    finally:
        with contextlib.suppress(Exception):
            node.status()
        node.kill_all()
        shutil.rmtree(os.path.dirname(node.status_path), ignore_errors=True)
        print(f"--- secured node log tail ---\n{node.log_tail(60)}")


def test_delete_records_needs_delete_on_the_topic(secured: Secured) -> None:
    t, who = secured.topic("acl-trim", records=5), "User:u-del"
    tp = TopicPartition(t, 0)
    secured.grant(acl(who, "topic", t, "describe"), acl(who, "topic", t, "read"))
    with secured.admin("u-del") as a:
        got = eventually(lambda: _refused_or_raise(a.delete_records({tp: 3})), "u-del's ACLs")
        assert isinstance(got, TopicAuthorizationFailedError) and "may not Delete" in str(got), got
    with secured.admin() as a:
        assert a.list_offsets({tp: "earliest"})[tp] == 0
    secured.grant(acl(who, "topic", t, "delete"))
    with secured.admin("u-del") as a:
        assert eventually(lambda: _ok_or_raise(a.delete_records({tp: 3})), "DELETE to be granted") == {tp: 3}


def _refused_or_raise(result: dict[TopicPartition, Any]) -> Any:
    (value,) = result.values()
    if not isinstance(value, TopicAuthorizationFailedError):
        raise AssertionError(f"not refused yet: {value!r}")
    return value


def _ok_or_raise(result: dict[TopicPartition, Any]) -> Any:
    for value in result.values():
        if not isinstance(value, int):
            raise AssertionError(f"not allowed yet: {value!r}")
    return result


def test_list_offsets_sees_nothing_below(kafka_node: Node) -> None:
    """-1 at the high watermark: everything goes, a consumer from the beginning reads the new records only."""
    with kafka_node.admin() as admin:
        admin.create_topic("all-gone")
    produce(kafka_node, "all-gone", 0, 10)
    tp = TopicPartition("all-gone", 0)
    with kafka_node.admin() as admin:
        assert admin.delete_records({tp: -1}) == {tp: 10}
    produce(kafka_node, "all-gone", 0, 2, start=10)
    assert read_from_beginning(kafka_node, "all-gone", 0, 2) == [(10, None), (10, b"v10"), (11, b"v11")]
    wait_until(lambda: kafka_node.partition("all-gone", 0)["log_start_offset"] == 10, 10, "the status table")


def test_kafka_delete_records_on_the_wire_versions_and_bad_input(kafka_node: Node) -> None:
    """DeleteRecords v0 and v2 (flexible) as raw frames: ApiVersions lists it, and each
    partition gets its own answer: a low watermark, or Kafka's error code."""
    from ipc.kafka import apis_admin
    from ipc.kafka.protocol import decode_response, encode_request
    from tests.integration.test_kafka_listener import _api_versions, _connect, _recv_frame

    versions = wait_until(lambda: _api_versions(kafka_node.kafka), 20, "ApiVersions")  # type: ignore[attr-defined]
    assert {"api_key": 21, "min_version": 0, "max_version": 2} in versions["api_keys"]
    with kafka_node.admin() as admin:
        admin.create_topic("wire", partitions=1)
    produce(kafka_node, "wire", 0, 10)
    api = apis_admin.DELETE_RECORDS
    with _connect(kafka_node.kafka) as s:  # type: ignore[attr-defined]
        for cid, (version, offset, want) in enumerate([(0, 3, 3), (2, -1, 10), (1, 4, 10)], start=1):
            body = {"topics": [{"name": "wire", "partitions": [{"partition_index": 0, "offset": offset}]}]}
            s.sendall(encode_request(api, version, cid, {**body, "timeout_ms": 5000}))
            frame = _recv_frame(s)
            assert frame is not None
            got_cid, answer = decode_response(api, version, frame)
            (part,) = answer["topics"][0]["partitions"]
            assert (got_cid, part["error_code"], part["low_watermark"]) == (cid, 0, want), answer
        bad = {
            "topics": [
                {
                    "name": "wire",
                    "partitions": [{"partition_index": 0, "offset": -5}, {"partition_index": 9, "offset": 1}],
                },
                {"name": "nosuch", "partitions": [{"partition_index": 0, "offset": 1}]},
                {"name": "wire", "partitions": [{"partition_index": 0, "offset": 11}]},
            ],
            "timeout_ms": 5000,
        }
        s.sendall(encode_request(api, 2, 9, bad))
        frame = _recv_frame(s)
        assert frame is not None
        _, answer = decode_response(api, 2, frame)
    codes = [[(p["partition_index"], p["error_code"]) for p in t["partitions"]] for t in answer["topics"]]
    assert codes == [[(0, 1), (9, 3)], [(0, 3)], [(0, 1)]], (
        answer
    )  # OFFSET_OUT_OF_RANGE 1, UNKNOWN_TOPIC_OR_PARTITION 3
    with kafka_node.admin() as admin:
        assert "nosuch" not in admin.list_topics()
