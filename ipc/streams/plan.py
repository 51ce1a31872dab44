"""From a topology to what runs: sub-topologies, their partition counts, internal topics.

A *sub-topology* is a connected part of the graph: nodes linked as parent and child, or
by a join (the two sides of a join, and a stream-table join with its table, are one
sub-topology). Repartition topics cut the graph: their sink is in the part upstream, their
source starts another. A *task* is one partition of one sub-topology: partition p of each
of its source topics and of each of its stores' changelogs. The group's ``range``
assignor gives partition p of every topic of the same partition count to the same member
(every instance subscribes to the same topics), so the partitions of a task always move
together.

Co-partitioning: the external source topics of a sub-topology must have the same
partition count, or ``CoPartitionError`` names them. A repartition topic gets the count
of the other sources of the sub-topology it feeds, or else that of the sub-topology that
writes it. Pure functions: the counts of the external topics are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipc.streams.dsl import Topology
from ipc.streams.errors import CoPartitionError, TopologyError
from ipc.streams.nodes import Node, SinkNode, SourceNode
from ipc.streams.stores import StoreSpec

__all__ = ["SubTopology", "plan"]


@dataclass
class SubTopology:
    index: int
    sources: list[SourceNode]
    nodes: list[Node]
    stores: list[StoreSpec]
    partitions: int = 0
    punctuators: list[Node] = field(default_factory=list)

    @property
    def topics(self) -> list[str]:
        return [s.topic for s in self.sources]


def _components(topo: Topology) -> list[list[Node]]:
    parent: dict[int, int] = {}
    by_id: dict[int, Node] = {}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: Node, b: Node) -> None:
        for n in (a, b):
            if id(n) not in parent:
                parent[id(n)] = id(n)
                by_id[id(n)] = n
        ra, rb = find(id(a)), find(id(b))
        if ra != rb:
            parent[rb] = ra

    for node in topo.nodes.values():
        union(node, node)
        for child in node.children:
            union(node, child)
        for other in node.links:
            union(node, other)
    groups: dict[int, list[Node]] = {}
    for node in topo.nodes.values():  # insertion order: sources first as built
        groups.setdefault(find(id(node)), []).append(node)
    return list(groups.values())


def plan(topo: Topology, external_counts: dict[str, int]) -> tuple[list[SubTopology], dict[str, int]]:
    """The sub-topologies with their partition counts, and the partition count of every
    internal (repartition) topic. ``external_counts``: each user source topic's count."""
    if not topo.sources:
        raise TopologyError(f"the topology of {topo.app_id!r} has no source: call app.stream() or app.table()")
    subs: list[SubTopology] = []
    for nodes in _components(topo):
        sources = [n for n in nodes if isinstance(n, SourceNode)]
        if not sources:
            continue
        stores = [spec for n in nodes for spec in n.stores]
        punct = [n for n in nodes if type(n).punctuate is not Node.punctuate]
        subs.append(SubTopology(len(subs), sources, nodes, stores, punctuators=punct))
    counts: dict[str, int] = {}
    for sub in subs:
        external = {s.topic: external_counts[s.topic] for s in sub.sources if not s.internal}
        if len(set(external.values())) > 1:
            desc = ", ".join(f"{t} ({n} partitions)" for t, n in sorted(external.items()))
            raise CoPartitionError(
                f"{topo.app_id}: {desc} are joined (read by one task) but are not co-partitioned: joined "
                "inputs need the same partition count (and the same key); repartition one side "
                "(stream.repartition()) or recreate the topic"
            )
        if external:
            sub.partitions = next(iter(external.values()))
        counts.update(external)
    writer = {n.topic: sub for sub in subs for n in sub.nodes if isinstance(n, SinkNode) and n.internal}
    for _ in range(len(subs) + 1):  # repartition chains: each pass settles at least one
        for sub in subs:
            if sub.partitions:
                continue
            upstream = [writer[s.topic].partitions for s in sub.sources if s.internal]
            if upstream and all(upstream):
                sub.partitions = max(upstream)
        if all(sub.partitions for sub in subs):
            break
    else:
        raise TopologyError(f"{topo.app_id}: cannot work out the partition count of a repartition topic")
    for sub in subs:
        for s in sub.sources:
            if s.internal:
                counts[s.topic] = sub.partitions
    return subs, counts


def set_sink_partitions(topo: Topology, counts: dict[str, int]) -> None:
    """Tell each repartition sink its topic's partition count (it picks partitions itself)."""
    for node in topo.nodes.values():
        if isinstance(node, SinkNode) and node.internal:
            node.partitions = counts[node.topic]
