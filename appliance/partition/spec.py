"""``WorkerSpec``: everything a partition worker needs to start, built by the
supervisor before the fork (picklable: it crosses the fork server)."""

from __future__ import annotations

import dataclasses

from appliance.log.config import LogConfig
from appliance.security_config import SecurityConfig
from ipc.acl import AclBinding
from ipc.control import RoleCommand


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, built by the supervisor before the fork (picklable)."""

    topic: str
    partition: int
    slot: int
    leader_epoch: int
    directory: str
    log_config: LogConfig  # the topic's effective configuration
    listen_host: str
    preferred_port: int
    control_endpoint: str
    status_path: str
    supervisor_pid: int
    log_level: str = "info"
    tick_ms: int = 100
    # an idle worker (no request, nothing parked or pending) ticks less often, but still
    # often enough for its heartbeat: every min(IDLE_TICK_MAX_S, heartbeat timeout / 4)
    heartbeat_timeout_ms: int = 10_000
    retention_check_ms: int = 300_000
    cleaner_interval_ms: int = 15_000
    max_request_bytes: int = 100 * 1024 * 1024
    # records in, bytes in, records out, bytes out of the previous worker of this slot:
    # the counters continue across restarts, so rate() never sees them go backwards
    initial_counters: tuple[int, int, int, int] = (0, 0, 0, 0)
    node_id: int = 0
    replica_lag_time_max_ms: int = 10_000
    # the replica's role when it starts (None: the only replica, leading); changes
    # arrive as control commands (ipc/control.py)
    role: RoleCommand | None = None
    security: SecurityConfig = SecurityConfig()  # keys, protected mode, authorizer (docs/security.md)
    acls: tuple[AclBinding, ...] = ()  # the cluster's ACLs when the worker starts; then AclsCommand
