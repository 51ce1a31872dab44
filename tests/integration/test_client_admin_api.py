"""Issue 19's admin additions on a real node: create_topics / delete_topics (every topic
tried, failures named together), list_offsets (earliest, latest, by timestamp, from the
partitions' leaders)."""

from __future__ import annotations

import pytest

from ipc.client import Admin, NewTopic, Producer
from ipc.client.structs import OffsetAndTimestamp
from ipc.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError
from tests.integration.conftest import Node, wait_until


def test_create_and_delete_topics_in_one_call(node: Node) -> None:
    with node.admin() as admin:
        admin.create_topics([NewTopic("b1", num_partitions=2), "b2", {"name": "b3", "config": {"fsync": "always"}}])
        assert {"b1", "b2", "b3"} <= set(admin.list_topics())
        assert admin.partition_count("b1") == 2
        assert admin.describe_topic("b3")["config"]["fsync"] == "always"
        admin.create_topics(["b1", "b2"], exist_ok=True)
        with pytest.raises(TopicAlreadyExistsError) as e:
            admin.create_topics(["b4", "b1", "b2"])
        assert set(e.value.errors) == {"b1", "b2"} and "2 of 3" in e.value.message  # type: ignore[attr-defined]
        assert "b4" in admin.list_topics()  # the others were created
        admin.delete_topics(["b1", "b2", "b3", "b4"])
        wait_until(lambda: not {"b1", "b2", "b3", "b4"} & set(admin.list_topics()), 30, "the topics to go")


def test_list_offsets_from_the_leaders(node: Node) -> None:
    t0 = 1_700_000_000_000
    with node.admin() as admin:
        admin.create_topic("lo", partitions=2)
        with Producer(node.bootstrap) as p:
            for i in range(4):
                p.send("lo", b"x", partition=0, timestamp_ms=t0 + 1000 * i)
            p.flush(timeout=30)
        got = admin.list_offsets(
            {("lo", 0): "earliest", ("lo", 1): "latest", ("lo", 0) + (): "earliest"}  # duplicates collapse
        )
        assert got == {("lo", 0): 0, ("lo", 1): 0}
        got = admin.list_offsets({("lo", 0): "latest"})
        assert got[("lo", 0)] == 4
        hit = admin.list_offsets({("lo", 0): t0 + 1500})[("lo", 0)]
        assert isinstance(hit, OffsetAndTimestamp) and (hit.offset, hit.timestamp) == (2, t0 + 2000)
        assert admin.list_offsets({("lo", 0): t0 + 60_000}) == {("lo", 0): None}
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.list_offsets({("nosuch", 0): "latest"}, timeout_ms=3000)
        with pytest.raises(UnknownTopicOrPartitionError, match="no partition 7"):
            admin.list_offsets({("lo", 7): "latest"})
        with pytest.raises(ValueError, match="offset spec"):
            admin.list_offsets({("lo", 0): "middle"})
        assert "nosuch" not in admin.list_topics()


def test_bootstrap_servers_host_port_and_future_aliases(node: Node) -> None:
    with Admin(bootstrap_servers=f"127.0.0.1:{node.port}") as admin:
        admin.create_topic("al")
    got: list[int] = []
    with Producer(bootstrap_servers=[f"127.0.0.1:{node.port}"]) as p:
        fut = p.send("al", b"v").add_callback(lambda md: got.append(md.offset))
        assert fut.get(timeout=30).offset == 0
        p.flush(timeout=30)
    assert got == [0]
