"""Streams apps in their own processes: SIGKILL one mid-run, scale to two instances.

This module is also the app process: ``python -m tests.integration.test_streams_crash
--bootstrap B --app windowed|join`` runs the app and reports JSON lines on stdout
(``{"ev": "assigned", "tps": [...]}``, ``{"ev": "progress", "processed": N}``); each
record is slowed down (``--record-delay-ms``) so a kill lands mid-stream. The tests
compare the final results with a reference computed here from the input, after
de-duplicating by key and window (delivery is at-least-once: outputs may repeat, but
the stores never count a record twice)."""

from __future__ import annotations

import argparse
import collections
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from ipc.client import Consumer, Producer

from .conftest import REPO, EventProcess, Node, wait_until

WINDOW_MS = 10_000
PARTITIONS = 4


def emit(ev: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"ev": ev, **fields}) + b"\n")
    sys.stdout.buffer.flush()


def build(app_kind: str, bootstrap: str, delay_s: float) -> Any:
    from ipc.streams import StreamsApp, TumblingWindows

    def slow(value: Any) -> Any:
        time.sleep(delay_s)  # makes the app slow enough to be killed mid-stream; not synchronisation
        return value

    # max_task_idle_ms: a click is joined only once its users partition was read (the table's
    # records come first in time); the default 1 s lets a loaded machine process clicks first
    app = StreamsApp(f"crash-{app_kind}", bootstrap=bootstrap, key_serde="str", value_serde="json",
                     session_timeout_ms=3000, max_poll_records=100, max_task_idle_ms=60_000)
    if app_kind == "windowed":
        (app.stream("clicks").map_values(slow).group_by_key()
            .windowed_by(TumblingWindows(WINDOW_MS, grace_ms=3_600_000)).count(name="per-window")
            .to_stream().to("window-counts", key_serde="json", value_serde="json"))
    else:
        users = app.table("users")
        (app.stream("clicks").map_values(slow)
            .join(users, lambda click, user: {"n": click["n"], "user": user["v"]})
            .group_by_key().aggregate(lambda: [], lambda k, v, agg: [*agg, [v["n"], v["user"]]], name="joined")
            .to_stream().to("joined-out", value_serde="json"))
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--app", choices=["windowed", "join"], required=True)
    ap.add_argument("--record-delay-ms", type=float, default=1.0)
    ap.add_argument("--lifetime-s", type=float, default=120.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d %(name)s] %(message)s")
    app = build(args.app, args.bootstrap, args.record_delay_ms / 1000)
    signal.signal(signal.SIGTERM, lambda *_: app.stop())
    last = [-1, -1.0]

    def report(a: Any) -> bool:
        tps = sorted(a._consumer.assignment()) if a._consumer is not None else []
        if tps != last[0]:
            last[0] = tps
            emit("assigned", tps=tps)
        now = time.monotonic()
        if now - last[1] > 0.2:
            last[1] = now
            emit("progress", processed=a.counters.records_processed, restored=a.counters.records_restored)
        return False

    emit("ready")
    app.run(max_seconds=args.lifetime_s, until=report)
    emit("stopped", metrics=app.metrics())


def start_app(node: Node, kind: str, name: str, delay_ms: float = 1.0) -> EventProcess:
    return EventProcess(
        name,
        [sys.executable, "-m", "tests.integration.test_streams_crash", "--bootstrap", node.bootstrap,
         "--app", kind, "--record-delay-ms", str(delay_ms)],
        node.base / f"{name}.log",
        REPO,
    )


