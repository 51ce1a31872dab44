"""The PostgreSQL sink's reading of a record: envelope or plain row, tombstones,
unavailable TOAST values left out, and the records it must refuse (dead-lettered)."""

from __future__ import annotations

import orjson
import pytest

from appliance.connect.envelope import UNAVAILABLE
from appliance.connect.pg_sink import RecordRejected, decode
from ipc.client.consumer import ConsumerRecord

PK = ("id",)


def rec(key: object, value: object) -> ConsumerRecord:
    k = None if key is None else key if isinstance(key, bytes) else orjson.dumps(key)
    v = None if value is None else value if isinstance(value, bytes) else orjson.dumps(value)
    return ConsumerRecord("t", 0, 0, 0, k, v, [])


def env(op: str, before: object = None, after: object = None) -> dict[str, object]:
    return {"op": op, "before": before, "after": after, "source": {}, "ts_ms": 0}


def test_envelopes_rows_and_tombstones() -> None:
    assert decode(rec({"id": 1}, env("c", after={"id": 1, "a": 2})), PK) == ("upsert", {"id": 1, "a": 2})
    assert decode(rec({"id": 1}, env("r", after={"id": 1})), PK) == ("upsert", {"id": 1})
    assert decode(rec({"id": 1}, env("u", after={"id": 1, "t": UNAVAILABLE})), PK) == ("upsert", {"id": 1})
    assert decode(rec({"id": 1}, env("d", before={"id": 1})), PK) == ("delete", {"id": 1})
    assert decode(rec(None, env("d", before={"id": 3, "x": 1})), PK) == ("delete", {"id": 3})
    assert decode(rec({"id": 1}, None), PK) == ("delete", {"id": 1})
    assert decode(rec({"id": 4}, {"a": 1}), PK) == ("upsert", {"a": 1, "id": 4})  # the key fills the row's key
    assert decode(rec(None, {"id": 5, "a": 1}), PK) == ("upsert", {"id": 5, "a": 1})
    assert decode(rec(None, env("t")), PK) == ("truncate", {})


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        (b"{", {"id": 1}, "the key is not JSON"),
        ([1], {"id": 1}, "the key is not a JSON object"),
        (None, None, "a tombstone without the primary key"),
        ({"other": 1}, None, "a tombstone without the primary key"),
        ({"id": 1}, b"nope", "the value is not JSON"),
        ({"id": 1}, [1, 2], "the value is not a JSON object"),
        ({"id": 1}, env("c"), "op 'c' without an 'after' object"),
        (None, env("d", before={"x": 1}), "a delete without its primary key"),
        (None, env("z", after={}), "unknown op 'z'"),
        (None, {"a": 1}, "no value for the primary key column 'id'"),
    ],
)
def test_refused(key: object, value: object, why: str) -> None:
    with pytest.raises(RecordRejected, match=why):
        decode(rec(key, value), PK)
