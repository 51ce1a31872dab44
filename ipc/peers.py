"""What a serving process holds for one peer, bounded in bytes: the peer ledger.

A serving process (the front endpoint, a partition worker) answers many peers on one
ROUTER socket. Three things pile up for a peer that sends and does not read, and each
has its own bound:

1. **Replies queued** for the peer. A ROUTER queues at most its send high-water mark
   (``ipc.sockets.ROUTER_HWM`` messages) per peer, and no reply is larger than the
   server's caps (a fetch's data: ``MAX_FETCH_BYTES`` or its first batch). A full queue
   shows as ``zmq.Again`` on the ``NOBLOCK`` send (``ROUTER_MANDATORY`` is set). That
   alone does not mean the peer does not read: a process answering a burst of small
   requests fills the queue faster than its own I/O thread empties it into the kernel.
   So a reply that finds the queue full waits in the peer's **backlog** (in order; the
   peer's later replies queue behind it), which ``flush`` retries on every turn of the
   process's loop (``congested`` asks for a short poll then). A backlog over
   ``max_backlog_bytes`` or ``max_backlog_replies`` means the peer really does not
   read: it is **stalled** and its backlog dropped. The bytes held for one peer are at
   most ``ROUTER_HWM`` x the largest reply plus the backlog's bound.
2. **Parked fetches** (long polls, ``appliance/partition/purgatory.py``): at most
   ``max_parked_fetches`` per peer and ``max_parked_bytes`` of their ``max_bytes``
   summed. A fetch over the bound is answered at once with what there is, as if its
   ``max_wait_ms`` were 0.
3. **Produces waiting for their replicas** (``acks=all``): at most
   ``max_waiting_produces`` per peer and ``max_waiting_produce_bytes`` of their batches
   summed. A produce over the bound is refused before anything is written, with the
   retriable ``THROTTLING_QUOTA_EXCEEDED``.

A stalled peer is no longer served: each of its further requests is discarded
unprocessed (no disk read, nothing queued) and its parked fetches are released (the
process's ``on_stall`` callback). The discard tries to send a small
``THROTTLING_QUOTA_EXCEEDED`` reply; that send is the probe of the peer's queue: once it
goes through, the peer has read some of its replies and is served again. A peer stalled
for ``drop_after_s`` without draining is **dropped**: everything the ledger knows of it
is forgotten. A ZeroMQ ROUTER cannot close one peer's connection, so "dropped" cannot
mean disconnected: the replies already queued for it (at most the high-water mark)
stay in ZeroMQ until its connection closes; its next request is served as a new peer's
and, if it still does not read, stalls it again after one reply.

A peer whose connection is gone (``EHOSTUNREACH``) is forgotten at once.

Why a ledger and not only a smaller high-water mark: the high-water mark bounds the
queue, but the work and the purgatory do not; stalling stops the work (a non-reading
peer costs one failed ``send`` per request, not a 1 MiB disk read), and the ledger is
the one place that counts what is held for each peer. It is O(1) per request: one
dict lookup on the way in (``admit``), one comparison on the way out (``send``), and a
dict entry only for peers that hold something or are stalled.

The clock is injected; nothing here touches a socket except through the ``RawSend``
it is given (``deliver`` is the real one), so the logic is tested without ZeroMQ.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from ipc.errors import ThrottlingQuotaExceededError
from ipc.protocol import Frame, Responder, error_reply, peek_id

log = logging.getLogger(__name__)

MAX_FETCH_BYTES = 8 * 1024 * 1024  # a fetch reply's data: min(max_bytes, this), or its first batch
CONGESTED_RETRY_S = 0.002  # how soon a serving loop retries its backlogs (``PeerLedger.congested``)


class Delivery(enum.Enum):
    SENT = "sent"
    FULL = "full"  # the peer's queue is at the high-water mark: it does not read
    GONE = "gone"  # the peer's connection is gone


RawSend = Callable[[bytes, list[Any]], Delivery]


def deliver(sock: zmq.Socket[Any], peer: bytes, frames: list[Any]) -> Delivery:
    """Send ``frames`` to ``peer`` on a ROUTER (``ROUTER_MANDATORY``) without blocking."""
    try:
        sock.send_multipart([peer, *frames], flags=zmq.NOBLOCK, copy=False)
        return Delivery.SENT
    except zmq.Again:
        return Delivery.FULL
    except zmq.ZMQError as exc:
        if exc.errno != zmq.EHOSTUNREACH:
            raise
        return Delivery.GONE


@dataclasses.dataclass(frozen=True)
class PeerLimits:
    """What one peer may hold in one serving process (see the module docstring)."""

    max_parked_fetches: int = 64
    max_parked_bytes: int = 64 * 1024 * 1024
    max_waiting_produces: int = 1024
    max_waiting_produce_bytes: int = 64 * 1024 * 1024
    max_backlog_bytes: int = 16 * 1024 * 1024  # replies waiting for room in the peer's queue
    max_backlog_replies: int = 1024
    drop_after_s: float = 30.0


@dataclasses.dataclass(slots=True)
class Backlog:
    """Replies that found the peer's queue full, in order, waiting for room."""

    since: float
    replies: collections.deque[tuple[list[Any], int]] = dataclasses.field(default_factory=collections.deque)
    nbytes: int = 0


