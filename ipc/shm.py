"""The shared-memory status table: one fixed-size slot per partition worker.

The supervisor creates one file (under ``/dev/shm`` or the runtime directory) and maps
it with plain ``os.open`` + ``os.ftruncate`` + ``mmap.mmap``. There is deliberately no
``multiprocessing.shared_memory`` here: in Python 3.11 a process that merely *attaches*
to such a segment registers it with its resource tracker, which unlinks it when that
process exits (see pitfalls.md, item 1). With a plain file, attaching, reading and
exiting never remove anything; only :meth:`StatusTable.unlink` (the supervisor, at
shutdown) does.

``create`` writes the whole file under a temporary name in the same directory and then
``os.replace``-s it onto the final path, so nobody ever attaches to a half-initialised
table; a stale table left by a crashed supervisor is replaced, and readers still
mapping the old file keep reading the old (stale) contents until they re-attach. The
file has mode 0600 whatever the umask (``ipc/private.py``), and a writable attach (a
worker) refuses a symbolic link or another user's file.

Byte layout
-----------
Every number is little-endian; ``pad`` bytes are written as zero and never read. The
header and slots are multiples of 64 bytes, so every seqlock counter is 8-byte aligned
and the two blocks of a slot (two different writers) live on different cache lines.

File header (HEADER_SIZE = 64 bytes at file offset 0), written once by ``create``:

    offset  size  type   field
    0       4     bytes  magic             b"SLST"
    4       2     u16    version           FORMAT_VERSION (1)
    6       2     pad    -
    8       4     u32    slot_count        number of slots, >= 1
    12      4     u32    slot_size         SLOT_SIZE (448)
    16      4     i32    node_id           the node this table belongs to
    20      4     i32    supervisor_pid    pid of the process that created the table
    24      8     f64    created_at        time.time() when the table was created
    32      32    pad    -

Slot ``i`` starts at file offset ``HEADER_SIZE + i * SLOT_SIZE``; the offsets below are
relative to the start of the slot. The file is exactly ``HEADER_SIZE + slot_count *
SLOT_SIZE`` bytes long.

Control block (CONTROL_OFFSET = 0, CONTROL_BLOCK_SIZE = 290), written only by the
supervisor:

    offset  size  type   field
    0       8     u64    seq               seqlock counter, odd while a write is in progress
    8       1     u8     state             SlotState: FREE 0, STARTING 1, SERVING 2,
                                           STOPPING 3, OFFLINE 4, RESTARTING 5
    9       1     u8     role              Role: NONE 0, LEADER 1, FOLLOWER 2
    10      1     u8     replica_count     replicas of the partition in its role (0: unknown)
    11      1     u8     isr_count         of them in sync, in its role (a leader with
                                           isr_count < replica_count is under-replicated)
    12      4     i32    partition
    16      4     u32    restarts          restarts of this slot's worker so far
    20      4     i32    worker_pid        0 when no worker runs
    24      4     i32    last_exit_code    as from os.waitstatus_to_exitcode (-N: signal N)
    28      4     pad    -
    32      8     f64    offline_since     time.time() when the slot went OFFLINE, else 0
    40      1     u8     topic_len         bytes of topic used, <= 249
    41      249   bytes  topic             ASCII [a-zA-Z0-9._-], zero-padded
    290     30    pad    -

Status block (STATUS_OFFSET = 320, STATUS_BLOCK_SIZE = 104), written only by the worker
running in the slot:

    offset  size  type   field
    320     8     u64    seq               seqlock counter, odd while a write is in progress
    328     4     i32    pid               the worker's pid
    332     4     i32    leader_epoch
    336     8     i64    log_start_offset
    344     8     i64    log_end_offset
    352     8     i64    high_watermark
    360     8     f64    heartbeat         time.monotonic() of the worker's last heartbeat
    368     8     u64    records_in
    376     8     u64    bytes_in
    384     8     u64    records_out
    392     8     u64    bytes_out
    400     8     u64    log_size_bytes
    408     1     u8     storage_error     1 while the partition's directory refuses writes
                                           (a full disk, an I/O error), else 0
    409     3     pad    -
    412     4     i32    storage_errno     the errno of the last failed write (28: ENOSPC), or 0
    416     8     f64    storage_error_since  time.time() when writes began to fail, or 0
    424     24    pad    -

Version: the three ``storage_*`` fields (added later) sit in what were pad bytes, which
are always zero in a table written by a build that does not know them; zero means
"writes work", the old meaning. Old and new builds therefore read each other's tables
correctly and ``FORMAT_VERSION`` stays 1. A change that gives existing bytes a new
meaning must bump it.

Seqlock protocol
----------------
Each block has exactly one writer at any time, and readers never take locks. A write
packs the whole block into bytes first, then sets ``seq`` to an odd value, copies the
payload with one slice assignment (one ``memcpy``), and sets ``seq`` to the next even
value. A read loads ``seq`` (retrying while it is odd), copies the payload, loads
``seq`` again and retries if it changed. The first ``SPIN_TRIES`` retries only yield
the CPU; later ones sleep with a back-off from 10 us up to 1 ms, because a writer can be
preempted (or SIGSTOPped) in the middle of its write. After ``MAX_READ_TRIES`` attempts
(about 0.2 s) the read raises :class:`ShmBusyError`. The counter is loaded and stored through a native ``Q``
memoryview, i.e. one aligned 8-byte access, so it can never be seen half-written.
The protocol relies on stores (and loads) not being reordered with each other, which
x86-64 (TSO) guarantees; CPython issues no memory barriers of its own.

A writer that dies in the middle of a write (SIGKILL) leaves ``seq`` odd: readers of
that block then get :class:`ShmBusyError` until the next writer writes it. The next
write always ends on an even counter (an odd counter is bumped by two), so the block
recovers on the first write by the successor. Once the supervisor has reaped a worker
it owns that slot's status block again and may :meth:`StatusTable.reset_status` it.

The status block is only meaningful while ``status.pid == control.worker_pid``; a
different pid means it still holds what the previous worker of the slot wrote.

Why one module of about 640 lines (over the house's 500): the byte layout, the single-writer rule and the
seqlock protocol are one contract, read and written only here; the table, its writer
and its readers must agree byte for byte, so they stay together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import mmap
import os
import re
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ipc.errors import SluiceError
from ipc.private import open_private

if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
    raise ImportError("ipc.shm assumes a little-endian host (seqlock counters are native u64)")

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

MAGIC = b"SLST"
FORMAT_VERSION = 1

HEADER = struct.Struct("<4sH2xIIiid32x")
HEADER_SIZE = 64
SLOT_SIZE = 448

SEQ_SIZE = 8
CONTROL_OFFSET = 0
CONTROL = struct.Struct("<BBBBiIii4xdB249s")  # payload after the control block's seq
CONTROL_BLOCK_SIZE = SEQ_SIZE + CONTROL.size  # 290
STATUS_OFFSET = 320
STATUS = struct.Struct("<iiqqqdQQQQQB3xid")  # payload after the status block's seq
STATUS_BLOCK_SIZE = SEQ_SIZE + STATUS.size  # 104

TOPIC_MAX_LEN = 249
SPIN_TRIES = 100  # read attempts that only yield the CPU before sleeping between attempts
MAX_READ_TRIES = 300  # then ShmBusyError: ~100 yields + ~200 sleeps of <= 1 ms
READ_BACKOFF_MIN = 10e-6
READ_BACKOFF_MAX = 1e-3
MAX_SLOTS = 65536

assert HEADER.size == HEADER_SIZE
assert CONTROL_BLOCK_SIZE == 290
assert STATUS_BLOCK_SIZE == 104
assert CONTROL_OFFSET + CONTROL_BLOCK_SIZE <= STATUS_OFFSET
assert STATUS_OFFSET + STATUS_BLOCK_SIZE <= SLOT_SIZE
assert HEADER_SIZE % 64 == 0 and SLOT_SIZE % 64 == 0 and STATUS_OFFSET % 64 == 0

_U64_MASK = (1 << 64) - 1
_TOPIC_RE = re.compile(r"[a-zA-Z0-9._-]*")
_I32 = (-(1 << 31), (1 << 31) - 1)
_U32 = (0, (1 << 32) - 1)
_I64 = (-(1 << 63), (1 << 63) - 1)
_U64 = (0, _U64_MASK)


class ShmError(SluiceError):
    """The status table file is missing, malformed, closed or used the wrong way."""

    code = "SHARED_MEMORY_ERROR"


class ShmBusyError(ShmError):
    """A seqlocked block stayed mid-write for ``MAX_READ_TRIES`` read attempts (~0.2 s).

    Either its writer is very busy or it died in the middle of a write; the block
    recovers on the next write to it.
    """

    code = "SHARED_MEMORY_BUSY"
    retriable = True


class SlotState(enum.IntEnum):
    """Lifecycle of a slot, as the supervisor sees its worker."""

    FREE = 0
    STARTING = 1
    SERVING = 2
    STOPPING = 3
    OFFLINE = 4
    RESTARTING = 5


class Role(enum.IntEnum):
    """The replica role the supervisor assigned to the slot's worker."""

    NONE = 0
    LEADER = 1
    FOLLOWER = 2


