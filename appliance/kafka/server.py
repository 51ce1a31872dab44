"""The Kafka listener's TCP side: connections, framing, and responses in order.

Each connection is read by one task: a frame is an int32 size (8 bytes at least,
``max_request_bytes`` at most: anything else closes the connection with a logged
reason, before the size is allocated) and that many bytes. Requests are handled
concurrently (pipelining: a long-polling fetch does not hold up the ApiVersions behind
it) but answered strictly in the order they came, as Kafka requires: every request
puts its task in the connection's queue and the writer task awaits them in turn. At
most ``MAX_IN_FLIGHT`` requests of one connection are in hand; the reader waits
beyond that, so a client that pipelines without reading is held by TCP, not by our
memory. A request that gets no response (a produce with acks=0) answers ``None``.

A frame that cannot be decoded (``KafkaDecodeError``: an unknown API key, a version
outside the served range, a lying length, bytes left over) closes the connection with
the reason logged, as Kafka does; ApiVersions at a version Sluice does not serve is
answered instead with ``UNSUPPORTED_VERSION`` and the served ranges in version 0, so
the client can pick one (KIP-511). An unexpected error in a handler is logged with its
traceback and closes that connection only.

Authentication: with SASL on the listener (``[kafka] security_protocol`` SASL_PLAINTEXT
or SASL_SSL), a connection's frames go to its ``SaslSession``
(appliance/kafka/sasl_session.py), one at a time, until the client is authenticated;
its requests are then ``User:NAME``'s (``KafkaRequest.principal``). Without SASL they
are ``User:ANONYMOUS``'s. TLS, when configured, is asyncio's (the server's ``ssl``).

Protected mode: with ``[security] protected_mode`` on (the default) and no SASL on the
listener, a connection from an address that is not loopback is closed at once with a
logged reason: without authentication the listener serves only its own host unless told
otherwise (as the node does for its own clients without CURVE: docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from appliance.gate import is_loopback
from appliance.kafka.sasl_session import SaslSession
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
from ipc.kafka.sasl import Lookup
from ipc.kafka.schema import Api
from ipc.kafka.wire import KafkaDecodeError

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 32  # requests of one connection in hand at once
MIN_FRAME = 8  # api key, version, correlation id, client id length
MAX_SASL_FRAME = 64 * 1024  # a frame before authentication (a SASL message is at most 4 KiB)
ANONYMOUS = "User:ANONYMOUS"
FAILED_AUTH_DELAY_S = 0.1
MAX_CONNECTIONS = 10_000
_SIZE = struct.Struct(">i")
_SASL_AFTER: dict[int, dict[str, Any]] = {
    SASL_HANDSHAKE.key: {"error_code": kerr.ILLEGAL_SASL_STATE, "mechanisms": []},
    SASL_AUTHENTICATE.key: {"error_code": kerr.ILLEGAL_SASL_STATE, "error_message": "no SASL exchange in progress"},
}


@dataclasses.dataclass(frozen=True)
class KafkaRequest:
    api: Api
    version: int
    correlation_id: int
    client_id: str | None
    body: dict[str, Any]
    host: str  # the client's address
    principal: str = ANONYMOUS  # "User:NAME" once SASL authenticated it


Handler = Callable[[KafkaRequest], Awaitable[dict[str, Any] | None]]


@dataclasses.dataclass(frozen=True)
class SaslSettings:
    mechanisms: tuple[str, ...]
    lookup: Lookup  # user -> their SCRAM credentials (appliance/kafka/credentials.py)


class KafkaServer:
    def __init__(
        self,
        handlers: dict[int, Handler],
        max_request_bytes: int,
        protected_mode: bool,
        sasl: SaslSettings | None = None,
    ) -> None:
        self.handlers = handlers
        self.max_request_bytes = max_request_bytes
        self.sasl = sasl
        self.protected_mode = protected_mode and sasl is None  # SASL authenticates: no need
        self.connections = 0

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        name = f"{host}:{peer[1]}" if isinstance(peer, tuple) and len(peer) > 1 else host
        if self.protected_mode and not is_loopback(host):
            log.warning(
                "kafka: closing the connection from %s: protected mode (no authentication on this "
                "listener: configure SASL in [kafka], or set protected_mode = false in [security] to serve "
                "other hosts)",
                name,
            )
            writer.close()
            return
        if self.connections >= MAX_CONNECTIONS:
            log.warning("kafka: closing the connection from %s: %d connections open", name, self.connections)
            writer.close()
            return
        self.connections += 1
        queue: asyncio.Queue[asyncio.Task[bytes | None] | None] = asyncio.Queue(MAX_IN_FLIGHT)
        writing = asyncio.get_running_loop().create_task(self._write(queue, writer, name))
        try:
            principal = ANONYMOUS
            if self.sasl is not None:
                user = await self._authenticate(reader, queue, name)
                if user is None:
                    return
                principal = f"User:{user}"
            await self._read(reader, queue, host, name, principal)
        finally:
            if not writing.done():
                try:
                    queue.put_nowait(None)  # the writer answers what is in hand, then stops
                except asyncio.QueueFull:
                    writing.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writing
            self.connections -= 1
            writer.close()

    async def _authenticate(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[asyncio.Task[bytes | None] | None], name: str
    ) -> str | None:
        """Feed the connection's frames to its SASL session, one at a time, until the
        client is authenticated (its user name) or the connection is to end (None)."""
        assert self.sasl is not None
        session = SaslSession(self.sasl.mechanisms, self.sasl.lookup, name)
        loop = asyncio.get_running_loop()
        while session.user is None:
            try:
                (size,) = _SIZE.unpack(await reader.readexactly(4))
                low = 0 if session.raw else MIN_FRAME
                if size < low or size > MAX_SASL_FRAME:
                    log.warning("kafka: closing %s: frame of %d bytes before authentication", name, size)
                    return None
                frame = await reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            try:
                out, close = await session.step(frame)
            except KafkaDecodeError as exc:
                log.warning("kafka: closing %s: %s", name, exc.message)
                return None
            if out is not None:
                await queue.put(loop.create_task(_done(out)))
            if close:
                # as Kafka's connection.failed.authentication.delay.ms: the answer goes out, the
                # close comes later (a client that sees the close first loses the reason)
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(reader.read(MAX_SASL_FRAME), FAILED_AUTH_DELAY_S)
                return None
        return session.user

    async def _read(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[asyncio.Task[bytes | None] | None],
        host: str,
        name: str,
        principal: str = ANONYMOUS,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                head = await reader.readexactly(4)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            (size,) = _SIZE.unpack(head)
            if size < MIN_FRAME or size > self.max_request_bytes:
                log.warning(
                    "kafka: closing %s: request size %d outside %d..%d", name, size, MIN_FRAME, self.max_request_bytes
                )
                return
            try:
                frame = await reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                log.info("kafka: %s closed the connection in the middle of a request", name)
                return
            try:
                task = loop.create_task(self._handle(frame, host, principal))
            except KafkaDecodeError as exc:
                log.warning("kafka: closing %s: %s", name, exc.message)
                return
            await queue.put(task)

    def _handle(self, frame: bytes, host: str, principal: str) -> Coroutine[Any, Any, bytes | None]:
        """Decode now (a bad frame raises here, in the reader), answer later."""
        try:
            header, api, body = read_request(frame)
        except UnsupportedVersionError:
            key, version, cid = peek_header(frame)
            if key != API_VERSIONS_KEY:
                raise
            out = encode_response(
                APIS[API_VERSIONS_KEY],
                0,
                cid,
                {"error_code": kerr.UNSUPPORTED_VERSION, "api_keys": supported_versions()},
            )
            return _done(out)
        request = KafkaRequest(api, header.api_version, header.correlation_id, header.client_id, body, host, principal)
        return self._answer(request)

    async def _answer(self, req: KafkaRequest) -> bytes | None:
        handler = self.handlers.get(req.api.key)
        if req.api.key in _SASL_AFTER:  # no SASL here, or authenticated already (Kafka's answer)
            return encode_response(req.api, req.version, req.correlation_id, _SASL_AFTER[req.api.key])
        if handler is None:
            raise KafkaDecodeError(f"{req.api.name} is not served")
        body = await handler(req)
        if body is None:
            return None
        return encode_response(req.api, req.version, req.correlation_id, body)

    async def _write(
        self, queue: asyncio.Queue[asyncio.Task[bytes | None] | None], writer: asyncio.StreamWriter, name: str
    ) -> None:
        try:
            await self._write_in_order(queue, writer, name)
        finally:
            writer.close()
            while not queue.empty():  # the reader may still be putting: cancel what is left
                task = queue.get_nowait()
                if task is not None:
                    task.cancel()

    async def _write_in_order(
        self, queue: asyncio.Queue[asyncio.Task[bytes | None] | None], writer: asyncio.StreamWriter, name: str
    ) -> None:
        try:
            while True:
                task = await queue.get()
                if task is None:
                    return
                try:
                    out = await task
                except KafkaDecodeError as exc:
                    log.warning("kafka: closing %s: %s", name, exc.message)
                    return
                except Exception:  # noqa: BLE001 - one bad request closes its connection, never the listener
                    log.exception("kafka: closing %s: unexpected error", name)
                    return
                if out is not None:
                    writer.write(out)
                    await writer.drain()
        except ConnectionError:
            pass


async def _done(value: bytes) -> bytes:
    return value
