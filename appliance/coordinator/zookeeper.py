"""The ZooKeeper coordinator: cluster metadata and liveness in a ZooKeeper ensemble (kazoo).

``coordinator = "zookeeper://zk1:2181,zk2:2181,zk3:2181/sluice"`` names the ensemble and a
chroot (default ``/sluice``) under which everything lives::

    <chroot>/nodes/<id>                      ephemeral, {"endpoint": advertised front endpoint};
                                             its czxid is the node's registration epoch
    <chroot>/controller_election/<uuid>__lock__<seq>
                                             ephemeral sequential, data "<id>" (kazoo Election):
                                             the lowest sequence is the controller
    <chroot>/topics/<name>                   TopicInfo.meta_json()
    <chroot>/topics/<name>/partitions/<p>    PartitionState.to_json(); the znode's version is
                                             PartitionState.version, the compare-and-set token
    <chroot>/endpoints/<id>                  ephemeral, {"topic/partition": worker endpoint}
    <chroot>/producer_id                     {"next": N}, a compare-and-set counter (from 1000)

**Liveness and epochs.** ``register()`` creates ``/nodes/<id>`` in this node's session.
The znode's creation zxid is the registration epoch (Kafka's broker epoch): every
registration gets a new, larger one. A registration left by a previous run of the same
node id lives until that run's session expires; ``register()`` waits for it (about twice
the session timeout) and then refuses with INVALID_CONFIG: two live nodes with one id.
When the session is LOST (expired) ZooKeeper has removed the node's ephemeral znodes;
kazoo opens a new session and this module registers again (a new epoch) and republishes
the endpoints. The node learns it through ``wake()`` and ``nodes()``.

**Controller.** Registered nodes contend with kazoo's ``Election`` recipe (a lock of
ephemeral sequential znodes). The winner's leadership function blocks until ``close()``
or the loss of the session; after a LOST session the node contends again once connected.
``controller()`` and ``is_controller()`` are cached reads: a ChildrenWatch on the
election path keeps the id of the lowest contender.

**Fencing.** ZooKeeper fences a zombie controller: a controller paused or cut off for
longer than the session timeout has an expired session, ZooKeeper deletes its ephemeral
znodes (election node included), the next contender takes over, and no request made on
the expired session is accepted, so the zombie cannot write with it. Locally
``is_controller()`` is False from SUSPENDED (connection gone, the session may be
expiring) until CONNECTED again, and after LOST until the node wins a new election.
Partition states are written by the controller only: ``set_partition_state`` commits,
in one multi-op, a check that the election znode this node won with still exists and the
compare-and-set on the partition's version. A write made after kazoo silently replaced
an expired session (the pass checked ``is_controller()`` just before the expiry) is thus
refused (NOT_CONTROLLER), as Kafka refuses a write carrying a stale controller epoch.
Two writes racing on one state are ordered by the version: the loser gets
``StaleStateError``.

**Reads** are snapshots kept by watches (no ZooKeeper round trip): ChildrenWatch /
DataWatch recipes rebuild an immutable dict on each change (a new dict, swapped under
the lock) and call ``wake()``. A topic appears once its meta, its partition list and
every partition's state are loaded, and disappears as soon as its deletion is seen. A
write returns once this node's own snapshot shows it (bounded by the request timeout),
so a caller reads its own writes; ``set_partition_state`` applies its result at once.

**Threads.** kazoo runs a connection thread and a callback thread (watch callbacks, so
``wake()`` is called from it: it must not block); the session listener only records the
state and hands it to this module's ``zk-session`` thread (re-registration after LOST,
``wake()``); the ``zk-election`` thread runs the election. Construct before fork, start
after: ``__init__`` touches no socket and starts no thread. Do not call the write
methods from inside ``wake()``: they wait for the watches that run on kazoo's threads.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Generic, TypeVar

import orjson
from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    RolledBackError,
    RuntimeInconsistency,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from appliance.coordinator import NO_LEADER, NodeInfo, PartitionState, StaleStateError, TopicInfo
from ipc.errors import (
    CoordinatorNotAvailableError,
    InvalidConfigError,
    NotControllerError,
    RequestTimedOutError,
    SluiceError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

log = logging.getLogger(__name__)

SCHEME = "zookeeper://"
DEFAULT_CHROOT = "/sluice"
DEFAULT_PORT = 2181
NODES = "nodes"
TOPICS = "topics"
PARTITIONS = "partitions"
ENDPOINTS = "endpoints"
ELECTION = "controller_election"
PRODUCER_ID = "producer_id"
FIRST_PRODUCER_ID = 1000
MAX_CAS_ATTEMPTS = 20  # read-modify-write loops (config, delete, producer id) under contention
SESSION_TICK_S = 1.0  # the session thread retries a failed re-registration this often
RETRY = {"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0}  # kazoo: reconnect, recipes

_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_.-]+$")
_SEQUENCE = re.compile(r"(-?\d{10})$")  # kazoo's lock contender suffix

T = TypeVar("T")


def parse_zookeeper_url(url: str) -> tuple[str, str]:
    """``zookeeper://host:port[,host:port...][/chroot]`` -> ("host:port,...", "/chroot").

    The port defaults to 2181, the chroot to ``/sluice``; IPv6 hosts go in brackets.
    Raises InvalidConfigError saying what is wrong."""

    def bad(why: str) -> InvalidConfigError:
        return InvalidConfigError(f"coordinator={url!r}: {why} (expected zookeeper://HOST:PORT[,HOST:PORT...]/PATH)")

    if not isinstance(url, str) or not url.startswith(SCHEME):
        raise bad(f"a ZooKeeper URL starts with {SCHEME!r}")
    rest = url[len(SCHEME) :]
    for c, what in (("@", "credentials"), ("?", "a query"), ("#", "a fragment")):
        if c in rest:
            raise bad(f"{what} ({c!r}) is not allowed")
    if any(c.isspace() for c in rest):
        raise bad("whitespace is not allowed")
    hostlist, _, path = rest.partition("/")
    if not hostlist:
        raise bad("no host")
    hosts = []
    for item in hostlist.split(","):
        m = _HOST.match(item)
        if m is None:
            raise bad(f"{item!r} is not HOST:PORT")
        port = int(m["port"]) if m["port"] else DEFAULT_PORT
        if not 0 < port < 65536:
            raise bad(f"port {port} in {item!r} is out of range 1..65535")
        host = f"[{m['v6']}]" if m["v6"] else m["name"]
        hosts.append(f"{host}:{port}")
    path = path.removesuffix("/")
    if not path:
        return ",".join(hosts), DEFAULT_CHROOT
    parts = path.split("/")
    for part in parts:
        if not part:
            raise bad(f"chroot /{path} has an empty component")
        if part in (".", "..") or not _PATH_PART.match(part):
            raise bad(f"chroot component {part!r} is invalid: use [A-Za-z0-9_.-], not '.' or '..'")
    if parts[0] == "zookeeper":
        raise bad("/zookeeper is ZooKeeper's own subtree")
    return ",".join(hosts), "/" + "/".join(parts)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _first_error(results: list[Any]) -> Exception | None:
    """The operation that failed a multi-op (the others report RolledBack/RuntimeInconsistency)."""
    errors = [r for r in results if isinstance(r, Exception)]
    for err in errors:
        if not isinstance(err, RolledBackError | RuntimeInconsistency):
            return err
    return errors[0] if errors else None


def _no_wake() -> None:
    pass


def _set_event(event: threading.Event, _watched: Any) -> None:
    event.set()


class ZooKeeperCoordinator:
    """The ``Coordinator`` over ZooKeeper; see the module docstring."""

    def __init__(
        self,
        node_id: int,
        url: str,
        session_timeout_s: float = 6.0,
        *,
        connect_timeout_s: float = 15.0,
        request_timeout_s: float | None = None,
    ) -> None:
        self.node_id = node_id
        self.url = url
        self.hosts, self.chroot = parse_zookeeper_url(url)
        self.session_timeout_s = session_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s if request_timeout_s is not None else max(session_timeout_s, 2.0)
        self._client: Any = None  # KazooClient, made in start()
        self._wake: Callable[[], None] = _no_wake
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every snapshot swap
        self._closing = threading.Event()
        self._connected = threading.Event()  # set while KazooState.CONNECTED
        # snapshots (immutable by convention; replaced, never mutated)
        self._nodes: dict[int, NodeInfo] = {}
        self._endpoints: dict[int, dict[str, str]] = {}
        self._topics: dict[str, TopicInfo] = {}
        self._controller = NO_LEADER
        # watch state
        self._topic_watches: dict[str, _TopicWatch] = {}
        # registration
        self._registration: bytes | None = None  # /nodes/<id> data once registered
        self._epoch = -1
        self._need_register = False  # the session was lost: register again when connected
        self._next_register = 0.0
        self._publish_lock = threading.Lock()  # one publish_endpoints / republish at a time
        self._published: bytes | None = None
        self._published_session: int | None = None
        # election
        self._election: Any = None  # the kazoo Election being run
        self._leader_stop = threading.Event()  # ends the current leadership function
        self._leading = False
        self._fence_path: str | None = None  # the election znode this node won with
        self._session_events: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._election_thread: threading.Thread | None = None

    # ---- paths --------------------------------------------------------------------------
    def _path(self, *parts: str | int) -> str:
        return "/".join([self.chroot, *(str(p) for p in parts)])

    def _topic_path(self, name: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return self._path(TOPICS, name)

    # ---- life cycle -----------------------------------------------------------------------
    def start(self, wake: Callable[[], None]) -> None:
        """Connect (bounded by ``connect_timeout_s``), create the layout's parents, load
        every snapshot and set the watches. CoordinatorNotAvailableError if ZooKeeper
        does not answer."""
        if self._client is not None:
            raise RuntimeError("ZooKeeperCoordinator.start() called twice")
        self._wake = wake
        client = KazooClient(
            hosts=self.hosts,
            timeout=self.session_timeout_s,
            connection_retry=dict(RETRY),
            command_retry=dict(RETRY),
        )
        client.add_listener(self._on_session_state)
        try:
            client.start(timeout=self.connect_timeout_s)
        except KazooTimeoutError:
            client.close()
            raise CoordinatorNotAvailableError(
                f"ZooKeeper at {self.hosts} did not answer within {self.connect_timeout_s:.0f} s"
            ) from None
        self._client = client
        try:
            for parent in (NODES, TOPICS, ENDPOINTS, ELECTION):
                self._call(client.ensure_path_async(self._path(parent)), f"creating {self._path(parent)}")
            session = threading.Thread(target=self._session_loop, name=f"zk-session-{self.node_id}", daemon=True)
            session.start()
            self._threads.append(session)
            # The first load runs here, synchronously (each watch reads before returning).
            _ChildMap(self, self._path(NODES), self._parse_node, self._set_nodes).start()
            _ChildMap(self, self._path(ENDPOINTS), self._parse_endpoints, self._set_endpoints).start()
            ChildrenWatch(client, self._path(TOPICS), self._on_topics)
            ChildrenWatch(client, self._path(ELECTION), self._on_contenders)
        except BaseException:
            self.close()
            raise
        log.info(
            "node %d: connected to ZooKeeper %s%s (session timeout %.1f s): %d node(s), %d topic(s), controller %d",
            self.node_id,
            self.hosts,
            self.chroot,
            self.session_timeout_s,
            len(self._nodes),
            len(self._topics),
            self._controller,
        )

    def register(self, endpoint: str) -> int:
        """Create ``/nodes/<id>`` (waiting for a previous session's registration to
        expire, about twice the session timeout), join the controller election, return
        the registration epoch."""
        self._require_client()
        data = _dumps({"endpoint": endpoint})
        epoch = self._create_registration(data)
        with self._lock:
            self._registration = data
            self._epoch = epoch
            self._need_register = False
        log.info("node %d: registered in ZooKeeper with endpoint %s, epoch %d", self.node_id, endpoint, epoch)
        if self._election_thread is None:
            self._election_thread = threading.Thread(
                target=self._election_loop, name=f"zk-election-{self.node_id}", daemon=True
            )
            self._election_thread.start()
            self._threads.append(self._election_thread)
        self._await(lambda: (n := self._nodes.get(self.node_id)) is not None and n.epoch == epoch, "registration")
        return epoch

    def close(self) -> None:
        """Leave the election, delete this node's ephemeral znodes, close the session.
        Idempotent."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            self._leading = False
            election, stop = self._election, self._leader_stop
        stop.set()
        self._session_events.put(None)
        client = self._client
        if client is None:
            return
        if election is not None:
            election.cancel()
        if self._election_thread is not None:
            self._election_thread.join(self.request_timeout_s)  # lets the lock release its znode
        if client.state == KazooState.CONNECTED:
            session = self._session_id()
            for path in (self._path(ENDPOINTS, self.node_id), self._path(NODES, self.node_id)):
                try:
                    stat = self._call(client.exists_async(path), f"reading {path}")
                    if stat is not None and stat.ephemeralOwner == session:
                        self._call(client.delete_async(path, stat.version), f"deleting {path}")
                except (KazooException, SluiceError) as exc:
                    log.info("node %d: %s not deleted on close (%s); it goes with the session", self.node_id, path, exc)
        try:
            client.stop()
        except KazooException as exc:
            log.warning("node %d: ZooKeeper client did not stop cleanly: %s", self.node_id, exc)
        client.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(self.request_timeout_s)
        log.info("node %d: ZooKeeper session closed", self.node_id)

    def connected(self) -> bool:
        client = self._client
        return client is not None and not self._closing.is_set() and client.state == KazooState.CONNECTED

    # ---- reads ------------------------------------------------------------------------------
    def nodes(self) -> dict[int, NodeInfo]:
        return self._nodes

    def controller(self) -> int:
        if self.is_controller():
            return self.node_id
        c = self._controller
        return NO_LEADER if c == self.node_id else c  # our own stale entry: we are not leading

    def is_controller(self) -> bool:
        return self._leading and self.connected()

    def topics(self) -> dict[str, TopicInfo]:
        return self._topics

    def endpoints(self) -> dict[int, dict[str, str]]:
        return self._endpoints

    @property
    def epoch(self) -> int:
        """This node's current registration epoch (-1 before ``register()``)."""
        return self._epoch

    # ---- writes -----------------------------------------------------------------------------
    def create_topic(self, info: TopicInfo) -> None:
        client = self._require_client()
        if not info.name or "/" in info.name or info.name in (".", ".."):
            raise InvalidConfigError(f"topic name {info.name!r} cannot be a ZooKeeper znode name")
        path = self._topic_path(info.name)
        tx = client.transaction()
        tx.create(path, _dumps(info.meta_json()))
        tx.create(f"{path}/{PARTITIONS}", b"")
        for p, state in enumerate(info.partitions):
            tx.create(f"{path}/{PARTITIONS}/{p}", _dumps(state.to_json()))
        err = _first_error(self._call(tx.commit_async(), f"creating topic {info.name!r}"))
        if isinstance(err, NodeExistsError):
            raise TopicAlreadyExistsError(f"topic {info.name!r} already exists")
        if err is not None:
            raise self._unexpected(err, f"creating topic {info.name!r}")
        n = len(info.partitions)
        self._await(lambda: (t := self._topics.get(info.name)) is not None and len(t.partitions) >= n, "create")

    def delete_topic(self, name: str) -> None:
        client = self._require_client()
        path = self._topic_path(name)
        for attempt in range(MAX_CAS_ATTEMPTS):
            try:
                subtree = self._subtree(path)
            except NoNodeError:
                raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None
            tx = client.transaction()
            for p in subtree:  # children before parents
                tx.delete(p)
            err = _first_error(self._call(tx.commit_async(), f"deleting topic {name!r}"))
            if err is None:
                break
            if not isinstance(err, NoNodeError | NotEmptyError):
                raise self._unexpected(err, f"deleting topic {name!r}")
            self._backoff(attempt)  # changed under us (partitions added, or deleted meanwhile): look again
        else:
            raise StaleStateError(f"topic {name!r} kept changing while being deleted ({MAX_CAS_ATTEMPTS} attempts)")
        self._await(lambda: name not in self._topics, "delete")

    def set_topic_config(self, name: str, config: dict[str, Any]) -> None:
        client = self._require_client()
        path = self._topic_path(name)
        for attempt in range(MAX_CAS_ATTEMPTS):
            try:
                data, stat = self._call(client.get_async(path), f"reading topic {name!r}")
            except NoNodeError:
                raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None
            meta = orjson.loads(data)
            meta["config"] = dict(config)
            try:
                self._call(client.set_async(path, _dumps(meta), stat.version), f"writing topic {name!r}")
                break
            except BadVersionError:
                self._backoff(attempt)
            except NoNodeError:
                raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None
        else:
            raise StaleStateError(f"topic {name!r} kept changing while its config was written")
        want = dict(config)
        self._await(lambda: (t := self._topics.get(name)) is None or t.config == want, "config")

    def add_partitions(self, name: str, states: list[PartitionState]) -> None:
        """Create partitions ``len(current)..`` in one multi-op that also checks the topic
        znode's version: StaleStateError when partitions were added concurrently."""
        if not states:
            return
        client = self._require_client()
        path = self._topic_path(name)
        try:
            _, stat = self._call(client.get_async(path), f"reading topic {name!r}")
            children = self._call(client.get_children_async(f"{path}/{PARTITIONS}"), f"listing {name!r}")
        except NoNodeError:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist") from None
        first = len(children)
        tx = client.transaction()
        tx.check(path, stat.version)  # the topic is still this one (not deleted, not re-created)
        for i, state in enumerate(states):
            tx.create(f"{path}/{PARTITIONS}/{first + i}", _dumps(state.to_json()))
        err = _first_error(self._call(tx.commit_async(), f"adding partitions to {name!r}"))
        if isinstance(err, NodeExistsError | BadVersionError):
            raise StaleStateError(f"topic {name!r} changed while partitions {first}.. were added; read it again")
        if isinstance(err, NoNodeError):
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        if err is not None:
            raise self._unexpected(err, f"adding partitions to {name!r}")
        total = first + len(states)
        self._await(lambda: (t := self._topics.get(name)) is None or len(t.partitions) >= total, "add partitions")

    def set_partition_state(self, topic: str, partition: int, state: PartitionState) -> PartitionState:
        """Compare-and-set fenced by controllership: NotControllerError unless this node
        holds the election znode it won with; StaleStateError on a version mismatch."""
        client = self._require_client()
        fence = self._fence_path
        if fence is None or not self.is_controller():
            raise NotControllerError(f"node {self.node_id} is not the controller: {topic}-{partition} not written")
        if state.version < 0:
            raise StaleStateError(f"{topic}-{partition}: state has no stored version ({state.version}); read it first")
        path = f"{self._topic_path(topic)}/{PARTITIONS}/{partition}"
        tx = client.transaction()
        tx.check(fence, 0)
        tx.set_data(path, _dumps(state.to_json()), state.version)
        results = self._call(tx.commit_async(), f"writing {topic}-{partition}")
        err = _first_error(results)
        if err is not None:
            if isinstance(results[0], NoNodeError):
                raise NotControllerError(f"node {self.node_id} lost the controller election: {topic}-{partition}")
            if isinstance(err, BadVersionError):
                raise StaleStateError(f"{topic}-{partition}: stored version is not {state.version}")
            if isinstance(err, NoNodeError):
                raise UnknownTopicOrPartitionError(f"{topic}-{partition} does not exist")
            raise self._unexpected(err, f"writing {topic}-{partition}")
        stat = results[1]
        stored = dataclasses.replace(state, version=stat.version)
        with self._lock:
            tw = self._topic_watches.get(topic)
            applied = tw is not None and tw.apply(partition, stored, stat)
        if applied:
            self._publish_topics([topic])
        return stored

    def publish_endpoints(self, endpoints: dict[str, str]) -> None:
        self._require_client()
        data = _dumps(endpoints)
        with self._publish_lock:
            if data == self._published and self._published_session == self._session_id():
                return
            self._write_endpoints(data)
        want = dict(endpoints)
        self._await(lambda: self._endpoints.get(self.node_id) == want, "endpoints")

    def next_producer_id(self) -> int:
        client = self._require_client()
        path = self._path(PRODUCER_ID)
        for attempt in range(MAX_CAS_ATTEMPTS):
            try:
                data, stat = self._call(client.get_async(path), f"reading {path}")
            except NoNodeError:
                try:
                    self._call(client.create_async(path, _dumps({"next": FIRST_PRODUCER_ID + 1})), f"creating {path}")
                    return FIRST_PRODUCER_ID
                except NodeExistsError:
                    self._backoff(attempt)
                    continue
            nxt = int(orjson.loads(data)["next"]) if data else FIRST_PRODUCER_ID
            try:
                self._call(client.set_async(path, _dumps({"next": nxt + 1}), stat.version), f"writing {path}")
                return nxt
            except BadVersionError:
                self._backoff(attempt)  # another node took this one
        raise StaleStateError(f"no producer id after {MAX_CAS_ATTEMPTS} attempts: {path} is contended")

    # ---- helpers ------------------------------------------------------------------------------
    def _require_client(self) -> Any:
        client = self._client
        if client is None:
            raise RuntimeError("ZooKeeperCoordinator used before start()")
        if self._closing.is_set():
            raise CoordinatorNotAvailableError(f"node {self.node_id}: the ZooKeeper coordinator is closed")
        if client.state != KazooState.CONNECTED:
            raise CoordinatorNotAvailableError(
                f"node {self.node_id}: not connected to ZooKeeper at {self.hosts} (session {client.state})"
            )
        return client

    def _call(self, async_result: Any, what: str) -> Any:
        """Wait for one request, at most ``request_timeout_s``; connection trouble becomes a
        retriable SluiceError (the request may or may not have been applied)."""
        try:
            return async_result.get(timeout=self.request_timeout_s)
        except KazooTimeoutError:
            raise RequestTimedOutError(
                f"{what}: ZooKeeper at {self.hosts} did not answer within {self.request_timeout_s:.1f} s"
            ) from None
        except (ConnectionLoss, SessionExpiredError, OperationTimeoutError, ConnectionClosedError) as exc:
            raise RequestTimedOutError(f"{what}: {type(exc).__name__} from ZooKeeper at {self.hosts}") from None
        except (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError):
            raise  # answers the callers handle
        except KazooException as exc:
            raise self._unexpected(exc, what) from None

    def _unexpected(self, err: Exception, what: str) -> SluiceError:
        return CoordinatorNotAvailableError(f"{what}: ZooKeeper answered {type(err).__name__}: {err}")

    def _backoff(self, attempt: int) -> None:
        """A jittered pause after a lost compare-and-set race (at most 0.1 s; ends early on close)."""
        self._closing.wait(random.uniform(0.0, min(0.1, 0.002 * 2**attempt)))

    def _session_id(self) -> int | None:
        client = self._client
        cid = client.client_id if client is not None else None
        return int(cid[0]) if cid else None

    def _await(self, done: Callable[[], bool], what: str) -> None:
        """Wait (bounded) until this node's snapshots show a write it just made."""
        with self._changed:
            ok = self._changed.wait_for(done, timeout=self.request_timeout_s)
        if not ok:
            log.warning(
                "node %d: %s written to ZooKeeper but not seen by the watches within %.1f s",
                self.node_id,
                what,
                self.request_timeout_s,
            )

    def _subtree(self, path: str, depth: int = 0) -> list[str]:
        """``path`` and its descendants, children first (for a multi-op delete)."""
        if depth > 4:
            raise InvalidConfigError(f"{path}: deeper than this coordinator's layout")
        client = self._client
        out: list[str] = []
        for child in self._call(client.get_children_async(path), f"listing {path}"):
            out += self._subtree(f"{path}/{child}", depth + 1)
        out.append(path)
        return out

    def _create_registration(self, data: bytes) -> int:
        """Create ``/nodes/<id>``; its czxid is the epoch. A znode left by another session
        is waited for (an exists watch, no polling) until about 2x the session timeout."""
        client = self._client
        path = self._path(NODES, self.node_id)
        deadline = time.monotonic() + 2 * self.session_timeout_s + 1.0
        for _ in range(100):  # each turn waits for a deletion or ends at the deadline
            try:
                _, stat = self._call(
                    client.create_async(path, data, ephemeral=True, include_data=True), f"creating {path}"
                )
                return int(stat.czxid)
            except NodeExistsError:
                pass
            gone = threading.Event()
            stat = self._call(client.exists_async(path, watch=partial(_set_event, gone)), f"reading {path}")
            if stat is None:
                continue
            if stat.ephemeralOwner == self._session_id():
                # Ours already (a create whose answer was lost, or a second register()).
                self._call(client.set_async(path, data, stat.version), f"writing {path}")
                return int(stat.czxid)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            log.info(
                "node %d: waiting up to %.1f s for the previous registration (session 0x%x) to expire",
                self.node_id,
                remaining,
                stat.ephemeralOwner,
            )
            gone.wait(remaining)
        raise InvalidConfigError(
            f"node id {self.node_id} is already registered in ZooKeeper ({self.hosts}{self.chroot}) by another "
            f"session that did not expire within {2 * self.session_timeout_s + 1.0:.0f} s: another node runs "
            "with this node_id"
        )

    def _write_endpoints(self, data: bytes) -> None:
        """Create or update ``/endpoints/<id>`` in this session (a znode left by a previous
        session of this node id is replaced). Called with ``_publish_lock`` held."""
        client = self._client
        path = self._path(ENDPOINTS, self.node_id)
        for _ in range(5):
            session = self._session_id()
            try:
                stat = self._call(client.exists_async(path), f"reading {path}")
                if stat is None:
                    self._call(client.create_async(path, data, ephemeral=True), f"creating {path}")
                elif stat.ephemeralOwner != session:
                    self._call(client.delete_async(path, stat.version), f"deleting {path}")
                    continue
                else:
                    self._call(client.set_async(path, data), f"writing {path}")
            except (NodeExistsError, NoNodeError, BadVersionError):
                continue
            self._published, self._published_session = data, session
            return
        raise StaleStateError(f"{path} kept changing while this node wrote it")

    # ---- snapshots ------------------------------------------------------------------------------
    def _notify(self) -> None:
        """After a swap (called without the lock): wake the node."""
        self._wake()

    def _set_nodes(self, values: dict[int, NodeInfo]) -> None:
        with self._changed:
            if values == self._nodes:
                return
            self._nodes = values
            self._changed.notify_all()
        self._notify()

    def _set_endpoints(self, values: dict[int, dict[str, str]]) -> None:
        with self._changed:
            if values == self._endpoints:
                return
            self._endpoints = values
            self._changed.notify_all()
        self._notify()

    def _parse_node(self, node_id: int, data: bytes, stat: Any) -> NodeInfo:
        return NodeInfo(node_id=node_id, endpoint=str(orjson.loads(data)["endpoint"]), epoch=int(stat.czxid))

    def _parse_endpoints(self, node_id: int, data: bytes, stat: Any) -> dict[str, str]:
        raw = orjson.loads(data)
        if not isinstance(raw, dict):
            raise ValueError(f"not a JSON object: {raw!r}")
        return {str(k): str(v) for k, v in raw.items()}

    def _publish_topics(self, names: Iterable[str]) -> None:
        """Rebuild the snapshot of these topics; wake when one changed."""
        with self._changed:
            topics = self._topics
            changed = False
            for name in names:
                tw = self._topic_watches.get(name)
                info = tw.snapshot() if tw is not None else None
                if info == topics.get(name):
                    continue
                if not changed:
                    topics = dict(topics)
                    changed = True
                if info is None:
                    del topics[name]
                else:
                    topics[name] = info
            if changed:
                self._topics = topics
                self._changed.notify_all()
        if changed:
            self._notify()

    def _on_topics(self, children: list[str]) -> bool | None:
        """ChildrenWatch on /topics: a _TopicWatch per topic."""
        if self._closing.is_set():
            return False
        names = set(children)
        with self._lock:
            gone = [n for n in self._topic_watches if n not in names]
            for n in gone:
                self._topic_watches.pop(n).stopped = True
            new = [_TopicWatch(self, n) for n in sorted(names) if n not in self._topic_watches]
            for tw in new:
                self._topic_watches[tw.name] = tw
        for tw in new:
            tw.start()  # loads meta, partition list and states before returning
        self._publish_topics(gone + [tw.name for tw in new])
        return None

    def _on_contenders(self, children: list[str]) -> bool | None:
        """ChildrenWatch on the election path: the lowest sequence is the controller."""
        if self._closing.is_set():
            return False
        client = self._client
        ranked = sorted((m.group(1), c) for c in children if (m := _SEQUENCE.search(c)))
        controller = NO_LEADER
        for _, child in ranked:
            try:
                data, _ = client.retry(client.get, self._path(ELECTION, child))
            except NoNodeError:
                continue  # gone meanwhile; the next one is the holder
            try:
                controller = int(data.decode())
            except ValueError:
                log.warning("controller election contender %s has data %r, not a node id", child, data)
            break
        with self._changed:
            old, self._controller = self._controller, controller
            self._changed.notify_all()
        if old != controller:
            log.info("node %d: controller %d -> %d", self.node_id, old, controller)
            self._notify()
        return None

    # ---- session ---------------------------------------------------------------------------------
    def _on_session_state(self, state: str) -> None:
        """kazoo listener, on its connection thread: record and hand over, never block."""
        if state == KazooState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        if state == KazooState.LOST:
            with self._lock:
                self._leading = False
                self._need_register = self._registration is not None and not self._closing.is_set()
            self._leader_stop.set()
        self._session_events.put(state)

    def _session_loop(self) -> None:
        """Log session changes, wake the node, register again after a LOST session."""
        while not self._closing.is_set():
            try:
                state = self._session_events.get(timeout=SESSION_TICK_S)
            except queue.Empty:
                state = ""
            if state is None or self._closing.is_set():
                return
            if state:
                level = logging.INFO if state == KazooState.CONNECTED else logging.WARNING
                log.log(level, "node %d: ZooKeeper session %s", self.node_id, state)
                self._wake()
            if self._need_register and self.connected() and time.monotonic() >= self._next_register:
                self._register_again()

    def _register_again(self) -> None:
        data = self._registration
        assert data is not None
        try:
            epoch = self._create_registration(data)
            with self._publish_lock:
                if self._published is not None:
                    self._write_endpoints(self._published)
        except (KazooException, SluiceError) as exc:
            self._next_register = time.monotonic() + SESSION_TICK_S
            log.warning("node %d: registering again after the session loss failed: %s", self.node_id, exc)
            return
        with self._lock:
            old, self._epoch = self._epoch, epoch
            self._need_register = False
        log.warning("node %d: registered again after its session expired: epoch %d -> %d", self.node_id, old, epoch)
        self._wake()

    # ---- election --------------------------------------------------------------------------------
    def _election_loop(self) -> None:
        """Contend while open: one kazoo Election per session (a new one after LOST)."""
        backoff = 0.1
        while not self._closing.is_set():
            if not self._connected.wait(SESSION_TICK_S):
                continue
            election = self._client.Election(self._path(ELECTION), str(self.node_id))
            stop = threading.Event()
            with self._lock:
                if self._closing.is_set():
                    return
                self._election, self._leader_stop = election, stop
            try:
                election.run(self._lead, election, stop)
                backoff = 0.1
            except ConnectionClosedError:
                return
            except KazooException as exc:
                log.warning("node %d: controller election failed (%r); again in %.1f s", self.node_id, exc, backoff)
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with self._lock:
                    self._election = None

    def _lead(self, election: Any, stop: threading.Event) -> None:
        """The leadership function: hold the controller role until close() or LOST."""
        lock = election.lock
        if not lock.is_acquired or lock.node is None:
            return  # kazoo's Lock.__enter__ ignores a failed acquire: do not lead then
        session = self._session_id()
        with self._lock:
            if self._closing.is_set() or stop.is_set():
                return
            self._fence_path = self._path(ELECTION, lock.node)
            self._leading = True
        log.warning("node %d: is the controller (election znode %s)", self.node_id, lock.node)
        self._wake()
        try:
            # Ends on close() or LOST (the listener sets ``stop``); the check of the session
            # id each second is a second line should a listener call be missed.
            while not stop.wait(SESSION_TICK_S):
                if self._session_id() not in (session, None):
                    break
        finally:
            with self._lock:
                self._leading = False
                self._fence_path = None
            log.warning("node %d: is no longer the controller", self.node_id)
            self._wake()


