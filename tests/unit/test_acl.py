"""The authorizer (ipc/acl.py): Kafka's decision rules, and the action table of
every API, each denied without its ACL and allowed with it."""

from __future__ import annotations

from typing import Any

import pytest

import ipc.acl
from ipc.acl import CLUSTER_NAME, REQUIRED, AclBinding, Authorizer, Operation, ResourceType, required
from ipc.errors import (
    AuthorizationError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    InvalidRequestError,
    TopicAuthorizationFailedError,
)
from ipc.protocol import SCHEMAS, encode_request, parse_request

T, G, C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
ADMIN_APIS = {"create_acls", "delete_acls", "describe_acls", "set_quota", "describe_quotas"}
BOB, HOST = "User:bob", "10.0.0.5"


def allow(
    rt: ResourceType,
    name: str,
    op: str,
    principal: str = BOB,
    pattern: str = "literal",
    host: str = "*",
    permission: str = "allow",
) -> AclBinding:
    return AclBinding.from_json(
        {
            "principal": principal,
            "resource_type": rt.value,
            "resource_name": name,
            "pattern_type": pattern,
            "operation": op,
            "permission": permission,
            "host": host,
        }
    )


def deny(rt: ResourceType, name: str, op: str, **kw: Any) -> AclBinding:
    return allow(rt, name, op, permission="deny", **kw)


def on(*acls: AclBinding, super_users: tuple[str, ...] = ()) -> Authorizer:
    return Authorizer(acls, super_users=super_users, enabled=True)


def topic_ok(a: Authorizer, op: Operation, name: str = "orders", principal: str = BOB, host: str = HOST) -> bool:
    return a.allowed(principal, host, T, name, op)


