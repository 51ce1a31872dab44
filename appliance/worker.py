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

import orjson
import zmq

from appliance.log.cleaner import CleanPlan, apply_plan, build_plan
from appliance.log.config import CleanupPolicy, LogConfig
from appliance.log.log import Log
from appliance.process import SignalPipe, die_with_parent, pid_alive, setup_logging
from ipc import sockets
from ipc.errors import (
    CorruptRecordError,
    InvalidRequestError,
    MessageTooLargeError,
    SluiceError,
    StorageError,
    UnknownTopicOrPartitionError,
)
from ipc.protocol import EARLIEST, LATEST, WORKER_APIS, Request, error_reply, ok_reply, parse_request, peek_id
from ipc.records import BatchHeader, check_producible, iter_headers, validate_batch
from ipc.shm import StatusTable, StatusWriter
from metrics.definitions import FETCH_LATENCY, PRODUCE_LATENCY

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, built by the supervisor before the fork (picklable)."""

    topic: str
    partition: int
    slot: int
    leader_epoch: int
    directory: str
    log_options: dict[str, Any]
    listen_host: str
    preferred_port: int
    control_endpoint: str
    status_path: str
    supervisor_pid: int
    log_level: str = "info"
    tick_ms: int = 100
    retention_check_ms: int = 300_000
    cleaner_interval_ms: int = 15_000
    max_request_bytes: int = 100 * 1024 * 1024
    # records in, bytes in, records out, bytes out of the previous worker of this slot:
    # the counters continue across restarts, so rate() never sees them go backwards
    initial_counters: tuple[int, int, int, int] = (0, 0, 0, 0)


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


class PartitionWorker:
    def __init__(self, spec: WorkerSpec, clock: Any = time.monotonic) -> None:
        self.spec = spec
        self.clock = clock
        self.state = WorkerState.STARTING
        self.parked: list[ParkedFetch] = []
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
        config = LogConfig.from_options(spec.log_options)
        self.log = Log.open(spec.directory, config)
        table = StatusTable.attach(spec.status_path, writable=True)
        self.status = StatusWriter(table, spec.slot)
        self.ctx = zmq.Context()
        self._bind()
        self.control = sockets.dealer(self.ctx, spec.control_endpoint, identity=f"slot-{spec.slot}".encode())
        self._publish_status()
        now = self.clock()
        self._next_retention = now + self.retention_check_ms / 1000
        self._next_clean = now + self.cleaner_interval_ms / 1000
        self._set_state(WorkerState.SERVING)
        self._send_control(
            event="ready",
            slot=spec.slot,
            pid=os.getpid(),
            endpoint=self.endpoint,
            log_end_offset=self.log.log_end_offset,
        )
        gc.collect()
        gc.freeze()

    def _send_control(self, **fields: Any) -> None:
        try:
            self.control.send(orjson.dumps(fields), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s: control message %s dropped (supervisor not reading)", self.name, fields.get("event"))

    # ---- the loop ---------------------------------------------------------------------
    def run(self, signals: SignalPipe) -> int:
        self.start()
        poller = zmq.Poller()
        poller.register(self.data, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        poller.register(signals.fileno(), zmq.POLLIN)
        next_tick = self.clock()
        while self.state is WorkerState.SERVING:
            timeout = max(0.0, min(self._next_deadline(), next_tick) - self.clock())
            events = dict(poller.poll(int(timeout * 1000) + 1))
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
            self._expire_parked(now)
            if now >= next_tick:
                self.tick(now)
                next_tick = now + self.spec.tick_ms / 1000
        self.shutdown()
        return 0

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
        cfg = self.log.config
        if now >= self._next_retention and self._clean_thread is None:
            self._next_retention = now + self.retention_check_ms / 1000
            if cfg.cleanup_policy is CleanupPolicy.DELETE:
                self.log.apply_retention()
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

        def clean() -> None:
            try:
                self._clean_result = build_plan(self.log, now_ms)
            except Exception as exc:  # noqa: BLE001 - reported on the loop thread
                self._clean_result = exc

        self._clean_thread = threading.Thread(target=clean, name=f"cleaner-{self.name}", daemon=True)
        self._clean_thread.start()

    def _publish_status(self) -> None:
        lg = self.log
        self.status.update(
            pid=os.getpid(),
            leader_epoch=self.spec.leader_epoch,
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
        # One replica: everything appended is committed.
        return self.log.log_end_offset

    # ---- control ------------------------------------------------------------------------
    def _handle_control(self) -> None:
        while True:
            try:
                raw = self.control.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = orjson.loads(raw)
                cmd = msg["cmd"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("%s: malformed control message %r", self.name, raw[:200])
                continue
            if cmd == "stop":
                self._set_state(WorkerState.STOPPING)
                return
            if cmd == "config":
                try:
                    self.log.config = LogConfig.from_options(msg.get("options", {}))
                    log.info("%s: topic configuration now %s", self.name, msg.get("options"))
                except SluiceError as exc:
                    log.error("%s: refused configuration: %s", self.name, exc)
            elif cmd == "node_options":
                self._apply_node_options(msg)
            else:
                log.warning("%s: unknown control command %r", self.name, cmd)

    def _apply_node_options(self, msg: dict[str, Any]) -> None:
        """``{"cmd": "node_options", "log_level": "debug", "retention_check_ms": N,
        "cleaner_interval_ms": N}``: node options that change live (SIGHUP reload)."""
        level = str(msg.get("log_level", "")).upper()
        if level in ("DEBUG", "INFO", "WARNING", "ERROR") and logging.getLogger().level != logging.getLevelName(level):
            logging.getLogger().setLevel(level)
            log.info("%s: log level now %s", self.name, level.lower())
        now = self.clock()
        for key in ("retention_check_ms", "cleaner_interval_ms"):
            value = msg.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 10:
                continue
            if value != getattr(self, key):
                setattr(self, key, value)
                log.info("%s: %s now %d", self.name, key, value)
                # a shorter interval applies from now, not after the old one ran out
                if key == "retention_check_ms":
                    self._next_retention = min(self._next_retention, now + value / 1000)
                else:
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

    def _reply(self, identity: bytes, frames: list[Any]) -> None:
        sockets.send_reply(self.data, identity, frames)

    def _produce(self, identity: bytes, req: Request) -> None:
        started = time.perf_counter()
        if not req.frames:
            raise InvalidRequestError("produce carries no record batch frame")
        acks = req.fields["acks"]
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
        for buf in buffers:
            try:
                result = self.log.append(buf, self.spec.leader_epoch, validate=False)
            except OSError as exc:
                # all or nothing: take back this request's earlier batches, so a retry
                # does not write them twice
                if self.log.log_end_offset > start:
                    self.log.truncate_to(start)
                raise StorageError(f"{self.name}: cannot append: {exc}") from exc
            base_offsets.append(result.base_offset)
        for h in headers:
            self.records_in += h.record_count
        self.bytes_in += sum(map(len, buffers))
        if acks != 0:
            reply = ok_reply(req.id, base_offsets=base_offsets, log_start_offset=self.log.log_start_offset)
            self._reply(identity, [reply])
        self._produce_latency.observe(time.perf_counter() - started)
        if self.parked:
            self._serve_parked(force=False)

    def _read(self, offset: int, max_bytes: int) -> bytes:
        return self.log.read(offset, max_bytes, max_offset=self.high_watermark)

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
        data = self._read(f["offset"], f["max_bytes"])  # raises OffsetOutOfRangeError
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
            )
        )

    def _serve_parked(self, force: bool) -> None:
        still: list[ParkedFetch] = []
        for p in self.parked:
            try:
                data = self._read(p.offset, p.max_bytes) if p.offset < self.high_watermark or force else b""
            except SluiceError as exc:
                self._reply(p.identity, [error_reply(p.cid, exc)])
                continue
            if force or len(data) >= p.min_bytes:
                self._fetch_reply(p.identity, p.cid, data, p.started)
            else:
                still.append(p)
        self.parked = still

    def _expire_parked(self, now: float) -> None:
        if not self.parked:
            return
        due = [p for p in self.parked if p.deadline <= now]
        if not due:
            return
        self.parked = [p for p in self.parked if p.deadline > now]
        for p in due:
            try:
                self._fetch_reply(p.identity, p.cid, self._read(p.offset, p.max_bytes), p.started)
            except SluiceError as exc:
                self._reply(p.identity, [error_reply(p.cid, exc)])

    def _list_offsets(self, identity: bytes, req: Request) -> None:
        ts = req.fields["timestamp"]
        lg = self.log
        if ts == EARLIEST:
            offset, found_ts = lg.log_start_offset, -1
        elif ts == LATEST:
            offset, found_ts = self.high_watermark, -1
        else:
            found = lg.offset_for_timestamp(ts)
            offset, found_ts = found if found is not None and found[0] < self.high_watermark else (-1, -1)
        self._reply(
            identity, [ok_reply(req.id, offset=offset, timestamp=found_ts, leader_epoch=self.spec.leader_epoch)]
        )

    # ---- shutdown -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Answer in-flight fetches, flush and fsync, close; the caller exits 0."""
        if self.state is WorkerState.SERVING:
            self._set_state(WorkerState.STOPPING)
        self._serve_parked(force=True)
        if self._clean_thread is not None:
            self._clean_thread.join(timeout=30)
        self._publish_status()  # the final offsets, before the log closes its segments
        self.log.close()
        self._send_control(event="stopped", slot=self.spec.slot, pid=os.getpid())
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
