"""The runtime-directory attack and the node's files (issue 14, docs/security.md).

A real unprivileged user, created here and removed at the end (even on failure), plays
the other local user; the node is a real ``sluice serve`` run as root (the suite's
user in CI) with its own data directory and loopback port. Without root (no useradd,
no second user) the module is skipped.

- the user creates the node's predictable runtime directory first, mode 0777: the
  node refuses to start, with one line naming it, and writes nothing in it;
- ``prometheus/`` in the runtime directory is a symbolic link to the user's
  directory: refused, nothing written there;
- ``control.sock`` replaced by a socket of the user: a restarting worker refuses to
  connect to it (the directory's mode keeps the user out; this is the second line);
- under umask 022 every file and directory of a running node is 0600 / 0700 and the
  user cannot read a segment (a file the user may read, beside it, is the control);
- a remote client's status reply and a storage error reply (a corrupt segment) carry
  no absolute path and no pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from appliance.config import resolve_runtime_dir
from ipc.client import Admin, Producer
from ipc.protocol import encode_request
from tests.integration.conftest import Node, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None,
    reason="needs root with useradd and runuser: the test creates a throwaway user and runs the node as root",
)


def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def other_user() -> Iterator[str]:
    name = f"sluice-t{os.getpid()}"
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False, timeout=30)  # nothing of theirs outlives us
        subprocess.run(["userdel", name], check=False, timeout=30)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the other user may enter (pytest's own is 0700, which would hide the
    node's files and prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix="sluice-rt-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_node(base: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(**options: Any) -> Node:
        n = Node(base, node_id=len(nodes), **options)
        nodes.append(n)
        return n

    try:
        yield make
    finally:
        for n in nodes:
            with contextlib.suppress(Exception):
                n.status()  # learn the worker pids before killing
            n.kill_all()
            shutil.rmtree(os.path.dirname(n.status_path), ignore_errors=True)
            print(f"--- node {n.node_id} log tail ---\n{n.log_tail()}")


def runtime_dir(node: Node) -> Path:
    return Path(resolve_runtime_dir("", str(node.data_dir)))


def refused(node: Node) -> str:
    """Start the node, which must exit non-zero; its error line."""
    node.start(wait=False)
    code = node.wait_exit(30)
    assert code != 0, f"the node started:\n{node.log_tail()}"
    lines = [line for line in node.log_path.read_text().splitlines() if "sluice serve: error:" in line]
    assert len(lines) == 1, node.log_tail()
    return lines[0]


# ---- the attack -----------------------------------------------------------------------------
def test_a_runtime_dir_made_first_by_another_user_is_refused(make_node: Callable[..., Node], other_user: str) -> None:
    node = make_node()
    rt = runtime_dir(node)
    shutil.rmtree(rt, ignore_errors=True)
    made = as_user(other_user, "mkdir", "-m", "0777", str(rt))
    assert made.returncode == 0, made.stderr
    assert os.stat(rt).st_uid != 0 and stat.S_IMODE(os.stat(rt).st_mode) == 0o777

    line = refused(node)
    assert f"runtime_dir '{rt}' belongs to another user" in line, line
    assert "mode 0777" in line and "Remove it" in line and "set runtime_dir" in line, line
    assert os.listdir(rt) == []  # no status.shm, control.sock or prometheus/ for them to take
    assert stat.S_IMODE(os.stat(rt).st_mode) == 0o777 and os.stat(rt).st_uid != 0  # not adopted either


def test_a_symlinked_prometheus_dir_is_refused_and_nothing_written_there(
    make_node: Callable[..., Node], other_user: str, base: Path
) -> None:
    node = make_node()
    rt = runtime_dir(node)
    shutil.rmtree(rt, ignore_errors=True)
    rt.mkdir(mode=0o700)
    target = base / "theirs"
    target.mkdir()
    shutil.chown(target, other_user)
    (rt / "prometheus").symlink_to(target)

    line = refused(node)
    assert f"prometheus/ '{rt / 'prometheus'}' is a symbolic link" in line, line
    assert os.listdir(target) == []
    assert (rt / "prometheus").is_symlink() and not (rt / "status.shm").exists()


def test_a_restarting_worker_refuses_a_control_socket_of_another_user(
    make_node: Callable[..., Node], other_user: str
) -> None:
    node = make_node(max_restarts=1).start()
    with node.admin() as admin:
        admin.create_topic("t", partitions=1)
    pid = node.wait_serving("t", 0)
    wait_until(lambda: all(p["state"] == "serving" for p in node.status()["partitions"]), 30, "every worker up")
    path = runtime_dir(node) / "control.sock"
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as fake:
        fake.bind(str(path) + ".fake")
        fake.listen(8)
        fake.setblocking(False)
        shutil.chown(str(path) + ".fake", other_user)
        os.replace(str(path) + ".fake", path)  # only root can, in the 0700 directory: the user's socket stands in
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: "refusing to connect" in node.log_path.read_text(), 30, "the new worker's refusal")
        with pytest.raises(BlockingIOError):
            fake.accept()  # nobody connected
    text = node.log_path.read_text()
    assert f"control socket '{path}' belongs to uid" in text and "not to this node's user" in text, node.log_tail()


# ---- the node's files -------------------------------------------------------------------------
def produce(node: Node, topic: str, n: int) -> None:
    with Producer(node.bootstrap) as p:
        for f in [p.send(topic, b"secret-%d" % i, partition=0) for i in range(n)]:
            f.result(30)


def test_under_umask_022_every_file_is_private_and_unreadable_by_others(
    make_node: Callable[..., Node], other_user: str, base: Path
) -> None:
    old = os.umask(0o022)
    try:
        node = make_node().start()
    finally:
        os.umask(old)
    with node.admin() as admin:
        admin.create_topic("events", partitions=1)
    produce(node, "events", 5)
    segment = node.data_dir / "events-0" / "00000000000000000000.log"
    assert b"secret-4" in segment.read_bytes()

    loose = []
    for top in (node.data_dir, runtime_dir(node)):
        for path in [top, *top.rglob("*")]:
            st = os.lstat(path)
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want or st.st_uid != 0:
                loose.append(f"{path}: {stat.S_IMODE(st.st_mode):04o} uid {st.st_uid}")
    assert loose == []

    (base / "readable").write_bytes(b"anyone")
    os.chmod(base / "readable", 0o644)
    assert as_user(other_user, "cat", str(base / "readable")).stdout == b"anyone"  # the check itself works
    for path in (segment, node.data_dir / ".lock", runtime_dir(node) / "status.shm"):
        tried = as_user(other_user, "cat", str(path))
        assert tried.returncode != 0 and b"Permission denied" in tried.stderr, (path, tried)
        assert b"secret" not in tried.stdout


# ---- what a remote client is told ---------------------------------------------------------------
def call(endpoint: str, api: str, **fields: Any) -> dict[str, Any]:
    """One request on a plain DEALER, as any client on the network would send it."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(encode_request(api, 1, **fields))
        assert sock.poll(15_000), f"no reply to {api} from {endpoint}"
        reply: dict[str, Any] = orjson.loads(sock.recv_multipart()[0])
        return reply
    finally:
        sock.close(0)
        ctx.term()


