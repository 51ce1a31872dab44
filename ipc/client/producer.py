"""``Producer``: batching, partitioning, retries, and cheap futures.

The application thread's ``send`` does a few appends under one producer-wide lock and
returns a ``FutureRecordMetadata`` (two slots: its batch and its index; no lock or
event of its own). A background I/O thread owns every socket: it takes whole batches
from the per-partition queues, encodes each with one columnar ``encode_batch`` call,
and sends them to the partition leader's worker.

Natural batching: a partition with no request in flight is sent at once; records that
arrive while a request is outstanding accumulate and go out together when it
completes. ``linger_ms`` only matters with ``max_in_flight > 1``: it bounds how long a
non-full batch waits before an extra request is sent alongside the outstanding one.
With the default ``max_in_flight=1`` per partition, retries cannot reorder records.

Idempotence (on by default with ``acks="all"``, as in Kafka 3): before its first batch
the I/O thread asks the front endpoint for a producer id (``init_producer_id``). Each
batch gets its partition's next sequence number when it is encoded, once; a retry
re-sends the same bytes, so the leader recognises a batch it already wrote and answers
with its offset instead of writing it twice. ``ProducerIdState`` holds that state.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import operator
import os
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NamedTuple

import zmq as _zmq

from ipc.client.metadata import ClusterMetadata
from ipc.client.partitioner import KeyPartitioner
from ipc.client.transport import Bootstrap, BootstrapChannel, Channel, ChannelPool, check_ints, parse_bootstrap
from ipc.errors import (
    InvalidConfigError,
    InvalidProducerEpochError,
    LeaderNotAvailableError,
    OutOfOrderSequenceError,
    RequestTimedOutError,
    SluiceError,
)
from ipc.protocol import valid_topic_name
from ipc.records import Compression, Headers, encode_batch

log = logging.getLogger(__name__)

RECORD_OVERHEAD = 12  # three int32 columns per record
METADATA_MAX_AGE_S = 300.0  # as Kafka's metadata.max.age.ms: learn of added partitions
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_TS_DELTA = 2**31 - 1  # record timestamps are int32 deltas from their batch's first timestamp
SEQUENCE_SPACE = 2**31  # sequence numbers run 0 .. 2**31-1, then wrap to 0 (Kafka's)
INIT_PRODUCER_ID_TIMEOUT_S = 5.0


class ProducerClosedError(SluiceError):
    code = "PRODUCER_CLOSED"


class RecordMetadata(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int


class ProducerBatch:
    """Records for one partition that travel (and succeed or fail) together."""

    __slots__ = (
        "topic",
        "partition",
        "keys",
        "values",
        "lock",
        "headers",
        "timestamps",
        "size",
        "first_ts",
        "created",
        "deadline",
        "not_before",
        "attempts",
        "encoded",
        "producer_id",
        "producer_epoch",
        "base_sequence",
        "base_offset",
        "error",
        "done",
        "event",
        "callbacks",
    )

    def __init__(
        self, topic: str, partition: int, now: float, deadline: float, lock: threading.Lock | None = None
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.keys: list[bytes | None] | None = None  # made when the first key comes
        self.values: list[bytes | None] = []
        self.lock = lock or threading.Lock()  # the producer's: guards done/event/callbacks
        self.headers: list[Headers | None] | None = None
        self.timestamps: list[int] | None = None
        self.size = 0
        self.first_ts = int(time.time() * 1000)
        self.created = now
        self.deadline = deadline
        self.not_before = 0.0
        self.attempts = 0
        self.encoded: bytes | None = None
        self.producer_id = -1  # set when encoded by an idempotent producer
        self.producer_epoch = -1
        self.base_sequence = -1
        self.base_offset = -1
        self.error: SluiceError | None = None
        self.done = False
        self.event: threading.Event | None = None
        self.callbacks: list[tuple[Callable[[FutureRecordMetadata], Any], FutureRecordMetadata]] | None = None

    def takes_timestamp(self, timestamp_ms: int | None) -> bool:
        """Whether a record stamped ``timestamp_ms`` (None: now) fits this batch's int32
        timestamp deltas."""
        ts = time.time() * 1000 if timestamp_ms is None else timestamp_ms
        return abs(ts - self.first_ts) < MAX_TS_DELTA

    def encode(
        self, compression: Compression, producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1
    ) -> bytes:
        """The batch's bytes, encoded once: a retry re-sends them as they are (same
        producer id, epoch and sequence). The producer fields apply to the first call."""
        if self.encoded is None:
            n = len(self.values)
            deltas = None
            if self.timestamps is not None:
                first = self.first_ts
                deltas = [t - first for t in self.timestamps]
            self.encoded = encode_batch(
                self.values,
                self.keys,
                timestamp=self.first_ts,
                timestamp_deltas=deltas,
                headers=self.headers if self.headers is not None and len(self.headers) == n else None,
                compression=compression,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                base_sequence=base_sequence,
            )
            self.producer_id = producer_id
            self.producer_epoch = producer_epoch
            self.base_sequence = base_sequence
        return self.encoded


class FutureRecordMetadata(tuple[ProducerBatch, int]):
    """What ``send`` returns: resolves to ``RecordMetadata`` or raises the delivery error.

    A pair (batch, index) made by one C call per record (``tuple.__new__``): no lock or
    event of its own; waiting and callbacks use the batch's."""

    __slots__ = ()

    def done(self) -> bool:
        return self[0].done

    def _wait(self, timeout: float | None) -> None:
        b = self[0]
        if b.done:
            return
        with b.lock:
            if not b.done and b.event is None:
                b.event = threading.Event()
            event = b.event
        if event is not None and not event.wait(timeout):
            raise TimeoutError(f"record to {b.topic}-{b.partition} not acknowledged within {timeout} s")

    def result(self, timeout: float | None = None) -> RecordMetadata:
        self._wait(timeout)
        b, index = self
        if b.error is not None:
            raise b.error
        offset = b.base_offset + index if b.base_offset >= 0 else -1
        ts = b.timestamps[index] if b.timestamps is not None else b.first_ts
        return RecordMetadata(b.topic, b.partition, offset, ts)

    def exception(self, timeout: float | None = None) -> SluiceError | None:
        self._wait(timeout)
        return self[0].error

    def add_done_callback(self, fn: Callable[[FutureRecordMetadata], Any]) -> None:
        """Call ``fn(future)`` when done (at once if already done; else in the I/O thread)."""
        b = self[0]
        with b.lock:
            if not b.done:
                if b.callbacks is None:
                    b.callbacks = []
                b.callbacks.append((fn, self))
                return
        fn(self)


