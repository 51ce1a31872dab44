"""Produce throughput with replication, across three nodes in their own network namespaces.

    python -m tests.cluster.bench [--records N] [--runs K] [--json]      # as root; `make bench-cluster`

A benchmark runner, not a test. It builds the bed of the cluster tests (``ClusterBed``
and ``Cluster`` from harness.py: three ``sluice serve`` nodes, each in its own network
namespace, a real ZooKeeper on the bridge address), then runs the project's perf tool
as a separate process in the host namespace, bootstrapped from all three nodes::

    python -m appliance.cli perf produce --bootstrap EP0,EP1,EP2 --topic T --partitions 1 \\
        --replication-factor R [--config min.insync.replicas=2] --acks A \\
        --records N --record-size 100 --json --quiet

for three configurations: (a) RF=1 acks=1, (b) RF=3 acks=1, (c) RF=3 acks=all (both
RF=3 topics with ``min.insync.replicas=2``). Every run gets a fresh topic, created by
the perf tool itself, and the topic is deleted after the run (so idle replicas of
earlier runs cost nothing). One warm-up run per configuration (``--warmup`` records)
is not counted. The configurations are interleaved per round (a, b, c, a, b, c, ...)
so that the machine's noise hits them alike; the summary is the median per
configuration, the ratios of the medians (b/a, c/a) and the ratios within each round
(paired: same noise) with their median. The partition's leader is the one the
assignment picked; each run says which node led it, its replicas, its ISR after the
run and the leader's worker pid (from the node's log).

Each run also reports CPU seconds: the perf process's (its rusage: start-up included),
each replica's worker's (from /proc: started for this run) and the whole machine's
(/proc/stat, other tenants included) while the perf process ran. ``--profile DIR``
adds one run per configuration after the rounds, not counted, with py-spy on the
producer and every replica's worker (raw stacks in DIR, the top frames per thread in
the report). ``--perf-arg`` passes an extra option to every perf run (an experiment,
e.g. ``--perf-arg=--max-in-flight=5``).

Everything runs on this machine: the producer, three nodes (supervisor, fork server,
workers) and ZooKeeper share its cores, so with RF=3 the leader's and both followers'
workers compete with the producer for CPU. Teardown (the nodes, the namespaces,
ZooKeeper, the temporary directory unless ``--keep``) happens also on failure, Ctrl-C
and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster.harness import REPO, SLUICE, Cluster, ClusterBed, wait_until

RECORD_SIZE = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIN_INSYNC = 2  # for the RF=3 topics


@dataclass(frozen=True)
class Config:
    key: str
    replication_factor: int
    acks: str

    @property
    def label(self) -> str:
        return f"RF={self.replication_factor} acks={self.acks}"

    @property
    def topic_config(self) -> list[tuple[str, str]]:
        return [("min.insync.replicas", str(MIN_INSYNC))] if self.replication_factor > 1 else []


CONFIGS = (Config("a", 1, "1"), Config("b", 3, "1"), Config("c", 3, "all"))


class BenchError(RuntimeError):
    pass


def perf_command(bootstrap: str, topic: str, cfg: Config, records: int) -> list[str]:
    cmd = [*SLUICE, "perf", "produce", "--bootstrap", bootstrap, "--topic", topic, "--partitions", "1"]
    cmd += ["--replication-factor", str(cfg.replication_factor)]
    for k, v in cfg.topic_config:
        cmd += ["--config", f"{k}={v}"]
    cmd += ["--acks", cfg.acks, "--records", str(records), "--record-size", str(RECORD_SIZE), "--json", "--quiet"]
    return cmd


def shown(cmd: list[str]) -> str:
    """The command as one would type it (``python`` for this interpreter)."""
    return " ".join(["python", *cmd[1:]])


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class Profiler:
    """py-spy on the producer and on every replica's worker of one run (``--profile``):
    raw (collapsed) stacks, one file per process; stopped with SIGINT when the run ends."""

    RATE = 250  # samples/s

    def __init__(self, out_dir: Path, cluster: Cluster, topic: str) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.exe = exe
        self.out_dir = out_dir
        self.cluster = cluster
        self.topic = topic
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: dict[str, Path] = {}

    def _record(self, name: str, pid: int) -> None:
        path = self.out_dir / f"{self.topic}-{name}.txt"
        cmd = [self.exe, "record", "-r", str(self.RATE), "--nonblocking", "--idle", "--format", "raw", "-o", str(path)]
        cmd += ["--threads", "--pid", str(pid)]
        self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.files[name] = path

    def attach(self, perf: subprocess.Popen[str], replicas: int) -> None:
        """The producer at once; the workers once the topic exists and every replica's node
        logged its worker (the perf tool creates the topic)."""
        self._record("producer", perf.pid)

        def workers() -> dict[int, int] | None:
            if perf.poll() is not None:
                raise BenchError("the perf run ended before its workers could be profiled")
            found = {n.index: pid for n in self.cluster.nodes if (pid := worker_pid(self.cluster, n.index, self.topic))}
            return found if len(found) >= replicas else None

        found: dict[int, int] = wait_until(workers, 30, f"the workers of {self.topic}", interval=0.01)
        leader = self.cluster.wait_leader(self.topic, 0)
        for node, pid in sorted(found.items()):
            self._record(f"node{node}-{'leader' if node == leader else 'follower'}", pid)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def summary(self, top: int = 12) -> dict[str, Any]:
        """Per process: the samples, and the top functions by self and by inclusive share."""
        out: dict[str, Any] = {}
        for name, path in self.files.items():
            out[name] = {"file": str(path), **top_frames(path, top)}
        return out


# Leaf frames where a thread waits rather than works (py-spy --idle samples them too).
IDLE_LEAVES = ("Poller.poll", "Condition.wait", "Event.wait", "GarbageCollectorThread.run", "select", "sleep")


def top_frames(path: Path, top: int) -> dict[str, Any]:
    """From py-spy's raw format with ``--threads --idle`` (``thread (TID): NAME;frame;...;leaf
    COUNT`` per line), per thread: its samples, the share of them spent waiting (leaf in
    ``IDLE_LEAVES``, so "busy" is the rest), and its top leaf frames (self) and frames
    anywhere on its stack (inclusive), in % of the thread's samples. Threads by samples."""
    threads: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {"threads": {}}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        tid = "?"
        if frames and frames[0].startswith("thread ("):
            head = frames.pop(0)
            tid = head[len("thread (") :].split(")", 1)[0]
            if ": " in head:
                names[tid] = head.split(": ", 1)[1]
        frames = [f for f in frames if not f.startswith("process ")]
        t = threads.setdefault(tid, {"samples": 0, "idle": 0, "self": {}, "incl": {}})
        t["samples"] += n
        if frames:
            leaf = frames[-1]
            t["self"][leaf] = t["self"].get(leaf, 0) + n
            if leaf.split(" (", 1)[0].endswith(IDLE_LEAVES):
                t["idle"] += n
        for f in set(frames):
            t["incl"][f] = t["incl"].get(f, 0) + n

    def ranked(d: dict[str, int], total: int) -> list[tuple[float, str]]:
        return [(round(100.0 * c / total, 1), f) for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    out: dict[str, Any] = {}
    for tid, t in sorted(threads.items(), key=lambda kv: -kv[1]["samples"]):
        total = t["samples"]
        out[f"{names.get(tid, 'thread')} ({tid})"] = {
            "samples": total,
            "busy_pct": round(100.0 * (total - t["idle"]) / total, 1),
            "self": ranked(t["self"], total),
            "inclusive": ranked(t["incl"], total),
        }
    return {"threads": out}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process (None if it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def run_perf(
    cmd: list[str], timeout: float, profiler: Profiler | None = None, replicas: int = 1
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the perf tool to completion; its JSON summary, and CPU figures of the run:
    the perf process's CPU seconds (from its rusage) and the whole machine's busy CPU
    seconds and wall time while it ran."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLUICE_BOOTSTRAP", None)
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = machine_cpu()
    wall0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO), stdin=subprocess.DEVNULL
    )
    try:
        if profiler is not None:
            profiler.attach(proc, replicas)
        out, err = proc.communicate(timeout=timeout)
        wall = time.monotonic() - wall0
        busy1, total1 = machine_cpu()
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # before the profilers are reaped
    except BaseException:
        proc.kill()
        proc.communicate(timeout=10)
        raise
    finally:
        if profiler is not None:
            profiler.stop()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"perf exited with {proc.returncode}:\n{out[-2000:]}\n{err[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    cpu = {
        "producer_s": (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
        "machine_busy_s": busy1 - busy0,
        "machine_total_s": total1 - total0,
        "wall_s": wall,
    }
    return result, cpu


