"""``Producer.send`` builds columnar batches: the key, header and timestamp columns start
when the first record that needs them arrives and are filled in for the records before
it. Pure logic: the producer points at an endpoint where nobody listens, so its batches
stay queued where the test can look at them."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from ipc.client.producer import FutureRecordMetadata, Producer, ProducerClosedError
from ipc.records import Compression, Headers, decode_batch


def _unused_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def producer() -> Iterator[Producer]:
    p = Producer(_unused_endpoint(), acks=1, request_timeout_ms=1000, max_block_ms=1000)
    p._partitions["t"] = 2  # as if metadata had said so: send() needs no broker
    yield p
    p.close(timeout=0)


def _queued(p: Producer, partition: int) -> list[tuple[bytes | None, bytes | None, Headers, int]]:
    with p._lock:
        batches = list(p._queues[("t", partition)])
    out = []
    for b in batches:
        d = decode_batch(b.encode(Compression.NONE))
        out += list(zip(d.keys, d.values, d.headers or [[]] * len(d.values), d.timestamps, strict=True))
    return out


def test_columns_start_late_and_are_filled_in(producer: Producer) -> None:
    t1 = int(time.time() * 1000) - 60_000  # within the batch's int32 timestamp deltas
    t2 = t1 + 5
    sent = [
        (None, b"plain", None, None),
        (b"k1", b"keyed", None, None),
        (None, b"headed", [("h", b"1"), ("n", None)], None),
        (None, b"stamped", None, t1),
        (b"k2", b"all", [("x", b"")], t2),
    ]
    futures = [producer.send("t", v, key=k, partition=1, headers=h, timestamp_ms=t) for k, v, h, t in sent]
    assert [f[1] for f in futures] == [0, 1, 2, 3, 4]  # one batch, in order
    assert len({id(f[0]) for f in futures}) == 1
    got = _queued(producer, 1)
    assert [(k, v, h) for k, v, h, _ in got] == [(k, v, h or []) for k, v, h, _ in sent]
    stamps = [ts for *_, ts in got]
    assert stamps[3:] == [t1, t2]
    assert stamps[0] == stamps[1] == stamps[2]  # the batch's first timestamp


def test_keyless_records_without_partition_stick_to_one_partition_per_batch(producer: Producer) -> None:
    futures = [producer.send("t", b"v%d" % i) for i in range(10)]
    assert len({id(f[0]) for f in futures}) == 1
    b = futures[0][0]
    assert b.keys is None  # no key column at all
    assert [v for _, v, _, _ in _queued(producer, b.partition)] == [b"v%d" % i for i in range(10)]


def test_a_timestamp_too_far_from_the_batch_starts_a_new_one(producer: Producer) -> None:
    f1 = producer.send("t", b"now", partition=0)
    f2 = producer.send("t", b"old", partition=0, timestamp_ms=1_000)  # int32 ms deltas cannot reach
    assert f1[0] is not f2[0]
    assert [ts for *_, ts in _queued(producer, 0)][1] == 1_000


class _IndexLike:
    """An integer type that is not an int subclass (as numpy's int64)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


def test_any_integer_type_is_a_timestamp(producer: Producer) -> None:
    now = int(time.time() * 1000)
    producer.send("t", b"v", partition=0, timestamp_ms=_IndexLike(now))  # type: ignore[arg-type]
    producer.send("t", b"w", partition=0, timestamp_ms=float(now + 1))  # type: ignore[arg-type]
    assert [ts for *_, ts in _queued(producer, 0)] == [now, now + 1]


def test_future_is_pending_until_its_batch_completes(producer: Producer) -> None:
    f = producer.send("t", b"x", partition=0)
    assert isinstance(f, FutureRecordMetadata)
    assert not f.done()
    with pytest.raises(TimeoutError):
        f.result(timeout=0.01)
    producer.close(timeout=0)
    assert f.done()
    assert isinstance(f.exception(0), ProducerClosedError)


def test_bad_input_is_refused_before_anything_is_queued(producer: Producer) -> None:
    with pytest.raises(TypeError):
        producer.send("t", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        producer.send("t", b"v", key="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        producer.send("t", b"v", partition=2)
    with pytest.raises(TypeError):
        producer.send("t", b"v", headers=[("h", "text")])  # type: ignore[list-item]
    for ts in ("123", float("nan"), float("inf"), True):
        with pytest.raises(TypeError):
            producer.send("t", b"v", timestamp_ms=ts)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        producer.send("t", b"v", timestamp_ms=2**63)
    with producer._lock:
        assert not any(producer._queues.values())
