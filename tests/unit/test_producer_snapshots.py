"""Producer-state snapshots (``appliance/log/snapshots.py``) with real files: a restart
loads the newest one and replays only the batch headers after it, and never trusts one
that no longer describes the log (truncated, past a crash's recovered end, corrupt)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.log import snapshots
from appliance.log.config import LogConfig
from appliance.log.log import Log
from appliance.log.producers import ProducerStateTable, _log_headers
from appliance.log.segment import LogSegment
from ipc.errors import OutOfOrderSequenceError
from ipc.records import encode_batch, read_header

T0_MS = 1_700_000_000_000
SEGMENT_BYTES = 1024


def batch(pid: int, seq: int, count: int = 2, epoch: int = 0) -> bytes:
    values: list[bytes | None] = [f"{pid}-{seq}-{i}".encode().ljust(40, b".") for i in range(count)]
    return encode_batch(values, timestamp=T0_MS, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


class Writer:
    """A partition leader's use of the log and the table, the snapshot hook wired as the
    partition worker's ``Replica`` wires it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.log = self.open()
        self.live = ProducerStateTable()
        self.next_seq: dict[int, int] = {}
        self.offsets: dict[tuple[int, int], int] = {}

    def open(self) -> Log:
        lg = Log.open(self.directory, LogConfig(segment_bytes=SEGMENT_BYTES), clock=lambda: T0_MS / 1000)
        lg.snapshot_hook = lambda offset: self.live.write_snapshot(self.directory, offset)
        return lg

    def produce(self, pid: int, count: int = 2) -> int:
        seq = self.next_seq.get(pid, 0)
        buf = batch(pid, seq, count)
        h = read_header(buf)
        assert self.live.check(h) is None
        base = self.log.append(buf, 0).base_offset
        self.live.update(h, base)
        self.next_seq[pid] = seq + count
        self.offsets[(pid, seq)] = base
        return base

    def fill(self, rounds: int, pids: int = 4) -> None:
        for _ in range(rounds):
            for pid in range(1, pids + 1):
                self.produce(pid)

    def crash(self) -> None:
        """Drop the descriptors without close(): no clean-shutdown marker, no snapshot."""
        if self.log._flusher is not None:
            self.log._flusher.close()
        for seg in self.log.segments:
            seg.close()
        self.log.segments = []

    def restart(self, clean: bool) -> ProducerStateTable:
        if clean:
            self.log.close()
        else:
            self.crash()
        self.log = self.open()
        self.live = ProducerStateTable.rebuild(self.log)
        return self.live


def from_scratch(lg: Log) -> ProducerStateTable:
    """The table from every batch header, no snapshot (the behaviour before them)."""
    t = ProducerStateTable()
    for h in _log_headers(lg):
        t.update(h, h.base_offset)
    return t


