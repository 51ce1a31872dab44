"""Authentication and ACLs on a real node (docs/security.md), the issue's "Tested" list.

One node for the module, with CURVE keys made by the real ``sluice keys generate``
(``security_support.KeyRing``), an authorized keys directory holding the node's key and
the allowed users' keys, ``authorizer = "acl"`` and ``super_users = ["User:admin"]``.

- Handshakes: a known key works; an unknown key, a wrong server key and a plaintext
  client are refused with ``AuthenticationError`` and one clear line, through Admin,
  Producer, Consumer and the CLI (exit status 1, one line on stderr). They fail fast:
  every client here has a 60 s request timeout, and the error that ends the call is the
  handshake's, not a timeout. A key file added to the authorized directory is accepted
  without a restart (the ZAP handler of the front and of each worker reloads it), and
  one removed is refused again.
- The "no ZAP handler" trap, with raw pyzmq: a CURVE ROUTER without a ZAP handler
  accepts any client key; ``configure_server`` refuses a context without one; with
  ``ZapHandler.start`` the unknown key is refused and the known one gets its principal.
- ACLs: every operation tried without the ACL it needs is refused with the typed error
  and changes nothing, then succeeds once the ACL is created (polled: the ACLs reach the
  front and the workers without a restart). Each test acts as principals of its own,
  so the bindings of one test never decide another's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from ipc import curve, sockets
from ipc.client import Admin, Consumer, Producer
from ipc.client.transport import Channel, client_context
from ipc.errors import (
    AuthenticationError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    SluiceError,
    TopicAuthorizationFailedError,
)
from ipc.protocol import Reply
from tests.integration.conftest import REPO, SLUICE, Node, wait_until
from tests.integration.security_support import KeyRing

TIMEOUT_MS = 60_000  # long on purpose: a refusal that arrives is not a timeout
ACL_WAIT_S = 15.0  # ACL changes reach the front and the workers "within seconds"
KEY_RELOAD_WAIT_S = 15.0  # the ZAP handler checks its directory every 2 s
CLI_TIMEOUT_S = 90.0

USERS = (
    "admin",
    "alice",
    "carol",  # authorized later, by the reload test
    "mallory",  # never authorized
    "u-produce",
    "u-fetch",
    "u-topics",
    "u-groups",
    "u-victim",
    "u-cluster",
    "u-all",
    "u-deny",
    "u-meta",
)
AUTHORIZED = [u for u in USERS if u not in ("carol", "mallory")]

MISSING_KEY = "does not know this client's key"
WRONG_SERVER = "is server_public_key the node's server key"
NEEDS_CURVE = "the node requires CURVE"


# ---- the node ----------------------------------------------------------------------------------
class Secured:
    """The module's node, its keys and the authorized keys directory."""

    def __init__(self, node: Node, ring: KeyRing, authorized: Path) -> None:
        self.node = node
        self.ring = ring
        self.authorized = authorized

    def admin(self, user: str = "admin") -> Admin:
        return Admin(self.node.bootstrap, timeout_ms=TIMEOUT_MS, security=self.ring.client(user))

    def producer(self, user: str) -> Producer:
        return Producer(
            self.node.bootstrap,
            acks=1,  # not idempotent: init_producer_id is the cluster's business, not this test's
            request_timeout_ms=TIMEOUT_MS,
            max_block_ms=TIMEOUT_MS,
            delivery_timeout_ms=2 * TIMEOUT_MS,
            security=self.ring.client(user),
        )

    def consumer(self, user: str, **kw: Any) -> Consumer:
        return Consumer(
            self.node.bootstrap,
            auto_offset_reset="earliest",
            request_timeout_ms=TIMEOUT_MS,
            security=self.ring.client(user),
            **kw,
        )

    def produce(self, user: str, topic: str, *values: bytes) -> None:
        with self.producer(user) as p:
            futures = [p.send(topic, v, partition=0) for v in values]
            for f in futures:
                f.result(TIMEOUT_MS / 1000)

    def consume(self, user: str, topic: str, count: int) -> list[bytes]:
        """``count`` records of partition 0 from the beginning (fails on any error)."""
        got: list[bytes] = []
        with self.consumer(user) as c:
            c.assign([(topic, 0)])
            for _ in range(200):  # bounded: each poll waits at most 100 ms for data
                got.extend(r.value or b"" for r in c.poll(100))
                if len(got) >= count:
                    return got
        raise AssertionError(f"{user} read {len(got)} of {count} records of {topic}")

    def raw(self, user: str | None, endpoint: str, api: str, frames: Any = (), **fields: Any) -> Reply:
        """One request straight to ``endpoint`` with ``user``'s key (None: plaintext)."""
        ctx = client_context(security=self.ring.client(user) if user else None)
        ch = Channel(ctx, endpoint)
        try:
            return ch.request(api, TIMEOUT_MS / 1000, frames, **fields)
        finally:
            ch.close()
            ctx.term()

    def front(self, user: str, api: str, **fields: Any) -> Reply:
        return self.raw(user, self.node.bootstrap, api, **fields)

    def worker(self, topic: str, partition: int = 0) -> str:
        with self.admin() as a:
            md = a._call("metadata", topics=[topic], allow_auto_create=False)
        return str(md["topics"][0]["partitions"][partition]["endpoint"])

    def end_offset(self, topic: str) -> int:
        reply = self.raw("admin", self.worker(topic), "list_offsets", topic=topic, partition=0, timestamp=-1)
        reply.raise_for_error()
        return int(reply.fields["offset"])

    def topic(self, name: str, records: int = 0) -> str:
        with self.admin() as a:
            a.create_topic(name, partitions=1, exist_ok=True)
        if records:
            self.produce("admin", name, *(b"r%d" % i for i in range(records)))
        return name

    def grant(self, *bindings: dict[str, Any]) -> None:
        with self.admin() as a:
            a.create_acls(bindings)

    def revoke(self, *filters: dict[str, Any]) -> None:
        with self.admin() as a:
            a.delete_acls(filters)