# ---- the table: every API denied without its ACLs, allowed with them -----------------------
# api -> (request fields, the ACLs that grant it, the error when refused)
OFFSETS = [
    {"topic": "orders", "partition": 0, "offset": 5},
    {"topic": "orders", "partition": 1, "offset": 7},
    {"topic": "payments", "partition": 0, "offset": 1},
]
TABLE: dict[str, tuple[dict[str, Any], list[AclBinding], type[AuthorizationError] | None]] = {
    "produce": ({"topic": "orders", "partition": 0}, [allow(T, "orders", "write")], TopicAuthorizationFailedError),
    "fetch": (
        {"topic": "orders", "partition": 0, "offset": 0},
        [allow(T, "orders", "read")],
        TopicAuthorizationFailedError,
    ),
    "list_offsets": (
        {"topic": "orders", "partition": 0, "timestamp": -1},
        [allow(T, "orders", "describe")],
        TopicAuthorizationFailedError,
    ),
    "same_host_open": (
        {"topic": "orders", "partition": 0, "pid": 4242},
        [allow(T, "orders", "describe")],
        TopicAuthorizationFailedError,
    ),
    "delete_records": (
        {"topic": "orders", "partition": 0, "offset": 5},
        [allow(T, "orders", "delete")],
        TopicAuthorizationFailedError,
    ),
    "metadata": ({"topics": ["orders"]}, [], None),
    "list_topics": ({}, [], None),
    "create_topic": (
        {"topic": "orders", "partitions": 3},
        [allow(T, "orders", "create")],
        TopicAuthorizationFailedError,
    ),
    "delete_topic": ({"topic": "orders"}, [allow(T, "orders", "delete")], TopicAuthorizationFailedError),
    "describe_topic": (
        {"topic": "orders"},
        [allow(T, "orders", "describe"), allow(T, "orders", "describe_configs")],
        TopicAuthorizationFailedError,
    ),
    "alter_topic": (
        {"topic": "orders", "config": {"retention.ms": 1000}, "partitions": 6},
        [allow(T, "orders", "alter_configs"), allow(T, "orders", "alter")],
        TopicAuthorizationFailedError,
    ),
    "status": ({}, [allow(C, CLUSTER_NAME, "describe")], ClusterAuthorizationFailedError),
    "cluster_status": ({}, [allow(C, CLUSTER_NAME, "describe")], ClusterAuthorizationFailedError),
    "init_producer_id": ({}, [allow(C, CLUSTER_NAME, "idempotent_write")], ClusterAuthorizationFailedError),
    "alter_isr": (
        {"topic": "orders", "partition": 0, "leader": 1, "leader_epoch": 2, "isr": {"1": 3}},
        [],  # no ACL can grant it: Node principals only (test_cluster_actions_are_for_nodes_only)
        ClusterAuthorizationFailedError,
    ),
    "reassign": (
        {"topic": "orders", "partition": 0, "replicas": [1, 2]},
        [allow(C, CLUSTER_NAME, "alter")],
        ClusterAuthorizationFailedError,
    ),
    "find_coordinator": ({"group": "billing"}, [allow(G, "billing", "describe")], GroupAuthorizationFailedError),
    "join_group": (
        {"group": "billing", "topics": ["orders"]},
        [allow(G, "billing", "read")],
        GroupAuthorizationFailedError,
    ),
    "sync_group": (
        {"group": "billing", "member_id": "m", "generation": 1},
        [allow(G, "billing", "read")],
        GroupAuthorizationFailedError,
    ),
    "heartbeat": (
        {"group": "billing", "member_id": "m", "generation": 1},
        [allow(G, "billing", "read")],
        GroupAuthorizationFailedError,
    ),
    "leave_group": (
        {"group": "billing", "member_id": "m"},
        [allow(G, "billing", "read")],
        GroupAuthorizationFailedError,
    ),
    "offset_commit": (
        {"group": "billing", "offsets": OFFSETS},
        [allow(G, "billing", "read"), allow(T, "orders", "read"), allow(T, "payments", "read")],
        GroupAuthorizationFailedError,
    ),
    "offset_fetch": (
        {"group": "billing", "partitions": [["orders", 0], ["payments", 2]]},
        [allow(G, "billing", "describe"), allow(T, "orders", "describe"), allow(T, "payments", "describe")],
        GroupAuthorizationFailedError,
    ),
    "list_groups": ({}, [allow(C, CLUSTER_NAME, "describe")], ClusterAuthorizationFailedError),
    "describe_group": ({"group": "billing"}, [allow(G, "billing", "describe")], GroupAuthorizationFailedError),
    "delete_group": ({"group": "billing"}, [allow(G, "billing", "delete")], GroupAuthorizationFailedError),
    "create_acls": (
        {"acls": [{"principal": "User:carol"}]},
        [allow(C, CLUSTER_NAME, "alter")],
        ClusterAuthorizationFailedError,
    ),
    "delete_acls": ({"filters": [{}]}, [allow(C, CLUSTER_NAME, "alter")], ClusterAuthorizationFailedError),
    "describe_acls": ({}, [allow(C, CLUSTER_NAME, "describe")], ClusterAuthorizationFailedError),
    "set_quota": ({}, [allow(C, CLUSTER_NAME, "alter_configs")], ClusterAuthorizationFailedError),
    "describe_quotas": ({}, [allow(C, CLUSTER_NAME, "describe_configs")], ClusterAuthorizationFailedError),
    "connect": ({"action": "pause", "name": "x"}, [allow(C, CLUSTER_NAME, "alter")], ClusterAuthorizationFailedError),
}


@pytest.mark.parametrize("action", ["list", "status", "create", "pause", "resume", "restart", "delete"])
def test_connect_reads_need_describe_changes_alter(action: str) -> None:
    f = parse_request([encode_request("connect", 1, action=action)]).fields
    describe = on(allow(C, CLUSTER_NAME, "describe"))
    if action in ("list", "status"):
        describe.authorize(BOB, HOST, "connect", f)
    else:
        with pytest.raises(ClusterAuthorizationFailedError):
            describe.authorize(BOB, HOST, "connect", f)
    on(allow(C, CLUSTER_NAME, "alter")).authorize(BOB, HOST, "connect", f)  # ALTER implies DESCRIBE


