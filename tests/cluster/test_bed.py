"""The cluster test bed itself, without any clustering feature of the broker: namespaces
reach each other and the bridge address, ZooKeeper on the bridge answers from inside a
namespace, a cut link isolates a namespace and healing it restores it, teardown (also
after a crash) leaves nothing behind, and the harness drives node processes and the
workload (with each node on its own "local" coordinator)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ipc.client import Admin
from ipc.errors import SluiceError
from tests.cluster.checker import check
from tests.cluster.conftest import require_root
from tests.cluster.harness import Cluster, ClusterBed, group_members, wait_until
from tests.cluster.workload import ProduceWorkload, read_all
from tests.support.netns import Netbed, ip, netns_pids, pid_running, remove_stale

PROBE_PORT = 7100

# A TCP server that accepts and closes connections until killed (bounded at 120 s).
SERVER = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
s.settimeout(0.5)
print("listening", flush=True)
end = time.monotonic() + 120
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except OSError:
        continue
    c.close()
"""

# Connect to ZooKeeper and print its answer to a four-letter word (or the error).
RUOK = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0) as s:
        s.sendall(b"ruok")
        s.shutdown(socket.SHUT_WR)
        print(s.recv(64).decode())
except OSError as e:
    print("error:", e)
"""


def names_of(prefix: str) -> list[str]:
    links = [line.split(":", 2)[1].strip().split("@")[0] for line in ip("-o", "link", "show").splitlines()]
    spaces = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    return sorted(n for n in links + spaces if n.startswith(prefix))


def ruok(bed: ClusterBed, ns: int) -> str:
    assert bed.zookeeper is not None
    zk = bed.zookeeper
    out = subprocess.run(
        ["ip", "netns", "exec", bed.netbed.ns(ns), sys.executable, "-c", RUOK, zk.host, str(zk.port)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return out.stdout.strip()


def test_namespaces_reach_each_other_and_the_bridge(cluster_bed: ClusterBed) -> None:
    nb = cluster_bed.netbed
    # a server in the host namespace on the bridge address: every namespace reaches it
    with socket.socket() as host_server:
        host_server.bind((nb.host_address, 0))
        host_server.listen(16)
        port = host_server.getsockname()[1]
        for i in range(nb.nodes):
            assert nb.probe(i, nb.host_address, port), f"{nb.ns(i)} cannot reach {nb.host_address}:{port}"
    # a server in namespace 1: the others and the host reach it on its own address
    server = nb.run(1, [sys.executable, "-c", SERVER, nb.address(1), str(PROBE_PORT)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == b"listening"
        for i in (0, 2):
            assert nb.probe(i, nb.address(1), PROBE_PORT), f"{nb.ns(i)} cannot reach {nb.address(1)}"
        with socket.create_connection((nb.address(1), PROBE_PORT), timeout=2.0):
            pass
        # the namespaces are separate: namespace 0's loopback does not have namespace 1's server
        assert not nb.probe(0, "127.0.0.1", PROBE_PORT, timeout=0.5)
    finally:
        server.kill()
        server.wait(10)


def test_zookeeper_on_the_bridge_answers_inside_a_namespace(cluster_bed: ClusterBed) -> None:
    for i in range(cluster_bed.nodes):
        assert ruok(cluster_bed, i) == "imok"


@pytest.mark.parametrize("side", ["node", "bridge"])
def test_link_down_isolates_a_namespace_and_link_up_restores_it(cluster_bed: ClusterBed, side: str) -> None:
    nb = cluster_bed.netbed
    assert ruok(cluster_bed, 2) == "imok"
    nb.link_down(2, side)
    try:
        assert not nb.link_is_up(2)
        assert ruok(cluster_bed, 2).startswith("error:")
        assert ruok(cluster_bed, 1) == "imok"  # the others are not affected
        with pytest.raises(OSError):
            socket.create_connection((nb.address(2), 9), timeout=0.5).close()
    finally:
        nb.link_up(2, side)
    assert nb.link_is_up(2)
    assert ruok(cluster_bed, 2) == "imok"


def test_teardown_removes_everything_and_kills_what_ran_inside() -> None:
    require_root()
    nb = Netbed(2)
    with nb:
        prefix = nb.prefix
        assert names_of(prefix) == sorted([nb.bridge, nb.veth(0), nb.veth(1), nb.ns(0), nb.ns(1)])
        sleeper = nb.run(0, ["sleep", "60"])
        # `setsid` forks a grandchild into a session of its own: found by its namespace, not its group
        nb.run(1, ["setsid", "sleep", "60"]).wait(10)
        inside = wait_until(lambda: netns_pids(nb.ns(1)), 5.0, "the grandchild in namespace 1")
    assert names_of(prefix) == []
    assert sleeper.wait(5) == -signal.SIGKILL
    assert not any(pid_running(pid) for pid in inside)
    assert nb.teardown_s < 5.0


def test_cluster_bed_teardown_stops_zookeeper_and_leaves_nothing(tmp_path: Path) -> None:
    require_root()
    bed = ClusterBed(tmp_path).start()
    try:
        assert bed.zookeeper is not None
        proc = bed.zookeeper.proc
        assert proc is not None
        prefix = bed.netbed.prefix
        assert names_of(prefix)
    finally:
        bed.close()
    assert names_of(prefix) == []
    assert proc.poll() is not None
    assert not group_members(proc.pid)


def test_a_bed_left_by_a_dead_process_is_removed_at_setup() -> None:
    require_root()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Netbed(1, prefix=f"sl{dead.pid}").setup()  # "crashes": never torn down
    before = names_of(stale.prefix)
    assert before
    removed = remove_stale()  # (a concurrent session's setup may have removed some of it first)
    assert set(removed) <= set(before)
    assert names_of(stale.prefix) == []


def test_the_harness_drives_node_processes(cluster_factory: Callable[..., Cluster]) -> None:
    """Kill, pause, wipe, restart and isolate nodes. Each node runs the single-node
    ("local") coordinator here, so this needs no clustering feature."""
    cluster = cluster_factory({"coordinator": "local"})
    assert cluster.bootstrap == ",".join(f"tcp://{cluster.netbed.address(i)}:6100" for i in range(3))
    for n in cluster.nodes:
        with n.admin() as admin:
            admin.create_topic(f"bed-{n.node_id}")
        assert n.metadata()["node_id"] == n.node_id
    n0 = cluster.node(0)

    n0.kill(signal.SIGSTOP)
    with pytest.raises(SluiceError), Admin(n0.endpoint, timeout_ms=300) as admin:
        admin.list_topics()
    n0.kill(signal.SIGCONT)
    n0.wait_ready(10)

    workers = [pid for pid in group_members(n0.pid) if pid != n0.pid]
    assert workers, "the node's fork server and workers share its process group"
    n0.kill(signal.SIGKILL)
    assert n0.wait_exit(10) == -signal.SIGKILL
    wait_until(lambda: not group_members(n0.pid), 10, "node 0's workers to exit")
    n0.wipe()
    assert not n0.data_dir.exists()
    n0.restart()
    with n0.admin() as admin:
        assert admin.list_topics() == []  # the wipe took its topic

    n1 = cluster.node(1)
    n1.isolate()
    with pytest.raises(SluiceError), Admin(n1.endpoint, timeout_ms=300) as admin:
        admin.list_topics()
    n1.heal()
    n1.wait_ready(10)
    with n1.admin() as admin:
        assert admin.list_topics() == ["bed-1"]

    assert cluster.node(2).stop() == 0  # SIGTERM: a clean shutdown


def test_the_workload_and_the_checker_on_one_node(cluster_factory: Callable[..., Cluster]) -> None:
    """The produce workload and read_all against one node over the bridge, no faults:
    everything sent is acknowledged and read back, and the checker agrees."""
    cluster = cluster_factory({"coordinator": "local"})
    bootstrap = cluster.node(0).endpoint
    with cluster.node(0).admin() as admin:
        admin.create_topic("workload", partitions=3)
    w = ProduceWorkload(bootstrap, "workload", 3, rate=1000).start()
    try:
        w.wait_acked(300, 20)
    finally:
        w.stop()
    assert w.errors == 0 and w.pending == 0, w.summary()
    assert len(w.acked) == len(w.sent_values)
    assert {p for p, _, _ in w.acked} == {0, 1, 2}
    read = read_all(bootstrap, "workload", 3, timeout=30)
    report = check(w.acked, read, sent=w.sent_values)
    assert report.ok, report.details()
    assert report.acknowledged == report.read == len(w.sent_values)
