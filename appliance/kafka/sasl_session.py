"""One connection's SASL authentication on the Kafka listener, as Kafka's broker runs it
(``SaslServerAuthenticator``): a state machine fed the connection's frames until the
client is authenticated, then never again. Pure: frames in, (response, what next) out;
appliance/kafka/server.py does the socket.

    HANDSHAKE ──SaslHandshake v1──▶ AUTHENTICATE ──SaslAuthenticate…──▶ AUTHENTICATED
        │                               (one or more rounds: SCRAM takes two)
        └──SaslHandshake v0──▶ RAW ──raw tokens, size-prefixed, no Kafka header──▶ AUTHENTICATED

ApiVersions is answered in HANDSHAKE (clients ask it first). Any other request before
the end, an unknown mechanism, a wrong password or a malformed message ends the
connection: the response that says why goes out first (``UNSUPPORTED_SASL_MECHANISM``
with the enabled mechanisms, ``SASL_AUTHENTICATION_FAILED`` with Kafka's message),
except in RAW, where Kafka has no way to say it and just closes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
from collections.abc import Sequence

from ipc.kafka import errors as kerr
from ipc.kafka.apis_sasl import SASL_AUTHENTICATE, SASL_HANDSHAKE
from ipc.kafka.protocol import (
    API_VERSIONS_KEY,
    APIS,
    UnsupportedVersionError,
    encode_response,
    peek_header,
    read_request,
    supported_versions,
)
from ipc.kafka.sasl import MAX_MESSAGE, PLAIN, Exchange, Lookup, SaslFailed, new_exchange
from ipc.kafka.wire import KafkaDecodeError

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")


class SaslState(enum.Enum):
    HANDSHAKE = "handshake"
    AUTHENTICATE = "authenticate"
    RAW = "raw"
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


_ALLOWED = {
    SaslState.HANDSHAKE: (SaslState.AUTHENTICATE, SaslState.RAW, SaslState.FAILED),
    SaslState.AUTHENTICATE: (SaslState.AUTHENTICATED, SaslState.FAILED),
    SaslState.RAW: (SaslState.AUTHENTICATED, SaslState.FAILED),
    SaslState.AUTHENTICATED: (),
    SaslState.FAILED: (),
}


class SaslSession:
    """``await step(frame)`` → (the bytes to send, or None; whether to close after them)."""

    def __init__(self, mechanisms: Sequence[str], lookup: Lookup, name: str) -> None:
        self.mechanisms = tuple(mechanisms)
        self.lookup = lookup
        self.name = name  # the peer, for logs
        self.state = SaslState.HANDSHAKE
        self.exchange: Exchange | None = None
        self.user: str | None = None

    def _set_state(self, new: SaslState) -> None:
        if new not in _ALLOWED[self.state]:
            raise AssertionError(f"SASL state {self.state.value} -> {new.value} is not allowed")
        log.debug("kafka: %s SASL %s -> %s", self.name, self.state.value, new.value)
        self.state = new

    @property
    def raw(self) -> bool:
        return self.state is SaslState.RAW

    async def step(self, frame: bytes) -> tuple[bytes | None, bool]:
        if self.state is SaslState.RAW:
            return await self._raw(frame)
        try:
            header, api, body = read_request(frame)  # a bad frame raises KafkaDecodeError: the caller closes
        except UnsupportedVersionError:
            key, _, cid = peek_header(frame)
            if key != API_VERSIONS_KEY or self.state is not SaslState.HANDSHAKE:
                raise
            out = {"error_code": kerr.UNSUPPORTED_VERSION, "api_keys": supported_versions()}
            return encode_response(APIS[API_VERSIONS_KEY], 0, cid, out), False
        cid, version = header.correlation_id, header.api_version
        if api.key == API_VERSIONS_KEY and self.state is SaslState.HANDSHAKE:
            return encode_response(api, version, cid, {"api_keys": supported_versions()}), False
        if api.key == SASL_HANDSHAKE.key and self.state is SaslState.HANDSHAKE:
            mechanism = str(body["mechanism"]).upper()
            if mechanism not in self.mechanisms:
                log.warning("kafka: closing %s: SASL mechanism %r is not enabled", self.name, body["mechanism"])
                self._set_state(SaslState.FAILED)
                out = {"error_code": kerr.UNSUPPORTED_SASL_MECHANISM, "mechanisms": list(self.mechanisms)}
                return encode_response(api, version, cid, out), True
            self.exchange = new_exchange(mechanism, self.lookup)
            self._set_state(SaslState.RAW if version == 0 else SaslState.AUTHENTICATE)
            return encode_response(api, version, cid, {"mechanisms": list(self.mechanisms)}), False
        if api.key == SASL_AUTHENTICATE.key and self.state is SaslState.AUTHENTICATE:
            try:
                reply = await self._exchange_step(bytes(body["auth_bytes"]))
            except SaslFailed as exc:
                out = {"error_code": kerr.SASL_AUTHENTICATION_FAILED, "error_message": exc.message}
                return encode_response(api, version, cid, out), True
            return encode_response(api, version, cid, {"auth_bytes": reply, "session_lifetime_ms": 0}), False
        raise KafkaDecodeError(f"{api.name} in SASL state {self.state.value} (authenticate first)")

    async def _raw(self, frame: bytes) -> tuple[bytes | None, bool]:
        try:
            reply = await self._exchange_step(frame)
        except SaslFailed:
            return None, True
        return _SIZE.pack(len(reply)) + reply, False

    async def _exchange_step(self, message: bytes) -> bytes:
        ex = self.exchange
        assert ex is not None
        if len(message) > MAX_MESSAGE:
            self._set_state(SaslState.FAILED)
            raise SaslFailed(f"Authentication failed: SASL message of {len(message)} bytes")
        try:
            if ex.mechanism == PLAIN:  # PBKDF2: milliseconds of CPU, off the event loop
                reply = await asyncio.to_thread(ex.step, message)
            else:
                reply = ex.step(message)
        except SaslFailed as exc:
            log.warning("kafka: closing %s: %s", self.name, exc.message)
            self._set_state(SaslState.FAILED)
            raise
        if ex.user is not None:
            self.user = ex.user
            self._set_state(SaslState.AUTHENTICATED)
            log.info("kafka: %s authenticated as User:%s (%s)", self.name, ex.user, ex.mechanism)
        return reply
