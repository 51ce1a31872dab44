"""Consumer groups end to end: real nodes, every group member in its own process.

Each member is ``python -m tests.integration.group_consumer`` (see that module): it
subscribes, polls, and reports its assignments per generation, the records it
consumed and the commits the coordinator acknowledged as JSON lines on stdout; the
test drives it through stdin (pause / resume / commit / close). Every member runs in
its own session and is SIGKILLed as a group in teardown whatever happens; a test
starts at most ``MAX_MEMBERS`` of them and each bounds its own lifetime. The group
itself is observed through the raw front API (``describe_group``, ``offset_fetch``,
``offset_commit``), and ``sluice groups`` / ``sluice consume --group`` run as commands.

Waiting is polling with a deadline, never a bare sleep; where a test must show that
something does *not* happen (a rebalance, a lost membership) it watches for a bounded
window (``hold``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from ipc.client import Producer
from ipc.client.producer import FutureRecordMetadata
from ipc.client.transport import BootstrapChannel, Channel
from ipc.protocol import Reply
from tests.integration.conftest import REPO, SLUICE, EventProcess, Node, wait_until

TOPIC = "events"
PARTITIONS = 6
SESSION_MS = 2500
HEARTBEAT_MS = 250
STABLE_S = 30.0  # upper bound for a group to settle; a healthy one takes about a second
MAX_MEMBERS = 8  # member processes one test may start
MEMBER_LIFETIME_S = 150.0  # a member exits by itself after this long
NODE_OPTIONS = {"offsets_topic_partitions": 2}  # fewer workers on a small machine

TP = tuple[str, int]
Record = tuple[int, int, str]  # (partition, offset, value)


# ---- the front API, raw -----------------------------------------------------------------------
class Front:
    """Group requests to a node's front endpoint, as an admin tool would send them."""

    def __init__(self, node: Node) -> None:
        self.ctx = zmq.Context()
        self.channel = BootstrapChannel(self.ctx, [node.bootstrap])

    def call(self, api: str, **fields: Any) -> Reply:
        return self.channel.request(api, 10.0, **fields)

    def ok(self, api: str, **fields: Any) -> dict[str, Any]:
        reply = self.call(api, **fields)
        reply.raise_for_error()
        return reply.fields

    def describe(self, group: str) -> dict[str, Any]:
        return self.ok("describe_group", group=group)

    def committed(self, group: str, topic: str = TOPIC, partitions: int = PARTITIONS) -> dict[int, int]:
        """Committed offset of each partition (-1 for none); retries while offsets load."""

        def fetch() -> dict[int, int] | None:
            reply = self.call("offset_fetch", group=group, partitions=[[topic, p] for p in range(partitions)])
            if reply.error is not None and reply.error.code == "COORDINATOR_LOAD_IN_PROGRESS":
                return None
            reply.raise_for_error()
            return {o["partition"]: o["offset"] for o in reply.fields["offsets"]}

        got: dict[int, int] = wait_until(fetch, 20.0, f"offsets of group {group!r}")
        return got

    def committed_is(self, group: str, expected: dict[int, int]) -> Callable[[], bool]:
        """A predicate for ``wait_until``: the group's committed offsets are ``expected``."""
        return lambda: self.committed(group) == expected

    def close(self) -> None:
        self.channel.close()
        self.ctx.term()


class RawMember:
    """A group member speaking the raw protocol from the test process: it joins and syncs
    when told to and never heartbeats (its session timeout is long), so it can play a
    member that is slow to rejoin."""

    def __init__(self, node: Node, group: str, rebalance_timeout_ms: int, assignor: str = "range") -> None:
        self.group = group
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.assignor = assignor
        self.ctx = zmq.Context()
        self.channel = Channel(self.ctx, node.bootstrap)
        self.member_id = ""
        self.generation = -1
        self._join_id = 0

    def send_join(self) -> None:
        """Send join_group; the coordinator answers when the rebalance completes."""
        self._join_id = self.channel.send(
            "join_group",
            group=self.group,
            member_id=self.member_id,
            client_id="raw",
            session_timeout_ms=60_000,
            rebalance_timeout_ms=self.rebalance_timeout_ms,
            topics=[TOPIC],
            assignors=[self.assignor],
        )

    def joined(self) -> bool:
        reply = self.channel.recv_nowait()
        if reply is None or reply.id != self._join_id:
            return False
        reply.raise_for_error()
        self.member_id, self.generation = reply.fields["member_id"], reply.fields["generation"]
        return True

    def join(self, timeout: float = STABLE_S) -> None:
        self.send_join()
        wait_until(self.joined, timeout, f"raw member of {self.group!r} joined")
        sync = self.channel.request(
            "sync_group", 10.0, group=self.group, member_id=self.member_id, generation=self.generation
        )
        sync.raise_for_error()

    def close(self) -> None:
        self.channel.close()
        self.ctx.term()


@pytest.fixture
def front(node: Node) -> Iterator[Front]:
    f = Front(node)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    return node_factory(**NODE_OPTIONS).start()


