"""A producer batch and the cheap futures that point into it.

A ``ProducerBatch`` holds the records of one partition that travel, and succeed or fail,
together: columns (values, and keys, headers and timestamps only once a record needs
them) filled by ``Producer.send`` under the accumulator's lock, then encoded once by the
sender (a retry re-sends the same bytes). Its outcome (``base_offset`` or ``error``) is
written once by ``RecordAccumulator.complete``, which sets ``done``.

What ``send`` returns is a ``FutureRecordMetadata``: a pair (batch, index) made by one C
call per record, with no lock or event of its own. Waiting uses the batch's event, made
only when somebody waits, under the batch's lock (the accumulator's, shared by every
batch of a producer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ipc.errors import SluiceError
from ipc.records import Compression, Headers, encode_batch

RECORD_OVERHEAD = 12  # three int32 columns per record: what a record costs besides key and value
MAX_TS_DELTA = 2**31 - 1  # record timestamps are int32 deltas from their batch's first timestamp


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

    def get(self, timeout: float | None = None) -> RecordMetadata:
        """kafka-python's name for ``result``."""
        return self.result(timeout)

    def add_callback(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FutureRecordMetadata:
        """kafka-python's: ``fn(record_metadata, *args, **kwargs)`` on success only (in the
        I/O thread, or at once if already done); returns the future, for chaining."""

        def on_done(fut: FutureRecordMetadata) -> None:
            if fut[0].error is None:
                fn(fut.result(), *args, **kwargs)

        self.add_done_callback(on_done)
        return self

    def add_errback(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FutureRecordMetadata:
        """kafka-python's: ``fn(exception, *args, **kwargs)`` on failure only; returns the future."""

        def on_done(fut: FutureRecordMetadata) -> None:
            err = fut[0].error
            if err is not None:
                fn(err, *args, **kwargs)

        self.add_done_callback(on_done)
        return self

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


new_future = tuple.__new__  # new_future(FutureRecordMetadata, (batch, index)): one C call
