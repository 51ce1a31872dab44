"""Change events in the Debezium envelope: the record key (the row's primary key) and the
value (what happened to the row) as JSON.

Value::

    {"before": {...} | null, "after": {...} | null,
     "source": {"version", "connector": "postgresql", "name": <topic prefix>, "db",
                "schema", "table", "lsn", "txId", "ts_ms", "snapshot": "true" | "false"},
     "op": "r" (snapshot read) | "c" | "u" | "d" | "t" (truncate), "ts_ms"}

Key: ``{"<pk column>": value, ...}`` in the table's column order. A delete is followed by
a tombstone (the same key, no value), so compaction can forget the row.

Column values: pgoutput and the snapshot both give PostgreSQL's text output, turned into
JSON the same way for both (``convert``): booleans, integers and floats as JSON
booleans and numbers, NaN and infinities and everything else (numeric, dates and times,
json, arrays, bytea in hex) as the text PostgreSQL prints. A TOASTed column an update
did not change has no value in the WAL: it is given as ``UNAVAILABLE`` (Debezium's
``__debezium_unavailable_value`` idea), never as null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

from appliance.connect.pgoutput import Column, UnchangedToast, Value

VERSION = "sluice-1"
UNAVAILABLE = "__sluice_unavailable_value"

BOOL = {16}
INTS = {20, 21, 23, 26}  # int8, int2, int4, oid
FLOATS = {700, 701}  # float4, float8


def convert(type_oid: int, text: Value) -> Any:
    if text is None:
        return None
    if isinstance(text, UnchangedToast):
        return UNAVAILABLE
    if type_oid in BOOL:
        return text in ("t", "true")  # pgoutput prints t/f, the snapshot's ::text true/false
    if type_oid in INTS:
        return int(text)
    if type_oid in FLOATS:
        f = float(text)
        return f if math.isfinite(f) else text
    return text


def row(columns: Sequence[Column], values: Sequence[Value]) -> dict[str, Any]:
    return {c.name: convert(c.type_oid, v) for c, v in zip(columns, values, strict=False)}


def key_of(columns: Sequence[Column], key_names: Sequence[str], values: dict[str, Any]) -> bytes | None:
    """The record key: the primary key's columns (None for a table without one)."""
    if not key_names:
        return None
    return orjson.dumps({name: values.get(name) for name in key_names})


def source(
    prefix: str, db: str, schema: str, table: str, lsn: int, xid: int | None, ts_ms: int, snapshot: bool
) -> dict[str, Any]:
    return {
        "version": VERSION,
        "connector": "postgresql",
        "name": prefix,
        "db": db,
        "schema": schema,
        "table": table,
        "lsn": lsn,
        "txId": xid,
        "ts_ms": ts_ms,
        "snapshot": "true" if snapshot else "false",
    }


def value(
    op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, src: dict[str, Any], ts_ms: int
) -> bytes:
    return orjson.dumps({"before": before, "after": after, "source": src, "op": op, "ts_ms": ts_ms})
