"""``sluice perf pipe``: the same records over a bare pyzmq pipe, no broker: the ceiling.

A sink process (``python -m loadtest.pipe --sink ...``) binds a ROUTER on loopback
and speaks the broker's wire protocol (``ipc.protocol``) without a log behind it:

* ``--direction produce``: this process appends each record to the open batch (one
  Python call per record, as ``send()`` is), closes a batch at ``--batch-size`` bytes
  (key + value + 12, the producer's accounting) and sends with the producer's natural
  batching: at once when no request is in flight, else everything queued goes out in
  one request when the reply arrives (one request in flight, up to 4 MiB). The sink
  parses the request, counts the records from the batch headers and replies with base
  offsets, as a partition worker does with ``acks=1``. Latency: every
  ``--sample-every``-th record, from its append to its acknowledgement.
  With ``--throughput R`` the records are paced (each appended when due, the reply of
  the request in flight taken while waiting) and a record goes out at once when no
  request is in flight: the natural batching of W3's producer, with no I/O thread, no
  client library and no broker behind the socket.
* ``--direction fetch``: the sink holds N records in batches of ``--batch-size``
  bytes and answers fetches with whole batches up to ``--fetch-max-bytes``; this
  process keeps one fetch in flight (the next is sent before the reply is decoded, as
  the consumer's fetch-ahead does) and decodes every record into the consumer's
  ``ConsumerRecord`` tuples. Latency: the fetch round trip.

What the broker run reaches, divided by what this reaches, is the broker's efficiency.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import select
import sys
import time
from array import array
from itertools import repeat
from typing import Any

import zmq

from ipc.client.accumulator import MAX_REQUEST_BYTES
from ipc.client.batch import RECORD_OVERHEAD
from ipc.client.consumer import ConsumerRecord
from ipc.client.transport import Channel
from ipc.records import Headers, decode_batches, encode_batch, iter_headers, read_header
from loadtest.perfclient import PerfError, _args, make_values, start_children, stop_children
from loadtest.perfstats import Progress, emit, latency_summary, throughput

TOPIC = "pipe"
MAX_LIFETIME_S = 3600.0  # a sink never outlives this, whatever happens to its parent
REPLY_TIMEOUT_S = 30.0
_NO_HEADERS: Headers = []


# ---- the sink (child process) ---------------------------------------------------------------
def _build_log(records: int, record_size: int, batch_size: int, nkeys: int) -> tuple[bytes, list[int], list[int]]:
    """N records in batches of ``batch_size`` bytes with their offsets stamped, as a log holds them."""
    values = make_values(record_size)
    keys = [b"key-%08d" % i for i in range(nkeys)] if nkeys else None
    per = max(1, batch_size // (record_size + (len(keys[0]) if keys else 0) + RECORD_OVERHEAD))
    parts: list[bytes] = []
    positions: list[int] = []
    bases: list[int] = []
    pos = 0
    now = int(time.time() * 1000)
    for base in range(0, records, per):
        n = min(per, records - base)
        vals = [values[(base + i) & 255] for i in range(n)]
        ks = [keys[(base + i) % nkeys] for i in range(n)] if keys else None
        b = encode_batch(vals, ks, timestamp=now, base_offset=base)
        parts.append(b)
        positions.append(pos)
        bases.append(base)
        pos += len(b)
    return b"".join(parts), positions, bases


def sink_main(a: argparse.Namespace) -> int:
    from ipc import sockets
    from ipc.protocol import ok_reply, parse_request

    log_data, positions, bases = b"", list[int](), list[int]()
    if a.sink == "fetch":
        log_data, positions, bases = _build_log(a.records, a.record_size, a.batch_size, a.keys)
    view = memoryview(log_data)
    ctx = zmq.Context()
    sock, endpoint = sockets.bind_router(ctx, "tcp://127.0.0.1:0")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    sys.stdout.write(f"READY {endpoint}\n")
    sys.stdout.flush()
    next_offset = 0
    end_of_life = time.monotonic() + MAX_LIFETIME_S
    gc.collect()
    gc.freeze()
    try:
        while time.monotonic() < end_of_life:
            events = dict(poller.poll(1000))
            if sys.stdin.fileno() in events:
                return 0  # the parent closed our stdin (or died): done
            if sock not in events:
                continue
            for _ in range(256):
                try:
                    frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                identity = frames[0].bytes
                req = parse_request(frames[1:])
                if req.api == "produce":
                    base_offsets = []
                    for f in req.frames:
                        base_offsets.append(next_offset)
                        next_offset += read_header(f.buffer).record_count
                    sockets.send_reply(sock, identity, [ok_reply(req.id, base_offsets=base_offsets)])
                elif req.api == "fetch":
                    i = max(0, bisect.bisect_right(bases, req.fields["offset"]) - 1)
                    start = positions[i] if positions else 0
                    stop = start
                    j = i
                    limit = start + req.fields["max_bytes"]
                    while j < len(positions):
                        nxt = positions[j + 1] if j + 1 < len(positions) else len(view)
                        if nxt > limit and stop > start:
                            break
                        stop = nxt
                        j += 1
                    hdr = ok_reply(req.id, high_watermark=a.records)
                    sockets.send_reply(sock, identity, [hdr, view[start:stop]] if stop > start else [hdr])
    finally:
        sock.close(0)
        ctx.term()
    return 0


# ---- the measuring side --------------------------------------------------------------------
def cmd_pipe(a: argparse.Namespace) -> int:
    if a.direction == "fetch" and a.throughput > 0:
        raise ValueError("--throughput paces the produce direction only")
    cmd = [sys.executable, "-m", "loadtest.pipe", "--sink", a.direction, "--records", str(a.records)]
    cmd += ["--record-size", str(a.record_size), "--batch-size", str(a.batch_size), "--keys", str(a.keys)]
    procs, said = start_children([cmd])
    ctx = zmq.Context()
    ch = Channel(ctx, said[0])
    try:
        result = _produce(a, ch) if a.direction == "produce" else _fetch(a, ch)
    finally:
        ch.close()
        ctx.term()
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()  # the sink's signal to stop
        deadline = time.monotonic() + 10
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the sink's exit, bounded
        stop_children(procs)
    emit(result, a.json)
    return 0


def _wait_reply(ch: Channel, cid: int) -> None:
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not ch.sock.poll(left * 1000):
            raise PerfError(f"no reply from the pipe sink {ch.endpoint} within {REPLY_TIMEOUT_S:.0f} s")
        reply = ch.recv_nowait()
        if reply is not None and reply.id == cid:
            reply.raise_for_error()
            return


def _produce(a: argparse.Namespace, ch: Channel) -> dict[str, Any]:
    values = make_values(a.record_size)
    keys = [b"key-%08d" % i for i in range(a.keys)] if a.keys else None
    nkeys = len(keys) if keys else 0
    klen = len(keys[0]) if keys else 0
    rec = a.record_size + klen + RECORD_OVERHEAD
    samples: array[float] = array("d")
    clock = time.perf_counter
    gc.collect()
    gc.freeze()
    progress = Progress("sent", a.progress_interval, samples, enabled=not a.quiet)
    # the open batch, the closed ones not sent yet, and the sampled append times
    vals: list[bytes] = []
    ks: list[bytes | None] = []
    size = 0
    closed: list[tuple[list[bytes], list[bytes | None]]] = []
    closed_bytes = 0
    pending_t: list[float] = []
    inflight = 0
    inflight_t: list[float] = []
    k = a.sample_every
    n = a.records

    def send_all() -> None:
        nonlocal vals, ks, size, closed, closed_bytes, pending_t, inflight, inflight_t
        if vals:
            closed.append((vals, ks))
            vals, ks, size = [], [], 0
        ts = int(time.time() * 1000)
        frames = [encode_batch(v, kk if keys else None, timestamp=ts) for v, kk in closed]
        inflight = ch.send("produce", frames, topic=TOPIC, partition=0, acks=1, timeout_ms=30_000)
        inflight_t, pending_t = pending_t, []
        closed, closed_bytes = [], 0

    def complete() -> None:
        nonlocal inflight
        now = clock()
        samples.extend(now - t for t in inflight_t)
        inflight = 0

    rate = a.throughput
    sleep = time.sleep
    sock = ch.sock
    fd = sock.getsockopt(zmq.FD)  # edge-triggered: readable means "look at EVENTS"

    def wait_until(due: float) -> None:
        """Paced: until ``due``, take the reply of the request in flight as it comes. The
        wait is a select() on the socket's descriptor: zmq_poll's timeout is whole ms."""
        while True:
            if inflight and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                reply = ch.recv_nowait()
                if reply is not None and reply.id == inflight:
                    reply.raise_for_error()
                    complete()
                continue
            left = due - clock()
            if left <= 0:
                return
            if inflight:
                select.select([fd], [], [], left)
            else:
                sleep(left)

    t0 = clock()
    for j in range(n):
        if rate > 0:
            wait_until(t0 + j / rate)
        vals.append(values[j & 255])
        ks.append(keys[j % nkeys] if keys else None)
        size += rec
        if j % k == 0:
            pending_t.append(clock())
        just_closed = size >= a.batch_size
        if just_closed:
            closed.append((vals, ks))
            closed_bytes += size
            vals, ks, size = [], [], 0
        if rate > 0 or (j & 63) == 0 or just_closed:
            if inflight:
                reply = ch.recv_nowait()
                if reply is not None and reply.id == inflight:
                    reply.raise_for_error()
                    complete()
                elif closed_bytes >= MAX_REQUEST_BYTES:
                    _wait_reply(ch, inflight)  # the request is full: wait, as the producer's buffer would
                    complete()
            if not inflight:
                send_all()
            if (j & 4095) == 0:
                progress.report(j, j * a.record_size)
    if inflight:
        _wait_reply(ch, inflight)
        complete()
    if vals or closed:
        send_all()
        _wait_reply(ch, inflight)
        complete()
    t1 = clock()
    progress.report(n, n * a.record_size, t1, force=True)
    progress.finish()
    gc.unfreeze()
    nbytes = n * a.record_size
    return {
        "mode": "pipe-produce",
        "records": n,
        "bytes": nbytes,
        "elapsed_s": t1 - t0,
        **throughput(n, nbytes, t1 - t0),
        "latency_what": "append to acknowledgement",
        "latency_ms": latency_summary(samples),
        "args": _args(a),
        "notes": ["bare pyzmq pipe, no broker: the ceiling for `perf produce`"],
    }


def _fetch(a: argparse.Namespace, ch: Channel) -> dict[str, Any]:
    samples: array[float] = array("d")
    clock = time.perf_counter
    gc.collect()
    gc.freeze()
    progress = Progress("received", a.progress_interval, samples, enabled=not a.quiet)
    count = nbytes = 0
    offset = 0
    out: list[ConsumerRecord] = []

    def fetch(at: int) -> tuple[int, float]:
        return ch.send("fetch", topic=TOPIC, partition=0, offset=at, max_bytes=a.fetch_max_bytes), clock()

    t0 = clock()
    cid, sent_at = fetch(0)
    while offset < a.records:
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        reply = None
        while reply is None or reply.id != cid:
            if time.monotonic() >= deadline or not ch.sock.poll(REPLY_TIMEOUT_S * 1000):
                raise PerfError(f"no fetch reply from the pipe sink within {REPLY_TIMEOUT_S:.0f} s")
            reply = ch.recv_nowait()
        reply.raise_for_error()
        samples.append(clock() - sent_at)
        if not reply.frames:
            raise PerfError(f"the pipe sink returned nothing at offset {offset}")
        data = reply.frames[0]
        buf = data.buffer if hasattr(data, "buffer") else data
        for h in iter_headers(buf):
            offset = h.next_offset
        if offset < a.records:
            cid, sent_at = fetch(offset)  # fetch ahead, then decode
        for batch in decode_batches(buf):
            n = len(batch.values)
            out.extend(
                map(
                    ConsumerRecord,
                    repeat(TOPIC, n),
                    repeat(0, n),
                    batch.offsets,
                    batch.timestamps,
                    batch.keys,
                    batch.values,
                    repeat(_NO_HEADERS, n),
                )
            )
        count += len(out)
        nbytes += sum(map(len, filter(None, (r[5] for r in out))))
        out.clear()
        progress.report(count, nbytes)
    t1 = clock()
    progress.report(count, nbytes, t1, force=True)
    progress.finish()
    gc.unfreeze()
    return {
        "mode": "pipe-fetch",
        "records": count,
        "bytes": nbytes,
        "elapsed_s": t1 - t0,
        **throughput(count, nbytes, t1 - t0),
        "latency_what": "fetch round trip",
        "latency_ms": latency_summary(samples),
        "args": _args(a),
        "notes": ["bare pyzmq pipe, no broker: the ceiling for `perf consume`"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.pipe", description="the sink of `sluice perf pipe`")
    p.add_argument("--sink", choices=["produce", "fetch"], required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--record-size", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--keys", type=int, default=0)
    a = p.parse_args(argv)
    return sink_main(a)


if __name__ == "__main__":
    sys.exit(main())
