"""The streams DSL on in-memory records (TopologyTestDriver): stateless operations,
serdes, bad input, the plan (sub-topologies, repartition, co-partitioning)."""

from __future__ import annotations

import pytest

from ipc.streams import CoPartitionError, JoinWindows, Serde, SerdeError, StreamsApp, TopologyError
from ipc.streams.plan import plan
from ipc.streams.serdes import Windowed, freeze, pack, unpack
from ipc.streams.testing import TopologyTestDriver


def test_stateless_chain() -> None:
    app = StreamsApp("t", key_serde="str", value_serde="json")
    seen: list[tuple[str, int]] = []
    (app.stream("in")
        .filter(lambda k, v: v["n"] % 2 == 0)
        .map_values(lambda v: v["n"] * 10)
        .peek(lambda k, v: seen.append((k, v)))
        .map(lambda k, v: (k.upper(), v + 1))
        .flat_map(lambda k, v: [(k, v), (k + "!", v)])
        .to("out"))
    d = TopologyTestDriver(app, {"in": 2})
    for i in range(4):
        d.pipe("in", f"k{i}", {"n": i}, timestamp=100 + i)
    assert seen == [("k0", 0), ("k2", 20)]
    assert d.output("out", "str", "json") == [("K0", 1, 100), ("K0!", 1, 100), ("K2", 21, 102), ("K2!", 21, 102)]


def test_split_goes_to_the_first_branch_that_matches_and_default() -> None:
    app = StreamsApp("t", value_serde="json")
    small, big, rest = app.stream("in").split(lambda k, v: v < 10, lambda k, v: v < 100, default=True)
    small.to("small")
    big.to("big")
    rest.to("rest")
    d = TopologyTestDriver(app, {"in": 1})
    for v in (1, 50, 5, 500):
        d.pipe("in", None, v)
    assert [v for _, v, _ in d.output("small", value_serde="json")] == [1, 5]
    assert [v for _, v, _ in d.output("big", value_serde="json")] == [50]
    assert [v for _, v, _ in d.output("rest", value_serde="json")] == [500]


def test_custom_serde_and_select_key() -> None:
    upper = Serde(lambda s: s.upper().encode(), lambda b: b.decode().lower(), "upper")
    app = StreamsApp("t")
    app.stream("in", value_serde=upper).select_key(lambda k, v: v[:1]).to("out", key_serde="str", value_serde=upper)
    d = TopologyTestDriver(app, {"in": 1})
    d.pipe("in", b"x", "hello")
    assert d.output("out", "str", "str") == [("h", "HELLO", 0)]


def test_undecodable_record_fails_with_its_position() -> None:
    app = StreamsApp("t", value_serde="json")
    app.stream("in").to("out")
    d = TopologyTestDriver(app, {"in": 1})
    with pytest.raises(SerdeError, match=r"the value of in-0 offset 0 with the json serde"):
        d.pipe("in", None, b"{not json", raw=True)


def test_undecodable_record_skipped_and_counted() -> None:
    bad: list[int] = []
    app = StreamsApp("t", value_serde="json", on_deserialize_error=lambda exc, r: bad.append(r.offset))
    app.stream("in").to("out", value_serde="json")
    d = TopologyTestDriver(app, {"in": 1})
    d.pipe("in", None, b"{not json", raw=True)
    d.pipe("in", None, b"[1]", raw=True)
    assert bad == [0]
    assert app.counters.records_skipped == 1
    assert d.output("out", value_serde="json") == [(None, [1], 0)]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TopologyError, match="app_id"):
        StreamsApp("bad name")
    with pytest.raises(TopologyError, match="unknown serde 'yaml'"):
        StreamsApp("t", value_serde="yaml")
    app = StreamsApp("t")
    s = app.stream("a")
    with pytest.raises(TopologyError, match="read twice"):
        app.stream("a")
    with pytest.raises(TopologyError, match="needs window=JoinWindows"):
        s.join(app.stream("b"), lambda a, b: a)
    with pytest.raises(TopologyError, match="no source"):
        plan(StreamsApp("empty").topology, {})
    s.map_values(len, name="m")
    with pytest.raises(TopologyError, match="used twice"):
        s.map_values(len, name="m")


def test_join_of_non_copartitioned_topics_is_refused_naming_them() -> None:
    app = StreamsApp("t")
    orders = app.stream("orders")
    customers = app.table("customers")
    orders.join(customers, lambda o, c: o).to("out")
    with pytest.raises(CoPartitionError, match=r"customers \(2 partitions\), orders \(4 partitions\)"):
        plan(app.topology, {"orders": 4, "customers": 2})
    app2 = StreamsApp("t2")
    app2.stream("a").join(app2.stream("b"), lambda x, y: x, window=JoinWindows.of(10)).to("out")
    with pytest.raises(CoPartitionError):
        plan(app2.topology, {"a": 3, "b": 1})


def test_key_change_before_a_join_repartitions_to_the_table_partition_count() -> None:
    app = StreamsApp("shop", value_serde="json", key_serde="str")
    customers = app.table("customers")
    (app.stream("orders").select_key(lambda k, v: v["customer"])
        .join(customers, lambda o, c: {**o, "name": c["name"]}, name="enrich").to("out", value_serde="json"))
    subs, counts = plan(app.topology, {"orders": 8, "customers": 3})
    assert counts["shop-enrich-left-repartition"] == 3
    d = TopologyTestDriver(app, {"orders": 8, "customers": 3})
    d.pipe("customers", "c1", {"name": "Ann"})
    d.pipe("orders", "o1", {"customer": "c1", "total": 5})
    d.pipe("orders", "o2", {"customer": "c9", "total": 7})
    assert d.output("out", "str", "json") == [("c1", {"customer": "c1", "total": 5, "name": "Ann"}, 0)]


def test_internal_encoding_round_trips() -> None:
    for obj in (b"\x00raw", "text", 3, [1, "a"], {"a": [1, 2]}, None):
        assert unpack(pack(obj)) == obj
    assert freeze(unpack(pack(("k", 1)))) == ("k", 1)
    assert freeze(unpack(pack(Windowed("k", 0, 10)))) == Windowed("k", 0, 10)
    with pytest.raises(SerdeError):
        unpack(b"Xjunk")


def test_describe_lists_nodes_and_stores() -> None:
    app = StreamsApp("wc", value_serde="str")
    app.stream("lines").flat_map(lambda k, v: [(w, 1) for w in v.split()]).group_by_key().count(name="counts")
    text = app.describe()
    assert "source source-lines <- lines" in text
    assert "stores=['counts']" in text
    assert "-> wc-" in text and "-repartition" in text
