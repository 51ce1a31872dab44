"""Streams benchmarks (issue 16, docs/performance.md): one instance, 4 partitions,
100-byte JSON values, side by side with a plain consumer -> producer loop in the same run.

    .venv/bin/python -m loadtest.streamsbench [--records 500000] [--runs 3] [--restore-keys 1000000]
                                              [--modes plain,stateless,windowed,join,restore]
                                              [--bootstrap tcp://HOST:PORT] [--profile MODE] [--json]

Without ``--bootstrap`` a node is started on a free loopback port (data under
``--work``, removed first; the node's process group is killed at the end). The input
topic ``sb-in`` (4 partitions, ``--records`` records, keys ``k0``..``k9999``, 100-byte
JSON values, timestamps 1 ms apart) and the table topic ``sb-customers`` (the 10,000
keys) are written once; every run of every mode reads them with a group of its own.

Modes (each ``--runs`` times, round-robin, the order rotated every round, medians reported):

- ``plain``: a group ``Consumer`` -> ``Producer`` loop, bytes through unchanged: per poll,
  send every record, flush (acks=all), commit. What the streams loop does, minus the library.
- ``stateless``: ``stream(json).filter(...).map_values(...).to(out)``.
- ``windowed``: ``group_by_key().windowed_by(TumblingWindows(60 s)).count(emit="final")``
  -> ``to_stream().to(out)`` (changelog-backed store, final results only).
- ``join``: ``stream.join(table, joiner).to(out)`` with the 10,000-key customers table.
- ``restore``: a ``count`` store whose changelog holds ``--restore-keys`` keys (written
  once, directly in the store's encoding): the time the app spends restoring it at start.

Rates are measured from the end of the first batch (the group join and the first fetch
excluded) to the last record: ``(records - first batch) / seconds``. ``--profile MODE``
runs that mode once under cProfile and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import orjson

PARTITIONS = 4
KEYS = 10_000
T0 = 1_000_000_000_000  # stream records' first timestamp (ms); the table's records are older
MODES = ("plain", "stateless", "windowed", "join", "restore")


def _value(i: int) -> bytes:
    v = orjson.dumps({"id": i, "user": f"k{i % KEYS}", "amount": i % 997, "pad": ""})
    pad = 100 - len(v)
    return orjson.dumps({"id": i, "user": f"k{i % KEYS}", "amount": i % 997, "pad": "x" * pad})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(work: str) -> tuple[subprocess.Popen[bytes], str]:
    from ipc.client import Admin
    from ipc.errors import SluiceError

    data = os.path.join(work, "data")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    port = _free_port()
    bootstrap = f"tcp://127.0.0.1:{port}"
    with open(os.path.join(work, "node.log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--data-dir", data, "--listen", bootstrap,
             "--metrics-listen", "", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with Admin(bootstrap, timeout_ms=2000) as admin:
                admin.list_topics()
            return proc, bootstrap
        except SluiceError:  # not up yet; bounded by the deadline
            if proc.poll() is not None:
                break
            time.sleep(0.3)  # polling interval while the node starts
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"the node did not start (see {work}/node.log)")


def prepare(bootstrap: str, records: int, restore_keys: int) -> None:
    from ipc.client import Admin, Producer
    from ipc.streams.serdes import pack

    with Admin(bootstrap) as admin:
        existing = set(admin.list_topics())
        for t in ("sb-in", "sb-customers", "sb-restore-in", *(f"sb-out-{m}" for m in MODES)):
            if t not in existing:
                admin.create_topic(t, partitions=PARTITIONS)
        fresh_changelog = "sb-restore-counts-changelog" not in existing
        if fresh_changelog:
            admin.create_topic("sb-restore-counts-changelog", partitions=PARTITIONS,
                               config={"cleanup.policy": "compact"})
        need_input = "sb-in" not in existing
    started = time.monotonic()
    with Producer(bootstrap, acks=1, linger_ms=20, batch_size=512 * 1024) as p:
        if need_input:
            for i in range(KEYS):
                p.send("sb-customers", orjson.dumps({"name": f"customer {i}", "tier": i % 3}),
                       key=f"k{i}".encode(), timestamp_ms=T0 - 1000)
            for i in range(records):
                p.send("sb-in", _value(i), key=f"k{i % KEYS}".encode(), timestamp_ms=T0 + i // PARTITIONS)
        if fresh_changelog:
            one = pack(1)
            for i in range(restore_keys):
                p.send("sb-restore-counts-changelog", one, key=pack(f"r{i}"))
        p.flush(300)
    print(f"prepared in {time.monotonic() - started:.1f} s", file=sys.stderr)


class Clock:
    """The time of the first pass that processed records, and the count then."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.n0 = 0

    def mark(self, n: int) -> None:
        if not self.t0 and n:
            self.t0, self.n0 = time.perf_counter(), n

    def rate(self, n: int) -> float:
        return (n - self.n0) / (time.perf_counter() - self.t0)


MAX_POLL = {"records": 2000, "commit_interval_ms": 0}  # --max-poll-records, --commit-interval-ms


