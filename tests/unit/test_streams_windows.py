"""Windowing arithmetic and windowed aggregations on in-memory records: tumbling,
hopping and session windows, grace, late records, emit on update or once at close."""

from __future__ import annotations

import pytest

from ipc.streams import HoppingWindows, SessionWindows, StreamsApp, TopologyError, TumblingWindows, Windowed
from ipc.streams.testing import TopologyTestDriver


def test_window_starts() -> None:
    assert TumblingWindows(10).starts(25) == [20]
    assert TumblingWindows(10).starts(20) == [20]
    assert HoppingWindows(10, 5).starts(12) == [5, 10]
    assert HoppingWindows(10, 5).starts(3) == [0]  # none before the epoch
    assert HoppingWindows(9, 3).starts(10) == [3, 6, 9]
    w = TumblingWindows(10, grace_ms=5)
    assert not w.closed(0, 14) and w.closed(0, 15)
    with pytest.raises(TopologyError, match="advance_ms=20 is above size_ms=10"):
        HoppingWindows(10, 20)
    with pytest.raises(TopologyError, match="size_ms=0"):
        TumblingWindows(0)


def _windowed_app(windows, emit: str = "update") -> tuple[StreamsApp, TopologyTestDriver]:  # type: ignore[no-untyped-def]
    app = StreamsApp("w", key_serde="str", value_serde="json")
    app.stream("in").group_by_key().windowed_by(windows).count(name="counts", emit=emit).to_stream().to(
        "out", key_serde="json", value_serde="json"
    )
    return app, TopologyTestDriver(app, {"in": 1})


def test_tumbling_count_with_grace_and_a_late_record() -> None:
    app, d = _windowed_app(TumblingWindows(10, grace_ms=5))
    for ts in (1, 3, 12, 8, 21, 9, 2):  # 8 is in grace (stream time 12); 9 and 2 are late (stream time 21)
        d.pipe("in", "a", 1, timestamp=ts)
    d.end_batch()
    out = [(k["start"], v) for k, v, _ in d.output("out", "json", "json")]
    assert out == [(0, 1), (0, 2), (10, 1), (0, 3), (20, 1)]
    assert app.counters.late_records_dropped == 2
    assert app.metrics()["late_by_node"] == {"counts": 2}
    # closed windows leave the store at the end of the batch
    assert d.store("counts") == {("a", 10, 20): 1, ("a", 20, 30): 1}


def test_hopping_count_emit_final_once_per_window() -> None:
    app, d = _windowed_app(HoppingWindows(10, 5, grace_ms=0), emit="final")
    for ts in (1, 6, 7, 11):
        d.pipe("in", "k", 1, timestamp=ts)
    d.end_batch()  # stream time 11: [0,10) closed
    assert [(k["start"], k["end"], v) for k, v, _ in d.output("out", "json", "json")] == [(0, 10, 3)]
    d.pipe("in", "k", 1, timestamp=40)
    d.end_batch()
    got = [(k["start"], v) for k, v, _ in d.output("out", "json", "json")]
    assert got == [(0, 3), (5, 3), (10, 1)]


def test_session_windows_merge_and_close() -> None:
    app = StreamsApp("s", key_serde="str", value_serde="json")
    (app.stream("in").group_by_key().windowed_by(SessionWindows(gap_ms=10, grace_ms=20))
        .aggregate(lambda: 0, lambda k, v, a: a + v, lambda k, a, b: a + b, name="sums", emit="update")
        .to_stream().to("out", key_serde="json", value_serde="json"))
    d = TopologyTestDriver(app, {"in": 1})
    d.pipe("in", "u", 1, timestamp=0)
    d.pipe("in", "u", 2, timestamp=18)  # a second session
    d.pipe("in", "u", 4, timestamp=9)  # within 10 of both: one session [0, 18] = 7
    d.end_batch()
    assert d.store("sums") == {("u", 0, 18): 7}
    out = [((k["start"], k["end"]), v) for k, v, _ in d.output("out", "json", "json")]
    assert out[-1] == ((0, 18), 7)
    assert ((0, 0), None) in out and ((18, 18), None) in out  # the merged sessions are retracted
    d.pipe("in", "u", 1, timestamp=100)  # closes [0, 18]
    d.end_batch()
    assert d.store("sums") == {("u", 100, 100): 1}
    d.pipe("in", "u", 1, timestamp=5)  # late: 5 + gap + grace < 100
    assert app.counters.late_records_dropped == 1


def test_emit_checked() -> None:
    app = StreamsApp("x")
    with pytest.raises(TopologyError, match="emit='sometimes'"):
        app.stream("in").group_by_key().windowed_by(TumblingWindows(5)).count(emit="sometimes")
    with pytest.raises(TopologyError, match="merger"):
        app.stream("in2").group_by_key().windowed_by(SessionWindows(5)).aggregate(lambda: 0, lambda k, v, a: a)


def test_windowed_key_in_json() -> None:
    from ipc.streams.serdes import JSON

    assert JSON.serialize(Windowed("a", 0, 10)) == b'{"key":"a","start":0,"end":10}'
