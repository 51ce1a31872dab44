"""Client-side transport: bootstrap endpoints and request/reply channels over DEALER.

A ``Channel`` is one DEALER connected to one endpoint, used by one thread. Requests
carry a correlation id; replies are matched by it, so several requests may be in
flight on one channel. The zmq module is injectable (``zmq.green`` under gevent, for
locust) — everything else in the client gets its sockets through here.

Liveness (issue 20): a watched channel keeps a ``Connection`` state from its socket
monitor's events (``next_connection``): ``CONNECTING`` until ZeroMQ reports the TCP
connection, ``UP`` once it does, ``DOWN`` after a drop (``EVENT_DISCONNECTED``) or a
failed attempt (``EVENT_CONNECT_RETRIED``: refused, unreachable), ``UP`` again when a
reconnect succeeds. ZeroMQ retries a dead endpoint about once a second forever, so a
``DOWN`` channel is not one more failure each second: it means "the metadata naming
this endpoint is stale". The fetcher and the sender do not send to a ``DOWN`` endpoint;
they refresh metadata with ``backoff_s`` instead. The state costs nothing per request:
it changes only on monitor events, which come per connection, not per message.

Scale: each partition's worker has its own endpoint, so a client talking to N
partitions holds N DEALERs, and a watched one a monitor each (three sockets per
channel; libzmq's monitor is a PAIR, one per monitored socket, and cannot be shared
without its draft API). ``client_context`` therefore raises the context's socket limit
from ZeroMQ's default of 1,023 to what the process may open (``socket_limit``), after
raising the soft ``RLIMIT_NOFILE`` up to the hard limit (at most 65,536): a consumer of
1,000 partitions holds about 3,000 sockets and 4,000 file descriptors.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import re
import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import zmq as _zmq

from ipc import curve, sockets
from ipc.client.client_id import header_tail, set_client_id
from ipc.errors import AuthenticationError, InvalidConfigError, RequestTimedOutError, SluiceError
from ipc.protocol import Reply, encode_request, parse_reply

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "tcp://127.0.0.1:6100"
_ENDPOINT = re.compile(r"^(tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):\d{1,5}|ipc://.+)$")

Bootstrap = str | Sequence[str] | None


def parse_bootstrap(bootstrap: Bootstrap, bootstrap_servers: Bootstrap = None) -> list[str]:
    """Endpoints from ``"tcp://a:6100,tcp://b:6100"``, a list, or ``$SLUICE_BOOTSTRAP``.
    A plain ``HOST:PORT`` (as Kafka's ``bootstrap_servers``) means ``tcp://HOST:PORT``.
    ``bootstrap_servers`` is kafka-python's name for the same argument (one of them)."""
    if bootstrap_servers is not None:
        if bootstrap is not None:
            raise ValueError("give bootstrap or bootstrap_servers (kafka-python's name for it), not both")
        bootstrap = bootstrap_servers
    if bootstrap is None:
        bootstrap = os.environ.get("SLUICE_BOOTSTRAP") or DEFAULT_BOOTSTRAP
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    endpoints = [str(e).strip() for e in items if str(e).strip()]
    endpoints = [e if "://" in e else f"tcp://{e}" for e in endpoints]
    if not endpoints:
        raise ValueError("bootstrap: no endpoint given (expected tcp://HOST:PORT[,tcp://HOST:PORT...])")
    for e in endpoints:
        if not _ENDPOINT.match(e):
            raise ValueError(f"bootstrap endpoint {e!r} is invalid: expected tcp://HOST:PORT")
    return endpoints


Security = Mapping[str, str] | None
SECURITY_OPTIONS = ("server_public_key", "secret_key_file")


def client_context(zmq_module: ModuleType = _zmq, security: Security = None, client_id: str | None = None) -> Any:
    """A client's ZeroMQ context, its requests carrying ``client_id`` (ipc/client/client_id.py);
    with ``security`` (or ``$SLUICE_SERVER_KEY`` and
    ``$SLUICE_SECRET_KEY_FILE``) every TCP socket it makes connects with CURVE:
    ``{"server_public_key": Z85 text or a .key file, "secret_key_file": a .key_secret file}``."""
    if security is None and os.environ.get("SLUICE_SERVER_KEY"):
        security = {
            "server_public_key": os.environ["SLUICE_SERVER_KEY"],
            "secret_key_file": os.environ.get("SLUICE_SECRET_KEY_FILE", ""),
        }
    keys = None
    if security is not None:
        unknown = set(security) - set(SECURITY_OPTIONS)
        if unknown or not all(isinstance(security.get(k), str) and security.get(k) for k in SECURITY_OPTIONS):
            raise InvalidConfigError(
                f"security: expected {{'server_public_key': ..., 'secret_key_file': ...}}, got keys {sorted(security)}"
            )
        own = curve.load_key_file(security["secret_key_file"], secret=True)
        keys = curve.ClientKeys(curve.load_public_key(security["server_public_key"]), own.public, own.secret)
    ctx = zmq_module.Context()
    ctx.set(zmq_module.MAX_SOCKETS, socket_limit(zmq_module, ctx))  # before the first socket
    if keys is not None:
        sockets.secure(ctx, client=keys)
    if client_id is not None:
        set_client_id(ctx, client_id)
    return ctx


# A context holds at most 1,023 sockets by default, and a watched channel is three (its
# DEALER, its monitor's PAIR, and libzmq's own PAIR that feeds it): a consumer of 400
# partitions, each on its own worker's endpoint, failed with "Too many open files"
# (../shared/pitfalls.md item 13). Each socket holds at least one file descriptor.
WANTED_NOFILE = 65536


def raise_nofile_limit(wanted: int = WANTED_NOFILE) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``wanted``, never above the
    hard limit and never lowering it; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # a sandbox that refuses: keep what we have
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft if soft != resource.RLIM_INFINITY else wanted


def socket_limit(zmq_module: ModuleType, ctx: Any) -> int:
    """The number of sockets a client context may hold: as many as the process may
    open files (raised first, ``raise_nofile_limit``), within libzmq's own limit."""
    return max(1023, min(int(ctx.get(zmq_module.SOCKET_LIMIT)), raise_nofile_limit()))


def check_ints(*options: tuple[str, Any, int]) -> None:
    """Refuse any (name, value, minimum) whose value is not an int (bools are not) >= minimum."""
    for name, value, lo in options:
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name}={value!r}: must be an integer >= {lo}")


