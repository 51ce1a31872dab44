"""The one request pipeline every serving process runs: the front endpoint, each
partition worker, and any later listener.

    receive ─▶ parse and validate (ipc/protocol.py SCHEMAS: a typed Request)
            ─▶ authenticate (a hook: the peer's principal and host; appliance/gate.py)
            ─▶ authorize (a hook: one call per request, the ACLs; appliance/gate.py)
            ─▶ dispatch through the handler table
            ─▶ a Response, or an error (SluiceError) ─▶ encode at the edge ─▶ send

Handlers are functions ``handler(request) -> Response | None``. They see the typed
request (api, id, validated fields, data frames, principal) and never a ZeroMQ identity
or the bytes of a header. ``None`` means "answered later": the handler keeps
``request.responder`` (an opaque handle holding the peer) and calls ``ok`` / ``send`` /
``fail`` on it when the answer is ready (a parked fetch, a produce waiting for its
replicas, a join waiting for the rebalance). A handler that raises ``SluiceError``
answers with that typed error; any other exception is logged with its traceback and
answered as an unexpected error, so no request can stop a process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ipc.errors import SluiceError
from ipc.peers import PeerLedger, PeerResponder
from ipc.protocol import (  # the request and reply types live with the wire format
    ANONYMOUS,
    Frame,
    Principal,
    Request,
    Responder,
    Response,
    Send,
    error_reply,
    parse_request,
    peek_id,
)

__all__ = ["ANONYMOUS", "Principal", "RequestPipeline", "Responder", "Response", "ok"]

log = logging.getLogger(__name__)


def ok(**fields: Any) -> Response:
    return Response(fields)


Handler = Callable[[Request], "Response | None"]
Authenticate = Callable[[bytes, Frame], tuple[Principal, str]]  # (peer, header) -> (principal, host)
Authorize = Callable[[Request], None]


def anonymous(peer: bytes, header: Frame) -> tuple[Principal, str]:
    """The authenticate hook of a process without authentication (tests, tools)."""
    return ANONYMOUS, ""


def allow_all(request: Request) -> None:
    """The authorize hook without ACLs."""


def count_error(api: str, code: str) -> None:
    """``sluice_request_errors_total{api, error}`` (metrics/definitions.py), imported on the
    first error: a process that never answers one never loads prometheus_client here."""
    from metrics.definitions import REQUEST_ERRORS

    REQUEST_ERRORS.labels(api, code).inc()


class RequestPipeline:
    """Parse, authenticate, authorize, dispatch, encode: one place for every request.

    ``send(peer, frames)`` puts an encoded reply on the wire (the process's socket);
    ``handlers`` maps each API this endpoint serves to its handler.
    """

    def __init__(
        self,
        name: str,
        send: Send,
        handlers: Mapping[str, Handler],
        authenticate: Authenticate = anonymous,
        authorize: Authorize = allow_all,
        peers: PeerLedger | None = None,
        on_error: Callable[[str, str], None] = count_error,
    ) -> None:
        self.name = name
        self.on_error = on_error  # every error reply, by API and code (a request too bad to parse: "unparsed")
        self.peers = peers  # bounds what is held per peer; ``send`` is then ``peers.send`` (ipc/peers.py)
        self._send = send
        self.handlers = dict(handlers)
        self.apis = frozenset(self.handlers)
        self.authenticate = authenticate
        self.authorize = authorize

    def handle(self, frames: Sequence[Any]) -> None:
        """One message from a ROUTER socket: ``[peer identity, header, *data]``."""
        peer = frames[0].bytes if hasattr(frames[0], "bytes") else bytes(frames[0])
        body = frames[1:]
        peers = self.peers
        if peers is not None and body and not peers.admit(peer, body[0]):
            return  # a peer that does not read its replies: discarded unprocessed
        try:
            req = parse_request(body, self.apis)
        except SluiceError as exc:
            self.on_error("unparsed", exc.code)
            self._send(peer, [error_reply(peek_id(body[0]) if body else 0, exc)])
            return
        if peers is None:
            responder = Responder(self._send, peer, req.id, req.api)
        else:
            responder = PeerResponder(self._send, peer, req.id, req.api, peers)
        responder.on_fail = self.on_error
        req.responder = responder
        try:
            req.principal, req.host = self.authenticate(peer, body[0])
            self.authorize(req)
            result = self.handlers[req.api](req)
        except SluiceError as exc:
            responder.fail(exc)
            return
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the process
            log.exception("%s: unexpected error handling %s", self.name, req.api)
            responder.fail(SluiceError(f"unexpected error in {req.api}: {exc}"))
            return
        if result is not None:
            responder.send(result)