def acl(
    principal: str,
    resource_type: str,
    name: str,
    operation: str,
    permission: str = "allow",
    pattern: str = "literal",
) -> dict[str, Any]:
    return {
        "principal": principal,
        "resource_type": resource_type,
        "resource_name": name,
        "pattern_type": pattern,
        "operation": operation,
        "permission": permission,
        "host": "*",
    }


def eventually(action: Callable[[], Any], what: str, timeout: float = ACL_WAIT_S) -> Any:
    """Retry ``action`` until it stops raising (an ACL change propagating); its result."""
    box: list[Any] = []

    def attempt() -> bool:
        box[:] = [action()]
        return True

    wait_until(attempt, timeout, what, interval=0.1)
    return box[0]


def refused(action: Callable[[], Any], error: type[SluiceError], *words: str) -> SluiceError:
    """``action`` fails with ``error`` whose message has ``words``."""
    with pytest.raises(error) as info:
        action()
    for w in words:
        assert w in info.value.message, f"{w!r} not in {info.value}"
    return info.value


def until_refused(action: Callable[[], Any], error: type[SluiceError], what: str) -> None:
    """Retry ``action`` until it fails with ``error`` (an ACL removal propagating)."""

    def denied() -> bool:
        try:
            action()
        except error:
            return True
        return False

    wait_until(denied, ACL_WAIT_S, what, interval=0.1)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    base = tmp_path_factory.mktemp("secured")
    ring = KeyRing.generate(base, users=USERS, nodes=[0])
    authorized = ring.authorize(base / "authorized", ["node-0", *AUTHORIZED])
    security = ring.security_table(0, authorized, authorizer="acl", super_users=["User:admin"])
    node = Node(base, node_id=0, security=security)
    node.client_security = ring.client("admin")
    try:
        node.start()
        yield Secured(node, ring, authorized)
    finally:
        with contextlib.suppress(Exception):
            node.status()  # learn the worker pids before killing
        node.kill_all()
        shutil.rmtree(os.path.dirname(node.status_path), ignore_errors=True)
        print(f"--- secured node log tail ---\n{node.log_tail(80)}")


def wrong_server_key() -> str:
    public, _ = zmq.curve_keypair()
    return public.decode()