_new_future = tuple.__new__


class _InFlight:
    __slots__ = ("cid", "channel", "batches", "deadline", "key")

    def __init__(self, cid: int, channel: Channel, batches: list[ProducerBatch], deadline: float, key: tuple[str, int]):
        self.cid = cid
        self.channel = channel
        self.batches = batches
        self.deadline = deadline
        self.key = key


def resolve_idempotence(enable_idempotence: bool | None, acks: int | str, max_in_flight: int) -> bool:
    """Kafka 3's rule: on by default, off by default when ``acks`` is not "all" (or more
    than one request may be in flight); asking for it with such settings is an error."""
    if enable_idempotence is None:
        return acks == "all" and max_in_flight == 1
    if not isinstance(enable_idempotence, bool):
        raise ValueError(f"enable_idempotence={enable_idempotence!r}: must be True, False or None")
    if enable_idempotence and acks != "all":
        raise ValueError(
            f"enable_idempotence=True needs acks='all', got acks={acks!r}: the producer may only move on "
            "once every in-sync replica has a batch; use acks='all', or enable_idempotence=False"
        )
    if enable_idempotence and max_in_flight != 1:
        raise ValueError(
            f"enable_idempotence=True needs max_in_flight=1, got {max_in_flight}: a batch that is retried "
            "must not be overtaken by the next batch of its partition"
        )
    return enable_idempotence


