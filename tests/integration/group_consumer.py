"""One consumer-group member in its own process, driven by tests/integration/test_groups.py.

    python -m tests.integration.group_consumer --bootstrap tcp://127.0.0.1:PORT --group G --topic T [options]

It subscribes, polls and reports what happens as JSON lines on stdout, one object per
line, flushed at once::

    {"ev": "ready", "pid": 123}
    {"ev": "assign", "gen": 3, "member": "c-1f..", "tps": [["t", 0]], "owned": [["t", 0], ["t", 1]]}
    {"ev": "revoke", "gen": 3, "member": "c-1f..", "tps": [["t", 1]], "owned": [["t", 0]]}
    {"ev": "records", "gen": 3, "recs": [["t", 0, 17, "value"], ...]}
    {"ev": "commit", "offsets": [["t", 0, 18]]}               (acknowledged by the coordinator)
    {"ev": "commit_failed", "type": "CommitFailedError", "code": "COMMIT_FAILED", "message": "..."}
    {"ev": "state", "gen": 4, "member": "c-1f..", "owned": [["t", 0]]}      (after a poll, when changed)
    {"ev": "paused"}  {"ev": "resumed"}  {"ev": "closed"}  {"ev": "committed", "offsets": [...]}

``gen`` and ``member`` are the consumer's group generation and member id when the
callback ran (read from the consumer's membership object: the public API does not
expose them). ``owned`` is what the member owns after the event; a ``state`` event
follows every ``poll`` after which generation, member id or assignment changed (a
cooperative member whose partitions stay put gets no callback in a new generation).
Records are reported before the next ``poll`` (which is where automatic commits are
sent), so no commit, reported or not, covers a record that was not reported.
``kill -USR1 PID`` dumps every thread's stack into the member's log (stderr).

Commands, one per line on stdin: ``pause`` (stop calling ``poll`` until ``resume``),
``resume``, ``commit`` (a synchronous commit of the positions, reported either way),
``close`` (close the consumer and exit 0). End of stdin means ``close``, so the
process does not outlive the test that started it; ``--lifetime-s`` bounds it anyway
(exit 3).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from ipc.client import Consumer
from ipc.errors import SluiceError

TP = tuple[str, int]
_out_lock = threading.Lock()


_last_commit: list[Any] = []


def emit(ev: str, **fields: Any) -> None:
    line = orjson.dumps({"ev": ev, **fields}) + b"\n"
    with _out_lock:  # the committer thread reports too
        if ev == "commit":  # automatic commits repeat the same offsets while idle: report changes only
            if fields["offsets"] == _last_commit:
                return
            _last_commit[:] = fields["offsets"]
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()


def _tps(tps: Any) -> list[list[Any]]:
    return [[t, p] for t, p in sorted(tps)]


class ReportingConsumer(Consumer):
    """A Consumer that reports every commit it makes (explicit, automatic, before a revoke)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[TP, int] = {}  # next offset after the last record handed out

    def membership(self) -> tuple[int, str]:
        g = self._group
        return (g.generation, g.member_id) if g is not None else (-1, "")

    def commit(self, offsets: dict[TP, int | tuple[int, str]] | None = None, timeout_ms: int | None = None) -> None:
        body = offsets if offsets is not None else {tp: self.seen[tp] for tp in self.assignment() if tp in self.seen}
        try:
            super().commit(offsets, timeout_ms)
        except SluiceError as exc:
            emit("commit_failed", type=type(exc).__name__, code=exc.code, message=exc.message)
            raise
        if body:
            emit("commit", offsets=[[t, p, v if isinstance(v, int) else v[0]] for (t, p), v in sorted(body.items())])

    def commit_async(
        self,
        offsets: dict[TP, int | tuple[int, str]] | None = None,
        callback: Callable[[dict[TP, tuple[int, str]], SluiceError | None], Any] | None = None,
    ) -> None:
        def report(body: dict[TP, tuple[int, str]], err: SluiceError | None) -> None:
            if err is None:
                emit("commit", offsets=[[t, p, o] for (t, p), (o, _) in sorted(body.items())])
            else:
                emit("commit_failed", type=type(err).__name__, code=err.code, message=err.message)
            if callback is not None:
                callback(body, err)

        super().commit_async(offsets, report)


