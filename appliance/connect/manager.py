"""The node's side of its connectors: one kept child process per connector (a
``ChildSpec`` of ``appliance/children.py``, like a partition worker), restarted with
backoff, killed when its heartbeat stops, stopped with SIGTERM.

Which connectors run is re-derived about once a second from two sources: the node's
configuration (``[[connectors]]``; a SIGHUP reload changes it) and the connectors
created with ``sluice connect create`` (``store.py``), minus the paused ones. A
connector whose configuration changed, that was paused or deleted, or whose restart was
asked for is stopped; the next pass starts what should run and does not. A declared
connector and a created one of the same name: the declared one runs.

Before the first connector runs, the node creates ``__connect_offsets`` (compacted, like
``__consumer_offsets``: clients cannot create ``__`` topics). Once a second it writes
``<runtime_dir>/connect/status.json``, what ``sluice connect status`` shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from appliance.beat import read_beat
from appliance.children import Child, Children, ChildSpec, ChildState, Supervision
from appliance.connect.config import ConnectorConfig
from appliance.connect.spec import OFFSETS_TOPIC, STATUS_DIR, ConnectorSpec
from appliance.connect.status import read_json, write_json
from appliance.connect.store import ConnectorStore
from appliance.nodeview import NodeState, NodeView
from appliance.topics import create_topic
from ipc.errors import SluiceError, TopicAlreadyExistsError
from ipc.private import ensure_private_dir

log = logging.getLogger(__name__)

PASS_S = 1.0  # how often the wanted connectors are re-derived and status.json written
CREATE_RETRY_S = 10.0
# At node shutdown the connectors stop first, for up to this long, while the node still
# serves: they are its clients, and their last flush goes through its partitions.
STOP_FIRST_S = 5.0
OFFSETS_TOPIC_CONFIG = {"cleanup.policy": "compact", "fsync": "always"}


@dataclasses.dataclass
class Wanted:
    config: ConnectorConfig
    origin: str  # "config" ([[connectors]]) or "created" (sluice connect create)
    paused: bool


@dataclasses.dataclass
class Managed:
    config: ConnectorConfig
    origin: str
    child: Child


class ConnectorManager:
    def __init__(
        self,
        node: NodeView,
        mp: Any,
        poller: zmq.Poller,
        supervision: Callable[[], Supervision],
        clock: Callable[[], float] = time.monotonic,
        process_gone: Callable[[int], None] = lambda pid: None,
    ) -> None:
        self.node = node
        self.clock = clock
        self.supervision = supervision
        self.process_gone = process_gone  # the node's metrics: drop a reaped process's live gauges
        self.children = Children(mp, poller, self, clock)
        self.store = ConnectorStore(node.config.data_dir)
        self.status_dir = os.path.join(node.config.resolved_runtime_dir, STATUS_DIR)
        self.managed: dict[str, Managed] = {}
        self._next_pass = 0.0
        self._next_create = 0.0
        self._wanted: dict[str, Wanted] = {}
        self._node_stop_at: float | None = None  # set when the node began to shut down

    def setup(self) -> None:
        ensure_private_dir(self.status_dir, "runtime_dir (connect/)")
        self.store.ensure()

    # ---- what should run ------------------------------------------------------------------
    def wanted(self) -> dict[str, Wanted]:
        paused = self.store.paused()
        out = {c.name: Wanted(c, "config", c.name in paused) for c in self.node.config.connectors}
        for name, c in self.store.created().items():
            if name in out:
                log.warning(
                    "connector %s is declared in the configuration: the one created by command is ignored", name
                )
                continue
            out[name] = Wanted(c, "created", name in paused)
        return out

    def _pass(self, now: float, restart: bool) -> None:
        self._wanted = wanted = self.wanted()
        restarts = self.store.take_restarts()
        for name, m in list(self.managed.items()):
            w = wanted.get(name)
            why = (
                "deleted"
                if w is None
                else "paused"
                if w.paused
                else "its configuration changed"
                if w.config != m.config
                else "a restart was asked for"
                if name in restarts
                else None
            )
            if why is None:
                continue
            if m.child.state is ChildState.STOPPING:
                continue
            log.info("connector %s: stopping: %s", name, why)
            self.children.stop(m.child)  # child_stopped forgets it (at once when not running)
        if not restart or not wanted or not self._offsets_topic_ready(now):
            return
        for name, w in wanted.items():
            if name not in self.managed and not w.paused:
                self._add(w)

    def _offsets_topic_ready(self, now: float) -> bool:
        """``__connect_offsets`` exists (created here on the first need)."""
        node = self.node
        if OFFSETS_TOPIC in node.coordinator.topics():
            return True
        if now < self._next_create or node.state is not NodeState.RUNNING:
            return False
        rf = max(1, min(3, len(node.coordinator.nodes())))
        config: dict[str, Any] = dict(OFFSETS_TOPIC_CONFIG)
        if rf >= 3:
            config["min.insync.replicas"] = 2
        try:
            create_topic(node, OFFSETS_TOPIC, 1, rf, config)
        except TopicAlreadyExistsError:
            pass  # another node made it first
        except SluiceError as exc:
            self._next_create = now + CREATE_RETRY_S
            log.error("cannot create %s, connectors cannot start: %s", OFFSETS_TOPIC, exc)
            return False
        return True

    def _add(self, w: Wanted) -> None:
        name = w.config.name
        holder: dict[str, Managed] = {}

        def start() -> tuple[Callable[..., None], tuple[Any, ...]]:
            return self._start(holder["m"])

        def heartbeat() -> float | None:
            return self._heartbeat(holder["m"])

        child = Child(ChildSpec(f"connector-{name}", start, heartbeat, self.supervision))
        m = holder["m"] = Managed(w.config, w.origin, child)
        self.managed[name] = m
        self.children.enqueue(child)

    def _spec(self, m: Managed) -> ConnectorSpec:
        cfg = self.node.config
        security: dict[str, str] | None = None
        if cfg.security.uses_curve:
            server, _ = cfg.security.load(cfg.node_id)
            security = {"server_public_key": server.public.decode(), "secret_key_file": cfg.security.node_key_file}
        return ConnectorSpec(
            name=m.config.name,
            cls=m.config.cls,
            options=dict(m.config.options),
            bootstrap=cfg.advertised,
            security=security,
            status_dir=self.status_dir,
            supervisor_pid=os.getpid(),
            log_level=cfg.log_level,
        )

    def _start(self, m: Managed) -> tuple[Callable[..., None], tuple[Any, ...]]:
        from appliance.connect.runtime import run_connector

        spec = self._spec(m)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.beat_path)  # the previous process's: never judge the new one by it
        return run_connector, (spec,)

    def _heartbeat(self, m: Managed) -> float | None:
        got = read_beat(os.path.join(self.status_dir, f"{m.config.name}.beat"))
        if got is None or got[0] != m.child.pid or got[1] > self.clock() + 1.0:
            return None
        return got[1]

    # ---- the node's loop --------------------------------------------------------------------
    def on_events(self, events: dict[Any, int]) -> None:
        self.children.on_events(events)

    def check(self, now: float, restart: bool, stop_deadline: float | None) -> None:
        restart = restart and self._node_stop_at is None
        if now >= self._next_pass:
            self._next_pass = now + PASS_S
            if restart:  # running: stopping nodes start and change nothing
                self._pass(now, restart)
            self._write_status()
        for m in self.managed.values():
            if m.child.state is ChildState.STARTING and m.child.running and self._heartbeat(m) is not None:
                self.children.serving(m.child)
        self.children.check([m.child for m in self.managed.values()], now, restart, stop_deadline)

    def stop_before_node(self, now: float) -> bool:
        """The node begins to shut down: stop the connectors first (True), while the node
        still serves; ``node_may_stop`` says when the node goes on. False when none runs
        or this was done already."""
        if self._node_stop_at is not None or not self.any_running:
            return False
        self._node_stop_at = now + STOP_FIRST_S
        log.info("stopping the connectors before the node")
        self.stop_all()
        return True

    def node_may_stop(self, now: float) -> bool:
        """After ``stop_before_node``: every connector is gone, or ``STOP_FIRST_S`` passed."""
        return self._node_stop_at is not None and (not self.any_running or now >= self._node_stop_at)

    def stop_all(self) -> None:
        for m in list(self.managed.values()):
            if m.child.state is not ChildState.STOPPING:
                self.children.stop(m.child)

    @property
    def any_running(self) -> bool:
        return any(m.child.running for m in self.managed.values())

    @property
    def pending_starts(self) -> int:
        return self.children.pending_starts

    # ---- status -----------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        out = []
        names = sorted(set(self._wanted) | set(self.managed))
        for name in names:
            w, m = self._wanted.get(name), self.managed.get(name)
            config = m.config if m is not None else w.config if w is not None else None
            assert config is not None
            task = read_json(os.path.join(self.status_dir, f"{name}.json"))
            paused = w is not None and w.paused
            state = m.child.state.value if m is not None else "paused" if paused else "stopped"
            out.append(
                {
                    "name": name,
                    "class": config.cls,
                    "origin": m.origin if m is not None else w.origin if w is not None else "",
                    "target": "paused" if w is not None and w.paused else "running" if w is not None else "deleted",
                    "state": state,
                    "pid": m.child.pid if m is not None else 0,
                    "restarts": m.child.restarts if m is not None else 0,
                    "last_exit": m.child.last_exit if m is not None else None,
                    "offline_since": m.child.offline_since if m is not None and m.child.offline_since else None,
                    "task": task if isinstance(task, dict) else None,
                }
            )
        return out

    def _write_status(self) -> None:
        try:
            write_json(os.path.join(self.status_dir, "status.json"), {"time": time.time(), "connectors": self.status()})
        except OSError as exc:
            log.error("cannot write the connectors' status: %s", exc)

    # ---- ChildEvents ------------------------------------------------------------------------
    def child_state_changed(self, child: Child, old: ChildState) -> None:
        pass  # logged by Children

    def child_exited(self, child: Child, code: int) -> None:
        if child.pid:
            self.process_gone(child.pid)

    def child_stopped(self, child: Child) -> None:
        for name, m in list(self.managed.items()):
            if m.child is child:
                del self.managed[name]
                if name not in self._wanted:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.status_dir, f"{name}.json"))
