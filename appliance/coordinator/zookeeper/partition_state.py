"""A partition state's compare-and-set, fenced by controllership.

Partition states are written by the controller only: ``set_partition_state`` commits, in
one multi-op, a check that the election znode this node won with still exists (its
``fence_path``, ``election.py``) and the compare-and-set on the partition's version. A
write made after kazoo silently replaced an expired session (the pass checked
``is_controller()`` just before the expiry) is thus refused (NOT_CONTROLLER), as Kafka
refuses a write carrying a stale controller epoch. Two writes racing on one state are
ordered by the version: the loser gets ``StaleStateError``. The stored state goes into
this node's snapshot at once, so the controller reads its own write.
"""

from __future__ import annotations

import dataclasses

from kazoo.exceptions import BadVersionError, NoNodeError

from appliance.coordinator import PartitionState, StaleStateError
from appliance.coordinator.zookeeper.election import ControllerElection
from appliance.coordinator.zookeeper.layout import PARTITIONS, Layout, dumps
from appliance.coordinator.zookeeper.session import Session, first_error, unexpected
from appliance.coordinator.zookeeper.snapshots import Snapshots
from ipc.errors import NotControllerError, UnknownTopicOrPartitionError


def set_partition_state(
    session: Session,
    layout: Layout,
    election: ControllerElection,
    snapshots: Snapshots,
    topic: str,
    partition: int,
    state: PartitionState,
) -> PartitionState:
    """Compare-and-set fenced by controllership: NotControllerError unless this node
    holds the election znode it won with; StaleStateError on a version mismatch."""
    node_id = election.node_id
    client = session.require()
    fence = election.fence_path
    if fence is None or not election.is_controller():
        raise NotControllerError(f"node {node_id} is not the controller: {topic}-{partition} not written")
    if state.version < 0:
        raise StaleStateError(f"{topic}-{partition}: state has no stored version ({state.version}); read it first")
    path = f"{layout.topic_path(topic)}/{PARTITIONS}/{partition}"
    tx = client.transaction()
    tx.check(fence, 0)
    tx.set_data(path, dumps(state.to_json()), state.version)
    results = session.call(tx.commit_async(), f"writing {topic}-{partition}")
    err = first_error(results)
    if err is not None:
        if isinstance(results[0], NoNodeError):
            raise NotControllerError(f"node {node_id} lost the controller election: {topic}-{partition}")
        if isinstance(err, BadVersionError):
            raise StaleStateError(f"{topic}-{partition}: stored version is not {state.version}")
        if isinstance(err, NoNodeError):
            raise UnknownTopicOrPartitionError(f"{topic}-{partition} does not exist")
        raise unexpected(err, f"writing {topic}-{partition}")
    stat = results[1]
    stored = dataclasses.replace(state, version=stat.version)
    snapshots.apply(topic, partition, stored, stat)
    return stored
