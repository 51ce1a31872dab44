"""The processor graph: nodes a record is pushed through, depth first.

Each node has ``process(ctx, key, value)`` and forwards what it makes to its children.
``ctx`` (``RecordContext``) is the record being processed: its task (the partition's
stores and the output), its timestamp and its source (topic, partition, offset). A
table's nodes forward *changes*: (key, new value), a new value of None meaning the key
was deleted. Stateful nodes (``ipc/streams/aggregates.py``, ``ipc/streams/joins.py``)
declare their stores in ``stores`` and may have a ``punctuate(task)`` run at the end of
every batch (windows closing on stream time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ipc.client.partitioner import partition_for_key
from ipc.streams.serdes import Serde, encode
from ipc.streams.stores import Source, Store, StoreSpec

log = logging.getLogger(__name__)

KV = tuple[Any, Any]


class Task(Protocol):
    """What a node sees of the task (one partition of one sub-topology): its stores,
    the output, and the counters."""

    partition: int
    stores: dict[str, Store]

    def send(self, topic: str, key: bytes | None, value: bytes | None, timestamp: int,
             partition: int | None = None) -> None: ...

    def late(self, node: str, ts: int, stream_time: int, src: Source) -> None: ...


class RecordContext:
    __slots__ = ("src", "task", "timestamp")

    def __init__(self, task: Task, timestamp: int, src: Source) -> None:
        self.task = task
        self.timestamp = timestamp
        self.src = src


class Node:
    kind = "node"

    def __init__(self, name: str) -> None:
        self.name = name
        self.children: list[Node] = []
        self.stores: list[StoreSpec] = []
        self.links: list[Node] = []  # nodes that must run in the same task (a join's other side)

    def add(self, child: Node) -> Node:
        self.children.append(child)
        # one child (the common case): forward is that child's process, no loop per record
        if len(self.children) == 1:
            self.forward = child.process  # type: ignore[method-assign]
        else:
            self.__dict__.pop("forward", None)
        return child

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        self.forward(ctx, key, value)

    def forward(self, ctx: RecordContext, key: Any, value: Any) -> None:
        for child in self.children:
            child.process(ctx, key, value)

    def punctuate(self, task: Task) -> None:
        """End of a batch: nothing by default."""

    def describe(self) -> str:
        return f"{self.kind} {self.name}"

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


class SourceNode(Node):
    kind = "source"

    def __init__(self, name: str, topic: str, key_serde: Serde, value_serde: Serde, internal: bool = False) -> None:
        super().__init__(name)
        self.topic = topic
        self.key_serde = key_serde
        self.value_serde = value_serde
        self.internal = internal  # a repartition topic: keys decoded with freeze()

    def describe(self) -> str:
        return f"source {self.name} <- {self.topic}"


class MapNode(Node):
    kind = "map"

    def __init__(self, name: str, fn: Callable[[Any, Any], KV]) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        k, v = self.fn(key, value)
        self.forward(ctx, k, v)


class MapValuesNode(Node):
    kind = "map_values"

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        self.forward(ctx, key, self.fn(value))


class SelectKeyNode(Node):
    kind = "select_key"

    def __init__(self, name: str, fn: Callable[[Any, Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        self.forward(ctx, self.fn(key, value), value)


class FilterNode(Node):
    kind = "filter"

    def __init__(self, name: str, predicate: Callable[[Any, Any], Any]) -> None:
        super().__init__(name)
        self.predicate = predicate

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if self.predicate(key, value):
            self.forward(ctx, key, value)


class FlatMapNode(Node):
    kind = "flat_map"

    def __init__(self, name: str, fn: Callable[[Any, Any], Iterable[KV]]) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        for k, v in self.fn(key, value):
            self.forward(ctx, k, v)


class PeekNode(Node):
    kind = "peek"

    def __init__(self, name: str, fn: Callable[[Any, Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        self.fn(key, value)
        self.forward(ctx, key, value)


class SplitNode(Node):
    """Each record goes to the first branch whose predicate holds (Kafka's ``split``);
    the last child is the default branch when ``default`` is set."""

    kind = "split"

    def __init__(self, name: str, predicates: list[Callable[[Any, Any], Any]], default: bool) -> None:
        super().__init__(name)
        self.predicates = predicates
        self.default = default

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        for pred, child in zip(self.predicates, self.children, strict=False):
            if pred(key, value):
                child.process(ctx, key, value)
                return
        if self.default:
            self.children[-1].process(ctx, key, value)


class SinkNode(Node):
    """Writes to a topic; the producer partitions by the encoded key (murmur2), so a key
    lands where the Java client would put it. A repartition sink (``internal``) writes
    the library's encoding but picks the partition from the key encoded with
    ``partition_serde`` (the serde of the topic it must be co-partitioned with), so a key
    lands in the same partition number as in that topic; ``partitions`` is set by the app."""

    kind = "sink"

    def __init__(self, name: str, topic: str, key_serde: Serde, value_serde: Serde, internal: bool = False,
                 partition_serde: Serde | None = None) -> None:
        super().__init__(name)
        self.topic = topic
        self.key_serde = key_serde
        self.value_serde = value_serde
        self.internal = internal
        self.partition_serde = partition_serde
        self.partitions = 0
        self._kser, self._vser = key_serde.serialize, value_serde.serialize

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        try:  # the common case, without building error texts; anything odd goes through encode()
            k = None if key is None else self._kser(key)
            v = None if value is None else self._vser(value)
            if (k is not None and type(k) is not bytes) or (v is not None and type(v) is not bytes):
                raise TypeError
        except Exception:  # noqa: BLE001 - a user's serializer may raise anything: encode() reports it
            k = encode(self.key_serde, key, f"a key for {self.topic}")
            v = encode(self.value_serde, value, f"a value for {self.topic}")
        partition = None
        if self.partition_serde is not None and key is not None and self.partitions:
            raw = encode(self.partition_serde, key, f"a key for {self.topic} (partitioned as by the "
                                                    f"{self.partition_serde.name} serde)")
            assert raw is not None
            partition = partition_for_key(raw, self.partitions)
        ctx.task.send(self.topic, k, v, ctx.timestamp, partition)

    def describe(self) -> str:
        return f"sink {self.name} -> {self.topic}"


class TableSourceNode(Node):
    """Materializes a topic as a table (latest value per key; a None value, a tombstone,
    deletes) and forwards each change. Its store is restored from the topic itself up to
    the committed offset, so it needs no changelog of its own."""

    kind = "table"

    def __init__(self, name: str, spec: StoreSpec) -> None:
        super().__init__(name)
        self.spec = spec
        self.stores = [spec]

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if key is None:
            log.warning("table %s: a record without key at %s is ignored", self.name, ctx.src)
            return
        ctx.task.stores[self.spec.name].put(key, value, ctx.src)
        self.forward(ctx, key, value)


class ToStreamNode(Node):
    kind = "to_stream"


class TableFilterNode(Node):
    """``Table.filter``: a change whose new value fails the predicate becomes a deletion
    (Kafka's ``KTable.filter``), so a row that stops matching leaves the result table.
    Materialized (``spec``), only the deletions of keys the result held are forwarded;
    without a store every failing change is forwarded as a tombstone."""

    kind = "table_filter"

    def __init__(self, name: str, predicate: Callable[[Any, Any], Any], negate: bool, spec: StoreSpec | None) -> None:
        super().__init__(name)
        self.predicate = predicate
        self.negate = negate
        self.spec = spec
        self.stores = [spec] if spec is not None else []

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if key is None:
            return
        keep = value is not None and bool(self.predicate(key, value)) != self.negate
        out = value if keep else None
        if self.spec is not None:
            store = ctx.task.stores[self.spec.name]
            if out is None and key not in store.data:
                return  # nothing to delete
            store.put(key, out, ctx.src)
        self.forward(ctx, key, out)


class TableMapValuesNode(Node):
    """``Table.map_values``: ``fn(value)`` for an update; a deletion (None) is forwarded
    as a deletion, without calling ``fn``. A ``None`` returned by ``fn`` deletes the key."""

    kind = "table_map_values"

    def __init__(self, name: str, fn: Callable[[Any], Any], spec: StoreSpec | None) -> None:
        super().__init__(name)
        self.fn = fn
        self.spec = spec
        self.stores = [spec] if spec is not None else []

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if key is None:
            return
        out = None if value is None else self.fn(value)
        if self.spec is not None:
            ctx.task.stores[self.spec.name].put(key, out, ctx.src)
        self.forward(ctx, key, out)
