"""The runtime directory's life: claimed at start, removed at a clean stop, swept once
its node is provably dead.

``<runtime_dir>`` (``/dev/shm/sluice-<uid>-<hash of data_dir>`` by default,
``/run/sluice`` under systemd) holds what exists only while the node runs:
``status.shm``, the quota table, ``control.sock``, ``prometheus/`` (the workers' metric
files), ``connect/`` (the connectors' beats and status), the Kafka listener's beat and
``mp/`` (the fork server's socket: ``appliance/forkserver.py``).

Ownership is a lock, not a pid: ``<runtime_dir>/.lock`` is ``flock``ed by the supervisor
from ``claim`` (before ``prometheus/`` is wiped) until it exits. The kernel releases a
``flock`` when its holder ends, however it ends (SIGKILL included), and a lock works
across pid namespaces, so a lock that can be taken is a dead node. The file holds the
holder's pid and data directory, for people and for the test suite's leftover check.

- ``claim``: create (or accept: ``ipc.private.ensure_private_dir``) the directory, take
  its lock (a second node configured with the same ``runtime_dir`` is refused), remove
  what a dead previous run left of the fork server, and move back what the last clean
  stop kept (``CONTINUITY``).
- ``RunDir.remove`` (a clean stop, after every child is gone and the fork server and
  resource tracker have stopped): keep the ``CONTINUITY`` files in
  ``<data_dir>/__runtime/``, remove everything else, and the directory itself when it
  is the default one under ``/dev/shm`` (systemd removes ``/run/sluice``; a configured
  ``runtime_dir`` is the operator's and is only emptied).
- ``sweep``: at start, remove the default runtime directories of *this user's* dead
  nodes (SIGKILLed, or stopped by an earlier release). A directory is swept only when
  every check holds: its name is ``sluice-<our uid>-<10 hex digits>`` directly in
  ``/dev/shm`` (root's, sticky: no one else can swap it), it is a directory and not a
  symbolic link, it belongs to us with mode 0700 (``ipc/private.py``'s rule: never act
  on what someone else could have made or written), and its node is dead: its ``.lock``
  could be taken; or, for a directory without one (an earlier release), nothing has
  changed in it for ``LEGACY_IDLE_S``, its control socket refuses connections and its
  status table's supervisor pid is gone. It is renamed away while the lock is held, then
  removed, so a node starting on it meanwhile makes a fresh one. Anything else is left
  alone (logged at debug).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Iterator

from appliance.forkserver import MP_DIR
from appliance.process import pid_alive
from ipc.errors import InvalidConfigError
from ipc.private import ensure_private_dir, make_private_dir, open_private
from ipc.shm import HEADER, MAGIC

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
SHM_DIR = "/dev/shm"
SAVED_DIR = "__runtime"  # in the data directory: what a clean stop keeps

# What a clean stop keeps for the next start: the connectors' totals and last error
# (appliance/connect/status.py, ``<name>.json``), which survive a connector's restart and
# so should survive the node's. (subdirectory, suffix, names not kept)
CONTINUITY: tuple[tuple[str, str, frozenset[str]], ...] = (("connect", ".json", frozenset({"status.json"})),)
LEGACY_IDLE_S = 60.0  # a lock-less directory this long untouched, with a dead socket and pid
CLAIM_WAIT_S = 2.0  # a sweeper holds a dead node's lock for a moment; a live node for ever
_NAME = re.compile(r"sluice-(?P<uid>\d+)-[0-9a-f]{10}(?:\.swept-(?P<pid>\d+))?")


def default_name_uid(name: str) -> int | None:
    """The uid in a default runtime directory's name (``sluice-<uid>-<hash>``), else None."""
    m = _NAME.fullmatch(name)
    return int(m.group("uid")) if m else None


