"""The commands about the node on this host, found by its configuration rather than over
the network: ``sluice serve`` runs it, ``sluice status`` reads its shared-memory status
table (it works when the supervisor is busy or dead).

``serve``'s order matters: the data directory is locked first (a refused second node
touches nothing), and prometheus_client's multiprocess directory is prepared before
anything imports prometheus_client (it reads ``PROMETHEUS_MULTIPROC_DIR`` once, at
import: ../shared/pitfalls.md item 2) and before the fork server starts. So this module
imports nothing of the node at its top; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse

from appliance.cli.common import print_json


# ---- serve ---------------------------------------------------------------------------------
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


# ---- status --------------------------------------------------------------------------------
def cmd_status(a: argparse.Namespace) -> int:
    from appliance.config import load_config
    from appliance.status import read_status

    cfg = load_config(a.config, {"data_dir": a.data_dir})
    status = read_status(cfg.status_path)
    if a.json:
        print_json(status)
        return 0
    print(
        f"node {status['node_id']}  supervisor pid {status['supervisor_pid']} "
        f"({'running' if status['supervisor_alive'] else 'NOT RUNNING'})  data {cfg.data_dir}"
    )
    print(
        f"{'TOPIC':<24} {'PART':>4} {'STATE':<10} {'PID':>7} {'RESTARTS':>8} {'EPOCH':>5} "
        f"{'START':>10} {'LEO':>10} {'HW':>10} {'HEARTBEAT':>9} {'IN':>10} {'OUT':>10}"
    )
    for p in status["partitions"]:
        age = p["heartbeat_age_s"]
        beat = "-" if age is None else f"{age:.1f}s"
        print(
            f"{p['topic']:<24} {p['partition']:>4} {p['state']:<10} {p['pid']:>7} {p['restarts']:>8} "
            f"{p['leader_epoch']:>5} {p['log_start_offset']:>10} {p['log_end_offset']:>10} "
            f"{p['high_watermark']:>10} {beat:>9} {p['records_in']:>10} {p['records_out']:>10}"
        )
    return 0
