"""The record accumulator: where the application threads leave records for the sender.

It holds, under one producer-wide ``lock``:

- ``queues``: per partition, a deque of ``ProducerBatch`` (oldest first). The tail batch
  is open for appends until it is full, encoded or taken by the sender;
- ``sticky``: the sticky partitioner's cache (topic -> the partition its key-less
  records go to, until that batch is sent or a new batch opens behind a full one);
- ``partitions``: the partition count of each topic the producer knows;
- buffer-space accounting: ``buffered`` bytes of records not completed yet, against
  ``buffer_memory`` (``send`` waits on the ``space`` condition when it is full);
- ``incomplete``: every batch not completed yet (``flush`` and ``close`` wait on them);
- ``in_flight``: produce requests outstanding per partition. Only the sender writes it
  (``request_started`` / ``request_ended``); ``send`` reads it without the lock to
  decide whether the sender needs a wake-up.

``Producer.send``, the hot path, appends a record to the tail batch of its partition
itself, under ``lock``: a few list appends and adding its size to ``buffered``. That is
the one place outside this module that writes the accumulator's state, and it is
inlined on purpose: a method call per record would cost about 3 % of ``send``. Every
other step is a method here: opening a batch (``new_batch``), waiting for buffer space
(``wait_for_space``), choosing the sticky partition (``stick``).

The sender (``ipc/client/sender.py``) sees only this object, never the ``Producer``: it
takes the batches that may go now (``drain``), puts failed ones back at the head of
their queue for a retry (``reenqueue``), takes out the batches whose delivery timeout
passed (``expired``) and completes batches (``complete``, ``abort``), which resolves
their futures, frees their buffer space and runs the callbacks.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping

from ipc.client.batch import ProducerBatch
from ipc.errors import RequestTimedOutError, SluiceError

log = logging.getLogger(__name__)

TP = tuple[str, int]
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # batches per produce request (at least one, whatever its size)


class RecordAccumulator:
    """Per-partition queues of batches and their accounting; see the module docstring."""

    def __init__(
        self,
        *,
        batch_size: int,
        buffer_memory: int,
        linger_s: float,
        max_in_flight: int,
        delivery_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batch_size = batch_size
        self.buffer_memory = buffer_memory
        self.linger_s = linger_s
        self.max_in_flight = max_in_flight
        self.delivery_timeout_s = delivery_timeout_s
        self._clock = clock
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self.queues: dict[TP, collections.deque[ProducerBatch]] = {}
        self.incomplete: set[ProducerBatch] = set()
        self.buffered = 0
        self.partitions: dict[str, int] = {}
        self.sticky: dict[str, TP] = {}  # topic -> its sticky (topic, partition)
        self._sticky_next = 0
        self.in_flight: collections.Counter[TP] = collections.Counter()
        self.closed = False
        # records completed, counted per batch in ``complete`` (``Producer.metrics()``)
        self.records_sent = 0
        self.records_failed = 0

    # ---- the application threads' side ----------------------------------------------------
    def stick(self, topic: str, partitions: int) -> TP:
        """Pick the sticky partition of ``topic`` for records without key or partition
        (round robin over the topic's ``partitions``, one batch at a time)."""
        tp = (topic, self._sticky_next % partitions)
        self._sticky_next += 1
        self.sticky[topic] = tp
        return tp

    def new_batch(self, tp: TP, key: bytes | None, timestamp_ms: int | None) -> ProducerBatch:
        """Open a new batch at the tail of ``tp``'s queue. Called with the lock held."""
        now = self._clock()
        b = ProducerBatch(tp[0], tp[1], now, now + self.delivery_timeout_s, self.lock)
        if timestamp_ms is not None:
            b.first_ts = int(timestamp_ms)
        q = self.queues.get(tp)
        if q is None:
            q = self.queues[tp] = collections.deque()
        q.append(b)
        self.incomplete.add(b)
        if key is None and self.sticky.get(tp[0]) == tp and q[0] is not b:
            self.sticky.pop(tp[0], None)  # the sticky partition has a full batch: move on
        return b

    def wait_for_space(self, size: int, max_block_s: float, wake: Callable[[], None]) -> None:
        """Wait (lock held) until ``size`` more bytes fit in ``buffer_memory``, waking the
        sender so that it frees some; RequestTimedOutError after ``max_block_s`` or once
        closed. A record larger than the whole buffer goes in when the buffer is empty."""
        deadline = self._clock() + max_block_s
        while self.buffered + size > self.buffer_memory and self.buffered > 0:
            left = deadline - self._clock()
            if left <= 0 or self.closed:
                raise RequestTimedOutError(
                    f"buffer_memory={self.buffer_memory} full for {max_block_s:.1f} s (max_block_ms)"
                )
            wake()
            self.space.wait(left)

    def pending(self) -> list[ProducerBatch]:
        """The batches not completed yet."""
        with self.lock:
            return list(self.incomplete)

    def close(self) -> None:
        """No more records: the sender finishes the requests in flight, then ``abort``s."""
        self.closed = True

    # ---- the sender's side --------------------------------------------------------------------
    def topics(self) -> list[str]:
        return list(self.partitions)

    def partitions_added(self, topic: str, count: int) -> None:
        """Metadata says ``topic`` has ``count`` partitions: adopt a larger count."""
        if count > self.partitions.get(topic, 0):
            self.partitions[topic] = count

    def request_started(self, tp: TP) -> None:
        self.in_flight[tp] += 1

    def request_ended(self, tp: TP) -> None:
        self.in_flight[tp] -= 1

    def drain(
        self, now: float, leaders: Mapping[TP, str], hold_unencoded: bool
    ) -> tuple[list[tuple[TP, str, list[ProducerBatch]]], set[str]]:
        """Take the batches that may be sent now: ``[(tp, leader endpoint, batches)]`` in
        queue order, and the topics with a partition waiting for a leader.

        A partition may send when it has fewer than ``max_in_flight`` requests out and its
        head batch is past its retry back-off. With none out it sends at once (natural
        batching); with some out, only a full head batch (or more than one batch) or one
        that waited ``linger_s``. One request takes batches from the head up to
        ``MAX_REQUEST_BYTES`` (at least one). ``hold_unencoded``: there is no producer id
        yet, so batches never encoded wait (retries encoded under an earlier id may go)."""
        to_send: list[tuple[TP, str, list[ProducerBatch]]] = []
        no_leader: set[str] = set()
        with self.lock:
            for tp, q in self.queues.items():
                if not q:
                    continue
                n = self.in_flight[tp]
                if n >= self.max_in_flight or q[0].not_before > now:
                    continue
                full = q[0].size >= self.batch_size or len(q) > 1
                if n and not full and now - q[0].created < self.linger_s:
                    continue
                endpoint = leaders.get(tp)
                if endpoint is None:
                    no_leader.add(tp[0])
                    continue
                if hold_unencoded and q[0].encoded is None:
                    continue
                batches: list[ProducerBatch] = []
                total = 0
                while q and (not batches or total + q[0].size <= MAX_REQUEST_BYTES):
                    if hold_unencoded and q[0].encoded is None:
                        break
                    b = q.popleft()
                    total += b.size
                    batches.append(b)
                if self.sticky.get(tp[0]) == tp:
                    self.sticky.pop(tp[0], None)
                to_send.append((tp, endpoint, batches))
        return to_send, no_leader

    def next_due(self, now: float, leaders: Mapping[TP, str], hold_unencoded: bool) -> tuple[float, bool]:
        """Seconds until a queued batch may be sent or expires (``inf`` if none is queued),
        and whether batches wait for a producer id."""
        t = math.inf
        wait_for_id = False
        with self.lock:
            for tp, q in self.queues.items():
                if q:
                    head = q[0]
                    if hold_unencoded and q[-1].encoded is None:
                        wait_for_id = True
                    # a partition without a leader waits for metadata, one whose head
                    # batch needs a producer id waits for it: neither is due now
                    if tp in leaders and not (hold_unencoded and head.encoded is None):
                        n = self.in_flight[tp]
                        if n == 0:
                            t = min(t, head.not_before - now)
                        elif n < self.max_in_flight:
                            # a retry backing off at the head waits for its backoff, not its linger
                            t = min(t, max(head.not_before, head.created + self.linger_s) - now)
                    t = min(t, head.deadline - now)
        return t, wait_for_id

    def reenqueue(self, tp: TP, batches: list[ProducerBatch]) -> None:
        """Put batches of a failed request back at the head of ``tp``'s queue, in their
        order, ahead of anything queued since: a retry is not overtaken."""
        with self.lock:
            q = self.queues.setdefault(tp, collections.deque())
            for b in reversed(batches):
                q.appendleft(b)

    def expired(self, now: float) -> dict[TP, list[ProducerBatch]]:
        """Take out the queued batches whose delivery deadline has passed (from the head)."""
        out: dict[TP, list[ProducerBatch]] = {}
        with self.lock:
            for tp, q in self.queues.items():
                while q and now >= q[0].deadline:
                    out.setdefault(tp, []).append(q.popleft())
        return out

    def waiting_for_id(self) -> bool:
        """Whether some queued batch was never encoded (needs a producer id to go)."""
        with self.lock:
            return any(q and q[-1].encoded is None for q in self.queues.values())

    def take_unencoded(self) -> list[ProducerBatch]:
        """Take out every queued batch never encoded (from the tails)."""
        out: list[ProducerBatch] = []
        with self.lock:
            for q in self.queues.values():
                while q and q[-1].encoded is None:
                    out.append(q.pop())
        return out

    def complete(self, batches: list[ProducerBatch], base_offsets: list[int] | None, error: SluiceError | None) -> None:
        """Resolve the futures of ``batches`` (offsets or ``error``), free their buffer space,
        wake waiters, then run their callbacks (in the calling thread: the sender's)."""
        events = []
        callbacks = []
        with self.lock:
            records = 0
            for i, b in enumerate(batches):
                records += len(b.values)
                b.base_offset = base_offsets[i] if base_offsets is not None and i < len(base_offsets) else -1
                b.error = error
                b.done = True
                b.encoded = None
                self.buffered -= b.size
                self.incomplete.discard(b)
                if b.event is not None:
                    events.append(b.event)
                if b.callbacks:
                    callbacks.extend(b.callbacks)
                    b.callbacks = None
            if error is None:
                self.records_sent += records
            else:
                self.records_failed += records
            self.space.notify_all()
        for ev in events:
            ev.set()
        for fn, fut in callbacks:
            try:
                fn(fut)
            except Exception:  # noqa: BLE001 - a user callback must not kill the I/O thread
                log.exception("producer callback raised")

    def abort(self, error: SluiceError) -> None:
        """Fail every batch not completed yet with ``error``."""
        batches = self.pending()
        if batches:
            self.complete(batches, None, error)
