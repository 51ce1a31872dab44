"""The consumer's fetcher: fetch requests to partition leaders, and the records they bring.

Each assigned partition has a ``PartitionFetch``: the next offset to fetch (ahead of
the position the application has reached), the fetch in flight (at most one, a long
poll of ``fetch_max_wait_ms``), a back-off after an error, and the **buffer** of records
fetched but not handed out yet. As soon as a reply arrives its batches are decoded into
``ConsumerRecord``s and the next fetch goes out while the application works through the
buffer (fetch-ahead), until a partition holds ``4 × max_poll_records``. ``take`` hands
records out in offset order per partition, up to ``max_poll_records`` per call, starting
from a different partition each time so that none starves, and moves each partition's
position (``TopicPartitionState``, ``ipc/client/subscription.py``) past what it handed out.

A partition without a position gets one from ``list_offsets`` at the end the reset
policy names. OFFSET_OUT_OF_RANGE drops the partition's buffer and position (reset
again, or raised with ``auto_offset_reset='none'``); another retriable error forgets the
partition's leader and backs off; anything else is raised from ``poll``. A fetch not
answered in time, or whose connection drops, is sent again (after a reconnect).

Runs in the application's thread (the consumer is not thread-safe); it owns the
consumer's data sockets (one channel per leader's worker) and their poller.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from itertools import repeat, starmap
from types import ModuleType
from typing import Any, NamedTuple

from ipc.client.metadata import ClusterMetadata
from ipc.client.subscription import OffsetReset, SubscriptionState, TopicPartition, TopicPartitionState
from ipc.client.transport import Channel, ChannelPool
from ipc.errors import OffsetOutOfRangeError, RequestTimedOutError, SluiceError, UnknownTopicOrPartitionError
from ipc.protocol import Reply
from ipc.records import Headers, decode_batches

log = logging.getLogger(__name__)

_NO_HEADERS: Headers = []
_new_tuple = tuple.__new__


class ConsumerRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclasses.dataclass(eq=False)
class PartitionFetch:
    """One assigned partition's fetch state."""

    assigned: TopicPartitionState  # its position moves as records are handed out
    topic: str
    partition: int
    fetch_offset: int | None = None  # next offset to fetch (ahead of the position)
    buffer: collections.deque[ConsumerRecord] = dataclasses.field(default_factory=collections.deque)
    inflight: int = 0  # correlation id of the fetch in flight, 0 if none
    inflight_deadline: float = 0.0
    channel: Channel | None = None
    retry_at: float = 0.0
    high_watermark: int = -1

    def add_records(self, reply: Reply) -> None:
        """Decode a fetch reply's batches into the buffer, from ``fetch_offset`` on (a batch
        may start below it), and move ``fetch_offset`` past them. A corrupt batch raises
        SluiceError; the batches before it are kept."""
        self.high_watermark = reply.fields.get("high_watermark", -1)
        if not reply.frames:
            return
        data = reply.frames[0]
        buf = data.buffer if hasattr(data, "buffer") else data
        start = self.fetch_offset
        assert start is not None
        topic, partition = self.topic, self.partition
        for batch in decode_batches(buf):
            offsets = batch.offsets
            n = len(batch.values)
            # tuple.__new__ skips the namedtuple's Python-level constructor (half the cost)
            records = map(
                _new_tuple,
                repeat(ConsumerRecord, n),
                zip(
                    repeat(topic, n),
                    repeat(partition, n),
                    offsets,
                    batch.timestamps,
                    batch.keys,
                    batch.values,
                    batch.headers if batch.headers is not None else repeat(_NO_HEADERS, n),
                    strict=True,
                ),
            )
            if offsets[0] < start if n else False:
                self.buffer.extend(r for r in records if r.offset >= start)
            else:
                self.buffer.extend(records)
            self.fetch_offset = max(self.fetch_offset or 0, batch.header.next_offset)


def take_records(fetches: list[PartitionFetch], max_records: int) -> list[ConsumerRecord]:
    """Hand out up to ``max_records`` buffered records, partition by partition in the
    order given, and move each partition's position past its last record handed out."""
    out: list[ConsumerRecord] = []
    room = max_records
    for st in fetches:
        if not st.buffer or room <= 0:
            continue
        buf = st.buffer
        if len(buf) <= room:
            out.extend(buf)
            room -= len(buf)
            buf.clear()
        else:
            out.extend(starmap(buf.popleft, repeat((), room)))  # C-level loop, no generator
            room = 0
        st.assigned.position = out[-1].offset + 1
    return out


