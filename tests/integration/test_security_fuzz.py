"""Fuzzing the authenticated request pipeline (docs/security.md).

1. In process, with hypothesis: ``ipc.server.RequestPipeline`` with the node's ``Gate``
   (appliance/gate.py), its authorizer enabled and random ACLs, is given random messages
   (garbage frames, JSON soup, well-formed requests of every API with random fields)
   from random principals and hosts, as the ZAP user id and peer address of each
   connection. For every message: ``handle`` never raises, exactly one reply goes out
   (every handler here answers at once) and it parses; a request is dispatched to its
   handler only if an independent, naive reading of the ACLs allows every action
   ``ipc.acl.required`` lists for it (and always when it does); a principal with no
   ACLs (``User:nobody``, ``User:ANONYMOUS``) reaches no handler but ``metadata`` and
   ``list_topics``, which filter what they answer themselves; CLUSTER_ACTION requests
   (``alter_isr``, a fetch with a ``replica_id``) reach a handler only from a ``Node``.
2. On a real node with CURVE keys and ``authorizer = "acl"``: garbage over a
   CURVE-authenticated connection (a user without ACLs), over plaintext connections
   (refused at the handshake) and as raw TCP bytes (broken ZMTP greetings), at the front
   and at a partition worker. The node's pids do not change, no traceback is logged,
   the authenticated peer gets exactly one error reply per message (no success but
   metadata and list_topics, which list nothing), the partition's log is unchanged, an
   unknown key is still refused and a legitimate client still works.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import zmq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from appliance.gate import Gate
from appliance.security_config import SecurityConfig
from ipc import sockets
from ipc.acl import OPERATIONS, AclBinding, Operation, ResourceType, required
from ipc.client import Admin
from ipc.client.transport import client_context
from ipc.errors import AuthenticationError, InvalidRequestError, SluiceError
from ipc.protocol import FRONT_APIS, SCHEMAS, VERSION, WORKER_APIS, Request, Response, parse_request
from ipc.records import encode_batch
from ipc.server import RequestPipeline
from tests.integration.conftest import Node, wait_until
from tests.integration.security_support import KeyRing

SUPER = "User:admin"
USERS_WITH_ACLS = ("User:alice", "User:bob")
PRINCIPALS = (SUPER, "Node:1", *USERS_WITH_ACLS, "User:nobody", "")  # "": no ZAP user id (ANONYMOUS)
HOSTS = ("127.0.0.1", "10.0.0.5", "::1", "")
TOPICS = ("t1", "t2", "tx", "__consumer_offsets")
GROUPS = ("g1", "g2")
UNFILTERED = frozenset({"metadata", "list_topics"})  # dispatched without an ACL, by design
AUTH_CODES = {"TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED"}
ALL_APIS = sorted(FRONT_APIS | WORKER_APIS)


# ---- part 1: the pipeline in process --------------------------------------------------------------
class FakeFrame:
    """A header frame as a CURVE connection delivers it: bytes plus the connection's
    ``User-Id`` (the ZAP handler's principal) and ``Peer-Address``."""

    def __init__(self, data: bytes, props: dict[str, str]) -> None:
        self.bytes = data
        self.buffer = memoryview(data)
        self._props = props

    def get(self, name: str) -> str:
        if name not in self._props:
            raise KeyError(name)
        return self._props[name]


@st.composite
def bindings(draw: st.DrawFn) -> AclBinding:
    rtype = draw(st.sampled_from(list(ResourceType)))
    ops = sorted(o.value for o in OPERATIONS[rtype] if o is not Operation.CLUSTER_ACTION)
    pattern = "literal"
    if rtype is ResourceType.CLUSTER:
        name = "kafka-cluster"
    else:
        pool = TOPICS[:3] if rtype is ResourceType.TOPIC else GROUPS
        name = draw(st.sampled_from([*pool, "*", "t", "g"]))
        if name in ("t", "g") or (name != "*" and draw(st.booleans())):
            pattern = "prefixed"
    return AclBinding.from_json(
        {
            "principal": draw(st.sampled_from(USERS_WITH_ACLS)),  # never User:*: nobody must stay without ACLs
            "resource_type": rtype.value,
            "resource_name": name,
            "pattern_type": pattern,
            "operation": draw(st.sampled_from(ops)),
            "permission": draw(st.sampled_from(["allow", "allow", "deny"])),
            "host": draw(st.sampled_from(["*", "*", "10.0.0.5"])),
        }
    )


def _field_value(name: str, api: str) -> st.SearchStrategy[Any]:
    spec = SCHEMAS[api][name]
    typ = spec.type if isinstance(spec.type, type) else spec.type[0]
    specific: dict[str, st.SearchStrategy[Any]] = {
        "topic": st.sampled_from(TOPICS),
        "group": st.sampled_from(GROUPS),
        "topics": st.lists(st.sampled_from(TOPICS), max_size=3),
        "partition": st.integers(0, 3),
        "replica_id": st.sampled_from([-1, -1, 0, 1, 7]),
        "isr": st.just({"0": 0, "1": 1}),
        "replicas": st.just([0, 1]),
        "config": st.sampled_from([{}, {"retention.ms": "1000"}]),
        "offsets": st.lists(
            st.fixed_dictionaries(
                {"topic": st.sampled_from(TOPICS), "partition": st.integers(0, 2), "offset": st.integers(0, 99)}
            ).map(lambda d: {**d, "metadata": ""}),
            max_size=3,
        ),
        "acls": st.lists(bindings().map(lambda b: b.to_json()), max_size=2),
        "filter": st.just({}),
        "filters": st.just([{}]),
        "timestamp": st.sampled_from([-2, -1, 0]),
        "acks": st.sampled_from([0, 1, "all"]),
    }
    if name == "partitions" and typ is list:
        return st.lists(st.tuples(st.sampled_from(TOPICS), st.integers(0, 2)).map(list), max_size=3)
    if name in specific:
        return specific[name]
    if typ is bool:
        return st.booleans()
    if typ is int:
        return st.integers(-1, 100)
    if typ is str:
        return st.text(max_size=8)
    if typ is list:
        return st.just([])
    return st.just({})


@st.composite
def request_header(draw: st.DrawFn) -> bytes:
    """A request of a known API with plausible fields, sometimes bent out of shape."""
    api = draw(st.sampled_from(ALL_APIS))
    obj: dict[str, Any] = {"api": api, "v": VERSION, "id": draw(st.integers(0, 2**40))}
    for name, spec in SCHEMAS[api].items():
        if spec.required or draw(st.booleans()):
            obj[name] = draw(_field_value(name, api))
    mutation = draw(st.sampled_from(["none"] * 6 + ["drop", "retype", "version", "extra"]))
    if mutation == "drop" and len(obj) > 3:
        obj.pop(draw(st.sampled_from(sorted(k for k in obj if k not in ("api", "v", "id")))))
    elif mutation == "retype":
        key = draw(st.sampled_from(sorted(obj)))
        obj[key] = draw(
            st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.lists(st.integers(-5, 5), max_size=2))
        )
    elif mutation == "version":
        obj["v"] = draw(st.integers(-3, 5))
    elif mutation == "extra":
        obj[draw(st.text(max_size=6))] = draw(st.integers(-(2**63), 2**63 - 1))
    return orjson.dumps(obj)


