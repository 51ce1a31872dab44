"""The cluster harness: several ``sluice serve`` nodes, each in its own network namespace,
coordinated through a real ZooKeeper on the bridge address.

::

    host namespace (pytest, clients, ZooKeeper on 10.77.X.1:2181)
        │ bridge
        ├── sl<pid>a-n0: node 0  tcp://10.77.X.10:6100
        ├── sl<pid>a-n1: node 1  tcp://10.77.X.11:6100
        └── sl<pid>a-n2: node 2  tcp://10.77.X.12:6100

``ClusterBed`` (the namespaces and ZooKeeper) is built once per test module; each test
gets a fresh ``Cluster`` on it: new data directories and a new ZooKeeper chroot, so
nothing carries over between tests. Node ``i`` has ``node_id == i``.

Every node runs in its own session (process group) inside its namespace; ``kill(sig)``
signals the whole group (supervisor, fork server, workers). Teardown SIGKILLs every
group and then every process still inside the namespaces, heals every link and starts
ZooKeeper again if a test stopped it, even when the test failed. Waiting is polling
with a deadline (``wait_until``), never a bare sleep.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import zmq

from appliance.config import resolve_runtime_dir
from ipc.client import Admin
from ipc.client.transport import Channel
from ipc.errors import SluiceError
from ipc.protocol import Reply
from ipc.records import encode_batch
from tests.integration.conftest import wait_until
from tests.support.netns import Netbed, netns_pids
from tests.support.zookeeper import ZooKeeperServer, require_zookeeper

__all__ = ["Cluster", "ClusterBed", "ClusterNode", "produce_one", "request", "wait_until"]

REPO = Path(__file__).resolve().parents[2]
SLUICE = [sys.executable, "-m", "appliance.cli"]
NODE_PORT = 6100
ZK_PORT = 2181
LOG_TAIL_LINES = 150

# Node options every cluster node gets (short timeouts: failures are detected quickly).
DEFAULT_OPTIONS: dict[str, Any] = {
    "metrics_listen": "",
    "heartbeat_timeout_ms": 2000,
    "restart_backoff_ms": 50,
    "restart_backoff_max_ms": 500,
    "shutdown_timeout_ms": 10_000,
    # the nodes and their clients are in network namespaces, not on loopback: without keys
    # a node would refuse them (protected mode, docs/security.md)
    "security": {"protected_mode": False},
}

_chroots = itertools.count(1)


def toml_text(options: Mapping[str, Any]) -> str:
    """Node options as TOML: scalars first, then one table per mapping value."""
    lines: list[str] = []
    tables: list[str] = []
    for k, v in options.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            tables.append(f"[{k}]")
            tables.extend(f'"{kk}" = {_toml_value(vv)}' for kk, vv in v.items())
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines + tables) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):  # e.g. [security] super_users
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[-1].split()
        # fields after the command: state ppid pgrp ...
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            out.append(int(entry.name))
    return out


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class ClusterBed:
    """The network namespaces and ZooKeeper on the bridge address; shared by the tests of a module."""

    def __init__(self, base: Path, nodes: int = 3) -> None:
        self.base = base
        self.netbed = Netbed(nodes)
        self.zookeeper: ZooKeeperServer | None = None
        self.setup_s = 0.0

    def start(self) -> ClusterBed:
        t0 = time.monotonic()
        require_zookeeper()
        self.netbed.setup()
        try:
            port = ZK_PORT if _port_free(self.netbed.host_address, ZK_PORT) else 0  # 0: any free one
            self.zookeeper = ZooKeeperServer(host=self.netbed.host_address, port=port, tmpdir=self.base)
            self.zookeeper.start()
        except BaseException:
            self.close()
            raise
        self.setup_s = time.monotonic() - t0
        return self

    @property
    def nodes(self) -> int:
        return self.netbed.nodes

    def zk_url(self, chroot: str) -> str:
        """``zookeeper://HOST:PORT/chroot`` for the node option ``coordinator``."""
        assert self.zookeeper is not None, "the bed is not started"
        return self.zookeeper.url(chroot)

    def ensure_zookeeper(self) -> None:
        """Start ZooKeeper again if a test stopped it (it keeps its data)."""
        if self.zookeeper is not None and not self.zookeeper.running():
            self.zookeeper.start()

    def close(self) -> None:
        try:
            if self.zookeeper is not None:
                zk, self.zookeeper = self.zookeeper, None
                zk.close()
        finally:
            self.netbed.teardown()


