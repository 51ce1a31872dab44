"""The Kafka listener on the three-node bed (docs/kafka.md#clusters): each node listens
for Kafka on a port of its own and publishes its address through the coordinator, so
Metadata from any node names every broker at its real HOST:PORT and confluent-kafka
routes to each partition's leader; and a leader SIGKILLed under an idempotent
``acks=all`` producer and a consumer group, both through the listeners, loses nothing
acknowledged (tests/cluster/checker.py)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import Producer as CKProducer
from confluent_kafka.admin import AdminClient

from tests.cluster.checker import check
from tests.cluster.harness import Cluster, toml_text, wait_until
from tests.cluster.workload import read_all

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


class KafkaWorkload:
    """A confluent-kafka idempotent ``acks=all`` producer (unique values ``w-<n>``, spread over
    the partitions) and a confluent-kafka consumer group member, each in a thread, both
    through the listeners; records what was acknowledged and what was consumed."""

    def __init__(self, kafka: str, topic: str, partitions: int, rate: float = 300.0) -> None:
        self.topic, self.partitions, self.rate = topic, partitions, rate
        self.acked: list[tuple[int, int, bytes]] = []
        self.sent: list[bytes] = []
        self.consumed: set[bytes] = set()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._stop_consumer = threading.Event()
        self.producer = CKProducer(
            {"bootstrap.servers": kafka, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
             "message.timeout.ms": 60000}
        )
        self.consumer = CKConsumer(
            {"bootstrap.servers": kafka, "group.id": f"{topic}-group", "auto.offset.reset": "earliest",
             "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
        )
        self._threads = [threading.Thread(target=self._produce), threading.Thread(target=self._consume)]
        for t in self._threads:
            t.start()

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked.append((msg.partition(), msg.offset(), msg.value()))
        else:
            self.errors.append(str(err))

    def _produce(self) -> None:
        n = 0
        while not self._stop.is_set():
            value = b"w-%d" % n
            self.sent.append(value)
            self.producer.produce(self.topic, value, partition=n % self.partitions, on_delivery=self._delivered)
            n += 1
            self.producer.poll(1 / self.rate)  # paces the workload and serves the delivery callbacks
        self.producer.flush(60)

    def _consume(self) -> None:
        self.consumer.subscribe([self.topic])
        while not self._stop_consumer.is_set():
            m = self.consumer.poll(0.2)
            if m is not None and m.error() is None:
                self.consumed.add(m.value())
        self.consumer.close()

    def wait_acked(self, more: int, timeout: float) -> None:
        want = len(self.acked) + more
        wait_until(lambda: len(self.acked) >= want, timeout, f"{more} more acknowledgements", interval=0.05)

    def stop_producing(self) -> None:
        self._stop.set()
        self._threads[0].join(90)

    def close(self) -> None:
        self._stop.set()
        self._stop_consumer.set()
        for t in self._threads:
            t.join(90)


def test_leader_killed_under_an_idempotent_producer_and_a_group_through_the_listeners(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cl = kafka_cluster(cluster_factory, {"zookeeper_session_timeout_ms": 3000, "replica_lag_time_max_ms": 2000})
    topic, partitions = "kafka-failover", 3
    cl.create_topic(topic, partitions=partitions, replication_factor=3, config={"min.insync.replicas": 2})
    for p in range(partitions):
        cl.wait_leader(topic, p)
    wl = KafkaWorkload(cl.kafka, topic, partitions)  # type: ignore[attr-defined]
    try:
        wl.wait_acked(150, 30)
        victim = cl.wait_leader(topic, 0)
        cl.node(victim).kill(signal.SIGKILL)
        cl.wait_leader(topic, 0, not_node=victim)
        wl.wait_acked(150, 30)  # the cluster takes writes again, through the other listeners
        wl.stop_producing()
        acked_values = {v for _, _, v in wl.acked}
        wait_until(lambda: acked_values <= wl.consumed, 30, "the group consuming every acknowledged record",
                   interval=0.1)
    finally:
        wl.close()
    read = read_all(cl.bootstrap, topic, partitions, timeout=30)
    report = check(wl.acked, read, sent=wl.sent)
    print(f"{topic}: {report.line()}; {len(wl.acked)} acknowledged, {len(wl.errors)} failed, node {victim} killed")
    assert report.ok, report.details()
    assert report.acknowledged > 300
