"""``sluice connect --bootstrap``: managing a node's connectors through its API over TCP,
not through its directories; on a node with CURVE and ACLs, reading (list, status)
needs DESCRIBE on the cluster and changing (create, pause, resume, restart, delete)
ALTER, as Kafka Connect's REST API would be guarded."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from ipc.client import Producer
from ipc.errors import ClusterAuthorizationFailedError, InvalidRequestError, SluiceError
from tests.integration.conftest import REPO, SLUICE, Node, wait_until
from tests.integration.security_support import KeyRing
from tests.integration.test_connect_file import lines
from tests.integration.test_connect_support import connect_status, declare, wait_connector

pytestmark = pytest.mark.slow


def remote(node: Node, *args: str, keys: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sluice connect ARGS --bootstrap <node>`` from a directory that knows nothing of
    the node's files (no --config, no --data-dir)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for k in ("SLUICE_BOOTSTRAP", "SLUICE_SERVER_KEY", "SLUICE_SECRET_KEY_FILE"):
        env.pop(k, None)
    env.update(keys or {})
    return subprocess.run(
        [*SLUICE, "connect", *args, "--bootstrap", node.bootstrap, "--timeout-ms", "10000"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd="/",
    )


def test_connect_through_the_api(node_factory: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    node: Node = node_factory()
    declare(node, "declared", "file-sink", topics=["in"], file=str(tmp_path / "declared.txt"))
    node.start()
    with node.admin() as admin:
        admin.create_topic("in")
    with Producer(node.bootstrap) as p:
        for v in (b"one", b"two"):
            p.send("in", v)
        p.flush()
    made = remote(node, "create", "copy", "--class", "file-sink", "-o", "topics=in", "-o", f"file={out}")
    assert made.returncode == 0, made.stderr
    assert "created connector copy (file-sink)" in made.stdout
    wait_until(lambda: lines(out) == ["one", "two"], 30, "the created connector's file")
    shown = remote(node, "status", "copy", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = orjson.loads(shown.stdout)
    assert doc["node_running"] and [c["name"] for c in doc["connectors"]] == ["copy"]
    listed = remote(node, "list")
    assert "declared" in listed.stdout and "copy" in listed.stdout and "created" in listed.stdout
    pid = int(wait_connector(node, "copy", lambda c: c["state"] == "serving", "serving")["pid"])
    assert remote(node, "pause", "copy").returncode == 0
    wait_connector(node, "copy", lambda c: c["state"] == "paused" and c["pid"] == 0, "paused")
    assert remote(node, "resume", "copy").returncode == 0
    pid = int(wait_connector(node, "copy", lambda c: c["state"] == "serving" and c["pid"] != 0, "resumed")["pid"])
    assert remote(node, "restart", "copy").returncode == 0
    wait_connector(node, "copy", lambda c: c["state"] == "serving" and c["pid"] not in (0, pid), "restarted")
    # refusals: one line each, the node's typed error
    bad = remote(node, "create", "bad", "--class", "file-sink", "-o", "topics=in", "-o", "file=relative")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "sluice connect: error: INVALID_CONFIG: connector 'bad' (file-sink): "
        "option 'file'='relative': must be an absolute path"
    )
    again = remote(node, "create", "copy", "--class", "file-sink", "-o", "topics=in", "-o", f"file={out}")
    assert again.returncode == 1 and "connector 'copy' exists" in again.stderr
    declared = remote(node, "delete", "declared")
    assert declared.returncode == 1 and "declared in the node's configuration" in declared.stderr
    unknown = remote(node, "pause", "nobody")
    assert unknown.returncode == 1 and "INVALID_REQUEST: no connector named 'nobody'" in unknown.stderr
    assert remote(node, "delete", "copy").returncode == 0
    wait_until(lambda: "copy" not in connect_status(node), 30, "the deleted connector gone")
    with node.admin() as admin:  # the client API, malformed requests refused and harmless
        with pytest.raises(InvalidRequestError, match="action"):
            admin.connect("explode")
        # by its code: the client's class for INVALID_CONFIG is not always InvalidConfigError
        # (ipc/ring.py's RingError shares the code and may win the lookup)
        with pytest.raises(SluiceError, match="name=5") as refused:
            admin._call("connect", action="create", connector={"name": 5})  # noqa: SLF001 - a raw request
        assert refused.value.code == "INVALID_CONFIG"
        with pytest.raises(InvalidRequestError, match="name the connector"):
            admin.connect("pause")
        assert [c["name"] for c in admin.connect("list")["connectors"]] == ["declared"]
    assert node.stop() == 0


def test_connect_is_authorized_by_acls(node_factory: Any, tmp_path: Path) -> None:
    ring = KeyRing.generate(tmp_path, users=["admin", "viewer", "nobody"], nodes=[0])
    authorized = ring.authorize(tmp_path / "authorized", ["node-0", "admin", "viewer", "nobody"])
    security = ring.security_table(0, authorized, authorizer="acl", super_users=["User:admin"])
    node: Node = node_factory(security=security)
    node.client_security = ring.client("admin")
    declare(node, "declared", "file-sink", topics=["in"], file=str(tmp_path / "declared.txt"))
    node.start()
    with node.admin() as admin:
        admin.create_acls(
            [
                {
                    "principal": "User:viewer",
                    "resource_type": "cluster",
                    "resource_name": "kafka-cluster",
                    "pattern_type": "literal",
                    "operation": "describe",
                    "permission": "allow",
                }
            ]
        )
    wait_connector(node, "declared", lambda c: c["state"] in ("serving", "starting"), "running")

    def keys(user: str) -> dict[str, str]:
        return {"SLUICE_SERVER_KEY": str(ring.server_public), "SLUICE_SECRET_KEY_FILE": str(ring.secret(user))}

    def viewer_lists() -> bool:
        return remote(node, "list", keys=keys("viewer")).returncode == 0

    wait_until(viewer_lists, 30, "the viewer's DESCRIBE to apply", interval=0.2)
    for user, action in (("viewer", "pause"), ("nobody", "pause"), ("nobody", "list")):
        refused = remote(node, action, *(["declared"] if action == "pause" else []), keys=keys(user))
        assert refused.returncode == 1, refused.stdout
        assert "CLUSTER_AUTHORIZATION_FAILED" in refused.stderr, refused.stderr
    assert "paused" not in remote(node, "list", keys=keys("viewer")).stdout
    with node.admin() as admin, pytest.raises(ClusterAuthorizationFailedError):
        from ipc.client import Admin

        with Admin(node.bootstrap, security=ring.client("viewer"), timeout_ms=10_000) as viewer:
            viewer.connect("restart", "declared")
    paused = remote(node, "pause", "declared", keys=keys("admin"))
    assert paused.returncode == 0, paused.stderr
    wait_connector(node, "declared", lambda c: c["state"] == "paused", "paused by the admin")
    assert node.stop() == 0
