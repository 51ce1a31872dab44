"""Issue 19's consumer API, pure parts: pausing (subscription state and the fetcher's
hand-out), iteration's buffer and positions, deserializers, serializers, the rebalance
callbacks (lost apart from revoked), TopicPartition and OffsetAndTimestamp. No sockets:
the fetcher is built without a ZeroMQ context and never sends."""

from __future__ import annotations

import pickle
from typing import Any

import orjson
import pytest
import zmq

from ipc.client.fetcher import ConsumerRecord, Fetcher
from ipc.client.iteration import IterationBuffer
from ipc.client.metadata import ClusterMetadata
from ipc.client.rebalance import ConsumerRebalanceListener, RebalanceCallbacks
from ipc.client.serde import (
    RecordDeserializationError,
    SerializationError,
    deserialize,
    resolve_deserializer,
    resolve_serializer,
    serialize,
)
from ipc.client.structs import OffsetAndTimestamp, TopicPartition
from ipc.client.subscription import SubscriptionState
from ipc.client.transport import BootstrapChannel
from ipc.protocol import Reply
from ipc.records import encode_batch


def fetcher(max_poll_records: int = 500) -> Fetcher:
    subs = SubscriptionState("earliest")
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


def filled(*partitions: int, n: int = 3) -> Fetcher:
    """A fetcher assigned ("t", p) for each p, each buffering n records from offset 0."""
    f = fetcher()
    f.subscription.assign([("t", p) for p in partitions])
    f.sync()
    for p, st in zip(partitions, f.fetches.values(), strict=True):
        st.fetch_offset = 0
        st.assigned.position = 0
        values = [b"%d-%d" % (p, i) for i in range(n)]
        st.add_records(Reply(1, {"high_watermark": n}, [encode_batch(values, None, timestamp=1, base_offset=0)], None))
    return f


# ---------------------------------------------------------------------------- pause


def test_pause_and_resume_count_and_list_the_paused_partitions() -> None:
    subs = SubscriptionState("earliest")
    subs.assign([("t", 0), ("t", 1)])
    subs.pause([("t", 0), TopicPartition("t", 0)])
    assert subs.paused() == [("t", 0)] and subs.paused_count == 1
    subs.resume([("t", 0), ("t", 1), ("x", 9)])  # not paused / not assigned: ignored
    assert subs.paused() == [] and subs.paused_count == 0


def test_pausing_a_partition_not_assigned_changes_nothing() -> None:
    subs = SubscriptionState("earliest")
    subs.assign([("t", 0)])
    with pytest.raises(ValueError, match="t-5 is not assigned"):
        subs.pause([("t", 0), ("t", 5)])
    assert subs.paused_count == 0


def test_a_partition_that_leaves_the_assignment_is_no_longer_paused() -> None:
    subs = SubscriptionState("earliest")
    subs.assign([("t", 0), ("t", 1)])
    subs.pause([("t", 0), ("t", 1)])
    subs.assign([("t", 1), ("t", 2)])
    assert subs.paused() == [("t", 1)] and subs.paused_count == 1
    subs.unsubscribe()
    assert subs.assignment == {} and subs.paused_count == 0


def test_take_skips_paused_partitions_and_keeps_their_records() -> None:
    f = filled(0, 1)
    f.subscription.pause([("t", 0)])
    out = f.take() + f.take()
    assert {r.partition for r in out} == {1} and len(out) == 3
    assert f.subscription.positions()[("t", 0)] == 0
    f.subscription.resume([("t", 0)])
    assert [r.offset for r in f.take()] == [0, 1, 2]


def test_a_paused_partition_sends_no_fetch() -> None:
    f = filled(0)
    st = f.fetches[("t", 0)]
    st.buffer.clear()
    f.subscription.pause([("t", 0)])
    f.fill(now=0.0)  # would ask metadata (no node) if it tried to fetch
    assert st.inflight == 0 and st.deadline == 0.0


def test_take_honours_max_records() -> None:
    f = filled(0, n=5)
    assert [r.offset for r in f.take(2)] == [0, 1]
    assert f.subscription.positions()[("t", 0)] == 2


# ---------------------------------------------------------------------------- iteration


def test_iteration_moves_positions_one_record_at_a_time() -> None:
    f = filled(0, 1)
    it = IterationBuffer(f.subscription)
    it.fetcher = f
    polls: list[int] = []

    def poll(timeout_ms: int) -> list[ConsumerRecord]:
        polls.append(timeout_ms)
        return f.take()

    first = it.next(poll, None)
    positions = f.subscription.positions()
    assert positions[(first.topic, first.partition)] == first.offset + 1
    other = 1 - first.partition
    assert positions[("t", other)] == 0  # not handed out yet
    rest = [it.next(poll, None) for _ in range(5)]
    assert len(polls) == 1 and len({(r.partition, r.offset) for r in [first, *rest]}) == 6
    assert f.subscription.positions() == {("t", 0): 3, ("t", 1): 3}


def test_iteration_stops_after_its_timeout_without_records() -> None:
    it = IterationBuffer(SubscriptionState("earliest"))
    waits: list[int] = []

    def poll(timeout_ms: int) -> list[ConsumerRecord]:
        waits.append(timeout_ms)
        return []

    with pytest.raises(StopIteration):
        it.next(poll, 0.0)
    assert waits == [0]


def test_dropping_the_iteration_buffer_fetches_the_rest_again() -> None:
    f = filled(0, n=4)
    it = IterationBuffer(f.subscription)
    it.fetcher = f
    it.next(lambda timeout_ms: f.take(), None)
    it.drop()
    st = f.fetches[("t", 0)]
    assert not it and st.fetch_offset == 1 and st.assigned.position == 1 and not st.buffer


# ---------------------------------------------------------------------------- serde


