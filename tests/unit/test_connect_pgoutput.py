"""pgoutput v1 messages built byte by byte after PostgreSQL's documented layout, parsed;
malformed ones refused with a message; the envelope's value conversion; and the CDC
source's position bookkeeping (skip what was stored before a restart, never more) driven
with parsed messages, without a database."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest

from appliance.connect import envelope
from appliance.connect.pg_source import PostgresSource, Table, transient
from appliance.connect.pgoutput import (
    PG_EPOCH_US,
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    PgOutputError,
    Relation,
    Truncate,
    Update,
    lsn_text,
    parse,
    parse_lsn,
)


def s(text: str) -> bytes:
    return text.encode() + b"\0"


def tup(*cols: str | None | object) -> bytes:
    out = struct.pack(">h", len(cols))
    for c in cols:
        if c is None:
            out += b"n"
        elif c is UNCHANGED:
            out += b"u"
        else:
            assert isinstance(c, str)
            out += b"t" + struct.pack(">i", len(c.encode())) + c.encode()
    return out


def relation(oid: int = 16385) -> bytes:
    cols = [(1, "id", 23), (0, "name", 25), (0, "flag", 16)]
    body = b"R" + struct.pack(">I", oid) + s("public") + s("items") + b"d" + struct.pack(">h", len(cols))
    for flags, name, typ in cols:
        body += struct.pack(">b", flags) + s(name) + struct.pack(">Ii", typ, -1)
    return body


def test_parse_each_message() -> None:
    assert parse(b"B" + struct.pack(">qqI", 0x1_0000_0010, 5, 77)) == Begin(0x1_0000_0010, 5 + PG_EPOCH_US, 77)
    assert parse(b"C" + struct.pack(">bqqq", 0, 100, 120, 9)) == Commit(100, 120, 9 + PG_EPOCH_US)
    rel = parse(relation())
    assert isinstance(rel, Relation)
    assert (rel.oid, rel.namespace, rel.name, rel.replica_identity) == (16385, "public", "items", "d")
    assert rel.columns == (Column("id", 23, True), Column("name", 25, False), Column("flag", 16, False))
    ins = parse(b"I" + struct.pack(">I", 16385) + b"N" + tup("1", None, "t"))
    assert ins == Insert(16385, ["1", None, "t"])
    upd = parse(b"U" + struct.pack(">I", 1) + b"O" + tup("1", "a", "f") + b"N" + tup("1", UNCHANGED, "t"))
    assert upd == Update(1, ["1", "a", "f"], False, ["1", UNCHANGED, "t"])
    assert parse(b"U" + struct.pack(">I", 1) + b"N" + tup("2")) == Update(1, None, False, ["2"])
    assert parse(b"U" + struct.pack(">I", 1) + b"K" + tup("1", None) + b"N" + tup("2", "x")).old_is_key
    assert parse(b"D" + struct.pack(">I", 1) + b"K" + tup("1", None, None)) == Delete(1, ["1", None, None], True)
    assert parse(b"T" + struct.pack(">Ib", 2, 3) + struct.pack(">II", 5, 6)) == Truncate((5, 6), True, True)
    assert parse(b"O" + struct.pack(">q", 1) + s("origin")).kind == "Origin"  # type: ignore[union-attr]
    assert parse(b"Y" + struct.pack(">I", 1) + s("public") + s("mood")).kind == "Type"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "message too short reading the message type"),
        (b"Z", "unknown pgoutput message type 'Z'"),
        (b"B" + b"\0" * 10, "message too short reading Begin"),
        (b"C" + struct.pack(">bqqq", 0, 1, 2, 3) + b"x", "1 trailing bytes after Commit"),
        (b"I" + struct.pack(">I", 1) + b"X", "Insert without its 'N' tuple"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", 99) + b"ab", "too short"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"b", "unknown column kind 'b'"),
        (b"R" + struct.pack(">I", 1) + b"public", "unterminated string reading Relation namespace"),
        (b"D" + struct.pack(">I", 1) + b"N", "Delete: expected a 'K' or 'O' tuple"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", -1), "negative column count"),
    ],
)
def test_malformed_messages_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(PgOutputError, match=message):
        parse(data)


def test_lsn_notation_and_conversion() -> None:
    assert lsn_text(0x16_B374D848) == "16/B374D848"
    assert parse_lsn("16/B374D848") == 0x16_B374D848
    assert envelope.convert(16, "t") is True and envelope.convert(16, "true") is True
    assert envelope.convert(16, "f") is False
    assert envelope.convert(20, "-9007199254740993") == -9007199254740993
    assert envelope.convert(701, "1.5") == 1.5 and envelope.convert(701, "NaN") == "NaN"
    assert envelope.convert(1700, "12.30") == "12.30"  # numeric: its text, no float rounding
    assert envelope.convert(25, None) is None
    assert envelope.convert(25, UNCHANGED) == envelope.UNAVAILABLE
    assert transient("connection to server failed: Connection refused")
    assert transient("FATAL:  the database system is starting up")
    assert not transient('FATAL:  password authentication failed for user "x"')


def source() -> PostgresSource:
    opts: dict[str, Any] = {
        "topic.prefix": "pg",
        "database.dbname": "db",
        "database.host": "h",
        "database.port": 5432,
        "database.user": "u",
        "database.password": "",
        "publication.name": "",
        "slot.name": "",
        "poll.max.records": 100,
    }
    src = PostgresSource("c", opts)
    cols = (Column("id", 23, True), Column("name", 25, False))
    src.tables[1] = Table(1, "public", "items", cols, ("id",), "pg.public.items")
    src.snapshot_done = True
    return src


def feed(src: PostgresSource, *msgs: Any) -> list[Any]:
    out: list[Any] = []
    for i, m in enumerate(msgs):
        src._handle(m, 1000 + i, out)
    return out


def tx(final: int, end: int, *changes: Any) -> list[Any]:
    return [Begin(final, PG_EPOCH_US, 7), *changes, Commit(final, end, PG_EPOCH_US)]


def test_stream_events_and_position() -> None:
    src = source()
    out = feed(
        src,
        *tx(100, 110, Insert(1, ["1", "a"]), Update(1, None, False, ["1", "b"]), Delete(1, ["1", None], True)),
    )
    assert [(r.key, orjson.loads(r.value)["op"] if r.value else None) for r in out] == [
        (b'{"id":1}', "c"),
        (b'{"id":1}', "u"),
        (b'{"id":1}', "d"),
        (b'{"id":1}', None),
    ]
    v = orjson.loads(out[0].value)
    assert v["after"] == {"id": 1, "name": "a"} and v["before"] is None
    assert v["source"]["lsn"] == 1001 and v["source"]["txId"] == 7 and v["source"]["table"] == "items"
    assert src.offset() == {"snapshot_done": True, "lsn": 110, "tx": None}
    # mid-transaction: the position names the transaction and how many events were read
    feed(src, Begin(200, PG_EPOCH_US, 8), Insert(1, ["2", "x"]), Insert(1, ["3", "y"]))
    assert src.offset() == {"snapshot_done": True, "lsn": 110, "tx": {"final_lsn": 200, "events": 2}}


def test_restart_skips_what_was_stored_and_nothing_more() -> None:
    src = source()
    src.lsn = 110
    src.resume_tx = {"final_lsn": 200, "events": 2}
    out = feed(
        src,
        *tx(100, 110, Insert(1, ["1", "a"])),  # ended at the stored position: skipped
        *tx(200, 210, Insert(1, ["2", "x"]), Insert(1, ["3", "y"]), Insert(1, ["4", "z"])),  # 2 of 3 stored
        *tx(300, 310, Insert(1, ["5", "w"])),
    )
    assert [r.key for r in out] == [b'{"id":4}', b'{"id":5}']
    assert src.offset()["lsn"] == 310


def test_key_change_is_delete_tombstone_create_and_truncate() -> None:
    src = source()
    out = feed(src, *tx(100, 110, Update(1, ["1", None], True, ["2", "n"]), Truncate((1,), False, False)))
    ops = [(r.key, orjson.loads(r.value)["op"] if r.value else None) for r in out]
    assert ops == [(b'{"id":1}', "d"), (b'{"id":1}', None), (b'{"id":2}', "c"), (None, "t")]


@pytest.mark.parametrize("xid", [741, None])
def test_spliced_envelopes_are_the_same_bytes(xid: int | None) -> None:
    """The stream's source serialized once per transaction, and the snapshot's records
    spliced around PostgreSQL's row JSON, give the bytes ``envelope.value`` gives."""
    head, tail = envelope.source_parts("shop", "db", "public", 'we"ird', xid, 1765, xid is None)
    for lsn in (0, 23876544):
        src = envelope.source("shop", "db", "public", 'we"ird', lsn, xid, 1765, xid is None)
        after = {"id": 1, "name": 'é"x', "ok": True}
        assert envelope.value("u", {"id": 0}, after, head + str(lsn).encode() + tail, 9) == envelope.value(
            "u", {"id": 0}, after, src, 9
        )
    cols = (Column("id", 23, True), Column("name", 25, False))
    src = envelope.source("shop", "db", "public", "t", 5, None, 7, True)
    (rec,) = envelope.snapshot_records("top", cols, ("id",), [(b'{"id":42,"name":"n"}', b"42")], src, 9)
    assert rec.key == envelope.key_of(cols, ("id",), {"id": 42}) == b'{"id":42}'
    assert rec.value == envelope.value("r", None, {"id": 42, "name": "n"}, src, 9)
    cols2 = (Column("a", 25, True), Column("b", 20, True))
    (rec,) = envelope.snapshot_records("top", cols2, ("a", "b"), [(b'{"a":"x","b":3}', b"x", b"3")], src, 9)
    assert rec.key == envelope.key_of(cols2, ("a", "b"), {"a": "x", "b": 3})
