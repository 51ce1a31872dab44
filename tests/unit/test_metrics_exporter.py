"""NodeCollector on made-up snapshots and status slots: no process, no socket."""

from __future__ import annotations

import os
import time

import psutil

from ipc.shm import WorkerStatus
from metrics.exporter import GroupSnap, NodeCollector, NodeSnapshot, ReplicaSnap, health

ME = os.getpid()  # a live pid, for the /proc series


class FakeTable:
    def __init__(self) -> None:
        self.slots: dict[int, WorkerStatus] = {}

    def read_status_or_none(self, slot: int) -> WorkerStatus | None:
        return self.slots.get(slot, WorkerStatus())


def values(collector: NodeCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in collector.collect() for s in fam.samples}


def replica(counters: tuple[int, int, int, int] = (0, 0, 0, 0), state: str = "serving", pid: int = ME) -> ReplicaSnap:
    return ReplicaSnap("t", 0, 0, state, pid, 0, counters)


TP = (("partition", "0"), ("topic", "t"))


def test_counter_never_steps_back_while_a_worker_restarts() -> None:
    table = FakeTable()
    snap = NodeSnapshot(0, True, (replica(),), taken_at=time.monotonic())
    c = NodeCollector(lambda: snap, table)  # type: ignore[arg-type]
    table.slots[0] = WorkerStatus(pid=ME, records_in=500, bytes_in=5000, high_watermark=500, log_end_offset=500)
    assert values(c)[("sluice_records_in_total", TP)] == 500
    # the worker died and was reaped: the slot is empty, the snapshot still predates the reap
    table.slots[0] = WorkerStatus()
    got = values(c)
    assert got[("sluice_records_in_total", TP)] == 500
    assert got[("sluice_bytes_in_total", TP)] == 5000
    assert ("sluice_high_watermark", TP) not in got  # no worker: no live offsets
    assert not [k for k in got if k[0] == "sluice_worker_resident_memory_bytes"]
    # the next worker continues from the saved counters
    snap = NodeSnapshot(0, True, (replica((500, 5000, 0, 0)),), taken_at=time.monotonic())
    table.slots[0] = WorkerStatus(pid=ME, records_in=520, bytes_in=5200, high_watermark=520, log_end_offset=520)
    assert values(c)[("sluice_records_in_total", TP)] == 520


def test_a_deleted_partition_forgets_its_counters() -> None:
    table = FakeTable()
    snap = NodeSnapshot(0, True, (replica(),), taken_at=time.monotonic())
    c = NodeCollector(lambda: snap, table)  # type: ignore[arg-type]
    table.slots[0] = WorkerStatus(pid=ME, records_in=500)
    assert values(c)[("sluice_records_in_total", TP)] == 500
    snap = NodeSnapshot(0, True, (), taken_at=time.monotonic())
    values(c)
    snap = NodeSnapshot(0, True, (replica(),), taken_at=time.monotonic())  # created again
    table.slots[0] = WorkerStatus(pid=ME, records_in=3)
    assert values(c)[("sluice_records_in_total", TP)] == 3


def test_process_series_follow_the_pid_in_the_slot() -> None:
    table = FakeTable()
    snap = NodeSnapshot(0, True, (replica(pid=12345678),), taken_at=time.monotonic())  # a stale snapshot pid
    c = NodeCollector(lambda: snap, table)  # type: ignore[arg-type]
    table.slots[0] = WorkerStatus(pid=ME)
    got = values(c)
    assert got[("sluice_worker_start_time_seconds", TP)] == psutil.Process(ME).create_time()
    assert got[("sluice_worker_resident_memory_bytes", TP)] > 0  # no pid label (docs/security.md)


def test_lag_and_lag_seconds() -> None:
    table = FakeTable()
    table.slots[0] = WorkerStatus(pid=ME, high_watermark=100, log_end_offset=100)
    now_ms = int(time.time() * 1000)
    group = GroupSnap("g", "stable", 1, 2, {("t", 0): 40}, {("t", 0): (40, now_ms - 30_000)})
    snap = NodeSnapshot(0, True, (replica(),), (group,), taken_at=time.monotonic())
    c = NodeCollector(lambda: snap, table)  # type: ignore[arg-type]
    got = values(c)
    g = (("group", "g"), *TP)
    assert got[("sluice_consumer_group_lag", g)] == 60
    assert got[("sluice_consumer_group_total_lag", (("group", "g"),))] == 60
    assert 29 < got[("sluice_consumer_group_lag_seconds", g)] < 40
    # committed moved on, the probe has not caught up: the older record's age, not 0
    group = GroupSnap("g", "stable", 1, 2, {("t", 0): 70}, {("t", 0): (40, now_ms - 30_000)})
    snap = NodeSnapshot(0, True, (replica(),), (group,), taken_at=time.monotonic())
    got = values(c)
    assert got[("sluice_consumer_group_lag", g)] == 30
    assert got[("sluice_consumer_group_lag_seconds", g)] > 29
    # caught up: 0 in records and in seconds
    group = GroupSnap("g", "stable", 1, 2, {("t", 0): 100}, {("t", 0): (40, now_ms - 30_000)})
    snap = NodeSnapshot(0, True, (replica(),), (group,), taken_at=time.monotonic())
    got = values(c)
    assert got[("sluice_consumer_group_lag", g)] == 0
    assert got[("sluice_consumer_group_max_lag_seconds", (("group", "g"),))] == 0


def test_health_goes_bad_when_the_snapshot_is_stale() -> None:
    snap = NodeSnapshot(0, True, healthy=True, health_note="ok", taken_at=100.0)
    assert health(snap, 105.0) == (True, "ok")
    assert health(snap, 111.0) == (False, "supervisor loop stalled")
    bad = NodeSnapshot(0, True, healthy=False, health_note="offline after repeated crashes: t-0", taken_at=100.0)
    assert health(bad, 101.0) == (False, "offline after repeated crashes: t-0")
