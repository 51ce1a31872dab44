"""Measurements shared by the perf modes: latency samples, the live progress line and
the final summary (text or JSON).

Latencies are kept as floats in seconds in an ``array('d')`` (no per-sample Python
object survives, so the samples add nothing to the garbage collector's work) and
summarised by the nearest-rank method: p99 of 1,000 samples is the 990th smallest.
"""

from __future__ import annotations

import json
import math
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any, TextIO

MB = 1e6  # MB/s means 10^6 bytes of keys and values per second, as in docs/performance.md


def percentile(ordered: array[float] | list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in [0, 1])."""
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def latency_summary(samples: array[float] | list[float]) -> dict[str, float | int]:
    """p50 / p99 / p99.9 / max / avg in milliseconds, and the sample count."""
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "samples": n,
        "avg": (sum(ordered) / n * 1e3) if n else math.nan,
        "p50": percentile(ordered, 0.50) * 1e3,
        "p99": percentile(ordered, 0.99) * 1e3,
        "p99_9": percentile(ordered, 0.999) * 1e3,
        "max": (ordered[-1] * 1e3) if n else math.nan,
    }


class Progress:
    """A progress line every ``interval_s``: records, rate and MB/s of the interval, and
    the latency of the samples that arrived in it. Written to ``out`` (stderr), so
    ``--json`` on stdout stays machine-readable; on a terminal the line is rewritten."""

    def __init__(
        self,
        verb: str,
        interval_s: float,
        samples: array[float] | list[float] | None,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
        enabled: bool = True,
    ) -> None:
        self.verb = verb
        self.interval_s = interval_s
        self.samples = samples
        self.out = out if out is not None else sys.stderr
        self.clock = clock
        self.enabled = enabled and interval_s > 0
        self.tty = self.out.isatty()
        self.start = clock()
        self.next_report = self.start + interval_s
        self._last_t = self.start
        self._last_records = 0
        self._last_bytes = 0
        self._last_sample = 0

    def report(self, records: int, nbytes: int, now: float | None = None, force: bool = False) -> None:
        """Print the interval's line if it is due (cheap when it is not), or if ``force``."""
        now = self.clock() if now is None else now
        if not self.enabled or (now < self.next_report and not force) or now <= self._last_t:
            return
        self.next_report = now + self.interval_s
        dt = max(now - self._last_t, 1e-9)
        rate = (records - self._last_records) / dt
        mbs = (nbytes - self._last_bytes) / dt / MB
        line = f"{records:>12,} records {self.verb}  {rate:>12,.0f} records/s  {mbs:8.2f} MB/s"
        if self.samples is not None:
            end = len(self.samples)
            window = sorted(self.samples[self._last_sample : end])
            self._last_sample = end
            if window:
                line += (
                    f"  latency p50 {percentile(window, 0.5) * 1e3:7.3f} ms"
                    f"  p99 {percentile(window, 0.99) * 1e3:7.3f} ms  max {window[-1] * 1e3:8.3f} ms"
                )
        self._last_t, self._last_records, self._last_bytes = now, records, nbytes
        self.out.write(("\r" + line + "\x1b[K") if self.tty else (line + "\n"))
        self.out.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.out.write("\n")
            self.out.flush()


def throughput(records: int, nbytes: int, elapsed_s: float) -> dict[str, float]:
    elapsed_s = max(elapsed_s, 1e-9)
    return {"records_per_s": records / elapsed_s, "mb_per_s": nbytes / elapsed_s / MB}


def emit(result: dict[str, Any], as_json: bool, out: TextIO | None = None) -> None:
    """The final summary: one JSON object, or a few human-readable lines."""
    out = out if out is not None else sys.stdout
    if as_json:
        out.write(json.dumps(result, sort_keys=True, default=str) + "\n")
        out.flush()
        return
    lat = result.get("latency_ms")
    out.write(
        f"{result['mode']}: {result['records']:,} records, {result['bytes'] / MB:,.1f} MB in "
        f"{result['elapsed_s']:.3f} s: {result['records_per_s']:,.0f} records/s, {result['mb_per_s']:,.2f} MB/s\n"
    )
    if lat and lat.get("samples"):
        out.write(
            f"  {result.get('latency_what', 'latency')} ({lat['samples']:,} samples): "
            f"p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms  p99.9 {lat['p99_9']:.3f} ms  "
            f"max {lat['max']:.3f} ms  avg {lat['avg']:.3f} ms\n"
        )
    for line in result.get("notes", []):
        out.write(f"  {line}\n")
    out.flush()
