"""``BackgroundFlusher`` and ``Log(background_flush=True)``: the interval fsync runs in a
helper thread, requests coalesce, errors reach the owner, checkpoints and close wait.

Real files and real ``fdatasync``; where a test must hold a flush in progress it wraps
the real call with a gate (the only stand-in here)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.log import flusher as flusher_module
from appliance.log.config import FsyncPolicy, LogConfig
from appliance.log.flusher import BackgroundFlusher
from appliance.log.log import CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE, Log
from ipc.records import encode_batch

WAIT_S = 10.0


class GatedFdatasync:
    """Calls the real ``os.fdatasync`` once ``release()`` is called; records the threads."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.threads: list[str] = []
        self._real = os.fdatasync

    def __call__(self, fd: int) -> None:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never released the flush"
        self._real(fd)

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedFdatasync]:
    g = GatedFdatasync()
    monkeypatch.setattr(flusher_module.os, "fdatasync", g)
    yield g
    g.release()


@pytest.fixture
def data_file(tmp_path: Any) -> Iterator[int]:
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 4096)
    yield fd
    os.close(fd)


def test_submit_returns_at_once_and_the_helper_thread_flushes(gated: GatedFdatasync, data_file: int) -> None:
    f = BackgroundFlusher("t")
    try:
        f.submit(data_file)  # returns while the flush is held at the gate
        assert gated.entered.wait(WAIT_S)
        assert not f.wait(0)
        gated.release()
        assert f.wait(WAIT_S)
        assert f.flushes == 1
        assert gated.threads == ["flush-t"]
    finally:
        f.close()


def test_requests_made_during_a_flush_coalesce_into_one(gated: GatedFdatasync, data_file: int) -> None:
    f = BackgroundFlusher("t")
    try:
        f.submit(data_file)
        assert gated.entered.wait(WAIT_S)
        for _ in range(5):
            f.submit(data_file)  # each replaces the waiting one; no descriptor leaks
        gated.release()
        assert f.wait(WAIT_S)
        assert f.flushes == 2
    finally:
        f.close()


def test_a_failed_flush_is_raised_by_every_check_from_then_on() -> None:
    r, w = os.pipe()  # fdatasync on a pipe fails with EINVAL
    f = BackgroundFlusher("t")
    try:
        f.check()
        f.submit(w)
        assert f.wait(WAIT_S)
        for _ in range(3):  # fatal: a later check may not pretend all is well
            with pytest.raises(OSError, match="background fdatasync of t failed"):
                f.check()
    finally:
        f.close()
        os.close(r)
        os.close(w)


def test_close_finishes_the_pending_flush_and_refuses_more(gated: GatedFdatasync, data_file: int) -> None:
    f = BackgroundFlusher("t")
    f.submit(data_file)
    assert gated.entered.wait(WAIT_S)
    f.submit(data_file)
    closer = threading.Thread(target=f.close)
    closer.start()
    gated.release()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert f.flushes == 2
    with pytest.raises(RuntimeError):
        f.submit(data_file)
    f.close()  # idempotent


# ---- through the log ----------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def interval_log(tmp_path: Any) -> Iterator[tuple[Log, Clock]]:
    clock = Clock()
    cfg = LogConfig(fsync=FsyncPolicy.INTERVAL, fsync_interval_ms=50)
    lg = Log.open(str(tmp_path / "t-0"), cfg, clock=clock, background_flush=True)
    yield lg, clock
    if lg.segments:  # a test that broke the log released them itself
        lg.close()


def test_log_hands_the_interval_flush_to_the_helper(interval_log: tuple[Log, Clock], gated: GatedFdatasync) -> None:
    lg, clock = interval_log
    lg.append(encode_batch([b"a"], timestamp=1))
    clock.t += 0.06
    lg.maybe_flush()  # would block at the gate if it flushed in this thread
    assert lg.next_flush_deadline() is None
    assert gated.entered.wait(WAIT_S)
    assert gated.threads == [f"flush-{os.path.basename(lg.directory)}"]
    gated.release()


def test_log_checkpoint_waits_for_the_helper_before_its_promise(
    interval_log: tuple[Log, Clock], gated: GatedFdatasync
) -> None:
    lg, clock = interval_log
    lg.append(encode_batch([b"a", b"b"], timestamp=1))
    clock.t += 0.06
    lg.maybe_flush()
    assert gated.entered.wait(WAIT_S)
    done = threading.Event()

    def checkpoint() -> None:
        lg.checkpoint_recovery_point()
        done.set()

    t = threading.Thread(target=checkpoint)
    t.start()
    assert not done.wait(0.2)  # held: the flush it waits for has not finished
    gated.release()
    t.join(WAIT_S)
    assert done.is_set()
    with open(os.path.join(lg.directory, RECOVERY_POINT_FILE)) as fh:
        assert fh.read() == "0\n2\n"


def test_after_a_failed_background_flush_the_log_promises_nothing(interval_log: tuple[Log, Clock]) -> None:
    """maybe_flush, the recovery-point checkpoint, a roll and close all raise; no recovery
    point past the failure is written and no clean-shutdown marker."""
    lg, clock = interval_log
    assert lg._flusher is not None
    lg.append(encode_batch([b"a", b"b"], timestamp=1))
    r, w = os.pipe()
    try:
        lg._flusher.submit(w)  # stands for a segment whose fdatasync fails (EIO on a real disk)
        assert lg._flusher.wait(WAIT_S)
        ckpt = os.path.join(lg.directory, RECOVERY_POINT_FILE)
        with open(ckpt) as fh:
            before = fh.read()
        for attempt in (lg.maybe_flush, lg.maybe_flush, lg.checkpoint_recovery_point, lg.roll, lg.close):
            with pytest.raises(OSError):
                attempt()
        with open(ckpt) as fh:
            assert fh.read() == before
        assert not os.path.exists(os.path.join(lg.directory, CLEAN_SHUTDOWN_FILE))
    finally:
        os.close(r)
        os.close(w)
        for seg in lg.segments:  # close() refused: release the descriptors as a crash would
            seg.close()
        lg.segments = []
