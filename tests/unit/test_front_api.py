"""The front endpoint's topic, node and cluster APIs (appliance/front.py), driven through
its request pipeline by a fake node (tests/unit/fake_node.py): no socket, no process.

Metadata (known, auto-created, unknown, invalid, internal topics), create_topic answered
once its partitions serve or REQUEST_TIMED_OUT at the deadline (the node's clock is the
test's), the refusals of create / delete / alter, describe and alter of a topic's
configuration, and replies dropped once the node stops.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.children import ChildState
from appliance.front import ADMIN_TIMEOUT_S, FrontApi
from appliance.groups.offsets import OFFSETS_TOPIC
from appliance.nodeview import NodeState
from ipc.protocol import FRONT_APIS, Reply
from tests.unit.fake_node import PEER, FakeNode, message

_ids = itertools.count(1)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNode]:
    n = FakeNode(tmp_path, max_partitions=16, auto_create_topics=True)  # off by default: these tests cover it on
    yield n
    n.close()


@pytest.fixture
def api(node: FakeNode) -> FrontApi:
    return FrontApi(node)


def call(api: FrontApi, name: str, **fields: Any) -> tuple[int, Reply | None]:
    """Serve one request; its correlation id and its reply if it was answered at once."""
    cid = next(_ids)
    api.serve(message(name, cid, **fields))
    node: FakeNode = api.node  # type: ignore[assignment]
    return cid, node.front.replies().get(cid)


def answer(api: FrontApi, name: str, **fields: Any) -> Reply:
    _, reply = call(api, name, **fields)
    assert reply is not None, f"{name} was not answered at once"
    return reply


def error_code(reply: Reply | None) -> str:
    assert reply is not None and reply.error is not None, reply
    return reply.error.code


def create(api: FrontApi, node: FakeNode, topic: str, partitions: int = 1, **fields: Any) -> None:
    """Create a topic and make every partition serve; the deferred reply is then sent."""
    cid, reply = call(api, "create_topic", topic=topic, partitions=partitions, **fields)
    assert reply is None
    for p in range(partitions):
        node.serve(topic, p)
    api.on_replica_ready()
    done = node.front.replies()[cid]
    assert done.error is None and done.fields == {"topic": topic}


def test_every_front_api_has_one_handler(api: FrontApi) -> None:
    assert frozenset(api.handlers()) == FRONT_APIS


def test_replies_go_to_the_requesting_peer(api: FrontApi, node: FakeNode) -> None:
    answer(api, "list_topics")
    assert [peer for peer, _ in node.front.sent] == [PEER]


# =========================================================================== metadata


def test_metadata_of_a_known_topic(api: FrontApi, node: FakeNode) -> None:
    create(api, node, "orders", partitions=2)
    endpoint = node.coordinator.endpoints()[0]["orders/1"]
    reply = answer(api, "metadata", topics=["orders"])
    assert reply.error is None
    assert reply.fields["node_id"] == 0 and reply.fields["controller"] == 0
    assert reply.fields["brokers"] == [{"node_id": 0, "endpoint": node.config.advertised}]
    (topic,) = reply.fields["topics"]
    assert topic["topic"] == "orders" and topic["error"] is None
    p1 = topic["partitions"][1]
    assert p1 == {
        "partition": 1,
        "leader": 0,
        "leader_epoch": 0,
        "replicas": [0],
        "isr": [0],
        "endpoint": endpoint,
        "error": None,
    }


def test_metadata_auto_creates_a_named_topic(api: FrontApi, node: FakeNode) -> None:
    reply = answer(api, "metadata", topics=["fresh"])
    assert "fresh" in node.coordinator.topics() and node.reconciles == 1
    assert node.replica("fresh", 0) is not None  # the node starts its worker
    (topic,) = reply.fields["topics"]
    assert topic["error"] is None
    (p0,) = topic["partitions"]  # default_partitions = 1
    assert p0["endpoint"] is None
    assert p0["error"]["code"] == "LEADER_NOT_AVAILABLE" and "node 0 is starting it" in p0["error"]["message"]


def test_metadata_reports_an_offline_leader(api: FrontApi, node: FakeNode) -> None:
    answer(api, "metadata", topics=["t"])
    replica = node.replica("t", 0)
    assert replica is not None
    replica.state = ChildState.OFFLINE
    (topic,) = answer(api, "metadata", topics=["t"]).fields["topics"]
    assert "offline after repeated crashes" in topic["partitions"][0]["error"]["message"]


def test_metadata_of_an_unknown_topic_without_auto_create(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)  # auto_create_topics is off by default
    try:
        reply = answer(FrontApi(node), "metadata", topics=["nope"])
    finally:
        node.close()
    (topic,) = reply.fields["topics"]
    assert topic["error"]["code"] == "UNKNOWN_TOPIC_OR_PARTITION" and topic["partitions"] == []
    assert node.coordinator.topics() == {} and node.reconciles == 0


def test_metadata_asked_not_to_create_does_not(api: FrontApi, node: FakeNode) -> None:
    """A consumer's metadata (``allow_auto_create`` false) never creates a topic."""
    (topic,) = answer(api, "metadata", topics=["nope"], allow_auto_create=False).fields["topics"]
    assert topic["error"]["code"] == "UNKNOWN_TOPIC_OR_PARTITION" and topic["partitions"] == []
    assert "nope" not in node.coordinator.topics() and node.reconciles == 0


