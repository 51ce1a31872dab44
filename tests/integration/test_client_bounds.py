"""Bounded memory per client (issue 14, docs/security.md "Bounded memory per client").

Real nodes on loopback; the misbehaving clients are plain pyzmq DEALERs. Each check is a
liveness property with generous bounds (an answer within 2.5 s, a worker's RSS growth
under 256 MiB), not a benchmark:

- a client that sends thousands of 1 MiB fetches and never reads: the worker's RSS stays
  bounded, another client's fetches and produces are answered throughout, and the
  non-reading client stops being served (it gets far fewer replies than it asked for);
- a client that sends many produces and never reads: the worker's RSS stays bounded and
  another client is answered throughout;
- a metadata request naming 300 unknown topics creates none (auto-creation is off by
  default) or at most ``auto_create_topics_per_request`` (on), while the front answers
  another client;
- a 200-partition create does not stop the front answering ``list_topics``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from ipc.client import Producer
from ipc.protocol import Reply, encode_request, parse_reply
from ipc.records import encode_batch
from tests.integration.conftest import Node, wait_until

ANSWER_S = 2.5  # "answered within a second", with room for a loaded test machine
RSS_GROWTH_MAX = 256 * 1024 * 1024
_ids = itertools.count(1)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(0)


@contextlib.contextmanager
def start(tmp_path: Path, **options: Any) -> Iterator[Node]:
    node = Node(tmp_path, **options)
    try:
        node.start()
        yield node
    finally:
        node.kill_all()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with start(tmp_path, max_partitions=300) as n:
        yield n


def dealer(ctx: zmq.Context[Any], endpoint: str, rcvhwm: int = 1000) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)  # the requests queue on the client's side
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.connect(endpoint)
    return sock


def call(sock: zmq.Socket[Any], api: str, frames: list[bytes] | None = None, **fields: Any) -> tuple[Reply, float]:
    """One request and its reply (within ANSWER_S, or the test fails); returns the reply
    and how long it took."""
    cid = next(_ids)
    t0 = time.monotonic()
    sock.send_multipart([encode_request(api, cid, **fields), *(frames or [])])
    deadline = t0 + ANSWER_S
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"{api} not answered within {ANSWER_S} s"
        if sock.poll(int(left * 1000) + 1):
            reply = parse_reply(sock.recv_multipart())
            if reply.id == cid:
                return reply, time.monotonic() - t0


def endpoint_of(node: Node, ctx: zmq.Context[Any], topic: str) -> str:
    front = dealer(ctx, node.bootstrap)
    try:

        def serving() -> str | None:
            reply, _ = call(front, "metadata", topics=[topic], allow_auto_create=False)
            (t,) = reply.fields["topics"]
            return t["partitions"][0]["endpoint"] if t["partitions"] else None

        return str(wait_until(serving, 30, f"{topic}-0's endpoint"))
    finally:
        front.close(0)


def fill(node: Node, topic: str, nbytes: int) -> None:
    value = b"v" * 10_000
    with Producer(node.bootstrap, linger_ms=5) as p:
        for _ in range(nbytes // len(value)):
            p.send(topic, value, partition=0)
        p.flush(30)


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


class GoodClient:
    """A well-behaved client of a worker: one request at a time, every reply read."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, topic: str) -> None:
        self.sock = dealer(ctx, endpoint)
        self.topic = topic
        self.slowest = 0.0

    def round(self) -> None:
        batch = encode_batch([b"good"])
        reply, took = call(self.sock, "produce", [batch], topic=self.topic, partition=0, acks=1)
        assert reply.error is None, reply.error
        self.slowest = max(self.slowest, took)
        offset = reply.fields["base_offsets"][0]
        reply, took = call(
            self.sock, "fetch", topic=self.topic, partition=0, offset=offset, max_bytes=4096, max_wait_ms=0
        )
        assert reply.error is None and reply.frames, reply.error
        self.slowest = max(self.slowest, took)

    def close(self) -> None:
        self.sock.close(0)


def serve_while(good: GoodClient, pid: int, rss0: int, seconds: float, until: Any = None) -> int:
    """Keep the good client going for ``seconds`` (and until ``until()`` if given, 60 s at
    most), checking the worker's RSS each round; returns the largest RSS seen."""
    end = time.monotonic() + seconds
    hard = time.monotonic() + 60
    peak = rss0
    while time.monotonic() < end or (until is not None and not until()):
        assert time.monotonic() < hard, "the worker never showed the expected state"
        good.round()
        peak = max(peak, rss(pid))
        assert peak - rss0 < RSS_GROWTH_MAX, f"worker RSS grew by {(peak - rss0) >> 20} MiB"
    return peak


