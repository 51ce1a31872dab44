"""``Consumer``: read partitions by offset, with fetch-ahead; alone or in a group.

Not thread-safe (like Kafka's): one application thread calls it. The facade ties three
parts together, each in its own module:

- ``ipc/client/subscription.py``: ``SubscriptionState``, what the consumer reads
  (``assign``, or ``subscribe`` to topics or a pattern), the assignment with each
  partition's position, and the reset policy (``auto_offset_reset``);
- ``ipc/client/fetcher.py``: ``Fetcher``, one long-poll fetch in flight per assigned
  partition to its leader's worker; as soon as a response arrives the next fetch is
  sent (fetch-ahead) and the batches are decoded into records, which ``poll`` hands out
  in offset order per partition;
- ``ipc/client/committer.py``: ``Committer``, commits to the group (synchronous,
  asynchronous from a background thread, automatic from ``poll``) and committed offsets.

Group membership itself (join, sync, heartbeats, leave) is ``GroupMembership`` in
``ipc/client/group.py``; ``poll`` (re)joins through it and installs the assignments it
brings, and rejoins when the subscription's periodic look at the topics finds a pattern
match or a subscribed topic's partition count changed. Who hears of partitions moving
(assigned, revoked, lost): ``ipc/client/rebalance.py``. Deserializers:
``ipc/client/serde.py``.

Iteration (``for record in consumer``) polls a batch and hands it out one record at a
time; each partition's position moves with the records handed out (as kafka-python's
iterator), so a commit in the loop commits exactly what the loop has seen. Anything that
moves positions (``seek``, ``assign``, ``pause``, ``poll``, …) first drops the records
not handed out yet and fetches them again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import zmq as _zmq

from ipc.client.client_id import client_id_for
from ipc.client.committer import Committer, commit_body
from ipc.client.fetcher import ConsumerRecord, Fetcher
from ipc.client.group import GroupMembership
from ipc.client.iteration import IterationBuffer
from ipc.client.metadata import ClusterMetadata
from ipc.client.rebalance import RebalanceCallbacks
from ipc.client.serde import Deserializer, deserialize, resolve_deserializer
from ipc.client.stats import consumer_metrics
from ipc.client.structs import OffsetAndTimestamp
from ipc.client.subscription import METADATA_REFRESH_S, SubscriptionState, TopicPartition
from ipc.client.transport import Bootstrap, BootstrapChannel, Security, check_ints, client_context, parse_bootstrap
from ipc.errors import SluiceError
from ipc.protocol import ASSIGNORS, EARLIEST, LATEST

__all__ = ["Consumer", "ConsumerClosedError", "ConsumerRecord"]

log = logging.getLogger(__name__)


class ConsumerClosedError(SluiceError):
    code = "CONSUMER_CLOSED"


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
        bootstrap_servers: Bootstrap = None,
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
        client_id: str | None = None,
        on_assign: Callable[[list[TopicPartition]], Any] | None = None,
        on_revoke: Callable[[list[TopicPartition]], Any] | None = None,
        on_lost: Callable[[list[TopicPartition]], Any] | None = None,
        key_deserializer: str | Deserializer | None = None,
        value_deserializer: str | Deserializer | None = None,
        consumer_timeout_ms: float | None = None,
        security: Security = None,
        zmq_module: ModuleType = _zmq,
        same_host: bool = False,
    ) -> None:
        self.endpoints = parse_bootstrap(bootstrap, bootstrap_servers)
        self._key_deserializer = resolve_deserializer(key_deserializer, "key_deserializer")
        self._value_deserializer = resolve_deserializer(value_deserializer, "value_deserializer")
        self._deserializing = self._key_deserializer is not None or self._value_deserializer is not None
        if consumer_timeout_ms is not None and not (
            isinstance(consumer_timeout_ms, (int, float)) and consumer_timeout_ms >= 0
        ):
            raise ValueError(f"consumer_timeout_ms={consumer_timeout_ms!r}: must be a number >= 0 (or None)")
        # iteration stops after this long without a record (None, or inf: never, as kafka-python)
        self.consumer_timeout_s = (
            None if consumer_timeout_ms is None or consumer_timeout_ms == float("inf") else consumer_timeout_ms / 1000
        )
        self._subs = SubscriptionState(auto_offset_reset)  # checks auto_offset_reset
        self._iter_buf = IterationBuffer(self._subs)
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
        self.client_id = client_id_for(client_id, "consumer")
        self.ctx = client_context(zmq_module, security, self.client_id)
        self.metadata = ClusterMetadata(
            BootstrapChannel(self.ctx, self.endpoints, zmq_module), self.request_timeout_s, allow_auto_create=False
        )
        self._fetcher = self._iter_buf.fetcher = Fetcher(
            self._subs,
            self.metadata,
            ctx=self.ctx,
            zmq_module=zmq_module,
            max_poll_records=max_poll_records,
            fetch_max_bytes=fetch_max_bytes,
            fetch_max_wait_ms=fetch_max_wait_ms,
            fetch_min_bytes=fetch_min_bytes,
            request_timeout_s=self.request_timeout_s,
            retry_backoff_s=self.retry_backoff_s,
            same_host=same_host,
        )
        self._closed = False
        self._group: GroupMembership | None = None
        self._committer: Committer | None = None
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.on_lost = on_lost
        self._listener: Any = None
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
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
                client_id=self.client_id,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                max_poll_interval_ms=max_poll_interval_ms,
                rebalance_timeout_ms=rebalance_timeout_ms if rebalance_timeout_ms is not None else max_poll_interval_ms,
                assignors=strategies,
                request_timeout_s=self.request_timeout_s,
            )
            self._committer = Committer(
                self._group,
                enable_auto_commit=enable_auto_commit,
                auto_commit_interval_s=self.auto_commit_interval_s,
            )

    # ---- groups ----------------------------------------------------------------------------
    def subscribe(
        self,
        topics: Sequence[str] | str | None = None,
        pattern: str | re.Pattern[str] | None = None,
        listener: Any = None,
    ) -> None:
        """Join the consumer group for ``topics`` (a list of names; one string is a
        pattern) or ``pattern`` (a regex matched against every topic's full name; internal
        ``__`` topics excluded). Partitions are assigned by the group coordinator on the
        next ``poll``. ``listener``: an object with ``on_partitions_assigned``,
        ``on_partitions_revoked`` and optionally ``on_partitions_lost``
        (``ipc/client/rebalance.py``), replacing an earlier subscription's."""
        if self._group is None:
            raise ValueError("subscribe() needs a group_id; use assign() without a group")
        if (topics is None) == (pattern is None):
            raise ValueError("subscribe() takes topics or a pattern (one of them)")
        if pattern is not None:
            topics = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
            if not isinstance(topics, str):
                raise TypeError(f"pattern must be a str or a compiled pattern, got {type(pattern).__name__}")
        assert topics is not None
        RebalanceCallbacks(listener=listener)  # checks the listener's methods
        self._drop_iter_buffer()
        self._subs.subscribe(topics)
        self._listener = listener
        self._group.needs_rejoin = True

    def unsubscribe(self) -> None:
        """Give up the subscription (or the manual assignment): revoke the partitions
        (committed first with auto commit, the callbacks told), leave the group (a static
        member does not: as on close), read nothing until the next ``subscribe`` or
        ``assign``."""
        self._drop_iter_buffer()
        g = self._group
        if g is not None and self._subs.subscription is not None:
            owned = list(g.assignment)
            if owned and g.member_id:
                self._commit_before_revoke(owned)
                revoked = self._rebalance_callbacks().revoked
                if revoked is not None:
                    revoked(owned)
            g.leave(send=g.instance_id is None)
        self._subs.unsubscribe()
        self._fetcher.sync()

    def subscription(self) -> set[str]:
        """The topics subscribed to (for a pattern: those it matched at the last look);
        empty when not subscribed."""
        return set(self._subs.topics) if self._subs.subscription is not None else set()

    def _rebalance_callbacks(self) -> RebalanceCallbacks:
        return RebalanceCallbacks(self.on_assign, self.on_revoke, self.on_lost, self._listener)

    def _topic_partitions(self) -> dict[str, int | None]:
        """Every topic's partition count (None: its metadata has an error), from one
        metadata request for all topics (which creates none). Asked from ``poll`` every
        ``METADATA_REFRESH_S``, so it waits at most that long for an answer."""
        topics = self.metadata.refresh(None, min(self.request_timeout_s, METADATA_REFRESH_S))
        return {name: None if md.error is not None else len(md.partitions) for name, md in topics.items()}

    def _apply_group_assignment(self, tps: list[TopicPartition], carry: bool = False) -> None:
        subs, fetcher = self._subs, self._fetcher
        added = subs.assign_from_group(tps, carry)
        fetcher.sync()
        if added:
            assert self._group is not None
            fetcher.refresh_leaders({t for t, _ in added})
            for tp, offset in self._group.committed(added).items():
                if tp not in subs.assignment:
                    continue
                start = subs.resume_offset(tp, offset)
                if start is not None:
                    fetcher.seek(tp, start)
        if not carry:
            subs.carried.clear()  # only for the assignment that directly follows

    def _commit_before_revoke(self, tps: list[TopicPartition]) -> None:
        if self.enable_auto_commit:
            try:
                positions = self._subs.positions()
                self.commit({tp: positions[tp] for tp in tps if tp in positions})
            except SluiceError as exc:
                log.warning("commit before revoking %s failed: %s", tps, exc)

    def _ensure_group(self, deadline: float) -> None:
        g = self._group
        if g is None or self._subs.subscription is None:
            return
        now = time.monotonic()
        topics, changed = self._subs.subscribed_topics(now, self._topic_partitions)
        if changed:
            g.needs_rejoin = True
        if g.needs_rejoin:
            cb = self._rebalance_callbacks()
            g.ensure_active(
                topics,
                cb.revoked,
                cb.assigned,
                self._commit_before_revoke,
                self._apply_group_assignment,
                deadline,
                on_lost=cb.lost,
            )
        else:
            g.last_poll = now
        assert self._committer is not None
        if self._subs.assignment and self._committer.auto_commit_due(now):
            self.commit_async()

    def commit(
        self, offsets: dict[TopicPartition, int | tuple[int, str]] | None = None, timeout_ms: int | None = None
    ) -> None:
        """Commit ``offsets`` (default: the current position of every assigned
        partition: the next record to read) to the group, synchronously."""
        c = self._require_committer()
        body = commit_body(self._subs.positions() if offsets is None else offsets)
        if body:
            c.commit(body, None if timeout_ms is None else timeout_ms / 1000)

    def commit_async(
        self,
        offsets: dict[TopicPartition, int | tuple[int, str]] | None = None,
        callback: Callable[[dict[TopicPartition, tuple[int, str]], SluiceError | None], Any] | None = None,
    ) -> None:
        """Commit in a background thread; ``callback(offsets, error)`` runs there when done."""
        c = self._require_committer()
        body = commit_body(self._subs.positions() if offsets is None else offsets)
        if not body:
            return
        c.commit_async(body, callback)

    def committed(
        self, partitions: Iterable[TopicPartition], timeout_ms: int | None = None
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None if nothing is committed)."""
        return self._require_committer().committed(partitions, None if timeout_ms is None else timeout_ms / 1000)

    def _require_committer(self) -> Committer:
        if self._committer is None:
            raise ValueError("this consumer has no group_id: there is nothing to commit to")
        return self._committer

    # ---- assignment -------------------------------------------------------------------------
    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these (topic, partition) pairs, replacing any earlier assignment."""
        self._drop_iter_buffer()
        wanted = self._subs.assign(partitions)
        self._fetcher.sync()
        self._fetcher.refresh_leaders({t for t, _ in wanted}, strict=True)

    def assignment(self) -> set[TopicPartition]:
        """The assigned (topic, partition) pairs."""
        return set(self._subs.assignment)

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching these assigned partitions; ``poll`` hands out none of their
        records (those already fetched wait) until ``resume``. Group membership goes on.
        ValueError for a partition not assigned. A partition that leaves the assignment
        is no longer paused."""
        self._drop_iter_buffer()
        self._subs.pause(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        """Fetch and hand out these partitions again (those not paused are ignored)."""
        self._subs.resume(partitions)

    def paused(self) -> set[TopicPartition]:
        """The assigned partitions paused now."""
        return set(self._subs.paused())

    def seek(self, topic: str | TopicPartition, partition: int, offset: int | None = None) -> None:
        """The next ``poll`` returns records of this partition from ``offset``:
        ``seek(topic, partition, offset)``, or kafka-python's ``seek(TopicPartition, offset)``."""
        if offset is None and isinstance(topic, tuple):
            (topic, partition), offset = topic, partition
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"offset={offset!r}: must be an integer >= 0")
        assert isinstance(topic, str)
        st = self._subs.state(topic, partition)
        self._drop_iter_buffer()
        self._fetcher.seek((st.topic, st.partition), int(offset))

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._drop_iter_buffer()
        for tp in partitions or list(self._subs.assignment):
            st = self._subs.state(*tp)
            self._fetcher.seek((st.topic, st.partition), self._fetcher.list_offset(tp, EARLIEST))

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        self._drop_iter_buffer()
        for tp in partitions or list(self._subs.assignment):
            st = self._subs.state(*tp)
            self._fetcher.seek((st.topic, st.partition), self._fetcher.list_offset(tp, LATEST))

    def position(self, topic: str | TopicPartition, partition: int | None = None) -> int:
        """Offset of the next record ``poll`` returns for this partition:
        ``position(topic, partition)`` or ``position(TopicPartition)``."""
        if partition is None:
            assert isinstance(topic, tuple)
            topic, partition = topic
        assert isinstance(topic, str)
        st = self._subs.state(topic, partition)
        if st.position is None:
            self._fetcher.reset_position((st.topic, st.partition))
        assert st.position is not None
        return st.position

    def highwater(self, topic: str | TopicPartition, partition: int | None = None) -> int | None:
        """The high watermark the last fetch reply of this assigned partition carried
        (None before the first reply): no network round trip, as kafka-python's. With
        ``position()`` it tells whether the consumer has caught up."""
        if partition is None:
            assert isinstance(topic, tuple)
            topic, partition = topic
        assert isinstance(topic, str)
        st = self._fetcher.fetches.get((topic, partition))
        return None if st is None or st.high_watermark < 0 else st.high_watermark

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._fetcher.list_offset(tp, EARLIEST) for tp in partitions}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition (the offset the next record will get)."""
        return {tp: self._fetcher.list_offset(tp, LATEST) for tp in partitions}

    def offsets_for_times(self, query: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """The first offset whose timestamp >= the given ms, with that record's timestamp
        (``OffsetAndTimestamp``, an int equal to the offset), or None if there is none."""
        out: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        for tp, ts in query.items():
            off, found_ts = self._fetcher.list_offset_and_timestamp(tp, ts)
            out[tp] = OffsetAndTimestamp(off, found_ts) if off >= 0 else None
        return out

    # ---- polling -------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[ConsumerRecord]:
        """Records after each partition's position, up to ``max_records`` (default
        ``max_poll_records``); waits up to ``timeout_ms`` for the first one. Returns []
        on timeout."""
        if self._closed:
            raise ConsumerClosedError("poll() on a closed consumer")
        if not isinstance(timeout_ms, int) or timeout_ms < 0:
            raise ValueError(f"timeout_ms={timeout_ms!r}: must be an integer >= 0")
        if max_records is not None and (type(max_records) is not int or max_records < 1):
            raise ValueError(f"max_records={max_records!r}: must be an integer >= 1")
        if self._iter_buf:
            self._drop_iter_buffer()
        deadline = time.monotonic() + timeout_ms / 1000
        fetcher = self._fetcher
        while True:
            self._ensure_group(deadline)
            now = time.monotonic()
            fetcher.fill(now)
            out = fetcher.take(max_records)
            if out or now >= deadline:
                return self._deserialize(out) if out and self._deserializing else out
            fetcher.wait(now, deadline)

    def _deserialize(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """``records`` deserialized; at a record that fails, the partitions of it and of
        the records after it go back to their first record not handed out, and the
        records before it are returned (or, if none, the error raised)."""
        out, err = deserialize(records, self._key_deserializer, self._value_deserializer)
        if err is None:
            return out
        rewind: dict[TopicPartition, int] = {}
        for r in records[len(out) :]:
            rewind.setdefault((r.topic, r.partition), r.offset)
        for tp, offset in rewind.items():
            self._fetcher.seek(tp, offset)
        if out:
            return out
        raise err

    # ---- iteration (ipc/client/iteration.py) ----------------------------------------------------
    def __iter__(self) -> Consumer:
        return self

    def __next__(self) -> ConsumerRecord:
        """The next record; waits for one (StopIteration after ``consumer_timeout_ms``
        without any)."""
        return self._iter_buf.next(self.poll, self.consumer_timeout_s)

    def _drop_iter_buffer(self) -> None:
        self._iter_buf.drop()

    def metrics(self) -> dict[str, Any]:
        """Counters since construction (records consumed and fetched, fetches, latency) and
        each assigned partition's lag as of its last fetch reply: docs/client.md#metrics."""
        return consumer_metrics(self._fetcher.stats, self._fetcher.positions())

    def close(self, timeout_ms: int | None = None) -> None:
        """Commit (with auto commit), leave the group (unless a static member), close."""
        if self._closed:
            return
        g = self._group
        if g is not None:
            if self._committer is not None:
                self._committer.close()
            if self.enable_auto_commit and self._subs.assignment and g.member_id:
                try:
                    self.commit(timeout_ms=timeout_ms)
                except SluiceError as exc:
                    log.warning("final commit failed: %s", exc)
            g.close(leave=g.instance_id is None)
        self._closed = True
        self._fetcher.close()
        self.metadata.bootstrap.close()
        self.ctx.term()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