# ---- member processes ---------------------------------------------------------------------------
class Member(EventProcess):
    """One ``group_consumer`` process: its events as they arrive, commands on stdin."""

    def __init__(self, name: str, node: Node, group: str, log_dir: Path, args: list[str]) -> None:
        self.group = group
        self.expect_exit = False
        cmd = [sys.executable, "-m", "tests.integration.group_consumer", "--bootstrap", node.bootstrap]
        cmd += ["--group", group, "--client-id", name, "--lifetime-s", str(MEMBER_LIFETIME_S), *args]
        super().__init__(name, cmd, log_dir / f"member-{name}.log", REPO, stdin=True)

    # ---- observing -------------------------------------------------------------------------
    def check_alive(self) -> None:
        for e in self.events("error"):
            raise AssertionError(f"member {self.name} failed: {e}\n{self.log_tail()}")
        if not self.expect_exit and self.proc.poll() is not None:
            raise AssertionError(f"member {self.name} exited with {self.proc.returncode}\n{self.log_tail()}")

    def state(self) -> dict[str, Any] | None:
        """The last ``state`` event: generation, member id and assignment after a poll."""
        states = self.events("state")
        return states[-1] if states else None

    def generation(self) -> int:
        st = self.state()
        return int(st["gen"]) if st else -1

    def member_id(self) -> str:
        st = self.state()
        return str(st["member"]) if st else ""

    def owned(self) -> set[TP]:
        st = self.state()
        return {(t, p) for t, p in st["owned"]} if st else set()

    def records(self, since: int = 0) -> list[Record]:
        return [(p, off, v) for e in self.events("records", since) for _, p, off, v in e["recs"]]

    def commits(self, since: int = 0) -> dict[int, int]:
        """The last acknowledged commit of each partition this member reported."""
        out: dict[int, int] = {}
        for e in self.events("commit", since):
            for _, p, off in e["offsets"]:
                out[p] = off
        return out

    def wait(self, predicate: Callable[[Member], Any], what: str, timeout: float = STABLE_S) -> Any:
        def check() -> Any:
            self.check_alive()
            return predicate(self)

        return wait_until(check, timeout, f"member {self.name}: {what}")

    # ---- driving ---------------------------------------------------------------------------
    def close(self, timeout: float = 20.0) -> int:
        """Close the consumer (commit, leave unless static) and wait for the process."""
        self.expect_exit = True
        self.send("close")
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        """SIGKILL the member's whole session and reap it."""
        self.expect_exit = True
        super().kill()


MemberFactory = Callable[..., Member]


@pytest.fixture
def same_host() -> bool:
    """Whether members and feeder use the same-host path (issue 18); the tests that
    parametrize ``same_host`` run over both."""
    return False


@pytest.fixture
def members(tmp_path: Path, same_host: bool) -> Iterator[MemberFactory]:
    """Start member processes: ``members(node, group, name, *args)``; all SIGKILLed at the end."""
    started: list[Member] = []

    def start(node: Node, group: str, name: str, *args: str, topic: str = TOPIC) -> Member:
        assert len(started) < MAX_MEMBERS, f"a test may start at most {MAX_MEMBERS} member processes"
        defaults = ["--topic", topic, "--session-timeout-ms", str(SESSION_MS)]
        defaults += ["--heartbeat-interval-ms", str(HEARTBEAT_MS), "--max-poll-interval-ms", "10000"]
        defaults += ["--same-host"] if same_host else []
        m = Member(name, node, group, tmp_path, [*defaults, *args])
        started.append(m)
        return m

    try:
        yield start
    finally:
        for m in started:
            m.expect_exit = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(m.proc.pid, signal.SIGKILL)
        for m in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(10)
            if m.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    m.proc.stdin.close()
            print(f"--- member {m.name} (exit {m.proc.returncode}) log tail ---\n{m.log_tail()}")


# ---- the command line -----------------------------------------------------------------------------
def _sluice_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLUICE_BOOTSTRAP", None)
    return env