json_soup = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
).map(orjson.dumps)

headers = st.one_of(request_header(), request_header(), st.binary(max_size=64), json_soup)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, str, list[bytes]]:
    principal = draw(st.sampled_from(PRINCIPALS))
    host = draw(st.sampled_from(HOSTS))
    body = [draw(headers)] if draw(st.integers(0, 9)) else []  # sometimes no header at all
    body += draw(st.lists(st.binary(max_size=32), max_size=2))
    return principal, host, body


IMPLIED_ALLOW = {
    Operation.DESCRIBE: {Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER},
    Operation.DESCRIBE_CONFIGS: {Operation.ALTER_CONFIGS},
}


def naive_allowed(acls: list[AclBinding], principal: str, host: str, action: tuple[Any, str, Operation]) -> bool:
    """Kafka's rules, read straight off docs/security.md, over a plain list of bindings."""
    rtype, name, op = action
    if op is Operation.CLUSTER_ACTION:
        return principal.startswith("Node:")
    if principal.startswith("Node:") or principal == SUPER:
        return True
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass

    def applies(b: AclBinding, ops: set[Operation]) -> bool:
        literal = b.pattern_type.value == "literal"
        covers = b.resource_name == name or (literal and b.resource_name == "*")
        covers = covers or (not literal and name.startswith(b.resource_name))
        return (
            b.principal in (principal, "User:*")
            and b.host in ("*", host)
            and b.resource_type is rtype
            and covers
            and b.operation in ops
        )

    if any(b.permission.value == "deny" and applies(b, {op, Operation.ALL}) for b in acls):
        return False
    allow_ops = {op, Operation.ALL, *IMPLIED_ALLOW.get(op, ())}
    return any(b.permission.value == "allow" and applies(b, allow_ops) for b in acls)


