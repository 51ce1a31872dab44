"""``kafka_listen`` / ``advertised_kafka_listen`` and the ``[kafka]`` table
(appliance/config.py, appliance/kafka/config.py): checked at start; the listener runs
with the ACL authorizer; SASL needs the node's CURVE keys and a credentials file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load_config
from appliance.kafka.credentials import add_user
from ipc import curve
from ipc.errors import InvalidConfigError


def test_off_by_default(tmp_path: Path) -> None:
    assert load_config(None, {"data_dir": str(tmp_path)}).kafka_listen == ""


def test_advertised(tmp_path: Path) -> None:
    cfg = load_config(None, {"data_dir": str(tmp_path), "kafka_listen": "0.0.0.0:9092"})
    assert cfg.kafka_advertised == ("127.0.0.1", 9092)
    cfg = load_config(
        None, {"data_dir": str(tmp_path), "kafka_listen": "0.0.0.0:9092", "advertised_kafka_listen": "h.example:19092"}
    )
    assert cfg.kafka_advertised == ("h.example", 19092)


@pytest.mark.parametrize(
    "name, value",
    [("kafka_listen", "9092"), ("kafka_listen", "tcp://127.0.0.1:9092"), ("kafka_listen", "h:0"),
     ("advertised_kafka_listen", "0.0.0.0:9092")],
)
def test_bad_values(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(InvalidConfigError, match=name):
        load_config(None, {"data_dir": str(tmp_path), name: value})


def _security(tmp_path: Path) -> dict[str, str]:
    keys = tmp_path / "keys"
    curve.generate(str(keys), "server")
    curve.generate(str(keys), "node-0", "Node:0")
    (keys / "authorized").mkdir()
    shutil.copy(keys / "node-0.key", keys / "authorized" / "node-0.key")
    return {
        "server_key_file": str(keys / "server.key_secret"),
        "node_key_file": str(keys / "node-0.key_secret"),
        "authorized_keys_dir": str(keys / "authorized"),
        "authorizer": "acl",
    }


def test_runs_with_the_acl_authorizer(tmp_path: Path) -> None:
    cfg = load_config(
        None, {"data_dir": str(tmp_path), "security": _security(tmp_path), "kafka_listen": "127.0.0.1:9092"}
    )
    assert cfg.security.authorizer == "acl" and cfg.kafka.security_protocol == "PLAINTEXT"


def test_sasl(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    add_user(str(users), "alice", "pw")
    kafka = {"security_protocol": "sasl_plaintext", "credentials_file": str(users), "sasl_mechanisms": ["PLAIN"]}
    base = {"data_dir": str(tmp_path), "kafka_listen": "127.0.0.1:9092", "kafka": kafka}
    with pytest.raises(InvalidConfigError, match="needs the node's CURVE keys"):
        load_config(None, base)
    cfg = load_config(None, {**base, "security": _security(tmp_path)})
    assert cfg.kafka.sasl and not cfg.kafka.tls and cfg.kafka.sasl_mechanisms == ("PLAIN",)
    users.write_text('["alice"."SCRAM-SHA-256"]\niterations = 12\n')
    with pytest.raises(InvalidConfigError, match="iterations"):
        load_config(None, {**base, "security": _security(tmp_path / "2")})


@pytest.mark.parametrize(
    "kafka, match",
    [
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"sasl_mechanisms": ["GSSAPI"]}, "sasl_mechanisms"),
        ({"listener_processes": 0}, "listener_processes"),
        ({"security_protocol": "SASL_PLAINTEXT"}, "credentials_file"),
        ({"security_protocol": "SSL"}, "tls_cert_file"),
        ({"tls_cert_file": "a.pem", "tls_key_file": "b.pem"}, "SSL"),
        ({"security_protocol": "SSL", "tls_cert_file": "/no/a.pem", "tls_key_file": "/no/b.pem"}, "cannot read"),
        ({"port": 1}, "unknown option"),
    ],
)
def test_bad_kafka_table(tmp_path: Path, kafka: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        load_config(None, {"data_dir": str(tmp_path), "kafka_listen": "127.0.0.1:9092", "kafka": kafka})
