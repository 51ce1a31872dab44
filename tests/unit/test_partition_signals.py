"""A partition worker's signals (appliance/partition/worker.py), without a process:
SIGTERM twice in one pass of the loop (its process group's and its supervisor's) is one
graceful stop, never an illegal state transition."""

from __future__ import annotations

import signal

import pytest

from appliance.log.config import LogConfig
from appliance.partition.spec import WorkerSpec
from appliance.partition.worker import PartitionWorker, WorkerState


@pytest.fixture
def worker() -> PartitionWorker:
    spec = WorkerSpec(
        topic="t",
        partition=0,
        slot=0,
        leader_epoch=0,
        directory="/nonexistent",
        log_config=LogConfig(),
        listen_host="127.0.0.1",
        preferred_port=0,
        control_endpoint="ipc:///nonexistent",
        status_path="/nonexistent",
        supervisor_pid=1,
    )
    w = PartitionWorker(spec)
    w.state = WorkerState.SERVING  # as after start(): the loop is running
    return w


def test_sigterm_twice_in_one_drain_is_one_stop(worker: PartitionWorker) -> None:
    worker.on_signals([signal.SIGTERM, signal.SIGTERM])
    assert worker.state is WorkerState.STOPPING


def test_sigterm_while_stopping_changes_nothing(worker: PartitionWorker) -> None:
    worker.on_signals([signal.SIGTERM])
    worker.on_signals([signal.SIGTERM])
    assert worker.state is WorkerState.STOPPING
