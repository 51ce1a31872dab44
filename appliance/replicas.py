"""The partition replicas this node runs: one partition worker (a kept child, see
``appliance/children.py``) per replica, its slot in the shared-memory status table, its
log directory, and the control socket the supervisor and the workers talk over.

``PartitionWorkers`` starts a replica's worker with a ``WorkerSpec`` built from the
replica's current role and configuration, takes the workers' events (ready, alter_isr)
off the control socket, sends them commands (ipc/control.py), and keeps each slot's
control block in step with the replica's state. *Which* replicas run here and in which
role is decided by the reconciler (``appliance/reconcile.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from appliance.children import Child, Children, ChildSpec, ChildState, Supervision
from appliance.config import NodeConfig
from appliance.log.config import LogConfig
from appliance.partition.process import run_worker
from appliance.partition.spec import WorkerSpec
from ipc import sockets
from ipc.acl import AclBinding
from ipc.control import (
    AlterIsrEvent,
    Command,
    ControlMessageError,
    NodeOptionsCommand,
    ReadyEvent,
    RoleCommand,
    decode_event,
)
from ipc.control import encode as encode_control
from ipc.errors import SluiceError
from ipc.private import ensure_private_dir
from ipc.shm import ControlBlock, Role, SlotState, StatusTable

log = logging.getLogger(__name__)

# How long a replica's storage_error (read from its worker's status block) is reused:
# the health assessment asks for it on every tick, for every replica.
STORAGE_ERROR_TTL_S = 2.0

_SLOT_STATE = {
    ChildState.STARTING: SlotState.STARTING,
    ChildState.SERVING: SlotState.SERVING,
    ChildState.STOPPING: SlotState.STOPPING,
    ChildState.BACKOFF: SlotState.RESTARTING,
    ChildState.OFFLINE: SlotState.OFFLINE,
}


class Replica:
    """One partition replica on this node (implements ``nodeview.ReplicaView``)."""

    def __init__(
        self,
        topic: str,
        partition: int,
        slot: int,
        spec: Callable[[Replica], ChildSpec],
        table: StatusTable | None = None,
    ) -> None:
        self.table = table  # to read its worker's status block (storage_error)
        self.topic = topic
        self.partition = partition
        self.slot = slot
        self.endpoint = ""  # where its worker serves (advertised host), once ready
        self.port = 0  # kept across restarts: a restarted worker binds the same port if it can
        self.role: RoleCommand | None = None  # the last role command sent
        self.log_config: LogConfig | None = None  # the last topic configuration sent
        self.node_options: NodeOptionsCommand | None = None  # the last node options sent
        self.acls_version = -1  # the version of the cluster's ACLs it has
        self.topic_created_ms = 0  # which incarnation of the topic (a name can be deleted and reused)
        self.counters = (0, 0, 0, 0)  # records/bytes in/out, kept across restarts
        self.after_stop: Callable[[Replica], None] | None = None
        self.child = Child(spec(self))
        self._storage_error = (-1, 0.0, False)  # (pid, read at, value)

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"

    @property
    def state(self) -> ChildState:
        return self.child.state

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def restarts(self) -> int:
        return self.child.restarts

    @property
    def killed_at(self) -> float:
        return self.child.killed_at

    @property
    def storage_error(self) -> bool:
        """Its serving worker reports that the partition's directory refuses writes (a
        full disk, an I/O error: ``appliance/partition/storage.py``)."""
        if self.table is None or self.state is not ChildState.SERVING or not self.pid:
            return False
        pid, at, value = self._storage_error
        now = time.monotonic()
        if pid == self.pid and now - at < STORAGE_ERROR_TTL_S:
            return value  # read every STORAGE_ERROR_TTL_S: 1,000 replicas at 10 ticks/s added up
        st = self.table.read_status_or_none(self.slot)
        value = st is not None and st.pid == self.pid and st.storage_error
        self._storage_error = (self.pid, now, value)
        return value


class WorkerEvents(Protocol):
    """What the owner of the workers hears from them."""

    def prepare_start(self, r: Replica) -> None: ...  # set its role and configuration, claim its directory

    def replica_ready(self, r: Replica) -> None: ...

    def replica_alter_isr(self, r: Replica, event: AlterIsrEvent) -> None: ...

    def replica_gone(self, r: Replica) -> None: ...  # stopped on purpose and forgotten

    def worker_exited(self, pid: int) -> None: ...  # a worker process ended (metrics clean-up)

    def serving_changed(self) -> None: ...  # an endpoint came or went


class PartitionWorkers:
    def __init__(
        self,
        config: Callable[[], NodeConfig],
        table: StatusTable,
        ctx: zmq.Context[Any],
        poller: zmq.Poller,
        mp: Any,
        events: WorkerEvents,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self.table = table
        self.events = events
        self.clock = clock
        self.replicas: dict[tuple[str, int], Replica] = {}
        self.children = Children(mp, poller, self, clock)
        self._by_child: dict[int, Replica] = {}  # id(child) -> replica
        self._by_slot: dict[int, Replica] = {}  # slot -> replica (a worker's events name its slot)
        self._free_from = 0  # no free slot below this one (slots are ours alone to claim)
        self.node_epoch = -1
        self.acls: tuple[AclBinding, ...] = ()  # the cluster's ACLs (a started worker gets them in its spec)
        self.acls_version = -1
        cfg = config()
        control_path = cfg.control_endpoint[len("ipc://") :]
        ensure_private_dir(os.path.dirname(control_path), "runtime_dir")  # never bind in someone else's
        if os.path.exists(control_path):
            os.unlink(control_path)  # left by a node that died: the data-dir lock says it is not running
        self.control, _ = sockets.bind_router(ctx, cfg.control_endpoint)
        os.chmod(control_path, 0o600)  # this user's only (its directory is 0700 too: ipc/private.py)
        poller.register(self.control, zmq.POLLIN)

    @property
    def config(self) -> NodeConfig:
        return self._config()

    def supervision(self) -> Supervision:
        cfg = self.config
        return Supervision(
            heartbeat_timeout_s=cfg.heartbeat_timeout_ms / 1000,
            start_timeout_s=cfg.worker_start_timeout_ms / 1000,
            backoff_s=cfg.restart_backoff_ms / 1000,
            backoff_max_s=cfg.restart_backoff_max_ms / 1000,
            max_restarts=cfg.max_restarts,
            window_s=cfg.restart_window_ms / 1000,
        )

    def partition_dir(self, topic: str, partition: int) -> str:
        return os.path.join(self.config.data_dir, f"{topic}-{partition}")

    def free_slots(self) -> int:
        return self.config.max_partitions - len(self.replicas)

    # ---- starting a replica ------------------------------------------------------------------
    def _child_spec(self, r: Replica) -> ChildSpec:
        def heartbeat() -> float | None:
            st = self.table.read_status_or_none(r.slot)
            return st.heartbeat if st is not None else None

        def start() -> tuple[Callable[..., None], tuple[Any, ...]]:
            self.events.prepare_start(r)  # the current role and configuration, at every (re)start
            r.endpoint = ""
            return run_worker, (self._worker_spec(r), r.topic_created_ms)  # it claims its directory

        return ChildSpec(r.name, start, heartbeat, self.supervision)

    def _worker_spec(self, r: Replica) -> WorkerSpec:
        cfg = self.config
        assert r.log_config is not None and r.role is not None, "prepare_start sets both"
        return WorkerSpec(
            node_id=cfg.node_id,
            role=r.role,
            replica_lag_time_max_ms=cfg.replica_lag_time_max_ms,
            heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
            initial_counters=r.counters,
            topic=r.topic,
            partition=r.partition,
            slot=r.slot,
            leader_epoch=r.role.leader_epoch,
            directory=self.partition_dir(r.topic, r.partition),
            log_config=r.log_config,
            listen_host=cfg.listen_host,
            preferred_port=r.port,
            control_endpoint=cfg.control_endpoint,
            status_path=cfg.status_path,
            supervisor_pid=os.getpid(),
            log_level=cfg.log_level,
            retention_check_ms=cfg.retention_check_interval_ms,
            cleaner_interval_ms=cfg.cleaner_interval_ms,
            max_request_bytes=cfg.max_request_bytes,
            security=cfg.security,
            acls=self.acls,
        )

    def add(self, topic: str, partition: int) -> Replica:
        """Claim a slot and queue the replica's worker to start: the node's loop starts
        queued workers a few at a time between serving requests (``Children.start_queued``),
        so creating 500 partitions does not stop the front endpoint."""
        slot = self._free_slot()
        if slot is None:
            raise SluiceError(
                f"no free slot for {topic}-{partition}: max_partitions={self.config.max_partitions} reached"
            )
        r = Replica(topic, partition, slot, self._child_spec, self.table)
        self.replicas[(topic, partition)] = r
        self._by_child[id(r.child)] = r
        self._by_slot[slot] = r
        try:
            self._start(r)
        except BaseException:
            del self.replicas[(topic, partition)]  # the next reconcile tries again
            del self._by_child[id(r.child)]
            del self._by_slot[slot]
            self._free_from = min(self._free_from, slot)
            raise
        return r

    def _free_slot(self) -> int | None:
        """The lowest slot no replica holds (the table's FREE ones: a slot is written FREE
        when its replica is forgotten), found from a hint rather than by reading every
        control block (``StatusTable.find_free_slot``: O(slots) per replica added)."""
        for slot in range(self._free_from, self.table.slots):
            if slot not in self._by_slot:
                self._free_from = slot + 1
                return slot
        return None

    def _start(self, r: Replica) -> None:
        r.endpoint = ""
        self.children.enqueue(r.child)  # started by the loop's next pass (Children.start_queued)
        log.debug("%s: worker queued to start (slot %d)", r.name, r.slot)

    def claim_directory(self, r: Replica, created_ms: int) -> None:
        """Note which incarnation of its topic the replica's directory is for; its worker
        claims the directory (``appliance/partition/directory.py``) before opening the log,
        in parallel with the others rather than on this loop."""
        r.topic_created_ms = created_ms

    def remove_files(self, r: Replica) -> None:
        """Move the replica's directory aside at once; its bytes go in the background."""
        src = self.partition_dir(r.topic, r.partition)
        if os.path.exists(src):
            dst = f"{src}.{int(time.time() * 1000)}-delete"
            os.replace(src, dst)
            threading.Thread(target=shutil.rmtree, args=(dst, True), name="rmtree", daemon=True).start()

    def stop(self, r: Replica, after_stop: Callable[[Replica], None] | None = None) -> None:
        r.after_stop = after_stop
        self.children.stop(r.child)

    def stop_all(self) -> None:
        for r in list(self.replicas.values()):
            if r.child.running or r.child.queued:  # a queued one is forgotten, never started
                self.children.stop(r.child)

    # ---- control socket ---------------------------------------------------------------------
    def send(self, r: Replica, command: Command) -> None:
        try:
            self.control.send_multipart([f"slot-{r.slot}".encode(), encode_control(command)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("%s: control message not delivered: %s", r.name, exc)

    def send_role(self, r: Replica, role: RoleCommand) -> None:
        r.role = role
        self.send(r, role)
        self.write_control(r)

    def on_control(self) -> None:
        """Events the workers sent on the control socket."""
        while True:
            try:
                _identity, raw = self.control.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            try:
                event = decode_event(raw)
            except ControlMessageError as exc:
                log.warning("malformed control message %r: %s", raw[:200], exc)
                continue
            r = self._by_slot.get(event.slot)
            if r is None or r.pid != event.pid:
                continue  # a late message from a worker that has been replaced
            if isinstance(event, ReadyEvent) and r.state is ChildState.STARTING:
                r.port = event.port
                r.endpoint = f"tcp://{self.config.advertised_host}:{r.port}"
                self.children.serving(r.child)
                self.events.replica_ready(r)
            elif isinstance(event, AlterIsrEvent) and r.state is ChildState.SERVING:
                self.events.replica_alter_isr(r, event)

    # ---- the status table -------------------------------------------------------------------
    def write_control(self, r: Replica) -> None:
        self.table.write_control(
            r.slot,
            ControlBlock(
                state=_SLOT_STATE[r.state],
                role=r.role.role if r.role is not None else Role.NONE,
                replica_count=min(len(r.role.replicas), 255) if r.role is not None else 0,
                isr_count=min(len(r.role.isr), 255) if r.role is not None else 0,
                partition=r.partition,
                restarts=r.restarts,
                worker_pid=r.pid,
                topic=r.topic,
                last_exit_code=r.child.last_exit,
                offline_since=r.child.offline_since,
            ),
        )

    # ---- ChildEvents (appliance/children.py) ------------------------------------------------
    def child_state_changed(self, child: Child, old: ChildState) -> None:
        r = self._by_child[id(child)]
        if ChildState.SERVING in (old, child.state) and old is not child.state:
            self.events.serving_changed()  # its endpoint comes or goes: publish (reconcile)
        self.write_control(r)

    def child_exited(self, child: Child, code: int) -> None:
        r = self._by_child[id(child)]
        r.endpoint = ""
        st = self.table.read_status_or_none(r.slot)
        if st is not None:  # keep its counters: the next worker continues from them
            live = (st.records_in, st.bytes_in, st.records_out, st.bytes_out)
            r.counters = tuple(max(a, b) for a, b in zip(r.counters, live, strict=True))  # type: ignore[assignment]
        self.table.reset_status(r.slot)
        if child.pid:
            self.events.worker_exited(child.pid)

    def child_stopped(self, child: Child) -> None:
        r = self._by_child.pop(id(child))
        self.replicas.pop((r.topic, r.partition), None)
        if self._by_slot.get(r.slot) is r:
            del self._by_slot[r.slot]
            self._free_from = min(self._free_from, r.slot)
        self.table.write_control(r.slot, ControlBlock.free())
        if r.after_stop is not None:
            r.after_stop(r)
        self.events.replica_gone(r)

    # ---- the tick ------------------------------------------------------------------------------
    def check(self, now: float, restart: bool, stop_deadline: float | None) -> None:
        self.children.check([r.child for r in self.replicas.values()], now, restart, stop_deadline)

    def grant_beat(self, now: float) -> None:
        self.children.grant_beat([r.child for r in self.replicas.values()], now)

    def any_running(self) -> bool:
        return any(r.child.running for r in self.replicas.values())

    def close(self) -> None:
        self.control.close(0)
        path = self.config.control_endpoint[len("ipc://") :]
        if os.path.exists(path):
            os.unlink(path)
