"""The same-host session (ipc/samehost.py) and the worker's sessions
(appliance/partition/samehost.py) without a node: framing, peer identities, who may open
a session, the memory gauge, and a corrupt request ring."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import zmq

from appliance.partition.samehost import SameHostSessions
from ipc.errors import InvalidRequestError, ThrottlingQuotaExceededError
from ipc.peers import Delivery
from ipc.protocol import Principal, Request, encode_request, parse_reply, parse_request
from ipc.ring import FifoDoorbell, Ring, RingCorruptError, file_size
from ipc.samehost import MAX_SESSIONS, RING_PEER_LEN, is_ring_peer, pack_frames, ring_peer, unpack_frames


def test_frames_round_trip() -> None:
    frames = [b'{"api":"produce"}', b"", memoryview(b"batch-bytes"), bytearray(b"x" * 1000)]
    payload = b"".join(bytes(p) for p in pack_frames(frames))
    assert [bytes(f) for f in unpack_frames(payload)] == [bytes(f) for f in frames]
    assert unpack_frames(b"".join(bytes(p) for p in pack_frames([]))) == []


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01\x00",
        b"\xff\xff\xff\xff",
        b"\x01\x00\x00\x00\x05\x00\x00\x00abc",
        b"\x01\x00\x00\x00\x01\x00\x00\x00ab",
    ],
)
def test_bad_framing_is_corrupt(payload: bytes) -> None:
    with pytest.raises(RingCorruptError):
        unpack_frames(payload)


def test_a_ring_peer_is_longer_than_any_zeromq_identity() -> None:
    peer = ring_peer(0x1234)
    assert len(peer) == RING_PEER_LEN > 255 and is_ring_peer(peer)
    assert not is_ring_peer(peer[:255]) and not is_ring_peer(b"\x00" + bytes(4))
    assert ring_peer(1) != ring_peer(2)


def open_request(host: str, pid: int = os.getpid(), **fields: Any) -> Request:
    req = parse_request([encode_request("same_host_open", 1, topic="t", partition=0, pid=pid, **fields)])
    req.principal, req.host = Principal("User", "alice"), host
    return req


@pytest.fixture
def sessions(tmp_path: Path) -> Any:
    gauge: list[int] = []
    s = SameHostSessions("t-0", str(tmp_path / "same-host" / "t-0"), zmq.Poller(), gauge.append)
    s.gauge = gauge  # type: ignore[attr-defined]
    yield s
    s.close_all()


@pytest.mark.parametrize("host", ["10.0.0.7", "192.168.1.2", "", "::ffff:10.0.0.1"])
def test_only_a_loopback_peer_gets_a_session(sessions: Any, host: str) -> None:
    with pytest.raises(InvalidRequestError, match="on this host"):
        sessions.open(open_request(host))
    assert not sessions.sessions


def test_a_session_is_private_bounded_and_counted(sessions: Any, tmp_path: Path) -> None:
    answer = sessions.open(open_request("127.0.0.1", request_bytes=100_000, reply_bytes=200_000)).fields
    paths = [answer[k] for k in ("request_ring", "reply_ring", "worker_bell", "client_bell")]
    for path in paths:
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(paths[0])).st_mode & 0o777 == 0o700
    req = Ring.attach(paths[0], answer["token"])
    rep = Ring.attach(paths[1], answer["token"])
    assert (req.capacity, rep.capacity) == (100_032, 200_000)  # whole cache lines
    assert sessions.gauge[-1] == file_size(100_032) + file_size(200_000)
    for _ in range(MAX_SESSIONS - 1):
        sessions.open(open_request("127.0.0.1", request_bytes=65536, reply_bytes=65536))
    with pytest.raises(ThrottlingQuotaExceededError, match="already open"):
        sessions.open(open_request("127.0.0.1"))
    sessions.close_all()
    assert sessions.gauge[-1] == 0
    assert not any(os.path.exists(p) for p in paths)
    req.close()
    rep.close()


def test_requests_are_served_as_the_opener_and_answered_through_the_ring(sessions: Any) -> None:
    answer = sessions.open(open_request("127.0.0.1")).fields
    handled: list[list[Any]] = []
    sessions.handle = handled.append
    authenticate = sessions.authenticate(lambda peer, header: (Principal("User", "ANONYMOUS"), "10.9.9.9"))
    req = Ring.attach(answer["request_ring"], answer["token"])
    rep = Ring.attach(answer["reply_ring"], answer["token"])
    bell = FifoDoorbell.listen(answer["client_bell"])
    worker_bell = FifoDoorbell.connect(answer["worker_bell"])
    assert req.write(pack_frames([b'{"api":"fetch"}', b"data"]))
    worker_bell.ring()
    sessions.on_events({sessions.sessions[next(iter(sessions.sessions))].bell.fileno(): zmq.POLLIN})
    (peer, header, data) = handled[0]
    assert is_ring_peer(peer) and bytes(header) == b'{"api":"fetch"}' and bytes(data) == b"data"
    assert authenticate(peer, header) == (Principal("User", "alice"), "127.0.0.1")
    assert authenticate(b"\x00abcd", header) == (Principal("User", "ANONYMOUS"), "10.9.9.9")  # a TCP peer
    assert sessions.deliver(peer, [b'{"id":7}', b"reply-data"]) is Delivery.SENT
    assert bell.drain() is True
    reply = parse_reply(unpack_frames(rep.read() or b""))
    assert reply.id == 7 and [bytes(f) for f in reply.frames] == [b"reply-data"]
    assert sessions.deliver(ring_peer(12345), [b"{}"]) is Delivery.GONE
    # a request ring that is not consistent ends the session, nothing more
    assert req.write([b"\xff\xff\xff\xff"])
    worker_bell.ring()
    sessions.on_events({})  # served because the ring holds something
    assert not sessions.sessions and sessions.gauge[-1] == 0
    for closeable in (req, rep, bell, worker_bell):
        closeable.close()


def test_a_client_that_hangs_up_ends_its_session(sessions: Any) -> None:
    answer = sessions.open(open_request("127.0.0.1")).fields
    worker_bell = FifoDoorbell.connect(answer["worker_bell"])
    worker_bell.close()  # the client died
    fd = next(iter(sessions.sessions.values())).bell.fileno()
    sessions.on_events({fd: zmq.POLLERR})
    assert not sessions.sessions


def test_a_session_of_a_dead_pid_ends_at_the_tick(sessions: Any) -> None:
    sessions.open(open_request("127.0.0.1", pid=2**31 - 2))
    sessions.tick()
    assert not sessions.sessions
