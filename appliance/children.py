"""Keeping child processes of any kind alive: partition workers today; a protocol
listener or a connector is one more ``ChildSpec``. Nothing here knows what a child
does.

A child's life::

    STARTING --ready--> SERVING --stop--> STOPPING --exit--> (gone)
        |                  |
        +----- crash ------+--> BACKOFF --due--> STARTING
                                   \\--> OFFLINE (more than max_restarts crashes in the
                                        window: no restart until the node restarts)

``ChildSpec`` says how to start a child (a function returning the target and its
arguments, built anew at every start so a restart gets current settings), how to judge
it (a heartbeat reader: the child's last heartbeat on the monotonic clock), and which
settings apply (a function returning ``Supervision``, read at every use so a SIGHUP
reload applies at once). ``Children`` forks through a ``multiprocessing`` context (the
node's fork server), watches each child's exit sentinel in the node loop's poller,
reaps, backs off exponentially, takes a crash-looping child offline, and kills a child
that is silent past the heartbeat timeout, not ready within the start timeout, or still
running at the shutdown deadline (as gunicorn's arbiter murders late workers).

Starting a child costs the node's loop milliseconds to tens of milliseconds (the fork
server's round trip, the owner's preparation; a partition worker writes its durable
directory marker itself, after the fork), so a reconcile that
wants 500 new workers does not start them itself: it ``enqueue``s them, and
``start_queued`` (run on every pass of the loop, from ``on_events``) starts them within
a time budget (``START_BUDGET_S``, at least one each pass), going back to serving the
front between batches. A queued child is ``STARTING`` with no process (``queued``);
stopping it just forgets it. A child whose start fails (its directory unusable) counts
as a crash: backoff, then offline.

The owner learns of every change through ``ChildEvents``: a state change, an exit
(before any restart decision; the owner's per-child clean-up), and a stopped child
that is gone for good.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import logging
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import zmq

from appliance.proctitle import set_title

log = logging.getLogger(__name__)

# A gap this long between two checks means the node's own loop was not scheduled (the
# node paused with SIGSTOP, a long VM steal): its children were paused with it, so their
# heartbeats are as old as the gap. Judging them then would kill every one as hung.
PAUSE_S = 1.0
# Time the loop spends starting queued children in one pass (at least one is started).
START_BUDGET_S = 0.05
# A serving child's heartbeat is read every eighth of its timeout, at most this often
# (and again before it is judged): the check runs every tick (0.1 s), and reading 1,000
# status slots ten times a second was most of an idle node's CPU.
BEAT_READ_S = 2.5


def _untrack(proc: BaseProcess) -> None:
    """Take a started child out of ``multiprocessing``'s own set of children: every
    ``Process.start()`` polls each child in it (``process._cleanup``, a ``select`` per
    child), which made starting n children O(n^2): a third of the supervisor's time
    while 1,000 partitions started. ``Children`` reaps its children itself (sentinel,
    ``join(0)``, ``close``). A private attribute (Python 3.11): nothing happens without it."""
    tracked = getattr(multiprocessing.process, "_children", None)
    if isinstance(tracked, set):
        tracked.discard(proc)


def run_titled(name: str, target: Callable[..., object], args: tuple[Any, ...]) -> None:
    """A child's entry point in the forked process: title it ``sluice: <name>``
    (``appliance/proctitle.py``; a worker adds its role), then run its target."""
    set_title(name)
    target(*args)


REAP_WAIT_S = 1.0  # how long a child whose exit sentinel is ready may take to be reapable

class ChildState(enum.Enum):
    STARTING = "starting"  # forked, not ready yet (a worker recovering its log)
    SERVING = "serving"  # said it is ready (a worker: its endpoint is in the metadata)
    STOPPING = "stopping"  # asked to stop (shutdown, delete)
    BACKOFF = "backoff"  # crashed; restart scheduled
    OFFLINE = "offline"  # crash loop: no more restarts until the node restarts


@dataclasses.dataclass(frozen=True)
class Supervision:
    """How children are judged and restarted (node options, live on reload)."""

    heartbeat_timeout_s: float = 10.0
    start_timeout_s: float = 300.0
    backoff_s: float = 0.1  # first restart delay; doubles with each crash in the window
    backoff_max_s: float = 5.0
    max_restarts: int = 5  # more crashes than this within the window: offline
    window_s: float = 60.0

    def backoff(self, crashes: int) -> float:
        return min(self.backoff_s * float(2 ** (crashes - 1)), self.backoff_max_s)


Target = Callable[..., None]


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    name: str
    start: Callable[[], tuple[Target, tuple[Any, ...]]]  # the child's entry point and its arguments
    heartbeat: Callable[[], float | None]  # its last heartbeat (monotonic); None: nothing to read now
    settings: Callable[[], Supervision]


class Child:
    """One kept child: its process and its history of starts and crashes."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.state = ChildState.STARTING
        self.proc: BaseProcess | None = None
        self.pid = 0
        self.started_at = 0.0
        self.next_start = 0.0
        self.restarts = 0
        self.crash_times: collections.deque[float] = collections.deque()
        self.last_exit = 0
        self.offline_since = 0.0  # wall clock
        self.last_beat = 0.0
        self.beat_read_at = 0.0  # when its heartbeat was last read (monotonic)
        self.killed_at = 0.0  # when it was sent SIGKILL (0: not)
        self.queued = False  # waiting for its turn to be started (no process yet)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.proc is not None


