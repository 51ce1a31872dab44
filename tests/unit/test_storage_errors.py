"""A full disk is answered, not crashed on (issue 20, item 2), without processes.

The filesystem is real: a tiny tmpfs mounted for the test (as root; skipped otherwise)
and filled with a filler file until it refuses writes with ENOSPC. Deleting the filler
frees it again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from appliance.children import ChildState
from appliance.log.checkpoint import LeaderEpochCache, OffsetCheckpoint
from appliance.log.config import LogConfig
from appliance.log.log import Log
from appliance.partition import storage
from appliance.partition.spec import WorkerSpec
from appliance.partition.storage import StorageCondition, probe
from appliance.partition.worker import PartitionWorker, WorkerState
from appliance.status import table_status
from appliance.systemd import assess
from ipc import sockets
from ipc.control import ReadyEvent, decode_event
from ipc.errors import StorageError
from ipc.protocol import encode_request, parse_reply
from ipc.shm import ControlBlock, SlotState, StatusTable, StatusWriter
from tests.integration.conftest import wait_until
from tests.unit.test_partition_handlers import T0_MS, Leader, batch, values_in

TMPFS_BYTES = 1024 * 1024


class TinyFs:
    """A mounted tmpfs of ``TMPFS_BYTES`` and a filler file that fills it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> None:
        """Write the filler until the filesystem is full (ENOSPC)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            chunk = bytes(4096)
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    return
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[TinyFs]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = tmp_path / "tiny"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(root)], check=True)
    try:
        yield TinyFs(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


# ---- checkpoints ----------------------------------------------------------------------------


def test_a_checkpoint_that_cannot_be_written_keeps_the_old_one_and_leaves_no_temp_file(tiny_fs: TinyFs) -> None:
    ckpt = OffsetCheckpoint(str(tiny_fs.root / "recovery-point-offset-checkpoint"))
    ckpt.write(5)
    tiny_fs.fill()
    with pytest.raises(OSError) as caught:
        ckpt.write(7)
    assert caught.value.errno == errno.ENOSPC
    assert "recovery-point-offset-checkpoint" in str(caught.value)  # names the file
    assert ckpt.read() == 5
    assert sorted(p.name for p in tiny_fs.root.iterdir()) == ["filler", "recovery-point-offset-checkpoint"]
    tiny_fs.free()
    ckpt.write(7)
    assert ckpt.read() == 7


def test_a_leader_epoch_that_cannot_be_saved_is_not_assigned(tiny_fs: TinyFs) -> None:
    path = str(tiny_fs.root / "leader-epoch-checkpoint")
    cache = LeaderEpochCache(path)
    cache.assign(1, 0)
    tiny_fs.fill()
    with pytest.raises(OSError):
        cache.assign(2, 10)
    assert cache.entries() == [(1, 0)]  # the next append of epoch 2 assigns it again
    cache.truncate_from_end(0)  # a truncation is kept in memory, saved later
    assert cache.entries() == [] and cache.unsaved
    tiny_fs.free()
    cache.save_unsaved()
    assert LeaderEpochCache(path).entries() == [] and not cache.unsaved


# ---- produce --------------------------------------------------------------------------------


def test_produce_on_a_full_disk_answers_storage_error_and_writes_nothing(tiny_fs: TinyFs) -> None:
    p = Leader(tiny_fs.root)
    p.produce(batch(b"a"), acks=1)
    tiny_fs.fill()
    before = (p.log.log_end_offset, p.log.active.size, (tiny_fs.root / "t-0" / "00000000000000000000.log").stat())
    big = b"x" * 200_000
    with pytest.raises(StorageError, match="cannot append"):
        p.produce(batch(big), batch(big), acks=1)
    after_stat = (tiny_fs.root / "t-0" / "00000000000000000000.log").stat()
    assert (p.log.log_end_offset, p.log.active.size) == before[:2]
    assert after_stat.st_size == before[2].st_size  # nothing of the batch stays in the file
    assert p.replica.storage.failed and p.replica.storage.errno == errno.ENOSPC
    # while failed: refused before anything is tried; reads of what is there still work
    with pytest.raises(StorageError, match="storage unavailable"):
        p.produce(batch(b"b"), acks=1)
    response = p.fetch(0)
    assert response is not None and values_in(response.frames[0]) == [b"a"]
    with pytest.raises(OSError):
        probe(p.log)
    tiny_fs.free()
    probe(p.log)  # what the worker's tick does every PROBE_S
    p.replica.storage.ok()
    assert not (tiny_fs.root / "t-0" / storage.PROBE_FILE).exists()
    response = p.produce(batch(b"c"), acks=1)
    assert response is not None and response.fields["base_offsets"] == [1]
    p.log.close()
    reopened = Log.open(str(tiny_fs.root / "t-0"))
    assert values_in(reopened.read(0)) == [b"a", b"c"]
    reopened.close()


def test_an_index_entry_that_cannot_be_written_takes_the_batch_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lg = Log.open(str(tmp_path / "t-0"))
    lg.append(batch(b"a"))
    seg = lg.active
    seg._bytes_since_entry = seg.index_interval_bytes  # the next batch gets an index entry
    entries = (len(seg.index), len(seg.time_index), os.path.getsize(seg.index.file.path))

    def full(data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(seg.time_index.file, "write", full)
    with pytest.raises(OSError):
        lg.append(batch(b"b", ts=T0_MS + 1000))
    assert lg.log_end_offset == 1 and seg.size == os.path.getsize(seg.path)
    assert (len(seg.index), len(seg.time_index), os.path.getsize(seg.index.file.path)) == entries
    monkeypatch.undo()
    lg.append(batch(b"c"))
    assert values_in(lg.read(0)) == [b"a", b"c"]
    lg.close()
    reopened = Log.open(str(tmp_path / "t-0"))
    assert values_in(reopened.read(0)) == [b"a", b"c"]
    reopened.close()


def test_a_log_that_cannot_open_on_a_full_disk_raises_enospc(tiny_fs: TinyFs) -> None:
    lg = Log.open(str(tiny_fs.root / "t-0"))
    lg.append(batch(b"a"))
    lg.close()
    os.unlink(tiny_fs.root / "t-0" / "recovery-point-offset-checkpoint")
    tiny_fs.fill()
    with pytest.raises(OSError) as caught:
        Log.open(str(tiny_fs.root / "t-0"))
    assert storage.is_storage_error(caught.value)
    tiny_fs.free()
    lg = Log.open(str(tiny_fs.root / "t-0"))  # what the worker retries every PROBE_S
    assert values_in(lg.read(0)) == [b"a"]
    lg.close()


# ---- visible: status table, health ------------------------------------------------------------


def test_the_storage_condition_shows_in_the_status_table(tmp_path: Path) -> None:
    table = StatusTable.create(tmp_path / "status", slots=2, node_id=1)
    try:
        table.write_control(0, ControlBlock(state=SlotState.SERVING, topic="t", worker_pid=42))
        writer = StatusWriter(table, 0, pid=42)
        cond = StorageCondition("t-0")
        cond.fail(OSError(errno.ENOSPC, "No space left on device"))
        writer.update(storage_error=cond.failed, storage_errno=cond.errno, storage_error_since=cond.since)
        (part,) = table_status(table)["partitions"]
        assert (part["state"], part["slot_state"], part["storage_error"], part["storage_errno"]) == (
            "disk_error",
            "serving",
            True,
            errno.ENOSPC,
        )
        assert abs(part["storage_error_since"] - time.time()) < 5
        cond.ok()
        writer.update(storage_error=cond.failed, storage_errno=cond.errno, storage_error_since=cond.since)
        (part,) = table_status(table)["partitions"]
        assert (part["state"], part["storage_error"], part["storage_error_since"]) == ("serving", False, None)
    finally:
        table.close()


class _View:
    def __init__(self, name: str, storage_error: bool) -> None:
        self.name = name
        self.state = ChildState.SERVING
        self.pid = 7
        self.killed_at = 0.0
        self.storage_error = storage_error


def test_health_names_the_partitions_with_storage_errors_but_the_watchdog_keeps_pinging() -> None:
    h = assess([_View("t-0", True), _View("t-1", False)], now=10.0)
    assert not h.healthy and h.restart_would_help  # /healthz 503; a restart frees no disk space
    assert h.storage_errors == ("t-0",) and "t-0" in h.problems()
    assert assess([_View("t-0", False)], now=10.0).healthy


# ---- a worker whose log cannot open ------------------------------------------------------------


def test_a_worker_that_cannot_open_its_log_serves_storage_error_and_retries(tiny_fs: TinyFs, tmp_path: Path) -> None:
    """Not a crash loop: ready at once, STORAGE_ERROR to requests, the open retried every
    PROBE_S until the disk has space, then serving (one process: the worker's start in a
    thread, the supervisor's side here)."""
    table = StatusTable.create(tmp_path / "status", slots=1, node_id=1)
    table.write_control(0, ControlBlock(state=SlotState.STARTING, topic="t", worker_pid=os.getpid()))
    ctx = zmq.Context()
    control, _ = sockets.bind_router(ctx, f"ipc://{tmp_path}/control.sock")
    spec = WorkerSpec(
        topic="t",
        partition=0,
        slot=0,
        leader_epoch=0,
        directory=str(tiny_fs.root / "t-0"),
        log_config=LogConfig(),
        listen_host="127.0.0.1",
        preferred_port=0,
        control_endpoint=f"ipc://{tmp_path}/control.sock",
        status_path=str(tmp_path / "status"),
        supervisor_pid=os.getpid(),
    )
    worker = PartitionWorker(spec)
    tiny_fs.fill()
    started: list[bool] = []
    thread = threading.Thread(target=lambda: started.append(worker.start()), daemon=True)
    thread.start()
    dealer = None
    try:
        assert control.poll(10_000), "no ready event"
        _, raw = control.recv_multipart()
        ready = decode_event(raw)
        assert isinstance(ready, ReadyEvent)
        wait_until(lambda: table.read_status(0).storage_error, 5, "the storage error in the status table")
        assert table.read_status(0).storage_errno == errno.ENOSPC
        dealer = sockets.dealer(ctx, ready.endpoint)
        dealer.send_multipart([encode_request("produce", 1, topic="t", partition=0, acks=1), batch(b"a")])
        assert dealer.poll(5000), "no answer to produce"
        reply = parse_reply(dealer.recv_multipart())
        assert isinstance(reply.error, StorageError)
        assert thread.is_alive() and worker.state is WorkerState.STORAGE_UNAVAILABLE
        tiny_fs.free()
        thread.join(storage.PROBE_S * 3)
        assert started == [True] and worker.state is WorkerState.SERVING
        assert not table.read_status(0).storage_error
    finally:
        if dealer is not None:
            dealer.close(0)
        thread.join(10)
        if worker.state is WorkerState.SERVING:
            worker.shutdown()
        control.close(0)
        ctx.term()
        table.close()
