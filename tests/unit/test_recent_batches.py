"""The leader's recent batches (appliance/partition/recent.py) and how the replica uses
them (appliance/partition/replica.py).

``RecentBatches`` alone: the bound in bytes and eviction, offsets inside and outside,
``Log.read``'s answer rules (whole batches, ``max_bytes`` but at least one, nothing at or
past ``max_offset``), the same ``bytes`` object for a single batch, truncation, a gap.

A leader ``Replica`` on a real log: every read it answers from memory is byte for byte
what the log answers (every offset, several sizes and high watermarks); a truncation,
a role change or a log start moved past the batches falls back to the log; a follower
fed from those answers ends with a log identical to the leader's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.log.config import LogConfig
from appliance.log.log import Log
from appliance.partition.recent import RecentBatches
from appliance.partition.replica import Replica
from appliance.replication import apply_fetch_reply
from ipc.control import RoleCommand
from ipc.errors import OffsetOutOfRangeError
from ipc.protocol import Reply
from ipc.records import check_producible, encode_batch, iter_headers, validate_batch
from ipc.shm import Role

# =========================================================================== the ring alone


def filled(capacity: int, sizes: list[int], start: int = 0, records: int = 2) -> RecentBatches:
    """Batches of ``records`` offsets each, of the given sizes (bytes tagged by base offset)."""
    r = RecentBatches(capacity)
    base = start
    for size in sizes:
        r.append(base, base + records, bytes([base % 256]) * size)
        base += records
    return r


def test_the_bound_evicts_the_oldest_batches() -> None:
    r = filled(100, [30, 30, 30])
    assert (r.start, r.end, len(r), r.size_bytes) == (0, 6, 3, 90)
    r.append(6, 8, b"x" * 30)  # 120 > 100: the oldest goes
    assert (r.start, r.end, len(r), r.size_bytes) == (2, 8, 3, 90)
    for base in range(8, 400, 2):  # many evictions: the lists are compacted, the bound holds
        r.append(base, base + 2, b"y" * 30)
        assert r.size_bytes <= 100 and r.end == base + 2 and r.start == base + 2 - 2 * len(r)
    assert len(r._bases) <= 2 * len(r) + 1


def test_a_batch_larger_than_the_ring_empties_it() -> None:
    r = filled(100, [30, 30])
    r.append(4, 6, b"z" * 101)
    assert len(r) == 0 and r.size_bytes == 0 and r.read(4, 1000, 10) is None
    r.append(6, 8, b"a" * 10)  # starts again at the next batch
    assert (r.start, r.end) == (6, 8)


def test_capacity_zero_keeps_nothing_and_resize_evicts() -> None:
    r = filled(0, [10, 10])
    assert len(r) == 0
    r = filled(100, [30, 30, 30])
    r.resize(60)
    assert (r.start, r.size_bytes) == (2, 60)
    with pytest.raises(ValueError, match="must be >= 0"):
        RecentBatches(-1)


def test_offsets_inside_and_outside() -> None:
    r = filled(1000, [10, 10, 10], start=100)  # batches [100,102) [102,104) [104,106)
    assert r.read(99, 1000, 200) is None  # before: the log answers
    assert r.read(107, 1000, 200) is None  # past the end: the log answers (out of range)
    assert r.read(106, 1000, 200) == b""  # at the end: nothing new yet
    assert r.read(100, 1000, 200) == bytes([100]) * 10 + bytes([102]) * 10 + bytes([104]) * 10
    assert r.read(103, 1000, 200) == bytes([102]) * 10 + bytes([104]) * 10  # the batch holding it
    assert (r.hits, r.misses) == (3, 2)


def test_answers_follow_the_logs_rules() -> None:
    r = filled(1000, [10, 20, 30])  # [0,2) [2,4) [4,6)
    assert r.read(0, 25, 100) == bytes([0]) * 10  # the second would pass max_bytes
    assert r.read(0, 5, 100) == bytes([0]) * 10  # but at least one batch
    assert r.read(0, 1000, 4) == bytes([0]) * 10 + bytes([2]) * 20  # none at or past max_offset
    assert r.read(4, 1000, 4) == b""  # the batch holding it starts at max_offset
    assert r.read(1, 1000, 3) == bytes([0]) * 10 + bytes([2]) * 20  # straddling max_offset: whole
    assert r.read(3, 1000, 3) == b""  # at or past max_offset: nothing, as the log answers


def test_a_single_batch_is_the_object_appended() -> None:
    r = RecentBatches(1000)
    data = bytes(range(50))
    r.append(0, 3, data)
    assert r.read(1, 1000, 10) is data


def test_truncate_removes_batches_at_or_past_the_offset_whole() -> None:
    r = filled(1000, [10, 10, 10])  # [0,2) [2,4) [4,6)
    r.truncate(6)
    assert r.end == 6
    r.truncate(3)  # inside [2,4): removed whole, as Log.truncate_to does
    assert (r.start, r.end, r.size_bytes) == (0, 2, 10)
    r.truncate(0)
    assert len(r) == 0 and r.end == -1 and r.read(0, 100, 100) is None


def test_an_append_that_does_not_follow_empties_the_ring_first() -> None:
    r = filled(1000, [10, 10])  # ends at 4
    r.append(2, 4, b"n" * 10)  # the log was truncated to 2 and appended to again
    assert (r.start, r.end, r.size_bytes) == (2, 4, 10)
    assert r.read(0, 100, 100) is None


# =========================================================================== the leader's replica


def leader(tmp_path: Path, capacity: int = 4 << 20, segment_bytes: int = 64 << 20) -> Replica:
    cfg = LogConfig(segment_bytes=segment_bytes, leader_recent_batches_bytes=capacity)
    r = Replica("t", 0, 1, Log.open(str(tmp_path / "t-0"), cfg))
    r.take_role(r.single_node_role(), hw=0, now=0.0)
    return r


def produce(r: Replica, batches: int, records: int = 3, size: int = 40) -> None:
    for i in range(batches):
        values = [b"%d-%d-" % (i, j) + b"v" * size for j in range(records)]
        buf = encode_batch(values, [b"k%d" % j for j in range(records)], timestamp=1_700_000_000_000 + i)
        r.append(memoryview(buf), check_producible(validate_batch(buf)))
    assert r.leading is not None
    r.leading.advance_high_watermark(r.log.log_end_offset)


def same_as_log(r: Replica, offset: int, max_bytes: int, replica: bool) -> bytes:
    """The replica's answer is what the log holds from ``offset``: the log's answer, or
    (the log answers from one segment at a time) the log's answers one after the other."""
    got = r.read(offset, max_bytes, replica)
    limit = None if replica else r.high_watermark
    first = r.log.read(offset, max_bytes, max_offset=limit)
    assert got[: len(first)] == first, (offset, max_bytes, replica)
    span, at = first, offset
    for _ in range(100):
        if len(span) >= len(got) or not span:
            break
        at = max(h.next_offset for h in iter_headers(span))
        more = r.log.read(at, max_bytes, max_offset=limit)
        if not more:
            break
        span += more
    assert span[: len(got)] == got and len(got) <= max(max_bytes, len(first)), (offset, max_bytes, replica)
    assert len(got) == len(span) or sum(1 for _ in iter_headers(got)) >= 1
    return got


