"""The partition worker: one process per partition replica on this node.

It owns its partition's ``Log`` (single writer), binds its own ROUTER for produce,
fetch and list-offsets, reports to the supervisor over an ``ipc://`` control socket,
and publishes its state in its slot of the shared-memory status table.

This module is the process: start-up, the loop, control commands and events, ticks,
status publishing and shutdown. What it serves lives beside it:

- ``replica.py``: the replica's state (log, producer state, role, leader epoch, high
  watermark and its checkpoint, counters);
- ``handlers.py``: produce, fetch and list_offsets, answered through the request
  pipeline (``ipc/server.py``) this worker feeds with its data socket's messages;
- ``purgatory.py``: produces waiting for ``acks=all`` and parked fetches;
- ``storage.py``: the storage condition (a full disk is answered with
  ``STORAGE_ERROR`` and probed until it takes writes again, never crashed on);
- ``appliance/replication.py``: the leader's view of its followers (``LeaderState``),
  the follower's ``Fetcher`` and what it does with the leader's replies;
- ``appliance/log/cleaner.py``: compaction (``LogCleaner``, ticked here).

One loop, one thread for requests: poll (data socket, control socket, signal pipe, the
follower's fetch socket) with a timeout set by the next deadline (tick, fsync interval,
parked fetches and waiting produces, the follower's next fetch), handle what arrived,
then ``tick``. Compaction builds its cleaned files in a helper thread and the swap
happens back on the loop.

A log that cannot be opened because its filesystem refuses writes (``ENOSPC``, ``EIO``)
does not crash the worker: it goes to ``storage_unavailable``, reports ready (so the
supervisor does not restart it) with ``storage_error`` in its status block, answers
every request with ``STORAGE_ERROR``, keeps the role and configuration it is sent, and
tries to open the log again every ``PROBE_S`` (``_await_storage``).

At about 550 lines this module is over the house's 500: the process has two modes
(serving, and waiting for a log its storage cannot open) that share its sockets, its
state machine and its control handling; what it serves (handlers, purgatory, the
follower's link in ``follower.py``) and its entry point (``process.py``) are apart.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import logging
import os
import signal
import time
from typing import Any

import zmq

from appliance.gate import Gate, install
from appliance.log.cleaner import LogCleaner
from appliance.log.config import CleanupPolicy, LogConfig
from appliance.log.flusher import FlushFailedError
from appliance.log.log import Log
from appliance.partition.follower import FollowerLink
from appliance.partition.handlers import partition_pipeline
from appliance.partition.purgatory import Purgatory
from appliance.partition.quota import WorkerQuotas
from appliance.partition.replica import Replica
from appliance.partition.samehost import SameHostSessions
from appliance.partition.spec import WorkerSpec
from appliance.partition.storage import PROBE_S, StorageCondition, is_storage_error, probe
from appliance.process import SignalPipe, pid_alive
from appliance.proctitle import set_title, worker_title
from ipc import sockets
from ipc.control import (
    AclsCommand,
    AlterIsrEvent,
    ConfigCommand,
    ControlMessageError,
    Event,
    NodeOptionsCommand,
    ReadyEvent,
    RoleCommand,
    StopCommand,
    StoppedEvent,
    decode_command,
)
from ipc.control import encode as encode_control
from ipc.errors import NotLeaderError, SluiceError, StorageError
from ipc.peers import CONGESTED_RETRY_S, PeerLedger, deliver
from ipc.private import NotPrivateError, check_own_socket
from ipc.protocol import WORKER_APIS, Request
from ipc.quota_table import path_beside
from ipc.server import RequestPipeline
from ipc.shm import Role, StatusTable, StatusWriter
from ipc.throttle import MutedPeers
from metrics.definitions import FETCH_LATENCY, PRODUCE_LATENCY, SAME_HOST_RING_BYTES

log = logging.getLogger(__name__)

IDLE_TICK_MAX_S = 2.5  # a wake-up costs ~0.2 ms of CPU here: 1,000 idle workers at 1 s were 20 % of a core


class WorkerState(enum.Enum):
    STARTING = "starting"
    STORAGE_UNAVAILABLE = "storage_unavailable"  # the log cannot be opened: a full disk, an I/O error
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


_TRANSITIONS = {
    WorkerState.STARTING: {WorkerState.SERVING, WorkerState.STORAGE_UNAVAILABLE, WorkerState.STOPPING},
    WorkerState.STORAGE_UNAVAILABLE: {WorkerState.SERVING, WorkerState.STOPPING},
    WorkerState.SERVING: {WorkerState.STOPPING},
    WorkerState.STOPPING: {WorkerState.STOPPED},
    WorkerState.STOPPED: set(),
}


class PartitionWorker:
    def __init__(self, spec: WorkerSpec, clock: Any = time.monotonic) -> None:
        self.spec = spec
        self.clock = clock
        self.state = WorkerState.STARTING
        self.follower: FollowerLink
        self.poller = zmq.Poller()
        # built after the fork, in start()
        self.replica: Replica
        self.purgatory: Purgatory
        self.pipeline: RequestPipeline
        self.peers: PeerLedger
        self.muted: MutedPeers  # KIP-219: a throttled client's next requests wait (ipc/throttle.py)
        self.quotas: WorkerQuotas
        self.gate: Gate
        self.cleaner: LogCleaner
        self.ctx: zmq.Context[Any]
        self.data: zmq.Socket[Any]
        self.control: zmq.Socket[Any]
        self.status: StatusWriter
        self.same_host: SameHostSessions
        self.endpoint = ""
        self._next_retention = 0.0
        self.retention_check_ms = spec.retention_check_ms  # live: control command node_options
        self.heartbeat_timeout_ms = spec.heartbeat_timeout_ms  # live, too
        self.storage = StorageCondition(self.name, clock)
        # while the log cannot be opened: the newest role and node options sent
        self._role_cmd: RoleCommand | None = spec.role
        self._options_cmd: NodeOptionsCommand | None = None

    @property
    def name(self) -> str:
        return f"{self.spec.topic}-{self.spec.partition}"

    @property
    def log(self) -> Log:
        return self.replica.log

    def _set_state(self, new: WorkerState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"{self.name}: illegal transition {self.state.value} -> {new.value}")
        log.info("%s: %s -> %s", self.name, self.state.value, new.value)
        self.state = new

    def on_signals(self, signums: list[int]) -> None:
        """SIGTERM stops a serving worker (or one waiting for its storage). A second one
        (its process group's and then its supervisor's, both during one shutdown)
        changes nothing."""
        for signum in signums:
            if signum == signal.SIGTERM and self.state in (WorkerState.SERVING, WorkerState.STORAGE_UNAVAILABLE):
                log.info("%s: SIGTERM", self.name)
                self._set_state(WorkerState.STOPPING)

    # ---- start-up -------------------------------------------------------------------
    def _bind(self) -> None:
        host = self.spec.listen_host
        if self.spec.preferred_port:
            try:
                self.data, self.endpoint = sockets.bind_router(
                    self.ctx, f"tcp://{host}:{self.spec.preferred_port}", self.spec.max_request_bytes
                )
                return
            except zmq.ZMQError as exc:
                log.warning("%s: port %d unavailable (%s); taking a new one", self.name, self.spec.preferred_port, exc)
        self.data, self.endpoint = sockets.bind_router(self.ctx, f"tcp://{host}:0", self.spec.max_request_bytes)

    def start(self, signals: SignalPipe | None = None) -> bool:
        """Open the log and get ready to serve; False if told to stop while waiting for
        storage (``signals``: SIGTERM then counts, see ``_await_storage``)."""
        spec = self.spec
        table = StatusTable.attach(spec.status_path, writable=True)
        self.status = StatusWriter(table, spec.slot)
        self.ctx = zmq.Context()
        self.gate = install(self.ctx, spec.security, spec.node_id)  # before the bind: ipc/curve.py
        self.gate.set_acls(spec.acls)
        self._bind()
        try:  # never obey a socket someone else bound (docs/security.md)
            check_own_socket(spec.control_endpoint[len("ipc://") :])
        except NotPrivateError as exc:
            log.error("%s: %s", self.name, exc.message)
            raise SystemExit(1) from None
        self.control = sockets.dealer(self.ctx, spec.control_endpoint, identity=f"slot-{spec.slot}".encode())
        self._role_cmd = spec.role
        lg = self._open_log()
        if lg is None:
            opened = self._await_storage(signals)
            if opened is None:
                return False
            lg = opened
        self.replica = Replica(
            spec.topic, spec.partition, spec.node_id, lg, self.clock, spec.initial_counters, self.storage
        )
        labels = (spec.topic, str(spec.partition))
        self.purgatory = Purgatory(
            self.replica, PRODUCE_LATENCY.labels(*labels).observe, FETCH_LATENCY.labels(*labels).observe
        )
        # the same-host path's sessions (samehost.py): their replies go into their rings
        same_host = self.same_host = SameHostSessions(
            self.name, os.path.join(os.path.dirname(spec.status_path), "same-host", self.name), self.poller,
            SAME_HOST_RING_BYTES.labels(*labels).set,
        )  # fmt: skip
        # what is held per client is bounded (ipc/peers.py): replies, parked fetches, waiting produces
        self.peers = PeerLedger(
            self.name,
            lambda peer, frames: (
                same_host.deliver(peer, frames) if len(peer) > 255 else deliver(self.data, peer, frames)
            ),
            clock=self.clock,
            on_stall=self.purgatory.release,
        )
        self.pipeline = partition_pipeline(
            self.replica, self.purgatory, self.peers.send, self.gate, self.peers, same_host.open
        )
        self.pipeline.authenticate = same_host.authenticate(self.pipeline.authenticate)
        self.muted = MutedPeers(self.pipeline.handle, self.peers.send, self.clock)
        same_host.handle = self.muted.handle
        self.quotas = WorkerQuotas(self.name, path_beside(spec.status_path), spec.slot, self.muted, self.clock)
        self.pipeline.authorize = self.quotas.chain(self.pipeline.authorize)  # then the quota check
        self.follower = FollowerLink(self.replica, self.storage, self.poller, self.clock, self._on_replicated)
        now = self.clock()
        self._next_retention = now + self.retention_check_ms / 1000
        self.cleaner = LogCleaner(self.name, spec.cleaner_interval_ms, now)
        self.apply_role(self._role_cmd or self.replica.single_node_role())
        if self._options_cmd is not None:
            self._apply_node_options(self._options_cmd)
        self._publish_status()
        waited = self.state is WorkerState.STORAGE_UNAVAILABLE
        self._set_state(WorkerState.SERVING)
        if not waited:  # after a wait the supervisor has had its ready (and its endpoint)
            self._send_control(ReadyEvent(spec.slot, os.getpid(), self.endpoint, lg.log_end_offset))
        gc.collect()
        gc.freeze()
        return True

    def _open_log(self) -> Log | None:
        """The log, or None when its storage refuses (the condition is noted)."""
        spec = self.spec
        try:
            return Log.open(spec.directory, spec.log_config, background_flush=True)
        except OSError as exc:
            if not is_storage_error(exc):
                raise
            self.storage.fail(exc)
            return None

    def _await_storage(self, signals: SignalPipe | None) -> Log | None:
        """The log cannot be opened (a full disk): say ready, serve ``STORAGE_ERROR`` to
        every request, keep the commands sent meanwhile, and try to open the log every
        ``PROBE_S``. Returns the log once it opens, None if told to stop first."""
        spec = self.spec
        self._set_state(WorkerState.STORAGE_UNAVAILABLE)
        self._send_control(ReadyEvent(spec.slot, os.getpid(), self.endpoint, 0))

        def refuse(req: Request) -> None:
            raise StorageError(f"{self.name}: {self.storage.describe()}")

        apis = dict.fromkeys(WORKER_APIS, refuse)
        pipeline = RequestPipeline(self.name, self._reply, apis, self.gate.authenticate, self.gate.authorize)
        poller = zmq.Poller()
        for sock in (self.data, self.control):
            poller.register(sock, zmq.POLLIN)
        if signals is not None:
            poller.register(signals.fileno(), zmq.POLLIN)
        next_open = self.clock() + PROBE_S
        while self.state is WorkerState.STORAGE_UNAVAILABLE:
            self._publish_waiting_status()
            timeout = max(0.0, min(next_open, self.clock() + self._idle_tick_s()) - self.clock())
            events = dict(poller.poll(int(timeout * 1000) + 1))
            if signals is not None and (signals.fileno() in events or signals.pending):
                self.on_signals(signals.drain())
            if not pid_alive(spec.supervisor_pid):
                log.error("%s: supervisor %d is gone; stopping", self.name, spec.supervisor_pid)
                self._set_state(WorkerState.STOPPING)
            if self.control in events:
                self._handle_control(waiting=True)
            if self.data in events:
                for _ in range(256):
                    try:
                        frames = self.data.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    pipeline.handle(frames)
            if self.state is not WorkerState.STORAGE_UNAVAILABLE or self.clock() < next_open:
                continue
            next_open = self.clock() + PROBE_S
            lg = self._open_log()
            if lg is None:
                continue
            self.storage.ok()
            return lg
        self._send_control(StoppedEvent(spec.slot, os.getpid()))
        self.data.close(0)
        self.control.close(0)
        self.ctx.term()
        self._set_state(WorkerState.STOPPED)
        return None

    def _publish_waiting_status(self) -> None:
        """The status block while no log is open: the heartbeat and the storage error."""
        self.status.update(
            pid=os.getpid(),
            heartbeat=time.monotonic(),
            storage_error=True,
            storage_errno=self.storage.errno,
            storage_error_since=self.storage.since,
        )

    def _reply(self, peer: bytes, frames: list[Any]) -> None:
        """The request pipeline's send: a reply through the data socket (dropped if the
        peer is gone or not reading)."""
        sockets.send_reply(self.data, peer, frames)

    def _send_control(self, event: Event) -> None:
        try:
            self.control.send(encode_control(event), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s: control message %s dropped (supervisor not reading)", self.name, event)

    # ---- the loop ---------------------------------------------------------------------
    def run(self, signals: SignalPipe) -> int:
        if not self.start(signals):
            return 0
        poller = self.poller
        poller.register(self.data, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        poller.register(signals.fileno(), zmq.POLLIN)
        next_tick = self.clock()
        tick_s = self.spec.tick_ms / 1000
        handle = self.muted.handle
        while self.state is WorkerState.SERVING:
            self.follower.register()
            timeout = max(0.0, min(self._next_deadline(), next_tick) - self.clock())
            if self.peers.congested:  # replies wait for room in a peer's queue: retry soon
                timeout = min(timeout, CONGESTED_RETRY_S)
            if self.same_host.sessions and self.same_host.busy():  # requests left after a burst
                timeout = 0.0
            events = dict(poller.poll(int(timeout * 1000) + 1))
            if events:
                next_tick = min(next_tick, self.clock() + tick_s)  # busy again: the short tick
            if signals.fileno() in events or signals.pending:
                self.on_signals(signals.drain())
            if self.state is not WorkerState.SERVING:
                self._answer_queued()
                break
            if self.control in events:
                self._handle_control()
            if self.data in events:
                for _ in range(256):  # bounded burst, then tick
                    try:
                        frames = self.data.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    handle(frames)
                    if self.state is not WorkerState.SERVING:
                        break
            if self.same_host.sessions:
                self.same_host.on_events(events)
            now = self.clock()
            self.follower.on_events(events, now)
            self.purgatory.expire(now)
            if self.peers.congested:
                self.peers.flush()
            self.peers.expire(now)
            self.muted.release(now)
            flush_due = self.log.next_flush_deadline()
            if flush_due is not None and time.time() >= flush_due:
                self.log.maybe_flush()  # when due, not at the next tick: no 1 ms polls until then
            if now >= next_tick:
                self.tick(now)
                next_tick = now + (tick_s if self._busy(events) else self._idle_tick_s())
        self.shutdown()
        return 0

    def _busy(self, events: dict[Any, int]) -> bool:
        """Whether the next tick comes after ``tick_ms`` (something is going on) or after
        the idle interval: a request or command just came, fetches are parked, produces
        wait for replicas, this replica follows (fetches its leader) or compacts, or data
        waits for its interval fsync."""
        return bool(
            events
            or self.purgatory.waiting
            or self.follower.active
            or self.cleaner.running
            or self.log.next_flush_deadline() is not None
        )

    def _idle_tick_s(self) -> float:
        """An idle worker's tick: its heartbeat still reaches the supervisor four times per
        ``heartbeat_timeout_ms`` (every 2.5 s with the default 10 s). Each tick is a wake-up,
        which costs about 0.15-0.2 ms of CPU on a virtual machine: 100 idle partitions at 10
        ticks/s kept 15 % of a core busy, 200 at one tick a second 4 %."""
        return max(self.spec.tick_ms / 1000, min(IDLE_TICK_MAX_S, self.heartbeat_timeout_ms / 4000))

    def _answer_queued(self) -> None:
        """On the way out: answer what clients already sent (bounded), then stop."""
        for _ in range(10_000):
            try:
                frames = self.data.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.pipeline.handle(frames)

    def _next_deadline(self) -> float:
        deadline = self.purgatory.next_deadline()
        deadline = min(deadline, self.follower.due(self.clock()), self.muted.next_deadline())
        flush = self.log.next_flush_deadline()
        if flush is not None:
            # Log's clock is wall time; convert to our monotonic clock
            deadline = min(deadline, self.clock() + max(0.0, flush - time.time()))
        return deadline

    def tick(self, now: float) -> None:
        if not pid_alive(self.spec.supervisor_pid):
            log.error("%s: supervisor %d is gone; stopping", self.name, self.spec.supervisor_pid)
            self._set_state(WorkerState.STOPPING)
            return
        r = self.replica
        lg = r.log
        try:
            lg.maybe_flush()
            if r.leading is not None:
                self._check_isr(now)
            r.maybe_save_high_watermark(now)
            r.expire_producers()  # O(1) unless a producer id is due (producers.py)
            cfg = lg.config
            if now >= self._next_retention and not self.cleaner.running:
                self._next_retention = now + self.retention_check_ms / 1000
                if cfg.cleanup_policy is CleanupPolicy.DELETE and lg.apply_retention():
                    r.producers.evict_below(lg.log_start_offset)
            if cfg.cleanup_policy is CleanupPolicy.COMPACT:
                self.cleaner.tick(lg, r.producers, now)
        except FlushFailedError:
            raise  # fatal for the log (appliance/log/flusher.py): exit, the restart verifies it
        except OSError as exc:  # a full disk: answered, probed, not crashed on (storage.py)
            self.storage.fail(exc)
        if self.storage.probe_due(now):
            self._probe_storage()
        self.quotas.tick()
        self.same_host.tick()
        self._publish_status()

    def _probe_storage(self) -> None:
        """Does the directory take writes again? (``storage.probe``)"""
        try:
            probe(self.log)
        except FlushFailedError:
            raise
        except OSError as exc:
            self.storage.fail(exc)  # the next probe in PROBE_S
            return
        self.storage.ok()

    def _publish_status(self) -> None:
        r = self.replica
        lg = r.log
        self.status.update(
            pid=os.getpid(),
            leader_epoch=r.leader_epoch,
            log_start_offset=lg.log_start_offset,
            log_end_offset=lg.log_end_offset,
            high_watermark=r.high_watermark,
            heartbeat=time.monotonic(),
            records_in=r.records_in,
            bytes_in=r.bytes_in,
            records_out=r.records_out,
            bytes_out=r.bytes_out,
            log_size_bytes=lg.size_bytes,
            storage_error=self.storage.failed,
            storage_errno=self.storage.errno,
            storage_error_since=self.storage.since,
        )

    # ---- roles (appliance/replication.py) ---------------------------------------------
    def apply_role(self, cmd: RoleCommand) -> None:
        """Lead, follow or neither, at the command's leader epoch (an older epoch is
        ignored). ``min.insync.replicas`` is a topic option: it comes with the log's
        configuration (the "config" command)."""
        r = self.replica
        role = cmd.role
        epoch = cmd.leader_epoch
        if epoch < r.leader_epoch:
            log.warning("%s: ignoring a role for epoch %d (at %d)", self.name, epoch, r.leader_epoch)
            return
        r.node_epoch = cmd.node_epoch
        now = self.clock()
        same = epoch == r.leader_epoch and role is r.role
        if same and role is Role.LEADER and r.leading is not None:
            r.leading.node_epoch = r.node_epoch  # changes when the node re-registers
            r.leading.update_assignment(list(cmd.replicas), dict(cmd.isr), now)
            self.purgatory.hw_moved(r.leading.advance_high_watermark(r.log.log_end_offset))
            return
        endpoint = cmd.leader_endpoint
        if same and role is Role.FOLLOWER and self.follower.follows(endpoint):
            self.follower.set_node_epoch(r.node_epoch)
            return
        was_leading = r.leading is not None
        hw = r.high_watermark
        self.follower.stop()
        r.leading = None
        if was_leading:
            self.purgatory.fail_pending(NotLeaderError(f"{self.name}: no longer the leader (epoch {epoch})"))
            self.purgatory.serve_parked(force=True, replicas_only=True)
        r.take_role(cmd, hw, now)
        if role is Role.FOLLOWER and endpoint:
            self.follower.follow(self.ctx, endpoint, self.spec.node_id, r.node_epoch, epoch)
        log.info("%s: %s at leader epoch %d (isr %s)", self.name, role.name.lower(), epoch, sorted(cmd.isr))
        set_title(worker_title(self.name, role.name.lower(), epoch))

    def _check_isr(self, now: float) -> None:
        r = self.replica
        lead = r.leading
        assert lead is not None
        wanted = lead.isr_change(r.log.log_end_offset, self.spec.replica_lag_time_max_ms / 1000, now)
        if wanted is not None:
            log.info("%s: asking the controller for isr %s (now %s)", self.name, sorted(wanted), sorted(lead.isr))
            self._send_control(AlterIsrEvent(self.spec.slot, os.getpid(), r.leader_epoch, wanted))
        self.purgatory.hw_moved(lead.advance_high_watermark(r.log.log_end_offset))

    # ---- the follower (follower.py) ------------------------------------------------------
    def _on_replicated(self) -> None:
        """Records came from the leader: fetches parked while this replica led may have
        enough now."""
        if self.purgatory.parked:
            self.purgatory.serve_parked(force=False)

    # ---- control ------------------------------------------------------------------------
    def _handle_control(self, waiting: bool = False) -> None:
        """Commands from the supervisor. ``waiting``: no log is open yet (storage
        unavailable): roles, configuration and node options are kept for when it opens."""
        while True:
            try:
                raw = self.control.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                cmd = decode_command(raw)
            except ControlMessageError as exc:
                log.warning("%s: malformed control message %r: %s", self.name, raw[:200], exc)
                continue
            if isinstance(cmd, StopCommand):
                self._set_state(WorkerState.STOPPING)
                return
            if isinstance(cmd, AclsCommand):
                self.gate.set_acls(cmd.acls)
                log.info("%s: ACLs now version %d (%d bindings)", self.name, cmd.version, len(cmd.acls))
                continue
            if isinstance(cmd, RoleCommand):
                if not waiting:
                    self.apply_role(cmd)
                elif self._role_cmd is None or cmd.leader_epoch >= self._role_cmd.leader_epoch:
                    self._role_cmd = cmd
            elif isinstance(cmd, ConfigCommand):
                try:
                    config = LogConfig.from_options(cmd.options)
                    if waiting:
                        self.spec = dataclasses.replace(self.spec, log_config=config)
                    else:
                        self.log.reconfigure(config)
                    log.info("%s: topic configuration now %s", self.name, cmd.options)
                except SluiceError as exc:
                    log.error("%s: refused configuration: %s", self.name, exc)
            elif waiting:
                self._options_cmd = cmd
            else:
                self._apply_node_options(cmd)

    def _apply_node_options(self, cmd: NodeOptionsCommand) -> None:
        """Node options that change live (SIGHUP reload). A new heartbeat timeout takes
        effect at the next tick, which the control message itself brings within ``tick_ms``.
        A shorter interval applies from now, not after the old one ran out."""
        level = cmd.log_level.upper()
        if logging.getLogger().level != logging.getLevelName(level):
            logging.getLogger().setLevel(level)
            log.info("%s: log level now %s", self.name, level.lower())
        now = self.clock()
        if cmd.retention_check_ms != self.retention_check_ms:
            self.retention_check_ms = cmd.retention_check_ms
            log.info("%s: %s now %d", self.name, "retention_check_ms", cmd.retention_check_ms)
            self._next_retention = min(self._next_retention, now + cmd.retention_check_ms / 1000)
        if cmd.cleaner_interval_ms != self.cleaner.interval_ms:
            self.cleaner.set_interval(cmd.cleaner_interval_ms, now)
            log.info("%s: %s now %d", self.name, "cleaner_interval_ms", cmd.cleaner_interval_ms)
        if cmd.heartbeat_timeout_ms != self.heartbeat_timeout_ms:
            self.heartbeat_timeout_ms = cmd.heartbeat_timeout_ms
            log.info("%s: %s now %d", self.name, "heartbeat_timeout_ms", cmd.heartbeat_timeout_ms)

    # ---- shutdown -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Answer in-flight fetches, flush and fsync, close; the caller exits 0."""
        if self.state is WorkerState.SERVING:
            self._set_state(WorkerState.STOPPING)
        self.purgatory.serve_parked(force=True)
        self.purgatory.fail_pending(NotLeaderError(f"{self.name}: the replica is stopping"))
        self.follower.stop()
        self.cleaner.join(timeout=30)
        self._publish_status()  # the final offsets, before the log closes its segments
        self.replica.save_high_watermark()
        self.log.close()
        self._send_control(StoppedEvent(self.spec.slot, os.getpid()))
        self.same_host.close_all()
        self.data.close(0)
        self.control.close(0)
        self.ctx.term()
        self._set_state(WorkerState.STOPPED)
