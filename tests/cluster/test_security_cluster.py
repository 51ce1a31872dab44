"""A secured three-node cluster (docs/security.md): CURVE keys and the ACL authorizer.

The keys are made with the real ``sluice keys generate``: one server key shared by the
nodes, node keys ``node-0`` .. ``node-2`` and user keys. Each node has its own
authorized keys directory; ``authorizer = "acl"``, ``super_users = ["User:admin"]``.

- With every node key in every directory: an RF=3 topic replicates (a user allowed to
  write produces with acks=all, every replica is in sync afterwards); ACLs created
  through node 0 are enforced by nodes 1 and 2, and a deletion through node 2 by node
  0, within seconds (one ZooKeeper document); a client key, even a super user's, cannot
  fetch as a replica (a forged ``replica_id``: CLUSTER_AUTHORIZATION_FAILED).
- Node 2's key missing from nodes 0 and 1's directories: node 2 cannot replicate from
  them. It leaves the ISR of their partitions (it started in it: a new topic's ISR is
  every replica) and does not come back, while the other follower stays in; acks=all
  produces go on without it; the leader's node logs the refused key from node 2's
  address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ipc.client import Admin, Producer
from ipc.client.transport import Channel, client_context
from ipc.errors import ClusterAuthorizationFailedError, TopicAuthorizationFailedError
from ipc.protocol import Reply
from tests.cluster.harness import Cluster, toml_text, wait_until
from tests.integration.security_support import KeyRing

TIMEOUT_MS = 60_000
ACL_WAIT_S = 15.0
LAG_MS = 1500  # replica_lag_time_max_ms: a follower that does not fetch leaves the ISR after this


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing.generate(tmp_path_factory.mktemp("cluster-keys"), users=["admin", "alice"], nodes=[0, 1, 2])


def secured(make: Callable[..., Cluster], ring: KeyRing, authorized: dict[int, list[str]]) -> Cluster:
    """A started cluster whose node ``i`` trusts the keys ``authorized[i]``."""
    c = make({"replica_lag_time_max_ms": LAG_MS}, start=False)
    for n in c.nodes:
        directory = ring.authorize(c.base / f"authorized-{n.node_id}", authorized[n.node_id])
        n.options["security"] = ring.security_table(n.node_id, directory, authorizer="acl", super_users=["User:admin"])
        n.config_path.write_text(toml_text(n.options))
    c.client_security = ring.client("admin")
    return c.start()


def acl(principal: str, topic: str, operation: str) -> dict[str, Any]:
    return {
        "principal": principal,
        "resource_type": "topic",
        "resource_name": topic,
        "pattern_type": "literal",
        "operation": operation,
        "permission": "allow",
        "host": "*",
    }


def as_user(endpoint: str, ring: KeyRing, user: str) -> Admin:
    return Admin(endpoint, timeout_ms=TIMEOUT_MS, security=ring.client(user))


def raw(ring: KeyRing, user: str, endpoint: str, api: str, **fields: Any) -> Reply:
    ctx = client_context(security=ring.client(user))
    ch = Channel(ctx, endpoint)
    try:
        return ch.request(api, TIMEOUT_MS / 1000, **fields)
    finally:
        ch.close()
        ctx.term()


def produce(c: Cluster, ring: KeyRing, user: str, topic: str, partition: int, count: int) -> None:
    with Producer(c.bootstrap, acks="all", request_timeout_ms=TIMEOUT_MS, security=ring.client(user)) as p:
        futures = [p.send(topic, b"v%d" % i, partition=partition) for i in range(count)]
        for f in futures:
            f.result(TIMEOUT_MS / 1000)


def test_secured_cluster_replicates_and_shares_acls(cluster_factory: Callable[..., Cluster], ring: KeyRing) -> None:
    every = ["node-0", "node-1", "node-2", "admin", "alice"]
    c = secured(cluster_factory, ring, {0: every, 1: every, 2: every})
    t = "sec-rf3"
    c.create_topic(t, partitions=1, replication_factor=3)
    leader = c.wait_leader(t, 0)

    # alice has no ACL yet: refused everywhere
    with pytest.raises(TopicAuthorizationFailedError):
        produce(c, ring, "alice", t, 0, 1)
    for n in c.nodes:
        with as_user(n.endpoint, ring, "alice") as a:
            assert a.list_topics() == []

    # created through node 0, enforced by nodes 1 and 2 (and 0)
    with as_user(c.node(0).endpoint, ring, "admin") as a:
        a.create_acls([acl("User:alice", t, "write")])  # WRITE implies DESCRIBE
    for n in c.nodes:

        def sees(endpoint: str = n.endpoint) -> bool:
            with as_user(endpoint, ring, "alice") as a:
                return a.list_topics() == [t]

        wait_until(sees, ACL_WAIT_S, f"node {n.node_id} to apply the ACL created through node 0")

    wait_until(lambda: _produced(c, ring, t), ACL_WAIT_S, "alice's acks=all produce to be allowed")

    def in_sync() -> bool:
        st = c.partition_state(t, 0)
        return sorted(st["isr"]) == [0, 1, 2] == sorted(st["replicas"])

    wait_until(in_sync, 30.0, f"every replica of {t}-0 in sync")
    status = c.node(1).admin().cluster_status()
    part = next(p for p in status["partitions"] if p["topic"] == t)
    assert sorted(part["isr"]) == [0, 1, 2] and not part["under_replicated"]

    # a client key cannot fetch as a replica, not even a super user's
    endpoint = c.partition_state(t, 0)["endpoint"]
    for user in ("admin", "alice"):
        reply = raw(ring, user, endpoint, "fetch", topic=t, partition=0, offset=0, replica_id=(leader + 1) % 3)
        assert isinstance(reply.error, ClusterAuthorizationFailedError), (user, reply)
        assert "ClusterAction" in reply.error.message and not reply.frames

    # deleted through node 2, enforced by node 0
    with as_user(c.node(2).endpoint, ring, "admin") as a:
        assert len(a.delete_acls([{"principal": "User:alice"}])[0]) == 1

    def hidden() -> bool:
        with as_user(c.node(0).endpoint, ring, "alice") as a:
            return a.list_topics() == []

    wait_until(hidden, ACL_WAIT_S, "node 0 to apply the deletion made through node 2")


def _produced(c: Cluster, ring: KeyRing, topic: str) -> bool:
    produce(c, ring, "alice", topic, 0, 5)
    return True


def test_follower_with_unknown_node_key_cannot_replicate(
    cluster_factory: Callable[..., Cluster], ring: KeyRing
) -> None:
    trusted = ["node-0", "node-1", "admin"]
    c = secured(cluster_factory, ring, {0: trusted, 1: trusted, 2: [*trusted, "node-2"]})
    t = "sec-bad"
    c.create_topic(t, partitions=3, replication_factor=3)
    mine = [p for p in range(3) if c.wait_leader(t, p) != 2]
    assert mine, "no partition led by node 0 or 1"

    def dropped(p: int) -> bool:
        st = c.partition_state(t, p)
        return 2 not in st["isr"] and sorted(st["isr"]) == sorted(n for n in st["replicas"] if n != 2)

    for p in mine:
        wait_until(lambda p=p: dropped(p), 30.0, f"node 2 to leave the ISR of {t}-{p}")  # type: ignore[misc]
        produce(c, ring, "admin", t, p, 3)  # acks=all goes on with the two in-sync replicas
    for p in mine:
        st = c.partition_state(t, p)
        assert 2 not in st["isr"], f"node 2 joined the ISR of {t}-{p}: {st}"
        leader = c.node(int(st["leader"]))
        refusal = f"refused a client from {c.node(2).host}: unknown key"

        def logged(text: str = refusal, log: Callable[[], str] = leader.log_text) -> bool:
            return text in log()

        wait_until(logged, 15.0, f"node {leader.node_id}'s log to show node 2's refused key")
