"""Writes through a ZooKeeper outage: leaders keep leading, as Kafka's ZooKeeper-mode brokers do.

Three nodes, a real ZooKeeper stopped for 30 s (ten session timeouts) and started again
while idempotent ``acks=all`` producers write to three partitions with replication
factor 3 and ``min.insync.replicas=2``. Writes must go on throughout the outage (the ISR
cannot change without the coordinator, so each one is on every in-sync replica before it
is acknowledged), and afterwards ``tests/cluster/checker.py`` must find nothing lost,
inconsistent, duplicated or missing. See docs/replication.md ("Fencing").
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.cluster.checker import check
from tests.cluster.harness import Cluster, wait_until
from tests.cluster.test_failover import fully_in_sync
from tests.cluster.workload import ProduceWorkload, read_all

PARTITIONS = 3
OPTIONS = {"zookeeper_session_timeout_ms": 3000, "replica_lag_time_max_ms": 2000}
OUTAGE_S = 30.0
STEP = 150  # records acknowledged per step: at 300 records/s, about half a second
STEP_TIMEOUT_S = 5.0  # a step slower than this is a stall


@pytest.fixture
def cl(cluster_factory: Callable[..., Cluster]) -> Cluster:
    c: Cluster = cluster_factory(OPTIONS)
    return c


def test_writes_continue_while_zookeeper_is_down_and_nothing_is_lost(cl: Cluster) -> None:
    topic = "zkdown"
    cl.create_topic(topic, partitions=PARTITIONS, replication_factor=3, config={"min.insync.replicas": 2})
    with ProduceWorkload(cl.bootstrap, topic, PARTITIONS, rate=300) as wl:
        wl.wait_acked(STEP, 60)
        cl.zookeeper.stop()
        try:
            began = time.monotonic()
            before = wl.acknowledged
            steps = 0
            # the outage is the fault itself: its length is the test's subject, and the
            # workload must acknowledge STEP more records every STEP_TIMEOUT_S throughout
            while time.monotonic() - began < OUTAGE_S:
                wl.wait_acked(STEP, STEP_TIMEOUT_S)
                steps += 1
            during = wl.acknowledged - before
        finally:
            cl.zookeeper.start()
        wl.wait_acked(STEP, 60)
        wl.stop()
    print(f"{topic}: {during} records acknowledged during {OUTAGE_S:.0f} s without ZooKeeper ({steps} steps)")
    assert during >= STEP * steps
    wait_until(lambda: fully_in_sync(cl, topic), 60, f"every replica of {topic} in sync after the outage")
    read = read_all(cl.bootstrap, topic, PARTITIONS, timeout=60)
    report = check(wl.acked, read, sent=wl.sent_values)
    print(f"{topic}: {report.line()} ({wl.summary()})")
    assert report.ok, report.details()
