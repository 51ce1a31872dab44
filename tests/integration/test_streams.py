"""The streams library against a real node: real topics, a real consumer group, real
internal topics (repartition, changelog). Each app runs in the test's process with a
bounded ``run(max_seconds=..., until=...)``; crash and scaling tests are in
test_streams_crash.py."""

from __future__ import annotations

import collections
import heapq
import random
import time
from typing import Any

import orjson
import pytest

from ipc.client import Consumer, Producer
from ipc.streams import CoPartitionError, MissingSourceTopicError, SerdeError, StreamsApp

from .conftest import Node


def read_topic(bootstrap: str, topic: str, partitions: int, count: int, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` once at least ``count`` have arrived (polled with a deadline)."""
    out: list[Any] = []
    with Consumer(bootstrap, auto_offset_reset="earliest") as c:
        c.assign([(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while len(out) < count:
            assert time.monotonic() < deadline, f"{topic}: {len(out)} of {count} records after {timeout} s"
            out.extend(c.poll(timeout_ms=200))
        out.extend(c.poll(timeout_ms=300))  # anything beyond count shows up as a failure
    return out


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]], ts: list[int] | None = None
            ) -> None:
    with Producer(bootstrap) as p:
        for i, (k, v) in enumerate(records):
            p.send(topic, v, key=k, timestamp_ms=None if ts is None else ts[i])
        p.flush(30)


def test_stateless_topology(node: Node) -> None:
    with node.admin() as a:
        for t, n in (("events", 3), ("big", 2), ("small", 2)):
            a.create_topic(t, partitions=n)
    produce(node.bootstrap, "events", [(b"k%d" % i, orjson.dumps({"n": i})) for i in range(300)])
    app = StreamsApp("stateless", bootstrap=node.bootstrap, key_serde="str", value_serde="json")
    big, small = (app.stream("events").filter(lambda k, v: v["n"] % 3 != 0).map_values(lambda v: v["n"])
                  .split(lambda k, v: v >= 100, default=True))
    big.to("big")
    small.map(lambda k, v: (k.upper(), v)).to("small")
    app.run(max_seconds=60, until=lambda a: a.counters.records_processed >= 300)
    assert app.metrics()["records_processed"] == 300
    got_big = read_topic(node.bootstrap, "big", 2, 134)
    got_small = read_topic(node.bootstrap, "small", 2, 66)
    assert sorted(orjson.loads(r.value) for r in got_big) == [i for i in range(100, 300) if i % 3]
    assert sorted((r.key, orjson.loads(r.value)) for r in got_small) == sorted(
        (b"K%d" % i, i) for i in range(100) if i % 3
    )
    # everything processed was committed: a second run finds nothing new
    app2 = StreamsApp("stateless", bootstrap=node.bootstrap, key_serde="str", value_serde="json")
    app2.stream("events").to("big")
    app2.run(max_seconds=3)
    assert app2.counters.records_processed == 0


def test_word_count_through_a_repartition_topic(node: Node) -> None:
    with node.admin() as a:
        a.create_topic("lines", partitions=4)
        a.create_topic("word-counts", partitions=4)
    words = [f"w{(i * 7) % 41}" for i in range(4000)]
    produce(node.bootstrap, "lines", [(None, " ".join(words[i:i + 8]).encode()) for i in range(0, 4000, 8)])
    app = StreamsApp("wordcount", bootstrap=node.bootstrap, key_serde="str", value_serde="str")
    counts = app.stream("lines").flat_map(lambda k, v: [(w, w) for w in v.split()]).group_by_key().count(
        name="counts")
    counts.to_stream().to("word-counts", value_serde="json")
    app.run(max_seconds=60, until=lambda a: a.counters.records_processed >= 500 + 4000)
    final = {}
    for r in read_topic(node.bootstrap, "word-counts", 4, 4000):
        final[r.key.decode()] = orjson.loads(r.value)
    assert final == collections.Counter(words)
    with node.admin() as a:
        topics = a.list_topics()
        assert "wordcount-counts-changelog" in topics
        assert "wordcount-counts-repartition" in topics
        assert a.describe_topic("wordcount-counts-changelog")["config"]["cleanup.policy"] == "compact"
        assert a.partition_count("wordcount-counts-changelog") == 4


def test_undecodable_record_fails_or_is_skipped(node: Node) -> None:
    with node.admin() as a:
        for t in ("in", "out", "out2"):
            a.create_topic(t, partitions=1)
    produce(node.bootstrap, "in", [(None, b"1"), (None, b"{oops"), (None, b"3")])
    app = StreamsApp("strict", bootstrap=node.bootstrap, value_serde="json")
    app.stream("in").to("out")
    with pytest.raises(SerdeError, match=r"the value of in-0 offset 1 with the json serde"):
        app.run(max_seconds=30)
    lenient = StreamsApp("lenient", bootstrap=node.bootstrap, value_serde="json", on_deserialize_error="skip")
    lenient.stream("in").map_values(lambda v: v * 10).to("out2", value_serde="json")
    lenient.run(max_seconds=30, until=lambda a: a.counters.records_processed + a.counters.records_skipped >= 3)
    assert lenient.counters.records_skipped == 1
    assert sorted(r.value for r in read_topic(node.bootstrap, "out2", 1, 2)) == [b"10", b"30"]


def test_bad_setup_is_refused_at_start(node: Node) -> None:
    with node.admin() as a:
        a.create_topic("orders", partitions=4)
        a.create_topic("customers", partitions=2)
    app = StreamsApp("missing", bootstrap=node.bootstrap)
    app.stream("nope").to("out")
    with pytest.raises(MissingSourceTopicError, match="source topic 'nope' does not exist"):
        app.run(max_seconds=5)
    app = StreamsApp("copart", bootstrap=node.bootstrap)
    app.stream("orders").join(app.table("customers"), lambda o, c: o).to("out")
    with pytest.raises(CoPartitionError, match="not co-partitioned"):
        app.run(max_seconds=5)


def test_orders_join_customers_as_of_each_order(node: Node) -> None:
    """Customer updates arrive between orders (by timestamp): each enriched order carries
    the customer version current at its position; the left join emits None for unknown ids."""
    with node.admin() as a:
        for t in ("orders", "customers", "enriched", "enriched-left"):
            a.create_topic(t, partitions=2)
    customers, orders, want, want_left = [], [], [], []
    version: dict[str, int] = {}
    ts = 1_000
    for i in range(200):
        ts += 10
        cid = f"c{i % 7}"
        if i % 5 == 0:
            version[cid] = version.get(cid, 0) + 1
            customers.append((cid, {"v": version[cid]}, ts))
        else:
            oid = f"c{i % 9}"  # c7 and c8 never exist
            orders.append((oid, {"id": i}, ts))
            if oid in version:
                want.append((i, version[oid]))
            want_left.append((i, version.get(oid)))
    for topic, rows in (("customers", customers), ("orders", orders)):
        produce(node.bootstrap, topic, [(k.encode(), orjson.dumps(v)) for k, v, _ in rows], [t for _, _, t in rows])
    app = StreamsApp("enricher", bootstrap=node.bootstrap, key_serde="str", value_serde="json")
    table = app.table("customers")
    stream = app.stream("orders")
    stream.join(table, lambda o, c: [o["id"], c["v"]]).to("enriched")
    stream.left_join(table, lambda o, c: [o["id"], c and c["v"]]).to("enriched-left")
    app.run(max_seconds=60, until=lambda a: a.counters.records_processed >= 200)
    got = sorted(tuple(orjson.loads(r.value)) for r in read_topic(node.bootstrap, "enriched", 2, len(want)))
    assert got == sorted(want)
    got_left = sorted(tuple(orjson.loads(r.value)) for r in read_topic(node.bootstrap, "enriched-left", 2,
                                                                        len(want_left)))
    assert got_left == sorted(want_left)


def test_clicks_join_impressions_within_a_window(node: Node) -> None:
    """Stream-stream join, event time, out-of-order and late records: the output equals
    the brute-force reference over the same input (in the order the task processes it)."""
    from ipc.streams import JoinWindows
    from tests.unit.test_streams_joins import reference_join

    with node.admin() as a:
        for t in ("clicks", "impressions", "attributed"):
            a.create_topic(t, partitions=1)
    rng = random.Random(7)
    w = JoinWindows(before_ms=10_000, after_ms=0, grace_ms=5_000)
    events, t = [], 1_000_000
    for i in range(400):
        t += rng.randint(0, 700)
        side = "L" if rng.random() < 0.5 else "R"
        events.append((side, rng.choice("abcd"), t - rng.choice([0, 0, 0, 3000, 30_000]), i))
    clicks = [e for e in events if e[0] == "L"]
    imps = [e for e in events if e[0] == "R"]
    produce(node.bootstrap, "clicks", [(k.encode(), orjson.dumps(i)) for _, k, _, i in clicks], [e[2] for e in clicks])
    produce(node.bootstrap, "impressions", [(k.encode(), orjson.dumps(i)) for _, k, _, i in imps], [e[2] for e in imps])
    # the task takes the smallest head timestamp of its two partitions first (ties: by topic name)
    order = list(heapq.merge(clicks, imps, key=lambda e: e[2]))
    want, late = reference_join(order, w, "left")
    app = StreamsApp("attribution", bootstrap=node.bootstrap, key_serde="str", value_serde="json")
    app.stream("clicks").left_join(app.stream("impressions"), lambda c, i: [c, i], window=w).to("attributed")
    app.run(max_seconds=60, until=lambda a: a.counters.records_processed >= 400)  # late ones included
    got = sorted(((r.key.decode(), *orjson.loads(r.value)) for r in read_topic(
        node.bootstrap, "attributed", 1, len(want))), key=repr)
    assert got == want
    assert app.counters.late_records_dropped == late
