"""``[kafka] listener_processes``: several Kafka listener processes share ``kafka_listen``
through ``SO_REUSEPORT`` (appliance/kafka/child.py); each is a supervised child of the
node, and a killed one is restarted beside the others."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable

import pytest

from tests.integration.conftest import Node, free_port, wait_until
from tests.integration.test_kafka_listener import _api_versions

pytestmark = pytest.mark.slow
PROCESSES = 3
CONNECTIONS = 60


def listener_pids(node: Node) -> dict[int, str]:
    """pid -> title of the node's Kafka listener processes (its session's ``sluice: kafka-listener*``)."""
    assert node.proc is not None
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != node.proc.pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        if title.startswith("sluice: kafka-listener"):
            out[int(entry)] = title
    return out


def holders(port: int, pids: list[int], state: str = "01") -> dict[int, int]:
    """pid -> how many TCP sockets on local ``port`` in ``state`` (01: established, 0A:
    listening) its file descriptors hold."""
    inodes: dict[str, int] = {}
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local, st, inode = parts[1], parts[3], parts[9]
            if st == state and int(local.split(":")[1], 16) == port:
                inodes[inode] = 0
    counts = dict.fromkeys(pids, 0)
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                counts[pid] += 1
    return counts


def test_listener_processes_share_the_port_and_a_killed_one_is_restarted(
    node_factory: Callable[..., Node],
) -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    node = node_factory(kafka_listen=addr, kafka={"listener_processes": PROCESSES}, offsets_topic_partitions=1)
    node.start()
    def all_up() -> dict[int, str] | None:
        found = listener_pids(node)
        return found if len(found) == PROCESSES else None

    pids = wait_until(all_up, 20, f"{PROCESSES} listener processes")
    assert sorted(pids.values()) == ["sluice: kafka-listener", "sluice: kafka-listener-1", "sluice: kafka-listener-2"]
    wait_until(lambda: all(holders(port, list(pids), state="0A").values()), 20, "every listener's socket listening")
    assert _api_versions(addr) is not None

    spread_over(port, pids)  # each of the three serves
    for _ in range(20):
        assert _api_versions(addr) is not None

    # one SIGKILLed: restarted by the node, the port served throughout
    victim = next(pid for pid, title in pids.items() if title == "sluice: kafka-listener-1")
    os.kill(victim, signal.SIGKILL)
    for _ in range(20):  # the other two keep serving (a connection the dead one had queued may fail)
        if _api_versions(addr) is not None:
            break
    else:
        raise AssertionError("no listener answered after one was killed")

    def restarted() -> dict[int, str] | None:
        found = listener_pids(node)
        ok = len(found) == PROCESSES and victim not in found and "sluice: kafka-listener-1" in found.values()
        return found if ok else None

    after = wait_until(restarted, 20, "the killed listener restarted")
    assert set(pids) - {victim} <= set(after)  # the other two were not touched
    new = (set(after) - set(pids)).pop()
    wait_until(lambda: holders(port, [new], state="0A")[new] == 1, 20, "the new listener's socket listening")
    wait_until(lambda: _api_versions(addr) is not None, 20, "the listeners answering")
    spread_over(port, after)  # the new one serves too
    assert all(_api_versions(addr) is not None for _ in range(20))


def spread_over(port: int, pids: dict[int, str]) -> None:
    """Many connections at once: the kernel spreads them over every process (each accepts)."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CONNECTIONS)]
    try:

        def accepted() -> dict[int, int] | None:
            held = holders(port, list(pids))
            return held if sum(held.values()) == CONNECTIONS else None

        spread = wait_until(accepted, 20, "every connection accepted")
        assert all(n > 0 for n in spread.values()), f"a listener process took no connection: {spread}"
    finally:
        for c in conns:
            c.close()
