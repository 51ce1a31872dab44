"""The node's ``/metrics`` and ``/healthz`` endpoint, served by the supervisor.

Three sources, one registry:
* the workers' own series (latency histograms), summed over every worker's files by
  prometheus_client's ``MultiProcessCollector`` (``PROMETHEUS_MULTIPROC_DIR``);
* the shared-memory status table, read lock-free at scrape time: offsets, sizes,
  records and bytes in and out (those counters continue across worker restarts);
* a ``NodeSnapshot`` the supervisor loop publishes every second: replica states,
  restarts, consumer groups and their committed offsets. The HTTP thread only reads
  that immutable snapshot, never the loop's live objects.

The HTTP server runs in a daemon thread of the supervisor (the fork server was started
before it, so workers never inherit it). It may speak TLS (``metrics/tls.py``) and ask
for HTTP basic auth (``metrics/password.py``) on every path; the TLS handshake happens
in the connection's own thread, with a timeout, so a client that never completes it
holds one thread for ``CONNECTION_TIMEOUT_S``, never the accepting loop.

No series carries a ``pid`` label (docs/security.md): a worker is named by its
partition, and the multiprocess files are read through ``WithoutPid``.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ipc.shm import StatusTable
from metrics.password import BasicAuth

log = logging.getLogger(__name__)

TP = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class ReplicaSnap:
    topic: str
    partition: int
    slot: int
    state: str
    pid: int
    restarts: int
    counters: tuple[int, int, int, int]  # records/bytes in/out the slot's previous workers reached


@dataclasses.dataclass(frozen=True)
class GroupSnap:
    group: str
    state: str
    members: int
    rebalances: int
    committed: dict[TP, int]
    # timestamp (ms) of the record at the committed offset: (committed offset, timestamp)
    oldest_unconsumed: dict[TP, tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class NodeSnapshot:
    node_id: int
    controller_active: bool
    replicas: tuple[ReplicaSnap, ...] = ()
    groups: tuple[GroupSnap, ...] = ()
    healthy: bool = True
    health_note: str = "ok"
    taken_at: float = 0.0
    under_replicated: int = 0  # partitions this node leads with fewer in-sync replicas than replicas
    isr_shrinks: int = 0
    isr_expands: int = 0


PL = ["topic", "partition"]


STALE_SNAPSHOT_S = 10.0  # a snapshot older than this means the supervisor loop is stuck

COUNTERS = ("records_in", "bytes_in", "records_out", "bytes_out")


def health(snap: NodeSnapshot, now: float) -> tuple[bool, str]:
    """What ``/healthz`` answers and ``sluice_node_healthy`` says: (healthy, note)."""
    if now - snap.taken_at > STALE_SNAPSHOT_S:
        return False, "supervisor loop stalled"
    return snap.healthy, snap.health_note


class NodeCollector(Collector):
    def __init__(self, snapshot: Callable[[], NodeSnapshot], table: StatusTable) -> None:
        self.snapshot = snapshot
        self.table = table
        # The largest value each partition counter was exported with. A counter is read
        # from two places that change at different moments: the live status slot, and
        # the counters the supervisor saved when it reaped the slot's last worker (in a
        # snapshot up to a second old). Between a worker's death and its successor's
        # first status write, the slot reads empty and the snapshot can predate the
        # reap, so the value could step back; exporting no less than before keeps it a
        # counter (no false reset for rate()). Scrapes run in parallel threads: a lock.
        self._floor: dict[tuple[str, str, int], int] = {}
        self._floor_lock = threading.Lock()

    def _monotonic(self, name: str, tp: TP, value: int) -> int:
        key = (name, *tp)
        with self._floor_lock:
            value = max(value, self._floor.get(key, 0))
            self._floor[key] = value
        return value

    def _forget_gone(self, tps: set[TP]) -> None:
        """A deleted partition's counters may start again from 0 if it is created again."""
        with self._floor_lock:
            for key in [k for k in self._floor if (k[1], k[2]) not in tps]:
                del self._floor[key]

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        fams: dict[str, Any] = {
            "records_in": CounterMetricFamily("sluice_records_in", "Records appended to the partition.", labels=PL),
            "bytes_in": CounterMetricFamily("sluice_bytes_in", "Bytes appended to the partition.", labels=PL),
            "records_out": CounterMetricFamily("sluice_records_out", "Records served by fetches.", labels=PL),
            "bytes_out": CounterMetricFamily("sluice_bytes_out", "Bytes served by fetches.", labels=PL),
            "start": GaugeMetricFamily("sluice_log_start_offset", "First offset still in the log.", labels=PL),
            "leo": GaugeMetricFamily("sluice_log_end_offset", "Next offset to be written.", labels=PL),
            "hw": GaugeMetricFamily("sluice_high_watermark", "First offset not visible to consumers.", labels=PL),
            "size": GaugeMetricFamily("sluice_log_size_bytes", "Bytes of the partition's segments.", labels=PL),
            "storage": GaugeMetricFamily(
                "sluice_log_storage_error",
                "1 while the partition's directory refuses writes (disk full, I/O error): produce gets STORAGE_ERROR.",
                labels=PL,
            ),
            "up": GaugeMetricFamily("sluice_worker_up", "1 if the partition's worker is serving.", labels=PL),
            "restarts": CounterMetricFamily(
                "sluice_worker_restarts", "Times the partition's worker was restarted.", labels=PL
            ),
            "cpu": CounterMetricFamily(
                "sluice_worker_cpu_seconds",
                "CPU time of the partition's current worker process (starts from 0 when it restarts).",
                labels=PL,
            ),
            "rss": GaugeMetricFamily(
                "sluice_worker_resident_memory_bytes", "Resident memory of the partition's worker process.", labels=PL
            ),
            "started": GaugeMetricFamily(
                "sluice_worker_start_time_seconds",
                "Start time of the partition's worker process since the Unix epoch (changes when it restarts).",
                labels=PL,
            ),
        }
        hw_by_tp: dict[TP, int] = {}
        offline = storage_errors = 0
        for r in snap.replicas:
            tp = (r.topic, r.partition)
            labels = [r.topic, str(r.partition)]
            fams["up"].add_metric(labels, 1.0 if r.state == "serving" else 0.0)
            fams["restarts"].add_metric(labels, r.restarts)
            offline += r.state == "offline"
            st = self.table.read_status_or_none(r.slot)
            if st is None or not st.pid:  # no worker right now: only what we know for sure
                for name, saved in zip(COUNTERS, r.counters, strict=True):
                    fams[name].add_metric(labels, self._monotonic(name, tp, saved))
                continue
            hw_by_tp[tp] = st.high_watermark
            # a restarted worker continues from r.counters; max() covers a snapshot newer than the slot
            live = (st.records_in, st.bytes_in, st.records_out, st.bytes_out)
            for name, saved, now in zip(COUNTERS, r.counters, live, strict=True):
                fams[name].add_metric(labels, self._monotonic(name, tp, max(saved, now)))
            fams["start"].add_metric(labels, st.log_start_offset)
            fams["leo"].add_metric(labels, st.log_end_offset)
            fams["hw"].add_metric(labels, st.high_watermark)
            fams["size"].add_metric(labels, st.log_size_bytes)
            fams["storage"].add_metric(labels, 1.0 if st.storage_error else 0.0)
            storage_errors += st.storage_error
            # the pid the worker wrote itself (the slot is cleared when it is reaped), not the
            # snapshot's, which lags a restart by up to a second
            try:
                proc = psutil.Process(st.pid)
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    rss = proc.memory_info().rss
                    started = proc.create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # dead, not yet reaped: its series go now
            fams["cpu"].add_metric(labels, cpu.user + cpu.system)
            fams["rss"].add_metric(labels, rss)
            fams["started"].add_metric(labels, started)
        self._forget_gone({(r.topic, r.partition) for r in snap.replicas})
        yield from fams.values()
        healthy, _ = health(snap, time.monotonic())
        g = GaugeMetricFamily(
            "sluice_node_healthy",
            "1 if /healthz answers 200 (no partition offline or with a storage error, node running).",
        )
        g.add_metric([], 1.0 if healthy else 0.0)
        yield g
        g = GaugeMetricFamily("sluice_partitions_offline", "Partitions whose worker crash-looped and stopped.")
        g.add_metric([], offline)
        yield g
        g = GaugeMetricFamily(
            "sluice_partitions_storage_error",
            "Partitions whose directory refuses writes (disk full, I/O error); they recover by themselves.",
        )
        g.add_metric([], storage_errors)
        yield g
        g = GaugeMetricFamily(
            "sluice_under_replicated_partitions", "Partitions with fewer in-sync replicas than replicas."
        )
        g.add_metric([], snap.under_replicated)
        yield g
        c = CounterMetricFamily("sluice_isr_shrinks", "Times an in-sync replica set this node leads shrank.")
        c.add_metric([], snap.isr_shrinks)
        yield c
        c = CounterMetricFamily("sluice_isr_expands", "Times an in-sync replica set this node leads grew.")
        c.add_metric([], snap.isr_expands)
        yield c
        g = GaugeMetricFamily("sluice_controller_active", "1 if this node is the cluster's active controller.")
        g.add_metric([], 1.0 if snap.controller_active else 0.0)
        yield g
        yield from self._groups(snap, hw_by_tp)

    def _groups(self, snap: NodeSnapshot, hw: dict[TP, int]) -> Iterator[Metric]:
        gl = ["group", *PL]
        committed = GaugeMetricFamily(
            "sluice_consumer_group_committed_offset", "The group's committed offset (next record to read).", labels=gl
        )
        lag = GaugeMetricFamily(
            "sluice_consumer_group_lag", "Records the group has not committed: high watermark - committed.", labels=gl
        )
        lag_s = GaugeMetricFamily(
            "sluice_consumer_group_lag_seconds",
            "Age of the oldest record the group has not committed (0 when caught up).",
            labels=gl,
        )
        lag_sum = GaugeMetricFamily(
            "sluice_consumer_group_total_lag", "Sum of the group's lag over partitions.", labels=["group"]
        )
        lag_max = GaugeMetricFamily(
            "sluice_consumer_group_max_lag", "Largest lag of the group's partitions.", labels=["group"]
        )
        lag_s_max = GaugeMetricFamily(
            "sluice_consumer_group_max_lag_seconds",
            "Largest lag in seconds of the group's partitions.",
            labels=["group"],
        )
        members = GaugeMetricFamily("sluice_consumer_group_members", "Members of the group.", labels=["group"])
        rebalances = CounterMetricFamily(
            "sluice_consumer_group_rebalances", "Rebalances the group went through.", labels=["group"]
        )
        now_ms = time.time() * 1000
        for g in snap.groups:
            members.add_metric([g.group], g.members)
            rebalances.add_metric([g.group], g.rebalances)
            lags: list[int] = []
            ages: list[float] = []
            for (topic, partition), offset in sorted(g.committed.items()):
                labels = [g.group, topic, str(partition)]
                committed.add_metric(labels, offset)
                end = hw.get((topic, partition))
                if end is None:
                    continue
                n = max(end - offset, 0)
                age = 0.0
                probe = g.oldest_unconsumed.get((topic, partition))
                if n and probe is not None:
                    # exact when the probe is of the committed offset; for the (<= 2 s) after the
                    # offset moved and before the next probe, the age of the record at the old
                    # offset: better than dropping to 0 at every commit, which would reset the
                    # `for:` of any alert on it
                    age = max(now_ms - probe[1], 0.0) / 1000
                lag.add_metric(labels, n)
                lag_s.add_metric(labels, age)
                lags.append(n)
                ages.append(age)
            lag_sum.add_metric([g.group], sum(lags))
            lag_max.add_metric([g.group], max(lags, default=0))
            lag_s_max.add_metric([g.group], max(ages, default=0.0))
        yield from (committed, lag, lag_s, lag_sum, lag_max, lag_s_max, members, rebalances)


