"""Fixtures that run real appliances: real processes, real sockets on loopback, real disk.

Each node runs ``sluice serve`` in its own session (process group); teardown SIGKILLs
the whole group and every worker pid it ever reported, so nothing outlives a test
even when it fails. Waiting is always polling with a deadline, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.config import resolve_runtime_dir
from appliance.status import read_status
from ipc.client import Admin
from ipc.errors import SluiceError

REPO = Path(__file__).resolve().parents[2]
SLUICE = [sys.executable, "-m", "appliance.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (SluiceError, OSError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what} (last error: {last_exc})")
        time.sleep(interval)  # polling interval, not synchronisation


class Node:
    def __init__(self, base: Path, node_id: int = 0, **options: Any) -> None:
        self.base = base
        self.node_id = node_id
        self.data_dir = base / f"data-{node_id}"
        self.port = free_port()
        self.listen = f"tcp://127.0.0.1:{self.port}"
        self.bootstrap = self.listen
        self.log_path = base / f"node-{node_id}.log"
        self.config_path = base / f"node-{node_id}.toml"
        opts: dict[str, Any] = {
            "node_id": node_id,
            "data_dir": str(self.data_dir),
            "listen": self.listen,
            "metrics_listen": "",
            "heartbeat_timeout_ms": 2000,
            "restart_backoff_ms": 50,
            "restart_backoff_max_ms": 500,
            "shutdown_timeout_ms": 10000,
            **options,
        }
        lines = []
        for k, v in opts.items():
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, (int, float)):
                lines.append(f"{k} = {v}")
            elif isinstance(v, dict):
                continue
            else:
                lines.append(f'{k} = "{v}"')
        for k, v in opts.items():
            if isinstance(v, dict):
                lines.append(f"[{k}]")
                for kk, vv in v.items():
                    if isinstance(vv, bool):  # TOML's true/false, not Python's repr
                        lines.append(f'"{kk}" = {"true" if vv else "false"}')
                    else:
                        lines.append(f'"{kk}" = "{vv}"' if isinstance(vv, str) else f'"{kk}" = {vv!r}')
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        # the client side of [security] (ipc/client/transport.py client_context) for the
        # harness's own Admin clients: set it when the node has CURVE keys
        self.client_security: dict[str, str] | None = None
        self.known_pids: set[int] = set()
        self.status_path = os.path.join(resolve_runtime_dir("", str(self.data_dir)), "status.shm")

    # ---- life cycle -------------------------------------------------------------------------
    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> Node:
        """Start ``sluice serve``; ``env`` adds variables (e.g. NOTIFY_SOCKET) to the environment."""
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        env.pop("SLUICE_BOOTSTRAP", None)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [*SLUICE, "serve", "--config", str(self.config_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=str(self.base),
        )
        logf.close()
        self.known_pids.add(self.proc.pid)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log_tail()}")
            with Admin(self.bootstrap, timeout_ms=500, security=self.client_security) as admin:
                admin.list_topics()
            return True

        wait_until(ready, timeout, "the node to answer")

    def admin(self, timeout_ms: int = 30_000) -> Admin:
        return Admin(self.bootstrap, timeout_ms=timeout_ms, security=self.client_security)

    def status(self) -> dict[str, Any]:
        st = read_status(self.status_path)
        for p in st["partitions"]:
            if p["pid"]:
                self.known_pids.add(p["pid"])
        return st

    def partition(self, topic: str, partition: int) -> dict[str, Any]:
        for p in self.status()["partitions"]:
            if p["topic"] == topic and p["partition"] == partition:
                return p
        raise AssertionError(f"{topic}-{partition} not in the status table")

    def worker_pid(self, topic: str, partition: int) -> int:
        pid = int(self.partition(topic, partition)["pid"])
        assert pid > 0, f"{topic}-{partition} has no worker"
        return pid

    def wait_serving(self, topic: str, partition: int, timeout: float = 30.0, not_pid: int = 0) -> int:
        def serving() -> int:
            p = self.partition(topic, partition)
            ok = p["state"] == "serving" and p["pid"] and p["pid"] != not_pid
            return int(p["pid"]) if ok else 0

        return int(wait_until(serving, timeout, f"{topic}-{partition} serving"))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        """SIGKILL the process group and every pid the node ever reported."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        for pid in self.known_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class EventProcess:
    """A child process in its own session whose stdout is JSON lines ("events", each with
    an "ev" kind), collected by a thread and stamped with the time the test saw them;
    stderr goes to ``log_path``; commands go to its stdin one line each."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, cwd: Path, stdin: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("SLUICE_BOOTSTRAP", None)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env=env,
                cwd=str(cwd),
            )
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"events-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                ev = {"ev": "garbage", "line": line.decode(errors="replace")}
            ev["seen"] = time.monotonic()  # when the test saw it
            with self._lock:
                self._events.append(ev)

    def events(self, kind: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            evs = self._events[since:]
        return [e for e in evs if kind is None or e["ev"] == kind]

    def mark(self) -> int:
        """An index into the events: ``events(since=mark)`` are the ones after now."""
        with self._lock:
            return len(self._events)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL the whole session and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(**options: Any) -> Node:
        n = Node(tmp_path, node_id=len(nodes), **options)
        nodes.append(n)
        return n

    try:
        yield make
    finally:
        for n in nodes:
            with contextlib.suppress(Exception):
                n.status()  # learn the worker pids before killing
            n.kill_all()
            shutil.rmtree(os.path.dirname(n.status_path), ignore_errors=True)
            print(f"--- node {n.node_id} log tail ---\n{n.log_tail()}")


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    return node_factory().start()
