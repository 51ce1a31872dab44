"""A consumer group whose coordinator moves (issue 20): membership survives the move.

Three members of one group read a topic of six partitions (RF 3,
``min.insync.replicas=2``) under an idempotent ``acks=all`` workload, each in a thread
of its own, committing their positions synchronously after a poll that returned
records, at most every 0.5 s (a commit that fails, while the coordinator moves, is
covered by the next one). Then the group's coordinator (the node leading its ``__consumer_offsets``
partition) goes away:

* SIGKILL of that node, later started again (it takes its preferred leaderships back,
  so the coordinator moves twice);
* a rolling restart with controlled shutdown (every node SIGTERMed and started in turn,
  the coordinator's among them: it moves each time its node leaves or comes back).

What is asserted, as the promise of the group metadata record (docs/groups.md):
no rebalance at all (the generation and the member ids are those of before the faults;
no member saw a partition revoked, lost or newly assigned after the first stable
generation), every acknowledged record delivered, and none delivered twice: with no
rebalance, each partition is read by one member from its position in memory, so even
the records after its last commit are not read again (counted from the first stable
generation on: while the group forms, partitions move before their first owner commits;
and up to the end of the faults: the members then close one after the other, which
rebalances the group among those still open). After the SIGKILL test the
replicas of every partition are byte-identical (the leaders answer their followers from
their recent batches in memory).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ipc.client import Consumer
from ipc.errors import SluiceError, TopicAlreadyExistsError
from tests.cluster.harness import Cluster, request, wait_until
from tests.cluster.workload import ProduceWorkload

TOPIC = "moving"
GROUP = "g-moves"
PARTITIONS = 6
OPTIONS = {"zookeeper_session_timeout_ms": 3000, "replica_lag_time_max_ms": 2000}
HISTORY_T0 = [0.0]  # when start_group dropped the events (diagnostics)
COMMIT_INTERVAL_S = 0.5  # a synchronous commit of the positions after a poll, at most this often


class Member:
    """A group consumer polling and committing in its own thread; what it was handed."""

    def __init__(self, bootstrap: str, name: str) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self.delivered: list[tuple[int, int, bytes]] = []  # (partition, offset, value)
        # ("assign" | "revoke" | "lost", partitions, the member's generation then)
        self.events: list[tuple[str, list[Any], int]] = []
        self.history: list[
            tuple[float, str, list[Any], int, str]
        ] = []  # every event: time, kind, tps, generation, member
        self.consumer: Consumer | None = None
        self.final_events: list[tuple[str, list[Any], int]] = []  # as freeze() found them
        self.final_delivered: list[tuple[int, int, bytes]] = []
        self.commits = 0
        self.mark = 0  # deliveries before it happened while the group formed
        self.commit_failures = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"member-{name}", daemon=True)
        self._thread.start()

    def _event(self, kind: str) -> Callable[[list[Any]], None]:
        def record(tps: list[Any]) -> None:
            g = self.consumer._group if self.consumer is not None else None
            with self._lock:
                self.events.append((kind, sorted(tps), g.generation if g else -2))
                self.history.append(
                    (time.monotonic(), kind, sorted(tps), g.generation if g else -2, g.member_id if g else "")
                )

        return record

    def _run(self) -> None:
        try:
            with Consumer(
                self.bootstrap,
                group_id=GROUP,
                client_id=self.name,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                session_timeout_ms=10_000,
                heartbeat_interval_ms=1000,
                on_assign=self._event("assign"),
                on_revoke=self._event("revoke"),
                on_lost=self._event("lost"),
            ) as c:
                self.consumer = c
                c.subscribe([TOPIC])
                next_commit = 0.0
                while not self._stop.is_set():
                    records = c.poll(200)
                    with self._lock:
                        self.delivered.extend((r.partition, r.offset, r.value or b"") for r in records)
                    if records and time.monotonic() >= next_commit:
                        next_commit = time.monotonic() + COMMIT_INTERVAL_S
                        try:
                            c.commit(timeout_ms=3000)
                            self.commits += 1
                        except SluiceError:  # the coordinator is moving: the next commit covers it
                            self.commit_failures += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"member {self.name} failed: {self.error!r}") from self.error

    def read_up_to(self) -> dict[int, int]:
        """Per partition, the highest offset delivered to this member."""
        self.check()
        out: dict[int, int] = {}
        with self._lock:
            for p, o, _ in self.delivered:
                out[p] = max(out.get(p, -1), o)
        return out

    def owned(self) -> set[tuple[str, int]]:
        """What the member holds, from its callbacks (cooperative: each names the change)."""
        out: set[tuple[str, int]] = set()
        with self._lock:
            for kind, tps, _ in self.events:
                if kind == "assign":
                    out |= {(str(t), int(p)) for t, p in tps}
                else:
                    out -= {(str(t), int(p)) for t, p in tps}
        return out

    def freeze(self) -> None:
        """Keep what the member was handed and told so far (``final_*``): closing the
        members one after the other rebalances the group among those still open, which
        is the test's end, not its subject."""
        with self._lock:
            self.final_events = list(self.events)
            self.final_delivered = list(self.delivered)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), f"member {self.name} did not stop"
        self.check()


