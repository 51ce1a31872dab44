"""Fault injection for the storage engine (appliance/log).

Real files, real fsync, real child processes; no mocks and no sleeps. Each test damages
a log the way a crash or a bad disk would and checks the storage promises of
design.md ("Storage engine", "Durability"):

* torn tail: a log cut at every byte of its final batch recovers to the batch before;
* flipped bytes: damage in the active tail is truncated; damage in a sealed segment is
  reported as LogCorruptionError naming the file and byte, at open, on read or by
  ``Log.verify`` - never served and never silently skipped;
* index damage: missing, torn, garbage or out-of-range ``.index`` / ``.timeindex``
  files are rebuilt and every read and time lookup answers as before;
* SIGKILL: a writer with ``fsync=always`` killed at random moments loses no
  acknowledged append and invents nothing;
* crash at each step: a child ``os._exit``s at every named step of retention,
  truncation and compaction; the reopened log is consistent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.log import cleaner
from appliance.log.config import LogConfig
from appliance.log.errors import LogCorruptionError
from appliance.log.log import CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE, Log
from ipc.errors import SluiceError
from ipc.records import decode_batch, encode_batch, iter_headers, read_header

REPO = Path(__file__).resolve().parents[2]
CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO)}

T0 = 1_700_000_000.0  # the injected clock (fixed): retention and compaction run "now" = T0
T0_MS = int(T0 * 1000)
TS_START = T0_MS - 1_000_000  # record timestamps: increasing, all older than T0

OFFSET_ENTRY = struct.Struct("<II")  # .index entry (relative offset, position)
TIME_ENTRY = struct.Struct("<qI")  # .timeindex entry (timestamp, relative offset)
LEFTOVER_SUFFIXES = (".cleaned", ".swap", ".deleted", ".tmp")

# Header fields of a batch (ipc/records.py): name -> (first byte, end byte).
HEADER_FIELDS = {
    "base_offset": (0, 8),
    "batch_length": (8, 12),
    "leader_epoch": (12, 16),
    "magic": (16, 17),
    "crc": (17, 21),
    "attributes": (21, 23),
    "last_offset_delta": (23, 27),
    "first_timestamp": (27, 35),
    "max_timestamp": (35, 43),
    "producer_id": (43, 51),
    "producer_epoch": (51, 53),
    "base_sequence": (53, 57),
    "record_count": (57, 61),
}


def clock() -> float:
    return T0


def config(**options: Any) -> LogConfig:
    """Small segments and a dense index, so a few KiB make several segments."""
    base: dict[str, Any] = {"segment.bytes": 1024, "index.interval.bytes": 128, "fsync": "never"}
    base.update({name.replace("_", "."): value for name, value in options.items()})
    return LogConfig.from_options(base)


# --------------------------------------------------------------------------- helpers


def random_batch(
    rng: random.Random,
    timestamp: int,
    *,
    key_space: int | None = None,
    tombstone_rate: float = 0.0,
    records: int | None = None,
) -> bytes:
    count = records if records is not None else rng.randint(1, 4)
    keys: list[bytes | None] = [
        None if key_space is None or rng.random() < 0.15 else f"key-{rng.randrange(key_space)}".encode()
        for _ in range(count)
    ]
    values: list[bytes | None] = [
        None if k is not None and rng.random() < tombstone_rate else rng.randbytes(rng.randint(0, 48)) for k in keys
    ]
    return encode_batch(
        values,
        keys,
        timestamp=timestamp,
        timestamp_deltas=list(range(count)),
        compression=rng.choice(["none", "none", "lz4", "zstd"]),
    )


def raw_batches(path: str | Path) -> list[tuple[int, bytes]]:
    """(position, bytes) of every batch in a segment file, parsed independently of Log."""
    data = Path(path).read_bytes()
    out = []
    pos = 0
    while pos < len(data):
        h = read_header(data, pos)
        out.append((pos, data[pos : pos + h.size]))
        pos += h.size
    return out


def segment_paths(directory: str | Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir() if p.suffix == ".log" and len(p.name) == 24)


def fill(
    log: Log,
    rng: random.Random,
    *,
    min_segments: int,
    min_active_batches: int = 1,
    key_space: int | None = None,
    tombstone_rate: float = 0.0,
    records: int | None = None,
) -> None:
    i = 0
    while len(log.segments) < min_segments or len(raw_batches(log.active.path)) < min_active_batches:
        log.append(
            random_batch(rng, TS_START + 10 * i, key_space=key_space, tombstone_rate=tombstone_rate, records=records)
        )
        i += 1
        assert i < 10_000, "fill did not converge"


def log_batches(log: Log) -> list[bytes]:
    """Every batch, one ``Log.read`` each, from the log start offset to the LEO."""
    out = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, max_bytes=1)
        if not data:
            break
        (h,) = list(iter_headers(data))
        assert h.last_offset >= offset, f"read({offset}) returned batch {h.base_offset}..{h.last_offset}"
        out.append(data)
        offset = h.next_offset
    return out


def base_of(batch: bytes) -> int:
    return read_header(batch).base_offset


Record = tuple[int, bytes | None, bytes | None, int]  # offset, key, value, timestamp


def records_of(batches: list[bytes]) -> list[Record]:
    out: list[Record] = []
    for data in batches:
        b = decode_batch(data)
        out += zip(b.offsets, b.keys, b.values, b.timestamps, strict=True)
    return out


def flip(path: str | Path, position: int, mask: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        (old,) = os.pread(fd, 1, position)
        os.pwrite(fd, bytes([old ^ mask]), position)
    finally:
        os.close(fd)


def leftovers(directory: str | Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(LEFTOVER_SUFFIXES))


@contextlib.contextmanager
def opened(directory: str | Path, cfg: LogConfig) -> Iterator[Log]:
    log = Log.open(str(directory), cfg, clock=clock)
    try:
        yield log
    finally:
        log.close()


def assert_appends_continue(log: Log, rng: random.Random) -> None:
    leo = log.log_end_offset
    batch = random_batch(rng, T0_MS)
    result = log.append(batch)
    assert result.base_offset == leo
    got = decode_batch(log.read(leo, max_bytes=1))
    want = decode_batch(batch)
    assert list(got.offsets) == list(range(leo, leo + len(want)))
    assert (got.keys, got.values) == (want.keys, want.values)


def assert_not_served(
    log: Log, seg_path: str, damaged_pos: int, damaged: range, expected: dict[tuple[int, int], bytes], what: str
) -> None:
    """Each read either raises LogCorruptionError naming the segment and a byte at or
    after the damage, or returns a non-empty prefix (whole batches) of what the undamaged
    log returned; offsets of the damaged batch must raise."""
    for (offset, max_bytes), want in expected.items():
        try:
            got = log.read(offset, max_bytes=max_bytes)
        except LogCorruptionError as exc:
            assert seg_path in str(exc), f"{what}: read({offset}) error does not name the segment: {exc}"
            assert exc.position >= damaged_pos, f"{what}: read({offset}) blames byte {exc.position}: {exc}"
            continue
        assert offset not in damaged, (
            f"{what}: read({offset}, {max_bytes}) of the damaged batch {damaged.start}..{damaged.stop - 1} "
            f"returned {len(got)} bytes (first base offset "
            f"{read_header(got).base_offset if got else None}) instead of raising"
        )
        assert want.startswith(got) and (got or not want), (
            f"{what}: read({offset}, {max_bytes}) returned {len(got)} bytes that are not a prefix "
            f"of the {len(want)} undamaged bytes"
        )
        assert sum(h.size for h in iter_headers(got)) == len(got)


# --------------------------------------------------------------------------- template


@dataclasses.dataclass(frozen=True)
class Template:
    """One log with >= 5 segments, saved twice: as left by a crash (no clean-shutdown
    marker, recovery point at the last roll) and after a clean close."""

    cfg: LogConfig
    crashed: Path
    clean: Path
    batches: list[bytes]  # every batch, in order
    reads: dict[tuple[int, int], bytes]  # (offset, max_bytes) -> Log.read on the live log
    times: dict[int, tuple[int, int] | None]  # timestamp -> offset_for_timestamp on the live log
    log_end_offset: int


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("template")
    cfg = config()
    rng = random.Random(20240611)
    clean = root / "clean"
    log = Log.open(str(clean), cfg, clock=clock)
    try:
        fill(log, rng, min_segments=5, min_active_batches=5)
        log.flush()
        batches = log_batches(log)
        start, leo = log.log_start_offset, log.log_end_offset
        reads = {(o, mb): log.read(o, max_bytes=mb) for o in range(start, leo + 1) for mb in (1, 700)}
        headers = [read_header(b) for b in batches]
        probes = {0, headers[-1].max_timestamp + 1000}
        probes |= {t for h in headers for t in (h.first_timestamp - 1, h.first_timestamp + 1, h.max_timestamp)}
        times = {t: log.offset_for_timestamp(t) for t in sorted(probes)}
        crashed = root / "crashed"
        shutil.copytree(clean, crashed)  # the files as a SIGKILL would leave them
    finally:
        log.close()
    assert not (crashed / CLEAN_SHUTDOWN_FILE).exists()
    assert (clean / CLEAN_SHUTDOWN_FILE).exists()
    assert len(segment_paths(clean)) >= 5
    return Template(cfg, crashed, clean, batches, reads, times, leo)


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- 1. torn tail


@pytest.mark.slow
def test_torn_tail_at_every_byte_of_the_final_batch(tmp_path: Path, template: Template) -> None:
    last = segment_paths(template.crashed)[-1]
    final_pos, final = raw_batches(last)[-1]
    assert len(raw_batches(last)) >= 4
    assert final == template.batches[-1]
    final_base = base_of(final)
    earlier = template.batches[:-1]
    rng = random.Random(1)
    for cut in range(final_pos, final_pos + len(final)):
        work = copy_of(template.crashed, tmp_path / f"cut-{cut}")
        os.truncate(work / last.name, cut)
        log = Log.open(str(work), template.cfg, clock=clock)
        try:
            assert not log.was_clean_shutdown, "the reopen must take the recovery path"
            assert log.recovered_bytes_truncated == cut - final_pos, f"cut at {cut}"
            assert log.log_end_offset == final_base, f"cut at {cut}"
            assert log_batches(log) == earlier, f"cut at {cut}: earlier batches changed"
            assert log.read(final_base) == b""
            log.verify()
            assert_appends_continue(log, rng)
            appended = log.read(final_base, max_bytes=1)
        finally:
            log.close()
        if cut % 16 == 0:  # and the repaired log survives a clean restart
            with opened(work, template.cfg) as again:
                assert again.was_clean_shutdown
                assert log_batches(again) == [*earlier, appended]
        shutil.rmtree(work)


# --------------------------------------------------------------------------- 2. flipped bytes


@pytest.mark.parametrize("seed", range(10))
def test_flipped_bytes_in_the_active_tail_truncate_from_the_damaged_batch(
    tmp_path: Path, template: Template, seed: int
) -> None:
    rng = random.Random(seed)
    work = copy_of(template.crashed, tmp_path / "log")
    last = segment_paths(work)[-1]
    active = raw_batches(last)
    j = rng.randrange(len(active))
    pos, damaged = active[j]
    for p in rng.sample(range(pos, pos + len(damaged)), rng.randint(1, 4)):
        flip(last, p, rng.randint(1, 255))
    k = template.batches.index(damaged)
    size = last.stat().st_size
    with opened(work, template.cfg) as log:
        assert not log.was_clean_shutdown
        assert log.recovered_bytes_truncated == size - pos
        assert last.stat().st_size == pos
        assert log.log_end_offset == base_of(damaged)
        assert log_batches(log) == template.batches[:k]
        log.verify()
        assert_appends_continue(log, rng)


def sealed_segment_reads(template: Template, seg_index: int) -> dict[tuple[int, int], bytes]:
    """The live log's reads of every offset of sealed segment ``seg_index``."""
    bases = [int(p.name[:20]) for p in segment_paths(template.clean)]
    lo, hi = bases[seg_index], bases[seg_index + 1]
    return {key: data for key, data in template.reads.items() if lo <= key[0] < hi}


