"""An asyncio façade over the client: ``AIOProducer`` and ``AIOConsumer``.

Not a second client: each wraps the ordinary ``Producer`` / ``Consumer`` and their
threads, and only moves results between those threads and the event loop.

**AIOProducer.** ``Producer.send`` is thread-safe and normally only appends to a batch,
so ``await send(...)`` calls it in the loop's thread. It can block in two cases: the
first record to a topic waits for the topic's metadata, and a full ``buffer_memory``
waits for space; ``send`` sees both coming (the topic's partition count is not known
yet, or the buffer has less room than the record could need) and then makes the call
in the loop's default executor instead, so the loop never waits on the network.
Delivery is bridged back by one ``_Bridge`` per event loop: the producer's I/O thread
completes a batch and runs the records' callbacks; each callback appends its asyncio
future to the bridge's list and, only when the list was empty, schedules one
``loop.call_soon_threadsafe`` that resolves every future listed. A burst of
acknowledgements therefore wakes the loop once, not once per record. An asyncio future
cancelled by the application is skipped (the record is still sent: cancelling an
``asyncio.Future`` cannot unsend it).

**AIOConsumer.** ``Consumer`` is not thread-safe, and its group link belongs to the
thread that made it, so one executor thread of its own (``sluice-aio-consumer``) makes
the ``Consumer`` and runs every call that may block (``poll``, commits, ``assign``,
``subscribe``, seeks, offsets, ``close``), one at a time in submission order; ``await``
waits for it without blocking the loop. The consumer's other threads (heartbeats,
asynchronous commits) are unchanged. Records travel through the consumer's iteration
buffer (``ipc/client/iteration.py``): a ``poll`` job in the executor fills it, with each
partition's position put back to its first record held; the loop's thread then hands
records out of it (``poll(max_records=)``, ``getone``, ``async for``), moving positions
as it goes, exactly as synchronous iteration does. Hence:

- a cancelled ``await consumer.poll()`` (``asyncio.wait_for`` timing out) loses nothing:
  the job finishes in the executor, its records stay held, the next call hands them out;
  any call that moves positions (``seek``, ``assign``, ``pause``, …) drops them and their
  partitions fetch them again, as for synchronous iteration;
- a commit covers exactly the records handed out, also inside ``async for``;
- the loop's thread touches the buffer only when no job is running (``_quiet``).

Tests: tests/unit/test_client_aio.py (the bridge), tests/integration/test_client_aio.py
(a real node).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from ipc.client.batch import RECORD_OVERHEAD, FutureRecordMetadata, RecordMetadata
from ipc.client.consumer import Consumer, ConsumerClosedError
from ipc.client.fetcher import ConsumerRecord
from ipc.client.iteration import STEP_MS
from ipc.client.producer import Producer
from ipc.client.structs import OffsetAndTimestamp
from ipc.client.subscription import TopicPartition

__all__ = ["AIOConsumer", "AIOProducer"]

T = TypeVar("T")


class _Bridge:
    """Resolves asyncio futures from the producer's I/O thread: one wake-up of the loop
    per burst of completions (see the module docstring)."""

    __slots__ = ("loop", "_lock", "_ready", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[RecordMetadata], FutureRecordMetadata]] = []
        self._scheduled = False

    def on_done(self, afut: asyncio.Future[RecordMetadata], fut: FutureRecordMetadata) -> None:
        """A record's future completed (any thread, usually the producer's I/O thread)."""
        with self._lock:
            self._ready.append((afut, fut))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self.resolve)

    def resolve(self) -> None:
        """In the loop: resolve every asyncio future listed so far."""
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for afut, fut in ready:
            if afut.done():  # cancelled by the application
                continue
            err = fut[0].error
            if err is not None:
                afut.set_exception(err)
            else:
                afut.set_result(fut.result())


def _size(x: Any, fallback: int) -> int:
    if x is None:
        return 0
    if isinstance(x, (bytes, bytearray, memoryview)):
        return len(x)
    return fallback  # a serializer's input: its size is not known before serializing


class AIOProducer:
    """``Producer`` for asyncio: the same arguments (docs/client.md#asyncio).

    >>> async with AIOProducer("tcp://127.0.0.1:6100") as p:
    ...     md = await p.send_and_wait("events", b"value")
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.producer = Producer(*args, **kwargs)
        self._bridge: _Bridge | None = None

    async def start(self) -> None:
        """Nothing to do (the producer started when made); aiokafka's name."""

    def _bridge_for(self, loop: asyncio.AbstractEventLoop) -> _Bridge:
        b = self._bridge
        if b is None or b.loop is not loop:
            b = self._bridge = _Bridge(loop)
        return b

    async def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record (as ``Producer.send``; bad input raises here) and return an
        asyncio future of its ``RecordMetadata`` (or its delivery error)."""
        loop = asyncio.get_running_loop()
        p = self.producer
        acc = p._acc
        need = _size(value, p.batch_size) + _size(key, p.batch_size) + RECORD_OVERHEAD
        if topic in acc.partitions and acc.buffered + need <= acc.buffer_memory:
            fut = p.send(topic, value, key, partition, headers, timestamp_ms)
        else:  # it may wait for metadata or for buffer space: not in the loop's thread
            call = functools.partial(p.send, topic, value, key, partition, headers, timestamp_ms)
            fut = await loop.run_in_executor(None, call)
        afut: asyncio.Future[RecordMetadata] = loop.create_future()
        fut.add_done_callback(functools.partial(self._bridge_for(loop).on_done, afut))
        return afut

    async def send_and_wait(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        """``send``, then wait for the record's acknowledgement."""
        return await (await self.send(topic, value, key, partition, headers, timestamp_ms))

    async def partitions_for(self, topic: str) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self.producer.partitions_for, topic)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent before this call is acknowledged or failed."""
        await asyncio.get_running_loop().run_in_executor(None, self.producer.flush, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop; as ``Producer.close``."""
        await asyncio.get_running_loop().run_in_executor(None, self.producer.close, timeout)

    stop = close  # aiokafka's name

    def metrics(self) -> dict[str, Any]:
        return self.producer.metrics()

    async def __aenter__(self) -> AIOProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AIOConsumer:
    """``Consumer`` for asyncio: the same arguments (docs/client.md#asyncio). Calls from
    several tasks are safe: they run one at a time.

    >>> async with AIOConsumer("tcp://127.0.0.1:6100", auto_offset_reset="earliest") as c:
    ...     await c.assign([("events", 0)])
    ...     records = await c.poll(timeout_ms=1000)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sluice-aio-consumer")
        self._last: concurrent.futures.Future[Any] | None = None
        self._closed = False
        try:
            # made in its own thread: its group link belongs to that thread. No network
            # I/O happens in the constructor, so the loop waits only for argument checks.
            self.consumer: Consumer = self._executor.submit(Consumer, *args, **kwargs).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._held = self.consumer._iter_buf

    async def start(self) -> None:
        """Nothing to do (the consumer was made by the constructor); aiokafka's name."""

    # ---- running calls in the consumer's thread ---------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ConsumerClosedError("call on a closed AIOConsumer")

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
        self._check_open()
        fut = self._executor.submit(fn, *args, **kwargs)
        self._last = fut
        return asyncio.wrap_future(fut)

    async def _quiet(self) -> None:
        """Wait until no call runs in the consumer's thread (a cancelled one may still)."""
        while self._last is not None and not self._last.done():
            await asyncio.wait([asyncio.wrap_future(self._last)])

    # ---- records ----------------------------------------------------------------------------------
    def _fill(self, timeout_ms: int) -> bool:
        """In the consumer's thread: poll once and hold what came (positions back at the
        first record held). Whether anything came."""
        records = self.consumer.poll(timeout_ms=timeout_ms)
        if records:
            self._held.hold(records)
        return bool(records)

    async def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[ConsumerRecord]:
        """As ``Consumer.poll``: up to ``max_records`` (default ``max_poll_records``) records,
        waiting up to ``timeout_ms`` for the first one; [] on timeout."""
        if not isinstance(timeout_ms, int) or timeout_ms < 0:
            raise ValueError(f"timeout_ms={timeout_ms!r}: must be an integer >= 0")
        if max_records is not None and (type(max_records) is not int or max_records < 1):
            raise ValueError(f"max_records={max_records!r}: must be an integer >= 1")
        self._check_open()
        limit = max_records or self.consumer.max_poll_records
        await self._quiet()
        if not self._held and not await self._run(self._fill, timeout_ms):
            return []
        await self._quiet()  # another task's call may have started meanwhile
        return self._held.take(limit)

    async def getone(self) -> ConsumerRecord:
        """The next record; waits for one as long as it takes (aiokafka's)."""
        self._check_open()
        while True:
            await self._quiet()
            if self._held:
                return self._held.take(1)[0]
            await self._run(self._fill, STEP_MS)

    def __aiter__(self) -> AIOConsumer:
        return self

    async def __anext__(self) -> ConsumerRecord:
        """``async for record in consumer``: positions move record by record; stops after
        ``consumer_timeout_ms`` without a record (never without it)."""
        timeout_s = self.consumer.consumer_timeout_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._check_open()
        while True:
            await self._quiet()
            if self._held:
                return self._held.take(1)[0]
            left_ms = STEP_MS if deadline is None else min(STEP_MS, int(max(0.0, deadline - time.monotonic()) * 1000))
            if not await self._run(self._fill, left_ms) and deadline is not None and time.monotonic() >= deadline:
                raise StopAsyncIteration

    # ---- the rest of Consumer's calls, in its thread -------------------------------------------
    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        await self._run(self.consumer.assign, list(partitions))

    async def subscribe(self, topics: Any = None, pattern: Any = None, listener: Any = None) -> None:
        """As ``Consumer.subscribe``; a listener's methods run in the consumer's thread."""
        await self._run(self.consumer.subscribe, topics, pattern, listener)

    async def unsubscribe(self) -> None:
        await self._run(self.consumer.unsubscribe)

    async def assignment(self) -> set[TopicPartition]:
        return await self._run(self.consumer.assignment)

    async def subscription(self) -> set[str]:
        return await self._run(self.consumer.subscription)

    async def pause(self, *partitions: TopicPartition) -> None:
        await self._run(self.consumer.pause, *partitions)

    async def resume(self, *partitions: TopicPartition) -> None:
        await self._run(self.consumer.resume, *partitions)

    async def paused(self) -> set[TopicPartition]:
        return await self._run(self.consumer.paused)

    async def seek(self, topic: Any, partition: int, offset: int | None = None) -> None:
        await self._run(self.consumer.seek, topic, partition, offset)

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        await self._run(self.consumer.seek_to_beginning, *partitions)

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        await self._run(self.consumer.seek_to_end, *partitions)

    async def position(self, topic: Any, partition: int | None = None) -> int:
        return await self._run(self.consumer.position, topic, partition)

    async def highwater(self, topic: Any, partition: int | None = None) -> int | None:
        return await self._run(self.consumer.highwater, topic, partition)

    async def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._run(self.consumer.beginning_offsets, list(partitions))

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._run(self.consumer.end_offsets, list(partitions))

    async def offsets_for_times(
        self, query: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        return await self._run(self.consumer.offsets_for_times, dict(query))

    async def commit(self, offsets: Any = None, timeout_ms: int | None = None) -> None:
        """As ``Consumer.commit``: by default the records handed out so far."""
        await self._run(self.consumer.commit, offsets, timeout_ms)

    async def committed(self, partitions: Iterable[TopicPartition], timeout_ms: int | None = None) -> Any:
        return await self._run(self.consumer.committed, list(partitions), timeout_ms)

    async def metrics(self) -> dict[str, Any]:
        return await self._run(self.consumer.metrics)

    async def close(self, timeout_ms: int | None = None) -> None:
        """As ``Consumer.close`` (commits with auto commit, leaves the group), after any
        call still running. Held records not handed out are not committed: the positions
        are at the first of them."""
        if self._closed:
            return
        fut = self._run(self.consumer.close, timeout_ms)
        self._closed = True
        try:
            await fut
        finally:
            self._executor.shutdown(wait=False)

    stop = close  # aiokafka's name

    async def __aenter__(self) -> AIOConsumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
