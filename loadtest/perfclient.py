"""``sluice perf produce`` and ``sluice perf consume``: the client library under load.

produce: one ``Producer.send()`` per record, as an application calls it; the values are
built before the clock starts (a pool of 256 distinct values of random letters) and
``gc.freeze()`` runs after that. Every ``--sample-every``-th record carries a done
callback that times it from ``send()`` to its acknowledgement. The elapsed time runs
from the first ``send()`` until ``flush()`` returns (every record acknowledged).
With ``--processes P`` the records are split over P child processes that start
together; their numbers are aggregated and the partitions' end offsets, read before
and after, show how the records spread (no partition may starve).

consume: a ``Consumer`` that reads from the beginning of every partition (or joins
``--group``) until N records arrived; latency is the duration of ``poll()`` calls
that returned records.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import gc
import json
import math
import operator
import os
import random
import select
import string
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Sequence
from typing import Any

from ipc.client import Admin, Consumer, FutureRecordMetadata, Producer
from ipc.errors import SluiceError, TopicAlreadyExistsError
from loadtest.perfstats import Progress, emit, latency_summary, throughput

STAMP = struct.Struct("<qq")  # the e2e payload prefix: time.monotonic_ns() at send(), sequence number
VALUE_POOL = 256  # distinct values, cycled (a power of two: index with a mask)
CHUNK = 4096  # records between looks at the clock (progress line, --duration)
READY_TIMEOUT_S = 60.0
PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PerfError(SluiceError):
    """A benchmark could not run or complete (a child failed, records went missing)."""

    code = "PERF_FAILED"


# ---- shared helpers ------------------------------------------------------------------------
def ensure_topic(
    bootstrap: str | None,
    topic: str,
    partitions: int | None,
    config: Sequence[tuple[str, str]],
    replication_factor: int = 1,
) -> int:
    """Create ``topic`` (``partitions``, ``replication_factor``, ``config``) if it does not
    exist; its partition count. An existing topic is used as it is."""
    with Admin(bootstrap) as admin:
        if topic not in admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topic(
                    topic,
                    partitions=partitions or 1,
                    replication_factor=replication_factor,
                    config=dict(config) or None,
                )
        return len(admin.describe_topic(topic)["partitions"])


def end_offsets(bootstrap: str | None, topic: str, partitions: int) -> list[int]:
    tps = [(topic, p) for p in range(partitions)]
    with Consumer(bootstrap) as c:
        c.assign(tps)
        ends = c.end_offsets(tps)
    return [ends[tp] for tp in tps]


def make_values(size: int, count: int = VALUE_POOL, seed: int = 1) -> list[bytes]:
    """``count`` distinct values of ``size`` random letters (compressible like text)."""
    rnd = random.Random(seed)
    letters = string.ascii_letters.encode()
    return [bytes(rnd.choices(letters, k=size)) for _ in range(count)]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHONPATH + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_children(commands: list[list[str]]) -> tuple[list[subprocess.Popen[str]], list[str]]:
    """Start the children and wait (bounded) until each prints its READY line (inputs
    built); returns them and the rest of each READY line."""
    procs: list[subprocess.Popen[str]] = []
    said: list[str] = []
    try:
        for cmd in commands:
            procs.append(
                subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        for p in procs:
            assert p.stdout is not None
            left = deadline - time.monotonic()
            ready, _, _ = select.select([p.stdout], [], [], max(0.0, left))
            line = p.stdout.readline() if ready else ""
            if not line.startswith("READY"):
                raise PerfError(f"child {p.pid} did not get ready (exit status {p.poll()}, said {line.strip()!r})")
            said.append(line[len("READY") :].strip())
    except BaseException:
        stop_children(procs)
        raise
    return procs, said


def go(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def stop_children(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(10)


def wait_for_go() -> None:
    """A child's side of the start barrier: READY on stdout, then one line on stdin."""
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    if not sys.stdin.readline():
        raise PerfError("the parent closed stdin before go")


def _acks(text: str) -> int | str:
    return text if text == "all" else int(text)


# ---- produce -------------------------------------------------------------------------------
def cmd_produce(a: argparse.Namespace) -> int:
    result = produce_multi(a) if a.processes > 1 else produce_once(a)
    if a.emit_samples:
        samples = result.pop("_samples")
        result["samples_b64"] = base64.b64encode(samples.tobytes()).decode()
    else:
        result.pop("_samples", None)
    emit(result, a.json)
    return 0 if not result.get("errors") else 1


