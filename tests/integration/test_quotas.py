"""Quotas on a real node (docs/security.md, Quotas): produce and fetch byte rates for
``User:ANONYMOUS`` (quotas work without CURVE), the KIP-219 mute, the request-rate
quota of the front endpoint, quota changes on a running node, ``sluice quotas`` and
the client's handling of ``throttle_time_ms``.

The rate checks are behaviour, not benchmarks: a client that ignores
``throttle_time_ms`` and sends as fast as the node answers gets a rate under twice its
quota over a few seconds (the node holds its requests while it is muted)."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from ipc.client import Consumer, Producer
from ipc.errors import ThrottlingQuotaExceededError
from ipc.protocol import Reply, encode_request, parse_reply
from ipc.records import encode_batch, iter_headers
from tests.integration.conftest import REPO, SLUICE, Node, free_port, wait_until

QUOTA = 200_000  # bytes per second
MEASURE_S = 3.0
_ids = itertools.count(1)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(0)


def dealer(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def call(sock: zmq.Socket[Any], api: str, frames: list[bytes] | None = None, **fields: Any) -> Reply:
    """One request and its reply, within 20 s (a throttle is at most 11 s)."""
    cid = next(_ids)
    sock.send_multipart([encode_request(api, cid, **fields), *(frames or [])])
    deadline = time.monotonic() + 20
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            reply = parse_reply(sock.recv_multipart())
            if reply.id == cid:
                return reply
    raise AssertionError(f"{api} not answered within 20 s")


def endpoint_of(ctx: zmq.Context[Any], node: Node, topic: str) -> str:
    with node.admin() as admin:
        admin.create_topic(topic, partitions=1, exist_ok=True)
    front = dealer(ctx, node.bootstrap)
    try:

        def serving() -> str | None:
            (t,) = call(front, "metadata", topics=[topic], allow_auto_create=False).fields["topics"]
            return t["partitions"][0]["endpoint"] if t["partitions"] else None

        return str(wait_until(serving, 30, f"{topic}-0's endpoint"))
    finally:
        front.close(0)


def produce_for(sock: zmq.Socket[Any], topic: str, seconds: float) -> tuple[float, list[int]]:
    """Produce 20 KB batches one after the other, ignoring throttle_time_ms; returns the
    rate achieved (bytes/s) and every throttle time the node gave."""
    batch = encode_batch([b"x" * 1000] * 20)
    sent, throttles = 0, []
    start = time.monotonic()
    for _ in range(1_000_000):
        if time.monotonic() - start >= seconds:
            break
        reply = call(sock, "produce", [batch], topic=topic, partition=0)
        assert reply.error is None, reply.error
        sent += len(batch)
        throttles.append(int(reply.fields.get("throttle_time_ms", 0)))
    return sent / (time.monotonic() - start), throttles


def test_produce_quota_throttles_mutes_and_bounds_the_rate_and_changes_live(
    tmp_path: Path, ctx: zmq.Context[Any]
) -> None:
    metrics_at = f"127.0.0.1:{free_port()}"
    node = Node(tmp_path, metrics_listen=metrics_at)
    try:
        node.start()
        sock = dealer(ctx, endpoint_of(ctx, node, "q"))
        rate, throttles = produce_for(sock, "q", 1.0)
        assert not any(throttles), "throttled without a quota"
        assert rate > 2 * QUOTA, f"this host produces only {rate:.0f} B/s: the test needs more"
        with node.admin() as admin:  # on the running node, its worker already serving
            admin.set_quota("ANONYMOUS", producer_byte_rate=QUOTA)
        # within seconds (the node's reconcile hands it to the workers' shared table)
        wait_until(lambda: any(produce_for(sock, "q", 0.2)[1]), 10, "the new quota to take effect")
        rate, throttles = produce_for(sock, "q", MEASURE_S)
        assert max(throttles) > 0
        assert rate < 2 * QUOTA, f"{rate:.0f} B/s with a quota of {QUOTA} B/s"
        metrics = urllib.request.urlopen(f"http://{metrics_at}/metrics", timeout=10).read().decode()
        line = next(x for x in metrics.splitlines() if x.startswith("sluice_quota_throttle_time_seconds_total{"))
        assert 'principal="User:ANONYMOUS"' in line and 'quota="produce"' in line and float(line.split()[-1]) > 0
        with node.admin() as admin:
            admin.set_quota("ANONYMOUS", producer_byte_rate=None)

        def unthrottled() -> bool:
            return not any(produce_for(sock, "q", 0.3)[1])

        wait_until(unthrottled, 20, "the quota's removal to take effect")
        sock.close(0)
    finally:
        node.kill_all()


def fetch_for(sock: zmq.Socket[Any], topic: str, offset: int, seconds: float) -> tuple[float, list[int], int]:
    """Fetch one after the other, ignoring throttle_time_ms: (rate, throttle times, next offset)."""
    received, throttles = 0, []
    start = time.monotonic()
    for _ in range(100_000):
        if time.monotonic() - start >= seconds:
            break
        reply = call(sock, "fetch", topic=topic, partition=0, offset=offset, max_bytes=64 * 1024, max_wait_ms=0)
        assert reply.error is None, reply.error
        throttles.append(int(reply.fields.get("throttle_time_ms", 0)))
        data = bytes(reply.frames[0]) if reply.frames else b""
        received += len(data)
        offset = _next_offset(data, offset)
    return received / (time.monotonic() - start), throttles, offset


def test_fetch_quota_bounds_consumers(node: Node, ctx: zmq.Context[Any]) -> None:
    sock = dealer(ctx, endpoint_of(ctx, node, "f"))
    batch = encode_batch([b"y" * 1000] * 100)
    for _ in range(100):  # 10 MB to read: more than 3 s at twice the quota
        assert call(sock, "produce", [batch], topic="f", partition=0).error is None
    with node.admin() as admin:
        admin.set_quota("ANONYMOUS", consumer_byte_rate=QUOTA)
    wait_until(lambda: any(fetch_for(sock, "f", 0, 0.2)[1]), 10, "the fetch quota to take effect")
    rate, throttles, offset = fetch_for(sock, "f", 0, MEASURE_S)
    assert max(throttles) > 0
    assert 0 < rate < 2 * QUOTA, f"{rate:.0f} B/s fetched with a quota of {QUOTA} B/s"
    assert offset < 10_000, "the data ran out: the test measured nothing"
    sock.close(0)


def _next_offset(data: bytes, offset: int) -> int:
    last = offset
    for h in iter_headers(data):
        last = h.base_offset + h.last_offset_delta + 1
    return last


def test_request_rate_refuses_a_burst_of_metadata_requests(node: Node) -> None:
    with node.admin() as admin:
        admin.set_quota("ANONYMOUS", request_rate=5)
        refused: list[ThrottlingQuotaExceededError] = []
        # the front takes the new quota at its next reconcile (the coordinator's wake-up):
        # bursts of 30 until one is refused, bounded
        deadline = time.monotonic() + 15
        while not refused and time.monotonic() < deadline:
            for _ in range(30):
                try:
                    admin.list_topics()
                except ThrottlingQuotaExceededError as exc:
                    refused.append(exc)
        assert refused, "bursts of 30 metadata requests were all served under a quota of 5/s for 15 s"
        assert all(e.throttle_time_ms > 0 for e in refused)  # type: ignore[attr-defined]
        assert "request_rate" in refused[0].message

        def removed() -> bool:
            try:
                admin.set_quota("ANONYMOUS", request_rate=None)
            except ThrottlingQuotaExceededError:
                return False
            return True

        wait_until(removed, 15, "the quota's removal to be accepted", interval=0.2)
        for _ in range(30):
            admin.list_topics()


def test_the_client_library_honours_throttle_time(node: Node, ctx: zmq.Context[Any]) -> None:
    """The Producer and Consumer wait throttle_time_ms before their next request to the
    node: nothing fails, and the rates stay near the quota."""
    sock = dealer(ctx, endpoint_of(ctx, node, "c"))
    with node.admin() as admin:
        admin.set_quota("ANONYMOUS", producer_byte_rate=QUOTA, consumer_byte_rate=QUOTA)
    probes = 0

    def throttled() -> bool:
        nonlocal probes
        throttles = produce_for(sock, "c", 0.2)[1]
        probes += len(throttles)
        return any(throttles)

    wait_until(throttled, 10, "the quota to take effect")
    sock.close(0)
    value = b"z" * 1000
    with Producer(node.bootstrap, linger_ms=5) as p:
        start = time.monotonic()
        for _ in range(8):  # 8 x 100 KB, each round its own requests: the next waits for the throttle
            futures = [p.send("c", value, partition=0) for _ in range(100)]
            p.flush(60)
            assert all(f.result(0) is not None for f in futures)
        took = time.monotonic() - start
    assert took > 1.5, f"800 KB produced in {took:.2f} s under a quota of {QUOTA} B/s"
    assert 800_000 / took < 2 * QUOTA
    total = 800 + 20 * probes
    with Consumer(node.bootstrap, auto_offset_reset="earliest", fetch_max_bytes=64 * 1024) as c:
        c.assign([("c", 0)])
        got, start = 0, time.monotonic()
        while got < total and time.monotonic() - start < 60:
            got += len(c.poll(timeout_ms=500))
        took = time.monotonic() - start
    assert got == total
    assert total * 1000 / took < 2 * QUOTA


def test_quotas_cli_set_list_remove(node: Node) -> None:
    def sluice(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SLUICE, "quotas", *args, "--bootstrap", node.bootstrap],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    done = sluice("set", "--user", "alice", "--producer-byte-rate", "1048576", "--request-rate", "50")
    assert done.returncode == 0, done.stderr
    assert "User:alice: producer_byte_rate=1.04858e+06, request_rate=50" in done.stdout
    assert sluice("set", "--default", "--consumer-byte-rate", "1000").returncode == 0
    listed = json.loads(sluice("list", "--json").stdout)
    assert listed == [
        {"entity": "<default>", "consumer_byte_rate": 1000.0},
        {"entity": "User:alice", "producer_byte_rate": 1048576.0, "request_rate": 50.0},
    ]
    assert sluice("remove", "--user", "alice", "--request-rate").returncode == 0
    assert sluice("remove", "--default").returncode == 0
    assert json.loads(sluice("list", "--json").stdout) == [{"entity": "User:alice", "producer_byte_rate": 1048576.0}]
    bad = sluice("set", "--user", "alice", "--producer-byte-rate", "-5")
    assert bad.returncode != 0 and "positive" in bad.stderr and "Traceback" not in bad.stderr
    bad = sluice("set", "--producer-byte-rate", "5")
    assert bad.returncode != 0 and "--user NAME or --default" in bad.stderr


def produce_as(sock: zmq.Socket[Any], client_id: str, topic: str, seconds: float) -> tuple[float, list[int]]:
    """produce_for with ``client_id`` in every header."""
    batch = encode_batch([b"x" * 1000] * 20)
    sent, throttles = 0, []
    start = time.monotonic()
    for _ in range(1_000_000):
        if time.monotonic() - start >= seconds:
            break
        reply = call(sock, "produce", [batch], topic=topic, partition=0, client_id=client_id)
        assert reply.error is None, reply.error
        sent += len(batch)
        throttles.append(int(reply.fields.get("throttle_time_ms", 0)))
    return sent / (time.monotonic() - start), throttles


def test_a_client_id_quota_throttles_that_client_only(node: Node, ctx: zmq.Context[Any]) -> None:
    """Two producers of the same user (User:ANONYMOUS) with different client ids: a quota
    on one client id bounds that one (under twice the quota though it ignores
    throttle_time_ms), and the other is never throttled."""
    endpoint = endpoint_of(ctx, node, "cq")
    slow, fast = dealer(ctx, endpoint), dealer(ctx, endpoint)
    with node.admin() as admin:
        set_to = admin.set_quota(client_id="slow", producer_byte_rate=QUOTA)
        assert set_to == [{"entity": "client-id:slow", "client_id": "slow", "producer_byte_rate": float(QUOTA)}]
    wait_until(lambda: any(produce_as(slow, "slow", "cq", 0.2)[1]), 10, "the client-id quota to take effect")
    rate, throttles = produce_as(slow, "slow", "cq", MEASURE_S)
    assert max(throttles) > 0
    assert rate < 2 * QUOTA, f"{rate:.0f} B/s for client id slow with a quota of {QUOTA} B/s"
    rate, throttles = produce_as(fast, "fast", "cq", 1.0)
    assert not any(throttles), "client id fast was throttled by client id slow's quota"
    assert rate > 2 * QUOTA, f"client id fast produced only {rate:.0f} B/s"
    # the project's Producer sends its client_id: the quota binds it too, and it honours the throttle
    with Producer(node.bootstrap, client_id="slow", linger_ms=5) as p:
        start = time.monotonic()
        for _ in range(8):  # 8 x 100 KB: 4 s of the quota (less what the second unthrottled left)
            futures = [p.send("cq", b"z" * 1000, partition=0) for _ in range(100)]
            p.flush(60)
            assert all(f.result(0) is not None for f in futures)
        took = time.monotonic() - start
    assert took > 1.5, f"800 KB produced in {took:.2f} s as client id slow under a quota of {QUOTA} B/s"
    assert 800_000 / took < 2 * QUOTA
    slow.close(0)
    fast.close(0)


def test_quotas_cli_sets_and_lists_client_id_quotas(node: Node) -> None:
    def sluice(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SLUICE, "quotas", *args, "--bootstrap", node.bootstrap],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    done = sluice("set", "--user", "alice", "--client-id", "etl", "--producer-byte-rate", "1000")
    assert done.returncode == 0, done.stderr
    assert "User:alice client-id:etl: producer_byte_rate=1000" in done.stdout
    assert sluice("set", "--default-client", "--request-rate", "20").returncode == 0
    assert sluice("set", "--default", "--client-id", "batch", "--consumer-byte-rate", "5").returncode == 0
    listed = json.loads(sluice("list", "--json").stdout)
    assert listed == [
        {
            "entity": "User:<default> client-id:batch",
            "user": "<default>",
            "client_id": "batch",
            "consumer_byte_rate": 5.0,
        },
        {"entity": "User:alice client-id:etl", "user": "alice", "client_id": "etl", "producer_byte_rate": 1000.0},
        {"entity": "client-id:<default>", "client_id": "<default>", "request_rate": 20.0},
    ]
    only = json.loads(sluice("list", "--client-id", "etl", "--json").stdout)
    assert [e["entity"] for e in only] == ["User:alice client-id:etl", "client-id:<default>"]
    assert "client-id:<default>: request_rate=20" in sluice("list").stdout
    assert sluice("remove", "--default-client").returncode == 0
    assert sluice("remove", "--user", "alice", "--client-id", "etl").returncode == 0
    assert [e["entity"] for e in json.loads(sluice("list", "--json").stdout)] == ["User:<default> client-id:batch"]
    bad = sluice("set", "--client-id", "etl", "--default-client", "--request-rate", "5")
    assert bad.returncode != 0 and "not both" in bad.stderr and "Traceback" not in bad.stderr
