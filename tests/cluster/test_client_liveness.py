"""Consumers follow a partition whose leader node is SIGKILLed and comes back (issue 20, item 1).

One replicated partition (RF 3, ``min.insync.replicas=2``) under an ``acks=all``
workload, read at the same time by a plain consumer (``assign`` + ``seek(0)``) and by a
group consumer (``subscribe`` with a group id), each polling in a thread of its own.
The partition's leader node is SIGKILLed: each consumer must resume within a few
seconds of the new leader's election, not re-send its fetch to the dead worker's
endpoint forever. Then the node is started again; being the preferred leader it takes
the partition back as soon as it is in sync, with its worker on a new port: each
consumer must follow it there too. At the end, what each consumer read is compared
with what was acknowledged: every acknowledged offset read once with its value, no
offset skipped or read twice.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipc.client import Consumer
from tests.cluster.harness import Cluster, wait_until
from tests.cluster.workload import ProduceWorkload

TOPIC = "live"
OPTIONS = {"zookeeper_session_timeout_ms": 3000, "replica_lag_time_max_ms": 2000}
RESUME_S = 8.0  # after the new leader is known (metadata back-off is at most 1 s)


class Reader:
    """A consumer polling in its own thread; what it read, as (offset, value), in order."""

    def __init__(self, name: str, make: Callable[[], Consumer], start: Callable[[Consumer], None]) -> None:
        self.name = name
        self.read: list[tuple[int, bytes]] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._make = make
        self._start = start
        self._thread = threading.Thread(target=self._run, name=f"reader-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._make() as consumer:
                self._start(consumer)
                while not self._stop.is_set():
                    got = [(r.offset, r.value or b"") for r in consumer.poll(200)]
                    with self._lock:
                        self.read.extend(got)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc

    def last_offset(self) -> int:
        if self.error is not None:
            raise AssertionError(f"{self.name} consumer failed: {self.error!r}") from self.error
        with self._lock:
            return self.read[-1][0] if self.read else -1

    def stop(self) -> list[tuple[int, bytes]]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), f"{self.name} consumer did not stop"
        if self.error is not None:
            raise AssertionError(f"{self.name} consumer failed: {self.error!r}") from self.error
        return list(self.read)


def max_acked(wl: ProduceWorkload) -> int:
    with wl._lock:
        return max((o for _, o, _ in wl.acked), default=-1)


def wait_caught_up(readers: list[Reader], offset: int, timeout: float, what: str, since: float | None = None) -> float:
    """Until every reader has read ``offset``, at most ``timeout`` s after ``since`` (default:
    now); returns the seconds since ``since``."""
    t0 = time.monotonic() if since is None else since
    timeout = max(0.5, timeout - (time.monotonic() - t0))

    def caught_up() -> bool:
        return all(r.last_offset() >= offset for r in readers)

    names = " and ".join(r.name for r in readers)
    wait_until(caught_up, timeout, f"the {names} consumers to read offset {offset} {what}")
    return time.monotonic() - t0


def check_read(name: str, read: list[tuple[int, bytes]], acked: dict[int, bytes]) -> None:
    offsets = [o for o, _ in read]
    assert offsets == list(range(len(offsets))), (
        f"{name}: offsets not read exactly once in order: "
        f"{[(a, b) for a, b in zip(offsets, offsets[1:], strict=False) if b != a + 1][:5]}"
    )
    got = dict(read)
    missing = [o for o in acked if o not in got]
    wrong = [(o, v, got[o]) for o, v in acked.items() if o in got and got[o] != v]
    assert not missing, f"{name}: acknowledged offsets never read: {missing[:10]}"
    assert not wrong, f"{name}: offsets read with another value than acknowledged: {wrong[:5]}"


@pytest.mark.timeout(120)
def test_consumers_follow_a_killed_and_restarted_leader(cluster_factory: Callable[..., Cluster]) -> None:
    cl: Cluster = cluster_factory(OPTIONS)
    cl.create_topic(TOPIC, partitions=1, replication_factor=3, config={"min.insync.replicas": 2})
    tp = (TOPIC, 0)

    def plain() -> Consumer:
        return Consumer(cl.bootstrap, auto_offset_reset="earliest")

    def assign(c: Consumer) -> None:
        c.assign([tp])
        c.seek(TOPIC, 0, 0)

    def grouped() -> Consumer:
        return Consumer(cl.bootstrap, group_id="g-live", auto_offset_reset="earliest")

    def subscribe(c: Consumer) -> None:
        c.subscribe([TOPIC])

    readers: list[Reader] = []
    timings: dict[str, Any] = {}
    with ProduceWorkload(cl.bootstrap, TOPIC, 1, rate=200) as wl:
        try:
            wl.wait_acked(100, 60)
            readers = [Reader("plain", plain, assign), Reader("group", grouped, subscribe)]
            wait_caught_up(readers, max_acked(wl), 30, "before the fault")

            old = cl.wait_leader(TOPIC, 0, timeout=30)
            node = cl.node(old)
            node.kill(signal.SIGKILL)
            node.wait_exit(10)
            t_kill = time.monotonic()
            cl.wait_leader(TOPIC, 0, timeout=30, not_node=old)
            t_elected = time.monotonic()
            timings["election_s"] = t_elected - t_kill
            wl.wait_acked(20, RESUME_S)  # acknowledged by the new leader
            timings["resume_after_election_s"] = wait_caught_up(
                readers, max_acked(wl), RESUME_S, "from the new leader", since=t_elected
            )

            node.start()
            wait_until(
                lambda: (
                    cl.partition_state(TOPIC, 0).get("leader") == old
                    and bool(cl.partition_state(TOPIC, 0).get("endpoint"))
                ),
                60,
                f"node {old} (the preferred leader) leading {TOPIC}-0 again",
            )
            t_back = time.monotonic()
            wl.wait_acked(20, RESUME_S)  # acknowledged by node {old}'s new worker
            timings["resume_after_return_s"] = wait_caught_up(
                readers, max_acked(wl), RESUME_S, f"from node {old}'s new worker", since=t_back
            )
            wl.stop()
            wait_caught_up(readers, max_acked(wl), 30, "at the end")
        finally:
            reads = {r.name: r.stop() for r in readers}
    print(f"{TOPIC}: {timings} ({wl.summary()})")
    acked = {o: v for _, o, v in wl.acked}
    assert len(acked) == len(wl.acked), "an offset acknowledged twice"
    for name, read in reads.items():
        check_read(name, read, acked)
