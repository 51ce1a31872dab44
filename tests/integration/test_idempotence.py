"""The idempotent producer on the wire, against a real node: a batch re-sent with the
same producer id and sequence is written once, and the answers say so."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import zmq

from ipc.client import Admin, Consumer
from ipc.client.samehost import SameHostChannel
from ipc.client.transport import Channel
from ipc.errors import OutOfOrderSequenceError
from ipc.records import encode_batch
from tests.integration.conftest import Node, wait_until


def leader_endpoint(node: Node) -> str | None:
    with Admin(node.bootstrap) as admin:
        md = admin._call("metadata", None, topics=["idem"])
    endpoint: str | None = md["topics"][0]["partitions"][0]["endpoint"]
    return endpoint


Link = Channel | SameHostChannel


def connect(endpoint: str, same_host: bool) -> Link:
    """A TCP channel to the worker, or a same-host session with it (issue 18)."""
    ch = Channel(zmq.Context.instance(), endpoint)
    if not same_host:
        return ch
    try:
        reply = ch.request("same_host_open", 10, topic="idem", partition=0, pid=os.getpid())
        reply.raise_for_error()
    finally:
        ch.close()
    return SameHostChannel(zmq.Context.instance(), endpoint, reply.fields)


@pytest.fixture(params=[False, True], ids=["tcp", "same_host"])
def same_host(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def leader(node: Node, same_host: bool) -> Iterator[Link]:
    with Admin(node.bootstrap) as admin:
        admin.create_topic("idem", partitions=1)
    ch = connect(wait_until(lambda: leader_endpoint(node), 30, "idem-0 serving"), same_host)
    try:
        yield ch
    finally:
        ch.close()


def produce(ch: Link, values: list[bytes], pid: int, seq: int) -> list[int]:
    # stamped now, as a producer's batch is: a producer's state expires by its batches'
    # record time (producer.id.expiration.ms, as in Kafka), and time 0 is 56 years idle
    batch = encode_batch(
        values, producer_id=pid, producer_epoch=0, base_sequence=seq, timestamp=int(time.time() * 1000)
    )
    reply = ch.request("produce", 10, frames=[batch], topic="idem", partition=0, acks="all")
    reply.raise_for_error()
    offsets: list[int] = reply.fields["base_offsets"]
    return offsets


def test_a_retried_batch_is_written_once(node: Node, leader: Link) -> None:
    with Admin(node.bootstrap) as admin:
        pid = admin._call("init_producer_id")["producer_id"]
    assert produce(leader, [b"a", b"b"], pid, 0) == [0]
    assert produce(leader, [b"c"], pid, 2) == [2]
    # a retry of either batch (its reply was lost) answers the original offset, writes nothing
    assert produce(leader, [b"a", b"b"], pid, 0) == [0]
    assert produce(leader, [b"c"], pid, 2) == [2]
    # a gap in the sequence is refused, nothing written
    with pytest.raises(OutOfOrderSequenceError, match="expected"):
        produce(leader, [b"x"], pid, 7)
    # another producer id is independent; a batch without a producer id is never deduplicated
    other = pid + 1
    assert produce(leader, [b"d"], other, 0) == [3]
    assert produce(leader, [b"e"], -1, -1) == [4]
    assert produce(leader, [b"e"], -1, -1) == [5]
    with Consumer(node.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([("idem", 0)])
        got: list[bytes] = []
        for _ in range(50):
            got.extend(r.value for r in c.poll(200) if r.value is not None)
            if len(got) >= 6:
                break
    assert got == [b"a", b"b", b"c", b"d", b"e", b"e"]


def test_duplicates_are_still_recognised_after_a_restart(node: Node, leader: Link, same_host: bool) -> None:
    with Admin(node.bootstrap) as admin:
        pid = admin._call("init_producer_id")["producer_id"]
    assert produce(leader, [b"a"], pid, 0) == [0]
    leader.close()
    assert node.stop() == 0
    node.start()
    ch = connect(wait_until(lambda: leader_endpoint(node), 30, "idem-0 serving again"), same_host)
    try:  # the worker rebuilt its producer state from the log's batch headers
        assert produce(ch, [b"a"], pid, 0) == [0]
        assert produce(ch, [b"b"], pid, 1) == [1]
    finally:
        ch.close()
