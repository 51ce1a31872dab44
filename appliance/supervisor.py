"""The supervisor: the node's main process, and the wiring of its parts.

It owns the node's loop, its signals and its sockets; the work is done by the parts it
wires together:

- ``children.py`` keeps child processes alive (partition workers; any kind of child);
- ``replicas.py`` runs one partition worker per replica on this node (slots, control
  socket, directories);
- ``reconcile.py`` decides which replicas run here and in which role, and publishes
  their endpoints; the controller (``controller.py``) runs inside its pass;
- ``front.py`` serves the front endpoint (metadata, admin, groups) through the one
  request pipeline (``ipc/server.py``);
- ``metrics/node.py`` and ``systemd.py`` report what the node does.

The front, the group coordinator, the reload and the metrics see the node only through
``NodeView`` (``nodeview.py``), which this class implements.

Shape (after gunicorn's arbiter): signal handlers only enqueue; one ``run`` loop polls
the front socket, the control socket, the signal pipe and each worker's exit sentinel,
handles what arrived, then ticks: murder workers whose heartbeat stopped, start due
restarts, answer deferred admin requests.

Workers are forked by a fork server (``multiprocessing``'s ``forkserver`` started before
this process has any thread, with the worker module preloaded), so forking never copies
a lock held by another thread of the supervisor, and workers share the preloaded pages.
When the supervisor dies the fork server sees EOF and exits, and every worker gets the
parent-death signal: no worker outlives its node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

import zmq

from appliance import forkserver
from appliance import reload as config_reload
from appliance.config import NodeConfig
from appliance.connect.manager import ConnectorManager
from appliance.controller import Controller
from appliance.coordinator import Coordinator
from appliance.coordinator.local import LocalCoordinator
from appliance.datadir import lock_data_dir
from appliance.front import FrontApi
from appliance.gate import Gate, install
from appliance.handover import Handover, handover_s
from appliance.kafka.child import KafkaListenerChild, check_bindable
from appliance.nodeview import NodeState, ReplicaView
from appliance.process import SignalPipe
from appliance.proctitle import node_title, set_title
from appliance.quotas import NodeQuotas
from appliance.reconcile import Reconciler, assigned
from appliance.replicas import PartitionWorkers, Replica
from appliance.rundir import RunDir
from appliance.systemd import Health, Notifier, ServiceNotifier, assess
from ipc import sockets
from ipc.control import AlterIsrEvent
from ipc.errors import InvalidConfigError, SluiceError
from ipc.peers import CONGESTED_RETRY_S
from ipc.quota_table import path_beside
from ipc.shm import StatusTable
from metrics.exporter import GroupSnap
from metrics.node import NodeMetrics

log = logging.getLogger(__name__)

TICK_S = 0.1
READY_RECONCILE_S = 0.05
# The health assessment for systemd (STATUS=, READY=1, WATCHDOG=1) walks every replica:
# at most this often (and at least twice per watchdog ping interval). At every tick it
# was 40 % of an idle 1,000-partition node's supervisor.
HEALTH_S = 1.0


def make_coordinator(config: NodeConfig) -> Coordinator:
    if config.coordinator == "local":
        return LocalCoordinator(config.data_dir, config.node_id)
    from appliance.coordinator.zookeeper import ZooKeeperCoordinator

    timeout_s = config.zookeeper_session_timeout_ms / 1000
    return ZooKeeperCoordinator(config.node_id, config.coordinator, timeout_s)  # type: ignore[no-any-return,unused-ignore]


class Supervisor:
    def __init__(
        self,
        config: NodeConfig,
        clock: Callable[[], float] = time.monotonic,
        load_config: Callable[[], NodeConfig] | None = None,
        systemd: ServiceNotifier | None = None,
        lock_fd: int = -1,
        rundir: RunDir | None = None,
    ) -> None:
        self.config = config
        self._lock_fd = lock_fd  # the data-dir lock (appliance/datadir.py), if the caller took it
        self.rundir = rundir  # the claimed runtime directory (appliance/rundir.py), removed at a clean stop
        self.load_config = load_config  # SIGHUP reads the configuration again with this
        self.systemd = systemd if systemd is not None else ServiceNotifier(Notifier(None))
        self.clock = clock
        self.state = NodeState.STARTING
        self.coordinator = make_coordinator(config)
        self.controller = Controller(self.coordinator, lambda: self.config.topic_defaults)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.table: StatusTable
        self.ctx: zmq.Context[Any]
        self.front: zmq.Socket[Any]
        self.gate = Gate(config.security)  # install() secures the context in setup
        self.poller = zmq.Poller()
        self.workers: PartitionWorkers | None = None  # made in setup (sockets)
        self.kafka: KafkaListenerChild | None = None  # the Kafka listener (kafka_listen), a child like a worker
        self.reconciler: Reconciler | None = None
        self._reconcile_s = 0.0  # what the last reconcile took
        self.connect: ConnectorManager | None = None  # the connectors (appliance/connect/), children like workers
        self._deadline_stop = 0.0
        self.handover = Handover(self.coordinator, config.node_id)  # controlled shutdown (SIGTERM)
        self.api = FrontApi(self)
        self.quotas = NodeQuotas(clock)  # byte-rate quotas: the workers' shared table (appliance/quotas.py)
        self.metrics = NodeMetrics(self)

    # ---- the node view (appliance/nodeview.py) -----------------------------------------------
    @property
    def replicas(self) -> dict[tuple[str, int], Replica]:
        return self.workers.replicas if self.workers is not None else {}

    def replica(self, topic: str, partition: int) -> ReplicaView | None:
        return self.replicas.get((topic, partition))

    def replica_views(self) -> list[ReplicaView]:
        return list(self.replicas.values())

    def group_summaries(self) -> list[GroupSnap]:
        return self.api.group_summaries()

    def health(self, now: float) -> Health:
        return assess(self.replicas.values(), now)

    def free_slots(self) -> int:
        return self.config.max_partitions - len(self.replicas)

    def cut_off(self) -> bool:
        return self.reconciler.cut_off() if self.reconciler is not None else False

    @property
    def isr_shrinks(self) -> int:
        return self.reconciler.isr_shrinks if self.reconciler is not None else 0

    @property
    def isr_expands(self) -> int:
        return self.reconciler.isr_expands if self.reconciler is not None else 0

    def reconcile(self) -> None:
        if self.reconciler is not None:
            t0 = self.clock()
            self.reconciler.reconcile()
            self._reconcile_s = self.clock() - t0
            quotas = self.quotas.refresh(self.coordinator)  # a new version of the quotas document
            if quotas is not None:
                self.api.request_quota.configure(quotas)

    def wake(self) -> None:
        """Reconcile soon: called by the coordinator (any thread) when something it holds
        changed, and by the parts of the node."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"w")

    # ---- state ----------------------------------------------------------------------------
    def _set_state(self, new: NodeState) -> None:
        log.info("node %d: %s -> %s", self.config.node_id, self.state.value, new.value)
        self.state = new

    # ---- start-up -----------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        set_title(node_title(cfg.node_id))
        # Fork server first: this process has no other thread and no socket yet.
        # Preloaded: every child's entry point (children.run_titled) and the worker's module;
        # a module a child imports after the fork is private to it (docs/performance.md).
        mp = forkserver.start(cfg.resolved_runtime_dir, ["appliance.children", "appliance.partition.process"])
        if self._lock_fd < 0:
            self._lock_fd = lock_data_dir(cfg.data_dir)
        runtime = cfg.resolved_runtime_dir
        try:
            os.makedirs(runtime, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise InvalidConfigError(f"runtime_dir={runtime!r} is not usable: {exc.strerror}") from None
        self.ctx = zmq.Context()
        try:
            self.gate = install(self.ctx, cfg.security, cfg.node_id)  # before any bind: ipc/curve.py
        except InvalidConfigError:
            self.ctx.destroy(0)
            raise
        try:
            self.front, _ = sockets.bind_router(self.ctx, cfg.listen, cfg.max_request_bytes)
        except zmq.ZMQError as exc:
            self.ctx.destroy(0)
            raise InvalidConfigError(f"listen={cfg.listen!r}: cannot bind: {exc}") from None
        self.systemd.status(f"waiting for the coordinator ({cfg.coordinator}, state in {cfg.data_dir})")
        self.coordinator.start(self.wake)
        node_epoch = self.coordinator.register(cfg.advertised)
        needed = len(assigned(cfg.node_id, self.coordinator.topics()))
        if needed > cfg.max_partitions:
            raise InvalidConfigError(
                f"max_partitions={cfg.max_partitions}: the stored topics have {needed} partitions on this node"
            )
        self._remove_deleted_dirs()
        if cfg.kafka_listen:
            check_bindable(cfg)  # a port in use is a start-up error, not a crash-looping child
        self.table = StatusTable.create(cfg.status_path, cfg.max_partitions, cfg.node_id)
        self.quotas.open(path_beside(cfg.status_path), cfg.max_partitions)
        self.metrics.start()
        self.workers = PartitionWorkers(lambda: self.config, self.table, self.ctx, self.poller, mp, self, self.clock)
        self.reconciler = Reconciler(
            lambda: self.config,
            self.coordinator,
            self.controller,
            self.workers,
            self.ctx,
            self.poller,
            self.wake,
            self.clock,
            self.gate,
        )
        self.reconciler.node_epoch = node_epoch
        if cfg.kafka_listen:
            self.kafka = KafkaListenerChild(lambda: self.config, mp, self.poller, self.workers.supervision, self.clock)
            self.kafka.start()
        self.connect = ConnectorManager(
            self, mp, self.poller, self.workers.supervision, self.clock, self.metrics.worker_gone
        )
        self.connect.setup()
        self.poller.register(self.front, zmq.POLLIN)
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

    # ---- what the partition workers tell (replicas.WorkerEvents) ----------------------------
    def prepare_start(self, r: Replica) -> None:
        assert self.reconciler is not None
        self.reconciler.prepare_start(r)

    def replica_ready(self, r: Replica) -> None:
        # its endpoint, its node options, and a change made while it was starting: one
        # reconcile for all the workers ready by then, after READY_RECONCILE_S or four times
        # what the last one took (one per worker cost O(partitions) each: O(n^2) to start n
        # partitions; this keeps reconciling to a fifth of the loop while many start)
        assert self.reconciler is not None
        delay = max(READY_RECONCILE_S, 4 * self._reconcile_s)
        self.reconciler.next_at = min(self.reconciler.next_at, self.clock() + delay)

    def replica_alter_isr(self, r: Replica, event: AlterIsrEvent) -> None:
        assert self.reconciler is not None
        self.reconciler.on_alter_isr(r, event)

    def replica_gone(self, r: Replica) -> None:
        if self.state is NodeState.RUNNING:
            self.wake()

    def worker_exited(self, pid: int) -> None:
        self.metrics.worker_gone(pid)

    def serving_changed(self) -> None:
        self.wake()  # an endpoint came or went: publish it (reconcile)

    # ---- the loop -------------------------------------------------------------------------
    def run(self, signals: SignalPipe) -> int:
        try:
            self.setup()
        except BaseException:
            self._failed_start()
            raise
        workers, reconciler = self.workers, self.reconciler
        assert workers is not None and reconciler is not None
        self.poller.register(signals.fileno(), zmq.POLLIN)
        next_tick = next_health = self.clock()
        while self.state is not NodeState.STOPPED:
            # workers queued to start: no sleep (they start a few per pass, between requests)
            timeout = 0.0 if workers.children.pending_starts else max(0.0, next_tick - self.clock())
            if self.api.peers.congested:  # replies wait for room in a client's queue: retry soon
                timeout = min(timeout, CONGESTED_RETRY_S)
            events = dict(self.poller.poll(int(timeout * 1000) + 1))
            if signals.fileno() in events or signals.pending:
                for signum in signals.drain():
                    self._on_signal(signum)
            if workers.control in events:
                workers.on_control()
            if self._wake_r in events or self.clock() >= reconciler.next_at:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                if self.state is NodeState.RUNNING:
                    self.reconcile()
            reconciler.on_events(events)
            workers.children.on_events(events)
            if self.kafka is not None:
                self.kafka.on_events(events)
            if self.connect is not None:
                self.connect.on_events(events)
            if self.state is NodeState.RUNNING and self.front in events:
                self._handle_front()
            self.api.on_events(events)
            if self.api.peers.congested:
                self.api.peers.flush()
            now = self.clock()
            if now >= next_tick:
                stopping = self.state is NodeState.STOPPING
                workers.check(now, restart=self.state is NodeState.RUNNING, stop_deadline=self._stop_deadline())
                if self.kafka is not None:
                    self.kafka.check(now, self.state is NodeState.RUNNING, self._stop_deadline())
                if self.connect is not None:
                    self.connect.check(now, self.state is NodeState.RUNNING, self._stop_deadline())
                    if self.state is NodeState.RUNNING and self.connect.node_may_stop(now):
                        self.begin_shutdown()
                if self.state is NodeState.RUNNING and self.handover.active and self.handover.done(now):
                    self.begin_shutdown()
                self.api.tick(now)
                if now >= next_health or stopping:
                    self.systemd.tick(self.replicas.values(), stopping, self.config.advertised)
                    ping_s = self.systemd.watchdog_interval
                    next_health = now + (min(HEALTH_S, ping_s / 2) if ping_s else HEALTH_S)
                self.metrics.tick(now)
                self.quotas.tick()
                next_tick = now + TICK_S
            kafka_running = self.kafka is not None and self.kafka.running
            connectors_running = self.connect is not None and self.connect.any_running
            others_running = kafka_running or connectors_running
            if self.state is NodeState.STOPPING and not workers.any_running() and not others_running:
                self._set_state(NodeState.STOPPED)
        self._cleanup()
        return 0

    def _stop_deadline(self) -> float | None:
        return self._deadline_stop if self.state is NodeState.STOPPING else None

    def _handle_front(self) -> None:
        for _ in range(256):
            try:
                frames = self.front.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.api.serve(frames)

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and self.state is NodeState.RUNNING:
            log.info("node %d: %s: stopping", self.config.node_id, signal.Signals(signum).name)
            if self.handover.active:  # a second one: stop now
                self.begin_shutdown()
            else:
                self.begin_controlled_shutdown()
        elif signum == signal.SIGHUP and self.state is NodeState.RUNNING:
            self.reload()

    def reload(self) -> None:
        """SIGHUP: read the configuration again; run what can change live
        (appliance/reload.py) and reconcile, which tells the workers."""
        log.info("node %d: SIGHUP: reloading the configuration", self.config.node_id)
        self.systemd.reloading()
        try:
            new = self.load_config() if self.load_config is not None else self.config
        except SluiceError as exc:
            log.error("reload failed, still running the previous configuration: %s", exc)
            self.systemd.notes["reload"] = f"last reload failed: {exc}"
        else:
            plan = config_reload.apply_reload(self.config, new, self.coordinator.topics())
            self.config = plan.config
            if "log_level" in plan.live:
                logging.getLogger().setLevel(plan.config.log_level.upper())
            if "heartbeat_timeout_ms" in plan.live and self.workers is not None:
                # an idle worker beats every timeout/4 of the timeout it knows: under a shorter
                # one each gets a full new timeout from now to hear of it and beat
                self.workers.grant_beat(self.clock())
            self.reconcile()
            self.metrics.reconfigure(self.config.metrics_listen)
            if plan.restart:
                self.systemd.notes["reload"] = plan.restart_note
            else:
                self.systemd.notes.pop("reload", None)
        self.systemd.reloaded(self.config.advertised)

    def begin_controlled_shutdown(self) -> None:
        """Move leadership off this node first (``appliance/handover.py``), then stop:
        at once when there is nothing to move, else from the loop once it moved or
        after ``handover_s``."""
        assert self.reconciler is not None
        timeout_s = handover_s(self.config.shutdown_timeout_ms)
        if self.handover.begin(self.clock(), self.reconciler.node_epoch, timeout_s):
            self.systemd.stopping("stopping: moving leadership to other replicas")
            self.reconcile()  # the controller may be this node
        else:
            self.begin_shutdown()

    def begin_shutdown(self) -> None:
        if self.connect is not None and self.connect.stop_before_node(self.clock()):
            return  # the connectors first: they flush through this node (the loop comes back here)
        self._set_state(NodeState.STOPPING)
        self.systemd.stopping(f"stopping: {sum(r.child.running for r in self.replicas.values())} worker(s) left")
        # stop accepting: close the front endpoint; workers answer their in-flight requests
        self.poller.unregister(self.front)
        self.front.close(0)
        self._deadline_stop = self.clock() + self.config.shutdown_timeout_ms / 1000
        if self.workers is not None:
            self.workers.stop_all()
        if self.kafka is not None:
            self.kafka.stop()
        if self.connect is not None:
            self.connect.stop_all()

    def _failed_start(self) -> None:
        """Start-up failed (a port in use, the coordinator unreachable): stop the fork
        server and the resource tracker, and remove the runtime directory, so a node that
        never ran leaves nothing behind (the caller reports the error). A child already
        started dies with the fork server (its parent-death signal)."""
        forkserver.stop()
        if self.rundir is not None:
            self.rundir.remove()

    def _cleanup(self) -> None:
        self.metrics.stop()
        try:
            self.coordinator.close()
        except Exception:  # noqa: BLE001 - the node is stopping anyway; its session expires
            log.exception("closing the coordinator failed")
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.workers is not None:
            self.workers.close()
        # destroy, not term: a socket some component forgot to close (every socket has
        # LINGER=0) must not hang the exit, and with it `systemctl stop`, forever
        self.ctx.destroy(0)
        self.table.close()
        self.table.unlink()
        self.quotas.close()
        forkserver.stop()  # every child is gone: the fork server and the resource tracker exit now
        if self.rundir is not None:
            self.rundir.remove()
        os.close(self._lock_fd)
        log.info("node %d stopped", self.config.node_id)
