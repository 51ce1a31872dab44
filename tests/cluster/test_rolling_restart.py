"""A rolling restart with controlled shutdown (appliance/handover.py): no partition goes
without acknowledgements for a second, and nothing acknowledged is lost.

Three nodes, a topic with six partitions (two led by each node), replication factor 3
and ``min.insync.replicas=2``, an idempotent ``acks=all`` workload. Each node in turn
gets SIGTERM (to the supervisor alone, as systemd's ``KillMode=mixed`` sends it), exits,
and starts again; the next one goes once every replica is back in sync. The bound of
1 s is the feature's promise (leadership moves before the workers stop), not a
benchmark; every other wait is generous.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from tests.cluster.checker import check
from tests.cluster.harness import Cluster, wait_until
from tests.cluster.workload import ProduceWorkload, read_all

PARTITIONS = 6
TOPIC = "rolling"
OPTIONS = {"zookeeper_session_timeout_ms": 3000, "replica_lag_time_max_ms": 2000}
MAX_GAP_S = 1.0


def fully_in_sync(cl: Cluster) -> bool:
    with cl.admin(10_000) as admin:
        status: dict[str, Any] = admin.cluster_status()
    parts = [p for p in status["partitions"] if p["topic"] == TOPIC]
    return len(parts) == PARTITIONS and all(len(p["isr"]) == 3 and not p["offline"] for p in parts)


def test_rolling_restart_with_controlled_shutdown_keeps_every_partition_available(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cl: Cluster = cluster_factory(OPTIONS)
    cl.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3, config={"min.insync.replicas": 2})
    with ProduceWorkload(cl.bootstrap, TOPIC, PARTITIONS, rate=600) as wl:
        wl.wait_acked(600, 60)
        since = time.monotonic()
        for node in cl.nodes:
            wait_until(lambda: fully_in_sync(cl), 60, f"every replica in sync before restarting node {node.node_id}")
            os.kill(node.pid, signal.SIGTERM)
            assert node.wait_exit(40) == 0, node.log_tail(40)
            assert "leadership moved off this node" in node.log_text(), node.log_tail(60)
            node.start(timeout=60)
        wait_until(lambda: fully_in_sync(cl), 60, "every replica in sync after the rolling restart")
        wl.wait_acked(600, 60)
        until = time.monotonic()
        wl.stop()
    gaps = wl.longest_ack_gaps(since, until)
    print(
        f"{TOPIC}: longest gap without an acknowledgement per partition: "
        + ", ".join(f"{p}: {g:.3f} s" for p, g in sorted(gaps.items()))
    )
    read = read_all(cl.bootstrap, TOPIC, PARTITIONS, timeout=60)
    report = check(wl.acked, read, sent=wl.sent_values)
    print(f"{TOPIC}: {report.line()} ({wl.summary()})")
    assert report.ok, report.details()
    slow = {p: round(g, 3) for p, g in gaps.items() if g >= MAX_GAP_S}
    assert not slow, f"partitions without an acknowledgement for {MAX_GAP_S} s or more: {slow} ({wl.summary()})"