def sluice(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run ``sluice ARGS`` in its own session; SIGKILL the session on timeout and after."""
    proc = subprocess.Popen(
        [*SLUICE, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=_sluice_env(),
        cwd=str(REPO),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"sluice {' '.join(args)} ran over {timeout} s\nstdout {out[-2000:]!r}\nstderr {err[-2000:]!r}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def ok_output(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr.decode(errors='replace')}"
    return result.stdout.decode()


def error_line(result: subprocess.CompletedProcess[bytes], prefix: str = "sluice groups: error: ") -> str:
    """The single line a refused command printed on stderr, after checking it failed cleanly."""
    err = result.stderr.decode(errors="replace")
    assert result.returncode != 0, f"expected a refusal, got exit 0: {result.stdout!r}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), f"expected one line {prefix!r}...:\n{err}"
    return lines[0]


# ---- producing ------------------------------------------------------------------------------------
class Feeder:
    """Produces records to every partition in turn, a few per call, from the test thread,
    so a wait loop can keep records flowing while it polls for something else."""

    def __init__(
        self, node: Node, topic: str = TOPIC, partitions: int = PARTITIONS, tag: str = "r", same_host: bool = False
    ) -> None:
        self.producer = Producer(node.bootstrap, linger_ms=2, same_host=same_host)
        self.topic = topic
        self.partitions = partitions
        self.tag = tag
        self.sent: list[tuple[str, FutureRecordMetadata]] = []

    def feed(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            for p in range(self.partitions):
                value = f"{self.tag}-{len(self.sent)}"
                self.sent.append((value, self.producer.send(self.topic, value.encode(), partition=p)))

    def feeding(self, predicate: Callable[[], Any]) -> Callable[[], Any]:
        """``predicate``, producing one round first: for ``wait_until``."""

        def fed() -> Any:
            self.feed()
            return predicate()

        return fed

    def produced(self) -> dict[tuple[int, int], str]:
        """Flush; (partition, offset) -> value of every record sent so far."""
        self.producer.flush(30)
        out = {}
        for value, fut in self.sent:
            md = fut.result(30)
            out[(md.partition, md.offset)] = value
        return out

    def close(self) -> None:
        self.producer.close()


@pytest.fixture
def feeder(node: Node, same_host: bool) -> Iterator[Feeder]:
    f = Feeder(node, same_host=same_host)
    try:
        yield f
    finally:
        f.close()


def create_topic(node: Node, topic: str = TOPIC, partitions: int = PARTITIONS) -> None:
    with node.admin() as admin:
        admin.create_topic(topic, partitions)


# ---- checks ----------------------------------------------------------------------------------------
def all_tps(topic: str = TOPIC, partitions: int = PARTITIONS) -> set[TP]:
    return {(topic, p) for p in range(partitions)}


def wait_stable(
    front: Front, group: str, live: list[Member], partitions: int = PARTITIONS, timeout: float = STABLE_S
) -> dict[str, Any]:
    """Until the group is stable with exactly ``live`` as members, every partition assigned,
    and each process owning what the coordinator assigned it in the current generation."""

    def stable() -> dict[str, Any] | None:
        for m in live:
            m.check_alive()
        d = front.describe(group)
        if d["state"] != "stable" or len(d["members"]) != len(live):
            return None
        assigned = {m["member_id"]: {(t, p) for t, p in m["assignment"]} for m in d["members"]}
        if sum(len(a) for a in assigned.values()) != partitions:
            return None
        for m in live:
            st = m.state()
            if st is None or st["gen"] != d["generation"] or assigned.get(st["member"]) != m.owned():
                return None
        return d

    got: dict[str, Any] = wait_until(stable, timeout, f"group {group!r} stable with {len(live)} member(s)")
    return got


def hold(predicate: Callable[[], Any], seconds: float, what: str) -> None:
    """``predicate`` stays true for ``seconds`` (checked continuously): an observation window
    for something that must *not* happen, e.g. a rebalance."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert predicate(), f"{what} no longer holds"
        time.sleep(0.02)  # polling interval


def owners_by_generation(live: list[Member]) -> dict[int, dict[str, set[TP]]]:
    """generation -> member id -> partitions it reported owning in that generation."""
    out: dict[int, dict[str, set[TP]]] = defaultdict(lambda: defaultdict(set))
    for m in live:
        for e in m.events():
            if e["ev"] in ("assign", "revoke", "state") and e["member"]:
                out[e["gen"]][e["member"]].update((t, p) for t, p in e["owned"])
    return out


def assert_one_owner_per_generation(live: list[Member]) -> None:
    for gen, owners in sorted(owners_by_generation(live).items()):
        seen: dict[TP, str] = {}
        for member, tps in owners.items():
            for tp in tps:
                assert tp not in seen, f"generation {gen}: {tp} owned by {seen[tp]} and {member}"
                seen[tp] = member


def consumed(live: list[Member]) -> dict[tuple[int, int], list[str]]:
    """(partition, offset) -> the value as each delivery reported it (one entry per delivery)."""
    out: dict[tuple[int, int], list[str]] = defaultdict(list)
    for m in live:
        for p, off, v in m.records():
            out[(p, off)].append(v)
    return out


def first_offsets(m: Member) -> dict[int, int]:
    """The first offset the member read of each partition."""
    first: dict[int, int] = {}
    for p, off, _ in m.records():
        first[p] = min(off, first.get(p, off))
    return first


def wait_consumed(live: list[Member], produced: dict[tuple[int, int], str], timeout: float = STABLE_S) -> None:
    def done() -> bool:
        for m in live:
            if not m.expect_exit:
                m.check_alive()
        got = consumed(live)
        return all(k in got for k in produced)

    wait_until(done, timeout, f"{len(produced)} records consumed")
    got = consumed(live)
    for k, v in produced.items():
        assert set(got[k]) == {v}, f"record {k}: produced {v!r}, consumed {got[k]}"
    invented = set(got) - set(produced)
    assert not invented, f"consumed records nobody produced: {sorted(invented)[:10]}"


# ---- 1. membership and assignment -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("assignor", "same_host"),
    [("range", False), ("cooperative-sticky", False), ("cooperative-sticky", True)],
    ids=["range", "cooperative-sticky", "cooperative-sticky-same_host"],
)
def test_three_members_share_the_partitions(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder, assignor: str, same_host: bool
) -> None:
    """Three members of one group on six partitions: in every generation no partition has
    two owners, in the settled one each has exactly one, and the group reads every record
    exactly once (graceful rebalances commit before they revoke)."""
    create_topic(node)
    feeder.feed(rounds=50)  # records already waiting when the first member joins
    live = [members(node, "g1", f"c{i}", "--assignor", assignor) for i in range(3)]
    wait_until(feeder.feeding(lambda: all(m.events("records") for m in live)), STABLE_S, "every member consuming")
    d = wait_stable(front, "g1", live)
    assert d["protocol"] == assignor
    assert sorted(len(m["assignment"]) for m in d["members"]) == [2, 2, 2]
    owned = [m.owned() for m in live]
    assert set().union(*owned) == all_tps() and sum(map(len, owned)) == PARTITIONS, owned
    feeder.feed(rounds=50)
    produced = feeder.produced()
    wait_consumed(live, produced)
    assert_one_owner_per_generation(live)
    twice = {k: v for k, v in consumed(live).items() if len(v) > 1}
    assert not twice, f"records delivered more than once across graceful rebalances: {sorted(twice)[:10]}"
    # the members agree with the coordinator on the generation they ended in
    assert {m.generation() for m in live} == {d["generation"]}


# ---- 2. a member dies -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("same_host", [False, True], ids=["tcp", "same_host"])
def test_killed_member_partitions_move_and_only_uncommitted_records_repeat(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder, same_host: bool
) -> None:
    """SIGKILL a member mid-stream: within the session timeout (plus a margin) its partitions
    move to the others, which resume from its last commit. Every record is consumed; the only
    records read twice are the dead member's partitions after its last commit."""
    create_topic(node)
    live = [members(node, "g2", f"c{i}") for i in range(3)]
    wait_stable(front, "g2", live)
    victim, survivors = live[0], live[1:]
    victim_tps = victim.owned()
    assert len(victim_tps) == 2
    before = {m.name: m.owned() for m in survivors}

    def victim_committed_progress() -> bool:
        commits = victim.commits()
        return all(commits.get(p, 0) >= 20 for _, p in victim_tps)

    wait_until(feeder.feeding(victim_committed_progress), STABLE_S, "the victim committing progress")
    feeder.feed(rounds=5)  # in flight while it dies
    victim.kill()
    killed_at = time.monotonic()
    last_commit = victim.commits()  # what the dead member reported as acknowledged
    marks = {m.name: m.mark() for m in survivors}

    def moved() -> bool:
        return set().union(*(m.owned() for m in survivors)) == all_tps()

    wait_until(feeder.feeding(moved), STABLE_S, "the victim's partitions owned by the survivors")
    took = time.monotonic() - killed_at
    assert took <= SESSION_MS / 1000 + 3.0, f"partitions moved {took:.1f} s after the kill"
    for m in survivors:
        assert before[m.name] <= m.owned(), f"{m.name} lost partitions it owned: {before[m.name]} -> {m.owned()}"
        assert not m.events("revoke", since=marks[m.name]), f"{m.name} revoked partitions though nobody joined"
    wait_until(feeder.feeding(lambda: sum(len(m.records(marks[m.name])) for m in survivors) > 200), STABLE_S, "more")
    produced = feeder.produced()
    wait_consumed(live, produced)
    d = wait_stable(front, "g2", survivors)
    assert len(d["members"]) == 2

    victim_read = {(p, off) for p, off, _ in victim.records()}
    got = consumed(live)
    twice = sorted(k for k, v in got.items() if len(v) > 1)
    for p, off in twice:
        assert (TOPIC, p) in victim_tps, f"{p}:{off} read twice but partition {p} never changed owner"
        assert (p, off) in victim_read, f"{p}:{off} read twice, but not by the dead member"
        assert off >= last_commit.get(p, 0), (
            f"{p}:{off} read again though the dead member had committed up to {last_commit.get(p)}"
        )
    for _, p in victim_tps:
        # the new owner starts at (or after, if an unreported commit landed) the last reported commit
        first = min(off for m in survivors for q, off, _ in m.records(marks[m.name]) if q == p)
        assert last_commit[p] <= first <= max(off for q, off in victim_read if q == p) + 1, (p, first, last_commit)


