"""The Kafka listener's consumer-group handlers, mapped onto Sluice's group coordinator
(appliance/groups/, docs/groups.md): a Kafka consumer group *is* a Sluice group, with
the same members, generations and committed offsets whichever protocol a member uses.

Sluice's coordinator assigns partitions itself (as Kafka's KIP-848 does), so the
classic protocol's client-side assignment is not used: a member's JoinGroup metadata
(the "consumer" protocol's subscription bytes) is read for its topics and owned
partitions, the assignors it offers that Sluice runs (``range``, ``roundrobin``,
``cooperative-sticky``) are passed on in its order, and the JoinGroup response names
**no member as leader** (``leader`` is ``""``), so every client waits for its
assignment, which SyncGroup hands out in the consumer protocol's assignment bytes. A
leader's SyncGroup assignments, if a client sends any, are ignored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from appliance.kafka.handlers_data import Node
from appliance.kafka.server import KafkaRequest
from ipc.errors import SluiceError
from ipc.kafka import errors as kerr
from ipc.kafka.apis_groups import decode_subscription, encode_assignment, encode_subscription
from ipc.kafka.wire import KafkaDecodeError
from ipc.protocol import ASSIGNORS, Reply

log = logging.getLogger(__name__)

CONSUMER = "consumer"
STATES = {"empty": "Empty", "preparing_rebalance": "PreparingRebalance", "stable": "Stable"}
JOIN_MARGIN_S = 30.0


def _code(reply: Reply) -> int:
    return kerr.kafka_code(reply.error) if reply.error is not None else kerr.NONE


async def _call(node: Node, api: str, group: str, timeout_s: float = 30.0, **fields: Any) -> Reply:
    try:
        return await node.backend.group_call(api, group, timeout_s, **fields)
    except SluiceError as exc:
        return Reply(0, {}, [], exc)


async def find_coordinator(node: Node, req: KafkaRequest) -> dict[str, Any]:
    body = req.body
    keys = body["coordinator_keys"] if req.version >= 4 else [body["key"]]

    async def one(key: str) -> dict[str, Any]:
        out: dict[str, Any] = {"key": key, "error_code": kerr.NONE, "error_message": None}
        if body["key_type"] != 0:
            out.update(error_code=kerr.INVALID_REQUEST, error_message="Sluice has no transaction coordinator")
            return out
        try:
            reply = await node.backend.call("find_coordinator", group=key)
        except SluiceError as exc:
            reply = Reply(0, {}, [], exc)
        if reply.error is not None:
            out.update(error_code=_code(reply), error_message=reply.error.message[:500])
            return out
        node.backend.coordinators[key] = str(reply.fields["endpoint"])
        out.update(await node.kafka_broker(reply.fields["node_id"], str(reply.fields["endpoint"])))
        return out

    found = await asyncio.gather(*(one(k) for k in keys))
    if req.version >= 4:
        return {"coordinators": list(found)}
    return found[0]


async def join_group(node: Node, req: KafkaRequest) -> dict[str, Any]:
    body = req.body
    if body["protocol_type"] != CONSUMER or not body["protocols"]:
        return {"error_code": kerr.INCONSISTENT_GROUP_PROTOCOL, "member_id": body["member_id"]}
    offered = [p["name"] for p in body["protocols"]]
    assignors = [name for name in offered if name in ASSIGNORS]
    try:
        sub = decode_subscription(body["protocols"][0]["metadata"])
    except KafkaDecodeError as exc:
        log.info("JoinGroup %s: unreadable subscription: %s", body["group_id"], exc.message)
        return {"error_code": kerr.INCONSISTENT_GROUP_PROTOCOL, "member_id": body["member_id"]}
    if not assignors:
        log.info("JoinGroup %s: none of the assignors %s is one Sluice runs (%s)", body["group_id"], offered, ASSIGNORS)
        return {"error_code": kerr.INCONSISTENT_GROUP_PROTOCOL, "member_id": body["member_id"]}
    session = body["session_timeout_ms"]
    rebalance = body["rebalance_timeout_ms"] if body["rebalance_timeout_ms"] >= 0 else session
    if not 100 <= session <= 3_600_000:
        return {"error_code": kerr.INVALID_SESSION_TIMEOUT, "member_id": body["member_id"]}
    fields: dict[str, Any] = {
        "member_id": body["member_id"],
        "client_id": (req.client_id or "")[:255],
        "session_timeout_ms": session,
        "rebalance_timeout_ms": min(rebalance, 3_600_000),
        "topics": list(sub["topics"]),
        "assignors": assignors,
        "owned": [[tp["topic"], p] for tp in sub.get("owned_partitions") or [] for p in tp["partitions"]],
    }
    if body["group_instance_id"] is not None:
        fields["group_instance_id"] = body["group_instance_id"]
    reply = await _call(node, "join_group", body["group_id"], rebalance / 1000 + JOIN_MARGIN_S, **fields)
    if reply.error is not None:
        return {"error_code": _code(reply), "member_id": body["member_id"]}
    f = reply.fields
    return {
        "generation_id": f["generation"],
        "protocol_type": CONSUMER,
        "protocol_name": f["protocol"],
        "leader": "",  # nobody assigns on the client side: the coordinator did (module docstring)
        "member_id": f["member_id"],
        "members": [],
    }


async def sync_group(node: Node, req: KafkaRequest) -> dict[str, Any]:
    body = req.body
    reply = await _call(
        node, "sync_group", body["group_id"], member_id=body["member_id"], generation=body["generation_id"]
    )
    if reply.error is not None:
        return {"error_code": _code(reply), "assignment": b""}
    by_topic: dict[str, list[int]] = {}
    for topic, partition in reply.fields["assignment"]:
        by_topic.setdefault(topic, []).append(partition)
    return {
        "protocol_type": CONSUMER,
        "protocol_name": reply.fields.get("protocol"),
        "assignment": encode_assignment(sorted(by_topic.items())),
    }


async def heartbeat(node: Node, req: KafkaRequest) -> dict[str, Any]:
    body = req.body
    reply = await _call(
        node, "heartbeat", body["group_id"], member_id=body["member_id"], generation=body["generation_id"]
    )
    return {"error_code": _code(reply)}


async def leave_group(node: Node, req: KafkaRequest) -> dict[str, Any]:
    body = req.body
    members = body["members"] if req.version >= 3 else [{"member_id": body["member_id"], "group_instance_id": None}]
    out = []
    for m in members:
        if not m["member_id"]:
            out.append({**m, "error_code": kerr.UNKNOWN_MEMBER_ID})  # Sluice leaves by member id
            continue
        reply = await _call(node, "leave_group", body["group_id"], member_id=m["member_id"])
        out.append(
            {"member_id": m["member_id"], "group_instance_id": m.get("group_instance_id"), "error_code": _code(reply)}
        )
    first = next((m["error_code"] for m in out if m["error_code"]), kerr.NONE)
    return {"error_code": first if req.version < 3 else kerr.NONE, "members": out}


async def offset_commit(node: Node, req: KafkaRequest) -> dict[str, Any]:
    body = req.body
    offsets = [
        {
            "topic": t["name"],
            "partition": p["partition_index"],
            "offset": p["committed_offset"],
            "metadata": (p["committed_metadata"] or "")[:4096],
        }
        for t in body["topics"]
        for p in t["partitions"]
    ]
    code = kerr.NONE
    if any(o["offset"] < 0 for o in offsets):
        code = kerr.INVALID_REQUEST
    elif offsets:
        reply = await _call(
            node,
            "offset_commit",
            body["group_id"],
            member_id=body["member_id"],
            generation=max(-1, body["generation_id"]),
            offsets=offsets,
        )
        code = _code(reply)
    return {
        "topics": [
            {
                "name": t["name"],
                "partitions": [{"partition_index": p["partition_index"], "error_code": code} for p in t["partitions"]],
            }
            for t in body["topics"]
        ]
    }


async def offset_fetch(node: Node, req: KafkaRequest) -> dict[str, Any]:
    body = req.body
    fields: dict[str, Any] = {}
    if body["topics"] is not None:
        fields["partitions"] = [[t["name"], p] for t in body["topics"] for p in t["partition_indexes"]]
    reply = await _call(node, "offset_fetch", body["group_id"], **fields)
    if reply.error is not None:
        code = _code(reply)
        topics = [
            {"name": t["name"], "partitions": [{"partition_index": p, "error_code": code} for p in ps]}
            for t in body["topics"] or []
            for ps in [t["partition_indexes"]]
        ]
        return {"topics": topics, "error_code": code}
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for o in reply.fields["offsets"]:
        by_topic.setdefault(o["topic"], []).append(
            {"partition_index": o["partition"], "committed_offset": o["offset"], "metadata": o.get("metadata") or ""}
        )
    return {"topics": [{"name": t, "partitions": ps} for t, ps in by_topic.items()]}


async def list_groups(node: Node, req: KafkaRequest) -> dict[str, Any]:
    try:
        reply = await node.backend.call("list_groups")
    except SluiceError as exc:
        return {"error_code": kerr.kafka_code(exc)}
    if reply.error is not None:
        return {"error_code": _code(reply)}
    wanted = {s.lower() for s in req.body["states_filter"]}
    groups = []
    for g in reply.fields["groups"]:
        state = STATES.get(g["state"], g["state"])
        if not wanted or state.lower() in wanted:
            groups.append({"group_id": g["group"], "protocol_type": CONSUMER, "group_state": state})
    return {"groups": groups}


async def describe_groups(node: Node, req: KafkaRequest) -> dict[str, Any]:
    async def one(group: str) -> dict[str, Any]:
        reply = await _call(node, "describe_group", group)
        if reply.error is not None:
            if reply.error.code == "GROUP_ID_NOT_FOUND":
                return {"group_id": group, "group_state": "Dead"}
            return {"group_id": group, "error_code": _code(reply)}
        f = reply.fields
        members = []
        for m in f["members"]:
            by_topic: dict[str, list[int]] = {}
            for topic, partition in m.get("assignment") or []:
                by_topic.setdefault(topic, []).append(partition)
            members.append(
                {
                    "member_id": m["member_id"],
                    "group_instance_id": m.get("instance_id"),
                    "client_id": m.get("client_id") or "",
                    "client_host": "",
                    "member_metadata": encode_subscription(list(m.get("topics") or [])),
                    "member_assignment": encode_assignment(sorted(by_topic.items())),
                }
            )
        return {
            "group_id": group,
            "group_state": STATES.get(f["state"], f["state"]),
            "protocol_type": CONSUMER,
            "protocol_data": f.get("protocol") or "",
            "members": members,
        }

    return {"groups": list(await asyncio.gather(*(one(g) for g in req.body["groups"])))}


async def delete_groups(node: Node, req: KafkaRequest) -> dict[str, Any]:
    async def one(group: str) -> dict[str, Any]:
        reply = await _call(node, "delete_group", group)
        return {"group_id": group, "error_code": _code(reply)}

    return {"results": list(await asyncio.gather(*(one(g) for g in req.body["groups_names"])))}
