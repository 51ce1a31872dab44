"""``BackgroundFlusher``: the interval fsync in a helper thread.

With ``fsync=interval`` the partition worker used to call ``fdatasync`` inside its
request loop: every interval one request (and every request queued behind it) waited
for the disk. The flusher takes that call off the loop: ``Log.maybe_flush`` hands it a
duplicate of the active segment's descriptor and goes on; ``os.fdatasync`` releases the
GIL, so the loop keeps serving while the disk works.

Requests coalesce: while a flush runs, a newer request replaces any waiting one (one
``fdatasync`` covers every write made before it starts). The descriptor is a ``dup``,
so a segment rolled or deleted meanwhile is still flushed safely. A failed flush is
fatal for the log and stays so: ``check`` raises it on every call from then on (the
next ``maybe_flush``, a checkpoint, a roll, ``close``). The error cannot be retried
away: the descriptor is a ``dup``, so the kernel reported the failure once, to the
helper, and a later ``fsync`` of the same file may well succeed without the lost pages
being on disk; nothing may be promised durable after it (Kafka takes the log
directory offline). ``wait`` blocks until nothing is pending (before a recovery-point
checkpoint, which promises that everything below it is on disk, and before close).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 30.0


class FlushFailedError(OSError):
    """A background ``fdatasync`` failed: fatal for the log (see the module docstring),
    unlike a write refused by a full disk, which the partition worker answers and
    retries (``appliance/partition/storage.py``)."""


class BackgroundFlusher:
    def __init__(self, name: str) -> None:
        self.name = name
        self._cv = threading.Condition()
        self._waiting: int | None = None  # a dup'd descriptor to flush next
        self._busy = False
        self._closed = False
        self._error: OSError | None = None
        self.flushes = 0
        self._thread = threading.Thread(target=self._run, name=f"flush-{name}", daemon=True)
        self._thread.start()

    def submit(self, fd: int) -> None:
        """Flush ``fd``'s file soon (in the helper thread); returns at once."""
        dup = os.dup(fd)
        with self._cv:
            if self._closed:
                os.close(dup)
                raise RuntimeError(f"flusher {self.name} is closed")
            if self._waiting is not None:
                os.close(self._waiting)  # this request covers the older one
            self._waiting = dup
            self._cv.notify_all()

    def check(self) -> None:
        """Raise the error of a background flush that failed (on every call from then on)."""
        with self._cv:
            err = self._error
        if err is not None:
            raise FlushFailedError(err.errno, f"background fdatasync of {self.name} failed earlier: {err.strerror}")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no flush is running or waiting; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._waiting is None and not self._busy, timeout)

    def close(self) -> None:
        """Finish what is pending, stop the thread. Idempotent."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self._thread.join(JOIN_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._waiting is not None or self._closed)
                fd = self._waiting
                if fd is None:
                    return  # closed, nothing left
                self._waiting = None
                self._busy = True
            try:
                os.fdatasync(fd)
            except OSError as exc:
                log.error("%s: background fdatasync failed: %s", self.name, exc)
                with self._cv:
                    if self._error is None:
                        self._error = exc
            finally:
                os.close(fd)
                with self._cv:
                    self._busy = False
                    self.flushes += 1
                    self._cv.notify_all()
