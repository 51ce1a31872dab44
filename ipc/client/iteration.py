"""``for record in consumer``: records handed out one at a time, positions moving with them.

Iteration polls a batch (``Consumer.poll``) and hands it out one record at a time, as
kafka-python's iterator does. Each partition's position (``TopicPartitionState``) is put
back to the first record of the batch, then moves past each record as it is handed out,
so a commit inside the loop commits exactly what the loop has seen (at least once: a
record handed out is not seen again unless the application seeks back).

Anything that moves positions or changes what is read (``poll``, ``seek``, ``assign``,
``subscribe``, ``unsubscribe``, ``pause``) first ``drop``s the records not handed out
yet: their partitions fetch again from their positions, which are the first records not
handed out. Waiting: ``poll`` in steps of at most a second, until a record comes or
``consumer_timeout_ms`` passes (StopIteration); without a timeout iteration waits for
ever, as kafka-python's default.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ipc.client.fetcher import ConsumerRecord
from ipc.client.subscription import SubscriptionState, TopicPartition

if TYPE_CHECKING:
    from ipc.client.fetcher import Fetcher

STEP_MS = 1000  # one poll's wait while iterating


class IterationBuffer:
    """The records of the last poll not handed out by iteration yet."""

    def __init__(self, subscription: SubscriptionState) -> None:
        self.subscription = subscription
        self.fetcher: Fetcher | None = None  # set by the consumer once it has one
        self.records: collections.deque[ConsumerRecord] = collections.deque()

    def __bool__(self) -> bool:
        return bool(self.records)

    def next(self, poll: Callable[..., list[ConsumerRecord]], timeout_s: float | None) -> ConsumerRecord:
        buf = self.records
        if not buf:
            self._fill(poll, timeout_s)
        r = buf.popleft()
        st = self.subscription.assignment.get((r.topic, r.partition))
        if st is not None:
            st.position = r.offset + 1
        return r

    def _fill(self, poll: Callable[..., list[ConsumerRecord]], timeout_s: float | None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left_ms = STEP_MS if deadline is None else min(STEP_MS, int(max(0.0, deadline - time.monotonic()) * 1000))
            records = poll(timeout_ms=left_ms)
            if records:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise StopIteration
        self.hold(records)

    def hold(self, records: list[ConsumerRecord]) -> None:
        """Keep ``records`` (a ``poll``'s) to be handed out later: each partition's position
        goes back to its first record and moves again as they are handed out."""
        first: dict[TopicPartition, int] = {}
        for r in records:
            first.setdefault((r.topic, r.partition), r.offset)
        assignment = self.subscription.assignment
        for tp, offset in first.items():  # back to each partition's first record
            st = assignment.get(tp)
            if st is not None:
                st.position = offset
        self.records.extend(records)

    def take(self, max_records: int) -> list[ConsumerRecord]:
        """Hand out up to ``max_records`` held records at once (the asyncio façade's
        ``poll``), moving each partition's position past its last one."""
        buf = self.records
        n = min(max_records, len(buf))
        out = [buf.popleft() for _ in range(n)]
        assignment = self.subscription.assignment
        last: dict[TopicPartition, int] = {}
        for r in out:
            last[(r.topic, r.partition)] = r.offset
        for tp, offset in last.items():
            st = assignment.get(tp)
            if st is not None:
                st.position = offset + 1
        return out

    def drop(self) -> None:
        """Forget the records not handed out: their partitions fetch again from their
        positions (the first record not handed out)."""
        buf = self.records
        if not buf:
            return
        assignment = self.subscription.assignment
        done: set[TopicPartition] = set()
        for r in buf:
            tp = (r.topic, r.partition)
            if tp not in done:
                done.add(tp)
                st = assignment.get(tp)
                if st is not None and st.position is not None and self.fetcher is not None:
                    self.fetcher.seek(tp, st.position)
        buf.clear()
