"""Prometheus metrics a connector's process records itself (prometheus_client
multiprocess mode, like the partition workers' histograms: ``metrics/definitions.py``).

The connector's process is forked from the node's fork server, which has
``PROMETHEUS_MULTIPROC_DIR`` in its environment (pitfalls.md 2): its samples land in
``*_<pid>.db`` files there and the node's ``/metrics`` sums them. Counters keep the
totals of a connector's earlier processes (restarts) until the node restarts; the lag
gauge shows live processes only (the node marks a reaped connector dead).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECORDS_POLLED = Counter(
    "sluice_connect_records_polled",
    "Records a connector read: from its source system (source connectors) or from its topics (sinks).",
    ["connector"],
)
RECORDS_WRITTEN = Counter(
    "sluice_connect_records_written",
    "Records a connector made durable: acknowledged by Sluice (sources) or committed in the target (sinks).",
    ["connector"],
)
ERRORS = Counter(
    "sluice_connect_errors",
    "Errors of a connector: records that failed permanently and failures that stopped its process.",
    ["connector"],
)
DEAD_LETTER = Counter(
    "sluice_connect_dead_letter_records",
    "Records a sink connector could not write and sent to its dead-letter topic.",
    ["connector"],
)
LAG = Gauge(
    "sluice_connect_lag",
    "How far a connector is behind: WAL bytes for the PostgreSQL CDC source (unit=bytes), "
    "records behind the high watermarks for sinks (unit=records).",
    ["connector", "unit"],
    multiprocess_mode="livemax",
)
