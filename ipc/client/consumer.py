"""``Consumer``: read partitions by offset, with fetch-ahead.

Not thread-safe (like Kafka's): one application thread calls it. Each assigned
partition keeps one long-poll fetch in flight to its leader's worker; as soon as a
response arrives the next fetch is sent (fetch-ahead) and the batches are decoded
into records, which ``poll`` hands out in offset order per partition.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat, starmap
from types import ModuleType
from typing import Any, NamedTuple

import zmq as _zmq

from ipc.client.group import GroupMembership
from ipc.client.metadata import ClusterMetadata
from ipc.client.transport import Bootstrap, BootstrapChannel, Channel, ChannelPool, check_ints, parse_bootstrap
from ipc.errors import (
    InvalidConfigError,
    OffsetOutOfRangeError,
    RequestTimedOutError,
    SluiceError,
    UnknownTopicOrPartitionError,
)
from ipc.protocol import ASSIGNORS, EARLIEST, LATEST, valid_topic_name
from ipc.records import Headers, decode_batches

log = logging.getLogger(__name__)

_NO_HEADERS: Headers = []
PATTERN_REFRESH_S = 5.0
_new_tuple = tuple.__new__  # how often a pattern subscription looks for new topics
OFFSET_RESETS = ("earliest", "latest", "none")


class ConsumerClosedError(SluiceError):
    code = "CONSUMER_CLOSED"


class ConsumerRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers


TopicPartition = tuple[str, int]


@dataclasses.dataclass
class _PartitionState:
    topic: str
    partition: int
    position: int | None = None  # next offset handed to the application
    fetch_offset: int | None = None  # next offset to fetch (ahead of position)
    buffer: collections.deque[ConsumerRecord] = dataclasses.field(default_factory=collections.deque)
    inflight: int = 0  # correlation id of the fetch in flight, 0 if none
    inflight_deadline: float = 0.0
    channel: Channel | None = None
    retry_at: float = 0.0
    high_watermark: int = -1


class Consumer:
    """Assign partitions, seek, poll.

    >>> with Consumer("tcp://127.0.0.1:6100", auto_offset_reset="earliest") as c:
    ...     c.assign([("events", 0)])
    ...     records = c.poll(timeout_ms=1000)
    """

    def __init__(
        self,
        bootstrap: Bootstrap = None,
        *,
        auto_offset_reset: str = "latest",
        max_poll_records: int = 500,
        fetch_max_bytes: int = 1024 * 1024,
        fetch_max_wait_ms: int = 500,
        fetch_min_bytes: int = 1,
        request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        group_id: str | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3000,
        max_poll_interval_ms: int = 300_000,
        rebalance_timeout_ms: int | None = None,
        partition_assignment_strategy: str | Sequence[str] = "cooperative-sticky",
        group_instance_id: str | None = None,
        client_id: str = "",
        on_assign: Callable[[list[TopicPartition]], Any] | None = None,
        on_revoke: Callable[[list[TopicPartition]], Any] | None = None,
        zmq_module: ModuleType = _zmq,
    ) -> None:
        self.endpoints = parse_bootstrap(bootstrap)
        if auto_offset_reset not in OFFSET_RESETS:
            raise ValueError(f"auto_offset_reset={auto_offset_reset!r}: allowed {', '.join(OFFSET_RESETS)}")
        check_ints(
            ("max_poll_records", max_poll_records, 1),
            ("fetch_max_bytes", fetch_max_bytes, 1),
            ("fetch_max_wait_ms", fetch_max_wait_ms, 0),
            ("fetch_min_bytes", fetch_min_bytes, 0),
            ("request_timeout_ms", request_timeout_ms, 1),
            ("retry_backoff_ms", retry_backoff_ms, 0),
        )
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.fetch_max_bytes = fetch_max_bytes
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.request_timeout_s = request_timeout_ms / 1000
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.zmq = zmq_module
        self.ctx = zmq_module.Context()
        self.metadata = ClusterMetadata(BootstrapChannel(self.ctx, self.endpoints, zmq_module), self.request_timeout_s)
        self.poller = zmq_module.Poller()
        self.channels = ChannelPool(self.ctx, self.poller, zmq_module)
        self._states: dict[TopicPartition, _PartitionState] = {}
        self._by_cid: dict[int, _PartitionState] = {}
        self._leaders: dict[TopicPartition, str] = {}
        self._closed = False
        self._rr = 0
        self._group: GroupMembership | None = None
        self._subscription: list[str] | re.Pattern[str] | None = None
        self._topics: list[str] = []
        self._next_pattern_check = 0.0
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
        self._next_auto_commit = 0.0
        self._committer: _Committer | None = None
        # positions of partitions dropped when the group coordinator changed (see
        # GroupMembership.ensure_active): the next assignment resumes them
        self._carried: dict[TopicPartition, int] = {}
        if group_id is not None:
            if not isinstance(group_id, str) or not 0 < len(group_id) <= 255:
                raise ValueError(f"group_id={group_id!r}: must be a non-empty string of at most 255 characters")
            strategies = (
                [partition_assignment_strategy]
                if isinstance(partition_assignment_strategy, str)
                else list(partition_assignment_strategy)
            )
            for s in strategies:
                if s not in ASSIGNORS:
                    raise ValueError(f"partition_assignment_strategy={s!r}: allowed {', '.join(ASSIGNORS)}")
            check_ints(
                ("auto_commit_interval_ms", auto_commit_interval_ms, 1),
                ("session_timeout_ms", session_timeout_ms, 100),
                ("heartbeat_interval_ms", heartbeat_interval_ms, 1),
                ("max_poll_interval_ms", max_poll_interval_ms, 1),
            )
            if heartbeat_interval_ms >= session_timeout_ms:
                raise ValueError(
                    f"heartbeat_interval_ms={heartbeat_interval_ms} must be below "
                    f"session_timeout_ms={session_timeout_ms}"
                )
            self._group = GroupMembership(
                self.ctx,
                self.endpoints,
                zmq_module,
                group_id,
                instance_id=group_instance_id,
                client_id=client_id,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                max_poll_interval_ms=max_poll_interval_ms,
                rebalance_timeout_ms=rebalance_timeout_ms if rebalance_timeout_ms is not None else max_poll_interval_ms,
                assignors=strategies,
                request_timeout_s=self.request_timeout_s,
            )

    # ---- groups ----------------------------------------------------------------------------
    def subscribe(self, topics: Sequence[str] | str) -> None:
        """Join the consumer group for ``topics`` (a list of names, or one regex pattern
        string matched against every topic's full name; internal ``__`` topics excluded).
        Partitions are assigned by the group coordinator on the next ``poll``."""
        if self._group is None:
            raise ValueError("subscribe() needs a group_id; use assign() without a group")
        if isinstance(topics, str):
            try:
                self._subscription = re.compile(topics)
            except re.error as exc:
                raise ValueError(f"subscription pattern {topics!r} is invalid: {exc}") from None
        else:
            names = list(topics)
            for t in names:
                why = valid_topic_name(t) if isinstance(t, str) else "topics must be strings"
                if why:
                    raise InvalidConfigError(why)
            self._subscription = names
        self._topics = []
        self._next_pattern_check = 0.0
        self._group.needs_rejoin = True

    def _subscribed_topics(self, now: float) -> list[str]:
        sub = self._subscription
        if isinstance(sub, list):
            return sorted(set(sub))
        if sub is not None and now >= self._next_pattern_check:
            self._next_pattern_check = now + PATTERN_REFRESH_S
            try:
                names = sorted(self.metadata.refresh(None, self.request_timeout_s))
            except SluiceError as exc:
                log.warning("cannot list topics for pattern %s: %s", sub.pattern, exc)
                return self._topics
            matched = [n for n in names if not n.startswith("__") and sub.fullmatch(n)]
            if matched != self._topics and self._group is not None and self._topics:
                self._group.needs_rejoin = True
            self._topics = matched
        return self._topics

    def _apply_group_assignment(self, tps: list[TopicPartition], carry: bool = False) -> None:
        for tp in list(self._states):
            if tp not in tps:
                position = self._states[tp].position
                if carry and position is not None:
                    self._carried[tp] = position
                self._drop(tp)
        added = [tp for tp in tps if tp not in self._states]
        for tp in added:
            self._states[tp] = _PartitionState(tp[0], tp[1])
        if added:
            assert self._group is not None
            self._refresh_leaders({t for t, _ in added})
            for tp, offset in self._group.committed(added).items():
                if tp not in self._states:
                    continue
                # Our own position from before the coordinator changed: what lies below it
                # was handed out here, what lies below the committed offset was processed
                # by a member that owned it meanwhile; start after both.
                mine = self._carried.get(tp)
                start = offset if mine is None else mine if offset is None else max(offset, mine)
                if mine is not None:
                    log.info("%s-%d: resuming at %d (committed %s)", tp[0], tp[1], start, offset)
                if start is not None:
                    self._reset_fetch(self._states[tp], start)
        if not carry:
            self._carried.clear()  # only for the assignment that directly follows

    def _commit_before_revoke(self, tps: list[TopicPartition]) -> None:
        if self.enable_auto_commit:
            try:
                positions = self._positions()
                self.commit({tp: positions[tp] for tp in tps if tp in positions})
            except SluiceError as exc:
                log.warning("commit before revoking %s failed: %s", tps, exc)

    def _ensure_group(self, deadline: float) -> None:
        g = self._group
        if g is None or self._subscription is None:
            return
        now = time.monotonic()
        topics = self._subscribed_topics(now)
        if g.needs_rejoin:
            g.ensure_active(
                topics,
                self.on_revoke,
                self.on_assign,
                self._commit_before_revoke,
                self._apply_group_assignment,
                deadline,
            )
        else:
            g.last_poll = now
        if self.enable_auto_commit and now >= self._next_auto_commit and self._states:
            self._next_auto_commit = now + self.auto_commit_interval_s
            self.commit_async()

    def _positions(self) -> dict[TopicPartition, int | tuple[int, str]]:
        return {tp: st.position for tp, st in self._states.items() if st.position is not None}

    def commit(
        self, offsets: dict[TopicPartition, int | tuple[int, str]] | None = None, timeout_ms: int | None = None
    ) -> None:
        """Commit ``offsets`` (default: the current position of every assigned
        partition: the next record to read) to the group, synchronously."""
        g = self._require_group()
        body = _commit_body(self._positions() if offsets is None else offsets)
        if body:
            g.commit(body, None if timeout_ms is None else timeout_ms / 1000)

    def commit_async(
        self,
        offsets: dict[TopicPartition, int | tuple[int, str]] | None = None,
        callback: Callable[[dict[TopicPartition, tuple[int, str]], SluiceError | None], Any] | None = None,
    ) -> None:
        """Commit in a background thread; ``callback(offsets, error)`` runs there when done."""
        g = self._require_group()
        body = _commit_body(self._positions() if offsets is None else offsets)
        if not body:
            return
        if self._committer is None:
            self._committer = _Committer(g)
        self._committer.submit(body, callback)

    def committed(
        self, partitions: Iterable[TopicPartition], timeout_ms: int | None = None
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None if nothing is committed)."""
        return self._require_group().committed(list(partitions), None if timeout_ms is None else timeout_ms / 1000)

    def _require_group(self) -> GroupMembership:
        if self._group is None:
            raise ValueError("this consumer has no group_id: there is nothing to commit to")
        return self._group

    # ---- assignment -------------------------------------------------------------------------
    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these (topic, partition) pairs, replacing any earlier assignment."""
        if self._subscription is not None:
            raise ValueError("this consumer is subscribed to a group; assign() and subscribe() do not mix")
        wanted: list[TopicPartition] = []
        for item in partitions:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and type(item[1]) is int):
                raise TypeError(f"assign() takes (topic, partition) pairs, got {item!r:.100}")
            why = valid_topic_name(item[0])
            if why:
                raise InvalidConfigError(why)
            if item[1] < 0:
                raise ValueError(f"partition {item[1]} is negative")
            wanted.append(item)
        for tp in list(self._states):
            if tp not in wanted:
                self._drop(tp)
        for tp in wanted:
            if tp not in self._states:
                self._states[tp] = _PartitionState(tp[0], tp[1])
        self._refresh_leaders({t for t, _ in wanted}, strict=True)

    def assignment(self) -> set[TopicPartition]:
        return set(self._states)

    def _drop(self, tp: TopicPartition) -> None:
        st = self._states.pop(tp)
        if st.inflight:
            self._by_cid.pop(st.inflight, None)

    def _state(self, topic: str, partition: int) -> _PartitionState:
        st = self._states.get((topic, partition))
        if st is None:
            raise ValueError(f"{topic}-{partition} is not assigned to this consumer")
        return st

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """The next ``poll`` returns records of this partition from ``offset``."""
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset={offset!r}: must be an integer >= 0")
        st = self._state(topic, partition)
        self._reset_fetch(st, offset)

    def _reset_fetch(self, st: _PartitionState, offset: int | None) -> None:
        st.position = st.fetch_offset = offset
        st.buffer.clear()
        if st.inflight:
            self._by_cid.pop(st.inflight, None)
            st.inflight = 0

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or list(self._states):
            self._reset_fetch(self._state(*tp), self._list_offset(tp, EARLIEST))

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or list(self._states):
            self._reset_fetch(self._state(*tp), self._list_offset(tp, LATEST))

    def position(self, topic: str, partition: int) -> int:
        """Offset of the next record ``poll`` returns for this partition."""
        st = self._state(topic, partition)
        if st.position is None:
            self._reset_position(st)
        assert st.position is not None
        return st.position

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._list_offset(tp, EARLIEST) for tp in partitions}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition (the offset the next record will get)."""
        return {tp: self._list_offset(tp, LATEST) for tp in partitions}

    def offsets_for_times(self, query: dict[TopicPartition, int]) -> dict[TopicPartition, int | None]:
        """First offset whose timestamp >= the given ms, or None if there is none."""
        out: dict[TopicPartition, int | None] = {}
        for tp, ts in query.items():
            off = self._list_offset(tp, ts)
            out[tp] = off if off >= 0 else None
        return out

    # ---- plumbing ------------------------------------------------------------------------------
    def _reset_channel(self, ch: Channel) -> None:
        self.channels.reset(ch)
        self._forget_fetches(ch)

    def _forget_fetches(self, ch: Channel) -> None:
        """Fetches in flight on ``ch`` will never be answered: send them again."""
        for st in self._states.values():
            if st.channel is ch and st.inflight:
                self._by_cid.pop(st.inflight, None)
                st.inflight = 0

    def _refresh_leaders(self, topics: set[str], strict: bool = False) -> None:
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
                    self._leaders[(name, p.partition)] = p.endpoint
                else:
                    self._leaders.pop((name, p.partition), None)
            if strict:
                for t, part in self._states:
                    if t == name and part >= len(md.partitions):
                        raise UnknownTopicOrPartitionError(f"topic {name!r} has no partition {part}")

    def _leader(self, tp: TopicPartition, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            ep = self._leaders.get(tp)
            if ep is not None:
                return ep
            self._refresh_leaders({tp[0]})
            if tp in self._leaders:
                continue
            if time.monotonic() + delay > deadline:
                raise RequestTimedOutError(f"no leader for {tp[0]}-{tp[1]} within {timeout_s:.1f} s")
            time.sleep(delay)  # back-off between metadata refreshes
            delay = min(delay * 2, 0.5)

    def _list_offset(self, tp: TopicPartition, timestamp: int) -> int:
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
                self._leaders.pop(tp, None)
                time.sleep(self.retry_backoff_s)  # back-off before retrying another leader

    def _reset_position(self, st: _PartitionState) -> None:
        if self.auto_offset_reset == "none":
            raise OffsetOutOfRangeError(
                f"no position for {st.topic}-{st.partition} and auto_offset_reset='none'; seek() first"
            )
        which = EARLIEST if self.auto_offset_reset == "earliest" else LATEST
        offset = self._list_offset((st.topic, st.partition), which)
        st.position = st.fetch_offset = offset

    def _send_fetch(self, st: _PartitionState, now: float) -> None:
        tp = (st.topic, st.partition)
        endpoint = self._leaders.get(tp)
        if endpoint is None:
            self._refresh_leaders({st.topic})
            endpoint = self._leaders.get(tp)
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

    def _fill(self, now: float) -> None:
        """Make sure every partition that can use data has a fetch in flight."""
        for st in self._states.values():
            if st.inflight:
                if now >= st.inflight_deadline and st.channel is not None:
                    log.info("fetch for %s-%d timed out; reconnecting", st.topic, st.partition)
                    self._leaders.pop((st.topic, st.partition), None)
                    self._reset_channel(st.channel)
                continue
            if now < st.retry_at or len(st.buffer) >= self.max_poll_records * 4:
                continue
            if st.position is None:
                self._reset_position(st)
            self._send_fetch(st, now)

    def _on_reply(self, ch: Channel) -> None:
        for reply in ch.replies():
            st = self._by_cid.pop(reply.id, None)
            if st is None or st.inflight != reply.id:
                continue  # a stale reply (after seek or reassignment)
            st.inflight = 0
            now = time.monotonic()
            if reply.error is not None:
                self._on_fetch_error(st, reply.error, now)
                continue
            st.high_watermark = reply.fields.get("high_watermark", -1)
            if not reply.frames:
                continue
            data = reply.frames[0]
            buf = data.buffer if hasattr(data, "buffer") else data
            start = st.fetch_offset
            assert start is not None
            topic, partition = st.topic, st.partition
            try:
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
                        st.buffer.extend(r for r in records if r.offset >= start)
                    else:
                        st.buffer.extend(records)
                    st.fetch_offset = max(st.fetch_offset or 0, batch.header.next_offset)
            except SluiceError as exc:
                log.error("corrupt data from %s-%d at offset %d: %s", topic, partition, start, exc)
                st.retry_at = now + self.retry_backoff_s
                continue
            if len(st.buffer) < self.max_poll_records * 4:
                self._send_fetch(st, now)  # fetch ahead while the application consumes

    def _on_fetch_error(self, st: _PartitionState, err: SluiceError, now: float) -> None:
        if isinstance(err, OffsetOutOfRangeError):
            if self.auto_offset_reset == "none":
                raise err
            log.warning("%s-%d: %s; resetting to %s", st.topic, st.partition, err, self.auto_offset_reset)
            st.buffer.clear()
            st.position = st.fetch_offset = None
            return
        if not err.retriable:
            raise err
        self._leaders.pop((st.topic, st.partition), None)
        st.retry_at = now + self.retry_backoff_s

    def poll(self, timeout_ms: int = 1000) -> list[ConsumerRecord]:
        """Records after each partition's position, up to ``max_poll_records``; waits up to
        ``timeout_ms`` for the first one. Returns [] on timeout."""
        if self._closed:
            raise ConsumerClosedError("poll() on a closed consumer")
        if not isinstance(timeout_ms, int) or timeout_ms < 0:
            raise ValueError(f"timeout_ms={timeout_ms!r}: must be an integer >= 0")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self._ensure_group(deadline)
            now = time.monotonic()
            self._fill(now)
            out = self._take()
            if out or now >= deadline:
                return out
            wait = deadline - now
            for st in self._states.values():
                if not st.inflight and st.retry_at > now:
                    wait = min(wait, st.retry_at - now)
            events = dict(self.poller.poll(int(max(wait, 0.0) * 1000) + 1))
            for ch in self.channels:
                if ch.sock in events:
                    self._on_reply(ch)
                if ch.monitor is not None and ch.monitor in events and ch.disconnected():
                    self._forget_fetches(ch)  # the worker went away; they are resent (queued until it is back)

    def _take(self) -> list[ConsumerRecord]:
        out: list[ConsumerRecord] = []
        room = self.max_poll_records
        states = list(self._states.values())
        if not states:
            return out
        self._rr = (self._rr + 1) % len(states)  # rotate the first partition: none starves
        for st in states[self._rr :] + states[: self._rr]:
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
            st.position = out[-1].offset + 1
        return out

    def close(self, timeout_ms: int | None = None) -> None:
        """Commit (with auto commit), leave the group (unless a static member), close."""
        if self._closed:
            return
        g = self._group
        if g is not None:
            if self._committer is not None:
                self._committer.close()
            if self.enable_auto_commit and self._states and g.member_id:
                try:
                    self.commit(timeout_ms=timeout_ms)
                except SluiceError as exc:
                    log.warning("final commit failed: %s", exc)
            g.close(leave=g.instance_id is None)
        self._closed = True
        self.channels.close()
        self.metadata.bootstrap.close()
        self.ctx.term()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _commit_body(offsets: dict[TopicPartition, int | tuple[int, str]]) -> dict[TopicPartition, tuple[int, str]]:
    out: dict[TopicPartition, tuple[int, str]] = {}
    for tp, v in offsets.items():
        off, md = (v, "") if isinstance(v, int) else v
        if type(off) is not int or off < 0 or not isinstance(md, str):
            raise ValueError(f"offset for {tp}: {v!r} is not an offset >= 0 (or (offset, metadata))")
        out[(str(tp[0]), int(tp[1]))] = (off, md)
    return out


class _Committer:
    """One background thread that sends ``commit_async`` commits in order, to the group's
    coordinator (its own ``CoordinatorLink``)."""

    def __init__(self, group: GroupMembership) -> None:
        self.group = group
        self.queue: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, body: dict[TopicPartition, tuple[int, str]], callback: Any) -> None:
        self.queue.put((body, callback))

    def _run(self) -> None:
        link = self.group.new_link()
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                body, callback = item
                err: SluiceError | None = None
                try:
                    self.group.commit(body, link=link)
                except SluiceError as exc:
                    err = exc
                    log.warning("asynchronous commit failed: %s", exc)
                if callback is not None:
                    try:
                        callback(body, err)
                    except Exception:  # noqa: BLE001 - a user callback must not kill the committer
                        log.exception("commit callback raised")
        finally:
            link.close()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)
