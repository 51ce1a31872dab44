"""Kafka's consumer-group APIs as Sluice serves them (docs/kafka.md): FindCoordinator,
JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups,
DescribeGroups, DeleteGroups; and the "consumer" protocol's member metadata and
assignment (``ConsumerProtocolSubscription`` / ``ConsumerProtocolAssignment``), which
Kafka's broker treats as opaque bytes and Sluice reads: its coordinator assigns."""

from __future__ import annotations

from typing import Any

from ipc.kafka.schema import Api, arr, decode, encode, f
from ipc.kafka.wire import Reader, Writer

STRS = arr("string")
I32S = arr("int32")

FIND_COORDINATOR = Api(
    10,
    "FindCoordinator",
    0,
    4,
    3,
    request=(
        f("key", "string", "0-3"),
        f("key_type", "int8", "1+"),
        f("coordinator_keys", STRS, "4+"),
    ),
    response=(
        f("throttle_time_ms", "int32", "1+"),
        f("error_code", "int16", "0-3"),
        f("error_message", "string", "1-3", null="1-3"),
        f("node_id", "int32", "0-3", default=-1),
        f("host", "string", "0-3"),
        f("port", "int32", "0-3", default=-1),
        f(
            "coordinators",
            (
                f("key", "string"),
                f("node_id", "int32", default=-1),
                f("host", "string"),
                f("port", "int32", default=-1),
                f("error_code", "int16"),
                f("error_message", "string", null="0+"),
            ),
            "4+",
        ),
    ),
)

JOIN_GROUP = Api(
    11,
    "JoinGroup",
    0,
    9,
    6,
    request=(
        f("group_id", "string"),
        f("session_timeout_ms", "int32"),
        f("rebalance_timeout_ms", "int32", "1+", default=-1),
        f("member_id", "string"),
        f("group_instance_id", "string", "5+", null="5+"),
        f("protocol_type", "string"),
        f("protocols", (f("name", "string"), f("metadata", "bytes"))),
        f("reason", "string", "8+", null="8+"),
    ),
    response=(
        f("throttle_time_ms", "int32", "2+"),
        f("error_code", "int16"),
        f("generation_id", "int32", default=-1),
        f("protocol_type", "string", "7+", null="7+"),
        f("protocol_name", "string", null="7+"),
        f("leader", "string"),
        f("skip_assignment", "bool", "9+"),
        f("member_id", "string"),
        f(
            "members",
            (f("member_id", "string"), f("group_instance_id", "string", "5+", null="5+"), f("metadata", "bytes")),
        ),
    ),
)

SYNC_GROUP = Api(
    14,
    "SyncGroup",
    0,
    5,
    4,
    request=(
        f("group_id", "string"),
        f("generation_id", "int32"),
        f("member_id", "string"),
        f("group_instance_id", "string", "3+", null="3+"),
        f("protocol_type", "string", "5+", null="5+"),
        f("protocol_name", "string", "5+", null="5+"),
        f("assignments", (f("member_id", "string"), f("assignment", "bytes"))),
    ),
    response=(
        f("throttle_time_ms", "int32", "1+"),
        f("error_code", "int16"),
        f("protocol_type", "string", "5+", null="5+"),
        f("protocol_name", "string", "5+", null="5+"),
        f("assignment", "bytes"),
    ),
)

HEARTBEAT = Api(
    12,
    "Heartbeat",
    0,
    4,
    4,
    request=(
        f("group_id", "string"),
        f("generation_id", "int32"),
        f("member_id", "string"),
        f("group_instance_id", "string", "3+", null="3+"),
    ),
    response=(f("throttle_time_ms", "int32", "1+"), f("error_code", "int16")),
)

LEAVE_GROUP = Api(
    13,
    "LeaveGroup",
    0,
    5,
    4,
    request=(
        f("group_id", "string"),
        f("member_id", "string", "0-2"),
        f(
            "members",
            (
                f("member_id", "string"),
                f("group_instance_id", "string", null="0+"),
                f("reason", "string", "5+", null="5+"),
            ),
            "3+",
        ),
    ),
    response=(
        f("throttle_time_ms", "int32", "1+"),
        f("error_code", "int16"),
        f(
            "members",
            (f("member_id", "string"), f("group_instance_id", "string", null="0+"), f("error_code", "int16")),
            "3+",
        ),
    ),
)

