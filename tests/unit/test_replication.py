"""Replication (appliance/replication.py): the leader's view of its followers
(``LeaderState``) and the follower's side, what it does with its leader's fetch
replies (``apply_fetch_reply``, at the end).

Driven with explicit clocks and offsets: the leader is node 1 (node epoch 10) with
followers 2 and 3 (node epochs 20 and 30 in the ISR). ``on_fetch`` is a follower's
fetch (its LEO, the node epoch it fetched with, the leader's LEO at that moment);
``advance_high_watermark`` moves the HW over the (maximal) ISR; ``isr_change`` is the
ISR to ask the controller for; ``update_assignment`` is the controller's state arriving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance import replication
from appliance.log.log import Log
from appliance.partition.replica import Replica
from appliance.replication import ALTER_ISR_RETRY_S, RETRY_S, STUCK_RETRY_S, LeaderState, apply_fetch_reply
from ipc.control import RoleCommand
from ipc.errors import NotLeaderError, OffsetOutOfRangeError, SluiceError
from ipc.protocol import Reply
from ipc.records import decode_batches, encode_batch
from ipc.shm import Role

LAG = 10.0  # replica.lag.time.max.ms, in seconds
FULL_ISR = {1: 10, 2: 20, 3: 30}


def leader(
    isr: dict[int, int] | None = None,
    replicas: list[int] | None = None,
    hw: int = 0,
    epoch_start_offset: int = 0,
    now: float = 0.0,
) -> LeaderState:
    return LeaderState(
        node_id=1,
        node_epoch=10,
        replicas=[1, 2, 3] if replicas is None else replicas,
        isr=dict(FULL_ISR if isr is None else isr),
        high_watermark=hw,
        epoch_start_offset=epoch_start_offset,
        now=now,
    )


# ---- the high watermark ------------------------------------------------------------------


def test_hw_is_the_min_leo_over_the_isr() -> None:
    lead = leader()
    lead.on_fetch(2, 20, 50, 100, 1.0)
    lead.on_fetch(3, 30, 40, 100, 1.0)
    assert lead.advance_high_watermark(100) is True
    assert lead.high_watermark == 40


def test_hw_counts_the_leader_too() -> None:
    lead = leader()
    lead.on_fetch(2, 20, 80, 80, 1.0)
    lead.on_fetch(3, 30, 80, 80, 1.0)
    assert lead.advance_high_watermark(70) is True
    assert lead.high_watermark == 70


def test_hw_never_goes_backwards() -> None:
    lead = leader()
    lead.on_fetch(2, 20, 50, 100, 1.0)
    lead.on_fetch(3, 30, 40, 100, 1.0)
    lead.advance_high_watermark(100)
    lead.on_fetch(3, 30, 20, 100, 2.0)  # follower 3 truncated
    assert lead.advance_high_watermark(100) is False
    assert lead.high_watermark == 40
    assert lead.advance_high_watermark(10) is False
    assert lead.high_watermark == 40


def test_an_unknown_follower_leo_holds_the_hw() -> None:
    lead = leader(hw=5)
    lead.on_fetch(2, 20, 50, 100, 1.0)
    assert lead.advance_high_watermark(100) is False  # follower 3 has not fetched yet
    assert lead.high_watermark == 5
    lead.on_fetch(3, 30, 60, 100, 1.5)
    assert lead.advance_high_watermark(100) is True
    assert lead.high_watermark == 50


def test_followers_outside_the_isr_do_not_hold_the_hw() -> None:
    lead = leader(isr={1: 10, 2: 20})
    lead.on_fetch(2, 20, 50, 100, 1.0)
    assert lead.advance_high_watermark(100) is True  # 3 never fetched: not counted
    assert lead.high_watermark == 50
    lead.on_fetch(3, 30, 10, 100, 1.5)
    lead.on_fetch(2, 20, 90, 100, 1.5)
    lead.advance_high_watermark(100)
    assert lead.high_watermark == 90


def test_a_single_replica_leader_commits_its_own_leo() -> None:
    lead = leader(isr={1: 10}, replicas=[1])
    assert lead.advance_high_watermark(30) is True
    assert lead.high_watermark == 30


# ---- shrinking the ISR -------------------------------------------------------------------


def test_a_silent_follower_is_proposed_out_after_the_lag_time() -> None:
    lead = leader()
    for t in (1.0, 5.0, 10.0):
        lead.on_fetch(3, 30, 100, 100, t)
        assert lead.isr_change(100, LAG, t) is None
    lead.on_fetch(3, 30, 100, 100, 10.5)
    assert lead.isr_change(100, LAG, 10.5) == {1: 10, 3: 30}


def test_a_follower_that_fetches_but_never_catches_up_is_proposed_out() -> None:
    lead = leader()
    leo = 100
    for t in range(1, 12):
        lead.on_fetch(2, 20, t, leo, float(t))  # far behind, and the leader keeps growing
        lead.on_fetch(3, 30, leo, leo, float(t))
        leo += 100
    assert lead.isr_change(leo, LAG, 11.0) == {1: 10, 3: 30}


def test_a_follower_keeping_up_with_a_moving_leo_stays_in() -> None:
    # each fetch reaches the leader's LEO as of the previous fetch (Kafka's rule): it was
    # caught up then, even though the leader has written more since
    lead = leader()
    leo, previous = 100, 0
    for t in range(1, 40):
        lead.on_fetch(2, 20, previous, leo, float(t))
        lead.on_fetch(3, 30, leo, leo, float(t))
        previous, leo = leo, leo + 100
        assert lead.isr_change(leo, LAG, float(t)) is None


# ---- growing the ISR ---------------------------------------------------------------------


def test_a_caught_up_follower_is_proposed_in_with_the_node_epoch_it_fetched_with() -> None:
    lead = leader(isr={1: 10, 2: 20}, hw=100)
    lead.on_fetch(2, 20, 120, 120, 1.0)
    lead.on_fetch(3, 31, 99, 120, 1.0)  # below the HW: not yet
    assert lead.isr_change(120, LAG, 1.0) is None
    lead.on_fetch(3, 31, 100, 120, 2.0)
    assert lead.isr_change(120, LAG, 2.0) == {1: 10, 2: 20, 3: 31}


def test_a_follower_must_also_reach_the_leader_epoch_start_offset() -> None:
    lead = leader(isr={1: 10, 2: 20}, hw=100, epoch_start_offset=150)
    lead.on_fetch(2, 20, 200, 200, 1.0)
    lead.on_fetch(3, 30, 120, 200, 1.0)  # past the HW, but not into this leader's epoch
    assert lead.isr_change(200, LAG, 1.0) is None
    lead.on_fetch(3, 30, 150, 200, 2.0)
    assert lead.isr_change(200, LAG, 2.0) == {1: 10, 2: 20, 3: 30}


def test_a_follower_that_never_fetched_is_not_proposed_in() -> None:
    lead = leader(isr={1: 10}, replicas=[1, 2])
    assert lead.isr_change(0, LAG, 1.0) is None


# ---- proposals -----------------------------------------------------------------------------


def test_a_proposal_is_not_repeated_within_the_retry_interval() -> None:
    lead = leader()
    lead.on_fetch(3, 30, 100, 100, 11.0)
    assert lead.isr_change(100, LAG, 11.0) == {1: 10, 3: 30}
    assert lead.isr_change(100, LAG, 11.0 + ALTER_ISR_RETRY_S / 2) is None
    assert lead.isr_change(100, LAG, 11.0 + ALTER_ISR_RETRY_S) == {1: 10, 3: 30}


def test_no_proposal_while_the_isr_is_what_the_rules_call_for() -> None:
    lead = leader()
    lead.on_fetch(2, 20, 100, 100, 1.0)
    lead.on_fetch(3, 30, 100, 100, 1.0)
    assert lead.isr_change(100, LAG, 1.0) is None
    assert lead.pending is None


def test_while_a_growth_is_pending_the_hw_counts_the_new_member() -> None:
    def setup() -> LeaderState:
        lead = leader(isr={1: 10, 2: 20}, hw=100)
        lead.on_fetch(2, 20, 200, 200, 1.0)
        lead.on_fetch(3, 30, 100, 200, 1.0)
        return lead

    lead = setup()
    assert lead.isr_change(200, LAG, 1.0) == {1: 10, 2: 20, 3: 30}
    assert lead.maximal_isr() == {1, 2, 3}
    lead.on_fetch(3, 30, 150, 200, 2.0)
    lead.advance_high_watermark(200)
    assert lead.high_watermark == 150  # the controller may already count node 3 in
    # without the proposal, node 3 would not hold it
    control = setup()
    control.on_fetch(3, 30, 150, 200, 2.0)
    control.advance_high_watermark(200)
    assert control.high_watermark == 200


def test_while_a_shrink_is_pending_the_hw_still_counts_the_old_member() -> None:
    lead = leader()
    lead.on_fetch(3, 30, 100, 200, 1.0)  # node 3 then goes quiet
    lead.on_fetch(2, 20, 200, 200, 11.0)
    assert lead.isr_change(200, LAG, 11.0) == {1: 10, 2: 20}
    lead.advance_high_watermark(200)
    assert lead.high_watermark == 100  # not agreed yet: node 3 still counts
    lead.update_assignment([1, 2, 3], {1: 10, 2: 20}, 11.5)  # the controller agrees
    assert lead.pending is None
    assert lead.advance_high_watermark(200) is True
    assert lead.high_watermark == 200


def test_update_assignment_clears_the_pending_proposal_once_the_isr_matches() -> None:
    lead = leader(isr={1: 10, 2: 20}, hw=100)
    lead.on_fetch(2, 20, 200, 200, 1.0)
    lead.on_fetch(3, 31, 100, 200, 1.0)
    assert lead.isr_change(200, LAG, 1.0) == {1: 10, 2: 20, 3: 31}
    lead.update_assignment([1, 2, 3], {1: 10, 2: 20}, 1.2)  # some other change: not the answer yet
    assert lead.pending == {1: 10, 2: 20, 3: 31}
    assert lead.maximal_isr() == {1, 2, 3}
    lead.update_assignment([1, 2, 3], {1: 10, 2: 20, 3: 31}, 1.5)
    assert lead.pending is None
    assert lead.isr == {1: 10, 2: 20, 3: 31}
    assert lead.isr_change(200, LAG, 1.5) is None


def test_update_assignment_follows_the_replicas() -> None:
    lead = leader(now=0.0)
    lead.update_assignment([1, 2, 4], {1: 10, 2: 20}, 5.0)
    assert set(lead.followers) == {2, 4}
    assert lead.followers[4].last_caught_up == 5.0
    assert lead.followers[4].leo == -1
    lead.on_fetch(3, 30, 100, 100, 6.0)  # no longer a replica: ignored
    assert 3 not in lead.followers


@pytest.mark.parametrize("answered", [False, True])
def test_a_proposed_follower_that_dies_does_not_hold_the_hw_forever(answered: bool) -> None:
    # Node 3 caught up and was proposed in, then died before the controller acted. The
    # controller leaves it out (not alive; or its node epoch is stale), so its ISR is
    # unchanged: Controller.alter_isr writes nothing and no new assignment reaches the
    # leader (``answered`` covers a backend that does send one). Node 3 is not in the
    # ISR and never fetches again: once it has been silent past the lag time it must
    # stop holding the HW, or the partition commits nothing more until it comes back.
    lead = leader(isr={1: 10, 2: 20}, hw=100)
    lead.on_fetch(2, 20, 100, 100, 1.0)
    lead.on_fetch(3, 30, 100, 100, 1.0)
    assert lead.isr_change(100, LAG, 1.0) == {1: 10, 2: 20, 3: 30}
    if answered:
        lead.update_assignment([1, 2, 3], {1: 10, 2: 20}, 1.5)
    for t in range(2, 60):
        lead.on_fetch(2, 20, 300, 300, float(t))
        lead.isr_change(300, LAG, float(t))
        lead.advance_high_watermark(300)
    assert lead.high_watermark == 300


# ---- the follower's side: apply_fetch_reply ------------------------------------------------
# A follower replica of t-0 over a real Log in tmp_path; the leader's replies are built
# as the leader sends them (batches stamped with their offsets and leader epochs).

LEADER = "tcp://leader:1"


def follower(tmp_path: Path) -> Replica:
    replica = Replica("t", 0, 2, Log.open(str(tmp_path / "t-0")))
    replica.take_role(RoleCommand(Role.FOLLOWER, 2, LEADER), hw=0, now=0.0)
    return replica


def stamped(base_offset: int, epoch: int, *values: bytes, **kw: Any) -> bytes:
    return encode_batch(list(values), base_offset=base_offset, leader_epoch=epoch, **kw)


def data_reply(*batches: bytes, hw: int = 0) -> Reply:
    return Reply(1, {"high_watermark": hw, "log_start_offset": 0}, [b"".join(batches)] if batches else [], None)


def apply(replica: Replica, reply: Reply) -> tuple[float | None, int]:
    """apply_fetch_reply's answer and how often it said records arrived."""
    appended: list[int] = []
    wait = apply_fetch_reply(replica, reply, LEADER, lambda: appended.append(1))
    return wait, len(appended)