def naive_permits(acls: list[AclBinding], principal: str, host: str, api: str, fields: dict[str, Any]) -> bool | None:
    """Whether the request's every action is allowed; None where the rule has an
    alternative the naive reading does not model (init_producer_id)."""
    if api == "init_producer_id" and principal not in (SUPER,) and not principal.startswith("Node:"):
        return None
    for action in required(api, fields):
        rtype, name, op = action
        ok = naive_allowed(acls, principal, host, action)
        if not ok and rtype is ResourceType.TOPIC and op is Operation.CREATE:
            ok = naive_allowed(acls, principal, host, (ResourceType.CLUSTER, "kafka-cluster", Operation.CREATE))
        if not ok:
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    acls=st.lists(bindings(), max_size=8),
    batch=st.lists(messages(), min_size=1, max_size=12),
    failing=st.sampled_from(["ok", "sluice_error", "crash"]),
)
def test_pipeline_never_dispatches_without_acls(
    acls: list[AclBinding], batch: list[tuple[str, str, list[bytes]]], failing: str
) -> None:
    security = SecurityConfig(
        server_key_file="server.key_secret",  # never loaded: the gate only reads User-Id
        node_key_file="node-0.key_secret",
        authorized_keys_dir="authorized",
        authorizer="acl",
        super_users=(SUPER,),
    )
    gate = Gate(security, acls)
    sent: list[tuple[bytes, list[Any]]] = []
    dispatched: list[tuple[str, str]] = []

    def handler(req: Request) -> Response:
        dispatched.append((req.api, str(req.principal)))
        if failing == "sluice_error":
            raise InvalidRequestError("the handler refuses")
        if failing == "crash" and req.api in ("produce", "describe_group", "metadata"):
            raise RuntimeError("a handler bug")
        return Response({"ok": True})

    pipeline = RequestPipeline(
        "fuzz",
        lambda peer, frames: sent.append((peer, frames)),
        {api: handler for api in ALL_APIS},
        gate.authenticate,
        gate.authorize,
    )
    for principal, host, body in batch:
        props = {"Peer-Address": host, **({"User-Id": principal} if principal else {})}
        peer = f"{principal}|{host}".encode()  # one connection per (principal, host)
        frames: list[Any] = [peer]
        if body:
            frames += [FakeFrame(body[0], props), *body[1:]]
        before_sent, before_calls = len(sent), len(dispatched)
        pipeline.handle(frames)  # never raises

        assert len(sent) == before_sent + 1, f"{len(sent) - before_sent} replies to one message"
        reply_peer, reply = sent[-1]
        assert reply_peer == peer
        header = orjson.loads(reply[0])
        assert isinstance(header, dict) and isinstance(header.get("id"), int)
        called = len(dispatched) > before_calls
        who = principal or "User:ANONYMOUS"
        try:
            req = parse_request([body[0], *body[1:]] if body else [], frozenset(ALL_APIS))
        except SluiceError:
            assert not called, "an unparsable request reached a handler"
            continue
        if who in ("User:nobody", "User:ANONYMOUS"):
            assert not called or req.api in UNFILTERED, f"{who} reached the {req.api} handler without any ACL"
        if called and any(op is Operation.CLUSTER_ACTION for _, _, op in required(req.api, req.fields)):
            assert who.startswith("Node:"), f"{who} reached {req.api} (a cluster action)"
        expected = naive_permits(acls, who, host, req.api, req.fields)
        if expected is not None:
            assert called == expected, f"{who}@{host} {req.api} {req.fields}: dispatched={called}, ACLs say {expected}"
        event(f"{'dispatched' if called else 'refused'}: {'user with ACLs' if who in USERS_WITH_ACLS else who}")
        error = header.get("error")
        if not called:
            assert error is not None and error["code"] in AUTH_CODES, header
            assert who in error["message"]