def test_metadata_creates_at_most_the_per_request_bound(tmp_path: Path) -> None:
    """300 unknown names: auto_create_topics_per_request are created, the rest are
    answered UNKNOWN_TOPIC_OR_PARTITION and not created."""
    node = FakeNode(tmp_path, max_partitions=400, auto_create_topics=True, auto_create_topics_per_request=3)
    try:
        names = [f"t{i}" for i in range(300)]
        topics = answer(FrontApi(node), "metadata", topics=names).fields["topics"]
    finally:
        node.close()
    assert set(node.coordinator.topics()) == {"t0", "t1", "t2"}
    assert [t["error"] for t in topics[:3]] == [None] * 3
    refused = topics[3:]
    assert len(refused) == 297 and all(t["error"]["code"] == "UNKNOWN_TOPIC_OR_PARTITION" for t in refused)
    assert "auto_create_topics_per_request=3" in refused[0]["error"]["message"]


def test_metadata_never_auto_creates_an_internal_topic(api: FrontApi, node: FakeNode) -> None:
    (topic,) = answer(api, "metadata", topics=["__secret"]).fields["topics"]
    assert topic["error"]["code"] == "UNKNOWN_TOPIC_OR_PARTITION"
    assert node.coordinator.topics() == {}


def test_metadata_of_an_invalid_topic_name(api: FrontApi, node: FakeNode) -> None:
    reply = answer(api, "metadata", topics=["bad name!", "ok"])
    bad, good = reply.fields["topics"]
    assert bad["error"]["code"] == "INVALID_CONFIG" and "is invalid" in bad["error"]["message"]
    assert good["error"] is None  # the other topics are answered (and "ok" auto-created)
    assert set(node.coordinator.topics()) == {"ok"}


def test_internal_topics_are_listed_only_when_asked_for(api: FrontApi, node: FakeNode) -> None:
    create(api, node, "t")
    api.tick(node.now)  # the group coordinator creates __consumer_offsets
    assert OFFSETS_TOPIC in node.coordinator.topics()
    assert [t["topic"] for t in answer(api, "metadata").fields["topics"]] == ["t"]
    assert answer(api, "list_topics").fields["topics"] == ["t"]
    assert answer(api, "list_topics", internal=True).fields["topics"] == [OFFSETS_TOPIC, "t"]
    (internal,) = answer(api, "metadata", topics=[OFFSETS_TOPIC]).fields["topics"]
    assert internal["error"] is None and len(internal["partitions"]) == node.config.offsets_topic_partitions


# =========================================================================== create_topic


