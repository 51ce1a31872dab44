"""The controller's election rules (appliance/controller.py).

The pure functions are driven with hand-built ``PartitionState``s and live-node maps
(node id -> ``NodeInfo`` with its registration epoch): ``next_state`` (leader stays,
clean election in assignment order, KIP-903 node epochs, no-leader with the ISR kept,
the last ISR member coming back, unclean election, preferred leader, reassignment,
idempotence), ``initial_states`` and ``alter_isr``; a hypothesis run checks the
invariants over random states and live sets.

``Controller`` is driven end to end over a ``LocalCoordinator`` in ``tmp_path``; a
restart is a second ``register`` (or a new coordinator over the same directory), which
gives the node a new registration epoch. ``_Cluster`` adds pretend peers to it so the
multi-node paths (reassignment, unclean election by topic config) run too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.controller import Controller, alter_isr, initial_states, next_state
from appliance.coordinator import NO_LEADER, NodeInfo, PartitionState, StaleStateError, TopicInfo
from appliance.coordinator.local import LocalCoordinator
from ipc.errors import (
    FencedLeaderEpochError,
    InvalidReplicationFactorError,
    NotControllerError,
    NotLeaderError,
    UnknownTopicOrPartitionError,
)


def nodes(epochs: Mapping[int, int]) -> dict[int, NodeInfo]:
    """Live nodes: node id -> its registration epoch."""
    return {n: NodeInfo(n, f"tcp://10.0.0.{n}:9092", e) for n, e in epochs.items()}


def ps(
    leader: int,
    replicas: list[int],
    isr: list[int],
    epochs: Mapping[int, int] | None = None,
    leader_epoch: int = 5,
    target: list[int] | None = None,
) -> PartitionState:
    """A partition state; ISR members entered with node epoch 1 unless ``epochs`` says otherwise."""
    return PartitionState(
        leader=leader,
        leader_epoch=leader_epoch,
        replicas=list(replicas),
        isr=list(isr),
        isr_epochs=dict(epochs) if epochs is not None else {n: 1 for n in isr},
        target_replicas=None if target is None else list(target),
        version=3,
    )


ALL_UP = nodes({1: 1, 2: 1, 3: 1})


# ---- the leader stays ---------------------------------------------------------------------


def test_leader_stays_while_alive_and_in_sync() -> None:
    assert next_state(ps(1, [1, 2, 3], [1, 2, 3]), ALL_UP) is None


def test_non_preferred_leader_stays_while_the_preferred_one_is_out_of_sync() -> None:
    # node 1 is alive but not in the ISR: it cannot take over
    assert next_state(ps(2, [1, 2, 3], [2, 3]), ALL_UP) is None


def test_dead_follower_leaves_the_isr_without_an_election() -> None:
    new = next_state(ps(1, [1, 2, 3], [1, 2, 3]), nodes({1: 1, 3: 1}))
    assert new is not None
    assert new.leader == 1
    assert new.leader_epoch == 5  # same leader: no new epoch
    assert new.isr == [1, 3]
    assert new.isr_epochs == {1: 1, 3: 1}
    assert new.replicas == [1, 2, 3]  # the assignment does not change
    assert new.version == 3  # the compare-and-set token is the one read


# ---- clean election -----------------------------------------------------------------------


def test_dead_leader_is_replaced_by_the_first_in_sync_replica_in_assignment_order() -> None:
    # the ISR lists 3 before 2, but assignment order decides
    state = ps(1, [1, 2, 3], [1, 3, 2])
    new = next_state(state, nodes({2: 1, 3: 1}))
    assert new is not None
    assert new.leader == 2
    assert new.leader_epoch == 6
    assert set(new.isr) == {2, 3}
    assert new.isr_epochs == {2: 1, 3: 1}


def test_dead_leader_skips_an_alive_replica_that_is_not_in_sync() -> None:
    new = next_state(ps(1, [1, 2, 3], [1, 3]), nodes({2: 1, 3: 1}))
    assert new is not None
    assert new.leader == 3
    assert new.leader_epoch == 6
    assert new.isr == [3]


# ---- KIP-903: node epochs -----------------------------------------------------------------


def test_restarted_follower_leaves_the_isr() -> None:
    new = next_state(ps(1, [1, 2, 3], [1, 2, 3]), nodes({1: 1, 2: 2, 3: 1}))
    assert new is not None
    assert new.leader == 1
    assert new.leader_epoch == 5
    assert new.isr == [1, 3]
    assert 2 not in new.isr_epochs


def test_restarted_leader_is_not_reelected_while_another_in_sync_replica_is_alive() -> None:
    # node 1 is the preferred leader and alive again, but with a new registration epoch:
    # it may have lost what it had not flushed, so node 2 leads
    live = nodes({1: 2, 2: 1, 3: 1})
    new = next_state(ps(1, [1, 2, 3], [1, 2, 3]), live)
    assert new is not None
    assert new.leader == 2
    assert new.leader_epoch == 6
    assert new.isr == [2, 3]
    assert 1 not in new.isr_epochs
    # and it stays out (no preferred-leader move back) until the leader asks for it
    assert next_state(new, live) is None


def test_restarted_follower_is_not_elected_when_the_leader_dies() -> None:
    # node 2 comes first in the assignment but restarted; node 3 is in sync
    new = next_state(ps(1, [1, 2, 3], [1, 2, 3]), nodes({2: 2, 3: 1}))
    assert new is not None
    assert new.leader == 3
    assert new.isr == [3]


# ---- no in-sync replica alive -------------------------------------------------------------


def test_no_in_sync_replica_alive_leaves_no_leader_and_keeps_the_isr() -> None:
    state = ps(1, [1, 2, 3], [1, 2], {1: 4, 2: 7})
    new = next_state(state, nodes({3: 1}))  # only the out-of-sync replica is alive
    assert new is not None
    assert new.leader == NO_LEADER
    assert new.leader_epoch == 6
    assert new.isr == [1, 2]  # never emptied: they hold every committed record
    assert new.isr_epochs == {1: 4, 2: 7}


def test_no_node_alive_at_all_leaves_no_leader_and_keeps_the_isr() -> None:
    new = next_state(ps(2, [1, 2, 3], [2]), {})
    assert new is not None
    assert (new.leader, new.leader_epoch, new.isr, new.isr_epochs) == (NO_LEADER, 6, [2], {2: 1})


def test_a_leaderless_partition_stays_so_without_new_epochs() -> None:
    live = nodes({3: 1})
    new = next_state(ps(1, [1, 2, 3], [1, 2]), live)
    assert new is not None
    assert next_state(new, live) is None


def test_last_isr_member_returning_with_a_new_epoch_is_elected() -> None:
    state = ps(NO_LEADER, [1, 2, 3], [1, 2], {1: 1, 2: 1}, leader_epoch=6)
    new = next_state(state, nodes({2: 2, 3: 1}))  # 3 is alive too, but was never in sync
    assert new is not None
    assert new.leader == 2
    assert new.leader_epoch == 7
    assert new.isr == [2]
    assert new.isr_epochs == {2: 2}


def test_returning_isr_members_are_elected_in_assignment_order() -> None:
    state = ps(NO_LEADER, [1, 2, 3], [2, 1], leader_epoch=6)
    new = next_state(state, nodes({1: 2, 2: 2}))
    assert new is not None
    assert (new.leader, new.isr, new.isr_epochs) == (1, [1], {1: 2})


def test_restarted_sole_isr_leader_is_reelected_with_a_new_leader_epoch() -> None:
    # The leader was the only ISR member and restarted before the controller saw it go
    # (a bounced node: the ZooKeeper watch coalesced the two changes, or the local
    # coordinator, whose node is always re-registered before the controller runs). The
    # new incarnation may have lost its unflushed tail and will append different
    # records at those offsets: that is a new leadership and needs a new leader epoch,
    # or followers (and consumers) that fetched the old tail under the same epoch cannot
    # detect the divergence (KIP-101 / KIP-320). The module's rule: the leader stays
    # only while alive *and in sync*; otherwise one is elected and the epoch is bumped.
    live = nodes({1: 2, 2: 1})
    new = next_state(ps(1, [1, 2], [1], {1: 1}), live)
    assert new is not None
    assert new.leader == 1
    assert new.isr == [1]
    assert new.isr_epochs == {1: 2}
    assert new.leader_epoch == 6
    assert next_state(new, live) is None


# ---- unclean election ---------------------------------------------------------------------


def test_out_of_sync_replica_is_not_elected_unless_unclean_is_enabled() -> None:
    state = ps(1, [1, 2, 3], [1], {1: 1})
    live = nodes({2: 1, 3: 1})
    clean = next_state(state, live)
    assert clean is not None
    assert (clean.leader, clean.isr) == (NO_LEADER, [1])
    dirty = next_state(state, live, unclean=True)
    assert dirty is not None
    assert dirty.leader == 2  # the first live replica in assignment order
    assert dirty.leader_epoch == 6
    assert dirty.isr == [2]
    assert dirty.isr_epochs == {2: 1}
    assert next_state(dirty, live, unclean=True) is None


def test_unclean_changes_nothing_while_an_in_sync_replica_is_alive() -> None:
    state = ps(1, [1, 2, 3], [1, 3])
    live = nodes({2: 1, 3: 1})
    assert next_state(state, live, unclean=True) == next_state(state, live)
    new = next_state(state, live, unclean=True)
    assert new is not None
    assert new.leader == 3


def test_unclean_prefers_a_returning_isr_member() -> None:
    state = ps(NO_LEADER, [1, 2, 3], [2], {2: 1})
    new = next_state(state, nodes({1: 1, 2: 2}), unclean=True)
    assert new is not None
    assert (new.leader, new.isr) == (2, [2])


def test_unclean_with_no_replica_alive_leaves_no_leader() -> None:
    new = next_state(ps(1, [1, 2], [1]), nodes({9: 1}), unclean=True)
    assert new is not None
    assert (new.leader, new.isr) == (NO_LEADER, [1])


# ---- preferred leader -----------------------------------------------------------------------


def test_preferred_leader_returns_once_back_in_sync() -> None:
    state = ps(2, [1, 2, 3], [2, 3, 1])  # node 1 caught up and the leader added it back
    new = next_state(state, ALL_UP)
    assert new is not None
    assert new.leader == 1
    assert new.leader_epoch == 6
    assert set(new.isr) == {1, 2, 3}
    assert next_state(new, ALL_UP) is None


def test_preferred_leader_move_can_be_turned_off() -> None:
    assert next_state(ps(2, [1, 2, 3], [2, 3, 1]), ALL_UP, preferred=False) is None


# ---- reassignment ---------------------------------------------------------------------------

FIVE_UP = nodes({1: 1, 2: 1, 3: 1, 4: 1, 5: 1})


def test_reassignment_adds_the_target_replicas() -> None:
    state = ps(1, [1, 2, 3], [1, 2, 3], target=[4, 5])
    new = next_state(state, FIVE_UP)
    assert new is not None
    assert new.replicas == [1, 2, 3, 4, 5]
    assert new.target_replicas == [4, 5]
    assert (new.leader, new.leader_epoch, new.isr) == (1, 5, [1, 2, 3])
    assert next_state(new, FIVE_UP) is None


def test_reassignment_waits_for_every_target_to_be_in_sync() -> None:
    state = ps(1, [1, 2, 3, 4, 5], [1, 2, 3, 4], target=[4, 5])
    assert next_state(state, FIVE_UP) is None


def test_reassignment_completes_when_all_targets_are_in_sync() -> None:
    state = ps(1, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], target=[4, 5])
    new = next_state(state, FIVE_UP)
    assert new is not None
    assert new.replicas == [4, 5]
    assert new.target_replicas is None
    assert new.leader == 4  # the old leader is not in the target: it moves
    assert new.leader_epoch == 6
    assert set(new.isr) == {4, 5}
    assert set(new.isr_epochs) == {4, 5}
    assert next_state(new, FIVE_UP) is None


def test_reassignment_keeps_a_leader_that_is_in_the_target() -> None:
    state = ps(1, [1, 2, 3, 4], [1, 2, 3, 4], target=[3, 1, 4])
    new = next_state(state, FIVE_UP, preferred=False)
    assert new is not None
    assert new.replicas == [3, 1, 4]
    assert (new.leader, new.leader_epoch) == (1, 5)
    assert set(new.isr) == {1, 3, 4}
    # with the preferred-leader rule, the target's first replica takes over
    moved = next_state(state, FIVE_UP)
    assert moved is not None
    assert (moved.leader, moved.leader_epoch) == (3, 6)


def test_reassignment_target_that_restarted_is_not_in_sync() -> None:
    state = ps(1, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], target=[4, 5])
    new = next_state(state, nodes({1: 1, 2: 1, 3: 1, 4: 1, 5: 2}))
    assert new is not None
    assert new.target_replicas == [4, 5]
    assert new.replicas == [1, 2, 3, 4, 5]
    assert new.isr == [1, 2, 3, 4]


# ---- idempotence ----------------------------------------------------------------------------

SCENARIOS = {
    "follower died": (ps(1, [1, 2, 3], [1, 2, 3]), nodes({1: 1, 3: 1}), False),
    "leader died": (ps(1, [1, 2, 3], [1, 2, 3]), nodes({2: 1, 3: 1}), False),
    "leader restarted": (ps(1, [1, 2, 3], [1, 2, 3]), nodes({1: 2, 2: 1, 3: 1}), False),
    "no isr alive": (ps(1, [1, 2, 3], [1]), nodes({2: 1}), False),
    "last isr member back": (ps(NO_LEADER, [1, 2, 3], [1]), nodes({1: 2}), False),
    "unclean": (ps(1, [1, 2, 3], [1]), nodes({3: 1}), True),
    "preferred back": (ps(2, [1, 2, 3], [2, 1]), ALL_UP, False),
    "reassign starts": (ps(1, [1, 2], [1, 2], target=[3]), ALL_UP, False),
    "reassign done": (ps(1, [1, 2, 3], [1, 2, 3], target=[3]), ALL_UP, False),
    # a reassignment onto the last ISR member, which comes back with a new node epoch:
    # electing it puts every target in sync, so the same pass completes the reassignment
    "reassign onto the returning member": (ps(NO_LEADER, [1, 2], [1], target=[1]), nodes({1: 2}), False),
    "reassign onto the unclean leader": (ps(1, [1, 2], [1], target=[2]), nodes({2: 1}), True),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_next_state_applied_twice_changes_nothing(name: str) -> None:
    state, live, unclean = SCENARIOS[name]
    new = next_state(state, live, unclean)
    assert new is not None
    assert next_state(new, live, unclean) is None


# ---- invariants over random states ---------------------------------------------------------

NODE_IDS = [1, 2, 3, 4, 5]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[PartitionState, dict[int, NodeInfo], bool, bool]:
    """A well-formed state (non-empty ISR within the replicas; leader in it or none) and
    any live set, with node epochs that may or may not match the ISR's."""
    replicas = draw(st.lists(st.sampled_from(NODE_IDS), min_size=1, max_size=5, unique=True))
    isr = draw(st.lists(st.sampled_from(replicas), min_size=1, max_size=len(replicas), unique=True))
    epochs = {n: draw(st.integers(1, 3)) for n in isr}
    leader = draw(st.sampled_from([*isr, NO_LEADER]))
    target = draw(st.none() | st.lists(st.sampled_from(NODE_IDS), min_size=1, max_size=5, unique=True))
    live = nodes(draw(st.dictionaries(st.sampled_from(NODE_IDS), st.integers(1, 3))))
    state = PartitionState(
        leader=leader,
        leader_epoch=draw(st.integers(0, 10)),
        replicas=replicas,
        isr=isr,
        isr_epochs=epochs,
        target_replicas=target,
    )
    return state, live, draw(st.booleans()), draw(st.booleans())


