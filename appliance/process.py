"""Process-level helpers shared by the supervisor and its workers."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(name)s] %(message)s"


def die_with_parent(expected_parent_alive_pid: int) -> None:
    """SIGKILL this process when its parent exits (Linux ``PR_SET_PDEATHSIG``).

    Closes the race where the parent died before the call: afterwards, if
    ``expected_parent_alive_pid`` (the supervisor) is gone, exit at once.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:  # not Linux
        log.warning("cannot set parent-death signal: %s", exc)
    if os.getppid() == 1 or not pid_alive(expected_parent_alive_pid):
        os._exit(1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SignalPipe:
    """Signals only enqueue: handlers set a flag and the wakeup fd makes ``poll`` return."""

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.rsock, self.wsock = socket.socketpair()
        self.rsock.setblocking(False)
        self.wsock.setblocking(False)
        self.pending: list[int] = []
        signal.set_wakeup_fd(self.wsock.fileno(), warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def fileno(self) -> int:
        return self.rsock.fileno()

    def drain(self) -> list[int]:
        try:
            while self.rsock.recv(4096):
                pass
        except BlockingIOError:
            pass
        out, self.pending = self.pending, []
        return out

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.rsock.close()
        self.wsock.close()


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
