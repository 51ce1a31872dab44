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
A paused partition (``Consumer.pause``) sends no fetch and hands nothing out; what it has
buffered (and a reply to a fetch in flight when it was paused) waits for ``resume``.

A partition without a position gets one from ``list_offsets`` at the end the reset
policy names. OFFSET_OUT_OF_RANGE drops the partition's buffer and position (reset
again, or raised with ``auto_offset_reset='none'``); another retriable error forgets the
partition's leader and backs off; anything else is raised from ``poll``.

Liveness, as Kafka's fetcher (issue 20): a fetch has one **deadline**, set when it is
first sent (``request_timeout_ms`` + ``fetch_max_wait_ms``) and kept until it is
answered, however often it is sent again. When the connection to a leader's worker is
refused, fails or drops (its channel goes ``DOWN``, ``ipc/client/transport.py``), the
leader of every partition fetched there is forgotten (its metadata is stale) and the
fetch waits out a back-off (``retry_backoff_ms`` doubling per consecutive failure, at
most 1 s); the next attempt refreshes metadata first and does not send to an endpoint
that is still ``DOWN``. When the deadline passes (no reply, or no usable leader all that
time) the fetch fails as REQUEST_TIMED_OUT: logged, the leader forgotten, the channel's
queue dropped, and fetched again after the back-off with a new deadline. Nothing here
is raised to the application: the consumer keeps retrying. A healthy fetch costs no
extra call: the connection state changes only on monitor events.

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
from ipc.client.samehost import SameHostChannel, SameHostLinks
from ipc.client.stats import ConsumerStats
from ipc.client.subscription import OffsetReset, SubscriptionState, TopicPartition, TopicPartitionState
from ipc.client.transport import Channel, ChannelPool, Connection, backoff_s
from ipc.errors import OffsetOutOfRangeError, RequestTimedOutError, SluiceError, UnknownTopicOrPartitionError
from ipc.protocol import Reply
from ipc.quota import MAX_THROTTLE_S
from ipc.records import Headers, decode_batches

log = logging.getLogger(__name__)