def _check_invariants(before: PartitionState, after: PartitionState) -> None:
    assert after.isr, "the ISR is never emptied"
    if after.leader != NO_LEADER:
        assert after.leader in after.isr
        assert after.leader in after.replicas
    assert after.leader_epoch >= before.leader_epoch
    if after.leader != before.leader:
        assert after.leader_epoch > before.leader_epoch
    elif after.leader != NO_LEADER and after.isr_epochs[after.leader] != before.isr_epochs.get(after.leader):
        assert after.leader_epoch > before.leader_epoch, "a restarted leader re-elected leads in a new epoch"
    assert set(after.isr_epochs) == set(after.isr)


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_next_state_invariants(
    scenario: tuple[PartitionState, dict[int, NodeInfo], bool, bool],
) -> None:
    state, live, unclean, preferred = scenario
    new = next_state(state, live, unclean, preferred)
    after = state if new is None else new
    _check_invariants(state, after)
    if new is not None and new.leader != NO_LEADER:
        # a new leader is alive, and in the ISR with the node epoch it has now
        assert new.leader in live
        assert new.isr_epochs[new.leader] == live[new.leader].epoch


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_next_state_result_is_a_fixed_point(
    scenario: tuple[PartitionState, dict[int, NodeInfo], bool, bool],
) -> None:
    """``next_state`` returns "the state the rules call for": a second pass changes nothing."""
    state, live, unclean, preferred = scenario
    new = next_state(state, live, unclean, preferred)
    if new is not None:
        assert next_state(new, live, unclean, preferred) is None


