"""The client's own counters: what ``Producer.metrics()`` and ``Consumer.metrics()`` return.

Counters are plain integers and floats in a ``__slots__`` object, each written by one
thread only: the producer's by its I/O thread (``Sender``), the consumer's by the thread
that calls it (``Fetcher``). They are bumped **per request, reply or batch, never per
record**: a reply adds its record count once. ``send`` and ``poll`` touch none of them
per record (the count of records handed out is added once per ``poll``).

``metrics()`` reads them from the application's thread without a lock and builds a
fresh ``dict``: a reading taken while the I/O thread is between two increments can be
one request behind on one counter, never torn (each is one attribute). Totals count
from the client's construction; averages are over the whole life (Kafka's are over a
window: take two readings and subtract the totals for a rate).

The keys (Kafka's metric in brackets) are listed in docs/client.md#metrics.
"""

from __future__ import annotations

from typing import Any

from ipc.client.subscription import TopicPartition


class RequestStats:
    """Requests sent and replies received, with the round-trip time of each reply."""

    __slots__ = ("requests", "replies", "errors", "latency_total_s", "latency_max_s", "bytes")

    def __init__(self) -> None:
        self.requests = 0  # requests sent (a retry is a new request)
        self.replies = 0  # replies received (errors included)
        self.errors = 0  # replies carrying an error, requests that timed out or whose connection dropped
        self.latency_total_s = 0.0  # over the replies received
        self.latency_max_s = 0.0
        self.bytes = 0  # payload bytes: batches sent (producer) or fetched (consumer)

    def replied(self, latency_s: float) -> None:
        self.replies += 1
        self.latency_total_s += latency_s
        if latency_s > self.latency_max_s:
            self.latency_max_s = latency_s

    def latency_ms(self) -> tuple[float, float]:
        """(average, maximum) round trip in ms over the replies received; 0.0 before any."""
        avg = self.latency_total_s / self.replies * 1000 if self.replies else 0.0
        return avg, self.latency_max_s * 1000


class ProducerStats(RequestStats):
    """The producer's counters beyond requests; written by the I/O thread only."""

    __slots__ = ("batches", "retries", "throttle_max_ms")

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0  # batches put into produce requests (a retried batch counts again)
        self.retries = 0  # batches put back for a retry
        self.throttle_max_ms = 0  # the largest throttle_time_ms a reply carried (a quota)


class ConsumerStats(RequestStats):
    """The consumer's fetch counters; written by the thread that calls the consumer."""

    __slots__ = ("records_fetched", "records_consumed", "throttle_max_ms")

    def __init__(self) -> None:
        super().__init__()
        self.records_fetched = 0  # decoded from fetch replies (those below the fetch offset not counted)
        self.records_consumed = 0  # handed to the application by poll or iteration
        self.throttle_max_ms = 0


def producer_metrics(
    stats: ProducerStats,
    *,
    records_sent: int,
    records_failed: int,
    buffered: int,
    buffer_memory: int,
    in_flight: int,
) -> dict[str, Any]:
    """``Producer.metrics()``: see docs/client.md#metrics."""
    avg, mx = stats.latency_ms()
    return {
        "records_sent": records_sent,
        "records_failed": records_failed,
        "batches_sent": stats.batches,
        "retries": stats.retries,
        "requests_sent": stats.requests,
        "replies": stats.replies,
        "request_errors": stats.errors,
        "bytes_sent": stats.bytes,
        "request_latency_avg_ms": avg,
        "request_latency_max_ms": mx,
        "requests_in_flight": in_flight,
        "buffer_bytes_used": buffered,
        "buffer_available_bytes": max(0, buffer_memory - buffered),
        "throttle_time_max_ms": stats.throttle_max_ms,
    }


def consumer_metrics(stats: ConsumerStats, partitions: list[tuple[TopicPartition, int | None, int]]) -> dict[str, Any]:
    """``Consumer.metrics()``. ``partitions``: each assigned partition with its position
    (None: none yet) and the high watermark of its last fetch reply (-1: none yet). A
    partition's lag is high watermark − position, once both are known."""
    lags: dict[TopicPartition, int] = {}
    for tp, position, high_watermark in partitions:
        if position is not None and high_watermark >= 0:
            lags[tp] = high_watermark - position
    avg, mx = stats.latency_ms()
    return {
        "records_consumed": stats.records_consumed,
        "records_fetched": stats.records_fetched,
        "fetch_requests": stats.requests,
        "fetch_replies": stats.replies,
        "fetch_errors": stats.errors,
        "bytes_fetched": stats.bytes,
        "fetch_latency_avg_ms": avg,
        "fetch_latency_max_ms": mx,
        "records_lag": lags,
        "records_lag_max": max(lags.values(), default=0),
        "records_lag_total": sum(lags.values()),
        "assigned_partitions": len(partitions),
        "throttle_time_max_ms": stats.throttle_max_ms,
    }
