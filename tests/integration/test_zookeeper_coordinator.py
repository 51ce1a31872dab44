"""The ZooKeeper coordinator against a real ZooKeeper (Debian's package, tests/support/zookeeper.py).

Several coordinators (different node ids) live in this process, as several nodes would
on several hosts. Each test works under its own chroot of one module-wide server; the
test that stops and restarts ZooKeeper has a server of its own. Every wait is on the
coordinators' ``wake()`` (a threading.Event) with a deadline, never a bare sleep.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from appliance.coordinator import NO_LEADER, PartitionState, StaleStateError, TopicInfo
from appliance.coordinator.zookeeper import DEFAULT_CHROOT, ZooKeeperCoordinator, parse_zookeeper_url
from ipc.errors import (
    CoordinatorNotAvailableError,
    InvalidConfigError,
    NotControllerError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from tests.support.zookeeper import ZooKeeperServer, free_port

SESSION_S = 2.0  # short sessions: the server allows 1 s and more (tickTime 500 ms)
WAIT_S = 10.0


class Waker:
    """The ``wake`` callback of the coordinators under test: counts calls and lets a test
    wait for a condition, re-checked after every wake-up (no lost wake-up: the event is
    cleared before the check)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
        self.event.set()

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.event.clear()
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.event.wait(remaining)


@pytest.fixture(scope="module")
def zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    with ZooKeeperServer(tmpdir=tmp_path_factory.mktemp("zk")) as server:
        yield server


