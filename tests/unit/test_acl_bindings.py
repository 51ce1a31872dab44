"""ACL bindings and filters (ipc/acl_bindings.py, imported through ipc/acl.py): parsing,
validation, JSON, and the describe / delete semantics of filters."""

from __future__ import annotations

from typing import Any

import pytest

from ipc.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    Operation,
    PatternFilter,
    PatternType,
    Permission,
    ResourceType,
    delete_matching,
    parse_enum,
    select,
)
from ipc.errors import InvalidRequestError


def binding(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "principal": "User:alice",
        "resource_type": "topic",
        "resource_name": "orders",
        "pattern_type": "literal",
        "operation": "read",
        "permission": "allow",
        "host": "*",
    }
    d.update(overrides)
    return d


def acl(**overrides: Any) -> AclBinding:
    return AclBinding.from_json(binding(**overrides))


# ---- parsing and JSON ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, op",
    [
        ("read", Operation.READ),
        ("Read", Operation.READ),
        ("READ", Operation.READ),
        ("describe_configs", Operation.DESCRIBE_CONFIGS),
        ("DescribeConfigs", Operation.DESCRIBE_CONFIGS),
        ("DESCRIBE_CONFIGS", Operation.DESCRIBE_CONFIGS),
        ("describe-configs", Operation.DESCRIBE_CONFIGS),
        ("IdempotentWrite", Operation.IDEMPOTENT_WRITE),
        ("cluster_action", Operation.CLUSTER_ACTION),
        ("All", Operation.ALL),
    ],
)
def test_operations_parse_case_insensitively(text: str, op: Operation) -> None:
    assert parse_enum(Operation, "operation", text) is op


def test_kafka_names_for_messages() -> None:
    assert Operation.DESCRIBE_CONFIGS.kafka_name == "DescribeConfigs"
    assert Operation.WRITE.kafka_name == "Write"
    assert Operation.CLUSTER_ACTION.kafka_name == "ClusterAction"


def test_round_trip_and_wire_spelling() -> None:
    b = acl(operation="AlterConfigs", permission="DENY", resource_type="Topic", pattern_type="PREFIXED")
    assert b.to_json() == binding(operation="alter_configs", permission="deny", pattern_type="prefixed")
    assert AclBinding.from_json(b.to_json()) == b
    assert hash(AclBinding.from_json(b.to_json())) == hash(b)


def test_host_defaults_to_any_and_is_kept_canonical() -> None:
    d = binding()
    del d["host"]
    assert AclBinding.from_json(d).host == "*"
    assert acl(host="0:0:0:0:0:0:0:1").host == "::1"
    assert acl(host="10.0.0.7").host == "10.0.0.7"


def test_a_binding_made_in_code_is_checked_too() -> None:
    with pytest.raises(InvalidRequestError, match="principal"):
        AclBinding("alice", ResourceType.TOPIC, "orders", PatternType.LITERAL, Operation.READ, Permission.ALLOW)
    with pytest.raises(InvalidRequestError, match="operation"):
        AclBinding("User:a", ResourceType.TOPIC, "orders", PatternType.LITERAL, "read", Permission.ALLOW)  # type: ignore[arg-type]


