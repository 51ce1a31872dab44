"""The shared-memory quota table: per-node byte rates shared by the partition workers.

A node runs one process per partition replica, but a byte-rate quota binds a principal
on the whole node. Each worker counts the bytes it serves per principal in its own row
of this table; the supervisor sums the rows every tick (100 ms) into the node's rates
(``ipc.quota.SampledRate``) and publishes, per principal, the window's totals and the
quotas that bind it; a worker reads them at its tick and, for each request, adds what
it served since its last write and computes the throttle time itself
(``appliance/partition/quota.py``). Nothing is written per request.

The file is ``<runtime_dir>/quotas.shm``, beside ``status.shm``, made the same way
(``ipc/shm.py``: a plain mmapped file, mode 0600, created whole under a temporary name
and renamed; pitfalls.md 1 is why it is not ``multiprocessing.shared_memory``). Each
block has exactly one writer and a seqlock: the writer makes its counter odd, writes,
makes it even; a reader copies the block and retries while the counter is odd or moved.

Byte layout (little-endian, ``pad`` written as zero)::

    header (64 bytes at 0), written once by ``create``:
      0  4  bytes magic b"SLQT"       4  2  u16 version (2)     8  4  u32 slot_count
      12 4  u32 row_entries (8)       16 4  u32 max_published (2048)

    published block (at 64), written only by the supervisor:
      0  8  u64 seq                   8  8  f64 at: time.monotonic() of the sum
      16 1  u8  enabled: 1 if any quota is set, else 0 (workers then count nothing)
      20 4  u32 generation of the quota configuration (a worker's resolutions of it
            are good until it moves)
      24 8  f64 default producer_byte_rate (0: none)   32 8 f64 default consumer_byte_rate
      40 4  u32 count of entries
      48 .. count x 176-byte entries: name (u8 length + 127 bytes UTF-8),
            f64 producer quota, f64 consumer quota (0: none),
            f64 produce total, f64 produce window s, f64 fetch total, f64 fetch window s
            -- an entity's quotas (named ``=[user, client]``, ``ipc.quota.entity_table_name``;
            totals 0) or an accounting key's window totals (``User:alice``,
            ``User:alice client-id:etl``, ``client-id:etl``; quotas 0)

    row i (at ROWS_OFFSET + i * ROW_SIZE), written only by the worker of status slot i:
      0  8  u64 seq                   8  4  u32 count of entries    12 4 i32 pid
      16 .. 8 x 144-byte entries: name (u8 length + 127 bytes UTF-8),
            u64 produce bytes, u64 fetch bytes (cumulative since the worker started)

A row's name is the accounting key of the entity a request matched (``User:alice``,
``User:alice client-id:etl``, ``client-id:etl``: ``ipc/quota.py``); one longer than 127
bytes is stored as ``User:#`` (or ``client-id:#``) and a hash of it (``table_name``). A
worker that serves more than 8 principals at once reuses the entry least recently used
(the supervisor sees the name change at that index and starts that entry's counters from
zero). The monotonic clock (``CLOCK_MONOTONIC``) is one clock for every process of the
host, so ``at`` means the same to the supervisor and its workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import struct
import time
from collections.abc import Iterator, Mapping

from ipc.private import open_private
from ipc.shm import ShmBusyError

log = logging.getLogger(__name__)

MAGIC = b"SLQT"
VERSION = 2
FILE_NAME = "quotas.shm"
HEADER = struct.Struct("<4sH2xIII44x")
HEADER_SIZE = 64
PUB_HEAD = struct.Struct("<QdB3xIddI4x")
PUB_ENTRY = struct.Struct("<B127s6d")
MAX_PUBLISHED = 2048
PUB_OFFSET = HEADER_SIZE
PUB_SIZE = -(-(PUB_HEAD.size + MAX_PUBLISHED * PUB_ENTRY.size) // 64) * 64
ROW_HEAD = struct.Struct("<QIi")
ROW_ENTRY = struct.Struct("<B127sQQ")
ROW_ENTRIES = 8
ROW_SIZE = -(-(ROW_HEAD.size + ROW_ENTRIES * ROW_ENTRY.size) // 64) * 64
ROWS_OFFSET = PUB_OFFSET + PUB_SIZE
NAME_BYTES = 127
SEQ = struct.Struct("<Q")
READ_TRIES = 1000


class QuotaTableError(ShmBusyError):
    """The quota table is missing, not this build's, or a block stayed mid-write."""