def create_topic(cl: Cluster) -> None:
    try:
        cl.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3, config={"min.insync.replicas": 2})
    except TopicAlreadyExistsError:  # a retry of the admin request after a slow first answer
        pass


def coordinator_of(cl: Cluster, not_node: int | None = None) -> int:
    """The node coordinating GROUP, as the live nodes agree (other than ``not_node``)."""
    seen: list[Any] = []

    def agreed() -> tuple[int] | None:
        answers: dict[int, Any] = {}
        for n in cl.nodes:
            if n.running:
                reply = request(n.endpoint, "find_coordinator", 5.0, group=GROUP)
                answers[n.node_id] = reply.error.code if reply.error is not None else reply.fields["node_id"]
        seen[:] = [answers]
        values = set(answers.values())
        if len(values) != 1 or not all(isinstance(v, int) for v in values) or not_node in values:
            return None
        return (values.pop(),)

    try:
        got: tuple[int] = wait_until(agreed, 60, f"the nodes agreeing on the coordinator of {GROUP}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answers {seen}") from None
    return got[0]


def stable_group(cl: Cluster, members: list[Member]) -> dict[str, Any]:
    """Until GROUP is stable with the three members, two partitions each, as the
    coordinator describes it."""

    def stable() -> dict[str, Any] | None:
        for m in members:
            m.check()
        try:
            with cl.admin(5000) as admin:
                d: dict[str, Any] = admin.describe_group(GROUP)
        except SluiceError:
            return None
        if d["state"] != "stable" or len(d["members"]) != 3:
            return None
        if sorted(len(m["assignment"]) for m in d["members"]) != [2, 2, 2]:
            return None
        return d

    got: dict[str, Any] = wait_until(stable, 60, f"group {GROUP} stable with 3 members")
    return got


def acked_ends(wl: ProduceWorkload) -> dict[int, int]:
    with wl._lock:
        out: dict[int, int] = {}
        for p, o, _ in wl.acked:
            out[p] = max(out.get(p, -1), o)
    return out


def wait_delivered(members: list[Member], ends: dict[int, int], timeout: float, what: str) -> None:
    def done() -> bool:
        got: dict[int, int] = {}
        for m in members:
            for p, o in m.read_up_to().items():
                got[p] = max(got.get(p, -1), o)
        return all(got.get(p, -1) >= o for p, o in ends.items())

    wait_until(done, timeout, f"the members to read every acknowledged record {what}")


def fully_in_sync(cl: Cluster, topics: tuple[str, ...] = (TOPIC, "__consumer_offsets")) -> bool:
    try:
        with cl.admin(5000) as admin:
            status: dict[str, Any] = admin.cluster_status()
    except SluiceError:
        return False
    parts = [p for p in status["partitions"] if p["topic"] in topics]
    return bool(parts) and all(len(p["isr"]) == 3 and not p["offline"] for p in parts)