# ---- initial_states -------------------------------------------------------------------------


def test_initial_states_assign_round_robin_and_rotate_the_leader() -> None:
    live = nodes({1: 4, 2: 5, 3: 6})
    states = initial_states(range(4), 2, live)
    assert [s.replicas for s in states] == [[1, 2], [2, 3], [3, 1], [1, 2]]
    for s in states:
        assert s.leader == s.replicas[0]
        assert s.leader_epoch == 0
        assert s.isr == s.replicas
        assert s.isr_epochs == {n: live[n].epoch for n in s.replicas}
        assert s.target_replicas is None
        assert next_state(s, live) is None  # a fresh state already is what the rules call for


def test_initial_states_use_sorted_ids_and_the_start_offset() -> None:
    live = nodes({9: 1, 3: 1, 7: 1})
    assert [s.replicas for s in initial_states(range(3), 1, live, start=1)] == [[7], [9], [3]]
    # added partitions continue the rotation from their own index
    assert [s.replicas for s in initial_states(range(4, 6), 3, live)] == [[7, 9, 3], [9, 3, 7]]


def test_initial_states_reject_a_factor_above_the_live_nodes() -> None:
    live = nodes({1: 1, 2: 1})
    assert len(initial_states(range(1), 2, live)) == 1
    with pytest.raises(InvalidReplicationFactorError):
        initial_states(range(1), 3, live)
    with pytest.raises(InvalidReplicationFactorError):
        initial_states(range(1), 1, {})