class WithoutPid(Collector):
    """Another collector's series with any ``pid`` label summed away.

    prometheus_client's multiprocess mode labels a gauge's samples with the pid of the
    process that wrote them when the gauge's ``multiprocess_mode`` is ``all`` (the
    default) or ``liveall``. Pids must not reach ``/metrics``, so samples that differ
    only in their pid are added up, as the ``sum`` / ``livesum`` modes would: give a
    worker's gauge one of those (or ``max``, ``mostrecent``) to say what it means.
    """

    def __init__(self, inner: Collector) -> None:
        self.inner = inner

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            if any("pid" in s.labels for s in metric.samples):
                merged: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
                for s in metric.samples:
                    labels = {k: v for k, v in s.labels.items() if k != "pid"}
                    key = (s.name, tuple(sorted(labels.items())))
                    prev = merged.get(key)
                    merged[key] = s._replace(labels=labels, value=s.value + (prev.value if prev else 0.0))
                metric.samples = list(merged.values())
            yield metric


CONNECTION_TIMEOUT_S = 10.0  # a TLS handshake or a request not done within this: connection closed
AUTH_REALM = 'Basic realm="sluice metrics", charset="UTF-8"'


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CONNECTION_TIMEOUT_S  # socket timeout for the whole connection (StreamRequestHandler)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        auth = self.server.auth
        if auth is not None and auth.check(self.headers.get("Authorization")) is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", AUTH_REALM)
            body = b"unauthorized\n"
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(self.server.registry)
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif path == "/healthz":
            ok, note = health(self.server.snapshot(), time.monotonic())
            self._send(200 if ok else 503, "text/plain; charset=utf-8", (note + "\n").encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("metrics http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    snapshot: Callable[[], NodeSnapshot]
    auth: BasicAuth | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's thread: the TLS handshake (if any), then the request."""
        request.settimeout(CONNECTION_TIMEOUT_S)
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a failed handshake (plain http on the https port), a timeout, a reset: the
        # client's problem; socketserver's default prints a traceback to stderr
        log.debug("metrics http: connection from %s failed", client_address, exc_info=True)


def build_registry(collector: NodeCollector, multiproc_dir: str | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    if multiproc_dir:
        from prometheus_client import multiprocess

        registry.register(WithoutPid(multiprocess.MultiProcessCollector(None, path=multiproc_dir)))  # type: ignore[no-untyped-call]
    registry.register(collector)
    return registry


class MetricsServer:
    """``/metrics`` and ``/healthz`` on HOST:PORT, in a daemon thread; https with a TLS
    context, and HTTP basic auth on every path with a ``BasicAuth``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        snapshot: Callable[[], NodeSnapshot],
        tls: ssl.SSLContext | None = None,
        auth: BasicAuth | None = None,
    ) -> None:
        self.registry = registry
        self.snapshot = snapshot
        self.tls = tls
        self.auth = auth
        self.httpd: _Server | None = None
        self.listen = ""

    def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        httpd = _Server((host.strip("[]"), int(port)), _Handler)
        if self.tls is not None:
            # no handshake in accept(): finish_request does it in the connection's thread
            sock: socket.socket = self.tls.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
            httpd.socket = sock
        httpd.registry = self.registry
        httpd.snapshot = self.snapshot
        httpd.auth = self.auth
        self.httpd = httpd
        self.listen = listen
        threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
        log.info(
            "metrics on %s://%s/metrics%s",
            "https" if self.tls else "http",
            listen,
            f" (basic auth, {len(self.auth.users)} user(s))" if self.auth else "",
        )

    def reconfigure(self, listen: str) -> None:
        if listen == self.listen:
            return
        self.stop()
        if listen:
            self.start(listen)

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
            self.listen = ""
