"""The node's gate: who sent a request (authenticate) and may they (authorize).

Every serving process (the supervisor's front endpoint, each partition worker) calls
``install`` once, right after it makes its ZeroMQ context and before it binds: with
CURVE configured it starts the ZAP handler (ipc/curve.py), makes every TCP ROUTER of
the context a CURVE server with the cluster's server key and every TCP DEALER a CURVE
client with this node's key (principal ``Node:N``). It returns the ``Gate`` whose two
methods are the request pipeline's hooks (ipc/server.py):

- ``authenticate(peer, header)``: the principal is the ZAP user id the handshake gave
  the connection (``User-Id``), the host its ``Peer-Address``, both read from the
  message itself (two property reads, about 0.6 µs each). They are deliberately not
  cached by the ROUTER's peer identity: a client may choose its own identity, and one
  that reconnects with the identity of a peer that left would inherit that peer's
  principal (or its loopback address, past protected mode). Without CURVE the principal
  is ``User:ANONYMOUS`` and protected mode refuses any peer that is not on loopback.
- ``authorize(request)``: one call per request, through ``ipc.acl.Authorizer``; the
  ACLs are replaced when the coordinator's change (a ``PolicyCommand`` for workers,
  the supervisor's own reconcile for the front).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
import zmq

from appliance.security_config import SecurityConfig
from ipc import curve, sockets
from ipc.acl import AclBinding, Authorizer
from ipc.errors import InvalidRequestError, ProtectedModeError
from ipc.protocol import ANONYMOUS, Frame, Principal, Request

log = logging.getLogger(__name__)

PROTECTED_MODE_MESSAGE = (
    "this node is in protected mode: it serves clients on its own host only, because no authentication "
    "is configured. Configure CURVE keys ([security] in the node's config, docs/security.md) or set "
    "protected_mode = false in [security] to accept other hosts without authentication"
)


def is_loopback(host: str) -> bool:
    """A peer on this host: a loopback address, or no address at all (not a TCP peer:
    ``ipc://`` and ``inproc://`` connections are local by construction)."""
    return not host or host.startswith(("127.", "::ffff:127.")) or host == "::1"


class Gate:
    def __init__(self, security: SecurityConfig, acls: Iterable[AclBinding] = ()) -> None:
        self.security = security
        self.authorizer = Authorizer(acls, security.super_users, enabled=security.authorizer == "acl")
        self._protect = security.protected_mode and not security.uses_curve
        self._principals: dict[str, Principal] = {}  # ZAP user id -> its Principal (bounded by the keys)

    def set_acls(self, acls: Iterable[AclBinding]) -> None:
        self.authorizer.replace(acls)

    def authenticate(self, peer: bytes, header: Frame) -> tuple[Principal, str]:
        get = getattr(header, "get", None)  # a zmq.Frame; plain bytes in unit tests
        host = _prop(get, "Peer-Address")
        if self._protect and not is_loopback(host):
            raise ProtectedModeError(PROTECTED_MODE_MESSAGE)
        user = _prop(get, "User-Id") if self.security.uses_curve else ""
        if not user:
            return ANONYMOUS, host
        principal = self._principals.get(user)
        if principal is None:
            kind, _, name = user.partition(":")
            principal = self._principals[user] = Principal(kind, name)
        if principal.type == "Node":
            forwarded = on_behalf_of(header)
            if forwarded is not None:
                return forwarded
        return principal, host

    def authorize(self, request: Request) -> None:
        if self.authorizer.enabled:
            self.authorizer.authorize(str(request.principal), request.host, request.api, request.fields)


ON_BEHALF_OF = "on_behalf_of"
_ON_BEHALF_OF_MARK = b'"on_behalf_of"'


def on_behalf_of(header: Frame) -> tuple[Principal, str] | None:
    """The (principal, host) a node's request is made for, or None (see the docstring).
    Costs a substring test unless the field is there."""
    raw = header.bytes if hasattr(header, "bytes") else bytes(header)
    if _ON_BEHALF_OF_MARK not in raw:
        return None
    try:
        value = orjson.loads(raw).get(ON_BEHALF_OF)
    except (orjson.JSONDecodeError, AttributeError):
        return None  # the pipeline has parsed this header already; not reached
    if value is None:
        return None
    who = value.get("principal") if isinstance(value, dict) else None
    host = value.get("host", "") if isinstance(value, dict) else None
    if not isinstance(who, str) or not isinstance(host, str) or len(host) > 64:
        raise InvalidRequestError(f"{ON_BEHALF_OF} must be {{'principal': 'User:NAME', 'host': ADDRESS}}")
    why = curve.valid_principal(who)
    if why or not who.startswith("User:"):
        raise InvalidRequestError(f"{ON_BEHALF_OF}: {why or f'{who!r} is not a User principal'}")
    return Principal("User", who[5:]), host


def _prop(get: Any, name: str) -> str:
    if get is None:
        return ""
    try:
        value = get(name)
    except (zmq.ZMQError, KeyError, TypeError):
        return ""
    return value if isinstance(value, str) else ""


def install(ctx: zmq.Context[Any], security: SecurityConfig, node_id: int) -> Gate:
    """Secure the context's sockets (CURVE, when configured) and return the gate."""
    if security.uses_curve:
        server, node = security.load(node_id)
        curve.ZapHandler.start(ctx, security.authorized_keys_dir)
        sockets.secure(ctx, server=server, client=curve.ClientKeys(server.public, node.public, node.secret))
    return Gate(security)