# ---- alter_isr ----------------------------------------------------------------------------

LEADER_1 = ps(1, [1, 2, 3], [1, 2], {1: 1, 2: 1})


def test_alter_isr_rejects_a_node_that_is_not_the_leader() -> None:
    with pytest.raises(NotLeaderError):
        alter_isr(LEADER_1, 2, 5, {1: 1, 2: 1}, ALL_UP)


@pytest.mark.parametrize("epoch", [4, 6])
def test_alter_isr_rejects_a_stale_leader_epoch(epoch: int) -> None:
    with pytest.raises(FencedLeaderEpochError):
        alter_isr(LEADER_1, 1, epoch, {1: 1, 2: 1, 3: 1}, ALL_UP)


def test_alter_isr_adds_a_follower_whose_node_epoch_is_current() -> None:
    new = alter_isr(LEADER_1, 1, 5, {1: 1, 2: 1, 3: 1}, ALL_UP)
    assert new.isr == [1, 2, 3]
    assert new.isr_epochs == {1: 1, 2: 1, 3: 1}
    assert (new.leader, new.leader_epoch, new.replicas, new.version) == (1, 5, [1, 2, 3], 3)


def test_alter_isr_does_not_add_a_follower_that_fetched_with_an_old_node_epoch() -> None:
    new = alter_isr(LEADER_1, 1, 5, {1: 1, 2: 1, 3: 1}, nodes({1: 1, 2: 1, 3: 2}))
    assert new.isr == [1, 2]
    assert 3 not in new.isr_epochs


