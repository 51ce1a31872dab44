"""The peer ledger (ipc/peers.py): stalls, probes, drops and the per-peer bounds, with an
injected clock and a scripted send (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from ipc.errors import ThrottlingQuotaExceededError
from ipc.peers import Delivery, PeerAccount, PeerLedger, PeerLimits, release_park
from ipc.protocol import Request, encode_request, parse_reply
from ipc.server import RequestPipeline, ok


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """A raw send whose answer the test sets: ``full`` peers get FULL, ``gone`` GONE."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, list[Any]]] = []
        self.full: set[bytes] = set()
        self.gone: set[bytes] = set()

    def __call__(self, peer: bytes, frames: list[Any]) -> Delivery:
        if peer in self.gone:
            return Delivery.GONE
        if peer in self.full:
            return Delivery.FULL
        self.sent.append((peer, frames))
        return Delivery.SENT


def ledger(limits: PeerLimits | None = None) -> tuple[PeerLedger, Wire, Clock, list[PeerAccount]]:
    wire, clock, released = Wire(), Clock(), []
    return PeerLedger("w", wire, limits or PeerLimits(), clock, on_stall=released.append), wire, clock, released


HEADER = encode_request("fetch", 42, topic="t", partition=0, offset=0)


def test_a_reader_is_served_and_costs_no_state() -> None:
    peers, wire, _, _ = ledger()
    assert peers.admit(b"a", HEADER)
    peers.send(b"a", [b"reply"])
    assert wire.sent == [(b"a", [b"reply"])] and not peers.stalled(b"a") and peers.held(b"a") is None


def stall(peers: PeerLedger, wire: Wire, peer: bytes) -> None:
    """Fill ``peer``'s backlog past its bound: a peer that does not read."""
    wire.full.add(peer)
    for _ in range(peers.limits.max_backlog_replies + 1):
        peers.send(peer, [b"reply"])


def test_a_full_queue_keeps_replies_in_order_until_the_peer_reads() -> None:
    """A burst of replies fills the queue faster than the I/O thread empties it: nothing
    is lost, nothing is reordered, the peer is not stalled."""
    peers, wire, _, _ = ledger()
    peers.send(b"a", [b"r0"])
    wire.full.add(b"a")
    peers.send(b"a", [b"r1"])
    wire.full.clear()
    peers.send(b"a", [b"r2"])  # behind r1, even though the queue has room now
    assert [f for _, (f,) in wire.sent] == [b"r0"] and peers.congested and not peers.stalled(b"a")
    assert peers.admit(b"a", HEADER)  # still served
    peers.flush()
    assert [f for _, (f,) in wire.sent] == [b"r0", b"r1", b"r2"] and not peers.congested


def test_a_backlog_over_its_bound_stalls_the_peer() -> None:
    peers, wire, _, released = ledger(PeerLimits(max_backlog_bytes=10))
    acct = peers.park(b"a", 5)
    wire.full.add(b"a")
    peers.send(b"a", [b"123456"])
    assert not peers.stalled(b"a")
    peers.send(b"a", [b"123456"])  # 12 bytes waiting > 10
    assert peers.stalled(b"a") and not peers.congested and released == [acct]


def test_a_backlog_without_progress_stalls_the_peer_after_drop_after_s() -> None:
    peers, wire, clock, _ = ledger(PeerLimits(drop_after_s=30))
    wire.full.add(b"a")
    peers.send(b"a", [b"r"])
    clock.now += 29
    peers.flush()
    peers.expire(clock.now)
    assert peers.congested and not peers.stalled(b"a")
    clock.now += 2
    peers.expire(clock.now)
    assert peers.stalled(b"a") and not peers.congested


