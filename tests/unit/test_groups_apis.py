"""The consumer-group APIs (appliance/groups/apis.py) and their coordinator, driven
through the front endpoint's request pipeline by a fake node (tests/unit/fake_node.py)
with fake channels to the ``__consumer_offsets`` workers: no socket, no process.

Placement and loading (COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS,
NOT_COORDINATOR), join / sync / heartbeat / leave with a parked join, commits answered
when ``__consumer_offsets`` acknowledges them, the mapping of the worker's write errors
to what a group's client must see, commit timeouts, delete_group and describe_group.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.front import FrontApi
from appliance.groups.offsets import OFFSETS_TOPIC, WRITE_TIMEOUT_S
from ipc.errors import (
    CorruptRecordError,
    FencedLeaderEpochError,
    LeaderNotAvailableError,
    NotEnoughReplicasError,
    NotLeaderError,
    SluiceError,
    StorageError,
    UnknownLeaderEpochError,
    UnknownTopicOrPartitionError,
)
from ipc.protocol import Reply
from ipc.records import decode_batches
from ipc.shm import WorkerStatus
from tests.unit.fake_node import FakeNode, message

_ids = itertools.count(1)


@dataclasses.dataclass
class Sent:
    cid: int
    api: str
    fields: dict[str, Any]
    frames: list[Any]


class FakeChannel:
    """Stands for a DEALER to one worker: records requests, delivers queued replies."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sock = object()  # what the node's poller would report ready
        self.sent: list[Sent] = []
        self.inbox: list[Reply] = []

    def send(self, api: str, frames: Any = (), **fields: Any) -> int:
        cid = next(_ids)
        self.sent.append(Sent(cid, api, fields, list(frames)))
        return cid

    def replies(self) -> Iterator[Reply]:
        inbox, self.inbox = self.inbox, []
        return iter(inbox)


class FakePool:
    """Stands for the offset store's ChannelPool."""

    def __init__(self) -> None:
        self.channels: dict[str, FakeChannel] = {}
        self.resets: list[FakeChannel] = []

    def get(self, endpoint: str) -> FakeChannel:
        return self.channels.setdefault(endpoint, FakeChannel(endpoint))

    def reset(self, ch: FakeChannel) -> None:
        self.resets.append(ch)

    def __iter__(self) -> Iterator[FakeChannel]:
        return iter(list(self.channels.values()))

    def requests(self, api: str, topic: str = OFFSETS_TOPIC) -> list[tuple[FakeChannel, Sent]]:
        return [(ch, s) for ch in self for s in ch.sent if s.api == api and s.fields.get("topic") == topic]


class Cluster:
    """One node with its front endpoint, and the fake workers of __consumer_offsets."""

    def __init__(self, tmp_path: Path) -> None:
        self.node = FakeNode(tmp_path, max_partitions=32)
        self.api = FrontApi(self.node)
        self.pool = FakePool()
        self.api.groups.store.channels = self.pool  # type: ignore[assignment]
        self.answered: set[int] = set()

    def call(self, name: str, **fields: Any) -> tuple[int, Reply | None]:
        cid = next(_ids)
        self.api.serve(message(name, cid, **fields))
        return cid, self.node.front.replies().get(cid)

    def answer(self, name: str, **fields: Any) -> Reply:
        _, reply = self.call(name, **fields)
        assert reply is not None, f"{name} was not answered at once"
        return reply

    def ok(self, name: str, **fields: Any) -> dict[str, Any]:
        reply = self.answer(name, **fields)
        assert reply.error is None, reply.error
        return reply.fields

    def reply(self, cid: int) -> Reply | None:
        return self.node.front.replies().get(cid)

    def worker_answers(self, ch: FakeChannel, sent: Sent, error: SluiceError | None = None, **fields: Any) -> None:
        """The worker behind ``ch`` answers ``sent``; the node's poller reports the socket."""
        assert sent.cid not in self.answered
        self.answered.add(sent.cid)
        ch.inbox.append(Reply(sent.cid, fields, [], error))
        self.api.on_events({ch.sock: 1})

    def start_offsets(self) -> None:
        """__consumer_offsets created, and its partitions led and served here (not loaded)."""
        self.api.tick(self.node.now)
        for p in range(self.node.config.offsets_topic_partitions):
            self.node.serve(OFFSETS_TOPIC, p)

    def load_offsets(self) -> None:
        """Every partition of __consumer_offsets read to its (empty) end."""
        self.start_offsets()
        self.api.tick(self.node.now)  # the store asks each leader worker for its records
        loads = self.pool.requests("fetch")
        assert len(loads) == self.node.config.offsets_topic_partitions
        for ch, sent in loads:
            self.worker_answers(ch, sent, high_watermark=0, log_end_offset=0, log_start_offset=0)

    def commits(self) -> list[tuple[FakeChannel, Sent]]:
        """The writes not answered yet, but for those of group metadata records alone."""
        return [
            (ch, s)
            for ch, s in self.pool.requests("produce")
            if s.cid not in self.answered and not is_metadata_write(s)
        ]

    def metadata_writes(self) -> list[tuple[FakeChannel, Sent]]:
        """The writes of a group metadata record alone, not answered yet."""
        return [
            (ch, s) for ch, s in self.pool.requests("produce") if s.cid not in self.answered and is_metadata_write(s)
        ]

    def join(self, group: str = "g", member_id: str = "", **fields: Any) -> tuple[int, Reply | None]:
        return self.call("join_group", group=group, member_id=member_id, topics=["t"], **fields)


