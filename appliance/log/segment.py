"""One segment of a partition log: ``<base offset:020d>.log`` plus its two indexes.

The segment owns its file descriptors. Batches are appended whole (``os.writev`` of a
stamped 21-byte prefix and the untouched rest of the producer's bytes) and read back
whole (``os.pread``), never re-encoded.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator

from appliance.log.errors import LogCorruptionError
from appliance.log.index import IndexError_, OffsetIndex, TimeIndex
from ipc.errors import CorruptRecordError
from ipc.private import open_private
from ipc.records import HEADER_SIZE, BatchHeader, check_batch, decode_batch, read_header

log = logging.getLogger(__name__)

SCAN_CHUNK = 1024 * 1024


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class TornBatch(Exception):
    """Internal: the scan met an invalid batch at ``position``."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(reason)
        self.position = position
        self.reason = reason


class LogSegment:
    def __init__(self, directory: str, base_offset: int, index_interval_bytes: int = 4096) -> None:
        self.directory = directory
        self.base_offset = base_offset
        stem = os.path.join(directory, segment_name(base_offset))
        self.path = stem + ".log"
        self.index = OffsetIndex(stem + ".index", base_offset)
        self.time_index = TimeIndex(stem + ".timeindex", base_offset)
        self.index_interval_bytes = index_interval_bytes
        self.fd = -1
        self.size = 0
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.first_timestamp = -1  # of the first batch: drives roll by segment.ms
        self._bytes_since_entry = 0

    # ---- open / create -------------------------------------------------------------
    def open(self, create: bool = False) -> None:
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
        self.fd = open_private(self.path, flags)
        self.size = os.fstat(self.fd).st_size

    def load(self, verify: bool, is_last: bool) -> int:
        """Establish next offset and indexes; return how many bytes were truncated.

        ``verify`` scans every batch with its CRC and rebuilds the indexes (recovery);
        a torn or corrupt batch truncates the file there if ``is_last`` and raises
        LogCorruptionError otherwise. Without ``verify`` the indexes are loaded and
        sanity-checked (rebuilt if they fail) and only the tail after the last index
        entry is scanned.
        """
        if verify:
            return self._recover(is_last)
        try:
            self.index.load(self.size)
        except IndexError_ as exc:
            log.warning("rebuilding index of %s: %s", self.path, exc)
            return self._recover(is_last)
        last_offset, last_pos = self.index.lookup(2**62)
        first = self.header_or_none(last_pos)
        if self.size and (first is None or first.base_offset != last_offset):
            log.warning("rebuilding indexes of %s: last entry does not point at batch %d", self.path, last_offset)
            return self._recover(is_last)
        try:
            self._scan_tail(last_pos, last_offset)
        except LogCorruptionError as exc:
            log.warning("rescanning %s: %s", self.path, exc)
            return self._recover(is_last)
        try:
            self.time_index.load(self.next_offset)
        except IndexError_ as exc:
            log.warning("rebuilding time index of %s: %s", self.path, exc)
            return self._recover(is_last)
        self.max_timestamp = max(self.max_timestamp, self.time_index.max_timestamp)
        return 0

    def _scan_tail(self, position: int, offset: int) -> None:
        try:
            for pos, h in self.iter_batches(position, verify=False):
                if pos == 0:
                    self.first_timestamp = h.max_timestamp
                self.next_offset = h.next_offset
                self.max_timestamp = max(self.max_timestamp, h.max_timestamp)
        except TornBatch as exc:
            raise LogCorruptionError(self.path, exc.position, exc.reason) from None
        if self.first_timestamp < 0 and self.size:
            h0 = self.header_at(0)
            self.first_timestamp = h0.max_timestamp if h0 else -1

    def _recover(self, is_last: bool) -> int:
        offsets: list[tuple[int, int]] = []
        times: list[tuple[int, int]] = []
        since = self.index_interval_bytes
        self.next_offset = self.base_offset
        self.max_timestamp = -1
        self.first_timestamp = -1
        valid_end = 0
        try:
            for pos, h in self.iter_batches(0, verify=True):
                if h.base_offset < self.next_offset:
                    raise TornBatch(pos, f"offset {h.base_offset} goes backwards (expected >= {self.next_offset})")
                if pos == 0:
                    self.first_timestamp = h.max_timestamp
                self.max_timestamp = max(self.max_timestamp, h.max_timestamp)
                if since >= self.index_interval_bytes:
                    offsets.append((h.base_offset, pos))
                    if not times or self.max_timestamp > times[-1][0]:
                        times.append((self.max_timestamp, h.base_offset))
                    since = 0
                since += h.size
                self.next_offset = h.next_offset
                valid_end = pos + h.size
        except TornBatch as exc:
            if not is_last:
                raise LogCorruptionError(self.path, exc.position, exc.reason) from None
            log.warning(
                "truncating torn tail of %s at byte %d (%d bytes dropped): %s",
                self.path,
                exc.position,
                self.size - exc.position,
                exc.reason,
            )
        truncated = self.size - valid_end
        if truncated:
            os.ftruncate(self.fd, valid_end)
            os.fsync(self.fd)
            self.size = valid_end
        self.index.reset(offsets)
        self.time_index.reset(times)
        self._bytes_since_entry = since
        return truncated

    # ---- scanning ---------------------------------------------------------------
    def iter_batches(self, position: int, verify: bool, end: int | None = None) -> Iterator[tuple[int, BatchHeader]]:
        """Yield (position, header) of each batch from ``position``; raise TornBatch."""
        limit = self.size if end is None else min(end, self.size)
        pos = position
        while pos < limit:
            want = min(max(SCAN_CHUNK, HEADER_SIZE), limit - pos)
            buf = os.pread(self.fd, want, pos)
            at = 0
            while at < len(buf):
                try:
                    h = read_header(buf, at)
                except CorruptRecordError as exc:
                    if len(buf) - at < HEADER_SIZE and pos + len(buf) < limit:
                        break  # header straddles the chunk: read on
                    raise TornBatch(pos + at, exc.message) from None
                if pos + at + h.size > limit:
                    raise TornBatch(pos + at, f"batch of {h.size} bytes runs past the end of the file ({limit})")
                if at + h.size > len(buf):
                    if at == 0:  # one batch bigger than the chunk
                        buf = os.pread(self.fd, h.size, pos)
                    else:
                        break
                if verify:
                    try:
                        check_batch(buf, at)
                    except CorruptRecordError as exc:
                        raise TornBatch(pos + at, exc.message) from None
                yield pos + at, h
                at += h.size
            if at == 0:
                raise TornBatch(pos, "no progress while scanning")  # pragma: no cover
            pos += at

    def header_or_none(self, position: int) -> BatchHeader | None:
        """The header at ``position``, or None if there is none or it is damaged."""
        try:
            return self.header_at(position)
        except LogCorruptionError:
            return None

    def header_at(self, position: int) -> BatchHeader | None:
        if position >= self.size:
            return None
        buf = os.pread(self.fd, HEADER_SIZE, position)
        try:
            return read_header(buf)
        except CorruptRecordError as exc:
            raise LogCorruptionError(self.path, position, exc.message) from None

    def find(self, offset: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the first batch whose last offset >= ``offset``."""
        _, pos = self.index.lookup(offset)
        try:
            for p, h in self.iter_batches(pos, verify=True):
                if h.last_offset >= offset:
                    return p, h
        except TornBatch as exc:
            raise LogCorruptionError(self.path, exc.position, exc.reason) from None
        return None

    def find_time(self, timestamp: int) -> tuple[int, int] | None:
        """(offset, record timestamp) of the first record with timestamp >= ``timestamp``."""
        start = self.time_index.lookup(timestamp)
        _, pos = self.index.lookup(start)
        try:
            for p, h in self.iter_batches(pos, verify=True):
                if h.max_timestamp >= timestamp:
                    batch = decode_batch(os.pread(self.fd, h.size, p))
                    for off, ts in zip(batch.offsets, batch.timestamps, strict=True):
                        if ts >= timestamp:
                            return off, ts
        except (TornBatch, CorruptRecordError) as exc:
            position = exc.position if isinstance(exc, TornBatch) else 0
            raise LogCorruptionError(self.path, position, str(exc)) from None
        return None

    def read(self, offset: int, max_bytes: int, max_offset: int, min_one: bool) -> bytes:
        """Whole batches from the one holding ``offset``: at most ``max_bytes`` (but at
        least one batch if ``min_one``), only batches whose base offset is below
        ``max_offset``. Every batch scanned is CRC-checked and its offsets must follow
        the index entry and each other, so a damaged header is never trusted: damage
        raises LogCorruptionError naming the file and byte position."""
        index_offset, pos = self.index.lookup(offset)
        # an index entry at or below offset must point exactly at a batch with its offset
        exact = bool(len(self.index)) and self.base_offset + self.index.rel_offsets[0] <= offset
        if pos >= self.size:
            return b""
        # one pread normally covers the scan from the index entry and the whole answer
        buf = os.pread(self.fd, min(self.size - pos, max_bytes + 2 * self.index_interval_bytes + HEADER_SIZE), pos)
        mv = memoryview(buf)
        at = 0
        start = -1
        prev_next = index_offset
        try:
            while pos + at < self.size:
                if len(buf) - at < HEADER_SIZE:
                    if pos + at + HEADER_SIZE > self.size:
                        raise CorruptRecordError(f"{self.size - pos - at} stray bytes at the end of the segment")
                    mv.release()
                    buf, mv = self._refill(buf, pos, at, HEADER_SIZE, max_bytes)
                    continue
                h = read_header(buf, at)
                if pos + at + h.size > self.size:
                    raise CorruptRecordError(f"batch of {h.size} bytes runs past the end of the segment")
                if at + h.size > len(buf) and (start < 0 or (at == start and min_one)):
                    mv.release()
                    buf, mv = self._refill(buf, pos, at, h.size, max_bytes)
                    continue
                if at + h.size > len(buf):
                    break  # the answer is full
                if h.base_offset < prev_next or (at == 0 and exact and h.base_offset != index_offset):
                    raise CorruptRecordError(f"batch offset {h.base_offset} does not follow offset {prev_next}")
                check_batch(mv, at)
                if start < 0:
                    if h.last_offset >= offset:
                        if h.base_offset >= max_offset:
                            return b""
                        start = at
                elif h.base_offset >= max_offset or at + h.size - start > max_bytes:
                    break
                prev_next = h.next_offset
                at += h.size
                if start >= 0 and at - start >= max_bytes:
                    break
        except CorruptRecordError as exc:
            raise LogCorruptionError(self.path, pos + at, exc.message) from None
        finally:
            mv.release()
        if start < 0 or (not min_one and at - start > max_bytes):
            return b""
        return buf[start:at] if (start, at) != (0, len(buf)) else buf

    def _refill(self, buf: bytes, pos: int, at: int, need: int, max_bytes: int) -> tuple[bytes, memoryview]:
        """Keep ``buf[:at]`` and read on from ``pos + at``: at least ``need`` bytes."""
        more = os.pread(self.fd, min(self.size - pos - at, max(need, max_bytes)), pos + at)
        buf = buf[:at] + more
        return buf, memoryview(buf)

    # ---- writing -------------------------------------------------------------------
    def append(self, prefix: bytes, rest: memoryview | bytes, h: BatchHeader, base_offset: int) -> int:
        """Write one batch (``prefix`` + ``rest``); return its position.

        All or nothing: a write that fails (``ENOSPC``, ``EIO``), also a short one or one
        of an index entry after the batch, is undone (``ftruncate`` of the log and the
        index files back to where they were) and raised as ``OSError``; the segment is
        then exactly as before."""
        position = self.size
        size = len(prefix) + len(rest)
        written = os.writev(self.fd, [prefix, rest])
        if written != size:  # short write (disk full): undo the partial batch
            os.ftruncate(self.fd, position)
            raise OSError(errno.ENOSPC, f"short write to {self.path}: {written} of {size} bytes", self.path)
        max_timestamp = max(self.max_timestamp, h.max_timestamp)
        if self._bytes_since_entry >= self.index_interval_bytes or position == 0:
            # (running max timestamp, this batch): every record up to here is <= it
            try:
                self.index.append(base_offset, position)
                self.time_index.append(max_timestamp, base_offset)
            except OSError:
                self._undo_append(position, base_offset)
                raise
            self._bytes_since_entry = 0
        self.size += size
        if position == 0:
            self.first_timestamp = h.max_timestamp
        self.max_timestamp = max_timestamp
        self._bytes_since_entry += size
        self.next_offset = base_offset + h.last_offset_delta + 1
        return position

    def _undo_append(self, position: int, base_offset: int) -> None:
        """An index entry for the batch at ``position`` could not be written: take the
        batch and its entries back (in memory and on disk; each index file holds exactly
        its entries in memory, appended in order)."""
        os.ftruncate(self.fd, position)
        index, times = self.index, self.time_index
        if len(index) and index.positions[-1] == position:
            del index.rel_offsets[-1], index.positions[-1]
        if len(times) and times.rel_offsets[-1] == base_offset - self.base_offset:
            del times.timestamps[-1], times.rel_offsets[-1]
        for f, size in ((index.file, 8 * len(index)), (times.file, 12 * len(times))):
            if f.fd >= 0:
                os.ftruncate(f.fd, size)

    def seal(self) -> None:
        """Called when the segment stops being active: final time entry, fsync all."""
        if self.max_timestamp > self.time_index.max_timestamp and self.size:
            last = self.index.lookup(self.next_offset)[0]
            self.time_index.append(self.max_timestamp, last)
        self.fsync()

    def fsync(self) -> None:
        os.fsync(self.fd)
        self.index.file.fsync()
        self.time_index.file.fsync()

    def truncate_to(self, offset: int) -> int:
        """Remove every batch whose last offset >= ``offset``; return the new next offset."""
        found = self.find(offset)
        if found is None:
            return self.next_offset
        pos, h = found
        os.ftruncate(self.fd, pos)
        self.size = pos
        self.index.truncate_to_position(pos)
        self.time_index.truncate_to_offset(h.base_offset)
        self.next_offset = h.base_offset if pos else self.base_offset
        if pos:
            # the previous batch's end defines next offset; rescan the short tail
            _, last_pos = self.index.lookup(h.base_offset - 1)
            self.max_timestamp = -1
            self._scan_tail(last_pos, h.base_offset)
            self.max_timestamp = max(self.max_timestamp, self.time_index.max_timestamp)
        else:
            self.max_timestamp = -1
            self.first_timestamp = -1
        self._bytes_since_entry = self.index_interval_bytes
        return self.next_offset

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.index.file.close()
        self.time_index.file.close()

    def file_paths(self) -> list[str]:
        return [self.path, self.index.file.path, self.time_index.file.path]
