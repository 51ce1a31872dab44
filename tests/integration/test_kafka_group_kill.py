"""A three-member confluent-kafka consumer group on the Kafka listener (docs/kafka.md),
each member a real process; one is SIGKILLed mid-run. The other two take over its
partitions from its committed offsets and every record is consumed at least once:
none is skipped, counting only what was committed (issue 15)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import EventProcess, Node, free_port, wait_until
from tests.integration.test_kafka_listener import NODE_OPTIONS, _api_versions

pytestmark = pytest.mark.slow

TOPIC, GROUP, PARTITIONS = "work", "workers", 6

# One member: it reports every record before committing it (so a commit never covers a
# record it did not report), announces each commit before sending it ("committing")
# and after the coordinator acknowledged it ("committed"), and reports each assignment.
MEMBER = r"""
import sys, time, orjson
from confluent_kafka import Consumer, KafkaException

def emit(ev, **f):
    sys.stdout.buffer.write(orjson.dumps({"ev": ev, **f}) + b"\n")
    sys.stdout.buffer.flush()

bootstrap, group, topic = sys.argv[1:4]
c = Consumer({
    "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
    "enable.auto.commit": False, "session.timeout.ms": 4000, "heartbeat.interval.ms": 300,
    "topic.metadata.refresh.interval.ms": 2000,
})
owned = set()

def on_assign(consumer, tps):
    owned.update(tp.partition for tp in tps)
    emit("assign", owned=sorted(owned))

def on_revoke(consumer, tps):
    owned.difference_update(tp.partition for tp in tps)
    emit("revoke", owned=sorted(owned))

c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
emit("ready")
while True:
    msgs = c.consume(num_messages=10, timeout=0.2)
    good = [m for m in msgs if m.error() is None]
    if not good:
        continue
    emit("records", recs=[[m.partition(), m.offset(), m.value().decode()] for m in good])
    time.sleep(0.01)  # the work a record costs: keeps the run going while a member is killed
    nxt = {}
    for m in good:
        nxt[m.partition()] = m.offset() + 1
    offsets = sorted(nxt.items())
    emit("committing", offsets=offsets)
    try:
        from confluent_kafka import TopicPartition
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets], asynchronous=False)
        emit("committed", offsets=offsets)
    except KafkaException as exc:  # a rebalance under way: the next owner reads them again
        emit("commit_failed", error=str(exc))
"""


@pytest.fixture
def kafka_node(node_factory: Callable[..., Node]) -> Node:
    port = free_port()
    n = node_factory(kafka_listen=f"127.0.0.1:{port}", **NODE_OPTIONS)
    n.kafka = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    n.start()
    wait_until(lambda: _api_versions(n.kafka) is not None, 20, "the Kafka listener")  # type: ignore[attr-defined]
    return n


def _produce(addr: str, start: int, stop: int) -> None:
    from confluent_kafka import Producer as KProducer

    p = KProducer({"bootstrap.servers": addr, "acks": "all", "linger.ms": 5})
    errors: list[Any] = []
    for i in range(start, stop):
        p.produce(TOPIC, key=b"k%d" % i, value=b"v%d" % i, on_delivery=lambda e, m: errors.append(e) if e else None)
    assert p.flush(30) == 0 and errors == []


def _owned(m: EventProcess) -> set[int]:
    evs = [e for e in m.events() if e["ev"] in ("assign", "revoke")]
    return set(evs[-1]["owned"]) if evs else set()


def _records(m: EventProcess, since: int = 0) -> list[tuple[int, int, str]]:
    return [(p, o, v) for e in m.events("records", since) for p, o, v in e["recs"]]


def test_confluent_group_of_three_survives_a_sigkilled_member(kafka_node: Node, tmp_path: Path) -> None:
    addr = kafka_node.kafka  # type: ignore[attr-defined]
    with kafka_node.admin() as admin:
        admin.create_topic(TOPIC, partitions=PARTITIONS)
    first, total = 1800, 3000
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    members = [
        EventProcess(f"m{i}", [sys.executable, str(script), addr, GROUP, TOPIC], tmp_path / f"m{i}.log", tmp_path)
        for i in range(3)
    ]
    try:
        # all three in the group, the six partitions shared among them
        def balanced() -> bool:
            sets = [_owned(m) for m in members]
            return all(sets) and sum(map(len, sets)) == PARTITIONS and set().union(*sets) == set(range(PARTITIONS))

        wait_until(balanced, 30, "three members sharing six partitions")
        _produce(addr, 0, first)
        victim, survivors = members[0], members[1:]
        wait_until(lambda: victim.events("committed"), 20, "the victim's first acknowledged commit")
        victim_owned = _owned(victim)
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        victim._reader.join(5)
        killed_at = [m.mark() for m in survivors]
        # what the victim reported, and the last commit it announced per partition: a commit
        # it never announced was never sent, so nothing past it can count as consumed
        intent: dict[int, int] = {}
        for e in victim.events("committing"):
            for p, o in e["offsets"]:
                intent[p] = o
        _produce(addr, first, total)  # more for every partition, the victim's too

        # the survivors take the victim's partitions and read to the end of every partition
        wait_until(
            lambda: set().union(*(_owned(m) for m in survivors)) == set(range(PARTITIONS)),
            30,
            "the survivors to own every partition",
        )

        def all_read() -> bool:
            values = {v for m in survivors for _, _, v in _records(m)} | {v for _, _, v in _records(victim)}
            return len(values) == total

        wait_until(all_read, 30, "every record read")

        def committed_to_end() -> bool:
            with kafka_node.admin() as admin:
                parts = admin.describe_group(GROUP)["partitions"]
            return len(parts) == PARTITIONS and all(p["committed_offset"] == p["log_end_offset"] for p in parts)

        wait_until(committed_to_end, 20, "the group's commits to reach every partition's end")

        # commit-based: per partition, the offsets the survivors read plus the victim's below
        # its last announced commit cover [0, end) with no hole
        with kafka_node.admin() as admin:
            desc = admin.describe_group(GROUP)
        ends = {p["partition"]: p["log_end_offset"] for p in desc["partitions"] if p["topic"] == TOPIC}
        assert sum(ends.values()) == total
        for part in range(PARTITIONS):
            covered = {o for m in survivors for p, o, _ in _records(m) if p == part}
            covered |= {o for p, o, _ in _records(victim) if p == part and o < intent.get(part, 0)}
            assert covered == set(range(ends[part])), (part, sorted(set(range(ends[part])) - covered)[:10])
        # the victim's partitions were read again after the kill by the survivors, from no
        # later than its last announced commit
        for part in victim_owned:
            after = [o for m, k in zip(survivors, killed_at, strict=True) for p, o, _ in _records(m, k) if p == part]
            assert after and min(after) <= intent.get(part, 0), (part, min(after, default=None), intent.get(part))
        # and every value (offset -> value) is the one produced
        for m in members:
            for _, _, v in _records(m):
                assert v.startswith("v") and 0 <= int(v[1:]) < total
    finally:
        for m in members:
            with contextlib.suppress(Exception):
                m.kill()
        for m in members:
            evs = [{k: v for k, v in e.items() if k != "recs"} for e in m.events()]
            print(f"--- {m.name} events (records elided) ---\n{evs[-40:]}\n--- {m.name} log ---\n{m.log_tail()}")
