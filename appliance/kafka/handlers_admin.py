"""The Kafka listener's admin handlers: CreateTopics, DeleteTopics, CreatePartitions,
DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, each mapped onto the front's
topic APIs (``create_topic``, ``delete_topic``, ``alter_topic``, ``describe_topic``),
and DeleteRecords, sent to each partition's leader worker (``delete_records``: the
offset becomes the log start offset, -1 the high watermark; any other negative offset
is OFFSET_OUT_OF_RANGE, as Kafka answers).

Sluice's topic options carry Kafka's names (``retention.ms``, ``cleanup.policy``,
``max.message.bytes``, ...; docs/configuration.md), so configs pass through by name.
Not served, each with ``INVALID_REQUEST`` and a message: manual replica assignments,
``validate_only``, APPEND / SUBTRACT operations, and resources other than topics for
the alter APIs (a broker's configuration is the node's file). DescribeConfigs of a
broker answers an empty list.
"""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.kafka.handlers_data import Node
from appliance.kafka.server import KafkaRequest
from ipc.errors import SluiceError
from ipc.kafka import errors as kerr
from ipc.protocol import Reply

DELETE_RECORDS_TIMEOUT_S = 30.0  # a worker answers delete_records at once

TOPIC, BROKER = 2, 4
ADMIN_TIMEOUT_S = 35.0  # the front answers create/alter within 25 s
SET, DELETE = 0, 1
SOURCE_TOPIC, SOURCE_DEFAULT = 1, 5


async def _call(node: Node, api: str, **fields: Any) -> Reply:
    try:
        return await node.backend.call(api, ADMIN_TIMEOUT_S, **fields)
    except SluiceError as exc:
        return Reply(0, {}, [], exc)


def _error(reply: Reply) -> tuple[int, str | None]:
    if reply.error is None:
        return kerr.NONE, None
    return kerr.kafka_code(reply.error), reply.error.message[:500]


def _refused(why: str) -> tuple[int, str | None]:
    return kerr.INVALID_REQUEST, why


