"""Topics as the node's own components see them: where a partition's leader serves,
which nodes get a new partition's replicas, and creating a topic from inside the node.

The front endpoint (``create_topic``, ``alter_topic``, auto-creation in ``metadata``)
and the group coordinator (``__consumer_offsets``, lag probes) both need these; they
live here so that neither imports the other (dependencies point one way: front ->
groups -> topics -> node view). Everything takes the node's read-only view
(``appliance/nodeview.py``) or its coordinator, never the supervisor.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any

from appliance.controller import initial_states
from appliance.coordinator import NO_LEADER, Coordinator, PartitionState, TopicInfo
from appliance.nodeview import NodeView
from ipc.errors import PolicyViolationError

log = logging.getLogger(__name__)

INTERNAL_PREFIX = "__"  # topics of the node itself (__consumer_offsets): not listed, not deletable


def is_internal(topic: str) -> bool:
    return topic.startswith(INTERNAL_PREFIX)


def leader_endpoint(coordinator: Coordinator, topic: str, partition: int, state: PartitionState) -> str | None:
    """The leader worker's endpoint (published by the leader's node), if known."""
    if state.leader == NO_LEADER:
        return None
    return coordinator.endpoints().get(state.leader, {}).get(f"{topic}/{partition}")


def new_partition_states(
    node: NodeView, topic: str, partitions: range, replication_factor: int
) -> list[PartitionState]:
    """Replica assignment for new partitions over the live nodes; the first leader rotates
    by topic name. PolicyViolationError if this node's share does not fit its free slots."""
    if not partitions:
        return []
    live = node.coordinator.nodes()
    states = initial_states(partitions, replication_factor, live, start=zlib.crc32(topic.encode()))
    mine = sum(node.config.node_id in st.replicas for st in states)
    free = node.free_slots()
    if mine > free:
        raise PolicyViolationError(
            f"{mine} new partition replica(s) do not fit: this node has room for {free} more "
            f"(max_partitions={node.config.max_partitions})"
        )
    return states


def create_topic(node: NodeView, topic: str, partitions: int, replication_factor: int, config: dict[str, Any]) -> None:
    """Create a topic in the cluster's coordinator and start this node's replicas of it.

    The configuration is validated before anything is written; the caller answers its
    client once the partitions serve (or not at all: ``__consumer_offsets``)."""
    node.config.topic_log_config(config)  # validate before anything is written
    states = new_partition_states(node, topic, range(partitions), replication_factor)
    info = TopicInfo(topic, states, replication_factor, dict(config), int(time.time() * 1000))
    node.coordinator.create_topic(info)
    node.reconcile()
    log.info(
        "created topic %s with %d partition(s), replication factor %d, config %s",
        topic,
        partitions,
        replication_factor,
        config,
    )
