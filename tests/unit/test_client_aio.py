"""The asyncio façade's pure parts (ipc/client/aio.py): the bridge that resolves asyncio
futures from the producer's I/O thread with one loop wake-up per burst, and the
iteration buffer's ``hold`` / ``take`` that the AIOConsumer hands records out of.
Run with ``asyncio.run`` (no pytest-asyncio); no socket."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from ipc.client.aio import AIOConsumer, _Bridge
from ipc.client.batch import FutureRecordMetadata, ProducerBatch, RecordMetadata, new_future
from ipc.client.consumer import ConsumerClosedError
from ipc.client.fetcher import ConsumerRecord
from ipc.client.iteration import IterationBuffer
from ipc.client.subscription import SubscriptionState
from ipc.errors import MessageTooLargeError


def complete(b: ProducerBatch, base_offset: int, error: Exception | None = None) -> None:
    """What RecordAccumulator.complete does to one batch, minus the accounting."""
    with b.lock:
        b.base_offset = base_offset
        b.error = error  # type: ignore[assignment]
        b.done = True
        callbacks, b.callbacks = b.callbacks or [], None
    for fn, fut in callbacks:
        fn(fut)


def test_a_burst_of_completions_from_another_thread_wakes_the_loop_once() -> None:
    async def main() -> tuple[list[RecordMetadata], int]:
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop)
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(*args: object) -> object:
            nonlocal wakeups
            wakeups += 1
            return real(*args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        b = ProducerBatch("t", 0, 0.0, 10.0)
        b.values.extend([b"a", b"b", b"c"])
        afuts = []
        for i in range(3):
            afut: asyncio.Future[RecordMetadata] = loop.create_future()
            new_future(FutureRecordMetadata, (b, i)).add_done_callback(functools.partial(bridge.on_done, afut))
            afuts.append(afut)
        t = threading.Thread(target=complete, args=(b, 40))
        t.start()
        t.join()
        got = list(await asyncio.gather(*afuts))
        return got, wakeups

    got, wakeups = asyncio.run(main())
    assert [md.offset for md in got] == [40, 41, 42]
    assert wakeups == 1


def test_a_delivery_error_is_raised_by_the_asyncio_future_and_a_cancelled_one_is_skipped() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop)
        b = ProducerBatch("t", 0, 0.0, 10.0)
        b.values.extend([b"a", b"b"])
        failed: asyncio.Future[RecordMetadata] = loop.create_future()
        cancelled: asyncio.Future[RecordMetadata] = loop.create_future()
        new_future(FutureRecordMetadata, (b, 0)).add_done_callback(lambda f: bridge.on_done(failed, f))
        new_future(FutureRecordMetadata, (b, 1)).add_done_callback(lambda f: bridge.on_done(cancelled, f))
        cancelled.cancel()
        threading.Thread(target=complete, args=(b, -1, MessageTooLargeError("too big"))).start()
        try:
            await failed
        except MessageTooLargeError as exc:
            assert "too big" in str(exc)
        else:
            raise AssertionError("the delivery error was not raised")
        assert cancelled.cancelled()

    asyncio.run(main())


def test_a_future_already_done_resolves_from_the_loops_own_thread() -> None:
    async def main() -> RecordMetadata:
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop)
        b = ProducerBatch("t", 2, 0.0, 10.0)
        b.values.append(b"a")
        complete(b, 7)
        afut: asyncio.Future[RecordMetadata] = loop.create_future()
        new_future(FutureRecordMetadata, (b, 0)).add_done_callback(lambda f: bridge.on_done(afut, f))
        return await asyncio.wait_for(afut, 5)

    assert asyncio.run(main()).offset == 7


def record(p: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord("t", p, offset, 0, None, b"v", [])


def test_held_records_put_positions_back_and_take_moves_them_past_what_it_hands_out() -> None:
    subs = SubscriptionState("earliest")
    subs.assign([("t", 0), ("t", 1)])
    for tp in subs.assignment.values():
        tp.position = 99  # as after a poll: past everything polled
    buf = IterationBuffer(subs)
    buf.hold([record(0, 5), record(0, 6), record(1, 20), record(0, 7)])
    assert subs.positions() == {("t", 0): 5, ("t", 1): 20}  # nothing handed out yet
    assert [(r.partition, r.offset) for r in buf.take(3)] == [(0, 5), (0, 6), (1, 20)]
    assert subs.positions() == {("t", 0): 7, ("t", 1): 21}
    assert [r.offset for r in buf.take(10)] == [7] and not buf
    assert subs.positions() == {("t", 0): 8, ("t", 1): 21}
    assert buf.take(5) == []


def test_an_aio_consumer_checks_its_arguments_at_once_and_refuses_calls_once_closed() -> None:
    with pytest.raises(ValueError):
        AIOConsumer("tcp://127.0.0.1:9", max_poll_records=0)

    async def main() -> None:
        c = AIOConsumer("tcp://127.0.0.1:9")  # no node: nothing is asked before a call needs it
        assert await c.assignment() == set()
        await c.close()
        await c.close()  # twice is fine
        for call in (c.poll(), c.getone(), c.assign([("t", 0)])):
            with pytest.raises(ConsumerClosedError):
                await call

    asyncio.run(main())