# ---- handshakes --------------------------------------------------------------------------------
def test_known_key_works(secured: Secured) -> None:
    name = secured.topic("hs-known", records=2)
    secured.grant(acl("User:alice", "topic", name, "read"))
    with secured.admin("alice") as a:

        def listed() -> None:
            if name not in a.list_topics():
                raise SluiceError(f"{name} not listed for alice yet")

        eventually(listed, "alice to see hs-known")
    assert eventually(lambda: secured.consume("alice", name, 2), "alice reads hs-known") == [b"r0", b"r1"]


@pytest.mark.parametrize(
    ("case", "words"),
    [("unknown key", MISSING_KEY), ("wrong server key", WRONG_SERVER), ("plaintext", NEEDS_CURVE)],
)
def test_refused_handshakes_fail_fast(secured: Secured, case: str, words: str) -> None:
    ring = secured.ring
    security = {
        "unknown key": ring.client("mallory"),
        "wrong server key": ring.client("alice", server=wrong_server_key()),
        "plaintext": None,
    }[case]
    b = secured.node.bootstrap
    # a plaintext client sees the mechanism mismatch one way or the other (a race in
    # libzmq): either way it must be told the node requires CURVE
    for _ in range(5 if case == "plaintext" else 1):
        with Admin(b, timeout_ms=TIMEOUT_MS, security=security) as a:
            refused(a.list_topics, AuthenticationError, words, b)

    def produce() -> None:
        with Producer(b, request_timeout_ms=TIMEOUT_MS, max_block_ms=TIMEOUT_MS, security=security) as p:
            p.send("hs-anything", b"x").result(TIMEOUT_MS / 1000)

    refused(produce, AuthenticationError, words)

    def consume() -> None:
        with Consumer(b, request_timeout_ms=TIMEOUT_MS, security=security) as c:
            c.assign([("hs-anything", 0)])
            c.poll(TIMEOUT_MS)

    refused(consume, AuthenticationError, words)


