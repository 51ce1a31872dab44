"""The idempotent producer's state per partition (appliance/log/producers.py).

Pure-logic tests build ``BatchHeader``s directly; the rebuild tests append real
batches to a ``Log`` in ``tmp_path`` through a tiny leader (check, append, update) and
compare the rebuilt table with the live one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.log import cleaner
from appliance.log.config import LogConfig
from appliance.log.log import Log
from appliance.log.producers import (
    DUPLICATE_WINDOW,
    SEQUENCE_SPACE,
    ProducerStateTable,
    add_sequence,
    last_sequence,
)
from ipc.errors import InvalidConfigError, InvalidProducerEpochError, OutOfOrderSequenceError
from ipc.records import HEADER_SIZE, LOG_OVERHEAD, MAGIC, BatchHeader, decode_batches, encode_batch, read_header

MAX_SEQ = SEQUENCE_SPACE - 1
T0_MS = 1_700_000_000_000


def hdr(pid: int, epoch: int, seq: int, count: int = 1) -> BatchHeader:
    """A producer's batch header as the leader sees it before stamping (base offset 0)."""
    return BatchHeader(
        base_offset=0,
        batch_length=HEADER_SIZE - LOG_OVERHEAD,
        leader_epoch=-1,
        magic=MAGIC,
        crc=0,
        attributes=0,
        last_offset_delta=count - 1,
        first_timestamp=T0_MS,
        max_timestamp=T0_MS,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        record_count=count,
    )


class Leader:
    """What the partition leader does with the table: check, append if new, update."""

    def __init__(self, table: ProducerStateTable, log: Log | None = None) -> None:
        self.table = table
        self.log = log
        self.next_offset = 0

    def produce(self, h: BatchHeader, buf: bytes | None = None) -> tuple[int, bool]:
        """(base offset, True if appended now / False if it was a duplicate)."""
        dup = self.table.check(h)
        if dup is not None:
            return dup, False
        if self.log is not None:
            assert buf is not None
            base = self.log.append(buf).base_offset
        else:
            base = self.next_offset
        self.next_offset = base + h.last_offset_delta + 1
        self.table.update(h, base)
        return base, True


