"""A partition replica's storage condition: a full disk or an I/O error is answered,
not crashed on.

When a write to the partition's directory fails (an append, a checkpoint, a roll, the
leader-epoch file; ``ENOSPC``, ``EDQUOT``, ``EIO``, ``EROFS``), the worker does not die:
its ``StorageCondition`` goes to *failed* and stays there until a probe succeeds.

While failed:
- produce is answered with the retriable ``STORAGE_ERROR`` before anything is written;
  fetches and list_offsets read what is on disk as usual;
- the worker's status block says so (``storage_error``, the errno and since when),
  which ``sluice status``, ``/healthz`` and ``sluice_partition_storage_error`` show,
  and the supervisor's reconciler resigns the leadership if another in-sync replica
  can take it (``appliance/reconcile.py``);
- every ``PROBE_S`` the worker's tick probes (``probe``): it writes, fsyncs and removes
  a ``PROBE_BYTES`` file in the directory, then retries the write that failed last (the
  leader-epoch file if a truncation is unsaved, and the recovery-point checkpoint).
  A follower's fetch loop retries its append every second as well; any write that
  succeeds again clears the condition.

A worker that cannot even open its log (``Log.open`` fails with one of those errnos)
serves ``STORAGE_ERROR`` to every request and retries the open every ``PROBE_S``
(``PartitionWorker._await_storage``), instead of crash-looping into ``offline``.

A failed background ``fdatasync`` is not one of these conditions: what the kernel
lost cannot be known from this process, so it stays fatal (``FlushFailedError``;
the worker exits and its restart verifies the log, see ``docs/storage.md``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable

from appliance.log.checkpoint import write_durably
from appliance.log.log import Log

log = logging.getLogger(__name__)

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
PROBE_S = 2.0  # while failed: probe the directory this often
PROBE_FILE = "storage-probe.tmp"  # a *.tmp: recovery removes one a crash left behind
PROBE_BYTES = 64 * 1024


def is_storage_error(exc: BaseException) -> bool:
    """An error of the directory's filesystem (full, read-only, failing), as opposed to
    a bug or a damaged file."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


class StorageCondition:
    """Whether this replica's directory takes writes (see the module docstring)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.clock = clock
        self.errno = 0
        self.message = ""
        self.since = 0.0  # time.time() when it failed (shown by sluice status), 0 when fine
        self.next_probe = 0.0  # on ``clock``
        self.failures = 0  # times it went to failed (a counter, for the log and tests)

    @property
    def failed(self) -> bool:
        return self.since > 0

    def fail(self, exc: OSError) -> None:
        """A write to the directory failed with ``exc``."""
        if not self.failed:
            self.failures += 1
            self.since = time.time()
            log.error("%s: storage error, refusing produce and retrying every %.0f s: %s", self.name, PROBE_S, exc)
        self.errno = exc.errno or 0
        self.message = str(exc)
        self.next_probe = self.clock() + PROBE_S

    def ok(self) -> None:
        """A write succeeded again."""
        if self.failed:
            log.warning(
                "%s: storage available again after %.1f s; accepting writes", self.name, time.time() - self.since
            )
            self.since, self.errno, self.message = 0.0, 0, ""

    def probe_due(self, now: float) -> bool:
        return self.failed and now >= self.next_probe

    def describe(self) -> str:
        return f"storage unavailable since {time.strftime('%H:%M:%S', time.localtime(self.since))}: {self.message}"


def probe_directory(directory: str, size: int = PROBE_BYTES) -> None:
    """Write ``size`` bytes to a file in ``directory``, fsync, remove it; OSError if the
    filesystem does not take them (the file is removed either way)."""
    path = os.path.join(directory, PROBE_FILE)
    try:
        write_durably(path, bytes(size))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def probe(lg: Log) -> None:
    """The recovery check of a failed log: the directory takes a write again, and the
    writes that fail on a full disk (an unsaved leader-epoch truncation, the
    recovery-point checkpoint) go through. Raises OSError if not."""
    probe_directory(lg.directory)
    assert lg.leader_epochs is not None
    lg.leader_epochs.save_unsaved()
    lg.checkpoint_recovery_point()