def test_create_topic_is_answered_once_every_partition_serves(api: FrontApi, node: FakeNode) -> None:
    cid, reply = call(api, "create_topic", topic="t", partitions=2, config={"retention.ms": 1000})
    assert reply is None and node.reconciles == 1
    info = node.coordinator.topics()["t"]
    assert len(info.partitions) == 2 and info.config == {"retention.ms": 1000}
    node.serve("t", 0)
    api.on_replica_ready()
    assert cid not in node.front.replies()
    node.serve("t", 1)
    api.on_replica_ready()
    done = node.front.replies()[cid]
    assert done.error is None and done.fields == {"topic": "t"}
    api.tick(node.now)  # answered once
    node.front.replies()


def test_create_topic_times_out_at_its_deadline(api: FrontApi, node: FakeNode) -> None:
    cid, reply = call(api, "create_topic", topic="t", partitions=1)
    assert reply is None
    node.now += ADMIN_TIMEOUT_S - 0.1
    api.tick(node.now)
    assert cid not in node.front.replies()
    node.now += 0.2
    api.tick(node.now)
    timed_out = node.front.replies()[cid]
    assert error_code(timed_out) == "REQUEST_TIMED_OUT"
    assert "not serving after 25 s" in timed_out.error.message  # type: ignore[union-attr]
    assert "t" in node.coordinator.topics()  # the topic stays
    node.serve("t", 0)
    api.on_replica_ready()
    node.front.replies()  # and nothing more is sent for it


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"partitions": 17}, "POLICY_VIOLATION"),  # 17 replicas, 16 free slots
        ({"partitions": 1, "replication_factor": 2}, "INVALID_REPLICATION_FACTOR"),  # one live node
        ({"partitions": 1, "config": {"no.such.option": 1}}, "INVALID_CONFIG"),
        ({"partitions": 1, "config": {"segment.bytes": 10}}, "INVALID_CONFIG"),
        ({"partitions": 1, "topic": "__mine"}, "POLICY_VIOLATION"),  # the node's own name space
    ],
)
def test_create_topic_refusals_write_nothing(api: FrontApi, node: FakeNode, fields: dict[str, Any], code: str) -> None:
    _, reply = call(api, "create_topic", **{"topic": "t", **fields})
    assert error_code(reply) == code
    assert node.coordinator.topics() == {} and node.reconciles == 0


def test_create_topic_twice(api: FrontApi, node: FakeNode) -> None:
    create(api, node, "t")
    _, reply = call(api, "create_topic", topic="t", partitions=1)
    assert error_code(reply) == "TOPIC_ALREADY_EXISTS"


# =========================================================================== delete_topic


def test_delete_topic_refuses_internal_topics(api: FrontApi, node: FakeNode) -> None:
    api.tick(node.now)
    assert OFFSETS_TOPIC in node.coordinator.topics()
    _, reply = call(api, "delete_topic", topic=OFFSETS_TOPIC)
    assert error_code(reply) == "POLICY_VIOLATION" and "internal" in reply.error.message  # type: ignore[union-attr]
    assert OFFSETS_TOPIC in node.coordinator.topics()


def test_delete_topic(api: FrontApi, node: FakeNode) -> None:
    _, reply = call(api, "delete_topic", topic="t")
    assert error_code(reply) == "UNKNOWN_TOPIC_OR_PARTITION"
    create(api, node, "t")
    before = node.reconciles
    assert answer(api, "delete_topic", topic="t").fields == {"topic": "t"}
    assert "t" not in node.coordinator.topics()
    assert node.reconciles == before + 1 and node.replica("t", 0) is None


# =========================================================================== describe / alter


def test_describe_topic(api: FrontApi, node: FakeNode) -> None:
    create(api, node, "t", config={"retention.ms": 1000})
    reply = answer(api, "describe_topic", topic="t")
    f = reply.fields
    assert f["topic"] == "t" and f["replication_factor"] == 1
    assert f["overrides"] == {"retention.ms": 1000}
    assert f["config"]["retention.ms"] == 1000 and f["config"]["cleanup.policy"] == "delete"
    (p0,) = f["partitions"]
    assert p0["state"] == "serving" and p0["endpoint"] == node.coordinator.endpoints()[0]["t/0"]
    assert {"pid", "restarts", "log_end_offset", "high_watermark", "size_bytes"} <= set(p0)
    _, missing = call(api, "describe_topic", topic="nope")
    assert error_code(missing) == "UNKNOWN_TOPIC_OR_PARTITION"


