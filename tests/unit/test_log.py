"""Functional tests of the storage engine (appliance/log) on real files.

Every test opens a ``Log`` in pytest's ``tmp_path`` and drives it through its public
methods: append (leader and replica), read, offset_for_timestamp, roll, truncation,
close / reopen (clean and after a "crash", i.e. the descriptors closed without
``close()``), fsync policies, retention, compaction and ``LogConfig.from_options``.
Time is a fake clock injected with ``Log.open(..., clock=...)``. No mocks.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from appliance.log import cleaner
from appliance.log.config import OPTION_NAMES, CleanupPolicy, FsyncPolicy, LogConfig
from appliance.log.errors import LogCorruptionError
from appliance.log.log import (
    CLEAN_SHUTDOWN_FILE,
    LEADER_EPOCH_FILE,
    RECOVERY_POINT_FILE,
    AppendResult,
    Log,
)
from appliance.log.segment import segment_name
from ipc.errors import (
    CorruptRecordError,
    InvalidConfigError,
    InvalidRequestError,
    MessageTooLargeError,
    OffsetOutOfRangeError,
)
from ipc.records import (
    CRC_OFFSET,
    HEADER_SIZE,
    TIMESTAMP_LOG_APPEND,
    BatchHeader,
    Compression,
    Headers,
    batch_crc,
    decode_batches,
    encode_batch,
    iter_headers,
)

T0 = 1_700_000_000.0  # the fake clock's start, seconds
T0_MS = int(T0 * 1000)
MINUTE_MS = 60_000

Rec = tuple[int, int, bytes | None, bytes | None]  # offset, timestamp, key, value


# --------------------------------------------------------------------------- helpers


class FakeClock:
    """Seconds since the epoch, moved only by the test."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    @property
    def ms(self) -> int:
        return int(round(self.t * 1000))


OpenLog = Callable[..., Log]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log_dir(tmp_path: Any) -> str:
    return str(tmp_path / "topic-0")


@pytest.fixture
def open_log(log_dir: str, clock: FakeClock) -> Iterator[OpenLog]:
    """``open_log(config=None, **options)`` opens (or reopens) the log in ``log_dir``.

    Keyword options use LogConfig attribute names. Every log opened is released at
    teardown (descriptors closed, no clean-shutdown marker written).
    """
    opened: list[Log] = []

    def _open(
        config: LogConfig | None = None, directory: str | None = None, background_flush: bool = False, **options: Any
    ) -> Log:
        cfg = config or LogConfig(**options)
        lg = Log.open(directory or log_dir, cfg, clock=clock, background_flush=background_flush)
        opened.append(lg)
        return lg

    yield _open
    for lg in opened:
        crash(lg)


def crash(lg: Log) -> None:
    """Drop a log as a killed process would: close descriptors, skip ``close()``."""
    if lg._flusher is not None:
        lg._flusher.close()  # its thread would die with the process
    for seg in lg.segments:
        seg.close()
    lg.segments = []


def batch(
    values: list[bytes | None],
    keys: list[bytes | None] | None = None,
    ts: int = T0_MS,
    deltas: list[int] | None = None,
    **kwargs: Any,
) -> bytes:
    return encode_batch(values, keys, timestamp=ts, timestamp_deltas=deltas, **kwargs)


def vals(n: int, tag: str = "v", size: int = 0) -> list[bytes | None]:
    return [f"{tag}{i:04d}".encode().ljust(size, b".") for i in range(n)]


def headers_of(buf: bytes) -> list[BatchHeader]:
    return list(iter_headers(buf, verify_crc=True))


def records_of(buf: bytes) -> list[Rec]:
    return [(r.offset, r.timestamp, r.key, r.value) for b in decode_batches(buf) for r in b.records()]


def full_records_of(buf: bytes) -> list[tuple[int, int, bytes | None, bytes | None, Headers]]:
    return [tuple(r) for b in decode_batches(buf) for r in b.records()]  # type: ignore[misc]


def read_all(lg: Log, start: int | None = None, max_bytes: int = 1 << 20) -> bytes:
    """Every batch from ``start`` (default: log start) to the LEO, read by repeated fetches."""
    offset = lg.log_start_offset if start is None else start
    out: list[bytes] = []
    while offset < lg.log_end_offset:
        chunk = lg.read(offset, max_bytes)
        assert chunk, f"read({offset}) returned nothing below the LEO {lg.log_end_offset}"
        out.append(chunk)
        offset = headers_of(chunk)[-1].next_offset
    return b"".join(out)


def dir_state(directory: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def segment_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith((".log", ".index", ".timeindex")))


def reopen(lg: Log, open_log: OpenLog, how: str) -> Log:
    """Reopen ``lg`` after a clean ``close()`` or after a crash."""
    if how == "clean":
        lg.close()
    else:
        crash(lg)
    return open_log(lg.config)


def expect_first_at_or_after(all_records: list[Rec], target: int) -> tuple[int, int] | None:
    for offset, ts, _, _ in all_records:
        if ts >= target:
            return offset, ts
    return None


# --------------------------------------------------------------------------- append / read


def test_append_assigns_dense_offsets_and_returns_them(open_log: OpenLog) -> None:
    lg = open_log()
    assert (lg.log_start_offset, lg.log_end_offset, lg.size_bytes) == (0, 0, 0)
    sizes = [1, 3, 2, 1, 5]
    expected_base = 0
    total = 0
    for i, n in enumerate(sizes):
        raw = batch(vals(n), ts=T0_MS + i, deltas=list(range(n)))
        result = lg.append(raw)
        assert isinstance(result, AppendResult)
        assert result == AppendResult(expected_base, expected_base + n - 1, T0_MS + i + n - 1, len(raw))
        expected_base += n
        total += len(raw)
        assert lg.log_end_offset == expected_base
        assert lg.size_bytes == total
    offsets = [r[0] for r in records_of(read_all(lg))]
    assert offsets == list(range(sum(sizes)))


def test_read_returns_stamped_batches_byte_for_byte(open_log: OpenLog) -> None:
    lg = open_log()
    kwargs_list: list[dict[str, Any]] = [
        dict(values=[b"a", None, b"ccc"], keys=[b"k1", None, b"k3"], timestamp=T0_MS),
        dict(values=[b"x" * 300], keys=None, timestamp=T0_MS + 5, headers=[[("h", b"1"), ("n", None)]]),
        dict(values=vals(20), keys=vals(20, "k"), timestamp=T0_MS + 9, compression=Compression.ZSTD),
        dict(
            values=vals(7, size=50),
            timestamp=T0_MS - 3,
            timestamp_deltas=[5, -2, 0, 7, 1, 1, 3],
            compression=Compression.LZ4,
            producer_id=42,
            producer_epoch=3,
            base_sequence=17,
        ),
    ]
    expected = []
    for kw in kwargs_list:
        res = lg.append(encode_batch(**kw), leader_epoch=4)
        # what the leader stores is exactly the producer's batch encoded at its offset and epoch
        expected.append(encode_batch(**kw, base_offset=res.base_offset, leader_epoch=4))
    data = lg.read(0)
    assert data == b"".join(expected)
    assert [h.base_offset for h in headers_of(data)] == [0, 3, 4, 24]
    assert [r.value for b in decode_batches(data) for r in b.records()][:3] == [b"a", None, b"ccc"]


def test_read_starts_with_the_batch_holding_the_offset(open_log: OpenLog) -> None:
    lg = open_log()
    for n in (4, 4, 4):
        lg.append(batch(vals(n)))
    for offset in range(12):
        first = headers_of(lg.read(offset))[0]
        assert first.base_offset <= offset <= first.last_offset
        assert first.base_offset == offset // 4 * 4
        assert len(headers_of(lg.read(offset))) == 3 - offset // 4


