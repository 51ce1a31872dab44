"""The request pipeline (ipc/server.py): parsing, hooks, dispatch and error mapping,
driven without sockets (the send function records what would go on the wire)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ipc.errors import NotLeaderError, PolicyViolationError
from ipc.protocol import ANONYMOUS, Principal, Request, Response, encode_request
from ipc.server import RequestPipeline, ok
from tests.unit import wire

PEER = b"\x00peer"


class Wire(wire.Wire):
    """Every reply goes to the one peer of these tests."""

    def last(self) -> Any:
        peer, reply = self.sent[-1]
        assert peer == PEER
        return reply


def _pipeline(wire: Wire, **kwargs: Any) -> RequestPipeline:
    parked: list[Request] = []

    def status(req: Request) -> Response:
        return ok(state="running", principal=str(req.principal))

    def metadata(req: Request) -> Response:
        raise NotLeaderError("not here")

    def list_topics(req: Request) -> Response:
        raise KeyError("boom")  # a bug in a handler

    def describe_topic(req: Request) -> None:
        parked.append(req)  # answered later

    handlers = {"status": status, "metadata": metadata, "list_topics": list_topics, "describe_topic": describe_topic}
    p = RequestPipeline("test", wire, handlers, **kwargs)
    p.parked = parked  # type: ignore[attr-defined]
    return p


def msg(api: str, cid: int = 7, **fields: Any) -> list[bytes]:
    return [PEER, encode_request(api, cid, **fields)]


def test_a_handler_reply_is_encoded_with_the_correlation_id() -> None:
    wire = Wire()
    _pipeline(wire).handle(msg("status", 41))
    reply = wire.last()
    assert reply.id == 41 and reply.error is None
    assert reply.fields == {"state": "running", "principal": str(ANONYMOUS)}


def test_a_typed_error_becomes_a_typed_error_reply() -> None:
    wire = Wire()
    _pipeline(wire).handle(msg("metadata", 3))
    assert isinstance(wire.last().error, NotLeaderError) and wire.last().id == 3


def test_an_unexpected_exception_is_an_error_reply_not_a_crash() -> None:
    wire = Wire()
    p = _pipeline(wire)
    p.handle(msg("list_topics", 5))
    assert wire.last().error.code == "UNKNOWN_SERVER_ERROR" and "boom" in wire.last().error.message
    p.handle(msg("status", 6))  # and the pipeline keeps serving
    assert wire.last().id == 6 and wire.last().error is None


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([PEER], "empty message"),
        ([PEER, b"{not json"], "not JSON"),
        ([PEER, orjson.dumps({"api": "status"})], "'id'"),
        ([PEER, orjson.dumps({"api": "produce", "id": 9})], "not served by this endpoint"),
        ([PEER, orjson.dumps({"api": "nope", "id": 9})], "unknown api"),
        ([PEER, orjson.dumps({"api": "describe_topic", "id": 9, "topic": "bad name!"})], "topic"),
    ],
)
def test_malformed_requests_get_invalid_request(frames: list[bytes], why: str) -> None:
    wire = Wire()
    _pipeline(wire).handle(frames)
    err = wire.last().error
    assert err.code == "INVALID_REQUEST" and why in err.message


def test_a_deferred_request_is_answered_through_its_responder() -> None:
    wire = Wire()
    p = _pipeline(wire)
    p.handle(msg("describe_topic", 11, topic="t"))
    assert wire.sent == []
    (req,) = p.parked  # type: ignore[attr-defined]
    assert req.responder.id == 11 and not req.responder.answered
    req.responder.send(Response({"topic": "t"}, [b"data"]))
    reply = wire.last()
    assert (reply.id, reply.fields, reply.frames) == (11, {"topic": "t"}, [b"data"])
    assert req.responder.answered


def test_the_hooks_run_before_the_handler() -> None:
    wire = Wire()
    calls: list[str] = []
    alice = Principal("User", "alice")

    def authenticate(peer: bytes, header: Any) -> tuple[Principal, str]:
        calls.append("authenticate")
        return alice, "127.0.0.1"

    def authorize(req: Request) -> None:
        calls.append(f"authorize {req.principal} {req.host} {req.api}")
        if req.api == "metadata":
            raise PolicyViolationError(f"{req.principal} may not describe topics")

    p = _pipeline(wire, authenticate=authenticate, authorize=authorize)
    p.handle(msg("status"))
    assert wire.last().fields["principal"] == "User:alice"
    p.handle(msg("metadata"))
    assert wire.last().error.code == "POLICY_VIOLATION"
    assert calls == [
        "authenticate",
        "authorize User:alice 127.0.0.1 status",
        "authenticate",
        "authorize User:alice 127.0.0.1 metadata",
    ]