@dataclasses.dataclass(eq=False, slots=True)
class PeerAccount:
    """What is held for one peer. An operation keeps the account it was charged to, so a
    release after the peer was dropped (and perhaps came back) touches only the old one."""

    peer: bytes
    ledger: PeerLedger | None = None  # None: not charged anywhere (no bound)
    parked: int = 0
    parked_bytes: int = 0
    waiting: int = 0
    waiting_bytes: int = 0
    stalled: bool = False  # its peer does not read (or is gone): drop its parked fetches

    @property
    def empty(self) -> bool:
        return not (self.parked or self.waiting)


NO_ACCOUNT = PeerAccount(b"")  # what a request served without a ledger is charged to (no bound)


class PeerLedger:
    """The per-peer ledger of one serving process (see the module docstring)."""

    def __init__(
        self,
        name: str,
        raw_send: RawSend,
        limits: PeerLimits = PeerLimits(),
        clock: Callable[[], float] = time.monotonic,
        on_stall: Callable[[PeerAccount], None] | None = None,
    ) -> None:
        self.name = name
        self._raw_send = raw_send
        self.limits = limits
        self.clock = clock
        self.on_stall = on_stall
        self._accounts: dict[bytes, PeerAccount] = {}
        self._stalled: dict[bytes, float] = {}  # peer -> when it was found not reading
        self._backlogs: dict[bytes, Backlog] = {}  # peers whose queue was full: replies waiting for room
        self.discarded = 0  # requests of stalled peers, not served
        self.stalls = 0
        self.drops = 0

    # ---- requests and replies ------------------------------------------------------------
    def admit(self, peer: bytes, header: Frame) -> bool:
        """Whether to serve a request from ``peer``. A stalled peer's request is discarded
        and answered, if its queue has room again, with a small error: then the peer is
        served again from its next request."""
        if peer not in self._stalled:
            return True
        self.discarded += 1
        err = ThrottlingQuotaExceededError(
            f"{self.name}: request discarded: this client did not read its replies (its queue was full)"
        )
        if self._raw_send(peer, [error_reply(peek_id(header), err)]) is Delivery.SENT:
            since = self._stalled.pop(peer)
            acct = self._accounts.get(peer)
            if acct is not None:
                acct.stalled = False
            log.info("%s: peer %s reads again after %.1f s; serving it", self.name, _show(peer), self.clock() - since)
        return False

    def send(self, peer: bytes, frames: list[Any]) -> None:
        """The pipeline's send: put a reply on the wire; a full queue keeps it in the
        peer's backlog (behind any reply already there), a gone peer is forgotten."""
        backlog = self._backlogs.get(peer)
        if backlog is not None:
            self._keep(peer, backlog, frames)
            return
        result = self._raw_send(peer, frames)
        if result is Delivery.SENT:
            return
        if result is Delivery.GONE:
            self._forget(peer, "its connection is gone")
        elif peer not in self._stalled:  # a stalled peer's replies are dropped: it does not read
            backlog = self._backlogs[peer] = Backlog(self.clock())
            self._keep(peer, backlog, frames)

    def _keep(self, peer: bytes, backlog: Backlog, frames: list[Any]) -> None:
        size = sum(len(f) for f in frames)
        backlog.replies.append((frames, size))
        backlog.nbytes += size
        lim = self.limits
        if backlog.nbytes > lim.max_backlog_bytes or len(backlog.replies) > lim.max_backlog_replies:
            del self._backlogs[peer]
            self._stall(peer)

    @property
    def congested(self) -> bool:
        """Replies wait for room in some peer's queue: call ``flush`` again soon."""
        return bool(self._backlogs)

    def flush(self) -> None:
        """Send what the backlogs hold, in order, while the peers' queues take it."""
        for peer, backlog in list(self._backlogs.items()):
            replies = backlog.replies
            while replies:
                result = self._raw_send(peer, replies[0][0])
                if result is Delivery.FULL:
                    break
                if result is Delivery.GONE:
                    del self._backlogs[peer]
                    self._forget(peer, "its connection is gone")
                    break
                backlog.nbytes -= replies.popleft()[1]
                backlog.since = self.clock()  # progress: it reads
            else:
                del self._backlogs[peer]

    def stalled(self, peer: bytes) -> bool:
        return peer in self._stalled

    def _stall(self, peer: bytes) -> None:
        if peer in self._stalled:
            return
        self._stalled[peer] = self.clock()
        self.stalls += 1
        acct = self._accounts.get(peer)
        if acct is not None:
            acct.stalled = True
        log.warning("%s: peer %s does not read its replies (queue full); not serving it", self.name, _show(peer))
        if acct is not None and self.on_stall is not None:
            self.on_stall(acct)  # release its parked fetches

    def _forget(self, peer: bytes, why: str) -> None:
        self._backlogs.pop(peer, None)
        acct = self._accounts.pop(peer, None)
        was_stalled = self._stalled.pop(peer, None) is not None
        if acct is not None:
            acct.stalled = True  # detached: what still holds it lets go
        if acct is not None and self.on_stall is not None:
            self.on_stall(acct)
        if acct is not None or was_stalled:
            log.info("%s: forgetting peer %s: %s", self.name, _show(peer), why)

    def expire(self, now: float) -> None:
        """Drop the peers stalled for ``drop_after_s``, and stall those whose backlog
        made no progress for as long (cheap when none is stalled or congested)."""
        limit = now - self.limits.drop_after_s
        for peer in [p for p, b in self._backlogs.items() if b.since <= limit]:
            del self._backlogs[peer]
            self._stall(peer)
        if not self._stalled:
            return
        for peer in [p for p, since in self._stalled.items() if since <= limit]:
            self.drops += 1
            self._forget(peer, f"stalled for {self.limits.drop_after_s:.0f} s (dropped)")

    # ---- what is held --------------------------------------------------------------------
    def _account(self, peer: bytes) -> PeerAccount:
        acct = self._accounts.get(peer)
        if acct is None:
            acct = self._accounts[peer] = PeerAccount(peer, self, stalled=peer in self._stalled)
        return acct

    def _settle(self, acct: PeerAccount) -> None:
        if acct.empty and self._accounts.get(acct.peer) is acct:
            del self._accounts[acct.peer]

    def park(self, peer: bytes, max_bytes: int) -> PeerAccount | None:
        """Charge a parked fetch of ``max_bytes``; None if over the peer's bound."""
        lim = self.limits
        acct = self._account(peer)
        if acct.parked >= lim.max_parked_fetches or acct.parked_bytes + max_bytes > lim.max_parked_bytes:
            self._settle(acct)
            return None
        acct.parked += 1
        acct.parked_bytes += max_bytes
        return acct

    def unpark(self, acct: PeerAccount, max_bytes: int) -> None:
        acct.parked -= 1
        acct.parked_bytes -= max_bytes
        self._settle(acct)

    def wait(self, peer: bytes, nbytes: int) -> PeerAccount:
        """Charge a produce that may wait for its replicas; raises
        ThrottlingQuotaExceededError if over the peer's bound."""
        lim = self.limits
        acct = self._account(peer)
        if acct.waiting >= lim.max_waiting_produces or acct.waiting_bytes + nbytes > lim.max_waiting_produce_bytes:
            self._settle(acct)
            raise ThrottlingQuotaExceededError(
                f"{self.name}: {acct.waiting} produce request(s) of {acct.waiting_bytes} bytes from this client "
                f"already wait for replicas (at most {lim.max_waiting_produces} and "
                f"{lim.max_waiting_produce_bytes} bytes); retry when they are answered"
            )
        acct.waiting += 1
        acct.waiting_bytes += nbytes
        return acct

    def unwait(self, acct: PeerAccount, nbytes: int) -> None:
        acct.waiting -= 1
        acct.waiting_bytes -= nbytes
        self._settle(acct)

    def held(self, peer: bytes) -> PeerAccount | None:
        """What is held for ``peer`` now (None: nothing), for tests and status."""
        return self._accounts.get(peer)