@dataclass(frozen=True, slots=True)
class ControlBlock:
    """What the supervisor says about a slot. The defaults are an all-zero block."""

    state: SlotState = SlotState.FREE
    role: Role = Role.NONE
    partition: int = 0
    restarts: int = 0
    replica_count: int = 0  # the role's replicas and in-sync replicas (0: no role yet)
    isr_count: int = 0
    worker_pid: int = 0
    topic: str = ""
    last_exit_code: int = 0
    offline_since: float = 0.0

    @classmethod
    def free(cls) -> ControlBlock:
        """The control block of an unused slot (all zeros)."""
        return cls()


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What a worker says about its partition replica. The defaults are an all-zero block."""

    pid: int = 0
    leader_epoch: int = 0
    log_start_offset: int = 0
    log_end_offset: int = 0
    high_watermark: int = 0
    heartbeat: float = 0.0
    records_in: int = 0
    bytes_in: int = 0
    records_out: int = 0
    bytes_out: int = 0
    log_size_bytes: int = 0
    storage_error: bool = False  # the partition's directory refuses writes (appliance/partition/storage.py)
    storage_errno: int = 0
    storage_error_since: float = 0.0


_CONTROL_RANGES: dict[str, tuple[int, int]] = {
    "replica_count": (0, 255),
    "isr_count": (0, 255),
    "partition": _I32,
    "restarts": _U32,
    "worker_pid": _I32,
    "last_exit_code": _I32,
}
_STATUS_RANGES: dict[str, tuple[int, int]] = {
    "pid": _I32,
    "leader_epoch": _I32,
    "log_start_offset": _I64,
    "log_end_offset": _I64,
    "high_watermark": _I64,
    "records_in": _U64,
    "bytes_in": _U64,
    "records_out": _U64,
    "bytes_out": _U64,
    "log_size_bytes": _U64,
    "storage_errno": _I32,
}


def _check_ranges(block: object, ranges: dict[str, tuple[int, int]]) -> None:
    for name, (lo, hi) in ranges.items():
        value = getattr(block, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{type(block).__name__}.{name} must be an int, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{type(block).__name__}.{name}={value} is out of range [{lo}, {hi}]")


def _encode_topic(topic: str) -> bytes:
    if not topic.isascii() or _TOPIC_RE.fullmatch(topic) is None:
        raise ValueError(f"topic name {topic!r} is invalid: only ASCII letters, digits, '.', '_' and '-' are allowed")
    if len(topic) > TOPIC_MAX_LEN:
        raise ValueError(f"topic name of {len(topic)} characters is too long: at most {TOPIC_MAX_LEN} are allowed")
    return topic.encode("ascii")


def pack_control(block: ControlBlock) -> bytes:
    """The control block payload (everything after ``seq``); ValueError on bad fields."""
    _check_ranges(block, _CONTROL_RANGES)
    topic = _encode_topic(block.topic)
    try:
        state = SlotState(block.state)
        role = Role(block.role)
    except ValueError as exc:
        raise ValueError(f"ControlBlock has an invalid state or role: {exc}") from None
    return CONTROL.pack(
        state,
        role,
        block.replica_count,
        block.isr_count,
        block.partition,
        block.restarts,
        block.worker_pid,
        block.last_exit_code,
        float(block.offline_since),
        len(topic),
        topic,
    )


def unpack_control(payload: bytes, slot: int = -1) -> ControlBlock:
    """A ControlBlock from its payload; ShmError if it holds impossible values."""
    (
        state,
        role,
        replica_count,
        isr_count,
        partition,
        restarts,
        worker_pid,
        exit_code,
        offline_since,
        topic_len,
        topic,
    ) = CONTROL.unpack(payload)
    try:
        slot_state = SlotState(state)
        slot_role = Role(role)
    except ValueError as exc:
        raise ShmError(f"slot {slot} control block is corrupt: {exc}") from None
    if topic_len > TOPIC_MAX_LEN:
        raise ShmError(f"slot {slot} control block is corrupt: topic length {topic_len} > {TOPIC_MAX_LEN}")
    try:
        topic_name = topic[:topic_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise ShmError(f"slot {slot} control block is corrupt: topic is not ASCII ({exc})") from None
    return ControlBlock(
        state=slot_state,
        role=slot_role,
        topic=topic_name,
        partition=partition,
        restarts=restarts,
        replica_count=replica_count,
        isr_count=isr_count,
        worker_pid=worker_pid,
        last_exit_code=exit_code,
        offline_since=offline_since,
    )


def pack_status(status: WorkerStatus) -> bytes:
    """The status block payload (everything after ``seq``); ValueError on bad fields."""
    _check_ranges(status, _STATUS_RANGES)
    return STATUS.pack(
        status.pid,
        status.leader_epoch,
        status.log_start_offset,
        status.log_end_offset,
        status.high_watermark,
        float(status.heartbeat),
        status.records_in,
        status.bytes_in,
        status.records_out,
        status.bytes_out,
        status.log_size_bytes,
        1 if status.storage_error else 0,
        status.storage_errno,
        float(status.storage_error_since),
    )


def unpack_status(payload: bytes) -> WorkerStatus:
    (pid, epoch, start, end, hw, beat, r_in, b_in, r_out, b_out, size, storage_error, storage_errno, since) = (
        STATUS.unpack(payload)
    )
    return WorkerStatus(
        pid, epoch, start, end, hw, beat, r_in, b_in, r_out, b_out, size, bool(storage_error), storage_errno, since
    )


class StatusTable:
    """A mapped status table file. Make one with :meth:`create` or :meth:`attach`.

    Each instance owns its own mapping: attach after fork, in the process that uses it.
    """

    def __init__(self, path: str, mm: mmap.mmap, *, writable: bool) -> None:
        magic, version, slot_count, slot_size, node_id, pid, created_at = HEADER.unpack_from(mm, 0)
        self._path = path
        self._mm: mmap.mmap | None = mm
        self._seq: memoryview | None = memoryview(mm).cast("Q")  # native u64 view: aligned 8-byte access
        self._writable = writable
        self._slots: int = slot_count
        self._node_id: int = node_id
        self._supervisor_pid: int = pid
        self._created_at: float = created_at

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def create(cls, path: StrPath, slots: int, node_id: int, *, supervisor_pid: int | None = None) -> StatusTable:
        """Create (or replace) the table file at ``path`` with ``slots`` zeroed slots, mapped read-write."""
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"status table slot count must be an int in [1, {MAX_SLOTS}], got {slots!r}")
        if not _I32[0] <= node_id <= _I32[1]:
            raise ValueError(f"node id {node_id} is out of range [{_I32[0]}, {_I32[1]}]")
        pid = os.getpid() if supervisor_pid is None else supervisor_pid
        final = os.fspath(path)
        size = HEADER_SIZE + slots * SLOT_SIZE
        tmp = f"{final}.tmp.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a crashed create of a process with the same pid
        fd = open_private(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)  # 0600, whatever the umask
        try:
            os.ftruncate(fd, size)  # a new file reads as zeros: every slot FREE, every seq 0
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        try:
            HEADER.pack_into(mm, 0, MAGIC, FORMAT_VERSION, slots, SLOT_SIZE, node_id, pid, time.time())
            os.replace(tmp, final)
        except BaseException:
            mm.close()
            os.unlink(tmp)
            raise
        log.info("created status table %s: %d slots, node %d, supervisor pid %d", final, slots, node_id, pid)
        return cls(final, mm, writable=True)

    @classmethod
    def attach(cls, path: StrPath, writable: bool = False) -> StatusTable:
        """Map an existing table; read-only unless ``writable``. Never removes the file."""
        name = os.fspath(path)
        try:
            # a writer (a worker) never follows a symbolic link and maps only its own user's table
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise ShmError(f"status table {name} does not exist (is the supervisor running?)") from None
        except OSError as exc:
            raise ShmError(f"cannot open status table {name}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if writable and st.st_uid != os.geteuid():
                raise ShmError(f"status table {name} belongs to uid {st.st_uid}, not this user: refusing to write it")
            size = st.st_size
            if size < HEADER_SIZE:
                raise ShmError(f"status table {name} is too small: {size} bytes, a header alone is {HEADER_SIZE}")
            header = os.pread(fd, HEADER_SIZE, 0)
            magic, version, slot_count, slot_size, _, _, _ = HEADER.unpack(header)
            if magic != MAGIC:
                raise ShmError(f"{name} is not a status table: magic {magic!r}, expected {MAGIC!r}")
            if version != FORMAT_VERSION:
                raise ShmError(f"status table {name} has format version {version}, this build reads {FORMAT_VERSION}")
            if slot_size != SLOT_SIZE:
                raise ShmError(f"status table {name} has {slot_size}-byte slots, this build uses {SLOT_SIZE}")
            if not 1 <= slot_count <= MAX_SLOTS:
                raise ShmError(f"status table {name} has an invalid slot count {slot_count}")
            expected = HEADER_SIZE + slot_count * SLOT_SIZE
            if size < expected:
                raise ShmError(f"status table {name} is too small: {size} bytes, {slot_count} slots need {expected}")
            if size != expected:
                raise ShmError(f"status table {name} is {size} bytes, {slot_count} slots need exactly {expected}")
            if writable:
                mm = mmap.mmap(fd, expected, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            else:
                mm = mmap.mmap(fd, expected, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return cls(name, mm, writable=writable)

    def close(self) -> None:
        """Unmap. Idempotent; leaves the file alone."""
        if self._seq is not None:
            self._seq.release()
            self._seq = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def unlink(self) -> None:
        """Remove the file (the supervisor, at shutdown). Existing mappings stay readable."""
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            return
        log.info("removed status table %s", self._path)

    def __enter__(self) -> StatusTable:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- header ----------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def node_id(self) -> int:
        return self._node_id

    @property
    def supervisor_pid(self) -> int:
        return self._supervisor_pid

    @property
    def created_at(self) -> float:
        return self._created_at

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def closed(self) -> bool:
        return self._mm is None

    # ---- slots -----------------------------------------------------------------------

    def read_control(self, slot: int) -> ControlBlock:
        return unpack_control(self._read_block(self._offset(slot) + CONTROL_OFFSET, CONTROL.size, slot), slot)

    def write_control(self, slot: int, block: ControlBlock) -> None:
        """Supervisor only: replace slot's control block as a whole."""
        self._write_block(self._offset(slot) + CONTROL_OFFSET, pack_control(block))

    def read_status(self, slot: int) -> WorkerStatus:
        return unpack_status(self._read_block(self._offset(slot) + STATUS_OFFSET, STATUS.size, slot))

    def read_status_or_none(self, slot: int) -> WorkerStatus | None:
        """``read_status``, or None while the block is unreadable: a worker stopped or
        killed in the middle of a write leaves its seqlock odd until the next write."""
        try:
            return self.read_status(slot)
        except ShmBusyError:
            return None

    def write_status(self, slot: int, status: WorkerStatus) -> None:
        """The slot's worker only: replace its status block as a whole."""
        self._write_block(self._offset(slot) + STATUS_OFFSET, pack_status(status))

    def reset_status(self, slot: int) -> None:
        """Supervisor only, once the slot's worker is reaped: zero the status block."""
        self.write_status(slot, WorkerStatus())

    def find_free_slot(self) -> int | None:
        """The lowest FREE slot, or None when every slot is in use."""
        for slot in range(self._slots):
            if self.read_control(slot).state is SlotState.FREE:
                return slot
        return None

    def snapshot(self) -> list[tuple[int, ControlBlock, WorkerStatus]]:
        """(slot, control, status) for every slot that is not FREE, in slot order."""
        rows: list[tuple[int, ControlBlock, WorkerStatus]] = []
        for slot in range(self._slots):
            control = self.read_control(slot)
            if control.state is not SlotState.FREE:
                rows.append((slot, control, self.read_status(slot)))
        return rows

    # ---- seqlock ---------------------------------------------------------------------

    def _offset(self, slot: int) -> int:
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise TypeError(f"slot index must be an int, got {slot!r}")
        if not 0 <= slot < self._slots:
            raise IndexError(f"slot {slot} out of range: table {self._path} has slots 0..{self._slots - 1}")
        return HEADER_SIZE + slot * SLOT_SIZE

    def _views(self) -> tuple[mmap.mmap, memoryview]:
        if self._mm is None or self._seq is None:
            raise ShmError(f"status table {self._path} is closed")
        return self._mm, self._seq

    def _read_block(self, offset: int, size: int, slot: int) -> bytes:
        mm, seq = self._views()
        index = offset // SEQ_SIZE
        start = offset + SEQ_SIZE
        backoff = READ_BACKOFF_MIN
        started = time.monotonic()
        for attempt in range(MAX_READ_TRIES):
            before = seq[index]
            if not before & 1:
                payload = mm[start : start + size]
                if seq[index] == before:
                    return payload
            # A write is in progress (or ended during the copy): let the writer finish.
            if attempt < SPIN_TRIES:
                os.sched_yield()
            else:  # the writer is descheduled mid-write, stopped, or dead
                time.sleep(backoff)
                backoff = min(backoff * 2, READ_BACKOFF_MAX)
        raise ShmBusyError(
            f"slot {slot} block at offset {offset} of {self._path} stayed mid-write for {MAX_READ_TRIES} reads"
            f" in {time.monotonic() - started:.3f} s (seq {seq[index]}); its writer is stuck or died while writing"
        )

    def _write_block(self, offset: int, payload: bytes) -> None:
        mm, seq = self._views()
        if not self._writable:
            raise ShmError(f"status table {self._path} is attached read-only")
        index = offset // SEQ_SIZE
        start = offset + SEQ_SIZE
        current: int = seq[index]
        begin = (current + 1 if not current & 1 else current + 2) & _U64_MASK  # odd, even if a writer died mid-write
        seq[index] = begin
        mm[start : start + len(payload)] = payload
        seq[index] = (begin + 1) & _U64_MASK