def test_read_honours_max_bytes_and_min_one(open_log: OpenLog) -> None:
    lg = open_log()
    raws = [batch(vals(3, size=100)) for _ in range(4)]
    for raw in raws:
        lg.append(raw)
    size = len(raws[0])
    assert len(headers_of(lg.read(0, max_bytes=2 * size))) == 2
    assert len(headers_of(lg.read(0, max_bytes=2 * size + size - 1))) == 2
    assert len(headers_of(lg.read(0, max_bytes=3 * size))) == 3
    assert len(headers_of(lg.read(3, max_bytes=10 * size))) == 3
    # a limit below one batch still returns that whole batch with min_one ...
    for limit in (1, HEADER_SIZE - 1, HEADER_SIZE, size - 1):
        data = lg.read(0, max_bytes=limit)
        assert len(data) == size and headers_of(data)[0].base_offset == 0
    # ... and nothing without it
    assert lg.read(0, max_bytes=size - 1, min_one=False) == b""
    assert lg.read(0, max_bytes=10, min_one=False) == b""
    assert len(lg.read(0, max_bytes=size, min_one=False)) == size


def test_read_max_bytes_zero_with_min_one_returns_first_batch(open_log: OpenLog) -> None:
    lg = open_log()
    raw = batch(vals(2))
    lg.append(raw)
    lg.append(raw)
    assert len(headers_of(lg.read(0, max_bytes=0, min_one=True))) == 1


def test_read_honours_max_offset(open_log: OpenLog) -> None:
    lg = open_log()
    for _ in range(4):
        lg.append(batch(vals(3)))  # batches at 0, 3, 6, 9

    def bases(data: bytes) -> list[int]:
        return [h.base_offset for h in headers_of(data)]

    assert bases(lg.read(0, max_offset=6)) == [0, 3]
    assert bases(lg.read(0, max_offset=7)) == [0, 3, 6]  # a batch whose base is below it is whole
    assert bases(lg.read(4, max_offset=12)) == [3, 6, 9]
    assert bases(lg.read(0, max_offset=1)) == [0]
    assert lg.read(0, max_offset=0) == b""
    assert lg.read(6, max_offset=6) == b""
    assert lg.read(8, max_offset=6) == b""
    assert bases(lg.read(0, max_offset=100)) == [0, 3, 6, 9]


def test_read_at_leo_is_empty_and_out_of_range_raises(open_log: OpenLog) -> None:
    lg = open_log()
    assert lg.read(0) == b""
    lg.append(batch(vals(5)))
    assert lg.read(5) == b""
    assert lg.read(5, max_offset=3) == b""
    for bad in (6, 100, -1):
        with pytest.raises(OffsetOutOfRangeError) as info:
            lg.read(bad)
        assert str(bad) in info.value.message


# --------------------------------------------------------------------------- leader epochs


def test_leader_epoch_is_stamped_and_cached(open_log: OpenLog) -> None:
    lg = open_log()
    plan = [(0, 2), (0, 1), (2, 3), (5, 1), (5, 2)]  # (epoch, records)
    for epoch, n in plan:
        lg.append(batch(vals(n)), leader_epoch=epoch)
    assert [h.leader_epoch for h in headers_of(lg.read(0))] == [0, 0, 2, 5, 5]
    assert lg.leader_epochs is not None
    assert lg.leader_epochs.entries() == [(0, 0), (2, 3), (5, 6)]
    assert lg.leader_epochs.latest_epoch == 5
    leo = lg.log_end_offset
    assert leo == 9
    cache = lg.leader_epochs
    assert cache is not None

    def end_for(epoch: int) -> tuple[int, int]:
        return cache.end_offset_for(epoch, lg.log_end_offset)

    assert end_for(0) == (0, 3)
    assert end_for(1) == (0, 3)  # largest epoch <= 1 is 0, which ended where epoch 2 began
    assert end_for(2) == (2, 6)
    assert end_for(3) == (2, 6)
    assert end_for(5) == (5, leo)
    assert end_for(9) == (5, leo)
    assert end_for(-1) == (-1, -1)
    # an older epoch stamped later does not rewrite the cache
    lg.append(batch(vals(1)), leader_epoch=3)
    assert headers_of(lg.read(9))[0].leader_epoch == 3
    assert lg.leader_epochs.entries() == [(0, 0), (2, 3), (5, 6)]
    with open(os.path.join(lg.directory, LEADER_EPOCH_FILE)) as f:
        assert f.read() == "0\n3\n0 0\n2 3\n5 6\n"


def test_epoch_older_than_any_known_has_no_end(open_log: OpenLog) -> None:
    lg = open_log()
    lg.append(batch(vals(2)), leader_epoch=3)
    assert lg.leader_epochs is not None
    assert lg.leader_epochs.end_offset_for(2, lg.log_end_offset) == (-1, -1)
    assert lg.leader_epochs.end_offset_for(3, lg.log_end_offset) == (3, 2)


@pytest.mark.parametrize("how", ["clean", "crash"])
def test_leader_epochs_survive_reopen(open_log: OpenLog, how: str) -> None:
    lg = open_log()
    for epoch in (1, 1, 4, 7):
        lg.append(batch(vals(2)), leader_epoch=epoch)
    lg = reopen(lg, open_log, how)
    assert lg.leader_epochs is not None
    assert lg.leader_epochs.entries() == [(1, 0), (4, 4), (7, 6)]
    assert lg.leader_epochs.end_offset_for(4, lg.log_end_offset) == (4, 6)


# --------------------------------------------------------------------------- segments / roll


def test_roll_by_size_names_files_and_reads_across_segments(open_log: OpenLog) -> None:
    lg = open_log(segment_bytes=1024)
    raws = []
    for i in range(25):
        raw = batch(vals(2, f"b{i}-", size=60), ts=T0_MS + i)
        raws.append(raw)
        lg.append(raw)
    assert len(lg.segments) > 4
    assert all(0 < s.size <= 1024 for s in lg.segments)
    bases = [s.base_offset for s in lg.segments]
    assert bases[0] == 0 and bases == sorted(bases)
    # each segment starts where the previous one ends
    for prev, seg in zip(lg.segments, lg.segments[1:], strict=False):
        assert prev.next_offset == seg.base_offset
        assert headers_of(os.pread(seg.fd, seg.size, 0))[0].base_offset == seg.base_offset
    names = segment_files(lg.directory)
    expected = sorted(f"{b:020d}{ext}" for b in bases for ext in (".log", ".index", ".timeindex"))
    assert names == expected
    assert all(segment_name(b) == f"{b:020d}" and len(segment_name(b)) == 20 for b in bases)
    # a read stops at the end of a segment; successive reads walk across every boundary
    first = lg.read(0)
    assert len(first) == lg.segments[0].size
    data = read_all(lg)
    assert records_of(data) == [
        (2 * i + j, T0_MS + i, None, f"b{i}-{j:04d}".encode().ljust(60, b".")) for i in range(25) for j in (0, 1)
    ]
    # reads that start in the middle of any segment
    for offset in range(0, 50, 3):
        got = records_of(read_all(lg, start=offset))
        assert got[0][0] <= offset and got[-1][0] == 49


def test_batch_larger_than_segment_bytes_gets_its_own_segment(open_log: OpenLog) -> None:
    lg = open_log(segment_bytes=1024)
    lg.append(batch([b"s"]))
    big = batch([b"x" * 3000])
    lg.append(big)
    lg.append(batch([b"t"]))
    assert [s.base_offset for s in lg.segments] == [0, 1, 2]
    assert lg.segments[1].size == len(big)
    assert [r[3] for r in records_of(read_all(lg))] == [b"s", b"x" * 3000, b"t"]


def test_roll_by_age_with_fake_clock(open_log: OpenLog, clock: FakeClock) -> None:
    lg = open_log(segment_ms=MINUTE_MS)
    lg.append(batch([b"a"], ts=clock.ms))
    clock.advance(59)
    lg.append(batch([b"b"], ts=clock.ms))
    assert len(lg.segments) == 1
    clock.advance(2)
    lg.append(batch([b"c"], ts=clock.ms))
    assert [s.base_offset for s in lg.segments] == [0, 2]
    clock.advance(30)
    lg.append(batch([b"d"], ts=clock.ms))
    assert len(lg.segments) == 2
    # the age survives a clean reopen: the first batch's timestamp is reloaded
    lg = reopen(lg, open_log, "clean")
    clock.advance(31)
    lg.append(batch([b"e"], ts=clock.ms))
    assert [s.base_offset for s in lg.segments] == [0, 2, 4]
    assert [r[3] for r in records_of(read_all(lg))] == [b"a", b"b", b"c", b"d", b"e"]


