"""What a remote client is told: no absolute path in an error message (ipc/redact.py),
no pid in the remote status (appliance/status.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from appliance.status import table_status
from ipc.errors import StorageError
from ipc.protocol import error_reply
from ipc.redact import wire_message
from ipc.shm import ControlBlock, Role, SlotState, StatusTable


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (
            "events-0: cannot write /srv/sluice/events-0/00000000000000000000.log: No space left on device",
            "events-0: cannot write events-0/00000000000000000000.log: No space left on device",
        ),
        ("[Errno 2] No such file: '/var/lib/sluice/t-1/x.index'", "[Errno 2] No such file: 't-1/x.index'"),
        ("state /var/lib/sluice/__coordinator/state.json is malformed", "state __coordinator/state.json is malformed"),
        ("socket ipc:///dev/shm/sluice-0-ab/control.sock", "socket sluice-0-ab/control.sock"),
        ("data_dir=/srv/sluice (x)", "data_dir=srv/sluice (x)"),
        ("(/a/b/c) and [/d/e]", "(b/c) and [d/e]"),
    ],
)
def test_absolute_paths_are_cut_to_their_last_two_parts(message: str, wire: str) -> None:
    assert wire_message(message) == wire


@pytest.mark.parametrize(
    "message",
    [
        "no serving leader for t-0 at tcp://127.0.0.1:6100",
        "batch of 10 bytes exceeds max.message.bytes=5",
        "produce/fetch only, rate 5 /s",
        "a / b",
        "",
    ],
)
def test_messages_without_absolute_paths_stay_as_they_are(message: str) -> None:
    assert wire_message(message) == message


def test_the_encoded_error_carries_the_redacted_message() -> None:
    err = StorageError("t-0: cannot append: [Errno 28] cannot write /srv/data/t-0/00000000000000000000.log: full")
    reply = orjson.loads(error_reply(7, err))
    assert reply["error"]["message"] == "t-0: cannot append: [Errno 28] cannot write t-0/00000000000000000000.log: full"
    assert "/srv" in err.message  # the exception (and so the log) keeps the whole path


def test_remote_status_has_no_pids_and_local_status_has(tmp_path: Path) -> None:
    with StatusTable.create(tmp_path / "status.shm", slots=2, node_id=3, supervisor_pid=4242) as table:
        table.write_control(
            0, ControlBlock(state=SlotState.SERVING, role=Role.LEADER, partition=0, worker_pid=4343, topic="t")
        )
        local = table_status(table)
        remote = table_status(table, local=False)
    assert local["supervisor_pid"] == 4242 and local["partitions"][0]["pid"] == 4343
    assert "supervisor_pid" not in remote and "pid" not in remote["partitions"][0]
    assert b"4242" not in orjson.dumps(remote) and b"4343" not in orjson.dumps(remote)
    assert remote["partitions"][0]["state"] == "serving" and "supervisor_alive" in remote