def test_alter_isr_does_not_add_a_dead_follower() -> None:
    new = alter_isr(LEADER_1, 1, 5, {1: 1, 2: 1, 3: 1}, nodes({1: 1, 2: 1}))
    assert new.isr == [1, 2]


def test_alter_isr_drops_a_member_that_restarted() -> None:
    new = alter_isr(LEADER_1, 1, 5, {1: 1, 2: 1}, nodes({1: 1, 2: 2, 3: 1}))
    assert new.isr == [1]
    assert new.isr_epochs == {1: 1}


def test_alter_isr_shrinks() -> None:
    new = alter_isr(LEADER_1, 1, 5, {1: 1}, ALL_UP)
    assert new.isr == [1]
    assert new.isr_epochs == {1: 1}


@pytest.mark.parametrize("asked", [{2: 1}, {}])
def test_alter_isr_always_keeps_the_leader(asked: dict[int, int]) -> None:
    new = alter_isr(LEADER_1, 1, 5, asked, ALL_UP)
    assert 1 in new.isr
    assert new.isr_epochs[1] == 1
    assert set(new.isr) == {1} | set(asked)


def test_alter_isr_ignores_nodes_outside_the_assignment() -> None:
    new = alter_isr(LEADER_1, 1, 5, {1: 1, 2: 1, 9: 1}, nodes({1: 1, 2: 1, 3: 1, 9: 1}))
    assert new.isr == [1, 2]