def worker_pid(cluster: Cluster, node: int, topic: str, partition: int = 0) -> int | None:
    """The pid of the last worker node ``node`` started for the partition (from its log)."""
    pat = re.compile(rf"{re.escape(topic)}-{partition}: started worker pid (\d+)")
    found = pat.findall(cluster.node(node).log_text())
    return int(found[-1]) if found else None


def delete_topic(cluster: Cluster, topic: str) -> None:
    with cluster.admin() as admin:
        admin.delete_topic(topic)
        wait_until(lambda: topic not in admin.list_topics(), 60, f"topic {topic} to be deleted")


def one_run(
    cluster: Cluster,
    cfg: Config,
    rnd: int | str,
    records: int,
    timeout: float,
    extra: list[str],
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    topic = f"bench-{cfg.key}-rf{cfg.replication_factor}-acks{cfg.acks}-{rnd}"
    cmd = perf_command(cluster.bootstrap, topic, cfg, records) + extra
    profiler = Profiler(profile_dir, cluster, topic) if profile_dir is not None else None
    load_before = os.getloadavg()[0]
    result, cpu = run_perf(cmd, timeout, profiler, cfg.replication_factor)
    state = cluster.partition_state(topic, 0)
    leader = int(state["leader"])
    replicas = [int(n) for n in state.get("replicas", [])]
    if len(replicas) != cfg.replication_factor:
        raise BenchError(f"{topic}: replicas {replicas}, expected {cfg.replication_factor}")
    # the workers were started for this run, so their CPU so far is this run's (and their start-up)
    workers = {n: process_cpu(worker_pid(cluster, n, topic)) for n in replicas}
    cpu["leader_worker_s"] = workers[leader] or 0.0
    cpu["follower_workers_s"] = sum(v or 0.0 for n, v in workers.items() if n != leader)
    lat = result["latency_ms"]
    run = {
        "config": cfg.key,
        "label": cfg.label,
        "round": rnd,
        "topic": topic,
        "command": shown(cmd),
        "records": result["records"],
        "records_per_s": result["records_per_s"],
        "mb_per_s": result["mb_per_s"],
        "send_loop_records_per_s": result.get("send_loop_records_per_s"),
        "elapsed_s": result["elapsed_s"],
        "latency_ms": {k: lat[k] for k in ("p50", "p99", "p99_9", "max", "avg", "samples")},
        "errors": result["errors"],
        "leader": leader,
        "replicas": state.get("replicas"),
        "isr_after": state.get("isr"),
        "leader_worker_pid": worker_pid(cluster, leader, topic),
        "load_1m_before": load_before,
        "load_1m_after": os.getloadavg()[0],
        "cpu": cpu,
    }
    if profiler is not None:
        run["profile"] = profiler.summary()
    delete_topic(cluster, topic)
    return run


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per configuration the medians; the ratios of the medians (b/a, c/a) and, per round,
    the paired ratios (same round, so the same noise) with their median."""
    out: dict[str, Any] = {}
    for cfg in CONFIGS:
        mine = [r for r in runs if r["config"] == cfg.key]
        if not mine:
            continue
        out[cfg.key] = {
            "label": cfg.label,
            "runs": len(mine),
            "records_per_s": statistics.median(r["records_per_s"] for r in mine),
            "mb_per_s": statistics.median(r["mb_per_s"] for r in mine),
            "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in mine),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in mine),
            "all_records_per_s": [r["records_per_s"] for r in mine],
            "leaders": [r["leader"] for r in mine],
            # CPU seconds per million records (median over the runs)
            "cpu_s_per_m_records": {
                k: statistics.median(r["cpu"][k] / r["records"] * 1e6 for r in mine)
                for k in ("producer_s", "leader_worker_s", "follower_workers_s", "machine_busy_s")
            },
            "machine_busy_pct": statistics.median(
                100 * r["cpu"]["machine_busy_s"] / max(r["cpu"]["machine_total_s"], 1e-9) for r in mine
            ),
        }
    ratios: dict[str, float] = {}
    paired: dict[str, list[float]] = {}
    base = out.get("a", {}).get("records_per_s")
    by_round: dict[Any, dict[str, float]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["config"]] = r["records_per_s"]
    for k in ("b", "c"):
        if base and k in out:
            ratios[f"{k}/a"] = out[k]["records_per_s"] / base
            paired[f"{k}/a"] = [x[k] / x["a"] for x in by_round.values() if "a" in x and k in x]
    return {
        "medians": out,
        "ratios": ratios,
        "paired_ratios": paired,
        "paired_ratio_medians": {k: statistics.median(v) for k, v in paired.items() if v},
    }


def context() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "modified_tracked_files": len(git("status", "--porcelain", "--untracked-files=no").splitlines()),
        "repo": str(REPO),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "load_avg_start": os.getloadavg(),
    }


def print_report(ctx: dict[str, Any], summary: dict[str, Any], records: int, rounds: int) -> None:
    print(
        f"\n{records:,} records of {RECORD_SIZE} B per run, 1 partition, {rounds} rounds; "
        f"commit {ctx['commit']} ({ctx['modified_tracked_files']} modified tracked files), {ctx['cpus']} CPUs, "
        f"Python {ctx['python']}, {ctx['started_utc']} UTC, load average {ctx['load_avg_start'][0]:.2f} "
        f"-> {ctx['load_avg_end'][0]:.2f}"
    )
    print(f"\n{'config':<16} {'records/s':>12} {'MB/s':>8} {'p50 ms':>9} {'p99 ms':>9}   runs (records/s)")
    for s in summary["medians"].values():
        each = " · ".join(f"{x:,.0f}" for x in s["all_records_per_s"])
        print(
            f"{s['label']:<16} {s['records_per_s']:>12,.0f} {s['mb_per_s']:>8.1f} "
            f"{s['p50_ms']:>9.1f} {s['p99_ms']:>9.1f}   {each}"
        )
    print(
        f"\nCPU seconds per 1 M records (medians): {'producer':>9} {'leader':>7} {'followers':>9} {'machine':>8}  busy"
    )
    for s in summary["medians"].values():
        c = s["cpu_s_per_m_records"]
        print(
            f"  {s['label']:<37} {c['producer_s']:>9.2f} {c['leader_worker_s']:>7.2f} "
            f"{c['follower_workers_s']:>9.2f} {c['machine_busy_s']:>8.2f}  {s['machine_busy_pct']:.0f} %"
        )
    print()
    for k, v in summary["ratios"].items():
        each = " · ".join(f"{x:.2f}" for x in summary["paired_ratios"][k])
        print(f"{k}: ratio of medians {v:.3f}; per round {each} (median {summary['paired_ratio_medians'][k]:.3f})")
    if "c/a" in summary["ratios"]:
        met = summary["ratios"]["c/a"] >= 0.5
        print(f"target RF=3 acks=all >= 50 % of RF=1 (ratio of medians): {'met' if met else 'MISSED'}")


def print_run(r: dict[str, Any], what: str) -> None:
    print(
        f"{what} ({r['config']}) {r['label']:<13} {r['records_per_s']:>11,.0f} records/s "
        f"{r['mb_per_s']:6.1f} MB/s  p50 {r['latency_ms']['p50']:7.1f} ms  "
        f"p99 {r['latency_ms']['p99']:7.1f} ms  leader node {r['leader']} "
        f"(worker pid {r['leader_worker_pid']}), replicas {r['replicas']}, ISR after {r['isr_after']}, "
        f"load {r['load_1m_before']:.2f}",
        file=sys.stderr,
    )
    c = r["cpu"]
    print(
        f"  CPU s: producer {c['producer_s']:.2f}, leader worker {c['leader_worker_s']:.2f}, followers' workers "
        f"{c['follower_workers_s']:.2f}; the machine {c['machine_busy_s']:.2f} of {c['machine_total_s']:.2f} "
        f"({100 * c['machine_busy_s'] / max(c['machine_total_s'], 1e-9):.0f} % busy) over {c['wall_s']:.2f} s",
        file=sys.stderr,
    )
    for name, prof in r.get("profile", {}).items():
        print(f"  profile {name}: {prof['file']}", file=sys.stderr)
        for tname, t in prof["threads"].items():
            if t["busy_pct"] < 5:
                continue
            print(f"    {tname}: {t['samples']} samples, busy {t['busy_pct']:.1f} %", file=sys.stderr)
            for pct, frame in t["self"][:8]:
                print(f"      self {pct:5.1f} %  {frame}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.cluster.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000, metavar="N", help="records per run (default 1,000,000)")
    ap.add_argument(
        "--runs", type=int, default=7, metavar="K", help="rounds; each runs every configuration once (default 7)"
    )
    ap.add_argument("--configs", default="abc", help="which configurations, e.g. 'ac' (default abc)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=100_000,
        metavar="N",
        help="before round 1, one run of N records per configuration, not counted (default 100,000; 0: none)",
    )
    ap.add_argument(
        "--perf-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for every perf run (repeatable), e.g. --perf-arg=--max-in-flight=5",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after the rounds, one more run per configuration under py-spy (producer and every replica's "
        "worker; raw stacks into DIR), not counted",
    )
    ap.add_argument("--profile-records", type=int, default=3_000_000, metavar="N", help="records of a profiled run")
    ap.add_argument("--json", action="store_true", help="print the runs and the summary as one JSON object")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (node logs, data)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one perf run may take (default 600)")
    a = ap.parse_args(argv)
    if a.records < 1 or a.runs < 1 or a.warmup < 0 or a.profile_records < 1:
        ap.error("--records, --runs and --profile-records must be >= 1, --warmup >= 0")
    configs = [c for c in CONFIGS if c.key in a.configs]
    if not configs:
        ap.error(f"--configs {a.configs!r}: letters of 'abc'")
    if os.geteuid() != 0:
        print("the cluster bench needs root: it creates network namespaces, veths and a bridge", file=sys.stderr)
        return 2
    if a.profile is not None:
        a.profile.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)  # unwind like Ctrl-C: the finally blocks tear down
    base = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    ctx = context()
    runs: list[dict[str, Any]] = []
    profiled: list[dict[str, Any]] = []
    (base / "bed").mkdir()
    bed = ClusterBed(base / "bed")
    cluster: Cluster | None = None
    failed = True
    try:
        bed.start()
        cluster = Cluster(bed, base / "cluster").start()
        print(f"bed up in {bed.setup_s:.1f} s; nodes {cluster.bootstrap}; logs under {base}", file=sys.stderr)
        if a.warmup > 0:
            for cfg in configs:
                print_run(one_run(cluster, cfg, "warmup", a.warmup, a.timeout, a.perf_arg), "warm-up, not counted")
        for rnd in range(1, a.runs + 1):
            for cfg in configs:
                runs.append(one_run(cluster, cfg, rnd, a.records, a.timeout, a.perf_arg))
                print_run(runs[-1], f"round {rnd}")
        if a.profile is not None:
            for cfg in configs:
                profiled.append(one_run(cluster, cfg, "profile", a.profile_records, a.timeout, a.perf_arg, a.profile))
                print_run(profiled[-1], "profiled, not counted")
        failed = False
    finally:
        try:
            if cluster is not None:
                cluster.close()
                if failed:
                    print(cluster.logs(60), file=sys.stderr)
        finally:
            bed.close()
            if a.keep or failed:
                print(f"kept {base}", file=sys.stderr)
            else:
                shutil.rmtree(base, ignore_errors=True)
    ctx["load_avg_end"] = os.getloadavg()
    summary = summarize(runs)
    ctx["command"] = shown(perf_command("EP0,EP1,EP2", "TOPIC", CONFIGS[2], a.records) + a.perf_arg)
    if a.json:
        print(json.dumps({"context": ctx, "runs": runs, "profiled": profiled, **summary}, sort_keys=True))
    else:
        print_report(ctx, summary, a.records, a.runs)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
