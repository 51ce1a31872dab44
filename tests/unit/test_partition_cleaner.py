"""The partition worker's compaction schedule (``LogCleaner`` in appliance/log/cleaner.py),
driven by explicit ticks: when a run starts (interval, a newly sealed segment), the plan
built in the helper thread and applied on the next tick, a failed run, a new interval.

The helper thread is real; a test waits for it with ``join`` (no sleeps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.log import cleaner
from appliance.log.cleaner import LogCleaner
from appliance.log.config import CleanupPolicy, LogConfig
from appliance.log.log import Log
from appliance.log.producers import ProducerStateTable
from ipc.records import decode_batches, encode_batch

T0_MS = 1_700_000_000_000
NOW = 50.0  # the owner's monotonic clock
INTERVAL_MS = 15_000


def compacted_log(tmp_path: Path) -> Log:
    """Key k written three times (one sealed segment per write) and an active segment."""
    lg = Log.open(str(tmp_path / "t-0"), LogConfig(cleanup_policy=CleanupPolicy.COMPACT))
    for i in range(3):
        lg.append(encode_batch([b"v%d" % i], [b"k"], timestamp=T0_MS + i), 1)
        lg.roll()
    lg.append(encode_batch([b"active"], [b"k"], timestamp=T0_MS + 3), 1)
    return lg


def values(lg: Log) -> list[bytes | None]:
    """Every value in the log (a read stops at a segment's end: read on from there)."""
    out: list[bytes | None] = []
    offset = lg.log_start_offset
    while offset < lg.log_end_offset:
        batches = list(decode_batches(lg.read(offset)))
        out += [v for b in batches for v in b.values]
        offset = batches[-1].header.next_offset
    return out


def run_once(c: LogCleaner, lg: Log, now: float) -> None:
    """One run: the tick that starts it, the thread, the tick that applies it."""
    c.tick(lg, ProducerStateTable.rebuild(lg), now)
    assert c.running
    c.join(timeout=30)
    c.tick(lg, ProducerStateTable.rebuild(lg), now)
    assert not c.running


@pytest.fixture
def lg(tmp_path: Path) -> Log:
    return compacted_log(tmp_path)


def test_nothing_runs_before_the_interval(lg: Log) -> None:
    c = LogCleaner("t-0", INTERVAL_MS, NOW, wall_clock=lambda: T0_MS / 1000)
    c.tick(lg, ProducerStateTable.rebuild(lg), NOW + 14.9)
    assert not c.running and values(lg) == [b"v0", b"v1", b"v2", b"active"]


def test_a_run_builds_in_a_thread_and_applies_on_the_next_tick(lg: Log) -> None:
    c = LogCleaner("t-0", INTERVAL_MS, NOW, wall_clock=lambda: T0_MS / 1000)
    c.tick(lg, ProducerStateTable.rebuild(lg), NOW + 15)
    assert c.running
    c.join(timeout=30)
    assert values(lg) == [b"v0", b"v1", b"v2", b"active"]  # built, not applied yet
    c.tick(lg, ProducerStateTable.rebuild(lg), NOW + 15.1)
    assert not c.running
    assert values(lg) == [b"v2", b"active"]  # the active segment is never compacted
    assert c.cleaned_upto == 3 and c.next_run == NOW + 30


def test_no_new_sealed_segment_no_new_run(lg: Log) -> None:
    c = LogCleaner("t-0", INTERVAL_MS, NOW)
    run_once(c, lg, NOW + 15)
    c.tick(lg, ProducerStateTable.rebuild(lg), NOW + 60)
    assert not c.running  # nothing sealed since
    lg.roll()
    lg.append(encode_batch([b"newer"], [b"k"], timestamp=T0_MS + 4), 1)
    c.tick(lg, ProducerStateTable.rebuild(lg), NOW + 60)
    assert c.running
    c.join(timeout=30)


def test_a_failed_run_is_logged_and_changes_nothing(lg: Log, monkeypatch: Any, caplog: Any) -> None:
    def broken(*args: Any) -> Any:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(cleaner, "build_plan", broken)
    c = LogCleaner("t-0", INTERVAL_MS, NOW)
    run_once(c, lg, NOW + 15)
    assert values(lg) == [b"v0", b"v1", b"v2", b"active"] and c.cleaned_upto == -1
    assert "t-0: compaction failed" in caplog.text


def test_a_shorter_interval_applies_from_now(lg: Log) -> None:
    c = LogCleaner("t-0", INTERVAL_MS, NOW)
    c.set_interval(1_000, NOW + 2)
    assert c.next_run == NOW + 3
    c.set_interval(60_000, NOW + 2)  # a longer one waits for the current one to run out
    assert c.next_run == NOW + 3 and c.interval_ms == 60_000
