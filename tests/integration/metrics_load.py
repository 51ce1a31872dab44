"""Load for tests/integration/test_metrics.py, each role in its own process.

    python -m tests.integration.metrics_load produce --bootstrap B --topic T --partitions N --rate R --duration S
    python -m tests.integration.metrics_load consume --bootstrap B --topic T --group G

Both report JSON lines on stdout, one object per line, flushed at once.

``produce`` sends ``--rate`` records a second (spread round-robin over the partitions)
for ``--duration`` seconds, paced against the clock, and counts acknowledgements as they
arrive. Every half second it reports ``{"ev": "progress", "t": UNIX, "acked": N}``; at the
end (after a flush) ``{"ev": "done", "start": UNIX, "end": UNIX, "sent": N, "acked": N,
"errors": N, "rate": acked/(end-start), "per_partition": {P: acked}, "timeline":
[[UNIX, acked], ...]}``. The timeline lets the test compute the rate the producer
measured over exactly the window a PromQL ``rate()`` covers.

``consume`` joins group ``--group``, polls and commits automatically every 200 ms. It
reports ``{"ev": "consumed", "n": N}`` at most every half second while it reads.
Sending ``stop`` on stdin (or closing stdin) makes it close the consumer (a final
synchronous commit, then it leaves the group) and report
``{"ev": "closed", "t": UNIX, "consumed": N, "committed": {P: OFFSET}}``.

Both exit by themselves after ``--lifetime-s`` (exit 3), so neither outlives its test.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import threading
import time
from typing import Any

import orjson

from ipc.client import Consumer, Producer
from tests.integration.group_consumer import stdin_commands


def emit(ev: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"ev": ev, **fields}) + b"\n")
    sys.stdout.buffer.flush()


def produce(a: argparse.Namespace) -> int:
    lock = threading.Lock()
    acked = [0]
    errors = [0]
    per_partition = [0] * a.partitions

    def done(fut: Any) -> None:
        err = fut.exception(0)
        with lock:
            if err is None:
                acked[0] += 1
                per_partition[fut.result(0).partition] += 1
            else:
                errors[0] += 1

    value = b"v" * a.value_bytes
    timeline: list[list[float]] = []
    # a request lost with a killed worker is retried after request_timeout_ms: keep it short
    with Producer(a.bootstrap, linger_ms=2, request_timeout_ms=1000, delivery_timeout_ms=60_000) as p:
        p.partitions_for(a.topic)  # metadata before the clock starts
        start = time.time()
        t0 = time.monotonic()
        sent = 0
        next_report = t0
        while True:
            now = time.monotonic()
            elapsed = now - t0
            if elapsed >= a.duration:
                break
            due = int(a.rate * elapsed)
            while sent < due:
                p.send(a.topic, value, partition=sent % a.partitions).add_done_callback(done)
                sent += 1
            if now >= next_report:
                with lock:
                    n = acked[0]
                timeline.append([time.time(), n])
                emit("progress", t=timeline[-1][0], acked=n)
                next_report += 0.5
            time.sleep(0.002)  # pacing: the next few records are due in a couple of ms
        p.flush(60)
        end = time.time()
        timeline.append([end, acked[0]])
    with lock:
        emit(
            "done",
            start=start,
            end=end,
            sent=sent,
            acked=acked[0],
            errors=errors[0],
            rate=acked[0] / (end - start),
            per_partition={str(i): n for i, n in enumerate(per_partition)},
            timeline=timeline,
        )
    return 0


def consume(a: argparse.Namespace) -> int:
    commands = stdin_commands(at_eof="stop")
    deadline = time.monotonic() + a.lifetime_s
    c = Consumer(
        a.bootstrap,
        group_id=a.group,
        client_id="metrics-test",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=200,
        session_timeout_ms=5000,
        heartbeat_interval_ms=500,
        fetch_max_wait_ms=100,
    )
    c.subscribe([a.topic])
    emit("ready")
    consumed = 0
    next_report = 0.0
    while True:
        if time.monotonic() > deadline:
            emit("expired")
            return 3
        try:
            cmd = commands.get_nowait()
        except queue.Empty:
            cmd = ""
        if cmd == "stop":
            tps = sorted(c.assignment())
            c.close()  # commits the positions, then leaves the group
            t = time.time()
            with Consumer(a.bootstrap, group_id=a.group) as probe:  # what the coordinator holds
                committed = probe.committed(tps, timeout_ms=20_000)
            emit("closed", t=t, consumed=consumed, committed={str(p): o for (_, p), o in committed.items()})
            return 0
        consumed += len(c.poll(timeout_ms=100))
        if consumed and time.monotonic() >= next_report:
            next_report = time.monotonic() + 0.5
            emit("consumed", n=consumed)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="metrics_load")
    sub = ap.add_subparsers(dest="role", required=True)
    pp = sub.add_parser("produce")
    pp.add_argument("--partitions", type=int, required=True)
    pp.add_argument("--rate", type=float, required=True)
    pp.add_argument("--duration", type=float, required=True)
    pp.add_argument("--value-bytes", type=int, default=100)
    cp = sub.add_parser("consume")
    cp.add_argument("--group", required=True)
    for sp in (pp, cp):
        sp.add_argument("--bootstrap", required=True)
        sp.add_argument("--topic", required=True)
        sp.add_argument("--lifetime-s", type=float, default=120.0)
    a = ap.parse_args(argv)
    try:
        return produce(a) if a.role == "produce" else consume(a)
    except Exception as exc:  # noqa: BLE001 - the outermost loop: report and exit non-zero
        logging.exception("%s failed", a.role)
        emit("error", type=type(exc).__name__, message=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