class ProducerIdState:
    """The idempotent producer's id, epoch and next sequence per partition. Used by the
    I/O thread only; pure logic (the ``init_producer_id`` request is made by the caller).

    A batch takes its partition's next sequence when it is first encoded; a retry re-sends
    the same bytes. When batches certainly were not written (the leader answered an
    error) and they were the last ones of their partition to get sequences, their
    sequences are given back. Otherwise the producer id is dropped (``drop``): when the
    outcome of a sent batch is unknown (given up after a timeout), when the leader does
    not agree (OUT_OF_ORDER_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH). Batches encoded
    afterwards wait for a new producer id and start every partition again at sequence 0;
    batches already encoded keep their id and sequence, so their retries are still
    recognised.
    """

    def __init__(self) -> None:
        self.producer_id = -1
        self.producer_epoch = -1
        self._next: dict[tuple[str, int], int] = {}
        self.dropped = 0  # how many producer ids were given up

    @property
    def ready(self) -> bool:
        return self.producer_id >= 0

    def set_id(self, producer_id: int, producer_epoch: int) -> None:
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self._next.clear()

    def drop(self, why: str) -> None:
        if self.producer_id >= 0:
            log.warning("dropping producer id %d (epoch %d): %s", self.producer_id, self.producer_epoch, why)
            self.dropped += 1
        self.producer_id = -1
        self.producer_epoch = -1
        self._next.clear()

    def sequence(self, tp: tuple[str, int]) -> int:
        """The next batch of ``tp`` starts at this sequence."""
        return self._next.get(tp, 0)

    def advance(self, tp: tuple[str, int], count: int) -> None:
        """A batch of ``count`` records starting at ``sequence(tp)`` was encoded."""
        self._next[tp] = (self._next.get(tp, 0) + count) % SEQUENCE_SPACE

    def not_written(self, tp: tuple[str, int], batches: Sequence[ProducerBatch], err: SluiceError) -> None:
        """The leader answered ``err`` to a request with ``batches``: none was written."""
        mine = [b for b in batches if self.producer_id >= 0 and b.producer_id == self.producer_id]
        if not mine:
            return  # not sequenced, or sequenced under an id already dropped
        if isinstance(err, (OutOfOrderSequenceError, InvalidProducerEpochError)):
            self.drop(f"{tp[0]}-{tp[1]}: {err}")
            return
        first = mine[0].base_sequence
        end = (mine[-1].base_sequence + len(mine[-1].values)) % SEQUENCE_SPACE
        if self._next.get(tp) == end:
            self._next[tp] = first  # the next batch takes the failed batches' sequences
        else:
            self.drop(f"{tp[0]}-{tp[1]}: sequences {first}..{end - 1} failed with later ones handed out: {err}")

    def unresolved(self, tp: tuple[str, int], batches: Sequence[ProducerBatch], why: str) -> None:
        """``batches`` were given up after being sent: the leader may have written them."""
        if any(self.producer_id >= 0 and b.producer_id == self.producer_id for b in batches):
            self.drop(f"{tp[0]}-{tp[1]}: {why}")