def test_cli_refused_handshakes(secured: Secured) -> None:
    ring, b = secured.ring, secured.node.bootstrap
    base = [*SLUICE, "topics", "list", "-b", b, "--timeout-ms", str(TIMEOUT_MS)]
    server = ["--server-key", str(ring.server_public)]
    runs: dict[str, tuple[list[str], dict[str, str]]] = {
        "unknown key": ([*base, *server, "--secret-key-file", str(ring.secret("mallory"))], {}),
        "wrong server key": (
            [*base, "--server-key", wrong_server_key(), "--secret-key-file", str(ring.secret("alice"))],
            {},
        ),
        "plaintext": (base, {}),
        "known key from the environment": (
            base,
            {"SLUICE_SERVER_KEY": str(ring.server_public), "SLUICE_SECRET_KEY_FILE": str(ring.secret("admin"))},
        ),
    }
    procs = {}
    try:
        for what, (argv, extra) in runs.items():
            env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
            env.pop("SLUICE_BOOTSTRAP", None)
            if not extra:
                env.pop("SLUICE_SERVER_KEY", None)
                env.pop("SLUICE_SECRET_KEY_FILE", None)
            procs[what] = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
            )
        done = {what: (p, *p.communicate(timeout=CLI_TIMEOUT_S)) for what, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
    for what, words in (("unknown key", MISSING_KEY), ("wrong server key", WRONG_SERVER), ("plaintext", NEEDS_CURVE)):
        p, out, err = done[what]
        lines = err.decode().splitlines()
        assert p.returncode == 1, f"{what}: exit {p.returncode}, stderr {err!r}"
        assert len(lines) == 1, f"{what}: expected one line on stderr, got {lines}"
        assert lines[0].startswith("sluice topics: error: SASL_AUTHENTICATION_FAILED: "), lines[0]
        assert words in lines[0], lines[0]
        assert out == b""
    p, out, err = done["known key from the environment"]
    assert p.returncode == 0, err.decode()


def test_key_added_later_is_accepted_without_restart(secured: Secured) -> None:
    node, ring = secured.node, secured.ring
    assert node.proc is not None
    supervisor = node.proc.pid
    name = secured.topic("hs-reload")
    worker = secured.worker(name)
    worker_pid = node.worker_pid(name, 0)
    with secured.admin("carol") as a:
        refused(a.list_topics, AuthenticationError, MISSING_KEY)
    offsets = {"topic": name, "partition": 0, "timestamp": -1}
    refused(lambda: secured.raw("carol", worker, "list_offsets", **offsets), AuthenticationError, MISSING_KEY)

    ring.authorize(secured.authorized, ["carol"])  # the directory's mtime changes

    def front_accepts() -> bool:
        with secured.admin("carol") as a:
            a.list_topics()  # AuthenticationError until the front's ZAP handler reloads
        return True

    wait_until(front_accepts, KEY_RELOAD_WAIT_S, "the front to accept carol's new key", interval=0.2)

    def worker_accepts() -> bool:  # the handshake passes; carol has no ACL on the topic
        reply = secured.raw("carol", worker, "list_offsets", **offsets)
        return isinstance(reply.error, TopicAuthorizationFailedError)

    wait_until(worker_accepts, KEY_RELOAD_WAIT_S, "the worker to accept carol's new key", interval=0.2)

    (secured.authorized / "carol.key").unlink()

    def front_refuses() -> bool:
        with secured.admin("carol") as a:
            try:
                a.list_topics()
            except AuthenticationError:
                return True
        return False

    wait_until(front_refuses, KEY_RELOAD_WAIT_S, "the front to refuse carol's removed key", interval=0.2)
    assert node.proc.poll() is None and node.proc.pid == supervisor, "the node restarted"
    assert node.worker_pid(name, 0) == worker_pid, "the worker restarted"


def test_without_zap_handler_curve_accepts_any_key(tmp_path: Path) -> None:
    """libzmq's trap (docs/security.md, pitfalls 12), and what ipc.curve does about it."""
    server = curve.KeyPair(*zmq.curve_keypair())
    stranger = zmq.curve_keypair()
    ring = KeyRing.generate(tmp_path, users=["alice"], nodes=[])
    authorized = ring.authorize(tmp_path / "authorized", ["alice"])
    alice = curve.load_key_file(str(ring.secret("alice")), secret=True)

    def dealer(ctx: zmq.Context[Any], endpoint: str, public: bytes, secret: bytes) -> zmq.Socket[Any]:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        curve.configure_client(s, curve.ClientKeys(server.public, public, secret))
        s.connect(endpoint)
        return s  # type: ignore[no-any-return]

    # 1. the trap is real: a CURVE server with no ZAP handler lets a stranger in
    trap = zmq.Context()
    try:
        router = trap.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.CURVE_SERVER, 1)
        router.setsockopt(zmq.CURVE_SECRETKEY, server.secret)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        d = dealer(trap, f"tcp://127.0.0.1:{port}", *stranger)
        d.send(b"let me in")
        assert router.poll(10_000), "the stranger's message never arrived"
        assert router.recv_multipart()[1] == b"let me in"
        d.close(0)
        router.close(0)
    finally:
        trap.destroy(0)

    ctx = zmq.Context()
    handler: curve.ZapHandler | None = None
    try:
        # 2. ipc.curve refuses to make a CURVE server in a context without a ZAP handler
        sock = sockets.router(ctx)
        with pytest.raises(RuntimeError, match="ZAP handler"):
            curve.configure_server(sock, server)
        sock.close(0)
        sockets.secure(ctx, server=server)
        with pytest.raises(RuntimeError, match="ZAP handler"):
            sockets.bind_router(ctx, "tcp://127.0.0.1:0")

        # 3. with the handler: the stranger is refused, alice gets in as User:alice
        handler = curve.ZapHandler.start(ctx, str(authorized))
        router, endpoint = sockets.bind_router(ctx, "tcp://127.0.0.1:0")
        d1 = dealer(ctx, endpoint, *stranger)
        monitor = d1.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        d1.send(b"let me in")
        assert monitor.poll(10_000), "the stranger's handshake was not refused"
        event = recv_monitor_message(monitor)
        assert event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH and event["value"] == 400
        d2 = dealer(ctx, endpoint, alice.public, alice.secret)
        d2.send(b"alice here")
        assert router.poll(10_000), "alice's message never arrived"
        frames = router.recv_multipart(copy=False)
        assert frames[1].bytes == b"alice here"
        assert frames[1].get("User-Id") == "User:alice"
        assert not router.poll(0), "the stranger's message arrived"
        assert handler.refused >= 1 and handler.accepted >= 1
        d1.disable_monitor()
        for s in (monitor, d1, d2, router):
            s.close(0)
    finally:
        if handler is not None:
            handler.stop()
        ctx.destroy(0)