def produce_once(a: argparse.Namespace) -> dict[str, Any]:
    ensure_topic(a.bootstrap, a.topic, a.partitions, a.config, a.replication_factor)
    size = a.record_size
    if a.timestamped and size < STAMP.size:
        raise ValueError(f"--record-size {size}: a timestamped record needs at least {STAMP.size} bytes")
    values = make_values(size)
    pad = values[0][: size - STAMP.size]
    keys = [b"key-%08d" % i for i in range(a.keys)] if a.keys else None
    producer = Producer(
        a.bootstrap,
        acks=_acks(a.acks),
        batch_size=a.batch_size,
        linger_ms=a.linger_ms,
        max_in_flight=a.max_in_flight,
        compression=a.compression,
        same_host=a.same_host,
    )
    samples: array[float] = array("d")
    errors: list[BaseException] = []
    clock = time.perf_counter

    def on_ack(sent_at: float, fut: FutureRecordMetadata) -> None:  # runs in the producer's I/O thread
        err = fut.exception()
        if err is None:
            samples.append(clock() - sent_at)
        else:
            errors.append(err)

    try:
        producer.partitions_for(a.topic)
        gc.collect()
        gc.freeze()
        if a.wait_go:
            wait_for_go()
        progress = Progress("sent", a.progress_interval, samples, enabled=not a.quiet)
        t0 = clock()
        started_at = time.monotonic()
        deadline = t0 + a.duration if a.duration else math.inf
        if a.throughput > 0 or a.timestamped:
            sent = _paced_loop(a, producer, values, keys, pad, on_ack, progress, t0, deadline)
        else:
            sent = _fast_loop(a, producer, values, keys, on_ack, progress, deadline)
        t_sent = clock()
        try:
            producer.flush(a.flush_timeout)
        except TimeoutError as exc:
            errors.append(exc)
        t1 = clock()
        ended_at = time.monotonic()
        progress.report(sent, sent * size, t1, force=True)  # the last interval
        progress.finish()
    finally:
        producer.close(timeout=5)
        gc.unfreeze()
    nbytes = sent * size
    result: dict[str, Any] = {
        "mode": "produce",
        "topic": a.topic,
        "records": sent,
        "bytes": nbytes,
        "elapsed_s": t1 - t0,
        **throughput(sent, nbytes, t1 - t0),
        "send_loop_records_per_s": sent / max(t_sent - t0, 1e-9),
        "latency_what": "send() to acknowledgement",
        "latency_ms": latency_summary(samples),
        "errors": len(errors),
        "started_at": started_at,
        "ended_at": ended_at,
        "args": _args(a),
        "notes": [f"send() loop alone: {sent / max(t_sent - t0, 1e-9):,.0f} records/s (before flush)"],
        "_samples": samples,
    }
    if errors:
        result["notes"].append(f"{len(errors)} sampled record(s) failed; first: {errors[0]!r}")
    return result


def _fast_loop(
    a: argparse.Namespace,
    producer: Producer,
    values: list[bytes],
    keys: list[bytes] | None,
    on_ack: Any,
    progress: Progress,
    deadline: float,
) -> int:
    """As fast as ``send()`` goes: a tight loop, the clock read once per CHUNK records."""
    send = producer.send
    topic, part, k, n, mask = a.topic, a.partition, a.sample_every, a.records, VALUE_POOL - 1
    nkeys = len(keys) if keys else 0
    clock = time.perf_counter
    partial = functools.partial
    sent = 0
    size = a.record_size
    while sent < n:
        end = min(n, sent + CHUNK)
        for base in range(sent, end, k):
            stop = min(base + k, end)
            if keys is None and part is None:
                send(topic, values[base & mask]).add_done_callback(partial(on_ack, clock()))
                for j in range(base + 1, stop):
                    send(topic, values[j & mask])
            else:
                key = keys[base % nkeys] if keys else None
                send(topic, values[base & mask], key, part).add_done_callback(partial(on_ack, clock()))
                for j in range(base + 1, stop):
                    send(topic, values[j & mask], keys[j % nkeys] if keys else None, part)
        sent = end
        now = clock()
        progress.report(sent, sent * size, now)
        if now >= deadline:
            break
    return sent