def offsets_and_values(replica: Replica) -> list[tuple[int, bytes | None]]:
    return [
        (o, v)
        for b in decode_batches(replica.log.read(replica.log.log_start_offset))
        for o, v in zip(b.offsets, b.values, strict=True)
    ]


def test_the_follower_appends_the_leaders_batches_and_takes_its_hw(tmp_path: Path) -> None:
    r = follower(tmp_path)
    idem = {"producer_id": 7, "producer_epoch": 0, "base_sequence": 0}
    assert apply(r, data_reply(stamped(0, 1, b"a", b"b", **idem), stamped(2, 2, b"c"), hw=2)) == (None, 1)
    assert offsets_and_values(r) == [(0, b"a"), (1, b"b"), (2, b"c")]
    assert r.follower_hw == 2 and r.high_watermark == 2
    assert r.log.leader_epochs is not None and r.log.leader_epochs.latest_epoch == 2
    entry = r.producers.get(7)
    assert entry is not None and entry.last_offset == 1  # the producer state follows the log


def test_the_follower_hw_is_capped_at_its_log_end(tmp_path: Path) -> None:
    r = follower(tmp_path)
    apply(r, data_reply(stamped(0, 1, b"a"), hw=10))
    assert r.follower_hw == 10 and r.high_watermark == 1


