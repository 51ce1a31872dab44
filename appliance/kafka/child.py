"""The Kafka listener as children of the node: ``[kafka] listener_processes`` processes
(1 by default), each one more ``ChildSpec`` (appliance/children.py), kept alive,
restarted with backoff, killed when silent, stopped at shutdown, exactly as the
partition workers are (``appliance/replicas.py`` shows the pattern). They share
``kafka_listen`` through ``SO_REUSEPORT``: the kernel spreads new connections over the
processes listening, and a restarted one binds again beside the others. The children
are named ``kafka-listener`` (the first) and ``kafka-listener-1``, ``-2``, ...

Heartbeat and readiness go through one small file each listener alone writes,
``<runtime_dir>/kafka-listener.beat`` (the first; ``kafka-listener-<i>.beat`` for the
others) (16 bytes: the listener's pid as int64, then its
last heartbeat as a float64 on the system-wide monotonic clock, little-endian; one
``pwrite`` each time, every ``BEAT_S``). The node reads it: the child's pid in the file
means the listener has bound its port and serves (STARTING → SERVING); the heartbeat
is judged like a worker's. A value torn by a concurrent write is a pid that does not
match or a time in the future, and is ignored for that tick.

The port is tried by the node at start (``check_bindable``), so ``kafka_listen`` on a
port in use is one clear start-up error, not a crash-looping child.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

from appliance.beat import read_beat
from appliance.children import Child, Children, ChildSpec, ChildState, Supervision
from appliance.config import NodeConfig
from appliance.kafka.spec import BEAT_FILE, ListenerSpec
from ipc.errors import InvalidConfigError

log = logging.getLogger(__name__)

def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def check_bindable(cfg: NodeConfig) -> None:
    """Refuse a ``kafka_listen`` whose port cannot be bound (in use, no such address)."""
    host, port = split_hostport(cfg.kafka_listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise InvalidConfigError(f"kafka_listen={cfg.kafka_listen!r}: cannot bind: {why}") from None


def beat_file(index: int) -> str:
    return BEAT_FILE if index == 0 else BEAT_FILE.replace(".beat", f"-{index}.beat")


class _Process:
    """One listener process: its ``Child`` and its beat file."""

    def __init__(self, owner: KafkaListenerChild, index: int, supervision: Callable[[], Supervision]) -> None:
        self.owner = owner
        self.index = index
        self.beat_path = os.path.join(owner.runtime_dir, beat_file(index))
        name = "kafka-listener" if index == 0 else f"kafka-listener-{index}"
        self.child = Child(ChildSpec(name, self._start, self.heartbeat, supervision))

    def _start(self) -> tuple[Callable[..., None], tuple[Any, ...]]:
        from appliance.kafka.listener import run_listener

        try:
            os.unlink(self.beat_path)  # the previous listener's: never judge the new one by it
        except FileNotFoundError:
            pass
        return run_listener, (self.owner.spec(self.beat_path),)

    def heartbeat(self) -> float | None:
        got = read_beat(self.beat_path)
        if got is None or got[0] != self.child.pid or got[1] > self.owner.clock() + 1.0:
            return None
        return got[1]


class KafkaListenerChild:
    """The node's side of its Kafka listener processes (``ChildEvents`` of their ``Children``)."""

    def __init__(
        self,
        config: Callable[[], NodeConfig],
        mp: Any,
        poller: zmq.Poller,
        supervision: Callable[[], Supervision],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self.clock = clock
        self.runtime_dir = config().resolved_runtime_dir
        self.children = Children(mp, poller, self, clock)
        n = config().kafka.listener_processes
        self.processes = [_Process(self, i, supervision) for i in range(n)]
        self._by_child = {id(p.child): p for p in self.processes}

    def spec(self, beat_path: str) -> ListenerSpec:
        cfg = self._config()
        host, port = split_hostport(cfg.kafka_listen)
        adv_host, adv_port = cfg.kafka_advertised
        return ListenerSpec(
            node_id=cfg.node_id,
            bind_host=host,
            bind_port=port,
            advertised_host=adv_host,
            advertised_port=adv_port,
            front=cfg.advertised,
            security=cfg.security,
            max_request_bytes=cfg.max_request_bytes,
            beat_path=beat_path,
            supervisor_pid=os.getpid(),
            log_level=cfg.log_level,
            kafka=cfg.kafka,
        )

    # ---- the node's loop --------------------------------------------------------------------
    def start(self) -> None:
        for p in self.processes:
            self.children.enqueue(p.child)

    def on_events(self, events: dict[Any, int]) -> None:
        self.children.on_events(events)

    def check(self, now: float, restart: bool, stop_deadline: float | None) -> None:
        for p in self.processes:
            c = p.child
            if c.state is ChildState.STARTING and c.running and p.heartbeat() is not None:
                self.children.serving(c)
        self.children.check([p.child for p in self.processes], now, restart, stop_deadline)

    def stop(self) -> None:
        for p in self.processes:
            if p.child.running or p.child.queued:
                self.children.stop(p.child)

    @property
    def running(self) -> bool:
        return any(p.child.running for p in self.processes)

    @property
    def pids(self) -> list[int]:
        """The running listener processes' pids (tests, status)."""
        return [p.child.pid for p in self.processes if p.child.running]

    # ---- ChildEvents --------------------------------------------------------------------------
    def child_state_changed(self, child: Child, old: ChildState) -> None:
        pass  # logged by Children

    def child_exited(self, child: Child, code: int) -> None:
        pass

    def child_stopped(self, child: Child) -> None:
        p = self._by_child.get(id(child))
        if p is None:
            return
        try:
            os.unlink(p.beat_path)
        except FileNotFoundError:
            pass
