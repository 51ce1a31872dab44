"""The consumer's subscription state (ipc/client/subscription.py): subscribe and assign,
the assignment and its positions, positions carried across a coordinator change, and
the reset policy. Pure logic: no consumer, no socket."""

from __future__ import annotations

import re

import pytest

from ipc.client.subscription import (
    METADATA_REFRESH_S,
    OffsetReset,
    SubscriptionState,
    TopicPartitionState,
    partition_counts_changed,
    start_offset,
)
from ipc.errors import InvalidConfigError, OffsetOutOfRangeError, RequestTimedOutError
from ipc.protocol import EARLIEST, LATEST


def test_the_reset_policy_is_checked_and_names_the_end_to_start_from() -> None:
    with pytest.raises(ValueError, match="auto_offset_reset='middle': allowed earliest, latest, none"):
        SubscriptionState("middle")
    assert SubscriptionState("earliest").reset_timestamp("t", 0) == EARLIEST
    assert SubscriptionState("latest").reset_timestamp("t", 0) == LATEST
    none = SubscriptionState("none")
    assert none.reset is OffsetReset.NONE
    with pytest.raises(OffsetOutOfRangeError, match="no position for t-3 and auto_offset_reset='none'"):
        none.reset_timestamp("t", 3)


# ---------------------------------------------------------------------------- assign


def test_assign_replaces_the_assignment_and_keeps_positions_of_partitions_kept() -> None:
    s = SubscriptionState("latest")
    assert s.assign([("a", 0), ("a", 1)]) == [("a", 0), ("a", 1)]
    s.state("a", 1).position = 42
    s.assign([("b", 0), ("a", 1)])
    assert list(s.assignment) == [("a", 1), ("b", 0)]  # kept first, then added
    assert s.state("a", 1).position == 42 and s.state("b", 0).position is None
    assert s.positions() == {("a", 1): 42}


@pytest.mark.parametrize(
    ("pairs", "error"),
    [
        ([("a", 0), ["a", 1]], TypeError),
        ([("a", "0")], TypeError),
        ([("a", True)], TypeError),
        ([("bad name!", 0)], InvalidConfigError),
        ([("a", -1)], ValueError),
    ],
)
def test_bad_pairs_are_refused_before_anything_changes(pairs: list[object], error: type[Exception]) -> None:
    s = SubscriptionState("latest")
    s.assign([("kept", 0)])
    with pytest.raises(error):
        s.assign(pairs)
    assert list(s.assignment) == [("kept", 0)]


def test_a_partition_not_assigned_has_no_state() -> None:
    s = SubscriptionState("latest")
    s.assign([("a", 0)])
    assert isinstance(s.state("a", 0), TopicPartitionState)
    with pytest.raises(ValueError, match="a-1 is not assigned to this consumer"):
        s.state("a", 1)


def test_assign_and_subscribe_do_not_mix() -> None:
    s = SubscriptionState("latest")
    s.subscribe(["a"])
    with pytest.raises(ValueError, match="do not mix"):
        s.assign([("a", 0)])


# ---------------------------------------------------------------------------- subscribe


def test_a_topic_list_is_checked_and_joined_sorted_without_duplicates() -> None:
    s = SubscriptionState("latest")
    with pytest.raises(InvalidConfigError):
        s.subscribe(["ok", "not ok"])
    with pytest.raises(InvalidConfigError, match="topics must be strings"):
        s.subscribe(["ok", 7])  # type: ignore[list-item]
    s.subscribe(["b", "a", "b"])
    assert s.subscribed_topics(0.0, lambda: {"a": 1}) == (["a", "b"], False)


def test_a_pattern_matches_whole_names_skips_internal_topics_and_is_rechecked() -> None:
    s = SubscriptionState("latest")
    with pytest.raises(ValueError, match="subscription pattern '\\(' is invalid"):
        s.subscribe("(")
    s.subscribe("orders-.*")
    assert isinstance(s.subscription, re.Pattern)
    listed: dict[str, int | None] = dict.fromkeys(
        ["orders-eu", "orders-us", "xorders-eu", "__orders-internal", "orders"], 1
    )
    calls: list[float] = []

    def list_topics() -> dict[str, int | None]:
        calls.append(0)
        return listed

    assert s.subscribed_topics(10.0, list_topics) == (["orders-eu", "orders-us"], False)
    listed["orders-ap"] = 1
    assert s.subscribed_topics(10.0 + METADATA_REFRESH_S / 2, list_topics) == (["orders-eu", "orders-us"], False)
    assert len(calls) == 1  # not listed again before METADATA_REFRESH_S
    topics, changed = s.subscribed_topics(10.0 + METADATA_REFRESH_S, list_topics)
    assert topics == ["orders-ap", "orders-eu", "orders-us"] and changed  # the member rejoins


def test_a_first_pattern_match_is_not_a_change_and_a_failed_listing_keeps_the_last_match() -> None:
    s = SubscriptionState("latest")
    s.subscribe("t.*")
    assert s.subscribed_topics(0.0, lambda: {"t1": 1}) == (["t1"], False)

    def fail() -> dict[str, int | None]:
        raise RequestTimedOutError("no node")

    assert s.subscribed_topics(METADATA_REFRESH_S, fail) == (["t1"], False)


