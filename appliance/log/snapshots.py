"""Producer-state snapshots: ``<offset>.snapshot`` files in a partition's directory.

As Kafka's ``ProducerStateManager``: when a segment rolls (and at a clean close) the
owner of the producer table writes the table as of the log end offset ``X`` to
``<X, 20 digits>.snapshot``; a restart loads the newest snapshot at or below the
recovery point and replays only the batch headers from ``X`` on
(``ProducerStateTable.rebuild``), instead of every batch header of every segment.

A snapshot at ``X`` describes exactly the batches below ``X``, so the log keeps them
consistent (``Log``): a truncation deletes every snapshot past the new log end offset
(before the segments go, so a crash cannot leave one behind), ``truncate_fully``
deletes all, retention and ``advance_log_start`` delete those below the first
remaining segment, compaction deletes those inside a segment it removes, and opening
a log deletes those past the recovered log end offset (a crash lost the tail they
describe) or below its first segment. Only the newest ``KEEP`` are kept.

File: one line ``SLUICE-PRODUCER-SNAPSHOT 1 <crc32 of the body, 8 hex>``, then a
JSON body ``{"offset": X, "producers": [[pid, epoch, last_timestamp, [[first_seq,
last_seq, base_offset, last_offset], ...]], ...]}``. Written as every checkpoint is
(tmp, fsync, rename, fsync of the directory; mode 0600). A snapshot that cannot be
read, fails its CRC, names another offset or holds an offset at or past its own is
ignored with a warning (and deleted): the state is rebuilt from an older snapshot or
from the batch headers. This module knows files only; the table's encoding is in
``producers.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections.abc import Callable
from typing import Any

from appliance.log.checkpoint import atomic_write, fsync_dir

log = logging.getLogger(__name__)

SUFFIX = ".snapshot"
MAGIC = b"SLUICE-PRODUCER-SNAPSHOT 1 "
KEEP = 3  # the newest snapshots kept (older ones only help after a deep truncation)


def snapshot_path(directory: str, offset: int) -> str:
    return os.path.join(directory, f"{offset:020d}{SUFFIX}")


def list_snapshots(directory: str) -> list[int]:
    """The offsets of the snapshots in ``directory``, oldest first."""
    out = []
    for name in os.listdir(directory):
        stem = name[: -len(SUFFIX)]
        if name.endswith(SUFFIX) and len(stem) == 20 and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def delete_snapshots(directory: str, doomed: Callable[[int], bool]) -> int:
    """Delete the snapshots whose offset ``doomed`` says; fsync the directory if any
    went; return how many."""
    gone = 0
    for offset in list_snapshots(directory):
        if doomed(offset):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(snapshot_path(directory, offset))
            gone += 1
    if gone:
        fsync_dir(directory)
    return gone


def write_snapshot(directory: str, offset: int, producers: list[Any]) -> None:
    """Write the snapshot at ``offset`` durably, then delete all but the newest
    ``KEEP``. ``OSError`` if it cannot be written (the previous ones stay)."""
    body = json.dumps({"offset": offset, "producers": producers}, separators=(",", ":")).encode()
    atomic_write(snapshot_path(directory, offset), MAGIC + b"%08x\n" % zlib.crc32(body) + body)
    kept = list_snapshots(directory)[-KEEP:]
    delete_snapshots(directory, lambda o: o not in kept)


def read_snapshot(directory: str, offset: int) -> list[Any] | None:
    """The producer list of the snapshot at ``offset``, or None (logged, and the file
    deleted) when it is unreadable or corrupt."""
    path = snapshot_path(directory, offset)
    try:
        with open(path, "rb") as f:
            data = f.read()
        head, _, body = data.partition(b"\n")
        if not head.startswith(MAGIC) or int(head[len(MAGIC) :], 16) != zlib.crc32(body):
            raise ValueError("bad header or checksum")
        doc = json.loads(body)
        if doc["offset"] != offset or not isinstance(doc["producers"], list):
            raise ValueError(f"names offset {doc['offset']}")
        producers: list[Any] = doc["producers"]
        return producers
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring producer snapshot %s (%s): rebuilding from the batch headers", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