class StatusWriter:
    """The worker's side of its slot: keeps the current WorkerStatus, writes it whole.

    Construct it after fork, in the worker, on a table attached with ``writable=True``.
    """

    _FIELDS: ClassVar[frozenset[str]] = frozenset(f.name for f in dataclasses.fields(WorkerStatus))

    def __init__(
        self,
        table: StatusTable,
        slot: int,
        *,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not table.writable:
            raise ShmError(f"status table {table.path} is attached read-only; a StatusWriter needs writable=True")
        table._offset(slot)  # bounds check now rather than on the first write
        self._table = table
        self._slot = slot
        self._clock = clock
        self._status = WorkerStatus(pid=os.getpid() if pid is None else pid)

    @property
    def slot(self) -> int:
        return self._slot

    @property
    def status(self) -> WorkerStatus:
        return self._status

    def update(self, **fields: Any) -> WorkerStatus:
        """Change the given fields and write the whole block; TypeError on unknown names."""
        unknown = fields.keys() - self._FIELDS
        if unknown:
            raise TypeError(f"unknown WorkerStatus field(s): {', '.join(sorted(unknown))}")
        status = dataclasses.replace(self._status, **fields)
        self._table.write_status(self._slot, status)  # validates before anything is written
        self._status = status
        return status

    def heartbeat(self) -> WorkerStatus:
        """Stamp the heartbeat with the clock (time.monotonic) and write the whole block."""
        return self.update(heartbeat=self._clock())
