"""The replication metrics on a real three-node cluster (issue 19: the
SluiceUnderReplicatedPartitions alert must be able to fire): a node SIGKILLed leaves the
ISRs, and the other nodes' sluice_under_replicated_partitions add up to the partitions
cluster status calls under-replicated (each counted by its leader's node), with an ISR
shrink counted; back in sync, 0 everywhere and an expand."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.harness import Cluster, wait_until

METRICS_PORT = 9464
OPTIONS = {
    "zookeeper_session_timeout_ms": 3000,
    "replica_lag_time_max_ms": 2000,
    "metrics_listen": f"0.0.0.0:{METRICS_PORT}",  # each node in its own namespace: one port for all
}


def node_metric(cl: Cluster, node: int, name: str) -> float:
    url = f"http://{cl.node(node).host}:{METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - a test's own node
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and not s.labels:
                return float(s.value)
    raise AssertionError(f"{name} not in {url}")


def under_replicated_in_status(cl: Cluster) -> int:
    with cl.admin(10_000) as admin:
        return sum(1 for p in admin.cluster_status()["partitions"] if p["under_replicated"])


def test_under_replicated_partitions_and_isr_changes_are_exported(cluster_factory: Callable[..., Cluster]) -> None:
    cl = cluster_factory(OPTIONS)
    cl.create_topic("ur", partitions=1, replication_factor=3)
    leader = cl.wait_leader("ur", 0)
    wait_until(lambda: len(cl.partition_state("ur", 0)["isr"]) == 3, 30, "the full ISR")
    wait_until(lambda: under_replicated_in_status(cl) == 0, 30, "every partition in sync")
    assert [node_metric(cl, n, "sluice_under_replicated_partitions") for n in range(3)] == [0, 0, 0]
    shrinks = node_metric(cl, leader, "sluice_isr_shrinks_total")
    follower = next(i for i in range(3) if i != leader)
    live = [i for i in range(3) if i != follower]

    # every partition with a replica on the killed node (__consumer_offsets' too) becomes
    # under-replicated, each counted once, by its leader's node
    cl.node(follower).kill(signal.SIGKILL)
    wait_until(lambda: len(cl.partition_state("ur", 0)["isr"]) == 2, 30, f"node {follower} out of the ISR")

    def counted() -> bool:
        exported = sum(node_metric(cl, n, "sluice_under_replicated_partitions") for n in live)
        return exported == under_replicated_in_status(cl) and exported >= 1

    wait_until(counted, 30, "the nodes' under-replicated counts to add up to the cluster status")
    assert node_metric(cl, leader, "sluice_under_replicated_partitions") >= 1  # ur-0 at least
    assert node_metric(cl, leader, "sluice_isr_shrinks_total") >= shrinks + 1
    expands = node_metric(cl, leader, "sluice_isr_expands_total")

    cl.node(follower).restart()
    wait_until(
        lambda: [node_metric(cl, n, "sluice_under_replicated_partitions") for n in range(3)] == [0, 0, 0],
        60,
        "every node to report its partitions in sync again",
    )
    assert node_metric(cl, leader, "sluice_isr_expands_total") >= expands + 1
