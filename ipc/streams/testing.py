"""``TopologyTestDriver``: run an app's topology on in-memory records, without a node.

Like Kafka Streams' driver of the same name: the topology is planned with the partition
counts you give, every task runs in this process, records you ``pipe`` are encoded with
their source's serdes and processed at once (through repartition topics too, which the
driver routes back in by key hash), and ``end_batch`` closes windows and collects
changelog records as the app's loop would after each poll. ``output(topic)`` gives what
the sinks wrote, decoded with the serdes you name. For unit tests of topologies; the
real loop is ``StreamsApp.run``.
"""

from __future__ import annotations

import collections
from typing import Any

from ipc.client import ConsumerRecord
from ipc.client.partitioner import partition_for_key
from ipc.streams.app import StreamsApp
from ipc.streams.errors import TopologyError
from ipc.streams.plan import plan, set_sink_partitions
from ipc.streams.serdes import INTERNAL, SerdeLike, decode, encode, resolve_serde
from ipc.streams.stores import Source
from ipc.streams.tasks import Task

__all__ = ["TopologyTestDriver"]

Out = tuple[str, int, bytes | None, bytes | None, int]  # topic, partition, key, value, timestamp


class TopologyTestDriver:
    def __init__(self, app: StreamsApp, partitions: dict[str, int]) -> None:
        self.app = app
        self.subs, self.counts = plan(app.topology, partitions)
        set_sink_partitions(app.topology, self.counts)
        self.internal = set(app.topology.repartition_topics)
        self.sub_of = {s.topic: sub for sub in self.subs for s in sub.sources}
        self.tasks: dict[tuple[int, int], Task] = {}
        for sub in self.subs:
            for p in range(sub.partitions):
                self.tasks[(sub.index, p)] = Task(sub, p, self._sender(p), app.counters, app._bad_record)
        self.records: list[Out] = []
        self.changelog: list[tuple[str, int, bytes, bytes | None, Source]] = []
        self._offsets: collections.Counter[tuple[str, int]] = collections.Counter()
        self._queue: collections.deque[tuple[str, int, bytes | None, bytes | None, int]] = collections.deque()

    def _sender(self, partition: int) -> Any:
        def send(topic: str, key: bytes | None, value: bytes | None, timestamp: int, to: int | None = None) -> None:
            if topic in self.internal:
                n = self.counts[topic]
                p = to if to is not None else partition_for_key(key, n) if key is not None else partition % n
                self._queue.append((topic, p, key, value, timestamp))
            else:
                self.records.append((topic, partition, key, value, timestamp))

        return send

    def pipe(self, topic: str, key: Any, value: Any, timestamp: int = 0, partition: int | None = None,
             raw: bool = False) -> None:
        """One input record (encoded with the source's serdes unless ``raw``); processed at
        once, with everything it sends through repartition topics."""
        source = self.app.topology.sources.get(topic)
        if source is None:
            raise TopologyError(f"{topic!r} is not a source of the topology")
        k = key if raw else encode(source.key_serde, key, "the test key")
        v = value if raw else encode(source.value_serde, value, "the test value")
        n = self.counts[topic]
        p = partition if partition is not None else (partition_for_key(k, n) if k is not None else 0)
        self._queue.append((topic, p, k, v, timestamp))
        while self._queue:
            t, part, kk, vv, ts = self._queue.popleft()
            offset = self._offsets[(t, part)]
            self._offsets[(t, part)] += 1
            task = self.tasks[(self.sub_of[t].index, part)]
            task.buffers[(t, part)].append(ConsumerRecord(t, part, offset, ts, kk, vv, []))
            task.process(lambda tp: True, 0.0, 0.0)

    def end_batch(self) -> None:
        for task in self.tasks.values():
            for topic, key, value, src in task.end_batch():
                self.changelog.append((topic, task.partition, key, value, src))
        while self._queue:  # what closing windows sent through repartition topics
            t, part, kk, vv, ts = self._queue.popleft()
            task = self.tasks[(self.sub_of[t].index, part)]
            task.buffers[(t, part)].append(ConsumerRecord(t, part, self._offsets[(t, part)], ts, kk, vv, []))
            self._offsets[(t, part)] += 1
            task.process(lambda tp: True, 0.0, 0.0)

    def output(self, topic: str, key_serde: SerdeLike = "bytes", value_serde: SerdeLike = "bytes"
               ) -> list[tuple[Any, Any, int]]:
        """(key, value, timestamp) of every record the sinks wrote to ``topic``, in order."""
        ks = resolve_serde(key_serde, INTERNAL, "key_serde")
        vs = resolve_serde(value_serde, INTERNAL, "value_serde")
        out = []
        for t, _p, k, v, ts in self.records:
            if t == topic:
                out.append((decode(ks, k, "an output key"), decode(vs, v, "an output value"), ts))
        return out

    def store(self, name: str) -> dict[Any, Any]:
        """Every partition of store ``name``, merged."""
        merged: dict[Any, Any] = {}
        for task in self.tasks.values():
            if name in task.stores:
                merged.update(task.stores[name].data)
        return merged
