"""``postgres-cdc``: change data capture from PostgreSQL (12+) through logical
replication with the built-in ``pgoutput`` plugin, over psycopg2's replication
connection.

Start (``start``): check ``wal_level = logical``, the tables (each needs a primary key, or
``REPLICA IDENTITY FULL``), create the publication (``FOR TABLE ...``) and the
replication slot if missing. Without a finished snapshot in the stored position
(``snapshot.mode = initial``), the slot is (re)created with an exported snapshot and
every table is read inside that snapshot (``SET TRANSACTION SNAPSHOT``) before streaming
starts at the slot's consistent point: the snapshot and the stream meet exactly, nothing
missed, nothing twice. A crash during the snapshot starts it over (its ``r`` records
may then repeat; a replay still ends in the table's state).

Stream (``poll``): ``pgoutput`` messages (``pgoutput.py``) become Debezium-style events
(``envelope.py``), one topic per table ``<topic.prefix>.<schema>.<table>``, keyed by the
primary key; a delete is followed by a tombstone; an update that changes the key is a
delete (and tombstone) of the old key and a create of the new one.

Position (``offset``): ``{"snapshot_done", "lsn", "tx"}``: ``lsn`` is the end of the last
transaction whose events were all polled (or, when idle, the server's WAL end from its
keepalives, so the slot advances while the captured tables are quiet); ``tx`` is the
transaction being read (its commit LSN and how many events were polled). ``commit``
(called once Sluice acknowledged everything up to the position, and it is stored)
confirms ``lsn`` to PostgreSQL as flushed, which lets it release the WAL. On restart,
transactions that end at or before the stored ``lsn`` are skipped, and so are the
events of ``tx`` already polled: a crash repeats nothing that was stored, and loses
nothing that was not confirmed.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import select
import time
from collections.abc import Mapping
from typing import Any

from appliance.connect import envelope
from appliance.connect.api import ConnectorError, Offset, RetriableConnectorError, SourceRecord, SourceTask
from appliance.connect.config import Option, at_least, in_range, one_of
from appliance.connect.pgoutput import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
    lsn_text,
    parse,
    parse_lsn,
)

log = logging.getLogger(__name__)

KIND = "source"
SINGLE_TASK_WHY = "a replication slot is read by one connection, in commit order"
IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _ident(v: str) -> str | None:
    return None if v == "" or IDENT.match(v) else "expected a lowercase name of letters, digits and '_' (at most 63)"


def _tables(v: list[str]) -> str | None:
    bad = [t for t in v if t.count(".") != 1]
    return f"expected schema.table names, got {', '.join(map(repr, bad))}" if bad else None if v else "name a table"


OPTIONS: dict[str, Option] = {
    "database.host": Option(str, "127.0.0.1", "PostgreSQL's host"),
    "database.port": Option(int, 5432, "PostgreSQL's port", in_range(1, 65535)),
    "database.user": Option(str, doc="a user with the REPLICATION attribute who may read the tables"),
    "database.password": Option(str, "", "its password"),
    "database.dbname": Option(str, doc="the database"),
    "topic.prefix": Option(str, doc="topics are <topic.prefix>.<schema>.<table>"),
    "table.include.list": Option(
        list, doc="the tables to capture, schema.table (comma-separated or a list)", check=_tables
    ),
    "publication.name": Option(str, "", "the publication (default sluice_<connector>), created if missing", _ident),
    "slot.name": Option(str, "", "the replication slot (default sluice_<connector>), created if missing", _ident),
    "snapshot.mode": Option(str, "initial", "initial: snapshot first; never: stream only", one_of("initial", "never")),
    "topic.partitions": Option(int, 1, "partitions of the topics it creates", at_least(1)),
    "poll.max.records": Option(int, 5000, "records per poll", at_least(1)),
}


TRANSIENT = (
    "connection refused",
    "starting up",
    "shutting down",
    "timeout expired",
    "could not connect",
    "server closed the connection",
    "no route to host",
    "in recovery",
)


def transient(message: str) -> bool:
    """A connection failure that may pass by itself (the server down or restarting), not
    one that needs an operator (a wrong password, an unknown database)."""
    m = message.lower()
    return any(t in m for t in TRANSIENT)


def default_name(connector: str) -> str:
    return "sluice_" + re.sub(r"[^a-z0-9_]", "_", connector.lower())[:55]


def topic_part(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)


@dataclasses.dataclass
class Table:
    oid: int
    schema: str
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # primary key columns, in order ([] without one)
    topic: str


@dataclasses.dataclass
class Tx:
    final_lsn: int
    xid: int
    ts_ms: int
    events: int = 0  # change events read (each may be several records)
    skip: int = 0  # events already stored before a restart: not emitted again
    sources: dict[int, tuple[bytes, bytes]] = dataclasses.field(default_factory=dict)  # by table: source_parts


class PostgresSource(SourceTask):
    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        o = options
        self.prefix = str(o["topic.prefix"])
        self.db = str(o["database.dbname"])
        self.publication = str(o["publication.name"] or default_name(name))
        self.slot = str(o["slot.name"] or default_name(name))
        self.max_records = int(o["poll.max.records"])
        self.dsn = {
            "host": o["database.host"],
            "port": o["database.port"],
            "user": o["database.user"],
            "password": o["database.password"],
            "dbname": o["database.dbname"],
            "connect_timeout": 10,
            "application_name": f"sluice-connect-{name}",
        }
        self.conn: Any = None  # catalog queries (autocommit)
        self.rconn: Any = None  # the replication connection
        self.rcur: Any = None
        self.snap: Any = None  # the snapshot's connection and its named cursor
        self.snap_cur: Any = None
        self.tables: dict[int, Table] = {}  # by relation oid
        self.pending: list[Table] = []  # tables still to snapshot
        self.snapshot_lsn = 0
        self.snapshot_done = False
        self.streaming = False
        self.lsn = 0  # end of the last transaction fully polled (or the idle WAL end)
        self.tx: Tx | None = None
        self.resume_tx: dict[str, int] | None = None
        self.server_wal_end = 0

    # ---- connections ------------------------------------------------------------------------
    def _connect(self, replication: bool = False) -> Any:
        try:
            import psycopg2
            import psycopg2.extras
        except ImportError:
            raise ConnectorError("psycopg2 is not installed (pip install psycopg2-binary)") from None

        kwargs: dict[str, Any] = dict(self.dsn)
        if replication:
            kwargs["connection_factory"] = psycopg2.extras.LogicalReplicationConnection
        try:
            conn = psycopg2.connect(**kwargs)
        except psycopg2.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = f"{self.dsn['host']}:{self.dsn['port']}/{self.db} as {self.dsn['user']}"
            error = RetriableConnectorError if transient(str(exc)) else ConnectorError
            raise error(f"cannot connect to PostgreSQL at {where}: {first}") from None
        if not replication:
            conn.autocommit = True
        return conn

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall()) if cur.description else []

    # ---- start ------------------------------------------------------------------------------
    def start(self, offset: Offset | None) -> None:
        import psycopg2

        try:
            self._start(offset)
        except psycopg2.OperationalError as exc:
            raise RetriableConnectorError(f"PostgreSQL: {str(exc).strip() or type(exc).__name__}") from None
        except psycopg2.Error as exc:
            text = str(exc).strip() or type(exc).__name__
            if "is active for pid" in text.lower():  # our previous process's walsender, not gone yet
                raise RetriableConnectorError(f"replication slot {self.slot}: {text}") from None
            raise ConnectorError(f"PostgreSQL: {text}") from None

    def _start(self, offset: Offset | None) -> None:
        self.conn = self._connect()
        (level,) = self._query("SHOW wal_level")[0]
        if level != "logical":
            raise ConnectorError(
                f"wal_level is {level!r} on {self.dsn['host']}:{self.dsn['port']}: change data capture needs "
                "wal_level = logical (set it in postgresql.conf and restart PostgreSQL)"
            )
        for name in self.options["table.include.list"]:
            t = self._table_by_name(name)
            self.tables[t.oid] = t
        self._ensure_publication()
        slot = self._query(
            "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
        )
        offset = offset or {}
        mode = self.options["snapshot.mode"]
        self.snapshot_done = bool(offset.get("snapshot_done")) or mode == "never"
        if slot and not self.snapshot_done:
            log.info("%s: dropping slot %s to snapshot again (no finished snapshot stored)", self.name, self.slot)
            self._drop_slot()
            slot = []
        elif not slot and offset.get("snapshot_done") and mode == "initial":
            log.error("%s: replication slot %s is gone: snapshotting again (changes may repeat)", self.name, self.slot)
            self.snapshot_done = False
        self.rconn = self._connect(replication=True)
        self.rcur = self.rconn.cursor()
        if not self.snapshot_done:
            self._begin_snapshot()
        else:
            if not slot:
                self.rcur.execute(f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput NOEXPORT_SNAPSHOT')
                log.info("%s: created replication slot %s", self.name, self.slot)
            self.lsn = int(offset.get("lsn") or 0)
            tx = offset.get("tx")
            self.resume_tx = tx if isinstance(tx, dict) else None
            self._start_stream()

    def _table_by_name(self, name: str) -> Table:
        schema, _, table = name.partition(".")
        rows = self._query(
            "SELECT c.oid, c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, table),
        )
        if not rows:
            raise ConnectorError(f"table.include.list: table {name!r} does not exist in database {self.db!r}")
        oid, ident = int(rows[0][0]), rows[0][1]
        t = self._table(oid)
        if not t.key and ident != "f":
            raise ConnectorError(
                f"table {name!r} has no primary key: PostgreSQL cannot publish its updates and deletes; give it one, "
                f"or ALTER TABLE {name} REPLICA IDENTITY FULL (its records then have no key)"
            )
        return t

    def _table(self, oid: int, columns: tuple[Column, ...] | None = None) -> Table:
        (schema, name) = self._query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = %s",
            (oid,),
        )[0]
        if columns is None:
            columns = tuple(
                Column(str(a), int(t), False)
                for a, t in self._query(
                    "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum",
                    (oid,),
                )
            )
        key = tuple(
            str(r[0])
            for r in self._query(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary "
                "ORDER BY array_position(i.indkey, a.attnum)",
                (oid,),
            )
        )
        topic = f"{self.prefix}.{topic_part(schema)}.{topic_part(name)}"
        return Table(oid, str(schema), str(name), columns, key, topic)

    def _ensure_publication(self) -> None:
        if self._query("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)):
            return
        names = ", ".join(f'"{t.schema}"."{t.name}"' for t in self.tables.values())
        self._query(f'CREATE PUBLICATION "{self.publication}" FOR TABLE {names}')
        log.info("%s: created publication %s for %s", self.name, self.publication, names)

    def _drop_slot(self) -> None:
        import psycopg2

        try:
            self._query("SELECT pg_drop_replication_slot(%s)", (self.slot,))
        except psycopg2.Error as exc:
            raise ConnectorError(f"cannot drop replication slot {self.slot}: {str(exc).strip()}") from None

    def _begin_snapshot(self) -> None:
        import psycopg2.extensions

        self.rcur.execute(f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput EXPORT_SNAPSHOT')
        _slot, consistent_point, snapshot_name, _plugin = self.rcur.fetchone()
        self.snapshot_lsn = parse_lsn(consistent_point)
        self.snap = self._connect()
        psycopg2.extensions.register_type(psycopg2.extensions.BYTES, self.snap)  # text as bytes: no decoding
        self.snap.autocommit = False
        self.snap.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with self.snap.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
        self.pending = list(self.tables.values())
        self.snapshot_ts_ms = int(time.time() * 1000)
        log.info(
            "%s: created slot %s at %s; snapshot of %d table(s)",
            self.name,
            self.slot,
            consistent_point,
            len(self.pending),
        )

    def _start_stream(self) -> None:
        self.rcur.start_replication(
            slot_name=self.slot,
            decode=False,
            start_lsn=self.lsn,
            options={"proto_version": "1", "publication_names": self.publication},
            status_interval=10,
        )
        self.streaming = True
        log.info("%s: streaming from slot %s after %s", self.name, self.slot, lsn_text(self.lsn))

    # ---- SourceTask -----------------------------------------------------------------------------
    def topics(self) -> dict[str, int]:
        return {t.topic: int(self.options["topic.partitions"]) for t in self.tables.values()}

    def offset(self) -> Offset:
        if not self.snapshot_done:
            return {"snapshot_done": False}
        tx = {"final_lsn": self.tx.final_lsn, "events": self.tx.events} if self.tx is not None else None
        return {"snapshot_done": True, "lsn": self.lsn, "tx": tx}

    def commit(self, offset: Offset) -> None:
        if self.streaming and offset.get("lsn"):
            lsn = int(offset["lsn"])
            self.rcur.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)

    def lag(self) -> float | None:
        if not self.streaming:
            return None
        return float(max(0, self.server_wal_end - self.lsn))

    def stop(self) -> None:
        for conn in (self.snap, self.rconn, self.conn):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing on the way out: nothing to do about it
                    log.debug("closing a connection failed", exc_info=True)

    def poll(self, timeout_s: float) -> list[SourceRecord]:
        import psycopg2

        try:
            if not self.snapshot_done:
                return self._poll_snapshot()
            return self._poll_stream(timeout_s)
        except psycopg2.OperationalError as exc:  # the server went away, restarts, ...
            raise RetriableConnectorError(f"PostgreSQL: {str(exc).strip() or type(exc).__name__}") from None
        except psycopg2.Error as exc:
            if self.rconn is not None and self.rconn.closed:
                raise RetriableConnectorError(f"PostgreSQL: the replication connection closed: {exc}") from None
            raise ConnectorError(f"PostgreSQL: {str(exc).strip() or type(exc).__name__}") from None

    # ---- snapshot ---------------------------------------------------------------------------------
    def _poll_snapshot(self) -> list[SourceRecord]:
        if not self.pending:
            self.snap.commit()
            self.snap.close()
            self.snap = None
            self.snapshot_done = True
            self.lsn = self.snapshot_lsn
            log.info("%s: snapshot done; streaming from %s", self.name, lsn_text(self.lsn))
            self._start_stream()
            return []
        t = self.pending[0]
        if self.snap_cur is None:
            self.snap_cur = self.snap.cursor(name=f"sluice_snapshot_{t.oid}")
            self.snap_cur.itersize = self.max_records
            self.snap_cur.execute(envelope.snapshot_query(t.schema, t.name, t.columns, t.key))
        rows = self.snap_cur.fetchmany(self.max_records)
        if len(rows) < self.max_records:
            self.snap_cur.close()
            self.snap_cur = None
            self.pending.pop(0)
            log.info("%s: snapshot of %s.%s done", self.name, t.schema, t.name)
        src = envelope.source(
            self.prefix, self.db, t.schema, t.name, self.snapshot_lsn, None, self.snapshot_ts_ms, True
        )
        return envelope.snapshot_records(t.topic, t.columns, t.key, rows, src, int(time.time() * 1000))

    # ---- stream -----------------------------------------------------------------------------------
    def _poll_stream(self, timeout_s: float) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < self.max_records:
            msg = self.rcur.read_message()
            if msg is None:
                self.server_wal_end = max(self.server_wal_end, int(self.rcur.wal_end))
                if self.tx is None:
                    # idle between transactions: everything before the server's WAL end was sent
                    self.lsn = max(self.lsn, int(self.rcur.wal_end))
                left = deadline - time.monotonic()
                if out or left <= 0:
                    break
                select.select([self.rconn], [], [], left)
                continue
            self.server_wal_end = max(self.server_wal_end, int(msg.wal_end))
            self._handle(parse(msg.payload), int(msg.data_start), out)
        return out

    def _handle(self, msg: Any, lsn: int, out: list[SourceRecord]) -> None:
        if isinstance(msg, Begin):
            tx = Tx(msg.final_lsn, msg.xid, msg.commit_ts_us // 1000)
            if msg.final_lsn < self.lsn:
                tx.skip = -1  # stored before: skip all of it
            elif self.resume_tx is not None and self.resume_tx.get("final_lsn") == msg.final_lsn:
                tx.skip = int(self.resume_tx.get("events", 0))
            if self.resume_tx is not None and msg.final_lsn >= int(self.resume_tx.get("final_lsn", 0)):
                self.resume_tx = None  # past the transaction that was being read
            self.tx = tx
        elif isinstance(msg, Commit):
            self.lsn = max(self.lsn, msg.end_lsn)  # every event up to its end is polled (or was stored)
            self.tx = None
        elif isinstance(msg, Relation):
            old = self.tables.get(msg.oid)
            t = self._table(msg.oid, msg.columns)
            if old is not None and [c.name for c in old.columns] != [c.name for c in msg.columns]:
                log.info("%s: %s.%s now has columns %s", self.name, t.schema, t.name, [c.name for c in t.columns])
            self.tables[msg.oid] = t
        elif isinstance(msg, (Insert, Update, Delete, Truncate)):
            current = self.tx
            if current is None:
                raise ConnectorError(f"a {type(msg).__name__} outside a transaction at {lsn_text(lsn)}")
            current.events += 1
            if current.skip == -1 or current.events <= current.skip:
                return
            self._emit(msg, current, lsn, out)

    def _source(self, t: Table, tx: Tx, lsn: int) -> bytes:
        """The change's ``source`` as JSON (serialized once per transaction and table)."""
        parts = tx.sources.get(t.oid)
        if parts is None:
            parts = tx.sources[t.oid] = envelope.source_parts(
                self.prefix, self.db, t.schema, t.name, tx.xid, tx.ts_ms, False
            )
        return parts[0] + str(lsn).encode() + parts[1]

    def _emit(self, msg: Insert | Update | Delete | Truncate, tx: Tx, lsn: int, out: list[SourceRecord]) -> None:
        now = int(time.time() * 1000)
        if isinstance(msg, Truncate):
            for oid in msg.oids:
                t = self.tables[oid]
                out.append(SourceRecord(t.topic, None, envelope.value("t", None, None, self._source(t, tx, lsn), now)))
            return
        t = self.tables[msg.oid]
        src = self._source(t, tx, lsn)
        if isinstance(msg, Insert):
            after = envelope.row(t.columns, msg.new)
            out.append(
                SourceRecord(
                    t.topic, envelope.key_of(t.columns, t.key, after), envelope.value("c", None, after, src, now)
                )
            )
        elif isinstance(msg, Update):
            after = envelope.row(t.columns, msg.new)
            key = envelope.key_of(t.columns, t.key, after)
            before = envelope.row(t.columns, msg.old) if msg.old is not None else None
            old_key = envelope.key_of(t.columns, t.key, before) if before is not None and msg.old_is_key else None
            if old_key is not None and old_key != key:  # the primary key changed: delete + create
                out.append(SourceRecord(t.topic, old_key, envelope.value("d", before, None, src, now)))
                out.append(SourceRecord(t.topic, old_key, None))
                out.append(SourceRecord(t.topic, key, envelope.value("c", None, after, src, now)))
            else:
                before = None if msg.old_is_key else before
                out.append(SourceRecord(t.topic, key, envelope.value("u", before, after, src, now)))
        else:
            before = envelope.row(t.columns, msg.old)
            key = envelope.key_of(t.columns, t.key, before)
            out.append(SourceRecord(t.topic, key, envelope.value("d", before, None, src, now)))
            out.append(SourceRecord(t.topic, key, None))  # the tombstone


TASK = PostgresSource
