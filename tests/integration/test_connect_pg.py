"""The PostgreSQL CDC source on a real node and a real, throwaway PostgreSQL: the
snapshot taken while the table changes, then the stream; replaying the topic rebuilds the
table exactly; every streamed change once; the Debezium envelope, tombstones, a schema
change mid-stream; SIGKILL of the connector mid-stream and a PostgreSQL restart lose
nothing; a wrong password, ``wal_level`` not logical and a table without a primary key
give one clear error in the connector's status."""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ipc.client import Consumer
from tests.integration.conftest import Node, wait_until
from tests.integration.test_connect_pg_support import PgCluster
from tests.integration.test_connect_support import connect_status, declare, wait_connector

pytestmark = pytest.mark.slow


@pytest.fixture(name="pg")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        yield cluster.start()
    finally:
        cluster.destroy()


def read_topic(node: Node, topic: str) -> list[Any]:
    """Every record of ``topic``, partition by partition, in offset order."""
    with node.admin() as admin:
        n = admin.partition_count(topic)
    pairs = [(topic, p) for p in range(n)]
    out: list[Any] = []
    with Consumer(node.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=50) as c:
        c.assign(pairs)
        c.seek_to_beginning()
        ends = c.end_offsets(pairs)
        got: dict[tuple[str, int], list[Any]] = collections.defaultdict(list)

        def done() -> bool:
            for r in c.poll(200):
                got[(r.topic, r.partition)].append(r)
            return all(c.position(*p) >= ends[p] for p in pairs)

        wait_until(done, 60, f"all of {topic}")
        for p in pairs:
            out.extend(got[p])
    return out


def replay(records: list[Any]) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for r in records:
        key = orjson.loads(r.key)["id"]
        if r.value is None:
            state.pop(key, None)
            continue
        v = orjson.loads(r.value)
        if v["op"] in ("r", "c", "u"):
            state[key] = v["after"]
        elif v["op"] == "d":
            state.pop(key, None)
    return state


def table_state(pg: PgCluster, table: str = "items") -> dict[int, dict[str, Any]]:
    rows = pg.sql(f"SELECT id, name, qty, flag FROM {table}")
    return {r[0]: {"id": r[0], "name": r[1], "qty": r[2], "flag": r[3]} for r in rows}


def workload(pg: PgCluster, ops: int, seed: int, first_id: int, stop: threading.Event | None = None) -> int:
    """Mixed inserts, updates and deletes in small transactions; returns the next id."""
    rnd = random.Random(seed)
    conn = pg.connect()
    conn.autocommit = False
    next_id = first_id
    try:
        with conn.cursor() as cur:
            for i in range(ops):
                if stop is not None and stop.is_set():
                    break
                k = rnd.random()
                if k < 0.5:
                    cur.execute("INSERT INTO items VALUES (%s, %s, %s, %s)", (next_id, f"n{next_id}", i, i % 2 == 0))
                    next_id += 1
                elif k < 0.85:
                    cur.execute(
                        "UPDATE items SET qty = qty + 1, name = %s WHERE id = %s", (f"u{i}", rnd.randrange(next_id))
                    )
                else:
                    cur.execute("DELETE FROM items WHERE id = %s", (rnd.randrange(next_id),))
                if i % 5 == 4:
                    conn.commit()
            conn.commit()
    finally:
        conn.close()
    return next_id


def make_items(pg: PgCluster, rows: int) -> None:
    pg.sql("CREATE TABLE items (id int PRIMARY KEY, name text, qty int, flag boolean)")
    pg.sql(
        "INSERT INTO items SELECT g, 'n' || g, g, g %% 2 = 0 FROM generate_series(0, %s) g",
        (rows - 1,),
    )


def cdc_node(node_factory: Any, pg: PgCluster, **extra: Any) -> Node:
    node: Node = node_factory()
    opts = {
        **pg.options(),
        "topic.prefix": "pg",
        "table.include.list": "public.items",
        "offset.flush.interval.ms": 100,
        **extra,
    }
    declare(node, "cdc", "postgres-cdc", **opts)
    return node


def caught_up(pg: PgCluster, node: Node, name: str = "cdc") -> bool:
    """The connector stored a position at or past the WAL's current end (everything
    written so far is in Sluice), and the slot confirmed it to PostgreSQL."""
    # the insert position: pg_current_wal_lsn() is the write position, which with
    # synchronous_commit = off can be behind transactions already committed
    (current,) = pg.sql("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint")[0]
    offset = ((connect_status(node).get(name) or {}).get("task") or {}).get("offset") or {}
    if not offset.get("snapshot_done") or int(offset.get("lsn") or 0) < current:
        return False
    rows = pg.sql(
        "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = %s",
        (f"sluice_{name}",),
    )
    return bool(rows and rows[0][0] >= current)