def test_cluster_and_wildcards_are_valid() -> None:
    assert acl(resource_type="cluster", resource_name=CLUSTER_NAME, operation="alter").resource_name == CLUSTER_NAME
    assert acl(resource_name="*").resource_name == "*"
    assert acl(principal="User:*").principal == "User:*"
    assert acl(resource_type="group", resource_name="*", operation="describe").resource_type is ResourceType.GROUP
    assert acl(pattern_type="prefixed", resource_name=".").resource_name == "."  # a prefix, not a topic name
    assert acl(principal="Node:3").principal == "Node:3"


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"principal": "alice"}, ["principal", "alice", "TYPE:NAME"]),
        ({"principal": "Group:x"}, ["principal", "Group"]),
        ({"principal": "User:"}, ["principal", "name"]),
        ({"principal": "Node:two"}, ["principal", "Node:<node id>"]),
        ({"principal": 7}, ["principal", "7"]),
        ({"resource_type": "transactional_id"}, ["resource_type", "transactional_id", "topic, group, cluster"]),
        ({"pattern_type": "match"}, ["pattern_type", "match"]),
        ({"operation": "fly"}, ["operation", "fly"]),
        ({"permission": "maybe"}, ["permission", "maybe", "allow, deny"]),
        ({"host": "example.com"}, ["host", "example.com", "IP address"]),
        ({"host": 5}, ["host"]),
        ({"resource_name": "bad name"}, ["resource_name", "bad name"]),
        ({"resource_name": ".."}, ["resource_name", "reserved"]),
        ({"resource_name": "x" * 250}, ["resource_name"]),
        ({"resource_name": 3}, ["resource_name"]),
        ({"resource_name": "*", "pattern_type": "prefixed"}, ["resource_name", "literal"]),
        ({"resource_name": "a/b", "pattern_type": "prefixed"}, ["resource_name", "a/b"]),
        ({"resource_type": "group", "resource_name": ""}, ["resource_name", "group"]),
        (
            {"resource_type": "cluster", "resource_name": "prod", "operation": "alter"},
            ["resource_name", "kafka-cluster"],
        ),
        (
            {
                "resource_type": "cluster",
                "resource_name": CLUSTER_NAME,
                "pattern_type": "prefixed",
                "operation": "alter",
            },
            ["kafka-cluster", "prefixed"],
        ),
        ({"resource_type": "group", "resource_name": "g", "operation": "write"}, ["operation", "write", "group"]),
        ({"operation": "idempotent_write"}, ["operation", "idempotent_write", "topic"]),
        (
            {"resource_type": "cluster", "resource_name": CLUSTER_NAME, "operation": "cluster_action"},
            ["cluster_action", "User:alice", "Node"],
        ),
    ],
)
def test_from_json_names_the_bad_field_and_value(overrides: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(InvalidRequestError) as info:
        AclBinding.from_json(binding(**overrides))
    for word in words:
        assert word in info.value.message


def test_from_json_refuses_missing_and_unknown_fields_and_non_objects() -> None:
    d = binding()
    del d["operation"]
    with pytest.raises(InvalidRequestError, match="'operation'"):
        AclBinding.from_json(d)
    with pytest.raises(InvalidRequestError, match="'permision'"):
        AclBinding.from_json({**binding(), "permision": "allow"})
    with pytest.raises(InvalidRequestError, match="JSON object"):
        AclBinding.from_json(["User:alice"])


def test_cluster_action_to_a_deny_user_is_refused_too() -> None:
    with pytest.raises(InvalidRequestError, match="cluster_action"):
        acl(resource_type="cluster", resource_name=CLUSTER_NAME, operation="ClusterAction", permission="deny")


# ---- filters -------------------------------------------------------------------------------
ACLS = [
    acl(),  # alice read orders (literal)
    acl(resource_name="*", operation="describe"),  # alice describe every topic
    acl(resource_name="ord", pattern_type="prefixed", principal="User:bob", operation="write"),
    acl(resource_name="orders", principal="User:*", permission="deny", host="10.0.0.9"),
    acl(resource_name="pay", pattern_type="prefixed"),
    acl(resource_type="group", resource_name="orders", operation="read"),
    acl(resource_type="cluster", resource_name=CLUSTER_NAME, operation="alter"),
]


def test_empty_filter_matches_everything() -> None:
    assert select(ACLS, AclFilter()) == ACLS
    assert select(ACLS, AclFilter.from_json({})) == ACLS


def test_filter_fields_are_exact_matches() -> None:
    assert select(ACLS, AclFilter(principal="User:bob")) == [ACLS[2]]
    # a filter for User:* selects the bindings written for User:*, not every principal
    assert select(ACLS, AclFilter(principal="User:*")) == [ACLS[3]]
    assert select(ACLS, AclFilter(host="10.0.0.9")) == [ACLS[3]]
    assert select(ACLS, AclFilter(permission=Permission.DENY)) == [ACLS[3]]
    assert select(ACLS, AclFilter(operation=Operation.WRITE)) == [ACLS[2]]
    assert select(ACLS, AclFilter(resource_type=ResourceType.CLUSTER)) == [ACLS[6]]
    assert select(ACLS, AclFilter(resource_type=ResourceType.GROUP, resource_name="orders")) == [ACLS[5]]


def test_filter_pattern_types() -> None:
    topic = ResourceType.TOPIC
    # literal / prefixed: that pattern type, and the exact name if given
    assert select(ACLS, AclFilter(pattern_type=PatternFilter.PREFIXED)) == [ACLS[2], ACLS[4]]
    assert select(ACLS, AclFilter(resource_type=topic, pattern_type=PatternFilter.LITERAL, resource_name="orders")) == [
        ACLS[0],
        ACLS[3],
    ]
    # any (or None): either pattern type, exact name
    assert select(ACLS, AclFilter(resource_name="ord", pattern_type=PatternFilter.ANY)) == [ACLS[2]]
    assert select(ACLS, AclFilter(resource_name="ord")) == [ACLS[2]]
    # match: every binding that applies to the literal name: equal, "*" and its prefixes
    match = AclFilter(resource_type=topic, resource_name="orders", pattern_type=PatternFilter.MATCH)
    assert select(ACLS, match) == [ACLS[0], ACLS[1], ACLS[2], ACLS[3]]
    payments = AclFilter(resource_type=topic, resource_name="payments", pattern_type=PatternFilter.MATCH)
    assert select(ACLS, payments) == [ACLS[1], ACLS[4]]
    # match without a name: every binding of the type
    assert len(select(ACLS, AclFilter(resource_type=topic, pattern_type=PatternFilter.MATCH))) == 5


def test_filter_json_round_trip_and_any() -> None:
    f = AclFilter.from_json(
        {
            "principal": "User:bob",
            "resource_type": "any",
            "resource_name": "orders",
            "pattern_type": "Match",
            "operation": "ANY",
            "permission": None,
            "host": "0:0::1",
        }
    )
    assert f == AclFilter(principal="User:bob", resource_name="orders", pattern_type=PatternFilter.MATCH, host="::1")
    assert AclFilter.from_json(f.to_json()) == f
    assert AclFilter.from_json({"pattern_type": "any"}).pattern_type is PatternFilter.ANY


@pytest.mark.parametrize(
    "d, word",
    [
        ({"principal": "bob"}, "principal"),
        ({"host": "somewhere"}, "host"),
        ({"operation": "fly"}, "operation"),
        ({"pattern_type": "regex"}, "pattern_type"),
        ({"resource_name": ""}, "resource_name"),
        ({"resource": "orders"}, "'resource'"),
    ],
)
def test_filter_from_json_refuses_bad_fields(d: dict[str, Any], word: str) -> None:
    with pytest.raises(InvalidRequestError, match=word):
        AclFilter.from_json(d)


def test_delete_matching_returns_what_remains_and_what_each_filter_deleted() -> None:
    by_bob = AclFilter(principal="User:bob")
    on_orders = AclFilter(resource_type=ResourceType.TOPIC, resource_name="orders", pattern_type=PatternFilter.MATCH)
    nothing = AclFilter(principal="User:nobody")
    remaining, deleted = delete_matching(ACLS, [by_bob, on_orders, nothing])
    assert deleted == [[ACLS[2]], [ACLS[0], ACLS[1], ACLS[2], ACLS[3]], []]
    assert remaining == [ACLS[4], ACLS[5], ACLS[6]]
    remaining, deleted = delete_matching(ACLS, [])
    assert remaining == ACLS and deleted == []