class Fetcher:
    """The fetch state of every assigned partition, the leaders' channels and the
    ``list_offsets`` requests. See the module docstring."""

    def __init__(
        self,
        subscription: SubscriptionState,
        metadata: ClusterMetadata,
        *,
        ctx: Any,
        zmq_module: ModuleType,
        max_poll_records: int,
        fetch_max_bytes: int,
        fetch_max_wait_ms: int,
        fetch_min_bytes: int,
        request_timeout_s: float,
        retry_backoff_s: float,
    ) -> None:
        self.subscription = subscription
        self.metadata = metadata
        self.max_poll_records = max_poll_records
        self.fetch_max_bytes = fetch_max_bytes
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.request_timeout_s = request_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.poller = zmq_module.Poller()
        self.channels = ChannelPool(ctx, self.poller, zmq_module)
        self.fetches: dict[TopicPartition, PartitionFetch] = {}
        self.leaders: dict[TopicPartition, str] = {}
        self._by_cid: dict[int, PartitionFetch] = {}
        self._rr = 0

    # ---- the assignment ---------------------------------------------------------------------
    def sync(self) -> None:
        """Follow the subscription's assignment: drop the fetch state of partitions no
        longer assigned (a fetch in flight is ignored), add one for each new partition."""
        assignment = self.subscription.assignment
        for tp in list(self.fetches):
            if tp not in assignment:
                st = self.fetches.pop(tp)
                if st.inflight:
                    self._by_cid.pop(st.inflight, None)
        for tp, assigned in assignment.items():
            if tp not in self.fetches:
                self.fetches[tp] = PartitionFetch(assigned, tp[0], tp[1])

    def seek(self, tp: TopicPartition, offset: int | None) -> None:
        """Position ``tp`` at ``offset`` and fetch from there: buffered records are
        dropped, a fetch in flight is ignored."""
        st = self.fetches[tp]
        st.assigned.position = st.fetch_offset = offset
        st.buffer.clear()
        if st.inflight:
            self._by_cid.pop(st.inflight, None)
            st.inflight = 0

    def reset_position(self, tp: TopicPartition) -> None:
        """Give ``tp`` a position by the reset policy (a ``list_offsets`` request)."""
        st = self.fetches[tp]
        which = self.subscription.reset_timestamp(st.topic, st.partition)
        offset = self.list_offset(tp, which)
        st.assigned.position = st.fetch_offset = offset

    # ---- leaders and offsets -----------------------------------------------------------------
    def refresh_leaders(self, topics: set[str], strict: bool = False) -> None:
        """Refresh the leaders of ``topics``' partitions. ``strict`` (``assign``): raise a
        timeout, a topic's non-retriable error, or UNKNOWN_TOPIC_OR_PARTITION for an
        assigned partition beyond the topic's count."""
        try:
            result = self.metadata.refresh(sorted(topics), self.request_timeout_s)
        except RequestTimedOutError:
            if strict:
                raise
            return
        for name in topics:
            md = result.get(name)
            if md is None or md.error is not None:
                if strict and md is not None and md.error is not None and not md.error.retriable:
                    raise md.error
                continue
            for p in md.partitions:
                if p.endpoint and p.error is None:
                    self.leaders[(name, p.partition)] = p.endpoint
                else:
                    self.leaders.pop((name, p.partition), None)
            if strict:
                for t, part in self.fetches:
                    if t == name and part >= len(md.partitions):
                        raise UnknownTopicOrPartitionError(f"topic {name!r} has no partition {part}")

    def _leader(self, tp: TopicPartition, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            ep = self.leaders.get(tp)
            if ep is not None:
                return ep
            self.refresh_leaders({tp[0]})
            if tp in self.leaders:
                continue
            if time.monotonic() + delay > deadline:
                raise RequestTimedOutError(f"no leader for {tp[0]}-{tp[1]} within {timeout_s:.1f} s")
            time.sleep(delay)  # back-off between metadata refreshes
            delay = min(delay * 2, 0.5)

    def list_offset(self, tp: TopicPartition, timestamp: int) -> int:
        """``list_offsets`` at ``tp``'s leader, retried while retriable (forgetting the leader)."""
        deadline = time.monotonic() + self.request_timeout_s
        while True:
            ch = self.channels.get(self._leader(tp, max(0.1, deadline - time.monotonic())))
            try:
                reply = ch.request(
                    "list_offsets",
                    max(0.1, deadline - time.monotonic()),
                    topic=tp[0],
                    partition=tp[1],
                    timestamp=timestamp,
                )
                reply.raise_for_error()
                offset: int = reply.fields["offset"]
                return offset
            except SluiceError as exc:
                if not exc.retriable or time.monotonic() >= deadline:
                    raise
                self.leaders.pop(tp, None)
                time.sleep(self.retry_backoff_s)  # back-off before retrying another leader

    # ---- fetching ----------------------------------------------------------------------------
    def fill(self, now: float) -> None:
        """Make sure every partition that can use data has a fetch in flight."""
        for st in self.fetches.values():
            if st.inflight:
                if now >= st.inflight_deadline and st.channel is not None:
                    log.info("fetch for %s-%d timed out; reconnecting", st.topic, st.partition)
                    self.leaders.pop((st.topic, st.partition), None)
                    self._reset_channel(st.channel)
                continue
            if now < st.retry_at or len(st.buffer) >= self.max_poll_records * 4:
                continue
            if st.assigned.position is None:
                self.reset_position((st.topic, st.partition))
            self._send_fetch(st, now)

    def _send_fetch(self, st: PartitionFetch, now: float) -> None:
        tp = (st.topic, st.partition)
        endpoint = self.leaders.get(tp)
        if endpoint is None:
            self.refresh_leaders({st.topic})
            endpoint = self.leaders.get(tp)
            if endpoint is None:
                st.retry_at = now + self.retry_backoff_s
                return
        ch = self.channels.get(endpoint)
        assert st.fetch_offset is not None
        cid = ch.send(
            "fetch",
            topic=st.topic,
            partition=st.partition,
            offset=st.fetch_offset,
            max_bytes=self.fetch_max_bytes,
            max_wait_ms=self.fetch_max_wait_ms,
            min_bytes=self.fetch_min_bytes,
        )
        st.inflight = cid
        st.channel = ch
        st.inflight_deadline = now + self.request_timeout_s + self.fetch_max_wait_ms / 1000
        self._by_cid[cid] = st

    def take(self) -> list[ConsumerRecord]:
        """Up to ``max_poll_records`` buffered records, starting from the next partition."""
        states = list(self.fetches.values())
        if not states:
            return []
        self._rr = (self._rr + 1) % len(states)  # rotate the first partition: none starves
        return take_records(states[self._rr :] + states[: self._rr], self.max_poll_records)

    def wait(self, now: float, deadline: float) -> None:
        """Wait for replies until ``deadline`` at most (less when a back-off ends first),
        and handle what arrived."""
        wait = deadline - now
        for st in self.fetches.values():
            if not st.inflight and st.retry_at > now:
                wait = min(wait, st.retry_at - now)
        events = dict(self.poller.poll(int(max(wait, 0.0) * 1000) + 1))
        for ch in self.channels:
            if ch.sock in events:
                self._on_replies(ch)
            if ch.monitor is not None and ch.monitor in events and ch.disconnected():
                self._forget_fetches(ch)  # the worker went away; they are resent (queued until it is back)

    def _on_replies(self, ch: Channel) -> None:
        for reply in ch.replies():
            st = self._by_cid.pop(reply.id, None)
            if st is None or st.inflight != reply.id:
                continue  # a stale reply (after seek or reassignment)
            st.inflight = 0
            now = time.monotonic()
            if reply.error is not None:
                self.on_fetch_error(st, reply.error, now)
                continue
            start = st.fetch_offset
            try:
                st.add_records(reply)
            except SluiceError as exc:
                log.error("corrupt data from %s-%d at offset %d: %s", st.topic, st.partition, start, exc)
                st.retry_at = now + self.retry_backoff_s
                continue
            if reply.frames and len(st.buffer) < self.max_poll_records * 4:
                self._send_fetch(st, now)  # fetch ahead while the application consumes

    def on_fetch_error(self, st: PartitionFetch, err: SluiceError, now: float) -> None:
        """A fetch failed: reset an out-of-range position, back off from a retriable error
        (forgetting the leader), raise anything else."""
        if isinstance(err, OffsetOutOfRangeError):
            reset = self.subscription.reset
            if reset is OffsetReset.NONE:
                raise err
            log.warning("%s-%d: %s; resetting to %s", st.topic, st.partition, err, reset.value)
            st.buffer.clear()
            st.assigned.position = st.fetch_offset = None
            return
        if not err.retriable:
            raise err
        self.leaders.pop((st.topic, st.partition), None)
        st.retry_at = now + self.retry_backoff_s

    def _reset_channel(self, ch: Channel) -> None:
        self.channels.reset(ch)
        self._forget_fetches(ch)

    def _forget_fetches(self, ch: Channel) -> None:
        """Fetches in flight on ``ch`` will never be answered: send them again."""
        for st in self.fetches.values():
            if st.channel is ch and st.inflight:
                self._by_cid.pop(st.inflight, None)
                st.inflight = 0

    def close(self) -> None:
        self.channels.close()
