"""The workload of the fault tests: a producer of unique values that records what was
acknowledged, and a reader that reads every partition back from offset 0.

::

    w = ProduceWorkload(cluster.bootstrap, "jepsen", partitions=3).start()
    ... faults ...
    w.stop()
    read = read_all(cluster.bootstrap, "jepsen", 3)
    report = check(w.acked, read, sent=w.sent_values)
    assert report.ok, report.details()

Only an acknowledgement counts: a send that failed or timed out is counted in
``errors`` and may or may not be in the log (the checker allows both).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ipc.client import Consumer, FutureRecordMetadata, Producer
from ipc.errors import SluiceError
from tests.cluster.checker import Record
from tests.integration.conftest import wait_until

log = logging.getLogger(__name__)


class ProduceWorkload:
    """A thread sending ``b"<prefix><n>"`` round-robin to ``partitions`` partitions of
    ``topic`` at about ``rate`` records/s with ``acks="all"``; every acknowledged
    ``(partition, offset, value)`` is recorded from the send's future."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int = 3,
        *,
        rate: float = 200.0,
        prefix: bytes = b"w-",
        max_records: int = 1_000_000,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate={rate}: must be > 0")
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.interval = 1.0 / rate
        self.prefix = prefix
        self.max_records = max_records
        self.producer_options: dict[str, Any] = {
            "acks": "all",
            "request_timeout_ms": 5000,
            "delivery_timeout_ms": 20_000,
            "max_block_ms": 5000,
            "retry_backoff_ms": 100,
            **(producer_options or {}),
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"workload-{topic}", daemon=True)
        self.acked: list[Record] = []
        self.ack_times: list[tuple[int, float]] = []  # (partition, time.monotonic()) of each acknowledgement
        self.sent_values: list[bytes] = []  # every value handed to send(), acknowledged or not
        self.errors = 0  # failed sends and failed deliveries (not acknowledgements)
        self.error_kinds: collections.Counter[str] = collections.Counter()
        self.pending = 0  # sent, neither acknowledged nor failed yet
        self.fatal: BaseException | None = None
        self.producer: Producer | None = None

    # ---- control -------------------------------------------------------------------------------
    def start(self) -> ProduceWorkload:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> ProduceWorkload:
        """Stop sending, wait (up to ``timeout``) for the outstanding sends to be acknowledged
        or fail, close the producer. Raises if the thread itself died of a bug."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the workload thread did not stop within {timeout:.0f} s")
        if self.fatal is not None:
            raise AssertionError(f"the workload thread failed: {self.fatal!r}") from self.fatal
        return self

    def __enter__(self) -> ProduceWorkload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def acknowledged(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_acked(self, count: int, timeout: float) -> None:
        """Until at least ``count`` more records than now are acknowledged (a live workload)."""
        target = self.acknowledged + count
        deadline = time.monotonic() + timeout
        while self.acknowledged < target:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                raise AssertionError(
                    f"{self.acknowledged}/{target} acknowledged after {timeout:.0f} s ({self.summary()})"
                )
            self._stop.wait(0.05)  # polling interval, bounded by the deadline

    def longest_ack_gaps(self, since: float, until: float) -> dict[int, float]:
        """Per partition, the longest time in ``[since, until]`` without an acknowledgement
        (from ``since`` to its first one, between consecutive ones, from its last to ``until``)."""
        with self._lock:
            times = list(self.ack_times)
        out: dict[int, float] = {}
        for p in range(self.partitions):
            prev, longest = since, 0.0
            for t in sorted(t for q, t in times if q == p and since <= t <= until):
                longest, prev = max(longest, t - prev), t
            out[p] = max(longest, until - prev)
        return out

    def summary(self) -> str:
        with self._lock:
            kinds = ", ".join(f"{k}={v}" for k, v in self.error_kinds.most_common())
            return (
                f"sent={len(self.sent_values)} acknowledged={len(self.acked)} errors={self.errors} "
                f"pending={self.pending}" + (f" ({kinds})" if kinds else "")
            )

    # ---- the thread ----------------------------------------------------------------------------
    def _error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.error_kinds[getattr(exc, "code", type(exc).__name__)] += 1

    def _done(self, future: FutureRecordMetadata, value: bytes) -> None:
        """In the producer's I/O thread: record the outcome of one send."""
        exc = future.exception(0)
        with self._lock:
            self.pending -= 1
        if exc is not None:
            self._error(exc)
            return
        md = future.result(0)
        with self._lock:
            self.acked.append((md.partition, md.offset, value))
            self.ack_times.append((md.partition, time.monotonic()))

    def _run(self) -> None:
        try:
            self.producer = Producer(self.bootstrap, **self.producer_options)
            try:
                self._send_loop(self.producer)
            finally:
                self.producer.close(timeout=float(self.producer_options["delivery_timeout_ms"]) / 1000)
        except BaseException as exc:  # noqa: BLE001 - the thread's outermost frame: reported by stop()
            log.exception("workload thread failed")
            self.fatal = exc

    def _send_loop(self, producer: Producer) -> None:
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set() and n < self.max_records:
            value = self.prefix + str(n).encode()
            partition = n % self.partitions
            n += 1
            with self._lock:
                self.sent_values.append(value)
                self.pending += 1
            try:
                fut = producer.send(self.topic, value, partition=partition)
            except (SluiceError, TimeoutError) as exc:  # e.g. no metadata, buffer full
                with self._lock:
                    self.pending -= 1
                self._error(exc)
                self._stop.wait(0.1)  # back off, then keep sending
                next_at = time.monotonic()
                continue
            fut.add_done_callback(functools.partial(self._done, value=value))
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)  # pacing to the rate, interrupted by stop()
            else:
                next_at = time.monotonic()


def read_all(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    timeout: float = 60.0,
    consumer_options: Mapping[str, Any] | None = None,
) -> list[Record]:
    """Read each partition from offset 0 up to its high watermark (taken at the start);
    returns every ``(partition, offset, value)`` read. Fails after ``timeout`` seconds
    with what was missing."""
    deadline = time.monotonic() + timeout
    tps = [(topic, p) for p in range(partitions)]
    opts: dict[str, Any] = {"auto_offset_reset": "earliest", "request_timeout_ms": 5000, **(consumer_options or {})}
    out: list[Record] = []
    with Consumer(bootstrap, **opts) as c:
        last: BaseException | None = None

        def high_watermarks() -> dict[tuple[str, int], int]:
            c.assign(tps)
            return c.end_offsets(tps)

        # the leaders may still be moving right after the faults heal
        end: dict[tuple[str, int], int] = wait_until(
            high_watermarks, timeout, f"the high watermarks of {topic}", interval=0.1
        )
        for tp in tps:
            c.seek(tp[0], tp[1], 0)
        position = dict.fromkeys(range(partitions), 0)
        while any(position[p] < end[(topic, p)] for p in range(partitions)):
            if time.monotonic() >= deadline:
                missing = {p: f"{position[p]}/{end[(topic, p)]}" for p in range(partitions)}
                raise AssertionError(f"reading {topic} timed out after {timeout:.0f} s at {missing} (last: {last})")
            try:
                records = c.poll(timeout_ms=500)
            except SluiceError as exc:
                last = exc
                continue
            for r in records:
                if r.offset < end[(topic, r.partition)]:
                    out.append((r.partition, r.offset, r.value if r.value is not None else b""))
                position[r.partition] = max(position[r.partition], r.offset + 1)
    return out
