"""Log compaction (``cleanup.policy=compact``): keep the newest record per key.

Compaction runs off the append path in two phases:

1. ``build_plan(log)`` reads the sealed segments (never the active one; sealed
   segments are immutable, so this may run in a background thread), maps every key to
   its newest offset, and writes each segment that would shrink as
   ``<base>.log.cleaned`` (fsynced). Offsets are kept: a batch that loses records is
   re-encoded as a sparse batch with the same last offset; records without a key are
   kept; a tombstone (null value) is kept until ``delete.retention.ms`` after its
   timestamp, so consumers that are behind still see the delete. Producer state is
   kept too (what ``ProducerStateTable.rebuild`` reads after a restart): a re-encoded
   batch's base sequence moves with its base offset, so its last sequence stays; and
   the newest batch of each idempotent producer (``keep_last_of``) is never removed
   whole: at least its last record stays, as Kafka keeps that batch's header.
2. ``apply_plan(log, plan)`` runs on the log's owner thread and swaps each cleaned
   file in: rename ``.cleaned`` -> ``.swap`` and fsync the directory (the commit
   point), delete the old indexes, rename ``.swap`` -> ``.log``, fsync the directory,
   rebuild the indexes. On open, ``Log`` deletes leftover ``.cleaned`` files and
   completes any ``.swap``, so a crash at any step leaves a consistent log.

``LogCleaner`` schedules this for the log's owner (the partition worker ticks it): once
per ``cleaner_interval_ms`` when a segment was sealed since the last run, phase 1 in a
helper thread ("cleaner-<topic>-<partition>"), phase 2 at the first tick after it
finished. While a plan is being built, the owner must not delete segments (retention).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

from appliance.log.checkpoint import fsync_dir, write_durably
from appliance.log.log import Log
from appliance.log.producers import ProducerStateTable, add_sequence
from appliance.log.segment import LogSegment
from ipc.records import TIMESTAMP_LOG_APPEND, decode_batch, encode_batch

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CleanedSegment:
    base_offset: int
    source_size: int  # size of the segment the plan was built from
    cleaned_path: str
    records_removed: int
    bytes_after: int


@dataclasses.dataclass
class CleanPlan:
    segments: list[CleanedSegment]
    map_end_offset: int  # offsets below this were considered

    @property
    def records_removed(self) -> int:
        return sum(s.records_removed for s in self.segments)


def _sealed(log_: Log) -> list[LogSegment]:
    return log_.segments[:-1]


def _read_segment(seg: LogSegment) -> bytes:
    return os.pread(seg.fd, seg.size, 0) if seg.size else b""


def build_offset_map(segments: list[LogSegment]) -> dict[bytes, int]:
    """key -> newest offset over ``segments``."""
    latest: dict[bytes, int] = {}
    for seg in segments:
        for pos, h in seg.iter_batches(0, verify=True):
            batch = decode_batch(os.pread(seg.fd, h.size, pos))
            # dict.update keeps the last value per key: one C call per batch
            latest.update((k, o) for k, o in zip(batch.keys, batch.offsets, strict=True) if k is not None)
    return latest


def build_plan(log_: Log, now_ms: int, keep_last_of: Mapping[int, int] | None = None) -> CleanPlan:
    """Phase 1: write ``.cleaned`` files for the sealed segments that shrink.
    ``keep_last_of``: producer id -> last offset of its newest batch in the log (the
    owner's producer state); each such batch keeps at least its last record."""
    sealed = _sealed(log_)
    if not sealed:
        return CleanPlan([], log_.log_start_offset)
    latest = build_offset_map(sealed)
    horizon = now_ms - log_.config.delete_retention_ms
    plan = CleanPlan([], sealed[-1].next_offset)
    for seg in sealed:
        cleaned = _clean_segment(seg, latest, horizon, keep_last_of or {})
        if cleaned is not None:
            plan.segments.append(cleaned)
            log_._step("compact.cleaned_written")
    return plan


def _clean_segment(
    seg: LogSegment, latest: dict[bytes, int], horizon: int, keep_last_of: Mapping[int, int]
) -> CleanedSegment | None:
    parts: list[bytes] = []
    removed = 0
    for pos, h in seg.iter_batches(0, verify=True):
        raw = os.pread(seg.fd, h.size, pos)
        batch = decode_batch(raw)
        keep = [
            i
            for i, (k, o, v, t) in enumerate(
                zip(batch.keys, batch.offsets, batch.values, batch.timestamps, strict=True)
            )
            if k is None or (latest.get(k) == o and (v is not None or t >= horizon))
        ]
        if not keep and h.producer_id >= 0 and keep_last_of.get(h.producer_id) == h.last_offset:
            keep = [len(batch) - 1]  # its producer's newest batch: the sequence state must survive
        if len(keep) == len(batch):
            parts.append(raw)
            continue
        removed += len(batch) - len(keep)
        if not keep:
            continue
        base = batch.offsets[keep[0]]
        # sequences run with offsets inside a batch: moving the base offset moves the base
        # sequence, so the batch's last sequence (base sequence + last offset delta) stays
        base_sequence = add_sequence(h.base_sequence, base - h.base_offset) if h.base_sequence >= 0 else -1
        first_ts = batch.timestamps[keep[0]]
        headers = batch.headers
        parts.append(
            encode_batch(
                [batch.values[i] for i in keep],
                [batch.keys[i] for i in keep],
                timestamp=first_ts,
                timestamp_deltas=[batch.timestamps[i] - first_ts for i in keep],
                headers=[headers[i] for i in keep] if headers is not None else None,
                compression=h.compression,
                base_offset=base,
                leader_epoch=h.leader_epoch,
                producer_id=h.producer_id,
                producer_epoch=h.producer_epoch,
                base_sequence=base_sequence,
                offset_deltas=[batch.offsets[i] - base for i in keep],
                last_offset_delta=h.last_offset - base,
                log_append_time=bool(h.attributes & TIMESTAMP_LOG_APPEND),
            )
        )
    if not removed:
        return None
    path = seg.path + ".cleaned"
    data = b"".join(parts)
    write_durably(path, data)
    return CleanedSegment(seg.base_offset, seg.size, path, removed, len(data))


def apply_plan(log_: Log, plan: CleanPlan) -> int:
    """Phase 2: swap the cleaned files in (owner thread). Returns records removed."""
    by_base = {s.base_offset: s for s in log_.segments}
    removed = 0
    for cleaned in plan.segments:
        found = by_base.get(cleaned.base_offset)
        if found is None or found is log_.active or found.size != cleaned.source_size:
            # the segment was deleted, truncated or is active again: drop this result
            os.unlink(cleaned.cleaned_path)
            continue
        seg = found
        removed += cleaned.records_removed
        if not cleaned.bytes_after and seg is not log_.segments[0]:
            os.unlink(cleaned.cleaned_path)  # nothing left: the segment goes (the first stays, empty)
            log_.remove_compacted_segment(seg)
            continue
        swap = seg.path + ".swap"
        os.replace(cleaned.cleaned_path, swap)
        fsync_dir(log_.directory)
        log_._step("compact.swap_renamed")
        seg.close()
        for path in (seg.index.file.path, seg.time_index.file.path):
            if os.path.exists(path):
                os.unlink(path)
        log_._step("compact.indexes_deleted")
        os.replace(swap, seg.path)
        fsync_dir(log_.directory)
        log_._step("compact.swapped")
        fresh = LogSegment(log_.directory, seg.base_offset, log_.config.index_interval_bytes)
        fresh.open()
        fresh.load(verify=True, is_last=False)
        fresh.next_offset = max(fresh.next_offset, seg.next_offset)
        fresh.index.file.fsync()
        fresh.time_index.file.fsync()
        log_.segments[log_.segments.index(seg)] = fresh
        log.info(
            "compacted segment %d of %s: %d records removed, %d -> %d bytes",
            seg.base_offset,
            log_.directory,
            cleaned.records_removed,
            cleaned.source_size,
            cleaned.bytes_after,
        )
    return removed


def compact(log_: Log, now_ms: int | None = None) -> int:
    """Both phases in the caller's thread; returns the number of records removed."""
    now = int(log_.clock() * 1000) if now_ms is None else now_ms
    return apply_plan(log_, build_plan(log_, now, ProducerStateTable.rebuild(log_).last_offsets()))


class LogCleaner:
    """When to compact a ``cleanup.policy=compact`` log, driven by its owner's ``tick``.

    ``tick`` starts ``build_plan`` in a helper thread when ``interval_ms`` has passed
    and a segment was sealed beyond what was cleaned last; a later ``tick`` (on the
    owner's thread) applies the plan once the thread is done. ``wall_clock`` gives the
    ``delete.retention.ms`` horizon of tombstones.
    """

    def __init__(self, name: str, interval_ms: int, now: float, wall_clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.interval_ms = interval_ms
        self.next_run = now + interval_ms / 1000
        self.wall_clock = wall_clock
        self.cleaned_upto = -1  # the plan last applied covered offsets below this
        self._thread: threading.Thread | None = None
        self._result: CleanPlan | BaseException | None = None

    @property
    def running(self) -> bool:
        """A plan is being built, or built and not applied yet."""
        return self._thread is not None

    def set_interval(self, interval_ms: int, now: float) -> None:
        """A new interval; a shorter one applies from now, not after the old one ran out."""
        self.interval_ms = interval_ms
        self.next_run = min(self.next_run, now + interval_ms / 1000)

    def tick(self, log_: Log, producers: ProducerStateTable, now: float) -> None:
        if self._thread is not None:
            if self._thread.is_alive():
                return
            self._thread = None
            result, self._result = self._result, None
            if isinstance(result, BaseException):
                log.error("%s: compaction failed: %s", self.name, result)
            elif result is not None:
                removed = apply_plan(log_, result)
                self.cleaned_upto = result.map_end_offset
                log.info("%s: compaction removed %d records", self.name, removed)
            return
        sealed_end = log_.segments[-2].next_offset if len(log_.segments) > 1 else -1
        if now < self.next_run or sealed_end <= self.cleaned_upto:
            return
        self.next_run = now + self.interval_ms / 1000
        now_ms = int(self.wall_clock() * 1000)
        keep_last_of = producers.last_offsets()  # taken here: the table is the owner thread's

        def clean() -> None:
            try:
                self._result = build_plan(log_, now_ms, keep_last_of)
            except Exception as exc:  # noqa: BLE001 - reported on the owner's thread
                self._result = exc

        self._thread = threading.Thread(target=clean, name=f"cleaner-{self.name}", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for a plan being built (at shutdown); it is not applied."""
        if self._thread is not None:
            self._thread.join(timeout=timeout)
