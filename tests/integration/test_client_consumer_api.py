"""Issue 19's consumer API on a real node: pause / resume, poll(max_records=), iteration
(positions move with the records handed out, so a commit inside the loop is exact),
subscribe with a rebalance listener (assigned, revoked on a normal rebalance, lost when
the membership ended behind the member's back), unsubscribe, subscription(), serializers
and deserializers (a bad record named, skipped by seeking past it), offsets_for_times
with the record's timestamp.

One node for the module (fewer start-ups on a small machine); every test uses its own
topics and groups. Waiting is polling with a deadline."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipc.client import Consumer, Producer
from ipc.client.rebalance import ConsumerRebalanceListener
from ipc.client.serde import RecordDeserializationError, SerializationError
from ipc.client.structs import OffsetAndTimestamp, TopicPartition
from tests.integration.conftest import Node, wait_until

GROUP_OPTS: dict[str, Any] = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 200}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(Path(tmp_path_factory.mktemp("consumer-api")), offsets_topic_partitions=1)
    try:
        n.start()
        yield n
    finally:
        with contextlib.suppress(Exception):
            n.status()
        n.kill_all()
        shutil.rmtree(os.path.dirname(n.status_path), ignore_errors=True)
        print(f"--- node log tail ---\n{n.log_tail()}")


def create(node: Node, topic: str, partitions: int = 1) -> None:
    with node.admin() as admin:
        admin.create_topic(topic, partitions=partitions)


def produce(node: Node, topic: str, per_partition: dict[int, int], **kw: Any) -> None:
    with Producer(node.bootstrap, **kw) as p:
        for part, n in per_partition.items():
            for i in range(n):
                p.send(topic, b"%d-%d" % (part, i), partition=part)
        p.flush(timeout=30)


def poll_until(c: Consumer, count: int, what: str, timeout: float = 30.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {len(got)} of {count}"
        got.extend(c.poll(timeout_ms=200))
    return got


def test_pause_resume_and_max_records(node: Node) -> None:
    create(node, "pz", partitions=2)
    produce(node, "pz", {0: 5, 1: 5})
    with Consumer(node.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([("pz", 0), TopicPartition("pz", 1)])
        c.pause(("pz", 0))
        assert c.paused() == {("pz", 0)}
        got = poll_until(c, 5, "partition 1")
        assert {r.partition for r in got} == {1}
        assert c.poll(timeout_ms=300) == []  # partition 0 stays paused
        assert c.position("pz", 0) == 0
        with pytest.raises(ValueError, match="not assigned"):
            c.pause(("pz", 7))
        c.resume(("pz", 0))
        assert c.paused() == set()
        first: list[Any] = []
        deadline = time.monotonic() + 30
        while not first:
            assert time.monotonic() < deadline
            first = c.poll(timeout_ms=200, max_records=2)
        assert len(first) <= 2 and {r.partition for r in first} == {0}
        rest = poll_until(c, 5 - len(first), "the rest of partition 0")
        assert [r.offset for r in first + rest] == [0, 1, 2, 3, 4]
        assert c.position(TopicPartition("pz", 0)) == 5


def test_iteration_hands_out_every_record_and_commits_exactly_what_it_saw(node: Node) -> None:
    create(node, "it", partitions=2)
    produce(node, "it", {0: 6, 1: 6})
    seen = []
    with Consumer(
        node.bootstrap,
        group_id="it-g",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=20_000,
        **GROUP_OPTS,
    ) as c:
        c.subscribe(topics=["it"])
        for r in c:
            seen.append((r.partition, r.offset))
            if len(seen) == 4:
                break
        c.commit()  # the positions after the 4 records seen, not after the whole poll
        committed = c.committed([("it", 0), ("it", 1)])
    assert sum(o or 0 for o in committed.values()) == 4
    for p in (0, 1):
        mine = [o for q, o in seen if q == p]
        if mine:
            assert committed[("it", p)] == max(mine) + 1
        else:  # a position from the reset (0), or none yet
            assert committed[("it", p)] in (0, None)

    with Consumer(
        node.bootstrap, group_id="it-g", auto_offset_reset="earliest", consumer_timeout_ms=1500, **GROUP_OPTS
    ) as c:
        c.subscribe(["it"])
        rest = [(r.partition, r.offset) for r in c]  # stops after 1.5 s without a record
    assert sorted(seen + rest) == sorted((p, o) for p in (0, 1) for o in range(6))


def member_id(c: Consumer) -> str:
    assert c._group is not None
    return c._group.member_id


class Listener(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, list[TopicPartition]]] = []

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.events.append(("assigned", assigned))

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.events.append(("revoked", revoked))

    def on_partitions_lost(self, lost: list[TopicPartition]) -> None:
        self.events.append(("lost", lost))


def test_listener_hears_assigned_revoked_and_lost_apart(node: Node) -> None:
    create(node, "rb", partitions=2)
    lis = Listener()
    revoked_by_ctor: list[Any] = []
    opts = {**GROUP_OPTS, "partition_assignment_strategy": "range"}
    with Consumer(
        node.bootstrap, group_id="rb-g", max_poll_interval_ms=3000, on_revoke=revoked_by_ctor.append, **opts
    ) as a:
        a.subscribe(pattern="rb", listener=lis)
        wait_until(lambda: a.poll(timeout_ms=100) is not None and len(a.assignment()) == 2, 30, "a's assignment")
        assert a.subscription() == {"rb"}
        assert lis.events == [("assigned", [TopicPartition("rb", 0), TopicPartition("rb", 1)])]
        assert lis.events[0][1][0].topic == "rb"

        # a normal rebalance: a second member (polling in its own thread: a join waits for
        # every member) joins; the eager assignor revokes everything first
        stop = threading.Event()

        def run_b() -> None:
            with Consumer(node.bootstrap, group_id="rb-g", **opts) as b:
                b.subscribe(["rb"])
                deadline = time.monotonic() + 60
                while not stop.is_set() and time.monotonic() < deadline:
                    b.poll(timeout_ms=100)

        thread = threading.Thread(target=run_b, daemon=True)
        thread.start()
        try:
            wait_until(lambda: a.poll(timeout_ms=100) is not None and len(a.assignment()) == 1, 30, "a giving one up")
        finally:
            stop.set()
            thread.join(30)
        kinds = [k for k, _ in lis.events]
        assert "revoked" in kinds and "lost" not in kinds
        assert revoked_by_ctor  # the constructor's callback heard it too
        wait_until(lambda: a.poll(timeout_ms=100) is not None and len(a.assignment()) == 2, 30, "a alone again")

        # a stops polling past max_poll_interval_ms: its heartbeat thread leaves for it
        lis.events.clear()
        owned = sorted(a.assignment())
        wait_until(lambda: not member_id(a), 30, "a to leave the group")
        a.poll(timeout_ms=100)  # rejoins, reporting the old partitions as lost first
        assert lis.events[0] == ("lost", [TopicPartition(*tp) for tp in owned])

        # unsubscribe: revoked, nothing assigned, no subscription
        wait_until(lambda: a.poll(timeout_ms=100) is not None and len(a.assignment()) == 2, 30, "a's assignment")
        lis.events.clear()
        a.unsubscribe()
        assert [k for k, _ in lis.events] == ["revoked"]
        assert a.assignment() == set() and a.subscription() == set() and a.poll(timeout_ms=100) == []
        a.assign([("rb", 0)])  # manual assignment is allowed after unsubscribe
        assert a.assignment() == {("rb", 0)}


def test_serializers_and_a_bad_record_skipped_by_seeking_past_it(node: Node) -> None:
    create(node, "sd")
    with Producer(node.bootstrap, key_serializer="str", value_serializer="json") as p:
        p.send("sd", {"n": 1}, key="a").result(timeout=30)
        p.send("sd", None, key="tomb").result(timeout=30)  # None is not serialized: a tombstone
        with pytest.raises(SerializationError, match="expected a str"):
            p.send("sd", {"n": 2}, key=b"bytes-key")  # the key serializer says str: nothing queued
    with Producer(node.bootstrap) as raw:
        raw.send("sd", b"not json").result(timeout=30)
        raw.send("sd", b'{"n": 3}').result(timeout=30)
    with Consumer(node.bootstrap, auto_offset_reset="earliest", key_deserializer="str", value_deserializer="json") as c:
        c.assign([("sd", 0)])
        got = poll_until(c, 2, "the two good records")
        assert [(r.key, r.value) for r in got[:2]] == [("a", {"n": 1}), ("tomb", None)]
        with pytest.raises(RecordDeserializationError) as e:
            poll_until(c, 1, "the bad record")
        assert (e.value.topic, e.value.partition, e.value.offset) == ("sd", 0, 2)
        assert c.position("sd", 0) == 2
        c.seek("sd", 0, e.value.offset + 1)
        assert [r.value for r in poll_until(c, 1, "the record after it")] == [{"n": 3}]


def test_offsets_for_times_gives_the_record_timestamp(node: Node) -> None:
    create(node, "ts")
    t0 = 1_700_000_000_000
    with Producer(node.bootstrap) as p:
        for i in range(3):
            p.send("ts", b"x", timestamp_ms=t0 + 1000 * i).result(timeout=30)
    with Consumer(node.bootstrap) as c:
        found = c.offsets_for_times({("ts", 0): t0 + 500, TopicPartition("ts", 0): t0 + 500})
        hit = found[("ts", 0)]
        assert isinstance(hit, OffsetAndTimestamp)
        assert (hit.offset, hit.timestamp) == (1, t0 + 1000) and hit == 1
        assert c.offsets_for_times({("ts", 0): t0 + 10_000}) == {("ts", 0): None}
        c.assign([("ts", 0)])
        c.seek("ts", 0, hit)  # an OffsetAndTimestamp is an offset
        assert c.position("ts", 0) == 1