def fields(api: str) -> dict[str, Any]:
    """The request's fields as the pipeline hands them over (validated, defaults filled)."""
    given = TABLE[api][0]
    return parse_request([encode_request(api, 1, **given)]).fields if api in SCHEMAS else dict(given)


def test_every_api_has_a_rule_and_a_row_here() -> None:
    """A new API cannot be added without deciding which ACLs it needs."""
    assert set(REQUIRED) == set(SCHEMAS) | ADMIN_APIS
    assert set(TABLE) == set(REQUIRED)


@pytest.mark.parametrize("api", sorted(TABLE))
def test_denied_without_its_acls(api: str) -> None:
    _, grants, error = TABLE[api]
    if error is None:
        on().authorize(BOB, HOST, api, fields(api))  # nothing needed at dispatch
        return
    with pytest.raises(error) as info:
        on().authorize(BOB, HOST, api, fields(api))
    assert info.value.message.startswith("User:bob may not ")
    # each grant alone is not enough when the request needs several
    for i in range(len(grants)):
        with pytest.raises(AuthorizationError):
            on(*grants[:i], *grants[i + 1 :]).authorize(BOB, HOST, api, fields(api))


@pytest.mark.parametrize("api", sorted(api for api, (_, grants, _e) in TABLE.items() if grants))
def test_allowed_with_its_acls(api: str) -> None:
    _, grants, _ = TABLE[api]
    on(*grants).authorize(BOB, HOST, api, fields(api))
    # the same grants to another user do nothing for bob
    others = [allow(b.resource_type, b.resource_name, b.operation.value, principal="User:carol") for b in grants]
    with pytest.raises(AuthorizationError):
        on(*others).authorize(BOB, HOST, api, fields(api))


def test_refusal_names_principal_operation_and_resource() -> None:
    with pytest.raises(TopicAuthorizationFailedError) as info:
        on().authorize(BOB, HOST, "produce", fields("produce"))
    assert info.value.message == "User:bob may not Write topic 'orders'"
    assert info.value.code == "TOPIC_AUTHORIZATION_FAILED"
    with pytest.raises(ClusterAuthorizationFailedError, match="User:bob may not Alter cluster 'kafka-cluster'"):
        on().authorize(BOB, HOST, "reassign", fields("reassign"))


def test_offset_commit_names_the_refused_topic_and_checks_each_topic_once() -> None:
    assert required("offset_commit", fields("offset_commit")) == [
        (G, "billing", Operation.READ),
        (T, "orders", Operation.READ),
        (T, "payments", Operation.READ),
    ]
    a = on(allow(G, "billing", "read"), allow(T, "orders", "read"))
    with pytest.raises(TopicAuthorizationFailedError, match="User:bob may not Read topic 'payments'"):
        a.authorize(BOB, HOST, "offset_commit", fields("offset_commit"))


def test_offset_fetch_of_every_partition_needs_only_the_group() -> None:
    assert required("offset_fetch", {"group": "billing", "partitions": None}) == [(G, "billing", Operation.DESCRIBE)]


def test_alter_topic_needs_alter_configs_for_configs_and_alter_for_partitions() -> None:
    only_partitions = {"topic": "orders", "config": {}, "partitions": 6}
    assert required("alter_topic", only_partitions) == [(T, "orders", Operation.ALTER)]
    only_config = {"topic": "orders", "config": {"retention.ms": 1}, "partitions": None}
    assert required("alter_topic", only_config) == [(T, "orders", Operation.ALTER_CONFIGS)]
    on(allow(T, "orders", "alter")).authorize(BOB, HOST, "alter_topic", only_partitions)


