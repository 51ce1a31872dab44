"""The partition's request handlers (appliance/partition/handlers.py), without sockets.

Each test builds a leader replica of ``t-0`` on node 1 over a real ``Log`` in
``tmp_path``, its purgatory, and requests parsed from real headers whose ``Responder``
sends into a ``Wire`` that records every reply. The handlers are called directly: a
returned ``Response`` is what the pipeline would send; an error is raised; a request
left in the purgatory is answered later through its responder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.log.config import LogConfig
from appliance.log.log import Log
from appliance.partition import handlers
from appliance.partition.purgatory import Purgatory
from appliance.partition.replica import Replica
from ipc.control import RoleCommand
from ipc.errors import (
    CorruptRecordError,
    FencedLeaderEpochError,
    InvalidRequestError,
    MessageTooLargeError,
    NotEnoughReplicasError,
    NotLeaderError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    StorageError,
    UnknownLeaderEpochError,
)
from ipc.protocol import (
    EARLIEST,
    LATEST,
    WORKER_APIS,
    Request,
    Responder,
    Response,
    encode_request,
    parse_request,
)
from ipc.records import decode_batches, encode_batch
from ipc.shm import Role
from tests.unit.wire import Wire

PEER = b"\x00client"
T0_MS = 1_700_000_000_000
EPOCH = 3


class Leader:
    """A leader replica with its purgatory, a clock the test moves, and a wire."""

    def __init__(self, tmp_path: Path, replicas: Sequence[int] = (1,), config: LogConfig | None = None) -> None:
        self.now = 100.0
        self.log = Log.open(str(tmp_path / "t-0"), config or LogConfig())
        self.replica = Replica("t", 0, 1, self.log, clock=lambda: self.now)
        self.replica.node_epoch = 10
        cmd = RoleCommand(
            Role.LEADER, EPOCH, replicas=tuple(replicas), isr={n: n * 10 for n in replicas}, node_epoch=10
        )
        self.replica.take_role(cmd, hw=0, now=self.now)
        self.produce_latency: list[float] = []
        self.fetch_latency: list[float] = []
        self.purgatory = Purgatory(self.replica, self.produce_latency.append, self.fetch_latency.append)
        self.wire = Wire()

    def request(self, api: str, cid: int = 7, frames: Sequence[bytes] = (), **fields: Any) -> Request:
        req = handlers_request(api, cid, frames, **fields)
        req.responder = Responder(self.wire, PEER, cid, api)
        return req

    def produce(self, *batches: bytes, cid: int = 7, **fields: Any) -> Response | None:
        req = self.request("produce", cid, batches, **fields)
        return handlers.produce(self.replica, self.purgatory, req, time.perf_counter())

    def fetch(self, offset: int, cid: int = 8, **fields: Any) -> Response | None:
        req = self.request("fetch", cid, offset=offset, **fields)
        return handlers.fetch(self.replica, self.purgatory, req, time.perf_counter())

    def list_offsets(self, timestamp: int) -> Response:
        return handlers.list_offsets(self.replica, self.request("list_offsets", timestamp=timestamp))


def handlers_request(api: str, cid: int, frames: Sequence[bytes], **fields: Any) -> Request:
    return parse_request([encode_request(api, cid, topic="t", partition=0, **fields), *frames], WORKER_APIS)


def batch(*values: bytes, ts: int = T0_MS, **kw: Any) -> bytes:
    return encode_batch(list(values), timestamp=ts, **kw)


def values_in(data: bytes) -> list[bytes | None]:
    return [v for b in decode_batches(data) for v in b.values]


# ---- produce ------------------------------------------------------------------------------


def test_acks_1_appends_and_answers_with_the_base_offsets(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    first = p.produce(batch(b"a", b"b"), acks=1)
    second = p.produce(batch(b"c"), batch(b"d", b"e"), acks=1)
    assert first is not None and second is not None
    assert first.fields == {"base_offsets": [0], "log_start_offset": 0}
    assert second.fields == {"base_offsets": [2, 3], "log_start_offset": 0}
    assert p.log.log_end_offset == 5 and p.replica.high_watermark == 5  # one replica: committed at once
    assert values_in(p.log.read(0)) == [b"a", b"b", b"c", b"d", b"e"]
    assert p.replica.records_in == 5 and p.replica.bytes_in > 0
    assert p.wire.sent == []  # the response is the pipeline's to send


def test_appended_batches_carry_the_offset_and_leader_epoch(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    p.produce(batch(b"x"))
    p.produce(batch(b"y"))
    (first, second) = decode_batches(p.log.read(0))
    assert (first.header.base_offset, second.header.base_offset) == (0, 1)
    assert first.header.leader_epoch == second.header.leader_epoch == EPOCH


def test_acks_0_appends_and_answers_nothing(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    assert p.produce(batch(b"a"), acks=0) is None
    assert p.log.log_end_offset == 1 and p.wire.sent == [] and not p.purgatory.pending


def test_acks_all_on_a_single_replica_is_committed_at_once(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    response = p.produce(batch(b"a"), acks="all")
    assert response is not None and response.fields["base_offsets"] == [0]


def test_acks_all_waits_for_the_followers_fetch(tmp_path: Path) -> None:
    p = Leader(tmp_path, replicas=(1, 2))
    assert p.produce(batch(b"a", b"b"), acks=-1, cid=21) is None
    assert len(p.purgatory.pending) == 1 and p.wire.sent == []
    # the follower fetches from offset 0: it has nothing yet, the HW stays
    assert p.fetch(0, replica_id=2, replica_epoch=20, leader_epoch=EPOCH) is not None
    assert p.wire.sent == [] and p.replica.high_watermark == 0
    # its next fetch, at the leader's LEO, moves the HW past the produce: answered
    p.fetch(2, cid=9, replica_id=2, replica_epoch=20, leader_epoch=EPOCH, last_fetched_epoch=EPOCH, max_wait_ms=0)
    (reply,) = p.wire.replies()
    assert reply.id == 21 and reply.error is None and reply.fields["base_offsets"] == [0]
    assert p.replica.high_watermark == 2 and p.produce_latency and not p.purgatory.pending


def test_acks_1_does_not_wait_for_the_followers(tmp_path: Path) -> None:
    p = Leader(tmp_path, replicas=(1, 2))
    response = p.produce(batch(b"a"), acks=1)
    assert response is not None and response.fields["base_offsets"] == [0]
    assert p.replica.high_watermark == 0  # not committed yet


def test_only_the_leader_serves(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    p.replica.leading = None
    p.replica.take_role(RoleCommand(Role.FOLLOWER, EPOCH + 1, "tcp://leader:1"), hw=0, now=p.now)
    with pytest.raises(NotLeaderError, match="not the leader"):
        p.produce(batch(b"a"))
    with pytest.raises(NotLeaderError):
        p.fetch(0)
    with pytest.raises(NotLeaderError):
        p.list_offsets(EARLIEST)
    assert p.log.log_end_offset == 0


def test_min_insync_replicas_refuses_acks_all_before_writing(tmp_path: Path) -> None:
    p = Leader(tmp_path, replicas=(1, 2), config=LogConfig(min_insync_replicas=2))
    lead = p.replica.leading
    assert lead is not None
    lead.isr = {1: 10}  # the follower left the ISR
    with pytest.raises(NotEnoughReplicasError, match="min.insync.replicas=2"):
        p.produce(batch(b"a"), acks="all")
    assert p.log.log_end_offset == 0
    assert p.produce(batch(b"a"), acks=1) is not None  # acks=1 does not need them


def test_a_produce_without_a_batch_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="no record batch"):
        Leader(tmp_path).produce()


def test_a_corrupt_batch_fails_the_whole_request(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    bad = bytearray(batch(b"bad"))
    bad[-1] ^= 0xFF  # the CRC no longer matches
    with pytest.raises(CorruptRecordError, match="t-0: CRC mismatch"):
        p.produce(batch(b"good"), bytes(bad))
    assert p.log.log_end_offset == 0  # nothing of it written


def test_a_batch_over_max_message_bytes_fails_the_whole_request(tmp_path: Path) -> None:
    p = Leader(tmp_path, config=LogConfig(max_message_bytes=200))
    with pytest.raises(MessageTooLargeError, match="max.message.bytes=200"):
        p.produce(batch(b"ok"), batch(b"x" * 300))
    assert p.log.log_end_offset == 0


def test_a_retried_batch_of_an_idempotent_producer_is_answered_with_its_offset(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    idem = {"producer_id": 5, "producer_epoch": 0}
    first = batch(b"a", b"b", base_sequence=0, **idem)
    p.produce(batch(b"other"))
    assert p.produce(first) is not None
    again = p.produce(first)  # the producer did not hear the answer and sent it again
    assert again is not None and again.fields["base_offsets"] == [1]
    assert p.log.log_end_offset == 3  # written once
    nxt = p.produce(batch(b"c", base_sequence=2, **idem))
    assert nxt is not None and nxt.fields["base_offsets"] == [3]


def test_an_out_of_order_sequence_writes_nothing(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    idem = {"producer_id": 5, "producer_epoch": 0}
    p.produce(batch(b"a", base_sequence=0, **idem))
    with pytest.raises(OutOfOrderSequenceError, match="expected sequence 2, got 5"):
        p.produce(batch(b"ok", base_sequence=1, **idem), batch(b"gap", base_sequence=5, **idem))
    assert p.log.log_end_offset == 1


def test_a_failed_write_takes_back_the_requests_earlier_batches(tmp_path: Path, monkeypatch: Any) -> None:
    p = Leader(tmp_path)
    p.produce(batch(b"before"))
    append = p.log.append
    calls = []

    def failing(buf: Any, leader_epoch: int = -1, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return append(buf, leader_epoch, **kw)

    monkeypatch.setattr(p.log, "append", failing)
    idem = {"producer_id": 9, "producer_epoch": 0}
    with pytest.raises(StorageError, match="cannot append"):
        p.produce(batch(b"one", base_sequence=0, **idem), batch(b"two", base_sequence=1, **idem))
    assert p.log.log_end_offset == 1  # the first batch of the request is gone again
    assert p.replica.producers.get(9) is None  # and so is its producer state


# ---- fetch --------------------------------------------------------------------------------


def test_a_fetch_with_data_is_answered_at_once(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    p.produce(batch(b"a", b"b"))
    response = p.fetch(1)
    assert response is not None
    assert response.fields == {"high_watermark": 2, "log_start_offset": 0, "log_end_offset": 2}
    (data,) = response.frames
    assert values_in(data) == [b"a", b"b"]  # whole batches
    assert p.replica.records_out == 2 and p.replica.bytes_out == len(data)


def test_a_fetch_outside_the_log_is_out_of_range(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    p.produce(batch(b"a"))
    with pytest.raises(OffsetOutOfRangeError, match="outside the log"):
        p.fetch(5)


def test_a_fetch_below_min_bytes_parks_until_data_arrives(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    assert p.fetch(0, cid=31, max_wait_ms=500, min_bytes=1) is None
    (parked,) = p.purgatory.parked
    assert parked.deadline == pytest.approx(p.now + 0.5) and not parked.replica
    assert p.wire.sent == []
    response = p.produce(batch(b"new"), cid=32)  # moves the HW: the fetch is answered first
    (reply,) = p.wire.replies()
    assert reply.id == 31 and values_in(reply.frames[0]) == [b"new"]
    assert reply.fields["high_watermark"] == 1 and p.fetch_latency
    assert response is not None and not p.purgatory.parked


def test_a_fetch_with_max_wait_0_is_answered_empty(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    response = p.fetch(0, max_wait_ms=0)
    assert response is not None and response.frames == () and response.fields["high_watermark"] == 0


def test_a_consumer_reads_up_to_the_hw_a_follower_up_to_the_leo(tmp_path: Path) -> None:
    p = Leader(tmp_path, replicas=(1, 2))
    p.produce(batch(b"a"))  # acks=1: written, not committed
    consumer = p.fetch(0, max_wait_ms=0)
    assert consumer is not None and consumer.frames == ()
    follower = p.fetch(0, replica_id=2, replica_epoch=20, leader_epoch=EPOCH)
    assert follower is not None and values_in(follower.frames[0]) == [b"a"]


def test_a_followers_fetch_with_an_old_or_new_leader_epoch_is_refused(tmp_path: Path) -> None:
    p = Leader(tmp_path, replicas=(1, 2))
    with pytest.raises(FencedLeaderEpochError):
        p.fetch(0, replica_id=2, replica_epoch=20, leader_epoch=EPOCH - 1)
    with pytest.raises(UnknownLeaderEpochError):
        p.fetch(0, replica_id=2, replica_epoch=20, leader_epoch=EPOCH + 1)


def test_a_diverging_follower_is_told_where_to_truncate(tmp_path: Path) -> None:
    p = Leader(tmp_path, replicas=(1, 2))
    p.produce(batch(b"a", b"b"))
    # the follower holds epoch 2 records up to offset 5 that this leader never had
    assert p.fetch(5, cid=41, replica_id=2, replica_epoch=20, leader_epoch=EPOCH, last_fetched_epoch=2) is None
    (reply,) = p.wire.replies()  # answered through the responder, not timed
    assert reply.id == 41 and reply.frames == []
    assert reply.fields["diverging"] == {"epoch": -1, "end_offset": 0}
    assert not p.fetch_latency


# ---- list_offsets ---------------------------------------------------------------------------


def test_list_offsets_earliest_latest_and_by_time(tmp_path: Path) -> None:
    p = Leader(tmp_path)
    p.produce(encode_batch([b"a", b"b"], timestamp=T0_MS, timestamp_deltas=[0, 10]))
    p.produce(batch(b"c", ts=T0_MS + 20))
    assert p.list_offsets(EARLIEST).fields == {"offset": 0, "timestamp": -1, "leader_epoch": EPOCH}
    assert p.list_offsets(LATEST).fields["offset"] == 3
    assert p.list_offsets(T0_MS + 5).fields == {"offset": 1, "timestamp": T0_MS + 10, "leader_epoch": EPOCH}
    assert p.list_offsets(T0_MS + 20).fields["offset"] == 2
    assert p.list_offsets(T0_MS + 21).fields == {"offset": -1, "timestamp": -1, "leader_epoch": EPOCH}


def test_list_offsets_by_time_ignores_records_above_the_hw(tmp_path: Path) -> None:
    p = Leader(tmp_path, replicas=(1, 2))
    p.produce(batch(b"a", ts=T0_MS))  # acks=1, not committed
    assert p.list_offsets(T0_MS).fields["offset"] == -1
    assert p.list_offsets(LATEST).fields["offset"] == 0
