"""Issue 19's asyncio façade and client metrics on a real node: AIOProducer (futures
resolved in the loop, a delivery error raised by the awaited future, a topic never seen
before without blocking the loop), AIOConsumer (poll, a cancelled poll losing nothing,
``async for`` in a group with an exact commit, the loop kept running while a poll
waits), and Producer.metrics() / Consumer.metrics() counting what happened.

One node for the module; every test uses its own topics and groups. Tests run their
coroutines with ``asyncio.run``. Waiting is polling with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipc.client import Consumer, Producer
from ipc.client.aio import AIOConsumer, AIOProducer
from ipc.errors import MessageTooLargeError
from tests.integration.conftest import Node

GROUP_OPTS: dict[str, Any] = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 200}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(Path(tmp_path_factory.mktemp("client-aio")), offsets_topic_partitions=1)
    try:
        n.start()
        yield n
    finally:
        with contextlib.suppress(Exception):
            n.status()
        n.kill_all()
        shutil.rmtree(os.path.dirname(n.status_path), ignore_errors=True)
        print(f"--- node log tail ---\n{n.log_tail()}")


def create(node: Node, topic: str, partitions: int = 1, config: dict[str, Any] | None = None) -> None:
    with node.admin() as admin:
        admin.create_topic(topic, partitions=partitions, config=config)


async def poll_all(c: AIOConsumer, count: int, timeout: float = 30.0, **kw: Any) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} records within {timeout} s"
        out.extend(await c.poll(timeout_ms=500, **kw))
    return out


def test_aio_producer_and_consumer_round_trip_with_metrics(node: Node) -> None:
    create(node, "aio-rt", partitions=2)
    n = 200

    async def main() -> tuple[list[Any], dict[str, Any], list[Any], dict[str, Any], dict[str, Any]]:
        async with AIOProducer(node.bootstrap, linger_ms=0) as p:
            futs = [await p.send("aio-rt", b"v%d" % i, partition=i % 2) for i in range(n)]
            mds = await asyncio.gather(*futs)
            pm = p.metrics()
        async with AIOConsumer(node.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=50) as c:
            await c.assign([("aio-rt", 0), ("aio-rt", 1)])
            first = await poll_all(c, 10, max_records=10)
            lagging = await c.metrics()
            rest = await poll_all(c, n - len(first))
            caught_up = await c.metrics()
        return list(mds), pm, first + rest, lagging, caught_up

    mds, pm, records, lagging, caught_up = asyncio.run(main())
    for part in (0, 1):
        assert sorted(md.offset for md in mds if md.partition == part) == list(range(n // 2))
    assert pm["records_sent"] == n and pm["records_failed"] == 0
    assert 1 <= pm["requests_sent"] == pm["replies"] and pm["batches_sent"] >= pm["requests_sent"]
    assert pm["request_latency_max_ms"] > 0 and pm["bytes_sent"] > n * 2 and pm["requests_in_flight"] == 0
    assert len(records) == n
    for part in (0, 1):
        values = [r.value for r in records if r.partition == part]
        assert values == [b"v%d" % i for i in range(part, n, 2)]
    assert lagging["records_lag_total"] > 0 and lagging["records_consumed"] >= 10
    assert caught_up["records_lag"] == {("aio-rt", 0): 0, ("aio-rt", 1): 0}
    assert caught_up["records_consumed"] == n and caught_up["records_fetched"] >= n
    assert caught_up["fetch_replies"] >= 1 and caught_up["fetch_latency_max_ms"] > 0


def test_a_delivery_error_is_raised_by_the_awaited_future_and_counted(node: Node) -> None:
    create(node, "aio-big", config={"max.message.bytes": 1024})

    async def main() -> dict[str, Any]:
        async with AIOProducer(node.bootstrap) as p:
            with pytest.raises(MessageTooLargeError):
                await p.send_and_wait("aio-big", b"x" * 4096)
            md = await p.send_and_wait("aio-big", b"small")
            assert md.offset == 0
            return p.metrics()

    m = asyncio.run(main())
    assert m["records_failed"] == 1 and m["records_sent"] == 1 and m["request_errors"] == 1 and m["retries"] == 0


def test_the_loop_runs_while_a_poll_waits_and_a_cancelled_poll_loses_nothing(node: Node) -> None:
    create(node, "aio-cancel")

    async def main() -> tuple[int, list[bytes]]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)  # the task being measured, not synchronisation

        async with AIOConsumer(node.bootstrap, auto_offset_reset="earliest") as c:
            await c.assign([("aio-cancel", 0)])
            t = asyncio.create_task(ticker())
            assert await c.poll(timeout_ms=500) == []  # nothing there: the whole wait
            stop.set()
            await t
            # a poll cancelled while its job waits in the consumer's thread for records
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.poll(timeout_ms=5000), 0.05)
            async with AIOProducer(node.bootstrap) as p:
                await asyncio.gather(*[await p.send("aio-cancel", b"r%d" % i) for i in range(20)])
            got = [r.value for r in await poll_all(c, 20)]
            assert await c.poll(timeout_ms=200) == []  # nothing twice
            return ticks, got

    ticks, got = asyncio.run(main())
    assert ticks >= 10, f"the loop ran only {ticks} times in a 500 ms poll"
    assert got == [b"r%d" % i for i in range(20)]


def test_async_for_in_a_group_commits_exactly_what_it_has_seen(node: Node) -> None:
    create(node, "aio-group")
    with Producer(node.bootstrap) as p:
        for i in range(30):
            p.send("aio-group", b"%d" % i)
        p.flush(timeout=30)

    async def main() -> list[int]:
        seen: list[int] = []
        async with AIOConsumer(
            node.bootstrap,
            group_id="aio-g",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=20_000,
            **GROUP_OPTS,
        ) as c:
            await c.subscribe(["aio-group"])
            async for r in c:
                seen.append(r.offset)
                if len(seen) == 12:
                    await c.commit()
                    break
        return seen

    seen = asyncio.run(main())
    assert seen == list(range(12))
    with Consumer(node.bootstrap, group_id="aio-g", **GROUP_OPTS) as c:
        assert c.committed([("aio-group", 0)]) == {("aio-group", 0): 12}


def test_a_topic_the_producer_has_not_seen_is_sent_to_without_blocking_the_loop(node: Node) -> None:
    create(node, "aio-new", partitions=3)

    async def main() -> Any:
        async with AIOProducer(node.bootstrap) as p:
            md = await p.send_and_wait("aio-new", b"x", key=b"k")
            assert await p.partitions_for("aio-new") == 3
            return md

    md = asyncio.run(main())
    assert md.topic == "aio-new" and md.offset == 0
