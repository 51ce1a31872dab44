"""Benchmark: time to open a log of idempotent batches and rebuild its producer state.

    python -m loadtest.openbench --segments 200 --producers 50 --runs 3

Writes ``--segments`` segments of batches from ``--producers`` idempotent producers
(the snapshot hook wired as the partition worker wires it), closes the log, then times
``Log.open`` + ``ProducerStateTable.rebuild`` three ways, each the median of
``--runs``: with no snapshot file (every batch header of every segment is replayed,
as before snapshots existed), with the snapshot of the last roll only (a restart after
a crash: the active segment's headers are replayed) and with the one written at close
(a clean restart: no header is replayed).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time

from appliance.log import snapshots
from appliance.log.config import LogConfig
from appliance.log.log import Log
from appliance.log.producers import ProducerStateTable
from ipc.records import encode_batch, read_header


def build(directory: str, segments: int, producers: int, config: LogConfig) -> tuple[int, int]:
    """(batches, producers in the table) of the log written to ``directory``."""
    lg = Log.open(directory, config)
    table = ProducerStateTable()
    lg.snapshot_hook = lambda offset: table.write_snapshot(directory, offset)
    value = b"x" * 100
    seqs = [0] * producers
    now = int(time.time() * 1000)
    n = 0
    while len(lg.segments) <= segments:
        pid = n % producers
        buf = encode_batch([value] * 10, timestamp=now, producer_id=pid + 1, producer_epoch=0, base_sequence=seqs[pid])
        h = read_header(buf)
        table.update(h, lg.append(buf, 0).base_offset)
        seqs[pid] += 10
        n += 1
    lg.close()
    return n, table.producer_count


def time_open(directory: str, config: LogConfig, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        lg = Log.open(directory, config)
        ProducerStateTable.rebuild(lg)
        times.append(time.perf_counter() - t0)
        lg.close()  # no hook: no snapshot written, the files stay as arranged
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.openbench", description=__doc__.split("\n")[0])
    p.add_argument("--segments", type=int, default=200)
    p.add_argument("--producers", type=int, default=50)
    p.add_argument("--segment-bytes", type=int, default=256 * 1024)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", default=None, help="parent directory for the log (default: a temp dir)")
    a = p.parse_args(argv)
    config = LogConfig(segment_bytes=a.segment_bytes)
    parent = tempfile.mkdtemp(prefix="sluice-openbench-", dir=a.dir)
    directory = os.path.join(parent, "bench-0")
    stash = os.path.join(parent, "stash")
    os.mkdir(stash)
    try:
        batches, count = build(directory, a.segments, a.producers, config)
        offsets = snapshots.list_snapshots(directory)
        for o in offsets:
            os.replace(snapshots.snapshot_path(directory, o), snapshots.snapshot_path(stash, o))
        gc.collect()
        gc.freeze()
        results = {"no snapshot (before)": time_open(directory, config, a.runs)}
        last_roll, at_close = offsets[-2], offsets[-1]
        os.replace(snapshots.snapshot_path(stash, last_roll), snapshots.snapshot_path(directory, last_roll))
        results["snapshot of the last roll (crash)"] = time_open(directory, config, a.runs)
        os.replace(snapshots.snapshot_path(stash, at_close), snapshots.snapshot_path(directory, at_close))
        results["snapshot at close (clean stop)"] = time_open(directory, config, a.runs)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    print(
        f"{a.segments} segments of {a.segment_bytes} B, {batches:,} idempotent batches of 10 records "
        f"from {count} producers; Log.open + ProducerStateTable.rebuild, median of {a.runs}"
    )
    for name, seconds in results.items():
        print(f"  {name:<36} {seconds * 1000:9.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
