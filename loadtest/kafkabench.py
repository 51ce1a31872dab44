"""Throughput of the Kafka listener against Sluice's own client, in the same run
(issue 15; docs/performance.md, "The Kafka listener").

    python -m loadtest.kafkabench --records 500000 --runs 3 [--listener-processes N] [--json]

Each run starts a fresh node (``kafka_listen`` on loopback, ``log_level = "warning"``,
default ``fsync = interval``) and measures, one after the other, on two topics of one
partition each, with 100-byte values and no keys:

1. **kafka produce**: a confluent-kafka producer (``acks=1``, ``linger.ms=5``) through the
   listener: from the first ``produce()`` to ``flush()`` returning, records/s;
2. **kafka consume**: a confluent-kafka consumer (assigned, from offset 0) reading them
   all back through the listener, records/s;
3. **sluice produce** and **sluice consume**: the same with Sluice's own client
   (``python -m loadtest.perf produce|consume``, ``--acks 1 --linger-ms 5``).

For the two Kafka phases it also gives the listener processes' CPU time per record
(``/proc/<pid>/stat`` utime + stime before and after, over every listener process):
what the translation costs, whatever else the host runs. Prints each run and the
medians; ``--json`` prints one JSON object per run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from loadtest import benchutil
from loadtest.benchutil import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")
PHASES = ("kafka_produce", "kafka_consume", "sluice_produce", "sluice_consume")


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    return benchutil.wait("kafkabench", predicate, timeout, what, interval)


@contextlib.contextmanager
def node(work: str, processes: int) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """A node with a Kafka listener; yields (its process, its bootstrap, the Kafka address)."""
    from ipc.client import Admin

    port, kport = free_port(), free_port()
    config = os.path.join(work, "node.toml")
    with open(config, "w") as f:
        f.write(
            f'data_dir = "{os.path.join(work, "data")}"\nlisten = "tcp://127.0.0.1:{port}"\n'
            f'kafka_listen = "127.0.0.1:{kport}"\nmetrics_listen = ""\nlog_level = "warning"\n'
            f"offsets_topic_partitions = 1\n[kafka]\nlistener_processes = {processes}\n"
        )
    with open(os.path.join(work, "node.log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", config],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": REPO},
        )
    bootstrap, kafka = f"tcp://127.0.0.1:{port}", f"127.0.0.1:{kport}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"kafkabench: the node exited with {proc.returncode} (see {work}/node.log)")
            try:
                with Admin(bootstrap, timeout_ms=500) as admin:
                    admin.list_topics()
                socket.create_connection(("127.0.0.1", kport), timeout=1).close()
            except Exception:  # noqa: BLE001 - not up yet
                return False
            return len(listener_pids(proc.pid)) == processes

        wait(ready, 60, "the node and its listener")
        yield proc, bootstrap, kafka
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def listener_pids(session: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) != session:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(b"sluice: kafka-listener"):
                        out.append(int(entry))
            except OSError:
                continue
    return out


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / TICKS


def kafka_produce(kafka: str, topic: str, records: int, values: list[bytes]) -> float:
    from confluent_kafka import Producer  # type: ignore[import-untyped]

    p = Producer(
        {
            "bootstrap.servers": kafka,
            "acks": 1,
            "linger.ms": 5,
            "enable.idempotence": False,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "batch.size": 1_000_000,
        }
    )
    p.list_topics(topic, timeout=10)
    n = len(values)
    t0 = time.perf_counter()
    for i in range(records):
        while True:
            try:
                p.produce(topic, values[i % n], partition=0)
                break
            except BufferError:
                p.poll(0.001)
    left = p.flush(120)
    elapsed = time.perf_counter() - t0
    if left:
        raise SystemExit(f"kafkabench: {left} records not delivered")
    return records / elapsed


def kafka_consume(kafka: str, topic: str, records: int) -> float:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": "kafkabench",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 8_388_608,
            "queued.max.messages.kbytes": 262_144,
        }
    )
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = 0
        t0 = time.perf_counter()
        deadline = time.monotonic() + 120
        while got < records and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                if m.error() is None:
                    got += 1
        elapsed = time.perf_counter() - t0
    finally:
        c.close()
    if got < records:
        raise SystemExit(f"kafkabench: read {got} of {records} records")
    return records / elapsed


def sluice_perf(bootstrap: str, *args: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.perf", *args, "--bootstrap", bootstrap, "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": REPO},
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"kafkabench: loadtest.perf {' '.join(args)}: {out.stderr.strip()}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["records_per_s"])


def one_run(records: int, size: int, processes: int) -> dict[str, float]:
    from ipc.client import Admin

    rng = random.Random(1)
    values = [bytes(rng.getrandbits(8) for _ in range(size)) for _ in range(1024)]
    with tempfile.TemporaryDirectory(prefix="kafkabench-") as work, node(work, processes) as (proc, bootstrap, kafka):
        with Admin(bootstrap) as admin:
            admin.create_topic("kbench-kafka", partitions=1)
            admin.create_topic("kbench-sluice", partitions=1)
        pids = listener_pids(proc.pid)
        out: dict[str, float] = {}
        c0 = cpu_s(pids)
        out["kafka_produce"] = kafka_produce(kafka, "kbench-kafka", records, values)
        c1 = cpu_s(pids)
        out["kafka_consume"] = kafka_consume(kafka, "kbench-kafka", records)
        c2 = cpu_s(pids)
        out["listener_us_per_produced"] = (c1 - c0) / records * 1e6
        out["listener_us_per_consumed"] = (c2 - c1) / records * 1e6
        common = ["--topic", "kbench-sluice", "--records", str(records)]
        out["sluice_produce"] = sluice_perf(
            bootstrap, "produce", *common, "--record-size", str(size), "--acks", "1", "--linger-ms", "5"
        )
        out["sluice_consume"] = sluice_perf(bootstrap, "consume", *common)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.kafkabench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--size", type=int, default=100, help="value bytes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--listener-processes", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    runs = []
    for i in range(a.runs):
        r = one_run(a.records, a.size, a.listener_processes)
        runs.append(r)
        if a.json:
            print(json.dumps({"run": i + 1, **r}), flush=True)
        else:
            print(
                f"run {i + 1}: kafka produce {r['kafka_produce']:,.0f}/s consume {r['kafka_consume']:,.0f}/s "
                f"(listener {r['listener_us_per_produced']:.2f} / {r['listener_us_per_consumed']:.2f} us CPU "
                f"per record) | sluice produce {r['sluice_produce']:,.0f}/s consume {r['sluice_consume']:,.0f}/s",
                flush=True,
            )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"median of {len(runs)}: kafka produce {med['kafka_produce']:,.0f}/s consume {med['kafka_consume']:,.0f}/s "
        f"(listener {med['listener_us_per_produced']:.2f} / {med['listener_us_per_consumed']:.2f} us CPU per "
        f"record) | sluice produce {med['sluice_produce']:,.0f}/s consume {med['sluice_consume']:,.0f}/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
