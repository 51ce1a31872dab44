"""Every ZeroMQ socket Sluice creates is made here: endpoints and options in one place.

CURVE (ipc/curve.py) is applied here too: ``secure(ctx, server=..., client=...)``
registers a context's keys once; from then on every TCP ROUTER bound in that context
is a CURVE server and every TCP DEALER connects as that client. ``ipc://`` sockets (the
node's own control socket, in its private runtime directory) stay plain.

* ROUTER sockets (front endpoint, partition workers, supervisor control) set
  ``ROUTER_MANDATORY`` so a reply to a vanished peer raises instead of vanishing,
  and ``MAXMSGSIZE`` so a peer cannot make us buffer an absurd frame: ZeroMQ drops
  the connection of a peer that sends a larger message.
* Every socket has ``LINGER=0``: closing never blocks on unsent messages.
* Replies are sent with ``NOBLOCK``: a peer that is gone or not reading (at its
  high-water mark, ``ROUTER_HWM`` per peer on a ROUTER) loses the reply; it times out
  and retries, and nothing else waits. A serving process notes such a peer in its peer
  ledger (``ipc/peers.py``) and stops serving it.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import zmq

from ipc import curve

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
HWM = 10_000  # DEALERs: a client's own queues
# ROUTERs (the serving sockets): per peer, at most this many replies queued (and requests
# received but not yet read). With every reply's size capped (ipc/peers.py), this bounds in
# bytes what a process holds for a peer that does not read: at most ROUTER_HWM x the
# largest reply (a fetch: 8 MiB). Our clients' DEALERs read their TCP stream into their own
# 10,000-message queue, so only a peer that stops reading ever fills this.
ROUTER_HWM = 32


_servers: weakref.WeakKeyDictionary[Any, curve.KeyPair] = weakref.WeakKeyDictionary()
_clients: weakref.WeakKeyDictionary[Any, curve.ClientKeys] = weakref.WeakKeyDictionary()


def secure(ctx: zmq.Context[Any], server: curve.KeyPair | None = None, client: curve.ClientKeys | None = None) -> None:
    """Use CURVE for the TCP sockets made in ``ctx`` from now on: ROUTERs serve with
    ``server`` (the context must run a ZAP handler), DEALERs connect with ``client``."""
    if server is not None:
        _servers[ctx] = server
    if client is not None:
        _clients[ctx] = client


def is_secured(ctx: Any) -> bool:
    return ctx in _clients


def _common(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    return sock


def router(ctx: zmq.Context[Any], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> zmq.Socket[Any]:
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.SNDHWM, ROUTER_HWM)
    sock.setsockopt(zmq.RCVHWM, ROUTER_HWM)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    return sock


def bind_router(
    ctx: zmq.Context[Any], endpoint: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> tuple[zmq.Socket[Any], str]:
    """Bind a ROUTER; ``tcp://HOST:0`` picks a free port. Returns the socket and the bound endpoint."""
    sock = router(ctx, max_message_bytes)
    server = _servers.get(ctx) if endpoint.startswith("tcp://") else None
    try:
        if server is not None:
            curve.configure_server(sock, server)
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            host = endpoint[len("tcp://") : -2]
            port = sock.bind_to_random_port(f"tcp://{host}")
            endpoint = f"tcp://{host}:{port}"
        else:
            sock.bind(endpoint)
    except (zmq.ZMQError, RuntimeError):
        sock.close(0)
        raise
    return sock, endpoint


def dealer(
    ctx: zmq.Context[Any], endpoint: str, identity: bytes | None = None, connect: bool = True
) -> zmq.Socket[Any]:
    """A DEALER for ``endpoint``, connected unless ``connect`` is False (the caller then
    connects it, e.g. after attaching a monitor that must see the first handshake)."""
    sock = _common(ctx.socket(zmq.DEALER))
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    keys = _clients.get(ctx) if endpoint.startswith("tcp://") else None
    if keys is not None:
        curve.configure_client(sock, keys)
    if connect:
        sock.connect(endpoint)
    return sock


def send_reply(sock: zmq.Socket[Any], identity: bytes, frames: list[Any]) -> bool:
    """Send ``frames`` to ``identity`` without blocking; False if the peer is gone or full."""
    try:
        sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
        return True
    except zmq.Again:
        log.debug("reply dropped: peer %r not reading (high-water mark)", identity)
    except zmq.ZMQError as exc:
        if exc.errno != zmq.EHOSTUNREACH:
            raise
        log.debug("reply dropped: peer %r has gone", identity)
    return False
