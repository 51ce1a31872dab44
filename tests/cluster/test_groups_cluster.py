"""Consumer groups on the three-node bed: one coordinator per group (the leader of its
``__consumer_offsets`` partition), the others answer NOT_COORDINATOR."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipc.client import Consumer, Producer
from tests.cluster.harness import Cluster, request, wait_until


def test_one_coordinator_per_group_and_a_replicated_offsets_topic(cluster_factory: Callable[..., Cluster]) -> None:
    cl = cluster_factory({"zookeeper_session_timeout_ms": 3000})
    cl.create_topic("t", partitions=2, replication_factor=3)
    with Consumer(cl.bootstrap, group_id="gp", auto_offset_reset="earliest") as c:
        c.subscribe(["t"])
        wait_until(lambda: c.poll(100) is not None and c.assignment(), 30, "a partition assignment")
        c.commit({("t", 0): 0, ("t", 1): 0})
    with cl.admin() as admin:
        d = admin.describe_topic("__consumer_offsets")
        assert d["replication_factor"] == 3
        assert int(d["overrides"]["min.insync.replicas"]) == 2
        assert [g["group"] for g in admin.list_groups()] == ["gp"]  # asked of every node, merged
    answers = {request(n.endpoint, "find_coordinator", group="gp").fields["node_id"] for n in cl.nodes}
    assert len(answers) == 1, f"the nodes disagree on the coordinator: {answers}"
    coordinator = answers.pop()
    for n in cl.nodes:
        reply = request(n.endpoint, "describe_group", group="gp")
        if n.node_id == coordinator:
            assert reply.error is None, reply.error
        else:
            assert reply.error is not None and reply.error.code == "NOT_COORDINATOR", reply.error


def test_group_lag_counts_partitions_led_by_other_nodes(cluster_factory: Callable[..., Cluster]) -> None:
    cl = cluster_factory({"zookeeper_session_timeout_ms": 3000})
    cl.create_topic("lagged", partitions=3, replication_factor=2)
    with Producer(cl.bootstrap, acks="all") as p:
        for i in range(30):
            p.send("lagged", b"v%d" % i, partition=i % 3)
        p.flush(30)
    with cl.admin() as admin:
        admin.alter_group_offsets("gl", {("lagged", 0): 4, ("lagged", 1): 4, ("lagged", 2): 4})
        leaders = {cl.partition_state("lagged", p)["leader"] for p in range(3)}
        assert len(leaders) > 1  # the coordinator cannot lead them all

        def lags() -> list[Any] | None:
            parts = sorted(admin.describe_group("gl")["partitions"], key=lambda x: x["partition"])
            got = [(x["log_end_offset"], x["lag"]) for x in parts]
            return got if got == [(10, 6)] * 3 else None

        wait_until(lags, 30, "lag 6 on every partition, wherever its leader is")
