"""``sluice perf memory``: what a node's processes cost in memory.

Creates ``--topic`` with ``--partitions`` partitions if it does not exist (they stay
idle), waits until every partition serves and ``--settle`` seconds more, then reads
``/proc/PID/smaps_rollup`` (through psutil) of the supervisor and every process under
it: RSS, and PSS (proportional set size: a page shared by k processes counts 1/k in
each, so the PSS of all processes adds up to what the node really occupies; pages
shared after fork, such as the interpreter's, are not counted 100 times). Must run on
the node's host, as its user or root: the node tells remote clients no pids
(docs/security.md), so the processes are found by the TCP ports they listen on (the
front's, and each partition's endpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import psutil

from ipc.client import Admin
from ipc.client.transport import parse_bootstrap
from loadtest.perfclient import PerfError, ensure_topic

GIB = 1024**3
MIB = 1024**2
SERVE_TIMEOUT_S = 120.0


def _wait_serving(admin: Admin, topic: str) -> int:
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        parts = admin.describe_topic(topic)["partitions"]
        waiting = [p["partition"] for p in parts if p.get("state") != "serving"]
        if not waiting:
            return len(parts)
        if time.monotonic() >= deadline:
            raise PerfError(f"{len(waiting)} partition(s) of {topic} not serving after {SERVE_TIMEOUT_S:.0f} s")
        time.sleep(0.2)  # polling the partitions' state, bounded by the deadline


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if "forkserver" in text:
        return "fork server"
    if "resource_tracker" in text:
        return "resource tracker"
    return text[:60]


def _listening() -> dict[int, int]:
    """Port -> pid of every process listening on TCP on this host."""
    return {c.laddr.port: c.pid for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.pid}


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def measure(bootstrap: str | None) -> dict[str, Any]:
    """RSS / PSS / USS of the supervisor and its descendants, by role."""
    listening = _listening()
    front = parse_bootstrap(bootstrap)[0]
    if _port(front) not in listening:
        raise PerfError(f"no process of this host listens on {front}: run on the node's host, as its user or root")
    roles: dict[int, str] = {}
    with Admin(bootstrap) as admin:
        for topic in admin.list_topics(internal=True):
            for p in admin.describe_topic(topic)["partitions"]:
                pid = listening.get(_port(p["endpoint"])) if p.get("endpoint") else None
                if pid:
                    roles[pid] = f"worker {topic}-{p['partition']}"
    sup = psutil.Process(listening[_port(front)])
    procs = [sup, *sup.children(recursive=True)]
    rows = []
    for proc in procs:
        try:
            mem = proc.memory_full_info()
            role = "supervisor" if proc.pid == sup.pid else roles.get(proc.pid) or _role(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied) as exc:
            raise PerfError(f"cannot read the memory of pid {proc.pid}: {exc}") from exc
        rows.append({"pid": proc.pid, "role": role, "rss": mem.rss, "pss": mem.pss, "uss": mem.uss})
    workers = [r for r in rows if r["role"].startswith("worker ")]
    return {
        "processes": rows,
        "workers": len(workers),
        "total_pss": sum(r["pss"] for r in rows),
        "total_rss": sum(r["rss"] for r in rows),
        "worker_pss_avg": sum(r["pss"] for r in workers) / len(workers) if workers else 0.0,
        "worker_rss_avg": sum(r["rss"] for r in workers) / len(workers) if workers else 0.0,
        "worker_uss_avg": sum(r["uss"] for r in workers) / len(workers) if workers else 0.0,
    }


def cmd_memory(a: argparse.Namespace) -> int:
    if a.partitions:
        ensure_topic(a.bootstrap, a.topic, a.partitions, [])
        with Admin(a.bootstrap) as admin:
            _wait_serving(admin, a.topic)
    time.sleep(a.settle)  # let the workers finish start-up (gc.freeze, first status) before measuring
    m = measure(a.bootstrap)
    m["limit_gib"] = a.limit_gib
    m["within_limit"] = m["total_pss"] <= a.limit_gib * GIB
    if a.json:
        sys.stdout.write(json.dumps(m, sort_keys=True) + "\n")
        return 0
    print(f"{'PID':>7} {'RSS MiB':>9} {'PSS MiB':>9} {'USS MiB':>9}  ROLE")
    for r in sorted(m["processes"], key=lambda r: (not r["role"].startswith("supervisor"), r["role"])):
        print(f"{r['pid']:>7} {r['rss'] / MIB:>9.1f} {r['pss'] / MIB:>9.1f} {r['uss'] / MIB:>9.1f}  {r['role']}")
    print(
        f"{len(m['processes'])} processes ({m['workers']} partition workers): total PSS "
        f"{m['total_pss'] / GIB:.3f} GiB (limit {a.limit_gib:g} GiB: {'OK' if m['within_limit'] else 'OVER'}), "
        f"total RSS {m['total_rss'] / GIB:.3f} GiB; per worker RSS {m['worker_rss_avg'] / MIB:.1f} MiB, "
        f"PSS {m['worker_pss_avg'] / MIB:.1f} MiB, USS {m['worker_uss_avg'] / MIB:.1f} MiB"
    )
    return 0
