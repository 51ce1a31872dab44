"""DeleteRecords on a three-node cluster (issue 19): the followers take the leader's new
log start offset from their fetches and keep it when one of them becomes leader; and
``sluice status`` on the new leader's node counts the partition under-replicated while
the old leader is down."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from appliance.status import read_status
from ipc.client import Consumer, Producer, TopicPartition
from tests.cluster.harness import REPO, Cluster, wait_until

OPTIONS = {"zookeeper_session_timeout_ms": 3000, "replica_lag_time_max_ms": 2000}
TOPIC = "trim"


def log_start_on(cl: Cluster, node: int) -> int:
    """The log start offset of trim-0's replica on ``node``, from that node's status table."""
    st = read_status(os.path.join(cl.node(node).runtime_dir, "status.shm"))
    return int(next(p for p in st["partitions"] if (p["topic"], p["partition"]) == (TOPIC, 0))["log_start_offset"])


def test_followers_take_the_log_start_and_keep_it_after_a_failover(cluster_factory: Callable[..., Cluster]) -> None:
    cl = cluster_factory(OPTIONS)
    cl.create_topic(TOPIC, partitions=1, replication_factor=3)
    leader = cl.wait_leader(TOPIC, 0)
    with Producer(cl.bootstrap, acks="all") as p:
        for f in [p.send(TOPIC, b"v%d" % i, partition=0) for i in range(100)]:
            f.result(30)
    tp = TopicPartition(TOPIC, 0)
    with cl.admin() as admin:
        assert admin.delete_records({tp: 40}) == {tp: 40}
    followers = [n for n in range(3) if n != leader]
    for n in followers:  # from their next fetch reply (a parked fetch answers within 0.5 s)
        wait_until(lambda n=n: log_start_on(cl, n) == 40, 15, f"node {n}'s trim-0 starting at 40")

    cl.node(leader).kill()
    new = cl.wait_leader(TOPIC, 0, timeout=30, not_node=leader)
    assert new in followers
    with cl.admin() as admin:
        wait_until(lambda: admin.list_offsets({tp: "earliest"})[tp] == 40, 30, "the new leader answering 40")
    c = Consumer(cl.bootstrap, auto_offset_reset="earliest")
    try:
        c.assign([tp])
        c.seek_to_beginning()
        got: list[int] = []
        for _ in range(300):  # bounded: each poll waits at most 100 ms
            got.extend(r.offset for r in c.poll(100))
            if len(got) >= 60:
                break
    finally:
        c.close()
    assert got == list(range(40, 100))

    # the old leader is out of the ISR: its successor's node counts trim-0 under-replicated
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def summary() -> str:
        out = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "status", "--config", str(cl.node(new).config_path)]
            + ["--topic", TOPIC],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()[-1]

    expected = "1 partition(s): 1 serving, 1 under-replicated, 0 offline, 0 other"
    wait_until(lambda: summary() == expected, 30, f"sluice status saying {expected!r}")