class PeerResponder(Responder):
    """A responder that knows its pipeline's ledger: what its request leaves waiting
    (a parked fetch, a produce waiting for replicas) is charged to its peer."""

    __slots__ = ("ledger",)

    def __init__(self, send: Callable[[bytes, list[Any]], None], peer: bytes, cid: int, api: str, ledger: PeerLedger):
        super().__init__(send, peer, cid, api)
        self.ledger = ledger


def charge_park(responder: Responder, max_bytes: int) -> PeerAccount | None:
    """Charge a fetch about to be parked to its peer: its account, or None when the peer
    already has as many parked as it may (answer the fetch now)."""
    if isinstance(responder, PeerResponder):
        return responder.ledger.park(responder._peer, max_bytes)  # noqa: SLF001 - the peer stays inside ipc/
    return NO_ACCOUNT


def charge_wait(responder: Responder, nbytes: int) -> PeerAccount:
    """Charge a produce that may wait for its replicas; raises ThrottlingQuotaExceededError."""
    if isinstance(responder, PeerResponder):
        return responder.ledger.wait(responder._peer, nbytes)  # noqa: SLF001
    return NO_ACCOUNT


def release_park(acct: PeerAccount, max_bytes: int) -> None:
    """A parked fetch is answered or released: uncharge it."""
    if acct.ledger is not None:
        acct.ledger.unpark(acct, max_bytes)


def release_wait(acct: PeerAccount, nbytes: int) -> None:
    """A produce that waited for its replicas is answered: uncharge it."""
    if acct.ledger is not None:
        acct.ledger.unwait(acct, nbytes)


def _show(peer: bytes) -> str:
    return peer.hex() if len(peer) <= 16 else peer[:16].hex() + "..."


__all__ = [
    "CONGESTED_RETRY_S",
    "MAX_FETCH_BYTES",
    "NO_ACCOUNT",
    "Delivery",
    "PeerAccount",
    "PeerLedger",
    "PeerLimits",
    "PeerResponder",
    "charge_park",
    "charge_wait",
    "deliver",
    "release_park",
    "release_wait",
]
