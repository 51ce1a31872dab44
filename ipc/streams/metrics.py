"""Prometheus metrics of a streams app (docs/streams.md, Metrics; docs/metrics.md).

A custom collector reads the app's counters (``ipc/streams/tasks.py`` ``Counters``) and
its stores at scrape time: the processing loop only adds to plain integers, so metrics
cost it nothing per record. The collector is registered in a ``CollectorRegistry`` of
the app's own (``StreamsApp.metrics_registry``): serve it with
``StreamsApp(..., metrics_port=N)`` (prometheus_client's HTTP server, started by ``run``)
or mount it in your own exporter (``prometheus_client.make_wsgi_app(registry)``).

A collector is not affected by ``PROMETHEUS_MULTIPROC_DIR`` (the node's multiprocess mode,
docs/design pitfall 2): the values live in this process and are read when scraped.
Every series has the label ``app`` (the app id); reading them from the scrape thread
while the loop runs is safe (integers and dicts copied before use).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ipc.streams.dsl import Topology
from ipc.streams.tasks import PROCESS_BUCKETS, Counters

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry


class StreamsApp(Protocol):
    """What the collector reads of ``ipc.streams.app.StreamsApp`` (which imports this
    module: no import back)."""

    app_id: str
    counters: Counters
    topology: Topology
    tasks: dict[Any, Any]

    def store_sizes(self) -> dict[str, int]: ...

__all__ = ["StreamsCollector", "make_registry", "serve"]

PREFIX = "sluice_streams_"


class StreamsCollector:
    """The app's series, built from its counters when Prometheus scrapes."""

    def __init__(self, app: StreamsApp) -> None:
        self.app = app

    def describe(self) -> list[Any]:
        return []  # no fixed set to check at registration: collect() is cheap and always works

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        app = self.app
        c = app.counters
        a = [app.app_id]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            m = CounterMetricFamily(PREFIX + name, doc, labels=["app"])
            m.add_metric(a, value)
            return m

        yield counter("records_processed", "input records processed (decoded and pushed through the topology)",
                      c.records_processed)
        yield counter("records_skipped", "undecodable input records skipped by on_deserialize_error",
                      c.records_skipped)
        late = CounterMetricFamily(PREFIX + "late_records_dropped",
                                   "records dropped because all their windows had closed (later than the grace)",
                                   labels=["app", "node"])
        for node, n in sorted(dict(c.late_by_node).items()):
            late.add_metric([app.app_id, node], n)
        yield late
        yield counter("enforced_processing", "times a task went on without an input partition after "
                      "max_task_idle_ms", c.enforced_processing)
        yield counter("batches", "batches processed (one per poll that had records)", c.batches)
        yield counter("commits", "offset commits", c.commits)

        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(PROCESS_BUCKETS, list(c.process_buckets), strict=True):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        hist = HistogramMetricFamily(PREFIX + "process_seconds",
                                     "time per batch from its records to their commit: processing, flushing the "
                                     "outputs and changelog records (acknowledged), committing", labels=["app"])
        hist.add_metric(a, buckets, c.process_seconds)
        yield hist

        restored = CounterMetricFamily(PREFIX + "restore_records",
                                       "changelog (or table topic) records read while restoring stores",
                                       labels=["app", "store"])
        remaining = GaugeMetricFamily(PREFIX + "restore_remaining_records",
                                      "records left to read by the restore under way (0: none)",
                                      labels=["app", "store"])
        left = dict(c.restore_remaining)
        for store in sorted(app.topology.stores):
            restored.add_metric([app.app_id, store], c.restored_by_store.get(store, 0))
            remaining.add_metric([app.app_id, store], max(0, left.get(store, 0)))
        yield restored
        yield remaining
        yield counter("restore_seconds", "time spent restoring stores", c.restore_seconds)

        keys = GaugeMetricFamily(PREFIX + "store_keys", "keys in the local partitions of a store",
                                 labels=["app", "store"])
        for store, n in sorted(app.store_sizes().items()):
            keys.add_metric([app.app_id, store], n)
        yield keys
        tasks = GaugeMetricFamily(PREFIX + "tasks", "tasks (sub-topology partitions) this instance runs",
                                  labels=["app"])
        tasks.add_metric(a, len(app.tasks))
        yield tasks


def make_registry(app: StreamsApp) -> CollectorRegistry:
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamsCollector(app))
    return registry


def serve(registry: CollectorRegistry, port: int, host: str) -> tuple[Any, threading.Thread]:
    """prometheus_client's HTTP server for ``registry`` on ``host:port`` (a daemon thread):
    ``/metrics`` (and every other path) answers the text format."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, thread
