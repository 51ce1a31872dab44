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


def test_restore_many_applies_a_fetch_as_restore_does_one_record_at_a_time() -> None:
    from ipc.client import ConsumerRecord

    committed: dict[tuple[str, int], int | None] = {("in", 0): 20}
    for windowed in (False, True):
        spec = StoreSpec("s", windowed=windowed)
        spec.changelog = "c-s-changelog"
        src_store = Store(spec, 0)
        keys = ["a", 7, ("t", 1), b"raw", {"k": 1}] if not windowed else [("a", 0, 10), ((1, 2), 10, 20)]
        for i, key in enumerate(keys):
            src_store.put(key if not isinstance(key, dict) else "d", {"v": i} if i % 2 else [i, b"x".hex()],
                          ("in", 0, i))
        src_store.advance(99, ("in", 0, 9))
        src_store.delete(keys[0], ("in", 0, 10))
        drained = src_store.drain()
        # one record written by processing that was never committed (offset 50 >= 20): skipped
        records = [ConsumerRecord("c-s-changelog", 0, i, 0, k, v, [(SRC_HEADER, src_bytes(src))])
                   for i, (k, v, src) in enumerate(drained)]
        records.append(ConsumerRecord("c-s-changelog", 0, len(records), 0, src_store.encode_key(keys[1]), b"J0",
                                      [(SRC_HEADER, src_bytes(("in", 0, 50)))]))
        one, many = Store(spec, 0), Store(spec, 0)
        for r in records:
            if _committed_write(r.headers, committed):
                one.restore(r.key or b"", r.value)
        applied = many.restore_many(records, lambda h: _committed_write(h, committed))
        assert applied == len(records) - 1
        assert many.data == one.data and many.stream_time == one.stream_time == 99
        assert keys[0] not in many.data and len(many.data) == len(keys) - 1
