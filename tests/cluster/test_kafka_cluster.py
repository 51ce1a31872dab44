"""The Kafka listener on the three-node bed (docs/kafka.md#clusters): each node listens
for Kafka on a port of its own and publishes its address through the coordinator, so
Metadata from any node names every broker at its real HOST:PORT and confluent-kafka
routes to each partition's leader; and a leader SIGKILLed under an idempotent
``acks=all`` producer and a consumer group, both through the listeners, loses nothing
acknowledged (tests/cluster/checker.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import Producer as CKProducer
from confluent_kafka.admin import AdminClient

from tests.cluster.harness import Cluster, toml_text, wait_until

KAFKA_BASE_PORT = 19092  # node i listens on KAFKA_BASE_PORT + i (in its own namespace)


def kafka_cluster(factory: Callable[..., Cluster], options: dict[str, Any] | None = None) -> Cluster:
    """A cluster whose node i runs a Kafka listener on its own address, port 19092 + i."""
    cl = factory({"offsets_topic_partitions": 1, **(options or {})}, start=False)
    for n in cl.nodes:
        n.options["kafka_listen"] = f"{n.host}:{KAFKA_BASE_PORT + n.index}"
        n.config_path.write_text(toml_text(n.options))
    cl.start()
    cl.kafka = ",".join(f"{n.host}:{KAFKA_BASE_PORT + n.index}" for n in cl.nodes)  # type: ignore[attr-defined]
    return cl


def test_metadata_names_every_node_at_its_own_kafka_port(cluster_factory: Callable[..., Cluster]) -> None:
    cl = kafka_cluster(cluster_factory)
    cl.create_topic("spread", partitions=3, replication_factor=1)
    want = {n.node_id: (n.host, KAFKA_BASE_PORT + n.index) for n in cl.nodes}
    for n in cl.nodes:  # asked of each node's listener alone

        def brokers(n: Any = n) -> dict[int, tuple[str, int]] | None:
            md = AdminClient({"bootstrap.servers": f"{n.host}:{KAFKA_BASE_PORT + n.index}"}).list_topics(timeout=5)
            got = {b.id: (b.host, b.port) for b in md.brokers.values()}
            return got if got == want else None

        wait_until(brokers, 30, f"node {n.node_id}'s Metadata to name every node at its Kafka port")
    # the producer bootstraps from one node only and reaches every partition's leader
    for part in range(3):
        cl.wait_leader("spread", part)
    first = cl.nodes[0]
    p = CKProducer({"bootstrap.servers": f"{first.host}:{KAFKA_BASE_PORT}", "acks": "all"})
    done: list[Any] = []
    for part in range(3):
        for i in range(10):
            p.produce("spread", b"v%d" % i, partition=part, on_delivery=lambda e, m: done.append((e, m.partition())))
    assert p.flush(30) == 0
    assert [e for e, _ in done if e is not None] == [] and len(done) == 30
    del p  # no reconnects to the nodes after the test
    c = CKConsumer(
        {"bootstrap.servers": f"{cl.nodes[2].host}:{KAFKA_BASE_PORT + 2}", "group.id": "spread-readers",
         "auto.offset.reset": "earliest"}
    )
    try:
        c.subscribe(["spread"])
        got: list[tuple[int, bytes]] = []

        def read_all() -> bool:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append((m.partition(), m.value()))
            return len(got) >= 30

        wait_until(read_all, 30, "every record through the listeners", interval=0.0)
    finally:
        c.close()
    assert sorted(got) == sorted((part, b"v%d" % i) for part in range(3) for i in range(10))
