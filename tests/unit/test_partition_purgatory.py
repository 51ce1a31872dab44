"""The purgatory (appliance/partition/purgatory.py): produces waiting for acks=all and
parked fetches, driven without sockets.

A leader replica of ``t-0`` (node 1, follower 2) over a real ``Log`` in ``tmp_path``;
each delayed operation holds a ``Responder`` whose send function records the replies.
The high watermark is moved through ``LeaderState`` as a follower's fetch would.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.log.config import LogConfig
from appliance.log.log import Log
from appliance.partition.purgatory import DelayedFetch, DelayedProduce, Purgatory
from appliance.partition.replica import Replica
from ipc.control import RoleCommand
from ipc.errors import NotLeaderError
from ipc.peers import Delivery, PeerLedger, PeerLimits, PeerResponder
from ipc.protocol import Reply, Responder
from ipc.records import decode_batches, encode_batch
from ipc.shm import Role
from tests.unit.wire import Wire

NOW = 100.0


class Setup:
    def __init__(self, tmp_path: Path, config: LogConfig | None = None) -> None:
        self.log = Log.open(str(tmp_path / "t-0"), config)
        self.replica = Replica("t", 0, 1, self.log, clock=lambda: NOW)
        cmd = RoleCommand(Role.LEADER, 1, replicas=(1, 2), isr={1: 10, 2: 20}, node_epoch=10)
        self.replica.take_role(cmd, hw=0, now=NOW)
        self.produce_latency: list[float] = []
        self.fetch_latency: list[float] = []
        self.purgatory = Purgatory(self.replica, self.produce_latency.append, self.fetch_latency.append)
        self.wire = Wire()

    def responder(self, cid: int, api: str = "fetch") -> Responder:
        return Responder(self.wire, b"peer-%d" % cid, cid, api)

    def append(self, *values: bytes) -> None:
        self.log.append(encode_batch(list(values)), 1)

    def follower_at(self, offset: int, now: float = NOW) -> bool:
        """Follower 2 fetched at ``offset``; True if the high watermark moved."""
        lead = self.replica.leading
        assert lead is not None
        lead.on_fetch(2, 20, offset, self.log.log_end_offset, now)
        return lead.advance_high_watermark(self.log.log_end_offset)

    def wait_produce(self, cid: int, required: int, deadline: float = NOW + 30) -> None:
        op = DelayedProduce(self.responder(cid, "produce"), [required - 1], required, deadline, time.perf_counter())
        self.purgatory.wait_for_replicas(op)

    def park(
        self, cid: int, offset: int, deadline: float = NOW + 0.5, min_bytes: int = 1, replica: bool = False
    ) -> None:
        op = DelayedFetch(self.responder(cid), offset, 1 << 20, min_bytes, deadline, time.perf_counter(), replica)
        self.purgatory.park(op)


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def values(reply: Reply) -> list[bytes | None]:
    return [v for frame in reply.frames for b in decode_batches(frame) for v in b.values]


# ---- produces waiting for the ISR ---------------------------------------------------------


def test_a_produce_completes_when_the_hw_passes_it(s: Setup) -> None:
    s.append(b"a", b"b")
    s.wait_produce(1, required=2)
    s.purgatory.hw_moved(s.follower_at(1))  # the HW moves to 1: not yet
    assert s.wire.sent == [] and len(s.purgatory.pending) == 1
    s.purgatory.hw_moved(s.follower_at(2))
    (peer, reply) = s.wire.sent[0]
    assert peer == b"peer-1" and reply.error is None
    assert reply.fields == {"base_offsets": [1], "log_start_offset": 0}
    assert not s.purgatory.pending and len(s.produce_latency) == 1


def test_a_hw_that_did_not_move_wakes_nothing(s: Setup) -> None:
    s.append(b"a")
    s.wait_produce(1, required=1)
    s.purgatory.hw_moved(False)
    assert s.wire.sent == [] and s.purgatory.pending


def test_a_produce_committed_by_a_shrunk_isr_is_not_enough_replicas(tmp_path: Path) -> None:
    s = Setup(tmp_path, LogConfig(min_insync_replicas=2))
    s.append(b"a")
    s.wait_produce(1, required=1)
    lead = s.replica.leading
    assert lead is not None
    lead.isr = {1: 10}  # follower 2 left the ISR meanwhile: the HW is the leader's LEO
    s.purgatory.hw_moved(lead.advance_high_watermark(s.log.log_end_offset))
    err = s.wire.by_id()[1].error
    assert err is not None and err.code == "NOT_ENOUGH_REPLICAS" and "written but only 1" in err.message
    assert not s.produce_latency  # only answers that succeed are timed


def test_a_produce_expires_at_its_deadline(s: Setup) -> None:
    s.append(b"a")
    s.wait_produce(1, required=1, deadline=NOW + 1)
    s.wait_produce(2, required=1, deadline=NOW + 5)
    assert s.purgatory.next_deadline() == NOW + 1
    s.purgatory.expire(NOW + 0.999)
    assert s.wire.sent == []
    s.purgatory.expire(NOW + 1)
    err = s.wire.by_id()[1].error
    assert err is not None and err.code == "REQUEST_TIMED_OUT" and "t-0" in err.message
    assert [p.responder.id for p in s.purgatory.pending] == [2]
    assert s.purgatory.next_deadline() == NOW + 5


def test_leadership_loss_fails_every_waiting_produce(s: Setup) -> None:
    s.wait_produce(1, required=1)
    s.wait_produce(2, required=2)
    s.purgatory.fail_pending(NotLeaderError("t-0: no longer the leader (epoch 2)"))
    replies = s.wire.by_id()
    assert {cid: r.error.code for cid, r in replies.items() if r.error} == {1: "NOT_LEADER", 2: "NOT_LEADER"}
    assert not s.purgatory.pending and not s.purgatory.waiting


# ---- parked fetches -------------------------------------------------------------------------


def test_a_consumers_fetch_wakes_when_the_hw_moves(s: Setup) -> None:
    s.park(1, offset=0)
    s.append(b"a")
    s.purgatory.serve_parked(force=False)  # written, not committed: a consumer sees nothing yet
    assert s.wire.sent == []
    s.purgatory.hw_moved(s.follower_at(1))
    reply = s.wire.by_id()[1]
    assert values(reply) == [b"a"] and reply.fields["high_watermark"] == 1
    assert len(s.fetch_latency) == 1 and not s.purgatory.parked


def test_a_new_append_wakes_only_the_followers_fetches(s: Setup) -> None:
    s.park(1, offset=0)
    s.park(2, offset=0, replica=True)
    s.append(b"a")
    s.purgatory.serve_parked(force=False, replicas_only=True)
    assert list(s.wire.by_id()) == [2] and values(s.wire.by_id()[2]) == [b"a"]  # up to the LEO
    assert [p.responder.id for p in s.purgatory.parked] == [1]


def test_leadership_loss_answers_the_followers_fetches_and_keeps_the_consumers(s: Setup) -> None:
    s.park(1, offset=0)
    s.park(2, offset=0, replica=True)
    s.purgatory.serve_parked(force=True, replicas_only=True)
    reply = s.wire.by_id()[2]
    assert reply.error is None and reply.frames == []  # answered with what there is: nothing
    assert [p.responder.id for p in s.purgatory.parked] == [1]


def test_a_fetch_below_min_bytes_stays_parked(s: Setup) -> None:
    s.park(1, offset=0, min_bytes=10_000)
    s.append(b"a")
    s.purgatory.hw_moved(s.follower_at(1))
    assert s.wire.sent == [] and s.purgatory.parked


def test_a_parked_fetch_is_answered_with_what_there_is_at_max_wait(s: Setup) -> None:
    s.park(1, offset=0, deadline=NOW + 0.5, min_bytes=10_000)
    s.append(b"a")
    s.purgatory.hw_moved(s.follower_at(1))
    s.purgatory.expire(NOW + 0.4)
    assert s.wire.sent == []
    s.purgatory.expire(NOW + 0.5)
    assert values(s.wire.by_id()[1]) == [b"a"] and not s.purgatory.parked


def test_a_parked_fetch_whose_offset_left_the_log_gets_the_error(s: Setup) -> None:
    s.append(b"a", b"b")
    s.park(1, offset=1, deadline=NOW + 0.5, replica=True, min_bytes=10_000)
    s.log.truncate_fully_and_start_at(5)  # the log now starts past the fetch's offset
    s.purgatory.expire(NOW + 1)
    err = s.wire.by_id()[1].error
    assert err is not None and err.code == "OFFSET_OUT_OF_RANGE"


def test_shutdown_answers_every_parked_fetch(s: Setup) -> None:
    s.park(1, offset=0)
    s.park(2, offset=0, replica=True)
    s.purgatory.serve_parked(force=True)
    assert set(s.wire.by_id()) == {1, 2} and not s.purgatory.waiting


def test_next_deadline_is_infinite_when_nothing_waits(s: Setup) -> None:
    assert s.purgatory.next_deadline() == float("inf")
    s.park(1, offset=0, deadline=NOW + 0.3)
    s.wait_produce(2, required=1, deadline=NOW + 0.2)
    assert s.purgatory.next_deadline() == NOW + 0.2 and s.purgatory.waiting


# ---- what a peer holds (ipc/peers.py) -------------------------------------------------------
def test_a_stalled_peers_parked_fetches_are_released_unanswered(s: Setup) -> None:
    """The ledger's ``on_stall``: the peer's parked fetches go, charges given back; a stall
    found while answering (the loop in progress) drops the rest of its fetches there."""
    sent: list[bytes] = []

    def raw(peer: bytes, frames: list[object]) -> Delivery:
        if peer == b"slow":
            return Delivery.FULL
        sent.append(peer)
        return Delivery.SENT

    # no backlog allowed: the first reply that finds slow's queue full stalls it
    peers = PeerLedger("t-0", raw, PeerLimits(max_backlog_replies=0), on_stall=s.purgatory.release)
    for cid, peer in ((1, b"slow"), (2, b"slow"), (3, b"fine")):
        acct = peers.park(peer, 1 << 20)
        assert acct is not None
        responder = PeerResponder(peers.send, peer, cid, "fetch", peers)
        s.purgatory.park(DelayedFetch(responder, 0, 1 << 20, 1, NOW + 5, time.perf_counter(), False, acct))
    s.append(b"a")
    s.purgatory.hw_moved(s.follower_at(1))  # answering slow's first fails: slow stalls
    assert sent == [b"fine"] and peers.stalled(b"slow")
    assert s.purgatory.parked == [] and peers.held(b"slow") is None and peers.held(b"fine") is None