class _ChildMap(Generic[T]):
    """A ChildrenWatch on ``parent`` and a DataWatch on each numeric child: keeps
    {child id: parsed value} and hands a fresh dict to ``publish`` after each change."""

    def __init__(
        self,
        owner: ZooKeeperCoordinator,
        parent: str,
        parse: Callable[[int, bytes, Any], T],
        publish: Callable[[dict[int, T]], None],
    ) -> None:
        self.owner = owner
        self.parent = parent
        self.parse = parse
        self.publish = publish
        self.tokens: dict[int, object] = {}  # child id -> the token of its live DataWatch
        self.values: dict[int, T] = {}

    def start(self) -> None:
        ChildrenWatch(self.owner._client, self.parent, self._on_children)

    def _on_children(self, children: list[str]) -> bool | None:
        if self.owner._closing.is_set():
            return False
        ids = {int(c) for c in children if c.isdigit()}
        with self.owner._lock:
            for i in [i for i in self.tokens if i not in ids]:
                del self.tokens[i]
                self.values.pop(i, None)
            new = {i: object() for i in sorted(ids) if i not in self.tokens}
            self.tokens.update(new)
        for i, token in new.items():
            DataWatch(self.owner._client, f"{self.parent}/{i}", partial(self._on_data, i, token))
        self._publish()
        return None

    def _on_data(self, child: int, token: object, data: bytes | None, stat: Any, event: Any = None) -> bool | None:
        if self.owner._closing.is_set() or self.tokens.get(child) is not token:
            return False  # the child went away: this watch ends
        value: T | None = None
        if stat is not None and data is not None:
            try:
                value = self.parse(child, data, stat)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s/%d: unreadable %r: %s", self.parent, child, data[:200], exc)
        with self.owner._lock:
            if self.tokens.get(child) is not token:
                return False
            if value is None:
                self.values.pop(child, None)
            else:
                self.values[child] = value
        self._publish()
        return None  # keep watching: the znode may come back (a new registration)

    def _publish(self) -> None:
        with self.owner._lock:
            values = dict(self.values)
        self.publish(values)


