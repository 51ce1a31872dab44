"""A node paused as a whole (SIGSTOP to its process group, then SIGCONT) for longer than
the heartbeat timeout: its supervisor was paused with its workers, so it must not take
them for hung and kill them (issue 20, item 3; pitfalls.md item 15)."""

from __future__ import annotations

import os
import signal
import time

from tests.integration.conftest import Node
from tests.integration.test_groups import hold

PAUSE_S = 3.5  # longer than the node's heartbeat_timeout_ms (2 s in conftest.Node)


def test_a_paused_node_keeps_its_workers(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("paused", 2)
    pids = {p: node.wait_serving("paused", p) for p in range(2)}
    assert node.proc is not None
    os.killpg(node.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)  # the fault itself: the whole node stopped this long
    finally:
        os.killpg(node.proc.pid, signal.SIGCONT)

    def same_workers() -> bool:
        return all(node.partition("paused", p)["pid"] == pid for p, pid in pids.items())

    hold(same_workers, 3.0, "every worker kept (none killed as hung)")  # a kill comes within a tick (0.1 s)
    assert all(node.partition("paused", p)["restarts"] == 0 for p in pids)
    assert "silent for" not in node.log_path.read_text()
    with node.admin() as admin:
        admin.list_topics()  # and the node serves
