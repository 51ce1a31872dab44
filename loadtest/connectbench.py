"""Benchmark of the PostgreSQL connectors (issue 17): snapshot, change stream, sink.

    python -m loadtest.connectbench --rows 200000 --changes 100000 --runs 3

Each run starts a throwaway PostgreSQL (``initdb`` into a temporary directory as the
``postgres`` user when run as root, ``wal_level = logical``, a free port on loopback,
removed at the end) and a node, then measures three phases:

1. **snapshot**: a table ``(id int primary key, payload text)`` of ``--rows`` rows of
   about 100 bytes (a 96-byte payload) is captured by a ``postgres-cdc`` connector;
   the time runs from the slot's creation to the topic's high watermarks holding every
   row (acknowledged by Sluice with acks=all): rows/s.
2. **stream**: ``--changes`` updates in transactions of 1,000 rows run against the
   table as fast as PostgreSQL takes them; the time runs from the first write to the
   high watermarks holding every change: changes/s. Meanwhile the slot's lag
   (``pg_current_wal_lsn() - confirmed_flush_lsn``, WAL bytes PostgreSQL keeps for the
   slot) is sampled every 0.2 s: median and maximum.
3. **sink**: a ``postgres-sink`` (``--sink-tasks`` tasks) copies the topic into a table
   of a second database; the time runs from its first commit to its last one (its
   positions in ``sluice_connect_offsets``): upserts/s.

Each rate is also given per CPU second of the connector's process (``*_per_cpu_s``,
from ``/proc/<pid>/stat``): what the connector costs, whatever else the host runs.

The node runs with its defaults (``fsync = interval``); PostgreSQL with
``synchronous_commit = off``. Prints each run and the medians; ``--json`` for a line of
JSON per run.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from loadtest import benchutil
from loadtest.benchutil import free_port

USER = "bench"
PASSWORD = "bench-pw"
TOPIC = "bench.public.items"


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    return benchutil.wait("connectbench", predicate, timeout, what, interval)


class Postgres:
    """A throwaway cluster, as the connector tests make one."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise SystemExit("connectbench: PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = os.path.dirname(found[-1])
        self.uid, self.gid = os.getuid(), os.getgid()
        if self.uid == 0:
            pw = pwd.getpwnam("postgres")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.dir = tempfile.mkdtemp(prefix="sluice-connectbench-pg-")
        os.chown(self.dir, self.uid, self.gid)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.started = False

    def _run(self, *args: str) -> None:
        def demote() -> None:
            if os.getuid() != self.uid:
                os.setgid(self.gid)
                os.setuid(self.uid)

        res = subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            preexec_fn=demote,  # noqa: PLW1509 - a single-threaded moment of the benchmark
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.dir,
        )
        if res.returncode != 0:
            raise SystemExit(f"connectbench: {' '.join(args)}: exit {res.returncode}: {res.stderr}{res.stdout}")

    def start(self) -> None:
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        os.chown(pwfile, self.uid, self.gid)
        self._run("initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                "wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\n"
                "synchronous_commit = off\nshared_buffers = 128MB\nmax_wal_size = 2GB\n"
            )
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60", "start")
        self.started = True

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(SystemExit, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop")
            self.started = False

    def connect(self, dbname: str = "postgres") -> Any:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname=dbname)
        conn.autocommit = True
        return conn

    def sql(self, query: str, args: tuple[Any, ...] = (), dbname: str = "postgres") -> list[tuple[Any, ...]]:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(query, args or None)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def options(self, dbname: str = "postgres") -> dict[str, Any]:
        return {
            "database.host": "127.0.0.1",
            "database.port": self.port,
            "database.user": USER,
            "database.password": PASSWORD,
            "database.dbname": dbname,
        }


def toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


