"""Sluice's CLI and kcat on the same records (docs/kafka.md, issue 15): `sluice consume`
reads what kcat produced through the Kafka listener (keys, values, headers,
timestamps), and kcat reads what `sluice produce` wrote (keys, values, headers with a
null one, timestamps), each side a real process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable

import orjson
import pytest

from tests.integration.conftest import REPO, SLUICE, Node, free_port, wait_until
from tests.integration.test_kafka_listener import NODE_OPTIONS, _api_versions, _kcat

pytestmark = pytest.mark.slow


@pytest.fixture
def kafka_node(node_factory: Callable[..., Node]) -> Node:
    port = free_port()
    n = node_factory(kafka_listen=f"127.0.0.1:{port}", **NODE_OPTIONS)
    n.kafka = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    n.start()
    wait_until(lambda: _api_versions(n.kafka) is not None, 20, "the Kafka listener")  # type: ignore[attr-defined]
    return n


def run(cmd: list[str], stdin: bytes | None = None, timeout: float = 30.0) -> bytes:
    """Run CMD in its own session; SIGKILL the session on a timeout. Its stdout; fail on a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLUICE_BOOTSTRAP", None)
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
        cwd=str(REPO),
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[:4]} timed out; stderr: {err.decode(errors='replace')[-2000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, (cmd, proc.returncode, err.decode(errors="replace")[-2000:])
    return out


def test_sluice_consume_reads_what_kcat_produced(kafka_node: Node) -> None:
    kcat, addr = _kcat(), kafka_node.kafka  # type: ignore[attr-defined]
    with kafka_node.admin() as admin:
        admin.create_topic("from-kcat", partitions=3)
    n = 600
    lines = "".join(f"key-{i}:value {i} é\u2603 " + "x" * (i % 40) + "\n" for i in range(n))
    run(
        [kcat, "-b", addr, "-P", "-t", "from-kcat", "-K:", "-H", "origin=kcat", "-H", "trace=t-1", "-z", "snappy"],
        stdin=lines.encode(),
    )
    run([kcat, "-b", addr, "-P", "-t", "from-kcat", "-p", "1"], stdin=b"no key here\n")  # a null key
    # what kcat itself reads back: partition, offset -> timestamp
    kc = run([kcat, "-b", addr, "-C", "-t", "from-kcat", "-e", "-q", "-f", r"%p %o %T\n"]).decode().splitlines()
    stamps = {(int(p), int(o)): int(t) for p, o, t in (line.split() for line in kc)}
    assert len(stamps) == n + 1

    out = run(
        [*SLUICE, "consume", "from-kcat", "--from-beginning", "--json", "--max-messages", str(n + 1),
         "--timeout-ms", "15000", "-b", kafka_node.bootstrap],
    )  # fmt: skip
    got = [orjson.loads(line) for line in out.splitlines()]
    assert len(got) == n + 1
    by_key = {r["key"]: r for r in got}
    for i in range(n):
        r = by_key[f"key-{i}"]
        assert r["value"] == f"value {i} é\u2603 " + "x" * (i % 40)
        assert r["headers"] == [["origin", "kcat"], ["trace", "t-1"]]
        assert r["topic"] == "from-kcat" and r["timestamp"] == stamps[(r["partition"], r["offset"])]
    nokey = by_key[None]
    assert nokey["value"] == "no key here" and nokey["partition"] == 1 and nokey["headers"] == []
    # the same through the kcat-style format, byte for byte against kcat's own output
    fmt = r"%p %o %k %s %h %T\n"
    mine = run(
        [*SLUICE, "consume", "from-kcat", "--from-beginning", "--format", fmt, "--max-messages", str(n + 1),
         "--timeout-ms", "15000", "-b", kafka_node.bootstrap],
    )  # fmt: skip
    theirs = run([kcat, "-b", addr, "-C", "-t", "from-kcat", "-e", "-q", "-f", fmt])
    assert sorted(mine.splitlines()) == sorted(theirs.splitlines())


def test_kcat_reads_what_sluice_produce_wrote(kafka_node: Node) -> None:
    kcat, addr = _kcat(), kafka_node.kafka  # type: ignore[attr-defined]
    with kafka_node.admin() as admin:
        admin.create_topic("from-cli", partitions=2)
    n, t0 = 500, 1_700_000_000_000
    # TIMESTAMP|HEADERS<TAB>KEY=VALUE; every fifth record also has a header with a null value
    lines = "".join(f"{t0 + i}|n:{i}{',flag' if i % 5 == 0 else ''}\tk{i}=v{i} ü\n" for i in range(n))
    args = ["--timestamp-separator", "|", "--header-separator", "\t", "--key-separator", "=", "-H", "app=cli"]
    run([*SLUICE, "produce", "from-cli", *args, "--compression", "zstd", "--acks", "all", "-b", kafka_node.bootstrap],
        stdin=lines.encode())  # fmt: skip
    out = run([kcat, "-b", addr, "-C", "-t", "from-cli", "-e", "-q", "-f", r"%k|%s|%T|%h\n"]).decode()
    got = sorted(out.splitlines())
    want = sorted(f"k{i}|v{i} ü|{t0 + i}|app=cli,n={i}{',flag=NULL' if i % 5 == 0 else ''}" for i in range(n))
    assert got == want
    # `sluice consume --format` prints them as kcat does, a null header value as NULL included
    fmt = r"%p %o %k %s %h %T %K %S\n"
    mine = run(
        [*SLUICE, "consume", "from-cli", "--from-beginning", "--format", fmt, "--max-messages", str(n),
         "--timeout-ms", "15000", "-b", kafka_node.bootstrap],
    )  # fmt: skip
    theirs = run([kcat, "-b", addr, "-C", "-t", "from-cli", "-e", "-q", "-f", fmt])
    assert sorted(mine.splitlines()) == sorted(theirs.splitlines())
    # kcat's JSON envelope tells a null header value from an empty one, and gives the offsets
    js = [orjson.loads(line) for line in run([kcat, "-b", addr, "-C", "-t", "from-cli", "-e", "-q", "-J"]).splitlines()]
    assert len(js) == n
    by_key = {r["key"]: r for r in js}
    assert by_key["k5"]["headers"] == ["app", "cli", "n", "5", "flag", None]
    assert by_key["k6"]["headers"] == ["app", "cli", "n", "6"]
    for p in (0, 1):
        offsets = sorted(r["offset"] for r in js if r["partition"] == p)
        assert offsets == list(range(len(offsets)))
