"""Benchmark of the storage engine alone: append and read throughput of one Log.

    python -m loadtest.logbench --records 1000000 --record-size 100 --batch 1000 --runs 5

Appends pre-encoded batches (as the partition worker does with a producer's bytes:
validate, stamp, write) under the chosen fsync policy, then reads the log back from
offset 0 in ``--fetch-bytes`` slices (as a fetch does) and, separately, reads and
decodes every record (as a consumer does). Prints the median of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time

from appliance.log.config import LogConfig
from appliance.log.log import Log
from ipc.records import decode_batches, encode_batch, iter_headers


def run_once(
    directory: str, batches: list[bytes], records: int, fetch_bytes: int, fsync: str
) -> dict[str, float]:
    log = Log.open(directory, LogConfig.from_options({"fsync": fsync}))
    total_bytes = sum(map(len, batches))
    t0 = time.perf_counter()
    for batch in batches:
        log.append(batch, 0)
    log.flush()
    t1 = time.perf_counter()
    offset, seen = 0, 0
    end = log.log_end_offset
    while offset < end:
        data = log.read(offset, fetch_bytes)
        for h in iter_headers(data):
            seen += h.record_count
            offset = h.next_offset
    t2 = time.perf_counter()
    offset, decoded = 0, 0
    while offset < end:
        data = log.read(offset, fetch_bytes)
        for b in decode_batches(data):
            decoded += len(b.values)
            offset = b.header.next_offset
    t3 = time.perf_counter()
    log.close()
    if seen != records or decoded != records:
        raise SystemExit(f"read back {seen}/{decoded} records, expected {records}")
    return {
        "append_records_per_s": records / (t1 - t0),
        "append_mb_per_s": total_bytes / (t1 - t0) / 1e6,
        "read_records_per_s": records / (t2 - t1),
        "read_mb_per_s": total_bytes / (t2 - t1) / 1e6,
        "read_decode_records_per_s": records / (t3 - t2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.logbench", description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--record-size", type=int, default=100)
    p.add_argument("--batch", type=int, default=1000, help="records per batch")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--fetch-bytes", type=int, default=1024 * 1024)
    p.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    p.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none")
    p.add_argument("--dir", default=None, help="parent directory for the log (default: a temp dir)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    for name in ("records", "record_size", "batch", "runs", "fetch_bytes"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    value = b"x" * a.record_size
    now = int(time.time() * 1000)
    batches = []
    left = a.records
    while left:
        n = min(a.batch, left)
        batches.append(encode_batch([value] * n, timestamp=now, compression=a.compression))
        left -= n
    gc.collect()
    gc.freeze()
    results = []
    for _ in range(a.runs):
        d = tempfile.mkdtemp(prefix="sluice-logbench-", dir=a.dir)
        try:
            results.append(run_once(d, batches, a.records, a.fetch_bytes, a.fsync))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    median = {k: statistics.median(r[k] for r in results) for k in results[0]}
    if a.json:
        print(json.dumps({"args": vars(a), "median": median, "runs": results}))
    else:
        print(
            f"{a.records:,} records of {a.record_size} B in batches of {a.batch}, fsync={a.fsync}, "
            f"compression={a.compression}, median of {a.runs} runs"
        )
        print(
            f"  append       {median['append_records_per_s']:>14,.0f} records/s  {median['append_mb_per_s']:8.1f} MB/s"
        )
        print(
            f"  read         {median['read_records_per_s']:>14,.0f} records/s  {median['read_mb_per_s']:8.1f} MB/s"
        )
        print(f"  read+decode  {median['read_decode_records_per_s']:>14,.0f} records/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