def written(sent: Sent) -> list[tuple[Any, Any]]:
    """The (key, value) of each record a write carries, decoded."""
    (batch,) = decode_batches(bytes(sent.frames[0]))
    return [
        (orjson.loads(k), None if v is None else orjson.loads(v)) for k, v in zip(batch.keys, batch.values, strict=True)
    ]


def is_metadata_write(sent: Sent) -> bool:
    return all(len(k) == 1 for k, _ in written(sent))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.node.close()


@pytest.fixture
def loaded(cluster: Cluster) -> Cluster:
    cluster.load_offsets()
    return cluster


def code(reply: Reply | None) -> str:
    assert reply is not None and reply.error is not None, reply
    return reply.error.code


# =========================================================================== placement


def test_find_coordinator_creates_the_offsets_topic_on_demand(cluster: Cluster) -> None:
    _, reply = cluster.call("find_coordinator", group="g")
    assert code(reply) == "COORDINATOR_NOT_AVAILABLE" and "being created" in reply.error.message  # type: ignore[union-attr]
    info = cluster.node.coordinator.topics()[OFFSETS_TOPIC]
    assert len(info.partitions) == cluster.node.config.offsets_topic_partitions
    assert info.config["cleanup.policy"] == "compact" and info.config["fsync"] == "always"
    assert cluster.ok("find_coordinator", group="g") == {"node_id": 0, "endpoint": cluster.node.config.advertised}


def test_group_apis_wait_for_the_offsets_to_load(cluster: Cluster) -> None:
    cluster.start_offsets()
    assert code(cluster.join()[1]) == "COORDINATOR_LOAD_IN_PROGRESS"
    assert code(cluster.call("offset_fetch", group="g")[1]) == "COORDINATOR_LOAD_IN_PROGRESS"
    assert cluster.ok("list_groups") == {"groups": []}  # any node answers it


def test_a_cut_off_node_goes_on_coordinating_but_hands_out_no_unwritten_generation(loaded: Cluster) -> None:
    """Cut off from ZooKeeper, the node coordinates the groups of the partitions it led
    last (as its leaders go on leading); a new generation's assignment is handed out only
    once __consumer_offsets acknowledged its record, which a replaced coordinator's
    partition cannot (its followers left it): the sync fails with the write."""
    loaded.node.is_cut_off = True
    a = loaded.ok("join_group", group="g", member_id="", topics=["t"])
    cid, parked = loaded.call("sync_group", group="g", member_id=a["member_id"], generation=1)
    assert parked is None  # waits for the generation's record
    ((ch, record),) = loaded.metadata_writes()
    loaded.worker_answers(ch, record, error=NotEnoughReplicasError("the followers left"))
    assert code(loaded.reply(cid)) == "COORDINATOR_NOT_AVAILABLE"
    loaded.node.now += 1.0  # PERSIST_RETRY_S: written again
    loaded.api.tick(loaded.node.now)
    cid, parked = loaded.call("sync_group", group="g", member_id=a["member_id"], generation=1)
    assert parked is None
    ((ch, record),) = loaded.metadata_writes()
    loaded.worker_answers(ch, record)
    reply = loaded.reply(cid)
    assert reply is not None and reply.error is None and reply.fields["generation"] == 1
    assert loaded.ok("heartbeat", group="g", member_id=a["member_id"], generation=1) == {}


def move_group(c: Cluster, group: str, leader: int) -> None:
    """The controller moves the leadership of the group's __consumer_offsets partition."""
    p = c.api.groups.store.partition_for(group)
    st = c.node.coordinator.topics()[OFFSETS_TOPIC].partitions[p]
    c.node.coordinator.set_partition_state(
        OFFSETS_TOPIC, p, dataclasses.replace(st, leader=leader, leader_epoch=st.leader_epoch + 1)
    )