def check_no_rebalance_no_duplicate(
    members: list[Member], before: dict[str, Any], after: dict[str, Any], wl: ProduceWorkload
) -> None:
    assert after["generation"] == before["generation"], (
        f"the group rebalanced: generation {before['generation']} -> {after['generation']}"
    )
    ids = sorted(m["member_id"] for m in before["members"])
    assert sorted(m["member_id"] for m in after["members"]) == ids, "the member ids changed"
    owners = {(t, p): m["member_id"] for m in before["members"] for t, p in m["assignment"]}
    assert owners == {(t, p): m["member_id"] for m in after["members"] for t, p in m["assignment"]}
    history = [(mm.name, round(h[0] - HISTORY_T0[0], 2), *h[1:4]) for mm in members for h in mm.history]
    gen = before["generation"]
    for m in members:  # (the events of the group forming were dropped by start_group)
        # an assignment of a generation before the stable one, answered late, belongs to
        # the group forming too; anything else is a change of the member's partitions
        late = [(kind, tps, g) for kind, tps, g in m.final_events if not (kind == "assign" and 0 <= g < gen)]
        assert not late, (
            f"member {m.name}'s partitions changed: {late}; history (member, s after the reset, "
            f"kind, partitions, generation): {history}"
        )
    # Delivered twice: counted from the stable generation on. While the group formed, a
    # partition moved from one member to another before its first owner committed, and
    # the next owner read from the committed offset (at least once, as designed).
    delivered: dict[tuple[int, int], bytes] = {}
    by: dict[tuple[int, int], list[str]] = {}
    for m in members:
        for i, (p, o, v) in enumerate(m.final_delivered):
            delivered[(p, o)] = v
            if i >= m.mark:
                by.setdefault((p, o), []).append(m.name)
    twice = sorted((k, who) for k, who in by.items() if len(who) > 1)
    assert not twice, f"{len(twice)} record(s) delivered twice (by whom), e.g. {twice[:10]}"
    acked = {(p, o): v for p, o, v in wl.acked}
    missing = sorted(k for k in acked if k not in delivered)
    wrong = [k for k, v in acked.items() if k in delivered and delivered[k] != v]
    assert not missing, f"{len(missing)} acknowledged record(s) never delivered, e.g. {missing[:10]}"
    assert not wrong, f"records delivered with another value than acknowledged: {wrong[:10]}"
    for p in range(PARTITIONS):  # nothing skipped: every offset below the last one read
        got = sorted(o for q, o in delivered if q == p)
        assert got == list(range(len(got))), f"partition {p}: offsets skipped"


def replica_logs(cl: Cluster, partition: int) -> list[bytes]:
    """Each node's log of TOPIC-``partition``: its segments' bytes, one after the other."""
    out = []
    for n in cl.nodes:
        d = n.data_dir / f"{TOPIC}-{partition}"
        out.append(b"".join((d / f).read_bytes() for f in sorted(os.listdir(d)) if f.endswith(".log")))
    return out


def replicas_identical(cl: Cluster) -> bool:
    """Every replica of every partition of TOPIC holds the same bytes (the followers got
    their batches from the leaders' recent batches or their logs alike)."""
    return all(len(set(replica_logs(cl, p))) == 1 for p in range(PARTITIONS))


def start_group(cl: Cluster, wl: ProduceWorkload) -> tuple[list[Member], dict[str, Any]]:
    members = [Member(cl.bootstrap, f"m{i}") for i in range(3)]
    before = stable_group(cl, members)
    assigned = {m["client_id"]: {(str(t), int(p)) for t, p in m["assignment"]} for m in before["members"]}
    wait_until(
        lambda: all(m.owned() == assigned.get(m.name) for m in members),
        30,
        "every member holding what the stable generation assigned it",
    )
    wait_delivered(members, acked_ends(wl), 30, "before the faults")
    # every member's events so far belong to the group forming: from here on, none is expected
    HISTORY_T0[0] = time.monotonic()
    for m in members:
        with m._lock:
            m.events = []
            m.mark = len(m.delivered)
    return members, before


@pytest.mark.timeout(240)
def test_group_membership_survives_a_sigkill_of_its_coordinator(cluster_factory: Callable[..., Cluster]) -> None:
    cl: Cluster = cluster_factory(OPTIONS)
    create_topic(cl)
    members: list[Member] = []
    with ProduceWorkload(cl.bootstrap, TOPIC, PARTITIONS, rate=300) as wl:
        try:
            wl.wait_acked(300, 60)
            members, before = start_group(cl, wl)
            old = coordinator_of(cl)
            node = cl.node(old)
            node.kill(signal.SIGKILL)
            node.wait_exit(10)
            new = coordinator_of(cl, not_node=old)
            moved = stable_group(cl, members)  # the new coordinator restored the group
            assert moved["generation"] == before["generation"], (before["generation"], moved["generation"])
            wl.wait_acked(300, 30)
            wait_delivered(members, acked_ends(wl), 30, f"after node {old} (the coordinator) was killed")
            node.start(timeout=60)
            wait_until(lambda: fully_in_sync(cl), 90, f"node {old} back in every ISR")
            wl.wait_acked(300, 30)
            wl.stop()
            wait_delivered(members, acked_ends(wl), 30, "at the end")
            after = stable_group(cl, members)
            for m in members:
                m.freeze()
        finally:
            for m in members:
                m.stop()
    wait_until(lambda: replicas_identical(cl), 30, f"the replicas of {TOPIC} byte-identical")
    print(
        f"{GROUP}: coordinator {old} -> {new} -> {coordinator_of(cl)}; generation {after['generation']}; "
        f"commits {[m.commits for m in members]}, failed {[m.commit_failures for m in members]} ({wl.summary()})"
    )
    check_no_rebalance_no_duplicate(members, before, after, wl)


