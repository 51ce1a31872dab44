"""systemd integration: the sd_notify protocol, the service watchdog and STATUS= lines.

The protocol (``sd_notify(3)``): one datagram of newline-separated ``KEY=VALUE``
assignments, sent to the ``AF_UNIX`` / ``SOCK_DGRAM`` socket named by ``$NOTIFY_SOCKET``.
A name starting with ``@`` is in the abstract namespace (the ``@`` stands for a NUL
byte). When ``$NOTIFY_SOCKET`` is unset, as outside systemd, every call is a no-op.
No library is needed: one ``sendto`` per message.

What the supervisor says, and when (``ServiceNotifier``):

| message | when |
|---|---|
| ``STATUS=waiting for the coordinator ...`` | start-up, before the coordinator state is loaded |
| ``STATUS=recovering N of M partitions ...`` | while workers open (recover) their logs |
| ``READY=1`` | the first time every partition hosted here is ``serving`` (and after a reload) |
| ``EXTEND_TIMEOUT_USEC=`` | before ``READY=1``, while start-up is healthy (long log recoveries) |
| ``WATCHDOG=1`` | every ``$WATCHDOG_USEC / 2``, from the supervisor's tick, **only while healthy** |
| ``RELOADING=1`` + ``MONOTONIC_USEC=`` | on SIGHUP, before the configuration file is read again |
| ``STOPPING=1`` | on SIGTERM / SIGINT, when the shutdown begins |

Healthy (``assess``) means: the supervisor's loop is ticking (the pings come from the
tick, so a hung supervisor sends none), and no partition is stuck beyond recovery.
A partition is stuck beyond recovery when

1. it is ``offline``: it crashed more than ``max_restarts`` times within
   ``restart_window_ms``, and the supervisor will not restart it again; or
2. its worker was sent SIGKILL (hung: no heartbeat for ``heartbeat_timeout_ms``, or
   not ready after ``worker_start_timeout_ms``, or not stopped in time) and has still
   not exited ``KILL_GRACE_S`` later (a process in uninterruptible sleep, a stuck disk).

A crash that is being recovered (``backoff``, ``starting``) is healthy. When the pings
stop, systemd kills the node after ``WatchdogSec`` and ``Restart=on-failure`` starts it
again, which is the one recovery left: a node restart resets the crash loop.

A partition whose directory refuses writes (a full disk, an I/O error; the worker's
``storage_error``, ``appliance/partition/storage.py``) makes the node *unhealthy* for
``/healthz`` (503, with the partitions named) and ``sluice_node_healthy``, but not for
the watchdog (``Health.restart_would_help`` is what READY=1 and the pings follow): a
restart frees no disk space, and the worker recovers by itself once there is some.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Protocol

from appliance.children import ChildState

log = logging.getLogger(__name__)

KILL_GRACE_S = 5.0  # a worker alive this long after SIGKILL is stuck beyond recovery
START_EXTEND_S = 30.0  # each EXTEND_TIMEOUT_USEC grants this much more start-up time
START_EXTEND_EVERY_S = 5.0


def socket_address(name: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` to a ``sendto`` address: ``@name`` is abstract (leading NUL)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; a no-op when there is none."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send one datagram ``KEY=VALUE\\n...``; False if it could not be delivered."""
        if self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")
            lines.append(f"{key}={text}")
        payload = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, socket_address(self.address))
        except OSError as exc:
            # systemd gone or its queue full: never fatal for the broker
            log.warning("sd_notify to %s failed: %s (%s)", self.address, exc, ", ".join(fields))
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_usec(environ: MutableMapping[str, str], pid: int) -> int:
    """``$WATCHDOG_USEC`` if the watchdog is meant for ``pid`` (``$WATCHDOG_PID``), else 0."""
    raw = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return 0
    try:
        usec = int(raw)
    except ValueError:
        if raw:
            log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return 0
    return max(usec, 0)


