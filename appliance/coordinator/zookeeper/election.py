"""The controller election: registered nodes contend with kazoo's ``Election`` recipe (a
lock of ephemeral sequential znodes under ``<chroot>/controller_election``); the lowest
sequence is the controller.

The winner's leadership function (``_lead``) blocks until ``close()`` or the loss of the
session; after a LOST session the node contends again once connected (one kazoo Election
per session, on the ``zk-election`` thread). Who the controller is, as every node sees
it, is a snapshot (``snapshots.py``); whether *this* node leads is ``is_controller()``:
False from SUSPENDED (connection gone, the session may be expiring) until CONNECTED
again, and after LOST until the node wins a new election.

**Fencing.** ZooKeeper fences a zombie controller: a controller paused or cut off for
longer than the session timeout has an expired session, ZooKeeper deletes its ephemeral
znodes (election node included), the next contender takes over, and no request made on
the expired session is accepted. ``fence_path`` is the election znode this node won
with; the controller's writes check that it still exists (``partition_state.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import ConnectionClosedError, KazooException

from appliance.coordinator.zookeeper.layout import ELECTION, Layout
from appliance.coordinator.zookeeper.session import SESSION_TICK_S, Session

log = logging.getLogger(__name__)


class ControllerElection:
    """This node's part in the election. ``election``, ``leader_stop``, ``leading`` and
    ``fence_path`` are kept under the coordinator's ``lock``."""

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
        self.election: Any = None  # the kazoo Election being run
        self.leader_stop = threading.Event()  # ends the current leadership function
        self.leading = False
        self.fence_path: str | None = None  # the election znode this node won with
        self.thread: threading.Thread | None = None

    def is_controller(self) -> bool:
        return self.leading and self.session.connected()

    def start(self) -> threading.Thread:
        """Start contending (the ``zk-election`` thread); once, after the first registration."""
        self.thread = threading.Thread(target=self._loop, name=f"zk-election-{self.node_id}", daemon=True)
        self.thread.start()
        return self.thread

    def stand_down_locked(self) -> tuple[Any, threading.Event]:
        """Not the controller any more (called with the coordinator's lock held, on LOST
        and on close): the Election being run and the event that ends its leadership."""
        self.leading = False
        return self.election, self.leader_stop

    def stop_leading(self) -> None:
        """End the current leadership function (without the lock)."""
        self.leader_stop.set()

    def join(self, election: Any, timeout_s: float) -> None:
        """On close: cancel ``election`` and wait for the thread (it lets the lock release
        its znode)."""
        if election is not None:
            election.cancel()
        if self.thread is not None:
            self.thread.join(timeout_s)  # lets the lock release its znode

    def _loop(self) -> None:
        """Contend while open: one kazoo Election per session (a new one after LOST)."""
        backoff = 0.1
        while not self.closing.is_set():
            if not self.session.up.wait(SESSION_TICK_S):
                continue
            election = self.session.client.Election(self.layout.path(ELECTION), str(self.node_id))
            stop = threading.Event()
            with self.lock:
                if self.closing.is_set():
                    return
                self.election, self.leader_stop = election, stop
            try:
                election.run(self._lead, election, stop)
                backoff = 0.1
            except ConnectionClosedError:
                return
            except KazooException as exc:
                log.warning("node %d: controller election failed (%r); again in %.1f s", self.node_id, exc, backoff)
                self.closing.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with self.lock:
                    self.election = None

    def _lead(self, election: Any, stop: threading.Event) -> None:
        """The leadership function: hold the controller role until close() or LOST."""
        lock = election.lock
        if not lock.is_acquired or lock.node is None:
            return  # kazoo's Lock.__enter__ ignores a failed acquire: do not lead then
        session = self.session.session_id()
        with self.lock:
            if self.closing.is_set() or stop.is_set():
                return
            self.fence_path = self.layout.path(ELECTION, lock.node)
            self.leading = True
        log.warning("node %d: is the controller (election znode %s)", self.node_id, lock.node)
        self.wake()
        try:
            # Ends on close() or LOST (the listener sets ``stop``); the check of the session
            # id each second is a second line should a listener call be missed.
            while not stop.wait(SESSION_TICK_S):
                if self.session.session_id() not in (session, None):
                    break
        finally:
            with self.lock:
                self.leading = False
                self.fence_path = None
            log.warning("node %d: is no longer the controller", self.node_id)
            self.wake()
