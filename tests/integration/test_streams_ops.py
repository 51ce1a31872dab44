"""Operating a streams app against a real node: its Prometheus endpoint scraped over
HTTP while it runs (records processed, late records, process latency, store size,
restore progress), and ``sluice streams describe`` (a real CLI process) on a running and
on a stopped app. Each app runs in a thread of the test, stopped with ``app.stop()``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ipc.client import Producer
from ipc.streams import StreamsApp, TumblingWindows, restore

from .conftest import REPO, SLUICE, Node, free_port, wait_until


@contextmanager
def running(app: StreamsApp) -> Iterator[threading.Thread]:
    """``app.run()`` in a thread; stopped and joined on the way out, even on failure."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            app.run(max_seconds=120)
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            errors.append(exc)

    t = threading.Thread(target=target, name=f"app-{app.app_id}", daemon=True)
    t.start()
    try:
        yield t
    finally:
        app.stop()
        t.join(timeout=60)
        assert not t.is_alive(), f"{app.app_id} did not stop within 60 s"
    assert not errors, f"{app.app_id} failed: {errors[0]!r}"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(port: int, name: str, **labels: str) -> float | None:
    try:
        return scrape(port).get((name, tuple(sorted(labels.items()))))
    except OSError:  # not serving yet
        return None


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int]]) -> None:
    with Producer(bootstrap) as p:
        for k, v, ts in records:
            p.send(topic, v, key=k, timestamp_ms=ts)
        p.flush(30)


def windowed_app(bootstrap: str, port: int | None) -> StreamsApp:
    app = StreamsApp("ops-clicks", bootstrap=bootstrap, key_serde="str", value_serde="json", metrics_port=port)
    (app.stream("ops-clicks-in").group_by_key()
        .windowed_by(TumblingWindows(size_ms=10_000))
        .count(name="per-10s")
        .to_stream().to("ops-clicks-out", key_serde="json"))
    return app