RETRY_BACKOFF_MAX_S = 1.0  # as Kafka's retry.backoff.max.ms


def backoff_s(base_s: float, failures: int, cap_s: float = RETRY_BACKOFF_MAX_S) -> float:
    """The wait before the next attempt after ``failures`` consecutive failures:
    ``base_s × 2^(failures−1)``, capped at ``cap_s`` (never below ``base_s``, never
    negative; 0 failures: no wait)."""
    if failures <= 0 or base_s <= 0:
        return 0.0
    return max(base_s, min(base_s * 2.0 ** min(failures - 1, 30), cap_s))


class Connection(enum.Enum):
    """A channel's connection, as its socket monitor reports it."""

    CONNECTING = "connecting"  # a new (or reset) socket: connecting, requests are queued
    UP = "up"  # connected
    DOWN = "down"  # dropped, or the last connection attempt failed: metadata is stale


def next_connection(state: Connection, event: int, zmq_module: ModuleType = _zmq) -> Connection:
    """The state after one monitor event: a drop or a failed attempt means DOWN, a
    connection UP; anything else changes nothing."""
    if event & (zmq_module.EVENT_DISCONNECTED | zmq_module.EVENT_CONNECT_RETRIED):
        return Connection.DOWN
    if event & zmq_module.EVENT_CONNECTED:
        return Connection.UP
    return state


_ids = itertools.count(1)


def next_id() -> int:
    return next(_ids)