# ---- 3. a member joins ----------------------------------------------------------------------------
@pytest.mark.slow
def test_fourth_member_gets_partitions_and_cooperative_sticky_moves_only_those(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder
) -> None:
    """A fourth member joins three: every member ends with at least one of the six partitions;
    the three keep what they had except the partitions that move to the newcomer, and those
    are the only ones they revoke (cooperative: no stop-the-world revocation)."""
    create_topic(node)
    old = [members(node, "g3", f"c{i}") for i in range(3)]
    wait_stable(front, "g3", old)
    wait_until(feeder.feeding(lambda: all(m.commits() for m in old)), STABLE_S, "the three consuming")
    before = {m.name: m.owned() for m in old}
    marks = {m.name: m.mark() for m in old}
    rebalances = front.describe("g3")["rebalances"]
    new = members(node, "g3", "c3")
    d = wait_stable(front, "g3", [*old, new])
    assert d["rebalances"] - rebalances == 2, "a join costs two rebalances: the join, then the hand-over"
    after = {m.name: m.owned() for m in [*old, new]}
    assert all(after.values()), f"a member without partitions: {after}"
    assert sorted(len(v) for v in after.values()) == [1, 1, 2, 2]
    moved: set[TP] = set()
    for m in old:
        revoked = {(t, p) for e in m.events("revoke", since=marks[m.name]) for t, p in e["tps"]}
        gained = {(t, p) for e in m.events("assign", since=marks[m.name]) for t, p in e["tps"]}
        assert not gained, f"{m.name} was assigned {gained} though it only had to give partitions up"
        assert after[m.name] <= before[m.name], f"{m.name}: {before[m.name]} -> {after[m.name]}"
        assert revoked == before[m.name] - after[m.name], (
            f"{m.name} revoked {revoked}, lost {before[m.name] - after[m.name]}"
        )
        moved |= revoked
    assert moved == after["c3"], f"revoked {moved}, the newcomer got {after['c3']}"
    assert len(moved) == 1, f"{len(moved)} partitions moved; balance needs only one: {before} -> {after}"
    assert d["protocol"] == "cooperative-sticky"
    # consumption goes on: records produced now are read, and nothing before the commit repeats
    mark_new = new.mark()
    feeder.feed(rounds=20)
    produced = feeder.produced()
    wait_consumed([*old, new], produced)
    assert new.records(mark_new), "the newcomer read nothing"
    twice = sorted(k for k, v in consumed([*old, new]).items() if len(v) > 1)
    assert not twice, f"records read twice across a cooperative hand-over: {twice[:10]}"


# ---- 4. independent groups ------------------------------------------------------------------------
@pytest.mark.slow
def test_two_groups_each_read_every_record(node: Node, front: Front, members: MemberFactory, feeder: Feeder) -> None:
    create_topic(node)
    feeder.feed(rounds=30)
    a = [members(node, "ga", "a0"), members(node, "ga", "a1")]
    b = [members(node, "gb", "b0", "--assignor", "roundrobin")]
    wait_stable(front, "ga", a)
    wait_stable(front, "gb", b)
    feeder.feed(rounds=30)
    produced = feeder.produced()
    wait_consumed(a, produced)
    wait_consumed(b, produced)
    groups = {g["group"] for g in front.ok("list_groups")["groups"]}
    assert {"ga", "gb"} <= groups
    ends = dict.fromkeys(range(PARTITIONS), 60)
    for group in ("ga", "gb"):
        wait_until(front.committed_is(group, ends), STABLE_S, f"group {group} committing every partition's end")


# ---- the client's heartbeat thread and a parked join ---------------------------------------------
@pytest.mark.slow
def test_heartbeats_during_a_parked_join_cause_no_extra_rebalance(
    node: Node, front: Front, members: MemberFactory
) -> None:
    """A member whose join is parked (another member is slow to rejoin) must not start another
    rebalance once the group settles: its heartbeat thread must not turn the heartbeats it
    sends meanwhile (answered REBALANCE_IN_PROGRESS) into one more rejoin. With several
    members that used to snowball into rebalance storms lasting tens of seconds."""
    create_topic(node)
    a = members(node, "gh", "a", "--assignor", "range", "--rebalance-timeout-ms", "1500")
    wait_stable(front, "gh", [a])
    slow = RawMember(node, "gh", rebalance_timeout_ms=1500)
    newcomer = RawMember(node, "gh", rebalance_timeout_ms=1500)
    try:
        slow.join()  # a second member: the group settles with both
        a.wait(lambda m: m.generation() == slow.generation, "member a in the slow member's generation")
        newcomer.send_join()  # a rebalance; a rejoins, slow does not, so a's join is parked ~1.5 s
        wait_until(newcomer.joined, STABLE_S, "the rebalance to complete without the slow member")
        assert slow.member_id not in {m["member_id"] for m in front.describe("gh")["members"]}
        gen = newcomer.generation
        a.wait(lambda m: any(e["gen"] == gen for e in m.events("assign")), f"member a assigned in generation {gen}")

        def settled() -> bool:
            d = front.describe("gh")
            assert (d["state"], d["generation"]) == ("stable", gen), f"rebalanced again: {d}"
            return True

        hold(settled, 8 * HEARTBEAT_MS / 1000, f"group gh stable at generation {gen}")
    finally:
        slow.close()
        newcomer.close()