class ClusterNode:
    """One ``sluice serve`` in namespace ``index`` (``node_id == index``)."""

    def __init__(self, cluster: Cluster, index: int, options: Mapping[str, Any]) -> None:
        self.cluster = cluster
        self.index = index
        self.node_id = index
        self.host = cluster.netbed.address(index)
        self.endpoint = f"tcp://{self.host}:{NODE_PORT}"
        self.data_dir = cluster.base / f"data-{index}"
        self.log_path = cluster.base / f"node-{index}.log"
        self.config_path = cluster.base / f"node-{index}.toml"
        self.options: dict[str, Any] = {
            "node_id": self.node_id,
            "data_dir": str(self.data_dir),
            "listen": self.endpoint,
            "advertised_listen": self.endpoint,
            "coordinator": cluster.coordinator,
            **DEFAULT_OPTIONS,
            **options,
        }
        self.config_path.write_text(toml_text(self.options))
        self.runtime_dir = resolve_runtime_dir(str(self.options.get("runtime_dir") or ""), str(self.data_dir))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"<node {self.node_id} {self.endpoint} pid={self.proc.pid if self.proc else None}>"

    # ---- life cycle ----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """The supervisor's pid (also its process group id)."""
        assert self.proc is not None, f"node {self.node_id} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, timeout: float = 30.0) -> ClusterNode:
        assert not self.running, f"node {self.node_id} is already running"
        self._wait_group_gone()
        self.starts += 1
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("SLUICE_BOOTSTRAP", None)
        with open(self.log_path, "ab") as logf:
            logf.write(f"===== harness: start #{self.starts} of node {self.node_id} =====\n".encode())
            logf.flush()
            self.proc = self.cluster.netbed.run(
                self.index,
                [*SLUICE, "serve", "--config", str(self.config_path)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.cluster.base),
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the node answers ``metadata`` on its endpoint (fails at once if it exits)."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.node_id} exited with {self.proc.returncode}:\n{self.log_tail(40)}")
            with Admin(self.endpoint, timeout_ms=500, security=self.cluster.client_security) as admin:
                admin.list_topics()
            return True

        wait_until(ready, timeout, f"node {self.node_id} to answer on {self.endpoint}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node's whole process group (SIGKILL, SIGTERM, SIGSTOP, SIGCONT, ...)."""
        assert self.proc is not None, f"node {self.node_id} was never started"
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            if sig not in (signal.SIGKILL, signal.SIGCONT):
                raise AssertionError(f"node {self.node_id} is not running (kill {signal.Signals(sig).name})") from None

    def pause(self) -> None:
        self.kill(signal.SIGSTOP)

    def resume(self) -> None:
        self.kill(signal.SIGCONT)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The supervisor's exit status once it exits (``TimeoutExpired`` after ``timeout``)."""
        assert self.proc is not None, f"node {self.node_id} was never started"
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the clean shutdown."""
        if not self.running:
            return self.proc.returncode if self.proc is not None else 0
        self.kill(signal.SIGCONT)  # a paused node cannot shut down
        self.kill(signal.SIGTERM)
        return self.wait_exit(timeout)

    def crash(self) -> None:
        """SIGKILL the whole group and reap the supervisor."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def restart(self, wait: bool = True, timeout: float = 30.0) -> ClusterNode:
        """Start again, with the same data directory and options; a node still running is
        SIGKILLed first (a crash and a restart)."""
        if self.running:
            self.crash()
        return self.start(wait=wait, timeout=timeout)

    def wipe(self) -> None:
        """Delete the data directory (and the runtime directory): a node that lost its disk."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)  # just killed: let it be reaped
        assert not self.running, f"node {self.node_id} must be stopped before wipe()"
        self._wait_group_gone()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def _wait_group_gone(self, timeout: float = 10.0) -> None:
        """Until no process of the previous run is left (workers die with the supervisor)."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        wait_until(lambda: not group_members(pgid), timeout, f"node {self.node_id}'s old processes to exit")

    # ---- network -------------------------------------------------------------------------------
    def isolate(self, side: str = "node") -> None:
        """Cut this node off the network (see ``Netbed.link_down`` for ``side``)."""
        self.cluster.netbed.link_down(self.index, side)
        self.cluster.isolated[self.index] = side

    def heal(self) -> None:
        side = self.cluster.isolated.pop(self.index, "node")
        self.cluster.netbed.link_up(self.index, side)

    # ---- inspection ----------------------------------------------------------------------------
    def admin(self, timeout_ms: int = 10_000) -> Admin:
        """An ``Admin`` that talks to this node only."""
        return Admin(self.endpoint, timeout_ms=timeout_ms, security=self.cluster.client_security)

    def metadata(self, topics: list[str] | None = None, timeout_ms: int = 5000) -> dict[str, Any]:
        """This node's raw ``metadata`` reply (brokers, controller, topics; docs/protocol.md)."""
        with self.admin(timeout_ms) as admin:
            return admin._call("metadata", timeout_ms, topics=topics)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Cluster:
    """``nodes`` nodes on a ``ClusterBed``, with a fresh ZooKeeper chroot and data directories."""

    def __init__(self, bed: ClusterBed, base: Path, options: Mapping[str, Any] | None = None) -> None:
        self.bed = bed
        self.netbed = bed.netbed
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.chroot = f"/sluice-{os.getpid()}-{next(_chroots)}"
        self.coordinator = bed.zk_url(self.chroot)
        self.isolated: dict[int, str] = {}
        # the client side of [security] (ipc/client/transport.py client_context) for the
        # harness's own clients: set it when the nodes have CURVE keys
        self.client_security: dict[str, str] | None = None
        self.nodes = [ClusterNode(self, i, options or {}) for i in range(bed.nodes)]
        self.bootstrap = ",".join(n.endpoint for n in self.nodes)

    @property
    def zookeeper(self) -> ZooKeeperServer:
        """The bed's ZooKeeper: ``stop()`` / ``start()`` it to take the coordinator away."""
        assert self.bed.zookeeper is not None
        return self.bed.zookeeper

    def node(self, i: int) -> ClusterNode:
        return self.nodes[i]

    def start(self, wait: bool = True, timeout: float = 60.0) -> Cluster:
        """Start every node at once, then wait until each answers."""
        for n in self.nodes:
            n.start(wait=False)
        if wait:
            for n in self.nodes:
                n.wait_ready(timeout)
            ids = sorted(n.node_id for n in self.nodes)
            if any(n.options.get("coordinator") == "local" for n in self.nodes):
                return self  # independent one-node clusters (the bed's own tests)

            def all_known() -> bool:  # every node sees every other one registered
                for n in self.nodes:
                    with n.admin(5000) as admin:
                        if sorted(x["node_id"] for x in admin.cluster_status()["nodes"]) != ids:
                            return False
                return True

            wait_until(all_known, timeout, f"nodes {ids} to see each other")
        return self

    def close(self) -> None:
        """Kill every node, heal every link, make sure ZooKeeper runs; never raises for a
        process that is already gone."""
        for n in self.nodes:
            if n.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(n.proc.pid, signal.SIGKILL)
        for n in self.nodes:
            if n.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(10)
        for ns in self.netbed.namespaces:  # anything else still inside: ours, by pid
            for pid in netns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for i in list(self.isolated):
            self.nodes[i].heal()
        for n in self.nodes:
            shutil.rmtree(n.runtime_dir, ignore_errors=True)
        self.bed.ensure_zookeeper()

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        """The tail of every node's log, for a failure message."""
        parts = []
        for n in self.nodes:
            parts.append(f"----- node {n.node_id} ({n.endpoint}) log: {n.log_path} -----\n{n.log_tail(lines)}")
        if self.bed.zookeeper is not None:
            parts.append(f"----- zookeeper {self.bed.zookeeper.address} log -----\n{self.bed.zookeeper.log_tail(40)}")
        return "\n".join(parts)

    # ---- clients -------------------------------------------------------------------------------
    def admin(self, timeout_ms: int = 30_000) -> Admin:
        """An ``Admin`` bootstrapped from every node."""
        return Admin(self.bootstrap, timeout_ms=timeout_ms, security=self.client_security)

    def create_topic(
        self,
        name: str,
        partitions: int = 3,
        replication_factor: int = 3,
        config: dict[str, Any] | None = None,
        timeout_ms: int = 30_000,
    ) -> None:
        with self.admin(timeout_ms) as admin:
            admin.create_topic(name, partitions=partitions, replication_factor=replication_factor, config=config)

    def partition_state(self, topic: str, partition: int, via: int | None = None) -> dict[str, Any]:
        """The partition's metadata (leader, leader_epoch, replicas, isr, endpoint, error) as
        seen by node ``via`` (default: the first running, not isolated node that answers)."""
        if via is not None:
            candidates = [via]
        else:
            candidates = [i for i, n in enumerate(self.nodes) if n.running and i not in self.isolated]
        errors: list[str] = []
        for i in candidates:
            try:
                md = self.nodes[i].metadata([topic])
            except (SluiceError, OSError) as exc:
                errors.append(f"node {i}: {exc}")
                continue
            for t in md.get("topics", []):
                if t["topic"] == topic:
                    for p in t["partitions"]:
                        if p["partition"] == partition:
                            return dict(p)
            errors.append(f"node {i}: no {topic}-{partition} in its metadata")
        raise SluiceError(f"no node described {topic}-{partition} (asked {candidates}): {'; '.join(errors)}")

    def wait_leader(self, topic: str, partition: int, timeout: float = 30.0, not_node: int | None = None) -> int:
        """Until a node reports a leader with an endpoint for the partition (other than
        ``not_node``); returns the leader's node id (== its index)."""

        def leader() -> tuple[int] | None:
            p = self.partition_state(topic, partition)
            lead = p.get("leader")
            if isinstance(lead, int) and lead >= 0 and lead != not_node and p.get("endpoint"):
                return (lead,)
            return None

        found: tuple[int] = wait_until(leader, timeout, f"a leader of {topic}-{partition} (not {not_node})")
        return found[0]


def request(endpoint: str, api: str, timeout_s: float = 10.0, frames: Sequence[Any] = (), **fields: Any) -> Reply:
    """One request on a channel of its own (closed after): a node's front or a worker,
    straight, without the client library's retries."""
    ch = Channel(zmq.Context.instance(), endpoint)
    try:
        return ch.request(api, timeout_s, frames, **fields)
    finally:
        ch.close()


def produce_one(
    endpoint: str, topic: str, partition: int, value: bytes, timeout_s: float = 10.0, **fields: Any
) -> Reply:
    """One record produced with acks=all straight to the worker at ``endpoint``."""
    batch = encode_batch([value])
    return request(endpoint, "produce", timeout_s, [batch], topic=topic, partition=partition, acks="all", **fields)