def test_alter_topic_config_sets_and_resets_options(api: FrontApi, node: FakeNode) -> None:
    create(api, node, "t", config={"retention.ms": 1000})
    reply = answer(api, "alter_topic", topic="t", config={"segment.bytes": 4096, "retention.ms": ""})
    assert reply.error is None and reply.fields == {"topic": "t"}  # every partition serves: at once
    assert node.coordinator.topics()["t"].config == {"segment.bytes": 4096}
    f = answer(api, "describe_topic", topic="t").fields
    assert f["overrides"] == {"segment.bytes": 4096} and f["config"]["segment.bytes"] == 4096


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"config": {"no.such.option": ""}}, "unknown topic option"),
        ({"config": {"segment.bytes": 1}}, "segment.bytes"),
        ({"partitions": 1}, "partitions can only be added"),
    ],
)
def test_alter_topic_refusals_change_nothing(api: FrontApi, node: FakeNode, fields: dict[str, Any], why: str) -> None:
    create(api, node, "t", partitions=2, config={"retention.ms": 1000})
    _, reply = call(api, "alter_topic", topic="t", **fields)
    assert error_code(reply) == "INVALID_CONFIG" and why in reply.error.message  # type: ignore[union-attr]
    info = node.coordinator.topics()["t"]
    assert info.config == {"retention.ms": 1000} and len(info.partitions) == 2


def test_alter_topic_adding_partitions_is_answered_once_they_serve(api: FrontApi, node: FakeNode) -> None:
    create(api, node, "t")
    cid, reply = call(api, "alter_topic", topic="t", partitions=3)
    assert reply is None and len(node.coordinator.topics()["t"].partitions) == 3
    node.serve("t", 1)
    node.serve("t", 2)
    api.tick(node.now)
    assert node.front.replies()[cid].fields == {"topic": "t"}


# =========================================================================== node and cluster


def test_status_and_cluster_status(api: FrontApi, node: FakeNode) -> None:
    create(api, node, "t")
    status = answer(api, "status").fields
    assert status["state"] == "running" and "data_dir" not in status  # no paths, no pids to a remote client
    assert "supervisor_pid" not in status and all("pid" not in p for p in status["partitions"])
    assert status["listen"] == node.config.advertised
    cluster = answer(api, "cluster_status").fields
    assert cluster["controller"] == 0 and [n["node_id"] for n in cluster["nodes"]] == [0]
    (p0,) = [p for p in cluster["partitions"] if p["topic"] == "t"]
    assert not p0["under_replicated"] and not p0["offline"]


def test_init_producer_id_hands_out_new_ids(api: FrontApi) -> None:
    first = answer(api, "init_producer_id").fields
    second = answer(api, "init_producer_id").fields
    assert second["producer_id"] == first["producer_id"] + 1 and first["producer_epoch"] == 0


def test_malformed_requests_are_answered_by_the_pipeline(api: FrontApi, node: FakeNode) -> None:
    api.serve([PEER, b"{not json"])
    api.serve(message("produce", 9, topic="t", partition=0))
    (_, not_json), (_, worker_api) = node.front.sent
    assert error_code(not_json) == "INVALID_REQUEST" and not_json.id == 0
    assert error_code(worker_api) == "INVALID_REQUEST" and "not served by this endpoint" in worker_api.error.message  # type: ignore[union-attr]


def test_replies_are_dropped_once_the_node_stops(api: FrontApi, node: FakeNode) -> None:
    cid, reply = call(api, "create_topic", topic="t", partitions=1)
    assert reply is None
    node.state = NodeState.STOPPING
    node.serve("t", 0)
    api.on_replica_ready()
    answer_to_nobody = call(api, "list_topics")
    assert node.front.sent == [] and answer_to_nobody[1] is None