def test_old_producer_timestamps_do_not_roll_every_append(open_log: OpenLog, clock: FakeClock) -> None:
    lg = open_log(segment_ms=3600 * 1000)
    day_ago = clock.ms - 24 * 3600 * 1000
    for i in range(5):
        lg.append(batch([b"old"], ts=day_ago + i))
    assert len(lg.segments) == 1


def test_roll_of_an_empty_active_segment_does_not_duplicate_it(open_log: OpenLog) -> None:
    lg = open_log(retention_bytes=0)
    lg.roll()
    lg.append(batch([b"precious"]))
    bases = [s.base_offset for s in lg.segments]
    assert len(set(bases)) == len(bases)
    lg.apply_retention()
    lg = reopen(lg, open_log, "crash")
    assert [r[3] for r in records_of(read_all(lg))] == [b"precious"]


# --------------------------------------------------------------------------- timestamps


def _timestamp_log(open_log: OpenLog, index_interval_bytes: int) -> tuple[Log, list[Rec]]:
    lg = open_log(segment_bytes=1024, index_interval_bytes=index_interval_bytes)
    # non-monotonic timestamps within and across batches and segments
    base_ts = [1000, 900, 5000, 4000, 4000, 1200, 8000, 100, 7000, 6500, 9000, 3000]
    deltas = [[0, 30, -50], [5, 0], [0, -4000, 10], [100, 200, 300], [0], [-5, 6000, 1]]
    for i, ts in enumerate(base_ts):
        d = deltas[i % len(deltas)]
        lg.append(batch(vals(len(d), f"t{i}-", size=80), ts=T0_MS - 10_000 + ts, deltas=d))
    assert 3 <= len(lg.segments) <= 5  # several batches per segment
    return lg, records_of(read_all(lg))


def _targets(records: list[Rec]) -> list[int]:
    stamps = {ts for _, ts, _, _ in records}
    return sorted({t + d for t in stamps for d in (-1, 0, 1)} | {-(2**40), 0, max(stamps) + 1, 2**40})


@pytest.mark.parametrize("interval", [1, 150, 4096])
def test_offset_for_timestamp_first_record_at_or_after(open_log: OpenLog, interval: int) -> None:
    lg, records = _timestamp_log(open_log, interval)
    for target in _targets(records):
        assert lg.offset_for_timestamp(target) == expect_first_at_or_after(records, target), target
    assert lg.offset_for_timestamp(max(ts for _, ts, _, _ in records) + 1) is None


@pytest.mark.parametrize("how", ["clean", "crash"])
@pytest.mark.parametrize("interval", [1, 150, 4096])
def test_offset_for_timestamp_after_reopen(open_log: OpenLog, interval: int, how: str) -> None:
    lg, records = _timestamp_log(open_log, interval)
    lg = reopen(lg, open_log, how)
    for target in _targets(records):
        assert lg.offset_for_timestamp(target) == expect_first_at_or_after(records, target), target


def _max_ts_hidden_between_index_entries(open_log: OpenLog, **options: Any) -> Log:
    """Batches 0..4 of 113 bytes; with index.interval.bytes=150 batches 0, 2, 4 are
    indexed and the highest timestamp (batch 1) falls between two index entries."""
    lg = open_log(index_interval_bytes=150, **options)
    for ts in (T0_MS - 50 * MINUTE_MS, T0_MS, T0_MS - 40 * MINUTE_MS, T0_MS - 30 * MINUTE_MS, T0_MS - 20 * MINUTE_MS):
        lg.append(batch([b"x" * 40], ts=ts))
    assert lg.offset_for_timestamp(T0_MS - MINUTE_MS) == (1, T0_MS)
    return lg


def test_offset_for_timestamp_after_truncate(open_log: OpenLog) -> None:
    lg = _max_ts_hidden_between_index_entries(open_log)
    lg.truncate_to(4)
    assert lg.offset_for_timestamp(T0_MS - MINUTE_MS) == (1, T0_MS)


def test_time_retention_after_truncate_keeps_recent_records(open_log: OpenLog) -> None:
    lg = _max_ts_hidden_between_index_entries(open_log, retention_ms=10 * MINUTE_MS)
    lg.truncate_to(4)
    lg.roll()
    lg.append(batch([b"new"]))
    assert lg.apply_retention() == 0
    assert lg.log_start_offset == 0


# --------------------------------------------------------------------------- truncation