class ReplicaView(Protocol):
    """What ``assess`` reads of a supervisor ``Replica``."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> ChildState: ...

    @property
    def pid(self) -> int: ...

    @property
    def killed_at(self) -> float: ...

    # optional: ``storage_error`` (bool), true while the worker reports that its
    # directory refuses writes (``appliance.replicas.Replica.storage_error``)


@dataclasses.dataclass(frozen=True)
class Health:
    total: int = 0
    serving: int = 0
    starting: int = 0
    restarting: int = 0
    stopping: int = 0
    offline: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()  # "t-0 (worker 123 alive 7.0 s after SIGKILL)"
    storage_errors: tuple[str, ...] = ()  # serving, but their directory refuses writes

    @property
    def healthy(self) -> bool:
        """What ``/healthz`` and ``sluice_node_healthy`` say: nothing needs an operator."""
        return self.restart_would_help and not self.storage_errors

    @property
    def restart_would_help(self) -> bool:
        """What the watchdog acts on: no partition stuck beyond what a node restart fixes
        (a full disk is not: the partition recovers by itself once there is space)."""
        return not self.offline and not self.stuck

    @property
    def all_serving(self) -> bool:
        return self.serving == self.total

    def problems(self) -> str:
        parts = []
        if self.offline:
            parts.append("offline after repeated crashes: " + ", ".join(self.offline))
        if self.stuck:
            parts.append("not dying after SIGKILL: " + ", ".join(self.stuck))
        if self.storage_errors:
            parts.append("storage errors (disk full?), writes refused: " + ", ".join(self.storage_errors))
        return "; ".join(parts)


def assess(replicas: Iterable[ReplicaView], now: float, kill_grace_s: float = KILL_GRACE_S) -> Health:
    """Count replicas by state and find those stuck beyond recovery (module docstring)."""
    total = serving = starting = restarting = stopping = 0
    offline: list[str] = []
    stuck: list[str] = []
    storage: list[str] = []
    for r in replicas:
        total += 1
        state = r.state
        if state is ChildState.SERVING:
            serving += 1
            if getattr(r, "storage_error", False):
                storage.append(r.name)
        elif state is ChildState.STARTING:
            starting += 1
        elif state is ChildState.BACKOFF:
            restarting += 1
        elif state is ChildState.STOPPING:
            stopping += 1
        elif state is ChildState.OFFLINE:
            offline.append(r.name)
        if r.killed_at and r.pid and now - r.killed_at > kill_grace_s:
            stuck.append(f"{r.name} (worker {r.pid} alive {now - r.killed_at:.1f} s after SIGKILL)")
    return Health(
        total, serving, starting, restarting, stopping, tuple(sorted(offline)), tuple(stuck), tuple(sorted(storage))
    )


def status_line(health: Health, ready: bool, stopping: bool, listen: str) -> str:
    """The STATUS= text: what the node is doing, in a few words."""
    h = health
    if stopping:
        return f"stopping: {h.stopping} worker(s) flushing and closing"
    extra = []
    if h.starting:
        extra.append(f"{h.starting} starting")
    if h.restarting:
        extra.append(f"{h.restarting} restarting")
    if h.offline:
        extra.append(f"{len(h.offline)} offline")
    if h.storage_errors:
        extra.append(f"{len(h.storage_errors)} with storage errors")
    detail = f" ({', '.join(extra)})" if extra else ""
    if not ready:
        text = f"recovering {h.total - h.serving} of {h.total} partitions{detail}"
    elif h.all_serving:
        text = f"serving {h.total} partitions on {listen}"
    else:
        text = f"serving {h.serving} of {h.total} partitions on {listen}{detail}"
    if not h.restart_would_help:
        text = f"UNHEALTHY, watchdog pings stopped: {h.problems()}; {text}"
    elif not h.healthy:
        text = f"DEGRADED: {h.problems()}; {text}"
    return text


class ServiceNotifier:
    """The supervisor's side of the protocol: readiness, status, watchdog, reload, stop.

    The supervisor calls ``tick`` from its loop's tick and the event methods from its
    hooks; everything else (pace, de-duplication, health) is decided here.
    """

    def __init__(
        self,
        notifier: Notifier,
        watchdog_usec: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec else 0.0
        self.clock = clock
        self.ready = False
        self.stopping_sent = False
        self.notes: dict[str, str] = {}  # lasting remarks for STATUS=, e.g. "restart needed for: listen"
        self.last_health = Health()
        self._last_status = ""
        self._next_ping = 0.0
        self._next_extend = 0.0
        self._pinging = True

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> ServiceNotifier:
        """Read ``$NOTIFY_SOCKET`` / ``$WATCHDOG_USEC`` and take them out of the environment,
        so the fork server and the workers (who must not notify) do not inherit them."""
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        address = env.pop("NOTIFY_SOCKET", None)
        usec = watchdog_usec(env, pid)
        for key in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)
        return cls(Notifier(address), usec if address else 0)

    # ---- events -----------------------------------------------------------------------------
    def status(self, text: str) -> None:
        """Send STATUS= when it changed; the remarks in ``notes`` are appended."""
        full = "; ".join([text, *self.notes.values()])
        if full != self._last_status:
            self._last_status = full
            self.notifier.send(STATUS=full)

    def reloading(self) -> None:
        if self.ready:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            self.notifier.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS="reloading the configuration")
            self._last_status = "reloading the configuration"

    def reloaded(self, listen: str) -> None:
        """After a reload: READY=1 again (if we had been ready), with the status and its notes."""
        if self.ready:
            text = status_line(self.last_health, True, False, listen)
            self._last_status = "; ".join([text, *self.notes.values()])
            self.notifier.send(READY=1, STATUS=self._last_status)
        else:
            self._last_status = ""  # the next tick sends the status with its new notes

    def stopping(self, status: str) -> None:
        if not self.stopping_sent:
            self.stopping_sent = True
            self._last_status = status
            self.notifier.send(STOPPING=1, STATUS=status)

    # ---- the tick ----------------------------------------------------------------------------
    def tick(self, replicas: Iterable[ReplicaView], stopping: bool, listen: str) -> Health:
        """Called every supervisor tick. Sends READY=1 once everything serves, WATCHDOG=1 at
        half the watchdog interval while healthy, EXTEND_TIMEOUT_USEC while starting, and
        STATUS= when the status line changes."""
        now = self.clock()
        health = assess(replicas, now)
        self.last_health = health
        if stopping:
            self.status(status_line(health, self.ready, True, listen))
            return health
        if health.restart_would_help != self._pinging:
            self._pinging = health.restart_would_help
            if not health.restart_would_help:
                log.error(
                    "node unhealthy: %s; %s",
                    health.problems(),
                    "watchdog pings stopped, systemd will restart the node"
                    if self.watchdog_interval
                    else "no watchdog",
                )
            else:
                log.info("node healthy again; watchdog pings resume")
        if not self.ready and health.all_serving and health.restart_would_help:
            self.ready = True
            text = status_line(health, True, False, listen)
            self._last_status = "; ".join([text, *self.notes.values()])
            self.notifier.send(READY=1, STATUS=self._last_status)
            log.info("ready: %s", text)
        else:
            self.status(status_line(health, self.ready, False, listen))
        if not health.restart_would_help:
            return health
        if self.watchdog_interval and now >= self._next_ping:
            self.notifier.send(WATCHDOG=1)
            self._next_ping = now + self.watchdog_interval
        if not self.ready and self.notifier.enabled and now >= self._next_extend:
            self.notifier.send(EXTEND_TIMEOUT_USEC=int(START_EXTEND_S * 1_000_000))
            self._next_extend = now + START_EXTEND_EVERY_S
        return health