def test_a_stalled_peers_requests_are_discarded_until_it_drains() -> None:
    peers, wire, clock, _ = ledger()
    stall(peers, wire, b"a")
    assert peers.stalled(b"a") and peers.stalls == 1
    assert not peers.admit(b"a", HEADER) and peers.discarded == 1  # the probe did not go through
    assert peers.admit(b"b", HEADER)  # others are served
    wire.full.clear()  # it read some replies
    clock.now += 1
    assert not peers.admit(b"a", HEADER)  # answered with the probe ...
    ((peer, frames),) = wire.sent
    reply = parse_reply(frames)
    assert peer == b"a" and reply.id == 42 and isinstance(reply.error, ThrottlingQuotaExceededError)
    assert "did not read its replies" in reply.error.message
    assert not peers.stalled(b"a") and peers.admit(b"a", HEADER)  # ... and served from the next


def test_a_stall_releases_what_is_parked_and_a_drop_forgets_the_peer() -> None:
    peers, wire, clock, released = ledger(PeerLimits(drop_after_s=30))
    acct = peers.park(b"a", 1000)
    assert acct is not None and peers.held(b"a") is acct
    stall(peers, wire, b"a")
    assert released == [acct] and acct.stalled
    clock.now += 29
    peers.expire(clock.now)
    assert peers.stalled(b"a")
    clock.now += 2
    peers.expire(clock.now)
    assert not peers.stalled(b"a") and peers.held(b"a") is None and peers.drops == 1
    release_park(acct, 1000)  # a late release touches only the forgotten account
    assert peers.held(b"a") is None and acct.parked == 0


def test_a_gone_peer_is_forgotten_at_once() -> None:
    peers, wire, _, released = ledger()
    acct = peers.park(b"a", 10)
    wire.gone.add(b"a")
    peers.send(b"a", [b"reply"])
    assert released == [acct] and peers.held(b"a") is None and not peers.stalled(b"a")


def test_parked_fetches_are_bounded_in_count_and_bytes() -> None:
    peers, _, _, _ = ledger(PeerLimits(max_parked_fetches=2, max_parked_bytes=100))
    a1 = peers.park(b"a", 40)
    a2 = peers.park(b"a", 40)
    assert a1 is a2 is not None and peers.park(b"a", 1) is None  # count
    assert peers.park(b"b", 101) is None and peers.held(b"b") is None  # bytes; nothing kept
    assert peers.park(b"b", 100) is not None
    peers.unpark(a1, 40)
    assert peers.park(b"a", 61) is None and peers.park(b"a", 60) is not None
    peers.unpark(a1, 40)
    peers.unpark(a1, 60)
    assert peers.held(b"a") is None


def test_waiting_produces_are_bounded_and_refused_with_a_clear_error() -> None:
    peers, _, _, _ = ledger(PeerLimits(max_waiting_produces=3, max_waiting_produce_bytes=1000))
    acct = peers.wait(b"a", 600)
    with pytest.raises(ThrottlingQuotaExceededError, match="already wait for replicas"):
        peers.wait(b"a", 500)
    peers.wait(b"a", 400)
    peers.unwait(acct, 600)
    peers.wait(b"a", 10)
    peers.wait(b"a", 10)
    with pytest.raises(ThrottlingQuotaExceededError, match="at most 3"):
        peers.wait(b"a", 10)


def test_the_pipeline_discards_a_stalled_peers_request_unprocessed() -> None:
    wire, clock = Wire(), Clock()
    peers = PeerLedger("w", wire, clock=clock)
    seen: list[Request] = []

    def handler(req: Request) -> Any:
        seen.append(req)
        return ok(n=len(seen))

    pipeline = RequestPipeline("w", peers.send, {"list_topics": handler}, peers=peers)
    msg = [b"a", encode_request("list_topics", 1)]
    pipeline.handle(msg)
    assert len(seen) == 1 and len(wire.sent) == 1
    stall(peers, wire, b"a")  # its replies fill its backlog: it does not read
    assert len(seen) == 1 and peers.stalled(b"a")
    for _ in range(100):
        pipeline.handle(msg)
    assert len(seen) == 1 and peers.discarded == 100  # not processed
