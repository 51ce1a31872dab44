"""The wire protocol: ZeroMQ multipart messages with an orjson header frame.

A request is ``[header, *data]`` sent from a DEALER to a ROUTER (the ROUTER sees the
peer identity first). ``header`` is a JSON object::

    {"api": "produce", "v": 1, "id": 17, ...fields}

``id`` is the correlation id the reply carries back. Data frames (record batches) are
raw bytes, sent with ``copy=False`` when large. A reply is ``[header, *data]`` with::

    {"id": 17, "error": null, ...fields}
    {"id": 17, "error": {"code": "NOT_LEADER", "message": "...", "retriable": true}}

Every API's fields are declared once in ``SCHEMAS``; ``parse_request`` checks types and
ranges, so handlers receive clean values, and anything malformed becomes an
``InvalidRequestError`` reply. See docs/protocol.md for each API.

Over 500 lines because ``SCHEMAS`` is one table of every API's fields (front, groups,
workers, admin): split, the APIs an endpoint serves and their validation would live
in several places.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from ipc.errors import InvalidRequestError, SluiceError, error_for_code
from ipc.redact import wire_message

VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
INT64_MAX = 2**63 - 1

Frame = Any  # bytes, memoryview or zmq.Frame: anything with the buffer protocol


def valid_topic_name(name: str) -> str | None:
    """None if ``name`` is a legal topic name (Kafka's rules), else why not."""
    if not TOPIC_NAME.match(name):
        return f"topic name {name[:300]!r} is invalid: use 1..249 characters of [a-zA-Z0-9._-]"
    if name in (".", ".."):
        return f"topic name {name!r} is invalid: '.' and '..' are reserved"
    return None


@dataclasses.dataclass(frozen=True)
class Field:
    type: type | tuple[type, ...]
    required: bool = True
    default: Any = None
    check: Callable[[Any], str | None] | None = None  # returns why the value is bad


def _int_range(lo: int, hi: int = INT64_MAX) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be in [{lo}, {hi}]"

    check.bounds = (lo, hi)  # type: ignore[attr-defined]  # inlined by _plan: no call per field
    return check


def _topic(v: Any) -> str | None:
    return valid_topic_name(v)


def _acks(v: Any) -> str | None:
    return None if v in (0, 1, -1, "all") else "must be 0, 1 or 'all'"


def _config_map(v: Any) -> str | None:
    if len(v) > 100:
        return "has too many entries"
    if not all(isinstance(k, str) for k in v):
        return "keys must be strings"
    if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in v.values()):
        return "values must be strings or numbers"
    return None


def _topic_list(v: Any) -> str | None:
    if not all(isinstance(t, str) for t in v):
        return "must be a list of topic names"
    return None


def _short_str(v: Any) -> str | None:
    return None if len(v) <= 255 else "must be at most 255 characters"


def _group(v: Any) -> str | None:
    return None if 0 < len(v) <= 255 else "must be 1..255 characters"


def _str_list(v: Any) -> str | None:
    if len(v) > 16 or not all(isinstance(x, str) and len(x) <= 64 for x in v):
        return "must be a list of at most 16 short strings"
    return None


def _is_tp(x: Any) -> bool:
    return (
        isinstance(x, list)
        and len(x) == 2
        and isinstance(x[0], str)
        and valid_topic_name(x[0]) is None
        and isinstance(x[1], int)
        and not isinstance(x[1], bool)
        and 0 <= x[1] < 2**31
    )


def _tp_list(v: Any) -> str | None:
    if len(v) > 100_000 or not all(_is_tp(x) for x in v):
        return "must be a list of [topic, partition] pairs"
    return None


def _commit_list(v: Any) -> str | None:
    if len(v) > 100_000:
        return "has too many entries"
    for x in v:
        if not (
            isinstance(x, dict)
            and _is_tp([x.get("topic"), x.get("partition")])
            and isinstance(x.get("offset"), int)
            and not isinstance(x.get("offset"), bool)
            and 0 <= x["offset"] <= INT64_MAX
            and isinstance(x.get("metadata", ""), str)
            and len(x.get("metadata", "")) <= 4096
        ):
            return "must be a list of {topic, partition, offset >= 0, metadata (str)} objects"
    return None