def keys(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from keys(v)


def test_status_and_error_replies_carry_no_absolute_path_and_no_pid(make_node: Callable[..., Node]) -> None:
    node = make_node().start()
    with node.admin() as admin:  # every fetch reads the log: the leader keeps no recent batches in memory
        admin.create_topic("events", partitions=1, config={"leader.recent.batches.bytes": 0})
    produce(node, "events", 3)
    pids = {p["pid"] for p in node.status()["partitions"]} | {node.status()["supervisor_pid"]}  # local: it may
    assert all(pids)

    with Admin(node.bootstrap, timeout_ms=15_000) as admin:
        status = admin.status()
    text = orjson.dumps(status).decode()
    assert [k for k in keys(status) if "pid" in k or k == "data_dir"] == []
    assert str(node.base) not in text and '"/' not in text, text
    assert status["partitions"] and all(p["state"] == "serving" for p in status["partitions"])

    # a corrupt batch in the segment: the fetch is answered with STORAGE_ERROR naming the file
    md = call(node.bootstrap, "metadata", topics=["events"])
    endpoint = md["topics"][0]["partitions"][0]["endpoint"]
    segment = node.data_dir / "events-0" / "00000000000000000000.log"
    with open(segment, "r+b") as f:
        f.seek(os.path.getsize(segment) - 1)
        last = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([last[0] ^ 0xFF]))  # the last batch's CRC no longer matches
    deadline = time.monotonic() + 15
    reply = call(endpoint, "fetch", topic="events", partition=0, offset=0, max_wait_ms=0)
    while reply["error"] is None and time.monotonic() < deadline:  # a copy in memory may serve it once
        reply = call(endpoint, "fetch", topic="events", partition=0, offset=0, max_wait_ms=0)
    error = reply["error"]
    assert error is not None and error["code"] == "STORAGE_ERROR", reply
    assert "events-0/00000000000000000000.log" in error["message"], error
    assert str(node.base) not in error["message"] and " /" not in error["message"], error
    # no pid as a number of its own (a pid's digits may occur inside an offset or a size)
    assert not any(re.search(rf"(?<![0-9]){pid}(?![0-9])", error["message"]) for pid in pids), error
