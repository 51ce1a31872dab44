"""One node per data directory: an exclusive ``flock`` on ``<data_dir>/.lock``.

Taken by ``sluice serve`` before it touches anything shared (the Prometheus
multiprocess directory, the status table, the control socket), and held for the
supervisor's lifetime. The file holds the owner's pid, for the error message.
"""

from __future__ import annotations

import fcntl
import os

from ipc.errors import InvalidConfigError
from ipc.private import DIR_MODE, open_private

LOCK_FILE = ".lock"


def lock_data_dir(data_dir: str) -> int:
    """Create ``data_dir`` if needed and lock it; returns the lock's fd (keep it open)."""
    try:
        os.makedirs(data_dir, mode=DIR_MODE, exist_ok=True)  # 0700 if new; an existing one is the operator's
        fd = open_private(os.path.join(data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise InvalidConfigError(f"data_dir={data_dir!r} is not usable: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise InvalidConfigError(f"data_dir={data_dir!r} is in use by another node (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
