"""Quotas: the rate and throttle arithmetic, the document, the shared table, and the
muting of throttled peers (pure logic; the clock is injected)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from appliance.partition.quota import FETCH, PRODUCE, WorkerQuotas
from appliance.quotas import NodeQuotas, RequestQuota
from ipc.errors import InvalidRequestError, ThrottlingQuotaExceededError
from ipc.protocol import ANONYMOUS, Principal, Request, Responder, Response, error_reply, parse_reply
from ipc.quota import MAX_THROTTLE_S, Quota, QuotaConfig, SampledRate, parse_changes, throttle_ms, throttle_s
from ipc.quota_table import QuotaTable, table_name
from ipc.throttle import MAX_PARKED, MutedPeers


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---- arithmetic ----------------------------------------------------------------------------------
def test_throttle_is_the_wait_that_brings_the_rate_back_to_the_quota() -> None:
    # 3 MB over a 2 s window at 1 MB/s: the rate is 1.5 MB/s; 1 s more brings it to 1 MB/s
    assert throttle_s(3e6, 2.0, 1e6) == pytest.approx(1.0)
    assert (3e6 / (2.0 + throttle_s(3e6, 2.0, 1e6))) == pytest.approx(1e6)
    # Kafka's formula, (rate - quota) / quota * window, is the same number
    assert throttle_s(3e6, 2.0, 1e6) == pytest.approx((1.5e6 - 1e6) / 1e6 * 2.0)


def test_within_the_quota_no_throttle_and_the_window_is_at_least_one_sample() -> None:
    assert throttle_s(1e6, 2.0, 1e6) == 0.0
    assert throttle_ms(0, 0.0, 1.0) == 0
    # a window shorter than a sample counts as one sample: 1.5 MB in 0.1 s at 1 MB/s waits 0.5 s
    assert throttle_s(1.5e6, 0.1, 1e6) == pytest.approx(0.5)


def test_throttle_is_capped_and_rounded_up() -> None:
    assert throttle_s(1e12, 1.0, 1.0) == MAX_THROTTLE_S
    assert throttle_ms(1e6 + 1, 1.0, 1e6) == 1  # a positive wait is never 0 ms


def test_sampled_rate_windows_and_forgets_old_samples() -> None:
    rate = SampledRate(samples=3, sample_s=1.0)
    rate.record(100, 10.0)
    rate.record(100, 10.5)  # same sample
    rate.record(100, 11.2)  # a new one
    assert rate.window(11.5) == (300, pytest.approx(1.5))
    assert rate.window(10.2) == (300, 1.0)  # at least one sample long
    # at 14.5 the first sample (10.0..11.0) has left the 3 s window; the second stays
    total, window = rate.window(14.5)
    assert total == 100 and window == pytest.approx(3.3)
    assert rate.window(20.0) == (0.0, 1.0) and rate.idle


def test_sampled_rate_converges_on_the_quota_when_the_client_waits() -> None:
    """A client that sends a batch and then waits the throttle time gets the quota."""
    rate, now, sent = SampledRate(), 0.0, 0
    for _ in range(200):
        rate.record(50_000, now)
        sent += 50_000
        now += max(rate.throttle_ms(100_000, now) / 1000, 0.01)
    assert sent / now == pytest.approx(100_000, rel=0.15)


# ---- the document ------------------------------------------------------------------------------
def test_quota_config_resolves_each_kind_on_its_own() -> None:
    cfg = QuotaConfig.from_json(
        {"default": {"producer_byte_rate": 100, "request_rate": 5}, "users": {"alice": {"producer_byte_rate": 7}}}
    )
    assert cfg.resolve("User:alice", "producer_byte_rate") == 7
    assert cfg.resolve("User:alice", "request_rate") == 5  # the default's: alice has no override of it
    assert cfg.resolve("User:bob", "producer_byte_rate") == 100
    assert cfg.resolve("User:bob", "consumer_byte_rate") is None
    assert cfg.resolve("Node:1", "producer_byte_rate") is None  # nodes are never throttled
    assert QuotaConfig.from_json(cfg.to_json()) == cfg
    assert cfg.entries("alice") == [
        {"entity": "<default>", "producer_byte_rate": 100, "request_rate": 5},
        {"entity": "User:alice", "producer_byte_rate": 7},
    ]


def test_changes_set_and_remove() -> None:
    cfg = QuotaConfig().with_change("alice", {"producer_byte_rate": 10.0, "request_rate": 2.0})
    cfg = cfg.with_change("alice", {"request_rate": None})
    assert cfg.users["alice"] == Quota(producer_byte_rate=10.0)
    cfg = cfg.with_change("alice", {"producer_byte_rate": None})
    assert "alice" not in cfg.users and not cfg.any
    assert QuotaConfig().with_change(None, {"consumer_byte_rate": 5.0}).default == Quota(consumer_byte_rate=5.0)


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"producer_byte_rate": 0},
        {"producer_byte_rate": -1},
        {"producer_byte_rate": "1"},
        {"producer_byte_rate": True},
        {"producer_byte_rate": math.inf},
        {"byte_rate": 1},
    ],
)
def test_bad_changes_are_refused_naming_the_value(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match="set_quota"):
        parse_changes(bad)


def test_a_malformed_document_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        QuotaConfig.from_json({"users": {"alice": {"producer_byte_rate": -5}}})
    with pytest.raises(InvalidRequestError):
        QuotaConfig.from_json({"users": {"User:alice": {}}})


# ---- the table -------------------------------------------------------------------------------------
def test_rows_are_summed_and_published_to_the_workers(tmp_path: Any) -> None:
    clock = Clock()
    node = NodeQuotas(clock)
    path = str(tmp_path / "quotas.shm")
    node.open(path, 4)
    node.config = QuotaConfig.from_json({"default": {"producer_byte_rate": 1000}})
    node._by_table_name = {}
    w0 = WorkerQuotas("t-0", path, 0, MutedPeers(lambda f: None, lambda p, f: None, clock), clock)
    w1 = WorkerQuotas("t-1", path, 1, MutedPeers(lambda f: None, lambda p, f: None, clock), clock)
    node.publish()
    w0.refresh()
    assert w0.enabled and w0.published.default_produce == 1000
    name = table_name("User:ANONYMOUS")
    w0._count(name, PRODUCE, 600)
    w1._count(name, PRODUCE, 600)
    # not yet summed: each worker sees only its own 600 bytes
    assert w0.throttle_ms(name, PRODUCE, 1000) == 0
    w0.tick()
    w1.tick()
    clock.t += 0.1
    node.tick()
    w0.refresh()
    total, window = w0.published.entries[name][2:4]
    assert total == 1200 and window == 1.0
    assert w0.throttle_ms(name, PRODUCE, 1000) == 200  # 1200 bytes at 1000/s: 0.2 s over
    assert w0.throttle_ms(name, FETCH, 1000) == 0
    w0.close()
    w1.close()
    node.close()


def test_a_restarted_worker_counts_from_zero(tmp_path: Any) -> None:
    table = QuotaTable.create(str(tmp_path / "q.shm"), 2)
    table.write_row(1, 100, [("User:a", 500, 0)])
    seen: dict[int, int] = {}
    assert list(table.changed_rows(seen)) == [1]
    assert list(table.changed_rows(seen)) == []
    assert table.read_row(1)[1:] == (100, [("User:a", 500, 0)])
    table.close()


def test_long_principals_get_a_hashed_name() -> None:
    long = "User:" + "x" * 200
    assert table_name(long).startswith("User:#") and len(table_name(long).encode()) <= 127
    assert table_name("User:alice") == "User:alice"


# ---- the request-rate quota ---------------------------------------------------------------------------
def _request(api: str = "metadata", principal: Principal = ANONYMOUS) -> Request:
    req = Request(api, 1, {}, [])
    req.principal = principal
    return req


def test_request_rate_refuses_over_the_quota_with_the_time_to_wait() -> None:
    clock = Clock()
    quota = RequestQuota(clock)
    quota.configure(QuotaConfig.from_json({"users": {"ANONYMOUS": {"request_rate": 5}}}))
    check = quota.chain(lambda req: None)
    for _ in range(5):
        check(_request())
    with pytest.raises(ThrottlingQuotaExceededError) as info:
        check(_request())
    assert info.value.throttle_time_ms > 0  # type: ignore[attr-defined]
    check(_request("heartbeat"))  # group APIs are not refused
    check(_request(principal=Principal("Node", "1")))
    clock.t += 2.0
    check(_request())  # the rate fell back under the quota


def test_throttle_time_travels_in_an_error_reply() -> None:
    err = ThrottlingQuotaExceededError("slow down")
    err.throttle_time_ms = 250  # type: ignore[attr-defined]
    reply = parse_reply([error_reply(7, err)])
    assert isinstance(reply.error, ThrottlingQuotaExceededError)
    assert reply.error.throttle_time_ms == 250  # type: ignore[attr-defined]
    assert reply.fields["throttle_time_ms"] == 250


# ---- muting (KIP-219) --------------------------------------------------------------------------------
def test_a_muted_peers_requests_wait_then_are_served_in_order() -> None:
    clock = Clock()
    served: list[bytes] = []
    refused: list[Any] = []
    muted = MutedPeers(lambda frames: served.append(frames[1]), lambda peer, frames: refused.append(frames), clock)
    muted.handle([b"p", b"1"])
    muted.mute(b"p", 0.5)
    muted.handle([b"p", b"2"])
    muted.handle([b"q", b"x"])  # another peer is not held
    muted.handle([b"p", b"3"])
    assert served == [b"1", b"x"] and muted.parked == 2
    assert muted.next_deadline() == pytest.approx(clock.t + 0.5)
    clock.t += 0.5
    muted.release(clock.t)
    assert served == [b"1", b"x", b"2", b"3"] and muted.parked == 0
    muted.handle([b"p", b"4"])
    assert served[-1] == b"4" and not refused


def test_a_muted_peer_over_its_bound_is_refused_with_the_time_left() -> None:
    clock = Clock()
    refused: list[Any] = []
    muted = MutedPeers(lambda frames: None, lambda peer, frames: refused.append(frames), clock)
    muted.mute(b"p", 2.0)
    header = b'{"api":"fetch","id":9}'
    for _ in range(MAX_PARKED + 1):
        muted.handle([b"p", header])
    assert muted.parked == MAX_PARKED and len(refused) == 1
    reply = parse_reply(refused[0])
    assert reply.id == 9 and isinstance(reply.error, ThrottlingQuotaExceededError)
    assert reply.fields["throttle_time_ms"] == 2000


def test_the_reply_hook_adds_throttle_time() -> None:
    sent: list[Any] = []
    r = Responder(lambda peer, frames: sent.append(frames), b"p", 3, "produce")
    r.on_reply = lambda responder, response: Response({**response.fields, "throttle_time_ms": 40})
    r.send(Response({"base_offsets": [0]}))
    assert parse_reply(sent[0]).fields == {"base_offsets": [0], "throttle_time_ms": 40}
