"""Process-level helpers shared by the supervisor and its workers."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

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


class RepeatFilter(logging.Filter):
    """Rate-limits identical log lines: the first goes out; the same line (same logger,
    level and text) again within ``window_s`` is only counted, and the first one after
    the window says how often it was held back: ``... (repeated 97 times in 20 s)``.
    A node cut off from its peers would otherwise log the same warning every 200 ms."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic, max_lines: int = 1000):
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self.max_lines = max_lines
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # line -> [window start, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = (record.name, record.levelno, text)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg, record.args = f"{text} (repeated {int(seen[1])} times in {now - seen[0]:.0f} s)", None
        if len(self._seen) >= self.max_lines:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
        self._seen[key] = [now, 0]
        return True


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RepeatFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