def test_refusal_before_the_first_request_is_not_missed(secured: Secured) -> None:
    """libzmq never retries a refused handshake: a channel whose handshake was refused
    before its first request must still fail that request at once (regression)."""
    ctx = client_context(security=secured.ring.client("mallory"))
    ch = Channel(ctx, secured.node.bootstrap)
    try:
        # refused, libzmq drops the connection's pipe: the DEALER can no longer send
        wait_until(lambda: not ch.sock.poll(0, zmq.POLLOUT), 15.0, "the node to refuse mallory's handshake")
        refused(lambda: ch.request("list_topics", TIMEOUT_MS / 1000), AuthenticationError, MISSING_KEY)
    finally:
        ch.close()
        ctx.term()


# ---- ACLs --------------------------------------------------------------------------------------
def test_produce_needs_write(secured: Secured) -> None:
    t, who = secured.topic("acl-produce"), "User:u-produce"
    secured.grant(acl(who, "topic", t, "describe"))  # sees the topic, may not write it
    eventually(lambda: secured.raw("u-produce", secured.node.bootstrap, "list_topics"), "u-produce's key")
    refused(lambda: secured.produce("u-produce", t, b"no"), TopicAuthorizationFailedError, "Write", t)
    assert secured.end_offset(t) == 0

    secured.grant(acl(who, "topic", t, "write"))
    eventually(lambda: secured.produce("u-produce", t, b"yes"), "u-produce to be allowed to write")
    assert secured.end_offset(t) == 1

    secured.revoke({"principal": who, "operation": "write"})  # revoked live, at the worker too
    until_refused(lambda: secured.produce("u-produce", t, b"again"), TopicAuthorizationFailedError, "WRITE revoked")
    end = secured.end_offset(t)
    refused(lambda: secured.produce("u-produce", t, b"again"), TopicAuthorizationFailedError, "Write")
    assert secured.end_offset(t) == end


def test_fetch_needs_read(secured: Secured) -> None:
    t, who = secured.topic("acl-fetch", records=3), "User:u-fetch"
    refused(lambda: secured.consume("u-fetch", t, 3), TopicAuthorizationFailedError, "Describe", t)
    secured.grant(acl(who, "topic", t, "describe"))
    worker = secured.worker(t)

    def raw_fetch() -> Reply:
        return secured.raw("u-fetch", worker, "fetch", topic=t, partition=0, offset=0, max_wait_ms=0)

    reply = raw_fetch()
    assert isinstance(reply.error, TopicAuthorizationFailedError) and "may not Read" in reply.error.message
    assert reply.frames == []

    secured.grant(acl(who, "topic", t, "read"))
    assert eventually(lambda: secured.consume("u-fetch", t, 3), "u-fetch to be allowed to read") == [
        b"r0",
        b"r1",
        b"r2",
    ]