@pytest.mark.parametrize("seed", range(10))
def test_flipped_bytes_in_a_sealed_segment_are_reported_never_served(
    tmp_path: Path, template: Template, seed: int
) -> None:
    rng = random.Random(1000 + seed)
    names = [p.name for p in segment_paths(template.clean)]
    seg_index = rng.randrange(len(names) - 1)
    name = names[seg_index]
    batches = raw_batches(template.clean / name)
    pos, damaged = batches[rng.randrange(len(batches))]
    allowed = list(range(len(damaged)))
    flips = [(pos + p, rng.randint(1, 255)) for p in rng.sample(allowed, rng.randint(1, 3))]
    h = read_header(damaged)
    damaged_offsets = range(h.base_offset, h.next_offset)

    # (a) after a clean shutdown: open may notice (tail scan), else reads and verify do
    work = copy_of(template.clean, tmp_path / "clean")
    for p, mask in flips:
        flip(work / name, p, mask)
    seg_path = str(work / name)
    try:
        log = Log.open(str(work), template.cfg, clock=clock)
    except LogCorruptionError as exc:
        assert exc.path == seg_path and seg_path in str(exc) and exc.position >= pos
    else:
        try:
            expected = sealed_segment_reads(template, seg_index)
            assert_not_served(log, seg_path, pos, damaged_offsets, expected, f"flips {flips}")
            with pytest.raises(LogCorruptionError) as err:
                log.verify()
            assert err.value.path == seg_path and err.value.position == pos
            assert f"{seg_path}: corrupt data at byte {pos}" in str(err.value)
        finally:
            log.close()

    # (b) a recovery that scans every segment refuses to open, naming file and byte
    work = copy_of(template.crashed, tmp_path / "recovery")
    (work / RECOVERY_POINT_FILE).unlink()
    for p, mask in flips:
        flip(work / name, p, mask)
    seg_path = str(work / name)
    before = {n: (work / n).read_bytes() for n in names}
    with pytest.raises(LogCorruptionError) as err:
        Log.open(str(work), template.cfg, clock=clock)
    assert err.value.path == seg_path and err.value.position == pos
    assert f"{seg_path}: corrupt data at byte {pos}" in str(err.value)
    assert {n: (work / n).read_bytes() for n in names} == before, "a refused open altered segments"


