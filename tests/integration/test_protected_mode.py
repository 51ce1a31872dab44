"""Protected mode (docs/security.md): a node without keys serves loopback clients only.

The node runs in network namespace 0 of a two-namespace bed (tests/support/netns.py),
listening on every address (``tcp://0.0.0.0:6100``); clients run as subprocesses in
namespace 0 (over loopback) or namespace 1 (over the bridge), through ``ip netns exec``;
the test process itself is one more non-loopback client (the host end of the bridge).

- no keys, protected mode on (the default): a client from namespace 1 is refused with
  PROTECTED_MODE and the message naming both fixes (keys, or ``protected_mode = false``);
  so is a request straight to a partition worker; a loopback client in namespace 0
  creates a topic, produces and consumes;
- ``protected_mode = false``: the client from namespace 1 produces and consumes;
- with CURVE keys: the client from namespace 1 with an authorized key produces and
  consumes; the same client without keys is refused at the handshake.

Needs root (network namespaces); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from appliance.config import resolve_runtime_dir
from ipc.client import Admin
from ipc.client.transport import Channel
from ipc.errors import ProtectedModeError
from tests.cluster.harness import group_members, toml_text
from tests.integration.conftest import REPO, SLUICE, wait_until
from tests.integration.security_support import KeyRing
from tests.support.netns import Netbed

PORT = 6100
CLIENT_TIMEOUT_S = 90.0

# One client session: list topics, and with "topic" create it, produce one record and
# consume it back. Prints one JSON line: the outcome, or the typed error.
CLIENT = """
import json, sys
from ipc.client import Admin, Consumer, Producer
from ipc.errors import SluiceError
a = json.loads(sys.argv[1])
b, sec, topic = a["bootstrap"], a.get("security"), a.get("topic")
out = {"ok": True}
try:
    with Admin(b, timeout_ms=60000, security=sec) as admin:
        out["topics"] = admin.list_topics()
        if topic:
            admin.create_topic(topic, exist_ok=True)
            md = admin._call("metadata", topics=[topic], allow_auto_create=False)
            out["worker"] = md["topics"][0]["partitions"][0]["endpoint"]
    if topic:
        with Producer(b, request_timeout_ms=60000, security=sec) as p:
            p.send(topic, b"hello", partition=0).result(60)
        with Consumer(b, request_timeout_ms=60000, auto_offset_reset="earliest", security=sec) as c:
            c.assign([(topic, 0)])
            values = []
            for _ in range(300):
                values += [r.value.decode() for r in c.poll(100)]
                if values:
                    break
        out["values"] = values
except SluiceError as e:
    out = {"ok": False, "type": type(e).__name__, "code": e.code, "message": e.message}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bed() -> Iterator[Netbed]:
    if os.geteuid() != 0:
        pytest.skip("protected mode needs a non-loopback client: network namespaces need root")
    with Netbed(2) as b:
        yield b


class NsNode:
    """``sluice serve`` inside namespace 0 of the bed."""

    def __init__(self, bed: Netbed, base: Path, security: dict[str, Any], advertise: bool) -> None:
        self.bed = bed
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.address = bed.address(0)
        self.data_dir = base / "data"
        options: dict[str, Any] = {
            "node_id": 0,
            "data_dir": str(self.data_dir),
            "listen": f"tcp://0.0.0.0:{PORT}",
            "metrics_listen": "",
            "heartbeat_timeout_ms": 2000,
            "shutdown_timeout_ms": 10_000,
        }
        if advertise:  # clients from other hosts need the node's address, not loopback
            options["advertised_listen"] = f"tcp://{self.address}:{PORT}"
        if security:
            options["security"] = security
        self.config = base / "node.toml"
        self.config.write_text(toml_text(options))
        self.log = base / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, client_security: dict[str, str] | None) -> NsNode:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as logf:
            self.proc = self.bed.run(
                0, [*SLUICE, "serve", "--config", str(self.config)], stdout=logf, stderr=subprocess.STDOUT, env=env
            )

        def answers() -> bool:  # from the host end of the bridge: not loopback
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the node exited with {self.proc.returncode}:\n{self.log.read_text()}")
            with Admin(f"tcp://{self.address}:{PORT}", timeout_ms=500, security=client_security) as a:
                try:
                    a.list_topics()
                except ProtectedModeError:
                    pass  # it answered
            return True

        wait_until(answers, 30.0, "the node in namespace 0 to answer")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        pgid = self.proc.pid
        wait_until(lambda: not group_members(pgid), 10.0, "the node's processes to exit")
        shutil.rmtree(resolve_runtime_dir("", str(self.data_dir)), ignore_errors=True)
        print(f"--- node log ({self.base.name}) ---\n{self.log.read_text(errors='replace')[-4000:]}")