@contextlib.contextmanager
def node(work: str, connectors: list[dict[str, Any]]) -> Iterator[str]:
    """A node (``sluice serve``) with ``connectors`` declared; yields its bootstrap."""
    from ipc.client import Admin

    port = free_port()
    data = os.path.join(work, "data")
    lines = [f'data_dir = "{data}"', f'listen = "tcp://127.0.0.1:{port}"', 'metrics_listen = ""']
    lines.append('log_level = "warning"')
    for c in connectors:
        lines += ["[[connectors]]", f"name = {toml(c['name'])}", f"class = {toml(c['class'])}", "[connectors.options]"]
        lines += [f"{json.dumps(k)} = {toml(v)}" for k, v in c["options"].items()]
    config = os.path.join(work, "node.toml")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    with open(os.path.join(work, "node.log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", config],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    bootstrap = f"tcp://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"connectbench: the node exited with {proc.returncode} (see {work}/node.log)")
            try:
                with Admin(bootstrap, timeout_ms=500) as admin:
                    admin.list_topics()
            except Exception:  # noqa: BLE001 - not up yet
                return False
            return True

        wait(ready, 60, "the node", 0.2)
        yield bootstrap
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def high_watermark(admin: Any, partitions: int) -> int:
    try:
        got = admin.list_offsets({(TOPIC, p): "latest" for p in range(partitions)}, timeout_ms=5000)
    except Exception:  # noqa: BLE001 - the topic is not made yet
        return 0
    return sum(int(o) for o in got.values() if o is not None)


def connector_pid(data: str, name: str) -> int:
    from appliance.config import resolve_runtime_dir

    path = os.path.join(resolve_runtime_dir("", data), "connect", "status.json")

    def pid() -> int:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return 0
        return next((int(c["pid"]) for c in doc["connectors"] if c["name"] == name and c["pid"]), 0)

    return int(wait(pid, 60, f"connector {name}'s process", 0.05))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slot_lag(pg: Postgres) -> int | None:
    rows = pg.sql(
        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots "
        "WHERE slot_name = 'sluice_bench'"
    )
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def one_run(args: argparse.Namespace) -> dict[str, float]:
    from appliance.connect.store import ConnectorStore
    from ipc.client import Admin

    work = tempfile.mkdtemp(prefix="sluice-connectbench-")
    pg = Postgres()
    out: dict[str, float] = {}
    try:
        pg.start()
        pg.sql("CREATE TABLE items (id int PRIMARY KEY, payload text)")
        pg.sql("INSERT INTO items SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, %s) g", (args.rows,))
        pg.sql("VACUUM ANALYZE items")
        pg.sql("CREATE DATABASE replica")
        pg.sql("CREATE TABLE items (id int PRIMARY KEY, payload text)", dbname="replica")
        cdc = {
            "name": "bench",
            "class": "postgres-cdc",
            "options": {
                **pg.options(),
                "topic.prefix": "bench",
                "table.include.list": "public.items",
                "topic.partitions": args.partitions,
            },
        }
        data = os.path.join(work, "data")
        with node(work, [cdc]) as bootstrap, Admin(bootstrap) as admin:
            # 1. snapshot: from the slot's creation to every row acknowledged
            wait(lambda: pg.sql("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'sluice_bench'"), 60, "the slot")
            t0 = time.monotonic()
            cdc_pid = connector_pid(data, "bench")
            cpu0 = cpu_s(cdc_pid)
            wait(lambda: high_watermark(admin, args.partitions) >= args.rows, 600, "the snapshot")
            out["snapshot_rows_per_s"] = args.rows / (time.monotonic() - t0)
            out["snapshot_rows_per_cpu_s"] = args.rows / (cpu_s(cdc_pid) - cpu0)
            # 2. stream: updates in 1,000-row transactions, the slot's lag sampled meanwhile
            lags: list[int] = []
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.2):
                    lag = slot_lag(pg)
                    if lag is not None:
                        lags.append(lag)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.monotonic()
            cpu0 = cpu_s(cdc_pid)
            conn = pg.connect()
            try:
                with conn.cursor() as cur:
                    for first in range(0, args.changes, 1000):
                        lo = first % args.rows + 1
                        cur.execute(
                            "UPDATE items SET payload = md5(random()::text) || substr(payload, 33) "
                            "WHERE id BETWEEN %s AND %s",
                            (lo, lo + 999),
                        )
            finally:
                conn.close()
            written_s = time.monotonic() - t0
            total = args.rows + args.changes
            wait(lambda: high_watermark(admin, args.partitions) >= total, 600, "the changes")
            out["stream_changes_per_s"] = args.changes / (time.monotonic() - t0)
            out["stream_changes_per_cpu_s"] = args.changes / (cpu_s(cdc_pid) - cpu0)
            out["stream_written_per_s"] = args.changes / written_s
            done.set()
            sampler.join(5)
            out["slot_lag_median_bytes"] = float(statistics.median(lags)) if lags else 0.0
            out["slot_lag_max_bytes"] = float(max(lags)) if lags else 0.0
            # 3. sink: from its first commit to its last
            ConnectorStore(data).create(
                {
                    "name": "replica",
                    "class": "postgres-sink",
                    "options": {
                        **{k: str(v) for k, v in pg.options("replica").items()},
                        "topics": TOPIC,
                        "table": "public.items",
                        "batch.max.records": "5000",
                        "tasks.max": str(args.sink_tasks),
                    },
                }
            )

            def committed() -> int:
                try:
                    rows = pg.sql("SELECT sum(next_offset) FROM sluice_connect_offsets", dbname="replica")
                except Exception:  # noqa: BLE001 - the table is not made yet
                    return 0
                return int(rows[0][0] or 0)

            first = wait(committed, 120, "the sink's first commit", 0.01)
            t0 = time.monotonic()
            sink_pid = connector_pid(data, "replica")
            cpu0 = cpu_s(sink_pid)
            wait(lambda: committed() >= total, 600, "the sink")
            out["sink_upserts_per_s"] = (total - first) / (time.monotonic() - t0)
            out["sink_upserts_per_cpu_s"] = (total - first) / (cpu_s(sink_pid) - cpu0)
    finally:
        pg.stop()
        shutil.rmtree(pg.dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.connectbench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows in the table (snapshot)")
    ap.add_argument("--changes", type=int, default=100_000, help="updates streamed")
    ap.add_argument("--partitions", type=int, default=1, help="partitions of the CDC topic")
    ap.add_argument("--sink-tasks", type=int, default=1, help="the sink's tasks.max")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = []
    for i in range(args.runs):
        r = one_run(args)
        results.append(r)
        if args.json:
            print(json.dumps({"run": i + 1, **{k: round(v, 1) for k, v in r.items()}}), flush=True)
        else:
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:,.0f}" for k, v in r.items()), flush=True)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    if args.json:
        print(json.dumps({"median": {k: round(v, 1) for k, v in med.items()}}))
    else:
        print("median: " + ", ".join(f"{k} {v:,.0f}" for k, v in med.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
