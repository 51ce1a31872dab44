"""KIP-219 on a ROUTER socket: a throttled reply goes out at once with its
``throttle_time_ms``, and the connection it went to is **muted** for that long.

Kafka mutes a throttled client's channel: the broker stops reading it, so its next
requests wait in the socket. A ROUTER cannot stop reading one peer, so ``MutedPeers``
holds them instead: a request from a muted peer is parked, unparsed, and handed to the
pipeline, in order, when the mute ends (``release``, called by the process's loop, which
also wakes up for ``next_deadline``). A client that honours ``throttle_time_ms`` sends
nothing meanwhile; what it had in flight waits here. What is parked is bounded per peer
(``MAX_PARKED`` requests and ``MAX_PARKED_BYTES``) and in all (``MAX_TOTAL_BYTES``): a
request over a bound is answered at once with the retriable
``THROTTLING_QUOTA_EXCEEDED`` and its ``throttle_time_ms`` (the time left). A peer's
requests are never reordered: while it has parked requests, its new ones queue behind.

The reply side is ``on_reply`` hooks on the request's ``Responder``
(``ipc.protocol.Responder.on_reply``): ``with_throttle`` adds ``throttle_time_ms`` to a
reply; ``mute_peer`` mutes the peer a responder answers. O(1) per request: when no peer
is muted, ``handle`` costs one truth test of an empty dict.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ipc.errors import ThrottlingQuotaExceededError
from ipc.protocol import Responder, Response, error_reply, peek_id

log = logging.getLogger(__name__)

MAX_PARKED = 64  # requests of one muted peer
MAX_PARKED_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 128 * 1024 * 1024  # parked for every muted peer of one process
MAX_MUTED = 65_536


def _size(frames: Sequence[Any]) -> int:
    return sum(len(f) for f in frames)


class MutedPeers:
    """The muted peers of one serving process (see the module docstring).

    ``handle(frames)`` takes the socket's ``[peer, header, *data]`` in place of the
    pipeline's ``handle``; ``send_raw(peer, frames)`` answers a refused request.
    """

    def __init__(
        self,
        handle: Callable[[Sequence[Any]], None],
        send_raw: Callable[[bytes, list[Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handle = handle
        self._send_raw = send_raw
        self.clock = clock
        self._until: dict[bytes, float] = {}  # peer -> when its mute ends
        self._parked: dict[bytes, deque[Sequence[Any]]] = {}
        self._parked_bytes: dict[bytes, int] = {}
        self.total_bytes = 0
        self.refused = 0

    @staticmethod
    def peer_of(frames: Sequence[Any]) -> bytes:
        f = frames[0]
        return f.bytes if hasattr(f, "bytes") else bytes(f)

    def mute(self, peer: bytes, seconds: float) -> None:
        """Hold ``peer``'s requests for ``seconds`` from now (a longer mute is kept)."""
        until = self.clock() + seconds
        if until > self._until.get(peer, 0.0):
            if len(self._until) >= MAX_MUTED and peer not in self._until:
                self.release(self.clock())
                if len(self._until) >= MAX_MUTED:
                    return  # too many: this one goes unmuted (its reply still says to wait)
            self._until[peer] = until

    def muted(self, peer: bytes) -> float:
        """Seconds of mute left for ``peer`` (0: not muted)."""
        return max(0.0, self._until.get(peer, 0.0) - self.clock())

    @property
    def parked(self) -> int:
        return sum(len(q) for q in self._parked.values())

    def handle(self, frames: Sequence[Any]) -> None:
        if self._until:
            peer = self.peer_of(frames)
            if peer in self._until and self._hold(peer, frames):
                return
        self._handle(frames)

    def _hold(self, peer: bytes, frames: Sequence[Any]) -> bool:
        """Park ``frames`` if ``peer`` is muted (or has requests parked); False: serve it now."""
        now = self.clock()
        queue = self._parked.get(peer)
        if self._until[peer] <= now and not queue:
            del self._until[peer]
            return False
        size = _size(frames[1:])
        held = self._parked_bytes.get(peer, 0)
        if (
            (queue is not None and len(queue) >= MAX_PARKED)
            or held + size > MAX_PARKED_BYTES
            or self.total_bytes + size > MAX_TOTAL_BYTES
        ):
            self._refuse(peer, frames, now)
            return True
        if queue is None:
            queue = self._parked[peer] = deque()
        queue.append(frames)
        self._parked_bytes[peer] = held + size
        self.total_bytes += size
        return True

    def _refuse(self, peer: bytes, frames: Sequence[Any], now: float) -> None:
        self.refused += 1
        left = max(1, int((self._until.get(peer, now) - now) * 1000))
        err = ThrottlingQuotaExceededError(
            f"this client is throttled for {left} ms more (quota exceeded) and already has as many requests "
            f"waiting as it may; honour throttle_time_ms before sending more"
        )
        err.throttle_time_ms = left  # type: ignore[attr-defined]
        self._send_raw(peer, [error_reply(peek_id(frames[1]) if len(frames) > 1 else 0, err)])

    def next_deadline(self) -> float:
        """When the earliest mute ends (inf: none)."""
        return min(self._until.values(), default=float("inf"))

    def release(self, now: float) -> None:
        """End the mutes that are over: serve their parked requests, in order."""
        if not self._until:
            return
        for peer in [p for p, until in self._until.items() if until <= now]:
            del self._until[peer]
            queue = self._parked.pop(peer, None)
            self.total_bytes -= self._parked_bytes.pop(peer, 0)
            while queue:
                frames = queue.popleft()
                if peer in self._until:  # a request served now throttled it again: the rest wait more
                    rest = self._parked.setdefault(peer, deque())
                    rest.extend([frames, *queue])
                    held = _size(frames[1:]) + sum(_size(f[1:]) for f in queue)
                    self._parked_bytes[peer] = held
                    self.total_bytes += held
                    break
                self._handle(frames)


# ---- reply hooks (ipc.protocol.Responder.on_reply) ---------------------------------------------
def with_throttle(response: Response, throttle_ms: int) -> Response:
    """``response`` carrying ``throttle_time_ms``."""
    return Response({**response.fields, "throttle_time_ms": throttle_ms}, response.frames)


def mute_peer(muted: MutedPeers, responder: Responder, seconds: float) -> None:
    """Mute the peer ``responder`` answers (the peer stays inside ipc/)."""
    muted.mute(responder._peer, seconds)  # noqa: SLF001
