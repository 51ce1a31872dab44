"""Connector configuration: ``[[connectors]]`` tables checked with one line naming the
connector and the option; defaults filled in; the node option; the created-connector
store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.config import load_config
from appliance.connect.config import parse_connector, parse_connectors
from appliance.connect.store import ConnectorStore
from ipc.errors import InvalidConfigError

PG = {"database.user": "u", "database.dbname": "d", "tasks.max": 2}


def table(**options: Any) -> dict[str, Any]:
    return {"name": "f", "class": "file-sink", "options": {"topics": "a, b", "file": "/tmp/out", **options}}


def test_defaults_and_coercion() -> None:
    c = parse_connector(table(**{"offset.flush.interval.ms": "250"}))
    assert c.name == "f" and c.cls == "file-sink" and c.kind == "sink"
    assert c.options["topics"] == ["a", "b"]
    assert c.options["offset.flush.interval.ms"] == 250
    assert c.options["batch.max.records"] == 500
    assert c.dlq_topic == "f.dlq"
    inline = parse_connector({"name": "f", "class": "file-sink", "topics": ["a"], "file": "/x"})
    assert inline.options["topics"] == ["a"]


@pytest.mark.parametrize(
    ("tbl", "message"),
    [
        ({"name": "", "class": "file-sink"}, "connectors: name='': expected 1-100 letters"),
        ({"name": "f", "class": "jdbc"}, "connector 'f': class='jdbc': allowed: file-sink"),
        (table(colour="red"), "connector 'f' (file-sink): unknown option 'colour'; known options: "),
        ({"name": "f", "class": "file-sink", "options": {"file": "/x"}}, "connector 'f' (file-sink): option 'topics'"),
        (table(file="out.txt"), "connector 'f' (file-sink): option 'file'='out.txt': must be an absolute path"),
        (table(topics="a,b c"), "option 'topics'='a,b c': not topic names: 'b c'"),
        (table(**{"offset.flush.interval.ms": 5}), "option 'offset.flush.interval.ms'=5: must be >= 10"),
        (table(**{"batch.max.records": True}), "option 'batch.max.records'=True: expected an integer"),
        (table(**{"tasks.max": 2}), "(file-sink): option 'tasks.max'=2: must be 1: one file is written by one writer"),
        (table(**{"tasks.max": 65}), "option 'tasks.max'=65: must be in 1..64"),
        (
            {"name": "c", "class": "postgres-cdc", "options": {**PG, "topic.prefix": "p", "table.include.list": "s.t"}},
            "(postgres-cdc): option 'tasks.max'=2: must be 1: a replication slot is read by one connection",
        ),
        ({"name": "f", "class": "file-sink", "options": 3}, "connector 'f' (file-sink): options: expected a table"),
    ],
)
def test_bad_connector_is_one_line_naming_connector_and_option(tbl: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfigError) as e:
        parse_connector(tbl, "connectors")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_postgres_sink_takes_several_tasks() -> None:
    c = parse_connector({"name": "s", "class": "postgres-sink", "options": {**PG, "topics": "t", "table": "s.t"}})
    assert c.options["tasks.max"] == 2


def test_names_unique_and_node_option(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="connector 'f': declared twice"):
        parse_connectors([table(), table()])
    with pytest.raises(InvalidConfigError, match=r"connectors: expected \[\[connectors\]\] tables"):
        parse_connectors({"name": "f"})
    path = tmp_path / "node.toml"
    path.write_text(
        f'data_dir = "{tmp_path}"\n[[connectors]]\nname = "f"\nclass = "file-sink"\n'
        '[connectors.options]\ntopics = "t"\nfile = "/tmp/f"\n'
    )
    cfg = load_config(str(path))
    assert [c.name for c in cfg.connectors] == ["f"]
    path.write_text(f'data_dir = "{tmp_path}"\n[[connectors]]\nname = "f"\nclass = "file-sink"\n')
    with pytest.raises(InvalidConfigError, match="connector 'f' \\(file-sink\\): option 'topics' is required"):
        load_config(str(path))


def test_store_create_pause_restart_delete(tmp_path: Path) -> None:
    store = ConnectorStore(str(tmp_path))
    c = store.create(table())
    assert store.created() == {"f": c}
    assert (tmp_path / "connect").stat().st_mode & 0o777 == 0o700
    store.set_paused("f", True)
    assert store.paused() == {"f"}
    store.set_paused("f", False)
    assert store.paused() == set()
    store.request_restart("f")
    assert store.take_restarts() == {"f"}
    assert store.take_restarts() == set()
    # a file someone broke is skipped (and logged), not fatal
    (tmp_path / "connect" / "connectors" / "g.json").write_text("{not json")
    assert set(store.created()) == {"f"}
    assert store.delete("f") and not store.delete("f")
    assert store.created() == {}
