"""The ZooKeeper session: the kazoo client, and requests made on it one at a time.

kazoo names the session's states: CONNECTED; SUSPENDED (the connection is gone, the
session may be expiring: do not assume what it holds is still valid); LOST (expired:
ZooKeeper removed its ephemeral znodes; kazoo opens a new session). ``connected()`` is
True only while CONNECTED and the coordinator is open; what the coordinator does on each
change (register again, stop leading) is ``coordinator.py``'s listener.

Every request waits at most ``request_timeout_s`` (``call``). Connection trouble becomes a
retriable ``RequestTimedOutError`` (the request may or may not have been applied); the
answers callers decide on (NoNode, NodeExists, BadVersion, NotEmpty) pass through; any
other kazoo error is ``CoordinatorNotAvailableError``. kazoo itself retries reconnects
and its recipes with ``RETRY``; a compare-and-set that lost a race is retried by its
caller after ``backoff``, at most ``MAX_CAS_ATTEMPTS`` times.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    RolledBackError,
    RuntimeInconsistency,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState

from ipc.errors import CoordinatorNotAvailableError, RequestTimedOutError, SluiceError

MAX_CAS_ATTEMPTS = 20  # read-modify-write loops (config, delete, producer id) under contention
SESSION_TICK_S = 1.0  # the session thread retries a failed re-registration this often
RETRY = {"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0}  # kazoo: reconnect, recipes


def first_error(results: list[Any]) -> Exception | None:
    """The operation that failed a multi-op (the others report RolledBack/RuntimeInconsistency)."""
    errors = [r for r in results if isinstance(r, Exception)]
    for err in errors:
        if not isinstance(err, RolledBackError | RuntimeInconsistency):
            return err
    return errors[0] if errors else None


def unexpected(err: Exception, what: str) -> SluiceError:
    return CoordinatorNotAvailableError(f"{what}: ZooKeeper answered {type(err).__name__}: {err}")


class Session:
    """One node's kazoo client (made by ``connect``) and the requests made on it.

    ``closing`` is the coordinator's: once set, the session refuses requests and ends
    the pauses it is in."""

    def __init__(
        self,
        node_id: int,
        hosts: str,
        session_timeout_s: float,
        connect_timeout_s: float,
        request_timeout_s: float,
        closing: threading.Event,
    ) -> None:
        self.node_id = node_id
        self.hosts = hosts
        self.session_timeout_s = session_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.closing = closing
        self.client: Any = None  # KazooClient, made in connect()
        self.up = threading.Event()  # set while KazooState.CONNECTED

    def connect(self, listener: Callable[[str], None]) -> Any:
        """Make the client with ``listener`` on its state changes and connect, bounded by
        ``connect_timeout_s``: CoordinatorNotAvailableError if ZooKeeper does not answer."""
        client = KazooClient(
            hosts=self.hosts,
            timeout=self.session_timeout_s,
            connection_retry=dict(RETRY),
            command_retry=dict(RETRY),
        )
        client.add_listener(listener)
        try:
            client.start(timeout=self.connect_timeout_s)
        except KazooTimeoutError:
            client.close()
            raise CoordinatorNotAvailableError(
                f"ZooKeeper at {self.hosts} did not answer within {self.connect_timeout_s:.0f} s"
            ) from None
        self.client = client
        return client

    def record(self, state: str) -> None:
        """A state change (from kazoo's listener, on its connection thread): keeps ``up``."""
        if state == KazooState.CONNECTED:
            self.up.set()
        else:
            self.up.clear()

    def connected(self) -> bool:
        client = self.client
        return client is not None and not self.closing.is_set() and client.state == KazooState.CONNECTED

    def require(self) -> Any:
        """The client, when a request can be made on it now."""
        client = self.client
        if client is None:
            raise RuntimeError("ZooKeeperCoordinator used before start()")
        if self.closing.is_set():
            raise CoordinatorNotAvailableError(f"node {self.node_id}: the ZooKeeper coordinator is closed")
        if client.state != KazooState.CONNECTED:
            raise CoordinatorNotAvailableError(
                f"node {self.node_id}: not connected to ZooKeeper at {self.hosts} (session {client.state})"
            )
        return client

    def call(self, async_result: Any, what: str) -> Any:
        """Wait for one request, at most ``request_timeout_s``; connection trouble becomes a
        retriable SluiceError (the request may or may not have been applied)."""
        try:
            return async_result.get(timeout=self.request_timeout_s)
        except KazooTimeoutError:
            raise RequestTimedOutError(
                f"{what}: ZooKeeper at {self.hosts} did not answer within {self.request_timeout_s:.1f} s"
            ) from None
        except (ConnectionLoss, SessionExpiredError, OperationTimeoutError, ConnectionClosedError) as exc:
            raise RequestTimedOutError(f"{what}: {type(exc).__name__} from ZooKeeper at {self.hosts}") from None
        except (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError):
            raise  # answers the callers handle
        except KazooException as exc:
            raise unexpected(exc, what) from None

    def backoff(self, attempt: int) -> None:
        """A jittered pause after a lost compare-and-set race (at most 0.1 s; ends early on close)."""
        self.closing.wait(random.uniform(0.0, min(0.1, 0.002 * 2**attempt)))

    def session_id(self) -> int | None:
        client = self.client
        cid = client.client_id if client is not None else None
        return int(cid[0]) if cid else None
