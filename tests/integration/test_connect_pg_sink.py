"""End to end through two connectors on a real node and a throwaway PostgreSQL: a table
-> postgres-cdc -> topic -> postgres-sink -> a replica table in a second database. After
a mixed workload and a SIGKILL of the sink mid-stream, the replica equals the source row
by row (the sink commits rows and positions in one transaction: exactly once). A record
PostgreSQL refuses goes to the dead-letter topic; the rest of its batch is written."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ipc.client import Consumer, Producer
from tests.integration.conftest import Node, wait_until
from tests.integration.test_connect_pg import caught_up, make_items, workload
from tests.integration.test_connect_pg_support import PgCluster
from tests.integration.test_connect_support import declare, wait_connector

pytestmark = pytest.mark.slow


@pytest.fixture(name="pg")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        yield cluster.start()
    finally:
        cluster.destroy()


def rows(pg: PgCluster, dbname: str) -> list[tuple[Any, ...]]:
    return pg.sql("SELECT id, name, qty, flag FROM items ORDER BY id", dbname=dbname)


def test_cdc_to_sink_replica_equals_source_across_a_sink_crash(node_factory: Any, pg: PgCluster) -> None:
    make_items(pg, 2000)
    pg.sql("CREATE DATABASE replica")
    pg.sql("CREATE TABLE items (id int PRIMARY KEY, name text, qty int, flag boolean)", dbname="replica")
    node: Node = node_factory()
    declare(node, "cdc", "postgres-cdc", **pg.options(), **{"topic.prefix": "pg", "table.include.list": "public.items"})
    declare(
        node,
        "replica",
        "postgres-sink",
        **pg.options("replica"),
        topics="pg.public.items",
        table="public.items",
        **{"offset.flush.interval.ms": 100, "batch.max.records": 200},
    )
    node.start()
    pid = int(wait_connector(node, "replica", lambda c: c["state"] == "serving", "the sink serving")["pid"])
    stop = threading.Event()
    writer = threading.Thread(target=workload, args=(pg, 4000, 5, 2000, stop))
    writer.start()
    try:
        wait_until(lambda: pg.sql("SELECT count(*) FROM items", dbname="replica")[0][0] > 1000, 60, "rows copied")
        os.kill(pid, signal.SIGKILL)
        wait_connector(node, "replica", lambda c: c["state"] == "serving" and c["pid"] not in (0, pid), "restarted")
    finally:
        writer.join(180)
    wait_until(lambda: caught_up(pg, node), 60, "the source caught up")
    wait_until(lambda: rows(pg, "replica") == rows(pg, "postgres"), 60, "the replica equal to the source")
    positions = pg.sql("SELECT topic, partition, next_offset FROM sluice_connect_offsets", dbname="replica")
    assert [(t, p) for t, p, _ in positions] == [("pg.public.items", 0)]
    c = wait_connector(node, "replica", lambda c: c["task"] and c["task"]["lag"] == 0, "no lag")
    assert c["task"]["lag_unit"] == "records" and c["task"]["dead_letter_records"] == 0
    assert node.stop() == 0


def test_sink_with_three_tasks_over_four_partitions(node_factory: Any, pg: PgCluster) -> None:
    """tasks.max = 3: three threads, each its own PostgreSQL connection and share of the 4
    partitions; one task's failure (a SIGKILL of the process, then a connection killed
    in PostgreSQL) restarts them all from the positions committed with the rows."""
    make_items(pg, 2000)
    pg.sql("CREATE DATABASE replica")
    pg.sql("CREATE TABLE items (id int PRIMARY KEY, name text, qty int, flag boolean)", dbname="replica")
    node: Node = node_factory()
    declare(
        node,
        "cdc",
        "postgres-cdc",
        **pg.options(),
        **{"topic.prefix": "pg", "table.include.list": "public.items", "topic.partitions": 4},
    )
    declare(
        node,
        "replica",
        "postgres-sink",
        **pg.options("replica"),
        topics="pg.public.items",
        table="public.items",
        **{"offset.flush.interval.ms": 100, "batch.max.records": 200, "tasks.max": 3},
    )
    node.start()
    pid = int(wait_connector(node, "replica", lambda c: c["state"] == "serving", "the sink serving")["pid"])

    def backends() -> list[int]:
        found = pg.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'sluice-connect-replica'")
        return sorted(r[0] for r in found)

    wait_until(lambda: len(backends()) == 3, 30, "three connections, one per task")
    stop = threading.Event()
    writer = threading.Thread(target=workload, args=(pg, 4000, 7, 2000, stop))
    writer.start()
    try:
        wait_until(lambda: pg.sql("SELECT count(*) FROM items", dbname="replica")[0][0] > 1000, 60, "rows copied")
        os.kill(pid, signal.SIGKILL)
        wait_connector(node, "replica", lambda c: c["state"] == "serving" and c["pid"] not in (0, pid), "restarted")
        wait_until(lambda: len(backends()) == 3, 30, "three connections again")
        pg.sql("SELECT pg_terminate_backend(%s)", (backends()[0],))  # one task's connection lost
    finally:
        writer.join(180)
    wait_until(lambda: caught_up(pg, node), 60, "the source caught up")
    wait_until(lambda: rows(pg, "replica") == rows(pg, "postgres"), 60, "the replica equal to the source")
    positions = pg.sql("SELECT topic, partition FROM sluice_connect_offsets ORDER BY partition", dbname="replica")
    assert positions == [("pg.public.items", p) for p in range(4)]
    c = wait_connector(node, "replica", lambda c: c["task"] and c["task"]["lag"] == 0, "no lag")
    assert sorted(c["task"]["offset"]) == [f"pg.public.items-{p}" for p in range(4)]
    assert c["task"]["dead_letter_records"] == 0
    assert node.stop() == 0


def test_a_truncate_reaches_the_replica_in_order(node_factory: Any, pg: PgCluster) -> None:
    """TRUNCATE captured (op "t") and applied by the sink between the changes around it."""
    make_items(pg, 300)
    pg.sql("CREATE DATABASE replica")
    pg.sql("CREATE TABLE items (id int PRIMARY KEY, name text, qty int, flag boolean)", dbname="replica")
    node: Node = node_factory()
    declare(node, "cdc", "postgres-cdc", **pg.options(), **{"topic.prefix": "pg", "table.include.list": "public.items"})
    declare(
        node,
        "replica",
        "postgres-sink",
        **pg.options("replica"),
        topics="pg.public.items",
        table="public.items",
        **{"offset.flush.interval.ms": 100},
    )
    node.start()
    wait_until(lambda: len(rows(pg, "replica")) == 300, 60, "the snapshot copied")
    conn = pg.connect()
    try:
        with conn.cursor() as cur:  # one transaction: rows before the truncate, the truncate, rows after
            cur.execute("BEGIN")
            cur.execute("INSERT INTO items SELECT g, 'x', g, true FROM generate_series(300, 349) g")
            cur.execute("TRUNCATE items")
            cur.execute("INSERT INTO items SELECT g, 'after', g, false FROM generate_series(1000, 1009) g")
            cur.execute("COMMIT")
        with conn.cursor() as cur:
            cur.execute("UPDATE items SET qty = -qty WHERE id < 1005")
    finally:
        conn.close()
    wait_until(lambda: caught_up(pg, node), 60, "the source caught up")
    wait_until(lambda: rows(pg, "replica") == rows(pg, "postgres"), 60, "the replica equal to the source")
    assert len(rows(pg, "replica")) == 10
    c = wait_connector(node, "replica", lambda c: c["task"] and c["task"]["lag"] == 0, "no lag")
    assert c["task"]["dead_letter_records"] == 0
    assert node.stop() == 0


def test_refused_records_go_to_the_dead_letter_topic(node_factory: Any, pg: PgCluster) -> None:
    pg.sql("CREATE TABLE items (id int PRIMARY KEY, name text, qty int CHECK (qty >= 0), flag boolean)")
    node: Node = node_factory()
    declare(node, "sink", "postgres-sink", **pg.options(), topics="plain", table="public.items")
    node.start()
    with node.admin() as admin:
        admin.create_topic("plain")
    wait_connector(node, "sink", lambda c: c["state"] == "serving", "serving")
    good = [{"id": i, "name": f"n{i}", "qty": i, "flag": True} for i in range(5)]
    with Producer(node.bootstrap) as p:
        for row in good[:2]:
            p.send("plain", orjson.dumps(row), key=orjson.dumps({"id": row["id"]}))
        p.send("plain", orjson.dumps({"id": 10, "qty": "many"}), key=b'{"id": 10}')  # not an int
        p.send("plain", orjson.dumps({"id": 11, "qty": -1}), key=b'{"id": 11}')  # the CHECK
        p.send("plain", b"not json", key=b'{"id": 12}')
        p.send("plain", orjson.dumps({"id": 13, "colour": "red"}), key=b'{"id": 13}')  # no such column
        for row in good[2:]:
            p.send("plain", orjson.dumps(row), key=orjson.dumps({"id": row["id"]}))
        p.send("plain", None, key=b'{"id": 0}')  # a tombstone deletes
        p.flush()
    wait_until(lambda: pg.sql("SELECT id FROM items ORDER BY id") == [(1,), (2,), (3,), (4,)], 30, "the good rows")
    c = wait_connector(node, "sink", lambda c: (c["task"] or {}).get("dead_letter_records") == 4, "4 dead letters")
    assert c["task"]["errors"] >= 4
    with Consumer(node.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([("sink.dlq", 0)])
        got: list[Any] = []
        wait_until(lambda: got.extend(consumer.poll(200)) or len(got) >= 4, 30, "the dead letters")
    reasons = {r.key: dict(r.headers) for r in got}
    assert reasons[b'{"id": 10}']["__connect.errors.exception.class.name"] == b"InvalidTextRepresentation"
    assert reasons[b'{"id": 11}']["__connect.errors.exception.class.name"] == b"CheckViolation"
    assert reasons[b'{"id": 12}']["__connect.errors.exception.message"] == b"the value is not JSON"
    assert reasons[b'{"id": 13}']["__connect.errors.exception.class.name"] == b"UndefinedColumn"
    assert node.stop() == 0
