"""Joins: stream-table, stream-stream (windowed) and table-table.

* stream-table (``StreamTableJoinNode``): the stream side triggers; the record's key is
  looked up in the table's store for the same partition; a table update never emits by
  itself. ``left`` emits ``joiner(value, None)`` for a key the table does not hold.
* table-table (``TableTableJoinNode``, one per side): an update of either side emits the
  key's new joined value, or a tombstone when it no longer joins (inner: either side
  deleted; left: the left side deleted).
* stream-stream (``StreamStreamJoinNode``, one per side): both sides are buffered in
  windowed stores keyed (key, timestamp, offset); a record at t joins the other side's
  buffered records within the ``JoinWindows`` (left at t: right in [t - before,
  t + after]). Stream time is shared by both sides (the larger of the two stores'). A
  record is late, dropped and counted, when its own window is closed: a left record at
  t once ``t + after + grace < stream time``, a right one once ``t + before + grace <
  stream time``. A buffered record is expired when no record still accepted could join
  it, ``t + before + after + grace < stream time``; ``left`` and ``outer`` joins then
  emit ``joiner(value, None)`` (``joiner(None, value)`` for the right side of ``outer``)
  for a record that never joined, so a null result is final, never followed by a match
  (as Kafka Streams since 3.1, which also emits them only once the window closed).
  Join results carry the larger of the two timestamps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ipc.streams.nodes import Node, RecordContext, Task
from ipc.streams.serdes import pack, unpack
from ipc.streams.stores import Store, StoreSpec
from ipc.streams.windows import JoinWindows

log = logging.getLogger(__name__)

Joiner = Callable[[Any, Any], Any]
JOIN_KINDS = ("inner", "left", "outer")


class StreamTableJoinNode(Node):
    kind = "stream-table-join"

    def __init__(self, name: str, table: StoreSpec, joiner: Joiner, left: bool) -> None:
        super().__init__(name)
        self.table = table
        self.joiner = joiner
        self.left = left

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if key is None or value is None:
            return  # as Kafka Streams: a record without key (or value) joins nothing
        other = ctx.task.stores[self.table.name].data.get(key)
        if other is None and not self.left:
            return
        self.forward(ctx, key, self.joiner(value, other))


class TableTableJoinNode(Node):
    """One side of a table-table join; both sides share ``children`` (the result)."""

    kind = "table-table-join"

    def __init__(self, name: str, this: StoreSpec, other: StoreSpec, joiner: Joiner, left: bool, this_is_left: bool):
        super().__init__(name)
        self.this = this
        self.other = other
        self.joiner = joiner
        self.left = left
        self.this_is_left = this_is_left

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if key is None:
            return
        other = ctx.task.stores[self.other.name].data.get(key)
        lv, rv = (value, other) if self.this_is_left else (other, value)
        if self.left:
            if lv is not None:
                self.forward(ctx, key, self.joiner(lv, rv))
            elif self.this_is_left:  # the left row went, and its result with it
                self.forward(ctx, key, None)
            return
        if lv is not None and rv is not None:
            self.forward(ctx, key, self.joiner(lv, rv))
        elif value is None and other is not None:  # this side went: the result went with it
            self.forward(ctx, key, None)


def encode_buffered(item: tuple[bool, Any]) -> bytes:
    return (b"M" if item[0] else b"U") + pack(item[1])


def decode_buffered(raw: bytes) -> tuple[bool, Any]:
    return raw[:1] == b"M", unpack(raw[1:])


def buffer_spec(name: str) -> StoreSpec:
    return StoreSpec(name, windowed=True, encode_value=encode_buffered, decode_value=decode_buffered)


def _by_key(store: Store) -> dict[Any, set[tuple[Any, int, int]]]:
    idx: dict[Any, set[tuple[Any, int, int]]] | None = store.extra.get("by_key")
    if idx is None:
        idx = {}
        for k in store.data:
            idx.setdefault(k[0], set()).add(k)
        store.extra["by_key"] = idx
    return idx


class StreamStreamJoinNode(Node):
    """One side of a windowed stream-stream join; the two sides share ``children``."""

    kind = "stream-stream-join"

    def __init__(
        self,
        name: str,
        this: StoreSpec,
        other: StoreSpec,
        joiner: Joiner,
        windows: JoinWindows,
        how: str,
        this_is_left: bool,
    ) -> None:
        super().__init__(name)
        self.this = this
        self.other = other
        self.stores = [this]
        self.joiner = joiner
        self.windows = windows
        self.how = how
        self.this_is_left = this_is_left
        w = windows
        # window relative to this side's timestamp t: the other side's timestamps that join
        self.lo, self.hi = (w.before_ms, w.after_ms) if this_is_left else (w.after_ms, w.before_ms)
        self.retain_ms = w.before_ms + w.after_ms + w.grace_ms
        self.emit_unmatched = how == "outer" or (how == "left" and this_is_left)

    def process(self, ctx: RecordContext, key: Any, value: Any) -> None:
        if key is None or value is None:
            return
        stores = ctx.task.stores
        mine, theirs = stores[self.this.name], stores[self.other.name]
        ts = ctx.timestamp
        mine.advance(ts, ctx.src)
        stream_time = max(mine.stream_time, theirs.stream_time)
        if ts + self.hi + self.windows.grace_ms < stream_time:
            ctx.task.late(self.name, ts, stream_time, ctx.src)
            return
        matched = False
        for okey in sorted(_by_key(theirs).get(key, ()), key=lambda k: (k[1], k[2])):
            ots = okey[1]
            if not ts - self.lo <= ots <= ts + self.hi:
                continue
            was_matched, ovalue = theirs.data[okey]
            matched = True
            if not was_matched:
                theirs.put(okey, (True, ovalue), ctx.src)
            lv, rv = (value, ovalue) if self.this_is_left else (ovalue, value)
            self.forward(RecordContext(ctx.task, max(ts, ots), ctx.src), key, self.joiner(lv, rv))
        wkey = (key, ts, ctx.src[2])
        mine.put(wkey, (matched, value), ctx.src)
        _by_key(mine).setdefault(key, set()).add(wkey)

    def punctuate(self, task: Task) -> None:
        mine, theirs = task.stores[self.this.name], task.stores[self.other.name]
        stream_time = max(mine.stream_time, theirs.stream_time)
        expired = [(k, v) for k, v in mine.data.items() if k[1] + self.retain_ms < stream_time]
        if not expired:
            return
        src = mine.last_src or theirs.last_src or ("", mine.partition, -1)
        idx = _by_key(mine)
        for wkey, (matched, value) in sorted(expired, key=lambda item: (item[0][1], item[0][2])):
            mine.delete(wkey, src)
            keys = idx.get(wkey[0])
            if keys is not None:
                keys.discard(wkey)
                if not keys:
                    del idx[wkey[0]]
            if not matched and self.emit_unmatched:
                result = self.joiner(value, None) if self.this_is_left else self.joiner(None, value)
                self.forward(RecordContext(task, wkey[1], src), wkey[0], result)
