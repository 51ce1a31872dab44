"""The partition worker: one process per partition replica on this node.

It owns its partition's ``Log`` (single writer), binds its own ROUTER for produce,
fetch and list-offsets, reports to the supervisor over an ``ipc://`` control socket,
and publishes its state in its slot of the shared-memory status table.

One loop, one thread for requests: poll (data socket, control socket, signal pipe)
with a timeout set by the next deadline (tick, fsync interval, parked fetches), handle
what arrived, then ``tick``. Compaction builds its cleaned files in a helper thread and
the swap happens back on the loop (see ``appliance/log/cleaner.py``).
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import logging
import os
import signal
import threading
import time
from typing import Any

import zmq

from appliance.log.checkpoint import OffsetCheckpoint
from appliance.log.cleaner import CleanPlan, apply_plan, build_plan
from appliance.log.config import CleanupPolicy, LogConfig
from appliance.log.log import Log
from appliance.log.producers import ProducerStateTable
from appliance.partition.spec import WorkerSpec
from appliance.process import SignalPipe, die_with_parent, pid_alive, setup_logging
from appliance.replication import Fetcher, LeaderState
from ipc import sockets
from ipc.control import (
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
from ipc.errors import (
    CorruptRecordError,
    FencedLeaderEpochError,
    InvalidRequestError,
    MessageTooLargeError,
    NotEnoughReplicasError,
    NotLeaderError,
    OffsetOutOfRangeError,
    RequestTimedOutError,
    SluiceError,
    StorageError,
    UnknownLeaderEpochError,
    UnknownTopicOrPartitionError,
)
from ipc.protocol import EARLIEST, LATEST, WORKER_APIS, Reply, Request, error_reply, ok_reply, parse_request, peek_id
from ipc.records import BatchHeader, check_producible, iter_headers, validate_batch
from ipc.shm import Role, StatusTable, StatusWriter
from metrics.definitions import FETCH_LATENCY, PRODUCE_LATENCY

log = logging.getLogger(__name__)

# The high watermark, saved now and then (and at shutdown) so that a restarted replica
# does not start from 0: Kafka's replication-offset-checkpoint, every 5 s as there.
HW_CHECKPOINT_FILE = "replication-offset-checkpoint"
HW_CHECKPOINT_S = 5.0
IDLE_TICK_MAX_S = 1.0


class WorkerState(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"


_TRANSITIONS = {
    WorkerState.STARTING: {WorkerState.SERVING, WorkerState.STOPPING},
    WorkerState.SERVING: {WorkerState.STOPPING},
    WorkerState.STOPPING: {WorkerState.STOPPED},
    WorkerState.STOPPED: set(),
}


@dataclasses.dataclass
class ParkedFetch:
    identity: bytes
    cid: int
    offset: int
    max_bytes: int
    min_bytes: int
    deadline: float
    started: float
    replica: bool = False  # a follower's fetch: reads up to the log end, not the HW


@dataclasses.dataclass
class PendingProduce:
    """An acks=all produce appended but not yet below the high watermark."""

    identity: bytes
    cid: int
    base_offsets: list[int]
    required: int  # the HW that commits it (its last offset + 1)
    deadline: float
    started: float


class PartitionWorker:
    def __init__(self, spec: WorkerSpec, clock: Any = time.monotonic) -> None:
        self.spec = spec
        self.clock = clock
        self.state = WorkerState.STARTING
        self.parked: list[ParkedFetch] = []
        self.pending: list[PendingProduce] = []
        self.role = Role.NONE
        self.leader_epoch = -1
        self.node_epoch = -1
        self.leading: LeaderState | None = None
        self.fetcher: Fetcher | None = None
        self._follower_hw = 0
        self._hw_checkpoint: OffsetCheckpoint
        self._hw_saved = 0
        self._next_hw_save = 0.0
        self.producers: ProducerStateTable
        self.poller = zmq.Poller()
        self._polled_fetch: zmq.Socket[Any] | None = None
        self.records_in, self.bytes_in, self.records_out, self.bytes_out = spec.initial_counters
        self.log: Log
        self.ctx: zmq.Context[Any]
        self.data: zmq.Socket[Any]
        self.control: zmq.Socket[Any]
        self.status: StatusWriter
        self.endpoint = ""
        self._next_retention = 0.0
        self._next_clean = 0.0
        self.retention_check_ms = spec.retention_check_ms  # live: control command node_options
        self.heartbeat_timeout_ms = spec.heartbeat_timeout_ms  # live, too
        self.cleaner_interval_ms = spec.cleaner_interval_ms
        self._cleaned_upto = -1
        self._clean_thread: threading.Thread | None = None
        self._clean_result: CleanPlan | BaseException | None = None
        labels = (spec.topic, str(spec.partition))
        self._produce_latency = PRODUCE_LATENCY.labels(*labels)
        self._fetch_latency = FETCH_LATENCY.labels(*labels)

    @property
    def name(self) -> str:
        return f"{self.spec.topic}-{self.spec.partition}"

    def _set_state(self, new: WorkerState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"{self.name}: illegal transition {self.state.value} -> {new.value}")
        log.info("%s: %s -> %s", self.name, self.state.value, new.value)
        self.state = new

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

    def start(self) -> None:
        spec = self.spec
        self.log = Log.open(spec.directory, spec.log_config, background_flush=True)
        self.producers = ProducerStateTable.rebuild(self.log)
        self._hw_checkpoint = OffsetCheckpoint(os.path.join(spec.directory, HW_CHECKPOINT_FILE))
        self._hw_saved = self._follower_hw = min(self._hw_checkpoint.read(0), self.log.log_end_offset)
        table = StatusTable.attach(spec.status_path, writable=True)
        self.status = StatusWriter(table, spec.slot)
        self.ctx = zmq.Context()
        self._bind()
        self.control = sockets.dealer(self.ctx, spec.control_endpoint, identity=f"slot-{spec.slot}".encode())
        self.apply_role(spec.role or self._single_node_role())
        self._publish_status()
        now = self.clock()
        self._next_retention = now + self.retention_check_ms / 1000
        self._next_clean = now + self.cleaner_interval_ms / 1000
        self._set_state(WorkerState.SERVING)
        self._send_control(ReadyEvent(spec.slot, os.getpid(), self.endpoint, self.log.log_end_offset))
        gc.collect()
        gc.freeze()

    def _send_control(self, event: Event) -> None:
        try:
            self.control.send(encode_control(event), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s: control message %s dropped (supervisor not reading)", self.name, event)

    # ---- the loop ---------------------------------------------------------------------
    def run(self, signals: SignalPipe) -> int:
        self.start()
        poller = self.poller
        poller.register(self.data, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        poller.register(signals.fileno(), zmq.POLLIN)
        next_tick = self.clock()
        tick_s = self.spec.tick_ms / 1000
        while self.state is WorkerState.SERVING:
            self._register_fetcher()
            timeout = max(0.0, min(self._next_deadline(), next_tick) - self.clock())
            events = dict(poller.poll(int(timeout * 1000) + 1))
            if events:
                next_tick = min(next_tick, self.clock() + tick_s)  # busy again: the short tick
            if signals.fileno() in events or signals.pending:
                for signum in signals.drain():
                    if signum == signal.SIGTERM:
                        log.info("%s: SIGTERM", self.name)
                        self._set_state(WorkerState.STOPPING)
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
                    self._handle(frames)
                    if self.state is not WorkerState.SERVING:
                        break
            now = self.clock()
            if self.fetcher is not None:
                if self.fetcher.sock in events:
                    self.fetcher.receive(self._on_fetch_reply, now)
                self._drive_fetcher(now)
            self._expire_parked(now)
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
            or self.parked
            or self.pending
            or self.fetcher is not None
            or self._clean_thread is not None
            or self.log.next_flush_deadline() is not None
        )

    def _idle_tick_s(self) -> float:
        """An idle worker's tick: its heartbeat still reaches the supervisor four times per
        ``heartbeat_timeout_ms``. Each tick is a wake-up, which costs about 0.15 ms of CPU on
        a virtual machine: 100 idle partitions at 10 ticks/s kept 15 % of a core busy."""
        return max(self.spec.tick_ms / 1000, min(IDLE_TICK_MAX_S, self.heartbeat_timeout_ms / 4000))

    def _answer_queued(self) -> None:
        """On the way out: answer what clients already sent (bounded), then stop."""
        for _ in range(10_000):
            try:
                frames = self.data.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames)

    def _next_deadline(self) -> float:
        deadlines = [p.deadline for p in self.parked]
        deadlines += [p.deadline for p in self.pending]
        if self.fetcher is not None:
            deadlines.append(self.fetcher.due(self.clock()))
        flush = self.log.next_flush_deadline()
        if flush is not None:
            # Log's clock is wall time; convert to our monotonic clock
            deadlines.append(self.clock() + max(0.0, flush - time.time()))
        return min(deadlines) if deadlines else float("inf")

    def tick(self, now: float) -> None:
        if not pid_alive(self.spec.supervisor_pid):
            log.error("%s: supervisor %d is gone; stopping", self.name, self.spec.supervisor_pid)
            self._set_state(WorkerState.STOPPING)
            return
        self.log.maybe_flush()
        if self.leading is not None:
            self._check_isr(now)
        if now >= self._next_hw_save:
            self._next_hw_save = now + HW_CHECKPOINT_S
            self._save_high_watermark()
        cfg = self.log.config
        if now >= self._next_retention and self._clean_thread is None:
            self._next_retention = now + self.retention_check_ms / 1000
            if cfg.cleanup_policy is CleanupPolicy.DELETE and self.log.apply_retention():
                self.producers.evict_below(self.log.log_start_offset)
        if cfg.cleanup_policy is CleanupPolicy.COMPACT:
            self._tick_cleaner(now)
        self._publish_status()

    def _tick_cleaner(self, now: float) -> None:
        if self._clean_thread is not None:
            if self._clean_thread.is_alive():
                return
            self._clean_thread = None
            result, self._clean_result = self._clean_result, None
            if isinstance(result, BaseException):
                log.error("%s: compaction failed: %s", self.name, result)
            elif result is not None:
                removed = apply_plan(self.log, result)
                self._cleaned_upto = result.map_end_offset
                log.info("%s: compaction removed %d records", self.name, removed)
            return
        sealed_end = self.log.segments[-2].next_offset if len(self.log.segments) > 1 else -1
        if now < self._next_clean or sealed_end <= self._cleaned_upto:
            return
        self._next_clean = now + self.cleaner_interval_ms / 1000
        now_ms = int(time.time() * 1000)
        keep_last_of = self.producers.last_offsets()  # taken here: the table is this thread's

        def clean() -> None:
            try:
                self._clean_result = build_plan(self.log, now_ms, keep_last_of)
            except Exception as exc:  # noqa: BLE001 - reported on the loop thread
                self._clean_result = exc

        self._clean_thread = threading.Thread(target=clean, name=f"cleaner-{self.name}", daemon=True)
        self._clean_thread.start()

    def _publish_status(self) -> None:
        lg = self.log
        self.status.update(
            pid=os.getpid(),
            leader_epoch=self.leader_epoch,
            log_start_offset=lg.log_start_offset,
            log_end_offset=lg.log_end_offset,
            high_watermark=self.high_watermark,
            heartbeat=time.monotonic(),
            records_in=self.records_in,
            bytes_in=self.bytes_in,
            records_out=self.records_out,
            bytes_out=self.bytes_out,
            log_size_bytes=lg.size_bytes,
        )

    @property
    def high_watermark(self) -> int:
        if self.leading is not None:
            return self.leading.high_watermark
        return min(self._follower_hw, self.log.log_end_offset)

    # ---- roles (appliance/replication.py) ---------------------------------------------
    def _single_node_role(self) -> RoleCommand:
        """The role when the supervisor gave none: the only replica, leading."""
        n = self.spec.node_id
        assert self.log.leader_epochs is not None
        epoch = max(self.log.leader_epochs.latest_epoch, 0)
        return RoleCommand(Role.LEADER, epoch, replicas=(n,), isr={n: 0}, node_epoch=self.node_epoch)

    def apply_role(self, cmd: RoleCommand) -> None:
        """Lead, follow or neither, at the command's leader epoch (an older epoch is
        ignored). ``min.insync.replicas`` is a topic option: it comes with the log's
        configuration (the "config" command)."""
        role = cmd.role
        epoch = cmd.leader_epoch
        if epoch < self.leader_epoch:
            log.warning("%s: ignoring a role for epoch %d (at %d)", self.name, epoch, self.leader_epoch)
            return
        self.node_epoch = cmd.node_epoch
        isr = dict(cmd.isr)
        replicas = list(cmd.replicas)
        now = self.clock()
        same = epoch == self.leader_epoch and role is self.role
        if same and role is Role.LEADER and self.leading is not None:
            self.leading.node_epoch = self.node_epoch  # changes when the node re-registers
            self.leading.update_assignment(replicas, isr, now)
            self._after_hw_change(self.leading.advance_high_watermark(self.log.log_end_offset))
            return
        endpoint = cmd.leader_endpoint
        if same and role is Role.FOLLOWER and self.fetcher is not None and self.fetcher.endpoint == endpoint:
            self.fetcher.node_epoch = self.node_epoch
            return
        was_leading = self.leading is not None
        hw = self.high_watermark
        self._stop_fetcher()
        self.leading = None
        if was_leading:
            self._fail_pending(NotLeaderError(f"{self.name}: no longer the leader (epoch {epoch})"))
            self._serve_parked(force=True, replicas_only=True)
        self.role, self.leader_epoch = role, epoch
        if role is Role.LEADER:
            assert self.log.leader_epochs is not None
            self.log.leader_epochs.assign(epoch, self.log.log_end_offset)
            self.leading = LeaderState(
                self.spec.node_id, self.node_epoch, replicas, isr, hw, self.log.log_end_offset, now
            )
            self.leading.advance_high_watermark(self.log.log_end_offset)
        else:
            self._follower_hw = hw
            # an epoch this replica led without writing holds no record: it must not be
            # what the follower's fetches call its last epoch (truncate_to forgets it)
            self.log.truncate_to(self.log.log_end_offset)
            if role is Role.FOLLOWER and endpoint:
                spec = self.spec
                self.fetcher = Fetcher(
                    self.ctx, endpoint, spec.topic, spec.partition, spec.node_id, self.node_epoch, epoch
                )
        log.info("%s: %s at leader epoch %d (isr %s)", self.name, role.name.lower(), epoch, sorted(isr))

    def _save_high_watermark(self) -> None:
        hw = self.high_watermark
        if hw != self._hw_saved:
            try:
                self._hw_checkpoint.write(hw)
                self._hw_saved = hw
            except OSError as exc:  # a hint for the next start, not data: keep serving
                log.warning("%s: cannot save the high watermark: %s", self.name, exc)

    def _stop_fetcher(self) -> None:
        if self.fetcher is not None:
            if self._polled_fetch is not None:
                self.poller.unregister(self._polled_fetch)
                self._polled_fetch = None
            self.fetcher.close()
            self.fetcher = None

    def _register_fetcher(self) -> None:
        sock = self.fetcher.sock if self.fetcher is not None else None
        if sock is not self._polled_fetch:
            if self._polled_fetch is not None:
                self.poller.unregister(self._polled_fetch)
            if sock is not None:
                self.poller.register(sock, zmq.POLLIN)
            self._polled_fetch = sock

    def _drive_fetcher(self, now: float) -> None:
        f = self.fetcher
        assert f is not None
        f.check_timeout(now)
        if not f.in_flight and now >= f.next_at:
            assert self.log.leader_epochs is not None
            f.send(self.log.log_end_offset, self.log.leader_epochs.latest_epoch, now)

    def _on_fetch_reply(self, reply: Reply) -> None:
        f = self.fetcher
        assert f is not None
        lg = self.log
        if reply.error is not None:
            err = reply.error
            if isinstance(err, OffsetOutOfRangeError):
                start = int(reply.fields.get("log_start_offset", 0))
                if lg.log_end_offset < start:
                    log.info("%s: behind the leader's log start %d: starting over there", self.name, start)
                    lg.truncate_fully_and_start_at(start)
                    self.producers = ProducerStateTable.rebuild(lg)
                    return
            log.info("%s: fetch from %s failed: %s", self.name, f.endpoint, err)
            f.next_at = self.clock() + 0.1
            return
        div = reply.fields.get("diverging")
        if div is not None:
            epoch, end = int(div["epoch"]), int(div["end_offset"])
            assert lg.leader_epochs is not None
            # KIP-279: where our own log ends that epoch (or the latest one before it)
            _, own_end = lg.leader_epochs.end_offset_for(epoch, lg.log_end_offset)
            target = max(min(end, own_end), 0)
            before = (lg.log_end_offset, lg.leader_epochs.latest_epoch)
            log.warning("%s: log diverges from the leader at epoch %d: truncating to %d", self.name, epoch, target)
            lg.truncate_to(target)  # and the epochs that hold no record here
            self.producers = ProducerStateTable.rebuild(lg)
            if (lg.log_end_offset, lg.leader_epochs.latest_epoch) == before:  # no progress: do not spin
                log.error("%s: cannot reconcile with the leader (diverging %s); retrying in 1 s", self.name, div)
                f.next_at = self.clock() + 1.0
            return
        try:
            for frame in reply.frames:
                self._append_replicated(frame.buffer if hasattr(frame, "buffer") else memoryview(frame))
        except (SluiceError, OSError) as exc:  # a damaged transfer or a full disk: fetch again later
            log.error("%s: cannot append what the leader sent: %s", self.name, exc)
            f.next_at = self.clock() + 1.0
            return
        self._follower_hw = int(reply.fields.get("high_watermark", 0))

    def _append_replicated(self, data: memoryview) -> None:
        lg = self.log
        pos = 0
        for h in iter_headers(data, verify_crc=True):
            size = h.size
            if h.base_offset >= lg.log_end_offset:  # else already here (a reply crossing a reconnect)
                lg.append_replica(data[pos : pos + size])
                self.producers.update(h, h.base_offset)
            pos += size
        if pos and self.parked:
            self._serve_parked(force=False)

    def _check_isr(self, now: float) -> None:
        lead = self.leading
        assert lead is not None
        wanted = lead.isr_change(self.log.log_end_offset, self.spec.replica_lag_time_max_ms / 1000, now)
        if wanted is not None:
            log.info("%s: asking the controller for isr %s (now %s)", self.name, sorted(wanted), sorted(lead.isr))
            self._send_control(AlterIsrEvent(self.spec.slot, os.getpid(), self.leader_epoch, wanted))
        self._after_hw_change(lead.advance_high_watermark(self.log.log_end_offset))

    def _after_hw_change(self, moved: bool) -> None:
        if not moved:
            return
        if self.pending:
            self._complete_pending()
        if self.parked:
            self._serve_parked(force=False)

    def _complete_pending(self) -> None:
        hw = self.high_watermark
        still = []
        for p in self.pending:
            if hw >= p.required:
                min_insync = self.log.config.min_insync_replicas
                if self.leading is not None and len(self.leading.isr) < min_insync:
                    err = NotEnoughReplicasError(
                        f"{self.name}: written but only {len(self.leading.isr)} in-sync replica(s), "
                        f"min.insync.replicas={min_insync}"
                    )
                    self._reply(p.identity, [error_reply(p.cid, err)])
                else:
                    reply = ok_reply(p.cid, base_offsets=p.base_offsets, log_start_offset=self.log.log_start_offset)
                    self._reply(p.identity, [reply])
                    self._produce_latency.observe(time.perf_counter() - p.started)
            else:
                still.append(p)
        self.pending = still

    def _fail_pending(self, err: SluiceError) -> None:
        for p in self.pending:
            self._reply(p.identity, [error_reply(p.cid, err)])
        self.pending = []

    def _expire_pending(self, now: float) -> None:
        due = [p for p in self.pending if p.deadline <= now]
        if not due:
            return
        self.pending = [p for p in self.pending if p.deadline > now]
        for p in due:
            err = RequestTimedOutError(f"{self.name}: not replicated to the in-sync replicas in time")
            self._reply(p.identity, [error_reply(p.cid, err)])

    # ---- control ------------------------------------------------------------------------
    def _handle_control(self) -> None:
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
            if isinstance(cmd, RoleCommand):
                self.apply_role(cmd)
            elif isinstance(cmd, StopCommand):
                self._set_state(WorkerState.STOPPING)
                return
            elif isinstance(cmd, ConfigCommand):
                try:
                    self.log.config = LogConfig.from_options(cmd.options)
                    log.info("%s: topic configuration now %s", self.name, cmd.options)
                except SluiceError as exc:
                    log.error("%s: refused configuration: %s", self.name, exc)
            else:
                self._apply_node_options(cmd)

    def _apply_node_options(self, cmd: NodeOptionsCommand) -> None:
        """Node options that change live (SIGHUP reload). A new heartbeat timeout takes
        effect at the next tick, which the control message itself brings within ``tick_ms``."""
        level = cmd.log_level.upper()
        if logging.getLogger().level != logging.getLevelName(level):
            logging.getLogger().setLevel(level)
            log.info("%s: log level now %s", self.name, level.lower())
        now = self.clock()
        for key in ("retention_check_ms", "cleaner_interval_ms", "heartbeat_timeout_ms"):
            value = getattr(cmd, key)
            if value != getattr(self, key):
                setattr(self, key, value)
                log.info("%s: %s now %d", self.name, key, value)
                # a shorter interval applies from now, not after the old one ran out
                if key == "retention_check_ms":
                    self._next_retention = min(self._next_retention, now + value / 1000)
                elif key == "cleaner_interval_ms":
                    self._next_clean = min(self._next_clean, now + value / 1000)

    # ---- requests -----------------------------------------------------------------------
    def _handle(self, frames: list[Any]) -> None:
        identity = frames[0].bytes
        body = frames[1:]
        try:
            req = parse_request(body, WORKER_APIS)
        except SluiceError as exc:
            self._reply(identity, [error_reply(peek_id(body[0]) if body else 0, exc)])
            return
        try:
            if req.fields["topic"] != self.spec.topic or req.fields["partition"] != self.spec.partition:
                raise UnknownTopicOrPartitionError(
                    f"this worker serves {self.name}, not {req.fields['topic']}-{req.fields['partition']}"
                )
            if req.api == "produce":
                self._produce(identity, req)
            elif req.api == "fetch":
                self._fetch(identity, req)
            elif req.api == "list_offsets":
                self._list_offsets(identity, req)
        except SluiceError as exc:
            self._reply(identity, [error_reply(req.id, exc)])
        except Exception as exc:  # noqa: BLE001 - one bad request must not kill the partition
            log.exception("%s: unexpected error handling %s", self.name, req.api)
            err = SluiceError(f"unexpected error in {req.api}: {exc}")
            self._reply(identity, [error_reply(req.id, err)])

    def _check_leader(self) -> LeaderState:
        if self.role is not Role.LEADER or self.leading is None:
            raise NotLeaderError(f"{self.name}: this replica is not the leader (leader epoch {self.leader_epoch})")
        return self.leading

    def _reply(self, identity: bytes, frames: list[Any]) -> None:
        sockets.send_reply(self.data, identity, frames)

    def _produce(self, identity: bytes, req: Request) -> None:
        started = time.perf_counter()
        if not req.frames:
            raise InvalidRequestError("produce carries no record batch frame")
        acks = req.fields["acks"]
        lead = self._check_leader()
        min_insync = self.log.config.min_insync_replicas
        if acks in (-1, "all") and len(lead.isr) < min_insync:
            raise NotEnoughReplicasError(
                f"{self.name}: {len(lead.isr)} in-sync replica(s) {sorted(lead.isr)}, min.insync.replicas={min_insync}"
            )
        headers: list[BatchHeader] = []
        buffers = []
        for frame in req.frames:
            buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
            try:
                headers.append(check_producible(validate_batch(buf)))
            except CorruptRecordError as exc:
                raise CorruptRecordError(f"{self.name}: {exc.message}") from None
            buffers.append(buf)
        cfg = self.log.config
        for buf in buffers:
            if len(buf) > cfg.max_message_bytes:
                raise MessageTooLargeError(
                    f"{self.name}: batch of {len(buf)} bytes exceeds max.message.bytes={cfg.max_message_bytes}"
                )
        base_offsets = []
        start = self.log.log_end_offset
        required = 0
        # raises OutOfOrderSequenceError, InvalidProducerEpochError before anything is written
        duplicates = self.producers.check_all(headers)
        for h, buf, duplicate in zip(headers, buffers, duplicates, strict=True):
            if duplicate is not None:  # a retry of a batch already written: answer with its offset
                base_offsets.append(duplicate)
                required = max(required, duplicate + h.last_offset_delta + 1)
                continue
            try:
                result = self.log.append(buf, self.leader_epoch, validate=False)
            except OSError as exc:
                # all or nothing: take back this request's earlier batches, so a retry
                # does not write them twice
                if self.log.log_end_offset > start:
                    self.log.truncate_to(start)
                    self.producers = ProducerStateTable.rebuild(self.log)
                raise StorageError(f"{self.name}: cannot append: {exc}") from exc
            self.producers.update(h, result.base_offset)
            base_offsets.append(result.base_offset)
            required = result.last_offset + 1
            self.records_in += h.record_count
            self.bytes_in += len(buf)
        # consumers waiting in a long poll hear of the new records before the producer
        # hears its acknowledgement: the records' end-to-end path is the one that waits
        try:
            self._after_hw_change(lead.advance_high_watermark(self.log.log_end_offset))
        except Exception:  # noqa: BLE001 - the batch is written: its producer must hear so, or it retries
            log.exception("%s: answering parked fetches after an append failed", self.name)
        if acks in (-1, "all") and lead.high_watermark < required:
            deadline = self.clock() + req.fields["timeout_ms"] / 1000
            self.pending.append(PendingProduce(identity, req.id, base_offsets, required, deadline, started))
        elif acks != 0:
            reply = ok_reply(req.id, base_offsets=base_offsets, log_start_offset=self.log.log_start_offset)
            self._reply(identity, [reply])
            self._produce_latency.observe(time.perf_counter() - started)
        if self.parked:
            self._serve_parked(force=False, replicas_only=True)

    def _read(self, offset: int, max_bytes: int, replica: bool = False) -> bytes:
        return self.log.read(offset, max_bytes, max_offset=None if replica else self.high_watermark)

    def _fetch_reply(self, identity: bytes, cid: int, data: bytes, started: float) -> None:
        if data:
            for h in iter_headers(data):
                self.records_out += h.record_count
            self.bytes_out += len(data)
        lg = self.log
        header = ok_reply(
            cid,
            high_watermark=self.high_watermark,
            log_start_offset=lg.log_start_offset,
            log_end_offset=lg.log_end_offset,
        )
        self._reply(identity, [header, data] if data else [header])
        self._fetch_latency.observe(time.perf_counter() - started)

    def _fetch(self, identity: bytes, req: Request) -> None:
        started = time.perf_counter()
        f = req.fields
        self._check_leader()
        replica = f["replica_id"] >= 0
        if replica and self._replica_fetch(identity, req):
            return
        data = self._read(f["offset"], f["max_bytes"], replica)  # raises OffsetOutOfRangeError
        if len(data) >= f["min_bytes"] or f["max_wait_ms"] == 0:
            self._fetch_reply(identity, req.id, data, started)
            return
        self.parked.append(
            ParkedFetch(
                identity,
                req.id,
                f["offset"],
                f["max_bytes"],
                f["min_bytes"],
                self.clock() + f["max_wait_ms"] / 1000,
                started,
                replica,
            )
        )

    def _replica_fetch(self, identity: bytes, req: Request) -> bool:
        """A follower's fetch: check its epoch and its log, note its LEO. True if answered."""
        f = req.fields
        lead = self.leading
        epochs = self.log.leader_epochs
        assert lead is not None and epochs is not None
        if f["leader_epoch"] < self.leader_epoch:
            raise FencedLeaderEpochError(f"{self.name}: leader epoch {f['leader_epoch']} < {self.leader_epoch}")
        if f["leader_epoch"] > self.leader_epoch:
            raise UnknownLeaderEpochError(f"{self.name}: leader epoch {f['leader_epoch']} > {self.leader_epoch}")
        lg = self.log
        offset, last = f["offset"], f["last_fetched_epoch"]
        if last >= 0 or offset > lg.log_end_offset:
            epoch, end = epochs.end_offset_for(last, lg.log_end_offset) if last >= 0 else (-1, -1)
            if epoch != last or end < offset:
                if epoch == -1:
                    end = min(offset, lg.log_end_offset) if last < 0 else lg.log_start_offset
                header = ok_reply(
                    req.id,
                    diverging={"epoch": epoch, "end_offset": end},
                    high_watermark=self.high_watermark,
                    log_start_offset=lg.log_start_offset,
                    log_end_offset=lg.log_end_offset,
                )
                self._reply(identity, [header])
                return True
        lead.on_fetch(f["replica_id"], f["replica_epoch"], offset, lg.log_end_offset, self.clock())
        self._after_hw_change(lead.advance_high_watermark(lg.log_end_offset))
        return False

    def _serve_parked(self, force: bool, replicas_only: bool = False) -> None:
        still: list[ParkedFetch] = []
        for p in self.parked:
            if replicas_only and not p.replica:
                still.append(p)
                continue
            end = self.log.log_end_offset if p.replica else self.high_watermark
            try:
                data = self._read(p.offset, p.max_bytes, p.replica) if p.offset < end or force else b""
            except SluiceError as exc:
                self._reply(p.identity, [error_reply(p.cid, exc)])
                continue
            if force or len(data) >= p.min_bytes:
                self._fetch_reply(p.identity, p.cid, data, p.started)
            else:
                still.append(p)
        self.parked = still

    def _expire_parked(self, now: float) -> None:
        if self.pending:
            self._expire_pending(now)
        if not self.parked:
            return
        due = [p for p in self.parked if p.deadline <= now]
        if not due:
            return
        self.parked = [p for p in self.parked if p.deadline > now]
        for p in due:
            try:
                self._fetch_reply(p.identity, p.cid, self._read(p.offset, p.max_bytes, p.replica), p.started)
            except SluiceError as exc:
                self._reply(p.identity, [error_reply(p.cid, exc)])

    def _list_offsets(self, identity: bytes, req: Request) -> None:
        self._check_leader()
        ts = req.fields["timestamp"]
        lg = self.log
        if ts == EARLIEST:
            offset, found_ts = lg.log_start_offset, -1
        elif ts == LATEST:
            offset, found_ts = self.high_watermark, -1
        else:
            found = lg.offset_for_timestamp(ts)
            offset, found_ts = found if found is not None and found[0] < self.high_watermark else (-1, -1)
        self._reply(identity, [ok_reply(req.id, offset=offset, timestamp=found_ts, leader_epoch=self.leader_epoch)])

    # ---- shutdown -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Answer in-flight fetches, flush and fsync, close; the caller exits 0."""
        if self.state is WorkerState.SERVING:
            self._set_state(WorkerState.STOPPING)
        self._serve_parked(force=True)
        self._fail_pending(NotLeaderError(f"{self.name}: the replica is stopping"))
        self._stop_fetcher()
        if self._clean_thread is not None:
            self._clean_thread.join(timeout=30)
        self._publish_status()  # the final offsets, before the log closes its segments
        self._save_high_watermark()
        self.log.close()
        self._send_control(StoppedEvent(self.spec.slot, os.getpid()))
        self.data.close(0)
        self.control.close(0)
        self.ctx.term()
        self._set_state(WorkerState.STOPPED)


def _close_forkserver_alive_fd() -> None:
    """The fork server exits when every holder of its "alive" pipe has closed it; a
    forked child inherits one end, so close it here or the fork server (our parent,
    whose death kills us) would outlive a SIGKILLed supervisor."""
    import multiprocessing.forkserver as fs

    server = getattr(fs, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        try:
            os.close(fd)
        except OSError:
            pass
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def run_worker(spec: WorkerSpec) -> None:
    """Entry point in the forked child (multiprocessing target)."""
    _close_forkserver_alive_fd()
    die_with_parent(spec.supervisor_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the supervisor's; it sends us node_options
    setup_logging(spec.log_level)
    signals = SignalPipe((signal.SIGTERM,))
    worker = PartitionWorker(spec)
    code = worker.run(signals)
    raise SystemExit(code)
