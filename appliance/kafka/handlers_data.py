"""The Kafka listener's data-path handlers: ApiVersions, Metadata, Produce, Fetch,
ListOffsets, InitProducerId. Each turns a decoded Kafka request (``KafkaRequest``)
into Sluice requests to the front and the partition leaders' workers (``Backend``)
and their replies into the Kafka response's body; never a socket, never a byte of
framing (appliance/kafka/server.py does those). docs/kafka.md has the mapping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from appliance.kafka.backend import Backend
from appliance.kafka.server import KafkaRequest
from ipc.errors import CorruptRecordError, SluiceError
from ipc.kafka import errors as kerr
from ipc.kafka.batch import iter_to_sluice, sluice_to_kafka
from ipc.kafka.protocol import supported_versions
from ipc.protocol import Reply

log = logging.getLogger(__name__)

MARGIN_S = 5.0  # a Sluice request's timeout beyond the time the Kafka request allows
MAX_SLUICE_FETCH = 2**30


@dataclasses.dataclass
class Node:
    """What the handlers need of the node they speak for."""

    node_id: int
    host: str  # advertised Kafka host and port
    port: int
    backend: Backend
    cluster_id: str = "sluice"
    # node id -> the Kafka address it published (HOST:PORT), from the latest metadata replies
    kafka_addresses: dict[int, str] = dataclasses.field(default_factory=dict)

    def learn_brokers(self, brokers: list[dict[str, Any]]) -> None:
        self.kafka_addresses = {int(b["node_id"]): str(b.get("kafka") or "") for b in brokers}

    async def kafka_broker(self, node_id: int, endpoint: str) -> dict[str, Any]:
        """``broker`` for a node named outside a metadata reply (a group coordinator):
        its published Kafka address, asked once when not known yet."""
        if node_id != self.node_id and not self.kafka_addresses.get(node_id):
            reply = await self.backend.call("metadata", topics=[], allow_auto_create=False)
            if reply.error is None:
                self.learn_brokers(reply.fields["brokers"])
        return self.broker(node_id, endpoint, self.kafka_addresses.get(node_id, ""))

    def broker(self, node_id: int, endpoint: str, kafka: str = "") -> dict[str, Any]:
        """A node as a Kafka broker: this node at its advertised Kafka address; another at
        the Kafka address it published through the coordinator (``kafka``, HOST:PORT),
        or, for a node that published none (no listener, or a release before it did),
        at the host of its advertised front endpoint and this node's Kafka port."""
        if node_id == self.node_id:
            return {"node_id": node_id, "host": self.host, "port": self.port}
        host, _, port = kafka.rpartition(":")
        if host and port.isdigit():
            return {"node_id": node_id, "host": host.strip("[]"), "port": int(port)}
        host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
        return {"node_id": node_id, "host": host, "port": self.port}


def _throttle_ms(reply: Reply | None) -> int:
    """The throttle time a worker's reply carries (a quota: KIP-219), or 0."""
    if reply is None:
        return 0
    ms = reply.fields.get("throttle_time_ms") if reply.error is None else getattr(reply.error, "throttle_time_ms", 0)
    return ms if isinstance(ms, int) and ms > 0 else 0


def _err(reply: Reply) -> int:
    return kerr.kafka_code(reply.error) if reply.error is not None else kerr.NONE


async def api_versions(node: Node, req: KafkaRequest) -> dict[str, Any]:
    return {"api_keys": supported_versions()}


async def metadata(node: Node, req: KafkaRequest) -> dict[str, Any]:
    topics = req.body["topics"]
    names = None if topics is None else [t["name"] for t in topics if t["name"] is not None]
    if req.version == 0 and names == []:
        names = None  # v0: an empty list means every topic
    fields: dict[str, Any] = {"topics": names, "allow_auto_create": bool(req.body["allow_auto_topic_creation"])}
    reply = await node.backend.call("metadata", **fields)
    reply.raise_for_error()
    node.backend.learn(reply.fields)
    node.learn_brokers(reply.fields["brokers"])
    out_topics = []
    for t in reply.fields["topics"]:
        error = t.get("error")
        code = kerr.kafka_code(error["code"]) if error else kerr.NONE
        if error and error["code"] == "INVALID_CONFIG":
            code = kerr.INVALID_TOPIC_EXCEPTION
        partitions = []
        for p in t.get("partitions") or []:
            perr = p.get("error")
            partitions.append(
                {
                    "error_code": kerr.kafka_code(perr["code"]) if perr else kerr.NONE,
                    "partition_index": p["partition"],
                    "leader_id": p["leader"],
                    "leader_epoch": p["leader_epoch"],
                    "replica_nodes": p["replicas"],
                    "isr_nodes": p["isr"],
                    "offline_replicas": [],
                }
            )
        out_topics.append(
            {
                "error_code": code,
                "name": t["topic"],
                "is_internal": t["topic"].startswith("__"),
                "partitions": partitions,
            }
        )
    return {
        "brokers": [node.broker(b["node_id"], b["endpoint"], b.get("kafka") or "") for b in reply.fields["brokers"]],
        "cluster_id": node.cluster_id,
        "controller_id": reply.fields.get("controller", -1),
        "topics": out_topics,
    }