def batch(pid: int, epoch: int, seq: int, count: int = 1, tag: str = "") -> bytes:
    values: list[bytes | None] = [f"{tag}{pid}-{seq}-{i}".encode() for i in range(count)]
    return encode_batch(values, timestamp=T0_MS, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


@pytest.fixture
def open_log(tmp_path: Any) -> Iterator[Any]:
    opened: list[Log] = []

    def _open(**options: Any) -> Log:
        lg = Log.open(str(tmp_path / "events-0"), LogConfig(**options), clock=lambda: T0_MS / 1000)
        opened.append(lg)
        return lg

    yield _open
    for lg in opened:
        for seg in lg.segments:
            seg.close()
        lg.segments = []


# --------------------------------------------------------------------------- sequences


def test_sequence_arithmetic_wraps_like_kafka() -> None:
    assert add_sequence(5, 3) == 8
    assert add_sequence(MAX_SEQ, 1) == 0
    assert add_sequence(MAX_SEQ - 1, 3) == 1
    assert last_sequence(hdr(1, 0, MAX_SEQ - 1, count=4)) == 1  # MAX-1, MAX, 0, 1


def test_a_new_producer_may_start_at_any_sequence() -> None:
    t = ProducerStateTable()
    assert t.check(hdr(7, 0, 0)) is None
    assert t.check(hdr(8, 3, 12345, count=10)) is None  # its state may have gone with retention
    assert t.producer_count == 0  # check changes nothing


def test_consecutive_batches_are_new() -> None:
    leader = Leader(ProducerStateTable())
    assert leader.produce(hdr(7, 0, 0, count=3)) == (0, True)
    assert leader.produce(hdr(7, 0, 3, count=2)) == (3, True)
    assert leader.produce(hdr(7, 0, 5)) == (5, True)
    entry = leader.table.get(7)
    assert entry is not None and entry.last_sequence == 5 and entry.last_offset == 5
    assert leader.table.producer_count == 1


def test_a_duplicate_of_each_of_the_last_five_batches_answers_its_offset() -> None:
    leader = Leader(ProducerStateTable())
    offsets = {}
    seq = 0
    for i in range(8):
        count = i + 1
        h = hdr(7, 0, seq, count)
        offsets[seq] = (leader.produce(h)[0], count)
        seq += count
    end = leader.next_offset
    window = sorted(offsets)[-DUPLICATE_WINDOW:]
    for s in window:
        base, count = offsets[s]
        assert leader.table.check(hdr(7, 0, s, count)) == base
        assert leader.produce(hdr(7, 0, s, count)) == (base, False)
    assert leader.next_offset == end  # nothing written twice
    # the same first sequence with another length is not the same batch
    s = window[-1]
    with pytest.raises(OutOfOrderSequenceError):
        leader.table.check(hdr(7, 0, s, offsets[s][1] + 1))


def test_a_duplicate_older_than_the_window_is_out_of_order() -> None:
    leader = Leader(ProducerStateTable())
    for seq in range(DUPLICATE_WINDOW + 1):
        leader.produce(hdr(7, 0, seq))
    assert leader.table.check(hdr(7, 0, 1)) == 1  # still in the window
    with pytest.raises(OutOfOrderSequenceError) as exc:
        leader.table.check(hdr(7, 0, 0))  # the oldest, fallen out of the window
    assert "expected sequence 6, got 0" in exc.value.message


def test_a_gap_is_out_of_order_and_the_message_names_producer_expected_and_got() -> None:
    t = ProducerStateTable("events-3")
    Leader(t).produce(hdr(42, 2, 10, count=5))  # sequences 10..14
    with pytest.raises(OutOfOrderSequenceError) as exc:
        t.check(hdr(42, 2, 16))
    msg = exc.value.message
    assert msg.startswith("events-3: producer 42 epoch 2")
    assert "expected sequence 15, got 16" in msg
    assert exc.value.code == "OUT_OF_ORDER_SEQUENCE_NUMBER" and not exc.value.retriable
    with pytest.raises(OutOfOrderSequenceError):
        t.check(hdr(42, 2, 12))  # overlaps the last batch without being it


def test_epoch_bump_restarts_at_zero_and_fences_the_old_epoch() -> None:
    leader = Leader(ProducerStateTable())
    leader.produce(hdr(7, 0, 0, count=4))
    with pytest.raises(OutOfOrderSequenceError) as exc:
        leader.table.check(hdr(7, 1, 4))  # a new epoch must start at sequence 0
    assert "new epoch 1 (was 0) must start at sequence 0, got 4" in exc.value.message
    assert leader.produce(hdr(7, 1, 0, count=2)) == (4, True)
    entry = leader.table.get(7)
    assert entry is not None and entry.epoch == 1 and len(entry.batches) == 1
    with pytest.raises(InvalidProducerEpochError) as exc2:
        leader.table.check(hdr(7, 0, 4))  # the zombie of epoch 0 goes on
    assert "epoch 0 is older than its current epoch 1" in exc2.value.message
    with pytest.raises(InvalidProducerEpochError):
        leader.table.check(hdr(7, 0, 0, count=4))  # even a retry of its own old batch
    assert leader.produce(hdr(7, 1, 2)) == (6, True)


def test_sequences_wrap_around() -> None:
    leader = Leader(ProducerStateTable())
    leader.produce(hdr(7, 0, MAX_SEQ - 2, count=3))  # ends exactly at 2**31-1
    with pytest.raises(OutOfOrderSequenceError) as exc:
        leader.table.check(hdr(7, 0, 1))
    assert "expected sequence 0, got 1" in exc.value.message
    assert leader.produce(hdr(7, 0, 0, count=2)) == (3, True)
    assert leader.table.check(hdr(7, 0, MAX_SEQ - 2, count=3)) == 0  # a retry from before the wrap
    # a batch that straddles the wrap: MAX_SEQ-1, MAX_SEQ, 0, 1
    leader2 = Leader(ProducerStateTable())
    leader2.produce(hdr(9, 0, MAX_SEQ - 1, count=4))
    entry = leader2.table.get(9)
    assert entry is not None and entry.last_sequence == 1
    assert leader2.table.check(hdr(9, 0, MAX_SEQ - 1, count=4)) == 0  # its retry
    assert leader2.produce(hdr(9, 0, 2)) == (4, True)


def test_invalid_producer_fields_are_refused() -> None:
    t = ProducerStateTable()
    with pytest.raises(OutOfOrderSequenceError):
        t.check(hdr(7, 0, -1))
    with pytest.raises(InvalidProducerEpochError):
        t.check(hdr(7, -1, 0))


def test_batches_without_a_producer_id_are_not_tracked() -> None:
    t = ProducerStateTable()
    h = hdr(-1, -1, -1, count=3)
    assert t.check(h) is None
    t.update(h, 0)
    assert t.check(h) is None  # the same batch again is simply new
    assert t.producer_count == 0


def test_follower_updates_let_a_new_leader_recognise_retries() -> None:
    follower = ProducerStateTable()
    for base, seq in ((0, 0), (2, 2), (4, 4)):
        h = hdr(7, 0, seq, count=2)._replace(base_offset=base)
        follower.update(h, h.base_offset)
    assert follower.check(hdr(7, 0, 2, count=2)) == 2
    assert follower.check(hdr(7, 0, 6)) is None


def test_update_with_another_epoch_starts_afresh() -> None:
    t = ProducerStateTable()
    t.update(hdr(7, 3, 10), 0)
    t.update(hdr(7, 2, 0), 1)  # the log is the truth, even for an older epoch
    entry = t.get(7)
    assert entry is not None and entry.epoch == 2 and entry.last_sequence == 0


def test_evict_below_forgets_producers_whose_last_batch_is_gone() -> None:
    leader = Leader(ProducerStateTable())
    leader.produce(hdr(1, 0, 0, count=5))  # offsets 0..4
    leader.produce(hdr(2, 0, 0, count=5))  # 5..9
    leader.produce(hdr(1, 0, 5))  # 10
    assert leader.table.producer_count == 2
    assert leader.table.evict_below(10) == 1
    assert leader.table.get(2) is None and leader.table.get(1) is not None
    assert leader.table.evict_below(10) == 0
    assert leader.table.evict_below(11) == 1
    assert leader.table.producer_count == 0


def test_check_all_simulates_the_request_in_order_without_changing_anything() -> None:
    leader = Leader(ProducerStateTable())
    leader.produce(hdr(7, 0, 0, count=2))
    leader.produce(hdr(7, 0, 2, count=2))
    before = leader.table.entries()
    # a retry of both batches plus a new one, and a non-idempotent batch
    req = [hdr(7, 0, 0, count=2), hdr(7, 0, 2, count=2), hdr(7, 0, 4), hdr(-1, -1, -1), hdr(9, 0, 100)]
    assert leader.table.check_all(req) == [0, 2, None, None, None]
    assert leader.table.check_all([hdr(7, 0, 4), hdr(7, 0, 5, count=3)]) == [None, None]
    with pytest.raises(OutOfOrderSequenceError):
        leader.table.check_all([hdr(7, 0, 4), hdr(7, 0, 6)])  # the second leaves a gap
    with pytest.raises(OutOfOrderSequenceError):
        leader.table.check_all([hdr(7, 0, 4), hdr(7, 0, 4)])  # the same new batch twice
    assert leader.table.check_all([hdr(-1, -1, -1)] * 3) == [None] * 3
    assert leader.table.entries() == before


# --------------------------------------------------------------------------- rebuild


def probes(pids: list[int]) -> list[BatchHeader]:
    out = []
    for pid in pids:
        for epoch in (0, 1, 2):
            for seq in range(0, 12):
                for count in (1, 2, 3):
                    out.append(hdr(pid, epoch, seq, count))
    return out


def answers(t: ProducerStateTable, hs: list[BatchHeader]) -> list[object]:
    out: list[object] = []
    for h in hs:
        try:
            out.append(t.check(h))
        except (OutOfOrderSequenceError, InvalidProducerEpochError) as exc:
            out.append(exc.code)
    return out


def test_rebuild_from_a_real_log_answers_like_the_live_table(open_log: Any) -> None:
    lg = open_log(segment_bytes=300)  # several segments
    live = ProducerStateTable()
    leader = Leader(live, lg)
    script = [
        (1, 0, 0, 2),
        (2, 0, 0, 1),
        (-1, -1, -1, 3),
        (1, 0, 2, 1),
        (1, 0, 2, 1),  # a retry
        (2, 0, 1, 4),
        (1, 0, 3, 2),
        (3, 0, 5, 1),
        (1, 1, 0, 1),  # epoch bump
        (2, 0, 5, 1),
        (1, 1, 1, 2),
        (2, 0, 6, 1),
        (2, 0, 7, 1),
        (2, 0, 8, 1),
    ]
    for pid, epoch, seq, count in script:
        buf = batch(pid, epoch, seq, count)
        leader.produce(read_header(buf), buf)
    assert len(lg.segments) > 2
    rebuilt = ProducerStateTable.rebuild(lg)
    assert rebuilt.name == "events-0"
    assert rebuilt.entries() == live.entries()
    assert rebuilt.producer_count == 3
    hs = probes([1, 2, 3, 4])
    assert answers(rebuilt, hs) == answers(live, hs)

    # after a reopen, clean and after a crash (descriptors dropped without close())
    lg.close()
    lg2 = open_log(segment_bytes=300)
    assert ProducerStateTable.rebuild(lg2).entries() == live.entries()
    for seg in lg2.segments:
        seg.close()
    lg2.segments = []
    lg3 = open_log(segment_bytes=300)
    assert ProducerStateTable.rebuild(lg3).entries() == live.entries()


def test_rebuild_after_truncation_forgets_the_truncated_batches(open_log: Any) -> None:
    lg = open_log()
    live = ProducerStateTable()
    leader = Leader(live, lg)
    for seq in range(4):
        buf = batch(1, 0, seq)
        leader.produce(read_header(buf), buf)
    lg.truncate_to(2)
    t = ProducerStateTable.rebuild(lg)
    entry = t.get(1)
    assert entry is not None and entry.last_sequence == 1
    assert t.check(hdr(1, 0, 2)) is None  # the truncated batch can be written again
    assert t.check(hdr(1, 0, 1)) == 1
    lg.truncate_fully_and_start_at(10)
    assert ProducerStateTable.rebuild(lg).producer_count == 0


def test_rebuild_after_retention_matches_evict_below(open_log: Any) -> None:
    lg = open_log(segment_bytes=300, retention_bytes=400)
    live = ProducerStateTable()
    leader = Leader(live, lg)
    for pid in range(1, 8):
        buf = batch(pid, 0, 0, count=2, tag="x" * 20)
        leader.produce(read_header(buf), buf)
    assert lg.apply_retention() > 0
    live.evict_below(lg.log_start_offset)
    rebuilt = ProducerStateTable.rebuild(lg)
    assert set(rebuilt.entries()) == set(live.entries())
    assert 0 < rebuilt.producer_count < 7


# --------------------------------------------------------------------------- properties


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """Interleaved streams of a few producers: (producer, batch index, count), where a
    batch may be sent again (a retry) right after any later batch, within the window."""
    n_producers = draw(st.integers(1, 3))
    counts = [draw(st.lists(st.integers(1, 4), min_size=1, max_size=12)) for _ in range(n_producers)]
    sent = [0] * n_producers
    out: list[tuple[int, int, int]] = []
    while any(s < len(c) for s, c in zip(sent, counts, strict=True)):
        p = draw(st.sampled_from([i for i in range(n_producers) if sent[i] < len(counts[i])]))
        i = sent[p]
        out.append((p, i, counts[p][i]))
        sent[p] += 1
        for _ in range(draw(st.integers(0, 2))):
            j = draw(st.integers(max(0, i - DUPLICATE_WINDOW + 1), i))
            out.append((p, j, counts[p][j]))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules(), st.sampled_from([0, 1000, MAX_SEQ - 5]))
