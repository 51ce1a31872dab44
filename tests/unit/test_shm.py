"""The shared-memory status table (ipc/shm.py).

Real files in tmp_path and real processes: round trips of both blocks, a separate
interpreter that attaches, reads and exits without removing the file, a writer process
hammering one slot while this process reads it (no torn block may ever be seen), the
seqlock's recovery from a writer that died mid-write, attach errors, bounds checks,
and the byte layout in the module docstring checked against the bytes on disk.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

import ipc.shm as shm
from ipc.errors import SluiceError
from ipc.shm import (
    CONTROL,
    CONTROL_BLOCK_SIZE,
    CONTROL_OFFSET,
    FORMAT_VERSION,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    SLOT_SIZE,
    STATUS,
    STATUS_BLOCK_SIZE,
    STATUS_OFFSET,
    TOPIC_MAX_LEN,
    ControlBlock,
    Role,
    ShmBusyError,
    ShmError,
    SlotState,
    StatusTable,
    StatusWriter,
    WorkerStatus,
)

REPO = Path(__file__).resolve().parents[2]

CONTROL_SAMPLE = ControlBlock(
    state=SlotState.SERVING,
    role=Role.LEADER,
    partition=7,
    restarts=3,
    replica_count=3,
    isr_count=2,
    worker_pid=4242,
    topic="orders.eu-west_1",
    last_exit_code=-9,
    offline_since=1_700_000_000.25,
)
STATUS_SAMPLE = WorkerStatus(
    pid=4242,
    leader_epoch=5,
    log_start_offset=100,
    log_end_offset=2_000_000_000_123,
    high_watermark=2_000_000_000_100,
    heartbeat=12345.5,
    records_in=11,
    bytes_in=2**63 + 5,
    records_out=13,
    bytes_out=17,
    log_size_bytes=19,
    storage_error=True,
    storage_errno=28,
    storage_error_since=1_700_000_000.25,
)


@pytest.fixture
def table(tmp_path: Path) -> Iterator[StatusTable]:
    t = StatusTable.create(tmp_path / "status", slots=4, node_id=3)
    yield t
    t.close()


def _fields(block: ControlBlock | WorkerStatus) -> dict[str, object]:
    return {k: (int(v) if isinstance(v, SlotState | Role) else v) for k, v in dataclasses.asdict(block).items()}


def _run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# ---- round trips ---------------------------------------------------------------------


def test_create_is_zero_filled_and_has_header(tmp_path: Path) -> None:
    path = tmp_path / "status"
    before = time.time()
    with StatusTable.create(path, slots=5, node_id=-2, supervisor_pid=777) as t:
        assert (t.slots, t.node_id, t.supervisor_pid, t.path) == (5, -2, 777, str(path))
        assert before <= t.created_at <= time.time()
        assert t.writable
        for slot in range(t.slots):
            assert t.read_control(slot) == ControlBlock()
            assert t.read_status(slot) == WorkerStatus()
        assert t.snapshot() == []
        assert t.find_free_slot() == 0
    assert path.stat().st_size == HEADER_SIZE + 5 * SLOT_SIZE
    assert os.listdir(tmp_path) == ["status"]  # no temporary file left behind


def test_default_supervisor_pid_is_the_creator(table: StatusTable) -> None:
    assert table.supervisor_pid == os.getpid()


def test_round_trip_both_blocks(table: StatusTable) -> None:
    table.write_control(2, CONTROL_SAMPLE)
    table.write_status(2, STATUS_SAMPLE)
    assert table.read_control(2) == CONTROL_SAMPLE
    assert table.read_status(2) == STATUS_SAMPLE
    assert isinstance(table.read_control(2).state, SlotState)
    assert isinstance(table.read_control(2).role, Role)
    # neighbours untouched
    for slot in (0, 1, 3):
        assert table.read_control(slot) == ControlBlock()
        assert table.read_status(slot) == WorkerStatus()


def test_round_trip_extremes(table: StatusTable) -> None:
    longest = "a." * (TOPIC_MAX_LEN // 2) + "z"
    assert len(longest) == TOPIC_MAX_LEN
    control = ControlBlock(
        state=SlotState.RESTARTING,
        role=Role.FOLLOWER,
        partition=2**31 - 1,
        restarts=2**32 - 1,
        worker_pid=-(2**31),
        topic=longest,
        last_exit_code=-(2**31),
        offline_since=-0.5,
    )
    status = WorkerStatus(
        pid=2**31 - 1,
        leader_epoch=-1,
        log_start_offset=-(2**63),
        log_end_offset=2**63 - 1,
        high_watermark=-1,
        heartbeat=float("inf"),
        records_in=2**64 - 1,
        bytes_in=0,
        records_out=2**64 - 1,
        bytes_out=1,
        log_size_bytes=2**64 - 1,
        storage_error=False,
        storage_errno=-(2**31),
        storage_error_since=-1.0,
    )
    table.write_control(3, control)
    table.write_status(3, status)
    assert table.read_control(3) == control
    assert table.read_status(3) == status
    table.write_control(3, ControlBlock(state=SlotState.SERVING, topic="t"))  # shorter topic: no leftover bytes
    assert table.read_control(3).topic == "t"


def test_storage_error_flag_round_trips(table: StatusTable) -> None:
    """The worker's storage condition (issue 20, item 2) through the table, as
    ``sluice status`` reads it; a block written without it reads as "writes work"."""
    writer = StatusWriter(table, 1, pid=77)
    writer.update(log_end_offset=5)
    assert table.read_status(1).storage_error is False
    writer.update(storage_error=True, storage_errno=28, storage_error_since=1234.5)
    st = table.read_status(1)
    assert (st.storage_error, st.storage_errno, st.storage_error_since, st.log_end_offset) == (True, 28, 1234.5, 5)
    writer.update(storage_error=False, storage_errno=0, storage_error_since=0.0)
    assert table.read_status(1) == WorkerStatus(pid=77, log_end_offset=5)
    # an older build's block: the storage bytes were pad, always zero
    old = struct.Struct("<iiqqqdQQQQQ").pack(77, 1, 0, 5, 5, 1.0, 0, 0, 0, 0, 0)
    assert shm.unpack_status(old + bytes(shm.STATUS.size - len(old))).storage_error is False


def test_every_state_and_role_round_trips(table: StatusTable) -> None:
    for state in SlotState:
        for role in Role:
            block = ControlBlock(state=state, role=role, topic="x")
            table.write_control(0, block)
            assert table.read_control(0) == block


def test_snapshot_and_find_free_slot(table: StatusTable) -> None:
    table.write_control(0, ControlBlock(state=SlotState.SERVING, topic="a", worker_pid=10))
    table.write_control(2, ControlBlock(state=SlotState.OFFLINE, topic="b", partition=1))
    table.write_status(0, WorkerStatus(pid=10, log_end_offset=5))
    table.write_status(1, WorkerStatus(pid=99))  # FREE slot: not in the snapshot
    assert table.find_free_slot() == 1
    assert table.snapshot() == [
        (0, table.read_control(0), WorkerStatus(pid=10, log_end_offset=5)),
        (2, table.read_control(2), WorkerStatus()),
    ]
    for slot in (1, 3):
        table.write_control(slot, ControlBlock(state=SlotState.STARTING, topic="c"))
    assert table.find_free_slot() is None
    table.write_control(2, ControlBlock())
    assert table.find_free_slot() == 2
    assert [row[0] for row in table.snapshot()] == [0, 1, 3]


def test_free_control_block_is_all_zeros(table: StatusTable) -> None:
    table.write_control(0, CONTROL_SAMPLE)
    table.write_control(0, ControlBlock.free())
    assert table.read_control(0) == ControlBlock() == ControlBlock.free()
    assert table.find_free_slot() == 0


def test_reset_status(table: StatusTable) -> None:
    table.write_status(1, STATUS_SAMPLE)
    table.reset_status(1)
    assert table.read_status(1) == WorkerStatus()


def test_create_replaces_a_stale_table(tmp_path: Path) -> None:
    path = tmp_path / "status"
    with StatusTable.create(path, slots=2, node_id=1) as old:
        old.write_control(0, CONTROL_SAMPLE)
        with StatusTable.attach(path) as stale_reader, StatusTable.create(path, slots=3, node_id=2) as new:
            assert new.slots == 3 and new.read_control(0) == ControlBlock()
            assert stale_reader.read_control(0) == CONTROL_SAMPLE  # old mapping still valid
            with StatusTable.attach(path) as fresh:
                assert (fresh.slots, fresh.node_id) == (3, 2)
                assert fresh.read_control(0) == ControlBlock()
    assert os.listdir(tmp_path) == ["status"]


# ---- validation ----------------------------------------------------------------------


@pytest.mark.parametrize("slots", [0, -1, True, 65537])
def test_create_refuses_bad_slot_counts(tmp_path: Path, slots: int) -> None:
    with pytest.raises(ValueError, match="slot count"):
        StatusTable.create(tmp_path / "status", slots=slots, node_id=1)
    assert not (tmp_path / "status").exists()


def test_create_refuses_bad_node_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="node id"):
        StatusTable.create(tmp_path / "status", slots=1, node_id=2**31)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("slot", [-1, 4, 1000])
def test_slot_bounds(table: StatusTable, slot: int) -> None:
    for call in (
        lambda: table.read_control(slot),
        lambda: table.write_control(slot, ControlBlock()),
        lambda: table.read_status(slot),
        lambda: table.write_status(slot, WorkerStatus()),
        lambda: table.reset_status(slot),
        lambda: StatusWriter(table, slot),
    ):
        with pytest.raises(IndexError, match=rf"slot {slot} out of range: .* has slots 0\.\.3"):
            call()


def test_slot_index_must_be_int(table: StatusTable) -> None:
    with pytest.raises(TypeError):
        table.read_control(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.read_status(True)  # a bool is not a slot index


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("a" * (TOPIC_MAX_LEN + 1), "too long"),
        ("tópico", "only ASCII"),
        ("主题", "only ASCII"),
        ("has space", "only ASCII"),
        ("slash/topic", "only ASCII"),
        ("nul\0", "only ASCII"),
    ],
)
def test_bad_topic_names_rejected(table: StatusTable, topic: str, message: str) -> None:
    table.write_control(0, CONTROL_SAMPLE)
    with pytest.raises(ValueError, match=message):
        table.write_control(0, ControlBlock(state=SlotState.SERVING, topic=topic))
    assert table.read_control(0) == CONTROL_SAMPLE  # nothing written


@pytest.mark.parametrize(
    ("field", "value"),
    [("partition", 2**31), ("restarts", -1), ("worker_pid", -(2**31) - 1), ("last_exit_code", "1")],
)
def test_control_fields_out_of_range(table: StatusTable, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"ControlBlock.{field}"):
        table.write_control(0, ControlBlock(**{field: value}))  # type: ignore[arg-type]
    assert table.read_control(0) == ControlBlock()


def test_control_state_must_be_known(table: StatusTable) -> None:
    with pytest.raises(ValueError, match="state or role"):
        table.write_control(0, ControlBlock(state=9))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("pid", 2**31), ("records_in", -1), ("bytes_out", 2**64), ("log_end_offset", 2**63), ("leader_epoch", True)],
)
def test_status_fields_out_of_range(table: StatusTable, field: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"WorkerStatus.{field}"):
        table.write_status(0, WorkerStatus(**{field: value}))
    assert table.read_status(0) == WorkerStatus()


def test_corrupt_control_block_is_a_shm_error(table: StatusTable) -> None:
    with open(table.path, "r+b") as f:
        f.seek(HEADER_SIZE + CONTROL_OFFSET + 8)  # state byte of slot 0
        f.write(b"\x09")
    with pytest.raises(ShmError, match="slot 0 control block is corrupt"):
        table.read_control(0)


# ---- attaching -----------------------------------------------------------------------


def test_attach_read_only(table: StatusTable) -> None:
    table.write_control(1, CONTROL_SAMPLE)
    table.write_status(1, STATUS_SAMPLE)
    with StatusTable.attach(table.path) as reader:
        assert not reader.writable
        assert (reader.slots, reader.node_id, reader.supervisor_pid) == (4, 3, os.getpid())
        assert reader.created_at == table.created_at
        assert reader.read_control(1) == CONTROL_SAMPLE
        assert reader.read_status(1) == STATUS_SAMPLE
        with pytest.raises(ShmError, match="read-only"):
            reader.write_control(1, ControlBlock())
        with pytest.raises(ShmError, match="read-only"):
            reader.write_status(1, WorkerStatus())
        with pytest.raises(ShmError, match="read-only"):
            StatusWriter(reader, 1)
        table.write_status(1, WorkerStatus(pid=1))  # the writer's changes are visible at once
        assert reader.read_status(1) == WorkerStatus(pid=1)
    assert table.read_control(1) == CONTROL_SAMPLE


def test_attach_writable(table: StatusTable) -> None:
    with StatusTable.attach(table.path, writable=True) as worker:
        worker.write_status(0, STATUS_SAMPLE)
    assert table.read_status(0) == STATUS_SAMPLE


def test_separate_process_attaches_reads_and_exits_without_removing_the_file(table: StatusTable) -> None:
    table.write_control(2, CONTROL_SAMPLE)
    table.write_status(2, STATUS_SAMPLE)
    script = """
        import dataclasses, json, sys
        from ipc.shm import StatusTable, ShmError, ControlBlock
        t = StatusTable.attach(sys.argv[1])
        out = {
            "slots": t.slots, "node_id": t.node_id, "supervisor_pid": t.supervisor_pid,
            "control": dataclasses.asdict(t.read_control(2)),
            "status": dataclasses.asdict(t.read_status(2)),
            "snapshot": [row[0] for row in t.snapshot()],
        }
        try:
            t.write_control(2, ControlBlock())
        except ShmError:
            out["write_refused"] = True
        print(json.dumps(out))
    """  # exits without close(): the interpreter's exit must not remove anything either
    for _ in range(2):  # a second attach after the first process is gone
        result = _run_python(script, table.path)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # e.g. no resource-tracker "leaked shared_memory" warning
        out = json.loads(result.stdout)
        assert (out["slots"], out["node_id"], out["supervisor_pid"]) == (4, 3, os.getpid())
        assert ControlBlock(**out["control"]) == CONTROL_SAMPLE
        assert WorkerStatus(**out["status"]) == STATUS_SAMPLE
        assert out["snapshot"] == [2]
        assert out["write_refused"] is True
        assert os.path.exists(table.path)
        assert table.read_control(2) == CONTROL_SAMPLE
        assert table.read_status(2) == STATUS_SAMPLE
    with StatusTable.attach(table.path) as again:
        assert again.read_status(2) == STATUS_SAMPLE


def test_separate_process_writes_its_status(table: StatusTable) -> None:
    script = """
        import sys
        from ipc.shm import StatusTable, StatusWriter
        t = StatusTable.attach(sys.argv[1], writable=True)
        w = StatusWriter(t, 1, clock=lambda: 99.5)
        w.update(leader_epoch=4, log_end_offset=1000, high_watermark=990)
        w.heartbeat()
    """
    result = _run_python(script, table.path)
    assert result.returncode == 0, result.stderr
    status = table.read_status(1)
    assert status == WorkerStatus(
        pid=status.pid, leader_epoch=4, log_end_offset=1000, high_watermark=990, heartbeat=99.5
    )
    assert status.pid not in (0, os.getpid())


def test_attach_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ShmError, match="does not exist") as info:
        StatusTable.attach(tmp_path / "nope")
    assert isinstance(info.value, SluiceError)
    assert info.value.code == "SHARED_MEMORY_ERROR"


@pytest.mark.parametrize("size", [0, 10, HEADER_SIZE - 1])
def test_attach_file_shorter_than_a_header(tmp_path: Path, size: int) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"SLST" + bytes(max(0, size - 4)) if size >= 4 else bytes(size))
    with pytest.raises(ShmError, match="too small"):
        StatusTable.attach(path)


def test_attach_truncated_table(table: StatusTable) -> None:
    os.truncate(table.path, HEADER_SIZE + 2 * SLOT_SIZE)  # header says 4 slots
    with pytest.raises(ShmError, match="too small: .* 4 slots need"):
        StatusTable.attach(table.path)


def test_attach_oversized_table(tmp_path: Path) -> None:
    with StatusTable.create(tmp_path / "status", slots=1, node_id=1) as t:
        os.truncate(t.path, HEADER_SIZE + 2 * SLOT_SIZE)
        with pytest.raises(ShmError, match="need exactly"):
            StatusTable.attach(t.path)


def _patch_header(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(
    ("offset", "data", "message"),
    [
        (0, b"KAFK", "is not a status table: magic"),
        (4, struct.pack("<H", FORMAT_VERSION + 1), "format version 2"),
        (12, struct.pack("<I", SLOT_SIZE * 2), "byte slots"),
        (8, struct.pack("<I", 0), "invalid slot count 0"),
    ],
)
def test_attach_bad_header(table: StatusTable, offset: int, data: bytes, message: str) -> None:
    _patch_header(table.path, offset, data)
    with pytest.raises(ShmError, match=message):
        StatusTable.attach(table.path)


def test_attach_not_a_table_at_all(tmp_path: Path) -> None:
    path = tmp_path / "random"
    path.write_bytes(os.urandom(HEADER_SIZE + SLOT_SIZE))
    with pytest.raises(ShmError, match="not a status table"):
        StatusTable.attach(path)


# ---- lifecycle -----------------------------------------------------------------------


def test_close_is_idempotent_and_keeps_the_file(table: StatusTable) -> None:
    reader = StatusTable.attach(table.path)
    reader.close()
    reader.close()
    assert reader.closed
    with pytest.raises(ShmError, match="closed"):
        reader.read_control(0)
    assert os.path.exists(table.path)
    table.write_control(0, CONTROL_SAMPLE)
    assert table.read_control(0) == CONTROL_SAMPLE


def test_unlink_removes_the_name_but_mappings_still_work(table: StatusTable) -> None:
    table.write_status(0, STATUS_SAMPLE)
    with StatusTable.attach(table.path) as reader:
        table.unlink()
        table.unlink()  # idempotent
        assert not os.path.exists(table.path)
        assert reader.read_status(0) == STATUS_SAMPLE
        with pytest.raises(ShmError, match="does not exist"):
            StatusTable.attach(table.path)


# ---- StatusWriter --------------------------------------------------------------------


def test_status_writer(table: StatusTable) -> None:
    now = [100.0]
    writer = StatusWriter(table, 3, pid=555, clock=lambda: now[0])
    assert writer.slot == 3
    assert writer.status == WorkerStatus(pid=555)
    assert table.read_status(3) == WorkerStatus()  # construction writes nothing
    writer.update(leader_epoch=2, log_end_offset=10, high_watermark=8, records_in=10, bytes_in=640)
    assert table.read_status(3) == WorkerStatus(
        pid=555, leader_epoch=2, log_end_offset=10, high_watermark=8, records_in=10, bytes_in=640
    )
    writer.heartbeat()
    assert table.read_status(3).heartbeat == 100.0
    now[0] = 101.5
    status = writer.heartbeat()
    assert status == writer.status == table.read_status(3)
    assert status == WorkerStatus(
        pid=555, leader_epoch=2, log_end_offset=10, high_watermark=8, records_in=10, bytes_in=640, heartbeat=101.5
    )


def test_status_writer_defaults_to_own_pid_and_monotonic_clock(table: StatusTable) -> None:
    writer = StatusWriter(table, 0)
    before = time.monotonic()
    writer.heartbeat()
    status = table.read_status(0)
    assert status.pid == os.getpid()
    assert before <= status.heartbeat <= time.monotonic()


def test_status_writer_rejects_bad_fields_without_writing(table: StatusTable) -> None:
    writer = StatusWriter(table, 0, pid=1)
    writer.update(log_end_offset=5)
    with pytest.raises(TypeError, match="unknown WorkerStatus field.*: nonsense"):
        writer.update(nonsense=1)
    with pytest.raises(ValueError, match="WorkerStatus.records_in"):
        writer.update(records_in=-1)
    assert writer.status == WorkerStatus(pid=1, log_end_offset=5)
    assert table.read_status(0) == WorkerStatus(pid=1, log_end_offset=5)


# ---- seqlock -------------------------------------------------------------------------


def _seq(path: str, slot: int, block_offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE + slot * SLOT_SIZE + block_offset)
        value: int = struct.unpack("<Q", f.read(8))[0]
        return value


def test_each_write_advances_seq_by_two(table: StatusTable) -> None:
    assert _seq(table.path, 1, STATUS_OFFSET) == 0
    for n in range(1, 4):
        table.write_status(1, WorkerStatus(pid=n))
        table.write_control(1, ControlBlock(partition=n))
        assert _seq(table.path, 1, STATUS_OFFSET) == 2 * n
        assert _seq(table.path, 1, CONTROL_OFFSET) == 2 * n


def test_writer_that_died_mid_write_is_busy_until_the_next_write(table: StatusTable) -> None:
    table.write_status(1, STATUS_SAMPLE)
    _patch_header(table.path, HEADER_SIZE + SLOT_SIZE + STATUS_OFFSET, struct.pack("<Q", 3))  # odd: "mid-write"
    started = time.monotonic()
    with pytest.raises(ShmBusyError, match="slot 1 .* stayed mid-write for 300 reads") as info:
        table.read_status(1)
    assert time.monotonic() - started < 2.0  # bounded: about 0.2 s
    assert info.value.retriable
    assert isinstance(info.value, ShmError)
    table.write_control(1, CONTROL_SAMPLE)  # the control block is independent of it
    assert table.read_control(1) == CONTROL_SAMPLE
    with pytest.raises(ShmBusyError):
        table.snapshot()
    table.reset_status(1)  # the successor's (or the supervisor's) write repairs it
    assert _seq(table.path, 1, STATUS_OFFSET) == 6
    assert table.read_status(1) == WorkerStatus()


def test_reader_waits_for_a_descheduled_writer(table: StatusTable, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader yields, then sleeps with a growing back-off, until the write completes."""
    table.write_status(1, STATUS_SAMPLE)  # seq 2
    seq_at = HEADER_SIZE + SLOT_SIZE + STATUS_OFFSET
    _patch_header(table.path, seq_at, struct.pack("<Q", 3))  # a writer is "mid-write"
    yields: list[None] = []
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 8:  # the writer gets the CPU back and finishes its write
            _patch_header(table.path, seq_at, struct.pack("<Q", 4))

    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(None))
    monkeypatch.setattr(time, "sleep", fake_sleep)
    assert table.read_status(1) == STATUS_SAMPLE
    assert len(yields) == shm.SPIN_TRIES
    assert sleeps == [min(shm.READ_BACKOFF_MIN * 2**k, shm.READ_BACKOFF_MAX) for k in range(8)]
    assert sleeps[-1] == shm.READ_BACKOFF_MAX