@pytest.fixture
def writer(tmp_path: Any) -> Iterator[Writer]:
    w = Writer(str(tmp_path / "events-0"))
    yield w
    w.crash()


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The base offsets of the segments whose batches are scanned from now on."""
    out: list[int] = []
    original = LogSegment.iter_batches

    def spy(self: LogSegment, *args: Any, **kwargs: Any) -> Any:
        out.append(self.base_offset)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LogSegment, "iter_batches", spy)
    return out


def test_a_roll_writes_a_private_snapshot_and_only_the_newest_few_are_kept(writer: Writer) -> None:
    writer.fill(20)
    lg = writer.log
    assert len(lg.segments) > snapshots.KEEP + 2
    offsets = snapshots.list_snapshots(writer.directory)
    assert offsets == [s.base_offset for s in lg.segments[-snapshots.KEEP :]]
    mode = os.stat(snapshots.snapshot_path(writer.directory, offsets[-1])).st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert not [n for n in os.listdir(writer.directory) if n.endswith(".tmp")]


def test_a_clean_restart_reads_the_close_snapshot_and_no_batch_header(writer: Writer, scanned: list[int]) -> None:
    writer.fill(20)
    before = writer.live.entries()
    end = writer.log.log_end_offset
    writer.log.close()
    assert snapshots.list_snapshots(writer.directory)[-1] == end
    writer.log = writer.open()
    scanned.clear()  # (Log.open itself scans each segment's tail past its last index entry)
    rebuilt = ProducerStateTable.rebuild(writer.log)
    assert scanned == []  # the snapshot is at the log end: no header to replay
    assert rebuilt.entries() == before == from_scratch(writer.log).entries()


def test_after_a_crash_the_last_roll_snapshot_plus_the_newer_headers_give_the_state(
    writer: Writer, scanned: list[int]
) -> None:
    writer.fill(20)
    last_roll = writer.log.active.base_offset
    writer.produce(1)
    writer.produce(9)  # a producer that exists only past the snapshot
    before = writer.live.entries()
    writer.crash()
    writer.log = writer.open()
    scanned.clear()
    rebuilt = ProducerStateTable.rebuild(writer.log)
    assert scanned == [last_roll]
    assert rebuilt.entries() == before == from_scratch(writer.log).entries()


def test_a_snapshot_past_the_end_recovered_after_a_crash_is_discarded(writer: Writer) -> None:
    writer.fill(20)
    lg = writer.log
    last, previous = lg.segments[-1], lg.segments[-2]
    writer.produce(2)
    writer.crash()
    # the machine lost the active segment and the end of the one before
    for path in last.file_paths():
        if os.path.exists(path):
            os.unlink(path)
    with open(previous.path, "r+b") as f:
        f.truncate(os.path.getsize(previous.path) - 10)
    writer.log = writer.open()
    end = writer.log.log_end_offset
    assert end < last.base_offset
    assert all(o <= end for o in snapshots.list_snapshots(writer.directory))
    assert last.base_offset not in snapshots.list_snapshots(writer.directory)
    rebuilt = ProducerStateTable.rebuild(writer.log)
    assert rebuilt.entries() == from_scratch(writer.log).entries()
    assert all(e.last_offset < end for e in rebuilt.entries().values())


def test_truncation_deletes_the_snapshots_past_it_and_the_state_comes_from_an_older_one(writer: Writer) -> None:
    writer.fill(20)
    kept = snapshots.list_snapshots(writer.directory)
    target = kept[0] + 1  # inside the segment of the oldest snapshot kept
    writer.log.truncate_to(target)
    end = writer.log.log_end_offset
    assert snapshots.list_snapshots(writer.directory) == [o for o in kept if o <= end]
    rebuilt = ProducerStateTable.rebuild(writer.log)
    assert rebuilt.entries() == from_scratch(writer.log).entries()
    # truncating below every snapshot: rebuilt from the headers alone
    writer.log.truncate_to(writer.log.segments[1].base_offset + 1)
    assert snapshots.list_snapshots(writer.directory) == []
    assert ProducerStateTable.rebuild(writer.log).entries() == from_scratch(writer.log).entries()
    writer.log.truncate_fully_and_start_at(0)
    assert ProducerStateTable.rebuild(writer.log).producer_count == 0


def test_a_truncated_batch_can_be_written_again_after_the_restart(writer: Writer) -> None:
    writer.fill(20)
    base = writer.produce(3)
    seq = writer.next_seq[3] - 2
    writer.log.truncate_to(base)
    live = writer.restart(clean=True)
    entry = live.get(3)
    assert entry is not None and entry.last_sequence == seq - 1
    assert live.check(read_header(batch(3, seq))) is None


def test_retention_deletes_the_snapshots_of_the_segments_it_deletes(tmp_path: Any) -> None:
    w = Writer(str(tmp_path / "events-0"))
    try:
        w.fill(20)
        w.log.config = LogConfig(segment_bytes=SEGMENT_BYTES, retention_bytes=w.log.segments[-1].size + 3000)
        assert w.log.apply_retention() > 0
        first = w.log.segments[0].base_offset
        assert all(o >= first for o in snapshots.list_snapshots(w.directory))
        w.live.evict_below(w.log.log_start_offset)
        assert ProducerStateTable.rebuild(w.log).entries() == from_scratch(w.log).entries()
        assert set(ProducerStateTable.rebuild(w.log).entries()) == set(w.live.entries())
        # all but the active segment go: only snapshots at or past it remain
        w.log.advance_log_start(w.log.active.base_offset)
        assert all(o >= w.log.active.base_offset for o in snapshots.list_snapshots(w.directory))
    finally:
        w.crash()


@pytest.mark.parametrize(
    "damage",
    ["flip a byte", "empty", "garbage", "wrong offset", "batch past its offset"],
)
def test_a_corrupt_snapshot_is_ignored_with_a_warning_and_the_state_is_right(
    writer: Writer, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer.fill(20)
    before = writer.live.entries()
    writer.log.close()
    newest = snapshots.list_snapshots(writer.directory)[-1]
    path = snapshots.snapshot_path(writer.directory, newest)
    data = bytearray(Path(path).read_bytes())
    if damage == "flip a byte":
        data[-5] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    elif damage == "garbage":
        data = bytearray(os.urandom(64))
    elif damage == "wrong offset":
        os.unlink(path)
        writer.live.write_snapshot(writer.directory, newest + 1)
        os.replace(snapshots.snapshot_path(writer.directory, newest + 1), path)
        data = bytearray(Path(path).read_bytes())
    else:  # a well-formed file that claims batches it cannot describe
        writer.live.update(read_header(batch(7, 0)), newest + 5)
        writer.live.write_snapshot(writer.directory, newest)
        data = bytearray(Path(path).read_bytes())
    Path(path).write_bytes(data)
    writer.log = writer.open()
    with caplog.at_level(logging.WARNING):
        rebuilt = ProducerStateTable.rebuild(writer.log)
    assert rebuilt.entries() == before == from_scratch(writer.log).entries()
    assert "snapshot" in caplog.text
    assert newest not in snapshots.list_snapshots(writer.directory)  # deleted, not read again


def test_sequences_continue_after_restarts_out_of_order_refused_duplicates_recognised(writer: Writer) -> None:
    writer.fill(20)
    for clean in (True, False):
        writer.produce(1)
        live = writer.restart(clean=clean)
        seq = writer.next_seq[1]
        # the last batch again: a duplicate, answered with its offset
        dup = read_header(batch(1, seq - 2))
        assert live.check(dup) == writer.offsets[(1, seq - 2)]
        # a gap: refused
        with pytest.raises(OutOfOrderSequenceError):
            live.check(read_header(batch(1, seq + 1)))
        # the next one: new, and written
        writer.produce(1)
        writer.fill(3)  # rolls again


def test_the_replica_wires_the_hook(tmp_path: Any) -> None:
    from appliance.partition.replica import Replica

    lg = Log.open(str(tmp_path / "events-0"), LogConfig(segment_bytes=SEGMENT_BYTES), clock=lambda: T0_MS / 1000)
    replica = Replica("events", 0, 1, lg)
    seq = 0
    while len(lg.segments) < 3:
        buf = batch(5, seq)
        replica.producers.update(read_header(buf), lg.append(buf, 0).base_offset)
        seq += 2
    assert snapshots.list_snapshots(lg.directory) == [s.base_offset for s in lg.segments[1:]]
    before = replica.producers.entries()
    lg.close()
    lg2 = Log.open(str(tmp_path / "events-0"), LogConfig(segment_bytes=SEGMENT_BYTES), clock=lambda: T0_MS / 1000)
    try:
        assert Replica("events", 0, 1, lg2).producers.entries() == before
    finally:
        lg2.close()
