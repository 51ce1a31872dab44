"""Many partitions on one node: ``python -m loadtest.scalebench --partitions 1000``.

Each run starts a fresh node (``sluice serve`` in its own session, a temporary data
directory, the default configuration apart from the addresses), then:

1. creates one topic of ``--partitions`` partitions and times ``create_topic``, which
   returns once every partition serves (after the front's 25 s, polls the topic until
   every partition serves): the time to all serving; meanwhile a probe thread
   sends ``list_topics`` to the front endpoint back to back, and its latencies are the
   front's p50 / p99 / max while the workers start;
2. after ``--settle`` seconds, reads the PSS / USS / RSS of the node's processes
   (``loadtest/memory.py``);
3. measures the idle node's CPU over ``--idle`` seconds: the user + system time of the
   supervisor and every process under it, as a percentage of one core;
4. produces one record to every partition, and times a ``Consumer`` assigned all of
   them until it has read one record from each;
5. stops the node (SIGTERM, then SIGKILL of its process group if it is late).

``--runs`` repeats this and prints each run and the medians. It needs the memory of a
node of that size (about 6 MiB per idle worker) and leaves nothing running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from ipc.client import Admin, Consumer, Producer, TopicPartition
from ipc.errors import RequestTimedOutError, SluiceError
from loadtest.memory import GIB, MIB, measure

READY_TIMEOUT_S = 30.0
SERVE_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchNode:
    """A fresh node in its own session and temporary directory."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        self.bootstrap = f"tcp://127.0.0.1:{self.port}"
        config = base / "node.toml"
        config.write_text(
            f'node_id = 0\ndata_dir = "{base / "data"}"\nlisten = "{self.bootstrap}"\nmetrics_listen = ""\n'
        )
        self.log = open(base / "node.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode} (log: {self.base / 'node.log'})")
            try:
                with Admin(self.bootstrap, timeout_ms=500) as admin:
                    admin.list_topics()
                return
            except SluiceError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.1)  # polling the node until it answers, bounded by the deadline

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the node's session
        self.proc.wait(10)
        self.log.close()


class FrontProbe(threading.Thread):
    """``list_topics`` to the front back to back; latencies in ms while ``running``."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(name="front-probe", daemon=True)
        self.bootstrap = bootstrap
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        with Admin(self.bootstrap, timeout_ms=10_000) as admin:
            while not self.stop_event.is_set():
                t0 = time.perf_counter()
                try:
                    admin.list_topics()
                except SluiceError:
                    self.errors += 1
                    continue
                self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                self.stop_event.wait(0.005)  # a request every ~5 ms, not a busy loop

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


def _wait_serving(admin: Admin, topic: str, partitions: int) -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        parts = admin.describe_topic(topic)["partitions"]
        serving = sum(p.get("state") == "serving" for p in parts)
        if serving == partitions:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{serving} of {partitions} partitions serving after {SERVE_TIMEOUT_S:.0f} s")
        time.sleep(0.5)  # polling the partitions' state, bounded by the deadline


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _node_cpu_s(pid: int) -> float:
    procs = [psutil.Process(pid)]
    with contextlib.suppress(psutil.NoSuchProcess):
        procs += procs[0].children(recursive=True)
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _consume_all(bootstrap: str, topic: str, partitions: int, timeout_s: float) -> float:
    """Produce one record to every partition, then time a consumer of all of them until
    it has one record from each."""
    with Producer(bootstrap) as producer:
        for p in range(partitions):
            producer.send(topic, f"record {p}".encode(), partition=p)
        producer.flush(timeout_s)
    t0 = time.monotonic()
    seen: set[int] = set()
    with Consumer(bootstrap=bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        deadline = t0 + timeout_s
        while len(seen) < partitions:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the consumer read {len(seen)} of {partitions} partitions in {timeout_s:.0f} s")
            for record in consumer.poll(timeout_ms=500):
                seen.add(record.partition)
    return time.monotonic() - t0


def run_once(partitions: int, settle_s: float, idle_s: float, consume: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scalebench-") as tmp:
        node = BenchNode(Path(tmp))
        try:
            node.wait_ready()
            probe = FrontProbe(node.bootstrap)
            probe.start()
            t0 = time.monotonic()
            with Admin(node.bootstrap, timeout_ms=300_000) as admin:
                try:  # returns once all serve, or after the front's 25 s (they keep starting)
                    admin.create_topic("scale", partitions=partitions)
                except RequestTimedOutError:
                    _wait_serving(admin, "scale", partitions)
            serving_s = time.monotonic() - t0
            probe.stop()
            lat = probe.latencies_ms
            time.sleep(settle_s)  # let every worker finish start-up before measuring memory
            mem = measure(node.bootstrap)
            cpu0, w0 = _node_cpu_s(node.proc.pid), time.monotonic()
            time.sleep(idle_s)  # the measuring window of the idle node's CPU
            idle_cpu = (_node_cpu_s(node.proc.pid) - cpu0) / (time.monotonic() - w0) * 100
            consume_s = _consume_all(node.bootstrap, "scale", partitions, 120.0) if consume else None
            return {
                "partitions": partitions,
                "time_to_all_serving_s": round(serving_s, 2),
                "front_requests_during_start": len(lat),
                "front_errors_during_start": probe.errors,
                "front_p50_ms": round(_percentile(lat, 0.50), 2),
                "front_p99_ms": round(_percentile(lat, 0.99), 2),
                "front_max_ms": round(max(lat, default=0.0), 2),
                "processes": len(mem["processes"]),
                "total_pss_gib": round(mem["total_pss"] / GIB, 3),
                "total_uss_gib": round(sum(r["uss"] for r in mem["processes"]) / GIB, 3),
                "total_rss_gib": round(mem["total_rss"] / GIB, 3),
                "worker_pss_mib": round(mem["worker_pss_avg"] / MIB, 2),
                "worker_uss_mib": round(mem["worker_uss_avg"] / MIB, 2),
                "idle_cpu_pct_of_core": round(idle_cpu, 2),
                "consume_all_s": round(consume_s, 2) if consume_s is not None else None,
            }
        except BaseException:
            lines = (Path(tmp) / "node.log").read_text(errors="replace").splitlines()
            sys.stderr.write("--- the node's log, last 40 lines ---\n" + "\n".join(lines[-40:]) + "\n")
            raise
        finally:
            node.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.scalebench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds between all serving and measuring memory")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds over which the idle node's CPU is measured")
    ap.add_argument("--no-consume", action="store_true", help="skip the consumer of all partitions")
    ap.add_argument("--json", action="store_true", help="one JSON object per run, then the medians")
    a = ap.parse_args(argv)
    if a.partitions < 1 or a.runs < 1:
        ap.error("--partitions and --runs must be >= 1")
    results = []
    for i in range(a.runs):
        r = run_once(a.partitions, a.settle, a.idle, not a.no_consume)
        results.append(r)
        print(json.dumps(r, sort_keys=True) if a.json else f"run {i + 1}: {r}", flush=True)
    medians = {
        k: statistics.median(r[k] for r in results)
        for k, v in results[0].items()
        if isinstance(v, (int, float)) and all(r[k] is not None for r in results)
    }
    print(json.dumps({"median_of": len(results), **medians}, sort_keys=True) if a.json else f"medians: {medians}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