@contextlib.contextmanager
def node_in_ns0(
    bed: Netbed, base: Path, security: dict[str, Any], advertise: bool, client_security: dict[str, str] | None = None
) -> Iterator[NsNode]:
    n = NsNode(bed, base, security, advertise)
    try:
        yield n.start(client_security)
    finally:
        n.stop()


def client(bed: Netbed, ns: int, bootstrap: str, **args: Any) -> dict[str, Any]:
    """Run ``CLIENT`` in namespace ``ns``; its JSON outcome."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLUICE_SERVER_KEY", None)
    env.pop("SLUICE_BOOTSTRAP", None)
    p = bed.run(
        ns,
        [sys.executable, "-c", CLIENT, json.dumps({"bootstrap": bootstrap, **args})],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        out, err = p.communicate(timeout=CLIENT_TIMEOUT_S)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        bed.procs.remove(p)
    assert p.returncode == 0, f"client in namespace {ns} exited {p.returncode}: {err.decode()}"
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def assert_protected(outcome: dict[str, Any]) -> None:
    assert outcome["ok"] is False and outcome["code"] == "PROTECTED_MODE", outcome
    assert outcome["type"] == "ProtectedModeError"
    message = outcome["message"]
    assert "protected mode" in message and "[security]" in message and "protected_mode = false" in message


def test_protected_mode_refuses_other_hosts(bed: Netbed, tmp_path: Path) -> None:
    remote = f"tcp://{bed.address(0)}:{PORT}"
    with node_in_ns0(bed, tmp_path / "protected", {}, advertise=False):
        assert_protected(client(bed, 1, remote))
        local = client(bed, 0, f"tcp://127.0.0.1:{PORT}", topic="pm-local")
        assert local["ok"] and local["values"] == ["hello"], local
        # a partition worker is protected too (the host end of the bridge is not loopback)
        port = int(local["worker"].rsplit(":", 1)[1])
        ch = Channel(zmq.Context.instance(), f"tcp://{bed.address(0)}:{port}")
        try:
            reply = ch.request("list_offsets", 60.0, topic="pm-local", partition=0, timestamp=-1)
        finally:
            ch.close()
        assert isinstance(reply.error, ProtectedModeError), reply
        assert_protected(
            {"ok": False, "type": "ProtectedModeError", "code": reply.error.code, "message": reply.error.message}
        )


def test_protected_mode_off_serves_other_hosts(bed: Netbed, tmp_path: Path) -> None:
    remote = f"tcp://{bed.address(0)}:{PORT}"
    with node_in_ns0(bed, tmp_path / "open", {"protected_mode": False}, advertise=True):
        outcome = client(bed, 1, remote, topic="pm-open")
        assert outcome["ok"] and outcome["values"] == ["hello"], outcome


def test_keys_serve_other_hosts(bed: Netbed, tmp_path: Path) -> None:
    ring = KeyRing.generate(tmp_path, users=["alice"], nodes=[0])
    authorized = ring.authorize(tmp_path / "authorized", ["node-0", "alice"])
    remote = f"tcp://{bed.address(0)}:{PORT}"
    alice = ring.client("alice")
    with node_in_ns0(bed, tmp_path / "keys", ring.security_table(0, authorized), advertise=True, client_security=alice):
        outcome = client(bed, 1, remote, topic="pm-keys", security=alice)
        assert outcome["ok"] and outcome["values"] == ["hello"], outcome
        plain = client(bed, 1, remote)
        assert plain["ok"] is False and plain["code"] == "SASL_AUTHENTICATION_FAILED", plain
        assert "the node requires CURVE" in plain["message"]
