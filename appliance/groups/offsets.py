"""Committed offsets, kept in the internal compacted topic ``__consumer_offsets``.

Each commit is a record keyed ``["group", "topic", partition]`` (orjson) whose value is
``{"offset", "metadata", "commit_ts"}`` (a null value deletes it), produced with
acks=1 to partition ``murmur2(group) % partitions`` of that topic, which is
``fsync=always`` and compacted: a commit is answered only once it is on disk, and the
topic keeps the newest commit per key forever (until the group expires).

The coordinator (supervisor process) talks to those partitions' workers like any
client, asynchronously: its sockets are polled by the supervisor loop. At start it
reads every partition to its high watermark to rebuild the cache; until then offset
fetches answer COORDINATOR_LOAD_IN_PROGRESS (retriable).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from ipc.client.partitioner import partition_for_key
from ipc.client.transport import Channel, ChannelPool
from ipc.errors import CoordinatorNotAvailableError, RequestTimedOutError, SluiceError
from ipc.records import decode_batches, encode_batch

if TYPE_CHECKING:
    from appliance.supervisor import Supervisor

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"
OFFSETS_TOPIC_CONFIG = {"cleanup.policy": "compact", "fsync": "always", "segment.bytes": 64 * 1024 * 1024}
WRITE_TIMEOUT_S = 10.0

TP = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class CommittedOffset:
    offset: int
    metadata: str
    commit_ts: int


Done = Callable[[SluiceError | None], None]


@dataclasses.dataclass
class _Pending:
    kind: str  # "write" | "load" | "probe"
    partition: int
    deadline: float
    channel: Channel
    done: Done | None = None
    probe: Callable[[int | None], None] | None = None
    probe_offset: int = 0
    entries: list[tuple[str, TP, CommittedOffset | None]] = dataclasses.field(default_factory=list)


class OffsetStore:
    def __init__(self, node: Supervisor, partitions: int) -> None:
        self.node = node
        self.partitions = partitions
        self.cache: dict[str, dict[TP, CommittedOffset]] = {}
        self.channels: ChannelPool | None = None  # made on first use: the supervisor's context and poller
        self.pending: dict[int, _Pending] = {}
        self._load_next: dict[int, int] = {}  # partition -> next offset to read while loading
        self._loaded: set[int] = set()

    @property
    def loaded(self) -> bool:
        return len(self._loaded) == self.partitions

    def partition_for(self, group: str) -> int:
        return partition_for_key(group.encode(), self.partitions)

    # ---- sockets ------------------------------------------------------------------------------
    def _endpoint(self, topic: str, partition: int) -> str | None:
        """The serving leader worker's endpoint of a partition on this node, if any."""
        r = self.node.replicas.get((topic, partition))
        if r is None or r.state.value != "serving" or not r.endpoint:
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
                p.probe(self._timestamp_at(reply, p.probe_offset))
            elif p.kind == "write":
                if reply.error is None:
                    for group, tp, entry in p.entries:
                        self._apply(group, tp, entry)
                assert p.done is not None
                p.done(reply.error)
            else:
                self._on_load_reply(p.partition, reply)

    # ---- writing --------------------------------------------------------------------------------
    def write(self, group: str, entries: list[tuple[TP, CommittedOffset | None]], done: Done) -> None:
        partition = self.partition_for(group)
        endpoint = self._endpoint(OFFSETS_TOPIC, partition)
        if endpoint is None:
            done(CoordinatorNotAvailableError(f"{OFFSETS_TOPIC}-{partition} is not serving"))
            return
        keys = [orjson.dumps([group, t, p]) for (t, p), _ in entries]
        values = [
            None if e is None else orjson.dumps({"offset": e.offset, "metadata": e.metadata, "commit_ts": e.commit_ts})
            for _, e in entries
        ]
        batch = encode_batch(values, keys, timestamp=int(time.time() * 1000))
        ch = self._channel(endpoint)
        cid = ch.send("produce", [batch], topic=OFFSETS_TOPIC, partition=partition, acks=1)
        self.pending[cid] = _Pending(
            "write",
            partition,
            time.monotonic() + WRITE_TIMEOUT_S,
            ch,
            done,
            entries=[(group, tp, e) for tp, e in entries],
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

    # ---- lag probes ---------------------------------------------------------------------------
    def probe_timestamp(self, topic: str, partition: int, offset: int, done: Callable[[int | None], None]) -> None:
        """Ask the partition's worker for the record at ``offset``; ``done(timestamp ms | None)``."""
        endpoint = self._endpoint(topic, partition)
        if endpoint is None:
            done(None)
            return
        ch = self._channel(endpoint)
        cid = ch.send("fetch", topic=topic, partition=partition, offset=offset, max_bytes=1, max_wait_ms=0)
        self.pending[cid] = _Pending(
            "probe", partition, time.monotonic() + WRITE_TIMEOUT_S, ch, probe=done, probe_offset=offset
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
        if self.loaded:
            return
        busy = {p.partition for p in self.pending.values() if p.kind == "load"}
        for partition in range(self.partitions):
            if partition in self._loaded or partition in busy:
                continue
            endpoint = self._endpoint(OFFSETS_TOPIC, partition)
            if endpoint is None:
                continue
            ch = self._channel(endpoint)
            offset = self._load_next.setdefault(partition, 0)
            cid = ch.send(
                "fetch", topic=OFFSETS_TOPIC, partition=partition, offset=offset, max_bytes=4 << 20, max_wait_ms=0
            )
            self.pending[cid] = _Pending("load", partition, now + WRITE_TIMEOUT_S, ch)

    def _on_load_reply(self, partition: int, reply: Any) -> None:
        if reply.error is not None:
            if reply.error.code == "OFFSET_OUT_OF_RANGE":
                self._load_next[partition] = 0
            log.warning("loading %s-%d: %s", OFFSETS_TOPIC, partition, reply.error)
            return
        hw = int(reply.fields.get("high_watermark", 0))
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
                        group, topic, part = orjson.loads(key)
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
        if start >= hw:
            self._loaded.add(partition)
            log.info("loaded committed offsets from %s-%d (%d records)", OFFSETS_TOPIC, partition, start)
            if self.loaded:
                log.info("group coordinator ready: offsets of %d group(s) loaded", len(self.cache))
