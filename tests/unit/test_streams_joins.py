"""Joins on in-memory inputs: stream-table, table-table, and the windowed stream-stream
join checked against a brute-force reference over the same input."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ipc.streams import JoinWindows, StreamsApp
from ipc.streams.testing import TopologyTestDriver


def test_stream_table_join_uses_the_table_as_of_each_record() -> None:
    app = StreamsApp("shop", key_serde="str", value_serde="json")
    customers = app.table("customers")
    orders = app.stream("orders")
    orders.join(customers, lambda o, c: [o["id"], c["v"]]).to("inner", value_serde="json")
    orders.left_join(customers, lambda o, c: [o["id"], c and c["v"]]).to("left", value_serde="json")
    d = TopologyTestDriver(app, {"orders": 2, "customers": 2})
    d.pipe("orders", "c1", {"id": 1})  # no customer yet
    d.pipe("customers", "c1", {"v": 1})
    d.pipe("orders", "c1", {"id": 2})
    d.pipe("customers", "c1", {"v": 2})  # a table update emits nothing by itself
    d.pipe("orders", "c1", {"id": 3})
    d.pipe("customers", "c1", None)  # tombstone
    d.pipe("orders", "c1", {"id": 4})
    assert [v for _, v, _ in d.output("inner", value_serde="json")] == [[2, 1], [3, 2]]
    assert [v for _, v, _ in d.output("left", value_serde="json")] == [[1, None], [2, 1], [3, 2], [4, None]]


def test_table_table_join_emits_on_either_side() -> None:
    app = StreamsApp("tt", key_serde="str", value_serde="json")
    a, b = app.table("a"), app.table("b")
    a.join(b, lambda x, y: x + y).to_stream().to("inner", value_serde="json")
    a.left_join(b, lambda x, y: x + (y or 0), name="lj").to_stream().to("left", value_serde="json")
    d = TopologyTestDriver(app, {"a": 1, "b": 1})
    d.pipe("a", "k", 1)
    d.pipe("b", "k", 10)
    d.pipe("a", "k", 2)
    d.pipe("b", "k", None)
    d.pipe("a", "k", None)
    assert [v for _, v, _ in d.output("inner", value_serde="json")] == [11, 12, None]
    assert [v for _, v, _ in d.output("left", value_serde="json")] == [1, 11, 12, 2, None]


def reference_join(
    events: list[tuple[str, str, int, int]], w: JoinWindows, how: str
) -> tuple[list[tuple[Any, ...]], int]:
    """Brute force over events in processing order (side, key, ts, id): a record is
    accepted unless its own window closed before it came (left: ts + after + grace <
    stream time; right: ts + before + grace < stream time); every accepted pair within
    the window joins; an accepted record that joined nothing and has expired (ts + before
    + after + grace < final stream time) gives a null result for left/outer."""
    st = -1
    accepted = []
    late = 0
    for side, key, ts, ident in events:
        st = max(st, ts)
        reach = w.after_ms if side == "L" else w.before_ms
        if ts + reach + w.grace_ms < st:
            late += 1
            continue
        accepted.append((side, key, ts, ident))
    out: list[tuple[Any, ...]] = []
    matched: set[int] = set()
    for ls, lk, lt, li in accepted:
        for rs, rk, rt, ri in accepted:
            if ls == "L" and rs == "R" and lk == rk and lt - w.before_ms <= rt <= lt + w.after_ms:
                out.append((lk, li, ri))
                matched.update((li, ri))
    for side, key, ts, ident in accepted:
        expired = ts + w.before_ms + w.after_ms + w.grace_ms < st
        if ident not in matched and expired and (how == "outer" or (how == "left" and side == "L")):
            out.append((key, ident, None) if side == "L" else (key, None, ident))
    return sorted(out, key=repr), late


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_stream_join_matches_brute_force(how: str, seed: int) -> None:
    rng = random.Random(seed)
    w = JoinWindows(before_ms=30, after_ms=20, grace_ms=15)
    app = StreamsApp("ss", key_serde="str", value_serde="json")
    left, right = app.stream("clicks"), app.stream("impressions")
    left.join(right, lambda a, b: [a, b], window=w, how=how).to("out", value_serde="json")
    d = TopologyTestDriver(app, {"clicks": 1, "impressions": 1})
    events = []
    t = 0
    for i in range(300):
        t += rng.randint(0, 8)
        ts = max(0, t - rng.choice([0, 0, 0, 5, 25, 60]))  # out of order, some late
        side = rng.choice("LR")
        key = rng.choice("abc")
        events.append((side, key, ts, i))
        d.pipe("clicks" if side == "L" else "impressions", key, i, timestamp=ts)
        if i % 17 == 0:
            d.end_batch()
    d.end_batch()
    got = sorted(((k, v[0], v[1]) for k, v, _ in d.output("out", "str", "json")), key=repr)
    want, late = reference_join(events, w, how)
    assert got == want
    assert app.counters.late_records_dropped == late > 0
