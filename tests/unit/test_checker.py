"""The queue checker (tests/cluster/checker.py): each kind of anomaly fires, a clean history passes."""

from __future__ import annotations

from tests.cluster.checker import Record, check


def history(n: int = 9, partitions: int = 3) -> list[Record]:
    """n writes spread round-robin, each at the next offset of its partition."""
    next_offset = [0] * partitions
    out = []
    for i in range(n):
        p = i % partitions
        out.append((p, next_offset[p], f"w-{i}".encode()))
        next_offset[p] += 1
    return out


def test_clean_history_passes() -> None:
    h = history()
    r = check(h, h)
    assert r.ok, r.details()
    assert (r.acknowledged, r.read, r.lost, r.duplicated, r.inconsistent, r.gaps) == (9, 9, 0, 0, 0, 0)
    assert r.line() == "acknowledged=9 read=9 lost=0 duplicated=0 inconsistent=0 gaps=0"


def test_unacknowledged_writes_may_be_read_and_the_same_record_read_twice_is_not_a_duplicate() -> None:
    h = history()
    acked = h[:5]  # the other four failed or timed out: in the log or not, both are fine
    r = check(acked, h + h[:2])
    assert r.ok, r.details()
    assert (r.acknowledged, r.read) == (5, 9)
    r = check(acked, h[:5] + [h[5]])  # a failed write at the end that never made it: fine
    assert r.ok, r.details()


def test_lost_fires_for_an_acknowledged_value_read_nowhere() -> None:
    h = history()
    r = check(h, [x for x in h if x != (2, 2, b"w-8")])  # the last record of partition 2 is missing
    assert not r.ok
    assert (r.lost, r.duplicated, r.inconsistent, r.gaps) == (1, 0, 0, 0)
    assert "b'w-8'" in r.details()


def test_lost_and_gap_when_a_middle_record_is_missing() -> None:
    h = history()
    r = check(h, [x for x in h if x != (1, 1, b"w-4")])
    assert (r.lost, r.gaps, r.inconsistent, r.duplicated) == (1, 1, 0, 0)


def test_duplicated_fires_for_a_value_read_at_two_offsets() -> None:
    h = history()
    read = [*h, (0, 3, b"w-0")]  # w-0 written again after a retry
    r = check(h, read)
    assert (r.duplicated, r.lost, r.inconsistent, r.gaps) == (1, 0, 0, 0)
    assert not r.ok
    r = check(h, [*h, (1, 3, b"w-0")])  # also across partitions
    assert r.duplicated == 1


def test_inconsistent_fires_for_an_acknowledged_offset_holding_another_value() -> None:
    h = history()
    # a new leader truncated 0:2 (w-6) and wrote an unacknowledged w-99 there
    read = [x for x in h if x[:2] != (0, 2)] + [(0, 2, b"w-99")]
    r = check(h, read)
    assert (r.lost, r.inconsistent, r.duplicated, r.gaps) == (1, 1, 0, 0)


def test_inconsistent_fires_when_an_acknowledged_value_is_read_at_another_offset() -> None:
    h = history()
    acked = [*h[:-1], (2, 7, b"w-8")]  # the acknowledgement named offset 7, the log has it at 2
    r = check(acked, h)
    assert (r.inconsistent, r.lost, r.duplicated, r.gaps) == (1, 0, 0, 0)


def test_inconsistent_fires_for_one_offset_read_with_two_values() -> None:
    h = history()
    r = check(h, [*h, (1, 0, b"w-42")])  # two reads disagree about 1:0
    assert r.inconsistent == 1
    assert r.lost == 0 and r.gaps == 0


def test_inconsistent_fires_for_one_offset_acknowledged_for_two_values() -> None:
    h = history()
    r = check([*h, (0, 0, b"w-77")], h)  # w-77 acknowledged at 0:0 too, and lost
    assert r.inconsistent == 2  # 0:0 read as w-0, not w-77; 0:0 acknowledged twice
    assert r.lost == 1


def test_gaps_count_each_jump_and_a_missing_head() -> None:
    read = [(0, 0, b"a"), (0, 1, b"b"), (0, 5, b"c"), (0, 9, b"d"), (1, 2, b"e"), (1, 3, b"f")]
    r = check([], read)
    assert r.gaps == 3  # 0: 2..4 and 6..8; 1: 0..1 (reading starts at the log start, 0)
    assert (r.lost, r.duplicated, r.inconsistent) == (0, 0, 0)
    assert check([], read, log_start={1: 2}).gaps == 2
    assert check([], [(0, 7, b"x"), (0, 8, b"y")], log_start=7).ok


def test_invented_only_when_the_sent_values_are_given() -> None:
    h = history(3)
    read = [*h, (0, 1, b"ghost")]
    assert check(h, read).ok
    r = check(h, read, sent=[v for _, _, v in h])
    assert r.invented == 1 and not r.ok
    assert r.line().endswith(" invented=1")


def test_empty_histories() -> None:
    r = check([], [])
    assert r.ok
    assert r.line() == "acknowledged=0 read=0 lost=0 duplicated=0 inconsistent=0 gaps=0"
