"""The coordinator: where cluster metadata lives (topics, partition state).

``Coordinator`` is the interface the supervisor uses; ``local`` (this node's data
directory, the embedded default) implements it today. ZooKeeper arrives with
clustering and implements the same interface.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol


@dataclasses.dataclass
class PartitionState:
    leader: int  # node id
    leader_epoch: int
    replicas: list[int]
    isr: list[int]


@dataclasses.dataclass
class TopicInfo:
    name: str
    partitions: list[PartitionState]
    replication_factor: int
    config: dict[str, Any]  # overrides of the node's topic defaults (Kafka names)
    created_ms: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TopicInfo:
        return cls(
            name=d["name"],
            partitions=[PartitionState(**p) for p in d["partitions"]],
            replication_factor=d["replication_factor"],
            config=dict(d["config"]),
            created_ms=d["created_ms"],
        )


class Coordinator(Protocol):
    def topics(self) -> dict[str, TopicInfo]: ...

    def create_topic(
        self, name: str, partitions: int, replication_factor: int, config: dict[str, Any]
    ) -> TopicInfo: ...

    def delete_topic(self, name: str) -> None: ...

    def alter_topic(self, name: str, config: dict[str, Any] | None, partitions: int | None) -> TopicInfo: ...

    def bump_leader_epoch(self, topic: str, partition: int) -> int: ...