def _paced_loop(
    a: argparse.Namespace,
    producer: Producer,
    values: list[bytes],
    keys: list[bytes] | None,
    pad: bytes,
    on_ack: Any,
    progress: Progress,
    t0: float,
    deadline: float,
) -> int:
    """At ``--throughput`` records/s (sleeping until each record is due), and/or with a
    (monotonic ns, sequence) stamp at the front of every value (for e2e)."""
    send = producer.send
    topic, part, k, n, mask = a.topic, a.partition, a.sample_every, a.records, VALUE_POOL - 1
    nkeys = len(keys) if keys else 0
    rate = a.throughput
    clock = time.perf_counter
    sleep = time.sleep
    mono_ns = time.monotonic_ns
    pack = STAMP.pack
    stamped = a.timestamped
    size = a.record_size
    sent = 0
    for j in range(n):
        now = clock()
        if rate > 0:
            due = t0 + j / rate
            if due > now:
                sleep(due - now)
        if now >= deadline:
            break
        value = pack(mono_ns(), j) + pad if stamped else values[j & mask]
        fut = send(topic, value, keys[j % nkeys] if keys else None, part)
        if j % k == 0:
            fut.add_done_callback(functools.partial(on_ack, clock()))
        sent = j + 1
        progress.report(sent, sent * size, now)
    return sent


def _args(a: argparse.Namespace) -> dict[str, Any]:
    skip = {"command", "perf_mode", "func", "json", "quiet", "progress_interval", "wait_go", "emit_samples"}
    return {k: v for k, v in vars(a).items() if k not in skip}


def _child_command(a: argparse.Namespace, records: int, partition: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "loadtest.perf", "produce", "--topic", a.topic, "--records", str(records)]
    cmd += ["--record-size", str(a.record_size), "--acks", a.acks, "--batch-size", str(a.batch_size)]
    cmd += ["--linger-ms", str(a.linger_ms), "--max-in-flight", str(a.max_in_flight)]
    cmd += ["--compression", a.compression, "--keys", str(a.keys), "--sample-every", str(a.sample_every)]
    cmd += ["--flush-timeout", str(a.flush_timeout), "--json", "--quiet", "--wait-go", "--emit-samples"]
    if a.throughput > 0:
        cmd += ["--throughput", str(a.throughput / a.processes)]
    if a.duration:
        cmd += ["--duration", str(a.duration)]
    if partition is not None:
        cmd += ["--partition", str(partition)]
    if a.same_host:
        cmd += ["--same-host"]
    if a.bootstrap:
        cmd += ["--bootstrap", a.bootstrap]
    return cmd


def produce_multi(a: argparse.Namespace) -> dict[str, Any]:
    """``--processes P``: P children with N/P records each, started together."""
    nparts = ensure_topic(a.bootstrap, a.topic, a.partitions, a.config, a.replication_factor)
    before = end_offsets(a.bootstrap, a.topic, nparts)
    share, extra = divmod(a.records, a.processes)
    commands = []
    for i in range(a.processes):
        part = (i % nparts) if a.pin else a.partition
        commands.append(_child_command(a, share + (1 if i < extra else 0), part))
    procs, _ = start_children(commands)
    outputs: list[str] = []
    try:
        go(procs)
        outputs = _watch_children(a, procs, nparts, before)
    finally:
        stop_children(procs)
    children = []
    for p, out in zip(procs, outputs, strict=True):
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if p.returncode not in (0, 1) or not lines:
            raise PerfError(f"producer process {p.pid} failed with exit status {p.returncode}")
        children.append(json.loads(lines[-1]))
    after = end_offsets(a.bootstrap, a.topic, nparts)
    appended = [x - y for x, y in zip(after, before, strict=True)]
    records = sum(c["records"] for c in children)
    nbytes = sum(c["bytes"] for c in children)
    elapsed = max(c["ended_at"] for c in children) - min(c["started_at"] for c in children)
    samples: array[float] = array("d")
    for c in children:
        samples.frombytes(base64.b64decode(c.pop("samples_b64")))
    errors = sum(c["errors"] for c in children)
    notes = [
        f"process {i}: {c['records']:,} records, {c['records_per_s']:,.0f} records/s, "
        f"p99 {c['latency_ms']['p99']:.3f} ms"
        for i, c in enumerate(children)
    ]
    notes.append("appended per partition (end offsets after - before): " + ", ".join(f"{x:,}" for x in appended))
    starved = [p for p, x in enumerate(appended) if x == 0]
    if starved:
        notes.append(f"STARVED partitions (nothing appended): {starved}")
    if a.acks != "0" and sum(appended) < records:
        notes.append(f"the log holds {sum(appended):,} new records, fewer than the {records:,} acknowledged")
    return {
        "mode": "produce",
        "topic": a.topic,
        "processes": a.processes,
        "records": records,
        "bytes": nbytes,
        "elapsed_s": elapsed,
        **throughput(records, nbytes, elapsed),
        "sum_of_process_records_per_s": sum(c["records_per_s"] for c in children),
        "latency_what": "send() to acknowledgement, all processes",
        "latency_ms": latency_summary(samples),
        "errors": errors,
        "appended_per_partition": appended,
        "starved_partitions": starved,
        "per_process": children,
        "args": _args(a),
        "notes": notes,
        "_samples": samples,
    }