def test_alter_isr_accepts_a_reassignment_target() -> None:
    state = ps(1, [1, 2], [1, 2], target=[2, 4])
    new = alter_isr(state, 1, 5, {1: 1, 2: 1, 4: 1}, FIVE_UP)
    assert new.isr == [1, 2, 4]
    assert new.isr_epochs[4] == 1


# ---- Controller over a LocalCoordinator ----------------------------------------------------


class _Cluster(LocalCoordinator):
    """The local coordinator plus pretend peers (node 1 is this one, the controller)."""

    def __init__(self, data_dir: str) -> None:
        super().__init__(data_dir, 1)
        self.peers: dict[int, NodeInfo] = {}
        self.stale_writes = 0  # compare-and-set losses to simulate

    def nodes(self) -> dict[int, NodeInfo]:
        return {**super().nodes(), **self.peers}

    def set_partition_state(self, topic: str, partition: int, state: PartitionState) -> PartitionState:
        if self.stale_writes:
            self.stale_writes -= 1
            raise StaleStateError("someone else wrote first")
        return super().set_partition_state(topic, partition, state)


def _start(coord: LocalCoordinator) -> int:
    coord.start(lambda: None)
    return coord.register("tcp://127.0.0.1:9092")


def _topic(name: str, states: list[PartitionState], config: dict[str, object] | None = None) -> TopicInfo:
    rf = len(states[0].replicas)
    return TopicInfo(name, states, rf, dict(config or {}), 0)


@pytest.fixture
def local(tmp_path: Path) -> tuple[LocalCoordinator, Controller]:
    coord = LocalCoordinator(str(tmp_path), 1)
    _start(coord)
    coord.create_topic(_topic("t", initial_states(range(3), 1, coord.nodes())))
    return coord, Controller(coord, {})


def test_reconcile_changes_nothing_on_a_fresh_topic(local: tuple[LocalCoordinator, Controller]) -> None:
    coord, ctl = local
    before = coord.topics()["t"].partitions
    assert ctl.reconcile() == 0
    assert coord.topics()["t"].partitions == before


