"""The consumer's fetch state (ipc/client/fetcher.py): decoding fetch replies into the
buffer, handing records out across partitions, fetch errors, seeking, following the
assignment. Pure logic: the ``Fetcher`` is built without a ZeroMQ context and never
sends (nothing here opens a socket)."""

from __future__ import annotations

import pytest
import zmq

from ipc.client.fetcher import ConsumerRecord, Fetcher, PartitionFetch, take_records
from ipc.client.metadata import ClusterMetadata
from ipc.client.subscription import SubscriptionState, TopicPartitionState
from ipc.client.transport import BootstrapChannel
from ipc.errors import (
    InvalidRequestError,
    NotLeaderError,
    OffsetOutOfRangeError,
    SluiceError,
    StorageError,
)
from ipc.protocol import Reply
from ipc.records import encode_batch


def batch(base: int, *values: bytes, keys: list[bytes | None] | None = None) -> bytes:
    return encode_batch(list(values), keys, timestamp=1_000, base_offset=base)


def fetch_reply(*batches: bytes, high_watermark: int = 100) -> Reply:
    return Reply(7, {"high_watermark": high_watermark}, [b"".join(batches)] if batches else [], None)


def partition(topic: str = "t", p: int = 0, fetch_offset: int | None = None) -> PartitionFetch:
    assigned = TopicPartitionState(topic, p, fetch_offset)
    return PartitionFetch(assigned, topic, p, fetch_offset=fetch_offset)


def fetcher(reset: str = "earliest", max_poll_records: int = 500) -> Fetcher:
    subs = SubscriptionState(reset)
    metadata = ClusterMetadata(BootstrapChannel(None, ["tcp://127.0.0.1:9"], zmq), 1.0)
    return Fetcher(
        subs,
        metadata,
        ctx=None,
        zmq_module=zmq,
        max_poll_records=max_poll_records,
        fetch_max_bytes=1 << 20,
        fetch_max_wait_ms=500,
        fetch_min_bytes=1,
        request_timeout_s=1.0,
        retry_backoff_s=0.25,
    )


# ---------------------------------------------------------------------------- replies


def test_a_reply_is_decoded_into_the_buffer_and_moves_the_fetch_offset() -> None:
    st = partition(fetch_offset=10)
    st.add_records(fetch_reply(batch(10, b"a", b"b"), batch(12, b"c", keys=[b"k"]), high_watermark=20))
    assert list(st.buffer) == [
        ConsumerRecord("t", 0, 10, 1_000, None, b"a", []),
        ConsumerRecord("t", 0, 11, 1_000, None, b"b", []),
        ConsumerRecord("t", 0, 12, 1_000, b"k", b"c", []),
    ]
    assert st.fetch_offset == 13 and st.high_watermark == 20
    assert st.assigned.position == 10  # handing records out moves the position, not fetching


def test_records_below_the_fetch_offset_are_skipped() -> None:
    st = partition(fetch_offset=11)
    st.add_records(fetch_reply(batch(10, b"a", b"b", b"c")))
    assert [r.offset for r in st.buffer] == [11, 12]
    assert st.fetch_offset == 13


def test_an_empty_reply_only_updates_the_high_watermark() -> None:
    st = partition(fetch_offset=5)
    st.add_records(fetch_reply(high_watermark=5))
    assert not st.buffer and st.fetch_offset == 5 and st.high_watermark == 5


def test_a_corrupt_batch_raises_and_keeps_the_batches_before_it() -> None:
    st = partition(fetch_offset=0)
    with pytest.raises(SluiceError):
        st.add_records(fetch_reply(batch(0, b"a"), b"\x00" * 70))
    assert [r.value for r in st.buffer] == [b"a"] and st.fetch_offset == 1


# ---------------------------------------------------------------------------- handing out


