"""The client's counters (ipc/client/stats.py): what ``Producer.metrics()`` and
``Consumer.metrics()`` are built from, and where the fetcher and the accumulator bump
them (per reply, per batch, per poll; never per record). Pure logic: no socket."""

from __future__ import annotations

import zmq

from ipc.client.accumulator import RecordAccumulator
from ipc.client.fetcher import Fetcher
from ipc.client.metadata import ClusterMetadata
from ipc.client.stats import ConsumerStats, ProducerStats, consumer_metrics, producer_metrics
from ipc.client.subscription import SubscriptionState
from ipc.client.transport import BootstrapChannel
from ipc.errors import NotLeaderError, RequestTimedOutError
from ipc.protocol import Reply
from ipc.records import encode_batch


def fetcher() -> Fetcher:
    metadata = ClusterMetadata(BootstrapChannel(None, ["tcp://127.0.0.1:9"], zmq), 1.0)
    return Fetcher(
        SubscriptionState("earliest"),
        metadata,
        ctx=None,
        zmq_module=zmq,
        max_poll_records=500,
        fetch_max_bytes=1 << 20,
        fetch_max_wait_ms=500,
        fetch_min_bytes=1,
        request_timeout_s=1.0,
        retry_backoff_s=0.25,
    )


class FakeChannel:
    endpoint = "tcp://worker"
    closed = False

    def __init__(self, replies: list[Reply]) -> None:
        self._replies = replies

    def replies(self) -> list[Reply]:
        out, self._replies = self._replies, []
        return out


def test_request_latency_is_averaged_over_replies_and_the_maximum_kept() -> None:
    s = ProducerStats()
    assert s.latency_ms() == (0.0, 0.0)
    s.replied(0.010)
    s.replied(0.030)
    avg, mx = s.latency_ms()
    assert round(avg, 6) == 20.0 and round(mx, 6) == 30.0


def test_producer_metrics_names_every_counter() -> None:
    s = ProducerStats()
    s.requests, s.batches, s.retries, s.errors, s.bytes = 4, 6, 2, 1, 999
    s.replied(0.002)
    m = producer_metrics(s, records_sent=10, records_failed=3, buffered=100, buffer_memory=1000, in_flight=1)
    assert m["records_sent"] == 10 and m["records_failed"] == 3
    assert (m["requests_sent"], m["batches_sent"], m["retries"], m["request_errors"]) == (4, 6, 2, 1)
    assert m["bytes_sent"] == 999 and m["replies"] == 1 and m["requests_in_flight"] == 1
    assert (m["buffer_bytes_used"], m["buffer_available_bytes"]) == (100, 900)
    assert round(m["request_latency_max_ms"], 6) == 2.0


def test_consumer_lag_is_the_high_watermark_minus_the_position_once_both_are_known() -> None:
    rows: list[tuple[tuple[str, int], int | None, int]] = [
        (("t", 0), 5, 12),
        (("t", 1), None, 40),  # no position yet
        (("t", 2), 7, -1),  # no fetch reply yet
        (("t", 3), 9, 9),
    ]
    m = consumer_metrics(ConsumerStats(), rows)
    assert m["records_lag"] == {("t", 0): 7, ("t", 3): 0}
    assert m["records_lag_max"] == 7 and m["records_lag_total"] == 7
    assert m["assigned_partitions"] == 4
    assert consumer_metrics(ConsumerStats(), [])["records_lag_max"] == 0


def test_the_accumulator_counts_records_completed_per_batch() -> None:
    acc = RecordAccumulator(batch_size=100, buffer_memory=1000, linger_s=0, max_in_flight=1, delivery_timeout_s=5)
    with acc.lock:
        ok = acc.new_batch(("t", 0), None, None)
        bad = acc.new_batch(("t", 1), None, None)
    ok.values.extend([b"a", b"b", b"c"])
    bad.values.extend([b"x", b"y"])
    acc.complete([ok], [0], None)
    acc.complete([bad], None, RequestTimedOutError("gone"))
    assert (acc.records_sent, acc.records_failed) == (3, 2)


def test_the_fetcher_counts_replies_records_bytes_and_errors_per_reply() -> None:
    f = fetcher()
    f.subscription.assign([("t", 0), ("t", 1)])
    f.sync()
    f.seek(("t", 0), 10)
    f.seek(("t", 1), 0)
    st0, st1 = f.fetches[("t", 0)], f.fetches[("t", 1)]
    data = encode_batch([b"a", b"b", b"c"], None, timestamp=1, base_offset=9)  # 9 is below the fetch offset
    st0.inflight, st1.inflight = 1, 2
    st0.sent_at = st1.sent_at = 0.0
    f._by_cid = {1: st0, 2: st1}
    f.stats.requests = 2
    f._send_fetch = lambda *a, **k: None  # type: ignore[method-assign]  # no fetch-ahead: no socket
    f._on_replies(
        FakeChannel(  # type: ignore[arg-type]
            [
                Reply(1, {"high_watermark": 30}, [data], None),
                Reply(2, {}, [], NotLeaderError("moved")),
            ]
        )
    )
    s = f.stats
    assert (s.replies, s.records_fetched, s.bytes, s.errors) == (2, 2, len(data), 1)
    assert s.latency_max_s > 0
    assert len(f.take()) == 2 and s.records_consumed == 2
    m = consumer_metrics(s, [(tp, st.assigned.position, st.high_watermark) for tp, st in f.fetches.items()])
    assert m["records_lag"] == {("t", 0): 30 - 12}  # ("t", 1) has no high watermark yet
    assert m["fetch_requests"] == 2 and m["fetch_errors"] == 1