def check_changes(pg: PgCluster, slot: str) -> dict[int, tuple[int, int, list[int]]]:
    """What an independent slot (``test_decoding``) saw of the items table: transaction id
    -> (first LSN, commit end LSN, the LSNs of its changes)."""
    rows = pg.sql(
        "SELECT (lsn - '0/0')::bigint, xid::text::bigint, data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)",
        (slot,),
    )
    out: dict[int, tuple[int, int, list[int]]] = {}
    for lsn, xid, data in rows:
        first, end, changes = out.get(xid, (lsn, 0, []))
        if data.startswith("table public.items:"):
            changes.append(lsn)
        elif data.startswith("COMMIT"):
            end = lsn
        out[xid] = (first, end, changes)
    return out


def test_snapshot_during_writes_then_stream_rebuilds_the_table(node_factory: Any, pg: PgCluster) -> None:
    """Issue 17: a table of 10,000 rows is snapshotted while 10,000 inserts, updates and
    deletes run; the topic, replayed, is the table's final state, and every change
    committed after the snapshot's point is in the topic once, by LSN (checked against an
    independent ``test_decoding`` slot made before the writes began)."""
    make_items(pg, 10_000)
    pg.sql("SELECT pg_create_logical_replication_slot('check', 'test_decoding')")
    node = cdc_node(node_factory, pg)

    def slot_consistent() -> bool:
        found = pg.sql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'sluice_cdc'")
        return bool(found and found[0][0] is not None)

    def writes() -> None:  # 3,000 changes before the connector's slot exists, 7,000 during its snapshot
        next_id = workload(pg, 3000, 1, 10_000)
        wait_until(slot_consistent, 60, "the connector's slot")
        workload(pg, 7000, 2, next_id)

    writer = threading.Thread(target=writes)
    writer.start()
    try:
        wait_until(lambda: pg.sql("SELECT count(*) FROM items")[0][0] > 10_300, 30, "the first writes")
        node.start()
    finally:
        writer.join(180)
    assert not writer.is_alive()
    wait_until(lambda: caught_up(pg, node), 60, "the slot confirmed to the WAL's end")
    records = read_topic(node, "pg.public.items")
    assert replay(records) == table_state(pg)
    values = [orjson.loads(r.value) for r in records if r.value is not None]
    snapshot = [v for v in values if v["op"] == "r"]
    assert snapshot and all(v["source"]["snapshot"] == "true" for v in snapshot)
    point = {v["source"]["lsn"] for v in snapshot}
    assert len(point) == 1
    (consistent,) = point
    streamed = collections.Counter(v["source"]["lsn"] for v in values if v["op"] != "r")
    dupes = [lsn for lsn, n in streamed.items() if n > 1]
    assert dupes == [], f"changes emitted twice: {dupes[:5]}"
    expected: collections.Counter[int] = collections.Counter()
    txs = check_changes(pg, "check")
    assert sum(len(ch) for _, _, ch in txs.values()) > 6000  # 10,000 statements, some updating no row
    for xid, (first, end, changes) in txs.items():
        got = sum(1 for lsn in changes if lsn in streamed)
        assert got in (0, len(changes)), f"transaction {xid}: {got} of its {len(changes)} changes streamed"
        if first >= consistent:
            assert got == len(changes), f"transaction {xid} after the snapshot's point {consistent} not streamed"
        if end <= consistent:
            assert got == 0, f"transaction {xid} before the snapshot's point {consistent} streamed"
        if got:
            expected.update(changes)
    assert streamed == expected  # every change after the snapshot's point once, nothing else
    assert len(expected) > 3000  # most of the 7,000 writes during the snapshot
    c = wait_connector(node, "cdc", lambda c: (c["task"] or {}).get("lag") is not None, "lag reported")
    assert c["task"]["lag_unit"] == "bytes"
    assert node.stop() == 0
    # the clean stop confirmed what was stored: nothing is streamed again after a restart
    node.start()
    wait_connector(node, "cdc", lambda c: c["state"] == "serving", "serving again")
    pg.sql("INSERT INTO items VALUES (-1, 'after restart', 0, true)")
    wait_until(lambda: caught_up(pg, node), 60, "the slot caught up")
    again = read_topic(node, "pg.public.items")
    assert len(again) == len(records) + 1
    assert replay(again) == table_state(pg)