async def create_topics(node: Node, req: KafkaRequest) -> dict[str, Any]:
    validate_only = req.body["validate_only"]

    async def one(t: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": t["name"], "configs": None}
        if t["assignments"]:
            code, msg = _refused("manual replica assignments are not supported: Sluice assigns replicas")
        elif validate_only:
            code, msg = _refused("validate_only is not supported")
        else:
            partitions = t["num_partitions"] if t["num_partitions"] > 0 else 1
            rf = t["replication_factor"] if t["replication_factor"] > 0 else 1
            config = {c["name"]: c["value"] for c in t["configs"] if c["value"] is not None}
            reply = await _call(
                node, "create_topic", topic=t["name"], partitions=partitions, replication_factor=rf, config=config
            )
            code, msg = _error(reply)
            if code == kerr.NONE:
                out.update(num_partitions=partitions, replication_factor=rf)
        out.update(error_code=code, error_message=msg)
        return out

    return {"topics": list(await asyncio.gather(*(one(t) for t in req.body["topics"])))}


async def delete_topics(node: Node, req: KafkaRequest) -> dict[str, Any]:
    v6 = req.version >= 6
    names: list[str | None] = [t["name"] for t in req.body["topics"]] if v6 else list(req.body["topic_names"])

    async def one(name: str | None) -> dict[str, Any]:
        if name is None:
            return {"name": None, "error_code": kerr.UNKNOWN_TOPIC_OR_PARTITION, "error_message": "topic ids unknown"}
        code, msg = _error(await _call(node, "delete_topic", topic=name))
        return {"name": name, "error_code": code, "error_message": msg}

    return {"responses": list(await asyncio.gather(*(one(n) for n in names)))}


async def create_partitions(node: Node, req: KafkaRequest) -> dict[str, Any]:
    async def one(t: dict[str, Any]) -> dict[str, Any]:
        if t["assignments"] is not None:
            code, msg = _refused("manual replica assignments are not supported: Sluice assigns replicas")
        elif req.body["validate_only"]:
            code, msg = _refused("validate_only is not supported")
        else:
            code, msg = _error(await _call(node, "alter_topic", topic=t["name"], partitions=t["count"]))
            if code == kerr.INVALID_CONFIG:
                code = kerr.INVALID_PARTITIONS
        return {"name": t["name"], "error_code": code, "error_message": msg}

    return {"results": list(await asyncio.gather(*(one(t) for t in req.body["topics"])))}


async def describe_configs(node: Node, req: KafkaRequest) -> dict[str, Any]:
    async def one(r: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"resource_type": r["resource_type"], "resource_name": r["resource_name"], "configs": []}
        if r["resource_type"] != TOPIC:
            out.update(error_code=kerr.NONE)  # the node's own options are in its file, not here
            return out
        reply = await _call(node, "describe_topic", topic=r["resource_name"])
        code, msg = _error(reply)
        out.update(error_code=code, error_message=msg)
        if code != kerr.NONE:
            return out
        keys = r["configuration_keys"]
        overrides = reply.fields.get("overrides") or {}
        for name, value in sorted((reply.fields.get("config") or {}).items()):
            if keys is not None and name not in keys:
                continue
            overridden = name in overrides
            out["configs"].append(
                {
                    "name": name,
                    "value": _text(value),
                    "read_only": False,
                    "is_default": not overridden,
                    "config_source": SOURCE_TOPIC if overridden else SOURCE_DEFAULT,
                    "is_sensitive": False,
                    "synonyms": [],
                }
            )
        return out

    return {"results": list(await asyncio.gather(*(one(r) for r in req.body["resources"])))}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def _alter(node: Node, r: dict[str, Any], config: dict[str, Any], validate_only: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"resource_type": r["resource_type"], "resource_name": r["resource_name"]}
    if r["resource_type"] != TOPIC:
        code, msg = _refused("only topic configurations can be altered here (a node's are in its config file)")
    elif validate_only:
        code, msg = _refused("validate_only is not supported")
    else:
        code, msg = _error(await _call(node, "alter_topic", topic=r["resource_name"], config=config))
    out.update(error_code=code, error_message=msg)
    return out


async def alter_configs(node: Node, req: KafkaRequest) -> dict[str, Any]:
    """Kafka's AlterConfigs replaces the whole set: overrides not named are removed."""

    async def one(r: dict[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {c["name"]: c["value"] or "" for c in r["configs"]}
        if r["resource_type"] == TOPIC:
            current = await _call(node, "describe_topic", topic=r["resource_name"])
            for name in (current.fields.get("overrides") or {}) if current.error is None else ():
                config.setdefault(name, "")
        return await _alter(node, r, config, req.body["validate_only"])

    return {"responses": list(await asyncio.gather(*(one(r) for r in req.body["resources"])))}


async def incremental_alter_configs(node: Node, req: KafkaRequest) -> dict[str, Any]:
    async def one(r: dict[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for c in r["configs"]:
            if c["config_operation"] not in (SET, DELETE):
                code, msg = _refused("only SET and DELETE are supported (no APPEND or SUBTRACT)")
                return {
                    "resource_type": r["resource_type"],
                    "resource_name": r["resource_name"],
                    "error_code": code,
                    "error_message": msg,
                }
            config[c["name"]] = (c["value"] or "") if c["config_operation"] == SET else ""
        return await _alter(node, r, config, req.body["validate_only"])

    return {"responses": list(await asyncio.gather(*(one(r) for r in req.body["resources"])))}


async def delete_records(node: Node, req: KafkaRequest) -> dict[str, Any]:
    async def one(topic: str, p: dict[str, Any]) -> dict[str, Any]:
        partition, offset = p["partition_index"], p["offset"]
        out: dict[str, Any] = {"partition_index": partition, "low_watermark": -1, "error_code": kerr.NONE}
        if offset < -1:
            out["error_code"] = kerr.OFFSET_OUT_OF_RANGE  # Kafka's answer to a negative offset other than -1
            return out
        backend = node.backend
        try:
            endpoint = await backend.leader(topic, partition) if partition >= 0 else None
            if endpoint is None:
                out["error_code"] = kerr.UNKNOWN_TOPIC_OR_PARTITION
                return out
            reply = await backend.request(
                endpoint,
                "delete_records",
                DELETE_RECORDS_TIMEOUT_S,
                topic=topic,
                partition=partition,
                offset=offset,
            )
        except SluiceError as exc:
            reply = Reply(0, {}, [], exc)
        if reply.error is not None:
            out["error_code"] = kerr.kafka_code(reply.error)
            if reply.error.invalid_metadata or reply.error.code == "REQUEST_TIMED_OUT":
                backend.forget(topic, partition)
            return out
        out["low_watermark"] = reply.fields["low_watermark"]
        return out

    topics = []
    for t in req.body["topics"]:
        parts = await asyncio.gather(*(one(t["name"], p) for p in t["partitions"]))
        topics.append({"name": t["name"], "partitions": list(parts)})
    return {"topics": topics}
