"""Keeping children alive (appliance/children.py) with fake processes: each fake's exit
sentinel is a real pipe, so the keeper's poller sees it like a real child's, and no
process is started or signalled."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import zmq

from appliance.children import Child, Children, ChildSpec, ChildState, Supervision

SETTINGS = Supervision(
    heartbeat_timeout_s=2.0, start_timeout_s=5.0, backoff_s=0.1, backoff_max_s=0.3, max_restarts=2, window_s=10.0
)


class FakeProcess:
    started: list[FakeProcess] = []

    def __init__(self, target: Any, args: tuple[Any, ...], name: str) -> None:
        self.target, self.args, self.name = target, args, name
        self.pid: int | None = None
        self.exitcode: int | None = None
        self._r, self._w = os.pipe()
        self.sentinel = self._r

    def start(self) -> None:
        self.pid = 10_000 + len(FakeProcess.started)
        FakeProcess.started.append(self)

    def exit(self, code: int) -> None:
        self.exitcode = code
        os.close(self._w)  # the sentinel becomes readable, as when a child exits

    def join(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        os.close(self._r)


class FakeMp:
    Process = FakeProcess


class Owner:
    """The ChildEvents of the test: records what the keeper reports."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def child_state_changed(self, child: Child, old: ChildState) -> None:
        self.log.append(("state", f"{old.value}->{child.state.value}"))

    def child_exited(self, child: Child, code: int) -> None:
        self.log.append(("exited", str(code)))

    def child_stopped(self, child: Child) -> None:
        self.log.append(("stopped", child.name))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keeper() -> Any:
    FakeProcess.started = []
    clock = Clock()
    owner = Owner()
    kills: list[tuple[int, int]] = []
    poller = zmq.Poller()
    children = Children(FakeMp(), poller, owner, clock, kill=lambda pid, sig: kills.append((pid, sig)))
    beats: dict[str, float | None] = {"beat": None}
    starts: list[int] = []

    def start() -> tuple[Any, tuple[Any, ...]]:
        starts.append(len(starts))
        return print, (len(starts),)

    child = Child(ChildSpec("c", start, lambda: beats["beat"], lambda: SETTINGS))
    yield children, child, clock, owner, kills, beats, starts, poller
    for p in FakeProcess.started:
        for fd in (p._r, p._w):
            try:
                os.close(fd)
            except OSError:
                pass


def _exit(children: Children, poller: zmq.Poller, code: int) -> None:
    FakeProcess.started[-1].exit(code)
    children.on_events(dict(poller.poll(1000)))


def test_start_ready_and_a_clean_stop(keeper: Any) -> None:
    children, child, clock, owner, kills, _, starts, poller = keeper
    children.start(child)
    assert child.state is ChildState.STARTING and child.pid == 10_000 and starts == [0]
    children.serving(child)
    children.stop(child)
    assert kills == [(10_000, signal.SIGTERM)] and child.state is ChildState.STOPPING
    _exit(children, poller, 0)
    assert child.pid == 0 and not child.running
    assert owner.log == [
        ("state", "starting->starting"),
        ("state", "starting->serving"),
        ("state", "serving->stopping"),
        ("exited", "0"),
        ("stopped", "c"),
    ]


def test_a_crash_backs_off_then_restarts_with_a_fresh_start(keeper: Any) -> None:
    children, child, clock, owner, kills, _, starts, poller = keeper
    children.start(child)
    children.serving(child)
    _exit(children, poller, 3)
    assert child.state is ChildState.BACKOFF and child.last_exit == 3
    assert child.next_start == pytest.approx(clock.now + 0.1)
    children.check([child], clock.now + 0.05, restart=True, stop_deadline=None)
    assert child.state is ChildState.BACKOFF  # not due yet
    children.check([child], clock.now + 0.2, restart=False, stop_deadline=None)
    assert child.state is ChildState.BACKOFF  # the node is stopping: no restart
    children.check([child], clock.now + 0.2, restart=True, stop_deadline=None)
    assert child.state is ChildState.STARTING and child.restarts == 1 and starts == [0, 1]


