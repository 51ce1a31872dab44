"""``postgres-sink``: topics of change events (the CDC source's Debezium envelopes) or of
plain keyed JSON objects into a PostgreSQL table, exactly once.

A record is:

- a tombstone (no value): delete the row of its key;
- an envelope (``op`` and ``after`` / ``before``): ``c``, ``u``, ``r`` upsert ``after``;
  ``d`` deletes the row of its key; ``t`` (a truncate) empties the table (``TRUNCATE``
  with one task, ``DELETE FROM`` with several: see below), in order with the changes
  before and after it in its partition;
- any other JSON object: upsert it as the row.

The key is a JSON object of the primary key's columns (the CDC source's keys); without
one the row must hold the target table's primary key columns. Upserts are
``INSERT ... ON CONFLICT (<primary key>) DO UPDATE`` of the columns the record has (a
column marked unavailable, an unchanged TOASTed value, is left as it is). Within a batch
the last change of each key wins (one statement per column set, one for the deletes);
a truncate splits the batch: what comes before it is applied, then the truncate, then
what follows.

**Exactly once.** Everything ``put`` writes stays in one open transaction; ``flush``
writes the next offset of each partition into the offsets table (``offsets.table``,
created if missing, keyed by connector, topic and partition) and commits: rows and
positions become durable together, and a restart resumes at the committed positions.

A record PostgreSQL refuses (a value that does not fit its column, an unknown column, a
constraint) is retried alone inside a savepoint and, refused again, goes to the
dead-letter topic; the others of its batch are written. A lost connection restarts the
task (its uncommitted transaction is gone; it resumes from the committed positions).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from appliance.connect.api import ConnectorError, RetriableConnectorError, SinkTask, TopicPartition
from appliance.connect.config import Option, in_range
from appliance.connect.envelope import UNAVAILABLE
from ipc.client.consumer import ConsumerRecord

log = logging.getLogger(__name__)

KIND = "sink"
PAGE_ROWS = 5000  # rows per INSERT (execute_values' default, 100, costs a round trip per 100 rows)
MULTI_TASK = True  # tasks.max > 1: threads, each a share of the partitions and its own connection


def _qualified(v: str) -> str | None:
    return None if v.count(".") == 1 and all(v.split(".")) else "expected schema.table"


OPTIONS: dict[str, Option] = {
    "database.host": Option(str, "127.0.0.1", "PostgreSQL's host"),
    "database.port": Option(int, 5432, "PostgreSQL's port", in_range(1, 65535)),
    "database.user": Option(str, doc="a user who may write the table"),
    "database.password": Option(str, "", "its password"),
    "database.dbname": Option(str, doc="the database"),
    "table": Option(str, doc="the target table, schema.table (it must exist, with a primary key)", check=_qualified),
    "offsets.table": Option(str, "public.sluice_connect_offsets", "where the positions are kept", _qualified),
}


class RecordRejected(ValueError):
    """A record that cannot be applied (dead-lettered)."""


_UNAVAILABLE_JSON = orjson.dumps(UNAVAILABLE)
Op = tuple[str, dict[str, Any]]  # ("upsert", row), ("delete", key columns) or ("truncate", {})


def decode(record: ConsumerRecord, pk: tuple[str, ...]) -> Op | None:
    """What ``record`` asks of the table (None: nothing)."""
    key: Any = None
    if record.key is not None:
        try:
            key = orjson.loads(record.key)
        except orjson.JSONDecodeError:
            raise RecordRejected("the key is not JSON") from None
    if key is not None and not isinstance(key, dict):
        raise RecordRejected("the key is not a JSON object of primary key columns")
    if record.value is None:
        if not key or any(key.get(c) is None for c in pk):
            raise RecordRejected(f"a tombstone without the primary key {list(pk)} in its key")
        return ("delete", {c: key[c] for c in pk})
    try:
        value = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        raise RecordRejected("the value is not JSON") from None
    if not isinstance(value, dict):
        raise RecordRejected("the value is not a JSON object")
    if "op" in value and ("after" in value or "before" in value):
        op = value["op"]
        if op in ("c", "u", "r"):
            row = value.get("after")
            if not isinstance(row, dict):
                raise RecordRejected(f"op {op!r} without an 'after' object")
        elif op == "d":
            before = value.get("before")
            old: dict[str, Any] = before if isinstance(before, dict) else {}
            k = key or {c: old.get(c) for c in pk}
            if any(k.get(c) is None for c in pk):
                raise RecordRejected("a delete without its primary key")
            return ("delete", {c: k[c] for c in pk})
        elif op == "t":
            return ("truncate", {})
        else:
            raise RecordRejected(f"unknown op {op!r}")
    else:
        row = value
    raw = record.value
    if not isinstance(raw, bytes) or _UNAVAILABLE_JSON in raw:  # only then is there one to leave out
        row = {c: v for c, v in row.items() if v != UNAVAILABLE}
    for c in pk:
        if c not in row:
            if key and c in key:
                row[c] = key[c]
            else:
                raise RecordRejected(f"the row has no value for the primary key column {c!r}")
    return ("upsert", row)


class PostgresSink(SinkTask):
    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        o = options
        self.dsn = {
            "host": o["database.host"],
            "port": o["database.port"],
            "user": o["database.user"],
            "password": o["database.password"],
            "dbname": o["database.dbname"],
            "connect_timeout": 10,
            "application_name": f"sluice-connect-{name}",
        }
        self.schema, self.table = str(o["table"]).split(".")
        self.off_schema, self.off_table = str(o["offsets.table"]).split(".")
        self.conn: Any = None
        self.pk: tuple[str, ...] = ()
        self.committed: dict[TopicPartition, int] = {}  # the positions of the last commit
        self.tasks = int(o.get("tasks.max", 1))

    def _errors(self) -> tuple[type[Exception], ...]:
        import psycopg2

        return (psycopg2.DataError, psycopg2.IntegrityError, psycopg2.ProgrammingError)

    def start(self) -> dict[TopicPartition, int]:
        try:
            import psycopg2
            from psycopg2 import sql
        except ImportError:
            raise ConnectorError("psycopg2 is not installed (pip install psycopg2-binary)") from None
        where = f"{self.dsn['host']}:{self.dsn['port']}/{self.dsn['dbname']} as {self.dsn['user']}"
        try:
            self.conn = psycopg2.connect(**self.dsn)
        except psycopg2.OperationalError as exc:
            from appliance.connect.pg_source import transient

            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            error = RetriableConnectorError if transient(str(exc)) else ConnectorError
            raise error(f"cannot connect to PostgreSQL at {where}: {first}") from None
        try:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
                    "ORDER BY array_position(i.indkey, a.attnum)",
                    (f'"{self.schema}"."{self.table}"',),
                )
                self.pk = tuple(str(r[0]) for r in cur.fetchall())
                if not self.pk:
                    raise ConnectorError(
                        f"table={self.schema}.{self.table}: no such table in {self.dsn['dbname']!r}, or it has no "
                        "primary key (the sink upserts by primary key)"
                    )
                # one at a time (several tasks start together): two CREATE TABLE IF NOT EXISTS
                # at once can both try to create it
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self.off_schema}.{self.off_table}",))
                cur.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (connector text, topic text, partition int, "
                        "next_offset bigint NOT NULL, PRIMARY KEY (connector, topic, partition))"
                    ).format(sql.Identifier(self.off_schema, self.off_table))
                )
                cur.execute(
                    sql.SQL("SELECT topic, partition, next_offset FROM {} WHERE connector = %s").format(
                        sql.Identifier(self.off_schema, self.off_table)
                    ),
                    (self.name,),
                )
                positions = {(str(t), int(p)): int(o) for t, p, o in cur.fetchall()}
            self.conn.commit()
        except psycopg2.OperationalError as exc:
            raise RetriableConnectorError(f"PostgreSQL: {str(exc).strip()}") from None
        except psycopg2.Error as exc:
            raise ConnectorError(f"PostgreSQL: {str(exc).strip()}") from None
        self.committed = dict(positions)
        return positions

    def put(self, records: list[ConsumerRecord]) -> list[tuple[ConsumerRecord, Exception]]:
        import psycopg2

        rejected: list[tuple[ConsumerRecord, Exception]] = []
        ops: list[tuple[ConsumerRecord, Op]] = []
        for r in records:
            try:
                op = decode(r, self.pk)
            except RecordRejected as exc:
                rejected.append((r, exc))
                continue
            if op is not None:
                ops.append((r, op))
        if not ops:
            return rejected
        try:
            with self.conn.cursor() as cur:
                cur.execute("SAVEPOINT batch")
                try:
                    self._apply(cur, [op for _, op in ops])
                    cur.execute("RELEASE SAVEPOINT batch")
                except self._errors():
                    cur.execute("ROLLBACK TO SAVEPOINT batch")
                    for r, op in ops:  # one by one: find the ones refused
                        cur.execute("SAVEPOINT one")
                        try:
                            self._apply(cur, [op])
                            cur.execute("RELEASE SAVEPOINT one")
                        except self._errors() as exc:
                            cur.execute("ROLLBACK TO SAVEPOINT one")
                            rejected.append((r, exc))
        except psycopg2.OperationalError as exc:
            raise RetriableConnectorError(f"PostgreSQL: {str(exc).strip()}") from None
        return rejected

    def _apply(self, cur: Any, ops: list[Op]) -> None:
        """Apply ``ops`` in order: the changes between two truncates together."""
        from psycopg2 import sql

        changes: list[Op] = []
        for op in ops:
            if op[0] != "truncate":
                changes.append(op)
                continue
            self._apply_changes(cur, changes)
            changes = []
            target = sql.Identifier(self.schema, self.table)
            # TRUNCATE takes an ACCESS EXCLUSIVE lock until the commit: with several tasks
            # (each a connection with an open transaction) it would wait for, and queue
            # the others' writes behind, their commits; DELETE takes row locks only.
            stmt = sql.SQL("DELETE FROM {}") if self.tasks > 1 else sql.SQL("TRUNCATE {}")
            cur.execute(stmt.format(target))
        self._apply_changes(cur, changes)

    def _apply_changes(self, cur: Any, ops: list[Op]) -> None:
        from psycopg2 import sql
        from psycopg2.extras import execute_values

        if not ops:
            return
        last: dict[Any, Op] = {}
        pk_names = self.pk
        for op in ops:  # the last change of each key wins
            row = op[1]
            k: Any = tuple([row.get(c) for c in pk_names])
            try:
                hash(k)
            except TypeError:  # a JSON object or array in the key: compare its text
                k = tuple([orjson.dumps(row.get(c)) for c in pk_names])
            last.pop(k, None)
            last[k] = op
        target = sql.Identifier(self.schema, self.table)
        pk = sql.SQL(", ").join(map(sql.Identifier, self.pk))
        deletes = [tuple([row[c] for c in pk_names]) for kind, row in last.values() if kind == "delete"]
        if deletes:
            stmt = sql.SQL("DELETE FROM {} WHERE ({}) IN (VALUES %s)").format(target, pk).as_string(cur)
            execute_values(cur, stmt, deletes, page_size=PAGE_ROWS)
        by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        structured = (dict, list)
        for kind, row in last.values():
            if kind == "upsert":
                values = list(row.values())
                if any([isinstance(v, structured) for v in values]):
                    values = [_param(v) for v in values]
                by_columns.setdefault(tuple(row), []).append(tuple(values))
        for cols, rows in by_columns.items():
            others = [c for c in cols if c not in self.pk]
            update = (
                sql.SQL("DO UPDATE SET ")
                + sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others)
                if others
                else sql.SQL("DO NOTHING")
            )
            stmt = (
                sql.SQL("INSERT INTO {} ({}) VALUES %s ON CONFLICT ({}) ").format(
                    target, sql.SQL(", ").join(map(sql.Identifier, cols)), pk
                )
                + update
            )
            execute_values(cur, stmt.as_string(cur), rows, page_size=PAGE_ROWS)

    def flush(self, positions: dict[TopicPartition, int]) -> None:
        import psycopg2
        from psycopg2 import sql
        from psycopg2.extras import execute_values

        if positions == self.committed:
            return  # nothing read since the last commit: no empty transaction (and no WAL)
        try:
            with self.conn.cursor() as cur:
                if positions:
                    execute_values(
                        cur,
                        sql.SQL(
                            "INSERT INTO {} (connector, topic, partition, next_offset) VALUES %s "
                            "ON CONFLICT (connector, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"
                        )
                        .format(sql.Identifier(self.off_schema, self.off_table))
                        .as_string(cur),
                        [(self.name, t, p, o) for (t, p), o in sorted(positions.items())],
                    )
            self.conn.commit()  # the rows and their positions, together
            self.committed = dict(positions)
        except psycopg2.OperationalError as exc:
            raise RetriableConnectorError(f"PostgreSQL: {str(exc).strip()}") from None

    def stop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing on the way out
                log.debug("closing the connection failed", exc_info=True)


def _param(v: Any) -> Any:
    """A JSON value as a statement parameter (objects and arrays as JSON text)."""
    if isinstance(v, (dict, list)):
        return orjson.dumps(v).decode()
    return v


TASK = PostgresSink