def test_retries_within_the_window_write_every_batch_exactly_once(
    schedule: list[tuple[int, int, int]], start: int
) -> None:
    leader = Leader(ProducerStateTable())
    first_seq: dict[tuple[int, int], int] = {}
    next_seq: dict[int, int] = {}
    written: dict[tuple[int, int], int] = {}
    appended: list[tuple[int, int]] = []
    for p, i, count in schedule:
        if (p, i) not in first_seq:
            first_seq[(p, i)] = next_seq.get(p, start)
            next_seq[p] = add_sequence(first_seq[(p, i)], count)
        base, new = leader.produce(hdr(100 + p, 0, first_seq[(p, i)], count))
        if new:
            assert (p, i) not in written
            written[(p, i)] = base
            appended.append((p, i))
        else:
            assert written[(p, i)] == base  # a retry gets the original offset
    # each producer's batches were written once each, in order
    for p in {p for p, _, _ in schedule}:
        mine = [i for q, i in appended if q == p]
        assert mine == sorted(mine) == list(range(len(mine)))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(["next", "retry", "gap", "bump", "old", "plain"])),
        max_size=25,
    )
)
def test_rebuild_always_equals_the_live_table(tmp_path_factory: Any, ops: list[tuple[int, str]]) -> None:
    # the clock stays at the batches' time: nothing expires (expiry has its own tests below)
    lg = Log.open(str(tmp_path_factory.mktemp("p") / "t-0"), LogConfig(segment_bytes=500), clock=lambda: T0_MS / 1000)
    try:
        live = ProducerStateTable()
        leader = Leader(live, lg)
        epoch = [0, 0, 0]
        nxt = [0, 0, 0]
        last: list[tuple[int, int] | None] = [None, None, None]
        for p, op in ops:
            pid = 10 + p
            if op == "plain":
                seq, ep, count, pid = -1, -1, 2, -1
            elif op == "retry" and last[p] is not None:
                prev = last[p]
                assert prev is not None
                ep, (seq, count) = epoch[p], prev
            elif op == "gap":
                seq, ep, count = nxt[p] + 3, epoch[p], 1
            elif op == "bump":
                epoch[p] += 1
                nxt[p] = 0
                seq, ep, count = 0, epoch[p], 1
            elif op == "old":
                seq, ep, count = nxt[p], epoch[p] - 1, 1
            else:
                seq, ep, count = nxt[p], epoch[p], 1 + len(ops) % 3
            buf = batch(pid, ep, seq, count)
            try:
                _, new = leader.produce(read_header(buf), buf)
            except (OutOfOrderSequenceError, InvalidProducerEpochError):
                continue
            if new and pid >= 0:
                nxt[p] = add_sequence(seq, count)
                last[p] = (seq, count)
        assert ProducerStateTable.rebuild(lg).entries() == live.entries()
    finally:
        lg.close()


