"""A consumer group whose subscribed topic gains partitions rebalances by itself.

Each member's consumer looks at its subscribed topics' partition counts every
``METADATA_REFRESH_S`` (``ipc/client/subscription.py``); a topic that gained partitions
(``Admin.alter_topic``) makes it rejoin, so the next generation's assignment covers the
new partitions, as in Kafka. Members are ``group_consumer`` processes, started, observed
and SIGKILLed by the fixtures and helpers of ``test_groups.py``; every wait is bounded.
"""

from __future__ import annotations

from collections import Counter

import tests.integration.test_groups as tg
from ipc.client.subscription import METADATA_REFRESH_S
from tests.integration.conftest import Node

# the fixtures of test_groups.py: a node, a raw front API client, member processes (over TCP)
node = tg.node
front = tg.front
members = tg.members
same_host = tg.same_host

GROUP = "grow"
REBALANCE_WITHIN_S = 15.0  # one metadata look (METADATA_REFRESH_S) plus a rebalance, with room


def test_partitions_added_to_a_subscribed_topic_are_assigned_and_read_once(
    node: Node, front: tg.Front, members: tg.MemberFactory
) -> None:
    """Two members on a 2-partition topic; the topic grows to 4 partitions. Within
    ``REBALANCE_WITHIN_S`` the group's assignment covers all 4 without any member joining
    or leaving, and every record is read, those in the new partitions exactly once."""
    assert METADATA_REFRESH_S < REBALANCE_WITHIN_S
    tg.create_topic(node, tg.TOPIC, 2)
    produced: dict[tuple[int, int], str] = {}
    before = tg.Feeder(node, partitions=2, tag="before")
    try:
        before.feed(rounds=20)
        live = [members(node, GROUP, f"c{i}") for i in range(2)]
        d = tg.wait_stable(front, GROUP, live, partitions=2)
        produced.update(before.produced())
    finally:
        before.close()
    tg.wait_consumed(live, produced)
    generation = d["generation"]

    with node.admin() as admin:
        admin.alter_topic(tg.TOPIC, partitions=4)
    # a new producer: the first one would see the new partitions only at its next refresh
    after = tg.Feeder(node, partitions=4, tag="after")
    try:
        after.feed(rounds=10)  # records in the new partitions before the group noticed them
        d = tg.wait_stable(front, GROUP, live, partitions=4, timeout=REBALANCE_WITHIN_S)
        assert d["generation"] > generation
        assert len(d["members"]) == 2
        owned = [m.owned() for m in live]
        assert set().union(*owned) == tg.all_tps(partitions=4) and sum(map(len, owned)) == 4, owned
        after.feed(rounds=10)
        produced.update(after.produced())
    finally:
        after.close()
    tg.wait_consumed(live, produced)

    deliveries = Counter((p, off) for m in live for p, off, _ in m.records())
    new = {k for k in produced if k[0] >= 2}
    assert len(new) == 2 * 20
    twice = sorted(k for k in new if deliveries[k] != 1)
    assert not twice, f"records in the new partitions read more than once: {twice[:10]}"
    tg.assert_one_owner_per_generation(live)
