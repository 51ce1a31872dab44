"""The coordinator's reads: snapshots kept by watches, with no ZooKeeper round trip.

ChildrenWatch / DataWatch recipes (``watches.py``) rebuild an immutable dict on each
change (a new dict, swapped under the lock, never mutated) and call ``wake()``: the
registered nodes, each node's published endpoints, the topics, and the controller (the
lowest contender of the election, ``election.py``). A topic appears once its meta, its
partition list and every partition's state are loaded, and disappears as soon as its
deletion is seen.

A write returns once this node's own snapshot shows it (``wait_for``, bounded by the
request timeout), so a caller reads its own writes; a partition state this node wrote
is applied at once (``apply``). ``wake()`` runs on kazoo's callback thread: it must not
block, and must not call the coordinator's writes (they wait for these watches).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from kazoo.exceptions import NoNodeError
from kazoo.recipe.watchers import ChildrenWatch

from appliance.coordinator import NO_LEADER, NodeInfo, PartitionState, TopicInfo
from appliance.coordinator.zookeeper.layout import (
    ELECTION,
    ENDPOINTS,
    NODES,
    TOPICS,
    Layout,
    parse_endpoints,
    parse_node,
)
from appliance.coordinator.zookeeper.watches import ChildMap, TopicWatch, WatchContext

log = logging.getLogger(__name__)

_SEQUENCE = re.compile(r"(-?\d{10})$")  # kazoo's lock contender suffix


class Snapshots:
    """The latest nodes, endpoints, topics and controller as the watches loaded them.

    ``lock`` is the coordinator's; ``changed`` (on it) is notified on every swap."""

    def __init__(
        self,
        node_id: int,
        layout: Layout,
        lock: threading.Lock,
        closing: threading.Event,
        wake: Callable[[], None],
        request_timeout_s: float,
    ) -> None:
        self.node_id = node_id
        self.layout = layout
        self.lock = lock
        self.changed = threading.Condition(lock)  # notified on every snapshot swap
        self.closing = closing
        self.wake = wake
        self.request_timeout_s = request_timeout_s
        self.client: Any = None  # KazooClient, given to start()
        # snapshots (immutable by convention; replaced, never mutated)
        self.nodes: dict[int, NodeInfo] = {}
        self.endpoints: dict[int, dict[str, str]] = {}
        self.topics: dict[str, TopicInfo] = {}
        self.controller = NO_LEADER
        # watch state
        self.topic_watches: dict[str, TopicWatch] = {}

    def start(self, client: Any) -> None:
        """Set the watches; the first load runs here, synchronously (each watch reads
        before returning)."""
        self.client = client
        ctx = WatchContext(client, self.lock, self.closing)
        ChildMap(ctx, self.layout.path(NODES), parse_node, self._set_nodes).start()
        ChildMap(ctx, self.layout.path(ENDPOINTS), parse_endpoints, self._set_endpoints).start()
        ChildrenWatch(client, self.layout.path(TOPICS), self._on_topics)
        ChildrenWatch(client, self.layout.path(ELECTION), self._on_contenders)

    def wait_for(self, done: Callable[[], bool], what: str) -> None:
        """Wait (bounded) until this node's snapshots show a write it just made."""
        with self.changed:
            ok = self.changed.wait_for(done, timeout=self.request_timeout_s)
        if not ok:
            log.warning(
                "node %d: %s written to ZooKeeper but not seen by the watches within %.1f s",
                self.node_id,
                what,
                self.request_timeout_s,
            )

    def apply(self, topic: str, partition: int, stored: PartitionState, stat: Any) -> None:
        """A partition state this node just wrote: into the snapshot at once, unless the
        watch already has it or something newer."""
        with self.lock:
            tw = self.topic_watches.get(topic)
            applied = tw is not None and tw.apply(partition, stored, stat)
        if applied:
            self.publish_topics([topic])

    def _notify(self) -> None:
        """After a swap (called without the lock): wake the node."""
        self.wake()

    def _set_nodes(self, values: dict[int, NodeInfo]) -> None:
        with self.changed:
            if values == self.nodes:
                return
            self.nodes = values
            self.changed.notify_all()
        self._notify()

    def _set_endpoints(self, values: dict[int, dict[str, str]]) -> None:
        with self.changed:
            if values == self.endpoints:
                return
            self.endpoints = values
            self.changed.notify_all()
        self._notify()

    def publish_topics(self, names: Iterable[str]) -> None:
        """Rebuild the snapshot of these topics; wake when one changed."""
        with self.changed:
            topics = self.topics
            changed = False
            for name in names:
                tw = self.topic_watches.get(name)
                info = tw.snapshot() if tw is not None else None
                if info == topics.get(name):
                    continue
                if not changed:
                    topics = dict(topics)
                    changed = True
                if info is None:
                    del topics[name]
                else:
                    topics[name] = info
            if changed:
                self.topics = topics
                self.changed.notify_all()
        if changed:
            self._notify()

    def _on_topics(self, children: list[str]) -> bool | None:
        """ChildrenWatch on /topics: a TopicWatch per topic."""
        if self.closing.is_set():
            return False
        names = set(children)
        ctx = WatchContext(self.client, self.lock, self.closing)
        with self.lock:
            gone = [n for n in self.topic_watches if n not in names]
            for n in gone:
                self.topic_watches.pop(n).stopped = True
            new = [
                TopicWatch(ctx, n, self.layout.path(TOPICS, n), self.publish_topics)
                for n in sorted(names)
                if n not in self.topic_watches
            ]
            for tw in new:
                self.topic_watches[tw.name] = tw
        for tw in new:
            tw.start()  # loads meta, partition list and states before returning
        self.publish_topics(gone + [tw.name for tw in new])
        return None

    def _on_contenders(self, children: list[str]) -> bool | None:
        """ChildrenWatch on the election path: the lowest sequence is the controller."""
        if self.closing.is_set():
            return False
        client = self.client
        ranked = sorted((m.group(1), c) for c in children if (m := _SEQUENCE.search(c)))
        controller = NO_LEADER
        for _, child in ranked:
            try:
                data, _ = client.retry(client.get, self.layout.path(ELECTION, child))
            except NoNodeError:
                continue  # gone meanwhile; the next one is the holder
            try:
                controller = int(data.decode())
            except ValueError:
                log.warning("controller election contender %s has data %r, not a node id", child, data)
            break
        with self.changed:
            old, self.controller = self.controller, controller
            self.changed.notify_all()
        if old != controller:
            log.info("node %d: controller %d -> %d", self.node_id, old, controller)
            self._notify()
        return None
