"""Access control lists on Kafka's model: bindings, filters and their JSON form.

An ACL binding says: *principal* P, from *host* H, is allowed (or denied) *operation*
O on the resources of one *type* whose name matches a *pattern*::

    User:alice  *  ALLOW  write  topic  prefixed "orders."

A binding *applies* to an action (principal, host, resource type, name, operation)
when its principal is the one asking or ``User:*``; its host is the client's address
or ``*``; its resource pattern is the literal name, the literal ``*`` (every resource
of the type) or a prefix of the name (``prefixed``); and its operation is the one
asked or ``ALL``. An ALLOW of READ, WRITE, DELETE or ALTER also allows DESCRIBE, and
an ALLOW of ALTER_CONFIGS also allows DESCRIBE_CONFIGS (``ALLOWED_BY``). Denials are
never implied (``DENIED_BY``): a DENY of READ does not deny DESCRIBE (only a DENY of
DESCRIBE or ALL does), exactly as in Kafka. How the bindings that apply make a
decision is ``ipc/acl.py``, which re-exports everything here.

Every binding is checked when it is made, however it is made (``__post_init__``):
principals are ``User:NAME``, ``User:*`` or ``Node:N``; topic names follow Kafka's
rules (prefixes use the same characters); the cluster is the literal
``kafka-cluster``; each resource type takes Kafka's operations for it (``OPERATIONS``);
``cluster_action`` is never granted by an ACL (it belongs to ``Node`` principals);
hosts are ``*`` or IP addresses, kept in canonical form. Enums are written in lower
snake case on the wire and in the CLI and read case-insensitively (``DescribeConfigs``
works too).

Pure logic: no sockets, no I/O; shared by the node and the client's Admin. See
docs/security.md.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from ipc.errors import InvalidRequestError
from ipc.protocol import TOPIC_NAME, valid_topic_name

CLUSTER_NAME = "kafka-cluster"  # the one cluster resource, as Kafka names it
WILDCARD = "*"  # a literal resource name or host matching every one
WILDCARD_PRINCIPAL = "User:*"
PRINCIPAL_TYPES = ("User", "Node")
MAX_NAME = 255


class ResourceType(enum.Enum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"  # one resource, named CLUSTER_NAME


class PatternType(enum.Enum):
    LITERAL = "literal"  # the name itself, or "*" for every resource of the type
    PREFIXED = "prefixed"  # every resource whose name starts with it


class PatternFilter(enum.Enum):
    """The pattern part of an AclFilter (Kafka's PatternType in a filter)."""

    LITERAL = "literal"
    PREFIXED = "prefixed"
    MATCH = "match"  # the bindings that apply to a literal name: equal, "*", and its prefixes
    ANY = "any"  # bindings of either pattern type whose name is the one given


class Operation(enum.Enum):
    """Wire and CLI spelling: lower snake case (``describe_configs``); parsing also
    takes Kafka's ``DescribeConfigs`` and any case."""

    ALL = "all"
    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    ALTER = "alter"
    DESCRIBE = "describe"
    CLUSTER_ACTION = "cluster_action"
    DESCRIBE_CONFIGS = "describe_configs"
    ALTER_CONFIGS = "alter_configs"
    IDEMPOTENT_WRITE = "idempotent_write"

    @property
    def kafka_name(self) -> str:
        """Kafka's spelling, for messages: ``DescribeConfigs``."""
        return "".join(word.capitalize() for word in self.value.split("_"))


class Permission(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


# The operations an ACL may name for each resource type (Kafka's kafka-acls table).
OPERATIONS: dict[ResourceType, frozenset[Operation]] = {
    ResourceType.TOPIC: frozenset(
        {
            Operation.ALL,
            Operation.READ,
            Operation.WRITE,
            Operation.CREATE,
            Operation.DELETE,
            Operation.ALTER,
            Operation.DESCRIBE,
            Operation.DESCRIBE_CONFIGS,
            Operation.ALTER_CONFIGS,
        }
    ),
    ResourceType.GROUP: frozenset({Operation.ALL, Operation.READ, Operation.DESCRIBE, Operation.DELETE}),
    ResourceType.CLUSTER: frozenset(
        {
            Operation.ALL,
            Operation.CREATE,
            Operation.ALTER,
            Operation.DESCRIBE,
            Operation.CLUSTER_ACTION,
            Operation.DESCRIBE_CONFIGS,
            Operation.ALTER_CONFIGS,
            Operation.IDEMPOTENT_WRITE,
        }
    ),
}

# The ALLOW operations that grant an operation (Kafka's implied operations). A DENY
# denies only its own operation (or everything, for ALL): denials are never implied.
ALLOWED_BY: dict[Operation, frozenset[Operation]] = {op: frozenset({op, Operation.ALL}) for op in Operation} | {
    Operation.DESCRIBE: frozenset(
        {Operation.DESCRIBE, Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER, Operation.ALL}
    ),
    Operation.DESCRIBE_CONFIGS: frozenset({Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS, Operation.ALL}),
}
DENIED_BY: dict[Operation, frozenset[Operation]] = {op: frozenset({op, Operation.ALL}) for op in Operation}


# ---- parsing -------------------------------------------------------------------------------
EnumT = TypeVar("EnumT", bound=enum.Enum)


def _squash(text: str) -> str:
    return text.replace("_", "").replace("-", "").lower()


def parse_enum(cls: type[EnumT], field: str, value: Any) -> EnumT:
    """``value`` as a member of ``cls``, read case-insensitively and ignoring ``_`` and
    ``-`` (``"describe_configs"``, ``"DescribeConfigs"``, ``"DESCRIBE-CONFIGS"``)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        wanted = _squash(value)
        for member in cls:
            if _squash(str(member.value)) == wanted:
                return member
    choices = ", ".join(str(m.value) for m in cls)
    raise InvalidRequestError(f"ACL field {field!r}={_show(value)} is not one of: {choices}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def check_principal(principal: Any, field: str = "principal") -> str:
    """``principal`` if it is ``User:NAME`` (or ``User:*``) or ``Node:N``."""
    if not isinstance(principal, str) or ":" not in principal:
        raise InvalidRequestError(f"ACL field {field!r}={_show(principal)} must be TYPE:NAME, e.g. 'User:alice'")
    kind, name = principal.split(":", 1)
    if kind not in PRINCIPAL_TYPES:
        raise InvalidRequestError(
            f"ACL field {field!r}={_show(principal)} has principal type {kind!r}: use {' or '.join(PRINCIPAL_TYPES)}"
        )
    if kind == "Node" and not (name.isascii() and name.isdigit()):
        raise InvalidRequestError(f"ACL field {field!r}={_show(principal)}: a Node principal is Node:<node id>")
    if not 0 < len(name) <= MAX_NAME or not name.isprintable() or name != name.strip():
        raise InvalidRequestError(
            f"ACL field {field!r}={_show(principal)}: the name must be 1..{MAX_NAME} printable characters"
        )
    return principal


def canonical_host(host: Any, field: str = "host") -> str:
    """``"*"``, or an IP address in its canonical form (``"::1"``, ``"10.0.0.1"``)."""
    if host == WILDCARD:
        return WILDCARD
    if isinstance(host, str):
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
    raise InvalidRequestError(f"ACL field {field!r}={_show(host)} must be an IP address or '*'")


def _check_resource(resource_type: ResourceType, name: Any, pattern: PatternType) -> None:
    if not isinstance(name, str):
        raise InvalidRequestError(f"ACL field 'resource_name'={_show(name)} must be a string")
    if resource_type is ResourceType.CLUSTER:
        if name != CLUSTER_NAME or pattern is not PatternType.LITERAL:
            raise InvalidRequestError(
                f"ACL field 'resource_name'={_show(name)} ({pattern.value}): the cluster resource is "
                f"the literal {CLUSTER_NAME!r}"
            )
        return
    if name == WILDCARD:
        if pattern is not PatternType.LITERAL:
            raise InvalidRequestError(
                "ACL field 'resource_name'='*' is for the literal pattern only (every resource of the type); "
                "a prefixed pattern names a prefix"
            )
        return
    if resource_type is ResourceType.TOPIC:
        why = valid_topic_name(name) if pattern is PatternType.LITERAL else None
        if pattern is PatternType.PREFIXED and not TOPIC_NAME.match(name):
            why = f"topic prefix {name[:300]!r} is invalid: use 1..249 characters of [a-zA-Z0-9._-]"
        if why:
            raise InvalidRequestError(f"ACL field 'resource_name': {why}")
    elif not 0 < len(name) <= MAX_NAME:
        raise InvalidRequestError(f"ACL field 'resource_name'={_show(name)}: a group name is 1..{MAX_NAME} characters")


def _fields(d: Any, known: Iterable[str], what: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise InvalidRequestError(f"{what} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise InvalidRequestError(f"{what} has unknown field(s) {', '.join(map(repr, unknown))}")
    return d


# ---- bindings and filters ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AclBinding:
    """One ACL. Checked when made (however it is made); ``host`` is kept canonical."""

    principal: str  # "User:alice", "Node:2" or "User:*" (any principal)
    resource_type: ResourceType
    resource_name: str  # a literal name, "*" (literal only: every resource of the type), or a prefix
    pattern_type: PatternType
    operation: Operation
    permission: Permission
    host: str = WILDCARD  # an IP address or "*"

    def __post_init__(self) -> None:
        check_principal(self.principal)
        for field, cls in (
            ("resource_type", ResourceType),
            ("pattern_type", PatternType),
            ("operation", Operation),
            ("permission", Permission),
        ):
            if not isinstance(getattr(self, field), cls):
                raise InvalidRequestError(f"ACL field {field!r}={_show(getattr(self, field))} must be a {cls.__name__}")
        _check_resource(self.resource_type, self.resource_name, self.pattern_type)
        if self.operation not in OPERATIONS[self.resource_type]:
            allowed = ", ".join(sorted(op.value for op in OPERATIONS[self.resource_type]))
            raise InvalidRequestError(
                f"ACL field 'operation'={self.operation.value!r} does not apply to a {self.resource_type.value}: "
                f"use one of {allowed}"
            )
        if self.operation is Operation.CLUSTER_ACTION and not self.principal.startswith("Node:"):
            raise InvalidRequestError(
                f"ACL field 'operation'='cluster_action' for {self.principal}: cluster actions (replication, "
                "alter_isr) belong to the cluster's Node principals and no ACL can give or take them"
            )
        object.__setattr__(self, "host", canonical_host(self.host))

    def to_json(self) -> dict[str, str]:
        return {
            "principal": self.principal,
            "resource_type": self.resource_type.value,
            "resource_name": self.resource_name,
            "pattern_type": self.pattern_type.value,
            "operation": self.operation.value,
            "permission": self.permission.value,
            "host": self.host,
        }

    @classmethod
    def from_json(cls, d: Any) -> AclBinding:
        """A binding from its JSON object; InvalidRequestError names the bad field."""
        d = _fields(d, _BINDING_FIELDS, "an ACL binding")
        missing = [f for f in _BINDING_FIELDS if f != "host" and d.get(f) is None]
        if missing:
            raise InvalidRequestError(f"an ACL binding needs field(s) {', '.join(map(repr, missing))}")
        return cls(
            principal=d["principal"],
            resource_type=parse_enum(ResourceType, "resource_type", d["resource_type"]),
            resource_name=d["resource_name"],
            pattern_type=parse_enum(PatternType, "pattern_type", d["pattern_type"]),
            operation=parse_enum(Operation, "operation", d["operation"]),
            permission=parse_enum(Permission, "permission", d["permission"]),
            host=WILDCARD if d.get("host") is None else d["host"],
        )


_BINDING_FIELDS = tuple(f.name for f in dataclasses.fields(AclBinding))


@dataclasses.dataclass(frozen=True)
class AclFilter:
    """Selects bindings to describe or delete, as Kafka's AclBindingFilter. Every field
    is optional (None: any). ``principal`` and ``host`` are compared exactly (a filter
    for ``User:*`` selects the bindings *for* ``User:*``); ``resource_name`` too, except
    with the ``match`` pattern, which selects every binding that applies to that name
    (literal equal, literal ``*``, prefixes of it)."""

    principal: str | None = None
    resource_type: ResourceType | None = None
    resource_name: str | None = None
    pattern_type: PatternFilter | None = None
    operation: Operation | None = None
    permission: Permission | None = None
    host: str | None = None

    def __post_init__(self) -> None:
        if self.principal is not None:
            check_principal(self.principal)
        if self.host is not None:
            object.__setattr__(self, "host", canonical_host(self.host))
        if self.resource_name is not None and (
            not isinstance(self.resource_name, str) or not 0 < len(self.resource_name) <= MAX_NAME
        ):
            raise InvalidRequestError(
                f"ACL filter field 'resource_name'={_show(self.resource_name)} must be 1..{MAX_NAME} characters"
            )

    def matches(self, b: AclBinding) -> bool:
        if self.resource_type is not None and self.resource_type is not b.resource_type:
            return False
        if self.principal is not None and self.principal != b.principal:
            return False
        if self.host is not None and self.host != b.host:
            return False
        if self.operation is not None and self.operation is not b.operation:
            return False
        if self.permission is not None and self.permission is not b.permission:
            return False
        return self._matches_pattern(b)

    def _matches_pattern(self, b: AclBinding) -> bool:
        pattern = self.pattern_type or PatternFilter.ANY
        if pattern in (PatternFilter.LITERAL, PatternFilter.PREFIXED) and pattern.value != b.pattern_type.value:
            return False
        if self.resource_name is None:
            return True
        if pattern is not PatternFilter.MATCH:
            return self.resource_name == b.resource_name
        if b.pattern_type is PatternType.PREFIXED:
            return self.resource_name.startswith(b.resource_name)
        return b.resource_name in (self.resource_name, WILDCARD)

    def to_json(self) -> dict[str, str | None]:
        return {
            "principal": self.principal,
            "resource_type": None if self.resource_type is None else self.resource_type.value,
            "resource_name": self.resource_name,
            "pattern_type": None if self.pattern_type is None else self.pattern_type.value,
            "operation": None if self.operation is None else self.operation.value,
            "permission": None if self.permission is None else self.permission.value,
            "host": self.host,
        }

    @classmethod
    def from_json(cls, d: Any) -> AclFilter:
        """A filter from JSON: missing, null or ``"any"`` fields match anything."""
        d = _fields(d, _FILTER_FIELDS, "an ACL filter")

        def opt(field: str, kind: type[EnumT]) -> EnumT | None:
            value = d.get(field)
            is_any = value is None or (isinstance(value, str) and value.lower() == "any")
            return None if is_any else parse_enum(kind, field, value)

        raw_pattern = d.get("pattern_type")
        pattern = None if raw_pattern is None else parse_enum(PatternFilter, "pattern_type", raw_pattern)
        return cls(
            principal=d.get("principal"),
            resource_type=opt("resource_type", ResourceType),
            resource_name=d.get("resource_name"),
            pattern_type=pattern,
            operation=opt("operation", Operation),
            permission=opt("permission", Permission),
            host=d.get("host"),
        )


_FILTER_FIELDS = tuple(f.name for f in dataclasses.fields(AclFilter))


def select(acls: Iterable[AclBinding], flt: AclFilter) -> list[AclBinding]:
    """The bindings ``flt`` matches, in order (describe_acls)."""
    return [b for b in acls if flt.matches(b)]


def delete_matching(
    acls: Iterable[AclBinding], filters: Iterable[AclFilter]
) -> tuple[list[AclBinding], list[list[AclBinding]]]:
    """delete_acls: the bindings that remain, and for each filter the bindings it
    deleted (a binding matched by several filters is listed under each, as in Kafka)."""
    acls = list(acls)
    deleted = [select(acls, f) for f in filters]
    gone = {b for found in deleted for b in found}
    return [b for b in acls if b not in gone], deleted