def _isr_map(v: Any) -> str | None:
    if len(v) > 64 or not all(k.isdigit() and isinstance(x, int) and not isinstance(x, bool) for k, x in v.items()):
        return "must map node ids (strings of digits) to node epochs (integers)"
    return None


def _dict_list(limit: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if len(v) > limit or not all(isinstance(x, dict) for x in v):
            return f"must be a list of at most {limit} objects"
        return None

    return check


def _node_list(v: Any) -> str | None:
    if not 0 < len(v) <= 16 or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31 for x in v):
        return "must be a list of 1..16 node ids"
    return None


TOPIC = Field(str, check=_topic)
GROUP = Field(str, check=_group)
MEMBER = Field(str, check=_short_str)
GENERATION = Field(int, check=_int_range(-1, 2**31 - 1))
PARTITION = Field(int, check=_int_range(0, 2**31 - 1))
OFFSET = Field(int, check=_int_range(0))

CONNECT_ACTIONS = ("list", "status", "create", "pause", "resume", "restart", "delete")

SCHEMAS: dict[str, dict[str, Field]] = {
    # front endpoint (supervisor)
    "metadata": {
        "topics": Field(list, required=False, check=_topic_list),
        # Kafka's allow_auto_topic_creation: a consumer's metadata never creates a topic
        "allow_auto_create": Field(bool, required=False, default=True),
    },
    "list_topics": {"internal": Field(bool, required=False, default=False)},
    "create_topic": {
        "topic": TOPIC,
        "partitions": Field(int, check=_int_range(1, 10_000)),
        "replication_factor": Field(int, required=False, default=1, check=_int_range(1, 16)),
        "config": Field(dict, required=False, default={}, check=_config_map),
    },
    "delete_topic": {"topic": TOPIC},
    "describe_topic": {"topic": TOPIC},
    "alter_topic": {
        "topic": TOPIC,
        "config": Field(dict, required=False, default={}, check=_config_map),
        "partitions": Field(int, required=False, check=_int_range(1, 10_000)),
    },
    "status": {},
    # idempotent producer (front endpoint): a new producer id, epoch 0
    "init_producer_id": {},
    # cluster (front endpoint; the controller's for alter_isr and reassign)
    "cluster_status": {},
    "alter_isr": {
        "topic": TOPIC,
        "partition": PARTITION,
        "leader": Field(int, check=_int_range(0, 2**31 - 1)),
        "leader_epoch": Field(int, check=_int_range(0, 2**31 - 1)),
        "isr": Field(dict, check=_isr_map),
        "resign": Field(bool, required=False, default=False),  # the leader leaves (offline)
    },
    "reassign": {
        "topic": TOPIC,
        "partition": PARTITION,
        "replicas": Field(list, check=_node_list),
    },
    # ACLs (front endpoint; docs/security.md): bindings and filters as in ipc/acl.py
    "create_acls": {"acls": Field(list, check=_dict_list(1000))},
    "describe_acls": {"filter": Field(dict, required=False, default={})},
    "delete_acls": {"filters": Field(list, check=_dict_list(1000))},
    # quotas (front endpoint; docs/security.md): entity = "user"/"default" and/or "client"/"default_client"
    "set_quota": {
        "user": Field(str, required=False, check=_short_str),
        "default": Field(bool, required=False, default=False),
        "client": Field(str, required=False, check=_short_str),
        "default_client": Field(bool, required=False, default=False),
        "quotas": Field(dict, required=False, default={}),  # kind -> a positive number, or null: remove it
    },
    "describe_quotas": {
        "user": Field(str, required=False, check=_short_str),
        "client": Field(str, required=False, check=_short_str),
    },
    # connectors (front endpoint; appliance/connect/admin.py): the node's own connectors
    "connect": {
        "action": Field(
            str, check=lambda v: None if v in CONNECT_ACTIONS else f"allowed: {', '.join(CONNECT_ACTIONS)}"
        ),
        "name": Field(str, required=False, check=_short_str),
        "connector": Field(dict, required=False),  # create: {"name", "class", "options"}
    },
    # consumer groups (front endpoint, the group coordinator)
    "find_coordinator": {"group": GROUP},
    "join_group": {
        "group": GROUP,
        "member_id": Field(str, required=False, default="", check=_short_str),
        "group_instance_id": Field(str, required=False, check=_short_str),
        "client_id": Field(str, required=False, default="", check=_short_str),
        "session_timeout_ms": Field(int, required=False, default=10_000, check=_int_range(100, 3_600_000)),
        "rebalance_timeout_ms": Field(int, required=False, default=30_000, check=_int_range(0, 3_600_000)),
        "topics": Field(list, check=_topic_list),
        "assignors": Field(list, required=False, default=["range"], check=_str_list),
        "owned": Field(list, required=False, default=[], check=_tp_list),
    },
    "sync_group": {"group": GROUP, "member_id": MEMBER, "generation": GENERATION},
    "heartbeat": {"group": GROUP, "member_id": MEMBER, "generation": GENERATION},
    "leave_group": {"group": GROUP, "member_id": MEMBER},
    "offset_commit": {
        "group": GROUP,
        "member_id": Field(str, required=False, default="", check=_short_str),
        "generation": Field(int, required=False, default=-1, check=_int_range(-1, 2**31 - 1)),
        "offsets": Field(list, check=_commit_list),
    },
    "offset_fetch": {"group": GROUP, "partitions": Field(list, required=False, check=_tp_list)},
    "list_groups": {},
    "describe_group": {"group": GROUP},
    "delete_group": {"group": GROUP},
    # partition worker endpoint
    "produce": {
        "topic": TOPIC,
        "partition": PARTITION,
        "acks": Field((int, str), required=False, default=1, check=_acks),
        "timeout_ms": Field(int, required=False, default=30_000, check=_int_range(0, 3_600_000)),
    },
    "fetch": {
        "topic": TOPIC,
        "partition": PARTITION,
        "offset": OFFSET,
        "max_bytes": Field(int, required=False, default=1024 * 1024, check=_int_range(1, 1 << 30)),
        "max_wait_ms": Field(int, required=False, default=500, check=_int_range(0, 300_000)),
        "min_bytes": Field(int, required=False, default=1, check=_int_range(0, 1 << 30)),
        # from a follower replica (appliance/replication.py); consumers leave them out
        "replica_id": Field(int, required=False, default=-1, check=_int_range(-1, 2**31 - 1)),
        "replica_epoch": Field(int, required=False, default=-1, check=_int_range(-1)),
        "leader_epoch": Field(int, required=False, default=-1, check=_int_range(-1, 2**31 - 1)),
        "last_fetched_epoch": Field(int, required=False, default=-1, check=_int_range(-1, 2**31 - 1)),
    },
    "list_offsets": {
        "topic": TOPIC,
        "partition": PARTITION,
        # -2 earliest, -1 latest, else a timestamp in ms
        "timestamp": Field(int, check=_int_range(-2)),
    },
    # Kafka's DeleteRecords: the new log start offset, -1 for the high watermark
    "delete_records": {"topic": TOPIC, "partition": PARTITION, "offset": Field(int, check=_int_range(-1))},
    # the same-host path (ipc/samehost.py): rings of 64 KiB to 64 MiB
    "same_host_open": {
        "topic": TOPIC,
        "partition": PARTITION,
        "pid": Field(int, check=_int_range(1, 2**31 - 1)),
        "request_bytes": Field(int, required=False, default=4 << 20, check=_int_range(64 << 10, 64 << 20)),
        "reply_bytes": Field(int, required=False, default=20 << 20, check=_int_range(64 << 10, 64 << 20)),
    },
}
GROUP_APIS = frozenset(
    {
        "find_coordinator",
        "join_group",
        "sync_group",
        "heartbeat",
        "leave_group",
        "offset_commit",
        "offset_fetch",
        "list_groups",
        "describe_group",
        "delete_group",
    }
)
FRONT_APIS = (
    frozenset(
        {
            "metadata",
            "list_topics",
            "create_topic",
            "delete_topic",
            "describe_topic",
            "alter_topic",
            "status",
            "init_producer_id",
            "cluster_status",
            "alter_isr",
            "reassign",
            "create_acls",
            "describe_acls",
            "delete_acls",
            "set_quota",
            "describe_quotas",
            "connect",
        }
    )
    | GROUP_APIS
)
WORKER_APIS = frozenset({"produce", "fetch", "list_offsets", "delete_records", "same_host_open"})
ASSIGNORS = ("range", "roundrobin", "cooperative-sticky")  # partition assignors the coordinator runs
EARLIEST = -2
LATEST = -1


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who sent a request, as Kafka names it: ``User:alice``, ``Node:3``."""

    type: str
    name: str

    def __str__(self) -> str:
        return f"{self.type}:{self.name}"


ANONYMOUS = Principal("User", "ANONYMOUS")


@dataclasses.dataclass(frozen=True)
class Response:
    """A successful reply: header fields and data frames (sent without copies)."""

    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    frames: Sequence[Frame] = ()


Send = Callable[[bytes, list[Any]], None]


class Responder:
    """Answers one request, now or later. Holds the peer; handlers only call it."""

    __slots__ = ("_send", "_peer", "id", "api", "answered", "on_reply", "on_fail")

    def __init__(self, send: Send, peer: bytes, cid: int, api: str) -> None:
        self._send = send
        self._peer = peer
        self.id = cid
        self.api = api
        self.answered = False
        # a quota's hook (ipc/throttle.py): sees the reply, may add throttle_time_ms
        self.on_reply: Callable[[Responder, Response], Response] | None = None
        # the pipeline's error count (ipc/server.py): (api, error code) of each error reply
        self.on_fail: Callable[[str, str], None] | None = None

    def send(self, response: Response) -> None:
        self.answered = True
        if self.on_reply is not None:
            response = self.on_reply(self, response)
        header = ok_reply(self.id, **response.fields)
        self._send(self._peer, [header, *response.frames] if response.frames else [header])

    def ok(self, **fields: Any) -> None:
        self.send(Response(fields))

    def fail(self, err: SluiceError) -> None:
        self.answered = True
        if self.on_fail is not None:
            self.on_fail(self.api, err.code)
        self._send(self._peer, [error_reply(self.id, err)])


@dataclasses.dataclass
class Request:
    """A validated request. ``principal`` and ``responder`` are set by the request
    pipeline (ipc/server.py) before a handler sees the request."""

    api: str
    id: int
    fields: dict[str, Any]
    frames: list[Frame]
    principal: Principal | None = None
    host: str = ""  # the peer's address, as the authenticate hook saw it (ACLs may name hosts)
    responder: Responder = dataclasses.field(default=None)  # type: ignore[assignment]
    client_id: str = ""  # the header's client_id, any API (quotas may bind it: ipc/quota.py)


def _buffer(frame: Frame) -> bytes | memoryview:
    if isinstance(frame, (bytes, memoryview)):
        return frame
    buf = getattr(frame, "buffer", None)  # zmq.Frame
    return buf if buf is not None else memoryview(frame)


def peek_id(header: Frame) -> int:
    """Best-effort correlation id of a header that failed validation (0 if unknown)."""
    try:
        obj = orjson.loads(_buffer(header))
    except orjson.JSONDecodeError:
        return 0
    cid = obj.get("id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, int) and not isinstance(cid, bool) and 0 <= cid <= INT64_MAX else 0


def _short(value: Any) -> str:
    """A bounded, non-recursive rendering of a client's value for an error message."""
    if isinstance(value, (dict, list)):
        return f"<{type(value).__name__} of {len(value)}>"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def parse_request(frames: Sequence[Frame], allowed: frozenset[str] | None = None) -> Request:
    """Validate ``[header, *data]``; raise InvalidRequestError saying what is wrong."""
    try:
        return _parse_request(frames, allowed)
    except InvalidRequestError:
        raise
    except (RecursionError, ValueError, TypeError, MemoryError) as exc:  # hostile input, never a crash
        raise InvalidRequestError(f"malformed request: {type(exc).__name__}") from None


