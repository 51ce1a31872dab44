"""What ``Admin.delete_records`` (Kafka's DeleteRecords) rests on in the log
(``Log.advance_log_start``, appliance/log/log.py): the log start offset moves into a
segment, reads below it fail, whole segments below it go, it survives a restart and a
crash between its checkpoint and the deletions, retention never moves it back, and a
follower that starts over elsewhere saves its new start. Real files in ``tmp_path``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from appliance.log.checkpoint import OffsetCheckpoint
from appliance.log.config import LogConfig
from appliance.log.log import LOG_START_FILE, Log
from ipc.errors import OffsetOutOfRangeError
from ipc.records import decode_batches, encode_batch

SEG = 1024  # segment.bytes: a few batches per segment


def fill(lg: Log, batches: int, per_batch: int = 5, ts: int | None = None) -> None:
    stamp = int(time.time() * 1000) if ts is None else ts
    for i in range(batches):
        values: list[bytes | None] = [b"v%04d-%03d" % (i, j) + b"." * 40 for j in range(per_batch)]
        lg.append(encode_batch(values, None, timestamp=stamp), leader_epoch=0)


def first_offset_read(lg: Log, offset: int) -> int:
    data = lg.read(offset, 1 << 20)
    return min(o for b in decode_batches(data) for o in b.offsets if o >= offset)


def crash(lg: Log) -> None:
    for seg in lg.segments:
        seg.close()
    lg.segments = []


def test_the_start_moves_into_a_segment_hides_what_is_below_and_deletes_whole_segments(tmp_path: Path) -> None:
    lg = Log.open(str(tmp_path / "t-0"), LogConfig(segment_bytes=SEG))
    fill(lg, 30)
    assert len(lg.segments) > 3
    target = lg.segments[2].base_offset + 2  # inside the third segment
    assert lg.advance_log_start(target) == target
    assert lg.log_start_offset == target and lg.segments[0].base_offset <= target < lg.segments[1].base_offset
    with pytest.raises(OffsetOutOfRangeError):
        lg.read(target - 1, 1 << 20)
    assert first_offset_read(lg, target) == target  # the straddling batch is read whole; the reader skips
    assert lg.advance_log_start(target - 5) == target  # never back
    with pytest.raises(OffsetOutOfRangeError):
        lg.advance_log_start(lg.log_end_offset + 1)
    assert lg.advance_log_start(lg.log_end_offset) == lg.log_end_offset  # everything: the active segment stays
    assert len(lg.segments) == 1
    lg.close()


@pytest.mark.parametrize("how", ["clean", "crash"])
def test_the_start_survives_a_restart(tmp_path: Path, how: str) -> None:
    d = str(tmp_path / "t-0")
    lg = Log.open(d, LogConfig(segment_bytes=SEG))
    fill(lg, 20)
    target = lg.segments[1].base_offset + 3
    lg.advance_log_start(target)
    end = lg.log_end_offset
    lg.close() if how == "clean" else crash(lg)
    lg = Log.open(d, LogConfig(segment_bytes=SEG))
    assert (lg.log_start_offset, lg.log_end_offset) == (target, end)
    with pytest.raises(OffsetOutOfRangeError):
        lg.read(target - 1, 1 << 20)
    lg.close()


def test_a_crash_after_the_checkpoint_leaves_segments_that_the_next_open_deletes(tmp_path: Path) -> None:
    d = str(tmp_path / "t-0")
    lg = Log.open(d, LogConfig(segment_bytes=SEG))
    fill(lg, 20)
    target = lg.segments[2].base_offset + 1
    segments = len(lg.segments)
    OffsetCheckpoint(os.path.join(d, LOG_START_FILE)).write(target)  # the first step only
    crash(lg)
    lg = Log.open(d, LogConfig(segment_bytes=SEG))
    assert lg.log_start_offset == target and len(lg.segments) == segments - 2
    lg.close()


def test_a_start_past_the_recovered_end_starts_the_log_empty_there(tmp_path: Path) -> None:
    d = str(tmp_path / "t-0")
    lg = Log.open(d, LogConfig(segment_bytes=SEG))
    fill(lg, 4)
    end = lg.log_end_offset
    crash(lg)
    OffsetCheckpoint(os.path.join(d, LOG_START_FILE)).write(end + 7)  # as if the tail was lost
    lg = Log.open(d, LogConfig(segment_bytes=SEG))
    assert lg.log_start_offset == lg.log_end_offset == end + 7
    lg.close()


def test_retention_never_moves_the_start_back(tmp_path: Path) -> None:
    lg = Log.open(str(tmp_path / "t-0"), LogConfig(segment_bytes=SEG, retention_ms=1000))
    old = int(time.time() * 1000) - 60_000
    fill(lg, 20, ts=old)
    fill(lg, 1)  # a recent batch keeps the active segment
    target = lg.segments[1].base_offset + 2
    lg.advance_log_start(target)  # deletes segment 0; segment 1 now first, holding the start
    assert lg.apply_retention() >= 1
    assert lg.log_start_offset == max(target, lg.segments[0].base_offset)
    lg.close()


def test_a_full_truncation_saves_its_start_so_a_restart_keeps_it(tmp_path: Path) -> None:
    d = str(tmp_path / "t-0")
    lg = Log.open(d, LogConfig(segment_bytes=SEG))
    fill(lg, 10)
    lg.advance_log_start(20)
    lg.truncate_fully_and_start_at(5)  # a follower starting over below its old start
    crash(lg)
    lg = Log.open(d, LogConfig(segment_bytes=SEG))
    assert lg.log_start_offset == lg.log_end_offset == 5
    lg.close()
