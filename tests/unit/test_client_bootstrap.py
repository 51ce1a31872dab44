"""Bootstrap endpoints (ipc/client/transport.py ``parse_bootstrap``)."""

from __future__ import annotations

import pytest

from ipc.client.transport import parse_bootstrap


def test_urls_lists_and_kafka_style_host_port() -> None:
    assert parse_bootstrap("tcp://a:6100,tcp://b:6101") == ["tcp://a:6100", "tcp://b:6101"]
    assert parse_bootstrap("localhost:6100") == ["tcp://localhost:6100"]  # as Kafka's bootstrap_servers
    assert parse_bootstrap(" a:1 , tcp://b:2 ") == ["tcp://a:1", "tcp://b:2"]
    assert parse_bootstrap(["[::1]:6100"]) == ["tcp://[::1]:6100"]


@pytest.mark.parametrize("bad", ["a", "a:port", "http://a:1", ",", "tcp://a"])
def test_bad_endpoints_are_refused_with_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        parse_bootstrap(bad)
