"""The supervisor: the node's main process.

It keeps one partition worker per partition replica alive, serves the front endpoint
(metadata, admin, status) and owns the control plane of the shared-memory status table.

Shape (after gunicorn's arbiter): signal handlers only enqueue; one ``run`` loop polls
the front socket, the control socket, the signal pipe and each worker's exit sentinel,
handles what arrived, then ``tick``s: murder workers whose heartbeat stopped, start due
restarts, answer deferred admin requests.

Workers are forked by a fork server (``multiprocessing``'s ``forkserver`` started before
this process has any thread, with the worker module preloaded), so forking never copies
a lock held by another thread of the supervisor, and workers share the preloaded pages.
When the supervisor dies the fork server sees EOF and exits, and every worker gets the
parent-death signal: no worker outlives its node.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import zmq

from appliance import reload as config_reload
from appliance.children import ChildState
from appliance.config import NodeConfig
from appliance.controller import Controller
from appliance.coordinator import NO_LEADER, Coordinator, PartitionState, TopicInfo
from appliance.coordinator.local import LocalCoordinator
from appliance.datadir import lock_data_dir
from appliance.log.checkpoint import atomic_write
from appliance.log.config import LogConfig
from appliance.nodeview import NodeState, ReplicaView
from appliance.partition.spec import WorkerSpec
from appliance.partition.worker import run_worker
from appliance.process import SignalPipe
from appliance.systemd import Notifier, ServiceNotifier
from ipc import sockets
from ipc.client.transport import ChannelPool
from ipc.control import (
    AlterIsrEvent,
    Command,
    ConfigCommand,
    ControlMessageError,
    ReadyEvent,
    RoleCommand,
    decode_event,
)
from ipc.control import encode as encode_control
from ipc.errors import InvalidConfigError, SluiceError
from ipc.shm import ControlBlock, Role, SlotState, StatusTable
from metrics.exporter import GroupSnap
from metrics.node import NodeMetrics

log = logging.getLogger(__name__)

TICK_S = 0.1
RECONCILE_S = 1.0  # reconcile with the coordinator at least this often (besides its wake-ups)
TOPIC_MARKER = "topic-created-ms"  # in each partition directory: which topic of that name it holds


def make_coordinator(config: NodeConfig) -> Coordinator:
    if config.coordinator == "local":
        return LocalCoordinator(config.data_dir, config.node_id)
    from appliance.coordinator.zookeeper import ZooKeeperCoordinator

    timeout_s = config.zookeeper_session_timeout_ms / 1000
    return ZooKeeperCoordinator(config.node_id, config.coordinator, timeout_s)  # type: ignore[no-any-return,unused-ignore]


ReplicaState = ChildState  # a replica's worker is a child like any other


_SLOT_STATE = {
    ReplicaState.STARTING: SlotState.STARTING,
    ReplicaState.SERVING: SlotState.SERVING,
    ReplicaState.STOPPING: SlotState.STOPPING,
    ReplicaState.BACKOFF: SlotState.RESTARTING,
    ReplicaState.OFFLINE: SlotState.OFFLINE,
}


@dataclasses.dataclass
class Replica:
    topic: str
    partition: int
    slot: int
    state: ReplicaState = ReplicaState.STARTING
    proc: BaseProcess | None = None
    pid: int = 0
    endpoint: str = ""
    port: int = 0
    leader_epoch: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    restarts: int = 0
    crash_times: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    last_exit: int = 0
    offline_since: float = 0.0
    last_beat: float = 0.0
    counters: tuple[int, int, int, int] = (0, 0, 0, 0)  # records/bytes in/out, kept across restarts
    killed_at: float = 0.0  # when its worker was sent SIGKILL (0: not); see appliance/systemd.py
    after_stop: Callable[[Replica], None] | None = None
    role: RoleCommand | None = None  # the last role command sent
    log_config: LogConfig | None = None  # the last topic configuration sent
    topic_created_ms: int = 0  # which incarnation of the topic (a name can be deleted and reused)

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"


class Supervisor:
    def __init__(
        self,
        config: NodeConfig,
        clock: Callable[[], float] = time.monotonic,
        load_config: Callable[[], NodeConfig] | None = None,
        systemd: ServiceNotifier | None = None,
        lock_fd: int = -1,
    ) -> None:
        self.config = config
        self._lock_fd = lock_fd  # the data-dir lock (appliance/datadir.py), if the caller took it
        self.load_config = load_config  # SIGHUP reads the configuration again with this
        self.systemd = systemd if systemd is not None else ServiceNotifier(Notifier(None))
        self.clock = clock
        self.state = NodeState.STARTING
        self.replicas: dict[tuple[str, int], Replica] = {}
        self.coordinator = make_coordinator(config)
        self.controller = Controller(self.coordinator, config.topic_defaults)
        self.node_epoch = -1
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._next_reconcile = 0.0
        self._cut_off_since: float | None = None  # when the coordinator connection was lost
        self.isr_shrinks = self.isr_expands = 0  # of partitions this node leads (metrics)
        self._peers: ChannelPool | None = None  # to the controller (alter_isr), made on first use
        self.table: StatusTable
        self.ctx: zmq.Context[Any]
        self.front: zmq.Socket[Any]
        self.control: zmq.Socket[Any]
        self.poller = zmq.Poller()
        self._sentinels: dict[int, Replica] = {}
        self._deadline_stop = 0.0
        from appliance.front import FrontApi

        self.api = FrontApi(self)
        self.metrics = NodeMetrics(self)

    # ---- the node view (appliance/nodeview.py) -----------------------------------------------
    def replica(self, topic: str, partition: int) -> ReplicaView | None:
        return self.replicas.get((topic, partition))

    def replica_views(self) -> list[ReplicaView]:
        return list(self.replicas.values())

    def group_summaries(self) -> list[GroupSnap]:
        return self.api.group_summaries()

    # ---- state ----------------------------------------------------------------------------
    def _set_state(self, new: NodeState) -> None:
        log.info("node %d: %s -> %s", self.config.node_id, self.state.value, new.value)
        self.state = new

    def _set_replica_state(self, r: Replica, new: ReplicaState) -> None:
        if r.state is not new:
            log.info("%s: %s -> %s", r.name, r.state.value, new.value)
            if ReplicaState.SERVING in (r.state, new):
                self.wake()  # its endpoint comes or goes: publish (reconcile)
        r.state = new
        self._write_control(r)

    def _write_control(self, r: Replica) -> None:
        self.table.write_control(
            r.slot,
            ControlBlock(
                state=_SLOT_STATE[r.state],
                role=r.role.role if r.role is not None else Role.NONE,
                partition=r.partition,
                restarts=r.restarts,
                worker_pid=r.pid,
                topic=r.topic,
                last_exit_code=r.last_exit,
                offline_since=r.offline_since,
            ),
        )

    # ---- start-up -----------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        # Fork server first: this process has no other thread and no socket yet.
        mp = multiprocessing.get_context("forkserver")
        mp.set_forkserver_preload(["appliance.partition.worker"])
        multiprocessing.forkserver.ensure_running()
        self.mp = mp
        if self._lock_fd < 0:
            self._lock_fd = lock_data_dir(cfg.data_dir)
        runtime = cfg.resolved_runtime_dir
        try:
            os.makedirs(runtime, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise InvalidConfigError(f"runtime_dir={runtime!r} is not usable: {exc.strerror}") from None
        self.ctx = zmq.Context()
        try:
            self.front, _ = sockets.bind_router(self.ctx, cfg.listen, cfg.max_request_bytes)
        except zmq.ZMQError as exc:
            self.ctx.destroy(0)
            raise InvalidConfigError(f"listen={cfg.listen!r}: cannot bind: {exc}") from None
        self.systemd.status(f"waiting for the coordinator ({cfg.coordinator}, state in {cfg.data_dir})")
        self.coordinator.start(self.wake)
        self.node_epoch = self.coordinator.register(cfg.advertised)
        needed = len(self._assigned())
        if needed > cfg.max_partitions:
            raise InvalidConfigError(
                f"max_partitions={cfg.max_partitions}: the stored topics have {needed} partitions on this node"
            )
        self._remove_deleted_dirs()
        self.table = StatusTable.create(cfg.status_path, cfg.max_partitions, cfg.node_id)
        self.metrics.start()
        control_path = cfg.control_endpoint[len("ipc://") :]
        if os.path.exists(control_path):
            os.unlink(control_path)  # left by a node that died: the data-dir lock says it is not running
        self.control, _ = sockets.bind_router(self.ctx, cfg.control_endpoint)
        self.poller.register(self.front, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        self.reconcile()
        self._set_state(NodeState.RUNNING)
        log.info(
            "node %d serving on %s (data %s, %d partitions)",
            cfg.node_id,
            cfg.listen,
            cfg.data_dir,
            len(self.replicas),
        )

    def _remove_deleted_dirs(self) -> None:
        for name in os.listdir(self.config.data_dir):
            if name.endswith("-delete"):
                shutil.rmtree(os.path.join(self.config.data_dir, name), ignore_errors=True)

    def partition_dir(self, topic: str, partition: int) -> str:
        return os.path.join(self.config.data_dir, f"{topic}-{partition}")

    # ---- the coordinator -------------------------------------------------------------------
    def wake(self) -> None:
        """Called by the coordinator (any thread) when something it holds changed."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"w")

    def _assigned(self) -> dict[tuple[str, int], tuple[TopicInfo, PartitionState]]:
        me = self.config.node_id
        out = {}
        for name, info in self.coordinator.topics().items():
            for p, st in enumerate(info.partitions):
                if me in st.replicas or me in (st.target_replicas or ()):
                    out[(name, p)] = (info, st)
        return out


    def role_for(self, info: TopicInfo, partition: int, st: PartitionState) -> RoleCommand:
        """The role command for this node's replica of a partition."""
        me = self.config.node_id
        if st.leader == me:
            role = Role.NONE if self.cut_off() else Role.LEADER
        else:
            role = Role.NONE if st.leader == NO_LEADER else Role.FOLLOWER
        endpoint = ""
        if role is Role.FOLLOWER:
            endpoint = self.coordinator.endpoints().get(st.leader, {}).get(f"{info.name}/{partition}", "")
        return RoleCommand(
            role=role,
            leader_epoch=st.leader_epoch,
            leader_endpoint=endpoint,
            replicas=tuple(st.replicas + [n for n in st.target_replicas or () if n not in st.replicas]),
            isr={n: st.isr_epochs.get(n, -1) for n in st.isr},
            node_epoch=self.node_epoch,
        )

    def cut_off(self) -> bool:
        """True once the coordinator has been unreachable for a session timeout: its
        session has expired (or will before it can be renewed), another node may be
        electing new leaders, so this one stops acting as one (a short blip does not
        count)."""
        if self.coordinator.connected():
            self._cut_off_since = None
            return False
        now = self.clock()
        if self._cut_off_since is None:
            self._cut_off_since = now
            log.warning("node %d: the coordinator is unreachable", self.config.node_id)
        limit = self.config.zookeeper_session_timeout_ms / 1000
        if now - self._cut_off_since < limit:
            self._next_reconcile = min(self._next_reconcile, self._cut_off_since + limit + 0.01)
            return False
        return True

    def reconcile(self) -> None:
        """Make this node's workers match the coordinator: start and stop replicas, send
        roles and topic options, publish endpoints. Level-triggered: safe to repeat."""
        self._next_reconcile = self.clock() + RECONCILE_S
        coord = self.coordinator
        me = coord.nodes().get(self.config.node_id)
        if me is not None and me.epoch != self.node_epoch:
            log.info("node %d registered again (epoch %d -> %d)", self.config.node_id, self.node_epoch, me.epoch)
            self.node_epoch = me.epoch  # after a lost session: the roles carry the new epoch
        try:
            self.controller.reconcile()
        except Exception:  # noqa: BLE001 - the coordinator unreachable; retried on the next wake or tick
            log.exception("controller: reconcile failed")
        wanted = self._assigned()
        for key, r in list(self.replicas.items()):
            if r.state is ReplicaState.STOPPING:
                continue
            if key not in wanted:
                log.info("%s: no longer assigned to this node; removing it", r.name)
                self.stop_replica(r, after_stop=self._remove_replica_files)
            elif wanted[key][0].created_ms != r.topic_created_ms:
                log.info("%s: the topic was deleted and created again; removing the old replica", r.name)
                self.stop_replica(r, after_stop=self._remove_replica_files)
        for (topic, p), (info, st) in wanted.items():
            found = self.replicas.get((topic, p))
            if found is None:
                try:
                    self.add_replica(topic, p)
                except (SluiceError, OSError) as exc:  # no slot left, or its directory unusable
                    log.error("%s-%d: cannot start a replica: %s", topic, p, exc)
                continue
            r = found
            r.leader_epoch = st.leader_epoch
            if r.state is ReplicaState.OFFLINE and st.leader == self.config.node_id and len(st.isr) > 1:
                # it cannot serve until the node restarts: let an in-sync replica lead
                others = {n: e for n, e in st.isr_epochs.items() if n != self.config.node_id and n in st.isr}
                log.warning("%s: offline while leading; resigning the leadership", r.name)
                self.alter_isr(r, st.leader_epoch, others, resign=True)
            if r.state is not ReplicaState.SERVING:
                continue
            log_config = self.config.topic_log_config(info.config)
            if log_config != r.log_config:
                r.log_config = log_config
                self.send_control(r, ConfigCommand(log_config.to_options()))
            role = self.role_for(info, p, st)
            if role != r.role:
                self._count_isr_change(r.role, role)
                r.role = role
                self.send_control(r, role)
                self._write_control(r)
        serving = [r for r in self.replicas.values() if r.state is ReplicaState.SERVING]
        endpoints = {f"{r.topic}/{r.partition}": r.endpoint for r in serving}
        try:
            coord.publish_endpoints(endpoints)
        except Exception as exc:  # noqa: BLE001 - retried on the next reconcile
            log.warning("cannot publish endpoints: %s", exc)
            self._next_reconcile = min(self._next_reconcile, self.clock() + 0.2)

    def _claim_directory(self, r: Replica, created_ms: int) -> None:
        """Mark the partition directory with its topic's creation time; a directory left
        by an older topic of the same name (deleted while this node was away) goes."""
        directory = self.partition_dir(r.topic, r.partition)
        marker = os.path.join(directory, TOPIC_MARKER)
        found: int | None
        try:
            with open(marker, encoding="ascii") as f:
                found = int(f.read().strip())
        except (FileNotFoundError, ValueError):
            found = None  # a new directory, or one written before markers existed: keep it
        if found is not None and found != created_ms:
            log.warning("%s: its directory holds an older topic of that name; removing it", r.name)
            self._remove_replica_files(r)
        r.topic_created_ms = created_ms
        if found != created_ms:
            os.makedirs(directory, exist_ok=True)
            atomic_write(marker, f"{created_ms}\n".encode())

    def _count_isr_change(self, old: RoleCommand | None, new: RoleCommand) -> None:
        if old is not None and old.is_leader and new.is_leader and old.leader_epoch == new.leader_epoch:
            before, after = set(old.isr), set(new.isr)
            self.isr_shrinks += bool(before - after)
            self.isr_expands += bool(after - before)

    def _remove_replica_files(self, r: Replica) -> None:
        src = self.partition_dir(r.topic, r.partition)
        if os.path.exists(src):
            dst = f"{src}.{int(time.time() * 1000)}-delete"
            os.replace(src, dst)  # gone from the node's view at once; the bytes go in the background
            threading.Thread(target=shutil.rmtree, args=(dst, True), name="rmtree", daemon=True).start()
        self.wake()  # the same partition may be wanted again (a topic deleted and created anew)

    def alter_isr(self, r: Replica, leader_epoch: int, isr: dict[int, int], resign: bool = False) -> None:
        """A leader worker asks for an ISR change: to the controller, wherever it is."""
        coord = self.coordinator
        if coord.is_controller():
            try:
                self.controller.alter_isr(r.topic, r.partition, self.config.node_id, leader_epoch, isr, resign)
            except Exception as exc:  # noqa: BLE001 - refused, or the coordinator unreachable: the worker asks again
                log.info("%s: isr change %s refused: %s", r.name, sorted(isr), exc)
            return
        target = coord.nodes().get(coord.controller())
        if target is None:
            return  # no controller now; the worker asks again
        if self._peers is None:
            self._peers = ChannelPool(self.ctx, self.poller, watch_disconnects=False)
        self._peers.get(target.endpoint).send(
            "alter_isr",
            topic=r.topic,
            partition=r.partition,
            leader=self.config.node_id,
            leader_epoch=leader_epoch,
            isr={str(k): v for k, v in isr.items()},
            resign=resign,
        )

    def _drain_peers(self, events: dict[Any, int]) -> None:
        for ch in self._peers or ():
            if ch.sock in events:
                for reply in ch.replies():
                    if reply.error is not None:
                        log.info("controller refused an isr change: %s", reply.error)

    # ---- replicas -------------------------------------------------------------------------
    def free_slots(self) -> int:
        return self.config.max_partitions - len(self.replicas)

    def add_replica(self, topic: str, partition: int) -> Replica:
        slot = self.table.find_free_slot()
        if slot is None:
            raise SluiceError(
                f"no free slot for {topic}-{partition}: max_partitions={self.config.max_partitions} reached"
            )
        r = Replica(topic, partition, slot)
        self.replicas[(topic, partition)] = r
        try:
            self._spawn(r)
        except BaseException:
            del self.replicas[(topic, partition)]  # the next reconcile tries again
            raise
        return r

    def _spawn(self, r: Replica) -> None:
        cfg = self.config
        info = self.coordinator.topics()[r.topic]
        st = info.partitions[r.partition]
        self._claim_directory(r, info.created_ms)
        r.leader_epoch = st.leader_epoch
        r.role = self.role_for(info, r.partition, st)
        r.log_config = self.config.topic_log_config(info.config)
        spec = WorkerSpec(
            node_id=cfg.node_id,
            role=r.role,
            replica_lag_time_max_ms=cfg.replica_lag_time_max_ms,
            heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
            initial_counters=r.counters,
            topic=r.topic,
            partition=r.partition,
            slot=r.slot,
            leader_epoch=r.leader_epoch,
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
        )
        proc = self.mp.Process(target=run_worker, args=(spec,), name=f"sluice-{r.name}")
        proc.start()
        r.proc = proc
        r.pid = proc.pid or 0
        r.endpoint = ""
        r.started_at = self.clock()
        self._sentinels[proc.sentinel] = r
        self.poller.register(proc.sentinel, zmq.POLLIN)
        self._set_replica_state(r, ReplicaState.STARTING)
        log.info("%s: started worker pid %d (slot %d, leader epoch %d)", r.name, r.pid, r.slot, r.leader_epoch)

    def stop_replica(self, r: Replica, after_stop: Callable[[Replica], None] | None = None) -> None:
        r.after_stop = after_stop
        if r.proc is None:  # in backoff or offline: nothing runs
            self._finish_stop(r)
            return
        self._set_replica_state(r, ReplicaState.STOPPING)
        self._signal(r, signal.SIGTERM)

    def _signal(self, r: Replica, sig: int) -> None:
        if sig == signal.SIGKILL and r.pid and not r.killed_at:
            r.killed_at = self.clock()
        if r.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, sig)

    def _finish_stop(self, r: Replica) -> None:
        self.replicas.pop((r.topic, r.partition), None)
        self.table.write_control(r.slot, ControlBlock.free())
        if r.after_stop is not None:
            r.after_stop(r)
        if self.state is NodeState.RUNNING:
            self.wake()

    def _reap(self, sentinel: int) -> None:
        r = self._sentinels.pop(sentinel)
        self.poller.unregister(sentinel)
        proc = r.proc
        assert proc is not None
        proc.join(0)
        code = proc.exitcode if proc.exitcode is not None else -1
        proc.close()
        r.proc = None
        r.killed_at = 0.0
        r.last_exit = code
        r.last_beat = 0.0
        st = self.table.read_status_or_none(r.slot)
        if st is not None:  # keep its counters: the next worker continues from them
            live = (st.records_in, st.bytes_in, st.records_out, st.bytes_out)
            r.counters = (
                max(r.counters[0], live[0]),
                max(r.counters[1], live[1]),
                max(r.counters[2], live[2]),
                max(r.counters[3], live[3]),
            )
        self.table.reset_status(r.slot)
        if r.pid:
            self.metrics.worker_gone(r.pid)
        if r.state is ReplicaState.STOPPING:
            log.info("%s: worker %d stopped (exit %d)", r.name, r.pid, code)
            r.pid = 0
            self._finish_stop(r)
            return
        log.error("%s: worker %d died (exit %d)", r.name, r.pid, code)
        r.pid = 0
        r.endpoint = ""
        now = self.clock()
        r.crash_times.append(now)
        window = self.config.restart_window_ms / 1000
        while r.crash_times and r.crash_times[0] < now - window:
            r.crash_times.popleft()
        if len(r.crash_times) > self.config.max_restarts:
            r.offline_since = time.time()
            self._set_replica_state(r, ReplicaState.OFFLINE)
            log.error(
                "%s: %d crashes within %.0f s; partition offline until the node restarts",
                r.name,
                len(r.crash_times),
                window,
            )
            return
        delay = min(self.config.restart_backoff_ms * 2 ** (len(r.crash_times) - 1), self.config.restart_backoff_max_ms)
        r.next_start = now + delay / 1000
        self._set_replica_state(r, ReplicaState.BACKOFF)

    def _check_workers(self, now: float) -> None:
        """Restart due workers; kill hung ones (no heartbeat) so they are restarted."""
        cfg = self.config
        for r in list(self.replicas.values()):
            if r.state is ReplicaState.BACKOFF and now >= r.next_start and self.state is NodeState.RUNNING:
                r.restarts += 1
                self._spawn(r)
            elif r.state is ReplicaState.SERVING:
                st = self.table.read_status_or_none(r.slot)
                if st is not None:  # else stopped mid-write: its heartbeat ages like any silent worker's
                    r.last_beat = max(r.last_beat, st.heartbeat)
                beat = max(r.last_beat, r.started_at)
                if now - beat > cfg.heartbeat_timeout_ms / 1000:
                    log.error("%s: worker %d silent for %.1f s; killing it", r.name, r.pid, now - beat)
                    self._signal(r, signal.SIGKILL)
            elif r.state is ReplicaState.STARTING and now - r.started_at > cfg.worker_start_timeout_ms / 1000:
                log.error("%s: worker %d not ready after %.0f s; killing it", r.name, r.pid, now - r.started_at)
                self._signal(r, signal.SIGKILL)
            elif (
                r.state is ReplicaState.STOPPING
                and self.state is NodeState.STOPPING
                and now > self._deadline_stop
            ):
                log.error("%s: worker %d did not stop in time; killing it", r.name, r.pid)
                self._signal(r, signal.SIGKILL)

    # ---- control socket -----------------------------------------------------------------
    def _handle_control(self) -> None:
        while True:
            try:
                identity, raw = self.control.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            try:
                event = decode_event(raw)
            except ControlMessageError as exc:
                log.warning("malformed control message %r: %s", raw[:200], exc)
                continue
            r = next((x for x in self.replicas.values() if x.slot == event.slot and x.pid == event.pid), None)
            if r is None:
                continue  # a late message from a worker that has been replaced
            if isinstance(event, ReadyEvent) and r.state is ReplicaState.STARTING:
                r.port = event.port
                r.endpoint = f"tcp://{self.config.advertised_host}:{r.port}"
                self._set_replica_state(r, ReplicaState.SERVING)
                self.send_control(r, config_reload.worker_node_options(self.config))
                self.reconcile()  # a change made while it was starting, and its endpoint
                self.api.on_replica_ready()
            elif isinstance(event, AlterIsrEvent) and r.state is ReplicaState.SERVING:
                self.alter_isr(r, event.leader_epoch, dict(event.isr))

    def send_control(self, r: Replica, command: Command) -> None:
        try:
            self.control.send_multipart([f"slot-{r.slot}".encode(), encode_control(command)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("%s: control message not delivered: %s", r.name, exc)

    # ---- front socket ---------------------------------------------------------------------
    def _handle_front(self) -> None:
        for _ in range(256):
            try:
                frames = self.front.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.api.serve(frames)

    # ---- the loop -------------------------------------------------------------------------
    def run(self, signals: SignalPipe) -> int:
        self.setup()
        self.poller.register(signals.fileno(), zmq.POLLIN)
        next_tick = self.clock()
        while self.state is not NodeState.STOPPED:
            timeout = max(0.0, next_tick - self.clock())
            events = dict(self.poller.poll(int(timeout * 1000) + 1))
            if signals.fileno() in events or signals.pending:
                for signum in signals.drain():
                    self._on_signal(signum)
            if self.control in events:
                self._handle_control()
            if self._wake_r in events or self.clock() >= self._next_reconcile:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                if self.state is NodeState.RUNNING:
                    self.reconcile()
            self._drain_peers(events)
            for fd in [fd for fd in events if isinstance(fd, int) and fd in self._sentinels]:
                self._reap(fd)
            if self.state is NodeState.RUNNING and self.front in events:
                self._handle_front()
            self.api.on_events(events)
            now = self.clock()
            if now >= next_tick:
                self._check_workers(now)
                self.api.tick(now)
                stopping = self.state is NodeState.STOPPING
                self.systemd.tick(self.replicas.values(), stopping, self.config.advertised)
                self.metrics.tick(now)
                next_tick = now + TICK_S
            if self.state is NodeState.STOPPING and not self._live():
                self._set_state(NodeState.STOPPED)
        self._cleanup()
        return 0

    def _live(self) -> bool:
        return any(r.proc is not None for r in self.replicas.values())

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and self.state is NodeState.RUNNING:
            log.info("node %d: %s: stopping", self.config.node_id, signal.Signals(signum).name)
            self.begin_shutdown()
        elif signum == signal.SIGHUP and self.state is NodeState.RUNNING:
            self.reload()

    def reload(self) -> None:
        """SIGHUP: read the configuration again; apply what can change live (appliance/reload.py)."""
        log.info("node %d: SIGHUP: reloading the configuration", self.config.node_id)
        self.systemd.reloading()
        try:
            new = self.load_config() if self.load_config is not None else self.config
        except SluiceError as exc:
            log.error("reload failed, still running the previous configuration: %s", exc)
            self.systemd.notes["reload"] = f"last reload failed: {exc}"
        else:
            plan = config_reload.apply_reload(self, new)
            self.metrics.reconfigure(self.config.metrics_listen)
            if plan.restart:
                self.systemd.notes["reload"] = plan.restart_note
            else:
                self.systemd.notes.pop("reload", None)
        self.systemd.reloaded(self.config.advertised)

    def begin_shutdown(self) -> None:
        self._set_state(NodeState.STOPPING)
        self.systemd.stopping(f"stopping: {sum(r.proc is not None for r in self.replicas.values())} worker(s) left")
        # stop accepting: close the front endpoint; workers answer their in-flight requests
        self.poller.unregister(self.front)
        self.front.close(0)
        self._deadline_stop = self.clock() + self.config.shutdown_timeout_ms / 1000
        for r in list(self.replicas.values()):
            if r.proc is not None:
                self._set_replica_state(r, ReplicaState.STOPPING)
                self._signal(r, signal.SIGTERM)

    def _cleanup(self) -> None:
        self.metrics.stop()
        try:
            self.coordinator.close()
        except Exception:  # noqa: BLE001 - the node is stopping anyway; its session expires
            log.exception("closing the coordinator failed")
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.control.close(0)
        # destroy, not term: a socket some component forgot to close (every socket has
        # LINGER=0) must not hang the exit, and with it `systemctl stop`, forever
        self.ctx.destroy(0)
        path = self.config.control_endpoint[len("ipc://") :]
        if os.path.exists(path):
            os.unlink(path)
        self.table.close()
        self.table.unlink()
        os.close(self._lock_fd)
        log.info("node %d stopped", self.config.node_id)