class RunDir:
    """A claimed runtime directory: its lock is held until ``remove`` or the process ends."""

    def __init__(self, path: str, data_dir: str, lock_fd: int) -> None:
        self.path = path
        self.data_dir = data_dir
        self.lock_fd = lock_fd

    @property
    def is_default(self) -> bool:
        return os.path.dirname(self.path) == SHM_DIR and default_name_uid(os.path.basename(self.path)) is not None

    def remove(self) -> None:
        """A clean stop: keep the continuity files, remove the rest (see the module docstring)."""
        self._save_continuity()
        for name in os.listdir(self.path):
            if name == LOCK_FILE:
                continue
            _remove(os.path.join(self.path, name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, LOCK_FILE))
        if self.is_default:
            try:
                os.rmdir(self.path)
            except OSError as exc:  # something appeared in it: whoever made it is not us
                log.warning("runtime directory %s not removed: %s", self.path, exc.strerror)
        os.close(self.lock_fd)
        self.lock_fd = -1
        log.info("removed the runtime directory %s", self.path)

    def _save_continuity(self) -> None:
        for sub, suffix, skip in CONTINUITY:
            src = os.path.join(self.path, sub)
            if not os.path.isdir(src):
                continue
            dst = os.path.join(self.data_dir, SAVED_DIR, sub)
            for name in _kept(src, suffix, skip):
                make_private_dir(dst)
                _copy(os.path.join(src, name), os.path.join(dst, name))  # tmpfs to disk: not a rename

    def restore_continuity(self) -> None:
        """Move back what the last clean stop kept; a file already here (after a crash the
        directory survived, with newer figures) wins."""
        for sub, suffix, skip in CONTINUITY:
            src = os.path.join(self.data_dir, SAVED_DIR, sub)
            if not os.path.isdir(src):
                continue
            dst = os.path.join(self.path, sub)
            for name in _kept(src, suffix, skip):
                target = os.path.join(dst, name)
                if not os.path.exists(target):
                    ensure_private_dir(dst, f"runtime_dir ({sub}/)")
                    _copy(os.path.join(src, name), target)
                os.unlink(os.path.join(src, name))


def _kept(directory: str, suffix: str, skip: frozenset[str]) -> Iterator[str]:
    for name in sorted(os.listdir(directory)):
        if name.endswith(suffix) and name not in skip and ".tmp." not in name:
            yield name


def _copy(src: str, dst: str) -> None:
    """Copy a small file privately (tmp, then rename: a reader sees the old or the new one)."""
    with open(src, "rb") as f:
        data = f.read()
    tmp = f"{dst}.tmp.{os.getpid()}"
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, dst)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: never follows a link out
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def claim(path: str, data_dir: str, wait_s: float = CLAIM_WAIT_S) -> RunDir:
    """Create or accept ``path`` (``ensure_private_dir``) and lock it for this process;
    ``InvalidConfigError`` if another live node holds it."""
    deadline = time.monotonic() + wait_s
    lock_path = os.path.join(path, LOCK_FILE)
    for _ in range(1000):  # bounded: each pass waits or finds the directory swept away
        ensure_private_dir(path, "runtime_dir")
        try:
            fd = open_private(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW)
        except OSError as exc:
            raise InvalidConfigError(f"runtime_dir={path!r} is not usable: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").split("\n")[0] or "?"
            os.close(fd)
            if time.monotonic() >= deadline:
                raise InvalidConfigError(f"runtime_dir={path!r} is in use by another node (pid {holder})") from None
            time.sleep(0.02)  # a sweeper holds a dead node's lock only while it renames the directory
            continue
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # swept away while we waited for the lock: start again on a fresh one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{os.path.abspath(data_dir)}\n".encode(), 0)
        rd = RunDir(path, data_dir, fd)
        _remove(os.path.join(path, MP_DIR))  # a dead previous run's fork server socket
        rd.restore_continuity()
        return rd
    raise InvalidConfigError(f"runtime_dir={path!r}: could not be claimed")