def _is_a(value: Any, want: type | tuple[type, ...]) -> bool:
    return not (isinstance(value, bool) and want is not bool) and isinstance(value, want)


def _plan(schema: dict[str, Field]) -> tuple[tuple[str, frozenset[type], Any, Any, Field], ...]:
    """A schema compiled for the hot path: per field, the exact classes that pass the type
    check without an ``isinstance`` walk (``bool`` only where the field is a bool), and an
    integer range checked inline instead of through its ``check`` function."""
    plan = []
    for name, spec in schema.items():
        types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
        exact = frozenset(t for t in types if t is not bool or spec.type is bool)
        lo, hi = getattr(spec.check, "bounds", (None, None))
        plan.append((name, exact, lo, hi, spec))
    return tuple(plan)


_PLANS = {api: _plan(schema) for api, schema in SCHEMAS.items()}


def _parse_request(frames: Sequence[Frame], allowed: frozenset[str] | None) -> Request:
    if not frames:
        raise InvalidRequestError("empty message: expected a header frame")
    raw = _buffer(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise InvalidRequestError(f"header frame of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"header frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRequestError(f"header must be a JSON object, got {type(obj).__name__}")
    api = obj.get("api")
    cid = obj.get("id")
    if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid <= INT64_MAX:
        raise InvalidRequestError(f"'id' must be a non-negative integer, got {cid!r}")
    if not isinstance(api, str) or api not in SCHEMAS:
        raise InvalidRequestError(f"unknown api {api!r}; known: {', '.join(sorted(SCHEMAS))}")
    if allowed is not None and api not in allowed:
        raise InvalidRequestError(f"api {api!r} is not served by this endpoint")
    version = obj.get("v", VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version != VERSION:
        raise InvalidRequestError(f"api {api!r} version {version!r} unsupported (this node speaks {VERSION})")
    fields: dict[str, Any] = {}
    get = obj.get
    for name, exact, lo, hi, spec in _PLANS[api]:
        value = get(name)
        if value is None:
            if spec.required:
                raise InvalidRequestError(f"{api}: field {name!r} is required")
            fields[name] = spec.default
            continue
        if value.__class__ not in exact and not _is_a(value, spec.type):
            want = spec.type.__name__ if isinstance(spec.type, type) else "/".join(t.__name__ for t in spec.type)
            raise InvalidRequestError(f"{api}: field {name!r} must be {want}, got {type(value).__name__}")
        if lo is not None:
            if not lo <= value <= hi:
                raise InvalidRequestError(f"{api}: field {name!r}={_short(value)} must be in [{lo}, {hi}]")
        elif spec.check is not None:
            why = spec.check(value)
            if why:
                raise InvalidRequestError(f"{api}: field {name!r}={_short(value)} {why}")
        fields[name] = value
    client_id = "" if obj.get("client_id") is None else obj["client_id"]  # any API (docs/protocol.md)
    if not isinstance(client_id, str) or len(client_id) > 255:
        raise InvalidRequestError(f"{api}: header 'client_id'={_short(client_id)} must be a string of <= 255 chars")
    return Request(api, cid, fields, list(frames[1:]), client_id=client_id)


def encode_request(api: str, cid: int, **fields: Any) -> bytes:
    return orjson.dumps({"api": api, "v": VERSION, "id": cid, **fields})


def ok_reply(cid: int, **fields: Any) -> bytes:
    return orjson.dumps({"id": cid, "error": None, **fields})


def error_reply(cid: int, err: SluiceError) -> bytes:
    message = wire_message(err.message)  # no absolute path goes to a client (ipc/redact.py)
    obj: dict[str, Any] = {"id": cid, "error": {"code": err.code, "message": message, "retriable": err.retriable}}
    throttle = getattr(err, "throttle_time_ms", 0)  # a quota's refusal says how long to wait (ipc/quota.py)
    if throttle:
        obj["throttle_time_ms"] = throttle
    return orjson.dumps(obj)


@dataclasses.dataclass
class Reply:
    id: int
    fields: dict[str, Any]
    frames: list[Frame]
    error: SluiceError | None

    def raise_for_error(self) -> None:
        if self.error is not None:
            raise self.error


def parse_reply(frames: Sequence[Frame]) -> Reply:
    """Decode a reply; a malformed one raises InvalidRequestError (the client's view)."""
    if not frames:
        raise InvalidRequestError("empty reply")
    try:
        obj = orjson.loads(_buffer(frames[0]))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"reply header is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), int):
        raise InvalidRequestError("reply header must be an object with an integer 'id'")
    err = obj.pop("error", None)
    error: SluiceError | None = None
    if err is not None:
        if not isinstance(err, dict):
            raise InvalidRequestError("reply 'error' must be an object")
        error = error_for_code(str(err.get("code")), str(err.get("message", "")))
        throttle = obj.get("throttle_time_ms")
        if isinstance(throttle, int) and not isinstance(throttle, bool) and throttle > 0:
            error.throttle_time_ms = throttle  # type: ignore[attr-defined]
    cid = obj.pop("id")
    return Reply(cid, obj, list(frames[1:]), error)