@pytest.fixture(scope="module")
def three_record_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Log, str, int, int, dict]]:
    """An open log of 3-record batches; yields (log, sealed segment path, batch position,
    batch base offset, expected reads of that segment)."""
    directory = tmp_path_factory.mktemp("three")
    log = Log.open(str(directory), config(), clock=clock)
    try:
        fill(log, random.Random(7), min_segments=3, records=3)
        seg = log.segments[1]
        pos, data = raw_batches(seg.path)[2]
        start, end = seg.base_offset, log.segments[2].base_offset
        expected = {(o, mb): log.read(o, max_bytes=mb) for o in range(start, end) for mb in (1, 10_000)}
        yield log, seg.path, pos, base_of(data), expected
    finally:
        log.close()


@pytest.mark.parametrize(
    "field",
    HEADER_FIELDS,
)
def test_damaged_header_field_of_a_sealed_batch_is_never_served(
    three_record_log: tuple[Log, str, int, int, dict], field: str
) -> None:
    """Every byte of every header field, several bit patterns, flipped under an open log."""
    log, seg_path, pos, base, expected = three_record_log
    failures = []
    lo, hi = HEADER_FIELDS[field]
    for byte in range(lo, hi):
        for mask in (0x01, 0x02, 0x04, 0x80, 0xFF):
            flip(seg_path, pos + byte, mask)
            try:
                assert_not_served(log, seg_path, pos, range(base, base + 3), expected, f"byte {byte} ^ {mask:#x}")
                with pytest.raises(LogCorruptionError) as err:
                    log.verify()
                assert (err.value.path, err.value.position) == (seg_path, pos)
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0])
            finally:
                flip(seg_path, pos + byte, mask)
    log.verify()  # restored
    assert not failures, f"{len(failures)} damaged {field} patterns were served:\n" + "\n".join(failures[:8])