def record(offset: int, key: bytes | None, value: bytes | None, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord("t", partition, offset, 1, key, value, [])


def test_named_serializers_and_functions() -> None:
    s = resolve_serializer("str", "value_serializer")
    assert s is not None and s("hé") == "hé".encode()
    j = resolve_serializer("json", "value_serializer")
    assert j is not None and orjson.loads(j({"a": 1})) == {"a": 1}
    assert resolve_serializer(None, "x") is None
    fn = resolve_deserializer(bytes.upper, "x")
    assert fn is bytes.upper
    with pytest.raises(ValueError, match="value_serializer='xml'"):
        resolve_serializer("xml", "value_serializer")
    with pytest.raises(ValueError):
        resolve_deserializer(42, "x")  # type: ignore[arg-type]


def test_serialize_wraps_failures_and_checks_the_result() -> None:
    s = resolve_serializer("str", "value_serializer")
    assert s is not None
    with pytest.raises(SerializationError, match="value serializer failed") as e:
        serialize(s, 42, "value", "t")
    assert isinstance(e.value.__cause__, TypeError)
    with pytest.raises(SerializationError, match="returned int"):
        serialize(lambda v: 1, "x", "value", "t")  # type: ignore[arg-type, return-value]
    assert serialize(lambda v: bytearray(b"x"), "x", "value", "t") == b"x"  # type: ignore[arg-type, return-value]


def test_deserialize_converts_keys_and_values_and_passes_none() -> None:
    recs = [record(0, b"k", b'{"a": 1}'), record(1, None, None)]
    out, err = deserialize(recs, resolve_deserializer("str", "k"), resolve_deserializer("json", "v"))
    assert err is None
    assert out[0].key == "k" and out[0].value == {"a": 1} and isinstance(out[0], ConsumerRecord)
    assert out[1].key is None and out[1].value is None


def test_deserialize_stops_at_the_first_bad_record_and_names_it() -> None:
    recs = [record(5, None, b"1"), record(6, None, b"not json"), record(7, None, b"2")]
    out, err = deserialize(recs, None, resolve_deserializer("json", "v"))
    assert [r.value for r in out] == [1]
    assert isinstance(err, RecordDeserializationError)
    assert (err.topic, err.partition, err.offset) == ("t", 0, 6) and "seek to 7" in err.message


# ---------------------------------------------------------------------------- rebalance callbacks


class Recorder(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, list[Any]]] = []

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.events.append(("assigned", assigned))

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.events.append(("revoked", revoked))


def test_lost_goes_to_on_lost_or_else_to_on_revoke() -> None:
    seen: list[tuple[str, list[Any]]] = []
    cb = RebalanceCallbacks(on_revoke=lambda t: seen.append(("revoke", t)), on_lost=lambda t: seen.append(("lost", t)))
    assert cb.lost is not None and cb.revoked is not None and cb.assigned is None
    cb.lost([("t", 0)])
    cb.revoked([("t", 1)])
    assert seen == [("lost", [("t", 0)]), ("revoke", [("t", 1)])]
    seen.clear()
    old = RebalanceCallbacks(on_revoke=lambda t: seen.append(("revoke", t)))
    assert old.lost is not None
    old.lost([("t", 0)])
    assert seen == [("revoke", [("t", 0)])]
    assert type(seen[0][1][0]) is tuple  # the constructor's callbacks keep plain pairs


def test_a_listener_hears_lost_apart_when_it_can() -> None:
    class WithLost(Recorder):
        def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
            self.events.append(("lost", lost))

    with_lost, base = WithLost(), Recorder()
    RebalanceCallbacks(listener=with_lost).lost([("t", 0)])  # type: ignore[misc]
    RebalanceCallbacks(listener=base).lost([("t", 0)])  # type: ignore[misc]
    assert with_lost.events == [("lost", [TopicPartition("t", 0)])]
    assert base.events == [("revoked", [TopicPartition("t", 0)])]  # Kafka's default
    assert base.events[0][1][0].topic == "t"

    class Duck:  # no base class and no on_partitions_lost
        def __init__(self) -> None:
            self.got: list[Any] = []

        def on_partitions_assigned(self, tps: list[Any]) -> None:
            self.got.append(("a", tps))

        def on_partitions_revoked(self, tps: list[Any]) -> None:
            self.got.append(("r", tps))

    duck = Duck()
    cb = RebalanceCallbacks(listener=duck)
    assert cb.assigned is not None and cb.lost is not None
    cb.assigned([("t", 1)])
    cb.lost([("t", 1)])
    assert duck.got == [("a", [("t", 1)]), ("r", [("t", 1)])]


def test_a_listener_without_the_methods_is_refused() -> None:
    with pytest.raises(TypeError, match="on_partitions_assigned"):
        RebalanceCallbacks(listener=object())


def test_nobody_listening_means_no_calls() -> None:
    cb = RebalanceCallbacks()
    assert (cb.assigned, cb.revoked, cb.lost) == (None, None, None)


# ---------------------------------------------------------------------------- structs


def test_topic_partition_is_the_pair() -> None:
    tp = TopicPartition("t", 3)
    assert tp == ("t", 3) and hash(tp) == hash(("t", 3)) and {("t", 3): 1}[tp] == 1
    assert (tp.topic, tp.partition) == ("t", 3)


def test_offset_and_timestamp_is_its_offset() -> None:
    o = OffsetAndTimestamp(7, 1_700_000_000_000)
    assert o == 7 and o.offset == 7 and o.timestamp == 1_700_000_000_000 and str(o) == "7"
    assert orjson.dumps({"o": o}) == b'{"o":7}'
    back = pickle.loads(pickle.dumps(o))
    assert back == 7 and back.timestamp == o.timestamp
