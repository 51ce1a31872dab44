"""Kafka request and response framing: the request header (v1, v2), the response
header (v0, v1), and the table of the APIs Sluice serves with their version ranges.

A request frame (after the int32 size prefix, which the listener reads) is::

    api_key int16, api_version int16, correlation_id int32, client_id nullable string (int16 length),
    [tagged fields: flexible versions only], body

Request header v2 (with tagged fields) goes with a flexible API version, v1 otherwise;
``client_id`` keeps the classic int16 length in both. The response header is the
correlation id, followed by tagged fields (v1) in flexible versions, except for
ApiVersions, whose response header is always v0 so that a client that sent a version
the broker does not know can still read the answer (KIP-511).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping
from typing import Any

from ipc.kafka import apis_admin, apis_data, apis_groups, apis_sasl
from ipc.kafka.schema import Api
from ipc.kafka.wire import KafkaDecodeError, Reader, Writer

APIS: dict[int, Api] = {
    a.key: a
    for a in (
        apis_sasl.SASL_HANDSHAKE,
        apis_sasl.SASL_AUTHENTICATE,
        apis_data.API_VERSIONS,
        apis_data.METADATA,
        apis_data.PRODUCE,
        apis_data.FETCH,
        apis_data.LIST_OFFSETS,
        apis_data.INIT_PRODUCER_ID,
        apis_groups.FIND_COORDINATOR,
        apis_groups.JOIN_GROUP,
        apis_groups.SYNC_GROUP,
        apis_groups.HEARTBEAT,
        apis_groups.LEAVE_GROUP,
        apis_groups.OFFSET_COMMIT,
        apis_groups.OFFSET_FETCH,
        apis_groups.LIST_GROUPS,
        apis_groups.DESCRIBE_GROUPS,
        apis_groups.DELETE_GROUPS,
        apis_admin.CREATE_TOPICS,
        apis_admin.DELETE_TOPICS,
        apis_admin.CREATE_PARTITIONS,
        apis_admin.DESCRIBE_CONFIGS,
        apis_admin.ALTER_CONFIGS,
        apis_admin.INCREMENTAL_ALTER_CONFIGS,
        apis_admin.DELETE_RECORDS,
    )
}
API_VERSIONS_KEY = apis_data.API_VERSIONS.key
_FIXED = struct.Struct(">hhi")
_SIZE = struct.Struct(">i")


class UnsupportedVersionError(KafkaDecodeError):
    """A known API at a version Sluice does not serve (ApiVersions gets an answer)."""


@dataclasses.dataclass(frozen=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None


def peek_header(frame: bytes | memoryview) -> tuple[int, int, int]:
    """(api key, api version, correlation id) of a frame, for an error reply or a log line."""
    if len(frame) < _FIXED.size:
        raise KafkaDecodeError(f"request of {len(frame)} bytes is shorter than a request header")
    key, version, cid = _FIXED.unpack_from(frame, 0)
    return int(key), int(version), int(cid)


def read_request(frame: bytes | memoryview) -> tuple[RequestHeader, Api, dict[str, Any]]:
    """Header and body of one request. An unknown API key or a version outside the
    served range raises (``UnsupportedVersionError`` for the latter)."""
    key, version, cid = peek_header(frame)
    api = APIS.get(key)
    if api is None:
        raise KafkaDecodeError(f"unknown api key {key} (correlation id {cid})")
    if not api.lo <= version <= api.hi:
        raise UnsupportedVersionError(f"{api.name} v{version} is not served (versions {api.lo}-{api.hi})")
    r = Reader(frame, _FIXED.size)
    client_id = r.string(False, nullable=True)
    flexible = api.is_flexible(version)
    if flexible:
        r.skip_tagged()
    body = api.decode_request(r, version)
    # Bytes after the body are ignored, as Kafka's broker ignores them: librdkafka (2.12 to
    # 2.16 at least) sends 3 of them after an all-topics Metadata v12 (AdminClient.list_topics)
    return RequestHeader(key, version, cid, client_id), api, body


def encode_response(api: Api, version: int, correlation_id: int, body: Mapping[str, Any]) -> bytes:
    """The whole response frame, size prefix included."""
    w = Writer()
    w.int32(0)  # the size, patched below
    w.int32(correlation_id)
    if api.is_flexible(version) and api.key != API_VERSIONS_KEY:
        w.no_tagged()
    api.encode_response(w, version, body)
    out = bytearray(w.getvalue())
    _SIZE.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def encode_request(api: Api, version: int, correlation_id: int, body: Mapping[str, Any], client_id: str = "t") -> bytes:
    """A request frame, size prefix included (tests, and a Kafka client side)."""
    w = Writer()
    w.int32(0)
    w.int16(api.key)
    w.int16(version)
    w.int32(correlation_id)
    w.string(client_id, False)
    if api.is_flexible(version):
        w.no_tagged()
    api.encode_request(w, version, body)
    out = bytearray(w.getvalue())
    _SIZE.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def decode_response(api: Api, version: int, frame: bytes | memoryview) -> tuple[int, dict[str, Any]]:
    """(correlation id, body) of a response frame without its size prefix (tests)."""
    r = Reader(frame)
    cid = r.int32()
    if api.is_flexible(version) and api.key != API_VERSIONS_KEY:
        r.skip_tagged()
    return cid, api.decode_response(r, version)


def supported_versions() -> list[dict[str, int]]:
    """ApiVersions' list: every API Sluice serves, with its version range."""
    apis = sorted(APIS.values(), key=lambda a: a.key)
    return [{"api_key": a.key, "min_version": a.lo, "max_version": a.hi} for a in apis]
