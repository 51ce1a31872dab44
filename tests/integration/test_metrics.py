"""Metrics end to end: a real Prometheus scrapes a real node while real clients load it.

Every actor is its own process: the node (``sluice serve``), Debian's ``prometheus``
(scrape interval 1 s, on a free loopback port, storage in the test's temporary
directory, loading ``metrics/rules.yml``), and the producer and consumer
(``tests/integration/metrics_load.py``). Each is started in its own session and
SIGKILLed as a group in teardown, whatever happened. The test asks Prometheus through
its HTTP API, polling with deadlines; it never sleeps to wait for something.

Needs ``prometheus`` and ``promtool`` (Debian package ``prometheus``, installed by
``.ci/system-deps`` when run as root): without them the tests are skipped, unless we
are root, where their absence is a broken setup and fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ipc.client import Consumer, Producer
from tests.integration.conftest import REPO, SLUICE, EventProcess, Node, free_port, wait_until

RULES = REPO / "metrics" / "rules.yml"
RULES_TEST = REPO / "metrics" / "rules.test.yml"
DASHBOARD = REPO / "metrics" / "grafana-dashboard.json"
NODE_OPTIONS = {"offsets_topic_partitions": 1}  # fewer workers on a small machine

pytestmark = pytest.mark.slow


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        why = f"{name} not found (Debian package 'prometheus'; `make system-deps` installs it as root)"
        if os.geteuid() == 0:
            pytest.fail(why + ": running as root, so .ci/system-deps should have installed it")
        pytest.skip(why)
    return path


# ---- processes ------------------------------------------------------------------------------------
class Proc(EventProcess):
    """A load process of this test (tests/integration/metrics_load.py), in its own session."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, stdin: bool = False) -> None:
        super().__init__(name, cmd, log_dir / f"{name}.log", log_dir, stdin)

    def check(self) -> None:
        for e in self.events("error"):
            raise AssertionError(f"{self.name} failed: {e}\n{self.log_tail()}")
        if self.proc.poll() not in (None, 0):
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")

    def wait_event(self, kind: str, timeout: float) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            got = self.events(kind)
            if not got:
                self.check()
            return got[-1] if got else None

        found: dict[str, Any] = wait_until(seen, timeout, f"{self.name}: {kind!r}")
        return found


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(name: str, cmd: list[str], stdin: bool = False) -> Proc:
        p = Proc(name, cmd, tmp_path, stdin)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.kill()
            print(f"--- {p.name} (exit {p.proc.returncode}) log tail ---\n{p.log_tail()}")


def load(role: str, node: Node, topic: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.integration.metrics_load",
        role,
        "--bootstrap",
        node.bootstrap,
        "--topic",
        topic,
        *args,
    ]


