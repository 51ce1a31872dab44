"""DeleteRecords in a partition worker, without sockets: the leader's ``delete_records``
handler (appliance/partition/handlers.py) over a real ``Log``, and a follower taking
the leader's log start offset from its fetch replies (appliance/replication.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.log.config import CleanupPolicy, LogConfig
from appliance.log.log import Log
from appliance.partition import handlers
from appliance.partition.replica import Replica
from ipc.control import RoleCommand
from ipc.errors import InvalidRequestError, NotLeaderError, OffsetOutOfRangeError, PolicyViolationError
from ipc.protocol import Reply
from ipc.shm import Role
from tests.unit.test_partition_handlers import Leader, batch, handlers_request, values_in
from tests.unit.test_replication import LEADER, apply, data_reply, follower, stamped


def delete(p: Leader, offset: int) -> int:
    response = handlers.delete_records(p.replica, p.request("delete_records", offset=offset))
    return int(response.fields["low_watermark"])


def test_the_log_start_moves_and_reads_below_it_fail(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    for i in range(10):
        p.produce(batch(str(i).encode()))
    assert delete(p, 4) == 4
    assert p.log.log_start_offset == 4
    assert p.list_offsets(-2).fields["offset"] == 4  # earliest
    with pytest.raises(OffsetOutOfRangeError):
        p.fetch(3)
    response = p.fetch(4)
    assert response is not None and values_in(response.frames[0])[0] == b"4"


def test_minus_one_means_the_high_watermark_and_lower_offsets_change_nothing(tmp_path: Path) -> None:
    p = Leader(tmp_path, replicas=(1, 2))  # the follower has fetched nothing: HW stays at 0
    p.produce(batch(b"a", b"b", b"c"), acks=1)
    assert p.replica.high_watermark == 0
    assert delete(p, -1) == 0
    with pytest.raises(OffsetOutOfRangeError, match="past the high watermark 0"):
        delete(p, 2)  # in the log, but not committed
    p.fetch(3, replica_id=2, replica_epoch=20, leader_epoch=3)  # the follower caught up: HW 3
    assert delete(p, -1) == 3
    assert delete(p, 1) == 3  # never back
    with pytest.raises(OffsetOutOfRangeError):
        delete(p, 4)


def test_a_follower_refuses_and_bad_offsets_do_not_parse(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="offset"):
        handlers_request("delete_records", 1, (), offset=-2)
    p = Leader(tmp_path)
    p.replica.leading = None
    p.replica.role = Role.FOLLOWER
    with pytest.raises(NotLeaderError):
        delete(p, 0)


def test_a_compacted_topic_refuses(tmp_path: Path) -> None:
    p = Leader(tmp_path, config=LogConfig(cleanup_policy=CleanupPolicy.COMPACT))
    p.produce(batch(b"a", keys=[b"k"]))
    with pytest.raises(PolicyViolationError, match="cleanup.policy=compact"):
        delete(p, 1)
    assert p.log.log_start_offset == 0


def test_a_follower_takes_the_leaders_log_start_up_to_its_own_end(tmp_path: Path) -> None:
    r = follower(tmp_path)
    first = Reply(1, {"high_watermark": 2, "log_start_offset": 5}, [stamped(0, 2, b"a", b"b")], None)
    assert apply(r, first) == (None, 1)
    assert r.log.log_start_offset == 2  # as far as its log reaches
    more = data_reply(stamped(2, 2, b"c", b"d", b"e", b"f"), hw=6)
    more = Reply(1, {**more.fields, "log_start_offset": 5}, more.frames, None)
    apply(r, more)
    assert (r.log.log_start_offset, r.log.log_end_offset) == (5, 6)
    apply(r, Reply(1, {"high_watermark": 6, "log_start_offset": 3}, [], None))
    assert r.log.log_start_offset == 5  # never back
    # it survives a restart, and a follower that becomes leader keeps it
    r.log.close()
    reopened = Replica("t", 0, 2, Log.open(r.log.directory))
    assert reopened.log.log_start_offset == 5
    reopened.take_role(RoleCommand(Role.LEADER, 3, LEADER, replicas=(2,), isr={2: 0}), hw=6, now=0.0)
    assert reopened.log.log_start_offset == 5
    reopened.log.close()