def test_a_parked_join_is_told_not_coordinator_when_the_group_moves(loaded: Cluster) -> None:
    first = loaded.ok("join_group", group="g", member_id="", topics=["t"])
    cid, parked = loaded.join()  # a second member: waits for the first to rejoin
    assert parked is None
    move_group(loaded, "g", leader=7)
    loaded.api.tick(loaded.node.now)
    assert code(loaded.reply(cid)) == "NOT_COORDINATOR"
    _, reply = loaded.join(member_id=first["member_id"])
    assert code(reply) == "NOT_COORDINATOR" and "node 7 leads" in reply.error.message  # type: ignore[union-attr]


# =========================================================================== membership


def test_join_sync_heartbeat_leave(loaded: Cluster) -> None:
    a = loaded.ok("join_group", group="g", member_id="", client_id="a", topics=["t"])
    assert a["generation"] == 1 and a["leader"] == a["member_id"] and a["members"] == [a["member_id"]]
    cid, parked = loaded.call("sync_group", group="g", member_id=a["member_id"], generation=1)
    assert parked is None  # answered once the generation's group metadata record is written
    ((ch, record),) = loaded.metadata_writes()
    loaded.worker_answers(ch, record)
    assert loaded.reply(cid).fields["generation"] == 1  # type: ignore[union-attr]
    assert loaded.ok("heartbeat", group="g", member_id=a["member_id"], generation=1) == {}

    cid_b, parked = loaded.join(client_id="b")
    assert parked is None  # waits for a to rejoin
    _, hb = loaded.call("heartbeat", group="g", member_id=a["member_id"], generation=1)
    assert code(hb) == "REBALANCE_IN_PROGRESS"
    cid_a, ra = loaded.join(member_id=a["member_id"], client_id="a")  # completes the rebalance
    rb = loaded.reply(cid_b)  # the parked join is answered with it
    assert ra is not None and rb is not None and ra.error is None and rb.error is None
    assert ra.fields["generation"] == rb.fields["generation"] == 2

    assert loaded.ok("leave_group", group="g", member_id=rb.fields["member_id"]) == {}
    _, gone = loaded.call("heartbeat", group="g", member_id=rb.fields["member_id"], generation=2)
    assert code(gone) == "UNKNOWN_MEMBER_ID"
    _, stale = loaded.call("sync_group", group="g", member_id=a["member_id"], generation=1)
    assert code(stale) == "REBALANCE_IN_PROGRESS"  # b left: a must rejoin


def test_a_member_of_a_group_this_node_does_not_know_must_rejoin(loaded: Cluster) -> None:
    _, reply = loaded.call("heartbeat", group="g", member_id="m-1", generation=3)
    assert code(reply) == "UNKNOWN_MEMBER_ID"
    _, reply = loaded.call("describe_group", group="g")
    assert code(reply) == "GROUP_ID_NOT_FOUND"


# =========================================================================== commits


def commit(c: Cluster, group: str = "g", offset: int = 5, **fields: Any) -> int:
    cid, reply = c.call(
        "offset_commit", group=group, offsets=[{"topic": "t", "partition": 0, "offset": offset}], **fields
    )
    assert reply is None, reply
    return cid


def test_a_commit_is_answered_once_the_offsets_topic_acknowledges_it(loaded: Cluster) -> None:
    cid = commit(loaded)
    ((ch, produce),) = loaded.commits()
    assert produce.fields["partition"] == loaded.api.groups.store.partition_for("g")
    assert produce.fields["acks"] == "all" and len(produce.frames) == 1
    assert loaded.reply(cid) is None
    loaded.worker_answers(ch, produce, base_offset=0)
    assert loaded.reply(cid).fields == {"committed": 1}  # type: ignore[union-attr]
    (fetched,) = loaded.ok("offset_fetch", group="g")["offsets"]
    assert (fetched["topic"], fetched["partition"], fetched["offset"]) == ("t", 0, 5)
    assert loaded.ok("list_groups") == {"groups": [{"group": "g", "state": "empty"}]}
    (summary,) = [s for s in loaded.api.group_summaries() if s.group == "g"]
    assert summary.committed == {("t", 0): 5} and summary.members == 0


