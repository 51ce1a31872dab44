"""Compacted logs with small segments stay readable from their start across restarts.

Issue 20, item 0: compaction that empties a partition's first segments used to leave
them as empty files whose offset range was lost on reload; after a restart a read from
offset 0 returned nothing, forever, and ``__consumer_offsets`` could not be loaded.
Both cases run here on a real node, restarted cleanly (SIGTERM) and after SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import pytest

from ipc.client import Consumer, Producer
from tests.integration.conftest import Node, wait_until
from tests.integration.test_groups import PARTITIONS, TOPIC, Front

SMALL_SEGMENTS = {"cleaner_interval_ms": 100}
TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": 4096, "delete.retention.ms": 1000}

Rec = tuple[int, bytes | None, bytes | None]  # (offset, key, value)


def _restart(node: Node, how: str) -> None:
    if how == "clean":
        assert node.stop() == 0, node.log_tail()
    else:
        node.kill_all()
    node.start()


def _segment_bases(node: Node, directory: str) -> list[int]:
    path = node.data_dir / directory
    return sorted(int(n[:-4]) for n in os.listdir(path) if n.endswith(".log"))


def _read_from(node: Node, topic: str, offset: int, end: int) -> list[Rec]:
    """Every record at or after ``offset`` up to ``end``, read with a fresh consumer."""
    tp = (topic, 0)
    out: list[Rec] = []
    with Consumer(node.bootstrap, request_timeout_ms=5000) as c:
        c.assign([tp])
        c.seek(topic, 0, offset)

        def caught_up() -> bool:
            out.extend((r.offset, r.key, r.value) for r in c.poll(200))
            return c.position(topic, 0) >= end

        wait_until(caught_up, 20.0, f"reading {topic} from offset {offset} up to {end}")
    return [r for r in out if r[0] >= offset]


@pytest.mark.parametrize("how", ["clean", "kill"])
def test_a_topic_emptied_at_its_start_by_compaction_reads_from_offset_0_after_a_restart(
    node_factory: Callable[..., Node], how: str
) -> None:
    node = node_factory(**SMALL_SEGMENTS).start()
    with node.admin() as admin:
        admin.create_topic("table", 1, config=TOPIC_CONFIG)
    # 3,000 updates to 100 keys, 30 % tombstones, stamped a minute ago: every tombstone is
    # past delete.retention.ms when the cleaner first sees it
    old = int(time.time() * 1000) - 60_000
    with Producer(node.bootstrap) as p:
        for i in range(3000):
            value = b"v%05d" % i if i % 10 >= 3 else None
            p.send("table", value, key=b"k%03d" % (i % 100), partition=0, timestamp_ms=old)
            if i % 10 == 9:
                p.flush()  # batches of 10: many small segments
        for i in range(100):  # new keys, a batch each: the updates' last segment is sealed too
            p.send("table", b"new%03d" % i, key=b"n%03d" % i, partition=0)
            p.flush()
    newest = {i % 100: i for i in range(3000)}
    expected: list[Rec] = [(o, b"k%03d" % (o % 100), b"v%05d" % o) for o in sorted(newest.values()) if o % 10 >= 3]
    expected += [(3000 + i, b"n%03d" % i, b"new%03d" % i) for i in range(100)]
    end = 3100
    wait_until(lambda: _read_from(node, "table", 0, end) == expected, 30.0, "compaction of every sealed segment")
    first = expected[0][0]
    bases = _segment_bases(node, "table-0")
    assert bases[0] == 0 and 1000 < bases[1] <= first, f"emptied segments after the first are removed: {bases}"
    for _ in range(2):
        _restart(node, how)
        assert _read_from(node, "table", 0, end) == expected, "reading from offset 0 after the restart"
        for offset in (1000, first - 1, first, 2990):  # inside the emptied range, and at its edge
            assert _read_from(node, "table", offset, end) == [r for r in expected if r[0] >= offset], offset
        tp = ("table", 0)
        with Consumer(node.bootstrap, request_timeout_ms=5000) as c:
            start = c.beginning_offsets([tp])[tp]
        assert start == 0, "compaction moved the log start offset"


@pytest.mark.parametrize("how", ["clean", "kill"])
def test_commits_in_a_small_segment_offsets_topic_load_after_restarts(
    node_factory: Callable[..., Node], how: str
) -> None:
    node = node_factory(offsets_topic_partitions=1, offsets_topic_segment_bytes=4096, **SMALL_SEGMENTS).start()
    expected: dict[int, int] = {}
    with contextlib.closing(Front(node)) as front:

        def commit(partition: int, offset: int) -> bool:
            reply = front.call(
                "offset_commit", group="gz", offsets=[{"topic": TOPIC, "partition": partition, "offset": offset}]
            )
            if reply.error is not None and reply.error.retriable:  # the offsets topic is still being created
                return False
            reply.raise_for_error()
            return True

        for i in range(1200):
            partition = i % PARTITIONS
            wait_until(lambda: commit(partition, i), 20.0, f"commit {i}")  # noqa: B023 - called at once
            expected[partition] = i
        assert front.committed("gz") == expected
        wait_until(
            lambda: len(_segment_bases(node, "__consumer_offsets-0")) < 10,
            30.0,
            "compaction removing the emptied segments of __consumer_offsets",
        )
    for _ in range(2):
        _restart(node, how)
        with contextlib.closing(Front(node)) as front:
            assert front.committed("gz") == expected  # waits out COORDINATOR_LOAD_IN_PROGRESS, at most 20 s
