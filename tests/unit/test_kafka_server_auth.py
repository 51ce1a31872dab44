"""The Kafka listener's connection handling with SASL and protected mode
(appliance/kafka/server.py, appliance/kafka/sasl_session.py): a real ``KafkaServer`` on a
real socket in this process, requests as a client sends them."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.kafka.server import KafkaRequest, KafkaServer, SaslSettings
from ipc.kafka import apis_data
from ipc.kafka import errors as kerr
from ipc.kafka.apis_sasl import SASL_AUTHENTICATE, SASL_HANDSHAKE
from ipc.kafka.protocol import decode_response, encode_request, supported_versions
from ipc.kafka.sasl import SCRAM_MECHANISMS, client_exchange_for_tests, make_credential

USERS = {"alice": {m: make_credential(m, "alice-pw") for m in SCRAM_MECHANISMS}}


def outward_address() -> str:
    """This host's address on its outward interface (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        addr = str(s.getsockname()[0])
    assert not addr.startswith("127."), f"no address but loopback on this host ({addr})"
    return addr


class Served:
    """A KafkaServer on 0.0.0.0:<port> in a thread of its own; records the principals seen."""

    def __init__(self, sasl: bool, protected_mode: bool = True) -> None:
        self.principals: list[str] = []

        async def api_versions(req: KafkaRequest) -> dict[str, Any]:
            return {"api_keys": supported_versions()}

        async def metadata(req: KafkaRequest) -> dict[str, Any]:
            self.principals.append(req.principal)
            return {"brokers": [], "cluster_id": "t", "controller_id": -1, "topics": []}

        handlers = {apis_data.API_VERSIONS.key: api_versions, apis_data.METADATA.key: metadata}
        settings = SaslSettings(("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"), lambda u: USERS.get(u, {}))
        self.server = KafkaServer(handlers, 1 << 20, protected_mode, settings if sasl else None)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the server did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.tcp = self.loop.run_until_complete(asyncio.start_server(self.server.connection, "0.0.0.0", 0))
        self.port = self.tcp.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        self.tcp.close()
        tasks = asyncio.all_tasks(self.loop)
        for t in tasks:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(self.tcp.wait_closed())
        self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    s = Served(**request.param)
    try:
        yield s
    finally:
        s.close()


def recv_frame(s: socket.socket) -> bytes | None:
    try:
        return _recv_frame(s)
    except ConnectionResetError:
        return None


def _recv_frame(s: socket.socket) -> bytes | None:
    data = b""
    while len(data) < 4:
        chunk = s.recv(4 - len(data))
        if not chunk:
            return None
        data += chunk
    (size,) = struct.unpack(">i", data)
    body = b""
    while len(body) < size:
        chunk = s.recv(size - len(body))
        if not chunk:
            return None
        body += chunk
    return body


def ask(s: socket.socket, api: Any, version: int, cid: int, body: dict[str, Any]) -> dict[str, Any] | None:
    """The response, or None when the server closed the connection (a FIN, or a reset:
    a server that closes with our request unread makes the kernel answer RST)."""
    try:
        s.sendall(encode_request(api, version, cid, body))
        frame = recv_frame(s)
    except (ConnectionResetError, BrokenPipeError):
        return None
    return None if frame is None else decode_response(api, version, frame)[1]


def metadata(s: socket.socket) -> dict[str, Any] | None:
    return ask(s, apis_data.METADATA, 9, 7, {"topics": []})


@pytest.mark.parametrize("served", [{"sasl": False}], indirect=True)
def test_protected_mode_without_sasl(served: Served) -> None:
    with socket.create_connection((outward_address(), served.port), timeout=5) as s:
        assert ask(s, apis_data.API_VERSIONS, 3, 1, {}) is None  # closed at once
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        assert metadata(s) is not None
    assert served.principals == ["User:ANONYMOUS"]


@pytest.mark.parametrize("served", [{"sasl": True}], indirect=True)
@pytest.mark.parametrize("mechanism", SCRAM_MECHANISMS)
def test_sasl_from_another_host_then_requests_are_the_users(served: Served, mechanism: str) -> None:
    with socket.create_connection((outward_address(), served.port), timeout=5) as s:
        assert ask(s, apis_data.API_VERSIONS, 3, 1, {}) is not None  # SASL: no protected mode
        hs = ask(s, SASL_HANDSHAKE, 1, 2, {"mechanism": mechanism})
        assert hs is not None and hs["error_code"] == kerr.NONE
        first, final = client_exchange_for_tests(mechanism, "alice", "alice-pw")
        r1 = ask(s, SASL_AUTHENTICATE, 2, 3, {"auth_bytes": first})
        assert r1 is not None and r1["error_code"] == kerr.NONE
        r2 = ask(s, SASL_AUTHENTICATE, 2, 4, {"auth_bytes": final(bytes(r1["auth_bytes"]))})
        assert r2 is not None and r2["error_code"] == kerr.NONE and bytes(r2["auth_bytes"]).startswith(b"v=")
        assert metadata(s) is not None
        again = ask(s, SASL_HANDSHAKE, 1, 8, {"mechanism": mechanism})  # no re-authentication
        assert again is not None and again["error_code"] == kerr.ILLEGAL_SASL_STATE
    assert served.principals == ["User:alice"]


@pytest.mark.parametrize("served", [{"sasl": True}], indirect=True)
def test_handshake_v0_then_raw_plain_token(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        hs = ask(s, SASL_HANDSHAKE, 0, 1, {"mechanism": "PLAIN"})
        assert hs is not None and hs["error_code"] == kerr.NONE
        token = b"\0alice\0alice-pw"
        s.sendall(struct.pack(">i", len(token)) + token)  # raw, no Kafka header (v0)
        assert recv_frame(s) == b""
        assert metadata(s) is not None
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        ask(s, SASL_HANDSHAKE, 0, 1, {"mechanism": "PLAIN"})
        token = b"\0alice\0wrong"
        s.sendall(struct.pack(">i", len(token)) + token)
        assert recv_frame(s) is None  # v0 has no way to say why: closed
    assert served.principals == ["User:alice"]


@pytest.mark.parametrize("served", [{"sasl": True}], indirect=True)
def test_refusals(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        assert metadata(s) is None  # a request before authentication closes the connection
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        hs = ask(s, SASL_HANDSHAKE, 1, 1, {"mechanism": "GSSAPI"})
        assert hs is not None and hs["error_code"] == kerr.UNSUPPORTED_SASL_MECHANISM
        assert hs["mechanisms"] == ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
        assert recv_frame(s) is None
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        ask(s, SASL_HANDSHAKE, 1, 1, {"mechanism": "PLAIN"})
        r = ask(s, SASL_AUTHENTICATE, 1, 2, {"auth_bytes": b"\0alice\0nope"})
        assert r is not None and r["error_code"] == kerr.SASL_AUTHENTICATION_FAILED
        assert "invalid credentials with SASL mechanism PLAIN" in r["error_message"]
        assert recv_frame(s) is None
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(struct.pack(">i", 1 << 20) + b"x")  # a frame too big before authentication
        assert recv_frame(s) is None
    assert served.principals == []