class Producer:
    """Send records to topics; thread-safe. Idempotent by default (``acks="all"``).

    >>> with Producer("tcp://127.0.0.1:6100") as p:
    ...     md = p.send("events", b"value", key=b"user-42").result(timeout=10)
    """

    def __init__(
        self,
        bootstrap: Bootstrap = None,
        *,
        acks: int | str = "all",
        linger_ms: int = 5,
        batch_size: int = 65536,
        compression: str | None = None,
        max_in_flight: int = 1,
        retry_backoff_ms: int = 100,
        request_timeout_ms: int = 30_000,
        delivery_timeout_ms: int = 120_000,
        max_block_ms: int = 60_000,
        buffer_memory: int = 64 * 1024 * 1024,
        enable_idempotence: bool | None = None,
        zmq_module: ModuleType = _zmq,
    ) -> None:
        self.endpoints = parse_bootstrap(bootstrap)
        if acks not in (0, 1, -1, "all"):
            raise ValueError(f"acks={acks!r}: allowed 0, 1, 'all'")
        self.acks: int | str = "all" if acks in (-1, "all") else acks
        check_ints(
            ("linger_ms", linger_ms, 0),
            ("batch_size", batch_size, 1),
            ("max_in_flight", max_in_flight, 1),
            ("retry_backoff_ms", retry_backoff_ms, 0),
            ("request_timeout_ms", request_timeout_ms, 1),
            ("delivery_timeout_ms", delivery_timeout_ms, 1),
            ("max_block_ms", max_block_ms, 0),
            ("buffer_memory", buffer_memory, 1),
        )
        self.enable_idempotence = resolve_idempotence(enable_idempotence, self.acks, max_in_flight)
        self.compression = Compression.parse(compression)
        self.linger_s = linger_ms / 1000
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.retry_backoff_s = retry_backoff_ms / 1000
        self.request_timeout_s = request_timeout_ms / 1000
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self.max_block_s = max_block_ms / 1000
        self.buffer_memory = buffer_memory
        self.zmq = zmq_module

        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._queues: dict[tuple[str, int], collections.deque[ProducerBatch]] = {}
        self._incomplete: set[ProducerBatch] = set()
        self._buffered = 0
        self._partitions: dict[str, int] = {}
        self._sticky: dict[str, tuple[str, int]] = {}  # topic -> its sticky (topic, partition)
        self._sticky_next = 0
        self._key_partitioner = KeyPartitioner()
        self._closed = False
        self._need_wake = True
        # requests in flight per partition: written by the I/O thread, read by send()
        self._inflight_count: collections.Counter[tuple[str, int]] = collections.Counter()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.ctx = zmq_module.Context()
        self._md_lock = threading.Lock()
        self._app_metadata = ClusterMetadata(BootstrapChannel(self.ctx, self.endpoints, zmq_module), self.max_block_s)
        self._thread = threading.Thread(target=self._io_main, name="sluice-producer-io", daemon=True)
        self._io_error: BaseException | None = None
        self._thread.start()

    # ---- application side --------------------------------------------------------------
    def partitions_for(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            why = valid_topic_name(topic) if isinstance(topic, str) else "topic must be a str"
            if why:
                raise InvalidConfigError(why)
            with self._md_lock:
                md = self._app_metadata.wait_for(topic, self.max_block_s, need_leaders=False)
            n = self._partitions[topic] = len(md.partitions)
        return n

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        timestamp_ms: int | None = None,
    ) -> FutureRecordMetadata:
        """Queue one record; returns a future for its metadata. Raises at once on bad input."""
        if self._closed:
            raise ProducerClosedError("send() on a closed producer")
        if value is not None and type(value) is not bytes:
            value = _as_bytes(value, "value")
        if partition is None and key is None:
            tp = self._sticky.get(topic)  # the common case: one dict lookup, no tuple built
            if tp is None:
                tp = self._stick(topic)
        else:
            if key is not None and type(key) is not bytes:
                key = _as_bytes(key, "key")
            n = self._partitions.get(topic)
            if n is None:
                n = self.partitions_for(topic)
            if partition is None:
                assert key is not None  # without either, the sticky branch above was taken
                partition = self._key_partitioner(key, n)
            elif type(partition) is not int or not 0 <= partition < n:
                raise ValueError(f"partition={partition!r}: topic {topic!r} has partitions 0..{n - 1}")
            tp = (topic, partition)
        size = (len(value) if value is not None else 0) + (len(key) if key is not None else 0) + RECORD_OVERHEAD
        # checked before anything is queued: bad input changes nothing
        if headers is not None:
            headers = _check_headers(headers)
        if timestamp_ms is not None:
            timestamp_ms = _check_timestamp(timestamp_ms)
        lock = self._lock
        lock.acquire()  # acquire/release: half the cost of a with block, per record
        try:
            if self._buffered + size > self.buffer_memory:
                self._wait_for_space(size)
            q = self._queues.get(tp)
            b = q[-1] if q else None
            if (
                b is None
                or b.encoded is not None
                or b.size + size > self.batch_size
                or (b.timestamps is not None or timestamp_ms is not None)
                and not b.takes_timestamp(timestamp_ms)
            ):
                b = self._new_batch(tp, key, timestamp_ms)
            values = b.values
            index = len(values)
            values.append(value)
            b.size += size
            self._buffered += size
            if key is not None or b.keys is not None:
                if b.keys is None:
                    b.keys = [None] * index
                b.keys.append(key)
            if headers is not None or b.headers is not None:
                if b.headers is None:
                    b.headers = [None] * index
                b.headers.append(headers)
            if timestamp_ms is not None or b.timestamps is not None:
                if b.timestamps is None:
                    b.timestamps = [b.first_ts] * index
                b.timestamps.append(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
        finally:
            lock.release()
        # A partition with its requests in flight needs no wake-up: the I/O thread looks at
        # its queue again when a reply comes (the count drops before it looks).
        if self._need_wake and self._inflight_count.get(tp, 0) < self.max_in_flight:
            self._wake()
        return _new_future(FutureRecordMetadata, (b, index))

    def _stick(self, topic: str) -> tuple[str, int]:
        """Pick the sticky partition of ``topic`` for records without key or partition
        (round robin over the topic's partitions, one batch at a time)."""
        n = self._partitions.get(topic)
        if n is None:
            n = self.partitions_for(topic)
        tp = (topic, self._sticky_next % n)
        self._sticky_next += 1
        self._sticky[topic] = tp
        return tp

    def _new_batch(self, tp: tuple[str, int], key: bytes | None, timestamp_ms: int | None) -> ProducerBatch:
        """Open a new batch at the tail of ``tp``'s queue. Called with the lock held."""
        now = time.monotonic()
        b = ProducerBatch(tp[0], tp[1], now, now + self.delivery_timeout_s, self._lock)
        if timestamp_ms is not None:
            b.first_ts = int(timestamp_ms)
        q = self._queues.get(tp)
        if q is None:
            q = self._queues[tp] = collections.deque()
        q.append(b)
        self._incomplete.add(b)
        if key is None and self._sticky.get(tp[0]) == tp and q[0] is not b:
            self._sticky.pop(tp[0], None)  # the sticky partition has a full batch: move on
        return b

    def _wait_for_space(self, size: int) -> None:
        deadline = time.monotonic() + self.max_block_s
        while self._buffered + size > self.buffer_memory and self._buffered > 0:
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                raise RequestTimedOutError(
                    f"buffer_memory={self.buffer_memory} full for {self.max_block_s:.1f} s (max_block_ms)"
                )
            self._wake()
            self._space.wait(left)

    def _wake(self) -> None:
        self._need_wake = False
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record sent before this call is acknowledged or failed."""
        with self._lock:
            pending = list(self._incomplete)
        self._wake()
        deadline = None if timeout is None else time.monotonic() + timeout
        for b in pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            _new_future(FutureRecordMetadata, (b, 0))._wait(left)

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop the I/O thread; unsent records fail."""
        if self._closed:
            return
        try:
            if self._thread.is_alive():
                self.flush(timeout)
        except TimeoutError:
            pass  # what is still unsent fails with ProducerClosedError below
        finally:
            self._closed = True
            self._wake()
            self._thread.join(timeout=max(5.0, self.request_timeout_s))
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._app_metadata.bootstrap.close()
            self.ctx.term()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- I/O thread ------------------------------------------------------------------------
    def _complete(
        self, batches: list[ProducerBatch], base_offsets: list[int] | None, error: SluiceError | None
    ) -> None:
        events = []
        callbacks = []
        with self._lock:
            for i, b in enumerate(batches):
                b.base_offset = base_offsets[i] if base_offsets is not None and i < len(base_offsets) else -1
                b.error = error
                b.done = True
                b.encoded = None
                self._buffered -= b.size
                self._incomplete.discard(b)
                if b.event is not None:
                    events.append(b.event)
                if b.callbacks:
                    callbacks.extend(b.callbacks)
                    b.callbacks = None
            self._space.notify_all()
        for ev in events:
            ev.set()
        for fn, fut in callbacks:
            try:
                fn(fut)
            except Exception:  # noqa: BLE001 - a user callback must not kill the I/O thread
                log.exception("producer callback raised")

    def _io_main(self) -> None:
        try:
            _ProducerIO(self).run()
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting future
            self._io_error = exc
            log.exception("producer I/O thread failed")
            with self._lock:
                pending = list(self._incomplete)
            self._complete(pending, None, ProducerClosedError(f"producer I/O thread failed: {exc}"))


def _producer_id_from(fields: dict[str, Any]) -> tuple[int, int]:
    """``producer_id`` (int64 >= 0) and ``producer_epoch`` (int16 >= 0) of an
    ``init_producer_id`` reply; SluiceError (not retriable) if they are not."""
    pid, epoch = fields.get("producer_id"), fields.get("producer_epoch")
    if (
        isinstance(pid, int)
        and not isinstance(pid, bool)
        and 0 <= pid < 2**63
        and isinstance(epoch, int)
        and not isinstance(epoch, bool)
        and 0 <= epoch < 2**15
    ):
        return pid, epoch
    raise SluiceError(f"init_producer_id: malformed reply {fields!r:.200}")


def _as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes (or None), got {type(value).__name__}; encode it first")


def _check_timestamp(timestamp_ms: Any) -> int:
    """An int64 of ms since the epoch: any integer (numpy's too) or a finite float."""
    if isinstance(timestamp_ms, bool):
        ts = None
    elif isinstance(timestamp_ms, float):
        ts = int(timestamp_ms) if math.isfinite(timestamp_ms) else None
    else:
        try:
            ts = operator.index(timestamp_ms)
        except TypeError:
            ts = None
    if ts is None:
        raise TypeError(f"timestamp_ms must be an int (ms since the epoch), got {timestamp_ms!r:.100}")
    if not -(2**63) <= ts < 2**63:
        raise ValueError(f"timestamp_ms={ts} is outside the int64 range")
    return ts


def _check_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> Headers | None:
    if headers is None:
        return None
    out: Headers = []
    for item in headers:
        if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], str):
            raise TypeError(f"headers must be (str, bytes | None) pairs, got {item!r:.100}")
        v = item[1]
        out.append((item[0], None if v is None else v if type(v) is bytes else _as_bytes(v, "header value")))
    return out