class _TopicWatch:
    """One topic: a DataWatch on its meta, a ChildrenWatch on its partitions and a
    DataWatch per partition. ``incarnation`` changes when the topic znode is re-created
    (another czxid), so watches of a deleted incarnation stop. State under owner._lock."""

    def __init__(self, owner: ZooKeeperCoordinator, name: str) -> None:
        self.owner = owner
        self.name = name
        self.path = owner._path(TOPICS, name)
        self.stopped = False
        self.meta: TopicInfo | None = None  # partitions=[]: the meta fields only
        self.czxid = -1
        self.incarnation = 0
        self.children: list[int] | None = None  # partitions listed; None until read
        self.watched: set[int] = set()
        self.states: dict[int, tuple[PartitionState, int, int]] = {}  # p -> (state, mzxid, czxid)
        self.deleting = False  # a partition znode vanished: the topic is being deleted
        self.loading = 0  # > 0 while new partition watches load (publish once at the end)

    def start(self) -> None:
        DataWatch(self.owner._client, self.path, self._on_meta)

    def snapshot(self) -> TopicInfo | None:
        """The topic as readers see it (under owner._lock); None while absent."""
        if self.stopped or self.meta is None or self.children is None or self.deleting:
            return None
        parts = []
        for p in range(len(self.children)):
            entry = self.states.get(p)
            if entry is None:
                break
            parts.append(entry[0])
        return dataclasses.replace(self.meta, partitions=parts)

    def apply(self, partition: int, state: PartitionState, stat: Any) -> bool:
        """A state this node just wrote (under owner._lock); False when the watch already
        has it or something newer, or the znode belongs to another incarnation."""
        entry = self.states.get(partition)
        if self.stopped or entry is None or entry[2] != stat.czxid or entry[1] >= stat.mzxid:
            return False
        self.states[partition] = (state, int(stat.mzxid), int(stat.czxid))
        return True

    def _on_meta(self, data: bytes | None, stat: Any, event: Any = None) -> bool | None:
        owner = self.owner
        if self.stopped or owner._closing.is_set():
            return False
        meta = None
        if stat is not None and data is not None:
            try:
                meta = TopicInfo.from_json(orjson.loads(data), partitions=[])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("topic %s: unreadable meta %r: %s", self.name, data[:200], exc)
        with owner._lock:
            if self.stopped:
                return False
            self.meta = meta
            czxid = int(stat.czxid) if stat is not None else -1
            fresh = czxid != self.czxid
            if fresh:  # created, deleted or re-created: start over
                self.czxid = czxid
                self.incarnation += 1
                self.children = None
                self.watched = set()
                self.states = {}
                self.deleting = False
            incarnation = self.incarnation
        if fresh and stat is not None:
            ChildrenWatch(owner._client, f"{self.path}/{PARTITIONS}", partial(self._on_children, incarnation))
        owner._publish_topics([self.name])
        return None  # keep watching even when absent: the name may be re-created

    def _on_children(self, incarnation: int, children: list[str]) -> bool | None:
        owner = self.owner
        with owner._lock:
            if self.stopped or incarnation != self.incarnation:
                return False
            self.children = sorted(int(c) for c in children if c.isdigit())
            new = [p for p in self.children if p not in self.watched]
            self.watched.update(new)
            self.loading += 1
        try:
            for p in new:
                DataWatch(owner._client, f"{self.path}/{PARTITIONS}/{p}", partial(self._on_partition, incarnation, p))
        finally:
            with owner._lock:
                self.loading -= 1
        owner._publish_topics([self.name])
        return None

    def _on_partition(
        self, incarnation: int, partition: int, data: bytes | None, stat: Any, event: Any = None
    ) -> bool | None:
        owner = self.owner
        state = None
        if stat is not None and data is not None:
            try:
                state = PartitionState.from_json(orjson.loads(data), version=int(stat.version))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s-%d: unreadable state %r: %s", self.name, partition, data[:200], exc)
                return None
        with owner._lock:
            if self.stopped or incarnation != self.incarnation:
                return False
            if state is None:  # partitions are only ever deleted with their topic
                self.deleting = True
                self.states.pop(partition, None)
                self.watched.discard(partition)
            else:
                entry = self.states.get(partition)
                if entry is not None and entry[2] == stat.czxid and entry[1] >= stat.mzxid:
                    return None  # already applied (this node's own write)
                self.states[partition] = (state, int(stat.mzxid), int(stat.czxid))
            loading = self.loading > 0
        if not loading:
            owner._publish_topics([self.name])
        return False if state is None else None
