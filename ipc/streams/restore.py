"""Restoring the stores of newly assigned tasks before they process anything.

For each store partition, read its changelog partition from the start to the end
offset seen when the restore began, with a consumer of its own (no group, ``assign``),
and apply every record except those written by processing that was never committed
(``ipc/streams/stores.py`` explains the ``sluice.src`` header). A table read with
``app.table(topic)`` has no changelog: its store is rebuilt from the topic itself, from
the start up to the group's committed offset (processing goes on from there). A line
is logged every ``PROGRESS_S`` seconds of a long restore, and when it ends.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable

from ipc.client import Consumer, ConsumerRecord
from ipc.streams.errors import StreamsError
from ipc.streams.serdes import decode
from ipc.streams.stores import SRC_HEADER, Store, parse_src
from ipc.streams.tasks import TP, Counters, Task

log = logging.getLogger(__name__)

PROGRESS_S = 5.0


class RestoreTimeoutError(StreamsError):
    code = "STREAMS_RESTORE_TIMEOUT"


def restore_tasks(
    tasks: Iterable[Task],
    consumer: Consumer,
    committed: dict[TP, int | None],
    table_sources: dict[str, str],
    timeout_s: float,
    counters: Counters | None = None,
) -> int:
    """Restore every store of ``tasks``; ``committed``: the group's committed offset of
    each source partition of those tasks. Returns the number of records applied.
    ``counters`` (the app's) gets the progress after every fetch: records read and left
    per store (``restored_by_store``, ``restore_remaining``) and ``restore_seconds``."""
    counters = counters if counters is not None else Counters()
    targets: dict[TP, tuple[Store, int]] = {}  # changelog (or source) partition -> store, end
    tables: dict[TP, Store] = {}
    for task in tasks:
        for store in task.stores.values():
            spec = store.spec
            if spec.changelog is not None:
                targets[(spec.changelog, task.partition)] = (store, -1)
            elif spec.name in table_sources:
                tp = (table_sources[spec.name], task.partition)
                tables[tp] = store
                targets[tp] = (store, committed.get(tp) or 0)
    if not targets:
        return 0
    began = last_log = time.monotonic()
    tps = list(targets)
    consumer.assign(tps)
    ends = consumer.end_offsets([tp for tp, (_, end) in targets.items() if end < 0])
    starts = consumer.beginning_offsets(tps)
    todo: dict[TP, int] = {}
    for tp, (_store, end) in targets.items():
        last = ends[tp] if end < 0 else end
        if last > starts[tp]:
            todo[tp] = last
    consumer.assign(list(todo))
    for tp in todo:
        consumer.seek(tp[0], tp[1], starts[tp])
    left = {tp: end - starts[tp] for tp, end in todo.items()}  # at most: compaction leaves gaps
    total = sum(left.values())
    for tp, n in left.items():
        counters.restore_remaining[targets[tp][0].spec.name] += n
    applied = skipped = 0
    deadline = began + timeout_s

    def keep(headers: list[tuple[str, bytes | None]]) -> bool:
        return _committed_write(headers, committed)

    if todo:
        log.info("restoring %d store partition(s) from %d record(s) at most: %s", len(todo), total, sorted(todo))
    try:
        while todo:
            now = time.monotonic()
            if now > deadline:
                raise RestoreTimeoutError(f"restoring {sorted(todo)} took more than {timeout_s:.0f} s")
            if now - last_log >= PROGRESS_S:
                last_log = now
                log.info("restoring: %d of at most %d records read (%.0f %%), %d partition(s) left, %.0f s",
                         applied + skipped, total, 100 * (applied + skipped) / total, len(todo), now - began)
            for tp, run in itertools.groupby(consumer.poll(timeout_ms=200), key=lambda r: (r.topic, r.partition)):
                recs = list(run)
                stop = todo.get(tp)
                if stop is None:
                    continue
                store = targets[tp][0]
                if recs[-1].offset >= stop:
                    recs = [r for r in recs if r.offset < stop]
                if tp in tables:
                    for r in recs:
                        _apply_table(store, r)
                    applied += len(recs)
                else:
                    n = store.restore_many(recs, keep)
                    applied += n
                    skipped += len(recs) - n
                if not recs:
                    continue
                name = store.spec.name
                counters.restored_by_store[name] += len(recs)
                now_left = max(0, stop - (recs[-1].offset + 1))
                counters.restore_remaining[name] -= left[tp] - now_left
                left[tp] = now_left
                if not now_left:
                    del todo[tp], left[tp]
    finally:
        for tp, n in left.items():  # a timeout or an error: nothing of it is under way any more
            counters.restore_remaining[targets[tp][0].spec.name] -= n
        counters.restore_seconds += time.monotonic() - began
    consumer.assign([])
    if total:
        log.info("restored %d record(s) (%d written by uncommitted processing skipped) in %.2f s", applied, skipped,
                 time.monotonic() - began)
    return applied


def _committed_write(headers: list[tuple[str, bytes | None]], committed: dict[TP, int | None]) -> bool:
    """Whether the input record that wrote this changelog record was committed."""
    for name, raw in headers:
        if name == SRC_HEADER and raw:
            topic, partition, offset = parse_src(raw)
            if offset < 0:
                return True
            c = committed.get((topic, partition))
            return c is not None and offset < c
    return True


def _apply_table(store: Store, r: ConsumerRecord) -> None:
    spec = store.spec
    serdes = spec.source_serdes
    if serdes is None:
        raise StreamsError(f"table store {spec.name!r} has no source serdes")
    key = decode(serdes[0], r.key, f"the key of {r.topic}-{r.partition} offset {r.offset}")
    value = decode(serdes[1], r.value, f"the value of {r.topic}-{r.partition} offset {r.offset}")
    if key is None:
        return
    if value is None:
        store.data.pop(key, None)
    else:
        store.data[key] = value
