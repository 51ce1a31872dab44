"""Consumer-group logic: the partition assignors and the membership state machine.

Assignors (appliance/groups/assignors.py): validity (every subscribed partition goes to
exactly one subscribed member), range contiguity, balance, stickiness, the cooperative
step (withhold what changes owner, hand it over in the follow-up round), determinism.

Group (appliance/groups/group.py), driven by a fake clock: join/rebalance/sync/heartbeat,
session and rebalance deadlines, leave, commit fencing, static membership, protocol
agreement, describe(), plus a randomised run of operations checking the invariants.

"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.groups.assignors import (
    assign,
    assign_range,
    assign_roundrobin,
    assign_sticky,
    cooperative_step,
)
from appliance.groups.group import Group, GroupState
from ipc.errors import (
    FencedInstanceIdError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    RebalanceInProgressError,
    SluiceError,
    UnknownMemberIdError,
)
from ipc.protocol import ASSIGNORS

TP = tuple[str, int]

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOPICS = ("a", "b", "c")


# =========================================================================== assignor helpers


def _all_partitions(subs: Mapping[str, Sequence[str]], counts: Mapping[str, int]) -> set[TP]:
    return {(t, p) for ts in subs.values() for t in ts for p in range(counts.get(t, 0))}


def _check_valid(out: Mapping[str, list[TP]], subs: Mapping[str, Sequence[str]], counts: Mapping[str, int]) -> None:
    """Every subscribed partition to exactly one member, only to subscribers, sorted lists."""
    assert set(out) == set(subs)
    seen = Counter(tp for tps in out.values() for tp in tps)
    assert all(n == 1 for n in seen.values()), f"assigned twice: {[tp for tp, n in seen.items() if n > 1]}"
    assert set(seen) == _all_partitions(subs, counts)
    for m, tps in out.items():
        assert tps == sorted(tps)
        assert all(t in subs[m] for t, _ in tps), f"{m} got a topic it did not subscribe to: {tps}"


def _owner_map(owned: Mapping[str, Sequence[TP]]) -> dict[TP, str]:
    return {(t, int(p)): m for m, tps in owned.items() for t, p in tps}


def _moved(before: Mapping[str, Sequence[TP]], after: Mapping[str, Sequence[TP]]) -> set[TP]:
    """Previously owned partitions whose owner is now someone else."""
    new_owner = _owner_map(after)
    return {tp for tp, m in _owner_map(before).items() if new_owner.get(tp) != m}


def _min_moves(owned_counts: Sequence[int], total: int) -> int:
    """The fewest owned partitions that must move to reach a balanced assignment."""
    n = len(owned_counts)
    base, extra = divmod(total, n)
    caps = [base + 1] * extra + [base] * (n - extra)
    return sum(max(0, o - c) for o, c in zip(sorted(owned_counts, reverse=True), caps, strict=True))


@st.composite
def scenarios(draw: st.DrawFn, same_topics: bool | None = None, max_members: int = 6) -> tuple[Any, ...]:
    """(subscriptions, counts, owned): owned is a consistent partial ownership of valid partitions."""
    counts = {t: draw(st.integers(0, 9)) for t in TOPICS}
    ids = draw(st.lists(st.text("abcdefxyz", min_size=1, max_size=4), min_size=1, max_size=max_members, unique=True))
    same = draw(st.booleans()) if same_topics is None else same_topics
    if same:
        topics = draw(st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True))
        subs = {m: list(topics) for m in ids}
    else:
        subs = {m: draw(st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True)) for m in ids}
    owned: dict[str, list[TP]] = {m: [] for m in ids}
    for tp in sorted(_all_partitions(subs, counts)):
        who = draw(st.sampled_from([None, *ids]))
        if who is not None and tp[0] in subs[who]:
            owned[who].append(tp)
    return subs, counts, owned


def _run(name: str, subs: Mapping[str, Sequence[str]], counts: Mapping[str, int], owned: Any) -> dict[str, list[TP]]:
    if name == "range":
        return assign_range(subs, counts)
    if name == "roundrobin":
        return assign_roundrobin(subs, counts)
    return assign_sticky(subs, counts, owned)


ASSIGNOR_FUNCS = ["range", "roundrobin", "sticky"]


# =========================================================================== assignors: validity


@pytest.mark.parametrize("name", ASSIGNOR_FUNCS)
@PROPS
@given(scenarios())
def test_every_subscribed_partition_goes_to_exactly_one_subscriber(name: str, sc: tuple[Any, ...]) -> None:
    subs, counts, owned = sc
    _check_valid(_run(name, subs, counts, owned), subs, counts)


@pytest.mark.parametrize("name", ASSIGNOR_FUNCS)
def test_no_members_and_missing_topics(name: str) -> None:
    assert _run(name, {}, {"a": 3}, {}) == {}
    # a subscribed topic the counts do not know (deleted / not created): nothing to assign
    out = _run(name, {"m1": ["ghost"], "m2": ["ghost", "a"]}, {"a": 2}, {})
    _check_valid(out, {"m1": ["ghost"], "m2": ["ghost", "a"]}, {"a": 2})
    assert out == {"m1": [], "m2": [("a", 0), ("a", 1)]}


@PROPS
@given(scenarios())
def test_range_gives_contiguous_ranges_per_topic(sc: tuple[Any, ...]) -> None:
    subs, counts, _ = sc
    out = assign_range(subs, counts)
    for topic in sorted({t for ts in subs.values() for t in ts}):
        members = sorted(m for m, ts in subs.items() if topic in ts)
        chunks = [[p for t, p in out[m] if t == topic] for m in members]
        # concatenated in member order, the chunks are exactly 0..n-1 (contiguous, in order)
        assert [p for c in chunks for p in c] == list(range(counts[topic]))
        sizes = [len(c) for c in chunks]
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)  # the first members get the extra one


def test_range_example() -> None:
    out = assign_range({"m2": ["t"], "m1": ["t", "u"], "m3": ["t"]}, {"t": 7, "u": 2})
    assert out == {
        "m1": [("t", 0), ("t", 1), ("t", 2), ("u", 0), ("u", 1)],
        "m2": [("t", 3), ("t", 4)],
        "m3": [("t", 5), ("t", 6)],
    }


@pytest.mark.parametrize("name", ["roundrobin", "sticky"])
@PROPS
@given(scenarios(same_topics=True))
def test_roundrobin_and_sticky_are_balanced_for_identical_subscriptions(name: str, sc: tuple[Any, ...]) -> None:
    subs, counts, owned = sc
    sizes = [len(tps) for tps in _run(name, subs, counts, owned).values()]
    assert max(sizes) - min(sizes) <= 1


def test_roundrobin_example() -> None:
    out = assign_roundrobin({"y": ["a", "b"], "x": ["a", "b"]}, {"a": 3, "b": 2})
    assert out == {"x": [("a", 0), ("a", 2), ("b", 1)], "y": [("a", 1), ("b", 0)]}


@pytest.mark.parametrize("name", ASSIGNOR_FUNCS)
@PROPS
@given(scenarios(), st.randoms(use_true_random=False))
def test_output_is_deterministic_whatever_the_input_order(name: str, sc: tuple[Any, ...], rnd: Any) -> None:
    subs, counts, owned = sc
    first = _run(name, subs, counts, owned)
    assert _run(name, subs, counts, owned) == first
    keys = list(subs)
    rnd.shuffle(keys)
    subs2 = {m: list(reversed(subs[m])) for m in keys}
    owned2 = {m: list(reversed(owned[m])) for m in reversed(keys)}
    counts2 = dict(reversed(list(counts.items())))
    assert _run(name, subs2, counts2, owned2) == first


def test_sticky_accepts_owned_in_wire_form() -> None:
    subs = {"m1": ["t"], "m2": ["t"]}
    as_tuples = assign_sticky(subs, {"t": 4}, {"m1": [("t", 3), ("t", 2)], "m2": []})
    as_lists = assign_sticky(subs, {"t": 4}, {"m1": [["t", 3], ["t", 2]], "m2": []})  # type: ignore[dict-item]
    assert as_tuples == as_lists == {"m1": [("t", 2), ("t", 3)], "m2": [("t", 0), ("t", 1)]}


# =========================================================================== assignors: stickiness


@PROPS
@given(scenarios(same_topics=True))
def test_sticky_moves_only_what_balance_requires(sc: tuple[Any, ...]) -> None:
    subs, counts, owned = sc
    out = assign_sticky(subs, counts, owned)
    total = len(_all_partitions(subs, counts))
    base = total // len(subs)
    assert len(_moved(owned, out)) == _min_moves([len(owned[m]) for m in subs], total)
    for m in subs:  # nobody loses a partition while it is at or under its fair share
        assert len(set(owned[m]) & set(out[m])) >= min(len(owned[m]), base)


@PROPS
@given(scenarios(same_topics=True, max_members=5))
def test_sticky_adding_a_member_moves_only_its_share(sc: tuple[Any, ...]) -> None:
    subs, counts, owned = sc
    before = assign_sticky(subs, counts, owned)
    newcomer = "~new"  # sorts after every generated id
    subs2 = {**subs, newcomer: next(iter(subs.values()))}
    after = assign_sticky(subs2, counts, before)
    total = len(_all_partitions(subs, counts))
    assert len(after[newcomer]) in {total // len(subs2), -(-total // len(subs2))}
    for m in subs:  # old members only lose, never trade
        assert set(after[m]) <= set(before[m])
    assert _moved(before, after) == set(after[newcomer])


def test_sticky_adding_a_member_example() -> None:
    before = {"m1": [("t", p) for p in range(4)], "m2": [("t", p) for p in range(4, 7)]}
    subs = {"m1": ["t"], "m2": ["t"], "m3": ["t"]}
    after = assign_sticky(subs, {"t": 7}, before)
    # 7 over 3 members: 3/2/2, and only the newcomer's 2 partitions move
    assert sorted(len(tps) for tps in after.values()) == [2, 2, 3]
    assert len(after["m3"]) == 2
    assert set(after["m1"]) <= set(before["m1"]) and set(after["m2"]) <= set(before["m2"])


@PROPS
@given(scenarios(same_topics=True), st.data())
def test_sticky_removing_a_member_moves_only_its_partitions(sc: tuple[Any, ...], data: st.DataObject) -> None:
    subs, counts, owned = sc
    if len(subs) < 2:
        return
    before = assign_sticky(subs, counts, owned)
    gone = data.draw(st.sampled_from(sorted(subs)))
    subs2 = {m: ts for m, ts in subs.items() if m != gone}
    after = assign_sticky(subs2, counts, {m: tps for m, tps in before.items() if m != gone})
    _check_valid(after, subs2, counts)
    for m in subs2:
        assert set(before[m]) <= set(after[m])
    gained = {tp for m in subs2 for tp in set(after[m]) - set(before[m])}
    assert gained == set(before[gone])


@PROPS
@given(scenarios(same_topics=True))
def test_sticky_is_a_fixed_point_for_identical_subscriptions(sc: tuple[Any, ...]) -> None:
    subs, counts, owned = sc
    once = assign_sticky(subs, counts, owned)
    assert assign_sticky(subs, counts, once) == once


def test_sticky_ignores_stale_owned_partitions_when_ranking_quotas() -> None:
    # The group subscribes to t and u; u was deleted (the coordinator's counts drop it). A still
    # reports its old u partitions as owned. Keeping everything is balanced (A 1, B 2 of 3).
    subs = {"A": ["t", "u"], "B": ["t", "u"]}
    owned = {"A": [("t", 0), ("u", 0), ("u", 1), ("u", 2)], "B": [("t", 1), ("t", 2)]}
    out = assign_sticky(subs, {"t": 3}, owned)
    assert out == {"A": [("t", 0)], "B": [("t", 1), ("t", 2)]}  # actual: t-2 moves B -> A


def test_sticky_is_a_fixed_point_for_different_subscriptions() -> None:
    subs = {"m0": ["b"], "m1": ["c"], "m2": ["b", "c"], "m3": ["a", "c"]}
    counts = {"a": 1, "b": 0, "c": 1}
    # m3 owned c-0; topic a is new and only m3 subscribes to it, so m3 takes a-0 and c-0
    # goes to a member with two fewer that can take it: balance among eligible members
    once = assign_sticky(subs, counts, {"m3": [("c", 0)]})
    assert once == {"m0": [], "m1": [("c", 0)], "m2": [], "m3": [("a", 0)]}
    assert assign_sticky(subs, counts, once) == once  # its own output is a fixed point
    # and with the cooperative protocol that is a revocation + follow-up rebalance for nothing
    step, withheld = cooperative_step(assign_sticky(subs, counts, once), once)
    assert not withheld


# =========================================================================== cooperative step


@PROPS
@given(scenarios(), st.data())
def test_cooperative_step_withholds_exactly_the_partitions_changing_owner(
    sc: tuple[Any, ...], data: st.DataObject
) -> None:
    subs, counts, owned = sc
    target = assign_sticky(subs, counts, owned)
    # some owners may have left the group meanwhile: their partitions are free to move at once
    departed = data.draw(st.lists(st.text("PQR", min_size=1, max_size=2), max_size=2, unique=True))
    free = sorted(_all_partitions(subs, counts) - set(_owner_map(owned)))
    for i, tp in enumerate(free):
        if departed and i % 2 == 0:
            owned.setdefault(departed[i % len(departed)], []).append(tp)
    out, followup = cooperative_step(target, owned)
    owner = _owner_map(owned)
    expect_withheld = {
        tp for m, tps in target.items() for tp in tps if owner.get(tp) not in (None, m) and owner[tp] in target
    }
    assert set(out) == set(target)
    withheld = set()
    for m in target:
        assert set(out[m]) <= set(target[m])
        withheld |= set(target[m]) - set(out[m])
    assert withheld == expect_withheld
    assert followup == bool(expect_withheld)
    # nothing is handed to a new owner while its old owner still holds it
    for m, tps in out.items():
        for tp in tps:
            assert owner.get(tp) in (None, m) or owner[tp] not in target


def test_cooperative_step_example() -> None:
    target = {"m1": [("t", 0), ("t", 1)], "m2": [("t", 2), ("t", 3)]}
    owned = {"m1": [("t", 0), ("t", 1), ("t", 2)], "gone": [("t", 3)]}
    assert cooperative_step(target, owned) == ({"m1": [("t", 0), ("t", 1)], "m2": [("t", 3)]}, True)
    assert cooperative_step(target, {"m1": [["t", 0]]}) == (target, False)  # type: ignore[dict-item]


@PROPS
@given(scenarios(same_topics=True))
def test_cooperative_rounds_converge_within_two_rounds(sc: tuple[Any, ...]) -> None:
    subs, counts, owned = sc
    target1 = assign_sticky(subs, counts, owned)
    step1, followup1 = cooperative_step(target1, owned)
    # members revoke what was withheld and rejoin owning exactly their round-1 assignment
    target2 = assign_sticky(subs, counts, step1)
    step2, followup2 = cooperative_step(target2, step1)
    assert not followup2
    assert step2 == target2
    _check_valid(step2, subs, counts)
    sizes = [len(tps) for tps in step2.values()]
    assert max(sizes) - min(sizes) <= 1
    withheld = {tp for m in target1 for tp in set(target1[m]) - set(step1[m])}
    assert followup1 == bool(withheld)
    for m in subs:  # round 2 only hands out the withheld partitions; nobody loses anything
        assert set(step1[m]) <= set(step2[m])
    assert {tp for m in subs for tp in set(step2[m]) - set(step1[m])} == withheld
    if not followup1:
        assert step1 == target1 and target2 == target1


def test_assign_dispatch() -> None:
    subs = {"m1": ["t"], "m2": ["t"]}
    counts = {"t": 4}
    owned = {"m1": [("t", 0), ("t", 1), ("t", 2), ("t", 3)], "m2": []}
    assert assign("range", subs, counts, owned) == (assign_range(subs, counts), False)
    assert assign("roundrobin", subs, counts, owned) == (assign_roundrobin(subs, counts), False)
    out, followup = assign("cooperative-sticky", subs, counts, owned)
    assert followup and out == {"m1": [("t", 0), ("t", 1)], "m2": []}
    assert assign("cooperative-sticky", subs, counts, out) == (
        {"m1": [("t", 0), ("t", 1)], "m2": [("t", 2), ("t", 3)]},
        False,
    )
    assert set(ASSIGNORS) == {"range", "roundrobin", "cooperative-sticky"}
    with pytest.raises(ValueError, match="unknown assignor 'sticky'"):
        assign("sticky", subs, counts, owned)


# =========================================================================== group helpers


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Waiter:
    """Stands for a parked join request (the coordinator passes the request's Responder)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Waiter({self.name})"


PARTITIONS = {"t": 4, "u": 2}


def counts(topics: Sequence[str]) -> dict[str, int]:
    return {t: PARTITIONS[t] for t in topics if t in PARTITIONS}


SESSION_MS = 10_000
REBALANCE_MS = 30_000


def join(
    g: Group,
    waiter: Any,
    member_id: str = "",
    *,
    client: str = "c",
    topics: Sequence[str] = ("t",),
    assignors: Sequence[str] = ("range",),
    instance: str | None = None,
    owned: Sequence[Any] = (),
    session_ms: int = SESSION_MS,
    rebalance_ms: int = REBALANCE_MS,
) -> dict[Any, dict[str, Any] | SluiceError]:
    done = g.join(
        member_id,
        instance,
        client,
        session_ms,
        rebalance_ms,
        list(topics),
        list(assignors),
        list(owned),
        waiter,
        counts,
    )
    return _answers(done)


def _answers(done: list[tuple[Any, Any]]) -> dict[Any, Any]:
    waiters = [w for w, _ in done]
    assert len(waiters) == len(set(map(id, waiters))), f"a waiter answered twice: {done}"
    return dict(done)


def solo(g: Group, **kw: Any) -> str:
    """Join a new member into an EMPTY/STABLE single-member situation; returns its id."""
    w = Waiter("solo")
    got = join(g, w, **kw)
    assert list(got) == [w]
    return str(got[w]["member_id"])


def pair(g: Group, **kw: Any) -> tuple[str, str]:
    """Two members a-… and b-… in a STABLE group at generation 2."""
    a = solo(g, client="a", **kw)
    wb, wa = Waiter("b"), Waiter("a")
    assert join(g, wb, client="b", **kw) == {}
    got = join(g, wa, a, client="a", **kw)
    assert set(got) == {wa, wb}
    assert g.state is GroupState.STABLE and g.generation == 2
    return a, str(got[wb]["member_id"])


def assignment(g: Group, member_id: str) -> list[TP]:
    return [(t, p) for t, p in g.sync(member_id, g.generation)["assignment"]]


# =========================================================================== group: join / sync


def test_first_join_completes_immediately() -> None:
    g = Group("g", FakeClock())
    assert g.state is GroupState.EMPTY and g.generation == 0
    w = Waiter("a")
    got = join(g, w, client="app")
    reply = got[w]
    assert isinstance(reply, dict)
    mid = reply["member_id"]
    assert mid.startswith("app-") and len(mid) > len("app-")
    assert reply == {"member_id": mid, "generation": 1, "protocol": "range", "leader": mid, "members": [mid]}
    assert g.state is GroupState.STABLE and g.generation == 1 and g.rebalances == 1
    assert g.sync(mid, 1) == {"generation": 1, "protocol": "range", "assignment": [["t", p] for p in range(4)]}
    g.heartbeat(mid, 1)


def test_client_id_defaults_in_member_id() -> None:
    g = Group("g", FakeClock())
    assert solo(g, client="").startswith("consumer-")


def test_second_member_waits_for_every_member_to_rejoin() -> None:
    g = Group("g", FakeClock())
    a = solo(g, client="a")
    wb = Waiter("b")
    assert join(g, wb, client="b") == {}  # parked
    assert g.state is GroupState.PREPARING_REBALANCE and g.generation == 1 and g.rebalances == 2
    with pytest.raises(RebalanceInProgressError):
        g.heartbeat(a, 1)
    with pytest.raises(RebalanceInProgressError):
        g.sync(a, 1)
    wa = Waiter("a")
    got = join(g, wa, a, client="a")
    assert set(got) == {wa, wb}
    ra, rb = got[wa], got[wb]
    assert isinstance(ra, dict) and isinstance(rb, dict)
    b = rb["member_id"]
    assert ra["member_id"] == a and b.startswith("b-")
    assert ra["generation"] == rb["generation"] == 2
    assert ra["leader"] == rb["leader"] == a  # the leader stays while it is a member
    assert ra["members"] == rb["members"] == sorted([a, b])
    assert ra["protocol"] == rb["protocol"] == "range"
    assert g.state is GroupState.STABLE
    sa, sb = assignment(g, a), assignment(g, b)
    assert sa == [("t", 0), ("t", 1)] and sb == [("t", 2), ("t", 3)]  # range, a-… sorts first
    with pytest.raises(IllegalGenerationError):
        g.sync(a, 1)
    with pytest.raises(IllegalGenerationError):
        g.heartbeat(b, 1)
    with pytest.raises(IllegalGenerationError):
        g.heartbeat(b, 3)
    g.heartbeat(a, 2)
    g.heartbeat(b, 2)


def test_unknown_member_is_rejected_everywhere() -> None:
    g = Group("g", FakeClock())
    a = solo(g)
    before = g.describe()
    with pytest.raises(UnknownMemberIdError):
        g.heartbeat("nobody", 1)
    with pytest.raises(UnknownMemberIdError):
        g.sync("nobody", 1)
    with pytest.raises(UnknownMemberIdError):
        g.leave("nobody", counts)
    with pytest.raises(UnknownMemberIdError):
        join(g, Waiter("x"), "nobody")
    assert g.describe() == before
    g.heartbeat(a, 1)


def test_a_newer_join_from_the_same_member_supersedes_the_parked_one() -> None:
    g = Group("g", FakeClock())
    a, b = pair(g)
    wa1, wa2, wb = Waiter("a1"), Waiter("a2"), Waiter("b")
    assert join(g, wa1, a, client="a") == {}
    got = join(g, wa2, a, client="a")
    assert list(got) == [wa1] and isinstance(got[wa1], RebalanceInProgressError)
    got = join(g, wb, b, client="b")
    assert set(got) == {wa2, wb}
    assert got[wa2]["generation"] == got[wb]["generation"] == 3


def test_subscription_change_rebalances_and_topics_are_normalised() -> None:
    g = Group("g", FakeClock())
    a = solo(g)
    w = Waiter("again")
    got = join(g, w, a, topics=["u", "t", "u"])
    assert got[w]["generation"] == 2
    assert assignment(g, a) == [("t", p) for p in range(4)] + [("u", 0), ("u", 1)]
    assert g.describe()["members"][0]["topics"] == ["t", "u"]


# =========================================================================== group: timeouts


def test_session_timeout_removes_a_silent_member_and_rebalances() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    a, b = pair(g)
    clock.advance(6)
    g.heartbeat(a, 2)
    clock.advance(4)  # b silent for exactly the session timeout: not yet expired
    assert g.tick(counts) == []
    assert set(g.members) == {a, b}
    clock.advance(0.5)
    assert g.tick(counts) == []  # a has no parked join to answer
    assert set(g.members) == {a}
    assert g.state is GroupState.PREPARING_REBALANCE
    with pytest.raises(RebalanceInProgressError):
        g.heartbeat(a, 2)
    with pytest.raises(UnknownMemberIdError):
        g.heartbeat(b, 2)
    w = Waiter("a")
    got = join(g, w, a, client="a")
    assert got[w]["generation"] == 3 and got[w]["members"] == [a]
    assert assignment(g, a) == [("t", p) for p in range(4)]


def test_session_timeout_of_the_last_member_empties_the_group() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    solo(g)
    clock.advance(SESSION_MS / 1000 + 1)
    assert g.tick(counts) == []
    assert g.state is GroupState.EMPTY and not g.members and g.generation == 2
    assert g.empty_since == clock.now


def test_rebalance_deadline_removes_members_that_did_not_rejoin() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    a = solo(g, client="a", rebalance_ms=20_000)
    wb = Waiter("b")
    assert join(g, wb, client="b", rebalance_ms=30_000) == {}
    assert g.rebalance_deadline == clock.now + 30  # the largest rebalance timeout
    for _ in range(5):  # a keeps heartbeating (so its session lives) but never rejoins
        clock.advance(5)
        with pytest.raises(RebalanceInProgressError):
            g.heartbeat(a, 1)
        assert g.tick(counts) == []
    clock.advance(4.9)
    assert g.tick(counts) == []
    assert g.state is GroupState.PREPARING_REBALANCE
    clock.advance(0.1)
    got = _answers(g.tick(counts))
    assert list(got) == [wb]
    b = got[wb]["member_id"]
    assert got[wb]["generation"] == 2 and got[wb]["members"] == [b] and got[wb]["leader"] == b
    assert g.state is GroupState.STABLE and set(g.members) == {b}
    with pytest.raises(UnknownMemberIdError):
        g.heartbeat(a, 1)
    assert assignment(g, b) == [("t", p) for p in range(4)]


def test_rebalance_deadline_with_nobody_rejoining_empties_the_group() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    a, b = pair(g)
    assert g.leave(b, counts) == []  # a must rejoin, but only keeps heartbeating
    for _ in range(6):
        clock.advance(5)
        with pytest.raises(RebalanceInProgressError):
            g.heartbeat(a, 2)
        assert g.tick(counts) == []
    assert g.state is GroupState.EMPTY and not g.members and g.generation == 3
    with pytest.raises(UnknownMemberIdError):
        g.heartbeat(a, 2)


def test_parked_members_do_not_expire_by_session() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    a = solo(g, client="a")
    wb = Waiter("b")
    join(g, wb, client="b")
    clock.advance(SESSION_MS / 1000 + 5)  # nobody heard from; a did not rejoin, b is parked
    assert g.tick(counts) != []  # a expired, so b's rebalance completes
    assert a not in g.members and g.state is GroupState.STABLE and len(g.members) == 1


# =========================================================================== group: leave


def test_leave_rebalances_and_the_last_leave_empties_the_group() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    a, b = pair(g)
    assert g.leave(b, counts) == []
    assert g.state is GroupState.PREPARING_REBALANCE and set(g.members) == {a}
    w = Waiter("a")
    got = join(g, w, a, client="a")
    assert got[w]["generation"] == 3 and got[w]["members"] == [a]
    clock.advance(1)
    assert g.leave(a, counts) == []
    assert g.state is GroupState.EMPTY and g.generation == 4 and not g.members
    assert g.empty_since == clock.now
    with pytest.raises(UnknownMemberIdError):
        g.heartbeat(a, 3)


def test_leave_of_the_last_laggard_completes_the_rebalance() -> None:
    g = Group("g", FakeClock())
    a, b = pair(g)
    wb = Waiter("b")
    assert join(g, wb, b, client="b") == {}
    got = _answers(g.leave(a, counts))
    assert list(got) == [wb] and got[wb]["generation"] == 3 and got[wb]["leader"] == b
    assert g.state is GroupState.STABLE


def test_leave_answers_the_leaving_members_parked_join() -> None:
    g = Group("g", FakeClock())
    a, b = pair(g)
    wb = Waiter("b")
    join(g, wb, b, client="b")
    got = _answers(g.leave(b, counts))
    assert list(got) == [wb] and isinstance(got[wb], UnknownMemberIdError)
    assert g.state is GroupState.PREPARING_REBALANCE  # a has not rejoined yet
    wa = Waiter("a")
    assert join(g, wa, a, client="a")[wa]["members"] == [a]


# =========================================================================== group: commits


def test_check_commit_fencing() -> None:
    g = Group("g", FakeClock())
    g.check_commit("", -1)  # no members: an admin / group-less consumer may commit
    with pytest.raises(UnknownMemberIdError):
        g.check_commit("someone", 1)
    a, b = pair(g)
    g.check_commit(a, 2)
    with pytest.raises(IllegalGenerationError):
        g.check_commit(a, 1)
    with pytest.raises(UnknownMemberIdError):
        g.check_commit("", 2)
    with pytest.raises(UnknownMemberIdError):
        g.check_commit("someone", 2)
    # a rebalance is being prepared: the current generation may still commit (before revoking)
    assert join(g, Waiter("c"), client="c") == {}
    assert g.state is GroupState.PREPARING_REBALANCE
    g.check_commit(a, 2)
    g.check_commit(b, 2)
    with pytest.raises(IllegalGenerationError):
        g.check_commit(a, 3)
    g.leave(a, counts)
    g.leave(b, counts)
    for m in list(g.members):
        g.leave(m, counts)
    assert g.state is GroupState.EMPTY
    g.check_commit("", -1)
    with pytest.raises(UnknownMemberIdError):
        g.check_commit(a, 2)


def test_check_commit_refreshes_the_session() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    a = solo(g)
    for _ in range(3):
        clock.advance(SESSION_MS / 1000 - 1)
        g.check_commit(a, 1)
        assert g.tick(counts) == []
    assert a in g.members


# =========================================================================== group: static membership


def static_pair(g: Group) -> tuple[str, str]:
    """a-… static (instance pod-a) and b-… dynamic, STABLE at generation 2."""
    a = solo(g, client="a", instance="pod-a")
    wb, wa = Waiter("b"), Waiter("a")
    join(g, wb, client="b")
    got = join(g, wa, a, client="a", instance="pod-a")
    assert set(got) == {wa, wb} and g.static == {"pod-a": a} and g.generation == 2
    return a, str(got[wb]["member_id"])


def test_static_member_restart_keeps_assignment_without_rebalance() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    a, b = static_pair(g)
    before = {a: assignment(g, a), b: assignment(g, b)}
    rebalances = g.rebalances
    clock.advance(3)
    w = Waiter("a-restarted")
    got = join(g, w, "", client="a", instance="pod-a")  # rejoins with member id ""
    assert list(got) == [w]
    reply = got[w]
    a2 = reply["member_id"]
    assert a2 != a and a2.startswith("a-")
    assert reply["generation"] == 2 and reply["members"] == sorted([a2, b])
    assert reply["leader"] == a2  # it was the leader under its old id
    assert g.state is GroupState.STABLE and g.generation == 2 and g.rebalances == rebalances
    assert assignment(g, a2) == before[a] and assignment(g, b) == before[b]
    g.heartbeat(a2, 2)
    g.heartbeat(b, 2)
    # the old identity is fenced: told so (FENCED_INSTANCE_ID), not merely unknown
    with pytest.raises(FencedInstanceIdError):
        g.heartbeat(a, 2)
    with pytest.raises(FencedInstanceIdError):
        g.sync(a, 2)
    with pytest.raises(FencedInstanceIdError):
        g.check_commit(a, 2)
    assert g.static == {"pod-a": a2}
    [desc] = [m for m in g.describe()["members"] if m["member_id"] == a2]
    assert desc["instance_id"] == "pod-a" and desc["assignment"] == [list(tp) for tp in before[a]]


def test_static_member_with_changed_subscription_triggers_a_rebalance() -> None:
    g = Group("g", FakeClock())
    a, b = static_pair(g)
    w = Waiter("a-restarted")
    assert join(g, w, "", client="a", instance="pod-a", topics=["t", "u"]) == {}
    assert g.state is GroupState.PREPARING_REBALANCE
    a2 = g.static["pod-a"]
    assert a2 != a and a not in g.members
    wb2 = Waiter("b2")
    got = join(g, wb2, b, client="b")
    assert set(got) == {w, wb2} and got[w]["member_id"] == a2 and got[w]["generation"] == 3
    assert ("u", 0) in assignment(g, a2) and ("u", 1) in assignment(g, a2)


def test_static_member_restart_during_a_rebalance_takes_part_in_it() -> None:
    g = Group("g", FakeClock())
    a = solo(g, client="a", instance="pod-a")
    wb = Waiter("b")
    join(g, wb, client="b")
    assert g.state is GroupState.PREPARING_REBALANCE  # b is parked, a must rejoin
    w = Waiter("a-new")
    got = join(g, w, "", client="a", instance="pod-a")  # restart while PREPARING: takes part in the rebalance
    assert set(got) == {w, wb}
    assert got[w]["generation"] == 2 and got[w]["member_id"] != a
    assert a not in g.members and len(g.members) == 2


def test_static_member_replaces_its_parked_join() -> None:
    g = Group("g", FakeClock())
    a, b = static_pair(g)
    w1 = Waiter("a-parked")
    assert join(g, w1, a, client="a", instance="pod-a") == {}  # a's join parked (b has not rejoined)
    w2 = Waiter("a-restarted")
    got = join(g, w2, "", client="a", instance="pod-a")  # the process restarted meanwhile
    assert list(got) == [w1] and isinstance(got[w1], RebalanceInProgressError)
    got = join(g, Waiter("b2"), b, client="b")
    assert got[w2]["generation"] == 3 and got[w2]["member_id"] == g.static["pod-a"] != a


def test_expired_static_member_joins_as_new() -> None:
    clock = FakeClock()
    g = Group("g", clock)
    a = solo(g, instance="pod-a")
    clock.advance(SESSION_MS / 1000 + 1)
    g.tick(counts)
    assert g.static == {} and g.state is GroupState.EMPTY
    w = Waiter("a")
    got = join(g, w, "", instance="pod-a")
    assert got[w]["generation"] == 3 and got[w]["member_id"] != a
    assert g.static == {"pod-a": got[w]["member_id"]}


# =========================================================================== group: protocol agreement


def test_unknown_or_missing_assignors_are_rejected() -> None:
    g = Group("g", FakeClock())
    with pytest.raises(InconsistentGroupProtocolError):
        join(g, Waiter("x"), assignors=["sticky"])
    with pytest.raises(InconsistentGroupProtocolError):
        join(g, Waiter("x"), assignors=["range", "bogus"])
    with pytest.raises(InconsistentGroupProtocolError):
        join(g, Waiter("x"), assignors=[])
    assert g.state is GroupState.EMPTY and not g.members


def test_inconsistent_assignor_sets_are_rejected_without_side_effects() -> None:
    g = Group("g", FakeClock())
    a = solo(g, client="a", assignors=["range", "roundrobin"])
    before = g.describe()
    with pytest.raises(InconsistentGroupProtocolError):
        join(g, Waiter("b"), client="b", assignors=["cooperative-sticky"])
    assert g.describe() == before and g.state is GroupState.STABLE
    # overlapping sets are fine; the protocol is the first common one in the lowest member id's list
    wb, wa = Waiter("b"), Waiter("a")
    join(g, wb, client="b", assignors=["roundrobin", "cooperative-sticky"])
    got = join(g, wa, a, client="a", assignors=["range", "roundrobin"])
    assert got[wa]["protocol"] == got[wb]["protocol"] == "roundrobin" == g.protocol
    with pytest.raises(InconsistentGroupProtocolError):
        join(g, Waiter("c"), client="c", assignors=["range"])


def test_protocol_choice_follows_the_lowest_member_id_preferences() -> None:
    g = Group("g", FakeClock())
    a = solo(g, client="a", assignors=["roundrobin", "range"])
    wb, wa = Waiter("b"), Waiter("a")
    join(g, wb, client="b", assignors=["range", "roundrobin"])
    got = join(g, wa, a, client="a", assignors=["roundrobin", "range"])
    assert got[wa]["protocol"] == "roundrobin"


# =========================================================================== group: cooperative flow


def test_cooperative_sticky_two_phase_handover_through_the_group() -> None:
    g = Group("g", FakeClock())
    coop = {"assignors": ["cooperative-sticky"]}
    a = solo(g, client="a", **coop)
    assert assignment(g, a) == [("t", p) for p in range(4)]
    wb, wa = Waiter("b"), Waiter("a")
    join(g, wb, client="b", **coop)
    got = join(g, wa, a, client="a", owned=[["t", p] for p in range(4)], **coop)
    b = got[wb]["member_id"]
    assert g.generation == 2 and g.protocol == "cooperative-sticky"
    kept = assignment(g, a)
    assert len(kept) == 2 and assignment(g, b) == []  # the other two are revoked first
    # a revokes and rejoins owning what it kept; b follows (heartbeat says rebalance)
    wa2, wb2 = Waiter("a2"), Waiter("b2")
    assert join(g, wa2, a, client="a", owned=kept, **coop) == {}
    with pytest.raises(RebalanceInProgressError):
        g.heartbeat(b, 2)
    got = join(g, wb2, b, client="b", owned=[], **coop)
    assert set(got) == {wa2, wb2} and g.generation == 3
    assert assignment(g, a) == kept
    assert sorted(kept + assignment(g, b)) == [("t", p) for p in range(4)]


# =========================================================================== group: describe


def test_describe() -> None:
    g = Group("grp", FakeClock())
    assert g.describe() == {
        "group": "grp",
        "state": "empty",
        "generation": 0,
        "protocol": "",
        "leader": "",
        "rebalances": 0,
        "members": [],
    }
    a = solo(g, client="a", instance="pod-a", topics=["u", "t"])
    wb, wa = Waiter("b"), Waiter("a")
    join(g, wb, client="b", topics=["t"])
    assert g.describe()["state"] == "preparing_rebalance"
    b = join(g, wa, a, client="a", instance="pod-a", topics=["t", "u"])[wb]["member_id"]
    d = g.describe()
    assert d == {
        "group": "grp",
        "state": "stable",
        "generation": 2,
        "protocol": "range",
        "leader": a,
        "rebalances": 2,
        "members": [
            {
                "member_id": a,
                "instance_id": "pod-a",
                "client_id": "a",
                "topics": ["t", "u"],
                "assignment": [["t", 0], ["t", 1], ["u", 0], ["u", 1]],
            },
            {
                "member_id": b,
                "instance_id": None,
                "client_id": "b",
                "topics": ["t"],
                "assignment": [["t", 2], ["t", 3]],
            },
        ],
    }


# =========================================================================== group: random runs


OPS = st.one_of(
    st.tuples(st.just("new"), st.sampled_from("abc"), st.sampled_from([None, "p1", "p2"]), st.sampled_from(["t", "u"])),
    st.tuples(st.just("rejoin"), st.integers(0, 5), st.sampled_from([["t"], ["t", "u"]])),
    st.tuples(st.just("leave"), st.integers(0, 5)),
    st.tuples(st.just("heartbeat"), st.integers(0, 5)),
    st.tuples(st.just("wait"), st.sampled_from([1.0, 4.0, 11.0, 31.0])),
)


@PROPS
@given(st.sampled_from(["range", "roundrobin", "cooperative-sticky"]), st.lists(OPS, max_size=30))
def test_random_operations_keep_the_group_consistent(protocol: str, ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    g = Group("g", clock)
    outstanding: set[int] = set()  # ids of waiters parked and not answered yet
    keep: list[Waiter] = []  # keep waiters alive so their ids stay unique
    generation = g.generation

    def deliver(done: list[tuple[Any, Any]]) -> None:
        for w, result in done:
            assert id(w) in outstanding, f"{w} answered but not parked"
            outstanding.discard(id(w))
            if isinstance(result, dict):
                assert result["generation"] == g.generation
                assert result["member_id"] in g.members and result["members"] == sorted(g.members)
                assert result["leader"] in g.members

    for n, op in enumerate(ops):
        w = Waiter(str(n))
        keep.append(w)
        members = sorted(g.members)
        if op[0] == "new":
            outstanding.add(id(w))
            deliver(g.join("", op[2], op[1], SESSION_MS, REBALANCE_MS, [op[3]], [protocol], [], w, counts))
        elif op[0] == "rejoin" and members:
            m = g.members[members[op[1] % len(members)]]
            outstanding.add(id(w))
            owned = [list(tp) for tp in m.assignment]
            deliver(
                g.join(
                    m.member_id,
                    m.instance_id,
                    m.client_id,
                    SESSION_MS,
                    REBALANCE_MS,
                    op[2],
                    [protocol],
                    owned,
                    w,
                    counts,
                )
            )
        elif op[0] == "leave" and members:
            deliver(g.leave(members[op[1] % len(members)], counts))
        elif op[0] == "heartbeat" and members:
            try:
                g.heartbeat(members[op[1] % len(members)], g.generation)
            except RebalanceInProgressError:
                assert g.state is GroupState.PREPARING_REBALANCE
        elif op[0] == "wait":
            clock.advance(op[1])
            deliver(g.tick(counts))
        # invariants
        assert g.generation >= generation
        generation = g.generation
        assert (g.state is GroupState.EMPTY) == (not g.members)
        assert outstanding == {id(m.waiter) for m in g.members.values() if m.waiter is not None}
        assert all(g.members[mid].instance_id == inst for inst, mid in g.static.items())
        assert {m.instance_id for m in g.members.values() if m.instance_id} == set(g.static)
        if g.state is GroupState.STABLE:
            assert g.leader in g.members
            assert all(m.waiter is None for m in g.members.values())
            subs = {m.member_id: m.topics for m in g.members.values()}
            got = {m.member_id: m.assignment for m in g.members.values()}
            flat = [tp for tps in got.values() for tp in tps]
            assert len(flat) == len(set(flat))
            assert set(flat) <= _all_partitions(subs, PARTITIONS)
            if protocol != "cooperative-sticky":
                _check_valid(got, subs, PARTITIONS)
            for mid in g.members:
                assert g.sync(mid, g.generation)["assignment"] == [list(tp) for tp in got[mid]]