def test_a_follower_fetch_is_a_cluster_action() -> None:
    replica = fields("fetch") | {"replica_id": 2, "replica_epoch": 7}
    assert required("fetch", replica) == [(C, CLUSTER_NAME, Operation.CLUSTER_ACTION)]
    with pytest.raises(ClusterAuthorizationFailedError, match="ClusterAction"):
        on(allow(T, "orders", "all"), allow(C, CLUSTER_NAME, "all")).authorize(BOB, HOST, "fetch", replica)
    on().authorize("Node:2", HOST, "fetch", replica)


def test_unknown_api_is_refused_even_when_disabled() -> None:
    with pytest.raises(InvalidRequestError, match="no_such_api"):
        Authorizer().authorize(BOB, HOST, "no_such_api", {})
    with pytest.raises(InvalidRequestError):
        required("no_such_api", {})


# ---- the decision rules --------------------------------------------------------------------
def test_disabled_allows_everything() -> None:
    a = Authorizer([deny(T, "orders", "all")])
    assert topic_ok(a, Operation.WRITE)
    assert a.allowed(BOB, HOST, C, CLUSTER_NAME, Operation.CLUSTER_ACTION)
    a.authorize(BOB, HOST, "alter_isr", fields("alter_isr"))
    assert a.may_describe(BOB, HOST, "orders") and a.may_create_topic(BOB, HOST, "orders")


def test_no_matching_acl_means_deny() -> None:
    a = on(allow(T, "payments", "write"))
    assert not topic_ok(a, Operation.WRITE)


def test_deny_overrides_allow() -> None:
    a = on(allow(T, "orders", "all"), deny(T, "orders", "write"))
    assert not topic_ok(a, Operation.WRITE)
    assert topic_ok(a, Operation.READ)
    # a DENY for everyone beats an ALLOW for bob; a prefixed DENY beats a literal ALLOW
    assert not topic_ok(on(allow(T, "orders", "read"), deny(T, "orders", "read", principal="User:*")), Operation.READ)
    assert not topic_ok(on(allow(T, "orders", "read"), deny(T, "ord", "read", pattern="prefixed")), Operation.READ)
    assert not topic_ok(on(allow(T, "orders", "read"), deny(T, "*", "all")), Operation.READ)


def test_prefixed_patterns() -> None:
    a = on(allow(T, "ord", "write", pattern="prefixed"), allow(T, "pay.eu.", "write", pattern="prefixed"))
    assert topic_ok(a, Operation.WRITE, "orders")
    assert topic_ok(a, Operation.WRITE, "ord")
    assert not topic_ok(a, Operation.WRITE, "or")
    assert not topic_ok(a, Operation.WRITE, "xorders")
    assert topic_ok(a, Operation.WRITE, "pay.eu.cards")
    assert not topic_ok(a, Operation.WRITE, "pay.us.cards")
    groups = on(allow(G, "team-a.", "read", pattern="prefixed"))
    assert groups.allowed(BOB, HOST, G, "team-a.billing", Operation.READ)
    assert not groups.allowed(BOB, HOST, G, "team-b.billing", Operation.READ)


def test_literal_wildcard_resource_and_any_user() -> None:
    a = on(allow(T, "*", "read"))
    assert topic_ok(a, Operation.READ, "orders") and topic_ok(a, Operation.READ, "anything")
    assert not a.allowed(BOB, HOST, G, "orders", Operation.READ)  # of its type only
    everyone = on(allow(T, "orders", "read", principal="User:*"))
    assert topic_ok(everyone, Operation.READ, principal="User:carol")
    assert topic_ok(everyone, Operation.READ, principal="User:ANONYMOUS")


