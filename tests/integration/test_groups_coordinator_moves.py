"""The client following its group coordinator, on one real node.

A single node is always its groups' coordinator, so the coordinator moving is played by
a ``Relay``: a front endpoint in the test process that forwards every request to the
real node except those its script answers itself. Through it a test makes
``find_coordinator`` name the relay (the relay is then the "coordinator", by proxy),
makes the relay answer COORDINATOR_NOT_AVAILABLE or NOT_COORDINATOR, or drops it like
a node that died, and checks that the client finds the real coordinator and carries on.

Waiting is polling with a deadline; the relay's thread ends when the test closes it
or after ``RELAY_LIFETIME_S``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import zmq

from ipc import sockets
from ipc.client import Admin, Consumer, Producer
from ipc.client.transport import Channel
from ipc.errors import CoordinatorNotAvailableError, NotCoordinatorError
from ipc.protocol import error_reply, ok_reply
from tests.integration.conftest import Node, wait_until

TOPIC = "events"
PARTITIONS = 2
RELAY_LIFETIME_S = 120.0
NODE_OPTIONS = {"offsets_topic_partitions": 2}

# script(api, fields, request id) -> the reply frame to answer with, or None to forward
Script = Callable[[str, dict[str, Any], int], bytes | None]


class Relay:
    """A front endpoint that forwards requests to ``upstream`` unless ``script`` answers."""

    def __init__(self, upstream: str, script: Script) -> None:
        self.upstream = upstream
        self.script = script
        self.seen: list[tuple[str, str]] = []  # (api, "answered" | "forwarded"), in arrival order
        self.endpoint = ""
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the relay did not start")

    def apis(self, how: str | None = None) -> list[str]:
        with self._lock:
            return [api for api, h in self.seen if how is None or h == how]

    def _run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        front, self.endpoint = sockets.bind_router(ctx, "tcp://127.0.0.1:0")
        up = Channel(ctx, self.upstream)
        waiting: dict[int, bytes] = {}  # request id -> the client's identity
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(up.sock, zmq.POLLIN)
        self._ready.set()
        end = time.monotonic() + RELAY_LIFETIME_S
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                events = dict(poller.poll(50))
                if front in events:
                    for _ in range(100):
                        try:
                            identity, header, *data = front.recv_multipart(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        req = orjson.loads(header)
                        api, cid = req.pop("api"), req.pop("id")
                        answer = self.script(api, req, cid)
                        with self._lock:
                            self.seen.append((api, "forwarded" if answer is None else "answered"))
                        if answer is None:
                            waiting[cid] = identity
                            up.sock.send_multipart([header, *data])
                        else:
                            sockets.send_reply(front, identity, [answer])
                if up.sock in events:
                    for _ in range(100):
                        try:
                            frames = up.sock.recv_multipart(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        identity_or_none = waiting.pop(orjson.loads(frames[0])["id"], None)
                        if identity_or_none is not None:
                            sockets.send_reply(front, identity_or_none, frames)
        finally:
            front.close(0)  # like a node that died: the clients' connections drop
            up.close()
            ctx.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the relay did not stop"


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    n = node_factory(**NODE_OPTIONS).start()
    with n.admin() as admin:
        admin.create_topic(TOPIC, PARTITIONS)
    return n


@pytest.fixture
def relays() -> Iterator[Callable[[str, Script], Relay]]:
    made: list[Relay] = []

    def make(upstream: str, script: Script) -> Relay:
        r = Relay(upstream, script)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def raw(endpoint: str, api: str, **fields: Any) -> Any:
    ctx: zmq.Context[Any] = zmq.Context()
    ch = Channel(ctx, endpoint)
    try:
        return ch.request(api, 10.0, **fields)
    finally:
        ch.close()
        ctx.term()


def committed(endpoint: str, group: str) -> dict[int, int] | None:
    """The group's committed offsets, asked of ``endpoint`` directly (None while loading)."""
    reply = raw(endpoint, "offset_fetch", group=group, partitions=[[TOPIC, p] for p in range(PARTITIONS)])
    if reply.error is not None and reply.error.retriable:
        return None
    reply.raise_for_error()
    return {o["partition"]: o["offset"] for o in reply.fields["offsets"]}


def test_the_node_coordinates_its_groups_and_keeps_offsets_on_one_replica(node: Node) -> None:
    """One node: find_coordinator names it (its advertised endpoint); __consumer_offsets has
    a single replica and no min.insync.replicas override (one node cannot give two)."""
    found = wait_until(lambda: raw(node.bootstrap, "find_coordinator", group="g1").fields, 20, "a coordinator")
    assert found["node_id"] == node.node_id
    assert found["endpoint"] == node.bootstrap
    with node.admin() as admin:
        d = admin.describe_topic("__consumer_offsets")
        assert d["replication_factor"] == 1
        assert "min.insync.replicas" not in d["overrides"]
        assert len(d["partitions"]) == NODE_OPTIONS["offsets_topic_partitions"]
        admin.alter_group_offsets("g1", {(TOPIC, 0): 4})
        assert [g["group"] for g in admin.list_groups()] == ["g1"]
        assert {p["partition"]: p["committed_offset"] for p in admin.describe_group("g1")["partitions"]} == {0: 4}