# ---- 5. static membership -------------------------------------------------------------------------
@pytest.mark.slow
def test_static_member_restart_within_session_timeout_does_not_rebalance(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder
) -> None:
    """A static member (group_instance_id) that comes back within its session timeout takes
    its old place: same generation, same assignment, no rebalance, the other member sees
    nothing, and its old member id is fenced. Once after SIGKILL, once after close()."""
    create_topic(node)
    static_session = ["--instance-id", "static-1", "--session-timeout-ms", "8000"]
    s = members(node, "gs", "s0", *static_session)
    other = members(node, "gs", "d0")
    every = [s, other]
    d = wait_stable(front, "gs", [s, other])
    gen, rebalances, assignment = d["generation"], d["rebalances"], s.owned()
    other_mark = other.mark()
    wait_until(feeder.feeding(lambda: s.commits()), STABLE_S, "the static member committing")

    for how, name in (("SIGKILL", "s1"), ("close", "s2")):
        old_member = s.member_id()
        last_commit = s.commits()
        if how == "SIGKILL":
            s.kill()
        else:
            assert s.close() == 0
        gone = time.monotonic()
        s = members(node, "gs", name, *static_session)
        every.append(s)
        s.wait(lambda m: m.state() is not None and m.owned(), "the restarted static member assigned")
        assert time.monotonic() - gone < 8.0, "the restart took longer than the session timeout"
        st = s.state()
        assert st is not None and st["gen"] == gen, f"after {how}: generation {gen} -> {st}"
        assert s.owned() == assignment, f"after {how}: assignment {assignment} -> {s.owned()}"
        d = front.describe("gs")
        assert (d["state"], d["generation"], d["rebalances"]) == ("stable", gen, rebalances), d
        by_id = {m["member_id"]: m for m in d["members"]}
        assert set(by_id) == {st["member"], other.member_id()}, d
        assert by_id[st["member"]]["instance_id"] == "static-1"
        assert st["member"] != old_member
        fenced = front.call("heartbeat", group="gs", member_id=old_member, generation=gen)
        assert fenced.error is not None and fenced.error.code in ("UNKNOWN_MEMBER_ID", "FENCED_INSTANCE_ID"), fenced
        # it resumes from its predecessor's commits
        mark = s.mark()
        feeder.feed(rounds=5)
        wanted = {p for _, p in assignment}

        def reading(m: Member, mark: int = mark, wanted: set[int] = wanted) -> bool:
            return {p for p, _, _ in m.records(mark)} == wanted

        s.wait(reading, "reading its partitions")
        for p, off in last_commit.items():
            if (TOPIC, p) in assignment:
                first = min(o for q, o, _ in s.records(mark) if q == p)
                assert first >= off, f"after {how}: partition {p} restarted at {first}, committed {off}"
    assert not other.events("revoke", other_mark) and not other.events("assign", other_mark)
    wait_consumed(every, feeder.produced())  # nothing lost across the restarts


# ---- 6. generations, durability, max poll interval ----------------------------------------------
@pytest.mark.slow
def test_commit_from_a_stale_generation_is_rejected(node: Node, front: Front, members: MemberFactory) -> None:
    """The coordinator refuses commits that do not come from the current generation's
    members, with a typed error, and keeps the offsets it had."""
    create_topic(node)
    a = members(node, "gc", "a", "--commit", "none")
    b = members(node, "gc", "b", "--commit", "none")
    d = wait_stable(front, "gc", [a, b])
    member, gen = d["members"][0]["member_id"], d["generation"]
    body = [{"topic": TOPIC, "partition": 0, "offset": 5}]

    def commit(**fields: Any) -> str | None:
        r = front.call("offset_commit", group="gc", offsets=body, **fields)
        return r.error.code if r.error is not None else None

    assert commit(member_id=member, generation=gen - 1) == "ILLEGAL_GENERATION"
    assert commit(member_id=member, generation=gen + 1) == "ILLEGAL_GENERATION"
    assert commit(member_id="nobody", generation=gen) == "UNKNOWN_MEMBER_ID"
    assert commit() == "NON_EMPTY_GROUP"  # an admin commit while the group has members
    assert front.committed("gc")[0] == -1, "a refused commit changed the offset"
    assert commit(member_id=member, generation=gen) is None
    assert front.committed("gc")[0] == 5


@pytest.mark.slow
def test_member_dropped_by_a_rebalance_gets_commit_failed(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder
) -> None:
    """A member that does not rejoin within the rebalance timeout is dropped; its next
    Consumer.commit raises CommitFailedError (not a generic error), and its next poll
    rejoins."""
    create_topic(node)
    fast_rebalance = ["--rebalance-timeout-ms", "1000"]
    a = members(node, "gf", "a", "--commit", "none", *fast_rebalance)
    wait_stable(front, "gf", [a])
    wait_until(feeder.feeding(lambda: a.records()), STABLE_S, "a consuming")
    a.send("pause")  # keeps heartbeating (max poll interval 10 s) but will not rejoin
    a.wait(lambda m: m.events("paused"), "paused")
    b = members(node, "gf", "b", "--commit", "none", *fast_rebalance)
    wait_until(lambda: b.owned() == all_tps(), STABLE_S, "b owning everything once a is dropped")
    d = front.describe("gf")
    assert [m["member_id"] for m in d["members"]] == [b.member_id()], d
    mark = a.mark()
    a.send("commit")
    failed = a.wait(lambda m: m.events("commit_failed", mark) or m.events("commit", mark), "the commit answered")
    assert failed[0]["ev"] == "commit_failed", f"a dropped member's commit was accepted: {failed}"
    assert failed[0]["type"] == "CommitFailedError", failed
    a.send("resume")
    wait_stable(front, "gf", [a, b])


def _consume_and_commit_everything(node: Node, front: Front, members: MemberFactory, group: str) -> dict[int, int]:
    create_topic(node)
    feeder = Feeder(node, tag="before")
    try:
        feeder.feed(rounds=20)
        produced = feeder.produced()
    finally:
        feeder.close()
    a = members(node, group, "a", "--commit", "sync")
    wait_consumed([a], produced)
    a.wait(lambda m: m.commits() == {p: 20 for p in range(PARTITIONS)}, "a committing every record")
    assert a.close() == 0
    assert front.describe(group)["state"] == "empty"
    return front.committed(group)