class Channel:
    _client_id_tail: bytes | None = None  # ',"client_id":"..."}' ending every header (set_client_id)

    def __init__(self, ctx: Any, endpoint: str, zmq_module: ModuleType = _zmq, watch: bool = True) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.zmq = zmq_module
        self.monitor: Any = None
        self.connection = Connection.CONNECTING
        self.pool: ChannelPool | None = None  # keeps its poller right across a reset
        self.refused: AuthenticationError | None = None  # the last handshake the node refused
        self.gone = False  # the last request failed fast: the connection was refused or dropped
        self._unexplained = 0  # handshakes failed without detail since the last one succeeded
        self._tcp_up = False  # a TCP connection was made since the last retry was scheduled
        self.sock: Any = None
        self._client_id_tail = header_tail(ctx)  # encoded once per channel
        self._connect(watch)

    def _connect(self, watch: bool) -> None:
        """A new DEALER; with ``watch`` its monitor is attached *before* it connects:
        libzmq never retries a handshake the node refused, so a refusal that happened
        before the first request would otherwise be missed and the request would wait
        for its whole timeout instead of failing at once."""
        self.sock = sockets.dealer(self.ctx, self.endpoint, connect=False)
        if watch:
            self.watch_disconnects()
        self.sock.connect(self.endpoint)

    def send(self, api: str, frames: Sequence[Any] = (), **fields: Any) -> int:
        cid = next_id()
        header = encode_request(api, cid, **fields)
        if self._client_id_tail is not None and "client_id" not in fields:  # join_group names its own
            header = header[:-1] + self._client_id_tail
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
        self.watch_disconnects()  # a refused handshake fails every request at once
        self.disconnected()  # events from before this request only update the state
        self.raise_refused()
        self.gone = False
        if fail_fast and self.connection is Connection.DOWN:
            self.gone = True
            raise RequestTimedOutError(f"{self.endpoint} refused or dropped the connection ({api})")
        cid = self.send(api, frames, **fields)
        deadline = time.monotonic() + timeout_s
        poller = self.zmq.Poller()
        poller.register(self.sock, self.zmq.POLLIN)
        poller.register(self.monitor, self.zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            events = dict(poller.poll(left * 1000)) if left > 0 else {}
            if self.monitor in events:
                gone = self.disconnected()
                if self.refused is not None:
                    self.reset()
                    self.raise_refused()
                if fail_fast and gone:
                    self.reset()
                    self.gone = True
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
        """Close and reconnect: queued requests are dropped, late replies never arrive.
        A channel of a ``ChannelPool`` stays registered in the pool's poller."""
        pool = self.pool
        if pool is not None:
            pool._unregister(self)
        watched = self.monitor is not None
        self._close_monitor()
        self.sock.close(0)
        self.connection = Connection.CONNECTING
        self._connect(watched)
        if pool is not None:
            pool._register(self)

    @property
    def closed(self) -> bool:
        return bool(self.sock.closed)

    def watch_disconnects(self) -> Any:
        """A PAIR socket that becomes readable when the connection drops or a connect is
        refused (the peer process died): requests in flight on it will never be answered, so callers need not wait
        for their timeout. Call ``disconnected()`` when it is readable."""
        if self.monitor is None:
            events = (
                self._gone_events
                | self.zmq.EVENT_CONNECTED
                | curve.HANDSHAKE_FAILURES
                | self.zmq.EVENT_HANDSHAKE_SUCCEEDED
            )
            self.monitor = self.sock.get_monitor_socket(events)
        return self.monitor

    def raise_refused(self) -> None:
        if self.refused is not None:
            err, self.refused = self.refused, None
            raise err

    @property
    def _gone_events(self) -> int:
        # a dropped connection, or a connect refused (the node is down: its address
        # answers, its port does not), so requests to a dead node fail fast too
        return int(self.zmq.EVENT_DISCONNECTED | self.zmq.EVENT_CONNECT_RETRIED)

    def _refusal(self, event: int) -> bool:
        """Whether a failed handshake means the node refuses this client. An explicit
        refusal (AUTH, PROTOCOL) does at once. A failure without detail is also what a
        node that dies mid-handshake looks like (a failover), so only one that repeats
        (``curve.UNEXPLAINED_REFUSALS`` times without a handshake succeeding between)
        counts: a wrong server key or a plaintext client at a CURVE node fails every time."""
        if not event & self.zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            return True
        self._unexplained += 1
        return self._unexplained >= curve.UNEXPLAINED_REFUSALS

    def disconnected(self) -> bool:
        """Drain the monitor, following ``connection``; True if a disconnect or a failed
        connection attempt was reported (not a connection: that only sets UP)."""
        seen = False
        gone = self._gone_events
        while self.monitor is not None:
            try:
                frames = self.monitor.recv_multipart(flags=self.zmq.NOBLOCK)
            except self.zmq.Again:
                break
            if frames and len(frames[0]) >= 2:
                event = int.from_bytes(frames[0][:2], "little")
                self.connection = next_connection(self.connection, event, self.zmq)
                if event & self.zmq.EVENT_CONNECTED:
                    self._tcp_up = True
                if event & self.zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._unexplained = 0
                elif event & curve.HANDSHAKE_FAILURES and self._refusal(event):
                    value = int.from_bytes(frames[0][2:6], "little") if len(frames[0]) >= 6 else 0
                    self.refused = curve.handshake_error(event, value, self.endpoint, sockets.is_secured(self.ctx))
                if event & self.zmq.EVENT_CONNECT_RETRIED:
                    if not self._tcp_up:  # the TCP connection itself failed: refused, unreachable
                        self._unexplained = 0
                    self._tcp_up = False
                # while a handshake failed without detail, the drop and the retry that follow
                # it are the handshake's: wait for it to repeat (a refusal) or succeed
                if event & gone and not self._unexplained:
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
            ch = self.channels[endpoint] = Channel(self.ctx, endpoint, self.zmq, watch=self.watch)
            ch.pool = self
            self._register(ch)
        return ch

    def is_down(self, endpoint: str) -> bool:
        """Whether the channel to ``endpoint`` reported a drop or a failed connection
        attempt since it last connected (False without a channel)."""
        ch = self.channels.get(endpoint)
        return ch is not None and ch.connection is Connection.DOWN

    def _register(self, ch: Channel) -> None:
        self.poller.register(ch.sock, self.zmq.POLLIN)
        if self.watch:
            self.poller.register(ch.watch_disconnects(), self.zmq.POLLIN)

    def _unregister(self, ch: Channel) -> None:
        self.poller.unregister(ch.sock)
        if ch.monitor is not None:
            self.poller.unregister(ch.monitor)

    def reset(self, ch: Channel) -> None:
        """``Channel.reset`` (which keeps the poller registrations right)."""
        ch.reset()

    def discard_down(self, keep: set[str]) -> list[str]:
        """Close the channels that are DOWN, except those to ``keep``: endpoints no
        longer named by metadata (a restarted worker is on a new port). Each one is a
        socket and a monitor, and ZeroMQ would retry it forever."""
        gone = [e for e, ch in self.channels.items() if ch.connection is Connection.DOWN and e not in keep]
        for e in gone:
            ch = self.channels.pop(e)
            self._unregister(ch)
            ch.pool = None
            ch.close()
        return gone

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self.channels.values()))

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