def test_metrics_endpoint_of_a_running_app(node: Node, caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with node.admin() as a:
        a.create_topic("ops-clicks-in", partitions=2)
        a.create_topic("ops-clicks-out", partitions=2)
    # 60 records for 3 users, 1 s apart: 6 windows of 10 s per user
    produce(node.bootstrap, "ops-clicks-in", [(f"u{i % 3}".encode(), b"{}", i * 1000) for i in range(60)])
    port = free_port()
    app = windowed_app(node.bootstrap, port)
    processed = "sluice_streams_records_processed_total"
    app_label = {"app": "ops-clicks"}
    with running(app):
        wait_until(lambda: sample(port, processed, **app_label) == 60, 60, "60 records processed on the endpoint")
        # the batch's latency is observed once it is committed, just after the count moved
        wait_until(lambda: sample(port, "sluice_streams_process_seconds_count", **app_label), 30, "a batch timed")
        m = scrape(port)
        assert m[("sluice_streams_tasks", (("app", "ops-clicks"),))] == 2
        keys = m[("sluice_streams_store_keys", (("app", "ops-clicks"), ("store", "per-10s")))]
        assert keys == len(app.store("per-10s")) > 0
        assert m[("sluice_streams_process_seconds_bucket", (("app", "ops-clicks"), ("le", "+Inf")))] >= 1
        assert m[("sluice_streams_commits_total", (("app", "ops-clicks"),))] >= 1
        assert (("sluice_streams_late_records_dropped_total", (("app", "ops-clicks"), ("node", "per-10s")))
                not in m)  # no late record yet
        # u0's partition has stream time 57 s: a record at 1 s has only closed windows
        produce(node.bootstrap, "ops-clicks-in", [(b"u0", b"{}", 1000)])
        late = ("sluice_streams_late_records_dropped_total", (("app", "ops-clicks"), ("node", "per-10s")))
        wait_until(lambda: scrape(port).get(late) == 1, 60, "the late record counted on the endpoint")
        assert sample(port, processed, **app_label) == 61
        assert app.metrics()["late_records_dropped"] == 1

    # a new instance restores the store from its changelog: the restore is on its endpoint,
    # and in its log: the progress line of a long restore (every PROGRESS_S; here at once)
    monkeypatch.setattr(restore, "PROGRESS_S", 0.0)
    caplog.set_level(logging.INFO, logger="ipc.streams.restore")
    port2 = free_port()
    again = windowed_app(node.bootstrap, port2)
    restored = ("sluice_streams_restore_records_total", (("app", "ops-clicks"), ("store", "per-10s")))
    with running(again):
        wait_until(lambda: (scrape(port2).get(restored) or 0) > 0, 60, "restored records on the endpoint")
        m = scrape(port2)
        assert m[("sluice_streams_restore_remaining_records", (("app", "ops-clicks"), ("store", "per-10s")))] == 0
        assert m[("sluice_streams_restore_seconds_total", (("app", "ops-clicks"),))] > 0
        assert again.store("per-10s").items() and len(again.store("per-10s")) == keys
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restoring: ")]
    assert progress and "records read (" in progress[0] and "partition(s) left" in progress[0], progress
    # run() returned: the endpoint is closed
    assert sample(port2, processed, **app_label) is None


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLUICE, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_streams_describe(node: Node) -> None:
    with node.admin() as a:
        a.create_topic("ops-orders", partitions=3)
        a.create_topic("ops-customers", partitions=3)
        a.create_topic("ops-enriched", partitions=3)
    produce(node.bootstrap, "ops-customers", [(b"c%d" % i, b'"name"', 1) for i in range(9)])
    produce(node.bootstrap, "ops-orders", [(b"c%d" % (i % 9), b"%d" % i, 10 + i) for i in range(90)])
    app = StreamsApp("ops-enricher", bootstrap=node.bootstrap, key_serde="str", value_serde="json")
    app.stream("ops-orders").join(app.table("ops-customers", name="customers"), lambda o, c: [o, c],
                                  name="enrich").to("ops-enriched")

    missing = sluice("streams", "describe", "no-such-app", "-b", node.bootstrap)
    assert missing.returncode == 1 and "no streams app 'no-such-app'" in missing.stderr, missing

    with running(app):
        wait_until(lambda: app.counters.records_processed >= 99 and app.counters.commits > 0, 60, "all processed")

        def described() -> dict[str, object] | None:
            r = sluice("streams", "describe", "ops-enricher", "-b", node.bootstrap, "--json")
            assert r.returncode == 0, r.stderr
            d: dict[str, object] = json.loads(r.stdout)
            parts = d["partitions"]
            assert isinstance(parts, list)
            return d if d["instances"] and all(p["lag"] == "0" for p in parts) else None

        d = wait_until(described, 60, "describe: one instance, lag 0")
        (inst,) = d["instances"]
        assert inst["tasks"] == ["0_0", "0_1", "0_2"]
        assert sorted(inst["partitions"]) == sorted(f"{t}-{p}" for t in ("ops-orders", "ops-customers")
                                                    for p in range(3))
        (sub,) = d["topology"]["sub_topologies"]
        assert sorted(sub.pop("topics")) == ["ops-customers", "ops-orders"]
        assert sub == {"index": 0, "partitions": 3, "stores": ["customers"], "changelogs": []}
        ends = {(p["topic"], p["partition"]): p["log_end_offset"] for p in d["partitions"]}
        assert sum(v for (t, _), v in ends.items() if t == "ops-orders") == 90

        text = sluice("streams", "describe", "ops-enricher", "-b", node.bootstrap)
        assert text.returncode == 0, text.stderr
        out = text.stdout
        assert "app ops-enricher  state stable" in out and "instances 1" in out
        assert "source source-ops-orders <- ops-orders" in out  # the topology, as app.describe() prints it
        assert "stream-table-join enrich" in out
        assert "0: ops-orders, ops-customers  (3 partitions; stores: customers)" in out
        assert "tasks 0_0, 0_1, 0_2; lag 0" in out

    stopped = sluice("streams", "describe", "ops-enricher", "-b", node.bootstrap)
    assert stopped.returncode == 0, stopped.stderr
    assert "instances 0" in stopped.stdout and "none (no instance is running)" in stopped.stdout


def count_app(bootstrap: str, commit_interval_ms: int = 0) -> StreamsApp:
    app = StreamsApp("ops-counts", bootstrap=bootstrap, key_serde="str", value_serde="str",
                     commit_interval_ms=commit_interval_ms, session_timeout_ms=6000)
    app.stream("ops-words").group_by_key().count(name="counts")
    return app


def test_commit_interval_with_a_rebalance_counts_every_record_once(node: Node) -> None:
    """commit_interval_ms: stores' changes and offsets are committed once per interval (here
    never within the run) and when run() returns. A second instance joining revokes the
    first one's tasks while their processing is uncommitted: they are dropped, not kept, and
    whoever gets them restores them from what was committed; the final counts are exact."""
    with node.admin() as a:
        a.create_topic("ops-words", partitions=4)
    words = [f"w{(i * 13) % 50}" for i in range(4000)]
    produce(node.bootstrap, "ops-words", [(w.encode(), b"x", i) for i, w in enumerate(words[:2000])])
    first = count_app(node.bootstrap, commit_interval_ms=600_000)
    second = count_app(node.bootstrap, commit_interval_ms=600_000)
    with running(first):
        wait_until(lambda: first.counters.records_processed >= 2000, 60, "the first half processed")
        assert first.counters.commits == 0  # the interval has not passed
        with running(second):
            wait_until(lambda: second.tasks, 60, "the second instance has tasks")
            produce(node.bootstrap, "ops-words", [(w.encode(), b"x", i) for i, w in enumerate(words[2000:])])
            wait_until(lambda: len(first.tasks) + len(second.tasks) == 4 and not any(
                t.buffered() for app in (first, second) for t in app.tasks.values()), 60, "all tasks running")
            wait_until(lambda: sum(v for app in (first, second) for _, v in app.store("counts").items())
                       >= 4000, 60, "every record counted by the two instances")
    # both stopped: each committed its last changes on the way out; a new instance restores them
    final = count_app(node.bootstrap)
    final_counts: dict[str, int] = {}

    def restored(a: StreamsApp) -> bool:
        if len(a.tasks) < 4:
            return False
        final_counts.update(a.store("counts").items())  # read before run() returns and drops the tasks
        return True

    final.run(max_seconds=60, until=restored)
    assert final.counters.records_processed == 0  # everything was committed
    want: dict[str, int] = {}
    for w in words:
        want[w] = want.get(w, 0) + 1
    assert final_counts == want


def test_streamsbench_runs_every_mode_small(node: Node) -> None:
    """The benchmark tool itself (docs/performance.md), with small numbers against the
    test's node: every mode completes and reports a rate (no timing is asserted)."""
    r = subprocess.run(
        [sys.executable, "-m", "loadtest.streamsbench", "--bootstrap", node.bootstrap, "--records", "10000",
         "--restore-keys", "2000", "--runs", "1", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result["medians"]) == {"plain", "stateless", "windowed", "join", "restore"}
    assert all(v > 0 for v in result["medians"].values()), result
