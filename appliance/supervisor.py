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
import enum
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import orjson
import zmq

from appliance import reload as config_reload
from appliance.config import NodeConfig
from appliance.coordinator.local import LocalCoordinator
from appliance.datadir import lock_data_dir
from appliance.process import SignalPipe
from appliance.systemd import Notifier, ServiceNotifier
from appliance.worker import WorkerSpec, run_worker
from ipc import sockets
from ipc.errors import InvalidConfigError, SluiceError
from ipc.protocol import FRONT_APIS, error_reply, parse_request, peek_id
from ipc.shm import ControlBlock, Role, SlotState, StatusTable
from metrics.node import NodeMetrics

log = logging.getLogger(__name__)

TICK_S = 0.1


class ReplicaState(enum.Enum):
    STARTING = "starting"  # forked, recovering its log
    SERVING = "serving"  # said ready; its endpoint is in the metadata
    STOPPING = "stopping"  # asked to stop (shutdown, delete)
    BACKOFF = "backoff"  # crashed; restart scheduled
    OFFLINE = "offline"  # crash loop: no more restarts until the node restarts


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

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"


class SupervisorState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


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
        self.state = SupervisorState.STARTING
        self.replicas: dict[tuple[str, int], Replica] = {}
        self.coordinator = LocalCoordinator(config.data_dir, config.node_id)
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

    # ---- state ----------------------------------------------------------------------------
    def _set_state(self, new: SupervisorState) -> None:
        log.info("node %d: %s -> %s", self.config.node_id, self.state.value, new.value)
        self.state = new

    def _set_replica_state(self, r: Replica, new: ReplicaState) -> None:
        if r.state is not new:
            log.info("%s: %s -> %s", r.name, r.state.value, new.value)
        r.state = new
        self._write_control(r)

    def _write_control(self, r: Replica) -> None:
        self.table.write_control(
            r.slot,
            ControlBlock(
                state=_SLOT_STATE[r.state],
                role=Role.LEADER,
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
        mp.set_forkserver_preload(["appliance.worker"])
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
        self.coordinator.load()
        needed = sum(len(t.partitions) for t in self.coordinator.topics().values())
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
        for info in self.coordinator.topics().values():
            for p in range(len(info.partitions)):
                self.add_replica(info.name, p)
        self._set_state(SupervisorState.RUNNING)
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
        self._spawn(r)
        return r

    def _spawn(self, r: Replica) -> None:
        cfg = self.config
        info = self.coordinator.topics()[r.topic]
        r.leader_epoch = self.coordinator.bump_leader_epoch(r.topic, r.partition)
        spec = WorkerSpec(
            initial_counters=r.counters,
            topic=r.topic,
            partition=r.partition,
            slot=r.slot,
            leader_epoch=r.leader_epoch,
            directory=self.partition_dir(r.topic, r.partition),
            log_options={**cfg.topic_defaults, **info.config},
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
            if r.state is ReplicaState.BACKOFF and now >= r.next_start and self.state is SupervisorState.RUNNING:
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
                and self.state is SupervisorState.STOPPING
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
                msg = orjson.loads(raw)
                slot, pid, event = int(msg["slot"]), int(msg["pid"]), msg["event"]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("malformed control message %r", raw[:200])
                continue
            r = next((x for x in self.replicas.values() if x.slot == slot and x.pid == pid), None)
            if r is None:
                continue  # a late message from a worker that has been replaced
            if event == "ready" and r.state is ReplicaState.STARTING:
                port = str(msg.get("endpoint", "")).rsplit(":", 1)[-1]
                r.port = int(port) if port.isdigit() else 0
                r.endpoint = f"tcp://{self.config.advertised_host}:{r.port}"
                self._set_replica_state(r, ReplicaState.SERVING)
                # a topic change made while it was starting could not reach it: resend
                info = self.coordinator.topics().get(r.topic)
                if info is not None:
                    self.send_control(r, cmd="config", options={**self.config.topic_defaults, **info.config})
                self.send_control(r, cmd="node_options", **config_reload.worker_node_options(self.config))
                self.api.on_replica_ready(r)

    def send_control(self, r: Replica, **msg: Any) -> None:
        try:
            self.control.send_multipart([f"slot-{r.slot}".encode(), orjson.dumps(msg)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("%s: control message not delivered: %s", r.name, exc)

    # ---- front socket ---------------------------------------------------------------------
    def _handle_front(self) -> None:
        for _ in range(256):
            try:
                frames = self.front.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            body = frames[1:]
            try:
                req = parse_request(body, FRONT_APIS)
            except SluiceError as exc:
                sockets.send_reply(self.front, identity, [error_reply(peek_id(body[0]) if body else 0, exc)])
                continue
            try:
                reply = self.api.handle(identity, req)
            except SluiceError as exc:
                reply = [error_reply(req.id, exc)]
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the node
                log.exception("unexpected error handling %s", req.api)
                reply = [error_reply(req.id, SluiceError(f"unexpected error in {req.api}: {exc}"))]
            if reply is not None:
                sockets.send_reply(self.front, identity, reply)

    # ---- the loop -------------------------------------------------------------------------
    def run(self, signals: SignalPipe) -> int:
        self.setup()
        self.poller.register(signals.fileno(), zmq.POLLIN)
        next_tick = self.clock()
        while self.state is not SupervisorState.STOPPED:
            timeout = max(0.0, next_tick - self.clock())
            events = dict(self.poller.poll(int(timeout * 1000) + 1))
            if signals.fileno() in events or signals.pending:
                for signum in signals.drain():
                    self._on_signal(signum)
            if self.control in events:
                self._handle_control()
            for fd in [fd for fd in events if isinstance(fd, int) and fd in self._sentinels]:
                self._reap(fd)
            if self.state is SupervisorState.RUNNING and self.front in events:
                self._handle_front()
            self.api.on_events(events)
            now = self.clock()
            if now >= next_tick:
                self._check_workers(now)
                self.api.tick(now)
                stopping = self.state is SupervisorState.STOPPING
                self.systemd.tick(self.replicas.values(), stopping, self.config.advertised)
                self.metrics.tick(now)
                next_tick = now + TICK_S
            if self.state is SupervisorState.STOPPING and not self._live():
                self._set_state(SupervisorState.STOPPED)
        self._cleanup()
        return 0

    def _live(self) -> bool:
        return any(r.proc is not None for r in self.replicas.values())

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and self.state is SupervisorState.RUNNING:
            log.info("node %d: %s: stopping", self.config.node_id, signal.Signals(signum).name)
            self.begin_shutdown()
        elif signum == signal.SIGHUP and self.state is SupervisorState.RUNNING:
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
        self._set_state(SupervisorState.STOPPING)
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