def test_snapshot_values_equal_streamed_values(node_factory: Any, pg: PgCluster) -> None:
    """The snapshot (row_to_json in PostgreSQL) and the stream (pgoutput's text, converted
    in Python) give every type the same JSON value."""
    pg.sql(
        "CREATE TABLE typed (id bigint PRIMARY KEY, b boolean, s smallint, f8 float8, f4 real, n numeric, "
        't text, ts timestamptz, j jsonb, a int[], by bytea, nothing text, "Odd ""name" int)'
    )
    row = (
        "true, 7, %s::float8, 1.5, 12.30, 'quote \" back \\\\ \u00e9 \u2603 tab\t', '2026-01-02 03:04:05.678+00', "
        "'{\"k\": [1, 2.5]}', '{1,NULL,3}', '\\x00ff', NULL, -4"
    )
    for i, f in enumerate(("'NaN'", "'-Infinity'", "'0.1'")):
        pg.sql(f"INSERT INTO typed VALUES ({i}, {row % f})")
    node = cdc_node(node_factory, pg, **{"table.include.list": "public.typed"})
    node.start()
    wait_until(lambda: len(read_topic(node, "pg.public.typed")) == 3, 60, "the snapshot")
    for i, f in enumerate(("'NaN'", "'-Infinity'", "'0.1'")):
        pg.sql(f"INSERT INTO typed VALUES ({10 + i}, {row % f})")
    wait_until(lambda: len(read_topic(node, "pg.public.typed")) == 6, 60, "the stream")
    records = read_topic(node, "pg.public.typed")
    values = {orjson.loads(r.key)["id"]: orjson.loads(r.value) for r in records}
    assert [values[i]["op"] for i in (0, 1, 2, 10, 11, 12)] == ["r"] * 3 + ["c"] * 3
    for i in range(3):
        snap, streamed = dict(values[i]["after"]), dict(values[10 + i]["after"])
        assert snap.pop("id") == i and streamed.pop("id") == 10 + i
        assert snap == streamed
    assert values[0]["after"]["f8"] == "NaN" and values[2]["after"]["f8"] == 0.1 and values[0]["after"]["b"] is True
    assert values[0]["after"]['Odd "name'] == -4 and values[0]["after"]["n"] == "12.30"
    assert node.stop() == 0


def test_envelope_tombstone_and_schema_change(node_factory: Any, pg: PgCluster) -> None:
    make_items(pg, 1)
    node = cdc_node(node_factory, pg)
    node.start()
    wait_connector(
        node,
        "cdc",
        lambda c: (c["task"] or {}).get("offset", {}) not in (None, {}) and c["task"]["offset"].get("snapshot_done"),
        "snapshot done",
    )
    pg.sql("INSERT INTO items VALUES (7, 'seven', 1, true)")
    pg.sql("UPDATE items SET qty = 2 WHERE id = 7")
    pg.sql("UPDATE items SET id = 8 WHERE id = 7")
    pg.sql("DELETE FROM items WHERE id = 8")
    pg.sql("ALTER TABLE items ADD COLUMN note text")
    pg.sql("INSERT INTO items VALUES (9, 'nine', 3, false, 'added')")
    pg.sql("ALTER TABLE items REPLICA IDENTITY FULL")
    pg.sql("UPDATE items SET qty = 4 WHERE id = 9")
    pg.sql("TRUNCATE items")
    wait_until(lambda: caught_up(pg, node), 60, "caught up")
    records = read_topic(node, "pg.public.items")
    got = [(r.key and orjson.loads(r.key), r.value and orjson.loads(r.value)) for r in records]
    assert got[0][0] == {"id": 0} and got[0][1]["op"] == "r"
    ops = [(k, v["op"] if v else None) for k, v in got[1:]]
    assert ops == [
        ({"id": 7}, "c"),
        ({"id": 7}, "u"),
        ({"id": 7}, "d"),  # the key changed: delete, tombstone, create
        ({"id": 7}, None),
        ({"id": 8}, "c"),
        ({"id": 8}, "d"),
        ({"id": 8}, None),
        ({"id": 9}, "c"),
        ({"id": 9}, "u"),
        (None, "t"),
    ]
    create = got[1][1]
    assert create["before"] is None
    assert create["after"] == {"id": 7, "name": "seven", "qty": 1, "flag": True}
    src = create["source"]
    assert src["connector"] == "postgresql" and src["db"] == "postgres" and src["schema"] == "public"
    assert src["table"] == "items" and src["snapshot"] == "false" and src["txId"] > 0 and src["lsn"] > 0
    assert isinstance(src["ts_ms"], int) and isinstance(create["ts_ms"], int)
    assert got[1][1]["source"]["lsn"] < got[2][1]["source"]["lsn"]
    assert got[3][1]["before"]["id"] == 7 and got[3][1]["after"] is None
    assert got[8][1]["after"] == {"id": 9, "name": "nine", "qty": 3, "flag": False, "note": "added"}
    full = got[9][1]  # REPLICA IDENTITY FULL: the update has its before
    assert full["before"]["qty"] == 3 and full["after"]["qty"] == 4
    assert node.stop() == 0


