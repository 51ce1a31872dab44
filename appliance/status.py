"""Node status read from the shared-memory status table (lock-free).

Used by ``sluice status`` (reading the table directly, so it works even when the
supervisor is busy) and by the front endpoint's ``status`` API.

A serving worker whose partition directory refuses writes (a full disk, an I/O error:
``appliance/partition/storage.py``) shows the state ``disk_error`` instead of
``serving``, with ``storage_errno`` (28: ENOSPC) and ``storage_error_since``; it still
serves reads, and ``slot_state`` keeps the supervisor's view (``serving``).

Pids are for the host's operator: ``sluice status`` (reading the table locally) shows
them, the front's ``status`` API (``local=False``, a remote client) does not.
"""

from __future__ import annotations

import time
from typing import Any

from appliance.process import pid_alive
from ipc.shm import Role, ShmError, SlotState, StatusTable, WorkerStatus

LOCAL_ONLY = ("pid", "supervisor_pid")  # left out of what a remote client is told


def table_status(table: StatusTable, local: bool = True) -> dict[str, Any]:
    """The node and every partition in the table; without pids unless ``local``."""
    now = time.monotonic()
    parts = []
    for slot in range(table.slots):
        ctl = table.read_control(slot)
        if ctl.state is SlotState.FREE:
            continue
        st = table.read_status_or_none(slot) or WorkerStatus()
        slot_state = ctl.state.name.lower()
        # the status block is the running worker's only while it carries its pid
        storage_error = st.storage_error and st.pid == ctl.worker_pid != 0
        parts.append(
            {
                "topic": ctl.topic,
                "partition": ctl.partition,
                "slot": slot,
                "state": "disk_error" if storage_error and ctl.state is SlotState.SERVING else slot_state,
                "slot_state": slot_state,
                "storage_error": storage_error,
                "storage_errno": st.storage_errno if storage_error else 0,
                "storage_error_since": st.storage_error_since if storage_error else None,
                "role": ctl.role.name.lower(),
                "replicas": ctl.replica_count,
                "in_sync_replicas": ctl.isr_count,
                # as Kafka's UnderReplicatedPartitions: counted by the partition's leader
                "under_replicated": ctl.role is Role.LEADER and ctl.isr_count < ctl.replica_count,
                "pid": ctl.worker_pid,
                "restarts": ctl.restarts,
                "last_exit_code": ctl.last_exit_code,
                "offline_since": ctl.offline_since or None,
                "leader_epoch": st.leader_epoch,
                "log_start_offset": st.log_start_offset,
                "log_end_offset": st.log_end_offset,
                "high_watermark": st.high_watermark,
                "heartbeat_age_s": round(now - st.heartbeat, 3) if st.heartbeat else None,
                "records_in": st.records_in,
                "bytes_in": st.bytes_in,
                "records_out": st.records_out,
                "bytes_out": st.bytes_out,
                "size_bytes": st.log_size_bytes,
            }
        )
    parts.sort(key=lambda p: (p["topic"], p["partition"]))
    status = {
        "node_id": table.node_id,
        "supervisor_pid": table.supervisor_pid,
        "supervisor_alive": pid_alive(table.supervisor_pid),
        "partitions": parts,
    }
    if not local:
        for d in (status, *parts):
            for key in LOCAL_ONLY:
                d.pop(key, None)
    return status


def read_status(path: str) -> dict[str, Any]:
    """Attach read-only, read, detach (never removes the table)."""
    try:
        table = StatusTable.attach(path, writable=False)
    except ShmError as exc:
        raise ShmError(f"no running node found: {exc.message}") from None
    try:
        return table_status(table)
    finally:
        table.close()
