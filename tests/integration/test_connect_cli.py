"""``sluice connect`` against a real node: status and list, pause (the process stops,
nothing is read), resume (it reads on from where it stopped), restart (a new process),
create and delete a connector, a declared connector not deletable, a bad option refused
with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ipc.client import Producer
from tests.integration.conftest import Node, wait_until
from tests.integration.test_connect_file import lines
from tests.integration.test_connect_support import cli, connect_status, declare, wait_connector

pytestmark = pytest.mark.slow


def test_connect_cli(node_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    node: Node = node_factory()
    declare(node, "to-file", "file-sink", topics=["in"], file=str(out), **{"offset.flush.interval.ms": 50})
    node.start()
    with node.admin() as admin:
        admin.create_topic("in")
    wait_connector(node, "to-file", lambda c: c["state"] == "serving", "serving")
    with Producer(node.bootstrap) as p:
        p.send("in", b"one")
        p.send("in", b"two\nlines")
        p.send("in", b"three")
        p.flush()
    wait_until(lambda: lines(out) == ["one", "three"], 30, "the good lines")
    # the CLI: status, pause, resume, restart, create and delete a connector
    shown = cli(node, "status").stdout
    assert "to-file" in shown and "serving" in shown
    pid = int(connect_status(node)["to-file"]["pid"])
    cli(node, "pause", "to-file")
    wait_connector(node, "to-file", lambda c: c["state"] == "paused" and c["pid"] == 0, "paused")
    assert "paused" in cli(node, "list").stdout
    with Producer(node.bootstrap) as p:
        p.send("in", b"four").result(10)
    cli(node, "resume", "to-file")
    wait_until(lambda: lines(out) == ["one", "three", "four"], 30, "the line written after resume")
    pid = int(wait_connector(node, "to-file", lambda c: c["state"] == "serving", "resumed")["pid"])
    cli(node, "restart", "to-file")
    wait_connector(node, "to-file", lambda c: c["state"] == "serving" and c["pid"] not in (0, pid), "restarted")
    refused = cli(node, "delete", "to-file", check=False)
    assert refused.returncode == 1 and "declared in the node's configuration" in refused.stderr

    out2 = tmp_path / "copy.txt"
    cli(node, "create", "copy", "--class", "file-sink", "-o", "topics=in", "-o", f"file={out2}")
    wait_until(lambda: lines(out2) == ["one", "three", "four"], 30, "the created connector's file")
    bad = cli(node, "create", "bad", "--class", "file-sink", "-o", "topics=in", "-o", "file=relative", check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "sluice connect: error: INVALID_CONFIG: connector 'bad' (file-sink): "
        "option 'file'='relative': must be an absolute path"
    )
    cli(node, "delete", "copy")
    wait_until(lambda: "copy" not in connect_status(node), 30, "the deleted connector gone")
    assert node.stop() == 0
