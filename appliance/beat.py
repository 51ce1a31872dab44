"""A child's heartbeat file: the one small file a child (a connector, the Kafka listener)
writes and the node reads to know it is alive.

The file holds ``(pid, monotonic time)`` (``BEAT``: little-endian int64 and double;
``time.monotonic()`` is system-wide, so the node can compare it with its own clock),
rewritten in place with one ``pwrite`` per beat. A reader gets the whole record or a
short read (None): 16 bytes at offset 0 are written at once. Partition workers beat in
the shared-memory status table instead (ipc/shm.py): there are many of them.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time

BEAT = struct.Struct("<qd")


class Beat:
    """The child's side: ``beat()`` stamps the file with its pid and the time."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.pid = os.getpid()

    def __call__(self) -> None:
        os.pwrite(self.fd, BEAT.pack(self.pid, time.monotonic()), 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def read_beat(path: str) -> tuple[int, float] | None:
    """The node's side: (pid, monotonic time) of the last beat, None if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        data = os.pread(fd, BEAT.size, 0)
    finally:
        os.close(fd)
    if len(data) != BEAT.size:
        return None
    pid, beat = BEAT.unpack(data)
    return int(pid), float(beat)
