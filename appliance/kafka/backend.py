"""The Kafka listener's side of the node: Sluice requests to the front endpoint and to
the partition workers, as any client of the node makes them (ipc/protocol.py), over
DEALERs on an asyncio ZeroMQ context (one per endpoint, many requests in flight on
each, replies matched by correlation id). With CURVE keys on the node the context
connects with the node's own key (``Node:N``), as the node's other processes do.

It also keeps what the listener knows of the cluster: each partition's leader worker
endpoint (from ``metadata`` replies, forgotten on ``NOT_LEADER`` and the like) and
each group's coordinator front endpoint (``find_coordinator``).

**On behalf of.** Each Kafka request is made for its client's principal (``User:NAME``
after SASL, else ``User:ANONYMOUS``): the listener sets ``CALLER`` for the request's
task, and every Sluice request made in it carries ``"on_behalf_of": {"principal",
"host"}`` and the client's ``client_id`` in its header. The node's gate
(appliance/gate.py) honours the field because the sender is ``Node:N``, so the workers
and the front authorize and throttle the client exactly as one of their own. Requests
the listener makes for itself (no ``CALLER``: none today) go as ``Node:N``.

Links are kept per (endpoint, principal): a worker that throttles a principal mutes the
connection it came on (ipc/throttle.py, KIP-219), and that must hold up that user's
requests only, not every client of the listener. At most ``MAX_LINKS`` are kept, the
least recently used closed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import zmq
import zmq.asyncio

from ipc import curve, sockets
from ipc.errors import RequestTimedOutError, SluiceError
from ipc.protocol import Reply, encode_request, parse_reply

log = logging.getLogger(__name__)

MAX_LINKS = 4096  # (endpoint, principal) links kept; beyond, the least recently used is closed


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who a Kafka request is made for (set by the listener per request)."""

    principal: str  # "User:alice"
    host: str
    client_id: str | None


CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("kafka_caller", default=None)


class _Link:
    """One DEALER to one endpoint and the requests waiting for its replies."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sock: Any = sockets.dealer(ctx, endpoint)
        self.pending: dict[int, asyncio.Future[Reply]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                frames = await self.sock.recv_multipart(copy=False)
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            try:
                reply = parse_reply(frames)
            except SluiceError as exc:
                log.warning("malformed reply from %s: %s", self.endpoint, exc)
                continue
            fut = self.pending.pop(reply.id, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    def close(self) -> None:
        self.reader.cancel()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(RequestTimedOutError(f"connection to {self.endpoint} closed"))
        self.sock.close(0)


class Backend:
    def __init__(self, front: str, security: Any = None, node_id: int = 0) -> None:
        self.front = front
        self.ctx = zmq.asyncio.Context()
        self.ctx.set(zmq.MAX_SOCKETS, MAX_LINKS + 64)  # pitfall 13: 1,023 by default
        if security is not None and security.uses_curve:
            server, node = security.load(node_id)
            sockets.secure(self.ctx, client=curve.ClientKeys(server.public, node.public, node.secret))
        self._links: dict[tuple[str, str], _Link] = {}
        self._ids = itertools.count(1)
        self.leaders: dict[tuple[str, int], str] = {}  # (topic, partition) -> leader worker endpoint
        self.coordinators: dict[str, str] = {}  # group -> coordinator front endpoint

    def _link(self, endpoint: str, caller: Caller | None) -> _Link:
        key = (endpoint, caller.principal if caller is not None else "")
        link = self._links.pop(key, None)  # re-inserted last: the dict's order is least recently used first
        if link is None:
            if len(self._links) >= MAX_LINKS:
                oldest = next(iter(self._links))
                self._links.pop(oldest).close()
            link = _Link(self.ctx, endpoint)
        self._links[key] = link
        return link

    @staticmethod
    def _header(caller: Caller | None, api: str, cid: int, fields: dict[str, Any]) -> bytes:
        if caller is None:
            return encode_request(api, cid, **fields)
        obo = {"principal": caller.principal, "host": caller.host}
        return encode_request(api, cid, **{"on_behalf_of": obo, "client_id": (caller.client_id or "")[:255], **fields})

    async def request(
        self, endpoint: str, api: str, timeout_s: float, frames: Sequence[Any] = (), **fields: Any
    ) -> Reply:
        """Send and wait for the reply (``RequestTimedOutError`` after ``timeout_s``)."""
        caller = CALLER.get()
        link = self._link(endpoint, caller)
        cid = next(self._ids)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        link.pending[cid] = fut
        await link.sock.send_multipart([self._header(caller, api, cid, fields), *frames], copy=False)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise RequestTimedOutError(f"no reply to {api} from {endpoint} within {timeout_s:.1f} s") from None
        finally:
            link.pending.pop(cid, None)

    async def send_only(self, endpoint: str, api: str, frames: Sequence[Any] = (), **fields: Any) -> None:
        """A request whose reply nobody waits for (a produce with acks=0)."""
        caller = CALLER.get()
        header = self._header(caller, api, next(self._ids), fields)
        await self._link(endpoint, caller).sock.send_multipart([header, *frames])

    async def call(self, api: str, timeout_s: float = 30.0, endpoint: str | None = None, **fields: Any) -> Reply:
        """A front request (to this node's front endpoint unless ``endpoint``)."""
        return await self.request(endpoint or self.front, api, timeout_s, **fields)

    # ---- what the listener knows of the cluster ---------------------------------------------
    def learn(self, metadata: dict[str, Any]) -> None:
        for t in metadata.get("topics", []):
            for p in t.get("partitions") or []:
                key = (t["topic"], p["partition"])
                if p.get("endpoint"):
                    self.leaders[key] = p["endpoint"]
                else:
                    self.leaders.pop(key, None)

    async def leader(self, topic: str, partition: int) -> str | None:
        """The partition's leader worker endpoint; the metadata asked once when unknown."""
        endpoint = self.leaders.get((topic, partition))
        if endpoint is None:
            reply = await self.call("metadata", topics=[topic], allow_auto_create=False)
            if reply.error is None:
                self.learn(reply.fields)
            endpoint = self.leaders.get((topic, partition))
        return endpoint

    def forget(self, topic: str, partition: int) -> None:
        self.leaders.pop((topic, partition), None)

    async def coordinator(self, group: str) -> str:
        """The group's coordinator front endpoint (``find_coordinator``, cached)."""
        endpoint = self.coordinators.get(group)
        if endpoint is None:
            reply = await self.call("find_coordinator", group=group)
            reply.raise_for_error()
            endpoint = self.coordinators[group] = str(reply.fields["endpoint"])
        return endpoint

    async def group_call(self, api: str, group: str, timeout_s: float = 30.0, **fields: Any) -> Reply:
        """A group API at the group's coordinator; a moved coordinator is looked up next time."""
        try:
            endpoint = await self.coordinator(group)
        except SluiceError as exc:
            return Reply(0, {}, [], exc)
        reply = await self.request(endpoint, api, timeout_s, group=group, **fields)
        if reply.error is not None and reply.error.code in ("NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE"):
            self.coordinators.pop(group, None)
        return reply

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        with contextlib.suppress(zmq.ZMQError):
            self.ctx.destroy(0)
