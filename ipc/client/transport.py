"""Client-side transport: bootstrap endpoints and request/reply channels over DEALER.

A ``Channel`` is one DEALER connected to one endpoint, used by one thread. Requests
carry a correlation id; replies are matched by it, so several requests may be in
flight on one channel. The zmq module is injectable (``zmq.green`` under gevent, for
locust) — everything else in the client gets its sockets through here.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import zmq as _zmq

from ipc import sockets
from ipc.errors import RequestTimedOutError, SluiceError
from ipc.protocol import Reply, encode_request, parse_reply

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "tcp://127.0.0.1:6100"
_ENDPOINT = re.compile(r"^(tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):\d{1,5}|ipc://.+)$")

Bootstrap = str | Sequence[str] | None


def parse_bootstrap(bootstrap: Bootstrap) -> list[str]:
    """Endpoints from ``"tcp://a:6100,tcp://b:6100"``, a list, or ``$SLUICE_BOOTSTRAP``."""
    if bootstrap is None:
        bootstrap = os.environ.get("SLUICE_BOOTSTRAP") or DEFAULT_BOOTSTRAP
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    endpoints = [str(e).strip() for e in items if str(e).strip()]
    if not endpoints:
        raise ValueError("bootstrap: no endpoint given (expected tcp://HOST:PORT[,tcp://HOST:PORT...])")
    for e in endpoints:
        if not _ENDPOINT.match(e):
            raise ValueError(f"bootstrap endpoint {e!r} is invalid: expected tcp://HOST:PORT")
    return endpoints


def check_ints(*options: tuple[str, Any, int]) -> None:
    """Refuse any (name, value, minimum) whose value is not an int (bools are not) >= minimum."""
    for name, value, lo in options:
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name}={value!r}: must be an integer >= {lo}")


_ids = itertools.count(1)


def next_id() -> int:
    return next(_ids)


class Channel:
    def __init__(self, ctx: Any, endpoint: str, zmq_module: ModuleType = _zmq) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.zmq = zmq_module
        self.sock: Any = sockets.dealer(ctx, endpoint)
        self.monitor: Any = None

    def send(self, api: str, frames: Sequence[Any] = (), **fields: Any) -> int:
        cid = next_id()
        header = encode_request(api, cid, **fields)
        if frames:
            self.sock.send_multipart([header, *frames], copy=False)
        else:
            self.sock.send(header)
        return cid

    def recv_nowait(self) -> Reply | None:
        try:
            frames = self.sock.recv_multipart(flags=self.zmq.NOBLOCK, copy=False)
        except self.zmq.Again:
            return None
        return parse_reply(frames)

    def replies(self, limit: int = 1000) -> Iterator[Reply]:
        """The replies waiting on the socket (at most ``limit``), skipping malformed ones."""
        for _ in range(limit):
            try:
                reply = self.recv_nowait()
            except SluiceError as exc:
                log.warning("malformed reply from %s: %s", self.endpoint, exc)
                continue
            if reply is None:
                return
            yield reply

    def request(
        self, api: str, timeout_s: float, frames: Sequence[Any] = (), fail_fast: bool = False, **fields: Any
    ) -> Reply:
        """Send and wait for the matching reply; RequestTimedOutError after ``timeout_s``,
        or as soon as the connection is refused or drops when ``fail_fast``."""
        if fail_fast:
            self.watch_disconnects()
        cid = self.send(api, frames, **fields)
        deadline = time.monotonic() + timeout_s
        poller = self.zmq.Poller()
        poller.register(self.sock, self.zmq.POLLIN)
        if fail_fast:
            poller.register(self.monitor, self.zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            events = dict(poller.poll(left * 1000)) if left > 0 else {}
            if fail_fast and self.monitor in events and self.disconnected():
                self.reset()
                raise RequestTimedOutError(f"{self.endpoint} refused or dropped the connection ({api})")
            if self.sock not in events:
                if time.monotonic() < deadline:
                    continue
                self.reset()  # drop the queued request so it is not delivered late
                raise RequestTimedOutError(f"no reply to {api} from {self.endpoint} within {timeout_s:.1f} s")
            reply = self.recv_nowait()
            if reply is not None and reply.id == cid:
                return reply

    def reset(self) -> None:
        """Close and reconnect: queued requests are dropped, late replies never arrive."""
        self._close_monitor()
        self.sock.close(0)
        self.sock = sockets.dealer(self.ctx, self.endpoint)

    def watch_disconnects(self) -> Any:
        """A PAIR socket that becomes readable when the connection drops or a connect is
        refused (the peer process died): requests in flight on it will never be answered, so callers need not wait
        for their timeout. Call ``disconnected()`` when it is readable."""
        if self.monitor is None:
            self.monitor = self.sock.get_monitor_socket(self._gone_events)
        return self.monitor

    @property
    def _gone_events(self) -> int:
        # a dropped connection, or a connect refused (the node is down: its address
        # answers, its port does not), so requests to a dead node fail fast too
        return int(self.zmq.EVENT_DISCONNECTED | self.zmq.EVENT_CONNECT_RETRIED)

    def disconnected(self) -> bool:
        """Drain the monitor; True if a disconnect was reported."""
        seen = False
        while self.monitor is not None:
            try:
                frames = self.monitor.recv_multipart(flags=self.zmq.NOBLOCK)
            except self.zmq.Again:
                break
            if frames and len(frames[0]) >= 2 and int.from_bytes(frames[0][:2], "little") & self._gone_events:
                seen = True
        return seen

    def _close_monitor(self) -> None:
        if self.monitor is not None:
            try:
                self.sock.disable_monitor()
            except self.zmq.ZMQError:
                pass
            self.monitor.close(0)
            self.monitor = None

    def close(self) -> None:
        self._close_monitor()
        self.sock.close(0)


class ChannelPool:
    """One thread's channels, by endpoint, each registered in that thread's poller
    (with its disconnect monitor when ``watch_disconnects``)."""

    def __init__(self, ctx: Any, poller: Any, zmq_module: ModuleType = _zmq, watch_disconnects: bool = True) -> None:
        self.ctx = ctx
        self.poller = poller
        self.zmq = zmq_module
        self.watch = watch_disconnects
        self.channels: dict[str, Channel] = {}

    def get(self, endpoint: str) -> Channel:
        ch = self.channels.get(endpoint)
        if ch is None:
            ch = self.channels[endpoint] = Channel(self.ctx, endpoint, self.zmq)
            self._register(ch)
        return ch

    def _register(self, ch: Channel) -> None:
        self.poller.register(ch.sock, self.zmq.POLLIN)
        if self.watch:
            self.poller.register(ch.watch_disconnects(), self.zmq.POLLIN)

    def reset(self, ch: Channel) -> None:
        """``Channel.reset`` keeping the poller registrations right."""
        self.poller.unregister(ch.sock)
        if ch.monitor is not None:
            self.poller.unregister(ch.monitor)
        ch.reset()
        self._register(ch)

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self.channels.values()))

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


class BootstrapChannel:
    """Requests to the front endpoint of any bootstrap node, failing over in turn."""

    def __init__(self, ctx: Any, endpoints: list[str], zmq_module: ModuleType = _zmq) -> None:
        self.endpoints = endpoints
        self.ctx = ctx
        self.zmq = zmq_module
        self._i = 0
        self._chan: Channel | None = None

    def request(self, api: str, timeout_s: float, **fields: Any) -> Reply:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        for _ in range(max(1, len(self.endpoints)) * 3):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self._chan is None:
                self._chan = Channel(self.ctx, self.endpoints[self._i % len(self.endpoints)], self.zmq)
            several = len(self.endpoints) > 1
            per_try = min(left, max(1.0, timeout_s / len(self.endpoints))) if several else left
            try:  # with other nodes to try, a refused connection moves on at once
                return self._chan.request(api, per_try, fail_fast=several, **fields)
            except RequestTimedOutError as exc:
                last = exc
                self._chan.close()
                self._chan = None
                self._i += 1
        raise RequestTimedOutError(
            f"no node answered {api} within {timeout_s:.1f} s (tried {', '.join(self.endpoints)})"
            + (f": {last}" if last else "")
        )

    def learn(self, endpoints: list[Any]) -> None:
        """Add nodes the cluster told us about (metadata's brokers), as Kafka clients
        do: the bootstrap list only has to name one live node."""
        new = [e for e in endpoints if isinstance(e, str) and e and e not in self.endpoints]
        if new:
            self.endpoints = self.endpoints + new  # a new list: other threads may hold the old one

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None