def test_seq_wraps_around_keeping_parity(table: StatusTable) -> None:
    _patch_header(table.path, HEADER_SIZE + STATUS_OFFSET, struct.pack("<Q", 2**64 - 2))
    table.write_status(0, STATUS_SAMPLE)
    assert _seq(table.path, 0, STATUS_OFFSET) == 0
    assert table.read_status(0) == STATUS_SAMPLE
    _patch_header(table.path, HEADER_SIZE + STATUS_OFFSET, struct.pack("<Q", 2**64 - 1))  # odd, dead writer
    table.write_status(0, WorkerStatus(pid=2))
    assert _seq(table.path, 0, STATUS_OFFSET) == 2
    assert table.read_status(0) == WorkerStatus(pid=2)


def _uniform_control(n: int) -> ControlBlock:
    """A control block whose every field is derived from n, so a torn one shows."""
    return ControlBlock(
        state=SlotState(1 + n % 5),
        role=Role(n % 3),
        partition=n,
        restarts=n,
        worker_pid=n,
        topic=(f"{n}." * TOPIC_MAX_LEN)[: 1 + n % TOPIC_MAX_LEN],
        last_exit_code=n,
        offline_since=float(n),
    )


def _uniform_status(n: int) -> WorkerStatus:
    return WorkerStatus(
        pid=n,
        leader_epoch=n,
        log_start_offset=n,
        log_end_offset=n,
        high_watermark=n,
        heartbeat=float(n),
        records_in=n,
        bytes_in=n,
        records_out=n,
        bytes_out=n,
        log_size_bytes=n,
    )