def test_take_records_empties_buffers_in_order_up_to_the_limit_and_moves_positions() -> None:
    a, b = partition("a", fetch_offset=0), partition("b", fetch_offset=0)
    a.add_records(fetch_reply(batch(0, b"a0", b"a1", b"a2")))
    b.add_records(fetch_reply(batch(0, b"b0", b"b1")))
    out = take_records([a, b], 4)
    assert [(r.topic, r.offset) for r in out] == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert (a.assigned.position, b.assigned.position) == (3, 1)
    assert [r.value for r in take_records([a, b], 4)] == [b"b1"]
    assert b.assigned.position == 2
    assert take_records([a, b], 4) == []


def test_take_starts_from_the_next_partition_each_time() -> None:
    f = fetcher(max_poll_records=1)
    f.subscription.assign([("t", 0), ("t", 1), ("t", 2)])
    f.sync()
    for p, st in enumerate(f.fetches.values()):
        st.fetch_offset = 0
        st.add_records(fetch_reply(batch(0, b"%d-0" % p, b"%d-1" % p)))
    firsts = [f.take()[0].partition for _ in range(6)]
    assert firsts == [1, 2, 0, 1, 2, 0]
    assert f.subscription.positions() == {("t", 0): 2, ("t", 1): 2, ("t", 2): 2}


# ---------------------------------------------------------------------------- errors


def test_offset_out_of_range_drops_the_buffer_and_the_position() -> None:
    f = fetcher("earliest")
    f.subscription.assign([("t", 0)])
    f.sync()
    f.seek(("t", 0), 0)
    st = f.fetches[("t", 0)]
    st.add_records(fetch_reply(batch(0, b"a")))
    f.on_fetch_error(st, OffsetOutOfRangeError("gone"), now=1.0)
    assert not st.buffer and st.fetch_offset is None
    assert f.subscription.state("t", 0).position is None  # the reset policy applies before the next fetch


def test_offset_out_of_range_is_raised_without_a_reset_policy() -> None:
    f = fetcher("none")
    st = partition(fetch_offset=3)
    with pytest.raises(OffsetOutOfRangeError):
        f.on_fetch_error(st, OffsetOutOfRangeError("gone"), now=1.0)


def test_a_retriable_error_forgets_the_leader_and_backs_off() -> None:
    f = fetcher()
    st = partition(fetch_offset=3)
    f.leaders[("t", 0)] = "tcp://old-leader"
    f.on_fetch_error(st, NotLeaderError("moved"), now=10.0)
    assert ("t", 0) not in f.leaders
    assert st.retry_at == 10.25 and st.fetch_offset == 3


def test_a_retriable_error_that_is_not_about_metadata_also_backs_off() -> None:
    f = fetcher()
    st = partition(fetch_offset=3)
    f.on_fetch_error(st, StorageError("disk"), now=0.0)
    assert st.retry_at == 0.25


def test_a_non_retriable_error_is_raised() -> None:
    f = fetcher()
    with pytest.raises(InvalidRequestError):
        f.on_fetch_error(partition(fetch_offset=3), InvalidRequestError("bad"), now=0.0)


# ---------------------------------------------------------------------------- assignment and seeking


def test_the_fetch_state_follows_the_assignment_in_its_order() -> None:
    f = fetcher()
    subs = f.subscription
    subs.assign([("t", 0), ("t", 1)])
    f.sync()
    kept = f.fetches[("t", 1)]
    kept.inflight = 99
    subs.assign([("u", 0), ("t", 1)])
    f.sync()
    assert list(f.fetches) == [("t", 1), ("u", 0)]
    assert f.fetches[("t", 1)] is kept and kept.inflight == 99
    assert f.fetches[("u", 0)].assigned is subs.state("u", 0)


def test_seek_drops_the_buffer_and_fetches_from_the_new_position() -> None:
    f = fetcher()
    f.subscription.assign([("t", 0)])
    f.sync()
    f.seek(("t", 0), 0)
    st = f.fetches[("t", 0)]
    st.add_records(fetch_reply(batch(0, b"a", b"b")))
    st.inflight = 5
    f.seek(("t", 0), 40)
    assert not st.buffer and st.inflight == 0
    assert st.fetch_offset == 40 == f.subscription.state("t", 0).position