@pytest.fixture
def url(zk: ZooKeeperServer) -> str:
    """A fresh chroot per test: tests do not see each other's state."""
    return zk.url(f"/test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def waker() -> Waker:
    return Waker()


@pytest.fixture
def coordinators(waker: Waker) -> Iterator[Callable[..., ZooKeeperCoordinator]]:
    """make(node_id, url, register=True): a started (and registered) coordinator,
    closed at teardown."""
    made: list[ZooKeeperCoordinator] = []

    def make(node_id: int, url: str, register: bool = True, session_s: float = SESSION_S) -> ZooKeeperCoordinator:
        c = ZooKeeperCoordinator(node_id, url, session_s)
        made.append(c)
        c.start(waker)
        if register:
            c.register(f"tcp://10.0.0.{node_id}:6100")
        return c

    yield make
    for c in made:
        c.close()


def _states(n: int, leader: int = 1) -> list[PartitionState]:
    return [PartitionState(leader, 0, [leader], [leader]) for _ in range(n)]


def _topic(name: str, n: int = 3, config: dict[str, Any] | None = None) -> TopicInfo:
    return TopicInfo(name, _states(n), 1, dict(config or {}), 1_700_000_000_000)


def _partitions(c: ZooKeeperCoordinator, topic: str) -> list[PartitionState]:
    info = c.topics().get(topic)
    return [] if info is None else info.partitions


def _expire_session(c: ZooKeeperCoordinator, zk: ZooKeeperServer) -> None:
    """Expire ``c``'s session the way a long pause would: another client takes over the
    session (same id and password) and closes it; ``c`` then sees LOST on reconnect."""
    client_id = c._client.client_id
    assert client_id is not None
    other = KazooClient(zk.address, client_id=client_id, timeout=SESSION_S)
    other.start(WAIT_S)
    other.stop()
    other.close()


# ---- configuration ------------------------------------------------------------------------
def test_parse_zookeeper_url() -> None:
    assert parse_zookeeper_url("zookeeper://zk1:2181,zk2:2182/sluice") == ("zk1:2181,zk2:2182", "/sluice")
    assert parse_zookeeper_url("zookeeper://10.77.0.1:2181") == ("10.77.0.1:2181", DEFAULT_CHROOT)
    assert parse_zookeeper_url("zookeeper://zk/") == ("zk:2181", DEFAULT_CHROOT)
    assert parse_zookeeper_url("zookeeper://[::1]:2181/a/b/") == ("[::1]:2181", "/a/b")
    bad = {
        "localhost:2181/sluice": "starts with",
        "zk://h:2181": "starts with",
        "zookeeper://": "no host",
        "zookeeper:///sluice": "no host",
        "zookeeper://h:2181,,h2:2181": "is not HOST:PORT",
        "zookeeper://h:abc": "is not HOST:PORT",
        "zookeeper://h:": "is not HOST:PORT",
        "zookeeper://h:70000": "out of range",
        "zookeeper://::1:2181": "is not HOST:PORT",
        "zookeeper://h:2181/a//b": "empty component",
        "zookeeper://h:2181/a/../b": "invalid",
        "zookeeper://h:2181/zookeeper": "ZooKeeper's own",
        "zookeeper://user@h:2181": "credentials",
        "zookeeper://h:2181/s?x=1": "query",
        "zookeeper://h:2181/s p": "whitespace",
    }
    for url, why in bad.items():
        with pytest.raises(InvalidConfigError, match="coordinator=") as info:
            parse_zookeeper_url(url)
        assert why in str(info.value), (url, str(info.value))
    with pytest.raises(InvalidConfigError):
        ZooKeeperCoordinator(1, "zookeeper://h:0/x")


def test_start_fails_fast_without_zookeeper() -> None:
    dead = f"zookeeper://127.0.0.1:{free_port('127.0.0.1')}/x"  # nothing listens there
    c = ZooKeeperCoordinator(1, dead, SESSION_S, connect_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(CoordinatorNotAvailableError, match="did not answer"):
        c.start(Waker())
    assert time.monotonic() - t0 < 5
    c.close()


# ---- nodes ----------------------------------------------------------------------------------
def test_registration_epochs_and_ephemeral_node(
    url: str, waker: Waker, coordinators: Callable[..., ZooKeeperCoordinator]
) -> None:
    a = coordinators(1, url)
    b = coordinators(2, url)
    epoch_a = a.nodes()[1].epoch
    assert a.epoch == epoch_a
    waker.wait_for(lambda: set(a.nodes()) == {1, 2} == set(b.nodes()), "both nodes in both snapshots")
    assert b.nodes()[1].endpoint == "tcp://10.0.0.1:6100"
    assert b.nodes()[1].epoch == epoch_a

    a.close()
    a.close()  # idempotent
    waker.wait_for(lambda: 1 not in b.nodes(), "node 1's znode gone with its session")
    assert not a.connected()

    again = coordinators(1, url)
    assert again.epoch != epoch_a and again.epoch > epoch_a
    waker.wait_for(lambda: b.nodes().get(1) is not None and b.nodes()[1].epoch == again.epoch, "the new epoch")


def test_register_waits_for_a_previous_session_then_refuses(
    zk: ZooKeeperServer, url: str, coordinators: Callable[..., ZooKeeperCoordinator]
) -> None:
    _, chroot = parse_zookeeper_url(url)
    squatter = KazooClient(zk.address, timeout=SESSION_S)
    squatter.start(WAIT_S)
    try:
        squatter.create(f"{chroot}/nodes/7", b'{"endpoint": "old"}', ephemeral=True, makepath=True)
        # Still held when the deadline (2 x session timeout + 1 s) passes: refused.
        c = coordinators(7, url, register=False, session_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(InvalidConfigError, match="node id 7 is already registered"):
            c.register("tcp://new:1")
        assert 2.5 < time.monotonic() - t0 < 6
        # Released while waiting (the previous run's session ends): registered.
        timer = threading.Timer(0.5, squatter.stop)
        timer.start()
        try:
            epoch = c.register("tcp://new:1")
        finally:
            timer.join()
        assert c.nodes()[7].epoch == epoch
        assert c.nodes()[7].endpoint == "tcp://new:1"
    finally:
        squatter.stop()
        squatter.close()


# ---- controller ------------------------------------------------------------------------------
def controller_and_peer(
    url: str, waker: Waker, coordinators: Callable[..., ZooKeeperCoordinator]
) -> tuple[ZooKeeperCoordinator, ZooKeeperCoordinator]:
    """Node 1, once it has won the election, and node 2 beside it."""
    a = coordinators(1, url)
    waker.wait_for(a.is_controller, "node 1 to win the election")
    return a, coordinators(2, url)


def test_controller_election_and_failover(
    url: str, waker: Waker, coordinators: Callable[..., ZooKeeperCoordinator]
) -> None:
    a, b = controller_and_peer(url, waker, coordinators)
    waker.wait_for(lambda: b.controller() == 1 and a.controller() == 1, "both to see controller 1")
    assert not b.is_controller()

    a.close()
    waker.wait_for(b.is_controller, "node 2 to take over")
    assert b.controller() == 2
    assert not a.is_controller()


def test_session_loss_fences_the_old_controller_which_rejoins(
    zk: ZooKeeperServer, url: str, waker: Waker, coordinators: Callable[..., ZooKeeperCoordinator]
) -> None:
    a, b = controller_and_peer(url, waker, coordinators)
    a.create_topic(_topic("t"))
    state = a.topics()["t"].partitions[0]
    old_epoch = a.epoch
    old_fence = a._fence_path

    _expire_session(a, zk)
    waker.wait_for(b.is_controller, "node 2 to take over from the expired session")
    waker.wait_for(lambda: a.epoch != old_epoch, "node 1 to register again in its new session")
    waker.wait_for(lambda: b.nodes().get(1) is not None and b.nodes()[1].epoch == a.epoch, "node 1's new epoch")
    assert a.epoch > old_epoch
    waker.wait_for(lambda: a.controller() == 2, "node 1 to see controller 2")
    assert not a.is_controller()
    assert a._fence_path != old_fence
    with pytest.raises(NotControllerError):
        a.set_partition_state("t", 0, state)
    stored = b.set_partition_state("t", 0, PartitionState(2, 1, [1], [1], version=state.version))
    assert stored.version == state.version + 1

    b.close()  # node 1 contends again in its new session
    waker.wait_for(a.is_controller, "node 1 to be controller again")


# ---- topics ------------------------------------------------------------------------------------
def test_create_duplicate_and_delete_topic(
    url: str, waker: Waker, coordinators: Callable[..., ZooKeeperCoordinator]
) -> None:
    a = coordinators(1, url)
    b = coordinators(2, url)
    info = _topic("orders", 4, {"retention.ms": 1000})
    a.create_topic(info)
    created = a.topics()["orders"]  # this node's own write is visible when it returns
    assert created.partitions == [PartitionState(1, 0, [1], [1], version=0)] * 4
    assert created.config == {"retention.ms": 1000} and created.created_ms == info.created_ms
    waker.wait_for(lambda: b.topics().get("orders") == created, "node 2 to see the topic")

    with pytest.raises(TopicAlreadyExistsError):
        b.create_topic(_topic("orders", 1))
    assert len(a.topics()["orders"].partitions) == 4

    b.delete_topic("orders")
    assert "orders" not in b.topics()
    waker.wait_for(lambda: "orders" not in a.topics(), "node 1 to see the deletion")
    with pytest.raises(UnknownTopicOrPartitionError):
        a.delete_topic("orders")

    a.create_topic(_topic("orders", 2))  # the same name again: a new topic
    waker.wait_for(lambda: len(_partitions(b, "orders")) == 2, "the re-created topic")


def test_partition_state_compare_and_set(
    url: str, waker: Waker, coordinators: Callable[..., ZooKeeperCoordinator]
) -> None:
    a, b = controller_and_peer(url, waker, coordinators)
    a.create_topic(_topic("t", 2))
    s0 = a.topics()["t"].partitions[1]
    assert s0.version == 0

    wanted = PartitionState(1, 1, [1, 2], [1, 2], {1: a.epoch, 2: b.epoch}, target_replicas=[2, 1], version=0)
    s1 = a.set_partition_state("t", 1, wanted)
    assert s1.version == 1 and s1.isr_epochs == wanted.isr_epochs
    assert a.topics()["t"].partitions[1] == s1  # applied to the snapshot at once
    waker.wait_for(lambda: _partitions(b, "t")[1:2] == [s1], "node 2 to see version 1")

    with pytest.raises(StaleStateError):
        a.set_partition_state("t", 1, wanted)  # still version 0: stale
    with pytest.raises(StaleStateError):
        a.set_partition_state("t", 1, PartitionState(1, 2, [1], [1]))  # never read: no version
    with pytest.raises(NotControllerError):
        b.set_partition_state("t", 1, s1)  # only the controller writes partition states
    with pytest.raises(UnknownTopicOrPartitionError):
        a.set_partition_state("t", 7, s1)
    assert a.set_partition_state("t", 1, s1).version == 2


def test_add_partitions_and_set_topic_config(
    url: str, waker: Waker, coordinators: Callable[..., ZooKeeperCoordinator]
) -> None:
    a = coordinators(1, url)
    b = coordinators(2, url)
    a.create_topic(_topic("t", 2, {"cleanup.policy": "delete"}))

    a.add_partitions("t", _states(3, leader=2))
    parts = a.topics()["t"].partitions
    assert len(parts) == 5 and [p.leader for p in parts] == [1, 1, 2, 2, 2]
    assert all(p.version == 0 for p in parts)
    waker.wait_for(lambda: len(_partitions(b, "t")) == 5, "node 2 to see 5 partitions")

    b.set_topic_config("t", {"cleanup.policy": "compact", "segment.bytes": 1 << 20})
    assert b.topics()["t"].config == {"cleanup.policy": "compact", "segment.bytes": 1 << 20}
    waker.wait_for(lambda: a.topics()["t"].config["cleanup.policy"] == "compact", "node 1 to see the config")
    assert a.topics()["t"].partitions == b.topics()["t"].partitions  # the config left them alone

    with pytest.raises(UnknownTopicOrPartitionError):
        a.add_partitions("nope", _states(1))
    with pytest.raises(UnknownTopicOrPartitionError):
        a.set_topic_config("nope", {})


# ---- endpoints and producer ids -------------------------------------------------------------------
def test_endpoints_published_and_seen(
    url: str, waker: Waker, coordinators: Callable[..., ZooKeeperCoordinator]
) -> None:
    a = coordinators(1, url)
    b = coordinators(2, url)
    a.publish_endpoints({"t/0": "tcp://10.0.0.1:7000"})
    assert a.endpoints()[1] == {"t/0": "tcp://10.0.0.1:7000"}
    waker.wait_for(lambda: b.endpoints().get(1) == {"t/0": "tcp://10.0.0.1:7000"}, "node 2 to see the endpoints")

    path = f"{a.chroot}/endpoints/1"
    version = a._client.exists(path).version
    a.publish_endpoints({"t/0": "tcp://10.0.0.1:7000"})  # unchanged: not written again
    assert a._client.exists(path).version == version

    a.publish_endpoints({"t/0": "tcp://10.0.0.1:7000", "t/1": "tcp://10.0.0.1:7001"})
    waker.wait_for(lambda: len(b.endpoints().get(1, {})) == 2, "node 2 to see the new endpoint")
    b.publish_endpoints({})
    waker.wait_for(lambda: a.endpoints().get(2) == {}, "node 1 to see node 2's empty map")

    a.close()
    waker.wait_for(lambda: 1 not in b.endpoints(), "node 1's endpoints gone with it")


def test_producer_ids_are_unique_across_nodes(url: str, coordinators: Callable[..., ZooKeeperCoordinator]) -> None:
    a = coordinators(1, url, register=False)
    b = coordinators(2, url, register=False)
    got: list[int] = []
    lock = threading.Lock()

    def draw(c: ZooKeeperCoordinator) -> None:
        ids = [c.next_producer_id() for _ in range(40)]
        with lock:
            got.extend(ids)

    threads = [threading.Thread(target=draw, args=(c,)) for c in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 3)
    assert len(got) == 160 and len(set(got)) == 160
    assert min(got) == 1000 and max(got) == 1159


# ---- wake-ups and the session ---------------------------------------------------------------------
def test_wake_is_called_on_each_kind_of_change(url: str, coordinators: Callable[..., ZooKeeperCoordinator]) -> None:
    a = coordinators(1, url)
    observer = ZooKeeperCoordinator(2, url, SESSION_S)
    woken = Waker()
    observer.start(woken)
    try:
        changes: list[tuple[str, Callable[[], object], Callable[[], bool]]] = [
            ("create", lambda: a.create_topic(_topic("w", 1)), lambda: "w" in observer.topics()),
            ("config", lambda: a.set_topic_config("w", {"a": 1}), lambda: observer.topics()["w"].config == {"a": 1}),
            (
                "partitions",
                lambda: a.add_partitions("w", _states(1)),
                lambda: len(observer.topics()["w"].partitions) == 2,
            ),
            ("endpoints", lambda: a.publish_endpoints({"w/0": "tcp://e:1"}), lambda: 1 in observer.endpoints()),
            ("node", lambda: a.close(), lambda: 1 not in observer.nodes()),
        ]
        for what, change, seen in changes:
            woken.event.clear()
            before = woken.calls
            change()
            assert woken.event.wait(WAIT_S), f"no wake-up after {what}"
            woken.wait_for(seen, what)
            assert woken.calls > before
    finally:
        observer.close()


def test_connected_follows_the_server(tmp_path: Path) -> None:
    with ZooKeeperServer(tmpdir=tmp_path) as server:
        waker = Waker()
        c = ZooKeeperCoordinator(1, server.url(), SESSION_S * 2)
        c.start(waker)
        try:
            c.register("tcp://10.0.0.1:6100")
            waker.wait_for(c.is_controller, "the only node to become controller")
            epoch = c.epoch

            server.stop()
            waker.wait_for(lambda: not c.connected(), "the session to be suspended")
            assert not c.is_controller() and c.controller() == NO_LEADER
            with pytest.raises(CoordinatorNotAvailableError, match="not connected"):
                c.create_topic(_topic("t"))

            # Same port, same data: the session is restored and normally resumes. If the
            # client's reconnect lands in the server's start-up window it can wait out the
            # session (kazoo's connect timeout is the session timeout): then the node
            # registers again with a new epoch. Either way it serves and leads again.
            server.start()
            waker.wait_for(c.connected, "the session to resume")
            waker.wait_for(c.is_controller, "the controller role to come back")
            waker.wait_for(lambda: c.nodes().get(1) is not None and c.nodes()[1].epoch == c.epoch, "registration")
            assert c.epoch >= epoch
            c.create_topic(_topic("t"))
            assert "t" in c.topics()
        finally:
            c.close()
