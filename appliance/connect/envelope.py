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

from appliance.connect.api import SourceRecord
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


def source_parts(
    prefix: str, db: str, schema: str, table: str, xid: int | None, ts_ms: int, snapshot: bool
) -> tuple[bytes, bytes]:
    """``source`` as JSON around its ``lsn``: ``head + str(lsn).encode() + tail`` is
    ``orjson.dumps(source(...))``, byte for byte (one transaction's changes of one table
    differ only by their LSN: the stream serializes the rest once)."""
    whole = orjson.dumps(source(prefix, db, schema, table, 0, xid, ts_ms, snapshot))
    head, sep, tail = whole.partition(b'"lsn":0,')
    assert sep, whole
    return head + b'"lsn":', b"," + tail


def value(
    op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, src: dict[str, Any] | bytes, ts_ms: int
) -> bytes:
    """The envelope; ``src`` a dict, or already JSON (``source_parts``): the same bytes."""
    if isinstance(src, bytes):
        dumps = orjson.dumps
        return b"".join(
            (
                b'{"before":',
                dumps(before),
                b',"after":',
                dumps(after),
                b',"source":',
                src,
                b',"op":"',
                op.encode(),
                b'","ts_ms":',
                str(ts_ms).encode(),
                b"}",
            )
        )
    return orjson.dumps({"before": before, "after": after, "source": src, "op": op, "ts_ms": ts_ms})


# ---- the snapshot, in bulk ------------------------------------------------------------------
def snapshot_query(schema: str, table: str, columns: Sequence[Column], key: Sequence[str]) -> str:
    """The snapshot's SELECT: PostgreSQL writes each row's ``after`` object itself
    (``row_to_json``, in C), the values as ``convert`` gives them: booleans, integers and
    floats as JSON (``to_json`` quotes NaN and infinities, as ``convert`` keeps their
    text), every other type as its text (``::text``); then the key columns' text."""

    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    native = BOOL | INTS | FLOATS
    cols = ", ".join(q(c.name) if c.type_oid in native else f"{q(c.name)}::text AS {q(c.name)}" for c in columns)
    keys = "".join(f", r.{q(k)}::text" for k in key)
    return f"SELECT row_to_json(r)::text{keys} FROM (SELECT {cols} FROM {q(schema)}.{q(table)}) r"


def snapshot_records(
    topic: str,
    columns: Sequence[Column],
    key: Sequence[str],
    rows: Sequence[Sequence[Any]],
    src: dict[str, Any],
    ts_ms: int,
) -> list[SourceRecord]:
    """``r`` records of rows from ``snapshot_query`` (text as bytes): the value is the
    envelope spliced around the row's JSON, the key as ``key_of`` makes it (the same
    bytes as the stream's keys, so one row's records share a partition)."""
    head = b'{"before":null,"after":'
    tail = b',"source":' + orjson.dumps(src) + b',"op":"r","ts_ms":' + str(ts_ms).encode() + b"}"
    types = {c.name: c.type_oid for c in columns}
    dumps = orjson.dumps
    if not key:
        return [SourceRecord(topic, None, head + r[0] + tail) for r in rows]
    if len(key) == 1 and types[key[0]] in INTS:  # the common case: one integer column
        k0 = dumps(key[0]).decode()
        start, end = ("{" + k0 + ":").encode(), b"}"
        return [SourceRecord(topic, start + r[1] + end, head + r[0] + tail) for r in rows]
    key_types = [(k, types[k]) for k in key]
    out = []
    for r in rows:
        texts = [None if v is None else v.decode() for v in r[1:]]
        k = {name: convert(oid, v) for (name, oid), v in zip(key_types, texts, strict=True)}
        out.append(SourceRecord(topic, dumps(k), head + r[0] + tail))
    return out
