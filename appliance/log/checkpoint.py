"""Crash-safe small files: the recovery point and the leader-epoch checkpoint.

Every write goes tmp file -> fsync -> ``os.replace`` -> fsync of the directory, so a
crash leaves either the old or the new content, never a mix. A write that fails (a
full disk: ``ENOSPC``; ``EIO``) removes its temp file and raises ``OSError`` with the
errno and the checkpoint's path; the previous checkpoint stays in place, and the caller
decides (the partition worker reports a storage error and retries, see
``appliance/partition/storage.py``).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os

from ipc.private import open_private

log = logging.getLogger(__name__)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str, data: bytes) -> None:
    """Create (or truncate) ``path``, write all of ``data`` and fsync it.

    On failure (a full disk, an I/O error) the file is removed, not left half written,
    and ``OSError`` is raised with its errno and ``path``."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # 0600, whatever the umask
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}", path) from exc
    os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably (tmp, fsync, rename, fsync dir).

    If it fails before the rename, ``path`` keeps its previous content and no temp file
    is left behind; ``OSError`` names the file."""
    tmp = path + ".tmp"
    write_durably(tmp, data)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OSError(exc.errno, f"cannot replace {path}: {exc.strerror}", path) from exc
    fsync_dir(os.path.dirname(path) or ".")


class OffsetCheckpoint:
    """One offset in a text file (``version\\noffset\\n``), e.g. the recovery point."""

    VERSION = 0

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self, default: int = 0) -> int:
        try:
            with open(self.path, encoding="ascii") as f:
                lines = f.read().split()
        except FileNotFoundError:
            return default
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("unreadable checkpoint %s (%s); using %d", self.path, exc, default)
            return default
        if len(lines) != 2 or lines[0] != str(self.VERSION) or not lines[1].isdigit():
            log.warning("malformed checkpoint %s; using %d", self.path, default)
            return default
        return int(lines[1])

    def write(self, offset: int) -> None:
        atomic_write(self.path, f"{self.VERSION}\n{offset}\n".encode())


class LeaderEpochCache:
    """Leader epoch -> first offset written in it, persisted as ``leader-epoch-checkpoint``.

    This is what KIP-101 truncation asks: "where did epoch E end?" is the start offset
    of the first epoch after E (or the log end offset for the latest epoch).
    File format: ``0\\n<count>\\n`` then one ``<epoch> <start offset>`` per line.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.epochs: list[int] = []
        self.starts: list[int] = []
        self.unsaved = False  # a truncation not yet on disk (see truncate_from_end)
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, encoding="ascii") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        try:
            if lines[0] != "0" or int(lines[1]) != len(lines) - 2:
                raise ValueError("bad header")
            pairs = [tuple(int(x) for x in line.split()) for line in lines[2:]]
            for epoch, start in pairs:
                if self.epochs and (epoch <= self.epochs[-1] or start < self.starts[-1]):
                    raise ValueError("entries not increasing")
                self.epochs.append(epoch)
                self.starts.append(start)
        except (ValueError, IndexError) as exc:
            log.warning("malformed leader epoch checkpoint %s (%s); starting empty", self.path, exc)
            self.epochs, self.starts = [], []

    def _persist(self) -> None:
        body = "".join(f"{e} {s}\n" for e, s in zip(self.epochs, self.starts, strict=True))
        atomic_write(self.path, f"0\n{len(self.epochs)}\n{body}".encode())
        self.unsaved = False

    def save_unsaved(self) -> None:
        """Write a truncation that could not be written when it happened; OSError if
        it still cannot be."""
        if self.unsaved:
            self._persist()

    @property
    def latest_epoch(self) -> int:
        return self.epochs[-1] if self.epochs else -1

    def entries(self) -> list[tuple[int, int]]:
        return list(zip(self.epochs, self.starts, strict=True))

    def assign(self, epoch: int, start_offset: int) -> None:
        """Record that ``epoch`` began at ``start_offset`` (no-op if not newer)."""
        if epoch < 0 or (self.epochs and epoch <= self.epochs[-1]):
            return
        self.epochs.append(epoch)
        self.starts.append(start_offset)
        try:
            self._persist()
        except OSError:
            # not on disk, so not known: the next append in this epoch assigns it again
            self.epochs.pop()
            self.starts.pop()
            raise

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """(largest epoch <= ``epoch``, the offset where it ended) as in KIP-101.

        Returns (-1, -1) when ``epoch`` is older than anything known.
        """
        i = bisect.bisect_right(self.epochs, epoch)
        if i == 0:
            return -1, -1
        found = self.epochs[i - 1]
        end = self.starts[i] if i < len(self.epochs) else log_end_offset
        return found, end

    def truncate_from_end(self, end_offset: int) -> None:
        """Forget epochs that start at or after ``end_offset`` (after a log truncation).

        If the file cannot be written (a full disk) the cache forgets them anyway and
        keeps ``unsaved``: the file then still lists epochs that start at or past the
        truncated log's end, which is harmless, because opening the log drops exactly
        those (``Log._load``); the next write of the file includes the truncation."""
        keep = bisect.bisect_left(self.starts, end_offset)
        if keep != len(self.starts):
            del self.epochs[keep:], self.starts[keep:]
            try:
                self._persist()
            except OSError as exc:
                self.unsaved = True
                log.warning("leader epoch checkpoint not updated after a truncation (kept in memory): %s", exc)
