"""``process_*`` series for every Sluice process, summed per role (no ``pid`` label).

prometheus_client's own process collector describes one process; a node is a supervisor
and its descendants, so at scrape time this walks the supervisor's process tree
(``psutil``, ``/proc``) and sums each role's processes:

=====================  ===================================================================
role                   processes
=====================  ===================================================================
``supervisor``         the node's main process (this one)
``worker``             partition workers (``sluice: worker ...``: ``appliance/proctitle.py``)
``kafka_listener``     the Kafka listener (``sluice: kafka-listener``)
``connector``          connectors (``sluice: connector-<name>``)
``fork_server``        multiprocessing's fork server (``sluice: fork server``)
``resource_tracker``   multiprocessing's resource tracker
``other``              anything else below the supervisor
=====================  ===================================================================

``process_cpu_seconds_total{role}`` stays a counter across exits: the CPU time a process
had at the last scrape that saw it is kept when it goes (what it used after that scrape
is not counted), and a process is known by its pid and start time, so a reused pid is a
new process. ``process_resident_memory_bytes``, ``process_open_fds`` and
``sluice_processes`` are the sums and count now; ``process_start_time_seconds`` is the
supervisor's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

ROLES = ("supervisor", "worker", "kafka_listener", "connector", "fork_server", "resource_tracker", "other")
Key = tuple[int, float]  # pid, start time


def role_of(cmdline: list[str]) -> str:
    """A descendant's role from its command line (its process title)."""
    first = cmdline[0] if cmdline else ""
    if first.startswith("sluice: worker"):
        return "worker"
    if first.startswith("sluice: kafka-listener"):
        return "kafka_listener"
    if first.startswith("sluice: connector"):
        return "connector"
    text = " ".join(cmdline)
    if first.startswith("sluice: fork server") or "multiprocessing.forkserver" in text:
        return "fork_server"
    if "multiprocessing.resource_tracker" in text:
        return "resource_tracker"
    return "other"


class RoleProcesses(Collector):
    def __init__(self, root_pid: int | None = None) -> None:
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self._lock = threading.Lock()  # scrapes run in parallel threads
        self._seen: dict[Key, tuple[str, float]] = {}  # process -> (role, CPU at the last scrape)
        self._gone = dict.fromkeys(ROLES, 0.0)  # CPU of processes that exited

    def _sample(self) -> tuple[dict[Key, tuple[str, float, int, int]], float]:
        out: dict[Key, tuple[str, float, int, int]] = {}
        started = 0.0
        try:
            root = psutil.Process(self.root_pid)
            procs = [(root, "supervisor"), *((p, "") for p in root.children(recursive=True))]
        except psutil.Error:
            return out, started
        for proc, role in procs:
            try:
                with proc.oneshot():
                    role = role or role_of(proc.cmdline())
                    key = (proc.pid, proc.create_time())
                    cpu = proc.cpu_times()
                    rss = proc.memory_info().rss
                    fds = proc.num_fds()
            except psutil.Error:  # gone meanwhile, or a zombie
                continue
            if role == "supervisor":
                started = key[1]
            out[key] = (role, cpu.user + cpu.system, rss, fds)
        return out, started

    def collect(self) -> Iterator[Metric]:
        now, started = self._sample()
        cpu = dict.fromkeys(ROLES, 0.0)
        rss = dict.fromkeys(ROLES, 0)
        fds = dict.fromkeys(ROLES, 0)
        count = dict.fromkeys(ROLES, 0)
        with self._lock:
            for key, (role, seconds) in self._seen.items():
                if key not in now:
                    self._gone[role] += seconds
            self._seen = {key: (role, seconds) for key, (role, seconds, _, _) in now.items()}
            for role, seconds, resident, open_fds in now.values():
                cpu[role] += seconds
                rss[role] += resident
                fds[role] += open_fds
                count[role] += 1
            for role in ROLES:
                cpu[role] += self._gone[role]
        c = CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU time of the node's processes of this role.", labels=["role"]
        )
        m = GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the node's processes of this role.", labels=["role"]
        )
        f = GaugeMetricFamily(
            "process_open_fds", "Open file descriptors of the node's processes of this role.", labels=["role"]
        )
        n = GaugeMetricFamily("sluice_processes", "Processes of this role in the node now.", labels=["role"])
        for role in ROLES:
            if count[role] or cpu[role]:
                c.add_metric([role], cpu[role])
            if count[role]:
                m.add_metric([role], rss[role])
                f.add_metric([role], fds[role])
            n.add_metric([role], count[role])
        s = GaugeMetricFamily(
            "process_start_time_seconds", "Start time of the node's supervisor since the Unix epoch.", labels=["role"]
        )
        if started:
            s.add_metric(["supervisor"], started)
        yield from (c, m, f, n, s)