# ---- produce --------------------------------------------------------------------------------
async def produce(node: Node, req: KafkaRequest) -> dict[str, Any] | None:
    body = req.body
    acks = body["acks"]
    timeout_ms = max(0, min(body["timeout_ms"], 3_600_000))
    fixed: int | None = None
    if body["transactional_id"] is not None:
        fixed = kerr.TRANSACTIONAL_ID_AUTHORIZATION_FAILED  # no transactions (docs/kafka.md)
    elif acks not in (0, 1, -1):
        fixed = kerr.INVALID_REQUIRED_ACKS
    jobs = []
    for t in body["topic_data"]:
        for p in t["partition_data"]:
            jobs.append(_produce_partition(node, t["name"], p["index"], p["records"], acks, timeout_ms, fixed))
    results = await asyncio.gather(*jobs)
    if acks == 0:
        return None
    by_topic: dict[str, list[dict[str, Any]]] = {}
    throttle = 0
    for topic, part in results:
        throttle = max(throttle, part.pop("throttle_ms", 0))
        by_topic.setdefault(topic, []).append(part)
    return {
        "responses": [{"name": t, "partition_responses": ps} for t, ps in by_topic.items()],
        "throttle_time_ms": throttle,
    }


async def _produce_partition(
    node: Node, topic: str, partition: int, data: Any, acks: int, timeout_ms: int, fixed: int | None
) -> tuple[str, dict[str, Any]]:
    out: dict[str, Any] = {"index": partition, "error_code": kerr.NONE, "base_offset": -1}
    if fixed is not None:
        out["error_code"] = fixed
        return topic, out
    try:
        if data is None:
            raise CorruptRecordError("null records")
        batches = iter_to_sluice(data)
    except SluiceError as exc:
        out["error_code"] = kerr.kafka_code(exc)
        out["error_message"] = exc.message[:500]
        return topic, out
    backend = node.backend
    try:
        endpoint = await backend.leader(topic, partition)
        if endpoint is None:
            out["error_code"] = kerr.UNKNOWN_TOPIC_OR_PARTITION
            return topic, out
        fields = {"topic": topic, "partition": partition, "acks": acks, "timeout_ms": timeout_ms}
        if acks == 0:
            await backend.send_only(endpoint, "produce", batches, **fields)
            return topic, out
        reply = await backend.request(endpoint, "produce", timeout_ms / 1000 + MARGIN_S, batches, **fields)
    except SluiceError as exc:
        reply = Reply(0, {}, [], exc)
    out["throttle_ms"] = _throttle_ms(reply)
    if reply.error is not None:
        out["error_code"] = _err(reply)
        out["error_message"] = reply.error.message[:500]
        if reply.error.invalid_metadata or reply.error.code == "REQUEST_TIMED_OUT":
            backend.forget(topic, partition)
        return topic, out
    out["base_offset"] = reply.fields["base_offsets"][0]
    out["log_start_offset"] = reply.fields.get("log_start_offset", -1)
    return topic, out


# ---- fetch ----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Part:
    topic: str
    partition: int
    offset: int
    max_bytes: int
    reply: Reply | None = None
    data: bytes = b""


async def _fetch_one(node: Node, part: _Part, max_wait_ms: int, min_bytes: int) -> Reply:
    backend = node.backend
    try:
        endpoint = await backend.leader(part.topic, part.partition)
        if endpoint is None:
            return Reply(0, {}, [], SluiceError("unknown"))  # answered UNKNOWN_TOPIC_OR_PARTITION below
        reply = await backend.request(
            endpoint,
            "fetch",
            max_wait_ms / 1000 + MARGIN_S,
            topic=part.topic,
            partition=part.partition,
            offset=part.offset,
            max_bytes=max(1, min(part.max_bytes, MAX_SLUICE_FETCH)),
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
        )
    except SluiceError as exc:
        return Reply(0, {}, [], exc)
    if reply.error is not None and (reply.error.invalid_metadata or reply.error.code == "REQUEST_TIMED_OUT"):
        backend.forget(part.topic, part.partition)
    return reply


def _size(reply: Reply | None) -> int:
    if reply is None or reply.error is not None or not reply.frames:
        return 0
    return len(reply.frames[0])


