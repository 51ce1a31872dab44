"""Typed control messages between the supervisor and its partition workers.

They travel over the node's ``ipc://`` control socket (a ROUTER in the supervisor, one
DEALER per worker, identity ``slot-<n>``) as one orjson frame each. Commands go from the
supervisor to a worker, events from a worker to the supervisor::

    {"cmd": "role", "role": "leader", "leader_epoch": 3, "leader_endpoint": "",
     "replicas": [0, 1, 2], "isr": {"0": 5, "1": 7}, "node_epoch": 5}
    {"cmd": "config", "options": {"retention.ms": 60000, ...}}   (a topic's effective options)
    {"cmd": "node_options", "log_level": "info", "retention_check_ms": 300000,
     "cleaner_interval_ms": 15000, "heartbeat_timeout_ms": 10000}
    {"cmd": "stop"}
    {"cmd": "acls", "version": 4, "acls": [{"principal": "User:alice", ...}, ...]}   (ipc/acl.py)
    {"event": "ready", "slot": 4, "pid": 812, "endpoint": "tcp://127.0.0.1:40113", "log_end_offset": 17}
    {"event": "alter_isr", "slot": 4, "pid": 812, "leader_epoch": 3, "isr": {"0": 5}}
    {"event": "stopped", "slot": 4, "pid": 812}

``decode_command`` and ``decode_event`` check every field (type and range) and raise
``ControlMessageError`` naming what is wrong; a receiver logs it and carries on. The
role is ``ipc.shm.Role`` everywhere (on the wire its lower-case name); a topic's
configuration arrives as a validated ``LogConfig``-ready options map (``ConfigCommand``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from ipc.acl import AclBinding
from ipc.errors import InvalidRequestError
from ipc.shm import Role

_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
LOG_LEVELS = ("debug", "info", "warning", "error")


# a malformed control message is an invalid request (not a class of its own: the wire
# code registry maps INVALID_REQUEST to one class)
ControlMessageError = InvalidRequestError


# ---- field checks ----------------------------------------------------------------------
def _int(msg: Mapping[str, Any], name: str, lo: int = 0, hi: int = _INT64) -> int:
    value = msg.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ControlMessageError(f"control {name!r}={value!r}: expected an integer in [{lo}, {hi}]")
    return value


def _str(msg: Mapping[str, Any], name: str, limit: int = 1024) -> str:
    value = msg.get(name)
    if not isinstance(value, str) or len(value) > limit:
        raise ControlMessageError(f"control {name!r}={value!r}: expected a string of at most {limit} characters")
    return value


def _isr(msg: Mapping[str, Any]) -> dict[int, int]:
    value = msg.get("isr")
    if not isinstance(value, dict) or len(value) > 64:
        raise ControlMessageError(f"control 'isr'={value!r}: expected a map of node id -> node epoch")
    out = {}
    for k, v in value.items():
        if not (isinstance(k, str) and k.isdigit() and isinstance(v, int) and not isinstance(v, bool)):
            raise ControlMessageError(f"control 'isr' entry {k!r}: {v!r}: expected a node id and a node epoch")
        out[int(k)] = v
    return out


def _isr_wire(isr: Mapping[int, int]) -> dict[str, int]:
    return {str(k): v for k, v in isr.items()}


# ---- commands: supervisor -> worker --------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RoleCommand:
    """This replica's role: lead at ``leader_epoch``, follow the worker at
    ``leader_endpoint``, or neither (``Role.NONE``: no leader, or this node is cut off)."""

    role: Role
    leader_epoch: int
    leader_endpoint: str = ""
    replicas: tuple[int, ...] = ()
    isr: Mapping[int, int] = dataclasses.field(default_factory=dict)  # node id -> its epoch when it joined
    node_epoch: int = -1  # this node's registration epoch

    def to_wire(self) -> dict[str, Any]:
        return {
            "cmd": "role",
            "role": self.role.name.lower(),
            "leader_epoch": self.leader_epoch,
            "leader_endpoint": self.leader_endpoint,
            "replicas": list(self.replicas),
            "isr": _isr_wire(self.isr),
            "node_epoch": self.node_epoch,
        }

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> RoleCommand:
        name = msg.get("role")
        role = {"leader": Role.LEADER, "follower": Role.FOLLOWER, "none": Role.NONE}.get(name)  # type: ignore[arg-type]
        if role is None:
            raise ControlMessageError(f"control 'role'={name!r}: expected leader, follower or none")
        replicas = msg.get("replicas")
        if not isinstance(replicas, list) or len(replicas) > 64:
            raise ControlMessageError(f"control 'replicas'={replicas!r}: expected a list of node ids")
        for n in replicas:
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= _INT32:
                raise ControlMessageError(f"control 'replicas' entry {n!r}: expected a node id")
        return cls(
            role,
            _int(msg, "leader_epoch", 0, _INT32),
            _str(msg, "leader_endpoint"),
            tuple(replicas),
            _isr(msg),
            _int(msg, "node_epoch", -1),
        )

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER


@dataclasses.dataclass(frozen=True)
class ConfigCommand:
    """The topic's effective configuration (node ``topic_defaults`` + the topic's
    overrides) as Kafka-named options; the worker builds its ``LogConfig`` from it."""

    options: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"cmd": "config", "options": dict(self.options)}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> ConfigCommand:
        options = msg.get("options")
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ControlMessageError(f"control 'options'={options!r}: expected a map of topic options")
        return cls(options)


@dataclasses.dataclass(frozen=True)
class NodeOptionsCommand:
    """Node options a worker takes live (a SIGHUP reload)."""

    log_level: str
    retention_check_ms: int
    cleaner_interval_ms: int
    heartbeat_timeout_ms: int

    def to_wire(self) -> dict[str, Any]:
        return {"cmd": "node_options", **dataclasses.asdict(self)}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> NodeOptionsCommand:
        level = _str(msg, "log_level", 16).lower()
        if level not in LOG_LEVELS:
            raise ControlMessageError(f"control 'log_level'={level!r}: allowed: {', '.join(LOG_LEVELS)}")
        return cls(
            level,
            _int(msg, "retention_check_ms", 10),
            _int(msg, "cleaner_interval_ms", 10),
            _int(msg, "heartbeat_timeout_ms", 10),
        )


@dataclasses.dataclass(frozen=True)
class StopCommand:
    def to_wire(self) -> dict[str, Any]:
        return {"cmd": "stop"}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> StopCommand:
        return cls()


@dataclasses.dataclass(frozen=True)
class AclsCommand:
    """The cluster's ACLs (docs/security.md), at the coordinator's ``version`` of them."""

    version: int
    acls: tuple[AclBinding, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"cmd": "acls", "version": self.version, "acls": [b.to_json() for b in self.acls]}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> AclsCommand:
        acls = msg.get("acls")
        if not isinstance(acls, list):
            raise ControlMessageError("control 'acls': expected a list of ACL bindings")
        return cls(_int(msg, "version", -1), tuple(AclBinding.from_json(b) for b in acls))


Command = RoleCommand | ConfigCommand | NodeOptionsCommand | StopCommand | AclsCommand
_COMMANDS: dict[str, Any] = {
    "role": RoleCommand,
    "config": ConfigCommand,
    "node_options": NodeOptionsCommand,
    "stop": StopCommand,
    "acls": AclsCommand,
}


# ---- events: worker -> supervisor ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ReadyEvent:
    """The worker recovered its log and serves at ``endpoint``."""

    slot: int
    pid: int
    endpoint: str
    log_end_offset: int

    def to_wire(self) -> dict[str, Any]:
        return {"event": "ready", **dataclasses.asdict(self)}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> ReadyEvent:
        return cls(
            _int(msg, "slot", 0, _INT32), _int(msg, "pid", 1), _str(msg, "endpoint"), _int(msg, "log_end_offset")
        )

    @property
    def port(self) -> int:
        port = self.endpoint.rsplit(":", 1)[-1]
        return int(port) if port.isdigit() and int(port) < 65536 else 0


@dataclasses.dataclass(frozen=True)
class AlterIsrEvent:
    """The leader asks for a new ISR (the supervisor forwards it to the controller)."""

    slot: int
    pid: int
    leader_epoch: int
    isr: Mapping[int, int]

    def to_wire(self) -> dict[str, Any]:
        return {
            "event": "alter_isr",
            "slot": self.slot,
            "pid": self.pid,
            "leader_epoch": self.leader_epoch,
            "isr": _isr_wire(self.isr),
        }

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> AlterIsrEvent:
        return cls(_int(msg, "slot", 0, _INT32), _int(msg, "pid", 1), _int(msg, "leader_epoch", 0, _INT32), _isr(msg))


@dataclasses.dataclass(frozen=True)
class StoppedEvent:
    slot: int
    pid: int

    def to_wire(self) -> dict[str, Any]:
        return {"event": "stopped", "slot": self.slot, "pid": self.pid}

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> StoppedEvent:
        return cls(_int(msg, "slot", 0, _INT32), _int(msg, "pid", 1))


Event = ReadyEvent | AlterIsrEvent | StoppedEvent
_EVENTS: dict[str, Any] = {"ready": ReadyEvent, "alter_isr": AlterIsrEvent, "stopped": StoppedEvent}


# ---- encoding ------------------------------------------------------------------------------
def encode(message: Command | Event) -> bytes:
    return orjson.dumps(message.to_wire())


def _decode(raw: bytes, key: str, kinds: Mapping[str, Any]) -> Any:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ControlMessageError(f"control message is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ControlMessageError(f"control message must be a JSON object, got {type(msg).__name__}")
    kind = kinds.get(msg.get(key))  # type: ignore[arg-type]
    if kind is None:
        raise ControlMessageError(f"unknown control {key} {msg.get(key)!r}; known: {', '.join(sorted(kinds))}")
    return kind.from_wire(msg)


def decode_command(raw: bytes) -> Command:
    """A command from the supervisor; raises ControlMessageError."""
    cmd: Command = _decode(raw, "cmd", _COMMANDS)
    return cmd


def decode_event(raw: bytes) -> Event:
    """An event from a worker; raises ControlMessageError."""
    event: Event = _decode(raw, "event", _EVENTS)
    return event
