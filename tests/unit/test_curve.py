"""ipc/curve.py: key files, the authorized directory, the ZAP handler's answers, and the
security config that names them (appliance/security_config.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from appliance.security_config import SecurityConfig
from ipc import curve
from ipc.errors import InvalidConfigError


def test_generate_writes_a_public_and_a_private_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        public, secret = curve.generate(str(tmp_path / "keys"), "alice", "User:alice")
    finally:
        os.umask(old)
    assert os.stat(secret).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "keys").st_mode & 0o777 == 0o700
    pub = curve.load_key_file(public, secret=False)
    sec = curve.load_key_file(secret, secret=True)
    assert pub.public == sec.public and pub.principal == sec.principal == "User:alice"
    assert zmq.curve_public(sec.secret) == sec.public
    with pytest.raises(FileExistsError):  # never overwritten
        curve.generate(str(tmp_path / "keys"), "alice", "User:alice")


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_generate_refuses_a_bad_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        curve.generate(str(tmp_path), name)


@pytest.mark.parametrize("principal", ["alice", "Group:x", "Node:abc", "User:", "User:a b"])
def test_generate_refuses_a_bad_principal(tmp_path: Path, principal: str) -> None:
    with pytest.raises(ValueError, match="principal"):
        curve.generate(str(tmp_path), "k", principal)


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    _, secret = curve.generate(str(tmp_path), "alice", "User:alice")
    os.chmod(secret, 0o644)
    with pytest.raises(InvalidConfigError, match="readable by others"):
        curve.load_key_file(secret, secret=True)


@pytest.mark.parametrize(
    "text, why",
    [
        ("public_key = 'short'\n", "40-character"),
        ('public_key = "' + "~" * 40 + '"\n', "Z85"),
        ("not toml = = =\n", "unreadable"),
        ('principal = "nobody"\npublic_key = "' + "0" * 40 + '"\n', "principal"),
    ],
)
def test_malformed_key_files_are_one_clear_error(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(text)
    with pytest.raises(InvalidConfigError, match=why):
        curve.load_key_file(str(path), secret=False)


def test_a_secret_file_whose_public_key_does_not_match(tmp_path: Path) -> None:
    _, secret = curve.generate(str(tmp_path), "alice", "User:alice")
    other, _ = zmq.curve_keypair()
    text = Path(secret).read_text().splitlines()
    swapped = [f'public_key = "{other.decode()}"' if x.startswith("public_key") else x for x in text]
    Path(secret).write_text("\n".join(swapped))
    with pytest.raises(InvalidConfigError, match="does not belong"):
        curve.load_key_file(secret, secret=True)


def test_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="sluice keys generate"):
        curve.load_key_file(str(tmp_path / "none.key_secret"), secret=True)


def test_authorized_directory_maps_keys_to_principals(tmp_path: Path) -> None:
    keys, auth = tmp_path / "keys", tmp_path / "auth"
    auth.mkdir()
    for name in ("alice", "bob"):
        public, _ = curve.generate(str(keys), name, f"User:{name}")
        os.link(public, auth / f"{name}.key")
    (auth / "README").write_text("not a key")  # other files are ignored
    found = curve.load_authorized(str(auth))
    assert sorted(found.values()) == ["User:alice", "User:bob"]
    alice = curve.load_key_file(str(auth / "alice.key"), secret=False)
    assert found[z85.decode(alice.public)] == "User:alice"


def test_a_key_without_principal_cannot_be_authorized(tmp_path: Path) -> None:
    public, _ = curve.generate(str(tmp_path), "server")
    with pytest.raises(InvalidConfigError, match="no principal"):
        curve.load_authorized(str(tmp_path))
    assert curve.load_key_file(public, secret=False).principal == ""


def test_zap_answers_known_keys_with_their_principal(tmp_path: Path) -> None:
    public, _ = curve.generate(str(tmp_path / "k"), "alice", "User:alice")
    (tmp_path / "auth").mkdir()
    os.link(public, tmp_path / "auth" / "alice.key")
    ctx = zmq.Context()
    try:
        zap = curve.ZapHandler(ctx, str(tmp_path / "auth"))  # not started: answer() is pure
        raw = z85.decode(curve.load_key_file(public, secret=False).public)
        ok = zap.answer([b"1.0", b"7", b"sluice", b"127.0.0.1", b"", b"CURVE", raw])
        assert ok[:3] == [b"1.0", b"7", b"200"] and ok[4] == b"User:alice"
        other, _ = zmq.curve_keypair()
        no = zap.answer([b"1.0", b"8", b"sluice", b"127.0.0.1", b"", b"CURVE", z85.decode(other)])
        assert no[2] == b"400" and no[4] == b""
        assert zap.answer([b"1.0", b"9", b"sluice", b"127.0.0.1", b"", b"NULL"])[2] == b"400"
        assert zap.answer([b"junk"])[2] == b"500"
        assert (zap.accepted, zap.refused) == (1, 2)
        zap._sock.close(0)
    finally:
        ctx.destroy(0)


def test_configure_server_needs_a_zap_handler() -> None:
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        public, secret = zmq.curve_keypair()
        with pytest.raises(RuntimeError, match="ZAP handler"):
            curve.configure_server(sock, curve.KeyPair(public, secret))
        sock.close(0)
    finally:
        ctx.destroy(0)


@pytest.mark.parametrize(
    "options, why",
    [
        ({"server_key_file": "/x"}, "set all three"),
        ({"authorizer": "acl"}, "needs authentication"),
        ({"authorizer": "ranger"}, "allowed"),
        ({"super_users": ["admin"]}, "principal"),
        ({"super_users": "User:admin"}, "list"),
        ({"protected_mode": "no"}, "true or false"),
        ({"nonsense": 1}, "unknown option"),
    ],
)
def test_security_config_refuses_bad_tables(options: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidConfigError, match=why):
        SecurityConfig.from_options(options)


def test_security_config_checks_the_node_key(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys")
    curve.generate(keys, "server")
    curve.generate(keys, "node-1", "Node:1")
    (tmp_path / "auth").mkdir()
    cfg = SecurityConfig.from_options(
        {
            "server_key_file": f"{keys}/server.key_secret",
            "node_key_file": f"{keys}/node-1.key_secret",
            "authorized_keys_dir": str(tmp_path / "auth"),
        }
    )
    with pytest.raises(InvalidConfigError, match="is not Node:0"):
        cfg.load(0)
    with pytest.raises(InvalidConfigError, match="not in it"):
        cfg.load(1)
    os.link(f"{keys}/node-1.key", tmp_path / "auth" / "node-1.key")
    server, node = cfg.load(1)
    assert node.principal == "Node:1" and server.principal == ""
