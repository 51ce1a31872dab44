"""ACLs on Kafka's model: the authorizer, and which actions each request needs.

This module is the one to import: it re-exports the ACL vocabulary (bindings,
filters, enums, ``select`` / ``delete_matching``) from ``ipc/acl_bindings.py``, where
bindings are defined and validated and where it is written down when a binding
*applies* to an action. See docs/security.md.

The decision for one action (principal, host, resource type, name, operation) follows
Kafka's ``StandardAuthorizer``, over the bindings that apply to it:

1. authorizer disabled: allowed;
2. ``CLUSTER_ACTION`` (replica fetches, ``alter_isr``): allowed to ``Node:N``
   principals only, never to a user, super users included; no ACL can grant it;
3. a super user, or a ``Node:N`` principal (one of the cluster's own nodes): allowed;
4. a DENY binding applies: denied, whatever ALLOW bindings say;
5. an ALLOW binding applies (implied operations included): allowed;
6. otherwise denied.

Which actions a request needs is one table, ``REQUIRED`` (``required(api, fields)``),
with an entry for every API: an API without one is refused, never allowed.
``Authorizer.authorize`` checks the actions in order and raises the typed error
(TOPIC_/GROUP_/CLUSTER_AUTHORIZATION_FAILED) for the first refused. Two actions have
an alternative, as in Kafka: CREATE on a topic is also granted by CREATE on the
cluster; IDEMPOTENT_WRITE on the cluster (``init_producer_id``) also by any ALLOW of
WRITE (or ALL) on some topic for the principal, unless a DENY of WRITE (or ALL) on the
literal topic ``*`` covers it (simpler than Kafka's ``authorizeByResourceType``, which
also weighs prefixed and literal denials against each allow).

``Authorizer.allowed`` is on the hot path (every produce and fetch): bindings are
indexed by resource type, then by literal name and by prefix, and decisions are
cached in a dict of at most ``CACHE_SIZE`` entries (oldest evicted first), emptied by
``replace``. ``replace`` swaps whole objects, so a reader in another thread sees the
old set or the new one, never a mix. Hosts are compared in canonical form
(``ipaddress``), as bindings keep them.

Pure logic: no sockets, no I/O.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ipc.acl_bindings import (
    ALLOWED_BY,
    CLUSTER_NAME,
    DENIED_BY,
    OPERATIONS,
    WILDCARD,
    WILDCARD_PRINCIPAL,
    AclBinding,
    AclFilter,
    Operation,
    PatternFilter,
    PatternType,
    Permission,
    ResourceType,
    canonical_host,
    check_principal,
    delete_matching,
    parse_enum,
    select,
)
from ipc.errors import (
    AuthorizationError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    InvalidRequestError,
    TopicAuthorizationFailedError,
)

__all__ = [
    "CLUSTER_NAME",
    "OPERATIONS",
    "REQUIRED",
    "WILDCARD",
    "WILDCARD_PRINCIPAL",
    "AclBinding",
    "AclFilter",
    "Action",
    "Authorizer",
    "Operation",
    "PatternFilter",
    "PatternType",
    "Permission",
    "ResourceType",
    "canonical_host",
    "check_principal",
    "delete_matching",
    "parse_enum",
    "refusal",
    "required",
    "select",
]

log = logging.getLogger(__name__)

CACHE_SIZE = 10_000  # decisions kept per Authorizer

# ---- what each request needs ---------------------------------------------------------------
Action = tuple[ResourceType, str, Operation]
_CLUSTER = ResourceType.CLUSTER
_TOPIC = ResourceType.TOPIC
_GROUP = ResourceType.GROUP


def _on_cluster(op: Operation) -> Callable[[Mapping[str, Any]], list[Action]]:
    return lambda f: [(_CLUSTER, CLUSTER_NAME, op)]


def _on_topic(*ops: Operation) -> Callable[[Mapping[str, Any]], list[Action]]:
    return lambda f: [(_TOPIC, f["topic"], op) for op in ops]


def _on_group(op: Operation) -> Callable[[Mapping[str, Any]], list[Action]]:
    return lambda f: [(_GROUP, f["group"], op)]


def _fetch(f: Mapping[str, Any]) -> list[Action]:
    if f.get("replica_id", -1) >= 0:  # a follower replica's fetch
        return [(_CLUSTER, CLUSTER_NAME, Operation.CLUSTER_ACTION)]
    return [(_TOPIC, f["topic"], Operation.READ)]


def _alter_topic(f: Mapping[str, Any]) -> list[Action]:
    actions: list[Action] = []
    if f.get("config") or f.get("partitions") is None:
        actions.append((_TOPIC, f["topic"], Operation.ALTER_CONFIGS))
    if f.get("partitions") is not None:  # adding partitions is Kafka's CreatePartitions: ALTER
        actions.append((_TOPIC, f["topic"], Operation.ALTER))
    return actions


def _offset_commit(f: Mapping[str, Any]) -> list[Action]:
    topics = dict.fromkeys(o["topic"] for o in f.get("offsets") or ())
    return [(_GROUP, f["group"], Operation.READ), *((_TOPIC, t, Operation.READ) for t in topics)]


def _offset_fetch(f: Mapping[str, Any]) -> list[Action]:
    topics = dict.fromkeys(tp[0] for tp in f.get("partitions") or ())
    return [(_GROUP, f["group"], Operation.DESCRIBE), *((_TOPIC, t, Operation.DESCRIBE) for t in topics)]


def _nothing(f: Mapping[str, Any]) -> list[Action]:
    return []


# Every API (ipc/protocol.py SCHEMAS, and the ACL and quota admin APIs): the actions it
# needs, checked in this order. An API missing here is refused, never allowed.
REQUIRED: dict[str, Callable[[Mapping[str, Any]], list[Action]]] = {
    # partition workers
    "produce": _on_topic(Operation.WRITE),
    "fetch": _fetch,
    "list_offsets": _on_topic(Operation.DESCRIBE),
    "delete_records": _on_topic(Operation.DELETE),  # as Kafka's DeleteRecords
    "same_host_open": _on_topic(Operation.DESCRIBE),  # then each request over its rings, as over TCP
    # topics: metadata and list_topics filter by DESCRIBE in the handler (may_describe),
    # and metadata's auto-creation needs may_create_topic
    "metadata": _nothing,
    "list_topics": _nothing,
    "create_topic": _on_topic(Operation.CREATE),  # or CREATE on the cluster (Authorizer._permits)
    "delete_topic": _on_topic(Operation.DELETE),
    "describe_topic": _on_topic(Operation.DESCRIBE, Operation.DESCRIBE_CONFIGS),
    "alter_topic": _alter_topic,
    # cluster
    "status": _on_cluster(Operation.DESCRIBE),
    "cluster_status": _on_cluster(Operation.DESCRIBE),
    "init_producer_id": _on_cluster(Operation.IDEMPOTENT_WRITE),  # or WRITE on some topic
    "alter_isr": _on_cluster(Operation.CLUSTER_ACTION),
    "reassign": _on_cluster(Operation.ALTER),
    # consumer groups
    "find_coordinator": _on_group(Operation.DESCRIBE),
    "join_group": _on_group(Operation.READ),
    "sync_group": _on_group(Operation.READ),
    "heartbeat": _on_group(Operation.READ),
    "leave_group": _on_group(Operation.READ),
    "offset_commit": _offset_commit,
    "offset_fetch": _offset_fetch,
    "list_groups": _on_cluster(Operation.DESCRIBE),
    "describe_group": _on_group(Operation.DESCRIBE),
    "delete_group": _on_group(Operation.DELETE),
    # ACL and quota administration
    "create_acls": _on_cluster(Operation.ALTER),
    "delete_acls": _on_cluster(Operation.ALTER),
    "describe_acls": _on_cluster(Operation.DESCRIBE),
    "set_quota": _on_cluster(Operation.ALTER_CONFIGS),
    "describe_quotas": _on_cluster(Operation.DESCRIBE_CONFIGS),
    # connectors (as Kafka Connect's REST API would be guarded): reading DESCRIBE, changing ALTER
    "connect": lambda f: [
        (_CLUSTER, CLUSTER_NAME, Operation.DESCRIBE if f["action"] in ("list", "status") else Operation.ALTER)
    ],
}


def required(api: str, fields: Mapping[str, Any]) -> list[Action]:
    """The actions a request needs (fields as ``parse_request`` validated them)."""
    rule = REQUIRED.get(api)
    if rule is None:
        raise InvalidRequestError(f"api {api!r} has no ACL rule: refused")
    return rule(fields)


_ERRORS: dict[ResourceType, type[AuthorizationError]] = {
    ResourceType.TOPIC: TopicAuthorizationFailedError,
    ResourceType.GROUP: GroupAuthorizationFailedError,
    ResourceType.CLUSTER: ClusterAuthorizationFailedError,
}


def refusal(principal: str, action: Action) -> AuthorizationError:
    """The typed error for a refused action: ``User:bob may not Write topic 'orders'``."""
    resource_type, name, op = action
    return _ERRORS[resource_type](f"{principal} may not {op.kafka_name} {resource_type.value} {name!r}")


# ---- the authorizer ------------------------------------------------------------------------
class _Index:
    """The bindings of one resource type, by literal name and by prefix."""

    __slots__ = ("literal", "prefixed", "prefix_lengths")

    def __init__(self, acls: Iterable[AclBinding]) -> None:
        self.literal: dict[str, list[AclBinding]] = {}
        self.prefixed: dict[str, list[AclBinding]] = {}
        for b in acls:
            table = self.literal if b.pattern_type is PatternType.LITERAL else self.prefixed
            table.setdefault(b.resource_name, []).append(b)
        self.prefix_lengths = sorted({len(p) for p in self.prefixed})

    def candidates(self, name: str) -> list[AclBinding]:
        """Every binding whose pattern covers ``name``."""
        found = list(self.literal.get(name, ()))
        if name != WILDCARD:
            found.extend(self.literal.get(WILDCARD, ()))
        for n in self.prefix_lengths:
            if n > len(name):
                break
            found.extend(self.prefixed.get(name[:n], ()))
        return found


_CacheKey = tuple[str, str, ResourceType, str, Operation]


class Authorizer:
    """Decides whether a principal may act on a resource (module docstring)."""

    def __init__(self, acls: Iterable[AclBinding] = (), super_users: Iterable[str] = (), enabled: bool = False) -> None:
        self.enabled = enabled
        self.super_users = frozenset(check_principal(p, "super_users") for p in super_users)
        self.replace(acls)

    @property
    def acls(self) -> tuple[AclBinding, ...]:
        return self._acls

    def replace(self, acls: Iterable[AclBinding]) -> None:
        """Swap the whole set of bindings (a refresh from the coordinator); clears the cache."""
        acls = tuple(dict.fromkeys(acls))  # duplicates dropped, order kept
        index = {rt: _Index(b for b in acls if b.resource_type is rt) for rt in ResourceType}
        self._acls = acls
        self._index = index
        self._cache: dict[_CacheKey, bool] = {}
        self._cache_topic_write: dict[tuple[str, str], bool] = {}

    def allowed(self, principal: str, host: str, resource_type: ResourceType, name: str, operation: Operation) -> bool:
        """May ``principal`` from ``host`` do ``operation`` on the resource? (hot path)"""
        if not self.enabled:
            return True
        key = (principal, host, resource_type, name, operation)
        cache = self._cache
        decision = cache.get(key)
        if decision is None:
            decision = self._decide(key)
            if len(cache) >= CACHE_SIZE:
                del cache[next(iter(cache))]  # the oldest decision
            cache[key] = decision
        return decision

    def _decide(self, key: _CacheKey) -> bool:
        principal, host, resource_type, name, operation = key
        is_node = principal.startswith("Node:")
        if operation is Operation.CLUSTER_ACTION:  # the cluster's own nodes only, whatever the ACLs
            return is_node
        if is_node or principal in self.super_users:
            return True
        host = _canonical_or_same(host)
        bindings = [
            b
            for b in self._index[resource_type].candidates(name)
            if b.principal in (principal, WILDCARD_PRINCIPAL) and b.host in (host, WILDCARD)
        ]
        deny_ops, allow_ops = DENIED_BY[operation], ALLOWED_BY[operation]
        if any(b.permission is Permission.DENY and b.operation in deny_ops for b in bindings):
            return False
        return any(b.permission is Permission.ALLOW and b.operation in allow_ops for b in bindings)

    def may_describe(self, principal: str, host: str, topic: str) -> bool:
        """May the principal see ``topic`` (in metadata and list_topics)?"""
        return self.allowed(principal, host, ResourceType.TOPIC, topic, Operation.DESCRIBE)

    def may_create_topic(self, principal: str, host: str, topic: str) -> bool:
        """CREATE on the topic or on the cluster (create_topic, metadata's auto-creation)."""
        return self.allowed(principal, host, ResourceType.CLUSTER, CLUSTER_NAME, Operation.CREATE) or self.allowed(
            principal, host, ResourceType.TOPIC, topic, Operation.CREATE
        )

    def may_write_some_topic(self, principal: str, host: str) -> bool:
        """An ALLOW of WRITE (or ALL) on any topic for the principal, unless a DENY of
        WRITE (or ALL) on every topic (literal ``*``) covers it: init_producer_id's
        alternative to IDEMPOTENT_WRITE (simpler than Kafka's authorizeByResourceType,
        which also weighs prefixed denials against each allow)."""
        if not self.enabled:
            return True
        key = (principal, host)
        decision = self._cache_topic_write.get(key)
        if decision is None:
            if principal in self.super_users or principal.startswith("Node:"):
                decision = True
            else:
                canon = _canonical_or_same(host)
                ops = DENIED_BY[Operation.WRITE]
                mine = [
                    b
                    for b in self._acls
                    if b.resource_type is ResourceType.TOPIC
                    and b.operation in ops
                    and b.principal in (principal, WILDCARD_PRINCIPAL)
                    and b.host in (canon, WILDCARD)
                ]
                denied_everywhere = any(
                    b.permission is Permission.DENY
                    and b.pattern_type is PatternType.LITERAL
                    and b.resource_name == WILDCARD
                    for b in mine
                )
                decision = not denied_everywhere and any(b.permission is Permission.ALLOW for b in mine)
            if len(self._cache_topic_write) >= CACHE_SIZE:
                self._cache_topic_write.clear()
            self._cache_topic_write[key] = decision
        return decision

    def _permits(self, principal: str, host: str, action: Action) -> bool:
        resource_type, name, op = action
        if self.allowed(principal, host, resource_type, name, op):
            return True
        if resource_type is ResourceType.TOPIC and op is Operation.CREATE:
            return self.allowed(principal, host, ResourceType.CLUSTER, CLUSTER_NAME, Operation.CREATE)
        if resource_type is ResourceType.CLUSTER and op is Operation.IDEMPOTENT_WRITE:
            return self.may_write_some_topic(principal, host)
        return False

    def authorize(self, principal: str, host: str, api: str, fields: Mapping[str, Any]) -> None:
        """Raise the typed authorization error for the first action of the request that
        ``principal`` may not do (InvalidRequestError for an API without a rule)."""
        actions = required(api, fields)
        if not self.enabled:
            return
        for action in actions:
            if not self._permits(principal, host, action):
                log.debug("refused %s from %s: %s %s", principal, host, api, action)
                raise refusal(principal, action)


def _canonical_or_same(host: str) -> str:
    """A client's address in the form bindings keep (``::1``); unparsable: as given."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