def _watch_children(
    a: argparse.Namespace, procs: list[subprocess.Popen[str]], nparts: int, before: list[int]
) -> list[str]:
    """Wait for the children (bounded), showing the broker's view: records appended per
    second over all partitions (from their end offsets) and per partition. Their
    stdout is drained meanwhile (a child's final JSON can exceed a pipe's buffer)."""
    limit = (a.duration or 0) + a.flush_timeout + 600.0
    deadline = time.monotonic() + limit
    outputs = [""] * len(procs)

    def drain(i: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        outputs[i] = p.stdout.read()

    readers = [threading.Thread(target=drain, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in readers:
        t.start()
    tps = [(a.topic, p) for p in range(nparts)]
    show = a.progress_interval > 0 and not a.quiet
    interval = a.progress_interval if show else 0.2
    with Consumer(a.bootstrap) as c:
        c.assign(tps)
        last_t, last_total = time.perf_counter(), 0
        while any(p.poll() is None for p in procs):
            if time.monotonic() >= deadline:
                raise PerfError(f"producer processes still running after {limit:.0f} s")
            time.sleep(interval)  # the progress interval: between looks at the children and the log
            if not show or all(p.poll() is not None for p in procs):
                continue
            ends = c.end_offsets(tps)
            parts = [ends[tp] - b for tp, b in zip(tps, before, strict=True)]
            now = time.perf_counter()
            total = sum(parts)
            rate = (total - last_total) / max(now - last_t, 1e-9)
            last_t, last_total = now, total
            sys.stderr.write(
                f"{total:>12,} records appended  {rate:>12,.0f} records/s  per partition: "
                + " ".join(f"{x:,}" for x in parts)
                + "\n"
            )
    for t in readers:
        t.join(timeout=30)
    return outputs


# ---- consume -------------------------------------------------------------------------------
def cmd_consume(a: argparse.Namespace) -> int:
    with Admin(a.bootstrap) as admin:
        nparts = len(admin.describe_topic(a.topic)["partitions"])
    tps = [(a.topic, p) for p in range(nparts)]
    c = Consumer(
        a.bootstrap,
        auto_offset_reset="earliest",
        max_poll_records=a.max_poll_records,
        fetch_max_bytes=a.fetch_max_bytes,
        fetch_max_wait_ms=a.fetch_max_wait_ms,
        group_id=a.group,
        same_host=a.same_host,
    )
    samples: array[float] = array("d")
    clock = time.perf_counter
    value_of = operator.itemgetter(5)
    count = nbytes = 0
    first_at = math.nan
    try:
        if a.group:
            c.subscribe([a.topic])
        else:
            c.assign(tps)
            c.seek_to_beginning()
        gc.collect()
        gc.freeze()
        progress = Progress("received", a.progress_interval, samples, enabled=not a.quiet)
        poll = c.poll
        timeout_ms = min(500, a.timeout_ms)
        t0 = last = clock()
        while count < a.records:
            ts = clock()
            recs = poll(timeout_ms)
            now = clock()
            if recs:
                samples.append(now - ts)
                count += len(recs)
                nbytes += sum(map(len, filter(None, map(value_of, recs))))
                if count == len(recs):
                    first_at = now - t0
                last = now
            elif (now - last) * 1000 >= a.timeout_ms:
                break
            progress.report(count, nbytes, now)
        t1 = last
        progress.report(count, nbytes, t1, force=True)
        progress.finish()
    finally:
        c.close()
        gc.unfreeze()
    result: dict[str, Any] = {
        "mode": "consume",
        "topic": a.topic,
        "group": a.group,
        "records": count,
        "bytes": nbytes,
        "elapsed_s": t1 - t0,
        **throughput(count, nbytes, t1 - t0),
        "first_record_s": first_at,
        "latency_what": "poll() calls that returned records",
        "latency_ms": latency_summary(samples),
        "args": _args(a),
        "notes": [f"first record after {first_at * 1e3:.1f} ms (assignment, first fetch)"],
    }
    ok = count >= a.records
    if not ok:
        result["notes"].append(f"only {count:,} of {a.records:,} records arrived (no record for {a.timeout_ms} ms)")
    result["errors"] = 0 if ok else 1
    emit(result, a.json)
    return 0 if ok else 1