def _three_segments(open_log: OpenLog, **options: Any) -> Log:
    """Offsets 0..29 in batches of 3 (epochs 0, 1, 2 starting at 0, 9, 18), ~4 segments."""
    lg = open_log(segment_bytes=1024, **options)
    for i in range(10):
        lg.append(batch(vals(3, f"b{i}-", size=50), ts=T0_MS + i), leader_epoch=i // 3)
    assert len(lg.segments) >= 3
    return lg


def _values_of(lg: Log) -> list[bytes | None]:
    return [r[3] for r in records_of(read_all(lg))]


def test_truncate_at_a_batch_boundary_in_the_active_segment(open_log: OpenLog) -> None:
    lg = open_log()
    for i in range(5):
        lg.append(batch(vals(2, f"b{i}-")), leader_epoch=i)
    assert lg.truncate_to(6) == 6
    assert lg.log_end_offset == 6
    assert [r[0] for r in records_of(read_all(lg))] == list(range(6))
    assert lg.leader_epochs is not None
    assert lg.leader_epochs.entries() == [(0, 0), (1, 2), (2, 4)]
    assert lg.read(6) == b""
    with pytest.raises(OffsetOutOfRangeError):
        lg.read(7)


def test_truncate_inside_a_batch_removes_the_whole_batch(open_log: OpenLog) -> None:
    lg = open_log()
    for i in range(3):
        lg.append(batch(vals(4, f"b{i}-")), leader_epoch=i)
    assert lg.truncate_to(6) == 4  # batch 4..7 straddles 6: removed whole
    assert lg.log_end_offset == 4
    assert lg.size_bytes == len(batch(vals(4, "b0-"))) * 1
    assert lg.leader_epochs is not None
    assert lg.leader_epochs.entries() == [(0, 0)]
    res = lg.append(batch([b"next"]), leader_epoch=7)
    assert (res.base_offset, res.last_offset) == (4, 4)
    assert lg.leader_epochs.entries() == [(0, 0), (7, 4)]


def test_truncate_at_or_beyond_leo_is_a_no_op(open_log: OpenLog) -> None:
    lg = open_log()
    lg.append(batch(vals(3)))
    before = dir_state(lg.directory)
    assert lg.truncate_to(3) == 3
    assert lg.truncate_to(50) == 3
    assert dir_state(lg.directory) == before


def test_truncate_across_segments_deletes_them(open_log: OpenLog) -> None:
    lg = _three_segments(open_log)
    bases = [s.base_offset for s in lg.segments]
    target = bases[1] + 4  # inside the second segment
    keep_until = target // 3 * 3  # the batch holding `target` goes too
    assert lg.truncate_to(target) == keep_until
    assert [s.base_offset for s in lg.segments] == bases[:2]
    logs = [n for n in os.listdir(lg.directory) if n.endswith(".log")]
    assert sorted(logs) == [f"{b:020d}.log" for b in bases[:2]]
    assert not [n for n in os.listdir(lg.directory) if n.endswith(".deleted")]
    assert [r[0] for r in records_of(read_all(lg))] == list(range(keep_until))
    assert lg.leader_epochs is not None
    assert lg.leader_epochs.entries() == [(e, 9 * e) for e in range(3) if 9 * e < keep_until]
    res = lg.append(batch([b"after"]), leader_epoch=9)
    assert res.base_offset == keep_until
    assert _values_of(lg)[-1] == b"after"


def test_truncate_to_the_base_of_a_segment(open_log: OpenLog) -> None:
    lg = _three_segments(open_log)
    bases = [s.base_offset for s in lg.segments]
    assert lg.truncate_to(bases[2]) == bases[2]
    assert [s.base_offset for s in lg.segments] == bases[:2]
    lg.append(batch([b"z"]))
    assert records_of(read_all(lg))[-1][0] == bases[2]


def test_truncate_to_log_start_empties_the_log(open_log: OpenLog) -> None:
    lg = _three_segments(open_log)
    assert lg.truncate_to(0) == 0
    assert (lg.log_start_offset, lg.log_end_offset, lg.size_bytes) == (0, 0, 0)
    assert [s.base_offset for s in lg.segments] == [0]
    assert [n for n in os.listdir(lg.directory) if n.endswith(".log")] == [f"{0:020d}.log"]
    assert lg.leader_epochs is not None and lg.leader_epochs.entries() == []
    assert lg.read(0) == b""
    res = lg.append(batch([b"fresh"]), leader_epoch=3)
    assert res.base_offset == 0
    assert lg.leader_epochs.entries() == [(3, 0)]


def test_truncate_to_a_log_start_above_zero(open_log: OpenLog, clock: FakeClock) -> None:
    lg = _three_segments(open_log, retention_ms=MINUTE_MS)
    clock.advance(3600)
    assert lg.apply_retention() >= 2
    start = lg.log_start_offset
    assert start > 0
    assert lg.truncate_to(start) == start
    assert (lg.log_start_offset, lg.log_end_offset) == (start, start)
    assert lg.append(batch([b"x"])).base_offset == start
    with pytest.raises(OffsetOutOfRangeError):
        lg.read(start - 1)


@pytest.mark.parametrize("how", ["clean", "crash"])
def test_truncation_survives_reopen(open_log: OpenLog, how: str) -> None:
    lg = _three_segments(open_log)
    target = lg.segments[1].base_offset + 1
    leo = lg.truncate_to(target)
    lg.append(batch([b"after-1", b"after-2"]), leader_epoch=8)
    before_data = read_all(lg)
    before_epochs = lg.leader_epochs.entries() if lg.leader_epochs else None
    bases = [s.base_offset for s in lg.segments]
    lg = reopen(lg, open_log, how)
    assert lg.was_clean_shutdown is (how == "clean")
    assert lg.log_end_offset == leo + 2
    assert [s.base_offset for s in lg.segments] == bases
    assert read_all(lg) == before_data
    assert lg.leader_epochs is not None and lg.leader_epochs.entries() == before_epochs
    assert lg.append(batch([b"later"])).base_offset == leo + 2
    lg.verify()


# --------------------------------------------------------------------------- close / reopen


def test_clean_close_and_reopen(open_log: OpenLog, log_dir: str) -> None:
    lg = _three_segments(open_log)
    data, leo, bases = read_all(lg), lg.log_end_offset, [s.base_offset for s in lg.segments]
    reads = {o: lg.read(o, 300) for o in range(leo)}
    lg.close()
    assert os.path.exists(os.path.join(log_dir, CLEAN_SHUTDOWN_FILE))
    with open(os.path.join(log_dir, RECOVERY_POINT_FILE)) as f:
        assert f.read() == f"0\n{leo}\n"
    lg.close()  # a second close is harmless
    lg = open_log(lg.config)
    assert lg.was_clean_shutdown is True
    assert lg.recovered_bytes_truncated == 0
    assert not os.path.exists(os.path.join(log_dir, CLEAN_SHUTDOWN_FILE))
    assert lg.log_end_offset == leo
    assert [s.base_offset for s in lg.segments] == bases
    assert read_all(lg) == data
    assert {o: lg.read(o, 300) for o in range(leo)} == reads
    assert lg.append(batch([b"more"])).base_offset == leo
    lg.verify()


def test_reopen_without_close_recovers_the_same_data(open_log: OpenLog, log_dir: str) -> None:
    lg = _three_segments(open_log)
    data, leo, bases = read_all(lg), lg.log_end_offset, [s.base_offset for s in lg.segments]
    reads = {o: lg.read(o, 200) for o in range(leo)}
    crash(lg)
    assert not os.path.exists(os.path.join(log_dir, CLEAN_SHUTDOWN_FILE))
    lg = open_log(lg.config)
    assert lg.was_clean_shutdown is False
    assert lg.recovered_bytes_truncated == 0
    assert lg.log_end_offset == leo
    assert [s.base_offset for s in lg.segments] == bases
    assert read_all(lg) == data
    assert {o: lg.read(o, 200) for o in range(leo)} == reads
    assert lg.append(batch([b"more"])).base_offset == leo
    lg = reopen(lg, open_log, "crash")
    assert _values_of(lg)[-1] == b"more"


def test_reopen_of_an_empty_log(open_log: OpenLog) -> None:
    lg = open_log()
    lg = reopen(lg, open_log, "clean")
    assert (lg.log_start_offset, lg.log_end_offset) == (0, 0)
    lg = reopen(lg, open_log, "crash")
    assert (lg.log_start_offset, lg.log_end_offset) == (0, 0)
    assert lg.append(batch([b"a"])).base_offset == 0


def test_reopen_with_an_empty_active_segment(open_log: OpenLog) -> None:
    lg = open_log()
    lg.append(batch(vals(3)))
    lg.roll()
    for how in ("clean", "crash"):
        lg = reopen(lg, open_log, how)
        assert [s.base_offset for s in lg.segments] == [0, 3]
        assert lg.log_end_offset == 3
    assert lg.append(batch([b"x"])).base_offset == 3


# --------------------------------------------------------------------------- fsync policies


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_every_fsync_policy_appends_and_reopens(open_log: OpenLog, policy: str) -> None:
    cfg = LogConfig.from_options({"fsync": policy, "segment.bytes": 1024})
    assert cfg.fsync is FsyncPolicy(policy)
    lg = open_log(cfg)
    for i in range(12):
        lg.append(batch(vals(2, f"{i}-", size=60)))
    lg.flush()
    data = read_all(lg)
    lg = reopen(lg, open_log, "clean")
    assert read_all(lg) == data
    lg = reopen(lg, open_log, "crash")
    assert read_all(lg) == data


@pytest.mark.parametrize("background_flush", [False, True])
def test_interval_policy_deadline_and_recovery_checkpoint(
    open_log: OpenLog, clock: FakeClock, background_flush: bool
) -> None:
    lg = open_log(fsync=FsyncPolicy.INTERVAL, fsync_interval_ms=50, background_flush=background_flush)
    assert lg.next_flush_deadline() is None
    lg.append(batch([b"a"]))
    assert lg.next_flush_deadline() == pytest.approx(T0 + 0.05)
    clock.advance(0.02)
    lg.append(batch([b"b"]))
    assert lg.next_flush_deadline() == pytest.approx(T0 + 0.05)  # from the first unflushed append
    lg.maybe_flush()
    assert lg.next_flush_deadline() is not None
    clock.advance(0.04)
    lg.maybe_flush()
    assert lg.next_flush_deadline() is None
    checkpoint = os.path.join(lg.directory, RECOVERY_POINT_FILE)
    with open(checkpoint) as f:
        assert f.read() == "0\n0\n"
    clock.advance(10)
    lg.maybe_flush()
    with open(checkpoint) as f:
        assert f.read() == "0\n2\n"


@pytest.mark.parametrize("policy", [FsyncPolicy.ALWAYS, FsyncPolicy.NEVER])
def test_non_interval_policies_have_no_deadline(open_log: OpenLog, policy: FsyncPolicy) -> None:
    lg = open_log(fsync=policy)
    lg.append(batch([b"a"]))
    assert lg.next_flush_deadline() is None


# --------------------------------------------------------------------------- bad batches


def _assert_unchanged(lg: Log, before: tuple[int, int, dict[str, bytes], bytes]) -> None:
    assert (lg.log_end_offset, lg.size_bytes, dir_state(lg.directory), read_all(lg)) == before


def _state(lg: Log) -> tuple[int, int, dict[str, bytes], bytes]:
    return lg.log_end_offset, lg.size_bytes, dir_state(lg.directory), read_all(lg)


def _with_valid_crc(buf: bytearray) -> bytes:
    struct.pack_into("<I", buf, CRC_OFFSET, batch_crc(buf, 0, len(buf)))
    return bytes(buf)


def test_append_rejects_corrupt_batches_and_leaves_the_log_unchanged(open_log: OpenLog) -> None:
    lg = open_log()
    lg.append(batch(vals(3)), leader_epoch=1)
    before = _state(lg)
    good = batch(vals(2, size=30))
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0x01
    bad_magic = bytearray(good)
    bad_magic[16] = 9
    bad_structure = bytearray(good)
    struct.pack_into("<i", bad_structure, HEADER_SIZE + 8, 999)  # a key length past the body
    cases = {
        "flipped body bit": bytes(bad_crc),
        "flipped crc": bytes(good[:CRC_OFFSET]) + bytes([good[CRC_OFFSET] ^ 0xFF]) + good[CRC_OFFSET + 1 :],
        "truncated": good[:-5],
        "header only": good[: HEADER_SIZE - 3],
        "two batches in one frame": good + good,
        "trailing bytes": good + b"\x00" * 7,
        "bad magic": bytes(bad_magic),
        "bad columns, valid crc": _with_valid_crc(bad_structure),
        "empty": b"",
    }
    for name, raw in cases.items():
        with pytest.raises(CorruptRecordError):
            lg.append(raw, leader_epoch=2)
        _assert_unchanged(lg, before)
        assert lg.leader_epochs is not None and lg.leader_epochs.entries() == [(1, 0)], name
    assert lg.append(good).base_offset == 3


def test_append_rejects_batches_over_max_message_bytes(open_log: OpenLog) -> None:
    lg = open_log(max_message_bytes=500)
    lg.append(batch([b"ok"]))
    before = _state(lg)
    raw = batch([b"x" * 500])
    assert len(raw) > 500
    with pytest.raises(MessageTooLargeError) as info:
        lg.append(raw)
    assert str(len(raw)) in info.value.message and "max.message.bytes=500" in info.value.message
    _assert_unchanged(lg, before)
    exact = batch([b"y" * (500 - len(batch([b""])))])
    assert len(exact) == 500
    assert lg.append(exact).base_offset == 1


def test_append_without_full_validation_rejects_trailing_bytes(open_log: OpenLog) -> None:
    lg = open_log()
    lg.append(batch([b"a"]))
    before = _state(lg)
    with pytest.raises(CorruptRecordError):
        lg.append(batch([b"b"]) + b"\x00" * 70, validate=False)
    _assert_unchanged(lg, before)


def test_append_rejects_a_batch_without_records(open_log: OpenLog) -> None:
    lg = open_log()
    lg.append(batch([b"a"]))
    before = _state(lg)
    with pytest.raises((CorruptRecordError, InvalidRequestError)):
        lg.append(encode_batch([], timestamp=T0_MS, last_offset_delta=2**31 - 1))
    _assert_unchanged(lg, before)


def test_append_rejects_a_sparse_producer_batch(open_log: OpenLog) -> None:
    lg = open_log()
    lg.append(batch([b"a"]))
    before = _state(lg)
    with pytest.raises((CorruptRecordError, InvalidRequestError)):
        lg.append(encode_batch([b"b"], timestamp=T0_MS, offset_deltas=[0], last_offset_delta=1_000_000))
    _assert_unchanged(lg, before)


def test_append_rejects_a_max_timestamp_that_disagrees_with_the_records(open_log: OpenLog) -> None:
    lg = open_log()
    raw = bytearray(batch([b"a", b"b"], ts=T0_MS, deltas=[0, 500]))
    struct.pack_into("<q", raw, 35, T0_MS)  # max_timestamp field, records go up to T0_MS + 500
    lied = _with_valid_crc(raw)
    try:
        lg.append(lied)
    except (CorruptRecordError, InvalidRequestError):
        return
    assert lg.offset_for_timestamp(T0_MS + 100) == (1, T0_MS + 500)


# --------------------------------------------------------------------------- replica append


def _leader_batches(open_log: OpenLog, leader_dir: str) -> list[bytes]:
    leader = open_log(directory=leader_dir)
    for epoch, n in [(1, 3), (1, 1), (2, 4)]:
        leader.append(batch(vals(n, f"e{epoch}-")), leader_epoch=epoch)
    return [bytes(lb) for lb in _split_batches(read_all(leader))]


def _split_batches(buf: bytes) -> Iterator[memoryview]:
    mv = memoryview(buf)
    pos = 0
    for h in headers_of(buf):
        yield mv[pos : pos + h.size]
        pos += h.size


def test_append_replica_keeps_offsets_and_epochs(open_log: OpenLog, tmp_path: Any) -> None:
    leader_batches = _leader_batches(open_log, str(tmp_path / "leader"))
    follower = open_log()
    for raw in leader_batches:
        res = follower.append_replica(raw)
        h = headers_of(raw)[0]
        assert (res.base_offset, res.last_offset, res.size) == (h.base_offset, h.last_offset, len(raw))
    assert follower.log_end_offset == 8
    assert read_all(follower) == b"".join(leader_batches)
    assert follower.leader_epochs is not None
    assert follower.leader_epochs.entries() == [(1, 0), (2, 4)]
    follower = reopen(follower, open_log, "crash")
    assert read_all(follower) == b"".join(leader_batches)


def test_append_replica_rejects_offsets_below_leo_and_corrupt_batches(open_log: OpenLog, tmp_path: Any) -> None:
    leader_batches = _leader_batches(open_log, str(tmp_path / "leader"))
    follower = open_log()
    follower.append_replica(leader_batches[0])
    follower.append_replica(leader_batches[1])
    before = _state(follower)
    for raw in (leader_batches[0], leader_batches[1]):  # already there: below the LEO
        with pytest.raises(CorruptRecordError) as info:
            follower.append_replica(raw)
        assert "below the log end offset 4" in info.value.message
        _assert_unchanged(follower, before)
    damaged = bytearray(leader_batches[2])
    damaged[-1] ^= 0x80
    for raw in (bytes(damaged), leader_batches[2][:-1], leader_batches[2] + b"\x00"):
        with pytest.raises(CorruptRecordError):
            follower.append_replica(raw)
        _assert_unchanged(follower, before)
    assert follower.append_replica(leader_batches[2]).base_offset == 4


def test_append_replica_accepts_a_gap_left_by_compaction(open_log: OpenLog) -> None:
    lg = open_log()
    lg.append_replica(encode_batch([b"a"], timestamp=T0_MS, base_offset=0, leader_epoch=1))
    res = lg.append_replica(encode_batch([b"c"], timestamp=T0_MS, base_offset=5, leader_epoch=1))
    assert (res.base_offset, lg.log_end_offset) == (5, 6)
    assert [r[0] for r in records_of(read_all(lg))] == [0, 5]
    assert headers_of(lg.read(2))[0].base_offset == 5


# --------------------------------------------------------------------------- retention


def _aged_log(open_log: OpenLog, clock: FakeClock, **options: Any) -> Log:
    """20 batches one minute apart (timestamps follow the clock), several segments."""
    lg = open_log(segment_bytes=1024, **options)
    for i in range(20):
        lg.append(batch(vals(2, f"{i}-", size=60), ts=clock.ms))
        clock.advance(60)
    assert len(lg.segments) >= 4
    return lg


def test_time_retention_deletes_only_expired_sealed_segments(open_log: OpenLog, clock: FakeClock) -> None:
    lg = _aged_log(open_log, clock, retention_ms=10 * MINUTE_MS)
    segs = list(lg.segments)
    now = clock.ms
    expired = [s for s in segs[:-1] if s.max_timestamp < now - 10 * MINUTE_MS]
    assert 0 < len(expired) < len(segs) - 1
    data = records_of(read_all(lg))
    assert lg.apply_retention() == len(expired)
    assert lg.segments == segs[len(expired) :]
    start = segs[len(expired)].base_offset
    assert lg.log_start_offset == start
    assert records_of(read_all(lg)) == [r for r in data if r[0] >= start]
    for gone in expired:
        assert not os.path.exists(gone.path)
        assert not os.path.exists(gone.index.file.path)
        assert not os.path.exists(gone.time_index.file.path)
    for offset in (0, start - 1):
        with pytest.raises(OffsetOutOfRangeError):
            lg.read(offset)
    assert lg.apply_retention() == 0  # idempotent at the same time
    # far in the future every sealed segment goes; the active one stays, expired or not
    clock.advance(365 * 24 * 3600)
    assert lg.apply_retention() == len(segs) - 1 - len(expired)
    assert lg.segments == segs[-1:]
    assert lg.log_start_offset == segs[-1].base_offset
    assert lg.log_end_offset == 40
    assert [r[0] for r in records_of(read_all(lg))] == list(range(segs[-1].base_offset, 40))
    assert lg.offset_for_timestamp(0) == (segs[-1].base_offset, segs[-1].first_timestamp)
    lg = reopen(lg, open_log, "clean")
    assert lg.log_start_offset == segs[-1].base_offset
    with pytest.raises(OffsetOutOfRangeError):
        lg.read(0)


def test_time_retention_uses_now_ms_argument(open_log: OpenLog, clock: FakeClock) -> None:
    lg = _aged_log(open_log, clock, retention_ms=10 * MINUTE_MS)
    n = len(lg.segments)
    assert lg.apply_retention(now_ms=T0_MS) == 0
    assert lg.apply_retention(now_ms=T0_MS + 10**12) == n - 1
    assert len(lg.segments) == 1


def test_size_retention(open_log: OpenLog, clock: FakeClock) -> None:
    probe = _aged_log(open_log, clock)  # same layout without retention, to learn the sizes
    sizes = [s.size for s in probe.segments]
    crash(probe)
    limit = sum(sizes) - sizes[0] - sizes[1] // 2  # the first segment must go, the second stays
    lg = _aged_log(
        open_log,
        clock,
        directory=os.path.join(os.path.dirname(probe.directory), "sized"),
        retention_bytes=limit,
        retention_ms=-1,
    )
    assert [s.size for s in lg.segments] == sizes
    assert lg.apply_retention() == 1
    assert lg.size_bytes == sum(sizes[1:]) >= limit
    assert lg.size_bytes - lg.segments[0].size < limit  # deleting one more would go below
    assert lg.log_start_offset == lg.segments[0].base_offset
    with pytest.raises(OffsetOutOfRangeError):
        lg.read(0)
    # with a zero limit every sealed segment goes, never the active one
    lg2 = open_log(lg.config.with_options({"retention.bytes": 0}), directory=lg.directory + "-b")
    for i in range(20):
        lg2.append(batch(vals(2, f"{i}-", size=60)))
    n = len(lg2.segments)
    assert lg2.apply_retention() == n - 1
    assert len(lg2.segments) == 1 and lg2.log_end_offset == 40


def test_retention_disabled(open_log: OpenLog, clock: FakeClock) -> None:
    lg = _aged_log(open_log, clock, retention_ms=-1, retention_bytes=-1)
    n = len(lg.segments)
    clock.advance(10 * 365 * 24 * 3600)
    assert lg.apply_retention() == 0
    assert len(lg.segments) == n and lg.log_start_offset == 0


def test_no_retention_with_compact_policy(open_log: OpenLog, clock: FakeClock) -> None:
    lg = _aged_log(open_log, clock, cleanup_policy=CleanupPolicy.COMPACT, retention_ms=1, retention_bytes=0)
    before = _state(lg)
    clock.advance(365 * 24 * 3600)
    assert lg.apply_retention() == 0
    _assert_unchanged(lg, before)


# --------------------------------------------------------------------------- compaction


def _compacted_log(open_log: OpenLog, clock: FakeClock, compression: Compression) -> tuple[Log, list[Any]]:
    """Two sealed segments and an active one; returns the log and its records (with headers)."""
    lg = open_log(cleanup_policy=CleanupPolicy.COMPACT, delete_retention_ms=10 * MINUTE_MS)
    old = clock.ms - 60 * MINUTE_MS  # older than delete.retention.ms
    recent = clock.ms - MINUTE_MS
    c = dict(compression=compression)
    # segment 0: offsets 0..4
    lg.append(batch([b"a1", b"b1", b"c1"], [b"a", b"b", b"c"], ts=old, deltas=[0, 1, 2], **c), leader_epoch=1)
    lg.append(
        batch([b"n1", b"a2"], [None, b"a"], ts=old + 10, deltas=[0, 5], headers=[[("h", b"v")], None], **c),
        leader_epoch=1,
    )
    lg.roll()
    # segment 5: offsets 5..9
    lg.append(
        batch([None, None, b"c2"], [b"b", b"d", b"c"], ts=old + 20, deltas=[0, recent - old - 20, 3], **c),
        leader_epoch=2,
    )
    lg.append(batch([b"a3", b"e1"], [b"a", b"e"], ts=recent, deltas=[1, 0], **c), leader_epoch=2)
    lg.roll()
    # active segment: offsets 10..11, never compacted
    lg.append(batch([b"a4", None], [b"a", b"c"], ts=recent + 5, **c), leader_epoch=3)
    assert [s.base_offset for s in lg.segments] == [0, 5, 10]
    return lg, full_records_of(read_all(lg))


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD, Compression.LZ4])
def test_compaction_keeps_the_newest_record_per_key(
    open_log: OpenLog, clock: FakeClock, compression: Compression
) -> None:
    lg, before = _compacted_log(open_log, clock, compression)
    active_bytes = os.pread(lg.active.fd, lg.active.size, 0)
    leo = lg.log_end_offset
    by_offset = {r[0]: r for r in before}
    # dropped: a1 b1 c1 (superseded), a2 (superseded), b tombstone (older than delete.retention.ms)
    survivors = [3, 6, 7, 8, 9, 10, 11]  # n1 (null key), d tombstone (recent), c2, a3, e1, active
    assert cleaner.compact(lg) == 5
    after = full_records_of(read_all(lg))
    assert after == [by_offset[o] for o in survivors]  # same offsets, timestamps, keys, values, headers
    assert lg.log_end_offset == leo
    assert [s.base_offset for s in lg.segments] == [0, 5, 10]
    assert os.pread(lg.active.fd, lg.active.size, 0) == active_bytes
    hs = headers_of(read_all(lg))
    assert all(h.compression == compression for h in hs)
    assert [h.leader_epoch for h in hs] == [1, 2, 2, 3]
    # a read at a removed offset starts with the next surviving record
    assert records_of(lg.read(0))[0][0] == 3
    assert headers_of(lg.read(4))[0].last_offset == 4  # the shrunk batch keeps its offset range
    assert records_of(lg.read(5))[0][0] == 6
    assert lg.read(0, max_bytes=1) == lg.read(3, max_bytes=1)
    lg.verify()
    assert not [n for n in os.listdir(lg.directory) if n.endswith((".cleaned", ".swap"))]
    # compacting again changes nothing
    state = _state(lg)
    assert cleaner.compact(lg) == 0
    _assert_unchanged(lg, state)
    # identical after a clean reopen and after a crash
    reads = {o: lg.read(o, 100) for o in range(12)}
    for how in ("clean", "crash"):
        lg = reopen(lg, open_log, how)
        assert full_records_of(read_all(lg)) == after
        assert {o: lg.read(o, 100) for o in range(12)} == reads
        assert lg.log_end_offset == leo
        lg.verify()