def test_host_matching() -> None:
    a = on(allow(T, "orders", "read", host="10.0.0.5"), allow(T, "orders", "write", host="::1"))
    assert topic_ok(a, Operation.READ, host="10.0.0.5")
    assert not topic_ok(a, Operation.READ, host="10.0.0.6")
    assert topic_ok(a, Operation.WRITE, host="::1")
    assert topic_ok(a, Operation.WRITE, host="0:0:0:0:0:0:0:1")  # compared in canonical form
    assert not topic_ok(a, Operation.WRITE, host="127.0.0.1")
    denied_from_one = on(allow(T, "orders", "read"), deny(T, "orders", "read", host="10.0.0.6"))
    assert topic_ok(denied_from_one, Operation.READ, host="10.0.0.5")
    assert not topic_ok(denied_from_one, Operation.READ, host="10.0.0.6")


@pytest.mark.parametrize("granting", ["read", "write", "delete", "alter", "describe", "all"])
def test_describe_is_implied_by_read_write_delete_alter(granting: str) -> None:
    assert topic_ok(on(allow(T, "orders", granting)), Operation.DESCRIBE)


def test_implied_operations_only_as_kafka() -> None:
    assert topic_ok(on(allow(T, "orders", "alter_configs")), Operation.DESCRIBE_CONFIGS)
    assert not topic_ok(on(allow(T, "orders", "describe")), Operation.READ)
    assert not topic_ok(on(allow(T, "orders", "describe_configs")), Operation.ALTER_CONFIGS)
    assert not topic_ok(on(allow(T, "orders", "create")), Operation.DESCRIBE)
    assert not topic_ok(on(allow(T, "orders", "alter_configs")), Operation.DESCRIBE)
    assert not topic_ok(on(allow(T, "orders", "write")), Operation.READ)


def test_denials_are_never_implied() -> None:
    # Kafka: a DENY of READ does not deny DESCRIBE; only DENY of DESCRIBE (or ALL) does
    assert topic_ok(on(allow(T, "orders", "read"), deny(T, "orders", "read")), Operation.DESCRIBE)
    assert topic_ok(on(allow(T, "orders", "describe"), deny(T, "orders", "write")), Operation.DESCRIBE)
    assert not topic_ok(on(allow(T, "orders", "read"), deny(T, "orders", "describe")), Operation.DESCRIBE)
    assert not topic_ok(on(allow(T, "orders", "read"), deny(T, "orders", "all")), Operation.DESCRIBE)
    assert topic_ok(
        on(allow(T, "orders", "alter_configs"), deny(T, "orders", "alter_configs")), Operation.DESCRIBE_CONFIGS
    )


def test_super_users_may_do_everything_but_cluster_actions() -> None:
    a = on(deny(T, "orders", "all", principal="User:admin"), super_users=("User:admin",))
    for op in Operation:
        if op is not Operation.CLUSTER_ACTION:
            assert topic_ok(a, op, principal="User:admin")
            assert a.allowed("User:admin", HOST, C, CLUSTER_NAME, op)
    assert not a.allowed("User:admin", HOST, C, CLUSTER_NAME, Operation.CLUSTER_ACTION)
    assert not topic_ok(a, Operation.READ)  # bob is no super user
    with pytest.raises(InvalidRequestError, match="super_users"):
        Authorizer(super_users=["admin"])


def test_cluster_actions_are_for_nodes_only() -> None:
    a = on(allow(C, CLUSTER_NAME, "all"), allow(C, CLUSTER_NAME, "all", principal="User:*"))
    assert not a.allowed(BOB, HOST, C, CLUSTER_NAME, Operation.CLUSTER_ACTION)
    with pytest.raises(ClusterAuthorizationFailedError):
        a.authorize(BOB, HOST, "alter_isr", fields("alter_isr"))
    a.authorize("Node:1", HOST, "alter_isr", fields("alter_isr"))


def test_node_principals_may_do_everything() -> None:
    a = on(deny(T, "orders", "all", principal="User:*"), deny(T, "*", "all", principal="Node:2"))
    for op in Operation:
        assert topic_ok(a, op, principal="Node:2")
        assert a.allowed("Node:2", HOST, C, CLUSTER_NAME, op)
    for api in TABLE:
        a.authorize("Node:2", HOST, api, fields(api))