def latest_by_key(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """The last value of each key in ``topic`` (read to its end)."""
    out: dict[bytes, bytes] = {}
    with Consumer(bootstrap, auto_offset_reset="earliest") as c:
        tps = [(topic, p) for p in range(PARTITIONS)]
        c.assign(tps)
        ends = c.end_offsets(tps)
        deadline = time.monotonic() + 30
        while any(c.position(*tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"reading {topic} took more than 30 s"
            for r in c.poll(timeout_ms=200):
                out[r.key] = r.value
    return out


def assigned(proc: EventProcess) -> list[tuple[str, int]]:
    evs = proc.events("assigned")
    return [tuple(tp) for tp in evs[-1]["tps"]] if evs else []  # type: ignore[misc]


def test_windowed_count_survives_sigkill_and_scales(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory().start()
    with node.admin() as a:
        a.create_topic("clicks", partitions=PARTITIONS)
        a.create_topic("window-counts", partitions=PARTITIONS)
    users = [f"u{i}" for i in range(40)]
    inputs = [(users[(i * 7) % 40], 1_000_000 + i * 37) for i in range(3000)]
    with Producer(node.bootstrap) as p:
        for i, (user, ts) in enumerate(inputs):
            p.send("clicks", orjson.dumps({"n": i}), key=user.encode(), timestamp_ms=ts)
        p.flush(30)
    want = collections.Counter((u, ts - ts % WINDOW_MS) for u, ts in inputs)

    a = start_app(node, "windowed", "a", delay_ms=2.0)
    b = start_app(node, "windowed", "b", delay_ms=2.0)
    try:
        # two instances split the partitions (each task's partitions stay together)
        wait_until(lambda: len(assigned(a)) == 2 and len(assigned(b)) == 2
                   and set(assigned(a)) | set(assigned(b)) == {("clicks", p) for p in range(4)},
                   60, "a and b to own two partitions each")
        wait_until(lambda: (a.events("progress") or [{"processed": 0}])[-1]["processed"] > 200, 60,
                   "a to process some records")
        a.kill()  # SIGKILL mid-stream: its batch may be written and not committed
        # b takes over a's partitions (after the session timeout) and restores their state
        wait_until(lambda: len(assigned(b)) == 4, 60, "b to own every partition")
        wait_until(lambda: b.events("progress")[-1]["restored"] > 0, 30, "b to restore from the changelog")
        c = start_app(node, "windowed", "c", delay_ms=0.0)  # a restarts (as c): the partitions move again
        try:
            def done() -> bool:
                got = {(orjson.loads(k)["key"], orjson.loads(k)["start"]): int(v)
                       for k, v in latest_by_key(node.bootstrap, "window-counts").items()}
                return got == want

            wait_until(done, 120, "the final window counts to equal the reference", interval=1.0)
        finally:
            c.kill()
    finally:
        a.kill()
        b.kill()


def test_stream_table_join_app_restarts_after_sigkill(node_factory: Any) -> None:
    """The join app (clicks joined with the users table, aggregated per user) is SIGKILLed
    mid-stream and started again: the table is rebuilt from its topic, the aggregate from
    its changelog, and each user's list holds every click exactly once."""
    node = node_factory().start()
    with node.admin() as a:
        for t in ("clicks", "users", "joined-out"):
            a.create_topic(t, partitions=PARTITIONS)
    users = [f"u{i}" for i in range(20)]
    with Producer(node.bootstrap) as p:
        for i, u in enumerate(users):
            p.send("users", orjson.dumps({"v": i}), key=u.encode(), timestamp_ms=1)
        for n in range(1500):
            p.send("clicks", orjson.dumps({"n": n}), key=users[n % 20].encode(), timestamp_ms=1000 + n)
        p.flush(30)
    want = {u: sorted([n, i] for n in range(1500) if n % 20 == i) for i, u in enumerate(users)}
    a = start_app(node, "join", "join-a", delay_ms=3.0)
    try:
        wait_until(lambda: (a.events("progress") or [{"processed": 0}])[-1]["processed"] > 300, 60,
                   "the join app to process some records")
        a.kill()
    finally:
        a.kill()
    b = start_app(node, "join", "join-b", delay_ms=0.0)
    try:
        def done() -> bool:
            got = {k.decode(): sorted(orjson.loads(v)) for k, v in latest_by_key(node.bootstrap, "joined-out").items()}
            return got == want

        wait_until(done, 120, "every user's joined clicks, each exactly once", interval=1.0)
        assert b.events("progress")[-1]["restored"] > 0
    finally:
        b.kill()


if __name__ == "__main__":
    main()