def path_beside(status_path: str) -> str:
    """The quota table's path: beside the status table, in the runtime directory."""
    return os.path.join(os.path.dirname(status_path), FILE_NAME)


def table_name(principal: str) -> str:
    """The name a principal has in the table (at most ``NAME_BYTES`` bytes of UTF-8)."""
    if len(principal.encode()) <= NAME_BYTES:
        return principal
    kind = principal.partition(":")[0]
    return f"{kind}:#{hashlib.blake2b(principal.encode(), digest_size=16).hexdigest()}"


def _name(raw: bytes, n: int) -> str:
    return raw[:n].decode(errors="replace")


class Published:
    """What the supervisor published, as a worker reads it."""

    __slots__ = ("seq", "at", "enabled", "default_produce", "default_fetch", "entries", "generation")

    def __init__(
        self,
        seq: int,
        at: float,
        enabled: bool,
        default_produce: float,
        default_fetch: float,
        entries: Mapping[str, tuple[float, float, float, float, float, float]],
        generation: int = 0,
    ) -> None:
        self.seq = seq
        self.generation = generation
        self.at = at
        self.enabled = enabled
        self.default_produce = default_produce
        self.default_fetch = default_fetch
        # name -> (producer quota, consumer quota, produce total, produce window s, fetch total, fetch window s)
        self.entries = entries


NOTHING = Published(0, 0.0, False, 0.0, 0.0, {})


