"""A thousand partitions on one node (issue 18): they all start and serve, and one
consumer assigned every partition reads a record from each (its ZeroMQ context holds
about 3,000 sockets: ipc/client/transport.py raises the context's socket limit).

Timings (time to all serving, the front's latency meanwhile, memory, idle CPU) are
benchmarks, not asserted here: ``python -m loadtest.scalebench`` (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ipc.client import Consumer, Producer, TopicPartition
from ipc.errors import RequestTimedOutError
from tests.integration.conftest import Node, wait_until

PARTITIONS = 1000


@pytest.mark.slow
def test_a_thousand_partitions_serve_and_one_consumer_reads_them_all(node_factory: Callable[..., Node]) -> None:
    node = node_factory(heartbeat_timeout_ms=10_000).start()  # the default: slow starts are no hang
    with node.admin(timeout_ms=120_000) as admin:
        try:  # returns once every partition serves, or after the front's 25 s (they keep starting)
            admin.create_topic("wide", partitions=PARTITIONS)
        except RequestTimedOutError:
            pass

        def all_serving() -> list[dict[str, Any]] | None:
            parts: list[dict[str, Any]] = admin.describe_topic("wide")["partitions"]
            return parts if all(p.get("state") == "serving" for p in parts) else None

        parts = wait_until(all_serving, 300, f"{PARTITIONS} partitions serving", interval=0.5)
    assert len(parts) == PARTITIONS
    assert {p["state"] for p in parts} == {"serving"}
    assert len({p["endpoint"] for p in parts}) == PARTITIONS  # a worker (and a port) each

    with Producer(node.bootstrap) as producer:
        futures = [producer.send("wide", f"record {p}".encode(), partition=p) for p in range(PARTITIONS)]
        producer.flush(60)
    assert [f.get(10).offset for f in futures] == [0] * PARTITIONS

    seen: dict[int, bytes | None] = {}
    with Consumer(bootstrap=node.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition("wide", p) for p in range(PARTITIONS)])

        def read_all() -> bool:
            for record in consumer.poll(timeout_ms=200):
                seen[record.partition] = record.value
            return len(seen) == PARTITIONS

        wait_until(read_all, 60, f"a record from each of {PARTITIONS} partitions")
    assert seen == {p: f"record {p}".encode() for p in range(PARTITIONS)}
    assert node.stop(60) == 0