# ---- prometheus ----------------------------------------------------------------------------------
class Prometheus:
    """A prometheus server scraping one node every second, asked through its HTTP API
    (``scrape_configs`` replaces the plain-http job ``sluice`` on ``target``)."""

    def __init__(
        self,
        base: Path,
        target: str,
        start: Callable[..., Proc],
        scrape_configs: list[dict[str, Any]] | None = None,
    ) -> None:
        binary = _tool("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": scrape_configs or [{"job_name": "sluice", "static_configs": [{"targets": [target]}]}],
        }
        config_path = base / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=2))
        self.proc = start(
            "prometheus",
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={base / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
        )
        wait_until(self._ready, 30, "prometheus ready")

    def _ready(self) -> bool:
        self.proc.check()
        with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the result vector (or matrix, for a range selector)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The value of a one-element vector (None when empty)."""
        result = self.query(expr, at)
        assert len(result) <= 1, f"{expr}: {len(result)} series, expected one: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, ok: Callable[[float], bool], what: str, timeout: float = 20) -> float:
        def check() -> float | None:
            self.proc.check()
            v = self.value(expr)
            return v if v is not None and ok(v) else None

        try:
            got: float = wait_until(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {expr} = {self.query(expr)}") from None
        return got

    def wait_scraping(self) -> None:
        """Until the first scrape (Prometheus applies new targets every 5 s, so it comes late)."""
        self.wait_value('up{job="sluice"}', lambda v: v == 1, "the first scrape of the node")

    def wait_scraped_after(self, t: float, timeout: float = 20) -> None:
        """Until Prometheus holds a successful scrape of the node taken after wall time ``t``."""
        self.wait_value('timestamp(up{job="sluice"} == 1)', lambda ts: ts > t, f"a scrape after {t:.1f}", timeout)


@pytest.fixture
def prometheus_for(tmp_path: Path, procs: Callable[..., Proc]) -> Callable[[Node], Prometheus]:
    def make(node: Node) -> Prometheus:
        return Prometheus(tmp_path, metrics_addr(node), procs)

    return make


# ---- the node's own endpoint ------------------------------------------------------------------------
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_node(node_factory: Callable[..., Node]) -> Node:
    return node_factory(metrics_listen=f"127.0.0.1:{free_port()}", **NODE_OPTIONS).start()


def metrics_addr(node: Node) -> str:
    """The node's metrics_listen, as its configuration file says."""
    for line in node.config_path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "metrics_listen":
            return value.strip().strip('"')
    raise AssertionError(f"no metrics_listen in {node.config_path}")


def fetch(node: Node, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{metrics_addr(node)}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def scrape(node: Node) -> Samples:
    code, text = fetch(node)
    assert code == 200, text
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: Any) -> float:
    key = (name, frozenset((k, str(v)) for k, v in labels.items()))
    assert key in samples, f"{name}{labels} not in /metrics"
    return samples[key]


def with_pid_label(samples: Samples) -> list[str]:
    """Series carrying a pid label: there must be none (docs/security.md)."""
    return sorted({n for n, labels in samples if "pid" in dict(labels)})


def start_time(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


def cli_json(*args: str) -> Any:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLUICE_BOOTSTRAP", None)
    out = subprocess.run([*SLUICE, *args], capture_output=True, env=env, timeout=60, check=False)
    assert out.returncode == 0, f"sluice {' '.join(args)}: {out.stderr.decode()}"
    return orjson.loads(out.stdout)


def interpolate(timeline: list[list[float]], t: float) -> float:
    """The producer's acknowledged count at wall time ``t`` (linear between its samples)."""
    for (t0, n0), (t1, n1) in zip(timeline, timeline[1:], strict=False):
        if t0 <= t <= t1:
            return n0 + (n1 - n0) * (t - t0) / (t1 - t0) if t1 > t0 else n1
    raise AssertionError(f"{t:.3f} outside the producer's timeline {timeline[0][0]:.3f}..{timeline[-1][0]:.3f}")


# ---- 1. throughput and lag, as Prometheus sees them ------------------------------------------------
RATE = 3000.0  # records/s, over 3 partitions
DURATION = 10.0
RATE_WINDOW = 6.0  # the rate() window, inside the producing interval


def test_prometheus_sees_produce_rate_and_group_lag(
    node_factory: Callable[..., Node], prometheus_for: Callable[[Node], Prometheus], procs: Callable[..., Proc]
) -> None:
    """A producer at a fixed rate and a consumer group that stops half way: the produce rate
    PromQL computes is the one the producer measured over the same window (within 20%), the
    group's lag is exactly produced - committed, its lag in seconds is the age of its oldest
    uncommitted record, and `sluice status` / `sluice groups describe` agree with /metrics."""
    node = metrics_node(node_factory)
    prom = prometheus_for(node)
    with node.admin() as admin:
        admin.create_topic("load", 3)
    consumer = procs("consumer", load("consume", node, "load", "--group", "billing"), stdin=True)
    consumer.wait_event("ready", 20)
    with node.admin() as admin:
        wait_until(lambda: admin.describe_group("billing")["state"] == "stable", 20, "group billing stable")
    prom.wait_scraping()  # so that the rate window has every sample
    producer = procs(
        "producer", load("produce", node, "load", "--partitions", "3", "--rate", str(RATE), "--duration", str(DURATION))
    )
    # the consumer reads along for half the run, then closes (final commit) while records keep coming
    producer.wait_event("progress", 20)
    wait_until(
        lambda: producer.check() or any(e["acked"] >= RATE * DURATION / 2 for e in producer.events("progress")),
        DURATION * 2,
        "half the records acknowledged",
    )
    assert consumer.events("consumed"), "the consumer read nothing in the first half"
    consumer.send("stop")
    closed = consumer.wait_event("closed", 30)
    done = producer.wait_event("done", DURATION * 3)
    assert done["errors"] == 0 and done["acked"] == done["sent"], done
    print(f"producer: {done['acked']} records in {done['end'] - done['start']:.2f} s = {done['rate']:.0f}/s")

    # -- produce rate: rate() over a window inside the producing interval, vs the producer's own count
    t_q = done["end"] - 1.0
    assert t_q - RATE_WINDOW >= done["start"] + 1.0, "the rate window must lie inside the producing interval"
    prom.wait_scraped_after(t_q + 1.0)
    measured = (interpolate(done["timeline"], t_q) - interpolate(done["timeline"], t_q - RATE_WINDOW)) / RATE_WINDOW
    expr = f'sum(rate(sluice_records_in_total{{topic="load"}}[{RATE_WINDOW:.0f}s]))'
    seen = prom.value(expr, at=t_q)
    assert seen is not None, f"{expr}: no data at {t_q}"
    print(f"produce rate: producer measured {measured:.0f}/s, Prometheus {seen:.0f}/s ({seen / measured - 1:+.1%})")
    assert abs(seen - measured) <= 0.2 * measured, (seen, measured)
    per_partition = prom.query(f'rate(sluice_records_in_total{{topic="load"}}[{RATE_WINDOW:.0f}s])', at=t_q)
    assert len(per_partition) == 3 and all(float(r["value"][1]) > 0 for r in per_partition), per_partition
    p99 = prom.value(
        'histogram_quantile(0.99, sum by (le) (rate(sluice_produce_request_duration_seconds_bucket{topic="load"}'
        f"[{RATE_WINDOW:.0f}s])))",
        at=t_q,
    )
    assert p99 is not None and 0 < p99 < 5, p99
    print(f"produce latency p99 over the window: {p99 * 1000:.2f} ms")

    # -- lag: produced - committed, exactly, once nothing moves
    produced = {int(p): n for p, n in done["per_partition"].items()}
    with node.admin() as admin:
        d = admin.describe_group("billing")
    committed = {p["partition"]: p["committed_offset"] for p in d["partitions"] if p["topic"] == "load"}
    assert committed == {int(p): o for p, o in closed["committed"].items()}, (committed, closed)
    assert 0 < sum(committed.values()) < sum(produced.values()), (committed, produced)
    expected_lag = sum(produced.values()) - sum(committed.values())
    prom.wait_value(
        'sum(sluice_high_watermark{topic="load"})',
        lambda v: v == sum(produced.values()),
        "the high watermarks at what was produced",
    )
    lag = prom.wait_value(
        'sluice_consumer_group_total_lag{group="billing"}',
        lambda v: v == expected_lag,
        f"lag of group billing = {expected_lag}",
    )
    print(
        f"lag: produced {sum(produced.values())} - committed {sum(committed.values())} = {expected_lag}; "
        f"Prometheus says {lag:.0f}"
    )
    for p in range(3):
        got = prom.value(f'sluice_consumer_group_lag{{group="billing",topic="load",partition="{p}"}}')
        assert got == produced[p] - committed[p], (p, got, produced[p], committed[p])
    # lag in seconds: the age of the record at the committed offset, written between the
    # producer's start and the consumer's close (probed every 2 s)
    age = prom.wait_value(
        'sluice_consumer_group_max_lag_seconds{group="billing"}', lambda v: v > 0, "lag in seconds of group billing"
    )
    at = prom.value('timestamp(sluice_consumer_group_max_lag_seconds{group="billing"})')
    assert at is not None
    print(f"lag seconds: {age:.2f} s at {at - closed['t']:.2f} s after the consumer closed")
    assert at - closed["t"] - 0.5 <= age <= at - done["start"] + 0.5, (age, at, closed["t"], done["start"])

    # -- the rules file evaluates cleanly against these series; every dashboard query works
    def rules_ok() -> bool:
        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not [b for b in bad if b[1]], f"rules failing to evaluate: {bad}"
        return bool(rules) and not bad

    wait_until(rules_ok, 10, "every rule evaluated")
    for expr in dashboard_exprs():
        q = expr.replace("$__rate_interval", "5s")
        for var in ("instance", "topic", "group"):
            q = q.replace(f"${var}", ".*")
        assert prom.query(q), f"dashboard query returns nothing: {q}"

    # -- sluice status and sluice groups describe agree with /metrics while nothing moves
    def agree() -> bool:
        before = cli_json("status", "--json", "--config", str(node.config_path))
        desc = cli_json("groups", "describe", "billing", "--json", "--bootstrap", node.bootstrap)
        m = scrape(node)
        after = cli_json("status", "--json", "--config", str(node.config_path))
        strip = [{k: v for k, v in p.items() if k != "heartbeat_age_s"} for p in before["partitions"]]
        if strip != [{k: v for k, v in p.items() if k != "heartbeat_age_s"} for p in after["partitions"]]:
            return False  # something moved while we looked: look again
        for p in before["partitions"]:
            tp = {"topic": p["topic"], "partition": p["partition"]}
            for key, name in (
                ("log_start_offset", "sluice_log_start_offset"),
                ("log_end_offset", "sluice_log_end_offset"),
                ("high_watermark", "sluice_high_watermark"),
                ("size_bytes", "sluice_log_size_bytes"),
                ("records_in", "sluice_records_in_total"),
                ("bytes_in", "sluice_bytes_in_total"),
                ("records_out", "sluice_records_out_total"),
                ("bytes_out", "sluice_bytes_out_total"),
                ("restarts", "sluice_worker_restarts_total"),
            ):
                assert sample(m, name, **tp) == p[key], (tp, key, p[key], sample(m, name, **tp))
            assert sample(m, "sluice_worker_up", **tp) == (p["state"] == "serving")
            assert sample(m, "sluice_worker_resident_memory_bytes", **tp) > 0
            assert sample(m, "sluice_worker_start_time_seconds", **tp) == start_time(p["pid"])
        assert sample(m, "sluice_consumer_group_members", group="billing") == len(desc["members"]) == 0
        for p in desc["partitions"]:
            tp = {"group": "billing", "topic": p["topic"], "partition": p["partition"]}
            assert sample(m, "sluice_consumer_group_committed_offset", **tp) == p["committed_offset"], p
            assert sample(m, "sluice_consumer_group_lag", **tp) == p["lag"], p
            assert (
                sample(m, "sluice_high_watermark", topic=p["topic"], partition=p["partition"]) == p["log_end_offset"]
            ), p
        assert sample(m, "sluice_consumer_group_total_lag", group="billing") == sum(
            p["lag"] for p in desc["partitions"]
        )
        return True

    wait_until(agree, 20, "a quiet moment to compare status, groups describe and /metrics")


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert panels and all(p["targets"] for p in panels)
    return [t["expr"] for p in panels for t in p["targets"]]


# ---- 2. promtool ---------------------------------------------------------------------------------
def test_promtool_accepts_metrics_and_rules(node_factory: Callable[..., Node]) -> None:
    """`promtool check metrics` accepts /metrics of a node with topics, traffic and a group;
    `promtool check rules` and `promtool test rules` accept the rules; every series the rules
    and the dashboard name is one the node exports."""
    promtool = _tool("promtool")
    node = metrics_node(node_factory)
    with node.admin() as admin:
        admin.create_topic("t", 2)
    with Producer(node.bootstrap) as p:
        for i in range(200):
            p.send("t", b"x" * 50, partition=i % 2)
        p.flush(30)
    with Consumer(node.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([("t", 0), ("t", 1)])
        got = 0
        deadline = time.monotonic() + 20
        while got < 200 and time.monotonic() < deadline:
            got += len(c.poll(200))
        assert got == 200
    with node.admin() as admin:
        admin.alter_group_offsets("audit", {("t", 0): 40, ("t", 1): 100})
    wait_until(
        lambda: ("sluice_consumer_group_total_lag", frozenset({("group", "audit")})) in scrape(node),
        10,
        "group audit in /metrics",
    )
    code, text = fetch(node)
    assert code == 200
    out = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        f"promtool check metrics:\n{out.stdout.decode()}{out.stderr.decode()}"
    )
    m = scrape(node)
    assert sample(m, "sluice_consumer_group_total_lag", group="audit") == 60
    assert sample(m, "sluice_node_healthy") == 1
    assert fetch(node, "/healthz") == (200, "ok\n")

    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    out = subprocess.run([promtool, "test", "rules", str(RULES_TEST)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()

    # names the rules and the dashboard use must exist: promtool cannot tell a typo from a series
    exported = {name for name, _ in m}
    used = set(re.findall(r"\bsluice_[a-z_]+\b", RULES.read_text()))
    for expr in dashboard_exprs():
        used |= set(re.findall(r"\bsluice_[a-z_]+\b", expr))
    assert used, "no series found in the rules and the dashboard"
    unknown = sorted(used - exported)
    assert not unknown, f"rules or dashboard name series the node does not export: {unknown}"


# ---- 3. a worker restart -------------------------------------------------------------------------
KILLS = 3


class Scraper:
    """Scrapes /metrics every 20 ms in a thread, remembering every counter sample it saw.
    Prometheus scrapes once a second and could step over a short dip; this cannot."""

    COUNTERS = ("sluice_records_in_total", "sluice_bytes_in_total", "sluice_produce_request_duration_seconds_count")

    def __init__(self, node: Node, topic: str) -> None:
        self.node = node
        self.topic = topic
        self.seen: dict[str, list[tuple[float, float]]] = {c: [] for c in self.COUNTERS}
        self.errors: list[str] = []
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):  # the scrape interval
            try:
                m = scrape(self.node)
            except (OSError, AssertionError) as exc:
                self.errors.append(repr(exc))
                continue
            self.scrapes += 1
            for c in self.COUNTERS:
                v = m.get((c, frozenset({("topic", self.topic), ("partition", "0")})))
                if v is not None:
                    self.seen[c].append((time.time(), v))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_worker_restart_keeps_counters_and_follows_the_new_worker(
    node_factory: Callable[..., Node], prometheus_for: Callable[[Node], Prometheus], procs: Callable[..., Proc]
) -> None:
    """SIGKILL a partition's worker three times while records flow: /metrics never shows a
    counter going down (sampled every 20 ms), Prometheus finds no reset (``resets() == 0``)
    and a final count no lower than before the kills, the restarts counter says 3, and the
    partition's process series (one each, no pid label) follow each new worker: its start time
    changed three times in Prometheus."""
    node = metrics_node(node_factory)
    with node.admin() as admin:
        admin.create_topic("restart", 1)
    prom = prometheus_for(node)
    prom.wait_scraping()
    scraper = Scraper(node, "restart")
    try:
        rate, duration = 1000.0, 10.0
        producer = procs(
            "producer",
            load("produce", node, "restart", "--partitions", "1", "--rate", str(rate), "--duration", str(duration)),
        )
        producer.wait_event("progress", 20)
        t_start = time.time()
        dead: list[int] = []
        before = 0.0
        for i in range(KILLS):
            pid = node.wait_serving("restart", 0, not_pid=dead[-1] if dead else 0)
            started = start_time(pid)
            prom.wait_value(
                'sluice_worker_start_time_seconds{topic="restart"}',
                lambda v, t=started: abs(v - t) < 1e-3,
                f"worker {pid}'s start time in Prometheus",
            )
            assert prom.wait_value('sluice_worker_resident_memory_bytes{topic="restart"}', lambda v: v > 0, "memory")
            before = prom.wait_value(
                'sluice_records_in_total{topic="restart"}',
                lambda v, b=before: v > b,
                f"records flowing before kill {i + 1}",
            )
            os.kill(pid, signal.SIGKILL)
            dead.append(pid)
        new = node.wait_serving("restart", 0, not_pid=dead[-1])
        done = producer.wait_event("done", duration * 3)
        assert done["errors"] == 0 and done["acked"] == done["sent"], done
        prom.wait_scraped_after(done["end"] + 1.0)
    finally:
        scraper.stop()

    # /metrics itself, every 20 ms: never a step down
    assert scraper.scrapes > 100, (scraper.scrapes, scraper.errors[:3])
    for name, series in scraper.seen.items():
        drops = [(a, b) for (_, a), (_, b) in zip(series, series[1:], strict=False) if b < a]
        assert not drops, f"{name} went down in /metrics: {drops[:5]}"

    # Prometheus: no reset in any counter of the partition, over the whole run
    window = f"{math.ceil(time.time() - t_start) + 5}s"
    for name in (
        "sluice_records_in_total",
        "sluice_bytes_in_total",
        "sluice_produce_request_duration_seconds_count",
        "sluice_produce_request_duration_seconds_sum",
    ):
        resets = prom.value(f'sum(resets({name}{{topic="restart"}}[{window}]))')
        assert resets == 0, f"resets({name}) = {resets} across {KILLS} worker restarts"
    samples = prom.query(f'sluice_records_in_total{{topic="restart"}}[{window}]')
    values = [float(v) for _, v in samples[0]["values"]]
    assert values == sorted(values), f"records_in went down in Prometheus: {values}"
    final = prom.value('sluice_records_in_total{topic="restart"}')
    assert final is not None and final >= before
    # a SIGKILL loses what the worker counted since it last published (one 100 ms tick)
    lost = done["acked"] - final
    print(f"records acked {done['acked']}, counted {final:.0f}: {lost:.0f} lost to {KILLS} SIGKILLs")
    assert 0 <= lost <= KILLS * rate * 0.3, (done["acked"], final)
    assert prom.value('sluice_worker_restarts_total{topic="restart"}') == KILLS

    # one series per partition, no pid anywhere; they describe the new worker; Prometheus saw
    # the start time change at each of the three restarts
    m = scrape(node)
    assert not with_pid_label(m), with_pid_label(m)
    assert sample(m, "sluice_worker_start_time_seconds", topic="restart", partition=0) == start_time(new)
    for name in ("sluice_worker_resident_memory_bytes", "sluice_worker_cpu_seconds_total"):
        assert len(prom.query(f'{name}{{topic="restart"}}')) == 1, name
    changes = prom.value(f'changes(sluice_worker_start_time_seconds{{topic="restart"}}[{window}])')
    assert changes == KILLS, f"the worker's start time changed {changes} times across {KILLS} restarts"
