"""Metrics the partition workers record themselves (prometheus_client multiprocess mode).

Imported by the worker module, so by the fork server that preloads it: the supervisor
sets ``PROMETHEUS_MULTIPROC_DIR`` before starting the fork server (pitfalls.md 2), and
every worker writes its own ``*_<pid>.db`` files there, summed by the exporter.
Everything else (offsets, counters, groups, health) is read at scrape time from the
shared-memory status table and the supervisor: see ``metrics/exporter.py``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

PRODUCE_LATENCY = Histogram(
    "sluice_produce_request_duration_seconds",
    "Time from receiving a produce request to answering it (validation, append, fsync per policy).",
    ["topic", "partition"],
    buckets=LATENCY_BUCKETS,
)
FETCH_LATENCY = Histogram(
    "sluice_fetch_request_duration_seconds",
    "Time from receiving a fetch request to answering it, including the long-poll wait for data.",
    ["topic", "partition"],
    buckets=LATENCY_BUCKETS,
)
# the quotas (docs/security.md): recorded where a request is throttled, by the partition
# workers (produce, fetch) and by the supervisor's front endpoint (request)
THROTTLE_TIME = Counter(
    "sluice_quota_throttle_time_seconds",
    "Throttle time given to a principal's requests for exceeding a quota (quota: produce, fetch or request).",
    ["principal", "quota"],
)
# every error reply of the request pipeline (ipc/server.py), in the supervisor's front
# endpoint and the workers: api (or "unparsed"), error (the wire code, docs/protocol.md)
REQUEST_ERRORS = Counter(
    "sluice_request_errors",
    "Requests answered with an error, by API and error code (api=unparsed: the request could not be parsed).",
    ["api", "error"],
)
# the same-host path (appliance/partition/samehost.py): shared-memory rings a worker holds
SAME_HOST_RING_BYTES = Gauge(
    "sluice_same_host_ring_bytes",
    "Bytes of shared memory in the same-host rings of a partition's worker (request and reply rings of its sessions).",
    ["topic", "partition"],
    multiprocess_mode="livesum",
)
