"""A fake node for unit tests of the node's components (the front endpoint, the group
coordinator): the read-only view they depend on (appliance/nodeview.py), with no socket
and no process.

* The cluster's coordinator is a real ``LocalCoordinator`` in ``tmp_path``; the status
  table a real (file-backed) ``StatusTable`` there.
* ``reconcile()`` adds a STARTING replica for every partition assigned to the node (as
  the supervisor would fork its worker); ``serve(topic, p)`` makes it a serving leader
  and publishes its endpoint, as a worker's ``ready`` would.
* The front socket is ``FrontWire``: it records each reply instead of sending it.
* The clock is a number the test moves.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from appliance.children import ChildState
from appliance.config import NodeConfig
from appliance.controller import Controller
from appliance.coordinator.local import LocalCoordinator
from appliance.gate import Gate
from appliance.log.config import LogConfig
from appliance.nodeview import NodeState
from ipc.control import RoleCommand
from ipc.protocol import Reply, encode_request, parse_reply
from ipc.shm import Role, StatusTable
from metrics.exporter import GroupSnap

PEER = b"\x00client"


@dataclasses.dataclass
class FakeReplica:
    topic: str
    partition: int
    slot: int
    endpoint: str = ""
    state: ChildState = ChildState.STARTING
    pid: int = 0
    restarts: int = 0
    killed_at: float = 0.0
    role: RoleCommand | None = None
    log_config: LogConfig | None = None
    counters: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"


class FrontWire:
    """Stands for the front ROUTER socket: ``send_multipart`` records ``(peer, reply)``."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Reply]] = []

    def send_multipart(self, frames: list[Any], flags: int = 0, copy: bool = True) -> None:
        self.sent.append((bytes(frames[0]), parse_reply(frames[1:])))

    def replies(self) -> dict[int, Reply]:
        """Every reply sent so far, by correlation id (each id must be answered once)."""
        ids = [r.id for _, r in self.sent]
        assert len(ids) == len(set(ids)), f"a request was answered twice: {ids}"
        return {r.id: r for _, r in self.sent}


class FakeNode:
    """Implements appliance.nodeview.NodeView for one node (id 0) of a local cluster."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.config = NodeConfig(data_dir=str(tmp_path / "data"), **config)
        self.state = NodeState.RUNNING
        self.coordinator = LocalCoordinator(self.config.data_dir, self.config.node_id)
        self.coordinator.start(lambda: None)
        self.coordinator.register(self.config.advertised)
        self.controller = Controller(self.coordinator, self.config.topic_defaults)
        self.table = StatusTable.create(tmp_path / "status.shm", self.config.max_partitions, self.config.node_id)
        self.front = FrontWire()
        self.gate = Gate(self.config.security)
        self.now = 1000.0
        self.replicas: dict[tuple[str, int], FakeReplica] = {}
        self.reconciles = 0
        self.is_cut_off = False
        self.isr_shrinks = self.isr_expands = 0
        self._slots = itertools.count()
        self._ports = itertools.count(7000)

    # ---- NodeView ------------------------------------------------------------------------------
    @property
    def ctx(self) -> Any:
        raise AssertionError("a unit test opened a ZeroMQ socket")

    @property
    def poller(self) -> Any:
        raise AssertionError("a unit test opened a ZeroMQ socket")

    def clock(self) -> float:
        return self.now

    def replica(self, topic: str, partition: int) -> FakeReplica | None:
        return self.replicas.get((topic, partition))

    def replica_views(self) -> list[FakeReplica]:
        return list(self.replicas.values())

    def free_slots(self) -> int:
        return self.config.max_partitions - len(self.replicas)

    def cut_off(self) -> bool:
        return self.is_cut_off

    def reconcile(self) -> None:
        self.reconciles += 1
        me = self.config.node_id
        for name, info in self.coordinator.topics().items():
            for p, st in enumerate(info.partitions):
                if me in st.replicas and (name, p) not in self.replicas:
                    self.replicas[(name, p)] = FakeReplica(name, p, next(self._slots))
        for key in [k for k in self.replicas if k[0] not in self.coordinator.topics()]:
            del self.replicas[key]

    def group_summaries(self) -> list[GroupSnap]:
        return []

    # ---- what the workers would do -------------------------------------------------------------
    def serve(self, topic: str, partition: int) -> str:
        """This node's replica of the partition says ready and leads it; returns its endpoint."""
        r = self.replicas[(topic, partition)]
        st = self.coordinator.topics()[topic].partitions[partition]
        r.state = ChildState.SERVING
        r.role = RoleCommand(Role.LEADER, st.leader_epoch, replicas=tuple(st.replicas))
        endpoint = r.endpoint = f"tcp://127.0.0.1:{next(self._ports)}"
        mine = self.coordinator.endpoints().get(self.config.node_id, {})
        self.coordinator.publish_endpoints({**mine, f"{topic}/{partition}": endpoint})
        return endpoint

    def close(self) -> None:
        self.table.close()


def message(api: str, cid: int, **fields: Any) -> list[bytes]:
    """A request as the front socket delivers it: ``[peer identity, header]``."""
    return [PEER, encode_request(api, cid, **fields)]
