"""A crash-safe single-producer / single-consumer byte ring in shared memory, and its
doorbell: the building block of the same-host data path (docs/architecture.md).

One ring carries messages (byte strings) in one direction between two processes of the
same user on one host: exactly one *writer* process appends, exactly one *reader*
process takes them in order. It is a plain file (the node's private runtime directory,
mode 0600: ``ipc/private.py``) mapped with ``os.open`` + ``mmap.mmap`` by both sides;
there is no ``multiprocessing.shared_memory`` (pitfalls.md, item 1). ``Ring.create``
writes the whole file under a temporary name and ``os.replace``-s it onto its path, so
nobody attaches to a half-initialised ring; ``Ring.attach`` refuses a symbolic link,
another user's file, a file of the wrong size or layout, and (when given) a ring whose
``token`` is not the one its creator announced.

Byte layout
-----------
Every number is little-endian. Header (HEADER_SIZE = 64 bytes at offset 0), written
once by ``create``:

    offset  size  type   field
    0       4     bytes  magic          b"SLRG"
    4       2     u16    version        FORMAT_VERSION (1)
    6       2     pad    -
    8       8     u64    capacity       bytes of the data area, a multiple of 64, >= 1024
    16      8     u64    token          a random number naming this ring (the session's)
    24      4     u32    max_message    the longest message the ring accepts
    28      4     i32    creator_pid    pid of the process that created the ring
    32      32    pad    -

Writer block (HEAD_OFFSET = 64, its own cache line), written only by the writer:

    64      8     u64    head           bytes ever appended (the end of the last message)

Reader block (TAIL_OFFSET = 128, its own cache line), written only by the reader:

    128     8     u64    tail           bytes ever taken (the start of the next message)

Data area at DATA_OFFSET = 192, ``capacity`` bytes. ``head`` and ``tail`` only grow
(a u64 of bytes does not wrap in practice), so ``head - tail`` is what is unread and
``capacity - (head - tail)`` what is free: full and empty are never confused. Stream
position ``p`` is at data offset ``p % capacity``. A message at position ``p`` is an
entry of ENTRY_HEADER (16 bytes) and its payload, padded to a multiple of 16:

    0       8     u64    position       p itself (an entry of an earlier lap has another)
    8       4     u32    length         of the payload; WRAP (0xFFFFFFFF): no payload,
                                        the entry runs to the end of the data area and
                                        the next one starts at data offset 0
    12      4     u32    crc            CRC32C of the payload

An entry never straddles the end of the data area: one that would is preceded by a
WRAP entry. Everything is a multiple of 16, so a WRAP always fits.

Crash safety
------------
The writer copies an entry (header and payload) into the data area and only then stores
the new ``head``; the reader copies a payload out and only then stores the new ``tail``.
Each counter is one aligned 8-byte store through a native ``Q`` memoryview, never seen
half-written. The protocol relies on x86-64's ordering (stores are not reordered with
stores, loads not with loads, and loads not with later stores); CPython issues no
barriers, so ``Ring`` refuses other machines (``RingError``; the client then keeps TCP).

- A writer killed in the middle of a write leaves ``head`` where it was: the torn
  entry lies beyond it and is never read; what was published before is intact.
- A reader killed after taking a message but before acting on it loses nothing that was
  acknowledged: the ring acknowledges nothing itself, the messages it carries do (a
  produce is acknowledged by the worker after its append, through the other ring).
- The reader trusts nothing: ``head`` must be ahead of ``tail`` by at most
  ``capacity``; each entry's position must be its own, its length within
  ``max_message`` and inside both the published bytes and the data area, its CRC must
  match. Anything else is ``RingCorruptError`` (a writer that scribbles, or a file that
  was not a ring), and the session that owns the ring is closed; nothing is read past
  it and no process dies of it.

Memory is bounded: a ring is ``DATA_OFFSET + capacity`` bytes (its owner decides how
many rings it holds). A full ring is back-pressure: ``write`` returns False and the
writer waits (for its doorbell) until the reader has taken enough.

Doorbells
---------
A doorbell is a pollable file descriptor (``fileno()``) that one side ``ring``s after
publishing and the other ``drain``s before reading, so each hop costs one wake-up; a
reader drains first and reads until the ring is empty, so no publication is missed.
``FifoDoorbell`` is a named pipe beside the ring (0600, in the same private directory):
any process of the node's user opens it by path, and a ZeroMQ poller watches it as a
raw fd. ``EventDoorbell`` (Linux ``eventfd``) costs the same per hop (docs/performance.md,
"The same-host ring's hop") but can only be inherited or passed over a Unix socket, so
the same-host path uses the FIFO.
"""

