"""The partition worker's side of the same-host path (``ipc/samehost.py``; issue 18).

``SameHostSessions`` holds this worker's sessions: for each, the request ring it reads,
the reply ring it writes, the doorbell it listens on and the client's. It plugs into
the worker at four points and serves nothing itself:

- ``open`` is the ``same_host_open`` handler (in the worker's handler table, reached
  through the pipeline: authenticated, authorized, answered like any request);
- ``on_events`` (the loop, after its poll): for each session whose doorbell rang, the
  messages of its request ring go to the pipeline's ``handle`` as ``[peer, header,
  *data]``, exactly as the ROUTER's messages do, so produce, fetch and the rest run the
  same code (validation, append, idempotence, purgatory, quotas);
- ``deliver`` (the ``PeerLedger``'s delivery for a ring peer): a reply goes into the
  session's reply ring and rings the client; a full ring is ``Delivery.FULL`` (the
  ledger keeps the reply in its bounded backlog and tries again), a closed session
  ``Delivery.GONE``;
- ``authenticate`` wraps the gate's: a ring peer is the principal that opened the
  session, on loopback.

A session ends when its client's end of the doorbell hangs up (the client closed or
died), when its client's pid is gone (``tick``), when a ring is not consistent, a reply
cannot fit its ring, or when the worker stops; its files are removed then, and at start
every file left in the directory by an earlier worker of the slot. What the rings cost
is at most ``MAX_SESSIONS`` sessions of the sizes ``same_host_open`` allows, and what
they hold is published in the gauge ``sluice_same_host_ring_bytes``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from appliance.gate import is_loopback
from appliance.process import pid_alive
from ipc.errors import InvalidRequestError, ThrottlingQuotaExceededError
from ipc.peers import Delivery
from ipc.private import make_private_dir
from ipc.protocol import ANONYMOUS, Frame, Principal, Request, Response
from ipc.ring import FifoDoorbell, Ring, RingCorruptError, RingError, file_size
from ipc.samehost import MAX_SESSIONS, is_ring_peer, pack_frames, ring_peer, unpack_frames

log = logging.getLogger(__name__)

BURST = 256  # messages taken from one session per pass of the loop


class Session:
    __slots__ = ("token", "peer", "pid", "principal", "host", "requests", "replies", "bell", "client_bell", "paths")

    def __init__(
        self, token: int, pid: int, principal: Principal, host: str, directory: str, sizes: tuple[int, int]
    ) -> None:
        self.token = token
        self.peer = ring_peer(token)
        self.pid = pid
        self.principal = principal
        self.host = host
        base = os.path.join(directory, f"{token:016x}")
        self.paths = {k: f"{base}.{k}" for k in ("req", "rep", "wbell", "cbell")}
        self.requests = Ring.create(self.paths["req"], sizes[0], token=token)
        self.replies = Ring.create(self.paths["rep"], sizes[1], token=token)
        FifoDoorbell.create(self.paths["cbell"])
        FifoDoorbell.create(self.paths["wbell"])
        self.bell = FifoDoorbell.listen(self.paths["wbell"])
        self.client_bell: FifoDoorbell | None = None  # connected at the first reply

    def bytes(self) -> int:
        return file_size(self.requests.capacity) + file_size(self.replies.capacity)

    def close(self) -> None:
        for closeable in (self.requests, self.replies, self.bell, self.client_bell):
            if closeable is not None:
                closeable.close()
        for path in self.paths.values():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class SameHostSessions:
    def __init__(
        self,
        name: str,
        directory: str,
        poller: Any,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.poller = poller
        self.handle: Callable[[Sequence[Any]], None] = lambda frames: None  # the worker sets the pipeline's
        self.on_bytes = on_bytes  # the ring-memory gauge
        self.sessions: dict[bytes, Session] = {}
        self._by_fd: dict[int, Session] = {}
        shutil.rmtree(directory, ignore_errors=True)  # an earlier worker's sessions are over
        make_private_dir(directory)

    # ---- the handler ----------------------------------------------------------------------
    def open(self, req: Request) -> Response:
        """``same_host_open``: a new session for the requesting principal (see the module)."""
        if not is_loopback(req.host) or not req.host:
            raise InvalidRequestError(
                f"{self.name}: the same-host path serves clients on this host (loopback) only, "
                f"not {req.host or 'an unknown address'}: use TCP"
            )
        if len(self.sessions) >= MAX_SESSIONS:
            raise ThrottlingQuotaExceededError(
                f"{self.name}: {MAX_SESSIONS} same-host sessions already open; use TCP or close one"
            )
        f = req.fields
        token = secrets.randbits(64)
        try:
            sizes = ((f["request_bytes"] + 63) & ~63, (f["reply_bytes"] + 63) & ~63)  # whole cache lines
            s = Session(token, f["pid"], req.principal or ANONYMOUS, req.host, self.directory, sizes)
        except (OSError, RingError) as exc:
            raise InvalidRequestError(f"{self.name}: cannot make a same-host session: {exc}") from None
        self.sessions[s.peer] = s
        self._by_fd[s.bell.fileno()] = s
        self.poller.register(s.bell.fileno(), 1)  # zmq.POLLIN
        self._gauge()
        log.info("%s: same-host session %016x opened for %s (pid %d)", self.name, token, req.principal, s.pid)
        return Response(
            {
                "token": token,
                "request_ring": s.paths["req"],
                "reply_ring": s.paths["rep"],
                "worker_bell": s.paths["wbell"],
                "client_bell": s.paths["cbell"],
            }
        )

    # ---- the loop -------------------------------------------------------------------------
    def on_events(self, events: dict[Any, int]) -> None:
        """Serve the sessions whose doorbell rang, and those left with requests after
        their last burst (``busy``)."""
        for fd, s in list(self._by_fd.items()):
            if fd in events or s.requests.used():
                self._serve(s, fd in events)

    def _serve(self, s: Session, polled: bool) -> None:
        alive = s.bell.drain(polled)  # a client gone before its first ring hangs up too (no busy poll)
        try:
            for _ in range(BURST):
                payload = s.requests.read()
                if payload is None:
                    break
                self.handle([s.peer, *unpack_frames(payload)])
                if s.peer not in self.sessions:  # closed while serving (a reply that did not fit)
                    return
        except RingCorruptError as exc:
            log.warning("%s: same-host session %016x closed: %s", self.name, s.token, exc.message)
            self.close(s)
            return
        if not alive and s.requests.used() == 0:
            log.info("%s: same-host session %016x closed: its client hung up", self.name, s.token)
            self.close(s)

    def busy(self) -> bool:
        """Whether a session has requests left after its burst (poll again at once)."""
        return any(s.requests.used() for s in self.sessions.values())

    def tick(self) -> None:
        for s in list(self.sessions.values()):
            if not pid_alive(s.pid):
                log.info("%s: same-host session %016x closed: pid %d is gone", self.name, s.token, s.pid)
                self.close(s)

    # ---- the pipeline's hooks ---------------------------------------------------------------
    def deliver(self, peer: bytes, frames: list[Any]) -> Delivery:
        s = self.sessions.get(peer)
        if s is None:
            return Delivery.GONE
        parts = pack_frames(frames)
        try:
            if not s.replies.write(parts):
                return Delivery.FULL
        except RingError as exc:  # longer than the reply ring takes: the client goes back to TCP
            log.warning("%s: same-host session %016x closed: %s", self.name, s.token, exc.message)
            self.close(s)
            return Delivery.GONE
        try:
            if s.client_bell is None:
                s.client_bell = FifoDoorbell.connect(s.paths["cbell"])
            s.client_bell.ring()
        except (RingError, BrokenPipeError) as exc:
            log.info("%s: same-host session %016x closed: its client is gone (%s)", self.name, s.token, exc)
            self.close(s)
            return Delivery.GONE
        return Delivery.SENT

    def authenticate(
        self, inner: Callable[[bytes, Frame], tuple[Principal, str]]
    ) -> Callable[[bytes, Frame], tuple[Principal, str]]:
        sessions = self.sessions

        def authenticate(peer: bytes, header: Frame) -> tuple[Principal, str]:
            if len(peer) > 255 and is_ring_peer(peer):
                s = sessions.get(peer)
                if s is not None:
                    return s.principal, s.host
            return inner(peer, header)

        return authenticate

    # ---- ending -----------------------------------------------------------------------------
    def close(self, s: Session) -> None:
        if self.sessions.pop(s.peer, None) is None:
            return
        fd = s.bell.fileno()
        self._by_fd.pop(fd, None)
        self.poller.unregister(fd)
        s.close()
        self._gauge()

    def close_all(self) -> None:
        for s in list(self.sessions.values()):
            self.close(s)

    def _gauge(self) -> None:
        self.on_bytes(sum(s.bytes() for s in self.sessions.values()))