class _ProducerIO:
    """The I/O thread's state: channels, in-flight requests, metadata."""

    def __init__(self, p: Producer) -> None:
        self.p = p
        self.zmq = p.zmq
        self.metadata = ClusterMetadata(BootstrapChannel(p.ctx, p.endpoints, p.zmq), p.request_timeout_s)
        self.leaders: dict[tuple[str, int], str] = {}
        self.poller = p.zmq.Poller()
        self.poller.register(p._wake_r, p.zmq.POLLIN)
        self.channels = ChannelPool(p.ctx, self.poller, p.zmq)
        self.inflight: dict[int, _InFlight] = {}
        self.inflight_count = p._inflight_count
        self.need_metadata: set[str] = set()
        self.next_metadata = 0.0
        self.next_periodic_metadata = time.monotonic() + METADATA_MAX_AGE_S
        self.ids = ProducerIdState() if p.enable_idempotence else None
        self.next_id_attempt = 0.0

    def on_disconnect(self, ch: Channel) -> None:
        """The worker behind ``ch`` went away: its in-flight requests are lost; retry them
        now (they queue until ZeroMQ reconnects) instead of waiting for the timeout."""
        lost = [f for f in self.inflight.values() if f.channel is ch]
        for f in lost:
            self.inflight.pop(f.cid, None)
            self.inflight_count[f.key] -= 1
        for f in lost:
            self.fail(f, RequestTimedOutError(f"connection to {ch.endpoint} lost with the request in flight"))

    def run(self) -> None:
        p = self.p
        while True:
            p._need_wake = True
            now = time.monotonic()
            self.refresh_metadata(now)
            self.ensure_producer_id(now)
            self.send_ready(now)
            self.expire(now)
            if p._closed and not self.inflight:
                with p._lock:
                    leftover = list(p._incomplete)
                if leftover:
                    p._complete(leftover, None, ProducerClosedError("producer closed before delivery"))
                break
            timeout = self.next_timeout(now)
            events = dict(self.poller.poll(int(timeout * 1000) + 1))
            if p._wake_r in events:
                try:
                    while os.read(p._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            for ch in self.channels:
                if ch.sock in events:
                    self.drain_replies(ch)
                if ch.monitor is not None and ch.monitor in events and ch.disconnected():
                    self.on_disconnect(ch)
        self.metadata.bootstrap.close()
        self.channels.close()

    def next_timeout(self, now: float) -> float:
        t = 1.0
        for f in self.inflight.values():
            t = min(t, f.deadline - now)
        no_id = self.ids is not None and not self.ids.ready
        wait_for_id = False
        with self.p._lock:
            for tp, q in self.p._queues.items():
                if q:
                    head = q[0]
                    if no_id and q[-1].encoded is None:
                        wait_for_id = True
                    # a partition without a leader waits for metadata, one whose head
                    # batch needs a producer id waits for it: neither is due now
                    if tp in self.leaders and not (no_id and head.encoded is None):
                        if self.inflight_count[tp] == 0:
                            t = min(t, head.not_before - now)
                        elif self.inflight_count[tp] < self.p.max_in_flight:
                            # a retry backing off at the head waits for its backoff, not its linger
                            t = min(t, max(head.not_before, head.created + self.p.linger_s) - now)
                    t = min(t, head.deadline - now)
        if self.need_metadata:
            t = min(t, self.next_metadata - now)
        if wait_for_id:
            t = min(t, self.next_id_attempt - now)
        return max(t, 0.0)

    def ensure_producer_id(self, now: float) -> None:
        """Ask the front endpoint for a producer id when batches wait for one (first
        batch, or after ``ProducerIdState.drop``). Blocks like a metadata refresh."""
        ids = self.ids
        if ids is None or ids.ready or now < self.next_id_attempt:
            return
        p = self.p
        with p._lock:
            waiting = any(q and q[-1].encoded is None for q in p._queues.values())
        if not waiting:
            return
        try:
            reply = self.metadata.bootstrap.request(
                "init_producer_id", min(p.request_timeout_s, INIT_PRODUCER_ID_TIMEOUT_S)
            )
            reply.raise_for_error()
            producer_id, producer_epoch = _producer_id_from(reply.fields)
        except SluiceError as exc:
            self.next_id_attempt = now + max(p.retry_backoff_s, 0.05)
            if exc.retriable:
                log.warning("init_producer_id failed, will retry: %s", exc)
                return
            log.error("init_producer_id failed: %s (the records waiting for a producer id fail)", exc)
            failed: list[ProducerBatch] = []
            with p._lock:
                for q in p._queues.values():
                    while q and q[-1].encoded is None:
                        failed.append(q.pop())
            p._complete(failed, None, exc)
            return
        ids.set_id(producer_id, producer_epoch)
        log.info("idempotent producer: producer id %d, epoch %d", producer_id, producer_epoch)

    def refresh_metadata(self, now: float) -> None:
        if now >= self.next_periodic_metadata:
            self.next_periodic_metadata = now + METADATA_MAX_AGE_S
            self.need_metadata.update(self.p._partitions)
        if not self.need_metadata or now < self.next_metadata:
            return
        topics = sorted(self.need_metadata)
        try:
            result = self.metadata.refresh(topics, min(self.p.request_timeout_s, 5.0))
        except SluiceError as exc:
            log.warning("metadata refresh for %s failed: %s", topics, exc)
            self.next_metadata = now + max(self.p.retry_backoff_s, 0.05)
            return
        complete = True
        for name in topics:
            md = result.get(name)
            if md is None or md.error is not None:
                complete = False
                continue
            if len(md.partitions) > self.p._partitions.get(name, 0):
                self.p._partitions[name] = len(md.partitions)  # partitions were added
            for part in md.partitions:
                if part.endpoint is not None and part.error is None:
                    self.leaders[(name, part.partition)] = part.endpoint
                else:
                    self.leaders.pop((name, part.partition), None)
                    complete = False
        if complete:
            self.need_metadata.clear()
        else:
            self.next_metadata = now + max(self.p.retry_backoff_s, 0.05)

    def send_ready(self, now: float) -> None:
        p = self.p
        to_send: list[tuple[tuple[str, int], str, list[ProducerBatch]]] = []
        no_id = self.ids is not None and not self.ids.ready
        with p._lock:
            for tp, q in p._queues.items():
                if not q:
                    continue
                n = self.inflight_count[tp]
                if n >= p.max_in_flight or q[0].not_before > now:
                    continue
                full = q[0].size >= p.batch_size or len(q) > 1
                if n and not full and now - q[0].created < p.linger_s:
                    continue
                endpoint = self.leaders.get(tp)
                if endpoint is None:
                    self.need_metadata.add(tp[0])
                    continue
                if no_id and q[0].encoded is None:
                    continue  # waits for a producer id (ensure_producer_id)
                batches: list[ProducerBatch] = []
                total = 0
                while q and (not batches or total + q[0].size <= MAX_REQUEST_BYTES):
                    if no_id and q[0].encoded is None:
                        break  # retries encoded under the previous id may go; new batches wait
                    b = q.popleft()
                    total += b.size
                    batches.append(b)
                if p._sticky.get(tp[0]) == tp:
                    p._sticky.pop(tp[0], None)
                to_send.append((tp, endpoint, batches))
        for tp, endpoint, batches in to_send:
            self.send(tp, endpoint, batches, now)

    def send(self, tp: tuple[str, int], endpoint: str, batches: list[ProducerBatch], now: float) -> None:
        p = self.p
        frames = []
        encoded = []
        for b in batches:
            try:
                frames.append(b.encoded if b.encoded is not None else self.encode(tp, b))
            except (ValueError, OverflowError, SluiceError) as exc:
                p._complete(
                    [b], None, exc if isinstance(exc, SluiceError) else SluiceError(f"cannot encode batch: {exc}")
                )
                continue
            encoded.append(b)
        if not encoded:
            return
        batches = encoded
        ch = self.channels.get(endpoint)
        acks = p.acks
        cid = ch.send(
            "produce",
            frames,
            topic=tp[0],
            partition=tp[1],
            acks=acks,
            timeout_ms=int(p.request_timeout_s * 1000),
        )
        for b in batches:
            b.attempts += 1
        if acks == 0:
            p._complete(batches, None, None)
            return
        self.inflight[cid] = _InFlight(cid, ch, batches, now + p.request_timeout_s, tp)
        self.inflight_count[tp] += 1

    def encode(self, tp: tuple[str, int], b: ProducerBatch) -> bytes:
        """Encode a batch for the first time; an idempotent producer stamps it with its
        id, epoch and the partition's next sequence (taken only if encoding succeeds)."""
        ids = self.ids
        if ids is None:
            return b.encode(self.p.compression)
        assert ids.ready, "send_ready holds back unencoded batches until there is a producer id"
        data = b.encode(self.p.compression, ids.producer_id, ids.producer_epoch, ids.sequence(tp))
        ids.advance(tp, len(b.values))
        return data

    def drain_replies(self, ch: Channel) -> None:
        for reply in ch.replies():
            f = self.inflight.pop(reply.id, None)
            if f is None:
                continue  # a reply to a request we already gave up on
            self.inflight_count[f.key] -= 1
            if reply.error is None:
                offsets = reply.fields.get("base_offsets")
                self.p._complete(f.batches, offsets if isinstance(offsets, list) else None, None)
            else:
                self.fail(f, reply.error)

    def fail(self, f: _InFlight, err: SluiceError) -> None:
        """A request failed: retry its batches (at the head of their queue) or fail them."""
        p = self.p
        now = time.monotonic()
        if not err.retriable:
            p._complete(f.batches, None, err)
            if self.ids is not None:
                self.ids.not_written(f.key, f.batches, err)
            return
        self.need_metadata.add(f.key[0])
        self.next_metadata = min(self.next_metadata, now)
        if isinstance(err, (LeaderNotAvailableError, RequestTimedOutError)) or err.code in (
            "NOT_LEADER",
            "UNKNOWN_TOPIC_OR_PARTITION",
        ):
            self.leaders.pop(f.key, None)
        expired = [b for b in f.batches if now >= b.deadline]
        retry = [b for b in f.batches if now < b.deadline]
        if expired:
            p._complete(expired, None, err)
            if self.ids is not None:
                self.ids.unresolved(f.key, expired, f"given up after {err}")
        if retry:
            log.info("retrying %d batch(es) to %s-%d after %s", len(retry), f.key[0], f.key[1], err)
            with p._lock:
                q = p._queues.setdefault(f.key, collections.deque())
                for b in reversed(retry):
                    b.not_before = now + p.retry_backoff_s * min(2 ** (b.attempts - 1), 32)
                    q.appendleft(b)

    def expire(self, now: float) -> None:
        for f in [f for f in self.inflight.values() if now >= f.deadline]:
            # the request (or its reply) is lost: drop the channel's queue and retry
            ch = f.channel
            lost = [x for x in self.inflight.values() if x.channel is ch]
            for x in lost:
                self.inflight.pop(x.cid, None)
                self.inflight_count[x.key] -= 1
            self.channels.reset(ch)
            for x in lost:
                self.fail(x, RequestTimedOutError(f"no reply from {ch.endpoint} within {self.p.request_timeout_s} s"))
        p = self.p
        expired: dict[tuple[str, int], list[ProducerBatch]] = {}
        with p._lock:
            for tp, q in p._queues.items():
                while q and now >= q[0].deadline:
                    expired.setdefault(tp, []).append(q.popleft())
        for tp, batches in expired.items():
            p._complete(batches, None, RequestTimedOutError(f"not delivered within {p.delivery_timeout_s} s"))
            if self.ids is not None:
                self.ids.unresolved(tp, batches, "delivery_timeout_ms passed after a batch was sent")
