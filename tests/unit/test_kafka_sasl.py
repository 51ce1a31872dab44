"""SASL on the Kafka listener (ipc/kafka/sasl.py, appliance/kafka/credentials.py):
SCRAM-SHA-256/512 and PLAIN against salted credentials; the credentials file."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from appliance.kafka.credentials import CredentialStore, add_user, load, remove_user
from ipc.errors import InvalidConfigError
from ipc.kafka.sasl import (
    PLAIN,
    SCRAM_MECHANISMS,
    SaslFailed,
    client_exchange_for_tests,
    make_credential,
    new_exchange,
)


def lookup_for(password: str = "s3cret") -> dict[str, dict[str, object]]:
    return {"alice": {m: make_credential(m, password) for m in SCRAM_MECHANISMS}}


@pytest.mark.parametrize("mech", SCRAM_MECHANISMS)
def test_scram_round_trip(mech: str) -> None:
    users = lookup_for()
    ex = new_exchange(mech, lambda u: users.get(u, {}))  # type: ignore[arg-type, return-value]
    first, final = client_exchange_for_tests(mech, "alice", "s3cret")
    server_first = ex.step(first)
    assert server_first.startswith(b"r=") and not ex.done
    server_final = ex.step(final(server_first))
    assert server_final.startswith(b"v=") and ex.user == "alice"


@pytest.mark.parametrize("user, password", [("alice", "wrong"), ("nobody", "s3cret")])
def test_scram_refuses_a_wrong_password_and_an_unknown_user_alike(user: str, password: str) -> None:
    users = lookup_for()
    ex = new_exchange("SCRAM-SHA-256", lambda u: users.get(u, {}))  # type: ignore[arg-type, return-value]
    first, final = client_exchange_for_tests("SCRAM-SHA-256", user, password)
    server_first = ex.step(first)
    assert b",s=" in server_first and b",i=4096" in server_first
    with pytest.raises(SaslFailed, match="invalid credentials with SASL mechanism SCRAM-SHA-256"):
        ex.step(final(server_first))
    assert not ex.done


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"p=tls-unique,,n=alice,r=x",
        b"n,,r=x,n=alice",
        b"n,,n=al=ice,r=x",
        b"\xff\xfe",
        b"n,,n=a,r=x,m=1",
        b"x" * 5000,
    ],
)
def test_scram_malformed(message: bytes) -> None:
    ex = new_exchange("SCRAM-SHA-512", lambda u: {})
    with pytest.raises(SaslFailed):
        ex.step(message)


def test_scram_final_with_another_nonce() -> None:
    users = lookup_for()
    ex = new_exchange("SCRAM-SHA-256", lambda u: users.get(u, {}))  # type: ignore[arg-type, return-value]
    first, _ = client_exchange_for_tests("SCRAM-SHA-256", "alice", "s3cret")
    ex.step(first)
    with pytest.raises(SaslFailed, match="nonce"):
        ex.step(b"c=biws,r=other,p=" + base64.b64encode(b"x" * 32))


def test_plain() -> None:
    users = lookup_for()
    look = lambda u: users.get(u, {})  # noqa: E731
    ex = new_exchange(PLAIN, look)  # type: ignore[arg-type]
    assert ex.step(b"\0alice\0s3cret") == b"" and ex.user == "alice"
    for bad in (b"\0alice\0nope", b"\0bob\0s3cret", b"alice", b"bob\0alice\0s3cret"):
        with pytest.raises(SaslFailed):
            new_exchange(PLAIN, look).step(bad)  # type: ignore[arg-type]


def test_credentials_file(tmp_path: Path) -> None:
    path = str(tmp_path / "users.toml")
    add_user(path, "alice", "pw1")
    add_user(path, "bob", "pw2", mechanisms=["SCRAM-SHA-512"], iterations=8192)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = Path(path).read_text()
    assert "pw1" not in text and "pw2" not in text
    users = load(path)
    assert set(users) == {"alice", "bob"} and set(users["bob"]) == {"SCRAM-SHA-512"}
    assert users["bob"]["SCRAM-SHA-512"].iterations == 8192
    ex = new_exchange(PLAIN, lambda u: users.get(u, {}))
    ex.step(b"\0bob\0pw2")
    assert ex.user == "bob"
    assert remove_user(path, "bob") and not remove_user(path, "bob")
    with pytest.raises(InvalidConfigError, match="name"):
        add_user(path, "a b", "pw")


def test_store_reloads_and_keeps_the_old_users_on_a_bad_change(tmp_path: Path) -> None:
    path = str(tmp_path / "users.toml")
    add_user(path, "alice", "pw")
    now = [0.0]
    store = CredentialStore(path, clock=lambda: now[0])
    assert store.lookup("alice") and not store.lookup("carol")
    add_user(path, "carol", "pw")
    now[0] = 2.0
    assert store.lookup("carol")
    Path(path).write_text("not = [toml")
    now[0] = 4.0
    assert store.lookup("carol")  # the malformed change is logged; the users loaded before stay


@pytest.mark.parametrize(
    "text, match",
    [("x = 1", "table per SCRAM"), ('["a"."SCRAM-SHA-1"]\nx=1', "SCRAM-SHA-1"),
     ('["a"."SCRAM-SHA-256"]\niterations = 4096\nsalt = "!!"', "base64")],
)
def test_bad_credentials_file(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "u.toml").write_text(text)
    with pytest.raises(InvalidConfigError, match=match):
        load(str(tmp_path / "u.toml"))