def test_batches_the_follower_has_already_are_skipped(tmp_path: Path) -> None:
    r = follower(tmp_path)
    apply(r, data_reply(stamped(0, 1, b"a")))
    # a reply crossing a reconnect repeats offset 0
    assert apply(r, data_reply(stamped(0, 1, b"a"), stamped(1, 1, b"b"), hw=2)) == (None, 1)
    assert offsets_and_values(r) == [(0, b"a"), (1, b"b")]


def test_a_reply_is_applied_within_its_time_budget_and_the_rest_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower of an fsync=always topic catching up on many small batches stops
    appending a reply once APPLY_BUDGET_S is spent (here: at once, so one batch per
    reply); its next fetch, from its new log end offset, gets the rest."""
    monkeypatch.setattr(replication, "APPLY_BUDGET_S", 0.0)
    r = follower(tmp_path)
    batches = [stamped(i, 1, b"v%d" % i) for i in range(4)]
    for n in range(1, 5):
        sent = batches[r.log.log_end_offset :]  # what the leader answers the fetch at the follower's LEO
        assert apply(r, data_reply(*sent, hw=4)) == (None, 1)
        assert r.log.log_end_offset == n and r.high_watermark == n  # capped at its log end
    assert offsets_and_values(r) == [(i, b"v%d" % i) for i in range(4)]


def test_an_empty_reply_only_moves_the_hw(tmp_path: Path) -> None:
    r = follower(tmp_path)
    apply(r, data_reply(stamped(0, 1, b"a")))
    assert apply(r, data_reply(hw=1)) == (None, 0)
    assert r.follower_hw == 1


def test_a_diverging_reply_truncates_to_where_the_epoch_ends_here(tmp_path: Path) -> None:
    r = follower(tmp_path)
    idem = {"producer_id": 7, "producer_epoch": 0, "base_sequence": 0}
    apply(r, data_reply(stamped(0, 1, b"a", b"b"), stamped(2, 2, b"x", b"y", b"z", **idem), hw=1))
    # the leader never had epoch 2 here: its epoch 1 ended at offset 4 (after other records)
    div = Reply(1, {"diverging": {"epoch": 1, "end_offset": 4}, "high_watermark": 1}, [], None)
    assert apply(r, div) == (None, 0)
    assert r.log.log_end_offset == 2  # where our own epoch 1 ends
    assert r.log.leader_epochs is not None and r.log.leader_epochs.latest_epoch == 1
    assert r.producers.get(7) is None  # rebuilt: its batch is gone
    assert r.follower_hw == 1  # a divergence does not move the hw


def test_a_diverging_reply_that_changes_nothing_waits_before_the_next_fetch(tmp_path: Path) -> None:
    r = follower(tmp_path)
    apply(r, data_reply(stamped(0, 1, b"a", b"b")))
    div = Reply(1, {"diverging": {"epoch": 1, "end_offset": 5}}, [], None)
    assert apply(r, div) == (STUCK_RETRY_S, 0)
    assert r.log.log_end_offset == 2


def test_behind_the_leaders_log_start_the_follower_starts_over_there(tmp_path: Path) -> None:
    r = follower(tmp_path)
    apply(r, data_reply(stamped(0, 1, b"a", b"b")))
    gone = Reply(1, {"log_start_offset": 50}, [], OffsetOutOfRangeError("offset 2 is outside the log [50, 80]"))
    assert apply(r, gone) == (None, 0)
    assert (r.log.log_start_offset, r.log.log_end_offset) == (50, 50)


def test_out_of_range_above_the_leaders_log_start_is_retried(tmp_path: Path) -> None:
    r = follower(tmp_path)
    apply(r, data_reply(stamped(0, 1, b"a", b"b")))
    err = Reply(1, {"log_start_offset": 1}, [], OffsetOutOfRangeError("offset 2 is outside the log [1, 1]"))
    assert apply(r, err) == (RETRY_S, 0)
    assert r.log.log_end_offset == 2


@pytest.mark.parametrize("error", [NotLeaderError("t-0: not the leader"), SluiceError("boom")])
def test_an_error_reply_is_retried_soon(tmp_path: Path, error: SluiceError) -> None:
    r = follower(tmp_path)
    assert apply(r, Reply(1, {}, [], error)) == (RETRY_S, 0)


def test_a_damaged_transfer_is_not_appended_and_waits(tmp_path: Path) -> None:
    r = follower(tmp_path)
    bad = bytearray(stamped(0, 1, b"a"))
    bad[-1] ^= 0xFF
    assert apply(r, data_reply(bytes(bad), hw=1)) == (STUCK_RETRY_S, 0)
    assert r.log.log_end_offset == 0 and r.follower_hw == 0
