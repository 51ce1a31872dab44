"""How far behind a group is: partition end offsets and the age of the oldest
unconsumed record, for ``describe_group`` and the lag metrics.

The end of a partition is the high watermark of this node's leader replica when this
node leads it (read from the shared-memory status table); for a partition led
elsewhere, the high watermark its leader answered the last lag probe with
(``OffsetStore.leader_ends``); else this node's replica's (-1 if unknown).

A lag probe (every ``LAG_PROBE_INTERVAL_S``) fetches one record at each committed
offset from the partition's leader worker, on any node, and remembers its timestamp:
``oldest_unconsumed(group)`` maps each partition to (committed offset, timestamp ms of
the record there). The probes go through the offset store's channels.
"""

from __future__ import annotations

from appliance.children import ChildState
from appliance.groups.offsets import OffsetStore
from appliance.nodeview import NodeView

LAG_PROBE_INTERVAL_S = 2.0

TP = tuple[str, int]


def leads(node: NodeView, topic: str, partition: int) -> bool:
    """This node's replica of the partition is its serving leader."""
    r = node.replica(topic, partition)
    return r is not None and r.state is ChildState.SERVING and r.role is not None and r.role.is_leader


class LagProbes:
    def __init__(self, node: NodeView, store: OffsetStore) -> None:
        self.node = node
        self.store = store
        # (group, topic, partition) -> (committed offset, timestamp ms of the record there)
        self._oldest: dict[tuple[str, str, int], tuple[int, int]] = {}
        self._next_probe = 0.0

    def partition_end(self, topic: str, partition: int) -> int:
        """The partition's high watermark: this node's own when it leads it, else the one
        its leader answered the last lag probe with, else this node's replica's (-1 if
        unknown)."""
        r = self.node.replica(topic, partition)
        st = self.node.table.read_status_or_none(r.slot) if r is not None else None
        if st is not None and leads(self.node, topic, partition):
            return st.high_watermark
        learned = self.store.leader_ends.get((topic, partition))
        if learned is not None:
            return learned
        return st.high_watermark if st is not None else -1

    def oldest_unconsumed(self, group_id: str) -> dict[TP, tuple[int, int]]:
        return {(t, p): v for (g, t, p), v in self._oldest.items() if g == group_id}

    def forget(self, partition: int) -> None:
        """Drop what was learned of the groups of ``__consumer_offsets`` partition ``partition``."""
        for key in [k for k in self._oldest if self.store.partition_for(k[0]) == partition]:
            del self._oldest[key]

    def tick(self, now: float) -> None:
        if now >= self._next_probe:
            self._next_probe = now + LAG_PROBE_INTERVAL_S
            self._probe()

    def _probe(self) -> None:
        """Learn the timestamp of each group's oldest unconsumed record (for lag in seconds)."""
        for group_id, offsets in list(self.store.cache.items()):
            if not self.store.group_loaded(group_id):
                continue
            for (topic, partition), c in list(offsets.items()):
                key = (group_id, topic, partition)
                known = self._oldest.get(key)
                if leads(self.node, topic, partition):
                    if known is not None and known[0] == c.offset:
                        continue
                    if c.offset >= self.partition_end(topic, partition):
                        self._oldest.pop(key, None)
                        continue
                elif c.offset >= self.partition_end(topic, partition) >= 0:
                    # led elsewhere: probe every time, the reply brings the leader's end too
                    self._oldest.pop(key, None)

                def found(ts: int | None, key: tuple[str, str, int] = key, offset: int = c.offset) -> None:
                    if ts is not None:
                        self._oldest[key] = (offset, ts)

                self.store.probe_timestamp(topic, partition, c.offset, found)
