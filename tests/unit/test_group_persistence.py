"""Group membership that survives a coordinator move (issue 20): the group metadata record.

Group (appliance/groups/group.py): ``snapshot`` / ``restore`` round trips, a rebalance in
progress is not saved, restored members get a full session from the restore.

The coordinator (appliance/groups/coordinator.py, apis.py) on the fake node of
test_groups_apis.py: a completed rebalance writes the record to ``__consumer_offsets``;
when the group's partition moves away and back (a new leader epoch), the node loads the
record with the offsets and the members go on with their generation: heartbeats,
syncs and commits are accepted, no rebalance. delete_group writes its tombstone.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from appliance.groups.group import Group, GroupState
from ipc.errors import RebalanceInProgressError
from ipc.protocol import Reply
from ipc.records import decode_batches, encode_batch
from tests.unit.test_group_logic import FakeClock, Waiter, assignment, join, pair, solo
from tests.unit.test_groups_apis import Cluster, Sent, code, move_group, written

# =========================================================================== pure: the group


def test_snapshot_and_restore_keep_generation_members_and_assignments() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    a, b = pair(g, instance=None)
    before = {m: assignment(g, m) for m in (a, b)}
    snap = g.snapshot()
    assert snap is not None and snap["generation"] == 2
    restored = Group.restore("g", FakeClock(5000.0), orjson.loads(orjson.dumps(snap)))
    assert restored.state is GroupState.STABLE and restored.generation == 2
    assert restored.protocol == g.protocol and restored.leader == g.leader
    assert {m: assignment(restored, m) for m in (a, b)} == before
    restored.heartbeat(a, 2)  # no rebalance: the same generation goes on
    restored.check_commit(b, 2)
    assert restored.snapshot() == snap


def test_restored_members_get_a_full_session_from_the_restore() -> None:
    g = Group("g", FakeClock())
    a = solo(g, session_ms=10_000)
    snap = g.snapshot()
    assert snap is not None
    clock = FakeClock(9000.0)  # long after the member's last heartbeat at the old coordinator
    restored = Group.restore("g", clock, snap)
    clock.advance(9.9)
    assert restored.tick(lambda ts: {"t": 4}) == [] and a in restored.members
    clock.advance(0.2)
    restored.tick(lambda ts: {"t": 4})
    assert a not in restored.members and restored.state is GroupState.EMPTY


def test_a_rebalance_in_progress_is_not_saved_and_static_members_are_kept() -> None:
    g = Group("g", FakeClock())
    a = solo(g, instance="i-1")
    assert join(g, Waiter("new"), client="b") == {}  # a rebalance waits for a
    assert g.state is GroupState.PREPARING_REBALANCE and g.snapshot() is None
    g2 = Group("h", FakeClock())
    solo(g2, instance="i-1")
    restored = Group.restore("h", FakeClock(), g2.snapshot() or {})
    assert restored.static == {"i-1": next(iter(restored.members))}
    with pytest.raises(RebalanceInProgressError):
        g.heartbeat(a, 1)


def test_an_empty_group_restores_empty_with_its_generation() -> None:
    g = Group("g", FakeClock())
    a = solo(g)
    g.leave(a, lambda ts: {"t": 4})
    snap = g.snapshot()
    assert snap is not None and snap["members"] == [] and snap["generation"] == 2
    restored = Group.restore("g", FakeClock(), snap)
    assert restored.state is GroupState.EMPTY and restored.generation == 2


@pytest.mark.parametrize("bad", [{}, {"generation": "x", "protocol": "", "leader": "", "members": []}, {"members": 1}])
def test_a_malformed_snapshot_raises(bad: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        Group.restore("g", FakeClock(), bad)


# =========================================================================== the coordinator


@pytest.fixture
def loaded(tmp_path: Any) -> Any:
    c = Cluster(tmp_path)
    c.load_offsets()
    yield c
    c.node.close()


def ack_metadata(c: Cluster) -> list[Sent]:
    """The worker acknowledges every write of a metadata record alone; returns them."""
    got = c.metadata_writes()
    for ch, sent in got:
        c.worker_answers(ch, sent)
    return [s for _, s in got]


def reload_group(c: Cluster, group: str, records: list[Sent]) -> None:
    """The group's partition moves to node 7 and back here at a newer leader epoch; the
    leader worker answers the load with the batches written before."""
    move_group(c, group, leader=7)
    c.api.tick(c.node.now)
    assert code(c.call("heartbeat", group=group, member_id="x", generation=1)[1]) == "NOT_COORDINATOR"
    move_group(c, group, leader=0)
    c.api.tick(c.node.now)
    assert code(c.call("heartbeat", group=group, member_id="x", generation=1)[1]) == "COORDINATOR_LOAD_IN_PROGRESS"
    c.api.tick(c.node.now)  # the store asks the worker for the partition's records
    p = c.api.groups.store.partition_for(group)
    loads = [(ch, s) for ch, s in c.pool.requests("fetch") if s.fields["partition"] == p and s.cid not in c.answered]
    assert len(loads) == 1
    ch, sent = loads[0]
    frames = [bytes(s.frames[0]) for s in records]
    # one batch after the other, as the log holds them: renumber their base offsets
    renumbered = []
    offset = 0
    for f in frames:
        (batch,) = decode_batches(f)
        renumbered.append(encode_batch(batch.values, batch.keys, base_offset=offset))
        offset += len(batch.values)
    c.answered.add(sent.cid)
    ch.inbox.append(
        Reply(
            sent.cid,
            {"high_watermark": offset, "log_end_offset": offset, "log_start_offset": 0},
            [b"".join(renumbered)],
            None,
        )
    )
    c.api.on_events({ch.sock: 1})


def test_a_completed_rebalance_is_written_and_restored_after_a_move(loaded: Cluster) -> None:
    a = loaded.ok("join_group", group="g", member_id="", client_id="a", topics=["t"])
    (first,) = ack_metadata(loaded)
    ((key, value),) = written(first)
    assert key == ["g"] and value["generation"] == 1 and value["members"][0]["member_id"] == a["member_id"]

    cid_b, parked = loaded.join(client_id="b")
    assert parked is None
    cid_a, ra = loaded.join(member_id=a["member_id"], client_id="a")
    rb = loaded.reply(cid_b)
    assert ra is not None and rb is not None and ra.fields["generation"] == 2
    (second,) = ack_metadata(loaded)
    assert written(second)[0][1]["generation"] == 2
    sa = loaded.ok("sync_group", group="g", member_id=a["member_id"], generation=2)["assignment"]
    sb = loaded.ok("sync_group", group="g", member_id=rb.fields["member_id"], generation=2)["assignment"]

    reload_group(loaded, "g", [first, second])
    # the members go on at generation 2 with the same assignments: no rebalance
    assert loaded.ok("heartbeat", group="g", member_id=a["member_id"], generation=2) == {}
    assert loaded.ok("heartbeat", group="g", member_id=rb.fields["member_id"], generation=2) == {}
    assert loaded.ok("sync_group", group="g", member_id=a["member_id"], generation=2)["assignment"] == sa
    assert loaded.ok("sync_group", group="g", member_id=rb.fields["member_id"], generation=2)["assignment"] == sb
    d = loaded.ok("describe_group", group="g")
    assert d["state"] == "stable" and d["generation"] == 2 and len(d["members"]) == 2
    cid = loaded.call(
        "offset_commit",
        group="g",
        member_id=a["member_id"],
        generation=2,
        offsets=[{"topic": "t", "partition": 0, "offset": 3}],
    )[0]
    assert loaded.reply(cid) is None and len(loaded.commits()) == 1  # accepted: written
    assert loaded.metadata_writes() == []  # nothing changed: nothing rewritten


def test_an_unwritten_generation_is_refused_after_a_move(loaded: Cluster) -> None:
    """The write of generation 1 was never acknowledged: the new coordinator does not know
    the member, which joins again (a rebalance, as without the record)."""
    a = loaded.ok("join_group", group="g", member_id="", client_id="a", topics=["t"])
    assert len(loaded.metadata_writes()) == 1  # in flight when the partition moves
    reload_group(loaded, "g", [])
    assert code(loaded.call("heartbeat", group="g", member_id=a["member_id"], generation=1)[1]) == "UNKNOWN_MEMBER_ID"


def test_delete_group_writes_the_metadata_tombstone(loaded: Cluster) -> None:
    a = loaded.ok("join_group", group="g", member_id="", topics=["t"])
    ack_metadata(loaded)
    loaded.ok("leave_group", group="g", member_id=a["member_id"])
    (empty,) = ack_metadata(loaded)
    assert written(empty)[0][1]["members"] == []
    cid, reply = loaded.call("delete_group", group="g")
    assert reply is None
    ((ch, sent),) = loaded.metadata_writes()
    assert written(sent) == [(["g"], None)]
    loaded.worker_answers(ch, sent)
    assert loaded.reply(cid).fields == {"group": "g"}  # type: ignore[union-attr]
    assert "g" not in loaded.api.groups.store.metadata


def test_an_expired_group_that_never_committed_writes_the_metadata_tombstone(loaded: Cluster) -> None:
    a = loaded.ok("join_group", group="g", member_id="", topics=["t"])
    ack_metadata(loaded)
    loaded.ok("leave_group", group="g", member_id=a["member_id"])
    ack_metadata(loaded)  # the emptied group's record
    loaded.node.now += loaded.node.config.offsets_retention_ms / 1000 + 1
    loaded.api.tick(loaded.node.now)
    ((ch, sent),) = loaded.metadata_writes()
    assert written(sent) == [(["g"], None)]
    loaded.worker_answers(ch, sent)
    assert "g" not in loaded.api.groups.store.metadata and "g" not in loaded.api.groups.groups