def _check_offsets_after_restart(node: Node, members: MemberFactory, group: str, before: dict[int, int]) -> None:
    shown = members(node, group, "show", "--print-committed", str(PARTITIONS))
    shown.expect_exit = True
    ev = shown.wait(lambda m: m.events("committed"), "committed() after the restart")[0]
    assert {p: off for _, p, off in ev["offsets"]} == before == {p: 20 for p in range(PARTITIONS)}
    feeder = Feeder(node, tag="after")
    try:
        feeder.feed(rounds=3)
        produced = feeder.produced()
    finally:
        feeder.close()
    b = members(node, group, "b")
    wait_consumed([b], produced)
    assert first_offsets(b) == dict.fromkeys(range(PARTITIONS), 20), "committed records read again after the restart"


@pytest.mark.slow
def test_committed_offsets_survive_a_node_crash(node: Node, front: Front, members: MemberFactory) -> None:
    before = _consume_and_commit_everything(node, front, members, "gd")
    node.kill_all()  # SIGKILL: commits were on disk (fsync=always) when acknowledged
    node.start()
    _check_offsets_after_restart(node, members, "gd", before)


@pytest.mark.slow
def test_committed_offsets_survive_a_graceful_restart(node: Node, front: Front, members: MemberFactory) -> None:
    before = _consume_and_commit_everything(node, front, members, "gr")
    assert node.stop(timeout=15) == 0, node.log_tail()
    node.start()
    _check_offsets_after_restart(node, members, "gr", before)


@pytest.mark.slow
@pytest.mark.parametrize("same_host", [False, True], ids=["tcp", "same_host"])
def test_members_rejoin_after_a_node_crash_and_resume_from_their_commits(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder, same_host: bool
) -> None:
    """Membership is persisted (the group metadata record in __consumer_offsets): after the
    node restarts, it restores the group, and the live members go on with their member
    ids, generation and assignment (no rebalance), reading nothing committed again."""
    create_topic(node)
    live = [members(node, "gn", f"c{i}") for i in range(2)]
    generation = wait_stable(front, "gn", live)["generation"]
    feeder.feed(rounds=20)
    before = feeder.produced()
    wait_consumed(live, before)
    wait_until(front.committed_is("gn", dict.fromkeys(range(PARTITIONS), 20)), STABLE_S, "everything committed")
    old_ids = {m.member_id() for m in live}
    marks = {m.name: m.mark() for m in live}
    node.kill_all()
    node.start()
    after_feeder = Feeder(node, tag="after", same_host=same_host)
    try:
        after_feeder.feed(rounds=10)
        after = after_feeder.produced()
    finally:
        after_feeder.close()
    d = wait_stable(front, "gn", live, timeout=10.0)  # restored once __consumer_offsets is loaded
    assert old_ids == {m["member_id"] for m in d["members"]}, "member ids lost in the restart"
    assert d["generation"] == generation, "the restart cost a rebalance"
    wait_consumed(live, {**before, **after})
    again = sorted((p, off) for m in live for p, off, _ in m.records(marks[m.name]) if off < 20)
    assert not again, f"committed records read again after the restart: {again[:10]}"


def _groups_listed(front: Front) -> set[str]:
    return {g["group"] for g in front.ok("list_groups")["groups"]}


@pytest.mark.slow
def test_offsets_of_an_empty_group_expire(node_factory: Callable[..., Node], members: MemberFactory) -> None:
    node = node_factory(**NODE_OPTIONS, offsets_retention_ms=2000).start()
    with contextlib.closing(Front(node)) as front:
        _consume_and_commit_everything(node, front, members, "gx")
        emptied = time.monotonic()
        wait_until(lambda: "gx" not in _groups_listed(front), 2.0 + 5.0, "the empty group expiring")
        assert time.monotonic() - emptied > 1.0, "the group expired before offsets_retention_ms"
        assert front.committed("gx") == dict.fromkeys(range(PARTITIONS), -1)


@pytest.mark.slow
def test_offsets_of_a_group_empty_at_a_restart_expire_too(
    node_factory: Callable[..., Node], members: MemberFactory
) -> None:
    node = node_factory(**NODE_OPTIONS, offsets_retention_ms=3000).start()
    with contextlib.closing(Front(node)) as front:
        _consume_and_commit_everything(node, front, members, "gy")
        node.kill_all()
        node.start()
        wait_until(lambda: "gy" in _groups_listed(front), 10.0, "the group's offsets loaded after the restart")
        wait_until(lambda: "gy" not in _groups_listed(front), 3.0 + 5.0, "the empty group expiring after the restart")


@pytest.mark.slow
def test_member_that_stops_polling_leaves_and_its_partitions_move(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder
) -> None:
    """max_poll_interval_ms: a member whose application stops calling poll() leaves the group
    (its heartbeat thread does it) and the others take its partitions."""
    create_topic(node)
    a = members(node, "gp", "a", "--max-poll-interval-ms", "1500")
    b = members(node, "gp", "b")
    wait_stable(front, "gp", [a, b])
    b_before = b.owned()
    a.send("pause")
    paused_at = a.wait(lambda m: m.events("paused"), "paused")[0]["seen"]
    wait_until(lambda: b.owned() == all_tps(), STABLE_S, "b owning every partition")
    took = time.monotonic() - paused_at
    assert took < 1.5 + 3.0, f"partitions moved {took:.1f} s after poll() stopped"
    d = front.describe("gp")
    assert [m["member_id"] for m in d["members"]] == [b.member_id()], d
    assert b_before < b.owned()
    feeder.feed(rounds=10)
    produced = feeder.produced()
    wait_consumed([a, b], produced)


