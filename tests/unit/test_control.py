"""Typed control messages (ipc/control.py): round trips and refusals of bad input."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ipc.control import (
    AlterIsrEvent,
    ConfigCommand,
    ControlMessageError,
    NodeOptionsCommand,
    ReadyEvent,
    RoleCommand,
    StopCommand,
    StoppedEvent,
    decode_command,
    decode_event,
    encode,
)
from ipc.errors import InvalidRequestError
from ipc.shm import Role

COMMANDS = [
    RoleCommand(Role.LEADER, 3, "", (0, 1, 2), {0: 5, 1: 7}, 5),
    RoleCommand(Role.FOLLOWER, 4, "tcp://10.0.0.2:4000", (1, 2), {2: 1}, 9),
    RoleCommand(Role.NONE, 0),
    ConfigCommand({"retention.ms": 60_000, "cleanup.policy": "compact"}),
    NodeOptionsCommand("debug", 1000, 2000, 3000),
    StopCommand(),
]
EVENTS = [
    ReadyEvent(4, 812, "tcp://127.0.0.1:40113", 17),
    AlterIsrEvent(4, 812, 3, {0: 5}),
    StoppedEvent(4, 812),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: type(c).__name__)
def test_commands_round_trip(cmd: Any) -> None:
    assert decode_command(encode(cmd)) == cmd


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip(event: Any) -> None:
    assert decode_event(encode(event)) == event


def test_role_is_the_enum_and_its_wire_name() -> None:
    wire = orjson.loads(encode(COMMANDS[1]))
    assert wire["role"] == "follower" and wire["isr"] == {"2": 1}
    assert decode_command(encode(COMMANDS[1])).role is Role.FOLLOWER


def test_ready_event_port() -> None:
    assert ReadyEvent(1, 2, "tcp://127.0.0.1:40113", 0).port == 40113
    assert ReadyEvent(1, 2, "garbage", 0).port == 0


def _raw(**msg: Any) -> bytes:
    return orjson.dumps(msg)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (_raw(cmd="explode"), "unknown control cmd 'explode'"),
        (_raw(event="ready"), "unknown control cmd"),
        (_raw(cmd="role", role="king", leader_epoch=1, replicas=[], isr={}, node_epoch=1), "'role'='king'"),
        (_raw(cmd="role", role="leader", leader_epoch=-1, replicas=[], isr={}, node_epoch=1), "'leader_epoch'"),
        (_raw(cmd="role", role="leader", leader_epoch=True, replicas=[], isr={}, node_epoch=1), "'leader_epoch'"),
        (_raw(cmd="role", role="leader", leader_epoch=1, replicas=["a"], isr={}, node_epoch=1), "'replicas' entry"),
        (
            _raw(
                cmd="role", role="leader", leader_epoch=1, replicas=[], isr={"x": 1}, node_epoch=1, leader_endpoint=""
            ),
            "'isr' entry",
        ),
        (
            _raw(cmd="role", role="leader", leader_epoch=1, replicas=[], isr=[], node_epoch=1, leader_endpoint=""),
            "'isr'",
        ),
        (_raw(cmd="config", options=[1]), "'options'"),
        (
            _raw(
                cmd="node_options",
                log_level="loud",
                retention_check_ms=10,
                cleaner_interval_ms=10,
                heartbeat_timeout_ms=10,
            ),
            "'log_level'",
        ),  # fmt: skip
        (
            _raw(
                cmd="node_options",
                log_level="info",
                retention_check_ms=5,
                cleaner_interval_ms=10,
                heartbeat_timeout_ms=10,
            ),
            "'retention_check_ms'",
        ),  # fmt: skip
    ],
)
def test_bad_commands_are_refused_with_the_reason(raw: bytes, why: str) -> None:
    with pytest.raises(ControlMessageError, match=why):
        decode_command(raw)


@pytest.mark.parametrize(
    "raw",
    [
        _raw(event="ready", slot=1, pid=0, endpoint="tcp://x:1", log_end_offset=0),  # pid 0
        _raw(event="ready", slot=-1, pid=5, endpoint="tcp://x:1", log_end_offset=0),
        _raw(event="alter_isr", slot=1, pid=5, leader_epoch=1),  # no isr
        _raw(event="stopped", slot="1", pid=5),
        _raw(cmd="stop"),
    ],
)
def test_bad_events_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        decode_event(raw)
