"""The client's side of the same-host path (``ipc/samehost.py``; docs/architecture.md).

Opt-in: ``Producer(..., same_host=True)`` / ``Consumer(..., same_host=True)``. For
each partition worker it sends to, the client asks once over its TCP channel for a
session (``same_host_open``); if the worker agrees (the client is on its host, as the
node's user, and allowed to DESCRIBE the topic) every later request to that worker
goes through the session's rings and the answer comes back through them. If it does
not (another host or network namespace, another user, an old node, no room), the client
logs why once and keeps TCP for that worker for ``RETRY_OPEN_S``.

``SameHostChannel`` looks like a ``transport.Channel`` to the sender and the fetcher:
``send`` (None when the request ring has no room now: the caller keeps its batches and
tries again), ``replies``, ``sock`` (the client doorbell's fd, for their poller),
``endpoint`` and ``gone`` (the worker's end of the doorbell hung up: it died or ended
the session; what was in flight is retried like after a lost connection).
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from ipc.client.client_id import header_tail
from ipc.client.transport import Channel, next_id
from ipc.errors import RequestTimedOutError, SluiceError
from ipc.protocol import Reply, encode_request, parse_reply
from ipc.ring import FifoDoorbell, Ring, RingError
from ipc.samehost import REPLY_RING_BYTES, REQUEST_RING_BYTES, pack_frames, unpack_frames

log = logging.getLogger(__name__)

RETRY_OPEN_S = 30.0  # a worker that refused a session is asked again after this
OPEN_TIMEOUT_S = 5.0


class SameHostChannel:
    """One session with one partition worker (see the module docstring)."""

    monitor = None  # no ZeroMQ monitor: a hang-up of the doorbell is the disconnect

    def __init__(self, ctx: Any, endpoint: str, fields: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.gone = False
        self.closed = False
        self.polled = False
        self._tail = header_tail(ctx)
        token = fields.get("token")
        paths = [fields.get(k) for k in ("request_ring", "reply_ring", "worker_bell", "client_bell")]
        if not isinstance(token, int) or not all(isinstance(p, str) for p in paths):
            raise RingError(f"{endpoint}: a same_host_open reply without its token and paths: {sorted(fields)}")
        self.requests = Ring.attach(str(paths[0]), token)
        try:
            self.replies_ring = Ring.attach(str(paths[1]), token)
            self.bell = FifoDoorbell.listen(str(paths[3]))  # before the first request: the worker rings it
            self.worker_bell = FifoDoorbell.connect(str(paths[2]))
        except BaseException:
            self.close()
            raise
        self.sock = self.bell.fileno()

    def send(self, api: str, frames: Sequence[Any] = (), **fields: Any) -> int | None:
        cid = next_id()
        header = encode_request(api, cid, **fields)
        if self._tail is not None and "client_id" not in fields:
            header = header[:-1] + self._tail
        if not self.requests.write(pack_frames([header, *frames])):
            return None
        try:
            self.worker_bell.ring()
        except BrokenPipeError:
            self.gone = True  # the worker is gone: the request waits for the sender's retry
        return cid

    def replies(self, limit: int = 1000) -> Iterator[Reply]:
        """The replies in the ring. After the poll reported the doorbell (``polled``, set
        by ``SameHostLinks.ready``) an end of file means the worker has gone, even before
        it first rang."""
        polled, self.polled = self.polled, False
        if not self.bell.drain(polled):
            self.gone = True
        for _ in range(limit):
            payload = self.replies_ring.read()
            if payload is None:
                return
            try:
                yield parse_reply(unpack_frames(payload))
            except SluiceError as exc:
                log.warning("malformed reply through the same-host ring of %s: %s", self.endpoint, exc)

    def request(self, api: str, timeout_s: float, frames: Sequence[Any] = (), **fields: Any) -> Reply:
        """Send and wait for the matching reply (a blocking call, as ``Channel.request``);
        ``RequestTimedOutError`` after ``timeout_s`` or when the worker hangs up."""
        deadline = time.monotonic() + timeout_s
        cid = None
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        for _ in range(1_000_000):  # bounded by the deadline in practice
            left = deadline - time.monotonic()
            if left <= 0 or self.gone:
                break
            if cid is None:
                cid = self.send(api, frames, **fields)
            for reply in self.replies():
                if reply.id == cid:
                    return reply
            if self.gone:
                break
            poller.poll(max(1, int(min(left, 0.001 if cid is None else left) * 1000)))
        raise RequestTimedOutError(f"no reply to {api} through the same-host ring of {self.endpoint}")

    def close(self) -> None:
        self.closed = True
        for attr in ("requests", "replies_ring", "bell", "worker_bell"):
            obj = getattr(self, attr, None)
            if obj is not None:
                obj.close()


class SameHostLinks:
    """A client's sessions, one per worker endpoint, and the endpoints that refused one."""

    def __init__(
        self,
        ctx: Any,
        poller: Any,
        zmq_module: ModuleType,
        request_bytes: int = REQUEST_RING_BYTES,
        reply_bytes: int = REPLY_RING_BYTES,
    ) -> None:
        self.ctx = ctx
        self.poller = poller
        self.zmq = zmq_module
        self.request_bytes = request_bytes
        self.reply_bytes = reply_bytes
        self.links: dict[str, SameHostChannel] = {}
        self.refused: dict[str, float] = {}  # endpoint -> when to ask again

    def get(self, endpoint: str, topic: str, partition: int) -> SameHostChannel | None:
        """The session with ``endpoint``'s worker, opened now if need be; None: use TCP."""
        link = self.links.get(endpoint)
        if link is not None:
            return link
        now = time.monotonic()
        if self.refused.get(endpoint, 0.0) > now:
            return None
        try:
            link = self._open(endpoint, topic, partition)
        except (SluiceError, OSError) as exc:
            self.refused[endpoint] = now + RETRY_OPEN_S
            log.info("same-host path to %s-%d at %s not available, using TCP: %s", topic, partition, endpoint, exc)
            return None
        self.refused.pop(endpoint, None)
        self.links[endpoint] = link
        self.poller.register(link.sock, self.zmq.POLLIN)
        log.info("same-host path to %s-%d at %s", topic, partition, endpoint)
        return link

    def _open(self, endpoint: str, topic: str, partition: int) -> SameHostChannel:
        ch = Channel(self.ctx, endpoint, self.zmq, watch=False)
        try:
            reply = ch.request(
                "same_host_open",
                OPEN_TIMEOUT_S,
                fail_fast=True,
                topic=topic,
                partition=partition,
                pid=os.getpid(),
                request_bytes=self.request_bytes,
                reply_bytes=self.reply_bytes,
            )
        finally:
            ch.close()
        reply.raise_for_error()
        return SameHostChannel(self.ctx, endpoint, reply.fields)

    def ready(self, events: dict[Any, int]) -> list[SameHostChannel]:
        """The sessions whose doorbell the poll reported."""
        out = [link for link in self.links.values() if link.sock in events]
        for link in out:
            link.polled = True
        return out

    def drop(self, link: SameHostChannel, why: str) -> None:
        """End a session (its worker went away or ended it, or a request got no answer);
        requests to the endpoint go over TCP for ``RETRY_OPEN_S``, then a new session is
        asked for (so a worker that keeps ending sessions, say for a reply longer than
        the ring, is not asked again at every request)."""
        if self.links.get(link.endpoint) is link:
            del self.links[link.endpoint]
            self.poller.unregister(link.sock)
            self.refused[link.endpoint] = time.monotonic() + RETRY_OPEN_S
            log.info("same-host session with %s ended (%s): TCP for %.0f s", link.endpoint, why, RETRY_OPEN_S)
        link.close()

    def __iter__(self) -> Iterator[SameHostChannel]:
        return iter(list(self.links.values()))

    def close(self) -> None:
        for link in list(self.links.values()):
            self.drop(link, "the client closed")


def lost(link: SameHostChannel) -> RequestTimedOutError:
    return RequestTimedOutError(f"the same-host session with {link.endpoint} ended with the request in flight")
