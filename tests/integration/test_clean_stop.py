"""A clean stop leaves nothing behind: every process of the node's process group has
exited by itself when the supervisor exits (under systemd's ``KillMode=mixed`` anything
left then gets SIGKILL), and the runtime directory is gone. A node starting sweeps the
runtime directories of this user's dead nodes, and nothing else. Process titles say
what each process serves.

Real processes: ``sluice serve`` in its own session, as the fixtures run it."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import Node, wait_until

UID = os.geteuid()


def group_members(pgid: int) -> dict[int, str]:
    """pid -> title of every process in the process group ``pgid`` (zombies included)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            out[int(entry)] = cmdline or f"({fields[0]})"
    return out


def test_sigterm_every_process_exits_by_itself_and_the_runtime_dir_goes(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    node = node_factory(offsets_topic_partitions=1)
    node.start(env={"TMPDIR": str(tmpdir)})
    with node.admin() as admin:
        admin.create_topic("orders", partitions=2)
    node.wait_serving("orders", 1)
    node.wait_serving("orders", 0)
    assert node.proc is not None
    pgid = node.proc.pid

    def titled() -> dict[int, str] | None:
        members = group_members(pgid)
        leaders = [t for t in members.values() if re.fullmatch(r"sluice: worker orders-\d leader e\d+", t)]
        return members if len(leaders) == 2 else None

    members = wait_until(titled, 30, "both workers titled with their role")
    assert members[pgid] == "sluice: node 0"
    assert any(re.fullmatch(r"sluice: worker __consumer_offsets-0 leader e\d+", t) for t in members.values())
    assert sum(t == "sluice: fork server" for t in members.values()) == 1, members
    assert sum("multiprocessing.resource_tracker" in t for t in members.values()) == 1, members
    runtime = Path(node.status_path).parent
    assert (runtime / ".lock").read_text().split("\n")[:2] == [str(pgid), str(node.data_dir)]
    assert (runtime / "mp").is_dir()  # the fork server's socket lives in the runtime directory

    node.signal(signal.SIGTERM)
    assert node.wait_exit(60) == 0
    left = group_members(pgid)
    assert left == {}, f"processes left for systemd to SIGKILL: {left}\n{node.log_tail()}"
    assert not runtime.exists(), sorted(os.listdir(runtime))
    assert list(tmpdir.iterdir()) == []  # no pymp-* (nor anything else) in $TMPDIR
    log = node.log_path.read_text()
    assert "leaked" not in log and "Traceback" not in log, node.log_tail()
    assert "did not exit" not in log


def test_start_sweeps_dead_nodes_runtime_dirs_and_nothing_else(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    node = node_factory()
    made = []
    try:
        # a SIGKILLed node of this user: lock file free
        dead = Path(f"/dev/shm/sluice-{UID}-{os.urandom(5).hex()}")
        dead.mkdir(mode=0o700)
        made.append(dead)
        (dead / ".lock").write_text("1\n/x\n")
        (dead / "prometheus").mkdir()
        # a live node: its lock held (here, by this test process)
        alive = Path(f"/dev/shm/sluice-{UID}-{os.urandom(5).hex()}")
        alive.mkdir(mode=0o700)
        made.append(alive)
        (alive / ".lock").write_text("1\n/x\n")
        fd = os.open(alive / ".lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # one others may read: never ours alone, never touched
        open_dir = Path(f"/dev/shm/sluice-{UID}-{os.urandom(5).hex()}")
        open_dir.mkdir(mode=0o755)
        os.chmod(open_dir, 0o755)
        made.append(open_dir)
        (open_dir / ".lock").write_text("1\n/x\n")
        try:
            node.start()
        finally:
            os.close(fd)
        # (another node starting on this host at the same time may be the one that swept it)
        assert not dead.exists()
        assert alive.is_dir() and open_dir.is_dir()
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def test_a_failed_start_leaves_no_runtime_dir_and_no_process(node_factory: Callable[..., Node]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        node = node_factory(metrics_listen=f"127.0.0.1:{busy.getsockname()[1]}")
        node.start(wait=False)
        assert node.wait_exit(60) == 1
    assert node.proc is not None
    assert group_members(node.proc.pid) == {}
    assert not Path(node.status_path).parent.exists()
    assert "sluice serve: error:" in node.log_path.read_text()
