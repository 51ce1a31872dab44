"""A throwaway PostgreSQL cluster for the connector tests: ``initdb`` into a fresh
directory as an unprivileged user (``postgres`` when the tests run as root, else the
current user), ``wal_level = logical`` (or as asked), password authentication, a free
port on 127.0.0.1; ``pg_ctl stop`` and the directory removed at the end, even on failure.
Skipped, with the reason, without PostgreSQL's binaries (``apt-get install postgresql``,
which ``make test`` does as root: .ci/system-deps)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Any

import pytest

from tests.integration.conftest import free_port

USER = "sluice"
PASSWORD = "sluice-test-pw"


def pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


class PgCluster:
    def __init__(self, wal_level: str = "logical") -> None:
        bindir = pg_bin()
        if bindir is None:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql; make test does it as root)")
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            pytest.skip("psycopg2 is not installed (pip install psycopg2-binary: the test extras)")
        self.bindir = bindir
        self.uid = os.getuid()
        self.gid = os.getgid()
        if self.uid == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run initdb as")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.dir = tempfile.mkdtemp(prefix="sluice-pg-")
        os.chown(self.dir, self.uid, self.gid)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.wal_level = wal_level
        self.started = False

    def _run(self, *args: str) -> None:
        def demote() -> None:
            if os.getuid() != self.uid:
                os.setgid(self.gid)
                os.setuid(self.uid)

        res = subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            preexec_fn=demote,  # noqa: PLW1509 - the single-threaded test harness: fine
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.dir,
        )
        if res.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {res.returncode}: {res.stderr}{res.stdout}")

    def start(self) -> PgCluster:
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        os.chown(pwfile, self.uid, self.gid)
        if not os.path.exists(self.data):
            self._run("initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8")
            with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
                f.write(
                    f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                    f"wal_level = {self.wal_level}\nmax_replication_slots = 10\nmax_wal_senders = 10\n"
                    "fsync = off\nsynchronous_commit = off\nshared_buffers = 32MB\n"
                )
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60", "start")
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
            self.started = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        try:
            if self.started:
                with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                    self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop")
        finally:
            with contextlib.suppress(OSError), open(os.path.join(self.dir, "log"), errors="replace") as f:
                print("---- PostgreSQL log (tail) ----\n" + "".join(f.readlines()[-40:]))  # shown on failure
            shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname=dbname, connect_timeout=10, **kwargs
        )
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
        """The connector options that reach this cluster."""
        return {
            "database.host": "127.0.0.1",
            "database.port": self.port,
            "database.user": USER,
            "database.password": PASSWORD,
            "database.dbname": dbname,
        }
