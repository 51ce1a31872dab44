"""The same-host path's session: what a client and a partition worker agree on to
exchange requests and replies through shared-memory rings (``ipc/ring.py``) instead of
their ZeroMQ connection (docs/architecture.md, "The same-host path").

Setting up
----------
The client sends ``same_host_open`` (topic, partition, its pid, the ring sizes it wants)
over its ordinary TCP channel to the partition's worker, so the request goes through
the worker's pipeline like any other: its principal is the TCP connection's (CURVE key,
or ``User:ANONYMOUS``), protected mode and the ACLs apply (DESCRIBE on the topic), and
only a peer on loopback is accepted (a client on another host, or in another network
namespace, keeps TCP). The worker creates, in its private runtime directory (0700,
files 0600: ``ipc/private.py``), a session of four files named by a random token:

    <token>.req    the request ring: the client writes, the worker reads
    <token>.rep    the reply ring: the worker writes, the client reads
    <token>.wbell  the worker's doorbell (a FIFO the worker listens on)
    <token>.cbell  the client's doorbell (a FIFO the client listens on)

and answers with their paths and the token. Only a process of the node's user can open
them, so the same-host path serves clients running as the node's user; any other keeps
TCP (the open of a ring file fails and the client says so once in its log).

Every request the session carries is then served by the same pipeline as over TCP,
authenticated as the principal that opened the session and authorized per request:
same validation, appends, acknowledgements, idempotence and durability. The ring peer's
identity (``ring_peer``) is longer than any ZeroMQ routing id (at most 255 bytes), so no
TCP client can pass for a session.

A message in a ring is one request or one reply: its ZeroMQ frames, framed as

    u32 count, count × u32 length, then the frames' bytes one after the other

Either side's death is seen by the other at once: its end of the other's doorbell
closes (POLLHUP). The worker ends a session when its client is gone, when a ring is
not consistent (``RingCorruptError``) or when it stops; the client then sends over
TCP (or a new session) what it has not had answered, as after a lost connection.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from ipc.ring import RingCorruptError

REQUEST_RING_BYTES = 4 * 1024 * 1024  # default; a producer's request fits (max_request_size)
REPLY_RING_BYTES = 20 * 1024 * 1024  # two fetch replies of MAX_FETCH_BYTES (8 MiB) and their headers
MIN_RING_BYTES = 64 * 1024
MAX_RING_BYTES = 64 * 1024 * 1024
MAX_SESSIONS = 16  # per worker: its rings are at most 16 × (64 + 64) MiB, usually far less
MAX_FRAMES = 4096

_COUNT = struct.Struct("<I")
_RING_PEER_PREFIX = b"\x00same-host:"
RING_PEER_LEN = 264  # > 255, the longest ZeroMQ routing id


def ring_peer(token: int) -> bytes:
    """The pipeline's peer identity of the session ``token``."""
    head = _RING_PEER_PREFIX + token.to_bytes(8, "little")
    return head + b"\x00" * (RING_PEER_LEN - len(head))


def is_ring_peer(peer: bytes) -> bool:
    return len(peer) == RING_PEER_LEN and peer.startswith(_RING_PEER_PREFIX)


def pack_frames(frames: Sequence[Any]) -> list[Any]:
    """The parts of one ring message carrying ``frames`` (``Ring.write`` joins them)."""
    lengths = [len(f) for f in frames]
    return [struct.pack(f"<I{len(lengths)}I", len(lengths), *lengths), *frames]


def unpack_frames(payload: bytes) -> list[memoryview]:
    """The frames of one ring message (views into ``payload``, no copy);
    ``RingCorruptError`` if its framing does not add up."""
    if len(payload) < 4:
        raise RingCorruptError(f"a ring message of {len(payload)} bytes has no frame count")
    (count,) = _COUNT.unpack_from(payload, 0)
    table = 4 + 4 * count
    if count > MAX_FRAMES or table > len(payload):
        raise RingCorruptError(f"a ring message of {len(payload)} bytes cannot hold {count} frames")
    lengths = struct.unpack_from(f"<{count}I", payload, 4)
    if table + sum(lengths) != len(payload):
        raise RingCorruptError(f"a ring message of {len(payload)} bytes does not hold its frames {lengths}")
    view = memoryview(payload)
    frames = []
    pos = table
    for n in lengths:
        frames.append(view[pos : pos + n])
        pos += n
    return frames
