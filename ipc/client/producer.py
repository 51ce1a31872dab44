"""``Producer``: the facade over the record accumulator and the sender.

The application thread's ``send`` checks its input, picks the partition and does a few
appends to the tail batch of that partition's queue, under the accumulator's
producer-wide lock; it returns a ``FutureRecordMetadata`` (two slots: its batch and its
index; no lock or event of its own). A background I/O thread, the sender, owns every
socket: it takes whole batches from the queues, encodes each with one columnar
``encode_batch`` call, and sends them to the partition leader's worker.

The parts, each in its own module:

- ``ipc/client/batch.py``: ``ProducerBatch``, ``FutureRecordMetadata``, ``RecordMetadata``;
- ``ipc/client/accumulator.py``: ``RecordAccumulator``, the per-partition queues, the
  sticky partitioner's cache, the lock, buffer-space accounting and the batches not yet
  complete. ``send`` appends a record to a batch inline (no method call per record);
  everything else it does through the accumulator's methods;
- ``ipc/client/sender.py``: ``Sender``, the I/O thread (metadata, producer id,
  sending, requests in flight, retries, expiry). It is given the accumulator and its
  settings, never this object;
- ``ipc/client/idempotence.py``: the idempotent producer's rule and sequence numbers.

Natural batching: a partition with no request in flight is sent at once; records that
arrive while a request is outstanding accumulate and go out together when it
completes. ``linger_ms`` only matters with ``max_in_flight > 1``: it bounds how long a
non-full batch waits before an extra request is sent alongside the outstanding one.
With the default ``max_in_flight=1`` per partition, retries cannot reorder records.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import zmq as _zmq

from ipc.client.accumulator import RecordAccumulator
from ipc.client.batch import (
    RECORD_OVERHEAD,
    FutureRecordMetadata,
    ProducerClosedError,
    RecordMetadata,
    new_future,
)
from ipc.client.client_id import client_id_for
from ipc.client.idempotence import resolve_idempotence
from ipc.client.metadata import ClusterMetadata
from ipc.client.partitioner import KeyPartitioner
from ipc.client.sender import Sender, Wakeup
from ipc.client.serde import Serializer, resolve_serializer, serialize
from ipc.client.stats import producer_metrics
from ipc.client.transport import Bootstrap, BootstrapChannel, Security, check_ints, client_context, parse_bootstrap
from ipc.errors import InvalidConfigError
from ipc.protocol import valid_topic_name
from ipc.records import Compression, Headers

__all__ = ["FutureRecordMetadata", "Producer", "ProducerClosedError", "RecordMetadata"]


class Producer:
    """Send records to topics; thread-safe. Idempotent by default (``acks="all"``).

    >>> with Producer("tcp://127.0.0.1:6100") as p:
    ...     md = p.send("events", b"value", key=b"user-42").result(timeout=10)
    """

    def __init__(
        self,
        bootstrap: Bootstrap = None,
        *,
        bootstrap_servers: Bootstrap = None,
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
        key_serializer: str | Serializer | None = None,
        value_serializer: str | Serializer | None = None,
        security: Security = None,
        client_id: str | None = None,
        zmq_module: ModuleType = _zmq,
        same_host: bool = False,
    ) -> None:
        self.endpoints = parse_bootstrap(bootstrap, bootstrap_servers)
        self.client_id = client_id_for(client_id, "producer")
        self._key_serializer = resolve_serializer(key_serializer, "key_serializer")
        self._value_serializer = resolve_serializer(value_serializer, "value_serializer")
        if self._key_serializer is not None or self._value_serializer is not None:
            # only a producer with serializers pays for them: send stays as it is otherwise
            self.send = self._send_serialized  # type: ignore[method-assign]
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

        self._acc = acc = RecordAccumulator(
            batch_size=batch_size,
            buffer_memory=buffer_memory,
            linger_s=self.linger_s,
            max_in_flight=max_in_flight,
            delivery_timeout_s=self.delivery_timeout_s,
        )
        # the accumulator's lock, queues and partition counts under their old names
        # (the same objects: tests look at them)
        self._lock = acc.lock
        self._queues = acc.queues
        self._partitions = acc.partitions
        self._key_partitioner = KeyPartitioner()
        self._wakeup = Wakeup()
        self.ctx = client_context(zmq_module, security, self.client_id)
        self._md_lock = threading.Lock()
        self._app_metadata = ClusterMetadata(BootstrapChannel(self.ctx, self.endpoints, zmq_module), self.max_block_s)
        self._sender = Sender(
            acc,
            self._wakeup,
            ctx=self.ctx,
            endpoints=self.endpoints,
            zmq_module=zmq_module,
            acks=self.acks,
            compression=self.compression,
            idempotent=self.enable_idempotence,
            retry_backoff_s=self.retry_backoff_s,
            request_timeout_s=self.request_timeout_s,
            delivery_timeout_s=self.delivery_timeout_s,
            same_host=same_host,
        )
        self._thread = threading.Thread(target=self._sender.run, name="sluice-producer-io", daemon=True)
        self._thread.start()

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
        value: Any = None,
        key: Any = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        timestamp_ms: int | None = None,
    ) -> FutureRecordMetadata:
        """Queue one record; returns a future for its metadata. Raises at once on bad input.
        ``value`` and ``key`` are bytes (``bytearray``, ``memoryview``) or None, or what the
        producer's serializers take (hence ``Any``)."""
        acc = self._acc
        if acc.closed:
            raise ProducerClosedError("send() on a closed producer")
        if value is not None and type(value) is not bytes:
            value = _as_bytes(value, "value")
        if partition is None and key is None:
            tp = acc.sticky.get(topic)  # the common case: one dict lookup, no tuple built
            if tp is None:
                tp = acc.stick(topic, self.partitions_for(topic))
        else:
            if key is not None and type(key) is not bytes:
                key = _as_bytes(key, "key")
            n = acc.partitions.get(topic)
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
        # The accumulator's append, inlined: a method call per record would cost more than
        # the appends themselves. Everything but this goes through its methods.
        lock = acc.lock
        lock.acquire()  # acquire/release: half the cost of a with block, per record
        try:
            if acc.buffered + size > acc.buffer_memory:
                acc.wait_for_space(size, self.max_block_s, self._wakeup.wake)
            q = acc.queues.get(tp)
            b = q[-1] if q else None
            if (
                b is None
                or b.encoded is not None
                or b.size + size > acc.batch_size
                or (b.timestamps is not None or timestamp_ms is not None)
                and not b.takes_timestamp(timestamp_ms)
            ):
                b = acc.new_batch(tp, key, timestamp_ms)
            values = b.values
            index = len(values)
            values.append(value)
            b.size += size
            acc.buffered += size
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
        # A partition with its requests in flight needs no wake-up: the sender looks at
        # its queue again when a reply comes (the count drops before it looks).
        wakeup = self._wakeup
        if wakeup.armed and acc.in_flight.get(tp, 0) < acc.max_in_flight:
            wakeup.wake()
        return new_future(FutureRecordMetadata, (b, index))

    def _send_serialized(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        timestamp_ms: int | None = None,
    ) -> FutureRecordMetadata:
        """``send`` for a producer with a key or value serializer (``ipc/client/serde.py``):
        a ``None`` key or value is passed through as it is."""
        ks, vs = self._key_serializer, self._value_serializer
        if vs is not None and value is not None:
            value = serialize(vs, value, "value", topic)
        if ks is not None and key is not None:
            key = serialize(ks, key, "key", topic)
        return Producer.send(self, topic, value, key, partition, headers, timestamp_ms)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record sent before this call is acknowledged or failed."""
        pending = self._acc.pending()
        self._wakeup.wake()
        deadline = None if timeout is None else time.monotonic() + timeout
        for b in pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            new_future(FutureRecordMetadata, (b, 0))._wait(left)

    def metrics(self) -> dict[str, Any]:
        """The producer's counters since it was made (records sent and failed, batches,
        retries, requests, request latency, buffer use): docs/client.md#metrics. Kept per
        request and batch by the I/O thread; read here without a lock."""
        acc = self._acc
        return producer_metrics(
            self._sender.stats,
            records_sent=acc.records_sent,
            records_failed=acc.records_failed,
            buffered=acc.buffered,
            buffer_memory=acc.buffer_memory,
            in_flight=len(self._sender.inflight),
        )

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop the I/O thread; unsent records fail."""
        if self._acc.closed:
            return
        try:
            if self._thread.is_alive():
                self.flush(timeout)
        except TimeoutError:
            pass  # what is still unsent fails with ProducerClosedError below
        finally:
            self._acc.close()
            self._wakeup.wake()
            self._thread.join(timeout=max(5.0, self.request_timeout_s))
            self._wakeup.close()
            self._app_metadata.bootstrap.close()
            self.ctx.term()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
