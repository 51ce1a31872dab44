"""The watches that feed the snapshots (``snapshots.py``): kazoo's ChildrenWatch and
DataWatch recipes over a part of the layout, each keeping what it has read and handing a
fresh value to its publisher after every change.

- ``ChildMap``: a parent whose children are node ids (``/nodes``, ``/endpoints``), one
  DataWatch per child: {child id: parsed value}.
- ``TopicWatch``: one topic: its meta, its partition list and each partition's state. A
  topic re-created under the same name is another incarnation (another czxid); watches
  of a deleted incarnation stop.

Watch callbacks run on kazoo's callback thread and must not block. Their state is kept
under the coordinator's lock (``WatchContext.lock``); a callback returning False ends its
watch, which every watch does once the coordinator is closing.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Generic, TypeVar

import orjson
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from appliance.coordinator import PartitionState, TopicInfo
from appliance.coordinator.zookeeper.layout import PARTITIONS

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class WatchContext:
    """What every watch shares: the kazoo client it watches through, the coordinator's
    lock (watch state and snapshots are kept under it) and its closing flag."""

    client: Any
    lock: threading.Lock
    closing: threading.Event


class ChildMap(Generic[T]):
    """A ChildrenWatch on ``parent`` and a DataWatch on each numeric child: keeps
    {child id: parsed value} and hands a fresh dict to ``publish`` after each change."""

    def __init__(
        self,
        ctx: WatchContext,
        parent: str,
        parse: Callable[[int, bytes, Any], T],
        publish: Callable[[dict[int, T]], None],
    ) -> None:
        self.ctx = ctx
        self.parent = parent
        self.parse = parse
        self.publish = publish
        self.tokens: dict[int, object] = {}  # child id -> the token of its live DataWatch
        self.values: dict[int, T] = {}

    def start(self) -> None:
        ChildrenWatch(self.ctx.client, self.parent, self._on_children)

    def _on_children(self, children: list[str]) -> bool | None:
        if self.ctx.closing.is_set():
            return False
        ids = {int(c) for c in children if c.isdigit()}
        with self.ctx.lock:
            for i in [i for i in self.tokens if i not in ids]:
                del self.tokens[i]
                self.values.pop(i, None)
            new = {i: object() for i in sorted(ids) if i not in self.tokens}
            self.tokens.update(new)
        for i, token in new.items():
            DataWatch(self.ctx.client, f"{self.parent}/{i}", partial(self._on_data, i, token))
        self._publish()
        return None

    def _on_data(self, child: int, token: object, data: bytes | None, stat: Any, event: Any = None) -> bool | None:
        if self.ctx.closing.is_set() or self.tokens.get(child) is not token:
            return False  # the child went away: this watch ends
        value: T | None = None
        if stat is not None and data is not None:
            try:
                value = self.parse(child, data, stat)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s/%d: unreadable %r: %s", self.parent, child, data[:200], exc)
        with self.ctx.lock:
            if self.tokens.get(child) is not token:
                return False
            if value is None:
                self.values.pop(child, None)
            else:
                self.values[child] = value
        self._publish()
        return None  # keep watching: the znode may come back (a new registration)

    def _publish(self) -> None:
        with self.ctx.lock:
            values = dict(self.values)
        self.publish(values)


class TopicWatch:
    """One topic: a DataWatch on its meta, a ChildrenWatch on its partitions and a
    DataWatch per partition. ``incarnation`` changes when the topic znode is re-created
    (another czxid), so watches of a deleted incarnation stop. State under ctx.lock;
    ``publish`` (the snapshots' ``publish_topics``) is called without it."""

    def __init__(self, ctx: WatchContext, name: str, path: str, publish: Callable[[Iterable[str]], None]) -> None:
        self.ctx = ctx
        self.name = name
        self.path = path
        self.publish = publish
        self.stopped = False
        self.meta: TopicInfo | None = None  # partitions=[]: the meta fields only
        self.czxid = -1
        self.incarnation = 0
        self.children: list[int] | None = None  # partitions listed; None until read
        self.watched: set[int] = set()
        self.states: dict[int, tuple[PartitionState, int, int]] = {}  # p -> (state, mzxid, czxid)
        self.deleting = False  # a partition znode vanished: the topic is being deleted
        self.loading = 0  # > 0 while new partition watches load (publish once at the end)

    def start(self) -> None:
        DataWatch(self.ctx.client, self.path, self._on_meta)

    def snapshot(self) -> TopicInfo | None:
        """The topic as readers see it (under ctx.lock); None while absent."""
        if self.stopped or self.meta is None or self.children is None or self.deleting:
            return None
        parts = []
        for p in range(len(self.children)):
            entry = self.states.get(p)
            if entry is None:
                break
            parts.append(entry[0])
        return dataclasses.replace(self.meta, partitions=parts)

    def apply(self, partition: int, state: PartitionState, stat: Any) -> bool:
        """A state this node just wrote (under ctx.lock); False when the watch already
        has it or something newer, or the znode belongs to another incarnation."""
        entry = self.states.get(partition)
        if self.stopped or entry is None or entry[2] != stat.czxid or entry[1] >= stat.mzxid:
            return False
        self.states[partition] = (state, int(stat.mzxid), int(stat.czxid))
        return True

    def _on_meta(self, data: bytes | None, stat: Any, event: Any = None) -> bool | None:
        ctx = self.ctx
        if self.stopped or ctx.closing.is_set():
            return False
        meta = None
        if stat is not None and data is not None:
            try:
                meta = TopicInfo.from_json(orjson.loads(data), partitions=[])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("topic %s: unreadable meta %r: %s", self.name, data[:200], exc)
        with ctx.lock:
            if self.stopped:
                return False
            self.meta = meta
            czxid = int(stat.czxid) if stat is not None else -1
            fresh = czxid != self.czxid
            if fresh:  # created, deleted or re-created: start over
                self.czxid = czxid
                self.incarnation += 1
                self.children = None
                self.watched = set()
                self.states = {}
                self.deleting = False
            incarnation = self.incarnation
        if fresh and stat is not None:
            ChildrenWatch(ctx.client, f"{self.path}/{PARTITIONS}", partial(self._on_children, incarnation))
        self.publish([self.name])
        return None  # keep watching even when absent: the name may be re-created

    def _on_children(self, incarnation: int, children: list[str]) -> bool | None:
        ctx = self.ctx
        with ctx.lock:
            if self.stopped or incarnation != self.incarnation:
                return False
            self.children = sorted(int(c) for c in children if c.isdigit())
            new = [p for p in self.children if p not in self.watched]
            self.watched.update(new)
            self.loading += 1
        try:
            for p in new:
                DataWatch(ctx.client, f"{self.path}/{PARTITIONS}/{p}", partial(self._on_partition, incarnation, p))
        finally:
            with ctx.lock:
                self.loading -= 1
        self.publish([self.name])
        return None

    def _on_partition(
        self, incarnation: int, partition: int, data: bytes | None, stat: Any, event: Any = None
    ) -> bool | None:
        ctx = self.ctx
        state = None
        if stat is not None and data is not None:
            try:
                state = PartitionState.from_json(orjson.loads(data), version=int(stat.version))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s-%d: unreadable state %r: %s", self.name, partition, data[:200], exc)
                return None
        with ctx.lock:
            if self.stopped or incarnation != self.incarnation:
                return False
            if state is None:  # partitions are only ever deleted with their topic
                self.deleting = True
                self.states.pop(partition, None)
                self.watched.discard(partition)
            else:
                entry = self.states.get(partition)
                if entry is not None and entry[2] == stat.czxid and entry[1] >= stat.mzxid:
                    return None  # already applied (this node's own write)
                self.states[partition] = (state, int(stat.mzxid), int(stat.czxid))
            loading = self.loading > 0
        if not loading:
            self.publish([self.name])
        return False if state is None else None