_NO_HEADERS: Headers = []
SMALL_RING = 64 * 1024  # a consumer's same-host request ring: fetch requests are small
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
    deadline: float = 0.0  # of the fetch being tried: set when first sent, kept across re-sends; 0: none
    channel: Channel | SameHostChannel | None = None
    retry_at: float = 0.0
    failures: int = 0  # consecutive failed attempts (connection lost, error, timeout): the back-off
    high_watermark: int = -1
    sent_at: float = 0.0  # monotonic time the fetch in flight was sent: its reply's latency

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
        same_host: bool = False,
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
        # the same-host path (ipc/client/samehost.py), when asked for: fetches through rings
        self.same_host = SameHostLinks(ctx, self.poller, zmq_module, request_bytes=SMALL_RING) if same_host else None
        self.fetches: dict[TopicPartition, PartitionFetch] = {}
        self.leaders: dict[TopicPartition, str] = {}
        self._by_cid: dict[int, PartitionFetch] = {}
        self._rr = 0
        self.throttled: dict[str, float] = {}  # endpoint -> until when it said to wait (a quota, KIP-219)
        self.stats = ConsumerStats()  # per fetch and per poll, never per record (ipc/client/stats.py)

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

    def positions(self) -> list[tuple[TopicPartition, int | None, int]]:
        """(partition, position, high watermark of its last fetch reply) of each assigned one."""
        return [(tp, st.assigned.position, st.high_watermark) for tp, st in self.fetches.items()]

    def seek(self, tp: TopicPartition, offset: int | None) -> None:
        """Position ``tp`` at ``offset`` and fetch from there: buffered records are
        dropped, a fetch in flight is ignored."""
        st = self.fetches[tp]
        st.assigned.position = st.fetch_offset = offset
        st.buffer.clear()
        self._forget(st)
        st.deadline = 0.0

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
                if p.endpoint and p.error is None and not self.channels.is_down(p.endpoint):
                    self.leaders[(name, p.partition)] = p.endpoint
                else:  # no leader, or one whose endpoint refuses: stale, try again later
                    self.leaders.pop((name, p.partition), None)
            if strict:
                for t, part in self.fetches:
                    if t == name and part >= len(md.partitions):
                        raise UnknownTopicOrPartitionError(f"topic {name!r} has no partition {part}")
        named = {p.endpoint for md in result.values() for p in md.partitions if p.endpoint}
        for endpoint in self.channels.discard_down(named | set(self.leaders.values())):
            log.info("closed the channel to %s: no longer named by metadata", endpoint)

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
        return self.list_offset_and_timestamp(tp, timestamp)[0]

    def list_offset_and_timestamp(self, tp: TopicPartition, timestamp: int) -> tuple[int, int]:
        """``list_offset``, with the timestamp of the record found (-1 for the ends)."""
        deadline = time.monotonic() + self.request_timeout_s
        failures = 0
        while True:
            ch = self.channels.get(self._leader(tp, max(0.1, deadline - time.monotonic())))
            try:
                reply = ch.request(
                    "list_offsets",
                    max(0.1, deadline - time.monotonic()),
                    fail_fast=True,  # a refused connection: the leader moved, ask metadata
                    topic=tp[0],
                    partition=tp[1],
                    timestamp=timestamp,
                )
                reply.raise_for_error()
                return int(reply.fields["offset"]), int(reply.fields.get("timestamp", -1))
            except SluiceError as exc:
                if not exc.retriable or time.monotonic() >= deadline:
                    raise
                if ch.connection is Connection.DOWN:  # the request saw it: so must the fetches
                    self._on_connection_lost(ch, time.monotonic())
                self.leaders.pop(tp, None)
                failures += 1
                time.sleep(backoff_s(self.retry_backoff_s, failures))  # before asking metadata again

    # ---- fetching ----------------------------------------------------------------------------
    def fill(self, now: float) -> None:
        """Make sure every partition that can use data has a fetch in flight (metadata is
        asked at most once per topic per pass)."""
        refreshed: set[str] = set()
        for st in self.fetches.values():
            if st.deadline and now >= st.deadline:
                self._timed_out(st, now)
            if st.inflight or st.assigned.paused:
                continue
            if now < st.retry_at or len(st.buffer) >= self.max_poll_records * 4:
                continue
            if st.assigned.position is None:
                self.reset_position((st.topic, st.partition))
            self._send_fetch(st, now, refreshed)

    def _send_fetch(self, st: PartitionFetch, now: float, refreshed: set[str] | None = None) -> None:
        tp = (st.topic, st.partition)
        endpoint = self.leaders.get(tp)
        if endpoint is None:
            if refreshed is None or st.topic not in refreshed:
                self.refresh_leaders({st.topic})
                if refreshed is not None:
                    refreshed.add(st.topic)
            endpoint = self.leaders.get(tp)
            if endpoint is None:  # no leader yet, or only one that refuses connections
                if not st.deadline:
                    st.deadline = now + self.request_timeout_s + self.fetch_max_wait_ms / 1000
                self._back_off(st, now)
                return
        until = self.throttled.get(endpoint)
        if until is not None:  # over a quota there: no request before the throttle time is over
            if until > now:
                st.retry_at = until
                return
            del self.throttled[endpoint]
        link = self.same_host.get(endpoint, *tp) if self.same_host is not None else None
        ch: Channel | SameHostChannel = self.channels.get(endpoint) if link is None else link
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
        if cid is None:  # the same-host request ring is full (replies not read yet): again soon
            st.retry_at = now + 0.001
            return
        st.inflight = cid
        st.channel = ch
        st.sent_at = now
        self.stats.requests += 1
        if not st.deadline:  # a re-send (after a lost connection) keeps the first deadline
            st.deadline = now + self.request_timeout_s + self.fetch_max_wait_ms / 1000
        self._by_cid[cid] = st

    def take(self, max_records: int | None = None) -> list[ConsumerRecord]:
        """Up to ``max_records`` (default ``max_poll_records``) buffered records of the
        partitions not paused, starting from the next partition."""
        states = list(self.fetches.values())
        if self.subscription.paused_count:
            states = [st for st in states if not st.assigned.paused]
        if not states:
            return []
        self._rr = (self._rr + 1) % len(states)  # rotate the first partition: none starves
        out = take_records(states[self._rr :] + states[: self._rr], max_records or self.max_poll_records)
        self.stats.records_consumed += len(out)
        return out

    def wait(self, now: float, deadline: float) -> None:
        """Wait for replies until ``deadline`` at most (less when a back-off ends first),
        and handle what arrived."""
        wait = deadline - now
        for st in self.fetches.values():
            if not st.inflight and st.retry_at > now:
                wait = min(wait, st.retry_at - now)
            if st.deadline:
                wait = min(wait, st.deadline - now)
        events = dict(self.poller.poll(int(max(wait, 0.0) * 1000) + 1))
        for ch in self.channels:
            if ch.closed:
                continue  # closed while handling an earlier channel (no longer in metadata)
            if ch.sock in events:
                self._on_replies(ch)
            if ch.monitor is not None and ch.monitor in events and ch.disconnected():
                self._on_connection_lost(ch, time.monotonic())
        if self.same_host is not None:
            for link in self.same_host.ready(events):
                self._on_replies(link)
                if link.gone:  # the worker died or ended the session
                    self.same_host.drop(link, "the worker hung up")
                    self._on_connection_lost(link, time.monotonic())

    def _on_replies(self, ch: Channel | SameHostChannel) -> None:
        for reply in ch.replies():
            st = self._by_cid.pop(reply.id, None)
            if st is None or st.inflight != reply.id:
                continue  # a stale reply (after seek or reassignment)
            st.inflight = 0
            st.deadline = 0.0
            now = time.monotonic()
            stats = self.stats
            stats.replied(now - st.sent_at)
            throttle = reply.fields.get("throttle_time_ms")
            if isinstance(throttle, int) and throttle > 0:
                self.throttled[ch.endpoint] = now + min(throttle / 1000, MAX_THROTTLE_S)
                stats.throttle_max_ms = max(stats.throttle_max_ms, throttle)
            if reply.error is not None:
                self.on_fetch_error(st, reply.error, now)
                continue
            st.failures = 0
            start = st.fetch_offset
            buffered = len(st.buffer)
            if reply.frames:
                stats.bytes += len(reply.frames[0])
            try:
                st.add_records(reply)
                stats.records_fetched += len(st.buffer) - buffered
            except SluiceError as exc:
                log.error("corrupt data from %s-%d at offset %d: %s", st.topic, st.partition, start, exc)
                self._back_off(st, now)
                continue
            if reply.frames and len(st.buffer) < self.max_poll_records * 4 and not st.assigned.paused:
                self._send_fetch(st, now)  # fetch ahead while the application consumes

    def on_fetch_error(self, st: PartitionFetch, err: SluiceError, now: float) -> None:
        """A fetch failed: reset an out-of-range position, back off from a retriable error
        (forgetting the leader), raise anything else."""
        self.stats.errors += 1
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
        self._back_off(st, now)

    def _back_off(self, st: PartitionFetch, now: float) -> None:
        st.failures += 1
        st.retry_at = now + backoff_s(self.retry_backoff_s, st.failures)

    def _forget(self, st: PartitionFetch) -> None:
        """Stop waiting for ``st``'s fetch in flight (its deadline is kept)."""
        if st.inflight:
            self._by_cid.pop(st.inflight, None)
            st.inflight = 0

    def _on_connection_lost(self, ch: Channel | SameHostChannel, now: float) -> None:
        """The connection to ``ch``'s endpoint was refused, failed or dropped: forget the
        leader of every partition fetched there (its metadata is stale) and back off;
        their fetches in flight will not be answered: they go again, to whichever
        endpoint metadata names then, with the same deadline. Repeated connect-retried
        events of a channel nothing uses any more change nothing."""
        endpoint = ch.endpoint
        for st in self.fetches.values():
            tp = (st.topic, st.partition)
            if (st.inflight and st.channel is ch) or self.leaders.get(tp) == endpoint:
                if st.inflight:
                    self.stats.errors += 1  # that fetch is lost
                if self.leaders.pop(tp, None) is not None:
                    log.info("%s-%d: connection to %s lost; refreshing metadata", st.topic, st.partition, endpoint)
                self._forget(st)
                self._back_off(st, now)

    def _timed_out(self, st: PartitionFetch, now: float) -> None:
        """The fetch's deadline passed: it fails as REQUEST_TIMED_OUT (the channel's queue
        dropped, the leader forgotten) and is tried again after the back-off."""
        ch = st.channel if st.inflight else None
        log.warning(
            "fetch for %s-%d at offset %s not answered by its deadline (%s); refreshing metadata",
            st.topic,
            st.partition,
            st.fetch_offset,
            ch.endpoint if ch is not None else "no reachable leader",
        )
        if ch is not None and not ch.closed:
            for other in self.fetches.values():  # the queue is dropped: theirs too
                if other.inflight and other.channel is ch:
                    self._forget(other)
            if isinstance(ch, SameHostChannel):
                assert self.same_host is not None
                self.same_host.drop(ch, "a fetch got no reply in time")
            else:
                self.channels.reset(ch)
        self._forget(st)
        st.deadline = 0.0
        self.on_fetch_error(st, RequestTimedOutError(f"fetch for {st.topic}-{st.partition} timed out"), now)

    def close(self) -> None:
        self.channels.close()
        if self.same_host is not None:
            self.same_host.close()
