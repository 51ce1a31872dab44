"""The controller: owns every partition's leader, leader epoch and ISR.

One node at a time is the controller (elected through the coordinator). It works
*level-triggered*: whenever anything changes (a node comes or goes, a topic appears, a
reassignment is asked for) it recomputes, for every partition, the state the rules
below call for and writes the ones that differ with compare-and-set. Running it twice
changes nothing; a new controller after a failover just runs it once more.

The rules (Kafka's, with KIP-903's node epochs):

- A replica counts as in sync only while it is alive with the same registration epoch
  it had when it entered the ISR. A node that restarted (new epoch; maybe wiped) leaves
  the ISR and must catch up again before the leader asks for it back.
- The leader stays while it is alive and in sync. Otherwise the first in-sync replica
  in assignment order is elected and the leader epoch is bumped. When no in-sync
  replica is alive the ISR is kept as it was (never emptied) and the partition has no
  leader, until a member comes back (the last members of the ISR hold every committed
  record). Unclean election (``unclean.leader.election.enable``) elects any live
  replica instead, and may lose committed records, as in Kafka.
- Preferred leader: when the first assigned replica is in sync and not the leader, it
  becomes the leader (Kafka's auto leader rebalance, without the wait).
- Controlled shutdown: a node that announced its shutdown (``handover.py``) leaves
  every ISR, and with it every leadership, where another in-sync replica is alive.
- Reassignment: ``target_replicas`` are added as replicas; once all of them are in
  sync the assignment becomes the target, the leader moves if it is not in it, and
  the others leave.
- ISR changes asked by a leader (``alter_isr``) are checked against its leader epoch
  and, for new members, against the node epoch the follower fetched with.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from appliance.config import topic_log_config
from appliance.coordinator import NO_LEADER, Coordinator, NodeInfo, PartitionState, StaleStateError, TopicInfo
from appliance.handover import leaving_nodes
from ipc.errors import (
    FencedLeaderEpochError,
    InvalidReplicationFactorError,
    NotControllerError,
    NotLeaderError,
    UnknownTopicOrPartitionError,
)

log = logging.getLogger(__name__)


def _in_sync(state: PartitionState, live: Mapping[int, NodeInfo]) -> list[int]:
    return [n for n in state.isr if n in live and state.isr_epochs.get(n) == live[n].epoch]


def next_state(
    state: PartitionState,
    live: Mapping[int, NodeInfo],
    unclean: bool = False,
    preferred: bool = True,
    leaving: AbstractSet[int] = frozenset(),
) -> PartitionState | None:
    """The state the rules call for, or None when ``state`` already is it. ``leaving``:
    the nodes in a controlled shutdown (``handover.py``)."""
    current = state
    for _ in range(4):  # an election can complete a reassignment: step to the fixed point
        new = _step(current, live, unclean, preferred, leaving)
        if new is None:
            break
        current = new
    return None if current == state else current


def _step(
    state: PartitionState, live: Mapping[int, NodeInfo], unclean: bool, preferred: bool, leaving: AbstractSet[int]
) -> PartitionState | None:
    valid = _in_sync(state, live)
    replicas = list(state.replicas)
    target = state.target_replicas
    if target is not None:
        replicas += [n for n in target if n not in replicas]
        if all(n in valid for n in target):
            replicas, target = list(target), None
    valid = [n for n in valid if n in replicas]
    staying = [n for n in valid if n not in leaving]
    if staying:  # a node in a controlled shutdown leaves the ISR while another member stays
        valid = staying
    leader, epoch = state.leader, state.leader_epoch
    isr = valid
    epochs = {n: state.isr_epochs[n] for n in valid}
    leader_ok = leader in valid
    wants_preferred = preferred and replicas[0] in valid and leader != replicas[0]
    if not leader_ok or wants_preferred:
        candidates = [n for n in replicas if n in valid]
        if candidates:
            leader = candidates[0]
        elif not valid and (returned := [n for n in replicas if n in state.isr and n in live]):
            # the last in-sync members are down; one came back (with a new epoch): it
            # still holds every committed record, so it leads
            leader = returned[0]
            isr, epochs = [leader], {leader: live[leader].epoch}
        elif unclean and (alive := [n for n in replicas if n in live]):
            leader = alive[0]
            isr, epochs = [leader], {leader: live[leader].epoch}
            log.warning("unclean election: node %d leads without being in sync", leader)
        else:
            leader = NO_LEADER
            isr, epochs = list(state.isr), dict(state.isr_epochs)  # never empty the ISR
        # a new leader, or the same node elected again after it restarted: a new epoch
        if leader != state.leader or leader != NO_LEADER:
            epoch += 1
    new = dataclasses.replace(
        state,
        leader=leader,
        leader_epoch=epoch,
        replicas=replicas,
        isr=isr,
        isr_epochs=epochs,
        target_replicas=target,
    )
    return None if new == state else new


def initial_states(
    partitions: range, replication_factor: int, live: Mapping[int, NodeInfo], start: int = 0
) -> list[PartitionState]:
    """Assign replicas round-robin over the live nodes (the leader rotates too)."""
    ids = sorted(live)
    if replication_factor > len(ids):
        raise InvalidReplicationFactorError(
            f"replication factor {replication_factor} is larger than the {len(ids)} live node(s) ({ids})"
        )
    out = []
    for p in partitions:
        first = (start + p) % len(ids)
        replicas = [ids[(first + i) % len(ids)] for i in range(replication_factor)]
        out.append(
            PartitionState(
                leader=replicas[0],
                leader_epoch=0,
                replicas=replicas,
                isr=list(replicas),
                isr_epochs={n: live[n].epoch for n in replicas},
            )
        )
    return out


def alter_isr(
    state: PartitionState,
    leader: int,
    leader_epoch: int,
    isr: Mapping[int, int],
    live: Mapping[int, NodeInfo],
    resign: bool = False,
) -> PartitionState:
    """A leader's ISR change (``isr``: node -> the node epoch it fetched with). With
    ``resign`` the leader leaves the ISR (its replica cannot serve: offline after
    repeated crashes) and the caller elects another member; the sole in-sync replica
    cannot resign."""
    if state.leader != leader:
        raise NotLeaderError(f"node {leader} is not the leader (node {state.leader} is)")
    if state.leader_epoch != leader_epoch:
        raise FencedLeaderEpochError(f"leader epoch {leader_epoch} is stale (now {state.leader_epoch})")
    assigned = state.replicas + [n for n in state.target_replicas or () if n not in state.replicas]
    members = [n for n in assigned if (n in isr or n == leader) and not (resign and n == leader)]
    if not members:
        return state
    epochs = {}
    for n in members:
        if n in state.isr and n not in isr:
            epochs[n] = state.isr_epochs.get(n, -1)
        elif n in live and (n == leader or isr[n] == live[n].epoch):
            epochs[n] = live[n].epoch
    members = [n for n in members if n in epochs]
    return dataclasses.replace(state, isr=members, isr_epochs=epochs)


class Controller:
    """Runs on every node; acts only while its node is the elected controller."""

    def __init__(
        self, coordinator: Coordinator, topic_defaults: Mapping[str, Any] | Callable[[], Mapping[str, Any]]
    ) -> None:
        """``topic_defaults``: the node's, or a function returning the current ones (a
        reload changes them)."""
        self.coordinator = coordinator
        fixed = dict(topic_defaults) if not callable(topic_defaults) else {}
        self._topic_defaults = topic_defaults if callable(topic_defaults) else lambda: fixed

    def _unclean(self, info: TopicInfo) -> bool:
        try:
            return topic_log_config(self._topic_defaults(), info.config).unclean_leader_election
        except Exception:  # noqa: BLE001 - a bad stored option must not stop elections
            return False

    def reconcile(self) -> int:
        """Bring every partition state to what the rules call for; return how many changed."""
        coord = self.coordinator
        if not coord.is_controller() or not coord.connected():
            return 0
        live = coord.nodes()
        leaving = leaving_nodes(coord, live)
        changed = 0
        for name, info in coord.topics().items():
            unclean = self._unclean(info)
            for p, state in enumerate(info.partitions):
                new = next_state(state, live, unclean, leaving=leaving)
                if new is None:
                    continue
                try:
                    coord.set_partition_state(name, p, new)
                except StaleStateError:
                    continue  # changed under us: the watch wakes us again
                except Exception as exc:  # noqa: BLE001 - coordinator unreachable: the next reconcile retries
                    log.warning("%s-%d: cannot write the partition state: %s", name, p, exc)
                    return changed
                changed += 1
                log.info(
                    "%s-%d: leader %d epoch %d isr %s replicas %s",
                    name,
                    p,
                    new.leader,
                    new.leader_epoch,
                    new.isr,
                    new.replicas,
                )
        return changed

    def _state(self, topic: str, partition: int) -> PartitionState:
        coord = self.coordinator
        if not coord.is_controller():
            ctl = coord.nodes().get(coord.controller())
            where = f"; the controller is node {ctl.node_id} at {ctl.endpoint}" if ctl else ""
            raise NotControllerError(f"node {coord.node_id} is not the controller{where}")
        info = coord.topics().get(topic)
        if info is None or not 0 <= partition < len(info.partitions):
            raise UnknownTopicOrPartitionError(f"{topic}-{partition} does not exist")
        return info.partitions[partition]

    def alter_isr(
        self,
        topic: str,
        partition: int,
        leader: int,
        leader_epoch: int,
        isr: Mapping[int, int],
        resign: bool = False,
    ) -> PartitionState:
        state = self._state(topic, partition)
        live = self.coordinator.nodes()
        new = alter_isr(state, leader, leader_epoch, isr, live, resign)
        # a leader that resigned is replaced in the same write; a node in a controlled
        # shutdown is not taken back into the ISR
        new = next_state(new, live, leaving=leaving_nodes(self.coordinator, live)) or new
        if new == state:
            return state
        stored = self.coordinator.set_partition_state(topic, partition, new)
        log.info("%s-%d: isr %s, leader %d (asked by leader %d)", topic, partition, stored.isr, stored.leader, leader)
        return stored

    def reassign(self, topic: str, partition: int, replicas: list[int]) -> PartitionState:
        state = self._state(topic, partition)
        live = self.coordinator.nodes()
        missing = [n for n in replicas if n not in live]
        if missing or not replicas or len(set(replicas)) != len(replicas):
            raise InvalidReplicationFactorError(
                f"replicas {replicas} must be distinct live nodes (live: {sorted(live)})"
            )
        new = dataclasses.replace(state, target_replicas=list(replicas))
        stored = self.coordinator.set_partition_state(topic, partition, new)
        self.reconcile()
        return stored
