"""The appliance end to end through the library: a first, quick check."""

from __future__ import annotations

from ipc.client import Consumer, Producer
from tests.integration.conftest import Node


def test_produce_and_consume_through_the_library(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topic("smoke", partitions=2)
    with Producer(node.bootstrap) as p:
        futures = [p.send("smoke", b"v%d" % i, key=b"k%d" % (i % 7)) for i in range(1000)]
        p.flush(10)
        mds = [f.result(10) for f in futures]
    assert sorted((m.partition, m.offset) for m in mds) == sorted(set((m.partition, m.offset) for m in mds))
    got = []
    with Consumer(node.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([("smoke", 0), ("smoke", 1)])
        for _ in range(100):
            got.extend(c.poll(500))
            if len(got) >= 1000:
                break
    assert sorted(r.value for r in got) == sorted(b"v%d" % i for i in range(1000))