# --------------------------------------------------------------------------- 3. index damage


def damage_kinds(size: int, entry: int) -> list[str]:
    odd = sorted({s for s in (1, 5, entry - 1, size - 1, size - 3, size + 3) if s > 0 and s % entry})
    return ["delete", *(f"truncate:{s}" for s in odd), "garbage", "garbage-odd", "past-end"]


def damage_index(path: Path, kind: str, rng: random.Random, log_size: int, next_rel: int) -> None:
    data = path.read_bytes()
    entry = OFFSET_ENTRY if path.suffix == ".index" else TIME_ENTRY
    if kind == "delete":
        path.unlink()
    elif kind.startswith("truncate:"):
        size = int(kind.split(":")[1])
        path.write_bytes((data + rng.randbytes(size))[:size])
    elif kind == "garbage":
        path.write_bytes(rng.randbytes(max(len(data), entry.size)))
    elif kind == "garbage-odd":
        path.write_bytes(rng.randbytes(len(data) + 5))
    elif kind == "past-end":
        entries = list(entry.iter_unpack(data))
        if entry is OFFSET_ENTRY:  # position past the end of the log, offsets still increasing
            last_rel = entries[-1][0] if entries else 0
            entries.append((last_rel + 1, log_size + 64))
        else:  # an offset past the log end, timestamps still increasing
            last_ts = entries[-1][0] if entries else 0
            entries.append((last_ts + 1, next_rel + 5))
        path.write_bytes(b"".join(entry.pack(*e) for e in entries))
    else:  # pragma: no cover
        raise AssertionError(kind)


def assert_answers_as_before(log: Log, template: Template, what: str) -> None:
    assert log.log_end_offset == template.log_end_offset, what
    for (offset, max_bytes), want in template.reads.items():
        assert log.read(offset, max_bytes=max_bytes) == want, f"{what}: read({offset}, {max_bytes})"
    for ts, want_ts in template.times.items():
        assert log.offset_for_timestamp(ts) == want_ts, f"{what}: offset_for_timestamp({ts})"


@pytest.mark.parametrize("state", ["clean", "crashed"])
@pytest.mark.parametrize("suffix", [".index", ".timeindex"])
@pytest.mark.parametrize("which", ["sealed", "active"])
def test_damaged_index_is_rebuilt_and_answers_as_before(
    tmp_path: Path, template: Template, state: str, suffix: str, which: str
) -> None:
    rng = random.Random(f"{state}{suffix}{which}")
    src = template.clean if state == "clean" else template.crashed
    logs = segment_paths(src)
    seg_log = logs[rng.randrange(len(logs) - 1)] if which == "sealed" else logs[-1]
    stem = seg_log.name[:20]
    index_name = stem + suffix
    entry = OFFSET_ENTRY if suffix == ".index" else TIME_ENTRY
    original_size = (src / index_name).stat().st_size
    assert original_size, f"{index_name} is empty in the template"
    next_base = int(logs[logs.index(seg_log) + 1].name[:20]) if which == "sealed" else template.log_end_offset
    for kind in damage_kinds(original_size, entry.size):
        what = f"{state} log, {kind} {index_name}"
        work = copy_of(src, tmp_path / "work")
        damage_index(work / index_name, kind, rng, seg_log.stat().st_size, next_base - int(stem))
        with opened(work, template.cfg) as log:
            assert log.was_clean_shutdown is (state == "clean")
            assert_answers_as_before(log, template, what)
            for s in segment_paths(work):
                for sfx, ent in ((".index", OFFSET_ENTRY), (".timeindex", TIME_ENTRY)):
                    size = s.with_suffix(sfx).stat().st_size
                    assert size % ent.size == 0, f"{what}: {s.stem}{sfx} left torn ({size} bytes)"
        with opened(work, template.cfg) as log:  # and again, on the fast path
            assert log.was_clean_shutdown
            assert_answers_as_before(log, template, what + ", second open")
        shutil.rmtree(work)


