"""The client's view of the cluster: topic -> partitions -> leader endpoint and epoch."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ipc.client.transport import BootstrapChannel
from ipc.errors import SluiceError, UnknownTopicOrPartitionError, error_for_code


@dataclasses.dataclass(frozen=True)
class PartitionInfo:
    topic: str
    partition: int
    leader: int
    leader_epoch: int
    endpoint: str | None
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    error: SluiceError | None


@dataclasses.dataclass
class TopicMetadata:
    name: str
    partitions: list[PartitionInfo]
    error: SluiceError | None


def _error(obj: Any) -> SluiceError | None:
    if not obj:
        return None
    return error_for_code(str(obj.get("code")), str(obj.get("message", "")))


class ClusterMetadata:
    def __init__(self, bootstrap: BootstrapChannel, timeout_s: float, allow_auto_create: bool = True) -> None:
        """``allow_auto_create``: whether naming an unknown topic may create it (on a
        node with ``auto_create_topics``), as Kafka's ``allow_auto_topic_creation``: a
        producer's may, a consumer's never does."""
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._create = {} if allow_auto_create else {"allow_auto_create": False}
        self.topics: dict[str, TopicMetadata] = {}
        self.brokers: list[dict[str, Any]] = []
        self.updated = 0.0

    def refresh(self, topics: list[str] | None, timeout_s: float | None = None) -> dict[str, TopicMetadata]:
        reply = self.bootstrap.request("metadata", timeout_s or self.timeout_s, topics=topics, **self._create)
        reply.raise_for_error()
        self.brokers = list(reply.fields.get("brokers", []))
        self.bootstrap.learn([b.get("endpoint") for b in self.brokers if isinstance(b, dict)])
        out: dict[str, TopicMetadata] = {}
        for t in reply.fields.get("topics", []):
            parts = [
                PartitionInfo(
                    topic=t["topic"],
                    partition=p["partition"],
                    leader=p["leader"],
                    leader_epoch=p["leader_epoch"],
                    endpoint=p["endpoint"],
                    replicas=tuple(p["replicas"]),
                    isr=tuple(p["isr"]),
                    error=_error(p.get("error")),
                )
                for p in t["partitions"]
            ]
            md = TopicMetadata(t["topic"], parts, _error(t.get("error")))
            out[md.name] = md
            if md.error is None:
                self.topics[md.name] = md
            else:
                self.topics.pop(md.name, None)
        self.updated = time.monotonic()
        return out

    def wait_for(self, topic: str, timeout_s: float, need_leaders: bool = True) -> TopicMetadata:
        """Metadata of ``topic`` with a serving leader for every partition, refreshing
        with back-off until ``timeout_s``; raises the last error."""
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            md = self.refresh([topic], max(0.1, deadline - time.monotonic())).get(topic)
            err: SluiceError | None = None
            if md is None:
                err = UnknownTopicOrPartitionError(f"no metadata for topic {topic!r}")
            elif md.error is not None:
                err = md.error
            elif need_leaders:
                err = next((p.error for p in md.partitions if p.error is not None or p.endpoint is None), None)
            if err is None and md is not None:
                return md
            assert err is not None
            if not err.retriable or time.monotonic() + delay > deadline:
                raise err
            time.sleep(delay)  # back-off between metadata refreshes (not synchronisation)
            delay = min(delay * 2, 0.5)
