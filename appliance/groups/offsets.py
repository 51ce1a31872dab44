"""Committed offsets, kept in the internal compacted topic ``__consumer_offsets``.

Each commit is a record keyed ``["group", "topic", partition]`` (orjson) whose value is
``{"offset", "metadata", "commit_ts"}`` (a null value deletes it), produced with
acks=all to partition ``murmur2(group) % partitions`` of that topic, which is
``fsync=always`` and compacted: a commit is answered only once every in-sync replica
has it, and the topic keeps the newest commit per key forever (until the group expires).
Next to them, each group's metadata record (as Kafka's): keyed ``["group"]``, its value
the group's membership as of its last completed rebalance (``Group.snapshot``: the
generation, the assignor, every member and its assignment; null when the group is
deleted). The store keeps the newest one per group in ``metadata``; the coordinator
restores the groups from it once a partition is loaded (``on_loaded``).

As in Kafka, the node leading partition ``p`` of that topic coordinates the groups that
hash to ``p``. The store keeps the offsets of the partitions this node leads, and only
those: ``begin_load(p, epoch)`` (this node became the leader, or its leader epoch
changed: the log may have been truncated) forgets what it had for ``p`` and reads ``p``
from offset 0 through this node's leader worker; ``unload(p)`` (another node leads it
now) forgets ``p``'s offsets. Until a partition is loaded, requests for its groups
answer COORDINATOR_LOAD_IN_PROGRESS (retriable); the caller decides (see
``GroupCoordinator._track_leadership``).

The coordinator (supervisor process) talks to the workers like any client,
asynchronously: its sockets are polled by the supervisor loop.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from appliance.children import ChildState
from appliance.nodeview import NodeView
from appliance.topics import leader_endpoint
from ipc.client.partitioner import partition_for_key
from ipc.client.transport import Channel, ChannelPool
from ipc.errors import (
    CoordinatorNotAvailableError,
    FencedLeaderEpochError,
    LeaderNotAvailableError,
    NotCoordinatorError,
    NotEnoughReplicasError,
    NotLeaderError,
    OffsetOutOfRangeError,
    RequestTimedOutError,
    SluiceError,
    StorageError,
    UnknownLeaderEpochError,
    UnknownTopicOrPartitionError,
)
from ipc.records import decode_batches, encode_batch

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"
OFFSETS_TOPIC_CONFIG = {"cleanup.policy": "compact", "fsync": "always"}  # + offsets_topic_segment_bytes
WRITE_TIMEOUT_S = 10.0
PRODUCE_TIMEOUT_MS = 8000  # the worker answers an acks=all write before WRITE_TIMEOUT_S runs out
LOAD_FETCH_BYTES = 4 << 20

TP = tuple[str, int]

# A write refused by the partition's worker, as the group's client must see it (Kafka's
# GroupMetadataManager maps produce errors the same way): the partition moved, or it
# cannot take the commit now; the client finds the coordinator again and retries.
_NOT_COORDINATOR = (NotLeaderError, FencedLeaderEpochError, UnknownLeaderEpochError, StorageError)
_NOT_AVAILABLE = (NotEnoughReplicasError, UnknownTopicOrPartitionError, LeaderNotAvailableError)


@dataclasses.dataclass(frozen=True)
class CommittedOffset:
    offset: int
    metadata: str
    commit_ts: int


Done = Callable[[SluiceError | None], None]


class _NoMeta(enum.Enum):
    """A write without a group metadata record (``OffsetStore.write``'s default)."""

    NO_META = "no-meta"


NO_META = _NoMeta.NO_META


def metadata_key(group: str) -> bytes:
    """The key of a group's metadata record: ``[group]`` (an offset's is ``[group, topic,
    partition]``), so compaction keeps the newest one per group."""
    return orjson.dumps([group])


@dataclasses.dataclass
class _Pending:
    kind: str  # "write" | "load" | "probe"
    partition: int  # of __consumer_offsets for "write" and "load"; of the probed topic for "probe"
    deadline: float
    channel: Channel
    done: Done | None = None
    probe: Callable[[int | None], None] | None = None
    probe_offset: int = 0
    probe_topic: str = ""
    leader_epoch: int = -1  # "load": the epoch being loaded (a reply for an older one is dropped)
    entries: list[tuple[str, TP, CommittedOffset | None]] = dataclasses.field(default_factory=list)
    group: str = ""  # "write" with ``meta``: whose group metadata record
    meta: dict[str, Any] | None | _NoMeta = NO_META


def _map_write_error(err: SluiceError, partition: int) -> SluiceError:
    if isinstance(err, _NOT_COORDINATOR):
        return NotCoordinatorError(f"{OFFSETS_TOPIC}-{partition} is no longer led here ({err.message})")
    if isinstance(err, _NOT_AVAILABLE):
        return CoordinatorNotAvailableError(f"{OFFSETS_TOPIC}-{partition} cannot take the commit now ({err.message})")
    return err


class OffsetStore:
    def __init__(self, node: NodeView, partitions: int) -> None:
        self.node = node
        self.partitions = partitions  # of __consumer_offsets: from the topic once it exists
        self.cache: dict[str, dict[TP, CommittedOffset]] = {}  # groups of the partitions led here
        # the newest group metadata record (Group.snapshot) of each group of the partitions led here
        self.metadata: dict[str, dict[str, Any]] = {}
        self.on_loaded: Callable[[int], None] | None = None  # a partition finished loading
        self.channels: ChannelPool | None = None  # made on first use: the supervisor's context and poller
        self.pending: dict[int, _Pending] = {}
        self.led: dict[int, int] = {}  # partition led by this node -> the leader epoch loaded / loading
        self._load_next: dict[int, int] = {}  # partition -> next offset to read while loading
        self._loaded: set[int] = set()
        self._waiting_hw: set[int] = set()  # partitions whose load waits for the high watermark (logged once)
        # the high watermark the partitions' leaders (on any node) answered the lag probes with
        self.leader_ends: dict[TP, int] = {}

    def partition_for(self, group: str) -> int:
        return partition_for_key(group.encode(), self.partitions)

    def is_loaded(self, partition: int) -> bool:
        return partition in self._loaded

    def group_loaded(self, group: str) -> bool:
        return self.partition_for(group) in self._loaded

    # ---- leadership ---------------------------------------------------------------------------
    def begin_load(self, partition: int, leader_epoch: int) -> None:
        """This node leads ``partition`` at ``leader_epoch``: (re)read it from the start."""
        self.unload(partition, quiet=True)
        self.led[partition] = leader_epoch
        self._load_next[partition] = 0
        log.info("%s-%d: led here at leader epoch %d; loading its offsets", OFFSETS_TOPIC, partition, leader_epoch)

    def unload(self, partition: int, quiet: bool = False) -> None:
        """Forget ``partition``: its cached offsets, its load, its writes in flight (which
        fail with NOT_COORDINATOR: the client retries at the new coordinator)."""
        if self.led.pop(partition, None) is not None and not quiet:
            log.info("%s-%d: no longer led here; its groups' offsets are forgotten", OFFSETS_TOPIC, partition)
        self._loaded.discard(partition)
        self._waiting_hw.discard(partition)
        self._load_next.pop(partition, None)
        for group in [g for g in self.cache if self.partition_for(g) == partition]:
            del self.cache[group]
        for group in [g for g in self.metadata if self.partition_for(g) == partition]:
            del self.metadata[group]
        for cid, p in list(self.pending.items()):
            if p.kind in ("write", "load") and p.partition == partition:
                del self.pending[cid]  # a late reply is ignored
                if p.done is not None:
                    p.done(NotCoordinatorError(f"{OFFSETS_TOPIC}-{partition} moved while the commit was in flight"))

    # ---- sockets ------------------------------------------------------------------------------
    def _own_leader_endpoint(self, partition: int) -> str | None:
        """This node's serving worker of a __consumer_offsets partition this node leads."""
        if partition not in self.led:
            return None
        r = self.node.replica(OFFSETS_TOPIC, partition)
        if r is None or r.state is not ChildState.SERVING or not r.endpoint:
            return None
        return r.endpoint

    def _channel(self, endpoint: str) -> Channel:
        if self.channels is None:
            self.channels = ChannelPool(self.node.ctx, self.node.poller, watch_disconnects=False)
        return self.channels.get(endpoint)

    def on_events(self, events: dict[Any, int]) -> None:
        for ch in self.channels or ():
            if ch.sock in events:
                self._drain(ch)

    def _drain(self, ch: Channel) -> None:
        for reply in ch.replies():
            p = self.pending.pop(reply.id, None)
            if p is None:
                continue
            if p.kind == "probe":
                assert p.probe is not None
                if reply.error is None and isinstance(reply.fields.get("high_watermark"), int):
                    self.leader_ends[(p.probe_topic, p.partition)] = reply.fields["high_watermark"]
                p.probe(self._timestamp_at(reply, p.probe_offset))
            elif p.kind == "write":
                if reply.error is None:
                    for group, tp, entry in p.entries:
                        self._apply(group, tp, entry)
                    if not isinstance(p.meta, _NoMeta):
                        self._apply_meta(p.group, p.meta)
                assert p.done is not None
                p.done(None if reply.error is None else _map_write_error(reply.error, p.partition))
            elif self.led.get(p.partition) == p.leader_epoch:
                self._on_load_reply(p.partition, reply)

    # ---- writing --------------------------------------------------------------------------------
    def write(
        self,
        group: str,
        entries: list[tuple[TP, CommittedOffset | None]],
        done: Done,
        meta: dict[str, Any] | None | _NoMeta = NO_META,
    ) -> None:
        """Write ``entries`` (offsets; None: a tombstone) and, unless ``NO_META``, the
        group's metadata record ``meta`` (None: its tombstone) in one batch, acks=all;
        ``done(error or None)`` once acknowledged (the cache follows then)."""
        partition = self.partition_for(group)
        endpoint = self._own_leader_endpoint(partition)
        if endpoint is None:
            done(CoordinatorNotAvailableError(f"{OFFSETS_TOPIC}-{partition} is not serving on this node"))
            return
        keys = [orjson.dumps([group, t, p]) for (t, p), _ in entries]
        values: list[bytes | None] = [
            None if e is None else orjson.dumps({"offset": e.offset, "metadata": e.metadata, "commit_ts": e.commit_ts})
            for _, e in entries
        ]
        if not isinstance(meta, _NoMeta):
            keys.append(metadata_key(group))
            values.append(None if meta is None else orjson.dumps(meta))
        batch = encode_batch(values, keys, timestamp=int(time.time() * 1000))
        ch = self._channel(endpoint)
        cid = ch.send(
            "produce", [batch], topic=OFFSETS_TOPIC, partition=partition, acks="all", timeout_ms=PRODUCE_TIMEOUT_MS
        )
        self.pending[cid] = _Pending(
            "write",
            partition,
            self.node.clock() + WRITE_TIMEOUT_S,
            ch,
            done,
            entries=[(group, tp, e) for tp, e in entries],
            group=group,
            meta=meta,
        )

    def _apply(self, group: str, tp: TP, entry: CommittedOffset | None) -> None:
        if entry is None:
            offsets = self.cache.get(group)
            if offsets is not None:
                offsets.pop(tp, None)
                if not offsets:
                    del self.cache[group]
        else:
            self.cache.setdefault(group, {})[tp] = entry

    def _apply_meta(self, group: str, meta: dict[str, Any] | None) -> None:
        if meta is None:
            self.metadata.pop(group, None)
        else:
            self.metadata[group] = meta

    # ---- lag probes ---------------------------------------------------------------------------
    def probe_timestamp(self, topic: str, partition: int, offset: int, done: Callable[[int | None], None]) -> None:
        """Ask the partition's leader worker (on any node) for the record at ``offset``;
        ``done(timestamp ms | None)``."""
        info = self.node.coordinator.topics().get(topic)
        state = info.partitions[partition] if info is not None and partition < len(info.partitions) else None
        endpoint = leader_endpoint(self.node.coordinator, topic, partition, state) if state is not None else None
        if endpoint is None:
            done(None)
            return
        ch = self._channel(endpoint)
        cid = ch.send("fetch", topic=topic, partition=partition, offset=offset, max_bytes=1, max_wait_ms=0)
        self.pending[cid] = _Pending(
            "probe",
            partition,
            self.node.clock() + WRITE_TIMEOUT_S,
            ch,
            probe=done,
            probe_offset=offset,
            probe_topic=topic,
        )

    @staticmethod
    def _timestamp_at(reply: Any, offset: int) -> int | None:
        if reply.error is not None or not reply.frames:
            return None
        data = reply.frames[0]
        try:
            for batch in decode_batches(data.buffer if hasattr(data, "buffer") else data):
                for off, ts in zip(batch.offsets, batch.timestamps, strict=True):
                    if off >= offset:
                        return ts
        except SluiceError:
            return None
        return None

    # ---- loading --------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        for cid, p in [(c, p) for c, p in self.pending.items() if now >= p.deadline]:
            self.pending.pop(cid, None)
            assert self.channels is not None
            self.channels.reset(p.channel)
            if p.kind == "write" and p.done is not None:
                p.done(RequestTimedOutError(f"offset commit not acknowledged by {OFFSETS_TOPIC}-{p.partition}"))
        busy = {p.partition for p in self.pending.values() if p.kind == "load"}
        for partition, epoch in self.led.items():
            if partition in self._loaded or partition in busy:
                continue
            endpoint = self._own_leader_endpoint(partition)
            if endpoint is None:
                continue  # its worker is starting: the next tick tries again
            ch = self._channel(endpoint)
            offset = self._load_next.setdefault(partition, 0)
            cid = ch.send(
                "fetch",
                topic=OFFSETS_TOPIC,
                partition=partition,
                offset=offset,
                max_bytes=LOAD_FETCH_BYTES,
                max_wait_ms=0,
            )
            self.pending[cid] = _Pending("load", partition, now + WRITE_TIMEOUT_S, ch, leader_epoch=epoch)

    def _on_load_reply(self, partition: int, reply: Any) -> None:
        if reply.error is not None:
            if isinstance(reply.error, OffsetOutOfRangeError):
                self._load_next[partition] = 0
            # NOT_LEADER: the worker has not taken its leader role yet; the next tick asks again
            quiet = isinstance(reply.error, (NotLeaderError, LeaderNotAvailableError))
            level = logging.DEBUG if quiet else logging.WARNING
            log.log(level, "loading %s-%d: %s", OFFSETS_TOPIC, partition, reply.error)
            return
        hw = int(reply.fields.get("high_watermark", 0))
        leo = int(reply.fields.get("log_end_offset", hw))
        start = self._load_next.get(partition, 0)
        if start < int(reply.fields.get("log_start_offset", 0)):
            start = int(reply.fields["log_start_offset"])
        if reply.frames:
            data = reply.frames[0]
            buf = data.buffer if hasattr(data, "buffer") else data
            for batch in decode_batches(buf):
                for off, key, value in zip(batch.offsets, batch.keys, batch.values, strict=True):
                    if off < start or key is None:
                        continue
                    try:
                        parsed = orjson.loads(key)
                        if isinstance(parsed, list) and len(parsed) == 1:  # a group metadata record
                            meta = None if value is None else orjson.loads(value)
                            if meta is not None and not isinstance(meta, dict):
                                raise TypeError(f"group metadata is a {type(meta).__name__}, not an object")
                            self._apply_meta(str(parsed[0]), meta)
                            continue
                        group, topic, part = parsed
                        entry = None
                        if value is not None:
                            v = orjson.loads(value)
                            entry = CommittedOffset(int(v["offset"]), str(v.get("metadata", "")), int(v["commit_ts"]))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                        log.error(
                            "skipping unreadable record at %s-%d offset %d: %s", OFFSETS_TOPIC, partition, off, exc
                        )
                        continue
                    self._apply(group, (topic, int(part)), entry)
                start = max(start, batch.header.next_offset)
        self._load_next[partition] = start
        if start < hw:
            return  # more to read: the next tick asks for it
        if hw < leo:
            # A new leader's high watermark can lag its log end: records there may be
            # commits the previous leader acknowledged (acks=all: every in-sync replica,
            # this one included, has them). Only this store writes to the partition, and
            # it does not while loading, so the high watermark reaches the log end once
            # the followers catch up or leave the ISR; loading finishes then.
            if partition not in self._waiting_hw:
                self._waiting_hw.add(partition)
                log.info(
                    "loading %s-%d: waiting for the high watermark %d to reach the log end %d",
                    OFFSETS_TOPIC,
                    partition,
                    hw,
                    leo,
                )
            return
        self._loaded.add(partition)
        self._waiting_hw.discard(partition)
        groups = sum(1 for g in set(self.cache) | set(self.metadata) if self.partition_for(g) == partition)
        log.info(
            "loaded committed offsets from %s-%d at leader epoch %d (%d records, %d group(s))",
            OFFSETS_TOPIC,
            partition,
            self.led.get(partition, -1),
            start,
            groups,
        )
        if self.on_loaded is not None:
            self.on_loaded(partition)