# ---- part 2: a real node -------------------------------------------------------------------------
FUZZ_TOPIC = "fz"
CASES = 250  # per target and peer
SEED = 20260


class FuzzNode:
    def __init__(self, node: Node, ring: KeyRing) -> None:
        self.node = node
        self.ring = ring

    def admin(self) -> Admin:
        return Admin(self.node.bootstrap, timeout_ms=60_000, security=self.ring.client("admin"))


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    base = tmp_path_factory.mktemp("fuzz-secured")
    ring = KeyRing.generate(base, users=["admin", "alice", "mallory"], nodes=[0])
    authorized = ring.authorize(base / "authorized", ["node-0", "admin", "alice"])
    security = ring.security_table(0, authorized, authorizer="acl", super_users=["User:admin"])
    node = Node(base, node_id=0, security=security)
    node.client_security = ring.client("admin")
    try:
        node.start()
        yield FuzzNode(node, ring)
    finally:
        with contextlib.suppress(Exception):
            node.status()
        node.kill_all()
        shutil.rmtree(os.path.dirname(node.status_path), ignore_errors=True)
        print(f"--- fuzzed node log tail ---\n{node.log_tail(60)}")


def garbage(rng: random.Random, topic: str) -> list[bytes]:
    """One hostile message: random frames, JSON soup, or a real API with bent fields."""
    kind = rng.randrange(6)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 4))]
    if kind == 1:
        return [orjson.dumps(rng.choice([None, [], {}, 1, "x", {"api": 7}, {"id": -1}, {"api": "produce"}]))]
    api = rng.choice(ALL_APIS)
    obj: dict[str, Any] = {"api": api, "v": VERSION, "id": rng.randrange(1, 2**31)}
    wild = [topic, 0, -1, 7, 2**40, "", "x" * 300, [], {}, [[topic, 0]], {"0": 0}, True, None]
    for name in SCHEMAS[api]:
        obj[name] = rng.choice(wild) if kind == 2 else _plausible(name, topic, rng)
    frames = [orjson.dumps(obj)]
    if api == "produce":
        batch = bytearray(encode_batch([rng.randbytes(16)]))
        if kind == 3:
            batch[rng.randrange(len(batch))] ^= 0xFF
        frames.append(bytes(batch))
    return frames


def _plausible(name: str, topic: str, rng: random.Random) -> Any:
    return {
        "topic": topic,
        "partition": 0,
        "group": "fz-group",
        "offset": 0,
        "timestamp": -1,
        "topics": [topic],
        "partitions": rng.choice([1, [[topic, 0]]]) if name == "partitions" else None,
        "replica_id": rng.choice([-1, 0, 3]),
        "acls": [],
        "filters": [{}],
        "filter": {},
        "offsets": [{"topic": topic, "partition": 0, "offset": 0, "metadata": ""}],
        "isr": {"0": 0},
        "replicas": [0],
        "leader": 0,
        "leader_epoch": 0,
        "member_id": "",
        "generation": -1,
        "config": {},
    }.get(name, rng.choice([0, 1, "x", True]))


def raw_tcp_garbage(host: str, port: int, rng: random.Random) -> None:
    """Broken ZMTP: random bytes, a greeting cut short, a greeting then noise."""
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    payloads = [rng.randbytes(rng.randrange(1, 400)) for _ in range(10)]
    payloads += [greeting[:n] for n in (1, 10, 11, 40)] + [greeting + rng.randbytes(200), greeting + b"\x04\xff" * 50]
    for data in payloads:
        with socket.create_connection((host, port), timeout=5) as s, contextlib.suppress(OSError):
            s.sendall(data)


