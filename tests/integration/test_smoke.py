"""The appliance end to end through the library: a first, quick check."""

from __future__ import annotations

import pytest

from ipc.client import Consumer, Producer
from tests.integration.conftest import Node

# every test here runs over TCP and over the same-host path (issue 18: shared-memory rings)
pytestmark = pytest.mark.parametrize("same_host", [False, True], ids=["tcp", "same_host"])


def test_produce_and_consume_through_the_library(node: Node, same_host: bool) -> None:
    with node.admin() as admin:
        admin.create_topic("smoke", partitions=2)
    with Producer(node.bootstrap, same_host=same_host) as p:
        futures = [p.send("smoke", b"v%d" % i, key=b"k%d" % (i % 7)) for i in range(1000)]
        p.flush(10)
        mds = [f.result(10) for f in futures]
    assert sorted((m.partition, m.offset) for m in mds) == sorted(set((m.partition, m.offset) for m in mds))
    got = []
    with Consumer(node.bootstrap, auto_offset_reset="earliest", same_host=same_host) as c:
        c.assign([("smoke", 0), ("smoke", 1)])
        for _ in range(100):
            got.extend(c.poll(500))
            if len(got) >= 1000:
                break
    assert sorted(r.value for r in got) == sorted(b"v%d" % i for i in range(1000))


def test_one_batch_mixes_keys_headers_and_timestamps_in_any_order(node: Node, same_host: bool) -> None:
    """Records with and without keys, headers and timestamps, sent back to back to one
    partition (they share batches), read back as they were sent."""
    with node.admin() as admin:
        admin.create_topic("mixed-columns", partitions=1)
    sent = [
        (None, b"plain", None, None),
        (b"k1", b"keyed", None, None),
        (None, b"headed", [("h", b"1"), ("n", None)], None),
        (None, b"stamped", None, 1_700_000_000_123),
        (b"k2", b"all", [("x", b"")], 1_700_000_000_456),
        (None, b"plain-again", None, None),
    ]
    with Producer(node.bootstrap, linger_ms=50, same_host=same_host) as p:
        p.send("mixed-columns", b"warm-up").result(10)
        futures = [p.send("mixed-columns", v, key=k, partition=0, headers=h, timestamp_ms=t) for k, v, h, t in sent]
        mds = [f.result(10) for f in futures]
    assert [m.offset for m in mds] == list(range(1, len(sent) + 1))
    with Consumer(node.bootstrap, auto_offset_reset="earliest", same_host=same_host) as c:
        c.assign([("mixed-columns", 0)])
        got = []
        for _ in range(50):
            got.extend(c.poll(200))
            if len(got) > len(sent):
                break
    got = got[1:]
    assert [(r.key, r.value, r.headers) for r in got] == [(k, v, h or []) for k, v, h, _ in sent]
    assert [r.timestamp for r in got] == [m.timestamp for m in mds]
    assert got[3].timestamp == 1_700_000_000_123 and got[4].timestamp == 1_700_000_000_456
