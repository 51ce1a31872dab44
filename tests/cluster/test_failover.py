"""Failover that loses no acknowledged record: a Jepsen-style queue check under faults.

Three nodes in their own network namespaces, a real ZooKeeper, a topic with three
partitions, replication factor 3 and ``min.insync.replicas=2``. Producers send with
``acks=all`` (and idempotence, the default) while a fault hits the leader of partition
0; after the fault heals a consumer reads every partition to its end and
``tests/cluster/checker.py`` compares: no acknowledged record lost, no offset holding
two values, no duplicate, no gap. Every run prints its counts.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from ipc.client import Consumer, Producer
from ipc.errors import SluiceError
from tests.cluster.checker import check
from tests.cluster.harness import Cluster, ClusterNode, produce_one, wait_until
from tests.cluster.workload import ProduceWorkload, read_all

PARTITIONS = 3
TOPIC_CONFIG = {"min.insync.replicas": 2}
# fast failure detection: ZooKeeper sessions of 3 s, followers out of the ISR after 2 s
OPTIONS = {"zookeeper_session_timeout_ms": 3000, "replica_lag_time_max_ms": 2000}
PROGRESS = 150  # records acknowledged after each fault: the cluster works again


@pytest.fixture
def cl(cluster_factory: Callable[..., Cluster]) -> Cluster:
    c: Cluster = cluster_factory(OPTIONS)
    return c


def cluster_status(cl: Cluster) -> dict[str, Any]:
    with cl.admin(10_000) as admin:
        return admin.cluster_status()


def fully_in_sync(cl: Cluster, topic: str) -> bool:
    parts = [p for p in cluster_status(cl)["partitions"] if p["topic"] == topic]
    return bool(parts) and all(len(p["isr"]) == 3 and not p["offline"] for p in parts)


def run_checked(cl: Cluster, topic: str, fault: Callable[[Cluster, ProduceWorkload], None]) -> None:
    cl.create_topic(topic, partitions=PARTITIONS, replication_factor=3, config=dict(TOPIC_CONFIG))
    with ProduceWorkload(cl.bootstrap, topic, PARTITIONS, rate=300) as wl:
        wl.wait_acked(PROGRESS, 60)
        fault(cl, wl)
        wl.wait_acked(PROGRESS, 60)
        wl.stop()
    wait_until(lambda: fully_in_sync(cl, topic), 60, f"every replica of {topic} back in sync")
    read = read_all(cl.bootstrap, topic, PARTITIONS, timeout=60)
    report = check(wl.acked, read, sent=wl.sent_values)
    print(f"{topic}: {report.line()} ({wl.summary()})")
    assert report.ok, report.details()
    assert report.acknowledged > 2 * PROGRESS


def leader_of(cl: Cluster, topic: str, partition: int = 0, not_node: int | None = None) -> int:
    return cl.wait_leader(topic, partition, timeout=60, not_node=not_node)


def cut_off_leader(
    cl: Cluster,
    wl: ProduceWorkload,
    topic: str,
    cut: Callable[[ClusterNode], None],
    mend: Callable[[ClusterNode], None],
) -> None:
    """Cut partition 0's leader off (``cut``), wait until another replica leads and the
    workload makes progress, then ``mend`` it (also on failure)."""
    old = leader_of(cl, topic)
    node = cl.node(old)
    cut(node)
    try:
        leader_of(cl, topic, not_node=old)
        wl.wait_acked(PROGRESS // 2, 60)
    finally:
        mend(node)


def bounces(topic: str, rounds: int, hard: bool) -> Callable[[Cluster, ProduceWorkload], None]:
    """The fault: take the leader's node down (SIGKILL, or SIGTERM and a clean exit),
    wait for another leader and for progress, start it again, ``rounds`` times."""

    def fault(cl: Cluster, wl: ProduceWorkload) -> None:
        for _ in range(rounds):
            old = leader_of(cl, topic)
            node = cl.node(old)
            if hard:
                node.kill(signal.SIGKILL)
                node.wait_exit(10)
            else:
                assert node.stop(30) == 0
            leader_of(cl, topic, not_node=old)
            wl.wait_acked(PROGRESS // 2, 60)
            node.restart()
            wait_until(lambda: fully_in_sync(cl, topic), 60, "the bounced node back in every ISR")

    return fault


def test_hard_bounce_of_the_leader_loses_nothing(cl: Cluster) -> None:
    run_checked(cl, "hard", bounces("hard", rounds=3, hard=True))


def test_clean_bounce_of_the_leader_loses_nothing(cl: Cluster) -> None:
    run_checked(cl, "clean", bounces("clean", rounds=2, hard=False))


def test_paused_leader_is_deposed_and_takes_no_write_after_it_resumes(cl: Cluster) -> None:
    late = b"late-write-to-a-deposed-leader"

    def fault(cl: Cluster, wl: ProduceWorkload) -> None:
        endpoint = cl.partition_state("paused", 0)["endpoint"]
        # longer than the 3 s session: ZooKeeper expires it, a follower takes over
        cut_off_leader(cl, wl, "paused", ClusterNode.pause, ClusterNode.resume)
        # the resumed node still has the worker it had: a write straight to it with
        # acks=all must not be acknowledged (deposed: NOT_LEADER, or no ISR to commit it)
        try:
            reply = produce_one(endpoint, "paused", 0, late, timeout_s=15, timeout_ms=5000)
        except SluiceError as exc:  # no answer at all is not an acknowledgement either
            print(f"late write: {exc}")
        else:
            assert reply.error is not None, f"a deposed leader acknowledged a write: {reply.fields}"
            print(f"late write refused: {reply.error}")
        wait_until(lambda: fully_in_sync(cl, "paused"), 60, "the resumed node back in every ISR")

    run_checked(cl, "paused", fault)
    read = read_all(cl.bootstrap, "paused", PARTITIONS, timeout=60)
    assert all(r[2] != late for r in read), "the deposed leader's late write became visible"


def test_network_partition_isolating_the_leader_loses_nothing(cl: Cluster) -> None:
    def fault(cl: Cluster, wl: ProduceWorkload) -> None:
        cut_off_leader(cl, wl, "split", ClusterNode.isolate, ClusterNode.heal)
        wait_until(lambda: fully_in_sync(cl, "split"), 60, "the isolated node back in every ISR")

    run_checked(cl, "split", fault)


def test_controller_killed_loses_nothing(cl: Cluster) -> None:
    def fault(cl: Cluster, wl: ProduceWorkload) -> None:
        ctl = cluster_status(cl)["controller"]
        assert ctl in (0, 1, 2)
        cl.node(ctl).kill(signal.SIGKILL)
        cl.node(ctl).wait_exit(10)

        def new_controller() -> bool:
            c = cluster_status(cl)["controller"]
            return c not in (-1, ctl)

        wait_until(new_controller, 60, f"a controller other than node {ctl}")
        wl.wait_acked(PROGRESS // 2, 60)
        cl.node(ctl).restart()
        wait_until(lambda: fully_in_sync(cl, "ctl"), 60, "the old controller back in every ISR")

    run_checked(cl, "ctl", fault)


def test_wiped_follower_re_replicates_before_it_rejoins_the_isr(cl: Cluster) -> None:
    topic = "wiped"
    cl.create_topic(topic, partitions=PARTITIONS, replication_factor=3, config=dict(TOPIC_CONFIG))
    with ProduceWorkload(cl.bootstrap, topic, PARTITIONS, rate=300) as wl:
        wl.wait_acked(PROGRESS, 60)
        leader = leader_of(cl, topic)
        victim = next(n for n in range(3) if n != leader)
        cl.node(victim).crash()
        cl.node(victim).wipe()
        wl.wait_acked(PROGRESS // 2, 60)
        cl.node(victim).start()
        wait_until(lambda: fully_in_sync(cl, topic), 90, f"wiped node {victim} back in every ISR")
        wl.wait_acked(PROGRESS // 2, 60)
        wl.stop()
    # Now only the wiped node keeps the data: if it re-entered the ISR without every
    # committed record, the check below finds them lost.
    others = [n for n in range(3) if n != victim]
    for n in others:
        cl.node(n).crash()
    for p in range(PARTITIONS):
        wait_until(
            lambda p=p: cl.partition_state(topic, p, via=victim).get("leader") == victim
            and cl.partition_state(topic, p, via=victim).get("endpoint"),
            60,
            f"node {victim} leading {topic}-{p} alone",
        )
    read = read_all(cl.node(victim).endpoint, topic, PARTITIONS, timeout=60)
    report = check(wl.acked, read, sent=wl.sent_values)
    print(f"{topic} (read from the wiped node alone): {report.line()} ({wl.summary()})")
    assert report.ok, report.details()


def test_consumer_group_keeps_consuming_through_a_leader_failover(cl: Cluster) -> None:
    topic = "grouped"
    cl.create_topic(topic, partitions=1, replication_factor=3, config=dict(TOPIC_CONFIG))
    with Producer(cl.bootstrap, acks="all") as producer:
        for i in range(100):
            producer.send(topic, f"before-{i}".encode(), partition=0)
        producer.flush(30)
        seen: list[bytes] = []
        with Consumer(cl.bootstrap, group_id="g-failover", auto_offset_reset="earliest") as consumer:
            consumer.subscribe([topic])

            def got(n: int) -> bool:
                seen.extend(r.value for r in consumer.poll(200) if r.value is not None)
                return len(seen) >= n

            wait_until(lambda: got(100), 60, "the first 100 records")
            old = leader_of(cl, topic)
            cl.node(old).kill(signal.SIGKILL)
            leader_of(cl, topic, not_node=old)
            for i in range(100):
                producer.send(topic, f"after-{i}".encode(), partition=0)
            producer.flush(60)
            wait_until(lambda: got(200), 90, "the 100 records produced after the failover")
    assert seen[:100] == [f"before-{i}".encode() for i in range(100)]
    assert sorted(seen[100:]) == sorted(f"after-{i}".encode() for i in range(100))


def test_committed_offsets_survive_the_loss_of_the_group_coordinator(cl: Cluster) -> None:
    cl.create_topic("kept", partitions=1, replication_factor=3, config=dict(TOPIC_CONFIG))
    tp = ("kept", 0)

    def coordinator() -> int:
        with cl.admin(10_000) as admin:
            node: int = admin._call("find_coordinator", group="g-kept")["node_id"]
        return node

    with cl.admin() as admin:
        admin.alter_group_offsets("g-kept", {tp: 42})
    old = coordinator()
    st = cluster_status(cl)
    offsets = [p for p in st["partitions"] if p["topic"] == "__consumer_offsets"]
    assert offsets and all(len(p["replicas"]) == 3 for p in offsets), "__consumer_offsets is not replicated"
    cl.node(old).kill(signal.SIGKILL)
    cl.node(old).wait_exit(10)

    def moved() -> bool:
        try:
            return coordinator() != old
        except SluiceError:
            return False

    wait_until(moved, 60, f"a group coordinator other than node {old}")
    with Consumer(cl.bootstrap, group_id="g-kept", enable_auto_commit=False) as c:
        committed = wait_until(lambda: c.committed([tp]).get(tp), 60, "the committed offset on the new coordinator")
    assert committed == 42