# --------------------------------------------------------------------------- compaction


def keyed(pid: int, seq: int, keys: list[bytes]) -> bytes:
    return encode_batch(
        [b"v-" + k for k in keys], list(keys), timestamp=T0_MS, producer_id=pid, producer_epoch=0, base_sequence=seq
    )


def test_compaction_keeps_every_producers_sequence_state(open_log: Any) -> None:
    """After compaction a rebuilt table (a restart) expects of each producer the same next
    sequence as the live one: a batch that loses its first records keeps its last
    sequence, and a producer's newest batch is never removed whole (its last record
    stays). An older batch whose records are all superseded still goes."""
    lg = open_log()
    live = ProducerStateTable()
    leader = Leader(live, lg)
    script = [
        (1, 0, [b"a", b"b", b"c"]),  # offsets 0-2: producer 1's newest batch loses a and b
        (2, 0, [b"a", b"b"]),  # 3-4
        (3, 7, [b"d"]),  # 5: producer 3's newest batch, all superseded by 6
        (2, 2, [b"d"]),  # 6
        (2, 3, [b"e"]),  # 7: superseded by 8, not producer 2's newest: removed whole
        (2, 4, [b"e"]),  # 8
    ]
    for pid, seq, keys in script:
        buf = keyed(pid, seq, keys)
        leader.produce(read_header(buf), buf)
    lg.roll()  # compaction reads sealed segments only
    before = live.entries()
    removed = cleaner.compact(lg)
    assert removed == 3  # a and b at 0-1, e at 7
    kept = [o for b in decode_batches(lg.read(0, 1 << 20)) for o in b.offsets]
    assert kept == [2, 3, 4, 5, 6, 8]
    rebuilt = ProducerStateTable.rebuild(lg)
    assert {pid: (e.last_sequence, e.last_offset) for pid, e in rebuilt.entries().items()} == {
        pid: (e.last_sequence, e.last_offset) for pid, e in before.items()
    }
    for pid, next_seq in ((1, 3), (2, 5), (3, 8)):
        assert rebuilt.check(hdr(pid, 0, next_seq)) is None  # accepted, not OUT_OF_ORDER