def stdin_commands(at_eof: str) -> queue.Queue[str]:
    """The test's commands, a line each, read from stdin by a thread; ``at_eof`` is queued
    when stdin closes (the test went away). Also used by ``metrics_load``."""
    q: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                q.put(line.strip())
        q.put(at_eof)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return q


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="group_consumer")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--topic", action="append", required=True)
    p.add_argument("--assignor", default="cooperative-sticky")
    p.add_argument("--instance-id")
    p.add_argument("--client-id", default="")
    p.add_argument("--session-timeout-ms", type=int, default=2500)
    p.add_argument("--heartbeat-interval-ms", type=int, default=250)
    p.add_argument("--max-poll-interval-ms", type=int, default=30_000)
    p.add_argument("--rebalance-timeout-ms", type=int)
    p.add_argument("--commit", choices=["auto", "sync", "none"], default="auto")
    p.add_argument("--auto-commit-interval-ms", type=int, default=200)
    p.add_argument("--max-poll-records", type=int, default=100)
    p.add_argument("--offset-reset", default="earliest")
    p.add_argument("--lifetime-s", type=float, default=120.0)
    p.add_argument("--same-host", action="store_true", help="fetch through shared-memory rings (issue 18)")
    p.add_argument("--print-committed", type=int, metavar="PARTITIONS", help="print committed offsets and exit")
    return p.parse_args(argv)


def run(a: argparse.Namespace) -> int:
    deadline = time.monotonic() + a.lifetime_s
    owned: set[TP] = set()
    c: ReportingConsumer

    def on_assign(tps: list[TP]) -> None:
        owned.update(tps)
        gen, member = c.membership()
        emit("assign", gen=gen, member=member, tps=_tps(tps), owned=_tps(owned))

    def on_revoke(tps: list[TP]) -> None:
        owned.difference_update(tps)
        gen, member = c.membership()
        emit("revoke", gen=gen, member=member, tps=_tps(tps), owned=_tps(owned))

    c = ReportingConsumer(
        a.bootstrap,
        group_id=a.group,
        group_instance_id=a.instance_id,
        client_id=a.client_id,
        auto_offset_reset=a.offset_reset,
        partition_assignment_strategy=a.assignor,
        session_timeout_ms=a.session_timeout_ms,
        heartbeat_interval_ms=a.heartbeat_interval_ms,
        max_poll_interval_ms=a.max_poll_interval_ms,
        rebalance_timeout_ms=a.rebalance_timeout_ms,
        enable_auto_commit=a.commit == "auto",
        auto_commit_interval_ms=a.auto_commit_interval_ms,
        max_poll_records=a.max_poll_records,
        same_host=a.same_host,
        fetch_max_wait_ms=50,
        request_timeout_ms=5_000,  # a fetch lost in a node crash is retried after this
        on_assign=on_assign,
        on_revoke=on_revoke,
    )
    if a.print_committed is not None:
        got = c.committed([(a.topic[0], p) for p in range(a.print_committed)], timeout_ms=20_000)
        emit("committed", offsets=[[t, p, o] for (t, p), o in sorted(got.items())])
        c.close()
        return 0
    commands = stdin_commands(at_eof="close")
    c.subscribe(a.topic)
    emit("ready", pid=os.getpid())
    paused = False
    state: tuple[int, str, list[TP]] = (-1, "", [])
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            emit("expired")
            return 3
        try:
            cmd = commands.get(timeout=left) if paused else commands.get_nowait()
        except queue.Empty:
            cmd = ""
        if cmd == "close":
            c.close()
            emit("closed")
            return 0
        if cmd == "pause":
            paused = True
            emit("paused")
        elif cmd == "resume":
            paused = False
            emit("resumed")
        elif cmd == "commit":
            try:
                c.commit({tp: off for tp, off in c.seen.items() if tp in owned} or None)
            except SluiceError:
                pass  # reported by commit()
        elif cmd:
            raise ValueError(f"unknown command {cmd!r}")
        if paused:
            continue
        records = c.poll(timeout_ms=100)
        gen, member = c.membership()
        now = (gen, member, sorted(c.assignment()))
        if now != state:
            state = now
            emit("state", gen=gen, member=member, owned=_tps(state[2]))
        if not records:
            continue
        emit("records", gen=gen, recs=[[r.topic, r.partition, r.offset, (r.value or b"").decode()] for r in records])
        for r in records:
            c.seen[(r.topic, r.partition)] = r.offset + 1
        if a.commit == "sync":
            try:
                c.commit({tp: c.seen[tp] for tp in {(r.topic, r.partition) for r in records}})
            except SluiceError:
                pass  # reported; the next poll rejoins


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks of a stuck member, on demand
    a = parse_args(argv)
    try:
        return run(a)
    except Exception as exc:  # noqa: BLE001 - the outermost loop: report and exit non-zero
        logging.exception("group consumer failed")
        emit("error", type=type(exc).__name__, message=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
