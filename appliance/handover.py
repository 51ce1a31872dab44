"""Controlled shutdown (Kafka's): on SIGTERM a node hands the leadership of its
partitions to other in-sync replicas before its workers stop, so a rolling restart has
no window in which a partition has no leader.

The node announces that it is leaving in the cluster document ``shutting_down``
(``{"<node id>": node epoch}``, written by compare-and-set). The controller
(``controller.py``) treats an announced node like one that is gone, as long as another
in-sync replica is alive: it takes the node out of every ISR and elects another leader
where it led, level-triggered like every other rule, so a controller failover or a lost
request changes nothing. Because the node is out of the ISR, a leader's ``alter_isr``
cannot bring it back while it stops, and the preferred-leader rule does not pick it.

The leaders of the partitions it left get roles without it among their replicas
(``for_leader``): they neither wait for its fetches nor ask for it back (a growth the
controller never grants would hold their high watermark on the maximal ISR until its
lag timed out).

The node keeps running (and reconciling: its workers become followers, clients get
``NOT_LEADER`` and refresh their metadata) until ``done`` holds (it is in no ISR that
another live in-sync replica can take over, and ``DRAIN_S`` passed since) or the
handover time is up, then stops as before; a second SIGTERM stops it at once.

An entry carries the node epoch: once the node registers again (a new epoch) its old
entry no longer counts, so a restarted node leads again without cleaning up. A
partition with no other in-sync replica (replication factor 1, or the others out of
sync) keeps its leader until the node stops, as without a controlled shutdown.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from appliance.coordinator import Coordinator, NodeInfo, PartitionState, StaleStateError, TopicInfo

log = logging.getLogger(__name__)

DOCUMENT = "shutting_down"
MAX_HANDOVER_S = 10.0  # at most this long (and at most half of shutdown_timeout_ms)
# after the last partition moved, the front keeps answering this long: the clients that
# got NOT_LEADER from this node's workers refresh their metadata (often here) at once,
# and a request the closing front drops would cost them a request timeout
DRAIN_S = 0.5
ANNOUNCE_ATTEMPTS = 5  # compare-and-set retries when other nodes write the document too


def leaving_nodes(coordinator: Coordinator, live: Mapping[int, NodeInfo]) -> frozenset[int]:
    """The live nodes that announced a controlled shutdown in their current registration."""
    value, _ = coordinator.document(DOCUMENT)
    if not isinstance(value, dict):
        return frozenset()
    out = set()
    for key, epoch in value.items():
        try:
            node = int(key)
        except ValueError:
            continue
        if node in live and live[node].epoch == epoch:
            out.add(node)
    return frozenset(out)


def announce(coordinator: Coordinator, node_id: int, node_epoch: int) -> None:
    """Add ``node_id`` (with its node epoch) to the document; entries of nodes that are
    no longer registered with the epoch they announced are dropped on the way."""
    for _ in range(ANNOUNCE_ATTEMPTS):
        value, version = coordinator.document(DOCUMENT)
        live = coordinator.nodes()
        old = value if isinstance(value, dict) else {}
        kept = {k: e for k, e in old.items() if k.isdigit() and int(k) in live and live[int(k)].epoch == e}
        try:
            coordinator.set_document(DOCUMENT, {**kept, str(node_id): node_epoch}, version)
        except StaleStateError:
            continue
        return
    raise StaleStateError(f"{DOCUMENT}: changed by other nodes {ANNOUNCE_ATTEMPTS} times in a row")


def movable(node_id: int, st: PartitionState, live: Mapping[int, NodeInfo]) -> bool:
    """``node_id`` leads or is in the ISR of this partition, and another live in-sync
    replica can take its place."""
    if node_id not in st.isr and st.leader != node_id:
        return False
    return any(n != node_id and n in live and st.isr_epochs.get(n) == live[n].epoch for n in st.isr)


def still_held(node_id: int, topics: Mapping[str, TopicInfo], live: Mapping[int, NodeInfo]) -> list[str]:
    """The partitions the controller has yet to take off ``node_id`` (``movable``)."""
    return [
        f"{name}-{p}"
        for name, info in topics.items()
        for p, st in enumerate(info.partitions)
        if movable(node_id, st, live)
    ]


def for_leader(st: PartitionState, leaving: AbstractSet[int]) -> PartitionState:
    """The state a leader's role is made of: a node in a controlled shutdown that has
    left the ISR is no replica to the leader, which then neither waits for it nor asks
    for it back (its ``alter_isr`` would hold the high watermark on a maximal ISR that
    the controller never grants, until the follower's lag timed out)."""
    gone = {n for n in leaving if n not in st.isr}
    if not gone:
        return st
    target = st.target_replicas
    return dataclasses.replace(
        st,
        replicas=[n for n in st.replicas if n not in gone],
        target_replicas=[n for n in target if n not in gone] if target is not None else None,
    )


def handover_s(shutdown_timeout_ms: int) -> float:
    """How long a stopping node waits for its partitions to move."""
    return min(shutdown_timeout_ms / 2000, MAX_HANDOVER_S)


class Handover:
    """The supervisor's side: ``begin`` on SIGTERM, then ``done`` every tick."""

    def __init__(self, coordinator: Coordinator, node_id: int) -> None:
        self.coordinator = coordinator
        self.node_id = node_id
        self.started = 0.0
        self.deadline = 0.0
        self.active = False
        self.moved_at: float | None = None  # when nothing was left to move

    def begin(self, now: float, node_epoch: int, timeout_s: float) -> bool:
        """Announce the shutdown; False when there is nothing to wait for (nothing to
        move, or the coordinator cannot take the announcement)."""
        try:
            if not self.pending():
                return False
            announce(self.coordinator, self.node_id, node_epoch)
        except Exception as exc:  # noqa: BLE001 - the coordinator unreachable: stop as without a handover
            log.warning(
                "node %d: cannot announce the shutdown (%s); stopping without moving leadership", self.node_id, exc
            )
            return False
        self.active, self.started, self.deadline, self.moved_at = True, now, now + timeout_s, None
        log.info(
            "node %d: moving leadership and ISR membership to other replicas (up to %.1f s)", self.node_id, timeout_s
        )
        return True

    def pending(self) -> list[str]:
        return still_held(self.node_id, self.coordinator.topics(), self.coordinator.nodes())

    def done(self, now: float) -> bool:
        """True ``DRAIN_S`` after nothing is left to move, or once the time is up (logged
        either way)."""
        left = self.pending()
        if not left:
            if self.moved_at is None:
                self.moved_at = now
                log.info("node %d: leadership moved off this node in %.2f s", self.node_id, now - self.started)
            self.active = now < min(self.moved_at + DRAIN_S, self.deadline)
            return not self.active
        self.moved_at = None
        self.active = now < self.deadline
        if now >= self.deadline:
            log.warning(
                "node %d: %d partition(s) still on this node after %.1f s (%s); stopping anyway",
                self.node_id,
                len(left),
                now - self.started,
                ", ".join(left[:10]),
            )
            return True
        return False