def test_compaction_drops_tombstones_only_after_delete_retention(open_log: OpenLog, clock: FakeClock) -> None:
    lg = open_log(cleanup_policy=CleanupPolicy.COMPACT, delete_retention_ms=10 * MINUTE_MS)
    lg.append(batch([b"v", None, b"w"], [b"k", b"k", b"j"], ts=clock.ms))
    lg.roll()
    lg.append(batch([b"tail"], [b"t"], ts=clock.ms))
    assert cleaner.compact(lg) == 1  # the value of k; its tombstone is young
    assert records_of(read_all(lg)) == [(1, T0_MS, b"k", None), (2, T0_MS, b"j", b"w"), (3, T0_MS, b"t", b"tail")]
    clock.advance(9 * 60)
    assert cleaner.compact(lg) == 0
    clock.advance(61)
    assert cleaner.compact(lg) == 1
    assert records_of(read_all(lg)) == [(2, T0_MS, b"j", b"w"), (3, T0_MS, b"t", b"tail")]
    assert cleaner.compact(lg, now_ms=clock.ms) == 0
    lg = reopen(lg, open_log, "clean")
    assert records_of(read_all(lg)) == [(2, T0_MS, b"j", b"w"), (3, T0_MS, b"t", b"tail")]


def test_compaction_ignores_the_active_segment_and_a_log_without_sealed_segments(
    open_log: OpenLog,
) -> None:
    lg = open_log(cleanup_policy=CleanupPolicy.COMPACT)
    for i in range(5):
        lg.append(batch([b"%d" % i], [b"same"]))
    before = _state(lg)
    assert cleaner.compact(lg) == 0
    _assert_unchanged(lg, before)
    lg.roll()
    lg.append(batch([b"new"], [b"same"]))  # a newer value in the active segment ...
    assert cleaner.compact(lg) == 4  # ... does not count: the newest sealed one stays
    assert [(r[0], r[3]) for r in records_of(read_all(lg))] == [(4, b"4"), (5, b"new")]


