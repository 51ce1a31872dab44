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
match or a subscribed topic's partition count changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import zmq as _zmq

from ipc.client.committer import Committer, commit_body
from ipc.client.fetcher import ConsumerRecord, Fetcher
from ipc.client.group import GroupMembership
from ipc.client.metadata import ClusterMetadata
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
        security: Security = None,
        zmq_module: ModuleType = _zmq,
    ) -> None:
        self.endpoints = parse_bootstrap(bootstrap)
        self._subs = SubscriptionState(auto_offset_reset)  # checks auto_offset_reset
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
        self.ctx = client_context(zmq_module, security)
        self.metadata = ClusterMetadata(
            BootstrapChannel(self.ctx, self.endpoints, zmq_module), self.request_timeout_s, allow_auto_create=False
        )
        self._fetcher = Fetcher(
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
        )
        self._closed = False
        self._group: GroupMembership | None = None
        self._committer: Committer | None = None
        self.on_assign = on_assign
        self.on_revoke = on_revoke
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
                client_id=client_id,
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
    def subscribe(self, topics: Sequence[str] | str) -> None:
        """Join the consumer group for ``topics`` (a list of names, or one regex pattern
        string matched against every topic's full name; internal ``__`` topics excluded).
        Partitions are assigned by the group coordinator on the next ``poll``."""
        if self._group is None:
            raise ValueError("subscribe() needs a group_id; use assign() without a group")
        self._subs.subscribe(topics)
        self._group.needs_rejoin = True

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
        wanted = self._subs.assign(partitions)
        self._fetcher.sync()
        self._fetcher.refresh_leaders({t for t, _ in wanted}, strict=True)

    def assignment(self) -> set[TopicPartition]:
        return set(self._subs.assignment)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """The next ``poll`` returns records of this partition from ``offset``."""
        if type(offset) is not int or offset < 0:
            raise ValueError(f"offset={offset!r}: must be an integer >= 0")
        st = self._subs.state(topic, partition)
        self._fetcher.seek((st.topic, st.partition), offset)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or list(self._subs.assignment):
            st = self._subs.state(*tp)
            self._fetcher.seek((st.topic, st.partition), self._fetcher.list_offset(tp, EARLIEST))

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or list(self._subs.assignment):
            st = self._subs.state(*tp)
            self._fetcher.seek((st.topic, st.partition), self._fetcher.list_offset(tp, LATEST))

    def position(self, topic: str, partition: int) -> int:
        """Offset of the next record ``poll`` returns for this partition."""
        st = self._subs.state(topic, partition)
        if st.position is None:
            self._fetcher.reset_position((st.topic, st.partition))
        assert st.position is not None
        return st.position

    def highwater(self, topic: str, partition: int) -> int | None:
        """The high watermark the last fetch reply of this assigned partition carried
        (None before the first reply): no network round trip, as kafka-python's. With
        ``position()`` it tells whether the consumer has caught up."""
        st = self._fetcher.fetches.get((topic, partition))
        return None if st is None or st.high_watermark < 0 else st.high_watermark

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._fetcher.list_offset(tp, EARLIEST) for tp in partitions}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition (the offset the next record will get)."""
        return {tp: self._fetcher.list_offset(tp, LATEST) for tp in partitions}

    def offsets_for_times(self, query: dict[TopicPartition, int]) -> dict[TopicPartition, int | None]:
        """First offset whose timestamp >= the given ms, or None if there is none."""
        out: dict[TopicPartition, int | None] = {}
        for tp, ts in query.items():
            off = self._fetcher.list_offset(tp, ts)
            out[tp] = off if off >= 0 else None
        return out

    # ---- polling -------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 1000) -> list[ConsumerRecord]:
        """Records after each partition's position, up to ``max_poll_records``; waits up to
        ``timeout_ms`` for the first one. Returns [] on timeout."""
        if self._closed:
            raise ConsumerClosedError("poll() on a closed consumer")
        if not isinstance(timeout_ms, int) or timeout_ms < 0:
            raise ValueError(f"timeout_ms={timeout_ms!r}: must be an integer >= 0")
        deadline = time.monotonic() + timeout_ms / 1000
        fetcher = self._fetcher
        while True:
            self._ensure_group(deadline)
            now = time.monotonic()
            fetcher.fill(now)
            out = fetcher.take()
            if out or now >= deadline:
                return out
            fetcher.wait(now, deadline)

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