def test_a_client_that_never_reads_its_fetches(node: Node, ctx: zmq.Context[Any]) -> None:
    with node.admin() as admin:
        admin.create_topic("t", partitions=1)
    fill(node, "t", 2 * 1024 * 1024)
    endpoint = endpoint_of(node, ctx, "t")
    pid = node.worker_pid("t", 0)
    rss0 = rss(pid)
    good = GoodClient(ctx, endpoint, "t")
    bad = dealer(ctx, endpoint, rcvhwm=10)  # reads nothing; keeps little itself
    try:
        sent = 3000
        for _ in range(sent):
            bad.send(encode_request("fetch", next(_ids), topic="t", partition=0, offset=0, max_wait_ms=0))

        def stalled() -> bool:
            return "does not read its replies" in node.log_tail(400)

        peak = serve_while(good, pid, rss0, 3.0, until=stalled)
        assert good.slowest < ANSWER_S
        # now it reads: it gets what was queued before it stalled, then nothing
        answered = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if bad.poll(200):
                reply = parse_reply(bad.recv_multipart())
                answered += reply.error is None
        assert answered < sent // 2, f"{answered} of {sent} fetches of a non-reading client answered"
        good.round()  # and the others are still served
    finally:
        good.close()
        bad.close(0)
    print(f"worker RSS {rss0 >> 20} MiB -> peak {peak >> 20} MiB; {answered} of {sent} answered")


def test_a_client_that_never_reads_its_produces(node: Node, ctx: zmq.Context[Any]) -> None:
    with node.admin() as admin:
        admin.create_topic("t", partitions=1)
    endpoint = endpoint_of(node, ctx, "t")
    pid = node.worker_pid("t", 0)
    rss0 = rss(pid)
    good = GoodClient(ctx, endpoint, "t")
    bad = dealer(ctx, endpoint, rcvhwm=10)
    try:
        batch = encode_batch([b"x" * 1000] * 64)  # 64 KiB
        for _ in range(1000):
            bad.send_multipart([encode_request("produce", next(_ids), topic="t", partition=0, acks=1), batch])
        peak = serve_while(good, pid, rss0, 5.0)
        assert good.slowest < ANSWER_S
    finally:
        good.close()
        bad.close(0)
    print(f"worker RSS {rss0 >> 20} MiB -> peak {peak >> 20} MiB")


def metadata_of_300_unknown_topics(node: Node, ctx: zmq.Context[Any]) -> tuple[list[dict[str, Any]], float]:
    """Send the 300-name metadata request while another client asks for list_topics;
    returns its topics and the slowest list_topics answer."""
    asker = dealer(ctx, node.bootstrap)
    other = dealer(ctx, node.bootstrap)
    try:
        names = [f"unknown-{i}" for i in range(300)]
        cid = next(_ids)
        asker.send(encode_request("metadata", cid, topics=names))
        slowest = 0.0
        deadline = time.monotonic() + 30
        while not asker.poll(0):
            assert time.monotonic() < deadline, "the metadata request was not answered in 30 s"
            _, took = call(other, "list_topics")
            slowest = max(slowest, took)
        reply = parse_reply(asker.recv_multipart())
        assert reply.id == cid and reply.error is None
        _, took = call(other, "list_topics")
        return reply.fields["topics"], max(slowest, took)
    finally:
        asker.close(0)
        other.close(0)


def test_a_metadata_request_naming_300_unknown_topics_creates_none_by_default(
    node: Node, ctx: zmq.Context[Any]
) -> None:
    topics, slowest = metadata_of_300_unknown_topics(node, ctx)
    assert len(topics) == 300
    assert all(t["error"]["code"] == "UNKNOWN_TOPIC_OR_PARTITION" for t in topics)
    with node.admin() as admin:
        assert admin.list_topics() == []
    assert slowest < ANSWER_S


def test_with_auto_creation_on_one_request_creates_at_most_its_bound(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    with start(tmp_path, max_partitions=300, auto_create_topics=True, auto_create_topics_per_request=10) as node:
        topics, slowest = metadata_of_300_unknown_topics(node, ctx)
        created = [t["topic"] for t in topics if t["error"] is None]
        assert created == [f"unknown-{i}" for i in range(10)]
        refused = [t for t in topics if t["error"] is not None]
        assert len(refused) == 290
        assert all(t["error"]["code"] == "UNKNOWN_TOPIC_OR_PARTITION" for t in refused)
        assert "auto_create_topics_per_request=10" in refused[0]["error"]["message"]
        with node.admin() as admin:
            assert sorted(admin.list_topics()) == sorted(created)
        assert slowest < ANSWER_S


def test_creating_200_partitions_does_not_stop_the_front(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    with start(tmp_path, max_partitions=260) as node:
        slowest = [0.0]
        answered = [0]
        stop = threading.Event()
        errors: list[BaseException] = []

        def ask() -> None:
            sock = dealer(ctx, node.bootstrap)
            try:
                while not stop.is_set():
                    _, took = call(sock, "list_topics")
                    slowest[0] = max(slowest[0], took)
                    answered[0] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                errors.append(exc)
            finally:
                sock.close(0)

        thread = threading.Thread(target=ask, name="list-topics")
        thread.start()
        try:
            with node.admin(timeout_ms=120_000) as admin:
                admin.create_topic("big", partitions=200)
        finally:
            stop.set()
            thread.join(30)
        assert not thread.is_alive()
        assert not errors, errors
        assert answered[0] > 0 and slowest[0] < ANSWER_S, f"slowest list_topics {slowest[0]:.2f} s"