def test_admin_finds_the_coordinator_again_after_not_available_and_not_coordinator(
    node: Node, relays: Callable[[str, Script], Relay]
) -> None:
    """find_coordinator answers COORDINATOR_NOT_AVAILABLE twice, then names the relay, which
    answers group requests with NOT_COORDINATOR; the admin client backs off, finds the
    coordinator again (the node, through the relay) and its calls succeed there."""
    finds = 0

    def script(api: str, fields: dict[str, Any], cid: int) -> bytes | None:
        nonlocal finds
        if api == "find_coordinator":
            finds += 1
            if finds <= 2:
                return error_reply(cid, CoordinatorNotAvailableError("no leader for the group's partition yet"))
            if finds == 3:
                return ok_reply(cid, node_id=99, endpoint=relay.endpoint)
            return None  # the node names itself
        if api in ("offset_commit", "describe_group", "offset_fetch", "delete_group"):
            return error_reply(cid, NotCoordinatorError("node 99 no longer leads the group's partition"))
        return None

    relay = relays(node.bootstrap, script)
    t0 = time.monotonic()
    with Admin(relay.endpoint, timeout_ms=20_000) as admin:
        admin.alter_group_offsets("g2", {(TOPIC, 0): 7, (TOPIC, 1): 9})
        d = admin.describe_group("g2")
    assert time.monotonic() - t0 < 10.0, "the back-off is bounded: far below the 20 s timeout"
    assert {p["partition"]: p["committed_offset"] for p in d["partitions"]} == {0: 7, 1: 9}
    assert relay.apis() == [
        "find_coordinator",  # COORDINATOR_NOT_AVAILABLE
        "find_coordinator",  # COORDINATOR_NOT_AVAILABLE
        "find_coordinator",  # the relay
        "offset_commit",  # NOT_COORDINATOR
        "find_coordinator",  # the node
    ], relay.seen
    assert committed(node.bootstrap, "g2") == {0: 7, 1: 9}


def test_consumer_follows_its_coordinator_when_the_connection_drops(
    node: Node, relays: Callable[[str, Script], Relay]
) -> None:
    """The consumer's coordinator is the relay (forwarding to the node) until the relay
    goes away like a dead node; the disconnect makes every thread of the consumer find
    the coordinator again at once (not after its 20 s request timeout), and the member
    carries on there: same member id and generation (the coordinator itself kept them),
    commits arrive, records keep flowing."""

    def script(api: str, fields: dict[str, Any], cid: int) -> bytes | None:
        if api == "find_coordinator":
            return ok_reply(cid, node_id=node.node_id, endpoint=relay.endpoint)
        return None

    relay = relays(node.bootstrap, script)
    consumed: list[tuple[int, int]] = []
    with (
        Producer(node.bootstrap, acks=1) as producer,
        Consumer(
            f"{relay.endpoint},{node.bootstrap}",
            group_id="g3",
            auto_offset_reset="earliest",
            request_timeout_ms=20_000,
            session_timeout_ms=6000,
            heartbeat_interval_ms=200,
            auto_commit_interval_ms=200,
        ) as consumer,
    ):
        consumer.subscribe([TOPIC])

        def produce(n: int) -> dict[int, int]:
            """Send ``n`` records; the partitions' end offsets once they are acknowledged."""
            futures = [producer.send(TOPIC, f"v{i}".encode(), partition=i % PARTITIONS) for i in range(n)]
            ends: dict[int, int] = {}
            for f in futures:
                md = f.result(timeout=20)
                ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
            return ends

        def settled(ends: dict[int, int]) -> Callable[[], bool]:
            """Everything up to ``ends`` consumed and committed (polling: auto commit runs in poll)."""

            def check() -> bool:
                consumed.extend((r.partition, r.offset) for r in consumer.poll(100))
                return committed(node.bootstrap, "g3") == ends

            return check

        ends = produce(40)
        wait_until(settled(ends), 30, "the first records consumed and committed (through the relay)")
        assert "offset_commit" in relay.apis("forwarded") and "heartbeat" in relay.apis("forwarded")
        before = raw(node.bootstrap, "describe_group", group="g3").fields
        relay.close()
        gone = time.monotonic()
        ends = produce(40)
        wait_until(settled(ends), 30, "the next records consumed and committed (straight to the node)")
        assert time.monotonic() - gone < 12.0, "the dropped connection, not a 20 s timeout, sent the consumer on"
        after = raw(node.bootstrap, "describe_group", group="g3").fields
    assert [m["member_id"] for m in after["members"]] == [m["member_id"] for m in before["members"]]
    assert after["generation"] == before["generation"]
    assert sorted(consumed) == sorted(set(consumed)), "a record was read twice"