@pytest.mark.parametrize("capacity", [4 << 20, 1500])  # all in memory; only the newest
def test_every_read_is_byte_for_byte_the_logs(tmp_path: Path, capacity: int) -> None:
    r = leader(tmp_path, capacity, segment_bytes=4096)  # several segments: rolls in between
    produce(r, 120)
    assert len(r.log.segments) > 1 and len(r.recent) > 0
    leo = r.log.log_end_offset
    assert r.leading is not None
    for hw in (leo, leo - 4):
        r.leading.high_watermark = hw
        for offset in range(leo + 1):
            for max_bytes in (1, 300, 1 << 20):
                same_as_log(r, offset, max_bytes, replica=True)
                same_as_log(r, offset, max_bytes, replica=False)
    assert r.recent.hits > 0
    if capacity < 4 << 20:
        assert r.recent.start > 0 and r.recent.misses > 0  # older offsets came from the log


def test_a_truncated_log_is_read_from_the_log(tmp_path: Path) -> None:
    r = leader(tmp_path)
    produce(r, 10)
    r.log.truncate_to(12)  # e.g. a failed write taken back
    assert same_as_log(r, 9, 1 << 20, replica=True)
    assert len(r.recent) == 0  # not what the log holds any more
    produce(r, 2)
    assert r.recent.start == 12
    same_as_log(r, 12, 1 << 20, replica=True)
    same_as_log(r, 3, 1 << 20, replica=True)


def test_a_role_change_empties_it_and_the_log_start_still_rules(tmp_path: Path) -> None:
    r = leader(tmp_path)
    produce(r, 10)
    r.log.advance_log_start(6)
    with pytest.raises(OffsetOutOfRangeError):
        r.read(3, 1 << 20, True)
    same_as_log(r, 6, 1 << 20, replica=True)
    r.take_role(RoleCommand(Role.FOLLOWER, 2, "tcp://x:1"), hw=r.high_watermark, now=0.0)
    assert len(r.recent) == 0


def test_a_follower_fed_from_memory_holds_the_leaders_log(tmp_path: Path) -> None:
    r = leader(tmp_path / "leader")
    f = Replica("t", 0, 2, Log.open(str(tmp_path / "follower" / "t-0")))
    f.take_role(RoleCommand(Role.FOLLOWER, 0, "tcp://leader:1"), hw=0, now=0.0)
    for _ in range(5):
        produce(r, 7)
        data = r.read(f.log.log_end_offset, 1 << 20, replica=True)
        assert data
        reply = Reply(1, {"high_watermark": r.high_watermark, "log_start_offset": 0}, [data], None)
        assert apply_fetch_reply(f, reply, "tcp://leader:1", lambda: None) is None
    assert r.recent.hits == 5 and r.recent.misses == 0
    whole = r.log.read(0, 64 << 20)
    assert f.log.read(0, 64 << 20) == whole and len(whole) > 0


def test_a_compacted_topics_cleaned_segments_are_read_from_the_log(tmp_path: Path) -> None:
    """The cleaner rewrites sealed segments; the ring kept their batches as first written.
    After a cleaning, every offset of the sealed segments reads what the log holds now."""
    from appliance.log import cleaner

    cfg = LogConfig(segment_bytes=2048, cleanup_policy="compact", leader_recent_batches_bytes=4 << 20)
    r = Replica("t", 0, 1, Log.open(str(tmp_path / "t-0"), cfg))
    r.take_role(r.single_node_role(), hw=0, now=0.0)
    produce(r, 60)  # the same three keys again and again: every sealed batch but the newest goes
    assert len(r.log.segments) > 2 and r.recent.start == 0  # the ring holds the whole log
    assert cleaner.compact(r.log) > 0
    active = r.log.segments[-1].base_offset
    for offset in range(0, r.log.log_end_offset + 1, 7):
        same_as_log(r, offset, 1 << 20, replica=False)
        same_as_log(r, offset, 1 << 20, replica=True)
    assert r.recent.hits > 0 and active > 0  # the active segment still comes from memory
