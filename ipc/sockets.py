"""Every ZeroMQ socket Sluice creates is made here: endpoints and options in one place.

(When CURVE authentication or ACLs arrive, they are added here and nowhere else.)

* ROUTER sockets (front endpoint, partition workers, supervisor control) set
  ``ROUTER_MANDATORY`` so a reply to a vanished peer raises instead of vanishing,
  and ``MAXMSGSIZE`` so a peer cannot make us buffer an absurd frame: ZeroMQ drops
  the connection of a peer that sends a larger message.
* Every socket has ``LINGER=0``: closing never blocks on unsent messages.
* Replies are sent with ``NOBLOCK``: a peer that is gone or not reading (at its
  high-water mark) loses the reply; it times out and retries, and nothing else waits.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
HWM = 10_000


def _common(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    return sock


def router(ctx: zmq.Context[Any], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> zmq.Socket[Any]:
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    return sock


def bind_router(
    ctx: zmq.Context[Any], endpoint: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> tuple[zmq.Socket[Any], str]:
    """Bind a ROUTER; ``tcp://HOST:0`` picks a free port. Returns the socket and the bound endpoint."""
    sock = router(ctx, max_message_bytes)
    try:
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            host = endpoint[len("tcp://") : -2]
            port = sock.bind_to_random_port(f"tcp://{host}")
            endpoint = f"tcp://{host}:{port}"
        else:
            sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock, endpoint


def dealer(ctx: zmq.Context[Any], endpoint: str, identity: bytes | None = None) -> zmq.Socket[Any]:
    sock = _common(ctx.socket(zmq.DEALER))
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
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