# --------------------------------------------------------------------------- expiry of idle producer ids

EXPIRATION_MS = 60_000


def hdr_at(pid: int, epoch: int, seq: int, ts: int, count: int = 1) -> BatchHeader:
    """``hdr`` whose records carry timestamp ``ts`` (what expiry reads)."""
    return hdr(pid, epoch, seq, count)._replace(first_timestamp=ts, max_timestamp=ts)


def batch_at(pid: int, epoch: int, seq: int, ts: int) -> bytes:
    return encode_batch(
        [f"{pid}-{seq}".encode()], timestamp=ts, producer_id=pid, producer_epoch=epoch, base_sequence=seq
    )


class WallClock:
    """The log's wall clock (seconds), moved by the test."""

    def __init__(self, ms: int = T0_MS) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


@pytest.fixture
def timed_log(tmp_path: Any) -> Iterator[Any]:
    """``open(clock)``: the partition's log with ``producer.id.expiration.ms`` = 60 s,
    reading time from ``clock``; reopening the same directory is a restart."""
    opened: list[Log] = []

    def _open(clock: WallClock) -> Log:
        config = LogConfig.from_options({"producer.id.expiration.ms": EXPIRATION_MS})
        lg = Log.open(str(tmp_path / "events-0"), config, clock=clock)
        opened.append(lg)
        return lg

    yield _open
    for lg in opened:
        for seg in lg.segments:
            seg.close()
        lg.segments = []