def lock_holder(path: str) -> tuple[int, str] | None:
    """(pid, data_dir) written in a runtime directory's lock file, or None."""
    try:
        with open(os.path.join(path, LOCK_FILE), "rb") as f:
            pid, data_dir = (f.read(4096).decode(errors="replace").split("\n") + ["", ""])[:2]
        return int(pid), data_dir
    except (OSError, ValueError):
        return None


# ---- sweeping the dead ----------------------------------------------------------------------
def sweep(own: str, base: str = SHM_DIR, now: float | None = None) -> list[str]:
    """Remove this user's default runtime directories in ``base`` whose node is provably
    dead (the module docstring); returns the paths removed."""
    me = os.geteuid()
    try:
        top = os.stat(base)
    except OSError:
        return []
    mode = stat.S_IMODE(top.st_mode)
    if top.st_uid not in (0, me) or (mode & 0o022 and not mode & stat.S_ISVTX):
        log.debug("not sweeping %s: others could swap what is in it", base)
        return []
    removed = []
    for name in sorted(os.listdir(base)):
        m = _NAME.fullmatch(name)
        path = os.path.join(base, name)
        if m is None or int(m.group("uid")) != me or os.path.abspath(path) == os.path.abspath(own):
            continue
        try:
            why = _dead(path, m.group("pid"), time.time() if now is None else now)
        except OSError as exc:
            why = None
            log.debug("not sweeping %s: %s", path, exc)
        if why is not None:
            removed.append(path)
            log.info("removed the runtime directory %s of a dead node (%s)", path, why)
    return removed


def _dead(path: str, swept_by: str | None, now: float) -> str | None:
    """Remove ``path`` if its node is provably dead; say why, or None if it was left."""
    me = os.geteuid()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)  # ELOOP for a link
    try:
        st = os.fstat(fd)
        if st.st_uid != me or stat.S_IMODE(st.st_mode) & 0o077:
            log.debug("not sweeping %s: not this user's alone (uid %d, mode %04o)", path, st.st_uid, st.st_mode)
            return None
        if swept_by is not None:  # a sweeper that died half-way
            if pid_alive(int(swept_by)):
                return None
            shutil.rmtree(path, ignore_errors=True)
            return f"left half-removed by pid {swept_by}"
        try:
            lock = os.open(LOCK_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            why = _legacy_dead(path, fd, st, now)
            if why is not None:
                _rename_and_remove(path)
            return why
        try:
            lst = os.fstat(lock)
            if not stat.S_ISREG(lst.st_mode) or lst.st_uid != me:
                return None
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # alive
            _rename_and_remove(path)  # while holding its lock
            return "its lock was free"
        finally:
            os.close(lock)
    finally:
        os.close(fd)


def _legacy_dead(path: str, fd: int, st: os.stat_result, now: float) -> str | None:
    """A directory without a lock file (an earlier release's): dead when untouched for
    ``LEGACY_IDLE_S``, its control socket refuses connections, and its status table's
    supervisor is gone."""
    if now - st.st_mtime < LEGACY_IDLE_S:
        return None
    sock = os.path.join(path, "control.sock")
    if os.path.lexists(sock):
        if not stat.S_ISSOCK(os.lstat(sock).st_mode):
            return None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(sock)
            except OSError as exc:
                if exc.errno != errno.ECONNREFUSED:
                    return None
            else:
                return None  # someone serves it
    try:
        sfd = os.open("status.shm", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        return "no lock, no status table, no listener"
    try:
        head = os.pread(sfd, HEADER.size, 0)
    finally:
        os.close(sfd)
    if len(head) < HEADER.size or head[:4] != MAGIC:
        return None
    pid = HEADER.unpack(head)[5]
    if pid_alive(pid):
        return None
    return f"no lock, supervisor pid {pid} gone"


def _rename_and_remove(path: str) -> None:
    away = f"{path}.swept-{os.getpid()}"
    os.rename(path, away)
    shutil.rmtree(away, ignore_errors=True)