def test_garbage_never_kills_a_secured_node(fuzz_node: FuzzNode) -> None:
    node = fuzz_node.node
    with fuzz_node.admin() as admin:
        admin.create_topic(FUZZ_TOPIC, partitions=1)
    with contextlib.closing(_producer(fuzz_node)) as p:
        p.send(FUZZ_TOPIC, b"before", partition=0).result(60)
    pids_before = _pids(node)
    with fuzz_node.admin() as admin:
        md = admin._call("metadata", topics=[FUZZ_TOPIC], allow_auto_create=False)
    worker = str(md["topics"][0]["partitions"][0]["endpoint"])
    end_before = _end_offset(fuzz_node, worker)
    rng = random.Random(SEED)

    alice = client_context(security=fuzz_node.ring.client("alice"))
    plain = client_context()
    try:
        for target in (node.bootstrap, worker):
            host, port = target[len("tcp://") :].rsplit(":", 1)
            raw_tcp_garbage(host, int(port), rng)
            authed = sockets.dealer(alice, target)
            refused = sockets.dealer(plain, target)
            sent: list[str] = []
            for _ in range(CASES):
                frames = garbage(rng, FUZZ_TOPIC)
                authed.send_multipart(frames)
                with contextlib.suppress(zmq.Again):
                    refused.send_multipart(frames, flags=zmq.NOBLOCK)
                sent.append(orjson.loads(frames[0]).get("api", "") if _is_json_obj(frames[0]) else "")
            replies = _read(authed, len(sent))
            authed.close(0)
            refused.close(0)
            assert len(replies) == len(sent), f"{target}: {len(replies)} replies to {len(sent)} messages"
            for api, reply in zip(sent, replies, strict=True):
                header = orjson.loads(reply[0])
                if header["error"] is None:  # only what needs no ACL, and it shows nothing
                    assert api in UNFILTERED, f"{api} succeeded for User:alice without ACLs: {header}"
                    for entry in header.get("topics") or []:  # list_topics: names; metadata: entries
                        assert isinstance(entry, dict) and entry["error"] and not entry["partitions"], header
    finally:  # destroy, not term: a failed assertion may leave sockets open
        alice.destroy(0)
        plain.destroy(0)

    assert _pids(node) == pids_before, "a process of the node died or restarted"
    assert "Traceback" not in node.log_path.read_text(errors="replace")
    assert _end_offset(fuzz_node, worker) == end_before, "the fuzzing changed the log"
    stranger = fuzz_node.ring.client("mallory")
    with Admin(node.bootstrap, timeout_ms=60_000, security=stranger) as a, pytest.raises(AuthenticationError):
        a.list_topics()
    with contextlib.closing(_producer(fuzz_node)) as p:
        p.send(FUZZ_TOPIC, b"after", partition=0).result(60)
    assert _end_offset(fuzz_node, worker) == end_before + 1


def _is_json_obj(data: bytes) -> bool:
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False


def _read(sock: zmq.Socket[Any], count: int) -> list[list[bytes]]:
    replies: list[list[bytes]] = []

    def all_in() -> bool:
        while sock.poll(100):
            replies.append(sock.recv_multipart())
        return len(replies) >= count

    with contextlib.suppress(AssertionError):
        wait_until(all_in, 30.0, f"{count} replies")
    return replies


def _producer(fz: FuzzNode) -> Any:
    from ipc.client import Producer

    return Producer(fz.node.bootstrap, request_timeout_ms=60_000, security=fz.ring.client("admin"))


def _end_offset(fz: FuzzNode, worker: str) -> int:
    from ipc.client.transport import Channel

    ctx = client_context(security=fz.ring.client("admin"))
    ch = Channel(ctx, worker)
    try:
        reply = ch.request("list_offsets", 60.0, topic=FUZZ_TOPIC, partition=0, timestamp=-1)
    finally:
        ch.close()
        ctx.term()
    reply.raise_for_error()
    return int(reply.fields["offset"])


def _pids(node: Node) -> dict[str, int]:
    assert node.proc is not None and node.proc.poll() is None, "the supervisor exited"
    pids = {"supervisor": node.proc.pid}
    for p in node.status()["partitions"]:
        pids[f"{p['topic']}-{p['partition']}"] = int(p["pid"])
    return pids