@pytest.mark.parametrize(
    ("worker_error", "client_code"),
    [
        (NotLeaderError("moved"), "NOT_COORDINATOR"),
        (FencedLeaderEpochError("old"), "NOT_COORDINATOR"),
        (UnknownLeaderEpochError("deposed"), "NOT_COORDINATOR"),
        (StorageError("disk"), "NOT_COORDINATOR"),
        (NotEnoughReplicasError("isr"), "COORDINATOR_NOT_AVAILABLE"),
        (UnknownTopicOrPartitionError("gone"), "COORDINATOR_NOT_AVAILABLE"),
        (LeaderNotAvailableError("starting"), "COORDINATOR_NOT_AVAILABLE"),
        (CorruptRecordError("crc"), "CORRUPT_MESSAGE"),  # anything else as it came
    ],
)
def test_write_errors_are_mapped_for_the_groups_client(
    loaded: Cluster, worker_error: SluiceError, client_code: str
) -> None:
    cid = commit(loaded)
    ((ch, produce),) = loaded.commits()
    loaded.worker_answers(ch, produce, error=worker_error)
    assert code(loaded.reply(cid)) == client_code
    assert loaded.ok("offset_fetch", group="g")["offsets"] == []  # nothing applied


def test_an_unacknowledged_commit_times_out(loaded: Cluster) -> None:
    cid = commit(loaded)
    ((ch, _),) = loaded.commits()
    loaded.node.now += WRITE_TIMEOUT_S - 0.1
    loaded.api.tick(loaded.node.now)
    assert loaded.reply(cid) is None
    loaded.node.now += 0.2
    loaded.api.tick(loaded.node.now)
    assert code(loaded.reply(cid)) == "REQUEST_TIMED_OUT"
    assert loaded.pool.resets == [ch]  # the channel starts afresh


def test_commit_fencing(loaded: Cluster) -> None:
    _, reply = loaded.call("offset_commit", group="g", member_id="m-1", generation=1, offsets=[])
    assert code(reply) == "UNKNOWN_MEMBER_ID"  # no such group here: rejoin
    a = loaded.ok("join_group", group="g", member_id="", topics=["t"])
    _, reply = loaded.call("offset_commit", group="g", offsets=[])
    assert code(reply) == "NON_EMPTY_GROUP"  # from outside while it has members
    _, reply = loaded.call("offset_commit", group="g", member_id=a["member_id"], generation=7, offsets=[])
    assert code(reply) == "ILLEGAL_GENERATION"
    # no offsets: answered at once, nothing written
    assert loaded.ok("offset_commit", group="g", member_id=a["member_id"], generation=1, offsets=[]) == {"committed": 0}
    assert loaded.commits() == []


# =========================================================================== admin


def test_delete_group(loaded: Cluster) -> None:
    _, reply = loaded.call("delete_group", group="g")
    assert code(reply) == "GROUP_ID_NOT_FOUND"
    cid = commit(loaded)
    ((ch, produce),) = loaded.commits()
    loaded.worker_answers(ch, produce)
    a = loaded.ok("join_group", group="g", member_id="", topics=["t"])
    _, reply = loaded.call("delete_group", group="g")
    assert code(reply) == "NON_EMPTY_GROUP"
    loaded.ok("leave_group", group="g", member_id=a["member_id"])

    cid, reply = loaded.call("delete_group", group="g")
    assert reply is None  # the tombstones are written first
    ((ch, tombstones),) = loaded.commits()
    loaded.worker_answers(ch, tombstones)
    assert loaded.reply(cid).fields == {"group": "g"}  # type: ignore[union-attr]
    assert code(loaded.call("describe_group", group="g")[1]) == "GROUP_ID_NOT_FOUND"


def test_describe_group_reports_lag_from_this_nodes_leader(loaded: Cluster) -> None:
    node = loaded.node
    loaded.call("create_topic", topic="t", partitions=1)
    node.serve("t", 0)
    replica = node.replica("t", 0)
    assert replica is not None
    node.table.write_status(replica.slot, WorkerStatus(high_watermark=12, log_end_offset=12))
    a = loaded.ok("join_group", group="g", member_id="", topics=["t"])
    cid = commit(loaded, member_id=a["member_id"], generation=1)
    ((ch, produce),) = loaded.commits()
    loaded.worker_answers(ch, produce)
    assert loaded.reply(cid).fields == {"committed": 1}  # type: ignore[union-attr]
    d = loaded.ok("describe_group", group="g")
    assert d["state"] == "stable" and d["offsets_loaded"] is True
    (member,) = d["members"]
    assert member["member_id"] == a["member_id"] and member["assignment"] == [["t", 0]]
    (part,) = d["partitions"]
    assert part["member_id"] == a["member_id"]
    assert (part["committed_offset"], part["log_end_offset"], part["lag"]) == (5, 12, 7)