# ---- a member that stopped polling ----------------------------------------------------------------
@pytest.mark.slow
def test_commit_after_leaving_for_max_poll_interval_raises_commit_failed(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder
) -> None:
    create_topic(node)
    a = members(node, "gm", "a", "--commit", "none", "--max-poll-interval-ms", "1500")
    b = members(node, "gm", "b", "--commit", "none")
    wait_stable(front, "gm", [a, b])
    wait_until(feeder.feeding(lambda: a.records()), STABLE_S, "a consuming")
    a.send("pause")
    wait_until(lambda: b.owned() == all_tps(), STABLE_S, "b owning everything after a left")
    mark = a.mark()
    a.send("commit")
    answer = a.wait(lambda m: m.events("commit_failed", mark) or m.events("commit", mark), "the commit answered")
    assert answer[0]["ev"] == "commit_failed", f"an evicted member's commit was accepted: {answer}"
    assert answer[0]["type"] == "CommitFailedError", answer


@pytest.mark.slow
def test_member_back_from_max_poll_eviction_does_not_rewind_the_group(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder
) -> None:
    """A member that overran max_poll_interval_ms lost its partitions; when it polls again it
    must start over (like Kafka's onPartitionsLost): nothing the group committed meanwhile
    is read again and the committed offsets never go back."""
    create_topic(node)
    a = members(node, "gb", "a", "--max-poll-interval-ms", "1500")
    b = members(node, "gb", "b")
    wait_stable(front, "gb", [a, b])
    wait_until(feeder.feeding(lambda: len(a.records()) >= 30), STABLE_S, "a consuming")
    a.send("pause")
    wait_until(lambda: b.owned() == all_tps(), STABLE_S, "b owning everything after a left")
    feeder.feed(rounds=30)  # b moves on past a's positions, and commits
    produced = feeder.produced()
    wait_consumed([a, b], produced)
    ends: dict[int, int] = defaultdict(int)
    for p, off in produced:
        ends[p] = max(ends[p], off + 1)
    wait_until(front.committed_is("gb", ends), STABLE_S, "b committing everything")
    mark_a, mark_b = a.mark(), b.mark()
    a.send("resume")
    wait_stable(front, "gb", [a, b])
    feeder.feed(rounds=5)
    produced = feeder.produced()
    wait_consumed([a, b], produced)
    again = sorted((p, off) for m, mark in ((a, mark_a), (b, mark_b)) for p, off, _ in m.records(mark) if off < ends[p])
    assert not again, f"records the group had committed were read again: {again[:10]} (committed {ends})"
    committed = front.committed("gb")
    assert all(committed[p] >= ends[p] for p in ends), f"committed offsets went back: {ends} -> {committed}"


@pytest.mark.slow
def test_busy_member_keeps_its_membership_during_a_rebalance(node: Node, front: Front, members: MemberFactory) -> None:
    """A member that does not poll for longer than its session timeout (but well within
    max_poll_interval_ms) while a rebalance waits for it is still a member when it polls
    again: heartbeats are independent of polling."""
    create_topic(node)
    a = members(node, "gk", "a")  # session 2.5 s, max poll interval 10 s
    b = members(node, "gk", "b")
    wait_stable(front, "gk", [a, b])
    a_id = a.member_id()
    a.send("pause")
    a.wait(lambda m: m.events("paused"), "paused")
    c = members(node, "gk", "c")  # a rebalance that waits for a
    wait_until(lambda: front.describe("gk")["state"] == "preparing_rebalance", STABLE_S, "the rebalance to start")

    def a_is_member() -> bool:
        return a_id in {m["member_id"] for m in front.describe("gk")["members"]}

    hold(a_is_member, 2 * SESSION_MS / 1000, "a, busy but heartbeating, is a member")
    a.send("resume")
    wait_stable(front, "gk", [a, b, c])
    assert a.member_id() == a_id, "a was dropped and joined again as a new member"


# ---- 7. sluice groups, sluice consume --group -------------------------------------------------------
def printed_records(lines: list[str]) -> dict[tuple[int, int], str]:
    """``sluice consume --print-offset`` lines (``P:OFFSET<tab>VALUE``) by position."""
    out = {}
    for ln in lines:
        where, value = ln.split("\t", 1)
        p, off = where.split(":")
        out[(int(p), int(off))] = value
    return out


