"""Supervisor-side glue: publishes a ``NodeSnapshot`` every second and owns the server."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from appliance.nodeview import NodeState
from ipc.errors import InvalidConfigError
from metrics.build import BuildInfo
from metrics.exporter import MetricsServer, NodeCollector, NodeSnapshot, ReplicaSnap, build_registry
from metrics.multiproc import MULTIPROC_ENV
from metrics.password import BasicAuth
from metrics.processes import RoleProcesses
from metrics.tls import server_context

if TYPE_CHECKING:
    from appliance.nodeview import NodeView

log = logging.getLogger(__name__)

SNAPSHOT_INTERVAL_S = 1.0


class NodeMetrics:
    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.snapshot = NodeSnapshot(node.config.node_id, True, taken_at=time.monotonic())
        self.server: MetricsServer | None = None
        self._next = 0.0

    def start(self) -> None:
        config = self.node.config
        listen = config.metrics_listen
        collector = NodeCollector(lambda: self.snapshot, self.node.table)
        # TLS and basic auth are restart options (appliance/reload.py): fixed for the server's life
        tls = (
            server_context(config.metrics_tls_cert_file, config.metrics_tls_key_file)
            if config.metrics_tls_cert_file
            else None
        )
        auth = BasicAuth(config.metrics_basic_auth_users) if config.metrics_basic_auth_users else None
        if auth is not None and tls is None and listen:
            log.warning(
                "metrics_basic_auth_users without metrics_tls_cert_file: passwords cross the network in clear text"
            )
        registry = build_registry(collector, os.environ.get(MULTIPROC_ENV))
        registry.register(BuildInfo())
        registry.register(RoleProcesses())
        self.server = MetricsServer(registry, lambda: self.snapshot, tls=tls, auth=auth)
        if listen:
            try:
                self.server.start(listen)
            except OSError as exc:
                raise InvalidConfigError(f"metrics_listen={listen!r}: cannot serve: {exc.strerror}") from None

    def reconfigure(self, listen: str) -> None:
        if self.server is not None:
            try:
                self.server.reconfigure(listen)
            except OSError as exc:
                log.error("metrics_listen=%r: cannot serve: %s", listen, exc)

    def worker_gone(self, pid: int) -> None:
        """A reaped worker: drop its live gauges from the multiprocess files."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

    def tick(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + SNAPSHOT_INTERVAL_S
        node = self.node
        replicas = tuple(
            ReplicaSnap(r.topic, r.partition, r.slot, r.state.value, r.pid, r.restarts, r.counters)
            for r in node.replica_views()
        )
        groups = node.group_summaries()
        # the watchdog's rule (appliance/systemd.py): no partition offline, no worker that
        # outlives its SIGKILL; /healthz and sluice_node_healthy say what systemd acts on
        health = node.health(now)
        running = node.state is NodeState.RUNNING
        if not health.healthy:
            note = health.problems()
        elif not running:
            note = f"node {node.state.value}"
        else:
            note = "ok"
        self.snapshot = NodeSnapshot(
            node.config.node_id,
            controller_active=node.coordinator.is_controller(),
            under_replicated=sum(
                1
                for r in node.replica_views()
                if r.role is not None and r.role.is_leader and len(r.role.isr) < len(r.role.replicas)
            ),
            isr_shrinks=node.isr_shrinks,
            isr_expands=node.isr_expands,
            replicas=replicas,
            groups=tuple(groups),
            healthy=running and health.healthy,
            health_note=note,
            taken_at=now,
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