def test_sigkill_mid_stream_and_postgres_restart_lose_nothing(node_factory: Any, pg: PgCluster) -> None:
    make_items(pg, 1000)
    node = cdc_node(node_factory, pg)
    node.start()
    pid = int(wait_connector(node, "cdc", lambda c: c["state"] == "serving", "serving")["pid"])
    stop = threading.Event()
    writer = threading.Thread(target=workload, args=(pg, 6000, 2, 1000, stop))
    writer.start()
    try:
        wait_until(lambda: len(read_topic(node, "pg.public.items")) > 1500, 60, "the stream under way")
        os.kill(pid, signal.SIGKILL)
        wait_connector(node, "cdc", lambda c: c["state"] == "serving" and c["pid"] not in (0, pid), "restarted")
    finally:
        writer.join(180)
    wait_until(lambda: caught_up(pg, node), 60, "caught up after the kill")
    records = read_topic(node, "pg.public.items")
    assert replay(records) == table_state(pg)
    # PostgreSQL restarts under the connector: it fails, is restarted, and resumes
    pid = int(wait_connector(node, "cdc", lambda c: c["state"] == "serving", "serving")["pid"])
    pg.restart()
    workload(pg, 500, 3, 100_000)
    wait_until(lambda: caught_up(pg, node), 90, "caught up after the PostgreSQL restart")
    records = read_topic(node, "pg.public.items")
    assert replay(records) == table_state(pg)
    streamed = [orjson.loads(r.value) for r in records if r.value is not None]
    changes = [(v["source"]["lsn"], v["op"]) for v in streamed if v["op"] != "r"]
    repeats = sum(n - 1 for n in collections.Counter(changes).values())
    # at most the unconfirmed tail repeats (documented), never the whole stream
    assert repeats < len(changes) // 2
    assert node.stop() == 0


def test_bad_password_and_table_without_key(node_factory: Any, pg: PgCluster) -> None:
    make_items(pg, 1)
    pg.sql("CREATE TABLE nokey (a int)")
    node = cdc_node(node_factory, pg, **{"database.password": "wrong"})
    declare(
        node, "nokey", "postgres-cdc", **pg.options(), **{"topic.prefix": "pg", "table.include.list": "public.nokey"}
    )
    node.start()
    c = wait_connector(node, "cdc", lambda c: "password" in ((c["task"] or {}).get("last_error") or ""), "the error")
    assert "cannot connect to PostgreSQL at 127.0.0.1" in c["task"]["last_error"]
    assert c["task"]["errors"] >= 1
    c = wait_connector(
        node, "nokey", lambda c: "primary key" in ((c["task"] or {}).get("last_error") or ""), "the error"
    )
    assert "table 'public.nokey' has no primary key" in c["task"]["last_error"]
    assert node.stop() == 0


def test_wal_level_not_logical(node_factory: Any) -> None:
    cluster = PgCluster(wal_level="replica")
    try:
        cluster.start()
        make_items(cluster, 1)
        node = cdc_node(node_factory, cluster)
        node.start()
        c = wait_connector(
            node, "cdc", lambda c: "wal_level" in ((c["task"] or {}).get("last_error") or ""), "the error"
        )
        assert "wal_level is 'replica'" in c["task"]["last_error"] and "wal_level = logical" in c["task"]["last_error"]
        assert node.stop() == 0
    finally:
        cluster.destroy()


def test_node_sigkill_mid_stream_loses_nothing(node_factory: Any, pg: PgCluster) -> None:
    make_items(pg, 500)
    node = cdc_node(node_factory, pg)
    node.start()
    wait_connector(node, "cdc", lambda c: c["state"] == "serving", "serving")
    stop = threading.Event()
    writer = threading.Thread(target=workload, args=(pg, 5000, 4, 500, stop))
    writer.start()
    try:
        wait_until(lambda: len(read_topic(node, "pg.public.items")) > 1200, 60, "the stream under way")
        node.kill_all()  # the whole node: supervisor, workers, the connector
        (confirmed,) = pg.sql(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = 'sluice_cdc'"
        )[0]
        node.proc = None
        node.start()
    finally:
        writer.join(180)
    wait_until(lambda: caught_up(pg, node), 90, "caught up after the node's restart")
    records = read_topic(node, "pg.public.items")
    assert replay(records) == table_state(pg)
    # the slot never confirmed more than Sluice had: every change before it is in the topic
    values = [orjson.loads(r.value) for r in records if r.value is not None]
    assert any(v["source"]["lsn"] < confirmed for v in values if v["op"] != "r")
    assert node.stop() == 0
