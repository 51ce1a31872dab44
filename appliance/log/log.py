"""The partition log: an ordered list of segments with one writer.

``Log.open`` recovers the directory (see ``docs/storage.md``); ``append`` validates a
producer's batch (unless its caller did and passes the header), stamps base offset and
leader epoch and writes it; ``read`` returns whole batches sliced from the segment
files. Durability follows ``LogConfig.fsync``; ``reconfigure`` takes a live change of
the topic's configuration.

At about 600 lines this module is longer than the house's 500: it is the one class
behind a partition's storage, and every method keeps the same invariants (the segment
list and its base offsets, the log start offset, the recovery point); retention,
``advance_log_start`` (DeleteRecords) and truncation are a few lines each on top of
those, and splitting them out would spread the invariants over modules.

The log start offset is the first segment's base offset, or higher once
``advance_log_start`` moved it into a segment: that is saved in
``log-start-offset-checkpoint`` before any segment goes, and opening the log takes the
larger of the two (a crash in between leaves segments wholly below it, deleted then).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import time
from collections.abc import Callable

from appliance.log import snapshots
from appliance.log.checkpoint import LeaderEpochCache, OffsetCheckpoint, fsync_dir
from appliance.log.config import CleanupPolicy, FsyncPolicy, LogConfig
from appliance.log.flusher import BackgroundFlusher
from appliance.log.segment import LogSegment, segment_name
from ipc.errors import CorruptRecordError, MessageTooLargeError, OffsetOutOfRangeError
from ipc.private import make_private_dir, open_private
from ipc.records import (
    DEFAULT_MAX_UNCOMPRESSED,
    PREFIX,
    BatchHeader,
    check_batch,
    check_producible,
    stamp_prefix,
    validate_batch,
)

log = logging.getLogger(__name__)

RECOVERY_POINT_FILE = "recovery-point-offset-checkpoint"
LEADER_EPOCH_FILE = "leader-epoch-checkpoint"
LOG_START_FILE = "log-start-offset-checkpoint"
CLEAN_SHUTDOWN_FILE = ".clean-shutdown"
RECOVERY_CHECKPOINT_INTERVAL_S = 10.0

StepHook = Callable[[str], None]


@dataclasses.dataclass(frozen=True, slots=True)
class AppendResult:
    base_offset: int
    last_offset: int
    max_timestamp: int
    size: int
    prefix: bytes = dataclasses.field(default=b"", compare=False)  # the stamped 21 bytes written first


class Log:
    """One partition's log. Not thread-safe: one owner calls it (the partition worker)."""

    def __init__(
        self,
        directory: str,
        config: LogConfig | None = None,
        clock: Callable[[], float] = time.time,
        step_hook: StepHook | None = None,
        background_flush: bool = False,
    ) -> None:
        self.directory = directory
        self.config = config or LogConfig()
        self.clock = clock
        self.step_hook = step_hook  # tests crash the process at named steps
        self.segments: list[LogSegment] = []
        self._bases: list[int] = []
        self.log_start_offset = 0
        self.recovery_point = 0
        self._recovery_ckpt = OffsetCheckpoint(os.path.join(directory, RECOVERY_POINT_FILE))
        self._start_ckpt = OffsetCheckpoint(os.path.join(directory, LOG_START_FILE))
        self.leader_epochs: LeaderEpochCache | None = None
        self._unflushed_since: float | None = None
        self._last_checkpoint = 0.0
        self.recovered_bytes_truncated = 0
        self.was_clean_shutdown = False
        # writes the producer-state snapshot at an offset (roll, close): the table's owner
        self.snapshot_hook: Callable[[int], None] | None = None
        # fsync=interval flushes in a helper thread (the owner's loop does not wait)
        self._flusher = BackgroundFlusher(os.path.basename(directory)) if background_flush else None

    # ---- life cycle ---------------------------------------------------------------
    @classmethod
    def open(
        cls,
        directory: str,
        config: LogConfig | None = None,
        clock: Callable[[], float] = time.time,
        step_hook: StepHook | None = None,
        background_flush: bool = False,
    ) -> Log:
        self = cls(directory, config, clock, step_hook, background_flush)
        try:
            self._load()
        except BaseException:
            if self._flusher is not None:
                self._flusher.close()
            for seg in self.segments:  # the caller may try again (a full disk): no leak
                seg.close()
            raise
        return self

    def _step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    def _load(self) -> None:
        make_private_dir(self.directory)
        self._finish_interrupted_operations()
        bases = sorted(
            int(name[:-4])
            for name in os.listdir(self.directory)
            if name.endswith(".log") and name[:-4].isdigit() and len(name) == 24
        )
        clean_marker = os.path.join(self.directory, CLEAN_SHUTDOWN_FILE)
        self.was_clean_shutdown = os.path.exists(clean_marker)
        self.recovery_point = self._recovery_ckpt.read(0)
        if not bases:
            # empty: a new log, or one whose segments were all deleted (truncate_fully
            # checkpoints its new start offset first)
            bases = [self.recovery_point]
            seg = LogSegment(self.directory, bases[0], self.config.index_interval_bytes)
            seg.open(create=True)
            fsync_dir(self.directory)
            self.segments = [seg]
        else:
            for i, base in enumerate(bases):
                seg = LogSegment(self.directory, base, self.config.index_interval_bytes)
                seg.open()
                is_last = i == len(bases) - 1
                next_base = bases[i + 1] if not is_last else None
                # A segment needs recovery when data past the recovery point may be in it.
                verify = not self.was_clean_shutdown and (next_base is None or next_base > self.recovery_point)
                try:
                    self.recovered_bytes_truncated += seg.load(verify=verify, is_last=is_last)
                except BaseException:
                    seg.close()
                    for s in self.segments:
                        s.close()
                    raise
                self.segments.append(seg)
        # a sealed segment's offsets run up to the next one's base, also where compaction
        # removed its last batches (or all of them): a read there goes on to the next one
        for seg, following in zip(self.segments, self.segments[1:], strict=False):
            seg.next_offset = max(seg.next_offset, following.base_offset)
        self._bases = [s.base_offset for s in self.segments]
        self.log_start_offset = self.segments[0].base_offset
        self.leader_epochs = LeaderEpochCache(os.path.join(self.directory, LEADER_EPOCH_FILE))
        self.leader_epochs.truncate_from_end(self.log_end_offset)
        saved_start = self._start_ckpt.read(0)
        if saved_start > self.log_end_offset:  # the tail past it was lost in a crash
            log.warning(
                "%s: log start offset %d is past the recovered end %d: starting empty there",
                self.directory,
                saved_start,
                self.log_end_offset,
            )
            self.truncate_fully_and_start_at(saved_start)
        elif saved_start > self.log_start_offset:
            self.log_start_offset = saved_start
            self._delete_segments_below_start()  # a crash after the checkpoint left them
        first, end = self.segments[0].base_offset, self.log_end_offset
        snapshots.delete_snapshots(self.directory, lambda o: o < first or o > end)  # a lost tail's
        if self.was_clean_shutdown:
            os.unlink(clean_marker)
            fsync_dir(self.directory)
        else:
            self.active.fsync()
        self.recovery_point = self.log_end_offset
        self._recovery_ckpt.write(self.recovery_point)
        self._last_checkpoint = self.clock()
        log.info(
            "opened log %s: start %d, end %d, %d segment(s)%s",
            self.directory,
            self.log_start_offset,
            self.log_end_offset,
            len(self.segments),
            "" if self.was_clean_shutdown else f", recovered ({self.recovered_bytes_truncated} bytes truncated)",
        )

    def _finish_interrupted_operations(self) -> None:
        """Complete or roll back compaction swaps and deletions cut short by a crash."""
        names = os.listdir(self.directory)
        changed = False
        for name in names:
            path = os.path.join(self.directory, name)
            if name.endswith((".cleaned", ".tmp", ".deleted")):
                os.unlink(path)
                changed = True
        for name in names:
            if name.endswith(".log.swap"):
                stem = os.path.join(self.directory, name[: -len(".log.swap")])
                for ext in (".index", ".timeindex"):
                    if os.path.exists(stem + ext):
                        os.unlink(stem + ext)
                os.replace(os.path.join(self.directory, name), stem + ".log")
                log.warning("completed an interrupted compaction swap of %s.log", stem)
                changed = True
        logs = {n[:-4] for n in os.listdir(self.directory) if n.endswith(".log")}
        for name in os.listdir(self.directory):
            stem, ext = os.path.splitext(name)
            if ext in (".index", ".timeindex") and stem not in logs:
                os.unlink(os.path.join(self.directory, name))  # orphan of a deleted segment
                changed = True
        if changed:
            fsync_dir(self.directory)

    def close(self) -> None:
        """Flush, fsync, write the recovery point and the clean-shutdown marker. After a
        failed background flush it raises instead: no recovery point, no marker, so the
        next start verifies what may have been lost."""
        if self._flusher is not None:
            self._flusher.close()  # finishes a flush it started
            self._flusher.check()
        if not self.segments:
            return
        self.active.seal()
        self.recovery_point = self.log_end_offset
        self._recovery_ckpt.write(self.recovery_point)
        self._snapshot(self.log_end_offset)
        marker = os.path.join(self.directory, CLEAN_SHUTDOWN_FILE)
        fd = open_private(marker, os.O_WRONLY | os.O_CREAT)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.directory)
        for seg in self.segments:
            seg.close()
        self.segments = []

    def reconfigure(self, config: LogConfig) -> None:
        """A live change of the topic's configuration: later appends, rolls, flushes,
        retention and compaction follow it."""
        self.config = config

    # ---- offsets --------------------------------------------------------------------
    @property
    def active(self) -> LogSegment:
        return self.segments[-1]

    @property
    def log_end_offset(self) -> int:
        return self.active.next_offset

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    # ---- append ---------------------------------------------------------------------
    def append(
        self,
        batch: bytes | bytearray | memoryview,
        leader_epoch: int = -1,
        *,
        validate: bool = True,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
        header: BatchHeader | None = None,
    ) -> AppendResult:
        """Append a producer's batch as leader: check it, assign offsets, write it.

        Raises CorruptRecordError / MessageTooLargeError without writing anything.
        ``header``: the batch was checked already (``validate_batch``,
        ``check_producible`` and ``max.message.bytes``, as the partition worker's produce
        handler does) and this is the header that returned; nothing is checked again.
        """
        h = header if header is not None else self._check(batch, validate, max_uncompressed)
        base = self.log_end_offset
        prefix = stamp_prefix(batch, h, base, leader_epoch)
        return self._write(prefix, memoryview(batch)[len(prefix) :], h, base, leader_epoch)

    def _check(self, batch: bytes | bytearray | memoryview, validate: bool, max_uncompressed: int) -> BatchHeader:
        """``append``'s checks of a batch its caller did not check."""
        if len(batch) > self.config.max_message_bytes:
            raise MessageTooLargeError(
                f"batch of {len(batch)} bytes exceeds max.message.bytes={self.config.max_message_bytes}"
            )
        h = validate_batch(batch, max_uncompressed=max_uncompressed) if validate else check_batch(batch)
        if h.size != len(batch):
            raise CorruptRecordError(f"frame holds {len(batch)} bytes but the batch is {h.size}")
        return check_producible(h)

    def append_replica(self, batch: bytes | bytearray | memoryview) -> AppendResult:
        """Append a batch that already carries its offsets (a follower copying its leader)."""
        h = check_batch(batch)
        if h.size != len(batch):
            raise CorruptRecordError(f"frame holds {len(batch)} bytes but the batch is {h.size}")
        if h.base_offset < self.log_end_offset:
            raise CorruptRecordError(
                f"replica batch at offset {h.base_offset} is below the log end offset {self.log_end_offset}"
            )
        prefix = PREFIX.pack(h.base_offset, h.batch_length, h.leader_epoch, h.magic, h.crc)
        return self._write(prefix, memoryview(batch)[len(prefix) :], h, h.base_offset, h.leader_epoch)

    def _write(self, prefix: bytes, rest: memoryview, h: BatchHeader, base: int, leader_epoch: int) -> AppendResult:
        size = len(prefix) + len(rest)
        if self._should_roll(size, h.max_timestamp):
            self.roll()
        epochs = self.leader_epochs
        assert epochs is not None
        # a truncation the epoch file does not show yet must be on disk before the log
        # grows past it again (OSError, nothing written, if it still cannot be)
        epochs.save_unsaved()
        if leader_epoch > epochs.latest_epoch:
            epochs.assign(leader_epoch, base)
        self.active.append(prefix, rest, h, base)
        now = self.clock()
        policy = self.config.fsync
        if policy is FsyncPolicy.ALWAYS:
            os.fdatasync(self.active.fd)
        elif self._unflushed_since is None:
            self._unflushed_since = now
        if policy is FsyncPolicy.INTERVAL:
            self.maybe_flush(now)
        return AppendResult(base, base + h.last_offset_delta, h.max_timestamp, size, prefix)

    def _should_roll(self, incoming: int, incoming_max_ts: int) -> bool:
        """Roll by size, or by age as Kafka does: the incoming batch's max timestamp is
        ``segment.ms`` past the first batch's (so backdated data cannot roll per append)."""
        seg = self.active
        if not seg.size:
            return False
        if seg.size + incoming > self.config.segment_bytes:
            return True
        return seg.first_timestamp >= 0 and incoming_max_ts - seg.first_timestamp >= self.config.segment_ms

    def roll(self) -> LogSegment:
        """Seal the active segment (fsync it, checkpoint) and start a new one at the LEO.

        An empty active segment is kept as it is (a second one would share its name)."""
        old = self.active
        if not old.size:
            return old
        if self._flusher is not None:
            self._flusher.check()  # a failed flush: the recovery point below would be a lie
        old.seal()
        self._unflushed_since = None
        self.recovery_point = self.log_end_offset
        self._recovery_ckpt.write(self.recovery_point)
        seg = LogSegment(self.directory, self.log_end_offset, self.config.index_interval_bytes)
        seg.open(create=True)
        fsync_dir(self.directory)
        self.segments.append(seg)
        self._bases.append(seg.base_offset)
        log.info("rolled %s at offset %d", self.directory, seg.base_offset)
        self._snapshot(seg.base_offset)
        return seg

    def _snapshot(self, offset: int) -> None:
        """Have the producer table saved as of ``offset`` (``snapshots.py``); one that
        cannot be written (a full disk) only makes the next open replay more headers."""
        if self.snapshot_hook is None:
            return
        try:
            self.snapshot_hook(offset)
        except OSError as exc:
            log.warning("%s: no producer snapshot at %d: %s", self.directory, offset, exc)

    # ---- durability -------------------------------------------------------------------
    def flush(self) -> None:
        """fsync the active segment now."""
        os.fdatasync(self.active.fd)
        self._unflushed_since = None

    def maybe_flush(self, now: float | None = None) -> None:
        """fsync if the interval policy's deadline has passed; call from the owner's tick.
        With ``background_flush`` the fsync starts in the helper thread and this returns
        at once; a failed background fsync is raised here, by the next call."""
        now = self.clock() if now is None else now
        flusher = self._flusher
        if flusher is not None:
            flusher.check()
        if (
            self._unflushed_since is not None
            and self.config.fsync is FsyncPolicy.INTERVAL
            and (now - self._unflushed_since) * 1000 >= self.config.fsync_interval_ms
        ):
            if flusher is not None:
                flusher.submit(self.active.fd)
                self._unflushed_since = None
            else:
                self.flush()
        if now - self._last_checkpoint >= RECOVERY_CHECKPOINT_INTERVAL_S:
            self.checkpoint_recovery_point()

    def checkpoint_recovery_point(self) -> None:
        if self._flusher is not None:
            self._flusher.wait()  # what it was asked to flush is on disk before the promise
            self._flusher.check()
        if self._unflushed_since is not None:
            self.flush()
        self.active.index.file.fsync()
        self.active.time_index.file.fsync()
        self.recovery_point = self.log_end_offset
        self._recovery_ckpt.write(self.recovery_point)
        self._last_checkpoint = self.clock()

    def next_flush_deadline(self) -> float | None:
        """Clock time by which ``maybe_flush`` must run, or None if nothing is pending."""
        if self._unflushed_since is None or self.config.fsync is not FsyncPolicy.INTERVAL:
            return None
        return self._unflushed_since + self.config.fsync_interval_ms / 1000

    # ---- read -----------------------------------------------------------------------
    def _segment_index(self, offset: int) -> int:
        return max(bisect.bisect_right(self._bases, offset) - 1, 0)

    def read(
        self, offset: int, max_bytes: int = 1024 * 1024, max_offset: int | None = None, min_one: bool = True
    ) -> bytes:
        """Whole batches starting with the one holding ``offset``.

        At most ``max_bytes`` unless the first batch alone is larger and ``min_one`` is
        set; never a batch whose base offset is >= ``max_offset`` (the high watermark).
        """
        end = self.log_end_offset
        if offset < self.log_start_offset or offset > end:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside the log [{self.log_start_offset}, {end}] of {self.directory}"
            )
        limit = end if max_offset is None else min(max_offset, end)
        i = self._segment_index(offset)
        while offset < limit:
            seg = self.segments[i]
            data = seg.read(offset, max_bytes, limit, min_one)
            if data or seg is self.active:
                return data
            # compaction removed the rest of this sealed segment: go on with the next one
            offset = max(offset, seg.next_offset)
            i += 1
        return b""

    def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record with timestamp >= ``timestamp``. One
        below the log start offset (``advance_log_start`` left it in the first segment)
        answers the log start offset, with the timestamp of the record found."""
        for seg in self.segments:
            if seg.max_timestamp >= timestamp:
                found = seg.find_time(timestamp)
                if found is not None:
                    return (self.log_start_offset, found[1]) if found[0] < self.log_start_offset else found
        return None

    # ---- truncation -------------------------------------------------------------------
    def truncate_to(self, offset: int) -> int:
        """Remove every batch holding an offset >= ``offset``; return the new LEO.

        A batch that straddles ``offset`` is removed whole, so the new log end offset can
        be below ``offset`` (replication truncates at batch boundaries). Leader epochs
        that begin at or after the new end hold no record and are forgotten too, also
        when no batch is removed (a replica that led without writing).
        """
        if offset >= self.log_end_offset:
            assert self.leader_epochs is not None
            self.leader_epochs.truncate_from_end(offset)
            return self.log_end_offset
        if offset <= self.log_start_offset:
            return self.truncate_fully_and_start_at(offset if offset >= 0 else 0, keep_start=True)
        # first: a snapshot past the end must not outlive a crash in the middle
        snapshots.delete_snapshots(self.directory, lambda o: o > offset)
        while len(self.segments) > 1 and self.active.base_offset >= offset:
            self._delete_segment(self.segments.pop())
            self._bases.pop()
        self.active.truncate_to(offset)
        self.active.fsync()
        assert self.leader_epochs is not None
        self.leader_epochs.truncate_from_end(self.log_end_offset)
        self.recovery_point = min(self.recovery_point, self.log_end_offset)
        try:
            self._recovery_ckpt.write(self.recovery_point)
        except OSError as exc:
            # a full disk: the file keeps a recovery point past the new end, which is
            # safe (recovery always verifies the last segment, and a roll, which seals
            # one, writes the checkpoint first); the next checkpoint writes this one
            log.warning("truncated %s, but the recovery point is not updated: %s", self.directory, exc)
        log.info("truncated %s to offset %d", self.directory, self.log_end_offset)
        return self.log_end_offset

    def truncate_fully_and_start_at(self, offset: int, keep_start: bool = False) -> int:
        """Delete every segment and start empty at ``offset``.

        The new start is checkpointed first (recovery point and log start) and segments go
        newest first, so a crash leaves either a prefix of the old log or an empty log at
        the new start."""
        start = min(offset, self.log_start_offset) if keep_start else offset
        snapshots.delete_snapshots(self.directory, lambda o: True)
        self.recovery_point = start
        self._recovery_ckpt.write(start)
        self._start_ckpt.write(start)
        for seg in reversed(self.segments):
            self._delete_segment(seg)
        seg = LogSegment(self.directory, start, self.config.index_interval_bytes)
        seg.open(create=True)
        fsync_dir(self.directory)
        self.segments = [seg]
        self._bases = [start]
        self.log_start_offset = start
        assert self.leader_epochs is not None
        self.leader_epochs.truncate_from_end(start)
        self.recovery_point = start
        self._recovery_ckpt.write(start)
        return start

    def _delete_segment(self, seg: LogSegment) -> None:
        """Crash-safe removal: rename every file to ``.deleted``, fsync the dir, unlink."""
        seg.close()
        renamed = []
        for path in seg.file_paths():
            if os.path.exists(path):
                os.replace(path, path + ".deleted")
                renamed.append(path + ".deleted")
                self._step("delete.renamed")
        fsync_dir(self.directory)
        self._step("delete.dir_synced")
        for path in renamed:
            os.unlink(path)

    def remove_compacted_segment(self, seg: LogSegment) -> None:
        """Delete a sealed segment none of whose records survive compaction; its offsets
        join the previous segment's range. The first segment is never removed this way:
        compaction does not move the log start offset (as in Kafka), so a reader from the
        log start still gets every record that remains."""
        i = self.segments.index(seg)
        if seg is self.active or i == 0:
            raise ValueError(f"segment {seg.path} is the first or the active one: compaction keeps it")
        del self.segments[i], self._bases[i]
        prev = self.segments[i - 1]
        prev.next_offset = max(prev.next_offset, self.segments[i].base_offset)
        self._delete_segment(seg)
        low, high = seg.base_offset, self.segments[i].base_offset
        snapshots.delete_snapshots(self.directory, lambda o: low <= o < high)
        log.info(
            "removed segment %s of %s: compaction left nothing in it",
            segment_name(seg.base_offset),
            self.directory,
        )

    # ---- the log start offset (DeleteRecords) ---------------------------------------------
    def advance_log_start(self, offset: int) -> int:
        """Make ``offset`` the log start offset (Kafka's DeleteRecords): reads below it
        fail with OFFSET_OUT_OF_RANGE and ``list_offsets`` earliest answers it. Never moves
        it back; ``offset`` past the log end offset raises OffsetOutOfRangeError (the
        leader bounds it by its high watermark first). Saved durably before anything else
        changes; then the segments wholly below it are deleted (crash-safe, as retention
        deletes). A batch that straddles it stays whole, as in Kafka: a fetch at the new
        start returns it, and the client skips the records below its fetch offset.
        Returns the log start offset."""
        if offset > self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"cannot start {self.directory} at {offset}: past its log end offset {self.log_end_offset}"
            )
        if offset <= self.log_start_offset:
            return self.log_start_offset
        self._start_ckpt.write(offset)  # raises OSError (a full disk): nothing changed
        self.log_start_offset = offset
        deleted = self._delete_segments_below_start()
        log.info("%s: log start offset now %d (%d segment(s) deleted)", self.directory, offset, deleted)
        return offset

    def _delete_segments_below_start(self) -> int:
        """Delete the sealed segments whose every offset is below the log start offset."""
        deleted = 0
        while len(self.segments) > 1 and self.segments[1].base_offset <= self.log_start_offset:
            seg = self.segments.pop(0)
            self._bases.pop(0)
            self._delete_segment(seg)
            deleted += 1
        if deleted:
            first = self.segments[0].base_offset
            snapshots.delete_snapshots(self.directory, lambda o: o < first)
        return deleted

    # ---- retention ----------------------------------------------------------------------
    def apply_retention(self, now_ms: int | None = None) -> int:
        """Delete sealed segments past retention.ms / retention.bytes; return how many."""
        if self.config.cleanup_policy is not CleanupPolicy.DELETE:
            return 0
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        cfg = self.config
        excess = self.size_bytes - cfg.retention_bytes if cfg.retention_bytes >= 0 else 0
        deleted = 0
        while len(self.segments) > 1:
            seg = self.segments[0]
            expired = cfg.retention_ms >= 0 and 0 <= seg.max_timestamp < now_ms - cfg.retention_ms
            too_big = excess > 0 and seg.size <= excess
            if not (expired or too_big):
                break
            self.segments.pop(0)
            self._bases.pop(0)
            # never back: advance_log_start may have moved it into the next segment already
            self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
            self._step("retention.selected")
            self._delete_segment(seg)
            excess -= seg.size
            deleted += 1
            log.info(
                "retention deleted segment %s of %s (%s); log start offset now %d",
                segment_name(seg.base_offset),
                self.directory,
                "time" if expired else "size",
                self.log_start_offset,
            )
        if deleted:
            first = self.segments[0].base_offset
            snapshots.delete_snapshots(self.directory, lambda o: o < first)
        return deleted

    # ---- checks -------------------------------------------------------------------------
    def verify(self) -> None:
        """Scan every batch of every segment with its CRC; raise LogCorruptionError."""
        from appliance.log.errors import LogCorruptionError
        from appliance.log.segment import TornBatch

        for seg in self.segments:
            try:
                for _ in seg.iter_batches(0, verify=True):
                    pass
            except TornBatch as exc:
                raise LogCorruptionError(seg.path, exc.position, exc.reason) from None
