"""``ZooKeeperCoordinator``: the ``Coordinator`` interface over the parts of this package,
and the reactions to the session's state.

It builds the parts (construct before fork, start after: ``__init__`` touches no socket
and starts no thread), connects them in ``start()``, and routes each interface method to
the part that owns it: reads to the snapshots, ``register``/``publish_endpoints`` to the
registration, topic writes to ``TopicWriter``, ``set_partition_state`` to the fenced
compare-and-set, ``next_producer_id`` to the counter.

**Session states.** kazoo's listener (``_on_session_state``, on its connection thread)
only records the state and hands it to this module's ``zk-session`` thread; on LOST it
also stops this node's leadership and marks the registration to be made again. The
session thread logs each change, wakes the node, and makes the lost registration again
(a new epoch, the endpoints republished) once connected.

**Threads.** kazoo runs a connection thread and a callback thread (watch callbacks, so
``wake()`` is called from it: it must not block); ``zk-session`` runs ``_session_loop``;
``zk-election`` runs the election (``election.py``). Do not call the write methods from
inside ``wake()``: they wait for the watches that run on kazoo's threads.

**One lock.** Every part keeps its fields under the coordinator's one lock (the snapshots'
condition is on it too), so ``close()`` and a LOST session change the election's and the
registration's state in one step, as the watches swap snapshots.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import KazooException
from kazoo.protocol.states import KazooState

from appliance.coordinator import NO_LEADER, NodeInfo, PartitionState, TopicInfo
from appliance.coordinator.zookeeper.documents import Documents
from appliance.coordinator.zookeeper.election import ControllerElection
from appliance.coordinator.zookeeper.layout import ELECTION, ENDPOINTS, NODES, TOPICS, Layout
from appliance.coordinator.zookeeper.partition_state import set_partition_state
from appliance.coordinator.zookeeper.producer_ids import next_producer_id
from appliance.coordinator.zookeeper.registration import Registration
from appliance.coordinator.zookeeper.session import SESSION_TICK_S, Session
from appliance.coordinator.zookeeper.snapshots import Snapshots
from appliance.coordinator.zookeeper.topics import TopicWriter
from appliance.coordinator.zookeeper.url import parse_zookeeper_url

log = logging.getLogger(__name__)


def _no_wake() -> None:
    pass


class ZooKeeperCoordinator:
    """The ``Coordinator`` over ZooKeeper; see the package docstring."""

    def __init__(
        self,
        node_id: int,
        url: str,
        session_timeout_s: float = 6.0,
        *,
        connect_timeout_s: float = 15.0,
        request_timeout_s: float | None = None,
    ) -> None:
        self.node_id = node_id
        self.url = url
        self.hosts, self.chroot = parse_zookeeper_url(url)
        self.session_timeout_s = session_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s if request_timeout_s is not None else max(session_timeout_s, 2.0)
        self._wake: Callable[[], None] = _no_wake
        self._lock = threading.Lock()  # every part's state (see the module docstring)
        self._closing = threading.Event()
        self._layout = Layout(self.chroot)
        self._session = Session(
            node_id, self.hosts, session_timeout_s, connect_timeout_s, self.request_timeout_s, self._closing
        )
        self._snapshots = Snapshots(
            node_id, self._layout, self._lock, self._closing, self._notify, self.request_timeout_s
        )
        self._registration = Registration(node_id, self._session, self._layout, self._lock, self._closing, self._notify)
        self._elector = ControllerElection(
            node_id, self._session, self._layout, self._lock, self._closing, self._notify
        )
        self._topic_writer = TopicWriter(self._session, self._layout, self._snapshots)
        self._documents = Documents(self._session, self._layout, self._notify)
        self._session_events: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    @property
    def _client(self) -> Any:
        """The KazooClient, once ``start()`` connected it (None before)."""
        return self._session.client

    @property
    def _fence_path(self) -> str | None:
        """The election znode this node won with, while it is the controller."""
        return self._elector.fence_path

    def _notify(self) -> None:
        """Wake the node (the ``wake`` given to ``start()``): called without the lock."""
        self._wake()

    # ---- life cycle -----------------------------------------------------------------------
    def start(self, wake: Callable[[], None]) -> None:
        """Connect (bounded by ``connect_timeout_s``), create the layout's parents, load
        every snapshot and set the watches. CoordinatorNotAvailableError if ZooKeeper
        does not answer."""
        if self._session.client is not None:
            raise RuntimeError("ZooKeeperCoordinator.start() called twice")
        self._wake = wake
        client = self._session.connect(self._on_session_state)
        try:
            for parent in (NODES, TOPICS, ENDPOINTS, ELECTION):
                path = self._layout.path(parent)
                self._session.call(client.ensure_path_async(path), f"creating {path}")
            session = threading.Thread(target=self._session_loop, name=f"zk-session-{self.node_id}", daemon=True)
            session.start()
            self._threads.append(session)
            self._snapshots.start(client)  # the first load runs here, synchronously
            self._documents.start(client, self.request_timeout_s)
        except BaseException:
            self.close()
            raise
        log.info(
            "node %d: connected to ZooKeeper %s%s (session timeout %.1f s): %d node(s), %d topic(s), controller %d",
            self.node_id,
            self.hosts,
            self.chroot,
            self.session_timeout_s,
            len(self._snapshots.nodes),
            len(self._snapshots.topics),
            self._snapshots.controller,
        )

    def register(self, endpoint: str) -> int:
        """Create ``/nodes/<id>`` (waiting for a previous session's registration to
        expire, about twice the session timeout), join the controller election, return
        the registration epoch."""
        self._session.require()
        epoch = self._registration.register(endpoint)
        if self._elector.thread is None:
            self._threads.append(self._elector.start())
        snapshots = self._snapshots
        snapshots.wait_for(
            lambda: (n := snapshots.nodes.get(self.node_id)) is not None and n.epoch == epoch, "registration"
        )
        return epoch

    def close(self) -> None:
        """Leave the election, delete this node's ephemeral znodes, close the session.
        Idempotent."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            election, stop = self._elector.stand_down_locked()
        stop.set()
        self._session_events.put(None)
        client = self._session.client
        if client is None:
            return
        self._elector.join(election, self.request_timeout_s)
        if client.state == KazooState.CONNECTED:
            self._registration.withdraw()
        try:
            client.stop()
        except KazooException as exc:
            log.warning("node %d: ZooKeeper client did not stop cleanly: %s", self.node_id, exc)
        client.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(self.request_timeout_s)
        log.info("node %d: ZooKeeper session closed", self.node_id)

    def connected(self) -> bool:
        return self._session.connected()

    # ---- reads ------------------------------------------------------------------------------
    def nodes(self) -> dict[int, NodeInfo]:
        return self._snapshots.nodes

    def controller(self) -> int:
        if self.is_controller():
            return self.node_id
        c = self._snapshots.controller
        return NO_LEADER if c == self.node_id else c  # our own stale entry: we are not leading

    def is_controller(self) -> bool:
        return self._elector.is_controller()

    def topics(self) -> dict[str, TopicInfo]:
        return self._snapshots.topics

    def endpoints(self) -> dict[int, dict[str, str]]:
        return self._snapshots.endpoints

    def document(self, name: str) -> tuple[Any, int]:
        return self._documents.get(name)

    @property
    def epoch(self) -> int:
        """This node's current registration epoch (-1 before ``register()``)."""
        return self._registration.epoch

    # ---- writes -----------------------------------------------------------------------------
    def create_topic(self, info: TopicInfo) -> None:
        self._topic_writer.create_topic(info)

    def delete_topic(self, name: str) -> None:
        self._topic_writer.delete_topic(name)

    def set_topic_config(self, name: str, config: dict[str, Any]) -> None:
        self._topic_writer.set_topic_config(name, config)

    def add_partitions(self, name: str, states: list[PartitionState]) -> None:
        """Create partitions ``len(current)..`` in one multi-op that also checks the topic
        znode's version: StaleStateError when partitions were added concurrently."""
        self._topic_writer.add_partitions(name, states)

    def set_partition_state(self, topic: str, partition: int, state: PartitionState) -> PartitionState:
        """Compare-and-set fenced by controllership: NotControllerError unless this node
        holds the election znode it won with; StaleStateError on a version mismatch."""
        return set_partition_state(self._session, self._layout, self._elector, self._snapshots, topic, partition, state)

    def publish_endpoints(self, endpoints: dict[str, str]) -> None:
        self._session.require()
        if not self._registration.publish_endpoints(endpoints):
            return  # this session published exactly these already
        want = dict(endpoints)
        self._snapshots.wait_for(lambda: self._snapshots.endpoints.get(self.node_id) == want, "endpoints")

    def next_producer_id(self) -> int:
        return next_producer_id(self._session, self._layout)

    def set_document(self, name: str, value: Any, version: int) -> None:
        self._documents.set(name, value, version)

    # ---- session ---------------------------------------------------------------------------------
    def _on_session_state(self, state: str) -> None:
        """kazoo listener, on its connection thread: record and hand over, never block."""
        self._session.record(state)
        if state == KazooState.LOST:
            with self._lock:
                self._elector.stand_down_locked()
                self._registration.lost_locked()
            self._elector.stop_leading()
        self._session_events.put(state)

    def _session_loop(self) -> None:
        """Log session changes, wake the node, register again after a LOST session."""
        while not self._closing.is_set():
            try:
                state = self._session_events.get(timeout=SESSION_TICK_S)
            except queue.Empty:
                state = ""
            if state is None or self._closing.is_set():
                return
            if state:
                level = logging.INFO if state == KazooState.CONNECTED else logging.WARNING
                log.log(level, "node %d: ZooKeeper session %s", self.node_id, state)
                self._wake()
            if self._registration.due():
                self._registration.register_again()