class ChildEvents(Protocol):
    def child_state_changed(self, child: Child, old: ChildState) -> None: ...

    def child_exited(self, child: Child, code: int) -> None: ...  # before a restart is scheduled

    def child_stopped(self, child: Child) -> None: ...  # stopped on purpose: gone for good


class Children:
    def __init__(
        self,
        mp: Any,
        poller: zmq.Poller,
        events: ChildEvents,
        clock: Callable[[], float] = time.monotonic,
        kill: Callable[[int, int], None] = os.kill,
    ) -> None:
        self.mp = mp  # a multiprocessing context (the node's fork server)
        self.poller = poller
        self.events = events
        self.clock = clock
        self.kill = kill
        self._sentinels: dict[int, Child] = {}
        self._last_check: float | None = None
        self._queue: collections.deque[Child] = collections.deque()

    # ---- state ------------------------------------------------------------------------
    def set_state(self, child: Child, new: ChildState) -> None:
        old = child.state
        if old is not new:
            log.info("%s: %s -> %s", child.name, old.value, new.value)
        child.state = new
        self.events.child_state_changed(child, old)

    def serving(self, child: Child) -> None:
        """The child said it is ready."""
        self.set_state(child, ChildState.SERVING)

    # ---- start, stop, signal ------------------------------------------------------------
    def start(self, child: Child) -> None:
        target, args = child.spec.start()
        proc = self.mp.Process(target=run_titled, args=(child.name, target, args), name=f"sluice-{child.name}")
        proc.start()
        _untrack(proc)
        child.proc = proc
        child.pid = proc.pid or 0
        child.started_at = self.clock()
        self._sentinels[proc.sentinel] = child
        self.poller.register(proc.sentinel, zmq.POLLIN)
        self.set_state(child, ChildState.STARTING)
        log.info("%s: started worker pid %d", child.name, child.pid)

    def enqueue(self, child: Child) -> None:
        """Start ``child`` soon, from ``start_queued`` (STARTING meanwhile, no process)."""
        if child.queued:
            return
        child.queued = True
        self._queue.append(child)
        self.set_state(child, ChildState.STARTING)

    @property
    def pending_starts(self) -> int:
        """Children queued to start (the node's loop does not sleep while there are)."""
        return len(self._queue)

    def start_queued(self, budget_s: float = START_BUDGET_S) -> int:
        """Start queued children for up to ``budget_s`` (at least one); returns how many."""
        if not self._queue:
            return 0
        t0 = self.clock()
        started = 0
        while self._queue:
            child = self._queue.popleft()
            child.queued = False
            try:
                self.start(child)
            except Exception:  # noqa: BLE001 - one child's failed start is its crash, not the node's
                log.exception("%s: cannot start", child.name)
                self._crashed(child, self.clock())
            started += 1
            if self.clock() - t0 >= budget_s:
                break
        return started

    def _dequeue(self, child: Child) -> None:
        if child.queued:
            child.queued = False
            self._queue.remove(child)  # O(queue), only when stopping a child not yet started

    def stop(self, child: Child) -> None:
        """SIGTERM; a child that does not run (queued, backoff, offline) is stopped at once."""
        self._dequeue(child)
        if child.proc is None:
            self.events.child_stopped(child)
            return
        self.set_state(child, ChildState.STOPPING)
        self.signal(child, signal.SIGTERM)

    def signal(self, child: Child, sig: int) -> None:
        if sig == signal.SIGKILL and child.pid and not child.killed_at:
            child.killed_at = self.clock()
        if child.pid:
            with contextlib.suppress(ProcessLookupError):
                self.kill(child.pid, sig)

    # ---- exits --------------------------------------------------------------------------
    def on_events(self, events: dict[Any, int]) -> None:
        """Reap every child whose exit sentinel is ready; start queued ones (in budget)."""
        for fd in [fd for fd in events if isinstance(fd, int) and fd in self._sentinels]:
            self._reap(fd)
        if self._queue:
            self.start_queued()

    def _reap(self, sentinel: int) -> None:
        child = self._sentinels.pop(sentinel)
        self.poller.unregister(sentinel)
        proc = child.proc
        assert proc is not None
        proc.join(0)
        if proc.exitcode is None:  # its sentinel closes while it exits, a moment before it can be reaped
            proc.join(REAP_WAIT_S)
        code = proc.exitcode if proc.exitcode is not None else -1
        if proc.exitcode is not None:
            proc.close()  # (one still not reapable is left to the garbage collector, never a crash)
        child.proc = None
        child.killed_at = 0.0
        child.last_exit = code
        child.last_beat = 0.0
        self.events.child_exited(child, code)
        pid, child.pid = child.pid, 0
        if child.state is ChildState.STOPPING:
            log.info("%s: pid %d stopped (exit %d)", child.name, pid, code)
            self.events.child_stopped(child)
            return
        log.error("%s: pid %d died (exit %d)", child.name, pid, code)
        self._crashed(child, self.clock())

    def _crashed(self, child: Child, now: float) -> None:
        """Back off before the next start, or go offline after too many crashes."""
        settings = child.spec.settings()
        child.crash_times.append(now)
        while child.crash_times and child.crash_times[0] < now - settings.window_s:
            child.crash_times.popleft()
        if len(child.crash_times) > settings.max_restarts:
            child.offline_since = time.time()
            self.set_state(child, ChildState.OFFLINE)
            log.error(
                "%s: %d crashes within %.0f s; offline until the node restarts",
                child.name,
                len(child.crash_times),
                settings.window_s,
            )
            return
        child.next_start = now + settings.backoff(len(child.crash_times))
        self.set_state(child, ChildState.BACKOFF)

    # ---- the tick -------------------------------------------------------------------------
    def check(self, children: list[Child], now: float, restart: bool, stop_deadline: float | None) -> None:
        """Restart due children (if ``restart``); kill hung ones (no heartbeat, not ready
        in time) so they are restarted; kill those still stopping after ``stop_deadline``.
        After a pause of the node itself (``PAUSE_S`` between two checks) every child first
        gets a full new heartbeat timeout (pitfalls.md, item 15)."""
        if self._last_check is not None and now - self._last_check > PAUSE_S:
            log.warning(
                "the node's loop was not scheduled for %.1f s (paused?): its children get a full heartbeat timeout",
                now - self._last_check,
            )
            self.grant_beat(children, now)
        self._last_check = now
        # one read of each kind's settings per check (equal bound methods are one key)
        settings_of: dict[Callable[[], Supervision], Supervision] = {}
        for child in children:
            if child.queued:
                continue
            settings = settings_of.get(child.spec.settings)
            if settings is None:
                settings = settings_of[child.spec.settings] = child.spec.settings()
            if child.state is ChildState.BACKOFF and now >= child.next_start and restart:
                child.restarts += 1
                self.enqueue(child)
            elif child.state is ChildState.SERVING:
                timeout_s = settings.heartbeat_timeout_s
                stale = now - max(child.last_beat, child.started_at) > timeout_s  # read again before judging
                if stale or now - child.beat_read_at >= min(BEAT_READ_S, timeout_s / 8):
                    child.beat_read_at = now
                    beat = child.spec.heartbeat()
                    if beat is not None:  # else stopped mid-write: its heartbeat ages like any silent child's
                        child.last_beat = max(child.last_beat, beat)
                last = max(child.last_beat, child.started_at)
                if now - last > timeout_s:
                    log.error("%s: pid %d silent for %.1f s; killing it", child.name, child.pid, now - last)
                    self.signal(child, signal.SIGKILL)
            elif child.state is ChildState.STARTING and now - child.started_at > settings.start_timeout_s:
                log.error(
                    "%s: pid %d not ready after %.0f s; killing it", child.name, child.pid, now - child.started_at
                )
                self.signal(child, signal.SIGKILL)
            elif child.state is ChildState.STOPPING and stop_deadline is not None and now > stop_deadline:
                log.error("%s: pid %d did not stop in time; killing it", child.name, child.pid)
                self.signal(child, signal.SIGKILL)
        if restart and self._queue:
            self.start_queued()

    def grant_beat(self, children: list[Child], now: float) -> None:
        """Give every child a full heartbeat timeout from ``now`` (after a reload that
        shortened it: each must hear of it and beat)."""
        for child in children:
            child.last_beat = max(child.last_beat, now)
