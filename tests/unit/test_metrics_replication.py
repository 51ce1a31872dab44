"""sluice_under_replicated_partitions is the real count (issue 19: the
SluiceUnderReplicatedPartitions alert must be able to fire): partitions this node leads
whose in-sync replicas are fewer than their replicas, from the roles the node sent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from appliance.children import ChildState
from appliance.nodeview import NodeState
from ipc.control import RoleCommand
from ipc.shm import Role
from metrics.node import NodeMetrics


def replica(partition: int, role: RoleCommand | None) -> Any:
    return SimpleNamespace(
        topic="t",
        partition=partition,
        slot=partition,
        state=ChildState.SERVING,
        pid=0,
        restarts=0,
        counters=(0, 0, 0, 0),
        role=role,
    )


def test_under_replicated_counts_led_partitions_with_a_short_isr() -> None:
    replicas = [
        replica(0, RoleCommand(Role.LEADER, 3, replicas=(0, 1, 2), isr={0: 1, 1: 1, 2: 1})),  # full ISR
        replica(1, RoleCommand(Role.LEADER, 3, replicas=(0, 1, 2), isr={0: 1})),  # short: counts
        replica(2, RoleCommand(Role.LEADER, 3, replicas=(0, 1, 2), isr={0: 1, 2: 1})),  # short: counts
        replica(3, RoleCommand(Role.FOLLOWER, 3, "tcp://x:1", replicas=(0, 1, 2), isr={1: 1})),  # its leader's to count
        replica(4, None),  # no role yet
    ]
    node = SimpleNamespace(
        config=SimpleNamespace(node_id=0),
        state=NodeState.RUNNING,
        coordinator=SimpleNamespace(is_controller=lambda: True),
        isr_shrinks=4,
        isr_expands=1,
        replica_views=lambda: replicas,
        group_summaries=lambda: [],
        health=lambda now: SimpleNamespace(healthy=True, problems=lambda: ""),
    )
    metrics = NodeMetrics(node)  # type: ignore[arg-type]
    metrics.tick(100.0)
    assert metrics.snapshot.under_replicated == 2
    assert (metrics.snapshot.isr_shrinks, metrics.snapshot.isr_expands) == (4, 1)
