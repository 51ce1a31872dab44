"""State stores: the changelog records a batch writes, and what restoring applies (only
writes whose input record was committed)."""

from __future__ import annotations

from ipc.streams import StreamsApp, TumblingWindows
from ipc.streams.restore import _committed_write
from ipc.streams.stores import SRC_HEADER, Store, StoreSpec, src_bytes
from ipc.streams.testing import TopologyTestDriver


def _replay(spec: StoreSpec, changelog: list, committed: dict) -> Store:  # type: ignore[type-arg]
    store = Store(spec, 0)
    for _topic, _p, key, value, src in changelog:
        if _committed_write([(SRC_HEADER, src_bytes(src))], committed):
            store.restore(key, value)
    return store


def test_one_changelog_record_per_key_per_batch_and_restore() -> None:
    app = StreamsApp("c", key_serde="str", value_serde="str")
    app.stream("in").group_by_key().count(name="counts")
    d = TopologyTestDriver(app, {"in": 1})
    for _ in range(5):
        d.pipe("in", "a", "x")
    d.pipe("in", "b", "x")
    d.end_batch()
    assert [(k, v) for _, _, k, v, _ in d.changelog] == [(b'J"a"', b"J5"), (b'J"b"', b"J1")]
    for _ in range(3):
        d.pipe("in", "a", "x")  # offsets 6, 7, 8
    d.end_batch()
    spec = app.topology.stores["counts"]
    # everything committed: the restored store is the live one
    assert _replay(spec, d.changelog, {("in", 0): 9}).data == {"a": 8, "b": 1}
    # the second batch was never committed (a crash before the commit): its writes are
    # skipped, so re-processing offsets 6..8 cannot count them twice
    assert _replay(spec, d.changelog, {("in", 0): 6}).data == {"a": 5, "b": 1}
    # nothing committed at all
    assert _replay(spec, d.changelog, {}).data == {}


def test_windowed_store_keeps_stream_time_and_deletes_closed_windows() -> None:
    app = StreamsApp("w", key_serde="str", value_serde="str")
    app.stream("in").group_by_key().windowed_by(TumblingWindows(10)).count(name="wc")
    d = TopologyTestDriver(app, {"in": 1})
    d.pipe("in", "a", "x", timestamp=5)
    d.end_batch()
    d.pipe("in", "a", "x", timestamp=25)
    d.end_batch()
    store = _replay(app.topology.stores["wc"], d.changelog, {("in", 0): 2})
    assert store.data == {("a", 20, 30): 1}
    assert store.stream_time == 25
