"""Idempotent producers: what each producer id has already written to one partition.

A producer with ``enable_idempotence`` stamps every batch with its producer id, its
producer epoch and the sequence number of the batch's first record (``base_sequence``;
the last record's is ``base_sequence + last_offset_delta``, wrapping after 2**31-1 as
Kafka's do). Sequences count per producer id *and partition*, so each partition keeps
its own ``ProducerStateTable``, as Kafka's ``ProducerStateManager`` does:

* the partition leader calls ``check(header)`` before it appends a producer's batch.
  ``None``: the batch is new, append it. An offset: the batch is a retry of one of
  the producer's last ``DUPLICATE_WINDOW`` batches, already in the log at that base
  offset; answer with it and write nothing. It raises ``OutOfOrderSequenceError``
  (the batch does not follow the producer's last stored sequence) or
  ``InvalidProducerEpochError`` (its epoch is older than the stored one).
* everyone who appends calls ``update(header, base_offset)`` afterwards: the leader
  with the offset it assigned, a follower copying the leader with the batch's own
  base offset, so that it recognises retries once it becomes the leader.
* ``rebuild(log)`` loads the newest producer-state snapshot at or below the recovery
  point (``snapshots.py``; ``write_snapshot`` writes one at each roll and at close,
  through ``Log.snapshot_hook``) and replays the batch headers after it (all of them
  when there is none): after the worker opens its log, and after every truncation
  (replication), so the table always describes exactly the batches in the log.
* ``evict_below(log_start_offset)`` after retention forgets the producers whose last
  batch is gone, as ``rebuild`` would.
* ``expire(now_ms, expiration_ms)`` at the worker's tick forgets the producers that
  have been idle for ``producer.id.expiration.ms`` (below).

Expiry, as Kafka's ``producer.id.expiration.ms``: a producer whose newest batch's max
timestamp (``ProducerEntry.last_timestamp``, Kafka's ``lastTimestamp``) is older than
``now_ms - expiration_ms`` is dropped, so a partition written by many short-lived
producers does not keep each one's state for as long as its batches stay in the log.
The rule reads record time, not the wall time a batch arrived, because record time is
in the log: ``rebuild`` applies the same rule against the current time after its
replay, so a restart (or a truncation) never brings an expired producer back, and the
rebuilt table agrees with the live one. The price, as in Kafka: a producer that writes
old timestamps (a replay of history with ``CreateTime``) looks idle and is expired at
the next tick; it is not refused, it only loses its duplicate detection. A batch from
an expired producer id is new, whatever its sequence (the entry starts afresh), so a
retry of a batch written before the expiry is written a second time. ``expire`` keeps a
lower bound of the entries' timestamps, so a tick with nothing to expire costs O(1).

Batches without a producer id (``producer_id == -1``) are not tracked. The table holds
no I/O of its own: ``rebuild`` reads batch headers through ``LogSegment.iter_batches``
and never decodes a body.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from appliance.log import snapshots
from appliance.log.errors import LogCorruptionError
from appliance.log.log import Log
from appliance.log.segment import TornBatch
from ipc.errors import InvalidProducerEpochError, OutOfOrderSequenceError
from ipc.records import BatchHeader

log = logging.getLogger(__name__)

NO_PRODUCER_ID = -1
NO_SEQUENCE = -1
SEQUENCE_SPACE = 2**31  # sequences run 0 .. 2**31-1, then wrap to 0
DUPLICATE_WINDOW = 5  # Kafka's: the last 5 batches of each producer are remembered


def add_sequence(sequence: int, increment: int) -> int:
    """``sequence + increment`` in the wrapping sequence space (2**31-1 + 1 == 0)."""
    return (sequence + increment) % SEQUENCE_SPACE


def last_sequence(h: BatchHeader) -> int:
    """The sequence number of the last record of ``h`` (Kafka: base + last offset delta)."""
    return add_sequence(h.base_sequence, h.last_offset_delta)


@dataclasses.dataclass(frozen=True, slots=True)
class BatchMetadata:
    """One batch of a producer that is in the log."""

    first_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int


@dataclasses.dataclass(slots=True)
class ProducerEntry:
    """A producer id's epoch and its last ``DUPLICATE_WINDOW`` batches, oldest first;
    ``last_timestamp``: the max timestamp of its newest batch (what expiry reads)."""

    producer_id: int
    epoch: int
    batches: collections.deque[BatchMetadata]
    last_timestamp: int = -1

    @property
    def last_sequence(self) -> int:
        return self.batches[-1].last_sequence

    @property
    def last_offset(self) -> int:
        return self.batches[-1].last_offset

    def copy(self) -> ProducerEntry:
        return ProducerEntry(
            self.producer_id, self.epoch, collections.deque(self.batches, DUPLICATE_WINDOW), self.last_timestamp
        )


class ProducerStateTable:
    """Producer id -> ``ProducerEntry`` for one partition. Not thread-safe: the
    partition worker owns it, like its ``Log``."""

    def __init__(self, name: str = "") -> None:
        self.name = name  # topic-partition, for error messages
        self._producers: dict[int, ProducerEntry] = {}
        # <= every entry's last_timestamp (None: no entry); lets ``expire`` skip the scan
        self._oldest_timestamp: int | None = None

    # ---- the leader's check, before it appends ----------------------------------------
    def check(self, h: BatchHeader) -> int | None:
        """None if ``h`` is new (append it); the base offset of the identical batch if
        ``h`` is a retry of one already appended (write nothing, answer that offset).

        Raises OutOfOrderSequenceError / InvalidProducerEpochError. ``h.base_offset`` is
        not used (the leader has not stamped it yet).
        """
        pid = h.producer_id
        if pid < 0:
            return None
        if h.producer_epoch < 0:
            raise InvalidProducerEpochError(f"{self._prefix()}producer {pid} sent epoch {h.producer_epoch}")
        first = h.base_sequence
        if first < 0:
            raise OutOfOrderSequenceError(
                f"{self._prefix()}producer {pid} epoch {h.producer_epoch}: expected a sequence >= 0, got {first}"
            )
        e = self._producers.get(pid)
        if e is None:
            return None  # new, or its state went with retention: any first sequence is accepted
        epoch = h.producer_epoch
        if epoch == e.epoch:
            last = last_sequence(h)
            for b in e.batches:
                if b.first_sequence == first and b.last_sequence == last:
                    return b.base_offset
            expected = add_sequence(e.last_sequence, 1)
            if first != expected:
                last_batch = e.batches[-1]
                raise OutOfOrderSequenceError(
                    f"{self._prefix()}producer {pid} epoch {epoch}: expected sequence {expected}, got {first} "
                    f"(its last batch in the log holds sequences {last_batch.first_sequence}.."
                    f"{last_batch.last_sequence} at offset {last_batch.base_offset})"
                )
            return None
        if epoch < e.epoch:
            raise InvalidProducerEpochError(
                f"{self._prefix()}producer {pid}: epoch {epoch} is older than its current epoch {e.epoch}"
            )
        if first != 0:
            raise OutOfOrderSequenceError(
                f"{self._prefix()}producer {pid}: new epoch {epoch} (was {e.epoch}) must start at sequence 0, "
                f"got {first}"
            )
        return None

    def check_all(self, headers: Sequence[BatchHeader]) -> list[int | None]:
        """``check`` for the batches of one produce request, in order, each as if the
        earlier new ones had been appended; nothing changes. Lets the leader refuse a
        request before it appends any of its batches (all or nothing)."""
        if all(h.producer_id < 0 for h in headers):
            return [None] * len(headers)
        scratch = ProducerStateTable(self.name)
        for h in headers:
            e = self._producers.get(h.producer_id)
            if e is not None and h.producer_id not in scratch._producers:
                scratch._producers[h.producer_id] = e.copy()
        out: list[int | None] = []
        for i, h in enumerate(headers):
            found = scratch.check(h)
            if found is not None and found < 0:
                raise OutOfOrderSequenceError(
                    f"{self._prefix()}producer {h.producer_id}: the request holds sequences "
                    f"{h.base_sequence}..{last_sequence(h)} twice"
                )
            out.append(found)
            if found is None:
                scratch.update(h, -1 - i)  # not appended yet: a negative marker offset
        return out

    # ---- after an append (leader or follower) ----------------------------------------
    def update(self, h: BatchHeader, base_offset: int) -> None:
        """Record ``h``, just appended at ``base_offset``. The log is the truth: a batch
        with another epoch than the stored one, or one that does not follow the stored
        last sequence, starts the producer's entry afresh. The second happens when the
        leader took the batch as a new producer's, its state having expired (or gone
        with retention): a follower whose own table has not expired it yet, and a
        ``rebuild`` replaying the batches from before the expiry, then forget those
        older batches as the leader did, instead of taking a new sequence 1 for a retry
        of the old one."""
        pid = h.producer_id
        if pid < 0 or h.base_sequence < 0:
            return
        meta = BatchMetadata(h.base_sequence, last_sequence(h), base_offset, base_offset + h.last_offset_delta)
        e = self._producers.get(pid)
        ts = h.max_timestamp
        if e is None or e.epoch != h.producer_epoch or h.base_sequence != add_sequence(e.last_sequence, 1):
            self._producers[pid] = ProducerEntry(
                pid, h.producer_epoch, collections.deque((meta,), DUPLICATE_WINDOW), ts
            )
        else:
            e.batches.append(meta)  # the deque's maxlen drops the oldest
            e.last_timestamp = ts
        if self._oldest_timestamp is None or ts < self._oldest_timestamp:
            self._oldest_timestamp = ts

    # ---- rebuilding and forgetting ----------------------------------------------------
    @classmethod
    def rebuild(cls, log: Log, now_ms: int | None = None) -> ProducerStateTable:
        """The table for exactly the batches now in ``log`` (headers only, no body is
        decoded), less the producers expired at ``now_ms`` (default: the log's wall
        clock) under the log's ``producer.id.expiration.ms``, as the live table's
        ``expire`` would have dropped them. Call it after ``Log.open`` and after every
        truncation."""
        table = cls(os.path.basename(os.path.normpath(log.directory)))
        start = table._load_snapshot(log)
        for h in _log_headers(log, start):
            table.update(h, h.base_offset)
        table.evict_below(log.segments[0].base_offset)  # as a replay of what remains
        if now_ms is None:
            now_ms = int(log.clock() * 1000)
        table.expire(now_ms, log.config.producer_id_expiration_ms)
        return table

    # ---- snapshots (``snapshots.py``) ----------------------------------------------------
    def write_snapshot(self, directory: str, offset: int) -> None:
        """Save the table as of log end offset ``offset`` (``Log.snapshot_hook``)."""
        producers = [
            [e.producer_id, e.epoch, e.last_timestamp, [dataclasses.astuple(b) for b in e.batches]]
            for e in self._producers.values()
        ]
        snapshots.write_snapshot(directory, offset, producers)

    def _load_snapshot(self, lg: Log) -> int:
        """Load the newest usable snapshot at or below the recovery point into this
        (empty) table; return its offset (0: none, replay everything)."""
        upper = min(lg.recovery_point, lg.log_end_offset)
        lower = lg.segments[0].base_offset
        for offset in reversed(snapshots.list_snapshots(lg.directory)):
            if not lower <= offset <= upper:
                continue
            producers = snapshots.read_snapshot(lg.directory, offset)
            if producers is None:
                continue
            try:
                entries = [_entry(p, offset) for p in producers]
            except (ValueError, TypeError) as exc:
                log.warning("%sproducer snapshot at %d is not usable (%s): ignoring it", self._prefix(), offset, exc)
                snapshots.delete_snapshots(lg.directory, offset.__eq__)
                continue
            self._producers = {e.producer_id: e for e in entries}
            self._oldest_timestamp = min((e.last_timestamp for e in entries), default=None)
            return offset
        return 0

    def evict_below(self, offset: int) -> int:
        """Forget producers whose last batch ends below ``offset`` (the log start offset
        after retention); return how many were removed."""
        gone = [pid for pid, e in self._producers.items() if e.last_offset < offset]
        for pid in gone:
            del self._producers[pid]
        return len(gone)

    def expire(self, now_ms: int, expiration_ms: int) -> int:
        """Forget producers whose newest batch's max timestamp is older than
        ``now_ms - expiration_ms`` (Kafka's rule); return how many were removed. O(1)
        while no entry can be that old."""
        cutoff = now_ms - expiration_ms
        if self._oldest_timestamp is None or self._oldest_timestamp >= cutoff:
            return 0
        gone = [pid for pid, e in self._producers.items() if e.last_timestamp < cutoff]
        for pid in gone:
            del self._producers[pid]
        self._oldest_timestamp = min((e.last_timestamp for e in self._producers.values()), default=None)
        if gone:
            log.debug(
                "%sexpired %d producer id(s) idle for more than %d ms (%d remain)",
                self._prefix(),
                len(gone),
                expiration_ms,
                len(self._producers),
            )
        return len(gone)

    # ---- inspection -------------------------------------------------------------------
    @property
    def producer_count(self) -> int:
        return len(self._producers)

    def get(self, producer_id: int) -> ProducerEntry | None:
        return self._producers.get(producer_id)

    def last_offsets(self) -> dict[int, int]:
        """Producer id -> last offset of its newest batch (what compaction must keep)."""
        return {pid: e.last_offset for pid, e in self._producers.items()}

    def entries(self) -> dict[int, ProducerEntry]:
        """A copy of the state (producer id -> entry), for tests and status."""
        return {pid: e.copy() for pid, e in self._producers.items()}

    def _prefix(self) -> str:
        return f"{self.name}: " if self.name else ""


def _entry(p: list[Any], below: int) -> ProducerEntry:
    """A snapshot's producer, checked: ValueError unless every batch lies below ``below``."""
    pid, epoch, ts, batches = p
    metas = [BatchMetadata(*(int(x) for x in b)) for b in batches]
    if not metas or not all(isinstance(x, int) for x in (pid, epoch, ts)) or len(metas) > DUPLICATE_WINDOW:
        raise ValueError(f"malformed entry {p!r}")
    if any(not 0 <= m.base_offset <= m.last_offset < below for m in metas):
        raise ValueError(f"producer {pid} has a batch at or past the snapshot's offset {below}")
    return ProducerEntry(pid, epoch, collections.deque(metas, DUPLICATE_WINDOW), ts)


def _log_headers(log: Log, start: int = 0) -> Iterator[BatchHeader]:
    """Every batch header of ``log`` from offset ``start`` on, oldest first, read with
    the segments' own scan."""
    for seg in log.segments:
        if seg.next_offset <= start:  # every batch of it is below ``start``
            continue
        try:
            for _pos, h in seg.iter_batches(0, verify=False):
                if h.base_offset >= start:
                    yield h
        except TornBatch as exc:
            raise LogCorruptionError(seg.path, exc.position, exc.reason) from None
