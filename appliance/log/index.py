"""Sparse indexes of one segment: offset -> file position, and timestamp -> offset.

Both are append-only files of fixed-size little-endian entries, kept in memory as
``array`` columns for ``bisect``:

* ``.index``: (relative offset u32, position u32), 8 bytes, one entry per
  ~``index.interval.bytes`` of log; the relative offset is the batch's base offset
  minus the segment's base offset, the position is where that batch starts.
* ``.timeindex``: (max timestamp so far i64, relative offset u32), 12 bytes, written
  alongside offset entries whenever the segment's max timestamp grew.

An index is a cache of the log: if its file is missing, torn or insane
(``sanity_check``) the segment rebuilds it from the log file.
"""

from __future__ import annotations

import bisect
import os
import struct
from array import array

from ipc.private import open_private

_OFFSET_ENTRY = struct.Struct("<II")
_TIME_ENTRY = struct.Struct("<qI")


class IndexError_(ValueError):
    """An index file that fails its sanity check (it is then rebuilt)."""


class _IndexFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def open_append(self) -> None:
        if self.fd < 0:
            self.fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def write(self, data: bytes) -> None:
        self.open_append()
        os.write(self.fd, data)

    def fsync(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read_all(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def rewrite(self, data: bytes) -> None:
        self.close()
        with open(open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


class OffsetIndex:
    def __init__(self, path: str, base_offset: int) -> None:
        self.file = _IndexFile(path)
        self.base_offset = base_offset
        self.rel_offsets: array[int] = array("I")
        self.positions: array[int] = array("I")

    def __len__(self) -> int:
        return len(self.rel_offsets)

    def load(self, log_size: int) -> None:
        """Load from disk; raise IndexError_ if missing, torn or inconsistent."""
        data = self.file.read_all()
        if data is None:
            raise IndexError_(f"{self.file.path} is missing")
        if len(data) % _OFFSET_ENTRY.size:
            raise IndexError_(f"{self.file.path} has a torn entry ({len(data)} bytes)")
        both = array("I")
        both.frombytes(data)
        rel, pos = both[0::2], both[1::2]
        if any(a >= b for a, b in zip(rel, rel[1:], strict=False)) or any(
            a >= b for a, b in zip(pos, pos[1:], strict=False)
        ):
            raise IndexError_(f"{self.file.path} entries are not increasing")
        if pos and pos[-1] >= max(log_size, 1):
            raise IndexError_(f"{self.file.path} points past the end of its log ({pos[-1]} >= {log_size})")
        self.rel_offsets, self.positions = rel, pos

    def append(self, offset: int, position: int) -> None:
        rel = offset - self.base_offset
        if self.rel_offsets and rel <= self.rel_offsets[-1]:
            return
        self.rel_offsets.append(rel)
        self.positions.append(position)
        self.file.write(_OFFSET_ENTRY.pack(rel, position))

    def lookup(self, offset: int) -> tuple[int, int]:
        """(offset, position) of the last entry at or before ``offset``, else the start."""
        i = bisect.bisect_right(self.rel_offsets, offset - self.base_offset)
        if i == 0:
            return self.base_offset, 0
        return self.base_offset + self.rel_offsets[i - 1], self.positions[i - 1]

    def truncate_to_position(self, position: int) -> None:
        """Drop entries at or after ``position`` and rewrite the file."""
        keep = bisect.bisect_left(self.positions, position)
        if keep == len(self.positions):
            return
        del self.rel_offsets[keep:], self.positions[keep:]
        self.file.rewrite(self._serialize())

    def reset(self, entries: list[tuple[int, int]]) -> None:
        self.rel_offsets = array("I", [o - self.base_offset for o, _ in entries])
        self.positions = array("I", [p for _, p in entries])
        self.file.rewrite(self._serialize())

    def _serialize(self) -> bytes:
        both = array("I", bytes(8 * len(self.rel_offsets)))
        both[0::2] = self.rel_offsets
        both[1::2] = self.positions
        return both.tobytes()


class TimeIndex:
    def __init__(self, path: str, base_offset: int) -> None:
        self.file = _IndexFile(path)
        self.base_offset = base_offset
        self.timestamps: list[int] = []
        self.rel_offsets: list[int] = []

    def __len__(self) -> int:
        return len(self.timestamps)

    def load(self, next_offset: int) -> None:
        data = self.file.read_all()
        if data is None:
            raise IndexError_(f"{self.file.path} is missing")
        if len(data) % _TIME_ENTRY.size:
            raise IndexError_(f"{self.file.path} has a torn entry ({len(data)} bytes)")
        ts = [t for t, _ in _TIME_ENTRY.iter_unpack(data)]
        rel = [r for _, r in _TIME_ENTRY.iter_unpack(data)]
        if any(a >= b for a, b in zip(ts, ts[1:], strict=False)) or any(
            a >= b for a, b in zip(rel, rel[1:], strict=False)
        ):
            raise IndexError_(f"{self.file.path} entries are not increasing")
        if rel and self.base_offset + rel[-1] >= max(next_offset, self.base_offset + 1):
            raise IndexError_(f"{self.file.path} points past the end of its log")
        self.timestamps, self.rel_offsets = ts, rel

    @property
    def max_timestamp(self) -> int:
        return self.timestamps[-1] if self.timestamps else -1

    def append(self, max_timestamp: int, offset: int) -> None:
        rel = offset - self.base_offset
        if self.timestamps and (max_timestamp <= self.timestamps[-1] or rel <= self.rel_offsets[-1]):
            return
        self.timestamps.append(max_timestamp)
        self.rel_offsets.append(rel)
        self.file.write(_TIME_ENTRY.pack(max_timestamp, rel))

    def lookup(self, timestamp: int) -> int:
        """An offset at or before the first batch that can hold a record >= ``timestamp``."""
        i = bisect.bisect_left(self.timestamps, timestamp)
        if i == 0:
            return self.base_offset
        return self.base_offset + self.rel_offsets[i - 1]

    def truncate_to_offset(self, offset: int) -> None:
        keep = bisect.bisect_left(self.rel_offsets, offset - self.base_offset)
        if keep == len(self.rel_offsets):
            return
        del self.timestamps[keep:], self.rel_offsets[keep:]
        self.file.rewrite(
            b"".join(_TIME_ENTRY.pack(t, r) for t, r in zip(self.timestamps, self.rel_offsets, strict=True))
        )

    def reset(self, entries: list[tuple[int, int]]) -> None:
        self.timestamps = [t for t, _ in entries]
        self.rel_offsets = [o - self.base_offset for _, o in entries]
        self.file.rewrite(
            b"".join(_TIME_ENTRY.pack(t, r) for t, r in zip(self.timestamps, self.rel_offsets, strict=True))
        )
