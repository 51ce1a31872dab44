"""The topology DSL: ``Stream``, ``Table``, ``GroupedStream``, ``WindowedStream``.

Each call adds a node (``ipc/streams/nodes.py``) to the ``Topology`` and returns a new
handle; nothing runs until ``StreamsApp.run``. A stream whose key was changed (``map``,
``flat_map``, ``select_key``) is marked; a stateful operation after it (``group_by_key``,
a join) first writes it through the internal topic ``<app>-<name>-repartition``, so that
every record of one key is processed by the task (partition) that holds the key's state.
``group_by`` always repartitions. Names: every operation takes ``name=``; without it one
is made from the kind and a counter (``count-3``), stable as long as the topology is built
in the same order. Store names are the stateful operation's name, and its changelog is
``<app>-<name>-changelog``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ipc.streams.aggregates import (
    AggregateNode,
    Aggregator,
    Initializer,
    Merger,
    SessionAggregateNode,
    WindowedAggregateNode,
)
from ipc.streams.errors import TopologyError
from ipc.streams.joins import (
    JOIN_KINDS,
    Joiner,
    StreamStreamJoinNode,
    StreamTableJoinNode,
    TableTableJoinNode,
    buffer_spec,
)
from ipc.streams.nodes import (
    FilterNode,
    FlatMapNode,
    MapNode,
    MapValuesNode,
    Node,
    PeekNode,
    SelectKeyNode,
    SinkNode,
    SourceNode,
    SplitNode,
    TableFilterNode,
    TableMapValuesNode,
    ToStreamNode,
)
from ipc.streams.serdes import BYTES, INTERNAL, Serde, SerdeLike, resolve_serde
from ipc.streams.stores import StoreSpec
from ipc.streams.windows import JoinWindows, SessionWindows, TimeWindows

__all__ = ["GroupedStream", "Stream", "Table", "Topology", "WindowedStream"]


class Topology:
    """Every node, by name; the source node of each topic; the stores; the internal
    (repartition) topics."""

    def __init__(self, app_id: str, key_serde: Serde = BYTES, value_serde: Serde = BYTES) -> None:
        self.app_id = app_id
        self.key_serde = key_serde
        self.value_serde = value_serde
        self.nodes: dict[str, Node] = {}
        self.sources: dict[str, SourceNode] = {}
        self.stores: dict[str, StoreSpec] = {}
        self.table_sources: dict[str, str] = {}  # store name -> the topic it is restored from
        self.repartition_topics: list[str] = []
        self._counter = 0

    def name(self, kind: str, given: str | None) -> str:
        self._counter += 1
        name = given if given is not None else f"{kind}-{self._counter}"
        if not isinstance(name, str) or not name or any(c in name for c in "/\\\x00 "):
            raise TopologyError(f"name={name!r}: a name is a non-empty string without '/', spaces or NUL")
        if name in self.nodes:
            raise TopologyError(f"name {name!r} is used twice in the topology of {self.app_id!r}")
        return name

    def add(self, parent: Node | None, node: Node) -> Node:
        self.nodes[node.name] = node
        for spec in node.stores:
            if spec.name in self.stores and self.stores[spec.name] is not spec:
                raise TopologyError(f"store {spec.name!r} is declared twice")
            self.stores[spec.name] = spec
        if parent is not None:
            parent.add(node)
        return node

    def source(self, topic: str, key_serde: Serde, value_serde: Serde, internal: bool = False) -> SourceNode:
        if not isinstance(topic, str) or not topic:
            raise TopologyError(f"topic={topic!r}: must be a non-empty string")
        if topic in self.sources:
            raise TopologyError(f"topic {topic!r} is read twice: read it once and reuse the stream or table")
        node = SourceNode(self.name("source", f"source-{topic}"), topic, key_serde, value_serde, internal)
        self.add(None, node)
        self.sources[topic] = node
        return node

    def changelog(self, store: str) -> str:
        return f"{self.app_id}-{store}-changelog"

    def describe(self) -> str:
        """The topology as indented text: each source, then its nodes depth first."""
        lines: list[str] = []
        seen: set[int] = set()

        def walk(node: Node, depth: int) -> None:
            mark = " (see above)" if id(node) in seen else ""
            stores = f" stores={[s.name for s in node.stores]}" if node.stores else ""
            lines.append("  " * depth + node.describe() + stores + mark)
            if mark:
                return
            seen.add(id(node))
            for child in node.children:
                walk(child, depth + 1)

        for src in self.sources.values():
            walk(src, 0)
        return "\n".join(lines)


class Stream:
    """A record stream (every record is an event)."""

    def __init__(self, topo: Topology, node: Node, key_changed: bool = False, source: SourceNode | None = None):
        self.topo = topo
        self.node = node
        self.key_changed = key_changed
        self.source = source  # the external topic it reads, while its key is that topic's key

    def _then(self, node: Node, key_changed: bool | None = None) -> Stream:
        self.topo.add(self.node, node)
        changed = self.key_changed if key_changed is None else key_changed
        return Stream(self.topo, node, changed, None if changed else self.source)

    # ---- stateless ------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any, Any], tuple[Any, Any]], name: str | None = None) -> Stream:
        """``fn(key, value) -> (key, value)``; marks the key as changed."""
        return self._then(MapNode(self.topo.name("map", name), fn), True)

    def map_values(self, fn: Callable[[Any], Any], name: str | None = None) -> Stream:
        return self._then(MapValuesNode(self.topo.name("map-values", name), fn))

    def filter(self, predicate: Callable[[Any, Any], Any], name: str | None = None) -> Stream:
        return self._then(FilterNode(self.topo.name("filter", name), predicate))

    def flat_map(self, fn: Callable[[Any, Any], Iterable[tuple[Any, Any]]], name: str | None = None) -> Stream:
        """``fn(key, value) -> iterable of (key, value)``; marks the key as changed."""
        return self._then(FlatMapNode(self.topo.name("flat-map", name), fn), True)

    def flat_map_values(self, fn: Callable[[Any], Iterable[Any]], name: str | None = None) -> Stream:
        return self._then(FlatMapNode(self.topo.name("flat-map-values", name), lambda k, v: ((k, x) for x in fn(v))))

    def peek(self, fn: Callable[[Any, Any], Any], name: str | None = None) -> Stream:
        return self._then(PeekNode(self.topo.name("peek", name), fn))

    def select_key(self, fn: Callable[[Any, Any], Any], name: str | None = None) -> Stream:
        """``fn(key, value) -> new key``; marks the key as changed."""
        return self._then(SelectKeyNode(self.topo.name("select-key", name), fn), True)

    def split(self, *predicates: Callable[[Any, Any], Any], default: bool = False, name: str | None = None
              ) -> list[Stream]:
        """One stream per predicate (a record goes to the first that holds), plus the
        records no predicate took when ``default`` (the last stream)."""
        if not predicates and not default:
            raise TopologyError("split() needs at least one predicate (or default=True)")
        for p in predicates:
            if not callable(p):
                raise TopologyError(f"split(): {p!r} is not a callable predicate")
        node = SplitNode(self.topo.name("split", name), list(predicates), default)
        self.topo.add(self.node, node)
        out = []
        for i in range(len(predicates) + (1 if default else 0)):
            branch = Node(self.topo.name("branch", f"{node.name}-{i}"))
            self.topo.add(node, branch)
            out.append(Stream(self.topo, branch, self.key_changed, self.source))
        return out

    branch = split

    def to(self, topic: str, key_serde: SerdeLike = None, value_serde: SerdeLike = None, name: str | None = None
           ) -> None:
        if not isinstance(topic, str) or not topic:
            raise TopologyError(f"to(topic={topic!r}): must be a non-empty string")
        node = SinkNode(
            self.topo.name("sink", name),
            topic,
            resolve_serde(key_serde, self.topo.key_serde, f"to({topic!r}) key_serde"),
            resolve_serde(value_serde, self.topo.value_serde, f"to({topic!r}) value_serde"),
        )
        self.topo.add(self.node, node)

    def repartition(self, name: str | None = None, partition_serde: SerdeLike = None) -> Stream:
        """Write through ``<app>-<name>-repartition`` and read it back: afterwards a key's
        records are in the partition that the key encoded with ``partition_serde`` (default:
        the app's key serde) hashes to, as in a topic written with that serde."""
        node_name = self.topo.name("rekey", name and f"{name}-rekey")
        topic = f"{self.topo.app_id}-{name or node_name}-repartition"
        name = node_name
        pserde = resolve_serde(partition_serde, self.topo.key_serde, f"repartition {name!r} partition_serde")
        sink = SinkNode(name, topic, INTERNAL, INTERNAL, internal=True, partition_serde=pserde)
        self.topo.add(self.node, sink)
        self.topo.repartition_topics.append(topic)
        return Stream(self.topo, self.topo.source(topic, INTERNAL, INTERNAL, internal=True), False)

    def _keyed(self, name: str | None, partition_serde: Serde | None = None) -> Stream:
        return self.repartition(name, partition_serde) if self.key_changed else self

    # ---- stateful --------------------------------------------------------------------------------
    def group_by_key(self, name: str | None = None) -> GroupedStream:
        """Group by the current key; after a key change, the aggregation repartitions
        through ``<app>-<aggregation name>-repartition``."""
        return GroupedStream(self, name)

    def group_by(self, fn: Callable[[Any, Any], Any], name: str | None = None) -> GroupedStream:
        """``select_key(fn)`` then ``group_by_key()``: always repartitions."""
        return self.select_key(fn).group_by_key(name)

    def join(self, other: Table | Stream, joiner: Joiner, window: JoinWindows | None = None, name: str | None = None,
             how: str = "inner") -> Stream:
        """With a ``Table``: a stream-table join (``how`` inner or left). With a ``Stream``:
        a windowed stream-stream join (``window`` required; ``how`` inner, left or outer)."""
        if how not in JOIN_KINDS:
            raise TopologyError(f"join how={how!r}: allowed {', '.join(JOIN_KINDS)}")
        if not callable(joiner):
            raise TopologyError(f"join: joiner {joiner!r} is not callable")
        like = other.spec.source_serdes[0] if isinstance(other, Table) and other.spec and other.spec.source_serdes \
            else None
        if isinstance(other, Stream) and other.source is not None:
            like = other.source.key_serde
        me = self._keyed(name and f"{name}-left", like)
        if isinstance(other, Table):
            if window is not None:
                raise TopologyError("a stream-table join takes no window: the table's current value is used")
            if how == "outer":
                raise TopologyError("a stream-table join is inner or left (the table side never triggers)")
            if other.spec is None:
                raise TopologyError(f"table {other.node.name!r} has no store: join a table read with "
                                    "app.table(), made by an aggregation, or filtered / mapped with materialized=")
            node = StreamTableJoinNode(self.topo.name("join", name), other.spec, joiner, how == "left")
            node.links.append(other.node)
            return me._then(node, False)
        if isinstance(other, Stream):
            if not isinstance(window, JoinWindows):
                raise TopologyError("a stream-stream join needs window=JoinWindows(before_ms, after_ms, grace_ms)")
            them = other._keyed(name and f"{name}-right", self.source.key_serde if self.source is not None else None)
            jname = self.topo.name("join", name)
            lspec, rspec = buffer_spec(f"{jname}-left"), buffer_spec(f"{jname}-right")
            lspec.changelog, rspec.changelog = self.topo.changelog(lspec.name), self.topo.changelog(rspec.name)
            left = StreamStreamJoinNode(f"{jname}-left", lspec, rspec, joiner, window, how, True)
            right = StreamStreamJoinNode(f"{jname}-right", rspec, lspec, joiner, window, how, False)
            right.children = left.children  # one result stream
            self.topo.add(me.node, left)
            self.topo.add(them.node, right)
            out = Node(jname)
            self.topo.add(left, out)
            return Stream(self.topo, out, False)
        raise TopologyError(f"join: {other!r} is neither a Stream nor a Table")

    def left_join(self, other: Table | Stream, joiner: Joiner, window: JoinWindows | None = None,
                  name: str | None = None) -> Stream:
        return self.join(other, joiner, window, name, how="left")

    def outer_join(self, other: Stream, joiner: Joiner, window: JoinWindows, name: str | None = None) -> Stream:
        return self.join(other, joiner, window, name, how="outer")


class Table:
    """A changelog stream read as a table: the latest value per key."""

    def __init__(self, topo: Topology, node: Node, spec: StoreSpec | None) -> None:
        self.topo = topo
        self.node = node
        self.spec = spec

    def to_stream(self, name: str | None = None) -> Stream:
        node = ToStreamNode(self.topo.name("to-stream", name))
        self.topo.add(self.node, node)
        return Stream(self.topo, node, False)

    def filter(self, predicate: Callable[[Any, Any], Any], name: str | None = None,
               materialized: str | None = None) -> Table:
        """The rows for which ``predicate(key, value)`` holds; an update that fails it
        deletes the key from the result (a tombstone downstream). ``materialized``: keep
        the result in a store of that name (with a changelog), so it can be joined or
        queried, and forward only deletions of keys it held."""
        if not callable(predicate):
            raise TopologyError(f"filter: {predicate!r} is not a callable predicate")
        return self._derived(TableFilterNode(self.topo.name("table-filter", name), predicate, False,
                                             self._store(materialized)))

    def filter_not(self, predicate: Callable[[Any, Any], Any], name: str | None = None,
                   materialized: str | None = None) -> Table:
        if not callable(predicate):
            raise TopologyError(f"filter_not: {predicate!r} is not a callable predicate")
        return self._derived(TableFilterNode(self.topo.name("table-filter-not", name), predicate, True,
                                             self._store(materialized)))

    def map_values(self, fn: Callable[[Any], Any], name: str | None = None, materialized: str | None = None
                   ) -> Table:
        """``fn(value)`` for every update; a deletion stays a deletion (``fn`` is not
        called with None), and a ``None`` from ``fn`` deletes the key. ``materialized`` as
        for ``filter``."""
        if not callable(fn):
            raise TopologyError(f"map_values: {fn!r} is not callable")
        return self._derived(TableMapValuesNode(self.topo.name("table-map-values", name), fn,
                                                self._store(materialized)))

    def _store(self, materialized: str | None) -> StoreSpec | None:
        if materialized is None:
            return None
        if not isinstance(materialized, str) or not materialized or any(c in materialized for c in "/\\\x00 "):
            raise TopologyError(f"materialized={materialized!r}: a store name is a non-empty string without "
                                "'/', spaces or NUL")
        if materialized in self.topo.stores:
            raise TopologyError(f"store {materialized!r} is declared twice")
        return _spec(self.topo, materialized)

    def _derived(self, node: TableFilterNode | TableMapValuesNode) -> Table:
        self.topo.add(self.node, node)
        return Table(self.topo, node, node.spec)

    def join(self, other: Table, joiner: Joiner, name: str | None = None, how: str = "inner") -> Table:
        if how not in ("inner", "left"):
            raise TopologyError(f"table-table join how={how!r}: allowed inner, left")
        if not isinstance(other, Table):
            raise TopologyError(f"a table joins a Table, not {other!r}")
        if self.spec is None or other.spec is None:
            raise TopologyError("both tables of a table-table join need a store: app.table(), an aggregation, "
                                "or filter / map_values with materialized=")
        jname = self.topo.name("join", name)
        left = TableTableJoinNode(f"{jname}-left", self.spec, other.spec, joiner, how == "left", True)
        right = TableTableJoinNode(f"{jname}-right", other.spec, self.spec, joiner, how == "left", False)
        right.children = left.children
        self.topo.add(self.node, left)
        self.topo.add(other.node, right)
        out = Node(jname)
        self.topo.add(left, out)
        return Table(self.topo, out, None)

    def left_join(self, other: Table, joiner: Joiner, name: str | None = None) -> Table:
        return self.join(other, joiner, name, how="left")


class GroupedStream:
    def __init__(self, stream: Stream, name: str | None) -> None:
        self.stream = stream
        self.name = name

    def _table(self, kind: str, name: str | None, init: Initializer, agg: Aggregator) -> Table:
        topo = self.stream.topo
        name = topo.name(kind, name or self.name)
        node = AggregateNode(name, _spec(topo, name), init, agg)
        topo.add(self.stream._keyed(name).node, node)
        return Table(topo, node, node.spec)

    def count(self, name: str | None = None) -> Table:
        return self._table("count", name, lambda: 0, lambda k, v, a: a + 1)

    def reduce(self, reducer: Callable[[Any, Any], Any], name: str | None = None) -> Table:
        return self._table("reduce", name, lambda: None, lambda k, v, a: v if a is None else reducer(a, v))

    def aggregate(self, initializer: Initializer, aggregator: Aggregator, name: str | None = None) -> Table:
        """``aggregator(key, value, aggregate) -> aggregate``, from ``initializer()``."""
        return self._table("aggregate", name, initializer, aggregator)

    def windowed_by(self, windows: TimeWindows | SessionWindows) -> WindowedStream:
        if not isinstance(windows, (TimeWindows, SessionWindows)):
            raise TopologyError(f"windowed_by({windows!r}): use TumblingWindows, HoppingWindows or SessionWindows")
        return WindowedStream(self, windows)


class WindowedStream:
    def __init__(self, grouped: GroupedStream, windows: TimeWindows | SessionWindows) -> None:
        self.grouped = grouped
        self.windows = windows

    def aggregate(self, initializer: Initializer, aggregator: Aggregator, merger: Merger | None = None,
                  name: str | None = None, emit: str = "update") -> Table:
        """Per key and window; ``emit="final"`` forwards each window once, when it closes.
        Session windows need ``merger(key, agg1, agg2)`` (two sessions a record bridges)."""
        topo = self.grouped.stream.topo
        name = topo.name("windowed", name or self.grouped.name)
        spec = _spec(topo, name, windowed=True)
        node: Node
        if isinstance(self.windows, SessionWindows):
            if merger is None:
                raise TopologyError(f"{name}: a session-windowed aggregate needs merger(key, agg1, agg2)")
            node = SessionAggregateNode(name, spec, self.windows, initializer, aggregator, merger, emit)
        else:
            node = WindowedAggregateNode(name, spec, self.windows, initializer, aggregator, emit)
        topo.add(self.grouped.stream._keyed(name).node, node)
        return Table(topo, node, spec)

    def count(self, name: str | None = None, emit: str = "update") -> Table:
        return self.aggregate(lambda: 0, lambda k, v, a: a + 1, lambda k, a, b: a + b, name, emit)

    def reduce(self, reducer: Callable[[Any, Any], Any], name: str | None = None, emit: str = "update") -> Table:
        return self.aggregate(
            lambda: None,
            lambda k, v, a: v if a is None else reducer(a, v),
            lambda k, a, b: b if a is None else a if b is None else reducer(a, b),
            name,
            emit,
        )


def _spec(topo: Topology, name: str, windowed: bool = False) -> StoreSpec:
    spec = StoreSpec(name, windowed=windowed)
    spec.changelog = topo.changelog(name)
    return spec