@pytest.mark.slow
def test_groups_cli_describes_and_resets_offsets_only_when_empty(
    node: Node, front: Front, members: MemberFactory
) -> None:
    create_topic(node)
    bootstrap = ["--bootstrap", node.bootstrap]
    old_feeder = Feeder(node, tag="old")
    try:
        old_feeder.feed(rounds=10)
        old_feeder.produced()
        boundary_ms = int(time.time() * 1000) + 1
        wait_until(lambda: time.time() * 1000 > boundary_ms, 1.0, "the clock to pass the boundary")
        old_feeder.tag = "new"
        old_feeder.feed(rounds=5)
        everything = old_feeder.produced()
    finally:
        old_feeder.close()
    ends = {p: 15 for p in range(PARTITIONS)}
    a, b = members(node, "gcli", "a"), members(node, "gcli", "b")
    wait_consumed([a, b], everything)
    wait_until(front.committed_is("gcli", ends), STABLE_S, "the group committing everything")
    d = wait_stable(front, "gcli", [a, b])

    # list and describe, text and JSON
    assert "gcli\tstable" in ok_output(sluice("groups", "list", *bootstrap)).splitlines()
    text = ok_output(sluice("groups", "describe", "gcli", *bootstrap))
    head = f"group gcli  state stable  generation {d['generation']}  assignor cooperative-sticky  members 2"
    assert text.splitlines()[0] == head, text
    for m in (a, b):
        st = m.state()
        assert st is not None
        tps = ", ".join(f"{t}-{p}" for t, p in sorted(m.owned()))
        assert f"  member {st['member']}: {tps}" in text.splitlines(), text
    owner = {p: m.member_id() for m in (a, b) for _, p in m.owned()}
    rows = [ln.split() for ln in text.splitlines() if ln.split()[:1] == [TOPIC]]
    assert rows == [[TOPIC, str(p), "15", "15", "0", owner[p]] for p in range(PARTITIONS)], text
    js = orjson.loads(ok_output(sluice("groups", "describe", "gcli", "--json", *bootstrap)))
    assert (js["state"], js["generation"], js["protocol"]) == ("stable", d["generation"], "cooperative-sticky")
    assert {(p["partition"], p["committed_offset"], p["log_end_offset"], p["lag"]) for p in js["partitions"]} == {
        (p, 15, 15, 0) for p in range(PARTITIONS)
    }

    # refused while the group has members: one line, non-zero exit, offsets untouched
    line = error_line(sluice("groups", "reset-offsets", "gcli", "--topic", TOPIC, "--to-earliest", *bootstrap))
    assert "2 active member(s)" in line, line
    line = error_line(sluice("groups", "delete", "gcli", *bootstrap))
    assert "NON_EMPTY_GROUP" in line and "member" in line, line
    assert front.committed("gcli") == ends

    assert a.close() == 0 and b.close() == 0
    assert front.describe("gcli")["state"] == "empty"
    assert "gcli\tempty" in ok_output(sluice("groups", "list", *bootstrap)).splitlines()
    lag_text = ok_output(sluice("groups", "describe", "gcli", *bootstrap))
    assert "state empty" in lag_text.splitlines()[0], lag_text

    # --to-earliest: a new member of the group reads everything again
    out = ok_output(
        sluice("groups", "reset-offsets", "gcli", "--topic", TOPIC, "--to-earliest", "--execute", *bootstrap)
    )
    assert out.splitlines() == [f"{TOPIC}\t{p}\t0" for p in range(PARTITIONS)], out
    assert front.committed("gcli") == dict.fromkeys(range(PARTITIONS), 0)
    c = members(node, "gcli", "c")
    wait_consumed([c], everything)
    assert first_offsets(c) == dict.fromkeys(range(PARTITIONS), 0)
    assert c.close() == 0

    # --to-datetime: the first record at or after it (the "new" ones start at offset 10)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(boundary_ms // 1000)) + f".{boundary_ms % 1000:03d}Z"
    out = ok_output(
        sluice("groups", "reset-offsets", "gcli", "--topic", TOPIC, "--to-datetime", iso, "--execute", *bootstrap)
    )
    assert front.committed("gcli") == dict.fromkeys(range(PARTITIONS), 10), out
    e = members(node, "gcli", "e")
    wait_consumed([e], {k: v for k, v in everything.items() if k[1] >= 10})
    assert first_offsets(e) == dict.fromkeys(range(PARTITIONS), 10)
    assert all(v.startswith("new-") for _, _, v in e.records())
    assert e.close() == 0

    # --to-offset on one partition, --to-latest
    reset = ["groups", "reset-offsets", "gcli", "--topic", TOPIC, "--execute", *bootstrap]
    ok_output(sluice(*reset, "--partition", "2", "--to-offset", "3"))
    assert front.committed("gcli") == {**ends, 2: 3}
    ok_output(sluice(*reset, "--to-latest"))
    assert front.committed("gcli") == ends
    assert "--to-datetime 'yesterday'" in error_line(sluice(*reset, "--to-datetime", "yesterday"))

    # delete works once empty
    assert ok_output(sluice("groups", "delete", "gcli", *bootstrap)).strip() == "deleted group gcli"
    assert "gcli" not in ok_output(sluice("groups", "list", *bootstrap))
    assert "GROUP_ID_NOT_FOUND" in error_line(sluice("groups", "describe", "gcli", *bootstrap))
    assert "GROUP_ID_NOT_FOUND" in error_line(sluice("groups", "delete", "gcli", *bootstrap))


@pytest.mark.slow
def test_consume_cli_with_group_joins_and_commits(node: Node, front: Front, feeder: Feeder) -> None:
    create_topic(node)
    feeder.feed(rounds=10)
    produced = feeder.produced()
    args = ["consume", TOPIC, "--group", "gcons", "--from-beginning", "--print-offset", "--bootstrap", node.bootstrap]
    proc = subprocess.Popen(
        [*SLUICE, *args, "--timeout-ms", "3000"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=_sluice_env(),
        cwd=str(REPO),
    )
    try:

        def one_member() -> bool:
            d = front.describe("gcons")
            return d["state"] == "stable" and len(d["members"]) == 1 and len(d["members"][0]["assignment"]) == 6

        wait_until(one_member, STABLE_S, "sluice consume --group in the group with every partition")
        out, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    printed = printed_records(lines)
    assert len(printed) == len(lines), "a record printed twice"
    assert printed == produced
    wait_until(lambda: front.describe("gcons")["state"] == "empty", STABLE_S, "the consumer leaving the group")
    assert front.committed("gcons") == dict.fromkeys(range(PARTITIONS), 10)

    # --max-messages commits exactly what it printed; the next run goes on from there
    feeder.feed(rounds=5)
    produced = feeder.produced()
    first = sluice(*args, "--max-messages", "7")
    lines = ok_output(first).splitlines()
    assert len(lines) == 7, lines
    got = set(printed_records(lines))
    committed = front.committed("gcons")
    for p in range(PARTITIONS):
        mine = [off for q, off in got if q == p]
        assert committed[p] == (max(mine) + 1 if mine else 10), (p, committed, sorted(got))
    rest = sluice(*args, "--timeout-ms", "1500")
    again = set(printed_records(ok_output(rest).splitlines()))
    assert not (got & again), f"printed twice: {sorted(got & again)}"
    assert got | again == {k for k in produced if k[1] >= 10}


@pytest.mark.slow
def test_second_process_with_the_same_instance_id_fences_the_first(
    node: Node, front: Front, members: MemberFactory, feeder: Feeder
) -> None:
    create_topic(node)
    first = members(node, "gz", "first", "--instance-id", "dup")
    wait_stable(front, "gz", [first])
    first.expect_exit = True  # a fenced member may stop with an error
    second = members(node, "gz", "second", "--instance-id", "dup")
    second.wait(lambda m: m.owned() == all_tps(), "the second process owning the instance's partitions")
    wait_until(lambda: first.proc.poll() is not None or not first.owned(), 5.0, "the first process fenced")
    taken = second.member_id()

    def one_owner() -> bool:
        d = front.describe("gz")
        assert [m["member_id"] for m in d["members"]] == [taken], f"the instance changed hands: {d['members']}"
        assert first.proc.poll() is not None or not first.owned(), "the fenced process owns partitions again"
        return True

    hold(feeder.feeding(one_owner), 8 * HEARTBEAT_MS / 1000, "one process for the instance id")
