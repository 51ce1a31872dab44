"""The connector runtime end to end, with the file sink: a real node runs a declared
connector as a child process; records of a topic become lines of a file; a SIGKILLed
connector is restarted and the file has every line exactly once; a record that cannot
be a line goes to the dead-letter topic with the error in its headers; pause, resume,
restart and create through ``sluice connect``; a bad connector option stops the node's
start with one line naming the connector and the option."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ipc.client import Consumer, Producer
from tests.integration.conftest import SLUICE, Node, free_port, wait_until
from tests.integration.test_connect_support import connect_status, declare, wait_connector

pytestmark = pytest.mark.slow


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_file_sink_writes_every_record_once_across_a_sigkill(node_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    node: Node = node_factory()
    declare(node, "to-file", "file-sink", topics="lines", file=str(out), **{"offset.flush.interval.ms": 50})
    node.start()
    with node.admin() as admin:
        admin.create_topic("lines", partitions=2)
    c = wait_connector(node, "to-file", lambda c: c["state"] == "serving", "serving")
    first_pid = int(c["pid"])
    total = 6000
    sent: list[str] = []
    done = threading.Event()

    def produce() -> None:
        with Producer(node.bootstrap) as p:
            for i in range(total):
                v = f"line-{i}"
                p.send("lines", v.encode(), key=str(i % 13).encode())
                sent.append(v)
                if i % 200 == 0:
                    p.flush()
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    try:
        wait_until(lambda: len(lines(out)) > 1500, 30, "the first lines in the file")
        os.kill(first_pid, signal.SIGKILL)  # mid-stream
        at_kill = len(lines(out))  # the dead process's lines (the new one cuts back to its position, at most this)
        wait_connector(node, "to-file", lambda c: c["state"] == "serving" and c["pid"] != first_pid, "restarted", 30)
    finally:
        t.join(60)
    assert done.is_set()
    wait_until(lambda: len(lines(out)) >= total, 60, f"{total} lines")
    got = lines(out)
    dupes = [v for v, n in collections.Counter(got).items() if n > 1]
    assert dupes == [], f"{len(dupes)} lines written twice, e.g. {dupes[:5]}"
    assert sorted(got) == sorted(sent)
    # within a partition, lines are in offset order: per key (one partition), increasing
    by_key: dict[int, list[int]] = collections.defaultdict(list)
    for v in got:
        i = int(v.split("-")[1])
        by_key[i % 13].append(i)
    assert all(seq == sorted(seq) for seq in by_key.values())
    written = lambda c: (c["task"] or {}).get("records_written", 0)  # noqa: E731
    # the restarted process wrote everything from its stored position on
    c = wait_connector(node, "to-file", lambda c: written(c) >= total - at_kill, "counted")
    assert c["restarts"] >= 1 and c["task"]["state"] == "running"
    assert node.stop() == 0
    assert "connector to-file stopped" in node.log_path.read_text()  # SIGTERM: the last flush, exit 0


def test_dead_letter_topic_and_cli(node_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    node: Node = node_factory()
    declare(node, "to-file", "file-sink", topics=["in"], file=str(out), **{"offset.flush.interval.ms": 50})
    node.start()
    with node.admin() as admin:
        admin.create_topic("in")
    wait_connector(node, "to-file", lambda c: c["state"] == "serving", "serving")
    with Producer(node.bootstrap) as p:
        p.send("in", b"one")
        p.send("in", b"two\nlines", headers=[("origin", b"test")])
        p.send("in", b"\xff\xfe not utf-8")
        p.send("in", b"three")
        p.flush()
    wait_until(lambda: lines(out) == ["one", "three"], 30, "the good lines")
    c = wait_connector(node, "to-file", lambda c: (c["task"] or {}).get("dead_letter_records") == 2, "2 dead letters")
    assert "not UTF-8" in c["task"]["last_error"]
    with Consumer(node.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([("to-file.dlq", 0)])
        got: list[Any] = []
        wait_until(lambda: got.extend(consumer.poll(200)) or len(got) >= 2, 30, "the dead letters")
    assert [r.value for r in got] == [b"two\nlines", b"\xff\xfe not utf-8"]
    headers = dict(got[0].headers)
    assert headers["origin"] == b"test"
    assert headers["__connect.errors.topic"] == b"in"
    assert headers["__connect.errors.offset"] == b"1"
    assert headers["__connect.errors.connector.name"] == b"to-file"
    assert headers["__connect.errors.exception.class.name"] == b"LineError"
    assert b"line break" in headers["__connect.errors.exception.message"]

    assert node.stop() == 0


def test_file_source_across_a_sigkill(node_factory: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.log"
    node: Node = node_factory()
    declare(node, "tail", "file-source", file=str(src), topic="lines-in", **{"offset.flush.interval.ms": 50})
    node.start()
    pid = int(wait_connector(node, "tail", lambda c: c["state"] == "serving", "serving")["pid"])
    written: list[str] = []

    def append(n: int) -> None:
        with open(src, "a") as f:
            for _ in range(n):
                written.append(f"event {len(written)}")
                f.write(written[-1] + "\n")

    def topic() -> list[str]:
        with Consumer(node.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=50) as c:
            c.assign([("lines-in", 0)])
            end = c.end_offsets([("lines-in", 0)])[("lines-in", 0)]
            got: list[str] = []
            while c.position("lines-in", 0) < end:
                got.extend(r.value.decode() for r in c.poll(200))
            return got

    append(3000)
    wait_until(lambda: len(topic()) >= 3000, 30, "the first lines")
    size = src.stat().st_size
    stored = lambda c: ((c["task"] or {}).get("offset") or {}).get("position") == size  # noqa: E731
    wait_connector(node, "tail", stored, "the position stored")
    os.kill(pid, signal.SIGKILL)
    append(2000)
    wait_connector(node, "tail", lambda c: c["state"] == "serving" and c["pid"] != pid, "restarted")
    wait_until(lambda: set(topic()) == set(written), 30, "every line in the topic")
    assert topic() == written  # in order, once: the lines after the stored position, not before
    assert node.stop() == 0


def test_prometheus_metrics(node_factory: Any, tmp_path: Path) -> None:
    port = free_port()
    node: Node = node_factory(metrics_listen=f"127.0.0.1:{port}")
    declare(node, "m", "file-sink", topics="in", file=str(tmp_path / "m.txt"), **{"offset.flush.interval.ms": 50})
    node.start()
    with node.admin() as admin:
        admin.create_topic("in")
    with Producer(node.bootstrap) as p:
        for v in (b"a", b"b\nc", b"d"):
            p.send("in", v)
        p.flush()

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def has(text: str) -> bool:
        return all(
            line in text
            for line in (
                'sluice_connect_records_polled_total{connector="m"} 3.0',
                'sluice_connect_records_written_total{connector="m"} 2.0',
                'sluice_connect_dead_letter_records_total{connector="m"} 1.0',
                'sluice_connect_errors_total{connector="m"} 1.0',
                'sluice_connect_lag{connector="m",unit="records"} 0.0',
            )
        )

    wait_until(lambda: has(scrape()), 30, "the connector's metrics")
    assert node.stop() == 0


def test_reload_starts_stops_and_changes_connectors(node_factory: Any, tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    node: Node = node_factory()
    base = node.config_path.read_text()
    declare(node, "a", "file-sink", topics="in", file=str(a))
    node.start()
    with node.admin() as admin:
        admin.create_topic("in")
    with Producer(node.bootstrap) as p:
        p.send("in", b"x").result(10)
    wait_until(lambda: lines(a) == ["x"], 30, "a's file")
    node.config_path.write_text(base)  # a removed, b added
    declare(node, "b", "file-sink", topics="in", file=str(b))
    node.signal(signal.SIGHUP)
    wait_until(lambda: lines(b) == ["x"], 30, "b's file after the reload")
    wait_until(lambda: "a" not in connect_status(node), 30, "a stopped and gone")
    assert node.stop() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"topics": "in"}, "connector 'f' (file-sink): option 'file' is required"),
        ({"topics": "in", "file": "/x", "colour": "red"}, "connector 'f' (file-sink): unknown option 'colour'"),
        ({"topics": "in", "file": "/x", "offset.flush.interval.ms": "soon"}, "option 'offset.flush.interval.ms'"),
    ],
)
def test_bad_connector_config_is_one_line(node_factory: Any, options: dict[str, Any], message: str) -> None:
    node: Node = node_factory()
    declare(node, "f", "file-sink", **options)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run(
        [*SLUICE, "serve", "--config", str(node.config_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], res.stderr
