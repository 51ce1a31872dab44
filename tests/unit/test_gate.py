"""appliance/gate.py: the principal and host of a peer, protected mode, the authorizer
hook; and the ACL document of appliance/acl_store.py against a local coordinator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.acl_store import AclApis, parse_acls
from appliance.coordinator.local import LocalCoordinator
from appliance.gate import Gate, is_loopback
from appliance.security_config import SecurityConfig
from ipc.acl import AclBinding
from ipc.errors import InvalidRequestError, ProtectedModeError, TopicAuthorizationFailedError
from ipc.protocol import Principal, Request


class FakeFrame:
    """A received frame's properties, as zmq.Frame.get gives them."""

    def __init__(self, **props: str) -> None:
        self.props = props
        self.asked = 0
        self.bytes = b'{"api": "metadata", "v": 1, "id": 1}'  # its content: a header (read for on_behalf_of)

    def get(self, name: str) -> str:
        self.asked += 1
        return self.props[name]


def _secured() -> SecurityConfig:
    # a config that says CURVE is on (the key files are not read by the gate itself)
    return SecurityConfig("/k/server.key_secret", "/k/node.key_secret", "/k/auth", authorizer="acl")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1", ""])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "::ffff:10.0.0.1", "192.168.1.127", "fe80::1"])
def test_other_hosts(host: str) -> None:
    assert not is_loopback(host)


def test_protected_mode_refuses_other_hosts_with_a_clear_message() -> None:
    gate = Gate(SecurityConfig())
    assert gate.authenticate(b"p1", FakeFrame(**{"Peer-Address": "127.0.0.1"}))[1] == "127.0.0.1"
    with pytest.raises(ProtectedModeError, match="protected_mode = false"):
        gate.authenticate(b"p2", FakeFrame(**{"Peer-Address": "10.1.2.3"}))
    open_gate = Gate(SecurityConfig(protected_mode=False))
    principal, host = open_gate.authenticate(b"p2", FakeFrame(**{"Peer-Address": "10.1.2.3"}))
    assert (str(principal), host) == ("User:ANONYMOUS", "10.1.2.3")


def test_principal_comes_from_each_messages_zap_user_id() -> None:
    gate = Gate(_secured())
    frame = FakeFrame(**{"Peer-Address": "10.0.0.9", "User-Id": "User:alice"})
    principal, host = gate.authenticate(b"peer", frame)
    assert principal == Principal("User", "alice") and host == "10.0.0.9"
    # a client that reconnects with the routing identity of a peer that left gets its
    # own principal and address, never the departed peer's
    other = FakeFrame(**{"Peer-Address": "10.0.0.66", "User-Id": "User:bob"})
    assert gate.authenticate(b"peer", other) == (Principal("User", "bob"), "10.0.0.66")


def test_protected_mode_is_judged_per_message_not_per_routing_identity() -> None:
    gate = Gate(SecurityConfig())
    gate.authenticate(b"same-id", FakeFrame(**{"Peer-Address": "127.0.0.1"}))
    with pytest.raises(ProtectedModeError):
        gate.authenticate(b"same-id", FakeFrame(**{"Peer-Address": "10.9.9.9"}))
    # with keys, protected mode does not apply: every client is authenticated
    secured = Gate(_secured())
    node, _ = secured.authenticate(b"n", FakeFrame(**{"Peer-Address": "10.0.0.2", "User-Id": "Node:2"}))
    assert str(node) == "Node:2"


def test_authorize_uses_the_current_acls() -> None:
    gate = Gate(_secured())
    req = Request("produce", 1, {"topic": "orders", "partition": 0}, [], Principal("User", "alice"), "10.0.0.9")
    with pytest.raises(TopicAuthorizationFailedError, match="User:alice"):
        gate.authorize(req)
    allow = AclBinding.from_json(
        {
            "principal": "User:alice",
            "resource_type": "topic",
            "resource_name": "orders",
            "pattern_type": "literal",
            "operation": "write",
            "permission": "allow",
        }
    )
    gate.set_acls([allow])
    gate.authorize(req)
    gate.set_acls([])
    with pytest.raises(TopicAuthorizationFailedError):
        gate.authorize(req)


def test_without_an_authorizer_everything_is_allowed() -> None:
    req = Request("delete_topic", 1, {"topic": "x"}, [], Principal("User", "ANONYMOUS"), "")
    Gate(SecurityConfig()).authorize(req)


def _binding(principal: str, topic: str, op: str = "read", permission: str = "allow") -> dict[str, Any]:
    return {
        "principal": principal,
        "resource_type": "topic",
        "resource_name": topic,
        "pattern_type": "literal",
        "operation": op,
        "permission": permission,
        "host": "*",
    }


def _req(api: str, **fields: Any) -> Request:
    return Request(api, 1, fields, [], Principal("User", "admin"), "127.0.0.1")


def test_acl_document_create_describe_delete(tmp_path: Path) -> None:
    coord = LocalCoordinator(str(tmp_path), 0)
    coord.start(lambda: None)
    apis = AclApis(lambda: coord)
    a, b = _binding("User:alice", "orders"), _binding("User:bob", "orders", "write", "deny")
    assert apis.create(_req("create_acls", acls=[a, b, a])).fields == {"created": 3}
    assert [x.to_json() for x in apis.current()] == [a, b]  # duplicates kept once
    found = apis.describe(_req("describe_acls", filter={"principal": "User:bob"})).fields["acls"]
    assert found == [b]
    deleted = apis.delete(_req("delete_acls", filters=[{"principal": "User:alice"}, {"operation": "write"}]))
    assert deleted.fields == {"deleted": [[a], [b]]}
    assert apis.current() == ()
    # the document survives a restart of the local coordinator
    apis.create(_req("create_acls", acls=[a]))
    again = LocalCoordinator(str(tmp_path), 0)
    again.start(lambda: None)
    assert [x.to_json() for x in parse_acls(again.document("acls")[0])] == [a]


def test_a_bad_binding_changes_nothing(tmp_path: Path) -> None:
    coord = LocalCoordinator(str(tmp_path), 0)
    coord.start(lambda: None)
    apis = AclApis(lambda: coord)
    with pytest.raises(InvalidRequestError):
        apis.create(_req("create_acls", acls=[_binding("User:alice", "orders"), {"principal": "nobody"}]))
    assert coord.document("acls") == (None, -1)


def test_parse_acls_refuses_a_malformed_document() -> None:
    assert parse_acls(None) == ()
    for bad in ([], {"acls": "x"}, {"other": []}):
        with pytest.raises(InvalidRequestError):
            parse_acls(bad)
