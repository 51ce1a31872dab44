"""Aggregations: per key (a table), per key and time window, per key and session.

Every aggregate lives in a store (``ipc/streams/stores.py``) backed by a changelog. A
key-value aggregate forwards (key, new aggregate) on every update. A windowed aggregate
forwards (``Windowed(key, start, end)``, aggregate) on every update (``emit="update"``),
or once per window when it closes (``emit="final"``, Kafka's ``suppress(untilWindowCloses)``);
either way a closed window is removed from the store at the end of the batch (a record
for it would be late). Stream time is the store's (per partition, restored with it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ipc.streams.errors import TopologyError
from ipc.streams.nodes import Node, RecordContext, Task
from ipc.streams.serdes import Windowed
from ipc.streams.stores import Store, StoreSpec
from ipc.streams.windows import SessionWindows, TimeWindows

log = logging.getLogger(__name__)

Initializer = Callable[[], Any]
Aggregator = Callable[[Any, Any, Any], Any]  # (key, value, aggregate) -> aggregate
Merger = Callable[[Any, Any, Any], Any]  # (key, aggregate, aggregate) -> aggregate
EMITS = ("update", "final")


def check_emit(emit: str) -> str:
    if emit not in EMITS:
        raise TopologyError(f"emit={emit!r}: allowed {', '.join(EMITS)}")
    return emit


class AggregateNode(Node):
    """``aggregate``, ``count`` and ``reduce`` of a grouped stream: a table."""

    kind = "aggregate"

    def __init__(self, name: str, spec: StoreSpec, initializer: Initializer, aggregator: Aggregator) -> None:
        super().__init__(name)
        self.spec = spec
        self.stores = [spec]
        self.initializer = initializer
        self.aggregator = aggregator

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if key is None:  # Kafka drops these too: no key, no group
            log.warning("%s: a record without key at %s is skipped", self.name, ctx.src)
            return
        store = ctx.task.stores[self.spec.name]
        old = store.data.get(key)
        agg = self.aggregator(key, value, self.initializer() if old is None else old)
        store.put(key, agg, ctx.src)
        self.forward(ctx, key, agg)


class _WindowAggregate(Node):
    """What the windowed and the session aggregations share: one store, the windows,
    the initializer and aggregator, and when results are emitted."""

    def __init__(
        self,
        name: str,
        spec: StoreSpec,
        windows: Any,
        initializer: Initializer,
        aggregator: Aggregator,
        emit: str,
    ) -> None:
        super().__init__(name)
        self.spec = spec
        self.stores = [spec]
        self.windows = windows
        self.initializer = initializer
        self.aggregator = aggregator
        self.emit = check_emit(emit)
        # tumbling windows: one window per record, found with one modulo (no list built)
        self.tumbling = isinstance(windows, TimeWindows) and windows.advance_ms == windows.size_ms


class WindowedAggregateNode(_WindowAggregate):
    kind = "windowed-aggregate"
    windows: TimeWindows

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if key is None:
            log.warning("%s: a record without key at %s is skipped", self.name, ctx.src)
            return
        store = ctx.task.stores[self.spec.name]
        ts = ctx.timestamp
        stream_time = store.advance(ts, ctx.src)
        w = self.windows
        applied = False
        data = store.data
        by_start = None
        if self.tumbling:
            first = ts - ts % w.size_ms
            starts: Iterable[int] = (first,) if first >= 0 else ()
        else:
            starts = w.starts(ts)
        for start in starts:
            if w.closed(start, stream_time):
                continue
            wkey = (key, start, start + w.size_ms)
            old = data.get(wkey)
            if old is None:
                if by_start is None:
                    by_start = window_index(store)
                keys = by_start.get(start)
                if keys is None:
                    keys = by_start[start] = set()
                keys.add(wkey)
                old = self.initializer()
            agg = self.aggregator(key, value, old)
            store.put(wkey, agg, ctx.src)
            applied = True
            if self.emit == "update":
                self.forward(ctx, Windowed(key, start, start + w.size_ms), agg)
        if not applied:
            ctx.task.late(self.name, ts, stream_time, ctx.src)

    def punctuate(self, task: Task) -> None:
        """Remove (and with ``emit="final"`` forward) the windows the stream time closed:
        found through the index by window start, not by a scan of the store."""
        store = task.stores[self.spec.name]
        st = store.stream_time
        w = self.windows
        by_start = window_index(store)
        starts = sorted(start for start in by_start if w.closed(start, st))
        if not starts:
            return
        src = store_src(store)
        data = store.data
        for start in starts:
            for wkey in sorted(by_start.pop(start), key=lambda k: repr(k[0])):
                agg = data.get(wkey)
                store.delete(wkey, src)
                if self.emit == "final" and agg is not None:
                    key, _, end = wkey
                    self.forward(RecordContext(task, end - 1, src), Windowed(key, start, end), agg)


class SessionAggregateNode(_WindowAggregate):
    kind = "session-aggregate"
    windows: SessionWindows

    def __init__(
        self,
        name: str,
        spec: StoreSpec,
        windows: SessionWindows,
        initializer: Initializer,
        aggregator: Aggregator,
        merger: Merger,
        emit: str,
    ) -> None:
        super().__init__(name, spec, windows, initializer, aggregator, emit)
        self.merger = merger

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if key is None:
            log.warning("%s: a record without key at %s is skipped", self.name, ctx.src)
            return
        store = ctx.task.stores[self.spec.name]
        ts = ctx.timestamp
        stream_time = store.advance(ts, ctx.src)
        w = self.windows
        merged = [
            (k, agg) for k, agg in session_index(store).get(key, {}).items() if w.overlaps(k[1], k[2], ts)
        ]
        start = min([ts, *(k[1] for k, _ in merged)])
        end = max([ts, *(k[2] for k, _ in merged)])
        if w.closed(end, stream_time):
            ctx.task.late(self.name, ts, stream_time, ctx.src)
            return
        agg = self.initializer()
        for old_key, old_agg in sorted(merged, key=lambda item: item[0][1]):
            agg = self.merger(key, agg, old_agg)
            _session_delete(store, old_key, ctx)
            if self.emit == "update":
                self.forward(ctx, Windowed(key, old_key[1], old_key[2]), None)
        agg = self.aggregator(key, value, agg)
        _session_put(store, (key, start, end), agg, ctx)
        if self.emit == "update":
            self.forward(ctx, Windowed(key, start, end), agg)

    def punctuate(self, task: Task) -> None:
        store = task.stores[self.spec.name]
        st = store.stream_time
        closed = [(k, agg) for k, agg in store.data.items() if self.windows.closed(k[2], st)]
        if not closed:
            return
        src = store_src(store)
        closed.sort(key=lambda item: (item[0][2], repr(item[0][0])))
        for wkey, agg in closed:
            _session_delete(store, wkey, RecordContext(task, wkey[2], src))
            if self.emit == "final":
                self.forward(RecordContext(task, wkey[2], src), Windowed(*wkey), agg)


# ---- helpers -------------------------------------------------------------------------------------
def store_src(store: Store) -> tuple[str, int, int]:
    """The source to stamp on writes made at the end of a batch (closing windows): the
    input record that last moved the store's stream time."""
    return store.last_src if store.last_src is not None else ("", store.partition, -1)