@pytest.mark.timeout(300)
def test_group_membership_survives_a_rolling_restart(cluster_factory: Callable[..., Cluster]) -> None:
    cl: Cluster = cluster_factory(OPTIONS)
    create_topic(cl)
    members: list[Member] = []
    coordinators = []
    with ProduceWorkload(cl.bootstrap, TOPIC, PARTITIONS, rate=300) as wl:
        try:
            wl.wait_acked(300, 60)
            members, before = start_group(cl, wl)
            coordinators.append(coordinator_of(cl))
            first = cl.node(coordinators[0])
            # the coordinator's node last: the group sees the others go first, then its own move
            for node in [n for n in cl.nodes if n is not first] + [first]:
                wait_until(lambda: fully_in_sync(cl), 90, f"every replica in sync before restarting {node}")
                os.kill(node.pid, signal.SIGTERM)
                assert node.wait_exit(40) == 0, node.log_tail(40)
                coordinators.append(coordinator_of(cl))
                node.start(timeout=60)
                wl.wait_acked(100, 30)
            wait_until(lambda: fully_in_sync(cl), 90, "every replica in sync after the rolling restart")
            coordinators.append(coordinator_of(cl))
            wl.stop()
            wait_delivered(members, acked_ends(wl), 30, "at the end")
            after = stable_group(cl, members)
            for m in members:
                m.freeze()
        finally:
            for m in members:
                m.stop()
    print(
        f"{GROUP}: coordinators {coordinators}; generation {after['generation']}; "
        f"commits {[m.commits for m in members]}, failed {[m.commit_failures for m in members]} ({wl.summary()})"
    )
    assert len(set(coordinators)) > 1, f"the coordinator never moved: {coordinators}"
    check_no_rebalance_no_duplicate(members, before, after, wl)


OUTAGE_S = 12.0  # four ZooKeeper session timeouts


@pytest.mark.timeout(240)
def test_the_group_goes_on_while_zookeeper_is_down(cluster_factory: Callable[..., Cluster]) -> None:
    """ZooKeeper stopped for four session timeouts: the coordinator goes on coordinating
    (as the partition leaders go on leading), commits are acknowledged throughout, and
    nothing rebalances."""
    cl: Cluster = cluster_factory(OPTIONS)
    create_topic(cl)
    members: list[Member] = []
    with ProduceWorkload(cl.bootstrap, TOPIC, PARTITIONS, rate=300) as wl:
        try:
            wl.wait_acked(300, 60)
            members, before = start_group(cl, wl)
            cl.zookeeper.stop()
            try:
                began = time.monotonic()
                cut_off = began + 2 * OPTIONS["zookeeper_session_timeout_ms"] / 1000
                committed_then: list[int] | None = None
                # the outage is the fault itself; the workload must go on throughout
                while time.monotonic() - began < OUTAGE_S:
                    wl.wait_acked(150, 5.0)
                    if committed_then is None and time.monotonic() >= cut_off:
                        committed_then = [m.commits for m in members]
                wait_delivered(members, acked_ends(wl), 10, "while ZooKeeper is down")
                committed_during = [m.commits - c for m, c in zip(members, committed_then or [], strict=True)]
            finally:
                cl.zookeeper.start()
            wl.wait_acked(300, 60)
            wl.stop()
            wait_delivered(members, acked_ends(wl), 30, "at the end")
            after = stable_group(cl, members)
            for m in members:
                m.freeze()
        finally:
            for m in members:
                m.stop()
    print(
        f"{GROUP}: commits acknowledged per member more than two session timeouts into the outage "
        f"{committed_during}; generation {after['generation']}; failed "
        f"{[m.commit_failures for m in members]} ({wl.summary()})"
    )
    assert all(n > 0 for n in committed_during), f"commits stopped while ZooKeeper was down: {committed_during}"
    check_no_rebalance_no_duplicate(members, before, after, wl)
