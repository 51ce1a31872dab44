"""The embedded coordinator for one node: state in ``<data>/__coordinator/state.json``.

Written atomically (tmp, fsync, rename, fsync dir) on every change; read once at start.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson

from appliance.coordinator import PartitionState, TopicInfo
from appliance.log.checkpoint import atomic_write
from ipc.errors import InvalidConfigError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

log = logging.getLogger(__name__)
STATE_DIR = "__coordinator"


class LocalCoordinator:
    def __init__(self, data_dir: str, node_id: int) -> None:
        self.node_id = node_id
        self.directory = os.path.join(data_dir, STATE_DIR)
        self.path = os.path.join(self.directory, "state.json")
        self._topics: dict[str, TopicInfo] = {}

    def load(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        try:
            with open(self.path, "rb") as f:
                raw = orjson.loads(f.read())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InvalidConfigError(f"coordinator state {self.path} is unreadable: {exc}") from exc
        try:
            self._topics = {t["name"]: TopicInfo.from_json(t) for t in raw["topics"]}
        except (KeyError, TypeError) as exc:
            raise InvalidConfigError(f"coordinator state {self.path} is malformed: {exc}") from exc

    def _save(self) -> None:
        data = {"version": 1, "topics": [t.to_json() for t in self._topics.values()]}
        atomic_write(self.path, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def topics(self) -> dict[str, TopicInfo]:
        return dict(self._topics)

    def _get(self, name: str) -> TopicInfo:
        try:
            return self._topics[name]
        except KeyError:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None

    def create_topic(self, name: str, partitions: int, replication_factor: int, config: dict[str, Any]) -> TopicInfo:
        if name in self._topics:
            raise TopicAlreadyExistsError(f"topic {name!r} already exists")
        if replication_factor != 1:
            raise InvalidConfigError(
                f"replication_factor={replication_factor}: this node has 1 live node, so the factor must be 1"
            )
        info = TopicInfo(
            name=name,
            partitions=[PartitionState(self.node_id, 0, [self.node_id], [self.node_id]) for _ in range(partitions)],
            replication_factor=replication_factor,
            config=dict(config),
            created_ms=int(time.time() * 1000),
        )
        self._topics[name] = info
        self._save()
        return info

    def delete_topic(self, name: str) -> None:
        self._get(name)
        del self._topics[name]
        self._save()

    def alter_topic(self, name: str, config: dict[str, Any] | None, partitions: int | None) -> TopicInfo:
        info = self._get(name)
        if partitions is not None:
            if partitions < len(info.partitions):
                raise InvalidConfigError(
                    f"partitions={partitions}: topic {name!r} has {len(info.partitions)}; partitions can only be added"
                )
            for _ in range(partitions - len(info.partitions)):
                info.partitions.append(PartitionState(self.node_id, 0, [self.node_id], [self.node_id]))
        if config is not None:
            info.config = dict(config)
        self._save()
        return info

    def bump_leader_epoch(self, topic: str, partition: int) -> int:
        state = self._get(topic).partitions[partition]
        state.leader_epoch += 1
        self._save()
        return state.leader_epoch
