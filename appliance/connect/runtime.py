"""A connector's process: the loop that moves records between a task and Sluice.

``run_connector`` is the entry point the node forks (``appliance/connect/manager.py``).
After fork it builds everything itself (clients, their ZeroMQ contexts, the task), then:

**Source** (``SourceRunner``): poll the task, send each record with the idempotent
producer (``acks=all``), and every ``offset.flush.interval.ms``: take the task's
position, wait until every record sent so far is acknowledged, store the position in
``__connect_offsets``, then ``task.commit(position)`` (the CDC source confirms the LSN
to PostgreSQL only here). A record that cannot be delivered stops the process (exit 1)
before its position is stored: the restarted connector resumes from the last stored
position, so nothing is lost and what repeats is at most what was sent after it.

**Sink** (``SinkRunner``): read the topics' partitions from the positions the task
keeps with its data (else from the beginning), ``task.put`` each batch, send the records
it rejects to the dead-letter topic, and every ``offset.flush.interval.ms``: wait for
the dead-letter topic's acknowledgements, then ``task.flush(positions)``.

Every turn of the loop writes the heartbeat (``status.py``); every blocking wait is
cut into short waits that beat, so a live connector is never judged hung and a hung one
is. SIGTERM ends the loop after a last flush (exit 0); a supervisor that is gone too.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from appliance.beat import Beat
from appliance.connect import metrics
from appliance.connect.api import (
    ConnectorError,
    RetriableConnectorError,
    SinkTask,
    SourceRecord,
    SourceTask,
    TopicPartition,
)
from appliance.connect.config import module_of
from appliance.connect.dlq import dlq_headers
from appliance.connect.offsets import OffsetStore
from appliance.connect.spec import ConnectorSpec
from appliance.connect.status import Counters, read_json
from appliance.partition.process import _close_forkserver_alive_fd
from appliance.process import die_with_parent, pid_alive, setup_logging
from ipc.client import Admin, Consumer, Producer
from ipc.errors import SluiceError

log = logging.getLogger(__name__)

POLL_S = 0.2
RETRY_FIRST_S = 0.5  # after a RetriableConnectorError; doubles up to RETRY_MAX_S
RETRY_MAX_S = 10.0
MAX_UNFLUSHED = 20_000  # records sent but not yet flushed: flush early beyond this
DELIVERY_TIMEOUT_S = 120.0


class Stop:
    """Set by SIGTERM (the handler only records it)."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True


