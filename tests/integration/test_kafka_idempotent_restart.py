"""confluent-kafka's idempotent producer (``enable.idempotence=true``, ``acks=all``)
through a restart of the node behind the Kafka listener (docs/kafka.md, issue 15):
every record it was told was delivered is there once, none twice, none lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from ipc.client import Consumer
from tests.integration.conftest import Node, free_port, wait_until
from tests.integration.test_kafka_listener import NODE_OPTIONS, _api_versions

pytestmark = pytest.mark.slow


@pytest.fixture
def kafka_node(node_factory: Callable[..., Node]) -> Node:
    port = free_port()
    n = node_factory(kafka_listen=f"127.0.0.1:{port}", **NODE_OPTIONS)
    n.kafka = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    n.start()
    wait_until(lambda: _api_versions(n.kafka) is not None, 20, "the Kafka listener")  # type: ignore[attr-defined]
    return n


def test_idempotent_producer_survives_a_node_restart_without_duplicates(kafka_node: Node) -> None:
    from confluent_kafka import KafkaError
    from confluent_kafka import Producer as KProducer

    addr = kafka_node.kafka  # type: ignore[attr-defined]
    with kafka_node.admin() as admin:
        admin.create_topic("idem", partitions=2)
    p = KProducer({"bootstrap.servers": addr, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                   "message.timeout.ms": 60_000, "reconnect.backoff.max.ms": 200, "log_level": 2})  # fmt: skip
    delivered: list[bytes] = []
    errors: list[Any] = []

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is None:
            delivered.append(msg.value())
        else:
            errors.append(err)

    n, first = 3000, 1000
    for i in range(first):  # the producer has its producer id and sequence numbers past 0 ...
        p.produce("idem", key=b"k%d" % (i % 37), value=b"v%d" % i, on_delivery=on_delivery)
    assert p.flush(30) == 0 and len(delivered) == first
    for i in range(first, n):  # ... and records in flight and queued while the node restarts:
        p.produce("idem", key=b"k%d" % (i % 37), value=b"v%d" % i, on_delivery=on_delivery)
    wait_until(lambda: p.poll(0.01) >= 0 and len(delivered) > first, 20, "the second part's first delivery")
    pending_at_stop = n - len(delivered)
    # librdkafka retries them with the same producer id and sequence numbers
    assert kafka_node.stop() == 0
    kafka_node.start()
    wait_until(lambda: _api_versions(addr) is not None, 20, "the Kafka listener again")
    assert p.flush(60) == 0
    assert errors == [] and len(delivered) == n
    print(f"{pending_at_stop} records not yet acknowledged when the node was stopped")
    c = Consumer(kafka_node.bootstrap, group_id="idem-check", auto_offset_reset="earliest")
    values: list[bytes | None] = []
    try:
        c.subscribe(["idem"])
        deadline = time.monotonic() + 30
        while len(values) < n and time.monotonic() < deadline:
            values.extend(r.value for r in c.poll(500))
        values.extend(r.value for r in c.poll(500))  # anything past n would be a duplicate
    finally:
        c.close()
    assert sorted(values) == sorted(b"v%d" % i for i in range(n))  # each once