def test_index_entry_inside_a_batch_is_rebuilt(tmp_path: Path, template: Template) -> None:
    work = copy_of(template.clean, tmp_path / "work")
    index = work / (segment_paths(work)[1].name[:20] + ".index")
    entries = list(OFFSET_ENTRY.iter_unpack(index.read_bytes()))
    rel, pos = entries[-1]
    entries[-1] = (rel, pos + 5)  # still inside the log, but not at a batch boundary
    index.write_bytes(b"".join(OFFSET_ENTRY.pack(*e) for e in entries))
    with opened(work, template.cfg) as log:
        assert_answers_as_before(log, template, "index entry inside a batch")


def test_max_timestamp_survives_index_rebuild_and_clean_restart(tmp_path: Path) -> None:
    """A late timestamp between two index points is not lost by a rebuilt time index
    and a clean restart (the fast path): time lookups and retention still see it."""
    cfg = config(retention_ms=1000)
    directory = tmp_path / "log"
    late = T0_MS + 5000  # a producer clock ahead of the others, in the middle of segment 0
    with opened(directory, cfg) as log:
        for i in range(40):
            # 113-byte batches, index entry every 128 bytes: the even batches are index points
            batch = encode_batch([b"v" * 40], timestamp=late if i == 3 else TS_START + 10 * i)
            assert len(batch) == 113
            log.append(batch)
        assert len(log.segments) >= 3
        live_max = [s.max_timestamp for s in log.segments]
        live_lookup = log.offset_for_timestamp(late)
        assert live_lookup is not None
    (directory / f"{0:020d}.index").unlink()  # index damage: segment 0 is rebuilt
    with opened(directory, cfg) as log:
        assert [s.max_timestamp for s in log.segments] == live_max
    with opened(directory, cfg) as log:  # clean restart: the fast path
        assert [s.max_timestamp for s in log.segments] == live_max
        assert log.offset_for_timestamp(late) == live_lookup
        # segment 0 holds a record stamped T0+5s: with retention.ms=1s it lives until T0+6s
        assert log.apply_retention(now_ms=T0_MS + 4500) == 0


# --------------------------------------------------------------------------- 4. SIGKILL


def records_for(seed: int, round_: int, index: int) -> tuple[list[bytes], list[bytes]]:
    """The records the writer child appends as batch ``index`` of round ``round_``."""
    count = 1 + (round_ + index) % 3
    keys = [f"{seed}:{round_}:{index}:{j}".encode() for j in range(count)]
    sizes = [1 + (index * 7 + j * 13) % 50 for j in range(count)]  # 32 B .. 1.6 KiB values
    values = [hashlib.sha256(k).digest() * n for k, n in zip(keys, sizes, strict=True)]
    return keys, values


def value_digest(values: list[bytes]) -> str:
    return hashlib.sha256(b"\0".join(values)).hexdigest()[:20]


WRITER_OPTIONS = {"segment.bytes": 32 * 1024, "index.interval.bytes": 4096, "fsync": "always"}

WRITER_CHILD = (
    textwrap.dedent(
        """
        import hashlib
        import os
        import sys

        from appliance.log.config import LogConfig
        from appliance.log.log import Log
        from ipc.records import encode_batch

        T0 = %(T0)r
        OPTIONS = %(OPTIONS)r
        """
    )
    % {"T0": T0, "OPTIONS": WRITER_OPTIONS}
    + inspect.getsource(records_for)
    + inspect.getsource(value_digest)
    + textwrap.dedent(
        """
        def main():
            directory, seed, round_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
            os.write(1, b"opening\\n")
            log = Log.open(directory, LogConfig.from_options(OPTIONS), clock=lambda: T0)
            os.write(1, b"ready %d\\n" % log.log_end_offset)
            for index in range(100_000):
                keys, values = records_for(seed, round_, index)
                batch = encode_batch(values, keys, timestamp=int(T0 * 1000) + index)
                result = log.append(batch, leader_epoch=round_)
                # acknowledged: append() returned, so the batch is fsynced
                line = "%d %d %d %d %s\\n" % (
                    result.base_offset, result.last_offset, round_, index, value_digest(values)
                )
                os.write(1, line.encode())

        main()
        """
    )
)


