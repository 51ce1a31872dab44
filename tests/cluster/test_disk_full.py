"""A full disk on one node is answered, not crashed on (issue 20, item 2).

Node 0's data directory is a small tmpfs this test mounts (as root). While an
``acks=all`` workload writes to a topic with three partitions (replication factor 3,
``min.insync.replicas=2``; node 0 leads one of them), a filler file fills that
filesystem. Node 0's workers must stay up (no restart, never offline) and report the
condition in ``sluice status``; the partition it led moves to another in-sync replica
and the workload keeps being acknowledged. Then the filler is deleted: within 30 s,
without a restart, node 0 is back in every ISR, its storage errors are gone and it
leads its preferred partition again. The checker finds every acknowledged record.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.checker import check
from tests.cluster.harness import SLUICE, Cluster, ClusterNode, wait_until
from tests.cluster.workload import ProduceWorkload, read_all

TOPIC = "full"
PARTITIONS = 3
OPTIONS = {"zookeeper_session_timeout_ms": 3000, "replica_lag_time_max_ms": 2000}
TMPFS_SIZE = "48m"
RECOVERY_S = 30.0


def node_status(node: ClusterNode) -> list[dict[str, Any]]:
    """``sluice status --json`` of ``node``, as an operator runs it."""
    out = subprocess.run(
        [*SLUICE, "status", "--json", "--config", str(node.config_path)],
        check=True,
        capture_output=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    parts: list[dict[str, Any]] = json.loads(out.stdout)["partitions"]
    return parts


def partitions(cl: Cluster) -> list[dict[str, Any]]:
    with cl.admin(10_000) as admin:
        found: list[dict[str, Any]] = admin.cluster_status()["partitions"]
    return found


def fill(path: Path) -> None:
    """Write ``path`` until its filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    chunk = bytes(1 << 20)
    try:
        while True:
            try:
                written = os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
            if written < len(chunk):
                chunk = chunk[:4096]
    finally:
        os.close(fd)


@pytest.fixture
def cl(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    c: Cluster = cluster_factory(OPTIONS, start=False)
    data = c.node(0).data_dir
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(data)], check=True)
    try:
        c.start()
        yield c
    finally:
        c.close()
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_full_disk_moves_leadership_and_recovers_without_a_restart(cl: Cluster) -> None:
    node = cl.node(0)
    cl.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3, config={"min.insync.replicas": 2})
    led = [p["partition"] for p in partitions(cl) if p["topic"] == TOPIC and p["replicas"][0] == 0]
    assert led, "node 0 is the preferred leader of one partition"
    filler = node.data_dir / "filler"
    with ProduceWorkload(cl.bootstrap, TOPIC, PARTITIONS, rate=300) as wl:
        wl.wait_acked(150, 60)
        fill(filler)
        try:

            def reports_disk_full() -> bool:
                ours = [p for p in node_status(node) if p["topic"] == TOPIC]
                return any(p["storage_error"] and p["state"] == "disk_error" for p in ours)

            wait_until(reports_disk_full, 30, "node 0 to report its storage error in sluice status")
            # the partition it led moves to another in-sync replica; writes go on
            for p in led:
                cl.wait_leader(TOPIC, p, timeout=30, not_node=0)
            wl.wait_acked(150, 60)
            mine = node_status(node)
            assert all(p["restarts"] == 0 and p["state"] != "offline" for p in mine), mine
        finally:
            filler.unlink()
        freed = time.monotonic()

        def recovered() -> bool:
            parts = partitions(cl)
            in_sync = all(0 in p["isr"] for p in parts if 0 in p["replicas"])
            leads = all(p["leader"] == 0 for p in parts if p["topic"] == TOPIC and p["partition"] in led)
            clear = not any(p["storage_error"] for p in node_status(node))
            return in_sync and leads and clear

        wait_until(recovered, RECOVERY_S, "node 0 back in every ISR, leading its partition, no storage error")
        print(f"node 0 recovered {time.monotonic() - freed:.1f} s after the filler was deleted")
        mine = node_status(node)
        assert all(p["restarts"] == 0 and p["state"] == "serving" for p in mine), mine
        wl.wait_acked(150, 60)
        wl.stop()
    read = read_all(cl.bootstrap, TOPIC, PARTITIONS, timeout=60)
    report = check(wl.acked, read, sent=wl.sent_values)
    print(f"{TOPIC}: {report.line()} ({wl.summary()})")
    assert report.ok, report.details()