def test_compaction_of_a_whole_segment_away(open_log: OpenLog) -> None:
    lg = open_log(cleanup_policy=CleanupPolicy.COMPACT)
    lg.append(batch([b"1", b"2"], [b"k", b"k"]))
    lg.roll()
    lg.append(batch([b"3"], [b"k"]))
    lg.roll()
    lg.append(batch([b"4"], [b"x"]))
    assert cleaner.compact(lg) == 2
    assert [(r[0], r[3]) for r in records_of(read_all(lg))] == [(2, b"3"), (3, b"4")]
    # the first segment stays, empty: compaction never moves the log start offset
    assert [s.base_offset for s in lg.segments] == [0, 2, 3]
    assert lg.segments[0].size == 0
    lg = reopen(lg, open_log, "clean")
    assert [(r[0], r[3]) for r in records_of(read_all(lg))] == [(2, b"3"), (3, b"4")]
    assert (lg.log_start_offset, lg.log_end_offset) == (0, 4)
    assert lg.append(batch([b"5"], [b"k"])).base_offset == 4
    lg = reopen(lg, open_log, "crash")
    assert [(r[0], r[3]) for r in records_of(read_all(lg))] == [(2, b"3"), (3, b"4"), (4, b"5")]
    assert lg.log_end_offset == 5
    lg.verify()


