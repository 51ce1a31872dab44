"""Topic writes: a topic's znodes are created and deleted whole, in one multi-op each;
its config and its partition list change by compare-and-set on the topic znode's version.

Each write returns once this node's snapshot shows it (``Snapshots.wait_for``). A
read-modify-write that keeps losing races gives up after ``MAX_CAS_ATTEMPTS`` with
``StaleStateError``. Partition states are the controller's, written by
``partition_state.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError

from appliance.coordinator import PartitionState, StaleStateError, TopicInfo
from appliance.coordinator.zookeeper.layout import PARTITIONS, Layout, dumps
from appliance.coordinator.zookeeper.session import MAX_CAS_ATTEMPTS, Session, first_error, unexpected
from appliance.coordinator.zookeeper.snapshots import Snapshots
from ipc.errors import InvalidConfigError, TopicAlreadyExistsError, UnknownTopicOrPartitionError


class TopicWriter:
    """``create_topic``, ``delete_topic``, ``set_topic_config`` and ``add_partitions`` of
    the ``Coordinator`` interface."""

    def __init__(self, session: Session, layout: Layout, snapshots: Snapshots) -> None:
        self.session = session
        self.layout = layout
        self.snapshots = snapshots

    def create_topic(self, info: TopicInfo) -> None:
        client = self.session.require()
        if not info.name or "/" in info.name or info.name in (".", ".."):
            raise InvalidConfigError(f"topic name {info.name!r} cannot be a ZooKeeper znode name")
        path = self.layout.topic_path(info.name)
        tx = client.transaction()
        tx.create(path, dumps(info.meta_json()))
        tx.create(f"{path}/{PARTITIONS}", b"")
        for p, state in enumerate(info.partitions):
            tx.create(f"{path}/{PARTITIONS}/{p}", dumps(state.to_json()))
        err = first_error(self.session.call(tx.commit_async(), f"creating topic {info.name!r}"))
        if isinstance(err, NodeExistsError):
            raise TopicAlreadyExistsError(f"topic {info.name!r} already exists")
        if err is not None:
            raise unexpected(err, f"creating topic {info.name!r}")
        n = len(info.partitions)
        self.snapshots.wait_for(
            lambda: (t := self.snapshots.topics.get(info.name)) is not None and len(t.partitions) >= n, "create"
        )

    def delete_topic(self, name: str) -> None:
        client = self.session.require()
        path = self.layout.topic_path(name)
        for attempt in range(MAX_CAS_ATTEMPTS):
            try:
                subtree = self._subtree(path)
            except NoNodeError:
                raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None
            tx = client.transaction()
            for p in subtree:  # children before parents
                tx.delete(p)
            err = first_error(self.session.call(tx.commit_async(), f"deleting topic {name!r}"))
            if err is None:
                break
            if not isinstance(err, NoNodeError | NotEmptyError):
                raise unexpected(err, f"deleting topic {name!r}")
            self.session.backoff(attempt)  # changed under us (partitions added, or deleted meanwhile): look again
        else:
            raise StaleStateError(f"topic {name!r} kept changing while being deleted ({MAX_CAS_ATTEMPTS} attempts)")
        self.snapshots.wait_for(lambda: name not in self.snapshots.topics, "delete")

    def set_topic_config(self, name: str, config: dict[str, Any]) -> None:
        client = self.session.require()
        path = self.layout.topic_path(name)
        for attempt in range(MAX_CAS_ATTEMPTS):
            try:
                data, stat = self.session.call(client.get_async(path), f"reading topic {name!r}")
            except NoNodeError:
                raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None
            meta = orjson.loads(data)
            meta["config"] = dict(config)
            try:
                self.session.call(client.set_async(path, dumps(meta), stat.version), f"writing topic {name!r}")
                break
            except BadVersionError:
                self.session.backoff(attempt)
            except NoNodeError:
                raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None
        else:
            raise StaleStateError(f"topic {name!r} kept changing while its config was written")
        want = dict(config)
        self.snapshots.wait_for(lambda: (t := self.snapshots.topics.get(name)) is None or t.config == want, "config")

    def add_partitions(self, name: str, states: list[PartitionState]) -> None:
        """Create partitions ``len(current)..`` in one multi-op that also checks the topic
        znode's version: StaleStateError when partitions were added concurrently."""
        if not states:
            return
        client = self.session.require()
        path = self.layout.topic_path(name)
        try:
            _, stat = self.session.call(client.get_async(path), f"reading topic {name!r}")
            children = self.session.call(client.get_children_async(f"{path}/{PARTITIONS}"), f"listing {name!r}")
        except NoNodeError:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None
        first = len(children)
        tx = client.transaction()
        tx.check(path, stat.version)  # the topic is still this one (not deleted, not re-created)
        for i, state in enumerate(states):
            tx.create(f"{path}/{PARTITIONS}/{first + i}", dumps(state.to_json()))
        err = first_error(self.session.call(tx.commit_async(), f"adding partitions to {name!r}"))
        if isinstance(err, NodeExistsError | BadVersionError):
            raise StaleStateError(f"topic {name!r} changed while partitions {first}.. were added; read it again")
        if isinstance(err, NoNodeError):
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        if err is not None:
            raise unexpected(err, f"adding partitions to {name!r}")
        total = first + len(states)
        self.snapshots.wait_for(
            lambda: (t := self.snapshots.topics.get(name)) is None or len(t.partitions) >= total, "add partitions"
        )

    def _subtree(self, path: str, depth: int = 0) -> list[str]:
        """``path`` and its descendants, children first (for a multi-op delete)."""
        if depth > 4:
            raise InvalidConfigError(f"{path}: deeper than this coordinator's layout")
        client = self.session.client
        out: list[str] = []
        for child in self.session.call(client.get_children_async(path), f"listing {path}"):
            out += self._subtree(f"{path}/{child}", depth + 1)
        out.append(path)
        return out
