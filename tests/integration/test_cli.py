"""The Kafka-familiar command line against a real node (issue 19): real ``sluice``
subprocesses, one node shared by the module (each test uses its own topics and groups)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from ipc.client import Consumer, Producer
from tests.integration.conftest import REPO, SLUICE, Node, wait_until


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLUICE_BOOTSTRAP", None)
    return env


def sluice(*args: str, stdin: bytes | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run ``sluice ARGS`` in its own session; SIGKILL the session on timeout and after."""
    proc = subprocess.Popen(
        [*SLUICE, *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=_env(),
        cwd=str(REPO),
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"sluice {' '.join(args)}: no exit within {timeout} s\n{out[-2000:]!r}\n{err[-2000:]!r}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def ok(res: subprocess.CompletedProcess[bytes]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr.decode(errors='replace')}"
    return res.stdout.decode()


def one_error(res: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    err = res.stderr.decode(errors="replace")
    assert res.returncode == code, (res.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("cli"))
    try:
        yield n.start()
    finally:
        with contextlib.suppress(Exception):
            n.status()
        n.kill_all()
        shutil.rmtree(os.path.dirname(n.status_path), ignore_errors=True)


@pytest.fixture
def b(node: Node) -> list[str]:
    return ["-b", node.bootstrap.removeprefix("tcp://")]


def make_topic(node: Node, name: str, partitions: int = 1) -> None:
    with node.admin() as admin:
        admin.create_topic(name, partitions)


# ---- status --------------------------------------------------------------------------------------
def test_status_summary_filter_and_the_wrong_data_dir(node: Node, tmp_path: Path) -> None:
    make_topic(node, "st-a", 2)
    make_topic(node, "st-b", 1)
    lines = ok(sluice("status", "--config", str(node.config_path), "--topic", "st-a")).splitlines()
    assert "(running)" in lines[0]
    assert lines[1].split()[:3] == ["TOPIC", "PART", "STATE"]
    assert [ln.split()[:2] for ln in lines[2:-1]] == [["st-a", "0"], ["st-a", "1"]]
    assert lines[-1].startswith("2 partition(s): ") and lines[-1].endswith(" offline, 0 other"), lines[-1]
    assert all(len(ln) <= 100 for ln in lines[1:]), lines
    js = orjson.loads(ok(sluice("status", "--config", str(node.config_path), "--topic", "st-b", "--json")))
    assert [p["topic"] for p in js["partitions"]] == ["st-b"]

    line = one_error(sluice("status", "--data-dir", str(tmp_path / "elsewhere")))
    assert "no running node found" in line and f"--data-dir {node.data_dir} (node 0" in line, line


def test_status_of_a_node_that_is_not_running_exits_3(node_factory: Callable[..., Node]) -> None:
    dead = node_factory().start()
    assert dead.proc is not None
    dead.status()  # learn the worker pids for the teardown
    os.killpg(dead.proc.pid, signal.SIGKILL)
    dead.proc.wait(10)
    res = sluice("status", "--config", str(dead.config_path))
    assert res.returncode == 3, res
    assert "NOT RUNNING" in res.stdout.decode().splitlines()[0]
    assert sluice("status", "--config", str(dead.config_path), "--json").returncode == 3


# ---- produce and consume -------------------------------------------------------------------------
def test_produce_headers_timestamps_and_consume_formats(node: Node, b: list[str]) -> None:
    make_topic(node, "fmt", 2)
    lines = b"1000|src:web,n\tk1=v1\n2000|\tk2=v2\n"
    args = ["--timestamp-separator", "|", "--header-separator", r"\t", "--key-separator", "=", "-H", "app=cli"]
    res = sluice("produce", "fmt", *args, "--partition", "1", *b, stdin=lines)
    assert "produced 2 record(s)" in res.stderr.decode(), res

    common = ["--from-beginning", "--timeout-ms", "500", *b]
    res = sluice("consume", "fmt", "--format", r"%t %p %o %T %k %s [%h]\n", *common)
    assert ok(res).splitlines() == ["fmt 1 0 1000 k1 v1 [app=cli,src=web,n=NULL]", "fmt 1 1 2000 k2 v2 [app=cli]"]
    assert res.stderr.decode().strip() == "Processed a total of 2 messages"

    out = ok(sluice("consume", "fmt", "--print-timestamp", "--print-headers", "--print-key", "--print-offset", *common))
    assert out.splitlines()[0] == "CreateTime:1000\t1:0\tapp:cli,src:web,n:null\tk1\tv1"

    js = [orjson.loads(ln) for ln in ok(sluice("consume", "fmt", "--json", *common)).splitlines()]
    assert js[1] == {
        "topic": "fmt",
        "partition": 1,
        "offset": 1,
        "timestamp": 2000,
        "key": "k2",
        "value": "v2",
        "headers": [["app", "cli"]],
    }
    for codec in ("gzip", "snappy"):
        ok(sluice("produce", "fmt", "--partition", "0", "--compression", codec, *b, stdin=codec.encode() + b"\n"))
    assert ok(sluice("consume", "fmt", "--partition", "0", "--format", r"%s\n", *common)).split() == ["gzip", "snappy"]
    line = one_error(sluice("consume", "fmt", "--format", "%q", *common))
    assert "unknown field %q" in line
    line = one_error(sluice("produce", "fmt", "--timestamp-separator", "|", *b, stdin=b"no stamp\n"))
    assert "line 1 has no timestamp separator" in line


def test_consume_several_topics_a_regex_and_start_positions(node: Node, b: list[str]) -> None:
    for t in ("many-a", "many-b", "other"):
        make_topic(node, t)
    t0 = int(time.time() * 1000)
    with Producer(node.bootstrap, acks=1) as p:
        for t in ("many-a", "many-b", "other"):
            for i in range(5):
                p.send(t, f"{t}-{i}".encode(), timestamp_ms=t0 + i * 1000)
        p.flush(30)
    common = ["--timeout-ms", "500", "--format", r"%t:%o\n", *b]

    def got(*args: str) -> list[str]:
        return sorted(ok(sluice("consume", *args, *common)).split())

    assert got("many-a", "--topic", "other", "--from-beginning") == sorted(
        [f"many-a:{i}" for i in range(5)] + [f"other:{i}" for i in range(5)]
    )
    assert got("--include", "many-.*", "--offset", "-2") == ["many-a:3", "many-a:4", "many-b:3", "many-b:4"]
    assert got("many-b", "--offset", "3") == ["many-b:3", "many-b:4"]
    assert got("many-b", "--offset", "latest") == []
    assert got("many-b", "--offset", "earliest") == [f"many-b:{i}" for i in range(5)]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((t0 + 3000) // 1000)) + f".{(t0 + 3000) % 1000:03d}Z"
    assert got("many-a", "--start-time", iso) == ["many-a:3", "many-a:4"]
    assert got("many-a", "--start-time", str(t0 + 60_000)) == []
    assert "no topic matches" in one_error(sluice("consume", "--include", "nothing-.*", *common))
    assert "needs exactly one topic" in one_error(sluice("consume", "many-a", "many-b", "--partition", "0", *common))
    assert "name a topic" in one_error(sluice("consume", *common))


def test_produce_interrupted_reports_what_was_acknowledged(node: Node, b: list[str]) -> None:
    make_topic(node, "intr")
    proc = subprocess.Popen(
        [*SLUICE, "produce", "intr", *b],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=_env(),
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"".join(b"r%d\n" % i for i in range(7)))
        proc.stdin.flush()
        with Consumer(node.bootstrap) as c:
            c.assign([("intr", 0)])
            wait_until(lambda: c.end_offsets([("intr", 0)])[("intr", 0)] == 7, 20, "seven records written")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == 130, err
    assert err.decode().strip() == "interrupted: 7 of 7 record(s) sent to intr acknowledged", err


# ---- topics --------------------------------------------------------------------------------------
def test_topics_if_not_exists_describe_all_and_partition_filters(node: Node, b: list[str]) -> None:
    assert (
        ok(sluice("topics", "create", "tp-x", "--partitions", "2", *b)).strip()
        == "created topic tp-x with 2 partition(s)"
    )
    assert ok(sluice("topics", "create", "tp-x", "--if-not-exists", *b)).strip() == "topic tp-x already exists"
    assert "TOPIC_ALREADY_EXISTS" in one_error(sluice("topics", "create", "tp-x", *b))
    described = orjson.loads(ok(sluice("topics", "describe", "--json", *b)))
    names = [d["topic"] for d in described]
    assert "tp-x" in names and not any(n.startswith("__") for n in names)
    text = ok(sluice("topics", "describe", *b))
    assert "topic tp-x  partitions 2  replication factor 1" in text.splitlines()
    for flag in ("--under-replicated-partitions", "--unavailable-partitions"):
        out = ok(sluice("topics", "describe", "tp-x", flag, *b)).splitlines()
        assert out[0].split() == ["TOPIC", "PART", "LEADER", "REPLICAS", "ISR", "STATE"] and len(out) == 1, out
        assert orjson.loads(ok(sluice("topics", "describe", flag, "--json", *b))) == []
    assert "UNKNOWN_TOPIC_OR_PARTITION" in one_error(
        sluice("topics", "describe", "nosuch", "--unavailable-partitions", *b)
    )


# ---- groups --------------------------------------------------------------------------------------
def _committed(node: Node, group: str) -> dict[tuple[str, int], int]:
    with node.admin() as admin:
        d = admin.describe_group(group)
    return {(p["topic"], p["partition"]): p["committed_offset"] for p in d["partitions"] if p["committed_offset"] >= 0}


def test_groups_reset_plans_and_executes_deletes_offsets_and_shows_negative_lag(
    node: Node, b: list[str], tmp_path: Path
) -> None:
    make_topic(node, "gr", 2)
    make_topic(node, "gr-empty")
    t0 = int(time.time() * 1000)
    with Producer(node.bootstrap, acks=1) as p:
        for part in (0, 1):
            for i in range(10):
                p.send("gr", b"x", partition=part, timestamp_ms=t0 - 3_600_000 + i * 60_000)
        p.flush(30)
    with node.admin() as admin:
        admin.alter_group_offsets("g-cli", {("gr", 0): 4, ("gr", 1): 6})
    reset = ["groups", "reset-offsets", "g-cli", *b]

    # a dry run by default: the plan on stdout, a note on stderr, nothing changed
    res = sluice(*reset, "--topic", "gr", "--to-earliest")
    assert ok(res).splitlines() == ["gr\t0\t0", "gr\t1\t0"]
    assert "--execute" in res.stderr.decode()
    assert _committed(node, "g-cli") == {("gr", 0): 4, ("gr", 1): 6}

    ok(sluice(*reset, "--topic", "gr", "--shift-by", "-5", "--execute"))  # 4-5 is kept at the log start
    assert _committed(node, "g-cli") == {("gr", 0): 0, ("gr", 1): 1}
    ok(sluice(*reset, "--topic", "gr:1", "--shift-by", "100", "--execute"))  # within the log: the end
    assert _committed(node, "g-cli") == {("gr", 0): 0, ("gr", 1): 10}
    ok(sluice(*reset, "--topic", "gr:0", "--by-duration", "PT57M30S", "--execute"))  # records from minute 3 on
    assert _committed(node, "g-cli") == {("gr", 0): 3, ("gr", 1): 10}

    exported = ok(sluice(*reset, "--all-topics", "--to-current", "--export"))
    assert exported == "gr,0,3\ngr,1,10\n"
    plan = tmp_path / "plan.csv"
    plan.write_text("gr,0,7\ngr,1,2\n")
    ok(sluice(*reset, "--from-file", str(plan), "--execute"))
    assert _committed(node, "g-cli") == {("gr", 0): 7, ("gr", 1): 2}

    # a committed offset past the end shows its real, negative lag, and is marked
    ok(sluice(*reset, "--topic", "gr-empty", "--to-offset", "5", "--execute"))
    text = ok(sluice("groups", "describe", "g-cli", *b))
    row = next(ln.split() for ln in text.splitlines() if ln.split()[:1] == ["gr-empty"])
    assert row[:5] == ["gr-empty", "0", "5", "0", "-5"], text
    assert "LAG < 0" in text
    js = orjson.loads(ok(sluice("groups", "describe", "g-cli", "--json", *b)))  # the same lag, not clamped at 0
    lags = {(p["topic"], p["partition"]): p["lag"] for p in js["partitions"]}
    assert lags == {("gr", 0): 3, ("gr", 1): 8, ("gr-empty", 0): -5}, lags

    # describe --all-groups; delete-offsets keeps the others
    ok(sluice(*reset, "--topic", "gr", "--to-latest", "--execute"))
    with node.admin() as admin:
        admin.alter_group_offsets("g-cli-2", {("gr", 0): 1})
    alls = orjson.loads(ok(sluice("groups", "describe", "--all-groups", "--json", *b)))
    assert {"g-cli", "g-cli-2"} <= {d["group"] for d in alls}
    out = ok(sluice("groups", "delete-offsets", "g-cli", "--topic", "gr:1", "--topic", "gr-empty", *b))
    assert out.splitlines() == ["gr\t1\tdeleted", "gr-empty\t0\tdeleted"]
    assert _committed(node, "g-cli") == {("gr", 0): 10}
    assert "no committed offsets for nosuch" in one_error(
        sluice("groups", "delete-offsets", "g-cli", "--topic", "nosuch", *b)
    )
    assert "--all-groups" in one_error(sluice("groups", "describe", *b))
    assert "--topic TOPIC" in one_error(sluice(*reset, "--to-latest"))