def _updates_in_small_segments(open_log: OpenLog, clock: FakeClock) -> Log:
    """The recipe of issue 20: 3,000 updates to 100 keys (30 % tombstones) in 4 KiB
    segments, then 100 new keys; most early segments hold nothing newest."""
    lg = open_log(cleanup_policy=CleanupPolicy.COMPACT, segment_bytes=4096, delete_retention_ms=1000)
    for n in range(0, 3000, 10):
        keys: list[bytes | None] = [b"k%03d" % ((n + i) % 100) for i in range(10)]
        values = [None if (n + i) % 10 < 3 else b"v%05d" % (n + i) for i in range(10)]
        lg.append(batch(values, keys, ts=clock.ms))
    clock.advance(3)
    for n in range(0, 100, 10):
        lg.append(
            batch([b"new%03d" % (n + i) for i in range(10)], [b"n%03d" % (n + i) for i in range(10)], ts=clock.ms)
        )
    return lg


def _survivors(records: list[Rec]) -> list[Rec]:
    """What compaction keeps of ``records`` once every tombstone is past delete.retention.ms."""
    newest = {r[2]: r for r in records}
    return [r for r in records if newest[r[2]] is r and r[3] is not None]


def _read_from_each_offset(lg: Log, expected: list[Rec]) -> None:
    """A read at any offset from 0 (inside an emptied range too) starts at the next record."""
    for offset in range(0, lg.log_end_offset, 7):
        got = records_of(read_all(lg, start=max(offset, lg.log_start_offset), max_bytes=512))
        # whole batches: the first may begin before ``offset``
        assert [r for r in got if r[0] >= offset] == [r for r in expected if r[0] >= offset], offset
        assert got[0] in expected


@pytest.mark.parametrize("how", ["clean", "crash"])
def test_a_log_emptied_by_compaction_reads_from_its_start_after_reopen(
    open_log: OpenLog, clock: FakeClock, how: str
) -> None:
    lg = _updates_in_small_segments(open_log, clock)
    before = records_of(read_all(lg))
    assert len(lg.segments) > 20
    cleaner.compact(lg)
    lg.roll()  # the last sealed segment may keep records the active one superseded
    lg.append(batch([b"tail"], [b"t"], ts=clock.ms))
    cleaner.compact(lg)
    expected = _survivors(before) + [(lg.log_end_offset - 1, clock.ms, b"t", b"tail")]
    assert records_of(read_all(lg)) == expected
    first = expected[0][0]
    # the emptied segments are gone but the first, which keeps the log start offset
    assert lg.segments[0].size == 0 and all(s.size for s in lg.segments[1:])
    assert lg.segments[1].base_offset <= first
    start = lg.log_start_offset
    assert start == 0
    _read_from_each_offset(lg, expected)
    for _ in range(2):
        lg = reopen(lg, open_log, how)
        assert lg.log_start_offset == start
        assert records_of(read_all(lg)) == expected
        _read_from_each_offset(lg, expected)
        lg.verify()


def test_empty_sealed_segments_left_on_disk_are_read_past(open_log: OpenLog, log_dir: str) -> None:
    """Segments emptied by an earlier version (kept as empty files) do not hide the data
    after them: a read in their range goes on to the next record."""
    lg = open_log()
    for i in range(4):
        lg.append(batch([b"%d" % i]))
        lg.roll()
    lg.append(batch([b"4"]))
    lg.close()
    for base in (0, 1, 2):  # empty the first three sealed segments, as compaction did then
        os.truncate(os.path.join(log_dir, segment_name(base) + ".log"), 0)
        for ext in (".index", ".timeindex"):
            os.unlink(os.path.join(log_dir, segment_name(base) + ext))
    lg = open_log()
    assert [s.base_offset for s in lg.segments] == [0, 1, 2, 3, 4]
    for offset in range(4):
        assert [r[3] for r in records_of(lg.read(offset))] == [b"3"]
    assert [r[3] for r in records_of(read_all(lg))] == [b"3", b"4"]


def test_offset_for_timestamp_after_compaction_and_reopen(open_log: OpenLog) -> None:
    lg = open_log(index_interval_bytes=150, cleanup_policy=CleanupPolicy.COMPACT)
    base = T0_MS - 10_000
    for key, ts in [(b"k0", 100), (b"k1", 9000), (b"k2", 200), (b"k3", 300), (b"k3", 400)]:
        lg.append(batch([b"x" * 40], [key], ts=base + ts))
    lg.roll()
    lg.append(batch([b"y"], [b"z"], ts=base + 500))
    assert [s.base_offset for s in lg.segments] == [0, 5]
    assert lg.offset_for_timestamp(base + 5000) == (1, base + 9000)
    assert cleaner.compact(lg) == 1
    assert lg.offset_for_timestamp(base + 5000) == (1, base + 9000)
    lg = reopen(lg, open_log, "clean")
    assert lg.offset_for_timestamp(base + 5000) == (1, base + 9000)


def test_compaction_keeps_the_timestamp_type(open_log: OpenLog) -> None:
    lg = open_log(cleanup_policy=CleanupPolicy.COMPACT)
    lg.append(batch([b"1", b"2"], [b"a", b"a"], log_append_time=True))
    lg.roll()
    lg.append(batch([b"x"], [b"b"]))
    assert cleaner.compact(lg) == 1
    assert headers_of(lg.read(0))[0].attributes & TIMESTAMP_LOG_APPEND


