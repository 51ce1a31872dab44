"""What ``Children`` does per child stays cheap with many children (issue 18): a serving
child's heartbeat is read every eighth of its timeout rather than at every tick (and
again before it is judged), and started processes are not kept in ``multiprocessing``'s
own set of children, which every ``Process.start()`` polls one by one."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal

import zmq

from appliance.children import Child, Children, ChildSpec, ChildState, Supervision

SETTINGS = Supervision(heartbeat_timeout_s=2.0, start_timeout_s=5.0)


class Owner:
    def child_state_changed(self, child: Child, old: ChildState) -> None:
        pass

    def child_exited(self, child: Child, code: int) -> None:
        pass

    def child_stopped(self, child: Child) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    def __init__(self, target: object, args: object, name: str) -> None:
        self.pid = 4242
        self._r, self._w = os.pipe()
        self.sentinel = self._r

    def start(self) -> None:
        pass


class FakeMp:
    Process = FakeProcess


def test_a_serving_childs_heartbeat_is_read_every_eighth_of_its_timeout_and_before_judging() -> None:
    clock = Clock()
    kills: list[tuple[int, int]] = []
    children = Children(FakeMp(), zmq.Poller(), Owner(), clock, kill=lambda pid, sig: kills.append((pid, sig)))
    reads: list[float] = []
    beat = {"at": clock.now}

    def heartbeat() -> float:
        reads.append(clock.now)
        return beat["at"]

    child = Child(ChildSpec("c", lambda: (print, ()), heartbeat, lambda: SETTINGS))
    children.start(child)
    children.serving(child)
    proc = child.proc
    assert isinstance(proc, FakeProcess)
    for _ in range(20):  # 2 s of ticks, the child beating all along
        clock.now += 0.1
        beat["at"] = clock.now
        children.check([child], clock.now, restart=True, stop_deadline=None)
    assert 7 <= len(reads) <= 9  # every 0.25 s (2.0 s / 8), not 20 times
    assert not kills
    reads.clear()
    for _ in range(30):  # then silent: killed once its last beat is 2 s old
        clock.now += 0.1
        children.check([child], clock.now, restart=True, stop_deadline=None)
        if kills:
            break
    assert kills == [(4242, signal.SIGKILL)]
    assert reads[-1] == clock.now  # read again at the moment it was judged
    for fd in (proc._r, proc._w):
        os.close(fd)


def _exit_at_once() -> None:
    pass


def test_started_processes_are_not_left_in_multiprocessings_own_set() -> None:
    poller = zmq.Poller()
    children = Children(multiprocessing.get_context("spawn"), poller, Owner())
    child = Child(ChildSpec("quick", lambda: (_exit_at_once, ()), lambda: None, lambda: SETTINGS))
    children.start(child)
    try:
        assert child.proc is not None
        assert child.proc not in multiprocessing.process._children  # type: ignore[attr-defined]
        events = dict(poller.poll(30_000))  # its exit sentinel
        assert events, "the child did not exit within 30 s"
        children.stop(child)  # STOPPING: its exit is a clean stop
        children.on_events(events)
        assert child.proc is None and child.last_exit == 0
    finally:
        if child.proc is not None:
            child.proc.kill()
            child.proc.join(10)
