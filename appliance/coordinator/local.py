"""The embedded coordinator for one node: state in ``<data>/__coordinator/state.json``.

Written atomically (tmp, fsync, rename, fsync dir) on every change; read once at start.
The node is the only one alive and always the controller; its registration epoch is a
counter kept in the same file, bumped on every start (so a restart looks, to the
controller, like what it is: a node that went away and came back).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import orjson

from appliance.coordinator import NodeInfo, PartitionState, StaleStateError, TopicInfo
from appliance.log.checkpoint import atomic_write
from ipc.errors import InvalidConfigError, TopicAlreadyExistsError, UnknownTopicOrPartitionError
from ipc.private import make_private_dir

log = logging.getLogger(__name__)
STATE_DIR = "__coordinator"


class LocalCoordinator:
    def __init__(self, data_dir: str, node_id: int) -> None:
        self.node_id = node_id
        self.directory = os.path.join(data_dir, STATE_DIR)
        self.path = os.path.join(self.directory, "state.json")
        self._topics: dict[str, TopicInfo] = {}
        self._node: NodeInfo | None = None
        self._node_epoch = 0
        self._next_producer_id = 1000
        self._endpoints: dict[str, str] = {}
        self._documents: dict[str, tuple[Any, int]] = {}  # name -> (value, version)
        self._wake: Callable[[], None] = lambda: None

    # ---- life cycle -------------------------------------------------------------------
    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        make_private_dir(self.directory)  # 0700, whatever the umask (ipc/private.py)
        try:
            with open(self.path, "rb") as f:
                raw = orjson.loads(f.read())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InvalidConfigError(f"coordinator state {self.path} is unreadable: {exc}") from exc
        try:
            self._topics = {t["name"]: _load_topic(t) for t in raw["topics"]}
            self._node_epoch = int(raw.get("node_epoch", 0))
            self._next_producer_id = int(raw.get("next_producer_id", 1000))
            self._documents = {str(k): (v["value"], int(v["version"])) for k, v in raw.get("documents", {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidConfigError(f"coordinator state {self.path} is malformed: {exc}") from exc

    def register(self, endpoint: str) -> int:
        self._node_epoch += 1
        self._save()
        self._node = NodeInfo(self.node_id, endpoint, self._node_epoch)
        self._wake()
        return self._node_epoch

    def close(self) -> None:
        self._node = None

    def connected(self) -> bool:
        return True

    def _save(self) -> None:
        data = {
            "version": 2,
            "node_epoch": self._node_epoch,
            "next_producer_id": self._next_producer_id,
            "documents": {k: {"value": v, "version": n} for k, (v, n) in self._documents.items()},
            "topics": [t.to_json() | {"versions": [p.version for p in t.partitions]} for t in self._topics.values()],
        }
        atomic_write(self.path, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    # ---- reads ----------------------------------------------------------------------------
    def nodes(self) -> dict[int, NodeInfo]:
        return {self.node_id: self._node} if self._node is not None else {}

    def controller(self) -> int:
        return self.node_id if self._node is not None else -1

    def is_controller(self) -> bool:
        return self._node is not None

    def topics(self) -> dict[str, TopicInfo]:
        return self._topics

    def endpoints(self) -> dict[int, dict[str, str]]:
        return {self.node_id: self._endpoints}

    def document(self, name: str) -> tuple[Any, int]:
        return self._documents.get(name, (None, -1))

    # ---- writes ---------------------------------------------------------------------------
    def _get(self, name: str) -> TopicInfo:
        try:
            return self._topics[name]
        except KeyError:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None

    def _put(self, info: TopicInfo | None, name: str) -> None:
        topics = dict(self._topics)  # a new snapshot: readers may hold the old one
        if info is None:
            topics.pop(name, None)
        else:
            topics[name] = info
        self._topics = topics
        self._save()
        self._wake()

    def create_topic(self, info: TopicInfo) -> None:
        if info.name in self._topics:
            raise TopicAlreadyExistsError(f"topic {info.name!r} already exists")
        parts = [dataclasses.replace(p, version=0) for p in info.partitions]
        self._put(dataclasses.replace(info, partitions=parts), info.name)

    def delete_topic(self, name: str) -> None:
        self._get(name)
        self._put(None, name)

    def set_topic_config(self, name: str, config: dict[str, Any]) -> None:
        self._put(dataclasses.replace(self._get(name), config=dict(config)), name)

    def add_partitions(self, name: str, states: list[PartitionState]) -> None:
        info = self._get(name)
        parts = info.partitions + [dataclasses.replace(p, version=0) for p in states]
        self._put(dataclasses.replace(info, partitions=parts), name)

    def set_partition_state(self, topic: str, partition: int, state: PartitionState) -> PartitionState:
        info = self._get(topic)
        current = info.partitions[partition]
        if current.version != state.version:
            raise StaleStateError(f"{topic}-{partition}: version {state.version}, stored {current.version}")
        stored = dataclasses.replace(state, version=state.version + 1)
        parts = list(info.partitions)
        parts[partition] = stored
        self._put(dataclasses.replace(info, partitions=parts), topic)
        return stored

    def publish_endpoints(self, endpoints: dict[str, str]) -> None:
        if endpoints != self._endpoints:
            self._endpoints = dict(endpoints)
            self._wake()

    def set_document(self, name: str, value: Any, version: int) -> None:
        if self.document(name)[1] != version:
            raise StaleStateError(f"{name}: version {version}, stored {self.document(name)[1]}")
        self._documents = {**self._documents, name: (value, version + 1)}
        self._save()
        self._wake()

    def next_producer_id(self) -> int:
        pid = self._next_producer_id
        self._next_producer_id += 1
        self._save()
        return pid


def _load_topic(d: dict[str, Any]) -> TopicInfo:
    versions = d.get("versions") or [0] * len(d["partitions"])
    parts = [PartitionState.from_json(p, v) for p, v in zip(d["partitions"], versions, strict=True)]
    return TopicInfo.from_json(d, parts)