def test_expire_drops_producers_whose_newest_batch_is_older_than_the_expiration() -> None:
    t = ProducerStateTable("events-0")
    t.update(hdr_at(1, 0, 0, T0_MS), 0)
    t.update(hdr_at(2, 0, 0, T0_MS), 1)
    t.update(hdr_at(2, 0, 1, T0_MS + 30_000), 2)  # producer 2 wrote again 30 s later
    assert t.expire(T0_MS + EXPIRATION_MS, EXPIRATION_MS) == 0  # exactly the expiration: not yet
    assert t.expire(T0_MS + EXPIRATION_MS + 1, EXPIRATION_MS) == 1
    assert t.get(1) is None
    kept = t.get(2)
    assert kept is not None and kept.last_sequence == 1 and kept.last_timestamp == T0_MS + 30_000
    assert t.expire(T0_MS + 30_000 + EXPIRATION_MS, EXPIRATION_MS) == 0
    assert t.expire(T0_MS + 30_000 + EXPIRATION_MS + 1, EXPIRATION_MS) == 1
    assert t.producer_count == 0
    assert t.expire(T0_MS + 10 * EXPIRATION_MS, EXPIRATION_MS) == 0  # an empty table


def test_an_active_producer_is_kept_however_long_it_has_existed() -> None:
    t = ProducerStateTable()
    leader = Leader(t)
    for seq in range(20):  # one batch every 30 s for 10 minutes
        now = T0_MS + seq * 30_000
        leader.produce(hdr_at(5, 0, seq, now))
        assert t.expire(now + 1, EXPIRATION_MS) == 0
    entry = t.get(5)
    assert entry is not None and entry.last_sequence == 19
    assert t.check(hdr_at(5, 0, 18, 0)) is not None  # its retries are still recognised