class BootstrapChannel:
    """Requests to the front endpoint of any bootstrap node, failing over in turn.

    Until some node has answered, a refused connection is not waited out: when every
    bootstrap endpoint has refused (or could not be reached), the request fails at once
    with one line naming each, as kcat and Kafka's tools do for a wrong address. Once
    the client has talked to the cluster, a refusal is a node restarting: it moves on to
    the next endpoint and the request waits for its whole timeout."""

    def __init__(self, ctx: Any, endpoints: list[str], zmq_module: ModuleType = _zmq) -> None:
        self.endpoints = endpoints
        self.ctx = ctx
        self.zmq = zmq_module
        self._i = 0
        self._chan: Channel | None = None
        self.answered = False  # some bootstrap node answered once

    def request(self, api: str, timeout_s: float, **fields: Any) -> Reply:
        deadline = time.monotonic() + timeout_s
        last: SluiceError | None = None
        refused: set[str] = set()  # endpoints that refused the connection (before any answer)
        for _ in range(max(1, len(self.endpoints)) * 3):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            endpoint = self.endpoints[self._i % len(self.endpoints)]
            if self._chan is None:
                self._chan = Channel(self.ctx, endpoint, self.zmq)
            several = len(self.endpoints) > 1
            per_try = min(left, max(1.0, timeout_s / len(self.endpoints))) if several else left
            try:  # a refused connection moves on at once (or fails, before any answer)
                reply = self._chan.request(api, per_try, fail_fast=several or not self.answered, **fields)
                self.answered = True
                return reply
            except RequestTimedOutError as exc:
                last = exc
                if self._chan.gone and not self.answered:
                    refused.add(endpoint)
                self._chan.close()
                self._chan = None
                self._i += 1
            if not self.answered and refused >= set(self.endpoints):
                raise RequestTimedOutError(
                    f"cannot connect to {', '.join(self.endpoints)}: connection refused or host unreachable"
                    " (is a node listening there? check --bootstrap / bootstrap)"
                )
        raise RequestTimedOutError(
            f"no node answered {api} within {timeout_s:.1f} s (tried {', '.join(self.endpoints)})"
            + (f"; last: {last.message}" if last else "")
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
