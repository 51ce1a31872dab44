"""A partition worker's request pipeline (``partition_pipeline`` in
appliance/partition/handlers.py): what reaches the wire for well-formed and malformed
messages, the "this worker serves X, not Y" check, an unexpected exception in a
handler, latency, and the order of answers after a produce. No sockets: the send
function records ``(peer, reply)``; messages are ``[peer identity, header, *data]`` as a
ROUTER delivers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.gate import Gate
from appliance.log.log import Log
from appliance.partition.handlers import partition_pipeline
from appliance.partition.purgatory import Purgatory
from appliance.partition.replica import Replica
from appliance.security_config import SecurityConfig
from ipc.control import RoleCommand
from ipc.protocol import LATEST, encode_request
from ipc.records import encode_batch
from ipc.server import RequestPipeline
from ipc.shm import Role
from tests.unit.wire import Wire

CLIENT = b"\x00client"
FOLLOWER = b"\x00follower"
NOW = 100.0


class Worker:
    """The pieces of a worker that serve requests: replica, purgatory, pipeline."""

    def __init__(self, tmp_path: Path, replicas: Sequence[int] = (1,)) -> None:
        self.log = Log.open(str(tmp_path / "t-0"))
        self.replica = Replica("t", 0, 1, self.log, clock=lambda: NOW)
        cmd = RoleCommand(Role.LEADER, 2, replicas=tuple(replicas), isr={n: 0 for n in replicas})
        self.replica.take_role(cmd, hw=0, now=NOW)
        self.produce_latency: list[float] = []
        self.fetch_latency: list[float] = []
        self.purgatory = Purgatory(self.replica, self.produce_latency.append, self.fetch_latency.append)
        self.wire = Wire()
        gate = Gate(SecurityConfig())
        self.pipeline: RequestPipeline = partition_pipeline(self.replica, self.purgatory, self.wire, gate)

    def send(self, api: str, cid: int, *data: bytes, peer: bytes = CLIENT, **fields: Any) -> None:
        fields = {"topic": "t", "partition": 0, **fields}
        self.pipeline.handle([peer, encode_request(api, cid, **fields), *data])

    def follower_fetch(self, cid: int, offset: int) -> None:
        self.send("fetch", cid, peer=FOLLOWER, offset=offset, replica_id=2, replica_epoch=0, leader_epoch=2)


def test_the_pipeline_is_named_after_the_partition_and_serves_the_worker_apis(tmp_path: Path) -> None:
    w = Worker(tmp_path)
    assert w.pipeline.name == "t-0"
    assert w.pipeline.apis == {"produce", "fetch", "list_offsets", "delete_records", "same_host_open"}


def test_a_produce_is_answered_and_timed(tmp_path: Path) -> None:
    w = Worker(tmp_path)
    w.send("produce", 17, encode_batch([b"a", b"b"]))
    reply = w.wire.last()
    assert (reply.id, reply.error, reply.fields) == (17, None, {"base_offsets": [0], "log_start_offset": 0})
    assert len(w.produce_latency) == 1 and w.produce_latency[0] >= 0


def test_a_fetch_is_answered_with_its_data_and_timed(tmp_path: Path) -> None:
    w = Worker(tmp_path)
    w.send("produce", 1, encode_batch([b"a"]))
    w.send("fetch", 2, offset=0)
    reply = w.wire.last()
    assert reply.id == 2 and reply.fields["high_watermark"] == 1 and len(reply.frames) == 1
    assert len(w.fetch_latency) == 1


def test_list_offsets_goes_through_the_pipeline(tmp_path: Path) -> None:
    w = Worker(tmp_path)
    w.send("produce", 1, encode_batch([b"a"]))
    w.send("list_offsets", 3, timestamp=LATEST)
    assert w.wire.last().fields == {"offset": 1, "timestamp": -1, "leader_epoch": 2}


@pytest.mark.parametrize(("topic", "partition"), [("t", 1), ("other", 0)])
def test_a_request_for_another_partition_is_refused(tmp_path: Path, topic: str, partition: int) -> None:
    w = Worker(tmp_path)
    for api, fields in [("produce", {}), ("fetch", {"offset": 0}), ("list_offsets", {"timestamp": LATEST})]:
        w.send(api, 5, encode_batch([b"x"]), topic=topic, partition=partition, **fields)
        err = w.wire.last().error
        assert err is not None and err.code == "UNKNOWN_TOPIC_OR_PARTITION"
        assert f"this worker serves t-0, not {topic}-{partition}" in err.message
    assert w.log.log_end_offset == 0


@pytest.mark.parametrize(
    ("frames", "code", "why"),
    [
        ([CLIENT], "INVALID_REQUEST", "empty message"),
        ([CLIENT, b"\xff not json"], "INVALID_REQUEST", "not JSON"),
        ([CLIENT, orjson.dumps({"api": "metadata", "id": 4})], "INVALID_REQUEST", "not served by this endpoint"),
        ([CLIENT, orjson.dumps({"api": "fetch", "id": 4, "topic": "t", "partition": 0})], "INVALID_REQUEST", "offset"),
        (
            [CLIENT, orjson.dumps({"api": "fetch", "id": 4, "topic": "t", "partition": -1, "offset": 0})],
            "INVALID_REQUEST",
            "partition",
        ),
        ([CLIENT, encode_request("produce", 4, topic="t", partition=0)], "INVALID_REQUEST", "no record batch"),
        ([CLIENT, encode_request("produce", 4, topic="t", partition=0), b"\x00" * 70], "CORRUPT_MESSAGE", "t-0"),
    ],
)
def test_malformed_messages_get_a_typed_error(tmp_path: Path, frames: list[bytes], code: str, why: str) -> None:
    w = Worker(tmp_path)
    w.pipeline.handle(frames)
    (peer, reply) = w.wire.sent[-1]
    assert peer == CLIENT and reply.error is not None
    assert reply.error.code == code and why in reply.error.message
    assert w.log.log_end_offset == 0


def test_an_unexpected_exception_is_an_error_reply_and_the_worker_goes_on(tmp_path: Path, monkeypatch: Any) -> None:
    w = Worker(tmp_path)

    def broken(timestamp: int) -> None:
        raise KeyError("index")

    monkeypatch.setattr(w.log, "offset_for_timestamp", broken)
    w.send("list_offsets", 8, timestamp=1_700_000_000_000)
    reply = w.wire.last()
    assert reply.id == 8 and reply.error is not None and reply.error.code == "UNKNOWN_SERVER_ERROR"
    assert "unexpected error in list_offsets" in reply.error.message
    w.send("produce", 9, encode_batch([b"after"]))
    assert w.wire.last().id == 9 and w.wire.last().error is None


def test_after_a_produce_the_producer_is_answered_before_the_followers_fetch(tmp_path: Path) -> None:
    w = Worker(tmp_path, replicas=(1, 2))
    w.follower_fetch(30, offset=0)  # nothing to send: parked
    assert w.wire.sent == [] and len(w.purgatory.parked) == 1
    w.send("produce", 31, encode_batch([b"a"]), acks=1)
    assert w.wire.order() == [(CLIENT, 31), (FOLLOWER, 30)]
    assert not w.purgatory.parked


def test_a_consumer_waiting_for_data_hears_before_the_producer(tmp_path: Path) -> None:
    w = Worker(tmp_path)  # one replica: a produce moves the HW at once
    w.send("fetch", 40, offset=0, max_wait_ms=500)
    w.send("produce", 41, encode_batch([b"a"]))
    assert w.wire.order() == [(CLIENT, 40), (CLIENT, 41)]


def test_acks_0_answers_nothing_but_wakes_the_followers(tmp_path: Path) -> None:
    w = Worker(tmp_path, replicas=(1, 2))
    w.follower_fetch(50, offset=0)
    w.send("produce", 51, encode_batch([b"a"]), acks=0)
    assert w.wire.order() == [(FOLLOWER, 50)] and not w.produce_latency


def test_an_acks_all_produce_is_answered_when_the_follower_catches_up(tmp_path: Path) -> None:
    w = Worker(tmp_path, replicas=(1, 2))
    w.send("produce", 60, encode_batch([b"a"]), acks="all", timeout_ms=1000)
    assert w.wire.sent == [] and len(w.purgatory.pending) == 1
    w.send("fetch", 61, peer=FOLLOWER, offset=1, replica_id=2, replica_epoch=0, leader_epoch=2, last_fetched_epoch=2)
    assert w.wire.order()[0] == (CLIENT, 60) and w.wire.sent[0][1].error is None
    assert len(w.produce_latency) == 1
