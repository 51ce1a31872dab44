"""``sluice perf e2e``: end-to-end latency, producer and consumer in separate processes.

This process is the consumer. It assigns every partition of the topic at its end
offset and has its first long-poll fetches in flight before the producer starts. The
producer is a child process (``sluice perf produce --records N --throughput R`` with
timestamped values, N = R × S): it sends exactly N records, paced at R records/s. It
gets no ``--duration``: that would stop its send loop at a wall-clock deadline, so on a
busy host a producer running a few milliseconds late would send a few records short
of N, and the run's count would depend on the CPU. Each value starts with
``time.monotonic_ns()`` taken just before ``send()`` and a sequence number.
CLOCK_MONOTONIC is one clock for every process of a host, so the latency of a record
is ``monotonic_ns()`` when ``poll()`` returned it minus the stamp: from the
application's ``send()`` to the other application's hands (batching, the broker's
append and the long poll included). The sequence numbers
count missing and duplicated records.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from array import array
from typing import Any

from ipc.client import Consumer
from loadtest.perfclient import STAMP, PerfError, _args, ensure_topic, go, start_children, stop_children
from loadtest.perfstats import Progress, emit, latency_summary, throughput

DRAIN_TIMEOUT_S = 10.0  # after the producer exits, wait this long for the last records


def _producer_command(a: argparse.Namespace, total: int) -> list[str]:
    cmd = [sys.executable, "-m", "loadtest.perf", "produce", "--topic", a.topic, "--records", str(total)]
    cmd += ["--record-size", str(max(a.record_size, STAMP.size)), "--throughput", str(a.rate)]
    # no --duration: every one of the ``total`` records is sent (see the module docstring)
    cmd += ["--acks", a.acks, "--batch-size", str(a.batch_size)]
    cmd += ["--linger-ms", str(a.linger_ms), "--max-in-flight", str(a.max_in_flight)]
    cmd += ["--compression", a.compression, "--timestamped", "--wait-go", "--json", "--quiet"]
    if a.same_host:
        cmd += ["--same-host"]
    if a.bootstrap:
        cmd += ["--bootstrap", a.bootstrap]
    return cmd


def cmd_e2e(a: argparse.Namespace) -> int:
    nparts = ensure_topic(a.bootstrap, a.topic, a.partitions, a.config, a.replication_factor)
    tps = [(a.topic, p) for p in range(nparts)]
    total = int(a.rate * a.duration)
    if total < 1:
        raise ValueError(f"--rate {a.rate} for --duration {a.duration} s is less than one record")
    c = Consumer(
        a.bootstrap,
        auto_offset_reset="latest",
        max_poll_records=a.max_poll_records,
        fetch_max_wait_ms=a.fetch_max_wait_ms,
        same_host=a.same_host,
    )
    seen = bytearray(total)
    lat_ns: array[int] = array("q")
    sent_ns: array[int] = array("q")
    received = duplicates = stray = nbytes = 0
    producer_out = ""
    clock = time.perf_counter
    procs: list[Any] = []
    try:
        c.assign(tps)
        for tp in tps:
            c.position(*tp)  # start at the end of the log, before the producer starts
        c.poll(0)  # the first long-poll fetches are now waiting on the broker
        procs, _ = start_children([_producer_command(a, total)])
        proc = procs[0]
        samples: array[float] = array("d")  # the progress line's window (seconds)
        progress = Progress("received", a.progress_interval, samples, enabled=not a.quiet)
        gc.collect()
        gc.freeze()
        go_ns = time.monotonic_ns()  # before go: the producer's first stamp comes after it
        t0 = clock()
        go(procs)
        hard_deadline = t0 + a.duration + 60.0 + DRAIN_TIMEOUT_S
        exited_at = 0.0
        unpack = STAMP.unpack_from
        poll = c.poll
        mono_ns = time.monotonic_ns
        last = t0
        while True:
            recs = poll(100)
            now_ns = mono_ns()
            now = clock()
            for r in recs:
                v = r.value
                if v is None or len(v) < STAMP.size:
                    stray += 1
                    continue
                ts, seq = unpack(v)
                if not 0 <= seq < total:
                    stray += 1
                    continue
                if seen[seq]:
                    duplicates += 1
                    continue
                seen[seq] = 1
                lat_ns.append(now_ns - ts)
                sent_ns.append(ts)
                received += 1
                nbytes += len(v)
                samples.append((now_ns - ts) / 1e9)
            if recs:
                last = now
            progress.report(received, nbytes, now)
            if not exited_at and proc.poll() is not None:
                exited_at = now
            if exited_at and (received >= total or now - exited_at >= DRAIN_TIMEOUT_S):
                break
            if now >= hard_deadline:
                raise PerfError(f"e2e still running {hard_deadline - t0:.0f} s after the start")
        progress.report(received, nbytes, now, force=True)
        progress.finish()
        producer_out = proc.communicate(timeout=30)[0]
    finally:
        stop_children(procs)
        c.close()
        gc.unfreeze()
    lines = [line for line in producer_out.splitlines() if line.startswith("{")]
    if not lines:
        raise PerfError(f"the producer process failed (exit status {procs[0].returncode})")
    prod = json.loads(lines[-1])
    produced = int(prod["records"])
    warm_ns = go_ns + int(a.warmup * 1e9)
    lat = array("d", (x / 1e9 for x, s in zip(lat_ns, sent_ns, strict=True) if s >= warm_ns))
    missing = produced - received
    elapsed = last - t0
    result: dict[str, Any] = {
        "mode": "e2e",
        "topic": a.topic,
        "records": received,
        "bytes": nbytes,
        "elapsed_s": elapsed,
        **throughput(received, nbytes, elapsed),
        "produced": produced,
        "missing": missing,
        "duplicates": duplicates,
        "stray": stray,
        "producer_records_per_s": prod["records_per_s"],
        "producer_ack_latency_ms": prod["latency_ms"],
        "latency_what": "end to end, send() to poll() return"
        + (f" (after {a.warmup:g} s warm-up)" if a.warmup else ""),
        "latency_ms": latency_summary(lat),
        "args": _args(a),
        "notes": [
            f"producer: {produced:,} records at {prod['records_per_s']:,.0f} records/s; "
            f"send() to ack p50 {prod['latency_ms']['p50']:.3f} ms p99 {prod['latency_ms']['p99']:.3f} ms",
        ],
    }
    if missing or duplicates or stray:
        result["notes"].append(f"MISSING {missing}, DUPLICATES {duplicates}, STRAY {stray}")
    result["errors"] = int(bool(missing or duplicates or prod.get("errors")))
    emit(result, a.json)
    return 0 if not result["errors"] else 1