def test_a_batch_from_an_expired_producer_is_accepted_as_a_new_producers() -> None:
    t = ProducerStateTable()
    leader = Leader(t)
    for seq in range(3):
        leader.produce(hdr_at(7, 3, seq, T0_MS))
    later = T0_MS + EXPIRATION_MS + 1
    with pytest.raises(OutOfOrderSequenceError):
        t.check(hdr_at(7, 3, 10, later))  # before the expiry: a gap
    with pytest.raises(InvalidProducerEpochError):
        t.check(hdr_at(7, 2, 0, later))  # and an older epoch is fenced
    assert t.expire(later, EXPIRATION_MS) == 1
    # after it: a retry of a batch written before the expiry is written again, as in Kafka
    base, appended = leader.produce(hdr_at(7, 3, 2, later))
    assert appended and base == 3
    entry = t.get(7)
    assert entry is not None and entry.last_sequence == 2 and len(entry.batches) == 1
    assert leader.produce(hdr_at(7, 3, 3, later)) == (4, True)  # and the table goes on from there
    assert leader.produce(hdr_at(7, 3, 3, later)) == (4, False)
    # any first sequence and any epoch start a new entry, exactly as for an unknown id
    t.expire(later + EXPIRATION_MS + 1, EXPIRATION_MS)
    assert t.check(hdr_at(7, 1, 500, later)) is None
    assert t.check_all([hdr_at(7, 1, 500, later), hdr_at(7, 1, 501, later)]) == [None, None]


def test_a_follower_that_has_not_expired_the_producer_yet_follows_the_leader() -> None:
    """The leader took sequence 0 again as a new producer's (it had expired the id); a
    follower whose tick has not come yet starts the entry afresh too, so that after a
    failover the producer's next batch is new, not a "duplicate" of an old one."""
    follower = ProducerStateTable()
    for seq in range(3):
        follower.update(hdr_at(7, 0, seq, T0_MS), seq)
    follower.update(hdr_at(7, 0, 0, T0_MS + EXPIRATION_MS + 1), 3)
    entry = follower.get(7)
    assert entry is not None and [b.base_offset for b in entry.batches] == [3]
    assert follower.check(hdr_at(7, 0, 1, T0_MS + EXPIRATION_MS + 1)) is None
    assert follower.check(hdr_at(7, 0, 0, T0_MS + EXPIRATION_MS + 1)) == 3