class QuotaTable:
    """A mapped quota table: ``create`` (the supervisor) or ``attach`` (a worker)."""

    def __init__(self, path: str, mm: mmap.mmap) -> None:
        magic, version, slots, entries, published = HEADER.unpack_from(mm, 0)
        self.path = path
        self.slots = slots
        self._mm: mmap.mmap | None = mm
        self._seq: memoryview | None = memoryview(mm).cast("Q")

    @classmethod
    def create(cls, path: str, slots: int) -> QuotaTable:
        if not 1 <= slots <= 1_000_000:
            raise ValueError(f"quota table slot count must be in [1, 1000000], got {slots}")
        size = ROWS_OFFSET + slots * ROW_SIZE
        tmp = f"{path}.tmp.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = open_private(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        HEADER.pack_into(mm, 0, MAGIC, VERSION, slots, ROW_ENTRIES, MAX_PUBLISHED)
        os.replace(tmp, path)
        return cls(path, mm)

    @classmethod
    def attach(cls, path: str) -> QuotaTable:
        """A worker's writable mapping (never a symbolic link, only this user's file)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise QuotaTableError(f"cannot open the quota table {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise QuotaTableError(f"quota table {path} belongs to uid {st.st_uid}, not this user")
            head = os.pread(fd, HEADER.size, 0)
            if len(head) < HEADER.size:
                raise QuotaTableError(f"quota table {path} is too small ({st.st_size} bytes)")
            magic, version, slots, entries, published = HEADER.unpack(head)
            if (magic, version, entries, published) != (MAGIC, VERSION, ROW_ENTRIES, MAX_PUBLISHED):
                raise QuotaTableError(f"{path} is not a quota table of this build (magic {magic!r}, version {version})")
            if st.st_size != ROWS_OFFSET + slots * ROW_SIZE:
                raise QuotaTableError(f"quota table {path} is {st.st_size} bytes, {slots} rows need another size")
            mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(path, mm)

    def close(self) -> None:
        if self._seq is not None:
            self._seq.release()
            self._seq = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # ---- seqlock ---------------------------------------------------------------------------
    def _views(self) -> tuple[mmap.mmap, memoryview]:
        if self._mm is None or self._seq is None:
            raise QuotaTableError(f"quota table {self.path} is closed")
        return self._mm, self._seq

    def _write(self, offset: int, payload: bytes) -> None:
        mm, seq = self._views()
        i = offset // 8
        cur = seq[i]
        begin = cur + 1 if not cur & 1 else cur + 2
        seq[i] = begin
        mm[offset + 8 : offset + 8 + len(payload)] = payload
        seq[i] = begin + 1

    def _read(self, offset: int, size: int) -> tuple[int, bytes]:
        mm, seq = self._views()
        i = offset // 8
        for attempt in range(READ_TRIES):
            before = seq[i]
            if not before & 1:
                payload = mm[offset + 8 : offset + 8 + size]
                if seq[i] == before:
                    return before, payload
            if attempt > 100:
                time.sleep(0.0001)
            else:
                os.sched_yield()
        raise QuotaTableError(f"quota table {self.path}: block at {offset} stayed mid-write (its writer died?)")

    def seq(self, offset: int) -> int:
        return int(self._views()[1][offset // 8])

    # ---- the published block (supervisor -> workers) ---------------------------------------
    def publish(
        self,
        at: float,
        enabled: bool,
        default_produce: float,
        default_fetch: float,
        entries: Mapping[str, tuple[float, float, float, float, float, float]],
        generation: int = 0,
    ) -> None:
        parts: list[bytes] = []
        for name, values in entries.items():
            if len(parts) >= MAX_PUBLISHED:
                log.warning("quota table: %d principals to publish, at most %d", len(entries), MAX_PUBLISHED)
                break
            raw = name.encode()[:NAME_BYTES]
            parts.append(PUB_ENTRY.pack(len(raw), raw, *values))
        head = PUB_HEAD.pack(0, at, enabled, generation & 0xFFFFFFFF, default_produce, default_fetch, len(parts))[8:]
        parts.insert(0, head)
        self._write(PUB_OFFSET, b"".join(parts))

    def read_published(self, since: int = -1) -> Published | None:
        """The published block; None if its seq is still ``since`` (nothing new)."""
        if self.seq(PUB_OFFSET) == since:
            return None
        for _ in range(READ_TRIES):
            seq, head = self._read(PUB_OFFSET, PUB_HEAD.size - 8)
            _, at, enabled, generation, dp, df, count = PUB_HEAD.unpack(SEQ.pack(seq) + head)
            count = min(count, MAX_PUBLISHED)
            seq2, body = self._read(PUB_OFFSET, PUB_HEAD.size - 8 + count * PUB_ENTRY.size)
            if seq2 != seq:
                continue  # published again between the two reads
            entries = {}
            for n, raw, *values in PUB_ENTRY.iter_unpack(body[PUB_HEAD.size - 8 :]):
                entries[_name(raw, n)] = tuple(values)
            return Published(seq, at, bool(enabled), dp, df, entries, generation)
        raise QuotaTableError(f"quota table {self.path}: the published block kept changing")

    # ---- the rows (each worker -> supervisor) ----------------------------------------------
    def _row(self, slot: int) -> int:
        if not 0 <= slot < self.slots:
            raise IndexError(f"quota table row {slot} out of range 0..{self.slots - 1}")
        return ROWS_OFFSET + slot * ROW_SIZE

    def write_row(self, slot: int, pid: int, entries: list[tuple[str, int, int]]) -> None:
        body = [ROW_HEAD.pack(0, len(entries), pid)[8:]]
        for name, produced, fetched in entries[:ROW_ENTRIES]:
            raw = name.encode()[:NAME_BYTES]
            body.append(ROW_ENTRY.pack(len(raw), raw, produced, fetched))
        self._write(self._row(slot), b"".join(body))

    def row_seq(self, slot: int) -> int:
        return self.seq(self._row(slot))

    def read_row(self, slot: int) -> tuple[int, int, list[tuple[str, int, int]]]:
        """(seq, pid, [(name, produce bytes, fetch bytes)]) of a worker's row."""
        offset = self._row(slot)
        seq, payload = self._read(offset, ROW_SIZE - 8)
        count, pid = struct.unpack_from("<Ii", payload, 0)
        entries = []
        for i in range(min(count, ROW_ENTRIES)):
            n, raw, produced, fetched = ROW_ENTRY.unpack_from(payload, ROW_HEAD.size - 8 + i * ROW_ENTRY.size)
            entries.append((_name(raw, n), produced, fetched))
        return seq, pid, entries

    def changed_rows(self, seen: dict[int, int]) -> Iterator[int]:
        """The slots whose row was written since ``seen`` (slot -> seq), which is updated."""
        _, seq = self._views()
        for slot in range(self.slots):
            s = seq[(ROWS_OFFSET + slot * ROW_SIZE) // 8]
            if s and seen.get(slot) != s:
                seen[slot] = s
                yield slot