def run_connector(spec: ConnectorSpec) -> None:
    """Entry point in the forked child (multiprocessing target)."""
    _close_forkserver_alive_fd()
    die_with_parent(spec.supervisor_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = Stop()
    signal.signal(signal.SIGTERM, stop)
    setup_logging(spec.log_level)
    raise SystemExit(run(spec, stop))


def run(spec: ConnectorSpec, stop: Stop) -> int:
    counters = Counters(spec.status_path, spec.name, spec.cls)
    previous = read_json(spec.status_path)
    if isinstance(previous, dict):  # totals and the last error survive a restart
        for k in ("records_polled", "records_written", "errors", "dead_letter_records", "last_error", "offset"):
            if k in previous:
                counters.doc[k] = previous[k]
    counters.publish(force=True)
    beat = LazyBeat(spec.beat_path)
    delay = RETRY_FIRST_S
    try:
        mod = module_of(spec.cls)
        while not stop.requested:
            task = mod.TASK(spec.name, spec.options)
            runner: SourceRunner | SinkRunner | SinkTasks
            tasks = int(spec.options.get("tasks.max", 1))
            if mod.KIND == "source":
                runner = SourceRunner(spec, task, counters, stop, beat)
            elif tasks > 1:
                runner = SinkTasks(
                    spec, [task] + [mod.TASK(spec.name, spec.options) for _ in range(tasks - 1)], counters, stop, beat
                )
            else:
                runner = SinkRunner(spec, task, counters, stop, beat)
            try:
                runner.run()
                break
            except RetriableConnectorError as exc:
                log.warning("connector %s: %s; starting again in %.1f s", spec.name, exc, delay)
                metrics.ERRORS.labels(spec.name).inc()
                counters.add("errors", 1)
                counters.set(state="retrying", last_error=f"{type(exc).__name__}: {exc}")
                counters.publish(force=True)
                until = time.monotonic() + delay
                while time.monotonic() < until and not stop.requested:
                    runner.tick()
                    time.sleep(0.1)  # the backoff, beating
                delay = min(delay * 2, RETRY_MAX_S)
    except (ConnectorError, SluiceError, OSError) as exc:
        return _failed(spec, counters, f"{type(exc).__name__}: {exc}", traceback=False)
    except Exception as exc:  # noqa: BLE001 - the process's outermost loop: log, report, exit non-zero
        return _failed(spec, counters, f"{type(exc).__name__}: {exc}", traceback=True)
    counters.set(state="stopped")
    counters.publish(force=True)
    log.info("connector %s stopped", spec.name)
    return 0


def _failed(spec: ConnectorSpec, counters: Counters, message: str, traceback: bool) -> int:
    if traceback:
        log.exception("connector %s failed: %s", spec.name, message)
    else:
        log.error("connector %s failed: %s", spec.name, message)
    metrics.ERRORS.labels(spec.name).inc()
    counters.add("errors", 1)
    counters.set(state="failed", last_error=message, failed_at=time.time())
    counters.publish(force=True)
    return 1


class LazyBeat:
    """The heartbeat file, made at the first ``ready`` (the node then sees the connector
    as set up) and kept across the task's in-process restarts."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.beat: Beat | None = None

    def ready(self) -> None:
        if self.beat is None:
            self.beat = Beat(self.path)
        self.beat()

    def __call__(self) -> None:
        if self.beat is not None:
            self.beat()


class Runner:
    def __init__(
        self, spec: ConnectorSpec, counters: Counters, stop: Stop | TaskStop, beat: LazyBeat | TaskBeat
    ) -> None:
        self.spec = spec
        self.counters = counters
        self.stop = stop
        self.beat = beat
        self.interval_s = int(spec.options["offset.flush.interval.ms"]) / 1000
        self.futures: list[Any] = []  # of the records sent since the last wait_acknowledged
        self.topics: set[str] = set()

    def tick(self) -> None:
        """Heartbeat (once set up), the supervisor check, the status file."""
        self.beat()
        if not pid_alive(self.spec.supervisor_pid):
            log.warning("connector %s: supervisor %d is gone; stopping", self.spec.name, self.spec.supervisor_pid)
            self.stop.requested = True
        self.counters.publish()

    def ready(self) -> None:
        """Set up: the first heartbeat tells the node (STARTING -> SERVING)."""
        self.beat.ready()
        self.counters.set(last_error=None)

    def ensure_topic(self, admin: Admin, topic: str, partitions: int = 1) -> None:
        if topic not in self.topics:
            admin.create_topic(topic, partitions=partitions, exist_ok=True)
            self.topics.add(topic)

    def sent(self, fut: Any) -> None:
        """Keep the future (a cheap tuple; checked once acknowledged, in ``wait_acknowledged``:
        a callback per record would cost the producer's I/O thread more than the send)."""
        self.futures.append(fut)

    def wait_acknowledged(self, producer: Producer) -> None:
        """Every record sent so far is acknowledged (or the connector fails)."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while True:
            self.tick()
            try:
                producer.flush(timeout=0.5)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise ConnectorError(f"records not acknowledged within {DELIVERY_TIMEOUT_S:.0f} s") from None
        futures, self.futures = self.futures, []
        for fut in futures:
            exc = fut.exception(0)
            if exc is not None:
                raise ConnectorError(f"a record was not acknowledged by Sluice: {exc}")


class SourceRunner(Runner):
    def __init__(self, spec: ConnectorSpec, task: SourceTask, counters: Counters, stop: Stop, beat: LazyBeat) -> None:
        super().__init__(spec, counters, stop, beat)
        self.task = task
        self.unflushed = 0  # records sent since the last stored position
        self.stored: dict[str, Any] | None = None

    def run(self) -> None:
        spec = self.spec
        with (
            Admin(spec.bootstrap, security=spec.security) as admin,
            Producer(spec.bootstrap, acks="all", security=spec.security, linger_ms=2, max_in_flight=1) as producer,
        ):
            store = OffsetStore(spec.bootstrap, spec.security, spec.name, producer)
            self.stored = store.load(self.tick)
            log.info("connector %s: resuming from %s", spec.name, self.stored)
            self.task.start(self.stored)
            try:
                for topic, n in self.task.topics().items():
                    self.tick()
                    self.ensure_topic(admin, topic, n)
                self.ready()
                self.counters.set(state="running")
                next_flush = time.monotonic() + self.interval_s
                while not self.stop.requested:
                    self.tick()
                    records = self.task.poll(POLL_S)
                    if records:
                        self.send(admin, producer, records)
                    now = time.monotonic()
                    if now >= next_flush or self.unflushed >= MAX_UNFLUSHED:
                        self.flush(producer, store)
                        next_flush = now + self.interval_s
                self.flush(producer, store)
            finally:
                self.task.stop()

    def send(self, admin: Admin, producer: Producer, records: list[SourceRecord]) -> None:
        for r in records:
            if r.topic not in self.topics:
                self.ensure_topic(admin, r.topic)
            headers = list(r.headers) if r.headers else None
            self.sent(producer.send(r.topic, r.value, key=r.key, headers=headers, timestamp_ms=r.timestamp_ms))
        self.unflushed += len(records)
        self.counters.add("records_polled", len(records))
        metrics.RECORDS_POLLED.labels(self.spec.name).inc(len(records))

    def flush(self, producer: Producer, store: OffsetStore) -> None:
        offset = self.task.offset()
        if offset == self.stored and not self.unflushed:
            self._lag()
            return
        self.wait_acknowledged(producer)  # everything polled before ``offset`` is in Sluice
        store.store(offset)
        self.stored = offset
        self.task.commit(offset)
        self.counters.add("records_written", self.unflushed)
        metrics.RECORDS_WRITTEN.labels(self.spec.name).inc(self.unflushed)
        self.unflushed = 0
        self.counters.set(offset=offset)
        self._lag()

    def _lag(self) -> None:
        lag = self.task.lag()
        if lag is not None:
            self.counters.set(lag=lag, lag_unit="bytes")
            metrics.LAG.labels(self.spec.name, "bytes").set(lag)


class SinkRunner(Runner):
    def __init__(
        self,
        spec: ConnectorSpec,
        task: SinkTask,
        counters: Counters,
        stop: Stop | TaskStop,
        beat: LazyBeat | TaskBeat,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        super().__init__(spec, counters, stop, beat)
        self.task = task
        self.share = share  # (this task's index, the number of tasks): which partitions it reads
        self.positions: dict[TopicPartition, int] = {}
        self.unflushed = 0
        self.producer: Producer | None = None  # for the dead-letter topic, made when first needed

    def run(self) -> None:
        spec = self.spec
        batch = int(spec.options["batch.max.records"])
        with (
            Admin(spec.bootstrap, security=spec.security) as admin,
            Consumer(
                spec.bootstrap,
                auto_offset_reset="earliest",
                max_poll_records=batch,
                fetch_max_wait_ms=200,
                security=spec.security,
            ) as consumer,
        ):
            try:
                stored = self.task.start()
                pairs = self.partitions(admin)
                consumer.assign(pairs)
                for pair in pairs:
                    if pair in stored:
                        consumer.seek(pair[0], pair[1], stored[pair])
                    else:
                        consumer.seek_to_beginning(pair)
                    self.positions[pair] = consumer.position(*pair)
                log.info("connector %s: reading %s", spec.name, self.positions)
                self.ready()
                self.counters.set(state="running")
                next_flush = time.monotonic() + self.interval_s
                while not self.stop.requested:
                    self.tick()
                    records = consumer.poll(int(POLL_S * 1000))
                    if records:
                        self.put(admin, records)
                    now = time.monotonic()
                    if now >= next_flush:
                        self.flush()
                        self._lag(consumer)
                        next_flush = now + self.interval_s
                self.flush()
            finally:
                if self.producer is not None:
                    self.producer.close(5)
                self.task.stop()

    def partitions(self, admin: Admin) -> list[TopicPartition]:
        """Every partition of the configured topics (waiting for a topic not created yet)."""
        pairs: list[TopicPartition] = []
        for topic in self.spec.options["topics"]:
            while True:
                self.tick()
                if self.stop.requested:
                    return pairs
                try:
                    n = admin.partition_count(topic)
                    break
                except SluiceError as exc:
                    self.counters.set(state="waiting", last_error=f"topic {topic!r}: {exc}")
                    time.sleep(POLL_S)  # polling for the topic to be created
            pairs.extend((topic, p) for p in range(n))
        index, count = self.share
        return pairs[index::count]  # task i: the i-th, (i+count)-th, ... partition of them all

    def put(self, admin: Admin, records: list[Any]) -> None:
        n = len(records)
        self.counters.add("records_polled", n)
        metrics.RECORDS_POLLED.labels(self.spec.name).inc(n)
        rejected = self.task.put(records)
        for rec, exc in rejected:
            self.dead_letter(admin, rec, exc)
        for rec in records:
            self.positions[(rec.topic, rec.partition)] = rec.offset + 1
        self.unflushed += n - len(rejected)

    def dead_letter(self, admin: Admin, rec: Any, exc: Exception) -> None:
        topic = self.spec.dlq_topic
        log.warning(
            "connector %s: %s-%d offset %d to the dead-letter topic %s: %s",
            self.spec.name,
            rec.topic,
            rec.partition,
            rec.offset,
            topic,
            exc,
        )
        if self.producer is None:
            self.producer = Producer(self.spec.bootstrap, acks="all", security=self.spec.security)
        self.ensure_topic(admin, topic)
        fut = self.producer.send(
            topic, rec.value, key=rec.key, headers=dlq_headers(rec, self.spec.name, exc), timestamp_ms=rec.timestamp
        )
        self.sent(fut)
        self.counters.add("dead_letter_records", 1)
        self.counters.add("errors", 1)
        self.counters.set(last_error=f"{rec.topic}-{rec.partition}@{rec.offset}: {type(exc).__name__}: {exc}")
        metrics.DEAD_LETTER.labels(self.spec.name).inc()
        metrics.ERRORS.labels(self.spec.name).inc()

    def flush(self) -> None:
        if self.producer is not None:
            self.wait_acknowledged(self.producer)  # the dead letters before the position moves past them
        self.task.flush(dict(self.positions))
        self.counters.add("records_written", self.unflushed)
        metrics.RECORDS_WRITTEN.labels(self.spec.name).inc(self.unflushed)
        self.unflushed = 0
        self.counters.set_part("offset", self.share[0], {f"{t}-{p}": o for (t, p), o in self.positions.items()})

    def _lag(self, consumer: Consumer) -> None:
        lag = 0
        for (t, p), pos in self.positions.items():
            hw = consumer.highwater(t, p)
            if hw is not None:
                lag += max(0, hw - pos)
        total = self.counters.set_part("lag", self.share[0], lag)
        self.counters.set(lag_unit="records")
        metrics.LAG.labels(self.spec.name, "records").set(total)


class TaskStop:
    """A task thread's stop: the process's (SIGTERM, the supervisor gone) or the group's
    (another task failed)."""

    def __init__(self, outer: Stop) -> None:
        self.outer = outer
        self.own = False

    @property
    def requested(self) -> bool:
        return self.outer.requested or self.own

    @requested.setter
    def requested(self, value: bool) -> None:
        self.own = value


class TaskBeat:
    """A task thread's heartbeat: the time of its last turn, read by ``SinkTasks``."""

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.set_up = False

    def ready(self) -> None:
        self.set_up = True
        self.at = time.monotonic()

    def __call__(self) -> None:
        self.at = time.monotonic()


class SinkTasks:
    """``tasks.max`` > 1 (a sink whose ``MULTI_TASK`` allows it): that many ``SinkRunner``
    threads, each with its own task (its own connection to the target), consumer and
    share of the partitions (task i reads the i-th, (i+n)-th, ... partition of the
    configured topics). Each keeps the positions of its partitions with its data, so
    exactly once holds per partition as with one task; which task reads a partition may
    change when ``tasks.max`` does, since the positions are in the target.

    This thread beats for the process while every task turned within ``TASK_SILENT_S``
    (a task stuck longer stops the beat and the node restarts the connector, as it would
    one task); the process is set up once every task is. A task that fails stops the
    others, and the failure is the process's (retried or fatal, as with one task)."""

    TASK_SILENT_S = 1.0

    def __init__(
        self, spec: ConnectorSpec, tasks: list[SinkTask], counters: Counters, stop: Stop, beat: LazyBeat
    ) -> None:
        self.spec = spec
        self.counters = counters
        self.stop = stop
        self.beat = beat
        self.beats = [TaskBeat() for _ in tasks]
        self.stops = [TaskStop(stop) for _ in tasks]
        self.runners = [
            SinkRunner(spec, task, counters, self.stops[i], self.beats[i], (i, len(tasks)))
            for i, task in enumerate(tasks)
        ]
        self.errors: list[BaseException] = []
        self.running = False

    def tick(self) -> None:
        now = time.monotonic()
        if not self.running:  # between runs (the retry backoff): the process itself is alive
            self.beat()
        elif all(now - b.at < self.TASK_SILENT_S for b in self.beats):
            if all(b.set_up for b in self.beats):
                self.beat.ready()
            else:
                self.beat()
        if not pid_alive(self.spec.supervisor_pid):
            log.warning("connector %s: supervisor %d is gone; stopping", self.spec.name, self.spec.supervisor_pid)
            self.stop.requested = True
        self.counters.publish()

    def _run_one(self, runner: SinkRunner) -> None:
        try:
            runner.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the process's loop, which judges it
            self.errors.append(exc)
            for s in self.stops:
                s.requested = True  # the others stop too (each after a last flush of its own)

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._run_one, args=(r,), name=f"{self.spec.name}-task-{i}", daemon=True)
            for i, r in enumerate(self.runners)
        ]
        self.running = True
        for t in threads:
            t.start()
        log.info("connector %s: %d tasks", self.spec.name, len(threads))
        try:
            while any(t.is_alive() for t in threads):
                self.tick()
                for t in threads:
                    t.join(0.1 / len(threads))
        finally:
            self.running = False
        if self.errors:
            raise self.errors[0]
