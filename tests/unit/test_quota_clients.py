"""Client-id quotas (docs/security.md, Quotas): Kafka's entities and their order of
precedence, the accounting keys, the document's compatibility, the workers' cached
resolution and the header's ``client_id`` (pure logic; the clock is injected)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import zmq

from appliance.partition.quota import FETCH, PRODUCE, WorkerQuotas
from appliance.quotas import NodeQuotas, RequestQuota, _entity
from ipc.client.client_id import client_id_for, set_client_id
from ipc.client.transport import Channel
from ipc.errors import InvalidRequestError, ThrottlingQuotaExceededError
from ipc.protocol import Principal, Request, encode_request, parse_request
from ipc.quota import DEFAULT_ENTITY as D
from ipc.quota import Entity, QuotaConfig, candidates, entity_label
from ipc.throttle import MutedPeers

# Kafka's precedence for user alice with client id etl, and where each match's bytes go
ORDER: list[tuple[Entity, str]] = [
    (("alice", "etl"), "User:alice client-id:etl"),
    (("alice", D), "User:alice client-id:etl"),
    (("alice", None), "User:alice"),
    ((D, "etl"), "User:alice client-id:etl"),
    ((D, D), "User:alice client-id:etl"),
    ((D, None), "User:alice"),
    ((None, "etl"), "client-id:etl"),
    ((None, D), "client-id:etl"),
]


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _all_levels() -> QuotaConfig:
    cfg = QuotaConfig()
    for rate, (entity, _) in enumerate(ORDER, start=1):
        cfg = cfg.with_entity_change(entity, {"producer_byte_rate": float(rate)})
    return cfg


def test_candidates_are_kafkas_order_of_precedence() -> None:
    assert list(candidates("alice", "etl")) == ORDER


def test_each_level_binds_when_those_before_it_are_unset() -> None:
    cfg = _all_levels()
    for rate, (entity, key) in enumerate(ORDER, start=1):
        assert cfg.match("User:alice", "producer_byte_rate", "etl") == (key, float(rate)), entity_label(entity)
        cfg = cfg.with_entity_change(entity, {"producer_byte_rate": None})
    assert cfg.match("User:alice", "producer_byte_rate", "etl") is None and not cfg.any


def test_each_kind_resolves_on_its_own_and_nodes_are_never_bound() -> None:
    cfg = QuotaConfig().with_entity_change((None, "etl"), {"producer_byte_rate": 5.0})
    cfg = cfg.with_entity_change(("alice", None), {"consumer_byte_rate": 7.0, "request_rate": 2.0})
    assert cfg.match("User:alice", "producer_byte_rate", "etl") == ("client-id:etl", 5.0)
    assert cfg.match("User:alice", "consumer_byte_rate", "etl") == ("User:alice", 7.0)
    assert cfg.match("User:bob", "producer_byte_rate", "other") is None
    assert cfg.match("User:bob", "producer_byte_rate", "etl") == ("client-id:etl", 5.0)  # shared by every user
    assert cfg.match("Node:1", "producer_byte_rate", "etl") is None


def test_the_document_round_trips_and_old_documents_load() -> None:
    cfg = _all_levels()
    doc = cfg.to_json()
    assert doc["clients"] == {"<default>": {"producer_byte_rate": 8.0}, "etl": {"producer_byte_rate": 7.0}}
    assert doc["user_clients"]["<default>"] == {
        "<default>": {"producer_byte_rate": 5.0},
        "etl": {"producer_byte_rate": 4.0},
    }
    assert QuotaConfig.from_json(orjson.loads(orjson.dumps(doc))) == cfg
    old = {"default": {"request_rate": 5}, "users": {"alice": {"producer_byte_rate": 7}}}
    loaded = QuotaConfig.from_json(old)
    assert loaded.clients == {} and loaded.to_json() == {
        "default": {"request_rate": 5.0},
        "users": {"alice": {"producer_byte_rate": 7.0}},
    }
    with pytest.raises(InvalidRequestError):
        QuotaConfig.from_json({"clients": {"": {"producer_byte_rate": 1}}})
    with pytest.raises(InvalidRequestError):
        QuotaConfig.from_json({"user_clients": {"alice": {"etl": {"producer_byte_rate": -1}}}})


def test_entries_name_both_parts_and_filter_to_what_may_apply() -> None:
    cfg = _all_levels().with_entity_change(("bob", "x"), {"request_rate": 1.0})
    labels = [e["entity"] for e in cfg.entries()]
    assert labels[0] == "<default>" and "User:alice client-id:etl" in labels and "client-id:<default>" in labels
    etl = next(e for e in cfg.entries() if e["entity"] == "User:<default> client-id:etl")
    assert etl == {"entity": "User:<default> client-id:etl", "user": D, "client_id": "etl", "producer_byte_rate": 4.0}
    assert next(e for e in cfg.entries() if e["entity"] == "User:alice") == {
        "entity": "User:alice",
        "producer_byte_rate": 3.0,
    }
    mine = {e["entity"] for e in cfg.entries("alice", "etl")}
    assert mine == {entity_label(e) for e, _ in ORDER}  # not bob's
    assert "User:bob client-id:x" in {e["entity"] for e in cfg.entries("bob")}


@pytest.mark.parametrize(
    ("fields", "entity"),
    [
        ({"user": "alice", "client": "etl"}, ("alice", "etl")),
        ({"user": "alice", "default_client": True}, ("alice", D)),
        ({"default": True, "client": "etl"}, (D, "etl")),
        ({"default": True, "default_client": True}, (D, D)),
        ({"client": "etl"}, (None, "etl")),
        ({"default_client": True}, (None, D)),
        ({"default": True}, (D, None)),
    ],
)
def test_set_quota_names_every_kind_of_entity(fields: dict[str, Any], entity: Entity) -> None:
    assert _entity({"default": False, "default_client": False, **fields}) == entity


@pytest.mark.parametrize(
    "fields",
    [{}, {"user": "a", "default": True}, {"client": "c", "default_client": True}, {"client": "<default>"}],
)
def test_set_quota_refuses_no_entity_or_both_forms_of_a_part(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        _entity({"default": False, "default_client": False, **fields})


# ---- the workers' resolution, through the shared table ---------------------------------------------
ALICE = Principal("User", "alice")


def _request(api: str, client_id: str, principal: Principal = ALICE) -> Request:
    fields = {"replica_id": -1} if api == "fetch" else {}
    req = Request(api, 1, fields, [b"x" * 100], client_id=client_id)
    req.principal = principal
    return req


def test_workers_resolve_every_level_as_the_document_does(tmp_path: Any) -> None:
    clock = Clock()
    node = NodeQuotas(clock)
    path = str(tmp_path / "quotas.shm")
    node.open(path, 1)
    worker = WorkerQuotas("t-0", path, 0, MutedPeers(lambda f: None, lambda p, f: None, clock), clock)
    cfg = _all_levels()
    for rate, (entity, key) in enumerate(ORDER, start=1):
        node.config = cfg
        node.publish()
        worker.refresh()
        assert worker.resolve("alice", "etl", PRODUCE) == (key, float(rate)), entity_label(entity)
        assert worker.resolve("alice", "etl", FETCH) is None
        cfg = cfg.with_entity_change(entity, {"producer_byte_rate": None})
    worker.close()
    node.close()


def test_the_workers_resolution_is_cached_until_the_quotas_change(tmp_path: Any) -> None:
    clock = Clock()
    node = NodeQuotas(clock)
    path = str(tmp_path / "quotas.shm")
    node.open(path, 1)
    worker = WorkerQuotas("t-0", path, 0, MutedPeers(lambda f: None, lambda p, f: None, clock), clock)
    node.config = QuotaConfig().with_entity_change(("alice", "etl"), {"producer_byte_rate": 1000.0})
    node.publish()
    worker.refresh()
    calls: list[tuple[str, str, int]] = []
    resolve = worker.resolve

    def counting(user: str, client_id: str, kind: int) -> Any:
        calls.append((user, client_id, kind))
        return resolve(user, client_id, kind)

    worker.resolve = counting  # type: ignore[method-assign]
    for _ in range(3):
        worker.check(_request("produce", "etl"))
        worker.check(_request("produce", "other"))
    assert len(calls) == 4  # once per (principal, client id) and kind
    assert worker._usage["User:alice client-id:etl"].total[PRODUCE] == 300
    assert "User:alice" not in worker._usage  # client id "other" matched nothing
    node.tick()  # totals only: the configuration (and its generation) is the same
    worker.refresh()
    worker.check(_request("produce", "etl"))
    assert len(calls) == 4
    node.config = node.config.with_entity_change(("alice", None), {"producer_byte_rate": 500.0})
    node.publish()
    worker.refresh()
    worker.check(_request("produce", "other"))
    assert len(calls) == 6  # resolved again with the new quotas
    assert worker._usage["User:alice"].total[PRODUCE] == 100
    worker.close()
    node.close()


def test_request_rate_binds_one_client_id_only() -> None:
    quota = RequestQuota(Clock())
    quota.configure(QuotaConfig().with_entity_change(("ANONYMOUS", "noisy"), {"request_rate": 3.0}))
    anon = Principal("User", "ANONYMOUS")
    for _ in range(3):
        quota.check(_request("metadata", "noisy", anon))
    with pytest.raises(ThrottlingQuotaExceededError, match="client-id:noisy"):
        quota.check(_request("metadata", "noisy", anon))
    for _ in range(20):
        quota.check(_request("metadata", "quiet", anon))
    quota.configure(QuotaConfig())  # the cache goes with the old configuration
    quota.check(_request("metadata", "noisy", anon))


# ---- the header's client_id ------------------------------------------------------------------------
def test_every_api_takes_a_client_id_in_its_header() -> None:
    assert parse_request([encode_request("metadata", 1)]).client_id == ""
    assert parse_request([encode_request("metadata", 1, client_id="app-1")]).client_id == "app-1"
    produce = parse_request([encode_request("produce", 2, topic="t", partition=0, client_id="p"), b""])
    assert produce.client_id == "p"
    for bad in ("x" * 256, 5, ["a"], True):
        with pytest.raises(InvalidRequestError, match="client_id"):
            parse_request([encode_request("fetch", 3, topic="t", partition=0, offset=0, client_id=bad)])


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, header: bytes) -> None:
        self.sent.append(header)

    def send_multipart(self, frames: list[Any], copy: bool = True) -> None:
        self.sent.append(frames[0])

    def close(self, linger: int = 0) -> None:
        pass


def test_a_channel_sends_its_contexts_client_id_in_every_header() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        set_client_id(ctx, 'etl "1"')
        ch = Channel(ctx, "tcp://127.0.0.1:9", watch=False)
        real, ch.sock = ch.sock, FakeSocket()
        ch.send("metadata", topics=["t"])
        ch.send("produce", [b"batch"], topic="t", partition=0)
        ch.send("join_group", group="g", topics=["t"], client_id="own")  # its own field is not duplicated
        sent = [orjson.loads(h) for h in ch.sock.sent]
        assert [h["client_id"] for h in sent] == ['etl "1"', 'etl "1"', "own"]
        assert parse_request([ch.sock.sent[0]]).client_id == 'etl "1"'
        real.close(0)
    finally:
        ctx.destroy(0)
    bare: zmq.Context[Any] = zmq.Context()  # no client id set: none sent
    try:
        plain = Channel(bare, "tcp://127.0.0.1:9", watch=False)
        plain.sock.close(0)
        plain.sock = FakeSocket()
        plain.send("metadata")
        assert "client_id" not in orjson.loads(plain.sock.sent[0])
    finally:
        bare.destroy(0)


def test_clients_get_a_default_id_and_refuse_a_bad_one() -> None:
    a, b = client_id_for(None, "producer"), client_id_for(None, "producer")
    assert a.startswith("sluice-producer-") and a != b
    assert client_id_for("mine", "producer") == "mine"
    with pytest.raises(ValueError, match="client_id"):
        client_id_for("x" * 256, "producer")
