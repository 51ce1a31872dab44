"""The streams library against a real node: real topics, a real consumer group, real
internal topics (repartition, changelog). Each app runs in the test's process with a
bounded ``run(max_seconds=..., until=...)``; crash and scaling tests are in
test_streams_crash.py."""

from __future__ import annotations

import collections
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
