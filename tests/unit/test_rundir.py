"""The runtime directory's life (appliance/rundir.py): claim, remove at a clean stop with
what continuity needs kept in the data directory, and the sweep of dead nodes'
directories, which touches only what is provably this user's and dead.

The sweep runs here on a private base directory (not the real /dev/shm); a live node is
another process holding the lock (a real ``flock`` held by a child process)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance import rundir
from ipc.errors import InvalidConfigError
from ipc.shm import HEADER, MAGIC

UID = os.geteuid()
# a process that has exited (and was reaped)
DEAD_PID = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def name(n: int) -> str:
    return f"sluice-{UID}-{n:010x}"


def make_dead(base: Path, n: int, *, lock: bool = True, mode: int = 0o700) -> Path:
    d = base / name(n)
    d.mkdir(mode=0o700)
    (d / "status.shm").write_bytes(HEADER.pack(MAGIC, 1, 1, 448, 0, DEAD_PID, 0.0))
    (d / "prometheus").mkdir()
    (d / "prometheus" / "counter_1.db").write_bytes(b"y")
    if lock:
        (d / rundir.LOCK_FILE).write_text("999999\n/nowhere\n")
    os.chmod(d, mode)
    return d


@pytest.fixture
def base(tmp_path: Path) -> Path:
    b = tmp_path / "shm"
    b.mkdir(mode=0o1777)
    os.chmod(b, 0o1777)
    return b


def test_claim_writes_the_holder_and_refuses_a_second_claim(tmp_path: Path) -> None:
    path = str(tmp_path / "rt")
    rd = rundir.claim(path, str(tmp_path / "data"))
    assert rundir.lock_holder(path) == (os.getpid(), str(tmp_path / "data"))
    # a second claim from another process is refused with the holder's pid
    code = (
        "import sys; from appliance import rundir; from ipc.errors import InvalidConfigError\n"
        "try:\n    rundir.claim(sys.argv[1], '/x', wait_s=0.1)\nexcept InvalidConfigError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=30)
    assert out.returncode == 3, out.stderr
    assert f"in use by another node (pid {os.getpid()})" in out.stdout
    os.close(rd.lock_fd)


def test_remove_keeps_the_connectors_figures_for_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = tmp_path / "rt"
    rd = rundir.claim(str(path), str(data))
    (path / "connect").mkdir()
    (path / "connect" / "src.json").write_text('{"records_polled": 7}')
    (path / "connect" / "status.json").write_text("{}")
    (path / "connect" / "src.beat").write_bytes(b"b" * 16)
    (path / "mp").mkdir()
    rd.remove()
    assert sorted(os.listdir(path)) == []  # not the default /dev/shm name: emptied, not removed
    assert (data / rundir.SAVED_DIR / "connect" / "src.json").read_text() == '{"records_polled": 7}'
    rd2 = rundir.claim(str(path), str(data))
    assert (path / "connect" / "src.json").read_text() == '{"records_polled": 7}'
    assert not (data / rundir.SAVED_DIR / "connect" / "src.json").exists()
    os.close(rd2.lock_fd)


def test_sweep_removes_only_the_provably_dead(base: Path) -> None:
    dead = make_dead(base, 1)
    open_to_others = make_dead(base, 2, mode=0o755)
    other_uid = base / f"sluice-{UID + 1}-{3:010x}"
    other_uid.mkdir(mode=0o700)
    not_ours = base / "sluice-x"
    not_ours.mkdir(mode=0o700)
    link = base / name(4)
    link.symlink_to(dead)
    # a live node: its lock held by another process
    alive = make_dead(base, 5)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
            " print('locked', flush=True); sys.stdin.read()",
            str(alive / rundir.LOCK_FILE),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # an earlier release's directory (no lock file): dead only when idle and nothing answers
        legacy_idle = make_dead(base, 6, lock=False)
        old = time.time() - 2 * rundir.LEGACY_IDLE_S
        os.utime(legacy_idle, (old, old))
        legacy_fresh = make_dead(base, 7, lock=False)
        own = make_dead(base, 8)
        removed = rundir.sweep(str(own), base=str(base))
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    assert sorted(removed) == sorted([str(dead), str(legacy_idle)])
    assert not dead.exists() and not legacy_idle.exists()
    for kept in (open_to_others, other_uid, not_ours, alive, legacy_fresh, own):
        assert kept.is_dir(), kept
    assert link.is_symlink()
    assert sorted(p.name for p in base.iterdir() if ".swept-" in p.name) == []


def test_sweep_leaves_a_directory_whose_lock_is_held_here_too(base: Path) -> None:
    d = make_dead(base, 9)
    fd = os.open(d / rundir.LOCK_FILE, os.O_RDWR)
    try:
        # flock locks are per open file description: another open in this process conflicts too
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert rundir.sweep("/nonexistent", base=str(base)) == []
    finally:
        os.close(fd)
    assert rundir.sweep("/nonexistent", base=str(base)) == [str(d)]


def test_sweep_refuses_a_base_others_can_swap(tmp_path: Path) -> None:
    b = tmp_path / "open"
    b.mkdir()
    os.chmod(b, 0o777)  # writable by all, no sticky bit
    make_dead(b, 1)
    assert rundir.sweep("/nonexistent", base=str(b)) == []


def test_claim_takes_a_swept_directory_fresh(tmp_path: Path) -> None:
    """A node claiming a directory a sweeper renamed away makes a new one."""
    path = tmp_path / "rt"
    rd = rundir.claim(str(path), "/d")
    os.close(rd.lock_fd)  # the node died
    os.rename(path, tmp_path / "gone")
    rd2 = rundir.claim(str(path), "/d")
    assert (path / rundir.LOCK_FILE).exists()
    os.close(rd2.lock_fd)


def test_invalid_claim_on_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(InvalidConfigError):
        rundir.claim(str(f), "/d")