def test_the_tick_hook_uses_the_topics_option_and_the_logs_clock(timed_log: Any, tmp_path: Any) -> None:
    from appliance.partition.replica import Replica  # the worker's tick calls replica.expire_producers()

    clock = WallClock()
    lg = timed_log(clock)
    replica = Replica("events", 0, 1, lg, clock=lambda: 0.0)
    leader = Leader(replica.producers, lg)
    for pid, seq, ts in [(1, 0, T0_MS), (2, 0, T0_MS), (2, 1, T0_MS + 30_000)]:
        buf = batch_at(pid, 0, seq, ts)
        leader.produce(read_header(buf), buf)
    clock.ms = T0_MS + EXPIRATION_MS
    assert replica.expire_producers() == 0
    clock.ms += 1  # producer 1 idle longer than the expiration: dropped at this tick
    assert replica.expire_producers() == 1
    assert set(replica.producers.entries()) == {2}
    # a new value of the option (alter_topic) applies at the next tick
    lg.config = lg.config.with_options({"producer.id.expiration.ms": 1000})
    assert replica.expire_producers() == 1
    assert replica.producers.producer_count == 0


def test_a_rebuild_after_a_restart_does_not_bring_an_expired_producer_back(timed_log: Any) -> None:
    clock = WallClock()
    lg = timed_log(clock)
    live = ProducerStateTable("events-0")
    leader = Leader(live, lg)
    for pid, seq, ts in [(1, 0, T0_MS), (1, 1, T0_MS), (2, 0, T0_MS + 30_000)]:
        buf = batch_at(pid, 0, seq, ts)
        leader.produce(read_header(buf), buf)
    clock.ms = T0_MS + EXPIRATION_MS + 1
    assert live.expire(clock.ms, EXPIRATION_MS) == 1

    # restart at the same time: the replay finds producer 1's batches, the rule drops it
    lg.close()
    lg2 = timed_log(clock)
    rebuilt = ProducerStateTable.rebuild(lg2)
    assert rebuilt.entries() == live.entries() and set(rebuilt.entries()) == {2}
    # and later the other one too, as the live table would
    assert set(ProducerStateTable.rebuild(lg2, now_ms=T0_MS + 30_000 + EXPIRATION_MS + 1).entries()) == set()
    # a restart before the expiration keeps it (the rule reads record time, not uptime)
    assert set(ProducerStateTable.rebuild(lg2, now_ms=T0_MS + EXPIRATION_MS).entries()) == {1, 2}

    # the expired producer writes again (accepted as new), then a crash and a rebuild:
    # the table expects of it what the live one does
    leader = Leader(rebuilt, lg2)
    buf = batch_at(1, 0, 0, clock.ms)
    assert leader.produce(read_header(buf), buf) == (3, True)
    for seg in lg2.segments:  # a crash: descriptors dropped without close()
        seg.close()
    lg2.segments = []
    lg3 = timed_log(clock)
    again = ProducerStateTable.rebuild(lg3)
    assert set(again.entries()) == {1, 2}
    hs = [hdr_at(1, 0, 1, clock.ms), hdr_at(1, 0, 0, clock.ms), hdr_at(1, 0, 2, clock.ms)]
    assert answers(again, hs) == answers(rebuilt, hs)


def test_the_option_is_validated_with_a_clear_message() -> None:
    assert LogConfig().producer_id_expiration_ms == 86_400_000
    assert LogConfig().to_options()["producer.id.expiration.ms"] == 86_400_000
    assert LogConfig.from_options({"producer.id.expiration.ms": "1000"}).producer_id_expiration_ms == 1000
    cases = {
        999: "producer.id.expiration.ms=999: must be >= 1000",
        -1: "producer.id.expiration.ms=-1: must be >= 1000",
        2**63: f"producer.id.expiration.ms={2**63}: must be <= {2**63 - 1}",
        "1d": "producer.id.expiration.ms='1d': expected int",
    }
    for raw, message in cases.items():
        with pytest.raises(InvalidConfigError) as info:
            LogConfig.from_options({"producer.id.expiration.ms": raw})
        assert info.value.message == message