def test_subscribing_again_forgets_the_earlier_match() -> None:
    s = SubscriptionState("latest")
    s.subscribe("t.*")
    s.subscribed_topics(0.0, lambda: {"t1": 1})
    s.subscribe("u.*")
    assert s.subscribed_topics(1.0, lambda: {"t1": 1, "u1": 1}) == (["u1"], False)


def test_partition_counts_changed_when_a_subscribed_topic_gains_appears_or_goes() -> None:
    before = {"a": 2, "b": 1}
    assert not partition_counts_changed(before, {"a": 2, "b": 1, "other": 9}, ["a", "b"])
    assert partition_counts_changed(before, {"a": 4, "b": 1}, ["a", "b"])  # partitions added
    assert partition_counts_changed(before, {"a": 2}, ["a", "b"])  # b deleted
    assert partition_counts_changed(before, {"a": 2, "b": 1, "c": 3}, ["a", "b", "c"])  # c created
    assert not partition_counts_changed(before, {"a": None, "b": 1}, ["a", "b"])  # a unknown this time
    assert not partition_counts_changed(before, {"a": 2, "b": 1, "x": 3}, ["a", "b"])  # x not subscribed


def test_a_topic_list_rejoins_when_a_topic_gains_partitions_checked_every_refresh() -> None:
    s = SubscriptionState("latest")
    s.subscribe(["a", "b"])
    counts: dict[str, int | None] = {"a": 2, "b": 1}
    calls: list[int] = []

    def topic_partitions() -> dict[str, int | None]:
        calls.append(0)
        return counts

    assert s.subscribed_topics(0.0, topic_partitions) == (["a", "b"], False)  # the first look
    counts["a"] = 4
    assert s.subscribed_topics(METADATA_REFRESH_S / 2, topic_partitions) == (["a", "b"], False)
    assert len(calls) == 1  # no metadata request before METADATA_REFRESH_S
    assert s.subscribed_topics(METADATA_REFRESH_S, topic_partitions) == (["a", "b"], True)
    assert s.partition_counts == {"a": 4, "b": 1}
    counts["a"] = None  # an error this time: the last count stands, no rejoin
    assert s.subscribed_topics(2 * METADATA_REFRESH_S, topic_partitions) == (["a", "b"], False)
    assert s.partition_counts == {"a": 4, "b": 1}
    counts["a"] = 4
    assert s.subscribed_topics(3 * METADATA_REFRESH_S, topic_partitions) == (["a", "b"], False)


def test_a_pattern_rejoins_when_a_matched_topic_gains_partitions_or_a_first_topic_appears() -> None:
    s = SubscriptionState("latest")
    s.subscribe("t.*")
    counts: dict[str, int | None] = {}
    assert s.subscribed_topics(0.0, lambda: counts) == ([], False)
    counts["t1"] = 1  # the first match after joining with none
    assert s.subscribed_topics(METADATA_REFRESH_S, lambda: counts) == (["t1"], True)
    counts["t1"] = 3
    assert s.subscribed_topics(2 * METADATA_REFRESH_S, lambda: counts) == (["t1"], True)
    assert s.subscribed_topics(3 * METADATA_REFRESH_S, lambda: counts) == (["t1"], False)


# ---------------------------------------------------------------------------- group assignments


def test_a_group_assignment_returns_the_partitions_added() -> None:
    s = SubscriptionState("earliest")
    s.subscribe(["a"])
    assert s.assign_from_group([("a", 0), ("a", 1)], carry=False) == [("a", 0), ("a", 1)]
    s.state("a", 0).position = 5
    assert s.assign_from_group([("a", 0), ("a", 2)], carry=False) == [("a", 2)]
    assert s.positions() == {("a", 0): 5}
    assert s.carried == {}


def test_positions_carried_across_a_coordinator_change_resume_after_both() -> None:
    s = SubscriptionState("earliest")
    s.subscribe(["a"])
    s.assign_from_group([("a", 0), ("a", 1), ("a", 2)], carry=False)
    s.state("a", 0).position = 50
    s.state("a", 1).position = 10  # a-2 has no position: nothing to carry
    s.assign_from_group([], carry=True)
    assert s.carried == {("a", 0): 50, ("a", 1): 10}
    s.assign_from_group([("a", 0), ("a", 1), ("a", 2)], carry=False)
    assert s.resume_offset(("a", 0), 40) == 50  # handed out here up to 50
    assert s.resume_offset(("a", 1), 30) == 30  # processed elsewhere up to 30 meanwhile
    assert s.resume_offset(("a", 2), None) is None  # the reset policy decides


@pytest.mark.parametrize(
    ("committed", "carried", "start"),
    [(None, None, None), (7, None, 7), (None, 9, 9), (7, 9, 9), (12, 9, 12)],
)
def test_start_offset_is_the_larger_of_committed_and_carried(
    committed: int | None, carried: int | None, start: int | None
) -> None:
    assert start_offset(committed, carried) == start
