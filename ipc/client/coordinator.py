"""Finding a consumer group's coordinator and talking to it: ``CoordinatorLink``.

Every group request goes to the group's coordinator (the node leading the group's
partition of ``__consumer_offsets``), found with ``find_coordinator`` through the
bootstrap nodes. A ``CoordinatorLink`` (one per thread: each has its own sockets) keeps
a channel to it and finds it again, with a bounded back-off, when it answers
NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE, disconnects or does not answer in time.
Used by ``GroupMembership`` (``ipc/client/group.py``) and ``Admin``'s group calls.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ipc.client.transport import BootstrapChannel, Channel
from ipc.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotCoordinatorError,
    RequestTimedOutError,
    SluiceError,
)
from ipc.protocol import Reply

log = logging.getLogger(__name__)

# answers after which the coordinator must be found again
COORDINATOR_MOVED: tuple[type[SluiceError], ...] = (NotCoordinatorError, CoordinatorNotAvailableError)
# answers after which the same coordinator is asked again
COORDINATOR_BUSY: tuple[type[SluiceError], ...] = (CoordinatorLoadInProgressError,)
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
FIND_TIMEOUT_S = 5.0  # one find_coordinator (through the bootstrap nodes, failing over between them)
MAX_ATTEMPTS = 1000  # a request's tries, besides its deadline


class _Disconnected(Exception):
    """The coordinator's connection dropped, or connecting to it failed: a request in
    flight will not be answered, and the coordinator may have moved."""


class CoordinatorLink:
    """One thread's way to group coordinators: ``find_coordinator`` through the bootstrap
    nodes, then one channel to each coordinator's front endpoint, watched for disconnects.

    ``request`` retries, with an exponential back-off (``BACKOFF_MIN_S`` to
    ``BACKOFF_MAX_S``), while the coordinator answers NOT_COORDINATOR or
    COORDINATOR_NOT_AVAILABLE (finding it again), COORDINATOR_LOAD_IN_PROGRESS, or
    is unreachable: its connection dropped (the node died) or a connection attempt
    failed (a dead node still named coordinator until its partitions move), seen on the
    channel's monitor before or while a request waits (finding it again, which also
    waits out the move); a request not answered in time forgets the
    coordinator (the next request finds it again) and raises RequestTimedOutError.
    ``sleep(seconds)`` waits out a back-off and returns True to give up (a closing
    heartbeat thread); ``on_forget()`` is called whenever a coordinator is forgotten, and
    ``on_found(endpoint)`` whenever one is found."""

    def __init__(
        self,
        ctx: Any,
        endpoints: list[str],
        zmq_module: ModuleType,
        sleep: Callable[[float], bool] | None = None,
        on_forget: Callable[[], None] | None = None,
        on_found: Callable[[str], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.zmq = zmq_module
        self.bootstrap = BootstrapChannel(ctx, endpoints, zmq_module)
        self.coordinators: dict[str, str] = {}  # group -> its coordinator's front endpoint
        self.channels: dict[str, Channel] = {}  # endpoint -> channel
        self._sleep = sleep or _sleep
        self._on_forget = on_forget
        self._on_found = on_found

    # ---- finding the coordinator --------------------------------------------------------------
    def find(self, group: str, retry_until: float) -> str:
        """The coordinator's endpoint (cached); asks at least once, retries until ``retry_until``."""
        endpoint = self.coordinators.get(group)
        if endpoint is not None:
            return endpoint
        delay = BACKOFF_MIN_S
        last: SluiceError | None = None
        for _ in range(MAX_ATTEMPTS):
            timeout = min(FIND_TIMEOUT_S, max(retry_until - time.monotonic(), 1.0))
            try:
                reply = self.bootstrap.request("find_coordinator", timeout, group=group)
                reply.raise_for_error()
                endpoint = str(reply.fields["endpoint"])
                log.info("group %s: coordinator is node %s at %s", group, reply.fields.get("node_id"), endpoint)
                self.coordinators[group] = endpoint
                if self._on_found is not None:
                    self._on_found(endpoint)
                return endpoint
            except SluiceError as exc:
                if not exc.retriable:
                    raise
                last = exc
            if not self._backoff(delay, retry_until):
                break
            delay = min(delay * 2, BACKOFF_MAX_S)
        raise CoordinatorNotAvailableError(f"no coordinator found for group {group!r}: {last}")

    def forget(self, group: str) -> None:
        """Find the group's coordinator again on the next request."""
        endpoint = self.coordinators.pop(group, None)
        if endpoint is None:
            return
        if endpoint not in self.coordinators.values():
            ch = self.channels.pop(endpoint, None)
            if ch is not None:
                ch.close()
        if self._on_forget is not None:
            self._on_forget()

    def _channel(self, endpoint: str) -> Channel:
        """The coordinator's channel, watched from the start (an event is reported once)
        for drops and failed connection attempts (``Channel.watch_disconnects``)."""
        ch = self.channels.get(endpoint)
        if ch is None:
            ch = self.channels[endpoint] = Channel(self.ctx, endpoint, self.zmq)
            ch.watch_disconnects()
        return ch

    def _backoff(self, delay: float, until: float) -> bool:
        """Wait ``delay`` (with jitter) if that ends before ``until``; False to stop retrying."""
        delay *= random.uniform(0.8, 1.2)
        if time.monotonic() + delay >= until:
            return False
        return not self._sleep(delay)

    # ---- requests ---------------------------------------------------------------------------------
    def request(self, group: str, api: str, timeout_s: float, retry_s: float | None = None, **fields: Any) -> Reply:
        """Send ``api`` for ``group`` to its coordinator and return the reply. Everything
        ends within ``timeout_s``; retries after a coordinator error start only within
        ``retry_s`` (default ``timeout_s``), so a long join can still give up early when
        no coordinator is there. A reply with an error is returned, not raised."""
        start = time.monotonic()
        deadline = start + timeout_s
        retry_until = min(deadline, start + (timeout_s if retry_s is None else retry_s))
        delay = BACKOFF_MIN_S
        last: Reply | None = None
        for _ in range(MAX_ATTEMPTS):
            endpoint = self.find(group, retry_until)
            ch = self._channel(endpoint)
            try:
                reply = self._exchange(ch, api, deadline, group=group, **fields)
            except _Disconnected:
                log.info("group %s: coordinator %s unreachable (%s); finding it again", group, endpoint, api)
                self.forget(group)
                if not self._backoff(delay, retry_until):
                    raise RequestTimedOutError(f"group {group!r}: coordinator {endpoint} unreachable ({api})") from None
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            except RequestTimedOutError:
                self.forget(group)
                raise
            err = reply.error
            if err is None or not isinstance(err, COORDINATOR_MOVED + COORDINATOR_BUSY):
                return reply
            last = reply
            if isinstance(err, COORDINATOR_MOVED):
                log.info("group %s: %s from %s; finding the coordinator again", group, err.code, endpoint)
                self.forget(group)
            if not self._backoff(delay, retry_until):
                break
            delay = min(delay * 2, BACKOFF_MAX_S)
        if last is None:
            raise RequestTimedOutError(f"group {group!r}: {api} not answered after {MAX_ATTEMPTS} attempts")
        return last

    def _exchange(self, ch: Channel, api: str, deadline: float, **fields: Any) -> Reply:
        if ch.disconnected():  # since the last request: the node may be gone
            raise _Disconnected()
        cid = ch.send(api, **fields)
        poller = self.zmq.Poller()
        poller.register(ch.sock, self.zmq.POLLIN)
        poller.register(ch.monitor, self.zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                ch.reset()  # drop the queued request so it is not delivered late
                ch.watch_disconnects()
                raise RequestTimedOutError(f"no reply to {api} from {ch.endpoint} in time")
            events = dict(poller.poll(left * 1000 + 1))
            if ch.sock in events:
                for reply in ch.replies():
                    if reply.id == cid:
                        return reply
            if ch.monitor in events and ch.disconnected():
                raise _Disconnected()  # the caller forgets the coordinator (and closes the channel)

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()
        self.bootstrap.close()


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)  # a back-off between tries of a request, not synchronisation
    return False
