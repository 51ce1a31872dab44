"""Cluster administration on the namespaced three-node bed: status, placement errors,
min.insync.replicas, preferred leaders, reassignment under traffic, and clients that
bootstrap from any node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from appliance.status import read_status
from ipc.client import Admin, Consumer, Producer
from ipc.errors import InvalidReplicationFactorError, NotEnoughReplicasError, SluiceError
from tests.cluster.checker import check
from tests.cluster.harness import REPO, Cluster, produce_one, wait_until
from tests.cluster.workload import ProduceWorkload, read_all

OPTIONS = {"zookeeper_session_timeout_ms": 3000, "replica_lag_time_max_ms": 2000}


@pytest.fixture
def cl(cluster_factory: Callable[..., Cluster]) -> Cluster:
    c: Cluster = cluster_factory(OPTIONS)
    return c


def status(cl: Cluster, via: str | None = None) -> dict[str, Any]:
    with Admin(via or cl.bootstrap, timeout_ms=10_000) as admin:
        return admin.cluster_status()


def partition(cl: Cluster, topic: str, p: int = 0, via: int | None = None) -> dict[str, Any]:
    st = status(cl, None if via is None else endpoint_of(cl, via))
    return next(x for x in st["partitions"] if x["topic"] == topic and x["partition"] == p)


def endpoint_of(cl: Cluster, node: int) -> str:
    return cl.node(node).endpoint


def sluice(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, timeout=60, env=env)


def test_cluster_status_cli_and_a_replication_factor_above_the_live_nodes(cl: Cluster) -> None:
    cl.create_topic("st", partitions=3, replication_factor=3)
    res = sluice("cluster", "status", "--json", "--bootstrap", cl.node(1).endpoint)
    assert res.returncode == 0, res.stderr.decode()
    st = orjson.loads(res.stdout)
    assert sorted(n["node_id"] for n in st["nodes"]) == [0, 1, 2]
    assert st["controller"] in (0, 1, 2)
    parts = [p for p in st["partitions"] if p["topic"] == "st"]
    assert len(parts) == 3
    assert sorted(p["leader"] for p in parts) == [0, 1, 2]  # leaders spread over the nodes
    for p in parts:
        assert sorted(p["replicas"]) == [0, 1, 2] and sorted(p["isr"]) == [0, 1, 2]
        assert not p["under_replicated"] and not p["offline"]
    text = sluice("cluster", "status", "--bootstrap", cl.bootstrap)
    assert text.returncode == 0 and b"controller: node" in text.stdout and b"st " in text.stdout

    with pytest.raises(InvalidReplicationFactorError, match="larger than the 3 live node"):
        cl.create_topic("too-many", partitions=1, replication_factor=4)
    res = sluice("topics", "create", "too-many", "--replication-factor", "4", "--bootstrap", cl.bootstrap)
    assert res.returncode != 0 and b"INVALID_REPLICATION_FACTOR" in res.stderr
    with Admin(cl.bootstrap) as admin:
        assert "too-many" not in admin.list_topics()


def test_acks_all_needs_min_insync_replicas(cl: Cluster) -> None:
    cl.create_topic("mir", partitions=1, replication_factor=3, config={"min.insync.replicas": 2})
    leader = cl.wait_leader("mir", 0)
    with Producer(cl.bootstrap, acks="all") as p:
        assert p.send("mir", b"ok", partition=0).result(30).offset == 0
    for n in range(3):
        if n != leader:
            cl.node(n).crash()
    wait_until(lambda: partition(cl, "mir", via=leader)["isr"] == [leader], 30, "the ISR to shrink to the leader")
    endpoint = cl.partition_state("mir", 0, via=leader)["endpoint"]
    # the wire answer, typed (the Producer retries it until delivery_timeout_ms)
    reply = produce_one(endpoint, "mir", 0, b"refused", timeout_s=30)
    assert isinstance(reply.error, NotEnoughReplicasError), reply
    assert "min.insync.replicas=2" in reply.error.message
    with Producer(endpoint_of(cl, leader), acks="all", delivery_timeout_ms=3000) as p, pytest.raises(SluiceError):
        p.send("mir", b"refused-too", partition=0).result(30)
    with Producer(endpoint_of(cl, leader), acks=1) as p:  # acks=1 does not wait for replicas
        assert p.send("mir", b"one", partition=0).result(30).offset == 1


def test_preferred_leader_takes_its_partition_back_after_it_returns(cl: Cluster) -> None:
    cl.create_topic("pref", partitions=1, replication_factor=3)
    preferred = partition(cl, "pref")["replicas"][0]
    assert cl.wait_leader("pref", 0) == preferred
    cl.node(preferred).crash()
    other = cl.wait_leader("pref", 0, timeout=30, not_node=preferred)
    assert other != preferred
    cl.node(preferred).restart()

    def back() -> bool:
        p = partition(cl, "pref")
        return p["leader"] == preferred and sorted(p["isr"]) == [0, 1, 2]

    wait_until(back, 60, f"node {preferred} leading pref-0 again")


def test_reassignment_while_traffic_flows_loses_nothing(cl: Cluster) -> None:
    cl.create_topic("moving", partitions=1, replication_factor=2, config={"min.insync.replicas": 1})
    before = partition(cl, "moving")["replicas"]
    newcomer = next(n for n in range(3) if n not in before)
    target = [newcomer, before[0]]
    with ProduceWorkload(cl.bootstrap, "moving", 1, rate=300) as wl:
        wl.wait_acked(200, 60)
        res = sluice(
            "cluster", "reassign", "moving", "--replicas", ",".join(map(str, target)), "--bootstrap", cl.bootstrap
        )
        assert res.returncode == 0, res.stderr.decode()

        def moved() -> bool:
            p = partition(cl, "moving")
            return p["replicas"] == target and p["target_replicas"] is None and p["leader"] == newcomer

        wait_until(moved, 60, f"moving-0 reassigned to {target}")
        wl.wait_acked(200, 60)
        wl.stop()
    gone = before[1]
    wait_until(
        lambda: not (cl.node(gone).data_dir / "moving-0").exists(), 30, f"node {gone} to remove its replica"
    )
    report = check(wl.acked, read_all(cl.bootstrap, "moving", 1, timeout=60), sent=wl.sent_values)
    print(f"moving: {report.line()} ({wl.summary()})")
    assert report.ok, report.details()


def test_a_reassignment_to_more_replicas_is_the_topics_replication_factor(cl: Cluster) -> None:
    """describe_topic shows, and added partitions get, partition 0's replica count after
    a reassignment, as Kafka derives it, not the factor the topic was created with."""
    cl.create_topic("growing", partitions=1, replication_factor=1)
    with Admin(cl.bootstrap) as admin:
        assert admin.describe_topic("growing")["replication_factor"] == 1
        first = partition(cl, "growing")["replicas"]
        target = [*first, *(n for n in range(3) if n not in first)]
        admin.reassign("growing", 0, target)

        def moved() -> bool:
            p = partition(cl, "growing")
            return p["replicas"] == target and p["target_replicas"] is None

        wait_until(moved, 60, f"growing-0 reassigned to {target}")
        assert admin.describe_topic("growing")["replication_factor"] == 3
        admin.alter_topic("growing", partitions=2)
        wait_until(lambda: len(partition(cl, "growing", 1)["replicas"]) == 3, 30, "growing-1 with 3 replicas")


def test_clients_bootstrap_from_any_live_node_and_learn_the_cluster(cl: Cluster) -> None:
    cl.create_topic("boot", partitions=3, replication_factor=3)
    cl.node(0).kill(signal.SIGKILL)
    cl.node(0).wait_exit(10)
    for p in range(3):
        cl.wait_leader("boot", p, timeout=30, not_node=0)
    expected = []
    dead_first = f"{cl.node(0).endpoint},{cl.node(1).endpoint}"
    with Producer(dead_first, acks="all") as producer:
        for i in range(30):
            producer.send("boot", f"v{i}".encode(), partition=i % 3)
            expected.append(f"v{i}".encode())
        producer.flush(60)
    # bootstrapped from node 2 alone, the producer learns node 1 and keeps working without 2
    with Producer(cl.node(2).endpoint, acks="all") as producer:
        for i in range(10):
            producer.send("boot", f"w{i}".encode(), partition=i % 3).result(30)
            expected.append(f"w{i}".encode())
        cl.node(2).kill(signal.SIGKILL)
        cl.node(2).wait_exit(10)
        for p in range(3):
            cl.wait_leader("boot", p, timeout=30, not_node=2)
        for i in range(10):
            producer.send("boot", f"x{i}".encode(), partition=i % 3)
            expected.append(f"x{i}".encode())
        producer.flush(60)
    with Consumer([cl.node(0).endpoint, cl.node(1).endpoint], auto_offset_reset="earliest") as consumer:
        consumer.assign([("boot", p) for p in range(3)])
        got: list[bytes] = []

        def read() -> bool:
            got.extend(r.value for r in consumer.poll(200) if r.value is not None)
            return len(got) >= len(expected)

        wait_until(read, 60, f"{len(expected)} records through a bootstrap list whose first node is down")
    assert sorted(got) == sorted(expected)


def test_a_leader_replica_that_crash_loops_offline_hands_over_its_leadership(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cl = cluster_factory({**OPTIONS, "max_restarts": 1})
    cl.create_topic("loop", partitions=1, replication_factor=3)
    leader = cl.wait_leader("loop", 0)
    with cl.node(leader).admin() as admin:
        killed: list[int] = []

        status_path = os.path.join(cl.node(leader).runtime_dir, "status.shm")

        def serving_pid() -> int | None:  # a worker other than the ones already killed
            # pids from the node's status table on this host: remote clients are not told pids
            p = next(x for x in read_status(status_path)["partitions"] if (x["topic"], x["partition"]) == ("loop", 0))
            pid = int(p.get("pid") or 0)
            return pid if p.get("state") == "serving" and pid and pid not in killed else None

        for _ in range(2):  # two crashes within the window: offline (max_restarts=1)
            killed.append(wait_until(serving_pid, 30, f"a new loop-0 worker serving on node {leader}"))
            os.kill(killed[-1], signal.SIGKILL)
        wait_until(lambda: admin.describe_topic("loop")["partitions"][0].get("state") == "offline", 30, "offline")
    new = cl.wait_leader("loop", 0, timeout=30, not_node=leader)
    assert new != leader
    with Producer(cl.bootstrap, acks="all") as p:
        assert p.send("loop", b"still writable", partition=0).result(30).offset >= 0
