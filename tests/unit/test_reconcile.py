"""The reconciler's decisions (appliance/reconcile.py), as pure functions."""

from __future__ import annotations

from appliance.config import NodeConfig
from appliance.coordinator import NO_LEADER, PartitionState, TopicInfo
from appliance.reconcile import assigned, role_for, worker_node_options
from ipc.shm import Role

ENDPOINTS = {1: {"t/0": "tcp://10.0.0.1:4000", "t/1": "tcp://10.0.0.1:4001"}, 2: {"t/0": "tcp://10.0.0.2:4000"}}


def _state(leader: int, replicas: list[int], isr: list[int], target: list[int] | None = None) -> PartitionState:
    return PartitionState(leader, 7, replicas, isr, {n: 10 + n for n in isr}, target)


def test_assigned_holds_the_partitions_with_a_replica_here_including_moves_in_progress() -> None:
    topics = {
        "t": TopicInfo("t", [_state(0, [0, 1], [0, 1]), _state(1, [1, 2], [1, 2])], 2, {}, 1),
        "u": TopicInfo("u", [_state(1, [1, 2], [1], target=[2, 0])], 2, {}, 2),
    }
    got = assigned(0, topics)
    assert sorted(got) == [("t", 0), ("u", 0)]
    assert got[("u", 0)][0].name == "u"
    assert sorted(assigned(2, topics)) == [("t", 1), ("u", 0)]
    assert assigned(9, topics) == {}


def test_the_leader_leads_with_the_isr_and_its_node_epochs() -> None:
    role = role_for(0, "t", 0, _state(0, [0, 1, 2], [0, 2]), ENDPOINTS, 5)
    assert role.role is Role.LEADER and role.is_leader
    assert (role.leader_epoch, role.leader_endpoint, role.replicas, dict(role.isr), role.node_epoch) == (
        7,
        "",
        (0, 1, 2),
        {0: 10, 2: 12},
        5,
    )


def test_a_follower_follows_the_leaders_published_endpoint() -> None:
    role = role_for(0, "t", 1, _state(1, [1, 0], [1, 0]), ENDPOINTS, 5)
    assert (role.role, role.leader_endpoint) == (Role.FOLLOWER, "tcp://10.0.0.1:4001")
    # no endpoint published yet: a follower without a leader to fetch from (for now)
    assert role_for(0, "t", 3, _state(1, [1, 0], [1]), ENDPOINTS, 5).leader_endpoint == ""


def test_no_leader_means_no_role() -> None:
    role = role_for(0, "t", 0, _state(NO_LEADER, [0, 1], []), ENDPOINTS, 5)
    assert role.role is Role.NONE and dict(role.isr) == {}


def test_a_reassignment_adds_its_target_replicas_after_the_current_ones() -> None:
    role = role_for(0, "t", 0, _state(0, [0, 1], [0, 1], target=[2, 0]), ENDPOINTS, 5)
    assert role.replicas == (0, 1, 2)


def test_equal_decisions_are_equal_commands() -> None:
    """The reconciler sends a role only when it differs from the last one sent."""
    a = role_for(0, "t", 0, _state(0, [0, 1], [0, 1]), ENDPOINTS, 5)
    b = role_for(0, "t", 0, _state(0, [0, 1], [0, 1]), ENDPOINTS, 5)
    c = role_for(0, "t", 0, _state(0, [0, 1], [0]), ENDPOINTS, 5)
    assert a == b and a != c


def test_node_options_follow_the_node_configuration() -> None:
    opts = worker_node_options(NodeConfig(log_level="debug", cleaner_interval_ms=123, heartbeat_timeout_ms=4000))
    assert (opts.log_level, opts.cleaner_interval_ms, opts.heartbeat_timeout_ms) == ("debug", 123, 4000)
    assert opts.retention_check_ms == NodeConfig().retention_check_interval_ms
