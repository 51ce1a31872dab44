"""appliance/systemd.py and appliance/reload.py without processes: an injected clock, a
real datagram socket for the transport, and fake replicas."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from pathlib import Path

import pytest

from appliance.children import ChildState as State
from appliance.config import NodeConfig
from appliance.reload import LIVE, RESTART, plan_reload
from appliance.systemd import KILL_GRACE_S, Notifier, ServiceNotifier, assess, watchdog_usec


@dataclasses.dataclass
class FakeReplica:
    name: str
    state: State = State.SERVING
    pid: int = 100
    killed_at: float = 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bound_socket(abstract: bool, tmp_path: Path) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"@sluice-unit-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name[1:].encode())
    else:
        name = str(tmp_path / "notify.sock")
        sock.bind(name)
    sock.settimeout(2)
    return sock, name


def drain(sock: socket.socket) -> list[dict[str, str]]:
    out = []
    sock.settimeout(0)
    try:
        while True:
            data = sock.recv(4096).decode()
            out.append(dict(line.split("=", 1) for line in data.split("\n")))
    except BlockingIOError:
        pass
    return out


@pytest.mark.parametrize("abstract", [True, False])
def test_notifier_sends_one_datagram_per_message(abstract: bool, tmp_path: Path) -> None:
    sock, name = bound_socket(abstract, tmp_path)
    with sock:
        n = Notifier(name)
        assert n.send(READY=1, STATUS="serving 3 partitions\nsecond line")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving 3 partitions second line"
        n.close()


def test_notifier_without_socket_is_a_no_op() -> None:
    n = Notifier(None)
    assert not n.enabled
    assert not n.send(READY=1)


def test_notifier_survives_a_vanished_systemd(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone.sock"))
    assert not n.send(WATCHDOG=1)  # logged, never raised


def test_from_environ_takes_the_variables_out_and_checks_watchdog_pid() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42", "OTHER": "1"}
    sn = ServiceNotifier.from_environ(env, pid=42)
    assert sn.notifier.address == "@x" and sn.watchdog_interval == 2.0
    assert env == {"OTHER": "1"}  # the fork server and the workers do not inherit them
    assert watchdog_usec({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "41"}, 42) == 0  # meant for another pid
    assert watchdog_usec({"WATCHDOG_USEC": "junk"}, 42) == 0
    no_socket = ServiceNotifier.from_environ({"WATCHDOG_USEC": "4000000"}, pid=42)
    assert no_socket.watchdog_interval == 0.0


def test_assess_defines_stuck_beyond_recovery() -> None:
    now = 500.0
    h = assess([FakeReplica("a-0"), FakeReplica("a-1", State.BACKOFF), FakeReplica("a-2", State.STARTING)], now)
    assert h.healthy and not h.all_serving and (h.serving, h.restarting, h.starting) == (1, 1, 1)
    h = assess([FakeReplica("a-0"), FakeReplica("a-1", State.OFFLINE, pid=0)], now)
    assert not h.healthy and h.offline == ("a-1",)
    # SIGKILLed and reaped quickly: recovering; still there after the grace: stuck
    assert assess([FakeReplica("a-0", killed_at=now - 1)], now).healthy
    stuck = assess([FakeReplica("a-0", killed_at=now - KILL_GRACE_S - 1)], now)
    assert not stuck.healthy and "a-0 (worker 100 alive" in stuck.stuck[0]


def test_service_notifier_ready_watchdog_pace_and_health(tmp_path: Path) -> None:
    sock, name = bound_socket(True, tmp_path)
    clock = Clock()
    sn = ServiceNotifier(Notifier(name), watchdog_usec=2_000_000, clock=clock)
    replicas = [FakeReplica("t-0", State.STARTING), FakeReplica("t-1")]
    with sock:
        sn.tick(replicas, False, "tcp://h:1")
        first = drain(sock)
        assert {"STATUS": "recovering 1 of 2 partitions (1 starting)"} in first
        assert {"WATCHDOG": "1"} in first and {"EXTEND_TIMEOUT_USEC": "30000000"} in first
        assert not any("READY" in m for m in first)
        replicas[0].state = State.SERVING
        clock.now += 0.1
        sn.tick(replicas, False, "tcp://h:1")
        assert drain(sock) == [{"READY": "1", "STATUS": "serving 2 partitions on tcp://h:1"}]
        # one ping per second (half of 2 s), however often the loop ticks
        pings = 0
        for _ in range(50):
            clock.now += 0.1
            sn.tick(replicas, False, "tcp://h:1")
            pings += sum(m == {"WATCHDOG": "1"} for m in drain(sock))
        assert pings == 5
        # offline: no more pings, and the status says why
        replicas[1].state = State.OFFLINE
        for _ in range(30):
            clock.now += 0.1
            sn.tick(replicas, False, "tcp://h:1")
        msgs = drain(sock)
        assert {"WATCHDOG": "1"} not in msgs
        assert msgs == [
            {
                "STATUS": "UNHEALTHY, watchdog pings stopped: offline after repeated crashes: t-1; "
                "serving 1 of 2 partitions on tcp://h:1 (1 offline)"
            }
        ]
        # reload and stop
        sn.notes["reload"] = "restart needed to apply: listen"
        sn.reloading()
        sn.reloaded("tcp://h:1")
        sn.stopping("stopping: 1 worker(s) left")
        msgs = drain(sock)
        assert msgs[0]["RELOADING"] == "1" and int(msgs[0]["MONOTONIC_USEC"]) > 0
        assert msgs[1]["READY"] == "1" and msgs[1]["STATUS"].endswith("; restart needed to apply: listen")
        assert msgs[2] == {"STOPPING": "1", "STATUS": "stopping: 1 worker(s) left"}


def test_reload_plan_splits_live_and_restart_options() -> None:
    assert not LIVE & RESTART and {f.name for f in dataclasses.fields(NodeConfig)} == LIVE | RESTART
    old = NodeConfig(data_dir="/d", log_level="info")
    new = NodeConfig(
        data_dir="/elsewhere", log_level="debug", listen="tcp://127.0.0.1:7000", topic_defaults={"retention.ms": 5}
    )
    plan = plan_reload(old, new)
    assert set(plan.live) == {"log_level", "topic_defaults"}
    assert set(plan.restart) == {"data_dir", "listen"}
    assert plan.config.log_level == "debug" and plan.config.topic_defaults == {"retention.ms": 5}
    assert plan.config.data_dir == "/d" and plan.config.listen == old.listen  # kept until a restart
    assert plan.restart_note == "restart needed to apply: data_dir, listen"
    assert not plan_reload(old, old).live and not plan_reload(old, old).restart
