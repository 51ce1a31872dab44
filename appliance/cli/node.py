"""``sluice serve``: runs the node on this host (``sluice status``, which reads the
node's shared-memory status table, is ``status.py``).

``serve``'s order matters: the data directory is locked first (a refused second node
touches nothing), and prometheus_client's multiprocess directory is prepared before
anything imports prometheus_client (it reads ``PROMETHEUS_MULTIPROC_DIR`` once, at
import: ../shared/pitfalls.md item 2) and before the fork server starts. So this module
imports nothing of the node at its top; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.cli.common import non_negative


def add_parsers(sub: Any) -> None:
    s = sub.add_parser(
        "serve",
        help="run the appliance (supervisor and partition workers)",
        description="Run the node in the foreground; flags override the configuration file.",
    )
    s.add_argument("--config", help="TOML configuration file")
    s.add_argument("--data-dir", help="where the logs and the node's metadata live (data_dir)")
    s.add_argument("--listen", help="front endpoint, tcp://HOST:PORT")
    s.add_argument("--advertised-listen", help="address clients and peers use to reach this node")
    s.add_argument("--metrics-listen", help="HOST:PORT of /metrics and /healthz ('' to disable)")
    s.add_argument("--node-id", type=non_negative, help="this node's id in a cluster (node_id)")
    s.add_argument("--coordinator", help="local (default) or zookeeper://HOST:PORT[,HOST:PORT...]/PATH")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level (log_level)")


def cmd_serve(a: argparse.Namespace) -> int:
    from appliance.config import load_config
    from appliance.process import SignalPipe, setup_logging

    overrides = {
        "data_dir": a.data_dir,
        "listen": a.listen,
        "advertised_listen": a.advertised_listen,
        "metrics_listen": a.metrics_listen,
        "node_id": a.node_id,
        "coordinator": a.coordinator,
        "log_level": a.log_level,
    }
    cfg = load_config(a.config, overrides)
    setup_logging(cfg.log_level)
    import os
    import signal

    os.umask(0o077)  # what a library creates is private too; the node's own files set their modes

    from appliance.datadir import lock_data_dir
    from metrics import multiproc

    lock_fd = lock_data_dir(cfg.data_dir)  # first: a refused second node must touch nothing
    from appliance import rundir

    runtime = rundir.claim(cfg.resolved_runtime_dir, cfg.data_dir)  # locked before anything in it is wiped
    rundir.sweep(runtime.path)  # the runtime directories of this user's dead nodes
    # before anything imports prometheus_client, and before the fork server starts
    multiproc.prepare(runtime.path)

    from appliance.supervisor import Supervisor
    from appliance.systemd import ServiceNotifier

    systemd = ServiceNotifier.from_environ()  # before the fork server starts: it must not inherit NOTIFY_SOCKET
    signals = SignalPipe((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    supervisor = Supervisor(
        cfg, load_config=lambda: load_config(a.config, overrides), systemd=systemd, lock_fd=lock_fd, rundir=runtime
    )
    return supervisor.run(signals)