async def fetch(node: Node, req: KafkaRequest) -> dict[str, Any]:
    body = req.body
    max_wait_ms = max(0, min(body["max_wait_ms"], 300_000))
    min_bytes = max(0, body["min_bytes"])
    deadline = time.monotonic() + max_wait_ms / 1000
    parts = [
        _Part(t["topic"], p["partition"], p["fetch_offset"], p["partition_max_bytes"])
        for t in body["topics"]
        for p in t["partitions"]
    ]
    if len(parts) == 1:  # the common case: one long poll at the worker
        parts[0].reply = await _fetch_one(node, parts[0], max_wait_ms, min_bytes)
    elif parts:
        replies = await asyncio.gather(*(_fetch_one(node, p, 0, 0) for p in parts))
        for p, r in zip(parts, replies, strict=True):
            p.reply = r
        if sum(map(_size, replies)) < max(min_bytes, 1) and max_wait_ms > 0:
            await _long_poll(node, parts, deadline)
    throttle = max((_throttle_ms(p.reply) for p in parts), default=0)
    return {"responses": _fetch_responses(parts, body["max_bytes"]), "throttle_time_ms": throttle}


async def _long_poll(node: Node, parts: list[_Part], deadline: float) -> None:
    """Park a fetch at every worker; the first that brings data (or the deadline) ends it."""
    left_ms = max(1, int((deadline - time.monotonic()) * 1000))
    polls = {
        asyncio.get_running_loop().create_task(_fetch_one(node, p, left_ms, 1)): p
        for p in parts
        if p.reply is not None and p.reply.error is None
    }
    pending = set(polls)
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            got = False
            for task in done:
                reply = task.result()
                if reply.error is None:
                    polls[task].reply = reply
                    got = got or _size(reply) > 0
            if got:
                return
    finally:
        for task in pending:
            task.cancel()  # the worker answers later; that reply is dropped (nobody waits for its id)


def _fetch_responses(parts: list[_Part], max_bytes: int) -> list[dict[str, Any]]:
    by_topic: dict[str, list[dict[str, Any]]] = {}
    budget = max_bytes
    for p in parts:
        out: dict[str, Any] = {"partition_index": p.partition, "records": b""}
        reply = p.reply
        if reply is None or reply.error is not None:
            code = kerr.UNKNOWN_TOPIC_OR_PARTITION
            if reply is not None and reply.error is not None and reply.error.code != "UNKNOWN_SERVER_ERROR":
                code = kerr.kafka_code(reply.error)
            out["error_code"] = code
        else:
            hw = reply.fields["high_watermark"]
            out.update(
                error_code=kerr.NONE,
                high_watermark=hw,
                last_stable_offset=hw,
                log_start_offset=reply.fields.get("log_start_offset", -1),
            )
            if reply.frames and budget > 0:
                frame = reply.frames[0]
                data = sluice_to_kafka(frame.buffer if hasattr(frame, "buffer") else frame)
                budget -= len(data)
                out["records"] = data
        out["aborted_transactions"] = None
        by_topic.setdefault(p.topic, []).append(out)
    return [{"topic": t, "partitions": ps} for t, ps in by_topic.items()]


# ---- list offsets ---------------------------------------------------------------------------
async def list_offsets(node: Node, req: KafkaRequest) -> dict[str, Any]:
    async def one(topic: str, partition: int, timestamp: int) -> dict[str, Any]:
        out: dict[str, Any] = {"partition_index": partition, "error_code": kerr.NONE}
        if timestamp < -2:
            out["error_code"] = kerr.INVALID_REQUEST  # -3 (max timestamp, KIP-734) is not served
            return out
        try:
            endpoint = await node.backend.leader(topic, partition)
            if endpoint is None:
                out["error_code"] = kerr.UNKNOWN_TOPIC_OR_PARTITION
                return out
            reply = await node.backend.request(
                endpoint, "list_offsets", 30.0, topic=topic, partition=partition, timestamp=timestamp
            )
        except SluiceError as exc:
            reply = Reply(0, {}, [], exc)
        if reply.error is not None:
            out["error_code"] = _err(reply)
            if reply.error.invalid_metadata:
                node.backend.forget(topic, partition)
            return out
        out.update(
            offset=reply.fields["offset"],
            timestamp=reply.fields["timestamp"],
            leader_epoch=reply.fields.get("leader_epoch", -1),
        )
        return out

    topics = []
    for t in req.body["topics"]:
        parts = await asyncio.gather(*(one(t["name"], p["partition_index"], p["timestamp"]) for p in t["partitions"]))
        topics.append({"name": t["name"], "partitions": list(parts)})
    return {"topics": topics}


async def init_producer_id(node: Node, req: KafkaRequest) -> dict[str, Any]:
    if req.body["transactional_id"] is not None:
        return {"error_code": kerr.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}  # no transactions (docs/kafka.md)
    try:
        reply = await node.backend.call("init_producer_id")
    except SluiceError as exc:
        return {"error_code": kerr.kafka_code(exc)}
    if reply.error is not None:
        return {"error_code": _err(reply)}
    return {"producer_id": reply.fields["producer_id"], "producer_epoch": reply.fields["producer_epoch"]}