def test_reconcile_after_a_restart_readmits_the_node_with_its_new_epoch(
    local: tuple[LocalCoordinator, Controller],
) -> None:
    coord, ctl = local
    first = coord.nodes()[1].epoch
    second = coord.register("tcp://127.0.0.1:9092")
    assert second != first
    assert ctl.reconcile() == 3
    for s in coord.topics()["t"].partitions:
        assert (s.leader, s.isr, s.isr_epochs) == (1, [1], {1: second})
        assert s.version == 1
    assert ctl.reconcile() == 0


def test_reconcile_after_a_restart_bumps_the_leader_epoch(local: tuple[LocalCoordinator, Controller]) -> None:
    # see test_restarted_sole_isr_leader_is_reelected_with_a_new_leader_epoch
    coord, ctl = local
    coord.register("tcp://127.0.0.1:9092")
    ctl.reconcile()
    assert [s.leader_epoch for s in coord.topics()["t"].partitions] == [1, 1, 1]


def test_reconcile_over_a_reopened_coordinator(tmp_path: Path, local: tuple[LocalCoordinator, Controller]) -> None:
    coord, ctl = local
    first = coord.nodes()[1].epoch
    coord.close()
    assert ctl.reconcile() == 0  # not the controller while deregistered
    again = LocalCoordinator(str(tmp_path), 1)
    epoch = _start(again)  # a process restart: the epoch counter is persisted
    assert epoch == first + 1
    assert Controller(again, {}).reconcile() == 3
    assert all(s.isr_epochs == {1: epoch} for s in again.topics()["t"].partitions)


def test_controller_alter_isr(local: tuple[LocalCoordinator, Controller]) -> None:
    coord, ctl = local
    epoch = coord.nodes()[1].epoch
    state = coord.topics()["t"].partitions[0]
    assert ctl.alter_isr("t", 0, 1, 0, {1: epoch}) == state  # nothing to change: no write
    assert coord.topics()["t"].partitions[0].version == state.version
    with pytest.raises(NotLeaderError):
        ctl.alter_isr("t", 0, 2, 0, {1: epoch})
    with pytest.raises(FencedLeaderEpochError):
        ctl.alter_isr("t", 0, 1, 7, {1: epoch})
    with pytest.raises(UnknownTopicOrPartitionError):
        ctl.alter_isr("nope", 0, 1, 0, {1: epoch})
    with pytest.raises(UnknownTopicOrPartitionError):
        ctl.alter_isr("t", 3, 1, 0, {1: epoch})
    coord.close()
    with pytest.raises(NotControllerError):
        ctl.alter_isr("t", 0, 1, 0, {1: epoch})


@pytest.fixture
def cluster(tmp_path: Path) -> tuple[_Cluster, Controller]:
    coord = _Cluster(str(tmp_path))
    _start(coord)
    coord.peers = nodes({2: 1, 3: 1})
    return coord, Controller(coord, {})


def test_controller_reassign_end_to_end(cluster: tuple[_Cluster, Controller]) -> None:
    coord, ctl = cluster
    e1 = coord.nodes()[1].epoch
    coord.create_topic(_topic("t", initial_states(range(1), 2, coord.nodes())))  # replicas [1, 2]
    stored = ctl.reassign("t", 0, [2, 3])
    assert stored.target_replicas == [2, 3]
    s = coord.topics()["t"].partitions[0]
    assert (s.replicas, s.target_replicas, s.leader, s.isr) == ([1, 2, 3], [2, 3], 1, [1, 2])
    # node 3 catches up; the leader asks for it, and the same write completes the move
    ctl.alter_isr("t", 0, 1, 0, {1: e1, 2: 1, 3: 1})
    s = coord.topics()["t"].partitions[0]
    assert s.replicas == [2, 3]
    assert s.target_replicas is None
    assert (s.leader, s.leader_epoch) == (2, 1)
    assert set(s.isr) == {2, 3}
    assert ctl.reconcile() == 0
    # the old leader's epoch is fenced now
    with pytest.raises(FencedLeaderEpochError):
        ctl.alter_isr("t", 0, 2, 0, {2: 1, 3: 1})
    with pytest.raises(NotLeaderError):
        ctl.alter_isr("t", 0, 1, 1, {1: e1})