def test_create_topic_is_allowed_by_create_on_the_topic_or_the_cluster() -> None:
    by_cluster = on(allow(C, CLUSTER_NAME, "create"))
    by_cluster.authorize(BOB, HOST, "create_topic", fields("create_topic"))
    assert by_cluster.may_create_topic(BOB, HOST, "anything")
    by_prefix = on(allow(T, "ord", "create", pattern="prefixed"))
    assert by_prefix.may_create_topic(BOB, HOST, "orders")
    assert not by_prefix.may_create_topic(BOB, HOST, "payments")
    assert not on(allow(T, "orders", "write")).may_create_topic(BOB, HOST, "orders")


def test_may_describe_filters_topics() -> None:
    a = on(allow(T, "ord", "read", pattern="prefixed"), deny(T, "orders.secret", "describe"))
    visible = [t for t in ("orders", "orders.secret", "payments") if a.may_describe(BOB, HOST, t)]
    assert visible == ["orders"]


def test_init_producer_id_is_allowed_by_write_on_some_topic() -> None:
    api = "init_producer_id"
    on(allow(T, "orders", "write")).authorize(BOB, HOST, api, {})
    on(allow(T, "ord", "all", pattern="prefixed")).authorize(BOB, HOST, api, {})
    on(allow(T, "orders", "write", principal="User:*")).authorize(BOB, HOST, api, {})
    # as Kafka: the alternative holds even when IDEMPOTENT_WRITE itself is denied
    on(allow(T, "orders", "write"), deny(C, CLUSTER_NAME, "idempotent_write")).authorize(BOB, HOST, api, {})
    for refused in (
        on(allow(T, "orders", "read")),
        on(allow(T, "orders", "write", principal="User:carol")),
        on(allow(T, "orders", "write", host="10.9.9.9")),
        on(allow(T, "orders", "write"), deny(T, "*", "write")),
    ):
        with pytest.raises(ClusterAuthorizationFailedError, match="IdempotentWrite"):
            refused.authorize(BOB, HOST, api, {})


def test_replace_swaps_the_set_and_clears_the_cache() -> None:
    a = on(allow(T, "orders", "write"))
    assert topic_ok(a, Operation.WRITE)
    a.authorize(BOB, HOST, "init_producer_id", {})
    a.replace([deny(T, "orders", "write"), deny(T, "orders", "write")])
    assert not topic_ok(a, Operation.WRITE)
    assert len(a.acls) == 1  # duplicates dropped
    with pytest.raises(ClusterAuthorizationFailedError):
        a.authorize(BOB, HOST, "init_producer_id", {})
    a.replace([allow(T, "orders", "write")])
    assert topic_ok(a, Operation.WRITE)


def test_the_decision_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipc.acl, "CACHE_SIZE", 50)
    a = on(allow(T, "t", "read", pattern="prefixed"))
    for i in range(200):
        assert topic_ok(a, Operation.READ, name=f"t{i}")
        assert not topic_ok(a, Operation.READ, name=f"x{i}")
    assert len(a._cache) <= 50
    assert topic_ok(a, Operation.READ, name="t0")  # evicted decisions are made again, the same


def test_many_bindings_are_indexed_by_name_and_prefix() -> None:
    acls = [allow(T, f"t{i}", "read", principal=f"User:u{i}") for i in range(500)]
    acls += [allow(T, f"p{i}.", "write", principal="User:w", pattern="prefixed") for i in range(500)]
    a = on(*acls)
    assert a.allowed("User:u7", HOST, T, "t7", Operation.READ)
    assert not a.allowed("User:u7", HOST, T, "t8", Operation.READ)
    assert a.allowed("User:w", HOST, T, "p499.x", Operation.WRITE)
    assert not a.allowed("User:w", HOST, T, "p500.x", Operation.WRITE)
