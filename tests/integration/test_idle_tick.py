"""An idle partition worker ticks less often (its heartbeat every heartbeat timeout / 4,
at most 1 s) and goes back to the 100 ms tick as soon as something happens; a reload
that shortens the heartbeat timeout kills no idle worker.

The beats are read from the status table: a worker writes its heartbeat on every tick.
The 10 ms sampling loop below is an observation, bounded in time; the waits are for
conditions (``wait_until``)."""

from __future__ import annotations

import re
import signal
import statistics
import time
from collections.abc import Callable

from ipc.client import Producer
from tests.integration.conftest import Node, wait_until


def heartbeat_age(node: Node, topic: str) -> float:
    age = node.partition(topic, 0)["heartbeat_age_s"]
    assert age is not None, f"{topic}-0 has no heartbeat: its worker was killed or restarts"
    return float(age)


def beat_gaps(node: Node, topic: str, window_s: float) -> list[float]:
    """Seconds between the worker's heartbeats seen over ``window_s`` (sampled every 10 ms)."""
    beats: list[float] = []
    end = time.monotonic() + window_s
    while time.monotonic() < end:
        now = time.monotonic()
        beat = now - heartbeat_age(node, topic)
        if not beats or beat > beats[-1] + 0.02:
            beats.append(beat)
        time.sleep(0.01)
    return [b - a for a, b in zip(beats, beats[1:], strict=False)]


def test_idle_worker_beats_at_the_idle_interval_then_wakes_up(node_factory: Callable[..., Node]) -> None:
    node = node_factory(heartbeat_timeout_ms=2000).start()  # idle tick: 0.5 s
    with node.admin() as admin:
        admin.create_topic("quiet", 1)
    node.wait_serving("quiet", 0)
    wait_until(lambda: heartbeat_age(node, "quiet") >= 0.3, 10, "quiet-0 to go idle (a beat older than 0.3 s)")
    gaps = beat_gaps(node, "quiet", 3.0)
    assert gaps, "no heartbeat in 3 s"
    assert statistics.median(gaps) >= 0.4, f"idle beats every {gaps} s, expected about 0.5 s"
    assert max(gaps) <= 1.0, f"a gap of {max(gaps)} s: half the heartbeat timeout"

    # a request brings the short tick back: the status shows the record at once
    with Producer(node.bootstrap, acks=1) as p:
        p.send("quiet", b"wake up", partition=0).result(10)
    wait_until(lambda: node.partition("quiet", 0)["log_end_offset"] == 1, 5, "the status to show the record")
    assert node.worker_pid("quiet", 0) > 0


def test_reload_to_a_shorter_heartbeat_timeout_kills_no_idle_worker(node_factory: Callable[..., Node]) -> None:
    node = node_factory(heartbeat_timeout_ms=10_000).start()  # idle tick: 1 s
    with node.admin() as admin:
        admin.create_topic("quiet", 1)
    pid = node.wait_serving("quiet", 0)
    # the last beat is older than the coming timeout when the reload lands
    wait_until(lambda: heartbeat_age(node, "quiet") >= 0.6, 10, "an idle beat older than 0.6 s")
    text = node.config_path.read_text()
    node.config_path.write_text(re.sub(r"heartbeat_timeout_ms = \d+", "heartbeat_timeout_ms = 400", text))
    node.signal(signal.SIGHUP)
    wait_until(lambda: "heartbeat_timeout_ms 10000 -> 400" in node.log_path.read_text(), 10, "the reload")
    # the first gap reaches back to the last beat before the reload; after it the idle
    # tick is max(0.1, 0.4 / 4) s
    gaps = beat_gaps(node, "quiet", 2.0)[1:]
    assert gaps and max(gaps) < 0.4, f"beats {gaps} s apart under a 0.4 s timeout"
    assert node.worker_pid("quiet", 0) == pid, "the idle worker was killed"
    assert "silent for" not in node.log_path.read_text()