@pytest.mark.parametrize("replicas", [[], [2, 2], [2, 9]])
def test_controller_reassign_rejects_bad_replica_lists(
    cluster: tuple[_Cluster, Controller], replicas: list[int]
) -> None:
    coord, ctl = cluster
    coord.create_topic(_topic("t", initial_states(range(1), 2, coord.nodes())))
    before = coord.topics()["t"].partitions[0]
    with pytest.raises(InvalidReplicationFactorError):
        ctl.reassign("t", 0, replicas)
    assert coord.topics()["t"].partitions[0] == before


def test_controller_elects_after_a_peer_dies_and_skips_a_lost_compare_and_set(
    cluster: tuple[_Cluster, Controller],
) -> None:
    coord, ctl = cluster
    coord.create_topic(_topic("t", [ps(2, [2, 3], [2, 3], leader_epoch=0)]))
    del coord.peers[2]
    coord.stale_writes = 1
    assert ctl.reconcile() == 0  # lost the race: nothing written, the next wake retries
    assert coord.topics()["t"].partitions[0].leader == 2
    assert ctl.reconcile() == 1
    s = coord.topics()["t"].partitions[0]
    assert (s.leader, s.leader_epoch, s.isr) == (3, 1, [3])


def test_controller_unclean_election_follows_the_topic_config(tmp_path: Path) -> None:
    coord = _Cluster(str(tmp_path))
    _start(coord)
    coord.peers = nodes({2: 1, 3: 1})
    only_2 = [ps(2, [2, 3], [2], leader_epoch=0)]
    coord.create_topic(_topic("clean", only_2))
    coord.create_topic(_topic("dirty", only_2, {"unclean.leader.election.enable": "true"}))
    coord.create_topic(_topic("garbled", only_2, {"unclean.leader.election.enable": "maybe"}))
    coord.create_topic(_topic("opted-out", only_2, {"unclean.leader.election.enable": "false"}))
    del coord.peers[2]
    assert Controller(coord, {}).reconcile() == 4
    leaders = {name: t.partitions[0].leader for name, t in coord.topics().items()}
    assert leaders == {"clean": NO_LEADER, "dirty": 3, "garbled": NO_LEADER, "opted-out": NO_LEADER}
    assert coord.topics()["clean"].partitions[0].isr == [2]
    assert coord.topics()["dirty"].partitions[0].isr == [3]


def test_controller_unclean_election_from_the_node_defaults(tmp_path: Path) -> None:
    coord = _Cluster(str(tmp_path))
    _start(coord)
    coord.peers = nodes({2: 1, 3: 1})
    only_2 = [ps(2, [2, 3], [2], leader_epoch=0)]
    coord.create_topic(_topic("default", only_2))
    coord.create_topic(_topic("opted-out", only_2, {"unclean.leader.election.enable": "false"}))
    del coord.peers[2]
    ctl = Controller(coord, {"unclean.leader.election.enable": True})
    assert ctl.reconcile() == 2
    assert coord.topics()["default"].partitions[0].leader == 3
    assert coord.topics()["opted-out"].partitions[0].leader == NO_LEADER


def test_partition_state_round_trips_through_json() -> None:
    state = ps(1, [1, 2, 3], [1, 2], {1: 4, 2: 9}, target=[3, 2])
    assert PartitionState.from_json(state.to_json(), 3) == state
    assert PartitionState.from_json(dataclasses.replace(state, target_replicas=None).to_json(), 3) == (
        dataclasses.replace(state, target_replicas=None)
    )


def test_a_resigning_leader_leaves_the_isr_and_another_member_is_elected() -> None:
    state = ps(1, [1, 2, 3], [1, 2, 3])
    new = alter_isr(state, 1, 5, {2: 1, 3: 1}, ALL_UP, resign=True)
    assert new.isr == [2, 3] and 1 not in new.isr_epochs
    elected = next_state(new, ALL_UP)
    assert elected is not None and elected.leader == 2 and elected.leader_epoch == 6


def test_the_sole_in_sync_replica_cannot_resign() -> None:
    state = ps(1, [1, 2, 3], [1])
    assert alter_isr(state, 1, 5, {}, ALL_UP, resign=True) == state