@dataclasses.dataclass(frozen=True)
class Ack:
    base_offset: int
    last_offset: int
    round: int
    index: int
    digest: str


class LineReader:
    """Lines from a child's stdout pipe, waiting with select() up to a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def readline(self, deadline: float) -> bytes | None:
        while b"\n" not in self.buf:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no line from the child before the deadline")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                self.eof = not chunk
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


@contextlib.contextmanager
def child(args: list[str], stderr_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that is killed and reaped however the block ends."""
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=CHILD_ENV, cwd=REPO
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def check_acknowledged(directory: Path, acks: list[Ack], seed: int, what: str) -> int:
    """Every acknowledged batch at its offset, byte for byte; nothing invented. Returns LEO."""
    cfg = LogConfig.from_options(WRITER_OPTIONS)
    with opened(directory, cfg) as log:
        log.verify()
        found: dict[int, tuple[int, int, int, str]] = {}
        next_offset = 0
        previous = (-1, -1)
        for data in log_batches(log):
            b = decode_batch(data)
            h = b.header
            assert h.base_offset == next_offset, f"{what}: gap or overlap at offset {h.base_offset}"
            _, round_, index, _ = b.keys[0].decode().split(":")  # type: ignore[union-attr]
            r, i = int(round_), int(index)
            keys, values = records_for(seed, r, i)
            assert (b.keys, b.values) == (keys, values), f"{what}: batch at {h.base_offset} is not ({r}, {i})"
            assert h.leader_epoch == r, f"{what}: batch at {h.base_offset} has epoch {h.leader_epoch}"
            assert (r, i) == (previous[0], previous[1] + 1) or (r > previous[0] and i == 0), (
                f"{what}: batch ({r}, {i}) at {h.base_offset} follows {previous}"
            )
            previous = (r, i)
            found[h.base_offset] = (h.last_offset, r, i, value_digest(values))
            next_offset = h.next_offset
        assert log.log_end_offset == next_offset
        for ack in acks:
            assert found.get(ack.base_offset) == (ack.last_offset, ack.round, ack.index, ack.digest), (
                f"{what}: acknowledged append {ack} is missing or different"
            )
        assert log.leader_epochs is not None
        for epoch, start in log.leader_epochs.entries():
            assert start in found and found[start][1:3] == (epoch, 0), (
                f"{what}: leader epoch {epoch} starts at {start}, which is not its first batch"
            )
        return log.log_end_offset


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkill_loses_no_acknowledged_append(tmp_path: Path) -> None:
    seed = 4242
    rng = random.Random(seed)
    script = tmp_path / "writer.py"
    script.write_text(WRITER_CHILD)
    directory = tmp_path / "log"
    acks: list[Ack] = []
    rounds = 40
    deadline = time.monotonic() + 60
    for round_ in range(rounds):
        target = 0 if rng.random() < 0.15 else rng.randint(1, 40)
        lines: list[bytes] = []
        stderr_path = tmp_path / f"writer-{round_}.err"
        with child([sys.executable, str(script), str(directory), str(seed), str(round_)], stderr_path) as proc:
            reader = LineReader(proc)
            wanted = 1 if target == 0 else target + 2  # "opening", "ready", then acks
            while len(lines) < wanted:
                line = reader.readline(deadline)
                if line is None:
                    pytest.fail(f"round {round_}: writer exited {proc.wait()}: {stderr_path.read_text()}")
                lines.append(line)
            proc.send_signal(signal.SIGKILL)  # at a random point of the append loop (or of open)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            while (line := reader.readline(deadline)) is not None:  # acks written before the kill
                lines.append(line)
        for line in lines:
            if line.startswith((b"opening", b"ready")):
                continue
            base, last, r, i, digest = line.decode().split()
            acks.append(Ack(int(base), int(last), int(r), int(i), digest))
        if round_ and acks:
            assert all(a.last_offset < b.base_offset for a, b in zip(acks, acks[1:], strict=False))
        if not directory.exists():
            assert not acks
            continue
        snapshot = copy_of(directory, tmp_path / f"check-{round_}")  # the child recovers the original
        check_acknowledged(snapshot, acks, seed, f"after kill {round_}")
        shutil.rmtree(snapshot)
    assert len(acks) >= rounds, "too few acknowledged appends to mean anything"
    assert len(segment_paths(directory)) >= 3, "the writer should have rolled segments"


# --------------------------------------------------------------------------- 5. crash at each step