def test_backoff_doubles_up_to_its_cap_and_a_crash_loop_goes_offline(keeper: Any) -> None:
    children, child, clock, owner, kills, _, starts, poller = keeper
    delays = []
    children.start(child)
    for _ in range(3):
        _exit(children, poller, 1)
        if child.state is ChildState.OFFLINE:
            break
        delays.append(round(child.next_start - clock.now, 3))
        children.check([child], child.next_start, restart=True, stop_deadline=None)
    assert delays == [0.1, 0.2]
    assert child.state is ChildState.OFFLINE and child.offline_since > 0  # 3 crashes > max_restarts=2
    children.check([child], clock.now + 100, restart=True, stop_deadline=None)
    assert child.state is ChildState.OFFLINE and len(starts) == 3


def test_crashes_outside_the_window_do_not_count(keeper: Any) -> None:
    children, child, clock, owner, kills, _, starts, poller = keeper
    children.start(child)
    for _ in range(4):
        _exit(children, poller, 1)
        assert child.state is ChildState.BACKOFF
        clock.now += 11  # past the 10 s window each time
        children.check([child], clock.now, restart=True, stop_deadline=None)


def test_a_silent_child_is_killed_and_a_beating_one_is_not(keeper: Any) -> None:
    children, child, clock, owner, kills, beats, _, _ = keeper
    children.start(child)
    children.serving(child)
    beats["beat"] = clock.now + 1.5
    children.check([child], clock.now + 3.0, restart=True, stop_deadline=None)
    assert kills == []  # beat 1.5 s before
    children.check([child], clock.now + 3.6, restart=True, stop_deadline=None)
    assert kills == [(10_000, signal.SIGKILL)] and child.killed_at == clock.now
    beats["beat"] = None  # nothing to read now: the last beat seen still counts
    children.grant_beat([child], clock.now + 10)
    kills.clear()
    children.check([child], clock.now + 11, restart=True, stop_deadline=None)
    assert kills == []


def test_a_child_not_ready_in_time_and_one_not_stopped_by_the_deadline_are_killed(keeper: Any) -> None:
    children, child, clock, owner, kills, _, _, _ = keeper
    children.start(child)
    children.check([child], clock.now + 4, restart=True, stop_deadline=None)
    assert kills == []
    children.check([child], clock.now + 6, restart=True, stop_deadline=None)
    assert kills == [(10_000, signal.SIGKILL)]
    kills.clear()
    children.serving(child)
    children.stop(child)
    children.check([child], clock.now + 1, restart=False, stop_deadline=clock.now + 2)
    assert kills == [(10_000, signal.SIGTERM)]
    children.check([child], clock.now + 3, restart=False, stop_deadline=clock.now + 2)
    assert kills[-1] == (10_000, signal.SIGKILL)


def test_stopping_a_child_that_does_not_run_forgets_it_at_once(keeper: Any) -> None:
    children, child, clock, owner, kills, _, _, poller = keeper
    children.start(child)
    _exit(children, poller, 1)
    children.stop(child)  # in backoff: nothing to signal
    assert kills == [] and owner.log[-1] == ("stopped", "c")


def test_a_pause_of_the_node_itself_is_not_taken_for_hung_children(keeper: Any) -> None:
    """SIGSTOP/SIGCONT of the whole node: its loop's clock jumps, the children's last
    heartbeats are as old as the pause; they get a full new timeout, then are judged."""
    children, child, clock, owner, kills, beats, _, _ = keeper
    children.start(child)
    children.serving(child)
    beats["beat"] = clock.now
    children.check([child], clock.now + 0.1, restart=True, stop_deadline=None)
    children.check([child], clock.now + 30.0, restart=True, stop_deadline=None)  # paused 30 s
    assert kills == []
    children.check([child], clock.now + 31.0, restart=True, stop_deadline=None)
    assert kills == []  # within the new timeout (2 s)
    for t in (31.5, 32.0, 32.1):  # the loop runs again (no jump), and the child stays silent
        children.check([child], clock.now + t, restart=True, stop_deadline=None)
    assert kills == [(10_000, signal.SIGKILL)]
