"""Configuration reload on SIGHUP: what changes live, and what needs a restart.

The supervisor reads its configuration file again (same ``--config`` path, same
command-line flags on top), compares the new ``NodeConfig`` with the running one and:

* applies the **live** options at once, without dropping a client connection: the
  front endpoint and every worker keep their sockets; the node runs the new
  configuration and reconciles, and the reconciler sends workers what changed for them
  over the control socket (``config`` for topic options, ``node_options`` for the rest);
* keeps the running value of every **restart** option that changed, and reports it
  (a warning in the log and a lasting remark in systemd's ``STATUS=``).

A file that does not load (bad TOML, a bad value) changes nothing: the node keeps its
running configuration and reports the error. An option not listed in ``LIVE`` needs a
restart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from appliance.config import NodeConfig, topic_log_config
from appliance.coordinator import TopicInfo
from ipc.errors import SluiceError

log = logging.getLogger(__name__)

LIVE = frozenset(
    {
        "log_level",  # supervisor and workers (control command node_options)
        "topic_defaults",  # workers (control command config), metadata, describe
        "retention_check_interval_ms",  # workers (node_options)
        "cleaner_interval_ms",  # workers (node_options)
        "metrics_listen",  # stored; read by the metrics exporter
        "auto_create_topics",  # read per metadata request
        "auto_create_topics_per_request",
        "default_partitions",
        "heartbeat_timeout_ms",  # read by every supervisor tick; workers (node_options: their idle tick)
        "worker_start_timeout_ms",
        "restart_backoff_ms",
        "restart_backoff_max_ms",
        "max_restarts",
        "restart_window_ms",
        "shutdown_timeout_ms",
        "connectors",  # what runs is re-derived every second (appliance/connect/manager.py)
    }
)
_ALL = frozenset(f.name for f in dataclasses.fields(NodeConfig))
# Everything else needs a restart: the safe default for an option added later.
# Today: node_id, data_dir, listen, advertised_listen, runtime_dir, coordinator,
# max_partitions (the size of the status table), max_request_bytes (an option of bound sockets).
RESTART = _ALL - LIVE
assert LIVE <= _ALL, f"not NodeConfig options: {sorted(LIVE - _ALL)}"


@dataclasses.dataclass(frozen=True)
class ReloadPlan:
    config: NodeConfig  # the running config with every live change applied
    live: dict[str, tuple[Any, Any]]  # option -> (old, new), applied
    restart: dict[str, tuple[Any, Any]]  # option -> (old, new), not applied

    @property
    def restart_note(self) -> str:
        return f"restart needed to apply: {', '.join(sorted(self.restart))}" if self.restart else ""


def plan_reload(old: NodeConfig, new: NodeConfig) -> ReloadPlan:
    live: dict[str, tuple[Any, Any]] = {}
    restart: dict[str, tuple[Any, Any]] = {}
    for name in sorted(_ALL):
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        (live if name in LIVE else restart)[name] = (before, after)
    config = dataclasses.replace(old, **{k: v[1] for k, v in live.items()})
    return ReloadPlan(config, live, restart)


def _check_topic_defaults(defaults: Mapping[str, Any], topics: Mapping[str, TopicInfo]) -> str | None:
    """New topic defaults must give a valid configuration for every existing topic."""
    for info in topics.values():
        try:
            topic_log_config(defaults, info.config)
        except SluiceError as exc:
            return f"topic_defaults not applied: with the overrides of topic {info.name!r}: {exc}"
    return None


def apply_reload(running: NodeConfig, new: NodeConfig, topics: Mapping[str, TopicInfo]) -> ReloadPlan:
    """What of ``new`` the running node takes: the plan, its decisions logged. The node
    then runs ``plan.config`` and reconciles; the reconciler sends the workers what
    changed for them (``ConfigCommand``, ``NodeOptionsCommand``)."""
    plan = plan_reload(running, new)
    if "topic_defaults" in plan.live:
        problem = _check_topic_defaults(plan.live["topic_defaults"][1], topics)
        if problem is not None:
            log.error("reload: %s", problem)
            live = {k: v for k, v in plan.live.items() if k != "topic_defaults"}
            plan = ReloadPlan(
                dataclasses.replace(plan.config, topic_defaults=running.topic_defaults), live, plan.restart
            )
    for name, (before, after) in plan.live.items():
        log.info("reload: %s %r -> %r", name, before, after)
    for name, (before, after) in plan.restart.items():
        log.warning("reload: %s %r -> %r needs a restart; still running with %r", name, before, after, before)
    if not plan.live and not plan.restart:
        log.info("reload: configuration unchanged")
    return plan
