"""The leader's side of replication, in one process: append + the followers' reads.

    python -m loadtest.recentbench [--batches N] [--records R] [--followers F] [--runs K]

A leader ``Replica`` on a real log in a temporary directory (``fsync=interval``) takes
``--batches`` producer batches of ``--records`` records of 100 bytes each
(``Replica.append``, as the produce handler does), and after each one, ``--followers``
fetches from the previous log end offset (``Replica.read(..., replica=True)``, as a
caught-up follower's fetch is answered). Timed: the appends and the reads, per batch,
with ``leader.recent.batches.bytes`` at its default (the recent batches answer) and at
0 (the log answers: pread + CRC32C of each batch), in ABBA order; the medians of
``--runs`` runs of each. No sockets: this is the part of the leader's CPU the recent
batches change, without the machine's network and scheduling noise.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

from appliance.log.config import LogConfig
from appliance.log.log import Log
from appliance.partition.recent import DEFAULT_CAPACITY_BYTES
from appliance.partition.replica import Replica
from ipc.records import check_producible, encode_batch, validate_batch

FETCH_MAX_BYTES = 8 * 1024 * 1024


def one_run(base: Path, capacity: int, batches: list[bytes], followers: int) -> tuple[float, float, int]:
    """(seconds appending, seconds reading, bytes read) for one leader."""
    cfg = LogConfig(leader_recent_batches_bytes=capacity)
    lg = Log.open(str(base / f"t-{capacity}-{time.monotonic_ns()}"), cfg)
    r = Replica("t", 0, 1, lg)
    r.take_role(r.single_node_role(), hw=0, now=0.0)
    headers = [check_producible(validate_batch(b)) for b in batches]
    append_s = read_s = 0.0
    nbytes = 0
    try:
        for buf, h in zip(batches, headers, strict=True):
            start = lg.log_end_offset
            t0 = time.perf_counter()
            r.append(memoryview(buf), h)
            t1 = time.perf_counter()
            for _ in range(followers):
                nbytes += len(r.read(start, FETCH_MAX_BYTES, replica=True))
            t2 = time.perf_counter()
            append_s += t1 - t0
            read_s += t2 - t1
    finally:
        lg.close()
    return append_s, read_s, nbytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.recentbench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=2000, help="producer batches per run (default 2,000)")
    ap.add_argument("--records", type=int, default=600, help="records of 100 B per batch (default 600: ~64 KiB)")
    ap.add_argument("--followers", type=int, default=2, help="follower fetches after each append (default 2)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each setting, alternating (default 5)")
    a = ap.parse_args(argv)
    if min(a.batches, a.records, a.followers, a.runs) < 1:
        ap.error("--batches, --records, --followers and --runs must be >= 1")
    value = b"v" * 100
    batches = [encode_batch([value] * a.records, timestamp=1_700_000_000_000 + i) for i in range(a.batches)]
    gc.freeze()
    results: dict[int, list[tuple[float, float, int]]] = {DEFAULT_CAPACITY_BYTES: [], 0: []}
    with tempfile.TemporaryDirectory(prefix="sluice-recentbench-") as tmp:
        for i in range(a.runs):  # ABBA: the page cache's writeback of one run slows the next alike
            for capacity in (0, DEFAULT_CAPACITY_BYTES) if i % 2 == 0 else (DEFAULT_CAPACITY_BYTES, 0):
                results[capacity].append(one_run(Path(tmp), capacity, batches, a.followers))
    size = len(batches[0])
    print(
        f"{a.batches} batches of {a.records} records ({size} B each), {a.followers} follower read(s) after each "
        f"append, {a.runs} runs per setting (medians):"
    )
    for capacity, label in ((0, "log (leader.recent.batches.bytes=0)"), (DEFAULT_CAPACITY_BYTES, "recent batches")):
        runs = results[capacity]
        app = statistics.median(x[0] for x in runs) / a.batches * 1e6
        rd = statistics.median(x[1] for x in runs) / (a.batches * a.followers) * 1e6
        print(f"  {label:38s} append {app:7.1f} us/batch   follower read {rd:7.1f} us/fetch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