def test_topic_administration_needs_acls(secured: Secured) -> None:
    who, t = "User:u-topics", "ut-new"
    with secured.admin() as root:
        refused(
            lambda: _with(secured.admin("u-topics"), lambda a: a.create_topic(t)),
            TopicAuthorizationFailedError,
            "Create",
            t,
        )
        assert t not in root.list_topics()
        secured.grant(acl(who, "topic", "ut-", "create", pattern="prefixed"))
        eventually(lambda: _with(secured.admin("u-topics"), lambda a: a.create_topic(t)), "u-topics to create")
        assert t in root.list_topics()

        # describe needs describe and describe_configs
        refused(lambda: _with(secured.admin("u-topics"), lambda a: a.describe_topic(t)), TopicAuthorizationFailedError)
        secured.grant(acl(who, "topic", "ut-", "describe", pattern="prefixed"))
        until_refused(
            lambda: _with(secured.admin("u-topics"), lambda a: _describe_configs_refused(a, t)),
            TopicAuthorizationFailedError,
            "DescribeConfigs to be the missing action",
        )
        secured.grant(acl(who, "topic", "ut-", "describe_configs", pattern="prefixed"))
        eventually(lambda: _with(secured.admin("u-topics"), lambda a: a.describe_topic(t)), "u-topics to describe")

        # alter config
        before = root.describe_topic(t)["config"]
        refused(
            lambda: _with(secured.admin("u-topics"), lambda a: a.alter_topic(t, config={"retention.ms": 1234})),
            TopicAuthorizationFailedError,
            "AlterConfigs",
        )
        assert root.describe_topic(t)["config"] == before
        secured.grant(acl(who, "topic", "ut-", "alter_configs", pattern="prefixed"))
        eventually(
            lambda: _with(secured.admin("u-topics"), lambda a: a.alter_topic(t, config={"retention.ms": 1234})),
            "u-topics to alter the configuration",
        )
        assert int(root.describe_topic(t)["config"]["retention.ms"]) == 1234

        # delete
        refused(
            lambda: _with(secured.admin("u-topics"), lambda a: a.delete_topic(t)),
            TopicAuthorizationFailedError,
            "Delete",
        )
        assert t in root.list_topics()
        secured.grant(acl(who, "topic", "ut-", "delete", pattern="prefixed"))
        eventually(lambda: _with(secured.admin("u-topics"), lambda a: a.delete_topic(t)), "u-topics to delete")
        wait_until(lambda: t not in root.list_topics(), 30.0, f"{t} to be deleted")


def _with(admin: Admin, action: Callable[[Admin], Any]) -> Any:
    with admin:
        return action(admin)


def _describe_configs_refused(a: Admin, t: str) -> None:
    """Raise the refusal only once it is about DescribeConfigs (Describe is granted)."""
    try:
        a.describe_topic(t)
    except TopicAuthorizationFailedError as exc:
        if "DescribeConfigs" in exc.message:
            raise
        return
    raise AssertionError("describe_topic allowed without describe_configs")


def committed(secured: Secured, group: str, topic: str) -> int:
    reply = secured.front("admin", "offset_fetch", group=group, partitions=[[topic, 0]])
    reply.raise_for_error()
    return int(reply.fields["offsets"][0]["offset"])


def test_consumer_group_needs_group_acls(secured: Secured) -> None:
    t, g, who = secured.topic("acl-group", records=3), "ug-group", "User:u-groups"
    secured.grant(acl(who, "topic", t, "read"))

    def consume_in_group() -> list[bytes]:
        got: list[bytes] = []
        with secured.consumer("u-groups", group_id=g, enable_auto_commit=False) as c:
            c.subscribe([t])
            for _ in range(300):  # bounded; each poll waits at most 100 ms
                got.extend(r.value or b"" for r in c.poll(100))
                if len(got) >= 3:
                    c.commit()
                    return got
        raise AssertionError(f"read {len(got)} of 3 records in group {g}")

    refused(consume_in_group, GroupAuthorizationFailedError, g)
    assert committed(secured, g, t) == -1
    secured.grant(acl(who, "group", g, "read"))
    assert eventually(consume_in_group, "u-groups to join, read and commit") == [b"r0", b"r1", b"r2"]
    assert committed(secured, g, t) == 3


def test_offset_commit_without_member_needs_acls(secured: Secured) -> None:
    """The issue's attack: an offset_commit with no member id (the way offsets are reset)
    by a principal without the group's ACL must not move a group's offsets back to 0."""
    t, secret, g, who = (
        secured.topic("acl-victim", records=5),
        secured.topic("acl-victim-secret"),
        "uv-victim",
        "User:u-victim",
    )
    with secured.admin() as root:
        root.alter_group_offsets(g, {(t, 0): 5, (secret, 0): 0})
    assert committed(secured, g, t) == 5
    secured.grant(acl(who, "topic", t, "read"))

    def reset() -> None:
        with secured.admin("u-victim") as a:
            a.alter_group_offsets(g, {(t, 0): 0})

    refused(reset, GroupAuthorizationFailedError, g)  # the client finds the coordinator first: Describe
    attack = secured.front("u-victim", "offset_commit", group=g, member_id="", generation=-1, offsets=[_commit(t, 0)])
    assert isinstance(attack.error, GroupAuthorizationFailedError), attack
    assert f"User:u-victim may not Read group '{g}'" in attack.error.message
    assert committed(secured, g, t) == 5

    secured.grant(acl(who, "group", g, "read"))
    # READ on the group is not enough for a topic it may not read
    reply = eventually(
        lambda: _error_of(
            secured.front("u-victim", "offset_commit", group=g, offsets=[_commit(secret, 0)]), "group READ"
        ),
        "u-victim's group ACL",
    )
    assert isinstance(reply, TopicAuthorizationFailedError) and secret in reply.message
    assert committed(secured, g, secret) == 0

    # deleting the group needs DELETE on it
    def delete() -> None:
        with secured.admin("u-victim") as a:
            a.delete_group(g)

    refused(delete, GroupAuthorizationFailedError, "Delete", g)
    assert committed(secured, g, t) == 5
    secured.grant(acl(who, "group", g, "delete"))
    eventually(delete, "u-victim to delete the group")
    assert committed(secured, g, t) == -1


