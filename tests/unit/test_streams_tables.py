"""``Table.filter`` / ``filter_not`` / ``map_values`` on in-memory records
(TopologyTestDriver): updates, tombstones propagated, materialized results joined,
restored from their changelog, and bad arguments."""

from __future__ import annotations

import pytest

from ipc.streams import StreamsApp, TopologyError
from ipc.streams.testing import TopologyTestDriver


def _values(d: TopologyTestDriver, topic: str) -> list[tuple[str, object]]:
    return [(k, v) for k, v, _ in d.output(topic, "str", "json")]


def test_filter_turns_failing_updates_into_tombstones() -> None:
    app = StreamsApp("tf", key_serde="str", value_serde="json")
    app.table("users").filter(lambda k, v: v["active"]).to_stream().to("active")
    d = TopologyTestDriver(app, {"users": 1})
    d.pipe("users", "a", {"active": True})
    d.pipe("users", "b", {"active": False})  # never matched: a tombstone all the same (not materialized)
    d.pipe("users", "a", {"active": False})  # stops matching: deleted from the result
    d.pipe("users", "a", {"active": True})
    d.pipe("users", "a", None)  # deleted upstream: deleted here, without calling the predicate
    assert _values(d, "active") == [
        ("a", {"active": True}), ("b", None), ("a", None), ("a", {"active": True}), ("a", None)
    ]


def test_filter_not_is_the_complement() -> None:
    app = StreamsApp("tfn", key_serde="str", value_serde="json")
    app.table("n").filter_not(lambda k, v: v > 10).to_stream().to("small")
    d = TopologyTestDriver(app, {"n": 1})
    d.pipe("n", "x", 5)
    d.pipe("n", "x", 50)
    assert _values(d, "small") == [("x", 5), ("x", None)]


def test_materialized_filter_forwards_only_deletions_of_rows_it_held() -> None:
    app = StreamsApp("tfm", key_serde="str", value_serde="json")
    app.table("users").filter(lambda k, v: v["active"], materialized="active-users").to_stream().to("active")
    d = TopologyTestDriver(app, {"users": 2})
    d.pipe("users", "a", {"active": True})
    d.pipe("users", "b", {"active": False})  # not in the result: nothing to delete
    d.pipe("users", "a", {"active": False})
    d.pipe("users", "b", None)
    assert _values(d, "active") == [("a", {"active": True}), ("a", None)]
    assert d.store("active-users") == {}
    d.pipe("users", "c", {"active": True, "n": 1})
    assert d.store("active-users") == {"c": {"active": True, "n": 1}}
    assert app.store("active-users") is not None  # a store: queryable
    d.end_batch()
    changelog = [(key, value) for topic, _p, key, value, _src in d.changelog if topic == "tfm-active-users-changelog"]
    assert len(changelog) == 2 and changelog[0][1] is None  # a's deletion, c's row


def test_map_values_keeps_tombstones_and_none_deletes() -> None:
    calls: list[object] = []

    def fn(v: int) -> int | None:
        calls.append(v)
        return None if v < 0 else v * 2

    app = StreamsApp("tmv", key_serde="str", value_serde="json")
    app.table("n").map_values(fn).to_stream().to("doubled")
    d = TopologyTestDriver(app, {"n": 1})
    d.pipe("n", "x", 1)
    d.pipe("n", "x", None)
    d.pipe("n", "y", -1)
    assert _values(d, "doubled") == [("x", 2), ("x", None), ("y", None)]
    assert calls == [1, -1]  # never called with a tombstone


def test_a_materialized_map_values_can_be_joined_and_restored() -> None:
    app = StreamsApp("tmj", key_serde="str", value_serde="json")
    names = app.table("customers").map_values(lambda c: c["name"].upper(), materialized="names")
    app.stream("orders").left_join(names, lambda o, n: [o, n]).to("enriched")
    d = TopologyTestDriver(app, {"customers": 2, "orders": 2})
    d.pipe("customers", "c1", {"name": "ada"})
    d.pipe("orders", "c1", 1)
    d.pipe("customers", "c1", None)
    d.pipe("orders", "c1", 2)
    d.pipe("customers", "c2", {"name": "bob"})
    assert _values(d, "enriched") == [("c1", [1, "ADA"]), ("c1", [2, None])]
    d.end_batch()
    # the store's changelog rebuilds it: what a moved task restores
    again = TopologyTestDriver(app, {"customers": 2, "orders": 2})
    sub = next(s.index for s in again.subs if any(spec.name == "names" for spec in s.stores))
    for topic, p, key, value, _src in d.changelog:
        if topic == "tmj-names-changelog":
            again.tasks[(sub, p)].stores["names"].restore(key, value)
    assert again.store("names") == {"c2": "BOB"}


def test_table_table_join_of_filtered_tables() -> None:
    app = StreamsApp("ttf", key_serde="str", value_serde="json")
    a = app.table("a").filter(lambda k, v: v > 0, materialized="a-pos")
    b = app.table("b").map_values(lambda v: v * 10, materialized="b-x10")
    a.join(b, lambda x, y: x + y).to_stream().to("sum")
    d = TopologyTestDriver(app, {"a": 1, "b": 1})
    d.pipe("a", "k", 1)
    d.pipe("b", "k", 2)
    d.pipe("a", "k", -1)  # filtered out: the join result goes
    assert _values(d, "sum") == [("k", 21), ("k", None)]


def test_bad_arguments_are_refused() -> None:
    app = StreamsApp("tbad", key_serde="str", value_serde="json")
    t = app.table("t")
    with pytest.raises(TopologyError, match="not a callable predicate"):
        t.filter("x")  # type: ignore[arg-type]
    with pytest.raises(TopologyError, match="not callable"):
        t.map_values(3)  # type: ignore[arg-type]
    with pytest.raises(TopologyError, match="materialized="):
        t.filter(lambda k, v: True, materialized="a b")
    t.filter(lambda k, v: True, materialized="kept")
    with pytest.raises(TopologyError, match="declared twice"):
        t.map_values(lambda v: v, materialized="kept")
    unmaterialized = t.filter(lambda k, v: True)
    with pytest.raises(TopologyError, match="materialized="):
        app.stream("s").join(unmaterialized, lambda a, b: a)


def test_a_table_table_join_result_materialized_by_map_values_can_be_joined() -> None:
    app = StreamsApp("ttm", key_serde="str", value_serde="json")
    joined = app.table("a").join(app.table("b"), lambda x, y: x + y).map_values(lambda v: v, materialized="ab")
    app.stream("s").join(joined, lambda s, ab: [s, ab]).to("out")
    d = TopologyTestDriver(app, {"a": 1, "b": 1, "s": 1})
    d.pipe("a", "k", 1)
    d.pipe("b", "k", 2)
    d.pipe("s", "k", "x")
    d.pipe("b", "k", None)
    d.pipe("s", "k", "y")
    assert _values(d, "out") == [("k", ["x", 3])]
    assert d.store("ab") == {}