def run_plain(bootstrap: str, records: int, i: int) -> float:
    from ipc.client import Consumer, Producer

    clock = Clock()
    n = 0
    with Producer(bootstrap) as producer, Consumer(
        bootstrap, group_id=f"sb-plain-{i}", enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=MAX_POLL["records"], partition_assignment_strategy="range",
    ) as consumer:
        consumer.subscribe(["sb-in"])
        deadline = time.monotonic() + 600
        while n < records and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=100)
            if not batch:
                continue
            futures = [producer.send("sb-out-plain", r.value, key=r.key, timestamp_ms=r.timestamp) for r in batch]
            producer.flush(120)
            for f in futures:
                if f.exception() is not None:
                    raise SystemExit(f"plain: a send failed: {f.exception()}")
            consumer.commit()
            n += len(batch)
            clock.mark(n)
    return clock.rate(n)


def build(mode: str, bootstrap: str, i: int) -> Any:
    from ipc.streams import StreamsApp, TumblingWindows

    app = StreamsApp(f"sb-{mode}-{i}" if mode != "restore" else "sb-restore", bootstrap=bootstrap,
                     key_serde="str", value_serde="json", max_poll_records=MAX_POLL["records"],
                     commit_interval_ms=MAX_POLL["commit_interval_ms"])
    if mode == "stateless":
        (app.stream("sb-in").filter(lambda k, v: v["amount"] >= 0)
            .map_values(lambda v: {"id": v["id"], "amount": v["amount"] * 2}).to("sb-out-stateless"))
    elif mode == "windowed":
        (app.stream("sb-in").group_by_key().windowed_by(TumblingWindows(size_ms=60_000))
            .count(name="per-minute", emit="final").to_stream().to("sb-out-windowed", key_serde="json"))
    elif mode == "join":
        customers = app.table("sb-customers")
        (app.stream("sb-in").join(customers, lambda o, c: {"id": o["id"], "tier": c["tier"]}, name="enrich")
            .to("sb-out-join"))
    elif mode == "restore":
        app.stream("sb-restore-in").group_by_key().count(name="counts")
    return app


def run_streams(mode: str, bootstrap: str, records: int, restore_keys: int, i: int) -> float:
    app = build(mode, bootstrap, i)
    if mode == "restore":
        app.run(max_seconds=600, until=lambda a: a.counters.records_restored >= restore_keys)
        c = app.counters
        if c.records_restored < restore_keys:
            raise SystemExit(f"restore: {c.records_restored} of {restore_keys} keys restored")
        return float(c.records_restored / c.restore_seconds)
    clock = Clock()
    target = records + (KEYS if mode == "join" else 0)

    def until(a: Any) -> bool:
        clock.mark(a.counters.records_processed)
        return bool(a.counters.records_processed >= target)

    app.run(max_seconds=600, until=until)
    if app.counters.records_processed < target:
        raise SystemExit(f"{mode}: {app.counters.records_processed} of {target} records processed in 600 s")
    return clock.rate(app.counters.records_processed)


def run_mode(mode: str, bootstrap: str, records: int, restore_keys: int, i: int) -> float:
    gc.collect()
    if mode == "plain":
        return run_plain(bootstrap, records, i)
    return run_streams(mode, bootstrap, records, restore_keys, i)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.streamsbench", description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", help="a running node (default: start one)")
    ap.add_argument("--work", default="/tmp/sluice-streamsbench", help="the started node's directory")
    ap.add_argument("--records", type=int, default=500_000, help="input records (default 500,000)")
    ap.add_argument("--restore-keys", type=int, default=1_000_000, help="keys in the restored store")
    ap.add_argument("--runs", type=int, default=3, help="runs per mode (medians reported)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--max-poll-records", type=int, default=2000,
                    help="records per poll: the batch of the plain loop and of the apps (default 2000, the apps')")
    ap.add_argument("--commit-interval-ms", type=int, default=0,
                    help="the apps' commit_interval_ms (default 0: every batch); the plain loop commits every batch")
    ap.add_argument("--profile", choices=MODES, help="run this mode once under cProfile instead")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    a = ap.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or a.records < 10_000 or a.runs < 1 or a.restore_keys < 1:
        ap.error(f"--modes of {', '.join(MODES)} (got {bad}); --records >= 10000; --runs, --restore-keys >= 1")
    MAX_POLL["records"] = a.max_poll_records
    MAX_POLL["commit_interval_ms"] = a.commit_interval_ms
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    proc = None
    bootstrap = a.bootstrap
    try:
        if bootstrap is None:
            proc, bootstrap = start_node(a.work)
        prepare(bootstrap, a.records, a.restore_keys)
        gc.freeze()
        if a.profile:
            prof = cProfile.Profile()
            prof.enable()
            rate = run_mode(a.profile, bootstrap, a.records, a.restore_keys, 900)
            prof.disable()
            print(f"{a.profile}: {rate:,.0f} per s under cProfile")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return 0
        results: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(a.runs):
            for m in modes[i % len(modes):] + modes[:i % len(modes)]:  # rotated: no mode always follows another
                r = run_mode(m, bootstrap, a.records, a.restore_keys, i)
                results[m].append(r)
                print(f"run {i + 1} {m}: {r:,.0f} {'keys' if m == 'restore' else 'records'}/s", file=sys.stderr)
        medians = {m: statistics.median(v) for m, v in results.items()}
        if a.json:
            print(json.dumps({"medians": medians, "runs": results, "records": a.records,
                              "restore_keys": a.restore_keys}))
        else:
            for m in modes:
                runs = " · ".join(f"{r:,.0f}" for r in results[m])
                print(f"{m:<10} median {medians[m]:>10,.0f} /s   ({runs})")
        return 0
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()



if __name__ == "__main__":
    sys.exit(main())