def _commit(topic: str, offset: int) -> dict[str, Any]:
    return {"topic": topic, "partition": 0, "offset": offset, "metadata": ""}


def _error_of(reply: Reply, needs: str) -> SluiceError:
    """The reply's error, once it is not the one the ACL named by ``needs`` removes."""
    if isinstance(reply.error, GroupAuthorizationFailedError):
        raise SluiceError(f"still refused for want of {needs}")
    assert reply.error is not None, "allowed"
    return reply.error


def test_cluster_apis_need_cluster_describe(secured: Secured) -> None:
    who = "User:u-cluster"

    def calls(a: Admin) -> None:
        a.cluster_status()
        a.status()
        a.list_groups()

    for call in (lambda a: a.cluster_status(), lambda a: a.status(), lambda a: a.list_groups()):
        refused(
            lambda call=call: _with(secured.admin("u-cluster"), call),  # type: ignore[misc]
            ClusterAuthorizationFailedError,
            "Describe",
            "kafka-cluster",
        )
    refused(
        lambda: _with(secured.admin("u-cluster"), lambda a: a.describe_acls()),
        ClusterAuthorizationFailedError,
        "Describe",
    )
    # changing ACLs needs ALTER on the cluster (and u-cluster is no super user)
    mine = acl(who, "topic", "*", "all")
    refused(
        lambda: _with(secured.admin("u-cluster"), lambda a: a.create_acls([mine])),
        ClusterAuthorizationFailedError,
        "Alter",
    )
    with secured.admin() as root:
        assert root.describe_acls({"principal": who}) == []
    secured.grant(acl(who, "cluster", "kafka-cluster", "describe"))
    eventually(lambda: _with(secured.admin("u-cluster"), calls), "u-cluster to describe the cluster")
    refused(
        lambda: _with(secured.admin("u-cluster"), lambda a: a.create_acls([mine])),
        ClusterAuthorizationFailedError,
        "Alter",
    )


def test_cluster_actions_are_for_nodes_only(secured: Secured) -> None:
    """alter_isr and replica fetches (CLUSTER_ACTION) are refused to every user, even one
    allowed ALL on the cluster and a super user; reassign needs ALTER on the cluster."""
    t, who = secured.topic("acl-isr", records=1), "User:u-all"
    with secured.admin() as root:
        before = next(p for p in root.cluster_status()["partitions"] if p["topic"] == t)
    alter_isr = {"topic": t, "partition": 0, "leader": 0, "leader_epoch": before["leader_epoch"], "isr": {"0": 0}}
    reassign = {"topic": t, "partition": 0, "replicas": [0]}
    forged = {"topic": t, "partition": 0, "offset": 0, "replica_id": 7, "max_wait_ms": 0}
    worker = secured.worker(t)

    reply = secured.front("u-all", "reassign", **reassign)
    assert isinstance(reply.error, ClusterAuthorizationFailedError) and "may not Alter cluster" in reply.error.message
    secured.grant(acl(who, "cluster", "kafka-cluster", "all"), acl(who, "topic", "*", "all"))
    eventually(
        lambda: _not_refused(secured.front("u-all", "reassign", **reassign), ClusterAuthorizationFailedError),
        "u-all to be allowed to reassign",
    )
    for user in ("u-all", "admin"):
        reply = secured.front(user, "alter_isr", **alter_isr)
        assert isinstance(reply.error, ClusterAuthorizationFailedError), (user, reply)
        assert "ClusterAction" in reply.error.message
        reply = secured.raw(user, worker, "fetch", **forged)
        assert isinstance(reply.error, ClusterAuthorizationFailedError), (user, reply)
        assert "ClusterAction" in reply.error.message and reply.frames == []
    with secured.admin() as root:
        after = next(p for p in root.cluster_status()["partitions"] if p["topic"] == t)
    assert (after["leader"], after["leader_epoch"], after["isr"]) == (
        before["leader"],
        before["leader_epoch"],
        before["isr"],
    )
    # the same user's ordinary fetch works: it was the replica id that was refused
    reply = secured.raw("u-all", worker, "fetch", topic=t, partition=0, offset=0, max_wait_ms=0)
    assert reply.error is None and reply.frames


