"""``kafka_listen`` / ``advertised_kafka_listen`` (appliance/config.py): checked at start;
the listener refuses to run with the ACL authorizer (it has no authentication yet)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.config import load_config
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


def test_refused_with_the_acl_authorizer(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    curve.generate(str(keys), "server")
    curve.generate(str(keys), "node-0", "Node:0")
    (keys / "authorized").mkdir()
    shutil.copy(keys / "node-0.key", keys / "authorized" / "node-0.key")
    security = {
        "server_key_file": str(keys / "server.key_secret"),
        "node_key_file": str(keys / "node-0.key_secret"),
        "authorized_keys_dir": str(keys / "authorized"),
        "authorizer": "acl",
    }
    assert load_config(None, {"data_dir": str(tmp_path), "security": security}).security.authorizer == "acl"
    with pytest.raises(InvalidConfigError, match="the Kafka listener has no authentication yet"):
        load_config(None, {"data_dir": str(tmp_path), "security": security, "kafka_listen": "127.0.0.1:9092"})
