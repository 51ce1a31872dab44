"""The gate's on-behalf-of field (appliance/gate.py): honoured from a node only."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from appliance.gate import Gate
from appliance.security_config import SecurityConfig
from ipc.errors import InvalidRequestError
from ipc.protocol import Principal


class FakeFrame:
    """A zmq.Frame's two ZAP properties and its bytes."""

    def __init__(self, header: dict[str, Any], user: str, address: str = "10.0.0.7") -> None:
        self.bytes = orjson.dumps(header)
        self._props = {"User-Id": user, "Peer-Address": address}

    def get(self, name: str) -> str:
        return self._props[name]


def gate() -> Gate:
    return Gate(SecurityConfig(server_key_file="s", node_key_file="n", authorized_keys_dir="d", authorizer="acl"))


OBO = {"api": "produce", "id": 1, "on_behalf_of": {"principal": "User:alice", "host": "192.0.2.9"}}


def test_a_node_speaks_for_a_user() -> None:
    assert gate().authenticate(b"p", FakeFrame(OBO, "Node:1")) == (Principal("User", "alice"), "192.0.2.9")


def test_a_node_without_the_field_is_itself() -> None:
    assert gate().authenticate(b"p", FakeFrame({"api": "produce", "id": 1}, "Node:1")) == (
        Principal("Node", "1"),
        "10.0.0.7",
    )


def test_a_user_cannot_impersonate() -> None:
    """The field from a User principal is ignored: the request stays the sender's."""
    forged = {**OBO, "on_behalf_of": {"principal": "User:admin", "host": "127.0.0.1"}}
    assert gate().authenticate(b"p", FakeFrame(forged, "User:mallory")) == (Principal("User", "mallory"), "10.0.0.7")


@pytest.mark.parametrize(
    "value",
    [
        {"principal": "Node:2", "host": ""},  # a node cannot be named
        {"principal": "alice", "host": ""},
        {"principal": "User:alice", "host": 5},
        {"principal": "User:alice", "host": "x" * 65},
        "User:alice",
    ],
)
def test_a_bad_field_is_refused(value: Any) -> None:
    with pytest.raises(InvalidRequestError, match="on_behalf_of"):
        gate().authenticate(b"p", FakeFrame({**OBO, "on_behalf_of": value}, "Node:1"))


def test_without_curve_nobody_is_a_node() -> None:
    g = Gate(SecurityConfig(protected_mode=False))
    assert g.authenticate(b"p", FakeFrame(OBO, "Node:1"))[0] == Principal("User", "ANONYMOUS")
