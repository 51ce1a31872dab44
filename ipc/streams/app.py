"""``StreamsApp``: the topology's entry points and the processing loop.

The loop (``run``), after gunicorn's arbiter in spirit: one thread, one ``poll`` per pass.

1. ``poll`` the app's consumer (group ``<app id>``, ``range`` assignor, no auto commit):
   a rebalance runs ``_on_revoke`` / ``_on_assign`` inside it, which drop and create
   tasks; a new task's stores are restored from their changelogs before it processes
   anything (``ipc/streams/restore.py``).
2. Put the records into their tasks' buffers; each task processes what is ready, in
   timestamp order across its partitions (``ipc/streams/tasks.py``).
3. End of the batch: tasks close windows and drain their stores into changelog records;
   outputs and changelog records were sent through one idempotent ``Producer`` (no
   per-record round trip), which is now flushed; every send must have succeeded.
4. Only then are the processed offsets committed (at-least-once: a crash before the
   commit re-processes the batch, so outputs may repeat; stores do not double count,
   see ``ipc/streams/stores.py``). A refused commit (the group moved on) drops every
   task, so its state is restored again from what was committed.

With ``commit_interval_ms``, steps 3-4 run once per interval for the tasks that processed
records since the last time (and when ``run`` returns). Operations: the topology is
published to ``<app>-topology`` at start (``sluice streams describe``); ``metrics_port``
serves the counters to Prometheus (``ipc/streams/metrics.py``).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from ipc.client import Admin, Consumer, ConsumerRecord, FutureRecordMetadata, Producer
from ipc.client.group import CommitFailedError
from ipc.client.transport import Bootstrap, Security
from ipc.streams.dsl import Stream, Table, Topology
from ipc.streams.errors import MissingSourceTopicError, SerdeError, StreamsError, TopologyError
from ipc.streams.nodes import TableSourceNode
from ipc.streams.plan import SubTopology, plan, set_sink_partitions
from ipc.streams.restore import restore_tasks
from ipc.streams.serdes import BYTES, SerdeLike, resolve_serde
from ipc.streams.stores import SRC_HEADER, StoreSpec, src_bytes
from ipc.streams.tasks import TP, Counters, Task

__all__ = ["StreamsApp"]

log = logging.getLogger(__name__)

_APP_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")
TOPOLOGY_KEY = b"topology"
TaskId = tuple[int, int]
BadRecordHandler = Callable[[SerdeError, ConsumerRecord], Any]


class StreamsApp:
    """A stream-processing application: build a topology, then ``run()`` it.

    >>> app = StreamsApp("orders-enricher", bootstrap="tcp://127.0.0.1:6100", value_serde="json")
    >>> app.stream("orders").filter(lambda k, v: v["total"] > 0).to("paid-orders")
    >>> app.run(max_seconds=10)
    """

    def __init__(
        self,
        app_id: str,
        bootstrap: Bootstrap = None,
        *,
        key_serde: SerdeLike = "bytes",
        value_serde: SerdeLike = "bytes",
        auto_offset_reset: str = "earliest",
        on_deserialize_error: str | BadRecordHandler = "fail",
        max_poll_records: int = 2000,
        max_task_idle_ms: int = 1000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1000,
        restore_timeout_s: float = 600.0,
        flush_timeout_s: float = 120.0,
        security: Security = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        commit_interval_ms: int = 0,
    ) -> None:
        if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id):
            raise TopologyError(f"app_id={app_id!r}: 1-200 characters of A-Z a-z 0-9 . _ - (it names topics)")
        if on_deserialize_error not in ("fail", "skip") and not callable(on_deserialize_error):
            raise TopologyError(f"on_deserialize_error={on_deserialize_error!r}: 'fail', 'skip' or a callable")
        for name, v, lo in (("max_poll_records", max_poll_records, 1), ("max_task_idle_ms", max_task_idle_ms, 0),
                            ("commit_interval_ms", commit_interval_ms, 0)):
            if type(v) is not int or v < lo:
                raise TopologyError(f"{name}={v!r}: must be an integer >= {lo}")
        if metrics_port is not None and (type(metrics_port) is not int or not 0 <= metrics_port <= 65535):
            raise TopologyError(f"metrics_port={metrics_port!r}: a TCP port, 0-65535 (0: any free port)")
        self.app_id = app_id
        self.bootstrap = bootstrap
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self._registry: Any = None
        self._metrics_server: Any = None
        self.security = security
        self.topology = Topology(
            app_id,
            resolve_serde(key_serde, BYTES, "key_serde"),
            resolve_serde(value_serde, BYTES, "value_serde"),
        )
        self.auto_offset_reset = auto_offset_reset
        self.on_deserialize_error = on_deserialize_error
        self.max_poll_records = max_poll_records
        self.max_task_idle_s = max_task_idle_ms / 1000
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.restore_timeout_s = restore_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self.commit_interval_s = commit_interval_ms / 1000
        self.counters = Counters()
        self.tasks: dict[TaskId, Task] = {}
        self.subs: list[SubTopology] = []
        self._sub_of: dict[str, SubTopology] = {}
        self._cache: dict[TaskId, tuple[Task, dict[TP, int | None]]] = {}  # revoked tasks, kept while still valid
        self._committed: dict[TP, int] = {}  # what this instance committed last, per partition
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._restorer: Consumer | None = None
        self._producer: Producer | None = None
        self._futures: list[FutureRecordMetadata] = []
        self._dirty: dict[TaskId, Task] = {}  # tasks that processed records since the last commit
        self._last_commit = 0.0

    # ---- the DSL's entry points --------------------------------------------------------------------
    def stream(self, topic: str, key_serde: SerdeLike = None, value_serde: SerdeLike = None) -> Stream:
        t = self.topology
        node = t.source(
            topic,
            resolve_serde(key_serde, t.key_serde, f"stream({topic!r}) key_serde"),
            resolve_serde(value_serde, t.value_serde, f"stream({topic!r}) value_serde"),
        )
        return Stream(t, node, source=node)

    def table(self, topic: str, key_serde: SerdeLike = None, value_serde: SerdeLike = None,
              name: str | None = None) -> Table:
        """A topic read as a table (latest value per key; a tombstone deletes the key).
        Its store (``name``, default the topic's name) is restored from the topic itself."""
        t = self.topology
        source = t.source(
            topic,
            resolve_serde(key_serde, t.key_serde, f"table({topic!r}) key_serde"),
            resolve_serde(value_serde, t.value_serde, f"table({topic!r}) value_serde"),
        )
        spec = StoreSpec(t.name("table", name or topic))
        spec.source_serdes = (source.key_serde, source.value_serde)
        t.table_sources[spec.name] = topic
        node = TableSourceNode(spec.name, spec)
        t.add(source, node)
        return Table(t, node, spec)

    def describe(self) -> str:
        text = self.topology.describe()
        if self.subs:
            for sub in self.subs:
                text += f"\nsub-topology {sub.index}: {sub.topics}, {sub.partitions} partition(s), stores " \
                        f"{[s.name for s in sub.stores]}"
            text += f"\ntasks here: {sorted(self.tasks)}"
        return text

    # ---- queries ----------------------------------------------------------------------------------
    def store(self, name: str) -> StoreView:
        """The local partitions of store ``name`` (interactive queries)."""
        if name not in self.topology.stores:
            raise TopologyError(f"no store {name!r}; stores: {sorted(self.topology.stores)}")
        return StoreView(self, name)

    def metrics(self) -> dict[str, Any]:
        out = self.counters.as_dict()
        out["tasks"] = len(self.tasks)
        out["store_sizes"] = self.store_sizes()
        return out

    def store_sizes(self) -> dict[str, int]:
        """Keys per store in this instance's partitions (safe from another thread)."""
        return {name: len(self.store(name)) for name in self.topology.stores}

    @property
    def metrics_registry(self) -> Any:
        """A prometheus_client ``CollectorRegistry`` holding this app's series
        (``ipc/streams/metrics.py``), to serve yourself; ``metrics_port`` serves it."""
        if self._registry is None:
            from ipc.streams.metrics import make_registry

            self._registry = make_registry(self)
        return self._registry

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics endpoint while ``run`` serves it (the port chosen
        when ``metrics_port=0``)."""
        if self._metrics_server is None:
            return None
        host, port = self._metrics_server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Make ``run`` return after the current pass (from any thread or a signal handler)."""
        self._stop.set()

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self, max_seconds: float | None = None, until: Callable[[StreamsApp], Any] | None = None) -> None:
        """Process until ``stop()``, for at most ``max_seconds``, or until ``until(app)``
        (checked after every pass) is true."""
        self._stop.clear()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        if self.metrics_port is not None and self._metrics_server is None:
            from ipc.streams.metrics import serve

            self._metrics_server, _thread = serve(self.metrics_registry, self.metrics_port, self.metrics_host)
            log.info("%s: metrics on http://%s:%d/metrics", self.app_id, *self.metrics_address)  # type: ignore[misc]
        try:
            self._setup()
            assert self._consumer is not None
            self._last_commit = time.monotonic()
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._pass(self._consumer.poll(timeout_ms=100))
                if until is not None and until(self):
                    break
            if self._dirty:  # what was processed since the last commit (commit_interval_ms)
                self._commit_dirty()
        finally:
            self._close()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
                self._metrics_server = None

    def _setup(self) -> None:
        t = self.topology
        with Admin(self.bootstrap, security=self.security) as admin:
            counts: dict[str, int] = {}
            existing = set(admin.list_topics())
            for topic, src in t.sources.items():
                if src.internal:
                    continue
                if topic not in existing:
                    raise MissingSourceTopicError(f"{self.app_id}: source topic {topic!r} does not exist "
                                                  "(create it first: the library never creates source topics)")
                counts[topic] = admin.partition_count(topic)
            self.subs, all_counts = plan(t, counts)
            set_sink_partitions(t, all_counts)
            for topic in t.repartition_topics:
                self._internal_topic(admin, topic, all_counts[topic], {})
            for sub in self.subs:
                for spec in sub.stores:
                    if spec.changelog is not None:
                        self._internal_topic(admin, spec.changelog, sub.partitions, {"cleanup.policy": "compact"})
            self._internal_topic(admin, self.topology_topic, 1, {"cleanup.policy": "compact"})
        self._sub_of = {s.topic: sub for sub in self.subs for s in sub.sources}
        log.info("%s: topology\n%s", self.app_id, self.describe())
        self._producer = Producer(self.bootstrap, security=self.security)
        self._publish_topology()
        self._restorer = Consumer(self.bootstrap, auto_offset_reset="earliest", max_poll_records=10_000,
                                  security=self.security)
        self._consumer = Consumer(
            self.bootstrap,
            group_id=self.app_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            max_poll_records=self.max_poll_records,
            partition_assignment_strategy="range",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            client_id=self.app_id,
            security=self.security,
        )
        self._consumer.subscribe(sorted(t.sources))

    @property
    def topology_topic(self) -> str:
        """``<app>-topology``: where every instance publishes the topology at start, for
        ``sluice streams describe`` (one partition, compacted, one record per app)."""
        return f"{self.app_id}-topology"

    def topology_record(self) -> dict[str, Any]:
        """What is published in ``<app>-topology`` (key ``topology``): the planned topology."""
        return {
            "app": self.app_id,
            "published_ms": int(time.time() * 1000),
            "topology": self.topology.describe(),
            "sub_topologies": [
                {
                    "index": sub.index,
                    "topics": sub.topics,
                    "partitions": sub.partitions,
                    "stores": [spec.name for spec in sub.stores],
                    "changelogs": [spec.changelog for spec in sub.stores if spec.changelog is not None],
                }
                for sub in self.subs
            ],
            "repartition_topics": list(self.topology.repartition_topics),
        }

    def _publish_topology(self) -> None:
        assert self._producer is not None
        fut = self._producer.send(self.topology_topic, orjson.dumps(self.topology_record()), key=TOPOLOGY_KEY)
        self._producer.flush(timeout=self.flush_timeout_s)
        exc = fut.exception()
        if exc is not None:
            raise StreamsError(f"{self.app_id}: cannot publish the topology to {self.topology_topic!r}: {exc}")

    def _internal_topic(self, admin: Admin, topic: str, partitions: int, config: dict[str, str]) -> None:
        admin.create_topic(topic, partitions=partitions, config=config, exist_ok=True)
        have = admin.partition_count(topic)
        if have != partitions:
            raise TopologyError(f"internal topic {topic!r} has {have} partitions but the topology needs "
                                f"{partitions}: delete it (and reset the app) or restore the input topics' counts")

    def _close(self) -> None:
        for client in (self._consumer, self._restorer):
            if client is not None:
                client.close()
        if self._producer is not None:
            self._producer.close(timeout=self.flush_timeout_s)
        self._consumer = self._restorer = self._producer = None
        self.tasks.clear()
        self._cache.clear()
        self._dirty.clear()
        self._futures = []

    def _send(self, topic: str, key: bytes | None, value: bytes | None, timestamp: int,
              partition: int | None = None) -> None:
        """What a task's sink calls per output record: queue it in the producer (batched,
        sent in the background), keep its future to check after the flush."""
        assert self._producer is not None
        self._futures.append(self._producer.send(topic, value, key, partition, None, timestamp))

    def _bad_record(self, exc: SerdeError, r: ConsumerRecord) -> None:
        handler = self.on_deserialize_error
        if handler == "fail":
            raise exc
        if handler == "skip":
            log.warning("%s: skipped an undecodable record: %s", self.app_id, exc.message)
            return
        assert callable(handler)
        handler(exc, r)

    def _pass(self, records: list[ConsumerRecord]) -> None:
        began = time.perf_counter()
        tasks = self.tasks
        for (topic, partition), run in itertools.groupby(records, key=lambda r: (r.topic, r.partition)):
            sub = self._sub_of.get(topic)
            task = tasks.get((sub.index, partition)) if sub is not None else None
            if task is None:  # a partition whose task went with a refused commit: read again later
                continue
            task.buffers[(topic, partition)].extend(run)
        now = time.monotonic()
        consumer = self._consumer
        assert consumer is not None and self._producer is not None

        def caught_up(tp: TP) -> bool:
            hw = consumer.highwater(*tp)
            return hw is not None and consumer.position(*tp) >= hw

        active = [task for task in tasks.values() if task.process(caught_up, self.max_task_idle_s, now)]
        for task in active:
            self._dirty[(task.sub.index, task.partition)] = task
        if not active and not self._dirty:
            return
        if active:
            self.counters.batches += 1
        if self.commit_interval_s and now - self._last_commit < self.commit_interval_s:
            if active:
                self.counters.observe_batch(time.perf_counter() - began)
            return
        try:
            self._commit_dirty()
        finally:
            self.counters.observe_batch(time.perf_counter() - began)

    def _commit_dirty(self) -> None:
        """End the batch of every task that processed records since the last commit: close
        windows and write the stores' changes to their changelogs; flush the outputs and
        changelog records and check every one was written; then commit what they processed."""
        consumer = self._consumer
        assert consumer is not None and self._producer is not None
        active = [task for tid, task in self._dirty.items() if self.tasks.get(tid) is task]
        self._dirty.clear()
        self._last_commit = time.monotonic()
        for task in active:
            for topic, key, value, src in task.end_batch():
                self._futures.append(self._producer.send(
                    topic, value, key=key, partition=task.partition, headers=[(SRC_HEADER, src_bytes(src))]
                ))
        self._producer.flush(timeout=self.flush_timeout_s)
        futures = self._futures
        self._futures = []
        for fut in futures:
            exc = fut.exception()
            if exc is not None:
                raise StreamsError(f"{self.app_id}: an output or changelog record was not written ({exc}); "
                                   "nothing of this batch is committed")
        offsets: dict[TP, int | tuple[int, str]] = {
            tp: off for task in active for tp, off in task.processed.items() if off != self._committed.get(tp)
        }
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except CommitFailedError as exc:
            log.warning("%s: commit refused (%s): every task is restored from what was committed", self.app_id, exc)
            self.tasks.clear()
            self._cache.clear()
            self._dirty.clear()
            self._assign(consumer.assignment())
            return
        self._committed.update({tp: int(off) for tp, off in offsets.items() if isinstance(off, int)})
        self.counters.commits += 1

    # ---- rebalances ----------------------------------------------------------------------------
    def _task_ids(self, tps: Iterable[TP]) -> set[TaskId]:
        return {(self._sub_of[t].index, p) for t, p in tps if t in self._sub_of}

    def _on_revoke(self, tps: list[TP]) -> None:
        for tid in self._task_ids(tps):
            task = self.tasks.pop(tid, None)
            if self._dirty.pop(tid, None) is not None:
                # processed records not committed yet (commit_interval_ms): its state is ahead of
                # the committed offsets, so it is not kept; if it comes back, it is restored
                log.info("%s: task %d_%d revoked with uncommitted processing: dropped", self.app_id, *tid)
                continue
            if task is not None:
                for buf in task.buffers.values():
                    buf.clear()
                self._cache[tid] = (task, {tp: self._committed.get(tp) for tp in task.sources})
        log.info("%s: revoked %s", self.app_id, sorted(tps))

    def _on_assign(self, tps: list[TP]) -> None:
        self._assign(tps)

    def _assign(self, tps: Iterable[TP]) -> None:
        consumer, restorer = self._consumer, self._restorer
        assert consumer is not None and restorer is not None
        new = sorted(self._task_ids(tps) - set(self.tasks))
        if not new:
            return
        source_tps = [(s.topic, p) for sub_i, p in new for s in self.subs[sub_i].sources]
        committed = consumer.committed(source_tps)
        fresh = []
        for tid in new:
            sub_i, p = tid
            cached = self._cache.pop(tid, None)
            # a kept task is still good if nobody committed anything for it since we did
            if cached is not None and all(committed.get(tp) == off for tp, off in cached[1].items()):
                task = cached[0]
                task.processed.clear()
            else:
                task = Task(self.subs[sub_i], p, self._send, self.counters, self._bad_record)
                fresh.append(task)
            self.tasks[tid] = task
        for tp in source_tps:
            c = committed.get(tp)
            if c is not None:
                consumer.seek(tp[0], tp[1], c)
                self._committed[tp] = c
        self.counters.records_restored += restore_tasks(
            fresh, restorer, committed, self.topology.table_sources, self.restore_timeout_s, self.counters
        )
        log.info("%s: assigned %s (tasks %s, %d new)", self.app_id, sorted(tps), new, len(fresh))


class StoreView:
    """Read-only access to the local partitions of one store."""

    def __init__(self, app: StreamsApp, name: str) -> None:
        self.app = app
        self.name = name

    def _stores(self) -> list[dict[Any, Any]]:
        return [t.stores[self.name].data for t in list(self.app.tasks.values()) if self.name in t.stores]

    def get(self, key: Any, default: Any = None) -> Any:
        for data in self._stores():
            if key in data:
                return data[key]
        return default

    def items(self) -> list[tuple[Any, Any]]:
        return [item for data in self._stores() for item in list(data.items())]

    def __len__(self) -> int:
        return sum(len(d) for d in self._stores())