OFFSET_COMMIT = Api(
    8,
    "OffsetCommit",
    0,
    8,
    8,
    request=(
        f("group_id", "string"),
        f("generation_id", "int32", "1+", default=-1),
        f("member_id", "string", "1+"),
        f("group_instance_id", "string", "7+", null="7+"),
        f("retention_time_ms", "int64", "2-4", default=-1),
        f(
            "topics",
            (
                f("name", "string"),
                f(
                    "partitions",
                    (
                        f("partition_index", "int32"),
                        f("committed_offset", "int64"),
                        f("committed_leader_epoch", "int32", "6+", default=-1),
                        f("commit_timestamp", "int64", "1", default=-1),
                        f("committed_metadata", "string", null="0+"),
                    ),
                ),
            ),
        ),
    ),
    response=(
        f("throttle_time_ms", "int32", "3+"),
        f("topics", (f("name", "string"), f("partitions", (f("partition_index", "int32"), f("error_code", "int16"))))),
    ),
)

OFFSET_FETCH = Api(
    9,
    "OffsetFetch",
    0,
    7,
    6,
    request=(
        f("group_id", "string"),
        f("topics", (f("name", "string"), f("partition_indexes", I32S)), null="2+"),
        f("require_stable", "bool", "7+"),
    ),
    response=(
        f("throttle_time_ms", "int32", "3+"),
        f(
            "topics",
            (
                f("name", "string"),
                f(
                    "partitions",
                    (
                        f("partition_index", "int32"),
                        f("committed_offset", "int64", default=-1),
                        f("committed_leader_epoch", "int32", "5+", default=-1),
                        f("metadata", "string", null="0+"),
                        f("error_code", "int16"),
                    ),
                ),
            ),
        ),
        f("error_code", "int16", "2+"),
    ),
)

LIST_GROUPS = Api(
    16,
    "ListGroups",
    0,
    4,
    3,
    request=(f("states_filter", STRS, "4+"),),
    response=(
        f("throttle_time_ms", "int32", "1+"),
        f("error_code", "int16"),
        f("groups", (f("group_id", "string"), f("protocol_type", "string"), f("group_state", "string", "4+"))),
    ),
)

DESCRIBE_GROUPS = Api(
    15,
    "DescribeGroups",
    0,
    5,
    5,
    request=(f("groups", STRS), f("include_authorized_operations", "bool", "3+")),
    response=(
        f("throttle_time_ms", "int32", "1+"),
        f(
            "groups",
            (
                f("error_code", "int16"),
                f("group_id", "string"),
                f("group_state", "string"),
                f("protocol_type", "string"),
                f("protocol_data", "string"),
                f(
                    "members",
                    (
                        f("member_id", "string"),
                        f("group_instance_id", "string", "4+", null="4+"),
                        f("client_id", "string"),
                        f("client_host", "string"),
                        f("member_metadata", "bytes"),
                        f("member_assignment", "bytes"),
                    ),
                ),
                f("authorized_operations", "int32", "3+", default=-2147483648),
            ),
        ),
    ),
)

DELETE_GROUPS = Api(
    42,
    "DeleteGroups",
    0,
    2,
    2,
    request=(f("groups_names", STRS),),
    response=(
        f("throttle_time_ms", "int32"),
        f("results", (f("group_id", "string"), f("error_code", "int16"))),
    ),
)

# ---- the "consumer" protocol's bytes (never flexible) --------------------------------------
_TOPIC_PARTITIONS = (f("topic", "string"), f("partitions", I32S))
SUBSCRIPTION = (
    f("topics", STRS),
    f("user_data", "bytes", null="0+"),
    f("owned_partitions", _TOPIC_PARTITIONS, "1+"),
    f("generation_id", "int32", "2+", default=-1),
    f("rack_id", "string", "3+", null="3+"),
)
ASSIGNMENT = (f("assigned_partitions", _TOPIC_PARTITIONS), f("user_data", "bytes", null="0+"))


def decode_subscription(data: bytes | memoryview) -> dict[str, Any]:
    """A member's ``ConsumerProtocolSubscription``; a later version than 3 is read as
    far as version 3 goes (Kafka only ever appends fields)."""
    r = Reader(data)
    version = r.int16()
    return decode(SUBSCRIPTION, r, max(0, min(version, 3)), False)


def encode_subscription(topics: list[str], owned: list[tuple[str, list[int]]] | None = None) -> bytes:
    w = Writer()
    w.int16(1)
    encode(SUBSCRIPTION, w, 1, False, {"topics": topics, "owned_partitions": _grouped(owned or [])})
    return w.getvalue()


def decode_assignment(data: bytes | memoryview) -> dict[str, Any]:
    r = Reader(data)
    version = r.int16()
    return decode(ASSIGNMENT, r, max(0, min(version, 1)), False)


def encode_assignment(partitions: list[tuple[str, list[int]]]) -> bytes:
    w = Writer()
    w.int16(0)
    encode(ASSIGNMENT, w, 0, False, {"assigned_partitions": _grouped(partitions)})
    return w.getvalue()


def _grouped(items: list[tuple[str, list[int]]]) -> list[dict[str, Any]]:
    return [{"topic": t, "partitions": sorted(ps)} for t, ps in items]
