"""Private files and directories (ipc/private.py): explicit modes whatever the umask, and
the runtime-directory checks (owner, mode, symbolic links, parents, the control socket).

Real files in pytest's temporary directory (0700, root's). Another user's ownership is
made with ``os.chown`` to an unused uid, which needs root: those tests skip otherwise.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.datadir import lock_data_dir
from appliance.log.config import LogConfig
from appliance.log.log import Log
from ipc.private import NotPrivateError, check_own_socket, ensure_private_dir, make_private_dir, open_private
from ipc.records import encode_batch
from ipc.shm import ShmError, StatusTable
from metrics import multiproc

OTHER_UID = 54_321  # no such user is needed: root can chown to any number
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual umask (022), under which a file made with the default mode is world-readable."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def no_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# ---- creating -----------------------------------------------------------------------------
def test_a_private_file_is_0600_even_without_a_umask(tmp_path: Path, no_umask: None) -> None:
    fd = open_private(str(tmp_path / "f"), os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    assert mode(tmp_path / "f") == 0o600


def test_a_private_dir_is_0700_and_an_own_loose_one_is_narrowed(tmp_path: Path, no_umask: None) -> None:
    make_private_dir(str(tmp_path / "a" / "b"))
    assert mode(tmp_path / "a" / "b") == 0o700
    (tmp_path / "old").mkdir(mode=0o755)
    make_private_dir(str(tmp_path / "old"))
    assert mode(tmp_path / "old") == 0o700


@needs_root
def test_a_private_dir_of_another_user_is_left_alone(tmp_path: Path, no_umask: None) -> None:
    (tmp_path / "theirs").mkdir(mode=0o755)
    os.chown(tmp_path / "theirs", OTHER_UID, OTHER_UID)
    make_private_dir(str(tmp_path / "theirs"))
    assert mode(tmp_path / "theirs") == 0o755


def test_a_log_writes_only_private_files_under_a_loose_umask(tmp_path: Path, loose_umask: None) -> None:
    directory = tmp_path / "events-0"
    lg = Log.open(str(directory), LogConfig(segment_bytes=1024))
    for i in range(20):
        lg.append(encode_batch([b"secret-%03d" % i * 8], timestamp=1_700_000_000_000))
    lg.roll()
    lg.close()
    assert mode(directory) == 0o700
    files = list(directory.iterdir())
    assert len(files) >= 6  # segments, indexes, the checkpoints, the clean-shutdown marker
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}


def test_the_data_dir_lock_and_a_new_data_dir_are_private(tmp_path: Path, loose_umask: None) -> None:
    fd = lock_data_dir(str(tmp_path / "data"))
    try:
        assert mode(tmp_path / "data") == 0o700 and mode(tmp_path / "data" / ".lock") == 0o600
    finally:
        os.close(fd)


def test_the_status_table_is_0600(tmp_path: Path, loose_umask: None) -> None:
    with StatusTable.create(tmp_path / "status.shm", slots=2, node_id=0):
        assert mode(tmp_path / "status.shm") == 0o600


def test_a_writer_does_not_follow_a_symlinked_status_table(tmp_path: Path) -> None:
    with StatusTable.create(tmp_path / "real.shm", slots=2, node_id=0):
        (tmp_path / "status.shm").symlink_to(tmp_path / "real.shm")
        with pytest.raises(ShmError, match="symbolic links"):
            StatusTable.attach(tmp_path / "status.shm", writable=True)
        StatusTable.attach(tmp_path / "status.shm").close()  # a reader (sluice status) may


# ---- the runtime directory ----------------------------------------------------------------
def test_the_runtime_dir_is_created_0700_whatever_the_umask(tmp_path: Path, no_umask: None) -> None:
    ensure_private_dir(str(tmp_path / "rt" / "inner"))
    assert mode(tmp_path / "rt") == 0o700 and mode(tmp_path / "rt" / "inner") == 0o700


def test_an_own_0700_runtime_dir_is_reused_with_its_files(tmp_path: Path) -> None:
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    (rt / "kept").write_bytes(b"x")
    ensure_private_dir(str(rt))
    assert (rt / "kept").read_bytes() == b"x" and mode(rt) == 0o700


def test_an_own_runtime_dir_others_may_only_read_is_narrowed(tmp_path: Path) -> None:
    rt = tmp_path / "rt"
    rt.mkdir()
    os.chmod(rt, 0o755)  # an earlier release under umask 022
    ensure_private_dir(str(rt))
    assert mode(rt) == 0o700


def test_a_runtime_dir_others_can_write_is_refused_and_not_changed(tmp_path: Path) -> None:
    rt = tmp_path / "rt"
    rt.mkdir()
    os.chmod(rt, 0o777)
    with pytest.raises(NotPrivateError, match=r"runtime_dir '.*/rt' can be written by other users .*mode 0777"):
        ensure_private_dir(str(rt))
    assert mode(rt) == 0o777


@needs_root
def test_a_runtime_dir_of_another_user_is_refused_even_at_0700(tmp_path: Path) -> None:
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    os.chown(rt, OTHER_UID, OTHER_UID)
    with pytest.raises(NotPrivateError, match=f"belongs to another user .owner uid {OTHER_UID}") as err:
        ensure_private_dir(str(rt))
    assert "Remove it" in err.value.message and "set runtime_dir" in err.value.message
    assert os.stat(rt).st_uid == OTHER_UID and mode(rt) == 0o700


def test_a_symlinked_runtime_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir(mode=0o700)
    (tmp_path / "rt").symlink_to(tmp_path / "target")
    with pytest.raises(NotPrivateError, match="is a symbolic link"):
        ensure_private_dir(str(tmp_path / "rt"))


def test_a_runtime_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rt").write_bytes(b"")
    with pytest.raises(NotPrivateError, match="is not a directory"):
        ensure_private_dir(str(tmp_path / "rt"))


def test_a_runtime_dir_in_a_world_writable_parent_needs_its_sticky_bit(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(NotPrivateError, match="which other users can write"):
        ensure_private_dir(str(parent / "rt"))
    assert not (parent / "rt").exists()  # nothing made
    os.chmod(parent, 0o1777)  # as /dev/shm and /tmp: others cannot rename what is ours
    ensure_private_dir(str(parent / "rt"))
    assert mode(parent / "rt") == 0o700


@needs_root
def test_a_runtime_dir_in_another_users_directory_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    os.chown(parent, OTHER_UID, OTHER_UID)
    with pytest.raises(NotPrivateError, match="belongs to another user"):
        ensure_private_dir(str(parent / "rt"))
    assert not (parent / "rt").exists()


# ---- prometheus/ inside it ------------------------------------------------------------------
@pytest.fixture
def multiproc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(multiproc.MULTIPROC_ENV, raising=False)  # restored after the test


def test_prepare_wipes_an_own_prometheus_dir(tmp_path: Path, multiproc_env: None) -> None:
    rt = tmp_path / "rt"
    (rt / "prometheus").mkdir(parents=True, mode=0o700)
    (rt / "prometheus" / "histogram_1.db").write_bytes(b"old")
    path = multiproc.prepare(str(rt))
    assert path == str(rt / "prometheus") and os.environ[multiproc.MULTIPROC_ENV] == path
    assert list((rt / "prometheus").iterdir()) == [] and mode(rt / "prometheus") == 0o700


def test_prepare_refuses_a_symlinked_prometheus_dir_and_writes_nothing_there(
    tmp_path: Path, multiproc_env: None
) -> None:
    rt, target = tmp_path / "rt", tmp_path / "elsewhere"
    rt.mkdir(mode=0o700)
    target.mkdir(mode=0o755)
    (target / "keep").write_bytes(b"theirs")
    (rt / "prometheus").symlink_to(target)
    with pytest.raises(NotPrivateError, match="prometheus/ '.*' is a symbolic link"):
        multiproc.prepare(str(rt))
    assert [p.name for p in target.iterdir()] == ["keep"] and mode(target) == 0o755
    assert (rt / "prometheus").is_symlink() and multiproc.MULTIPROC_ENV not in os.environ


# ---- the control socket ---------------------------------------------------------------------
@pytest.fixture
def bound(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "control.sock"
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as s:
        s.bind(str(path))
        yield path


def test_an_own_socket_in_a_private_dir_passes(bound: Path) -> None:
    check_own_socket(str(bound))


@needs_root
def test_a_socket_of_another_user_is_refused(bound: Path) -> None:
    os.chown(bound, OTHER_UID, OTHER_UID)
    with pytest.raises(NotPrivateError, match=f"belongs to uid {OTHER_UID}.*refusing to connect"):
        check_own_socket(str(bound))


def test_a_symlinked_missing_or_plain_file_socket_is_refused(bound: Path, tmp_path: Path) -> None:
    (tmp_path / "link.sock").symlink_to(bound)
    with pytest.raises(NotPrivateError, match="symbolic link"):
        check_own_socket(str(tmp_path / "link.sock"))
    with pytest.raises(NotPrivateError, match="not usable"):
        check_own_socket(str(tmp_path / "missing.sock"))
    (tmp_path / "file.sock").write_bytes(b"")
    with pytest.raises(NotPrivateError, match="not a socket"):
        check_own_socket(str(tmp_path / "file.sock"))


def test_a_socket_in_a_directory_others_can_reach_is_refused(bound: Path) -> None:
    os.chmod(bound.parent, 0o755)
    try:
        with pytest.raises(NotPrivateError, match="directory others can reach"):
            check_own_socket(str(bound))
    finally:
        os.chmod(bound.parent, 0o700)
