"""The znode layout: where the cluster's metadata lives under the chroot, and how each
znode's data is encoded (JSON with sorted keys)::

    <chroot>/nodes/<id>                      ephemeral, {"endpoint": advertised front endpoint};
                                             its czxid is the node's registration epoch
    <chroot>/controller_election/<uuid>__lock__<seq>
                                             ephemeral sequential, data "<id>" (kazoo Election):
                                             the lowest sequence is the controller
    <chroot>/topics/<name>                   TopicInfo.meta_json()
    <chroot>/topics/<name>/partitions/<p>    PartitionState.to_json(); the znode's version is
                                             PartitionState.version, the compare-and-set token
    <chroot>/endpoints/<id>                  ephemeral, {"topic/partition": worker endpoint}
    <chroot>/producer_id                     {"next": N}, a compare-and-set counter (from 1000,
                                             ``producer_ids.py``)
    <chroot>/config/<name>                   a cluster document ("acls", "quotas"): JSON, written
                                             by compare-and-set on its version (``documents.py``)

The chroot comes from the coordinator URL (``url.py``). Topic and partition data are
encoded by ``TopicInfo`` and ``PartitionState`` themselves (``appliance/coordinator``);
the registration and endpoint znodes are read back here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from appliance.coordinator import NodeInfo
from ipc.errors import UnknownTopicOrPartitionError

NODES = "nodes"
TOPICS = "topics"
PARTITIONS = "partitions"
ENDPOINTS = "endpoints"
ELECTION = "controller_election"
PRODUCER_ID = "producer_id"


@dataclasses.dataclass(frozen=True)
class Layout:
    """The paths under one chroot."""

    chroot: str

    def path(self, *parts: str | int) -> str:
        return "/".join([self.chroot, *(str(p) for p in parts)])

    def topic_path(self, name: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return self.path(TOPICS, name)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def parse_node(node_id: int, data: bytes, stat: Any) -> NodeInfo:
    """``/nodes/<id>``: the node's endpoint, and its registration epoch (the czxid)."""
    return NodeInfo(node_id=node_id, endpoint=str(orjson.loads(data)["endpoint"]), epoch=int(stat.czxid))


def parse_endpoints(node_id: int, data: bytes, stat: Any) -> dict[str, str]:
    """``/endpoints/<id>``: {"topic/partition": worker endpoint}."""
    raw = orjson.loads(data)
    if not isinstance(raw, dict):
        raise ValueError(f"not a JSON object: {raw!r}")
    return {str(k): str(v) for k, v in raw.items()}