def window_index(store: Store) -> dict[int, set[tuple[Any, int, int]]]:
    """window start -> the store's keys (key, start, end) of that window, kept beside the
    store's dict (rebuilt from it after a restore, which drops ``extra``)."""
    idx: dict[int, set[tuple[Any, int, int]]] | None = store.extra.get("by_start")
    if idx is None:
        idx = {}
        for wkey in store.data:
            idx.setdefault(wkey[1], set()).add(wkey)
        store.extra["by_start"] = idx
    return idx


def session_index(store: Store) -> dict[Any, dict[tuple[Any, int, int], Any]]:
    """key -> {(key, start, end): aggregate}, kept beside the store's dict (rebuilt from
    it when the store was restored or replaced)."""
    idx: dict[Any, dict[tuple[Any, int, int], Any]] | None = store.extra.get("sessions")
    if idx is None:
        idx = {}
        for k, agg in store.data.items():
            idx.setdefault(k[0], {})[k] = agg
        store.extra["sessions"] = idx
    return idx


def _session_put(store: Store, wkey: tuple[Any, int, int], agg: Any, ctx: RecordContext) -> None:
    store.put(wkey, agg, ctx.src)
    session_index(store).setdefault(wkey[0], {})[wkey] = agg


def _session_delete(store: Store, wkey: tuple[Any, int, int], ctx: RecordContext) -> None:
    store.delete(wkey, ctx.src)
    sessions = session_index(store).get(wkey[0])
    if sessions is not None:
        sessions.pop(wkey, None)
        if not sessions:
            del session_index(store)[wkey[0]]