from __future__ import annotations

import errno
import mmap
import os
import platform
import secrets
import stat
import struct
from collections.abc import Sequence
from typing import Any

import crc32c as _crc32c

from ipc.errors import SluiceError
from ipc.private import open_private

MAGIC = b"SLRG"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sH2xQQIi32x")  # magic, version, capacity, token, max_message, creator_pid
HEADER_SIZE = 64
HEAD_OFFSET = 64
TAIL_OFFSET = 128
DATA_OFFSET = 192
ENTRY = struct.Struct("<QII")  # position, length, crc
ENTRY_HEADER = 16
ALIGN = 16
WRAP = 0xFFFFFFFF
MIN_CAPACITY = 1024
MAX_CAPACITY = 1 << 30
SUPPORTED = platform.machine().lower() in ("x86_64", "amd64")

assert HEADER.size == HEADER_SIZE and ENTRY.size == ENTRY_HEADER


class RingError(SluiceError):
    """The ring cannot be made or used here (a bad path, size, file or machine)."""

    code = "INVALID_CONFIG"
    retriable = False


class RingCorruptError(RingError):
    """What the ring holds is not what a writer following the protocol writes."""

    code = "CORRUPT_MESSAGE"


def _padded(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def file_size(capacity: int) -> int:
    """Bytes of the file of a ring of ``capacity`` data bytes (what it costs in memory)."""
    return DATA_OFFSET + capacity


class Ring:
    """One mapped ring; a process uses it either as its writer or as its reader."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        magic, version, capacity, token, max_message, creator = HEADER.unpack_from(mm, 0)
        self.capacity: int = capacity
        self.token: int = token
        self.max_message: int = max_message
        self.creator_pid: int = creator
        view = memoryview(mm)
        self._head = view[HEAD_OFFSET : HEAD_OFFSET + 8].cast("Q")
        self._tail = view[TAIL_OFFSET : TAIL_OFFSET + 8].cast("Q")
        self._data = view[DATA_OFFSET : DATA_OFFSET + capacity]
        self._view = view

    # ---- making and opening -----------------------------------------------------------
    @classmethod
    def create(cls, path: str, capacity: int, max_message: int | None = None, token: int | None = None) -> Ring:
        """A new empty ring at ``path`` (replacing any file there)."""
        if not SUPPORTED:
            raise RingError(f"shared-memory rings need an x86-64 host, not {platform.machine()!r}")
        if not MIN_CAPACITY <= capacity <= MAX_CAPACITY or capacity % 64:
            raise RingError(f"ring capacity {capacity} must be a multiple of 64 in [{MIN_CAPACITY}, {MAX_CAPACITY}]")
        largest = capacity - ENTRY_HEADER - ALIGN  # one message always fits an empty ring
        max_message = largest if max_message is None else max_message
        if not 0 < max_message <= largest:
            raise RingError(f"ring max_message {max_message} must be in [1, {largest}] for capacity {capacity}")
        token = secrets.randbits(64) if token is None else token
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = open_private(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            os.ftruncate(fd, file_size(capacity))
            os.pwrite(fd, HEADER.pack(MAGIC, FORMAT_VERSION, capacity, token, max_message, os.getpid()), 0)
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            with _suppress_missing():
                os.unlink(tmp)
            raise
        return cls(path, fd, mmap.mmap(fd, file_size(capacity)))

    @classmethod
    def attach(cls, path: str, token: int | None = None) -> Ring:
        """Map the ring at ``path``: this user's regular file, of a ring's layout and size,
        holding ``token`` when given. ``RingError`` otherwise, naming what is wrong."""
        if not SUPPORTED:
            raise RingError(f"shared-memory rings need an x86-64 host, not {platform.machine()!r}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise RingError(f"ring {path!r} cannot be opened: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise RingError(f"ring {path!r} is not a regular file of uid {os.geteuid()}")
            if st.st_size < DATA_OFFSET + MIN_CAPACITY:
                raise RingError(f"ring {path!r} is too short ({st.st_size} bytes) to be a ring")
            raw = os.pread(fd, HEADER_SIZE, 0)
            magic, version, capacity, found, max_message, _ = HEADER.unpack(raw)
            if magic != MAGIC or version != FORMAT_VERSION:
                raise RingError(f"ring {path!r} is not a ring of version {FORMAT_VERSION} ({magic!r} v{version})")
            if st.st_size != file_size(capacity) or capacity % 64 or not 0 < max_message < capacity:
                raise RingError(f"ring {path!r}: capacity {capacity} does not match its size {st.st_size}")
            if token is not None and found != token:
                raise RingError(f"ring {path!r} is not the ring announced (token {found:#x}, expected {token:#x})")
            return cls(path, fd, mmap.mmap(fd, st.st_size))
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Unmap (the file stays: ``unlink`` removes it)."""
        if self._fd < 0:
            return
        self._head.release()
        self._tail.release()
        self._data.release()
        self._view.release()
        self._mm.close()
        os.close(self._fd)
        self._fd = -1

    def unlink(self) -> None:
        with _suppress_missing():
            os.unlink(self.path)

    # ---- both sides --------------------------------------------------------------------
    @property
    def head(self) -> int:
        return int(self._head[0])

    @property
    def tail(self) -> int:
        return int(self._tail[0])

    def used(self) -> int:
        """Bytes published and not yet taken (entry headers and padding included)."""
        return int(self._head[0]) - int(self._tail[0])

    # ---- the writer ----------------------------------------------------------------------
    def write(self, parts: Sequence[Any]) -> bool:
        """Append one message, the concatenation of ``parts`` (bytes-like). False if the
        ring has no room for it now (the reader has not taken enough yet); ``RingError``
        if it is longer than ``max_message``. The writer process alone calls this."""
        length = 0
        crc = 0
        for part in parts:
            length += len(part)
            crc = _crc32c.crc32c(part, crc)
        if length > self.max_message:
            raise RingError(f"message of {length} bytes exceeds the ring's max_message {self.max_message}")
        capacity = self.capacity
        head = int(self._head[0])
        tail = int(self._tail[0])
        at = head % capacity
        size = ENTRY_HEADER + _padded(length)
        skip = capacity - at if at + size > capacity else 0
        if head + skip + size - tail > capacity:
            return False
        data = self._data
        if skip:
            ENTRY.pack_into(data, at, head, WRAP, 0)
            head += skip
            at = 0
        pos = at + ENTRY_HEADER
        for part in parts:
            n = len(part)
            data[pos : pos + n] = part
            pos += n
        ENTRY.pack_into(data, at, head, length, crc)
        self._head[0] = head + size  # published: the entry is complete before this store
        return True

    def room(self) -> int:
        """The longest message ``write`` would take now: in place up to the end of the
        data area, or after a wrap to its start."""
        capacity = self.capacity
        head = int(self._head[0])
        free = capacity - (head - int(self._tail[0]))
        to_end = capacity - head % capacity
        best = min(to_end, free)
        if to_end < capacity:
            best = max(best, free - to_end)
        return max(0, min(best - ENTRY_HEADER, self.max_message))

    # ---- the reader ----------------------------------------------------------------------
    def read(self) -> bytes | None:
        """Take the next message (a copy), or None if none is published. The reader
        process alone calls this. ``RingCorruptError`` if the ring is not consistent."""
        tail = int(self._tail[0])
        head = int(self._head[0])
        if head == tail:
            return None
        capacity = self.capacity
        if not tail < head <= tail + capacity:
            raise RingCorruptError(f"ring {self.path}: head {head} is not within {capacity} bytes after tail {tail}")
        data = self._data
        at = tail % capacity
        position, length, crc = ENTRY.unpack_from(data, at)
        if position != tail:
            raise RingCorruptError(f"ring {self.path}: the entry at {tail} says it is at {position}")
        if length == WRAP:
            if at == 0 or tail + capacity - at >= head:
                raise RingCorruptError(f"ring {self.path}: a wrap at {position} runs past what is published")
            tail += capacity - at
            at = 0
            position, length, crc = ENTRY.unpack_from(data, 0)
            if position != tail:
                raise RingCorruptError(f"ring {self.path}: the entry at {tail} says it is at {position}")
        size = ENTRY_HEADER + _padded(length)
        if length > self.max_message or at + size > capacity or tail + size > head:
            raise RingCorruptError(
                f"ring {self.path}: the entry at {tail} of {length} bytes does not fit "
                f"(max_message {self.max_message}, {head - tail} bytes published)"
            )
        payload = bytes(data[at + ENTRY_HEADER : at + ENTRY_HEADER + length])
        if _crc32c.crc32c(payload) != crc:
            raise RingCorruptError(f"ring {self.path}: the entry at {tail} fails its CRC32C")
        self._tail[0] = tail + size  # taken: the copy is made before the writer may reuse it
        return payload


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        return isinstance(exc, OSError) and exc.errno == errno.ENOENT


# ---- doorbells ------------------------------------------------------------------------------
class FifoDoorbell:
    """A named pipe: the waiting side (``listen``) polls ``fileno()``; the ringing side
    (``connect``) writes a byte. Bytes pile up at most to the pipe's size (a full pipe
    already rings). The listener holds no write end of its own, so when its ringer has
    gone (closed, exited, killed) the read end reports POLLHUP and ``drain`` returns
    False: each side learns at once that the other died. Before anyone connected there
    is no POLLHUP (Linux reports it only after a writer came and went); a ringer rings
    right after it connects."""

    def __init__(self, path: str, read_fd: int, write_fd: int) -> None:
        self.path = path
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._heard = False  # a ringer has rung: an end of file now means it has gone

    @classmethod
    def create(cls, path: str) -> FifoDoorbell:
        """Make the FIFO (0600, replacing any file there); nobody listens yet."""
        with _suppress_missing():
            os.unlink(path)
        os.mkfifo(path, 0o600)
        os.chmod(path, 0o600)  # whatever the umask
        return cls(path, -1, -1)

    @classmethod
    def listen(cls, path: str) -> FifoDoorbell:
        return cls(path, cls._open(path, os.O_RDONLY), -1)

    @classmethod
    def connect(cls, path: str) -> FifoDoorbell:
        """Ring the FIFO someone listens on (``RingError`` if it is not this user's FIFO
        or nobody listens)."""
        return cls(path, -1, cls._open(path, os.O_WRONLY))

    @staticmethod
    def _open(path: str, flags: int) -> int:
        try:
            fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise RingError(f"doorbell {path!r} cannot be opened: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise RingError(f"doorbell {path!r} is not a FIFO of uid {os.geteuid()}")
        return fd

    def fileno(self) -> int:
        return self._read_fd

    def ring(self) -> None:
        """Wake the listener. ``BrokenPipeError`` if it has gone (its read end closed)."""
        try:
            os.write(self._write_fd, b"\x01")
        except BlockingIOError:  # the pipe is full: the listener has plenty of rings pending
            pass

    def drain(self, polled: bool = False) -> bool:
        """Empty the pipe; False if the ringer has gone: end of file (no writer left)
        after it rang at least once, or after the poll reported the fd (``polled``: a
        FIFO no writer ever opened is never reported; one whose writer left reports
        POLLHUP until the listener acts). Before any ringer came, a FIFO reads as end of
        file too, and that alone is not a hang-up."""
        for _ in range(64):  # bounded: a pipe holds 64 KiB
            try:
                got = os.read(self._read_fd, 4096)
            except BlockingIOError:
                return True
            if not got:
                return not (self._heard or polled)
            self._heard = True
            if len(got) < 4096:
                return True
        return True

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._write_fd = -1

    def unlink(self) -> None:
        with _suppress_missing():
            os.unlink(self.path)


class EventDoorbell:
    """A Linux eventfd: one counter, coalescing. Shared only by inheritance (fork) or
    SCM_RIGHTS; here for the measurement beside ``FifoDoorbell``."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if fd is None else fd

    def fileno(self) -> int:
        return self._fd

    def ring(self) -> None:
        os.eventfd_write(self._fd, 1)

    def drain(self) -> bool:
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
