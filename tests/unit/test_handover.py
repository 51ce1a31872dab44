"""Controlled shutdown (appliance/handover.py): the announcement document, what is left
to move, the controller's rule for a leaving node (``next_state(..., leaving=...)``), the
leader's role without it, and the leader's pending ISR growth dropped once it left.

The multi-node behaviour (a rolling restart under load) is tests/cluster/test_rolling_restart.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from appliance.controller import Controller, alter_isr, initial_states, next_state
from appliance.coordinator import NodeInfo, PartitionState, TopicInfo
from appliance.coordinator.local import LocalCoordinator
from appliance.handover import (
    DOCUMENT,
    MAX_HANDOVER_S,
    Handover,
    announce,
    for_leader,
    handover_s,
    leaving_nodes,
    movable,
    still_held,
)
from appliance.replication import LeaderState


def nodes(epochs: Mapping[int, int]) -> dict[int, NodeInfo]:
    return {n: NodeInfo(n, f"tcp://10.0.0.{n}:9092", e) for n, e in epochs.items()}


LIVE = nodes({0: 10, 1: 11, 2: 12})


def state(leader: int = 0, isr: list[int] | None = None, replicas: list[int] | None = None) -> PartitionState:
    members = [0, 1, 2] if isr is None else isr
    return PartitionState(
        leader=leader,
        leader_epoch=3,
        replicas=[0, 1, 2] if replicas is None else replicas,
        isr=members,
        isr_epochs={n: LIVE[n].epoch for n in members},
    )


# ---- the controller's rule ----------------------------------------------------------------


def test_a_leaving_leader_is_replaced_and_leaves_the_isr() -> None:
    new = next_state(state(leader=0), LIVE, leaving={0})
    assert new is not None
    assert new.leader == 1 and new.leader_epoch == 4
    assert new.isr == [1, 2] and 0 not in new.isr_epochs


def test_a_leaving_follower_leaves_the_isr_and_the_leader_stays() -> None:
    new = next_state(state(leader=1), LIVE, leaving={0})
    assert new is not None
    assert new.leader == 1 and new.leader_epoch == 3
    assert new.isr == [1, 2]


def test_the_last_in_sync_replica_stays_even_when_leaving() -> None:
    assert next_state(state(leader=0, isr=[0]), LIVE, leaving={0}) is None
    # the other member is not alive: nothing to move to (as without a shutdown)
    dead = nodes({0: 10})
    st = state(leader=0, isr=[0, 1])
    assert next_state(st, dead, leaving={0}) == next_state(st, dead)
    kept = next_state(st, dead, leaving={0})
    assert kept is not None and kept.leader == 0 and kept.isr == [0]


def test_a_leaving_node_is_not_taken_back_by_a_leaders_alter_isr() -> None:
    st = state(leader=1, isr=[1, 2])
    grown = alter_isr(st, 1, 3, {1: 11, 2: 12, 0: 10}, LIVE)
    assert grown.isr == [0, 1, 2]
    again = next_state(grown, LIVE, leaving={0})
    assert again is not None and again.isr == [1, 2] and again.leader == 1


def test_a_leaving_preferred_replica_is_not_elected() -> None:
    assert next_state(state(leader=1, isr=[1, 2]), LIVE, leaving={0}) is None


# ---- the document --------------------------------------------------------------------------


def _coordinator(tmp_path: Path) -> LocalCoordinator:
    coord = LocalCoordinator(str(tmp_path), 0)
    coord.start(lambda: None)
    coord.register("tcp://127.0.0.1:9092")
    return coord


def test_announce_and_leaving_nodes_count_only_the_current_registration(tmp_path: Path) -> None:
    coord = _coordinator(tmp_path)
    epoch = coord.nodes()[0].epoch
    assert leaving_nodes(coord, coord.nodes()) == frozenset()
    announce(coord, 0, epoch)
    assert leaving_nodes(coord, coord.nodes()) == {0}
    assert coord.document(DOCUMENT)[0] == {"0": epoch}
    coord.register("tcp://127.0.0.1:9092")  # a restart: a new epoch
    assert coord.nodes()[0].epoch != epoch
    assert leaving_nodes(coord, coord.nodes()) == frozenset()


def test_a_single_replica_has_nothing_to_move_so_the_node_stops_at_once(tmp_path: Path) -> None:
    coord = _coordinator(tmp_path)
    coord.create_topic(TopicInfo("t", initial_states(range(2), 1, coord.nodes()), 1, {}, 0))
    handover = Handover(coord, 0)
    assert handover.begin(0.0, coord.nodes()[0].epoch, 5.0) is False
    assert not handover.active
    assert coord.document(DOCUMENT) == (None, -1)  # nothing announced
    Controller(coord, {}).reconcile()
    assert [p.leader for p in coord.topics()["t"].partitions] == [0, 0]


# ---- what is left, and the leader's view ------------------------------------------------------


def test_movable_and_still_held() -> None:
    assert movable(0, state(leader=0), LIVE)
    assert movable(0, state(leader=1), LIVE)  # a follower in the ISR: it must leave it
    assert not movable(0, state(leader=1, isr=[1, 2]), LIVE)
    assert not movable(0, state(leader=0, isr=[0]), LIVE)
    topics = {"t": TopicInfo("t", [state(leader=0), state(leader=1, isr=[1, 2])], 3, {}, 0)}
    assert still_held(0, topics, LIVE) == ["t-0"]


def test_for_leader_drops_a_leaving_node_only_once_it_left_the_isr() -> None:
    st = state(leader=1)
    assert for_leader(st, {0}) is st
    left = for_leader(state(leader=1, isr=[1, 2]), {0})
    assert left.replicas == [1, 2]
    assert for_leader(state(leader=1, isr=[1, 2]), set()).replicas == [0, 1, 2]


def test_a_pending_growth_for_a_node_that_is_no_replica_now_is_dropped() -> None:
    lead = LeaderState(
        node_id=1,
        node_epoch=11,
        replicas=[0, 1, 2],
        isr={1: 11, 2: 12},
        high_watermark=0,
        epoch_start_offset=0,
        now=0.0,
    )
    lead.on_fetch(0, 10, 5, 5, 0.1)
    lead.on_fetch(2, 12, 5, 5, 0.1)
    assert lead.isr_change(5, 2.0, 0.1) == {1: 11, 2: 12, 0: 10}
    assert 0 in lead.maximal_isr()
    lead.update_assignment([1, 2], {1: 11, 2: 12}, 0.2)  # node 0 left (controlled shutdown)
    assert lead.maximal_isr() == {1, 2}
    lead.on_fetch(2, 12, 9, 9, 0.3)
    assert lead.advance_high_watermark(9) and lead.high_watermark == 9


def test_handover_time() -> None:
    assert handover_s(10_000) == 5.0
    assert handover_s(600_000) == MAX_HANDOVER_S