def _not_refused(reply: Reply, error: type[SluiceError]) -> Reply:
    if isinstance(reply.error, error):
        raise reply.error
    return reply


def test_metadata_lists_only_describable_topics(secured: Secured) -> None:
    who = "User:u-meta"
    for name in ("vis-a", "vis-b", "hid-c"):
        secured.topic(name)
    secured.grant(acl(who, "topic", "vis-", "describe", pattern="prefixed"))

    def listed() -> list[str]:
        with secured.admin("u-meta") as a:
            names = a.list_topics()
        if names != ["vis-a", "vis-b"]:
            raise SluiceError(f"u-meta lists {names}")
        return names

    eventually(listed, "u-meta to see the vis- topics")
    md = secured.front("u-meta", "metadata").fields
    assert sorted(t["topic"] for t in md["topics"]) == ["vis-a", "vis-b"]
    md = secured.front("u-meta", "metadata", topics=["hid-c", "vis-new"], allow_auto_create=True).fields
    errors = {t["topic"]: t["error"]["code"] for t in md["topics"]}
    assert errors == {"hid-c": "TOPIC_AUTHORIZATION_FAILED", "vis-new": "UNKNOWN_TOPIC_OR_PARTITION"}
    with secured.admin() as root:
        assert "vis-new" not in root.list_topics()  # no CREATE: never auto-created


def test_deny_overrides_allow(secured: Secured) -> None:
    who = "User:u-deny"
    x, y = secured.topic("deny-x", records=1), secured.topic("deny-y", records=1)
    secured.grant(
        acl(who, "topic", "deny-", "all", pattern="prefixed"),
        acl(who, "topic", x, "write", permission="deny"),
    )
    eventually(lambda: secured.produce("u-deny", y, b"ok"), "u-deny to write deny-y")
    refused(lambda: secured.produce("u-deny", x, b"no"), TopicAuthorizationFailedError, "Write", x)
    assert secured.end_offset(x) == 1
    assert secured.consume("u-deny", x, 1) == [b"r0"]  # a denied WRITE does not deny READ
    # a DENY for every user (User:*) overrides u-deny's own ALLOW
    secured.grant(acl("User:*", "topic", y, "read", permission="deny"))
    until_refused(lambda: secured.consume("u-deny", y, 1), TopicAuthorizationFailedError, "User:* DENY of read")


def test_super_user_needs_no_acls(secured: Secured) -> None:
    t, g = "super-t", "super-g"
    with secured.admin() as root:
        assert root.describe_acls({"principal": "User:admin"}) == []
        root.create_topic(t, partitions=1)
        root.alter_topic(t, config={"retention.ms": 60_000})
        assert int(root.describe_topic(t)["config"]["retention.ms"]) == 60_000
        secured.produce("admin", t, b"a", b"b")
        assert secured.consume("admin", t, 2) == [b"a", b"b"]
        root.alter_group_offsets(g, {(t, 0): 2})
        assert committed(secured, g, t) == 2
        assert any(x["group"] == g for x in root.list_groups())
        root.cluster_status()
        root.status()
        b = acl("User:nobody", "topic", t, "read")
        root.create_acls([b])
        assert [x.to_json() for x in root.describe_acls({"principal": "User:nobody"})] == [b]
        root.delete_acls([{"principal": "User:nobody"}])
        root.delete_group(g)
        root.delete_topic(t)
        wait_until(lambda: t not in root.list_topics(), 30.0, f"{t} to be deleted")
