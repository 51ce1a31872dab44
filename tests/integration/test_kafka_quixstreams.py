"""Quix Streams (PyPI ``quixstreams``) against the Kafka listener (docs/kafka.md, issue
15): an application with a tumbling-window count, its state kept in RocksDB and in its
changelog topic on Sluice, runs in its own process with ``processing_guarantee=
"at-least-once"`` (exactly-once needs Kafka transactions, which Sluice does not have).
Its output equals the expected counts; stopped and restarted with its local state
deleted, it recovers the state from the changelog topic and a window that spans the
restart counts records from both runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.conftest import REPO, Node, free_port, wait_until
from tests.integration.test_kafka_listener import NODE_OPTIONS, _api_versions

pytestmark = pytest.mark.slow

T0 = 1_700_000_000_000  # a whole second: windows start at T0 + k * 1000
KEYS = [b"user-a", b"user-b", b"user-c"]

APP = r"""
import sys
from quixstreams import Application

bootstrap, state_dir = sys.argv[1:3]
app = Application(
    broker_address=bootstrap, consumer_group="quix-counts", auto_offset_reset="earliest",
    processing_guarantee="at-least-once", state_dir=state_dir, commit_interval=0.2, loglevel="INFO",
    consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
)
clicks = app.topic("clicks", value_deserializer="json")
counts = app.topic("click-counts", value_serializer="json")
sdf = app.dataframe(clicks)
sdf = sdf.tumbling_window(duration_ms=1000).count().final()
sdf.to_topic(counts)
app.run()
"""


@pytest.fixture
def kafka_node(node_factory: Callable[..., Node]) -> Node:
    port = free_port()
    n = node_factory(kafka_listen=f"127.0.0.1:{port}", **NODE_OPTIONS)
    n.kafka = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    n.start()
    wait_until(lambda: _api_versions(n.kafka) is not None, 20, "the Kafka listener")  # type: ignore[attr-defined]
    return n


def _produce(addr: str, records: list[tuple[bytes, int]]) -> None:
    """Each (key, timestamp) as one click; the value numbers it."""
    from confluent_kafka import Producer as KProducer

    p = KProducer({"bootstrap.servers": addr, "acks": "all", "linger.ms": 5})
    errors: list[Any] = []
    for i, (key, ts) in enumerate(records):
        p.produce("clicks", key=key, value=orjson.dumps({"n": i}), timestamp=ts,
                  on_delivery=lambda e, m: errors.append(e) if e else None)  # fmt: skip
    assert p.flush(30) == 0 and errors == []


class App:
    """The Quix Streams application in its own session (process group)."""

    def __init__(self, script: Path, addr: str, state_dir: Path, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), addr, str(state_dir)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=str(state_dir.parent),
            )  # fmt: skip

    def stop(self) -> int:
        """SIGTERM (Quix Streams' graceful stop: commit, close) and wait; SIGKILL past the deadline."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class Output:
    """Reads click-counts with a confluent-kafka consumer (no group), accumulating."""

    def __init__(self, addr: str) -> None:
        from confluent_kafka import Consumer as KConsumer
        from confluent_kafka import TopicPartition

        self.c = KConsumer({"bootstrap.servers": addr, "group.id": "checker", "enable.auto.commit": False})
        self.c.assign([TopicPartition("click-counts", 0, 0)])
        self.got: list[tuple[bytes, int, int]] = []

    def poll(self) -> list[tuple[bytes, int, int]]:
        for m in self.c.consume(num_messages=500, timeout=0.2):
            if m.error() is None:
                v = orjson.loads(m.value())
                self.got.append((m.key(), v["start"], v["value"]))
        return self.got


def _counts(records: list[tuple[bytes, int]]) -> dict[tuple[bytes, int], int]:
    out: dict[tuple[bytes, int], int] = {}
    for key, ts in records:
        start = ts - ts % 1000
        out[key, start] = out.get((key, start), 0) + 1
    return out


def test_quixstreams_tumbling_window_count_with_changelog_recovery(kafka_node: Node, tmp_path: Path) -> None:
    import quixstreams  # noqa: F401  (a test extra: fail, not skip, when it is missing)

    addr = kafka_node.kafka  # type: ignore[attr-defined]
    with kafka_node.admin() as admin:
        admin.create_topic("clicks", partitions=1)
        admin.create_topic("click-counts", partitions=1)
    # run 1: 5.6 seconds of clicks, every 40 ms, round robin over the keys; the last window
    # of each key (T0+5000 ..) stays open: no later click has closed it
    first = [(KEYS[i % 3], T0 + i * 40) for i in range(140)]
    _produce(addr, first)
    script = tmp_path / "app.py"
    script.write_text(APP)
    state = tmp_path / "state"
    state.mkdir()
    out = Output(addr)
    app = App(script, addr, state, tmp_path / "app.log")
    try:
        closed = {kw: n for kw, n in _counts(first).items() if kw[1] < T0 + 5000}
        wait_until(lambda: len(out.poll()) >= len(closed), 60, "the first run's closed windows")
        assert app.stop() == 0, (tmp_path / "app.log").read_text()[-3000:]
        assert {(k, s): n for k, s, n in out.poll()} == closed
        with kafka_node.admin() as admin:
            topics = set(admin.list_topics())
        changelogs = [t for t in topics if t.startswith("changelog__quix-counts")]
        assert changelogs, topics  # the state's changelog topic, created through the listener

        # run 2 without its local state: it must recover the open windows from the changelog
        # and count the clicks of the window spanning the restart from both runs
        for f in sorted(state.rglob("*"), reverse=True):
            f.unlink() if f.is_file() or f.is_symlink() else f.rmdir()
        second = [(KEYS[i % 3], T0 + 5600 + i * 40) for i in range(75)] + [(k, T0 + 60_000) for k in KEYS]
        _produce(addr, second)
        app = App(script, addr, state, tmp_path / "app.log")
        everything = {kw: n for kw, n in _counts(first + second).items() if kw[1] < T0 + 60_000}
        wait_until(lambda: len(out.poll()) >= len(everything), 60, "every window of both runs")
        assert app.stop() == 0, (tmp_path / "app.log").read_text()[-3000:]
        got = {(k, s): n for k, s, n in out.poll()}
        assert len(out.got) == len(everything)  # each window emitted once
        assert got == everything
        with kafka_node.admin() as admin:
            desc = admin.describe_group("quix-counts")
        assert [p["committed_offset"] for p in desc["partitions"] if p["topic"] == "clicks"] == [
            len(first) + len(second)
        ]
    finally:
        app.kill()
        out.c.close()
        print((tmp_path / "app.log").read_text(errors="replace")[-4000:])


def test_confluent_admin_list_topics(kafka_node: Node) -> None:
    """What Quix Streams does first: confluent-kafka's all-topics metadata, whose Metadata
    v12 request librdkafka ends with three bytes Kafka ignores (once closed the connection)."""
    from confluent_kafka.admin import AdminClient

    with kafka_node.admin() as admin:
        admin.create_topic("listed", partitions=2)
    topics = AdminClient({"bootstrap.servers": kafka_node.kafka}).list_topics(timeout=10).topics  # type: ignore[attr-defined]
    assert len(topics["listed"].partitions) == 2 and "__consumer_offsets" not in topics
