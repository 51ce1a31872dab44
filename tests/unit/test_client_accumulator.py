"""The producer's record accumulator (ipc/client/accumulator.py), as ``Producer.send`` and
the sender use it. Pure logic: the ``Producer`` is built with an idle stand-in for its
sender (no I/O thread, no socket), and the test plays the sender's part through the
accumulator's methods (drain, reenqueue, expired, complete)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ipc.client.producer as producer_module
from ipc.client.accumulator import RecordAccumulator
from ipc.client.batch import RECORD_OVERHEAD, FutureRecordMetadata, ProducerBatch
from ipc.client.producer import Producer
from ipc.errors import MessageTooLargeError, RequestTimedOutError
from ipc.records import Compression

LEADERS = {("t", p): f"tcp://worker-{p}" for p in range(3)}


class IdleSender:
    """Stands for ``Sender``: takes what the Producer gives it and does nothing."""

    def __init__(self, accumulator: RecordAccumulator, wakeup: Any, **settings: Any) -> None:
        self.acc = accumulator
        self.settings = settings

    def run(self) -> None:
        return None


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Producer]:
    monkeypatch.setattr(producer_module, "Sender", IdleSender)
    p = Producer("tcp://127.0.0.1:9", acks=1, batch_size=100, max_block_ms=0, buffer_memory=1000)
    p._partitions["t"] = 3  # as if metadata had said so: send() needs no node
    yield p
    p.close(timeout=0)


def acc_of(p: Producer) -> RecordAccumulator:
    sender = p._sender
    assert isinstance(sender, IdleSender)
    return sender.acc


def queued(acc: RecordAccumulator, partition: int) -> list[list[bytes | None]]:
    with acc.lock:
        return [list(b.values) for b in acc.queues.get(("t", partition), ())]


def value(n: int) -> bytes:
    return b"x" * (n - RECORD_OVERHEAD)  # a record that counts n bytes


# ---------------------------------------------------------------------------- append


def test_send_appends_to_the_open_batch_and_accounts_for_its_bytes(producer: Producer) -> None:
    acc = acc_of(producer)
    futures = [producer.send("t", b"v%d" % i, partition=1) for i in range(3)]
    assert [f[1] for f in futures] == [0, 1, 2]
    assert futures[0][0] is futures[1][0] is futures[2][0]
    assert queued(acc, 1) == [[b"v0", b"v1", b"v2"]]
    assert acc.buffered == 3 * (2 + RECORD_OVERHEAD) == futures[0][0].size
    assert acc.incomplete == {futures[0][0]}
    assert acc.partitions["t"] == 3


def test_a_full_batch_opens_the_next_one(producer: Producer) -> None:
    acc = acc_of(producer)
    for _ in range(7):
        producer.send("t", value(30), partition=0)  # 3 fit in 100 bytes
    assert [b.size for b in acc.queues[("t", 0)]] == [90, 90, 30]
    assert [len(v) for v in queued(acc, 0)] == [3, 3, 1]


def test_a_record_larger_than_batch_size_gets_a_batch_of_its_own(producer: Producer) -> None:
    acc = acc_of(producer)
    producer.send("t", value(20), partition=0)
    producer.send("t", value(150), partition=0)
    producer.send("t", value(20), partition=0)
    assert [b.size for b in acc.queues[("t", 0)]] == [20, 150, 20]


def test_an_encoded_batch_takes_no_more_records(producer: Producer) -> None:
    acc = acc_of(producer)
    first = producer.send("t", b"a", partition=0)[0]
    first.encode(Compression.NONE)  # as the sender does before a request (a retry keeps the bytes)
    producer.send("t", b"b", partition=0)
    assert queued(acc, 0) == [[b"a"], [b"b"]]


def test_a_full_buffer_refuses_after_max_block_ms(producer: Producer) -> None:
    acc = acc_of(producer)
    for _ in range(10):
        producer.send("t", value(100), partition=0)
    assert acc.buffered == 1000
    with pytest.raises(RequestTimedOutError, match="buffer_memory=1000 full"):
        producer.send("t", value(20), partition=1)
    assert queued(acc, 1) == []


def test_a_record_larger_than_the_buffer_goes_in_when_it_is_empty(producer: Producer) -> None:
    acc = acc_of(producer)
    producer.send("t", value(5000), partition=0)
    assert acc.buffered == 5000


# ---------------------------------------------------------------------------- sticky partitioner


def test_keyless_records_stick_to_a_partition_until_its_batch_is_drained(producer: Producer) -> None:
    acc = acc_of(producer)
    a = [producer.send("t", b"a%d" % i) for i in range(3)]
    assert {f[0].partition for f in a} == {0}
    assert acc.sticky["t"] == ("t", 0)
    sent, _ = acc.drain(0.0, LEADERS, hold_unencoded=False)
    assert [(tp, [len(b.values) for b in batches]) for tp, _, batches in sent] == [(("t", 0), [3])]
    assert "t" not in acc.sticky  # its batch left: the next record picks the next partition
    b = producer.send("t", b"b")
    c = producer.send("t", b"c")
    assert b[0].partition == c[0].partition == 1


def test_a_full_sticky_batch_moves_keyless_records_to_the_next_partition(producer: Producer) -> None:
    partitions = [producer.send("t", value(40))[0].partition for _ in range(5)]
    assert partitions == [0, 0, 0, 1, 1]  # the third opened a batch behind the full one, the fourth moved on


def test_the_sticky_partition_goes_round_robin_over_all_topics(producer: Producer) -> None:
    acc = acc_of(producer)
    producer._partitions["u"] = 2
    assert acc.stick("t", 3) == ("t", 0)
    assert acc.stick("u", 2) == ("u", 1)
    assert acc.stick("t", 3) == ("t", 2)


def test_a_keyed_record_opening_a_batch_leaves_the_sticky_partition_alone(producer: Producer) -> None:
    acc = acc_of(producer)
    producer.send("t", b"a")
    producer.send("t", value(95), key=b"k", partition=0)  # opens a batch behind the sticky one
    assert acc.sticky["t"] == ("t", 0)
    producer.send("t", value(95), partition=0)  # a key-less one does: the sticky batch is behind others
    assert "t" not in acc.sticky


# ---------------------------------------------------------------------------- drain


def test_drain_takes_whole_queues_in_partition_order_and_head_first(producer: Producer) -> None:
    acc = acc_of(producer)
    for i in range(4):
        producer.send("t", value(60), partition=2, key=b"%d" % i)
    producer.send("t", b"p0", partition=0)
    sent, no_leader = acc.drain(0.0, LEADERS, hold_unencoded=False)
    assert no_leader == set()
    assert [(tp, ep) for tp, ep, _ in sent] == [(("t", 2), "tcp://worker-2"), (("t", 0), "tcp://worker-0")]
    assert [[b.keys for b in batches] for _, _, batches in sent] == [[[b"0"], [b"1"], [b"2"], [b"3"]], [None]]
    assert queued(acc, 2) == queued(acc, 0) == []


def test_a_partition_with_its_requests_in_flight_waits(producer: Producer) -> None:
    acc = acc_of(producer)
    producer.send("t", b"a", partition=0)
    acc.request_started(("t", 0))
    assert acc.drain(0.0, LEADERS, hold_unencoded=False) == ([], set())
    acc.request_ended(("t", 0))
    sent, _ = acc.drain(0.0, LEADERS, hold_unencoded=False)
    assert [tp for tp, _, _ in sent] == [("t", 0)]


def test_a_partition_without_a_leader_is_reported_not_drained(producer: Producer) -> None:
    acc = acc_of(producer)
    producer.send("t", b"a", partition=1)
    sent, no_leader = acc.drain(0.0, {("t", 0): "tcp://worker-0"}, hold_unencoded=False)
    assert sent == [] and no_leader == {"t"}
    assert queued(acc, 1) == [[b"a"]]


def test_without_a_producer_id_only_batches_encoded_earlier_may_go(producer: Producer) -> None:
    acc = acc_of(producer)
    retry = producer.send("t", value(60), partition=0)[0]
    retry.encode(Compression.NONE, 7, 0, 0)  # sequenced under an id dropped since
    producer.send("t", value(60), partition=0)
    assert acc.waiting_for_id()
    sent, _ = acc.drain(0.0, LEADERS, hold_unencoded=True)
    assert [batches for _, _, batches in sent] == [[retry]]
    assert acc.drain(0.0, LEADERS, hold_unencoded=True) == ([], set())
    assert len(acc.take_unencoded()) == 1
    assert not acc.waiting_for_id()


def test_a_request_carries_batches_up_to_max_request_bytes(producer: Producer, monkeypatch: pytest.MonkeyPatch) -> None:
    acc = acc_of(producer)
    monkeypatch.setattr("ipc.client.accumulator.MAX_REQUEST_BYTES", 150)
    for _ in range(4):
        producer.send("t", value(60), partition=0)
    sent, _ = acc.drain(0.0, LEADERS, hold_unencoded=False)
    assert [len(batches) for _, _, batches in sent] == [2]
    assert len(queued(acc, 0)) == 2


# ---------------------------------------------------------------------------- retries


def test_reenqueue_puts_a_retry_back_ahead_of_what_came_since_in_order(producer: Producer) -> None:
    acc = acc_of(producer)
    for i in range(3):
        producer.send("t", value(60), partition=0, key=b"%d" % i)
    ((tp, _, batches),) = acc.drain(0.0, LEADERS, hold_unencoded=False)[0]
    producer.send("t", value(60), partition=0, key=b"new")
    for b in batches:
        b.not_before = 5.0
    acc.reenqueue(tp, batches)
    assert [b.keys for b in acc.queues[tp]] == [[b"0"], [b"1"], [b"2"], [b"new"]]
    assert acc.drain(1.0, LEADERS, hold_unencoded=False) == ([], set())  # backing off
    ((_, _, again),) = acc.drain(5.0, LEADERS, hold_unencoded=False)[0]
    assert again[:3] == batches


def test_next_due_names_the_back_off_of_a_retry_and_the_deadline() -> None:
    now = [100.0]
    acc = RecordAccumulator(
        batch_size=100,
        buffer_memory=1000,
        linger_s=0.005,
        max_in_flight=2,
        delivery_timeout_s=30.0,
        clock=lambda: now[0],
    )
    assert acc.next_due(100.0, LEADERS, hold_unencoded=False) == (float("inf"), False)
    with acc.lock:
        b = acc.new_batch(("t", 0), None, None)
    b.not_before = 102.0
    assert acc.next_due(100.0, LEADERS, hold_unencoded=False) == (2.0, False)
    acc.request_started(("t", 0))  # one out, room for another: the later of back-off and linger
    assert acc.next_due(100.0, LEADERS, hold_unencoded=False) == (2.0, False)
    acc.request_started(("t", 0))  # no room: only its delivery deadline
    assert acc.next_due(100.0, LEADERS, hold_unencoded=False) == (30.0, False)
    assert acc.next_due(100.0, {}, hold_unencoded=True) == (30.0, True)


def test_expired_takes_batches_past_their_delivery_deadline_from_the_head() -> None:
    now = [0.0]
    acc = RecordAccumulator(
        batch_size=100, buffer_memory=1000, linger_s=0.0, max_in_flight=1, delivery_timeout_s=10.0, clock=lambda: now[0]
    )
    with acc.lock:
        old = acc.new_batch(("t", 0), None, None)
        now[0] = 5.0
        young = acc.new_batch(("t", 0), None, None)
    assert acc.expired(9.0) == {}
    assert acc.expired(12.0) == {("t", 0): [old]}
    assert list(acc.queues[("t", 0)]) == [young]


# ---------------------------------------------------------------------------- completion


def test_complete_resolves_futures_frees_space_and_runs_callbacks(producer: Producer) -> None:
    acc = acc_of(producer)
    futures = [producer.send("t", b"v", partition=0) for _ in range(2)]
    done: list[FutureRecordMetadata] = []
    futures[1].add_done_callback(done.append)
    ((_, _, batches),) = acc.drain(0.0, LEADERS, hold_unencoded=False)[0]
    acc.complete(batches, [40], None)
    assert [f.result(0).offset for f in futures] == [40, 41]
    assert done == [futures[1]]
    assert acc.buffered == 0 and not acc.incomplete


def test_a_failed_batch_fails_every_future_and_a_raising_callback_is_contained(producer: Producer) -> None:
    acc = acc_of(producer)
    f = producer.send("t", b"v", partition=0)

    def boom(_: FutureRecordMetadata) -> None:
        raise RuntimeError("callback")

    f.add_done_callback(boom)
    ((_, _, batches),) = acc.drain(0.0, LEADERS, hold_unencoded=False)[0]
    acc.complete(batches, None, MessageTooLargeError("too big"))
    assert isinstance(f.exception(0), MessageTooLargeError)
    assert acc.buffered == 0


def test_abort_fails_everything_not_complete(producer: Producer) -> None:
    acc = acc_of(producer)
    f = producer.send("t", b"v", partition=0)
    g = producer.send("t", b"w", partition=1)
    acc.drain(0.0, {("t", 0): "tcp://worker-0"}, hold_unencoded=False)  # in flight, not complete
    acc.abort(RequestTimedOutError("closing"))
    assert isinstance(f.exception(0), RequestTimedOutError) and isinstance(g.exception(0), RequestTimedOutError)
    assert acc.pending() == []


def test_partitions_added_only_grows_the_count() -> None:
    acc = RecordAccumulator(batch_size=1, buffer_memory=1, linger_s=0.0, max_in_flight=1, delivery_timeout_s=1.0)
    acc.partitions_added("t", 2)
    acc.partitions_added("t", 1)
    acc.partitions_added("t", 4)
    assert acc.partitions == {"t": 4} and acc.topics() == ["t"]
    assert isinstance(ProducerBatch("t", 0, 0.0, 1.0), ProducerBatch)