STEP_CHILD = textwrap.dedent(
    """
    import json
    import os
    import sys

    from appliance.log import cleaner
    from appliance.log.config import LogConfig
    from appliance.log.log import Log

    spec = json.loads(sys.argv[1])
    seen = {}

    def hook(name):
        seen[name] = seen.get(name, 0) + 1
        if name == spec["step"] and seen[name] == spec["crash_at"]:
            os._exit(137)

    log = Log.open(
        spec["directory"], LogConfig.from_options(spec["options"]), clock=lambda: spec["now"], step_hook=hook
    )
    if spec["operation"] == "retention":
        log.apply_retention(spec["now_ms"])
    elif spec["operation"] == "compaction":
        cleaner.compact(log, spec["now_ms"])
    else:
        log.truncate_to(spec["offset"])
    os.write(1, json.dumps(seen).encode())
    os._exit(0)
    """
)


@dataclasses.dataclass(frozen=True)
class StepCase:
    operation: str  # retention | compaction | truncate | truncate_fully
    directory: Path  # the log before the operation (closed cleanly)
    options: dict[str, Any]
    offset: int  # truncate_to target
    batches: list[bytes]  # before
    segment_bases: list[int]  # before
    log_start_offset: int  # before
    log_end_offset: int  # before
    after: list[bytes]  # batches after the operation completed without a crash
    after_start: int
    after_end: int

    @property
    def cfg(self) -> LogConfig:
        return LogConfig.from_options(self.options)


def run_operation(log: Log, case_operation: str, offset: int) -> None:
    if case_operation == "retention":
        log.apply_retention(T0_MS)
    elif case_operation == "compaction":
        cleaner.compact(log, T0_MS)
    else:
        log.truncate_to(offset)