def test_verify_reports_damage_in_a_sealed_segment(open_log: OpenLog) -> None:
    lg = _three_segments(open_log)
    lg.verify()
    seg = lg.segments[1]
    with open(seg.path, "r+b") as f:
        f.seek(seg.size // 2)
        byte = f.read(1)
        f.seek(seg.size // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(LogCorruptionError) as info:
        lg.verify()
    assert info.value.path == seg.path
    assert 0 <= info.value.position < seg.size


# --------------------------------------------------------------------------- LogConfig


VALID_OPTIONS: list[tuple[str, Any, str, Any]] = [
    ("segment.bytes", 1024, "segment_bytes", 1024),
    ("segment.bytes", "1048576", "segment_bytes", 1048576),
    ("segment.bytes", 4096.0, "segment_bytes", 4096),
    ("segment.ms", 1, "segment_ms", 1),
    ("segment.ms", "3600000", "segment_ms", 3600000),
    ("retention.ms", -1, "retention_ms", -1),
    ("retention.ms", 0, "retention_ms", 0),
    ("retention.ms", "86400000", "retention_ms", 86400000),
    ("retention.bytes", -1, "retention_bytes", -1),
    ("retention.bytes", 0, "retention_bytes", 0),
    ("retention.bytes", 10**12, "retention_bytes", 10**12),
    ("cleanup.policy", "delete", "cleanup_policy", CleanupPolicy.DELETE),
    ("cleanup.policy", "compact", "cleanup_policy", CleanupPolicy.COMPACT),
    ("cleanup.policy", "Compact", "cleanup_policy", CleanupPolicy.COMPACT),
    ("fsync", "always", "fsync", FsyncPolicy.ALWAYS),
    ("fsync", "interval", "fsync", FsyncPolicy.INTERVAL),
    ("fsync", "NEVER", "fsync", FsyncPolicy.NEVER),
    ("fsync.interval.ms", 1, "fsync_interval_ms", 1),
    ("fsync.interval.ms", "200", "fsync_interval_ms", 200),
    ("max.message.bytes", 128, "max_message_bytes", 128),
    ("max.message.bytes", 10_000_000, "max_message_bytes", 10_000_000),
    ("index.interval.bytes", 1, "index_interval_bytes", 1),
    ("index.interval.bytes", "8192", "index_interval_bytes", 8192),
    ("delete.retention.ms", 0, "delete_retention_ms", 0),
    ("delete.retention.ms", 3600000, "delete_retention_ms", 3600000),
    ("min.insync.replicas", 2, "min_insync_replicas", 2),
    ("min.insync.replicas", "3", "min_insync_replicas", 3),
    ("unclean.leader.election.enable", True, "unclean_leader_election", True),
    ("unclean.leader.election.enable", "false", "unclean_leader_election", False),
    ("unclean.leader.election.enable", "TRUE", "unclean_leader_election", True),
    ("producer.id.expiration.ms", 1000, "producer_id_expiration_ms", 1000),
    ("producer.id.expiration.ms", "604800000", "producer_id_expiration_ms", 604800000),
    ("producer.id.expiration.ms", 2**63 - 1, "producer_id_expiration_ms", 2**63 - 1),
    ("leader.recent.batches.bytes", 0, "leader_recent_batches_bytes", 0),
    ("leader.recent.batches.bytes", "1048576", "leader_recent_batches_bytes", 1048576),
]

BAD_OPTIONS: list[tuple[str, Any]] = [
    ("segment.bytes", 1023),
    ("segment.bytes", 0),
    ("segment.bytes", -1),
    ("segment.bytes", "1GB"),
    ("segment.bytes", 1500.5),
    ("segment.bytes", True),
    ("segment.bytes", None),
    ("segment.bytes", [1024]),
    ("segment.ms", 0),
    ("segment.ms", -1),
    ("segment.ms", "soon"),
    ("retention.ms", -2),
    ("retention.ms", "forever"),
    ("retention.ms", 1.5),
    ("retention.ms", math.nan),
    ("retention.bytes", -2),
    ("retention.bytes", "10G"),
    ("retention.bytes", False),
    ("cleanup.policy", "compact,delete"),
    ("cleanup.policy", ""),
    ("cleanup.policy", 1),
    ("cleanup.policy", None),
    ("fsync", "sometimes"),
    ("fsync", True),
    ("fsync", ""),
    ("fsync.interval.ms", 0),
    ("fsync.interval.ms", -5),
    ("fsync.interval.ms", "fast"),
    ("max.message.bytes", 127),
    ("max.message.bytes", 0),
    ("max.message.bytes", "big"),
    ("index.interval.bytes", 0),
    ("index.interval.bytes", -4096),
    ("delete.retention.ms", -1),
    ("delete.retention.ms", "x"),
    ("min.insync.replicas", 0),
    ("min.insync.replicas", 17),
    ("min.insync.replicas", "two"),
    ("unclean.leader.election.enable", "yes"),
    ("unclean.leader.election.enable", 1),
    ("unclean.leader.election.enable", None),
    ("producer.id.expiration.ms", 999),
    ("producer.id.expiration.ms", 0),
    ("producer.id.expiration.ms", -1),
    ("producer.id.expiration.ms", 2**63),
    ("leader.recent.batches.bytes", -1),
    ("leader.recent.batches.bytes", 2**30 + 1),
    ("producer.id.expiration.ms", "1d"),
    ("producer.id.expiration.ms", math.inf),
]


def test_option_tables_cover_every_option() -> None:
    assert {name for name, *_ in VALID_OPTIONS} == set(OPTION_NAMES)
    assert {name for name, _ in BAD_OPTIONS} == set(OPTION_NAMES)


@pytest.mark.parametrize(("name", "raw", "attr", "value"), VALID_OPTIONS)
def test_from_options_accepts_valid_values(name: str, raw: Any, attr: str, value: Any) -> None:
    cfg = LogConfig.from_options({name: raw})
    assert getattr(cfg, attr) == value
    assert type(getattr(cfg, attr)) is type(value)
    # nothing else changes
    default = LogConfig()
    for other in OPTION_NAMES:
        if other != name:
            assert cfg.to_options()[other] == default.to_options()[other]


@pytest.mark.parametrize(("name", "raw"), BAD_OPTIONS)
def test_from_options_refuses_bad_values(name: str, raw: Any) -> None:
    with pytest.raises(InvalidConfigError) as info:
        LogConfig.from_options({name: raw})
    msg = info.value.message
    assert name in msg
    assert repr(raw) in msg or str(raw) in msg


def test_from_options_refuses_unknown_names() -> None:
    for name in ("segment.byte", "retention", "SEGMENT.BYTES", "", "log.retention.ms"):
        with pytest.raises(InvalidConfigError) as info:
            LogConfig.from_options({name: 1})
        assert repr(name) in info.value.message
        assert "segment.bytes" in info.value.message  # the allowed names are listed


def test_options_round_trip_and_defaults() -> None:
    cfg = LogConfig.from_options(
        {"segment.bytes": 2048, "cleanup.policy": "compact", "fsync": "never", "retention.bytes": 5000}
    )
    assert LogConfig.from_options(cfg.to_options()) == cfg
    assert LogConfig.from_options({}) == LogConfig()
    assert set(cfg.to_options()) == set(OPTION_NAMES)
    # with_options keeps earlier choices
    assert cfg.with_options({"segment.ms": 5}).cleanup_policy is CleanupPolicy.COMPACT


@pytest.mark.parametrize("name", ["retention.ms", "segment.bytes"])
def test_from_options_refuses_infinity(name: str) -> None:
    with pytest.raises(InvalidConfigError):
        LogConfig.from_options({name: math.inf})


def test_from_options_refuses_segment_bytes_beyond_the_index_range() -> None:
    with pytest.raises(InvalidConfigError):
        LogConfig.from_options({"segment.bytes": 2**32})
