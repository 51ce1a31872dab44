"""This node's liveness: its registration (``/nodes/<id>``, with the node epoch) and its
published endpoints (``/endpoints/<id>``), both ephemeral znodes of its session.

**Epochs.** ``register()`` creates ``/nodes/<id>`` in this node's session. The znode's
creation zxid is the registration epoch (Kafka's broker epoch): every registration gets a
new, larger one. A registration left by a previous run of the same node id lives until
that run's session expires; ``register()`` waits for it (about twice the session timeout)
and then refuses with INVALID_CONFIG: two live nodes with one id.

**After a LOST session** ZooKeeper has removed the node's ephemeral znodes; kazoo opens a
new session, and the coordinator's session thread calls ``register_again`` (a new epoch)
which also republishes the endpoints, until it succeeds. The node learns it through
``wake()`` and ``nodes()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError

from appliance.coordinator import StaleStateError
from appliance.coordinator.zookeeper.layout import ENDPOINTS, NODES, Layout, dumps
from appliance.coordinator.zookeeper.session import SESSION_TICK_S, Session
from ipc.errors import InvalidConfigError, SluiceError

log = logging.getLogger(__name__)


def _set_event(event: threading.Event, _watched: Any) -> None:
    event.set()


class Registration:
    """``/nodes/<id>`` and ``/endpoints/<id>`` of this node. ``data``, ``epoch`` and
    ``need_register`` are kept under the coordinator's ``lock``."""

    def __init__(
        self,
        node_id: int,
        session: Session,
        layout: Layout,
        lock: threading.Lock,
        closing: threading.Event,
        wake: Callable[[], None],
    ) -> None:
        self.node_id = node_id
        self.session = session
        self.layout = layout
        self.lock = lock
        self.closing = closing
        self.wake = wake
        self.data: bytes | None = None  # /nodes/<id> data once registered
        self.epoch = -1
        self.need_register = False  # the session was lost: register again when connected
        self._next_register = 0.0
        self._publish_lock = threading.Lock()  # one publish_endpoints / republish at a time
        self._published: bytes | None = None
        self._published_session: int | None = None

    def register(self, endpoint: str) -> int:
        """Create ``/nodes/<id>`` with ``endpoint`` and return the registration epoch."""
        data = dumps({"endpoint": endpoint})
        epoch = self._create(data)
        with self.lock:
            self.data = data
            self.epoch = epoch
            self.need_register = False
        log.info("node %d: registered in ZooKeeper with endpoint %s, epoch %d", self.node_id, endpoint, epoch)
        return epoch

    def lost_locked(self) -> None:
        """The session was LOST (called with the coordinator's lock held): register again
        once connected, unless never registered or closing."""
        self.need_register = self.data is not None and not self.closing.is_set()

    def due(self) -> bool:
        """A registration lost with the session, to make again now."""
        return self.need_register and self.session.connected() and time.monotonic() >= self._next_register

    def register_again(self) -> None:
        """After a LOST session: a new registration (a new epoch) and the endpoints
        published again; on failure, again after ``SESSION_TICK_S``."""
        data = self.data
        assert data is not None
        try:
            epoch = self._create(data)
            with self._publish_lock:
                if self._published is not None:
                    self._write_endpoints(self._published)
        except (KazooException, SluiceError) as exc:
            self._next_register = time.monotonic() + SESSION_TICK_S
            log.warning("node %d: registering again after the session loss failed: %s", self.node_id, exc)
            return
        with self.lock:
            old, self.epoch = self.epoch, epoch
            self.need_register = False
        log.warning("node %d: registered again after its session expired: epoch %d -> %d", self.node_id, old, epoch)
        self.wake()

    def publish_endpoints(self, endpoints: dict[str, str]) -> bool:
        """Write ``/endpoints/<id>``; False (nothing written) when this session already
        published exactly these."""
        data = dumps(endpoints)
        with self._publish_lock:
            if data == self._published and self._published_session == self.session.session_id():
                return False
            self._write_endpoints(data)
        return True

    def withdraw(self) -> None:
        """On close: delete ``/endpoints/<id>`` and ``/nodes/<id>`` if this session owns
        them (otherwise they go with the session)."""
        client = self.session.client
        session = self.session.session_id()
        for path in (self.layout.path(ENDPOINTS, self.node_id), self.layout.path(NODES, self.node_id)):
            try:
                stat = self.session.call(client.exists_async(path), f"reading {path}")
                if stat is not None and stat.ephemeralOwner == session:
                    self.session.call(client.delete_async(path, stat.version), f"deleting {path}")
            except (KazooException, SluiceError) as exc:
                log.info("node %d: %s not deleted on close (%s); it goes with the session", self.node_id, path, exc)

    def _create(self, data: bytes) -> int:
        """Create ``/nodes/<id>``; its czxid is the epoch. A znode left by another session
        is waited for (an exists watch, no polling) until about 2x the session timeout."""
        client = self.session.client
        session_timeout_s = self.session.session_timeout_s
        path = self.layout.path(NODES, self.node_id)
        deadline = time.monotonic() + 2 * session_timeout_s + 1.0
        for _ in range(100):  # each turn waits for a deletion or ends at the deadline
            try:
                _, stat = self.session.call(
                    client.create_async(path, data, ephemeral=True, include_data=True), f"creating {path}"
                )
                return int(stat.czxid)
            except NodeExistsError:
                pass
            gone = threading.Event()
            stat = self.session.call(client.exists_async(path, watch=partial(_set_event, gone)), f"reading {path}")
            if stat is None:
                continue
            if stat.ephemeralOwner == self.session.session_id():
                # Ours already (a create whose answer was lost, or a second register()).
                self.session.call(client.set_async(path, data, stat.version), f"writing {path}")
                return int(stat.czxid)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            log.info(
                "node %d: waiting up to %.1f s for the previous registration (session 0x%x) to expire",
                self.node_id,
                remaining,
                stat.ephemeralOwner,
            )
            gone.wait(remaining)
        raise InvalidConfigError(
            f"node id {self.node_id} is already registered in ZooKeeper ({self.session.hosts}{self.layout.chroot}) "
            f"by another session that did not expire within {2 * session_timeout_s + 1.0:.0f} s: another node runs "
            "with this node_id"
        )

    def _write_endpoints(self, data: bytes) -> None:
        """Create or update ``/endpoints/<id>`` in this session (a znode left by a previous
        session of this node id is replaced). Called with ``_publish_lock`` held."""
        client = self.session.client
        path = self.layout.path(ENDPOINTS, self.node_id)
        for _ in range(5):
            session = self.session.session_id()
            try:
                stat = self.session.call(client.exists_async(path), f"reading {path}")
                if stat is None:
                    self.session.call(client.create_async(path, data, ephemeral=True), f"creating {path}")
                elif stat.ephemeralOwner != session:
                    self.session.call(client.delete_async(path, stat.version), f"deleting {path}")
                    continue
                else:
                    self.session.call(client.set_async(path, data), f"writing {path}")
            except (NodeExistsError, NoNodeError, BadVersionError):
                continue
            self._published, self._published_session = data, session
            return
        raise StaleStateError(f"{path} kept changing while this node wrote it")