def make_step_case(root: Path, operation: str) -> StepCase:
    rng = random.Random(operation)
    options: dict[str, Any] = {"segment.bytes": 1024, "index.interval.bytes": 128, "fsync": "never"}
    if operation == "compaction":
        options |= {"cleanup.policy": "compact", "delete.retention.ms": 0}
    if operation in ("retention", "truncate_fully"):
        options |= {"retention.ms": 60_000}
    cfg = LogConfig.from_options(options)
    directory = root / operation
    offset = 0
    aged = operation in ("retention", "truncate_fully")
    keyed = operation == "compaction"
    with opened(directory, cfg) as log:
        i = 0
        while len(log.segments) < 6 or len(raw_batches(log.active.path)) < 3:
            ts = TS_START + 10 * i
            if aged:  # the first three segments are older than retention.ms at T0
                ts = (T0_MS - 3_600_000 if len(log.segments) <= 3 else T0_MS - 1000) + i
            log.append(random_batch(rng, ts, key_space=6 if keyed else None, tombstone_rate=0.2 if keyed else 0.0))
            i += 1
        if operation == "truncate_fully":
            assert log.apply_retention(T0_MS) >= 2
            offset = log.log_start_offset
        if operation == "truncate":
            sealed = raw_batches(log.segments[-3].path)
            offset = base_of(sealed[len(sealed) // 2][1]) + 1  # inside a batch: cut at its start
    with opened(directory, cfg) as log:
        before = log_batches(log)
        bases = [s.base_offset for s in log.segments]
        start, end = log.log_start_offset, log.log_end_offset
    reference = root / (operation + "-done")
    shutil.copytree(directory, reference)
    with opened(reference, cfg) as log:
        run_operation(log, operation, offset)
        after, after_start, after_end = log_batches(log), log.log_start_offset, log.log_end_offset
    shutil.rmtree(reference)
    assert after != before, f"{operation} should change the log"
    return StepCase(operation, directory, options, offset, before, bases, start, end, after, after_start, after_end)


@pytest.fixture(scope="module")
def step_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StepCase]:
    root = tmp_path_factory.mktemp("steps")
    return {op: make_step_case(root, op) for op in ("retention", "compaction", "truncate", "truncate_fully")}


def run_step_child(case: StepCase, directory: Path, step: str, crash_at: int) -> tuple[int, dict[str, int]]:
    spec = {
        "directory": str(directory),
        "options": case.options,
        "now": T0,
        "now_ms": T0_MS,
        "operation": case.operation,
        "offset": case.offset,
        "step": step,
        "crash_at": crash_at,
    }
    proc = subprocess.run(
        [sys.executable, "-c", STEP_CHILD, json.dumps(spec)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,  # run() kills and reaps the child on timeout
        env=CHILD_ENV,
        cwd=REPO,
    )
    assert proc.returncode in (0, 137), (
        f"child for {step} #{crash_at} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}"
    )
    return proc.returncode, (json.loads(proc.stdout) if proc.returncode == 0 else {})


def check_retention(case: StepCase, log: Log, batches: list[bytes], completed: bool) -> None:
    start = log.log_start_offset
    assert start in case.segment_bases and case.log_start_offset <= start <= case.after_start, (
        f"log start {start} is not the base of a segment retention may delete"
    )
    assert batches == [b for b in case.batches if base_of(b) >= start], "not whole oldest segments"
    assert log.log_end_offset == case.log_end_offset
    if completed:
        assert (batches, start) == (case.after, case.after_start)


def check_truncate(case: StepCase, log: Log, batches: list[bytes], completed: bool) -> None:
    assert log.log_start_offset == case.log_start_offset
    assert batches == case.batches[: len(batches)], "the truncated log is not a prefix of the original"
    assert case.after_end <= log.log_end_offset <= case.log_end_offset
    if completed:
        assert (batches, log.log_end_offset) == (case.after, case.after_end)


def check_truncate_fully(case: StepCase, log: Log, batches: list[bytes], completed: bool) -> None:
    start, end = log.log_start_offset, log.log_end_offset
    if batches:  # cut short: segments go newest first, so what is left is a prefix of the original
        assert start == case.log_start_offset
        assert batches == case.batches[: len(batches)], "not a prefix of the original batches"
        assert end <= case.log_end_offset
    else:
        assert (start, end) == (case.offset, case.offset), (
            f"the emptied log restarted at offset {start} (LEO {end}), not at the truncation point "
            f"{case.offset}: offsets would be reused"
        )
    if completed:
        assert (batches, start, end) == ([], case.offset, case.offset)


def check_compaction(case: StepCase, log: Log, batches: list[bytes], completed: bool) -> None:
    assert (log.log_start_offset, log.log_end_offset) == (case.log_start_offset, case.log_end_offset)
    original = {r[0]: r for r in records_of(case.batches)}
    present = records_of(batches)
    offsets = [r[0] for r in present]
    assert offsets == sorted(set(offsets)), "offsets are not strictly increasing"
    for r in present:
        assert original.get(r[0]) == r, f"record at offset {r[0]} is not the original {original.get(r[0])}"
    kept = {r[0] for r in present}
    newest: dict[bytes, Record] = {}
    for r in original.values():
        if r[1] is not None:
            newest[r[1]] = r
    active_base = case.segment_bases[-1]
    for key, r in newest.items():
        if r[2] is not None or r[0] >= active_base:  # old tombstones may go
            assert r[0] in kept, f"newest record of {key!r} (offset {r[0]}) was lost"
    for offset, r in original.items():
        if offset >= active_base or r[1] is None:
            assert offset in kept, f"offset {offset} (active segment or null key) was lost"
    if completed:
        assert batches == case.after
        assert len(present) < len(original)


CHECKS = {
    "retention": check_retention,
    "compaction": check_compaction,
    "truncate": check_truncate,
    "truncate_fully": check_truncate_fully,
}


def check_after_crash(case: StepCase, directory: Path, completed: bool, rng: random.Random) -> None:
    with opened(directory, case.cfg) as log:
        assert not log.was_clean_shutdown
        assert leftovers(directory) == [], "interrupted-operation files left after open"
        log.verify()
        batches = log_batches(log)
        for a, b in zip(batches, batches[1:], strict=False):
            assert read_header(a).last_offset < base_of(b)
        CHECKS[case.operation](case, log, batches, completed)
        leo = log.log_end_offset
    with opened(directory, case.cfg) as log:  # a second open works and sees the same log
        assert log.was_clean_shutdown
        assert (log_batches(log), log.log_end_offset) == (batches, leo)
        assert_appends_continue(log, rng)
    with opened(directory, case.cfg) as log:
        log.verify()


def crash_at_every_occurrence(tmp_path: Path, case: StepCase, step: str) -> None:
    rng = random.Random(step)
    failures: list[str] = []
    for crash_at in range(1, 40):
        work = copy_of(case.directory, tmp_path / f"{step}-{crash_at}")
        code, seen = run_step_child(case, work, step, crash_at)
        try:
            check_after_crash(case, work, completed=code == 0, rng=rng)
        except (AssertionError, SluiceError, OSError) as exc:
            what = "after completing" if code == 0 else f"crash at {step} #{crash_at}"
            failures.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        shutil.rmtree(work)
        if code == 0:
            assert seen.get(step, 0) == crash_at - 1 >= 1, f"{step} was reached {seen.get(step, 0)} times"
            break
    else:
        pytest.fail(f"{step} occurred more often than the bound")
    assert not failures, f"{case.operation}: " + "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("operation", "step"),
    [
        ("retention", "retention.selected"),
        ("retention", "delete.renamed"),
        ("retention", "delete.dir_synced"),
        ("compaction", "compact.cleaned_written"),
        ("compaction", "compact.swap_renamed"),
        ("compaction", "compact.indexes_deleted"),
        ("compaction", "compact.swapped"),
        ("truncate", "delete.renamed"),
        ("truncate", "delete.dir_synced"),
        ("truncate_fully", "delete.renamed"),
        ("truncate_fully", "delete.dir_synced"),
    ],
)
def test_crash_at_each_step_leaves_a_consistent_log(
    tmp_path: Path, step_cases: dict[str, StepCase], operation: str, step: str
) -> None:
    crash_at_every_occurrence(tmp_path, step_cases[operation], step)
