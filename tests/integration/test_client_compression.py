"""Every codec end to end (issue 19: gzip and snappy beside lz4 and zstd): a producer
compresses, the node validates and stores the batch, a consumer decodes it."""

from __future__ import annotations

import time

import pytest

from ipc.client import Consumer, Producer
from ipc.records import Compression
from tests.integration.conftest import Node


@pytest.mark.parametrize("codec", ["gzip", "snappy"])
def test_a_codec_round_trips_through_the_node(node: Node, codec: str) -> None:
    with node.admin() as admin:
        admin.create_topic("c")
    values = [b"record %d " % i * 20 for i in range(200)]
    with Producer(node.bootstrap, compression=codec, linger_ms=20) as p:
        futs = [p.send("c", v, key=b"k") for v in values]
        p.flush(timeout=30)
        assert [f.result().offset for f in futs] == list(range(200))
    assert Compression.parse(codec) in (Compression.GZIP, Compression.SNAPPY)
    got: list[bytes | None] = []
    with Consumer(node.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([("c", 0)])
        deadline = time.monotonic() + 30
        while len(got) < len(values):
            assert time.monotonic() < deadline, f"{len(got)} of {len(values)} records"
            got.extend(r.value for r in c.poll(timeout_ms=200))
    assert got == values