def _hammer(path: str, slot: int, stop: Event, max_writes: int, max_seconds: float) -> None:
    """Child: attach after fork and rewrite one slot's blocks as fast as possible."""
    t = StatusTable.attach(path, writable=True)
    deadline = time.monotonic() + max_seconds
    n = 0
    while n < max_writes:
        n += 1
        t.write_status(slot, _uniform_status(n))
        t.write_control(slot, _uniform_control(n))
        if n % 256 == 0 and (stop.is_set() or time.monotonic() > deadline):
            break
    t.close()


def test_concurrent_writer_never_yields_a_torn_block(table: StatusTable) -> None:
    slot = 2
    table.write_status(slot, _uniform_status(0))
    table.write_control(slot, _uniform_control(0))
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    child = ctx.Process(target=_hammer, args=(table.path, slot, stop, 10_000_000, 8.0), daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + 6.0
        reads = changes = last = 0
        while time.monotonic() < deadline and not (reads >= 150_000 and changes >= 2_000):
            status = table.read_status(slot)
            assert status == _uniform_status(status.pid), f"torn status block after {reads} reads: {status}"
            control = table.read_control(slot)
            assert control == _uniform_control(control.partition), f"torn control block after {reads} reads"
            reads += 1
            if status.pid != last:
                changes += 1
                last = status.pid
        # the reads really overlapped the writes: values kept changing under the reader (2,000 unless the
        # machine is badly oversubscribed; without the seqlock, ~1 read in 1,000 of this loop sees a torn block)
        assert changes >= 200, f"only {changes} changes seen in {reads} reads; the writer barely ran"
    finally:
        stop.set()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join(timeout=5)
    assert child.exitcode == 0
    assert os.path.exists(table.path)
    final = table.read_status(slot).pid
    assert final > 0 and table.read_control(slot) == _uniform_control(final)


# ---- layout --------------------------------------------------------------------------

_ROW = re.compile(r"^\s{4}(\d+)\s+(\d+)\s+(u8|u16|u32|u64|i32|i64|f64|bytes|pad)\s+(\S+)")
_CODES = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q", "i32": "<i", "i64": "<q", "f64": "<d"}


def _doc_table(heading: str) -> list[tuple[int, int, str, str]]:
    """Rows (offset, size, type, field) of the table that follows ``heading`` in the docstring."""
    doc = shm.__doc__
    assert doc is not None
    lines = doc[doc.index(heading) :].splitlines()[1:]
    rows: list[tuple[int, int, str, str]] = []
    for line in lines:
        m = _ROW.match(line)
        if m:
            rows.append((int(m[1]), int(m[2]), m[3], m[4]))
        elif rows and line.strip() and not line.startswith(" " * 20):  # past the table
            break
    assert rows, f"no table under {heading!r}"
    return rows


def test_layout_constants() -> None:
    assert HEADER.size == HEADER_SIZE == 64
    assert CONTROL.size == 282 and CONTROL_BLOCK_SIZE == 8 + CONTROL.size == 290
    assert STATUS.size == 96 and STATUS_BLOCK_SIZE == 8 + STATUS.size == 104
    assert (CONTROL_OFFSET, STATUS_OFFSET, SLOT_SIZE) == (0, 320, 448)
    assert CONTROL_OFFSET + CONTROL_BLOCK_SIZE <= STATUS_OFFSET
    assert STATUS_OFFSET + STATUS_BLOCK_SIZE <= SLOT_SIZE
    for offset in (HEADER_SIZE, SLOT_SIZE, STATUS_OFFSET):
        assert offset % 64 == 0  # seq counters 8-byte aligned; blocks on separate cache lines
    assert MAGIC == b"SLST" and TOPIC_MAX_LEN == 249


def test_docstring_tables_tile_the_header_and_slot() -> None:
    header = _doc_table("File header (")
    control = _doc_table("Control block (")
    status = _doc_table("Status block (")
    for rows, start, end in ((header, 0, HEADER_SIZE), (control + status, 0, SLOT_SIZE)):
        position = start
        for offset, size, kind, field in rows:
            assert offset == position, f"{field} documented at {offset}, previous row ends at {position}"
            if kind in _CODES:
                assert struct.calcsize(_CODES[kind]) == size, field
            position = offset + size
        assert position == end
    assert control[0][:4] == (CONTROL_OFFSET, 8, "u64", "seq")
    assert status[0][:4] == (STATUS_OFFSET, 8, "u64", "seq")
    for rows, block_size in ((control, CONTROL_BLOCK_SIZE), (status, STATUS_BLOCK_SIZE)):
        last = [row for row in rows if row[2] != "pad"][-1]
        assert last[0] + last[1] - rows[0][0] == block_size  # seq through the last field
    doc = shm.__doc__ or ""
    assert f"HEADER_SIZE = {HEADER_SIZE}" in doc
    assert f"CONTROL_BLOCK_SIZE = {CONTROL_BLOCK_SIZE}" in doc
    assert f"STATUS_OFFSET = {STATUS_OFFSET}, STATUS_BLOCK_SIZE = {STATUS_BLOCK_SIZE}" in doc
    assert f"SLOT_SIZE ({SLOT_SIZE})" in doc


def test_docstring_offsets_match_the_bytes_on_disk(tmp_path: Path) -> None:
    """Write known values, then read each documented field straight from the file."""
    path = tmp_path / "status"
    slot = 1
    with StatusTable.create(path, slots=2, node_id=-7, supervisor_pid=31337) as t:
        t.write_control(slot, CONTROL_SAMPLE)
        t.write_status(slot, STATUS_SAMPLE)
        t.write_status(slot, STATUS_SAMPLE)  # seq 4 for the status block, 2 for control
        created_at = t.created_at
    raw = path.read_bytes()
    expected_header = {
        "magic": MAGIC,
        "version": FORMAT_VERSION,
        "slot_count": 2,
        "slot_size": SLOT_SIZE,
        "node_id": -7,
        "supervisor_pid": 31337,
        "created_at": created_at,
    }
    topic = CONTROL_SAMPLE.topic.encode()
    expected_slot: dict[str, object] = {
        **_fields(CONTROL_SAMPLE),
        "topic_len": len(topic),
        "topic": topic.ljust(TOPIC_MAX_LEN, b"\0"),
    }
    expected_status: dict[str, object] = {**_fields(STATUS_SAMPLE), "seq": 4}
    expected_slot["seq"] = 2
    slot_base = HEADER_SIZE + slot * SLOT_SIZE
    checks = [
        (_doc_table("File header ("), 0, expected_header),
        (_doc_table("Control block ("), slot_base, expected_slot),
        (_doc_table("Status block ("), slot_base, expected_status),
    ]
    for rows, base, expected in checks:
        seen: set[str] = set()
        for offset, size, kind, field in rows:
            chunk = raw[base + offset : base + offset + size]
            if kind == "pad":
                assert chunk == bytes(size), f"pad at {offset} is not zero"
                continue
            value = chunk if kind == "bytes" else struct.unpack(_CODES[kind], chunk)[0]
            assert value == expected[field], f"{field} at offset {offset}: {value!r} != {expected[field]!r}"
            seen.add(field)
        assert seen == set(expected), f"documented fields {sorted(seen)} != {sorted(expected)}"
