"""The coordinator: where cluster metadata lives, and who is alive.

``Coordinator`` is the interface the node (supervisor, controller, front) uses. Two
backends implement it:

- ``local`` (``appliance/coordinator/local.py``): one node, state in its data directory,
  written atomically. The node is always registered and always the controller.
- ``zookeeper`` (``appliance/coordinator/zookeeper/``, kazoo): ephemeral znodes for
  node liveness, kazoo's election recipe for the controller, one versioned znode per
  partition state updated with compare-and-set. ``coordinator =
  "zookeeper://host:2181,host:2181/sluice"``.

The coordinator is a *store with watches*: it holds the desired state (topics, their
partition states) and who is alive; the controller (``appliance/controller.py``) and
every node's supervisor reconcile against it whenever ``wake`` says something changed.
Snapshots returned by the read methods are immutable by convention: never mutate one,
build a new value with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from ipc.errors import ConcurrentModificationError

NO_LEADER = -1


@dataclasses.dataclass(frozen=True)
class PartitionState:
    """A partition's replication state (Kafka's LeaderAndIsr), owned by the controller."""

    leader: int  # node id; NO_LEADER (-1) while no replica can lead
    leader_epoch: int
    replicas: list[int]  # assigned nodes; the first is the preferred leader
    isr: list[int]  # in-sync replicas (always includes the leader while there is one)
    # node -> that node's registration epoch when it entered the ISR (KIP-903): a node
    # that restarted (new epoch) is not counted in sync until it catches up again
    isr_epochs: dict[int, int] = dataclasses.field(default_factory=dict)
    target_replicas: list[int] | None = None  # a reassignment in progress (sluice cluster reassign)
    version: int = -1  # the store's version of this state: the compare-and-set token

    def to_json(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "leader_epoch": self.leader_epoch,
            "replicas": list(self.replicas),
            "isr": list(self.isr),
            "isr_epochs": {str(k): v for k, v in self.isr_epochs.items()},
            "target_replicas": None if self.target_replicas is None else list(self.target_replicas),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], version: int = -1) -> PartitionState:
        target = d.get("target_replicas")
        return cls(
            leader=int(d["leader"]),
            leader_epoch=int(d["leader_epoch"]),
            replicas=[int(x) for x in d["replicas"]],
            isr=[int(x) for x in d["isr"]],
            isr_epochs={int(k): int(v) for k, v in (d.get("isr_epochs") or {}).items()},
            target_replicas=None if target is None else [int(x) for x in target],
            version=version,
        )


@dataclasses.dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: list[PartitionState]
    replication_factor: int
    config: dict[str, Any]  # overrides of the node's topic defaults (Kafka names)
    created_ms: int

    @property
    def current_replication_factor(self) -> int:
        """Partition 0's replica count (its target while a reassignment runs), as Kafka
        derives a topic's replication factor: a reassignment changes it, while the stored
        ``replication_factor`` stays what the topic was created with."""
        if not self.partitions:
            return self.replication_factor
        p0 = self.partitions[0]
        return len(p0.target_replicas or p0.replicas)

    def meta_json(self) -> dict[str, Any]:
        """The topic's own fields, without partition states."""
        return {
            "name": self.name,
            "replication_factor": self.replication_factor,
            "config": dict(self.config),
            "created_ms": self.created_ms,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.meta_json(), "partitions": [p.to_json() for p in self.partitions]}

    @classmethod
    def from_json(cls, d: dict[str, Any], partitions: list[PartitionState] | None = None) -> TopicInfo:
        return cls(
            name=d["name"],
            partitions=partitions if partitions is not None else [PartitionState.from_json(p) for p in d["partitions"]],
            replication_factor=int(d["replication_factor"]),
            config=dict(d["config"]),
            created_ms=int(d["created_ms"]),
        )


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    node_id: int
    endpoint: str  # the node's advertised front endpoint (advertised_listen)
    epoch: int  # registration epoch: different every time the node (re)registers


class StaleStateError(ConcurrentModificationError):
    """A compare-and-set lost: someone changed the partition state first (retriable)."""


class Coordinator(Protocol):
    node_id: int

    # ---- life cycle -----------------------------------------------------------------
    def start(self, wake: Callable[[], None]) -> None:
        """Connect and load; from now on call ``wake()`` (from any thread) whenever
        anything the read methods return may have changed (nodes, controller, topics,
        partition states, endpoints, the session's state)."""

    def register(self, endpoint: str) -> int:
        """Register this node as alive with its advertised front endpoint; return its
        registration epoch. Blocks until registered (a previous registration of this
        node id whose session has not expired yet is waited for)."""

    def close(self) -> None:
        """Deregister (the node's ephemeral state goes at once) and disconnect."""

    def connected(self) -> bool:
        """False while the session is suspended or lost: stop acting as a leader."""

    # ---- reads (cached snapshots; cheap) ---------------------------------------------
    def nodes(self) -> dict[int, NodeInfo]: ...

    def controller(self) -> int:
        """Node id of the current controller, -1 while there is none."""

    def is_controller(self) -> bool: ...

    def topics(self) -> dict[str, TopicInfo]: ...

    def endpoints(self) -> dict[int, dict[str, str]]:
        """node id -> {"topic/partition": that node's worker endpoint}."""

    def document(self, name: str) -> tuple[Any, int]:
        """A cluster document ("acls", "quotas"): (its JSON value or None, its version;
        -1 if never written)."""

    # ---- writes -------------------------------------------------------------------------
    def create_topic(self, info: TopicInfo) -> None:
        """Create the topic and its partition states atomically; TopicAlreadyExistsError."""

    def delete_topic(self, name: str) -> None:
        """UnknownTopicOrPartitionError if absent."""

    def set_topic_config(self, name: str, config: dict[str, Any]) -> None: ...

    def add_partitions(self, name: str, states: list[PartitionState]) -> None:
        """Append partitions ``len(current)..`` with these initial states."""

    def set_partition_state(self, topic: str, partition: int, state: PartitionState) -> PartitionState:
        """Compare-and-set against ``state.version``; return the stored state (with its
        new version). StaleStateError when the stored version differs."""

    def publish_endpoints(self, endpoints: dict[str, str]) -> None:
        """This node's worker endpoints ({"topic/partition": "tcp://host:port"})."""

    def next_producer_id(self) -> int:
        """A cluster-unique producer id (idempotent producers)."""

    def set_document(self, name: str, value: Any, version: int) -> None:
        """Replace a cluster document if its version is still ``version`` (-1: create it);
        StaleStateError otherwise. Every node's ``wake`` is called once it changed."""
