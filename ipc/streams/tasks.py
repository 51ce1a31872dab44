"""A task: one partition of one sub-topology, with its stores and its input buffers.

``Task.process`` takes the task's buffered input records in timestamp order across its
source partitions (the smallest head timestamp first; each partition stays in offset
order), as Kafka Streams does, so a stream-table join sees the table as it was at the
stream record's time. When one of the task's partitions has nothing buffered, the task
waits for it, unless the consumer knows that partition is caught up (its position has
reached the high watermark of the last fetch), or it has waited ``max_task_idle_ms``
(then it goes on with what it has: "enforced processing", counted). A task with one
source partition never waits.
"""

from __future__ import annotations

import bisect
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ipc.client import ConsumerRecord
from ipc.streams.errors import SerdeError
from ipc.streams.nodes import RecordContext, SourceNode
from ipc.streams.plan import SubTopology
from ipc.streams.serdes import decode, freeze
from ipc.streams.stores import Source, Store

log = logging.getLogger(__name__)

TP = tuple[str, int]


class Sender(Protocol):
    """Writes one output or repartition record (the app's producer, or the test driver)."""

    def __call__(self, topic: str, key: bytes | None, value: bytes | None, timestamp: int,
                 partition: int | None = None) -> None: ...

MAX_BUFFERED = 10_000  # per partition: beyond this a waiting task goes on anyway
# upper bounds (s) of the batch latency histogram (sluice_streams_process_seconds); the last catches all
PROCESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class Counters:
    """The app's counters (``StreamsApp.metrics``)."""

    def __init__(self) -> None:
        self.records_processed = 0
        self.records_skipped = 0  # undecodable, skipped by the handler
        self.late_records_dropped = 0
        self.records_restored = 0
        self.enforced_processing = 0
        self.batches = 0
        self.commits = 0
        self.late_by_node: dict[str, int] = collections.Counter()
        self.restore_seconds = 0.0  # time spent restoring stores
        self.restored_by_store: dict[str, int] = collections.Counter()  # changelog records read, per store
        self.restore_remaining: dict[str, int] = collections.Counter()  # left in the restore under way
        self.process_seconds = 0.0  # batches: processing, flushing outputs and changelogs, committing
        self.process_buckets = [0] * len(PROCESS_BUCKETS)  # batches per upper bound (not cumulative)

    def observe_batch(self, seconds: float) -> None:
        self.process_seconds += seconds
        self.process_buckets[bisect.bisect_left(PROCESS_BUCKETS, seconds)] += 1

    def as_dict(self) -> dict[str, Any]:
        hidden = ("late_by_node", "restored_by_store", "restore_remaining", "process_buckets")
        out = {k: v for k, v in vars(self).items() if k not in hidden}
        out["late_by_node"] = dict(self.late_by_node)
        out["restored_by_store"] = dict(self.restored_by_store)
        out["restore_remaining"] = {k: v for k, v in self.restore_remaining.items() if v}
        return out


class Task:
    send: Sender

    def __init__(
        self,
        sub: SubTopology,
        partition: int,
        sender: Sender,
        counters: Counters,
        on_bad_record: Callable[[SerdeError, ConsumerRecord], None],
    ) -> None:
        self.sub = sub
        self.partition = partition
        self.stores: dict[str, Store] = {spec.name: Store(spec, partition) for spec in sub.stores}
        self.sources: dict[TP, SourceNode] = {(s.topic, partition): s for s in sub.sources}
        self.buffers: dict[TP, collections.deque[ConsumerRecord]] = {tp: collections.deque() for tp in self.sources}
        self.processed: dict[TP, int] = {}  # next offset after the last record processed
        self.send = sender  # what nodes call to write a record: the app's, straight (no call in between)
        self.counters = counters
        self.on_bad_record = on_bad_record
        self.blocked_since = 0.0
        self.late_in_batch: list[tuple[str, int, int, Source]] = []

    @property
    def id(self) -> str:
        return f"{self.sub.index}_{self.partition}"

    # ---- what nodes call -------------------------------------------------------------------------
    def late(self, node: str, ts: int, stream_time: int, src: Source) -> None:
        self.counters.late_records_dropped += 1
        self.counters.late_by_node[node] += 1
        self.late_in_batch.append((node, ts, stream_time, src))

    # ---- processing ------------------------------------------------------------------------------
    def buffered(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    def process(self, caught_up: Callable[[TP], bool], max_idle_s: float, now: float) -> int:
        """Process what is ready; returns the number of records processed."""
        buffers = self.buffers
        if len(buffers) == 1:
            ((tp, buf),) = buffers.items()
            n = len(buf)
            if n:
                records = list(buf)
                buf.clear()
                self._many(self.sources[tp], records)
            return n
        done = 0
        while True:
            heads = sorted((buf[0].timestamp, tp) for tp, buf in buffers.items() if buf)
            if not heads:
                self.blocked_since = 0.0
                return done
            enforced = False
            if len(heads) < len(buffers):
                empty = [tp for tp, buf in buffers.items() if not buf and not caught_up(tp)]
                if empty and not any(len(b) >= MAX_BUFFERED for b in buffers.values()):
                    if not self.blocked_since:
                        self.blocked_since = now
                    if now - self.blocked_since < max_idle_s:
                        return done
                    self.counters.enforced_processing += 1
                    enforced = True
                    log.debug("task %s: processing without %s after %.1f s idle", self.id, empty,
                              now - self.blocked_since)
            self.blocked_since = 0.0
            tp = heads[0][1]
            buf = buffers[tp]
            # the run of records that come before every other partition's head (by timestamp,
            # then topic name): processed as one, in offset order; one record when enforced
            if enforced:
                run = [buf.popleft()]
            elif len(heads) == 1:
                run = list(buf)
                buf.clear()
            else:
                next_ts, next_tp = heads[1]
                run = []
                while buf and (buf[0].timestamp < next_ts or (buf[0].timestamp == next_ts and tp < next_tp)):
                    run.append(buf.popleft())
            self._many(self.sources[tp], run)
            done += len(run)

    def _many(self, source: SourceNode, records: list[ConsumerRecord]) -> None:
        """``_one`` for a run of records of one partition, with the per-record work
        hoisted: the serdes and the source's ``process`` looked up once, the error
        messages built only for a record that fails."""
        kdes, vdes = source.key_serde.deserialize, source.value_serde.deserialize
        process = source.process
        internal = source.internal
        task_processed = self.processed
        topic, partition = tp = (records[0].topic, records[0].partition)
        done = 0
        last = -1  # the offset of the last record processed here (set in task.processed at the end)
        try:
            for r in records:
                try:
                    key = None if r.key is None else kdes(r.key)
                    value = None if r.value is None else vdes(r.value)
                except Exception:  # noqa: BLE001 - a user's deserializer may raise anything: _one reports it
                    self.counters.records_processed += done
                    done = 0
                    self._one(source, r)
                    continue
                if internal and key is not None:
                    key = freeze(key)
                offset = r.offset
                process(RecordContext(self, r.timestamp, (topic, partition, offset)), key, value)
                last = offset
                done += 1
        finally:
            self.counters.records_processed += done
            if last >= 0 and last + 1 > task_processed.get(tp, -1):
                task_processed[tp] = last + 1

    def _one(self, source: SourceNode, r: ConsumerRecord) -> None:
        src = (r.topic, r.partition, r.offset)
        try:
            try:
                key = None if r.key is None else source.key_serde.deserialize(r.key)
                value = None if r.value is None else source.value_serde.deserialize(r.value)
            except Exception:  # noqa: BLE001 - again, for the error that names the record
                key = decode(source.key_serde, r.key, f"the key of {r.topic}-{r.partition} offset {r.offset}")
                value = decode(source.value_serde, r.value, f"the value of {r.topic}-{r.partition} offset {r.offset}")
        except SerdeError as exc:
            self.on_bad_record(exc, r)  # raises to fail, or returns to skip
            self.counters.records_skipped += 1
            self.processed[(r.topic, r.partition)] = r.offset + 1
            return
        if source.internal and key is not None:
            key = freeze(key)
        source.process(RecordContext(self, r.timestamp, src), key, value)
        self.processed[(r.topic, r.partition)] = r.offset + 1
        self.counters.records_processed += 1

    def end_batch(self) -> list[tuple[str, bytes, bytes | None, Source]]:
        """Close windows (punctuate), log the late records, and drain the stores: the
        changelog records to write, as (topic, key, value, source)."""
        for node in self.sub.punctuators:
            node.punctuate(self)
        if self.late_in_batch:
            where, ts, st, src = self.late_in_batch[-1]
            log.warning(
                "task %s: dropped %d late record(s) (the last: %s at %s, timestamp %d, stream time %d)",
                self.id, len(self.late_in_batch), where, src, ts, st,
            )
            self.late_in_batch.clear()
        out = []
        for store in self.stores.values():
            topic = store.spec.changelog
            if topic is None:
                store.discard_pending()
                continue
            for key, value, src in store.drain():
                out.append((topic, key, value, src))
        return out


def monotonic() -> float:
    return time.monotonic()
